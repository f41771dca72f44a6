# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tests/fixtures/capture.py: a snapshot of a host reads exactly like the host."""

from __future__ import annotations

import os
import sys
import tarfile

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils.secureboot import read_secure_boot
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect
from ansible_collections.gpuvirt.host.tests.unit.plugins.module_utils.test_vendor_intel import ADL_HOST

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures"))
import capture  # noqa: E402
import hostgen  # noqa: E402


def same_topology(original, snapshot):
    expected = detect(original)
    actual = detect(snapshot)
    expected.pop("root")
    actual.pop("root")
    assert actual == expected


def files_below(root):
    found = set()
    for directory, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
            found.add(os.path.relpath(os.path.join(directory, name), root))
    return found


@pytest.mark.parametrize("name", [n for n in hostgen.host_names() if n != "large_synthetic"])
def test_capture_of_a_fixture_reads_the_same(make_host, tmp_path, name):
    root = make_host(name)

    output, devices, _copied = capture.capture(root, str(tmp_path / "snapshot"))

    assert devices == len(detect(root)["devices"])
    same_topology(root, output)


def test_capture_of_the_large_host(make_host, tmp_path):
    root = make_host("large_synthetic")

    output, devices, _copied = capture.capture(root, str(tmp_path / "snapshot"))

    assert devices > 550
    same_topology(root, output)


def test_capture_keeps_the_loaded_modules_and_the_vendor_drivers_parameters(make_host, tmp_path):
    # A mainline i915 (parameters, but no max_vfs) on an Alder Lake iGPU: the SR-IOV mode's advice depends on it.
    root = make_host(ADL_HOST)

    output, _devices, _copied = capture.capture(root, str(tmp_path / "snapshot"))

    same_topology(root, output)
    assert os.path.isdir(os.path.join(output, "sys/module/i915/parameters"))
    assert not os.path.exists(os.path.join(output, "sys/module/i915/parameters/max_vfs"))
    assert os.path.isdir(os.path.join(output, "sys/module/kvm_intel"))
    modes = next(g for g in detect(output)["gpus"] if g["address"] == "0000:00:02.0")["virtualization"]
    sriov = next(m for m in modes if m["mode"] == "sriov")
    assert "the loaded one has no max_vfs parameter" in sriov["missing"][0], sriov


@pytest.mark.parametrize("boot", [
    {"secure_boot": None},  # efivarfs not mounted: unknown, not off
    {"firmware": "uefi"},  # no SecureBoot variable: off
    {"secure_boot": True, "shim_validation_disabled": True, "lockdown": "none", "sig_enforce": True},
    {"firmware": "bios", "lockdown": "confidentiality", "sig_enforce": False},
])
def test_capture_keeps_the_module_signature_state(make_host, tmp_path, boot):
    root = make_host("desktop_dgpu", boot=boot)

    output, _devices, _copied = capture.capture(root, str(tmp_path / "snapshot"))

    assert read_secure_boot(output) == read_secure_boot(root)


def test_capture_keeps_the_boot_display_and_the_framebuffers(make_host, tmp_path):
    root = make_host("strix_halo", kernel={"release": "6.18.2-061802-generic"},
                     patch_devices={"c5:00.0": {"boot_display": True}})

    output, _devices, _copied = capture.capture(root, str(tmp_path / "snapshot"))

    same_topology(root, output)
    codes = next(g for g in detect(output)["gpus"] if g["address"] == "0000:c5:00.0")["passthrough"]["codes"]
    assert codes == ["boot_display", "console_framebuffer"]
    assert os.readlink(os.path.join(output, "sys/class/drm/card0/device")) == "../../../0000:c5:00.0"
    assert not os.path.lexists(os.path.join(output, "sys/class/drm/renderD128"))


def test_tarball_with_vm_processes_and_variants(make_host, tmp_path):
    root = make_host(
        "desktop_dgpu_nic",
        patch_devices={a: {"driver": "vfio-pci"} for a in ("01:00.0", "01:00.1", "01:00.2", "01:00.3")},
        processes=[{"pid": 4242, "comm": "qemu-system-x86", "holds": ["01:00.0"]}],
        kernel={"cmdline": "ro intel_iommu=on pcie_acs_override=downstream", "vfio_aliases": {"v000010DE*": "x_vfio"}},
    )

    output, _devices, _copied = capture.capture(root, str(tmp_path / "host.tar.gz"))
    extracted = tmp_path / "extracted"
    with tarfile.open(output) as archive:
        archive.extractall(extracted)  # noqa: S202 - our own archive

    same_topology(root, str(extracted))
    topology = detect(str(extracted))
    assert topology["devices"][0]["address"] == "0000:00:00.0"
    assert any(d["in_use_by"] == [{"pid": 4242, "comm": "qemu-system-x86"}] for d in topology["devices"])
    alias = (extracted / "lib/modules/6.8.0-45-generic/modules.alias").read_text()
    assert alias == "alias vfio_pci:v*d*sv*sd*bc*sc*i* vfio_pci\nalias vfio_pci:v000010DE* x_vfio\n", (
        "only the vfio_pci aliases are kept"
    )


def test_capture_leaves_out_what_it_does_not_need(make_host, tmp_path):
    root = make_host("desktop_dgpu", processes=[{"pid": 4242, "comm": "qemu-system-x86", "holds": ["00:14.0"]}])
    secrets = {
        "proc/4242/environ": "AWS_SECRET_ACCESS_KEY=hunter2",
        "proc/4242/cmdline": "qemu -drive password=hunter2",
        "proc/555/comm": "sshd",
        "proc/555/environ": "TOKEN=hunter2",
        "etc/shadow": "root:$6$hunter2",
        "etc/os-release": 'ID=debian\nVERSION_ID="12"\nHOME_URL="https://internal.example/hunter2"\n',
    }
    for relative, content in secrets.items():
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(content)
    os.makedirs(os.path.join(root, "proc/555/fd"))
    os.symlink("/home/user/notes.txt", os.path.join(root, "proc/555/fd/3"))
    with open(os.path.join(root, "proc/self/mountinfo"), "a", encoding="utf-8") as handle:
        handle.write("99 22 0:50 / /home/hunter2 rw - ext4 /dev/sdz1 rw\n")

    output, _devices, _copied = capture.capture(root, str(tmp_path / "snapshot"))

    captured = files_below(output)
    assert not [path for path in captured if path.endswith(("environ", "cmdline")) and path != "proc/cmdline"]
    assert not [path for path in captured if path.startswith(("proc/555", "etc/shadow"))]
    assert sorted(p for p in captured if p.startswith("proc/4242")) == [
        "proc/4242/comm", "proc/4242/fd/20"
    ], "only the descriptor that points into /dev/vfio (not fd 0 and 1), and the process name"
    for path in captured:
        full = os.path.join(output, path)
        if os.path.isfile(full) and not os.path.islink(full):
            with open(full, "rb") as handle:
                assert b"hunter2" not in handle.read(), path
    assert (tmp_path / "snapshot" / "sys/firmware/acpi/tables/DMAR").read_bytes() == b"", "presence, not content"


def test_capture_refuses_to_overwrite(make_host, tmp_path):
    root = make_host("amd_host")
    (tmp_path / "taken").mkdir()

    with pytest.raises(FileExistsError):
        capture.capture(root, str(tmp_path / "taken"))
    assert capture.main(["--root", root, str(tmp_path / "taken")]) == 1


def test_command_line(make_host, tmp_path, capsys):
    root = make_host("intel_gvtg")

    assert capture.main(["--root", root, str(tmp_path / "out.tar.gz")]) == 0

    assert "captured 7 PCI devices" in capsys.readouterr().out
    assert tarfile.is_tarfile(tmp_path / "out.tar.gz")


@pytest.mark.parametrize("storage", [
    # Proxmox on ZFS: the root pool mirrored over the NVMe SSD and a SATA disk, a data pool on another
    # SATA disk, an LVM volume group for VM disks, swap on a partition.
    {"disks": {"nvme0n1": {"device": "02:00.0", "partitions": 3}, "sda": {"device": "00:17.0", "partitions": 3},
               "sdb": {"device": "00:17.0", "partitions": 1}, "sdc": {"device": "00:17.0", "partitions": 1},
               "dm-0": {"slaves": ["sdc1"], "dm_name": "vmdata-vm--101--disk--0"}},
     "root_fs": None, "swaps": ["nvme0n1p2"],
     "zfs": {"root": "rpool/ROOT/pve-1", "pools": {"rpool": ["nvme0n1p3", "sda3"], "tank": ["sdb1"]},
             "datasets": {"tank/data": "/tank"}}},
    # btrfs root over two devices, a dual-port NVMe drive mounted with a space in its mount point.
    {"disks": {"nvme0n1": {"device": "02:00.0", "partitions": 2}, "sda": {"device": "00:17.0", "partitions": 1},
               "nvme1n1": {"multipath": True, "controllers": ["02:00.0"], "partitions": 1}},
     "root_fs": "nvme0n1p2", "btrfs": {"5d3c9d6e": ["nvme0n1p2", "sda1"]}, "mounts": {"/srv/vm images": "nvme1n1p1"}},
], ids=["zfs-lvm-swap", "btrfs-multipath"])
def test_capture_keeps_the_storage_in_use(make_host, tmp_path, storage):
    from ansible_collections.gpuvirt.host.plugins.module_utils.critical import storage_in_use

    root = make_host("desktop_dgpu", **storage)
    # Other udev entries and unmounted disks stay out of the snapshot.
    os.makedirs(os.path.join(root, "run/udev/data"), exist_ok=True)
    with open(os.path.join(root, "run/udev/data/c189:1"), "w", encoding="utf-8") as handle:
        handle.write("E:ID_SERIAL=secret\n")

    output, _devices, _copied = capture.capture(root, str(tmp_path / "snapshot"))

    assert storage_in_use(output) == storage_in_use(root)
    assert len(storage_in_use(root)) >= 2
    same_topology(root, output)
    assert not os.path.exists(os.path.join(output, "run/udev/data/c189:1"))


@pytest.mark.parametrize("changes", [
    {"machine": {"smbios_vm_bit": True}},
    {"machine": {"device_tree_hypervisor": "linux,kvm"}},
    {"machine": {"sys_hypervisor": "xen"}},
    {"files": {"sys/firmware/devicetree/base/fw-cfg@9020000/compatible": "qemu,fw-cfg-mmio\0"}},
    {"machine": {"dmi": {"sys_vendor": "Amazon EC2", "product_name": "c7g.metal"}}},
])
def test_capture_keeps_what_tells_an_arm64_vm(make_host, tmp_path, changes):
    # No x86 flags: only the firmware's and the kernel's signs tell a VM (or an EC2 bare-metal instance).
    root = make_host("grace_hopper", **changes)

    output, _devices, _copied = capture.capture(root, str(tmp_path / "snapshot"))

    same_topology(root, output)
    assert detect(output)["cpu"]["virtual_machine"] is ("dmi" not in changes.get("machine", {}))


def test_capture_keeps_the_ports_of_an_open_vswitch_bridge(make_host, tmp_path):
    # The bridge of the default route has no link to its port: the datapath's device (ovs-system) has.
    from ansible_collections.gpuvirt.host.plugins.module_utils.critical import critical_devices

    devices = [
        {"address": "00:1c.0", "ids": "8086:7ab8", "class": "060400", "driver": "pcieport", "group": 8},
        {"address": "04:00.0", "parent": "00:1c.0", "ids": "8086:125c", "class": "020000", "driver": "igc",
         "group": 9},
    ]
    interfaces = {"enp4s0": "04:00.0", "ovs-system": {"lower": ["enp4s0"]}, "vmbr0": {}}
    root = make_host("desktop_dgpu", add_devices=devices,
                     network={"default_route": "vmbr0", "interfaces": interfaces})

    output, _devices, _copied = capture.capture(root, str(tmp_path / "snapshot"))

    assert "0000:04:00.0" in critical_devices(root)
    assert critical_devices(output) == critical_devices(root)
    same_topology(root, output)


@pytest.mark.parametrize("multipath,without_0x", [(True, False), (False, False), (True, True)],
                         ids=["nvme-subsystem", "controller", "names-without-0x"])
def test_capture_keeps_the_storage_adapters_without_their_names(make_host, tmp_path, multipath, without_0x):
    # An NVMe/FC root through the HBA's second port, an iSER session and an SRP target port on the HCA.
    from ansible_collections.gpuvirt.host.plugins.module_utils.critical import critical_devices
    from ansible_collections.gpuvirt.host.tests.unit.plugins.module_utils import test_critical_storage_adapters as hba

    files, links = hba.nvme_fc(multipath=multipath)
    if without_0x:
        address = hba.CONTROLLER + "/address"
        files[address] = files[address].replace("0x", "").upper().replace("TRADDR", "traddr").replace("NN-", "nn-") \
            .replace("PN-", "pn-").replace("HOST_", "host_")
    session_files, session_links = hba.iscsi_session(hba.device_dir(hba.HCA) + "/host7")
    port = hba.device_dir(hba.HCA) + "/host8/port-8:1/srp_remote_ports/port-8:1"
    files.update(session_files, **{port + "/port_id": hba.SRP_PORT_ID + "\n"})
    links.update(session_links, **{"sys/class/srp_remote_ports/port-8:1": "../../" + port[len("sys/"):]})
    root = hba.adapter_host(make_host, files, links)

    output, _devices, _copied = capture.capture(root, str(tmp_path / "snapshot"))

    expected, actual = critical_devices(root), critical_devices(output)
    assert set(actual) == set(expected)
    assert expected[hba.HBA[1]][0] == actual[hba.HBA[1]][0] == "holds the root filesystem (/dev/nvme1n1)"
    assert [reason.split(" (")[0].split(" with ")[0] for reason in actual[hba.HCA]] == [
        "HBA of storage in use: the iSCSI session session1", "HBA of storage in use: the SRP target port port-8:1",
    ]
    assert hba.HBA[0] not in actual  # the stand-ins still tell the two ports apart
    texts = []
    for path in files_below(output):
        if os.path.isfile(os.path.join(output, path)):
            with open(os.path.join(output, path), encoding="utf-8", errors="replace") as handle:
                texts.append(handle.read())
    snapshot = "\n".join(texts)
    for name in ("10000090fa942778", "10000090fa942779", "20000090fa942779", "200000109b579ef6", "100000109b579ef6",
                 "iqn.2001-05", hba.SRP_PORT_ID):
        assert name not in snapshot.lower()
