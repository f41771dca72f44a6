# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A storage controller bound together with a GPU while a running VM uses one of its disks raw
(Proxmox ``qm set <vmid> -scsi1 /dev/disk/by-id/ata-...``: QEMU opens the disk node, and its
``/proc/<pid>/fd`` link names ``/dev/sda``). Nothing on the host mounts the disk, so it is not host-critical;
it is in use by that VM, and unbinding ``ahci`` pulls the disk from under it."""

from __future__ import annotations

from ansible_collections.gpuvirt.host.plugins.module_utils import vfio

GPU = "0000:01:00.0"
AHCI = "0000:00:17.0"
MODULES = ["kvm_intel", "i915", "nvidia", "snd_hda_intel", "xhci_pci", "e1000e", "nvme", "vfio_pci", "ahci"]


def host(make_host, holds):
    return make_host(
        "desktop_dgpu",
        kernel={"modules": MODULES},
        # The chipset SATA controller shares the GPU's IOMMU group (a board without ACS there).
        patch_devices={"00:17.0": {"group": 2}},
        disks={"nvme0n1": {"device": "02:00.0", "partitions": 2}, "sda": {"device": "00:17.0", "partitions": 1}},
        root_fs="nvme0n1p2",
        processes=[{"pid": 5150, "comm": "kvm", "holds": holds}],
    )


def test_a_disk_a_running_vm_uses_raw_keeps_its_controller(make_host):
    root = host(make_host, ["/dev/sda"])
    view = vfio.read_host(root)
    members = vfio.expand_members(view, {GPU: [], AHCI: []}, True)
    assert AHCI in members
    refusals = vfio.bind_refusals(view, members, list(members))
    about_ahci = [r for r in refusals if r.device == AHCI]
    assert about_ahci, "no refusal: the VM's disk /dev/sda (on %s) is taken from under it" % AHCI
    assert any("5150" in r.message and "/dev/sda" in r.message for r in about_ahci)


def test_a_partition_a_running_vm_uses_raw_keeps_its_controller(make_host):
    root = host(make_host, ["/dev/sda1"])
    view = vfio.read_host(root)
    members = vfio.expand_members(view, {GPU: [], AHCI: []}, True)
    refusals = vfio.bind_refusals(view, members, list(members))
    assert [r for r in refusals if r.device == AHCI and "/dev/sda1" in r.message]


def test_the_same_controller_without_a_user_binds(make_host):
    # Control: with no process on the disk the binding is allowed, so the refusal above is about the VM.
    root = host(make_host, [])
    view = vfio.read_host(root)
    members = vfio.expand_members(view, {GPU: [], AHCI: []}, True)
    assert [r for r in vfio.bind_refusals(view, members, list(members)) if r.device == AHCI] == []


def test_a_disk_on_the_gpus_own_usb_c_controller_that_a_vm_uses(make_host):
    # No selection of a storage controller needed: the GPU's USB-C xHCI (01:00.2) is a companion the run
    # binds by itself. A USB disk on that port, handed raw to a running VM (QEMU holds /dev/sdb), goes with it.
    root = make_host(
        "desktop_dgpu",
        kernel={"modules": MODULES},
        disks={"nvme0n1": {"device": "02:00.0", "partitions": 2}, "sdb": {"device": "01:00.2"}},
        root_fs="nvme0n1p2",
        processes=[{"pid": 5150, "comm": "kvm", "holds": ["/dev/sdb"]}],
    )
    view = vfio.read_host(root)
    members = vfio.expand_members(view, {GPU: []}, True)
    assert "0000:01:00.2" in members
    refusals = vfio.bind_refusals(view, members, list(members))
    assert [r for r in refusals if r.device == "0000:01:00.2" and "/dev/sdb" in r.message], refusals


def test_a_multipath_nvme_namespace_a_vm_uses_belongs_to_each_controller(make_host):
    # A dual-port drive: its namespace (and partition) are the subsystem's, below neither controller.
    root = make_host(
        "desktop_dgpu",
        kernel={"modules": MODULES},
        patch_devices={"00:17.0": {"group": 2}},
        disks={"nvme0n1": {"device": "02:00.0", "partitions": 2},
               "nvme1n1": {"multipath": True, "controllers": ["00:17.0", "02:00.0"], "partitions": 1}},
        root_fs="nvme0n1p2",
        processes=[{"pid": 5150, "comm": "kvm", "holds": ["/dev/nvme1n1p1"]}],
    )
    view = vfio.read_host(root)
    members = vfio.expand_members(view, {GPU: [], AHCI: []}, True)
    refusals = vfio.bind_refusals(view, members, list(members))
    assert [r for r in refusals if r.code == "host_users" and r.device == AHCI and "/dev/nvme1n1p1" in r.message]


def test_a_process_on_an_accelerator_node_holds_the_device(make_host):
    # The DRM accel subsystem's nodes (/dev/accel/accelN; the device's accel/accelN in sysfs).
    root = make_host(
        "desktop_dgpu",
        kernel={"modules": MODULES},
        files={"sys/bus/pci/devices/0000:01:00.0/accel/accel0/dev": "261:0\n"},
        processes=[{"pid": 6160, "comm": "inference", "holds": ["/dev/accel/accel0"]}],
    )
    view = vfio.read_host(root)
    members = vfio.expand_members(view, {GPU: []}, True)
    refusals = vfio.bind_refusals(view, members, list(members))
    assert [r for r in refusals if r.code == "host_users" and r.device == GPU and "/dev/accel/accel0" in r.message]


def test_an_nvme_over_fc_namespace_a_vm_uses_belongs_to_its_hba_port(make_host):
    # The namespace lies below a virtual controller; its HBA port is the one its host_traddr names.
    from ansible_collections.gpuvirt.host.tests.unit.plugins.module_utils import test_critical_storage_adapters as fc

    files, links = fc.nvme_fc(mounted=False)
    root = fc.adapter_host(make_host, files, links, kernel={"modules": MODULES + ["lpfc"]},
                           processes=[{"pid": 5150, "comm": "kvm", "holds": ["/dev/nvme1n1"]}],
                           **{"05:00.1": {"group": 2}})
    view = vfio.read_host(root)
    hba = fc.HBA[1]
    members = vfio.expand_members(view, {GPU: [], hba: []}, True)
    refusals = vfio.bind_refusals(view, members, list(members))
    assert [r for r in refusals if r.code == "host_users" and r.device == hba and "/dev/nvme1n1" in r.message], [
        r.message for r in refusals if r.device == hba]
