# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's storage in use and the PCI devices under it: what no guard may take without force."""

from __future__ import annotations

import os

from ansible_collections.gpuvirt.host.plugins.module_utils.critical import (
    critical_devices,
    storage_in_use,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect

# desktop_dgpu's storage: the NVMe SSD at 02:00.0 and the chipset's AHCI controller at 00:17.0. Two more
# NVMe controllers (a dual-port drive's ports) sit behind the second root port, in a group of their own.
NVME = "0000:02:00.0"
AHCI = "0000:00:17.0"
PORTS = ["0000:05:00.0", "0000:05:00.1"]
DUAL_PORT = [
    {"address": "05:00.0", "parent": "00:06.0", "ids": "144d:a824", "class": "010802", "driver": "nvme",
     "group": 9},
    {"address": "05:00.1", "parent": "00:06.0", "ids": "144d:a824", "class": "010802", "driver": "nvme",
     "group": 10},
]


def two_disks(nvme_partitions, sata_partitions):
    """The NVMe SSD and a SATA disk on the AHCI controller, with that many partitions each."""
    return {"nvme0n1": {"device": "02:00.0", "partitions": nvme_partitions},
            "sda": {"device": "00:17.0", "partitions": sata_partitions}}


def storage(make_host, **changes):
    return make_host("desktop_dgpu", add_devices=DUAL_PORT, **changes)


def test_a_second_mounted_filesystem_and_swap_make_their_disks_critical(make_host):
    root = storage(
        make_host,
        disks=two_disks(3, 1),
        root_fs="nvme0n1p2",
        mounts={"/var/lib/vz": "sda1", "/boot/efi": "nvme0n1p1"},
        swaps=["nvme0n1p3"],
    )

    assert storage_in_use(root) == [
        ("holds the root filesystem (/dev/nvme0n1p2)", [NVME]),
        ("holds the filesystem mounted on /var/lib/vz (/dev/sda1)", [AHCI]),
        ("holds the filesystem mounted on /boot/efi (/dev/nvme0n1p1)", [NVME]),
        ("holds active swap (/dev/nvme0n1p3)", [NVME]),
    ]
    assert critical_devices(root)[AHCI] == ["holds the filesystem mounted on /var/lib/vz (/dev/sda1)"]


def test_mount_points_with_escaped_spaces_and_repeated_mounts_of_one_device(make_host):
    root = storage(
        make_host,
        disks=two_disks(2, 1),
        root_fs="nvme0n1p2",
        mounts={"/srv/vm images": "sda1", "/var/lib/docker": "nvme0n1p2"},
    )

    # A bind mount of the root filesystem's device is not a second use of its disk.
    assert storage_in_use(root) == [
        ("holds the root filesystem (/dev/nvme0n1p2)", [NVME]),
        ("holds the filesystem mounted on /srv/vm images (/dev/sda1)", [AHCI]),
    ]


def test_zfs_root_pool_mirrored_over_two_controllers(make_host):
    root = storage(
        make_host,
        disks=two_disks(3, 3),
        root_fs=None,
        zfs={"root": "rpool/ROOT/pve-1", "pools": {"rpool": ["nvme0n1p3", "sda3"]}},
    )

    assert storage_in_use(root) == [("holds the root filesystem (rpool/ROOT/pve-1)", [AHCI, NVME])]
    gpu = next(gpu for gpu in detect(root)["gpus"] if gpu["address"] == "0000:01:00.0")
    assert gpu["passthrough"]["viable"] is True  # the GPU's group holds no storage


def test_imported_data_pool_and_a_stale_label_of_a_pool_not_imported(make_host):
    root = storage(
        make_host,
        disks={"nvme0n1": {"device": "02:00.0", "partitions": 2}, "sda": {"device": "00:17.0", "partitions": 1},
               "sdb": {"device": "05:00.1", "partitions": 1}},
        root_fs="nvme0n1p2",
        zfs={"pools": {"tank": ["sda1"]}, "datasets": {"tank/data": "/tank"}, "stale": ["sdb1"]},
    )

    assert storage_in_use(root) == [
        ("holds the root filesystem (/dev/nvme0n1p2)", [NVME]),
        ("holds the imported ZFS pool tank", [AHCI]),
    ]
    assert PORTS[1] not in critical_devices(root)


def test_zfs_root_without_udev_labels_may_be_on_any_storage_controller(make_host):
    root = storage(
        make_host,
        disks={"nvme0n1": {"device": "02:00.0", "partitions": 3}},
        root_fs=None,
        zfs={"root": "rpool/ROOT/pve-1", "pools": {"rpool": ["nvme0n1p3"]}},
    )
    for name in os.listdir(os.path.join(root, "run/udev/data")):
        os.unlink(os.path.join(root, "run/udev/data", name))

    (reason, addresses), = storage_in_use(root)
    assert reason.startswith("may hold the root filesystem (rpool/ROOT/pve-1): no block device carries the ZFS "
                             "pool rpool's label in the udev database")
    assert addresses == sorted([AHCI, NVME] + PORTS)
    assert "0000:01:00.0" not in addresses  # not a storage controller


def test_btrfs_root_over_two_devices(make_host):
    root = storage(
        make_host,
        disks=two_disks(2, 1),
        root_fs="nvme0n1p2",
        btrfs={"5d3c9d6e-1c1b-4b0e-9d0c-1f2e3d4c5b6a": ["nvme0n1p2", "sda1"]},
    )

    assert storage_in_use(root) == [("holds the root filesystem (/dev/nvme0n1p2)", [AHCI, NVME])]


def test_multipath_nvme_namespace_belongs_to_every_controller_of_its_subsystem(make_host):
    root = storage(
        make_host,
        disks={"nvme0n1": {"multipath": True, "controllers": ["05:00.0", "05:00.1"], "partitions": 2}},
        root_fs="nvme0n1p2",
    )

    assert os.path.realpath(os.path.join(root, "sys/class/block/nvme0n1")).endswith(
        "/sys/devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1")
    assert storage_in_use(root) == [("holds the root filesystem (/dev/nvme0n1p2)", PORTS)]


def test_active_lvm_volumes_that_are_not_mounted(make_host):
    # A VM's disk on an LVM volume group of its own disk: nothing is mounted from it.
    root = storage(
        make_host,
        disks={
            "nvme0n1": {"device": "02:00.0", "partitions": 2},
            "sda": {"device": "00:17.0", "partitions": 1},
            "dm-0": {"slaves": ["sda1"], "dm_name": "vmdata-vm--101--disk--0"},
            "md0": {"slaves": ["nvme0n1p1"]},
        },
        root_fs="nvme0n1p2",
    )

    assert storage_in_use(root) == [
        ("holds the root filesystem (/dev/nvme0n1p2)", [NVME]),
        ("holds the active device-mapper or RAID device vmdata-vm--101--disk--0", [AHCI]),
        ("holds the active device-mapper or RAID device md0", [NVME]),
    ]


def test_lvm_root_reaches_its_disk_once(make_host):
    root = storage(
        make_host,
        disks={"nvme0n1": {"device": "02:00.0", "partitions": 2},
               "dm-0": {"slaves": ["nvme0n1p2"], "dm_name": "pve-root"},
               "dm-1": {"slaves": ["nvme0n1p2"], "dm_name": "pve-swap"}},
        root_fs="dm-0",
        swaps=["dm-1"],
    )

    assert storage_in_use(root) == [
        ("holds the root filesystem (/dev/mapper/pve-root)", [NVME]),
        ("holds active swap (/dev/mapper/pve-swap)", [NVME]),
    ]
    assert critical_devices(root)[NVME] == [
        "holds the root filesystem (/dev/mapper/pve-root)",
        "holds active swap (/dev/mapper/pve-swap)",
    ]


def test_a_storage_controller_in_the_gpu_group_blocks_it(make_host):
    # The data disk's controller shares the GPU's group (a chipset slot without ACS).
    root = storage(
        make_host,
        disks=two_disks(2, 1),
        root_fs="nvme0n1p2",
        mounts={"/var/lib/vz": "sda1"},
        patch_devices={"00:17.0": {"group": 2}},
    )

    gpu = next(gpu for gpu in detect(root)["gpus"] if gpu["address"] == "0000:01:00.0")
    assert gpu["passthrough"]["viable"] is False
    assert "host_critical" in gpu["passthrough"]["codes"]
    assert any("0000:00:17.0 holds the filesystem mounted on /var/lib/vz (/dev/sda1)" in reason
               for reason in gpu["passthrough"]["reasons"])


def test_the_backing_device_of_a_zram_swap_is_critical(make_host):
    # zram writes idle pages out to its backing_dev, a partition nothing mounts.
    disks = dict(two_disks(2, 1), zram0={"slaves": []})
    root = storage(make_host, disks=disks, root_fs="nvme0n1p2", swaps=["zram0"],
                   files={"sys/devices/virtual/block/zram0/backing_dev": "/dev/sda1\n"})
    assert storage_in_use(root)[-1] == ("holds active swap (/dev/zram0)", [AHCI])
    without = storage(make_host, disks=disks, root_fs="nvme0n1p2", swaps=["zram0"],
                      files={"sys/devices/virtual/block/zram0/backing_dev": "none\n"})
    assert AHCI not in critical_devices(without)
