# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A multi-device bcachefs root: the kernel gives the superblock the device number of its first online member
only (``sb->s_dev = bdev->bd_dev`` in ``bch2_fs_get_tree``, "XXX: create an anonymous device for multi device
filesystems") and shows every member in mountinfo's source, joined by ``:`` (``bch2_show_devname``). With the
default ``replicas=1`` the data is striped over the members: losing any of them loses the filesystem."""

from __future__ import annotations

from ansible_collections.gpuvirt.host.plugins.module_utils.critical import critical_devices, storage_in_use

NVME = "0000:02:00.0"
AHCI = "0000:00:17.0"

# mountinfo as the kernel writes it for `mount -t bcachefs /dev/nvme0n1p2:/dev/sda1 /`: the major:minor of
# nvme0n1p2 (259:2 in these trees), and both members in the source.
MOUNTINFO = (
    "22 1 259:2 / / rw,relatime shared:1 - bcachefs /dev/nvme0n1p2:/dev/sda1 rw,compression=zstd\n"
    "23 22 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:2 - proc proc rw\n"
    "24 22 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:3 - sysfs sysfs rw\n"
)


def host(make_host, mountinfo=MOUNTINFO):
    return make_host(
        "desktop_dgpu",
        disks={"nvme0n1": {"device": "02:00.0", "partitions": 2}, "sda": {"device": "00:17.0", "partitions": 1}},
        root_fs="nvme0n1p2",
        files={"proc/self/mountinfo": mountinfo},
    )


def test_every_member_of_a_multi_device_bcachefs_root_is_critical(make_host):
    root = host(make_host)
    (reason, addresses), = storage_in_use(root)
    assert reason.startswith("holds the root filesystem")
    assert addresses == [AHCI, NVME]
    assert AHCI in critical_devices(root)


def test_the_first_member_on_the_second_controller_too(make_host):
    # The order of the members is the filesystem's: the first one may be the SATA disk.
    root = host(make_host, MOUNTINFO.replace("259:2", "8:1").replace(
        "/dev/nvme0n1p2:/dev/sda1", "/dev/sda1:/dev/nvme0n1p2"))
    assert NVME in critical_devices(root)
