# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""topology.detect() and the passthrough verdict on fixture hosts."""

from __future__ import annotations

import gc
import glob
import os
import sys

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import mdev_info
from ansible_collections.gpuvirt.host.plugins.module_utils import pci as pci_module
from ansible_collections.gpuvirt.host.plugins.module_utils.findings import Findings
from ansible_collections.gpuvirt.host.plugins.module_utils.iommu import (
    group_members,
    group_of,
    groups_from_devices,
    iort_describes_smmu,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.pci import companions, read_pci_device, read_pci_devices
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import address_sort_key, normalize_address
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import (
    NotALinuxTree,
    check_root,
    detect,
    group_endpoints,
    passthrough_verdict,
)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures"))
import hostgen  # noqa: E402

DGPU = "0000:01:00.0"
DGPU_FUNCTIONS = ["0000:01:00.0", "0000:01:00.1", "0000:01:00.2", "0000:01:00.3"]


def gpu(topology, address):
    return next(entry for entry in topology["gpus"] if entry["address"] == address)


def device(topology, address):
    return next(entry for entry in topology["devices"] if entry["address"] == address)


def codes(topology):
    return [finding["code"] for finding in topology["findings"]]


def finding(topology, code):
    matches = [f for f in topology["findings"] if f["code"] == code]
    assert matches, "no %s finding in %s" % (code, codes(topology))
    return matches[0]


# --- desktop hosts ------------------------------------------------------------------------------


def test_desktop_discrete_gpu_is_viable_with_its_companions(make_host):
    topology = detect(make_host("desktop_dgpu"))

    verdict = gpu(topology, DGPU)["passthrough"]
    assert verdict == {"viable": True, "reasons": [], "codes": [], "devices": DGPU_FUNCTIONS}
    assert topology["iommu_groups"]["2"] == ["0000:00:01.0"] + DGPU_FUNCTIONS
    assert gpu(topology, DGPU)["name"] == "NVIDIA Corporation TU102 [GeForce RTX 2080 Ti]"


def test_desktop_device_fields(make_host):
    topology = detect(make_host("desktop_dgpu"))

    entry = device(topology, DGPU)
    assert entry["vendor_id"] == "10de" and entry["device_id"] == "1e04"
    assert entry["subsystem_vendor_id"] == "1458" and entry["subsystem_device_id"] == "37a9"
    assert entry["class"] == "030000" and entry["class_name"] == "VGA compatible controller"
    assert entry["driver"] == "nvidia" and entry["driver_override"] is None
    assert entry["iommu_group"] == "2" and entry["numa_node"] == -1 and entry["reset_methods"] == ["bus"]
    assert entry["sriov"] is None and entry["physfn"] is None and entry["nvidia_vgpu"] is None
    assert device(topology, "0000:01:00.3")["class_name"] == "Serial bus controller"
    assert device(topology, "0000:00:02.0")["boot_vga"] is True
    assert device(topology, "0000:00:02.0")["reset_methods"] == ["flr", "bus"]


def test_boot_vga_igpu_is_not_viable(make_host):
    topology = detect(make_host("desktop_dgpu"))

    verdict = gpu(topology, "0000:00:02.0")["passthrough"]
    assert verdict["viable"] is False and verdict["codes"] == ["boot_vga"]
    assert "boot VGA" in verdict["reasons"][0]


def test_gpu_on_host_graphics_driver_gets_an_info_finding(make_host):
    topology = detect(make_host("desktop_dgpu"))

    info = finding(topology, "host_graphics_driver")
    assert info["severity"] == "info" and info["device"] == DGPU
    assert "nvidia" in info["message"]
    assert info["message"].endswith(
        "bind it and its companion functions (0000:01:00.1, 0000:01:00.2, 0000:01:00.3) to vfio-pci with "
        "gpuvirt.host.vfio_pci"
    )
    # The boot VGA on i915 is the console, not a passthrough candidate.
    assert [f["device"] for f in topology["findings"] if f["code"] == "host_graphics_driver"] == [DGPU]


def test_gpu_already_on_vfio_pci_has_no_host_driver_finding(make_host):
    root = make_host("desktop_dgpu", patch_devices={a: {"driver": "vfio-pci"} for a in DGPU_FUNCTIONS})

    topology = detect(root)

    assert "host_graphics_driver" not in codes(topology)
    assert gpu(topology, DGPU)["passthrough"]["viable"] is True


def test_nic_in_the_gpu_group_makes_it_shared_and_host_critical(make_host):
    topology = detect(make_host("desktop_dgpu_nic"))

    verdict = gpu(topology, DGPU)["passthrough"]
    assert verdict["viable"] is False
    assert verdict["codes"] == ["group_shared", "host_critical"]
    shared = [r for r in verdict["reasons"] if "IOMMU group 2" in r]
    assert len(shared) == 1, "bridges (00:01.0, 00:01.1) must not count as sharing"
    assert "0000:03:00.0" in shared[0] and "RTL8125" in shared[0]
    assert "default route (enp3s0)" in verdict["reasons"][1]
    assert verdict["devices"] == DGPU_FUNCTIONS
    assert device(topology, "0000:03:00.0")["critical"] == ["NIC of the default route (enp3s0)"]


def test_sharing_endpoint_that_is_not_critical_is_only_group_shared(make_host):
    root = make_host(
        "desktop_dgpu_nic", network={"default_route": "eno1", "interfaces": {"eno1": "00:1f.6", "enp3s0": "03:00.0"}}
    )

    verdict = gpu(detect(root), DGPU)["passthrough"]

    assert verdict["codes"] == ["group_shared"]


CEZANNE_IGPU = "0000:04:00.0"
CEZANNE_APU_FUNCTIONS = ["0000:04:00.2", "0000:04:00.3", "0000:04:00.4", "0000:04:00.5", "0000:04:00.6"]


def test_the_unbound_dummy_host_bridge_of_an_apu_group_stays_with_the_host(make_host):
    # A real Cezanne laptop: the dummy host bridge 00:08.0 shares group 5 with the iGPU. It has no driver
    # and does no DMA; VFIO takes the group without it, so only the processor's functions are in the way.
    root = make_host("cezanne_laptop")
    topology = detect(root)

    verdict = gpu(topology, CEZANNE_IGPU)["passthrough"]
    assert verdict["codes"] == ["boot_vga", "group_shared"]
    shared = [reason for reason in verdict["reasons"] if "IOMMU group 5" in reason]
    assert [address for address in CEZANNE_APU_FUNCTIONS if any(address in r for r in shared)] == CEZANNE_APU_FUNCTIONS
    assert len(shared) == len(CEZANNE_APU_FUNCTIONS)
    assert "0000:00:08.0" not in " ".join(verdict["reasons"])
    assert group_endpoints(read_pci_devices(root), "5") == [CEZANNE_IGPU, "0000:04:00.1"] + CEZANNE_APU_FUNCTIONS


def cezanne_apart(make_host, **patches):
    """The same laptop with the processor's functions in groups of their own and a second display: what an
    AMD board whose GPP bridge lacks ACS shows for a GPU behind it (dummy host bridge, bridge, GPU, audio)."""
    apart = {address: {"group": 20 + index} for index, address in enumerate(CEZANNE_APU_FUNCTIONS)}
    return make_host("cezanne_laptop", patch_devices=dict(apart, **{CEZANNE_IGPU: {"boot_vga": False}}, **patches))


def test_a_group_whose_only_other_member_is_an_unbound_host_bridge_is_viable(make_host):
    verdict = gpu(detect(cezanne_apart(make_host)), CEZANNE_IGPU)["passthrough"]

    assert verdict == {"viable": True, "reasons": [], "codes": [], "devices": [CEZANNE_IGPU, "0000:04:00.1"]}


def test_a_host_bridge_a_driver_holds_still_shares_the_group(make_host):
    # A host bridge bound to a kernel driver (k10temp, an EDAC driver) makes VFIO refuse the group.
    root = cezanne_apart(make_host, **{"00:08.0": {"driver": "k10temp"}})

    verdict = gpu(detect(root), CEZANNE_IGPU)["passthrough"]

    assert verdict["codes"] == ["group_shared"]
    assert "0000:00:08.0" in verdict["reasons"][0]


PEX_GPU = "0000:52:00.0"
PEX_RAID = "0000:53:00.0"


def test_a_gpu_beside_the_root_raid_controller_behind_one_switch(make_host):
    # A real Ice Lake server: a PEX switch fans out to an RTX A5000 and to the MegaRAID that holds the
    # root disk. With the switch's ACS each has a group of its own: the GPU goes, the controller stays.
    topology = detect(make_host("icelake_pex_switch"))

    verdict = gpu(topology, PEX_GPU)["passthrough"]
    assert verdict == {"viable": True, "reasons": [], "codes": [], "devices": [PEX_GPU, "0000:52:00.1"]}
    critical = {d["address"]: d["critical"] for d in topology["devices"] if d["critical"]}
    assert critical[PEX_RAID] == ["holds the root filesystem (/dev/mapper/ubuntu--vg-ubuntu--lv)"]
    assert PEX_GPU not in critical


def test_a_switch_without_acs_puts_the_root_raid_controller_in_the_gpus_group(make_host):
    # The same switch without ACS on its downstream ports: one group from the switch down. The GPU can
    # only go with the root disk's controller, and the verdict says both why and which.
    root = make_host(
        "icelake_pex_switch",
        patch_devices={address: {"group": 48} for address in ("51:00.0", "51:10.0", "52:00.0", "52:00.1", "53:00.0")},
    )

    verdict = gpu(detect(root), PEX_GPU)["passthrough"]

    assert verdict["codes"] == ["group_shared", "host_critical"]
    assert PEX_RAID in verdict["reasons"][0] and "IOMMU group 48" in verdict["reasons"][0]
    assert verdict["reasons"][1].startswith(PEX_RAID + " holds the root filesystem")
    assert verdict["devices"] == [PEX_GPU, "0000:52:00.1"]


def test_critical_devices(make_host):
    topology = detect(make_host("desktop_dgpu"))

    critical = {d["address"]: d["critical"] for d in topology["devices"] if d["critical"]}
    assert critical == {
        "0000:02:00.0": ["holds the root filesystem (/dev/nvme0n1p2)"],
        "0000:00:1f.6": ["NIC of the default route (eno1)"],
    }


def test_critical_through_device_mapper_and_bridge(make_host):
    topology = detect(make_host("l40s_vgpu"))

    critical = {d["address"]: d["critical"] for d in topology["devices"] if d["critical"]}
    assert critical == {
        "0000:31:00.0": ["holds the root filesystem (/dev/mapper/vg-root)"],
        "0000:17:00.0": ["NIC of the default route (br0)"],
    }


def test_gpu_that_carries_the_root_disk_is_host_critical(make_host):
    root = make_host("desktop_dgpu", disks={"nvme0n1": {"device": "01:00.2", "partitions": 2}})

    verdict = gpu(detect(root), DGPU)["passthrough"]

    assert verdict["codes"] == ["host_critical"]
    assert "0000:01:00.2 holds the root filesystem" in verdict["reasons"][0]


# --- in use ---------------------------------------------------------------------------------------


def test_group_held_by_a_vm_is_in_use(make_host):
    root = make_host(
        "desktop_dgpu",
        patch_devices={a: {"driver": "vfio-pci"} for a in DGPU_FUNCTIONS},
        processes=[{"pid": 4242, "comm": "qemu-system-x86", "holds": ["01:00.0"]}],
    )

    topology = detect(root)

    verdict = gpu(topology, DGPU)["passthrough"]
    assert verdict["codes"] == ["in_use"]
    assert "4242" in verdict["reasons"][0] and "qemu-system-x86" in verdict["reasons"][0]
    assert device(topology, "0000:01:00.1")["in_use_by"] == [{"pid": 4242, "comm": "qemu-system-x86"}]
    assert device(topology, "0000:00:02.0")["in_use_by"] == []


def test_iommufd_cdev_holder_is_in_use(make_host):
    root = make_host(
        "desktop_dgpu",
        patch_devices={a: {"driver": "vfio-pci"} for a in DGPU_FUNCTIONS},
        processes=[
            {"pid": 77, "comm": "qemu-kvm", "holds": ["devices/vfio3"], "cdev_devices": {"vfio3": "01:00.0"}}
        ],
    )

    topology = detect(root)

    assert gpu(topology, DGPU)["passthrough"]["codes"] == ["in_use"]
    assert device(topology, DGPU)["in_use_by"] == [{"pid": 77, "comm": "qemu-kvm"}]


def test_mdev_held_only_through_its_iommufd_cdev_reports_its_user(make_host):
    uuid = "6c3e1ab4-4a52-4e2c-9a3e-0a4d9c1e2f01"
    root = make_host(
        "datacenter_a100",
        processes=[
            {"pid": 77, "comm": "qemu-kvm", "holds": ["devices/vfio5"], "cdev_devices": {"vfio5": "mdev:" + uuid}}
        ],
    )

    topology = detect(root)

    (mdev,) = topology["mdevs"]
    assert mdev["in_use_by"] == [{"pid": 77, "comm": "qemu-kvm"}]
    assert all(entry["in_use_by"] == [] for entry in topology["devices"]), "the cdev is the mdev's, not its parent's"


def test_mdev_held_by_a_vm_reports_its_user(make_host):
    topology = detect(make_host("datacenter_a100"))

    (mdev,) = topology["mdevs"]
    assert mdev["uuid"] == "6c3e1ab4-4a52-4e2c-9a3e-0a4d9c1e2f01"
    assert mdev["parent"] == "0000:b1:00.4" and mdev["type"] == "nvidia-471"
    assert mdev["iommu_group"] is not None
    assert mdev["in_use_by"] == [{"pid": 31337, "comm": "qemu-system-x86"}]


# --- IOMMU ----------------------------------------------------------------------------------------


def test_firmware_iommu_left_off_names_the_intel_argument(make_host):
    topology = detect(make_host("iommu_disabled"))

    assert topology["iommu"] == {
        "enabled": False,
        "vendor": "intel",
        "firmware_support": True,
        "passthrough_mode": False,
        "interrupt_remapping": False,
        "units": [],
        "unknown": [],
    }
    error = finding(topology, "iommu_off")
    assert error["severity"] == "error" and "intel_iommu=on" in error["message"] and "DMAR" in error["message"]
    assert topology["iommu_groups"] == {}
    for entry in topology["gpus"]:
        assert entry["passthrough"]["codes"][0] == "iommu_disabled"
    assert "interrupt_remapping_off" not in codes(topology)


def test_the_vfio_group_of_a_mediated_device_is_no_sign_of_an_iommu(make_host):
    # VFIO gives every mdev a group of its own (named vfio-noiommu), with the IOMMU off too, as the
    # lab kernel shows: a VM holding one runs on a host whose IOMMU is still off.
    uuid = "6f1a7c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"
    root = make_host(
        "iommu_disabled",
        mdev_parents=[{"name": "mtty", "types": [{"id": "mtty-1", "name": "Single port serial", "available": 24}]}],
        mdevs=[{"uuid": uuid, "parent": "mtty", "type": "mtty-1"}],
        processes=[{"pid": 408, "comm": "qemu-system-x86", "holds": ["mdev:" + uuid]}],
    )
    topology = detect(root)

    assert os.listdir(os.path.join(root, "sys/kernel/iommu_groups")) == [topology["mdevs"][0]["iommu_group"]]
    assert topology["iommu"]["enabled"] is False
    assert finding(topology, "iommu_off")["severity"] == "error"
    assert topology["mdevs"][0]["in_use_by"] == [{"pid": 408, "comm": "qemu-system-x86"}]
    for entry in topology["gpus"]:
        assert entry["passthrough"]["codes"][0] == "iommu_disabled"


def test_an_amd_iommu_left_off_is_not_turned_on_by_an_argument_that_does_not_exist(make_host):
    # amd_iommu= has no "on" value: AMD-Vi is on whenever the firmware describes it, unless turned off.
    topology = detect(make_host("amd_host", iommu={"enabled": False}))

    message = finding(topology, "iommu_off")["message"]
    assert "IVRS" in message and "needs no kernel argument" in message and "dmesg" in message, message
    assert "amd_iommu=on" not in message and "intel_iommu" not in message


def test_an_amd_iommu_turned_off_on_the_command_line_says_to_remove_only_that(make_host):
    root = make_host("amd_host", iommu={"enabled": False},
                     kernel={"cmdline": "root=/dev/nvme0n1p2 ro amd_iommu=off iommu=pt"})

    message = finding(detect(root), "iommu_off")["message"]
    assert "remove amd_iommu=off from the kernel command line" in message, message
    assert "amd_iommu=on" not in message and "intel_iommu" not in message


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ("intel_iommu=off", "intel_iommu=off"),
        ("intel_iommu=sm_on,off quiet", "intel_iommu=sm_on,off"),
        ('"amd_iommu=off" iommu=soft', '"amd_iommu=off"'),
        ("iommu=off intel_iommu=igfx_off", "iommu=off"),
    ],
)
def test_iommu_turned_off_on_the_command_line_says_to_remove_it(make_host, arguments, named):
    root = make_host("iommu_disabled", kernel={"cmdline": "root=/dev/nvme0n1p2 ro " + arguments})

    message = finding(detect(root), "iommu_off")["message"]
    assert message.endswith("and remove %s and reboot (gpuvirt.host.kernel_cmdline)" % named), message


def test_no_iommu_in_firmware(make_host):
    topology = detect(make_host("iommu_disabled", iommu={"firmware": False, "enabled": False}))

    assert topology["iommu"]["firmware_support"] is False
    assert finding(topology, "iommu_unsupported")["severity"] == "error"
    assert "iommu_off" not in codes(topology)


def test_a_snapshot_without_sys_firmware_says_unknown_not_absent(make_host):
    # A container or a partial capture: no /sys/firmware at all. The tables may well exist.
    root = make_host("iommu_disabled", files={"sys/firmware": None})
    topology = detect(root)

    assert topology["iommu"]["firmware_support"] is None
    assert topology["iommu"]["unknown"] == ["/sys/firmware/acpi/tables"]
    assert "iommu_unsupported" not in codes(topology)
    error = finding(topology, "iommu_off")
    assert "unknown" in error["message"] and "has no DMAR" not in error["message"]


def test_a_masked_sys_firmware_says_unknown_not_absent(make_host):
    # Container runtimes hide the host's firmware behind an empty /sys/firmware: not a host without ACPI.
    root = make_host("iommu_disabled", files={"sys/firmware": None})
    os.makedirs(os.path.join(root, "sys/firmware"))
    topology = detect(root)

    assert topology["iommu"]["firmware_support"] is None
    assert topology["iommu"]["unknown"] == ["/sys/firmware/acpi/tables"]
    assert "iommu_unsupported" not in codes(topology)
    assert "has no DMAR" not in finding(topology, "iommu_off")["message"]


def test_a_live_host_without_acpi_has_no_tables_rather_than_unknown_ones(make_host):
    root = make_host("iommu_disabled", iommu={"firmware": False}, files={"sys/firmware/acpi": None})
    os.makedirs(os.path.join(root, "sys/firmware/efi"))

    topology = detect(root)

    assert topology["iommu"]["firmware_support"] is False and topology["iommu"]["unknown"] == []
    assert "iommu_unsupported" in codes(topology)


def test_a_device_tree_host_leaves_the_firmware_unknown(make_host):
    # Its IOMMU nodes are in the device tree, which is not read.
    root = make_host("iommu_disabled", iommu={"firmware": False, "acpi": False})

    topology = detect(root)

    assert topology["iommu"]["firmware_support"] is None
    assert topology["iommu"]["unknown"] == ["/sys/firmware/devicetree"]


def test_unreadable_acpi_tables_are_unknown(make_host, monkeypatch):
    root = make_host("iommu_disabled")
    tables = os.path.join(root, "sys/firmware/acpi/tables")
    real_listdir = os.listdir

    def listdir(path):
        if not isinstance(path, int) and os.path.abspath(path) == tables:
            raise PermissionError(13, "Permission denied", path)
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    assert detect(root)["iommu"]["firmware_support"] is None


def test_a_snapshot_without_the_iommu_directories_leaves_the_iommu_unknown(make_host):
    root = make_host("desktop_dgpu", files={"sys/kernel": None, "sys/class/iommu": None})
    for link in glob.glob(os.path.join(root, "sys/bus/pci/devices/*/iommu_group")):
        os.unlink(link)

    topology = detect(root)

    assert topology["iommu"]["enabled"] is None
    assert finding(topology, "iommu_unknown")["severity"] == "warning"
    assert "iommu_off" not in codes(topology) and "iommu_unsupported" not in codes(topology)
    verdicts = {gpu["address"]: gpu["passthrough"] for gpu in topology["gpus"]}
    dgpu = verdicts["0000:01:00.0"]
    assert dgpu["viable"] is None and dgpu["codes"] == ["iommu_unknown"]
    assert "no_iommu_group" not in codes(topology)


def test_an_empty_iommu_groups_directory_means_off(make_host):
    topology = detect(make_host("iommu_disabled"))

    assert topology["iommu"]["enabled"] is False


def test_arguments_after_the_init_separator_are_not_kernel_parameters(make_host):
    root = make_host(
        "desktop_dgpu",
        kernel={"cmdline": 'root=/dev/nvme0n1p2 ro intel_iommu=on -- iommu=pt pcie_acs_override=downstream '
                'vfio_iommu_type1.allow_unsafe_interrupts=1 "single user"'},
    )
    topology = detect(root)

    assert topology["iommu"]["passthrough_mode"] is False
    assert "acs_override" not in codes(topology) and "unsafe_interrupts" not in codes(topology)
    assert topology["kernel"]["cmdline"] == ["root=/dev/nvme0n1p2", "ro", "intel_iommu=on"]
    assert topology["kernel"]["init_arguments"] == [
        "iommu=pt", "pcie_acs_override=downstream", "vfio_iommu_type1.allow_unsafe_interrupts=1", '"single user"',
    ]


def test_quoted_kernel_parameters_are_read_as_the_kernel_reads_them(make_host):
    root = make_host("desktop_dgpu", kernel={"cmdline": 'root=/dev/sda1 "iommu=pt" pcie-acs-override="downstream"'})
    topology = detect(root)

    assert topology["iommu"]["passthrough_mode"] is True
    assert "pcie_acs_override=downstream" in finding(topology, "acs_override")["message"]


def test_vmd_domains_of_five_hex_digits_are_read_named_and_grouped(make_host):
    topology = detect(make_host("vmd_host"))

    addresses = [device["address"] for device in topology["devices"]]
    assert "10000:e1:00.0" in addresses and "10000:e2:00.0" in addresses
    assert addresses == sorted(addresses, key=address_sort_key)
    assert "malformed_entry" not in codes(topology)
    drive = next(device for device in topology["devices"] if device["address"] == "10000:e1:00.0")
    assert drive["driver"] == "nvme" and drive["critical"] == ["holds the root filesystem (/dev/nvme0n1p2)"]
    vmd_group = next(device["iommu_group"] for device in topology["devices"] if device["address"] == "0000:00:0e.0")
    assert "10000:e2:00.0" in topology["iommu_groups"][vmd_group]
    assert gpu(topology, "0000:4b:00.0")["passthrough"]["viable"] is True


# A GPU on a root port VMD owns (client platforms can map any port behind VMD).
VMD_GPU = [
    {"address": "10000:e0:08.0", "parent": "00:0e.0", "ids": "8086:347c", "class": "060400", "driver": "pcieport",
     "group": "vmd"},
    {"address": "10000:e3:00.0", "parent": "10000:e0:08.0", "ids": "10de:2230", "class": "030000",
     "driver": "nouveau", "group": "vmd"},
]


@pytest.mark.parametrize("group", ["vmd", None], ids=["grouped-since-5.6", "ungrouped-before"])
def test_a_gpu_behind_vmd_is_not_viable_and_the_verdict_says_why(make_host, group):
    devices = [dict(device, group=group) if device["class"] == "030000" else device for device in VMD_GPU]
    verdict = gpu(detect(make_host("vmd_host", add_devices=devices)), "10000:e3:00.0")["passthrough"]

    assert verdict["viable"] is False and "behind_vmd" in verdict["codes"], verdict
    reason = next(r for r in verdict["reasons"] if "VMD" in r)
    assert "Intel VMD controller 0000:00:0e.0" in reason and "turn VMD off in the firmware setup" in reason


def test_a_high_domain_without_a_vmd_controller_above_it_is_not_called_vmd(make_host):
    # The same GPU, its domain made by a controller on another driver: no VMD claim.
    root = make_host("vmd_host", add_devices=VMD_GPU, patch_devices={"00:0e.0": {"driver": "ahci"}})

    assert "behind_vmd" not in gpu(detect(root), "10000:e3:00.0")["passthrough"]["codes"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("10000:E1:00.0", "10000:e1:00.0"),
        ("00010000:e1:00.0", "10000:e1:00.0"),
        ("00000000:01:00.0", "0000:01:00.0"),
        ("0009:01:00.0", "0009:01:00.0"),
        ("ffffffff:00:00.0", "ffffffff:00:00.0"),
        ("01:00.0", "0000:01:00.0"),
        ("100000000:00:00.0", None),
        ("000:01:00.0", None),
    ],
)
def test_addresses_keep_domains_of_up_to_eight_digits(text, expected):
    assert normalize_address(text) == expected


def test_amd_host(make_host):
    topology = detect(make_host("amd_host"))

    assert topology["iommu"]["vendor"] == "amd" and topology["iommu"]["units"] == ["ivhd0"]
    assert topology["iommu"]["passthrough_mode"] is True
    assert topology["cpu"]["virtualization"] == "svm"
    rx6600 = gpu(topology, "0000:0c:00.0")
    assert rx6600["driver"] == "vfio-pci" and rx6600["passthrough"]["viable"] is True
    assert rx6600["passthrough"]["devices"] == ["0000:0c:00.0", "0000:0c:00.1"]
    assert device(topology, "0000:0c:00.0")["driver_override"] == "vfio-pci"
    assert gpu(topology, "0000:0b:00.0")["passthrough"]["codes"] == ["boot_vga"]
    assert [f for f in topology["findings"] if f["severity"] != "info"] == []


@pytest.mark.parametrize(
    ("iommu", "cmdline", "expected"),
    [
        ({"interrupt_remapping": True}, "ro", True),
        ({"interrupt_remapping": False}, "ro", False),
        ({"interrupt_remapping": True}, "ro intremap=off", False),
        ({"interrupt_remapping": True}, "ro intremap=nosid,off", False),
        ({"interrupt_remapping": True}, "ro nointremap", False),
        ({"interrupt_remapping": True}, "ro intremap=off intremap=on", True),
        ({"interrupt_remapping": True}, "ro nointremap intremap=nosid,on", True),
        ({"interrupt_remapping": True}, "ro intremap=on intremap=off", False),
        ({"interrupt_remapping": True}, "ro -- intremap=off", True),
        ({"interrupt_remapping": None}, "ro", None),
        ({"interrupt_remapping": None, "ir_capable": False}, "ro", False),
    ],
)
def test_interrupt_remapping_detection(make_host, iommu, cmdline, expected):
    root = make_host("desktop_dgpu", iommu=iommu, kernel={"cmdline": cmdline})

    topology = detect(root)

    assert topology["iommu"]["interrupt_remapping"] is expected
    assert ("interrupt_remapping_off" in codes(topology)) is (expected is False)


def test_no_iommu_group_on_a_gpu(make_host):
    root = make_host("desktop_dgpu", files={"sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0/iommu_group": None})

    topology = detect(root)

    assert gpu(topology, DGPU)["passthrough"]["codes"] == ["no_iommu_group"]
    assert finding(topology, "no_iommu_group")["device"] == DGPU


# --- security findings ------------------------------------------------------------------------------


def test_acs_override_and_unsafe_interrupts_on_the_command_line_are_warned(make_host):
    cmdline = "ro intel_iommu=on pcie_acs_override=downstream,multifunction vfio_iommu_type1.allow_unsafe_interrupts=1"
    topology = detect(make_host("desktop_dgpu", kernel={"cmdline": cmdline}))

    acs = finding(topology, "acs_override")
    assert acs["severity"] == "warning" and "downstream,multifunction" in acs["message"]
    unsafe = finding(topology, "unsafe_interrupts")
    assert unsafe["severity"] == "warning" and "command line" in unsafe["message"]


def test_unsafe_interrupts_on_arm64_name_what_isolates_msis_there(make_host):
    # arm64 has no interrupt remapping: a GICv3/v4 ITS isolates MSIs, and VFIO accepts it.
    root = make_host("grace_hopper", kernel={"parameters": {"vfio_iommu_type1": {"allow_unsafe_interrupts": "Y"}}})
    message = finding(detect(root), "unsafe_interrupts")["message"]
    assert "GICv3 or v4 ITS" in message and "remapping" not in message


def test_unsafe_interrupts_set_on_the_loaded_module_is_warned(make_host):
    root = make_host("desktop_dgpu", kernel={"parameters": {"vfio_iommu_type1": {"allow_unsafe_interrupts": "Y"}}})

    assert "loaded vfio_iommu_type1" in finding(detect(root), "unsafe_interrupts")["message"]


@pytest.mark.parametrize(
    ("arguments", "warned"),
    [
        ("vfio_iommu_type1.allow_unsafe_interrupts=true", True),
        ("vfio_iommu_type1.allow_unsafe_interrupts=Y", True),
        ("vfio-iommu-type1.allow_unsafe_interrupts=on", True),
        ("vfio_iommu_type1.allow_unsafe_interrupts", True),
        ("vfio_iommu_type1.allow_unsafe_interrupts=0 vfio_iommu_type1.allow_unsafe_interrupts=yes", True),
        ("vfio_iommu_type1.allow_unsafe_interrupts=1 vfio_iommu_type1.allow_unsafe_interrupts=0", False),
        ("vfio_iommu_type1.allow_unsafe_interrupts=false", False),
        ("vfio_iommu_type1.allow_unsafe_interrupts=enabled", False),
    ],
)
def test_unsafe_interrupts_are_read_as_the_kernel_reads_a_bool_parameter(make_host, arguments, warned):
    root = make_host("desktop_dgpu", kernel={"cmdline": "ro intel_iommu=on " + arguments,
                                             "parameters": {"vfio_iommu_type1": {"allow_unsafe_interrupts": "N"}}})

    assert ("unsafe_interrupts" in codes(detect(root))) is warned


@pytest.mark.parametrize(
    ("host", "arguments", "expected"),
    [
        ("desktop_dgpu", "intel_iommu=on iommu=pt iommu=nopt", False),
        ("desktop_dgpu", "intel_iommu=on iommu=pt iommu.passthrough=0", False),
        ("desktop_dgpu", "intel_iommu=on iommu.passthrough=true", True),
        ("grace_hopper", "iommu.passthrough=1", True),
        # iommu=pt is x86's: on arm64 and POWER the word reaches init and sets nothing.
        ("grace_hopper", "iommu=pt", False),
        ("power9_host", "iommu=pt", False),
    ],
)
def test_passthrough_mode_is_what_the_kernel_makes_of_its_arguments(make_host, host, arguments, expected):
    topology = detect(make_host(host, kernel={"cmdline": "root=/dev/nvme0n1p2 ro " + arguments}))

    assert topology["iommu"]["passthrough_mode"] is expected


def test_clean_host_has_no_security_findings(make_host):
    root = make_host("desktop_dgpu", kernel={"parameters": {"vfio_iommu_type1": {"allow_unsafe_interrupts": "N"}}})

    assert not {"acs_override", "unsafe_interrupts"} & set(codes(detect(root)))


# --- CPU ----------------------------------------------------------------------------------------------


def test_no_cpu_virtualization_is_an_error(make_host):
    topology = detect(make_host("desktop_dgpu", cpu={"virtualization": None, "kvm": False}))

    assert topology["cpu"]["virtualization"] is None and topology["cpu"]["kvm"] is False
    assert finding(topology, "no_cpu_virtualization")["severity"] == "error"


def test_kvm_module_missing_is_a_warning(make_host):
    topology = detect(make_host("desktop_dgpu", cpu={"kvm": False}))

    warning = finding(topology, "kvm_unavailable")
    assert warning["severity"] == "warning" and "kvm_intel" in warning["message"]


# --- a host that is itself a virtual machine ----------------------------------------------------------------


def test_a_kvm_guest_without_a_virtual_iommu_is_told_to_get_one_from_its_hypervisor(make_host):
    topology = detect(make_host("kvm_guest_gpu"))

    assert topology["cpu"]["virtual_machine"] is True and topology["cpu"]["hypervisor"] == "OpenStack"
    message = finding(topology, "iommu_unsupported")["message"]
    assert message.startswith("no IOMMU: this virtual machine (OpenStack) has no virtual IOMMU (no DMAR or IVRS")
    assert "caching_mode='on'" in message and "intel-iommu,intremap=on,caching-mode=on" in message
    assert "enable VT-d" not in message and "smmuv3" not in message
    assert "iommu_off" not in codes(topology)
    nested = finding(topology, "no_cpu_virtualization")["message"]
    assert "nested=1" in nested and "host-passthrough" in nested
    assert "enable virtualization in the firmware" not in nested


def test_bare_metal_keeps_the_firmware_advice(make_host):
    topology = detect(make_host("iommu_disabled", iommu={"firmware": False, "enabled": False},
                                cpu={"virtualization": None, "kvm": False}))

    assert topology["cpu"]["virtual_machine"] is False and topology["cpu"]["hypervisor"] is None
    advice = "enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware"
    assert advice in finding(topology, "iommu_unsupported")["message"]
    assert "enable virtualization in the firmware setup" in finding(topology, "no_cpu_virtualization")["message"]


def test_a_vm_whose_acpi_tables_are_unknown_is_not_told_it_has_none(make_host):
    topology = detect(make_host("kvm_guest_gpu", files={"sys/firmware": None}))

    assert topology["iommu"]["firmware_support"] is None
    error = finding(topology, "iommu_off")
    assert "whether it has one is unknown" in error["message"] and "intel_iommu=on" in error["message"]
    assert "iommu_unsupported" not in codes(topology)


def test_a_vm_with_a_virtual_iommu_left_off_gets_the_kernel_argument(make_host):
    # The lab's case: QEMU gives the VM a virtual VT-d (a DMAR table) and the kernel boots with intel_iommu=off.
    topology = detect(make_host("iommu_disabled", cpu={"hypervisor": True}, machine={"dmi": {"sys_vendor": "QEMU"}}))

    assert topology["cpu"]["virtual_machine"] is True
    assert "add intel_iommu=on to the kernel command line" in finding(topology, "iommu_off")["message"]


def test_an_arm64_vm_without_an_smmu_gets_the_arm_virtual_iommu(make_host):
    root = make_host("grace_hopper", iommu={"enabled": False, "firmware": False}, cpu={"kvm": False},
                     machine={"dmi": {"sys_vendor": "QEMU", "product_name": "KVM Virtual Machine"}})
    topology = detect(root)

    # QEMU's virt machine under KVM writes product_name "KVM Virtual Machine", read before sys_vendor.
    assert topology["cpu"]["virtual_machine"] is True and topology["cpu"]["hypervisor"] == "KVM"
    message = finding(topology, "iommu_unsupported")["message"]
    assert "no virtual IOMMU (no SMMU node in its IORT ACPI table)" in message and "<iommu model='smmuv3'/>" in message
    assert "intel" not in message
    assert "virtualization=on" in finding(topology, "kvm_unavailable")["message"]


def test_an_arm64_vm_whose_iort_describes_no_smmu_gets_the_arm_virtual_iommu(make_host):
    # QEMU's virt machine writes an IORT whenever its GIC has an ITS (the MSI routing), with an SMMUv3 node
    # only for -machine virt,iommu=smmuv3 (hw/arm/virt-acpi-build.c build_iort()): such a table is no SMMU.
    root = make_host("grace_hopper", iommu={"enabled": False, "iort_smmu": False}, cpu={"kvm": False},
                     machine={"dmi": {"sys_vendor": "QEMU", "product_name": "KVM Virtual Machine"}})
    topology = detect(root)

    assert topology["iommu"]["firmware_support"] is False and topology["iommu"]["vendor"] is None
    message = finding(topology, "iommu_unsupported")["message"]
    assert "no SMMU node in its IORT" in message and "<iommu model='smmuv3'/>" in message
    assert "CONFIG_ARM_SMMU_V3" not in message
    # With the SMMU node, the firmware describes one: the kernel's driver is what is missing.
    described = detect(make_host("grace_hopper", iommu={"enabled": False}, cpu={"kvm": False},
                                 machine={"dmi": {"sys_vendor": "QEMU", "product_name": "KVM Virtual Machine"}}))
    assert described["iommu"]["firmware_support"] is True and described["iommu"]["vendor"] == "arm"


def test_the_iort_tells_whether_it_describes_an_smmu(make_host):
    root = make_host("grace_hopper", iommu={"enabled": False, "iort_smmu": False})
    assert iort_describes_smmu(root) is False
    assert iort_describes_smmu(make_host("grace_hopper", iommu={"enabled": False})) is True
    # A snapshot keeps the table's presence only: the platform devices the kernel made of its SMMU
    # nodes tell (drivers/acpi/arm64/iort.c iort_add_platform_device(): "arm-smmu-v3.N.auto").
    with open(os.path.join(root, "sys/firmware/acpi/tables/IORT"), "wb"):
        pass
    assert iort_describes_smmu(root) is None
    os.makedirs(os.path.join(root, "sys/devices/platform/serial8250"))
    assert iort_describes_smmu(root) is False
    os.makedirs(os.path.join(root, "sys/devices/platform/arm-smmu-v3.0.auto"))
    assert iort_describes_smmu(root) is True


def test_a_device_tree_arm64_vm_without_an_smmu_is_unknown_and_gets_the_arm_advice(make_host):
    root = make_host("grace_hopper", iommu={"enabled": False, "firmware": False, "acpi": False},
                     machine={"device_tree_hypervisor": "linux,kvm"})
    topology = detect(root)

    assert topology["cpu"]["virtual_machine"] is True and topology["cpu"]["hypervisor"] == "KVM"
    message = finding(topology, "iommu_off")["message"]
    assert "this virtual machine (KVM) can only have a virtual one" in message and "device-tree VM" in message
    assert "<iommu model='smmuv3'/>" in message and "intel" not in message


def test_the_topology_summary_names_the_hypervisor(make_host):
    from ansible_collections.gpuvirt.host.plugins.filter.topology_summary import topology_summary

    lines = topology_summary(detect(make_host("kvm_guest_gpu")))
    assert lines[:2] == ["Host: virtual machine (OpenStack)",
                         "IOMMU: off (the hypervisor gives this virtual machine none)"]
    assert not topology_summary(detect(make_host("iommu_disabled")))[0].startswith("Host:")


# --- SR-IOV, mdev, vGPU ---------------------------------------------------------------------------------


def test_sriov_gpu_with_legacy_mdev_types(make_host):
    topology = detect(make_host("datacenter_a100"))

    pf = device(topology, "0000:b1:00.0")
    assert pf["sriov"]["total_vfs"] == 20 and pf["sriov"]["num_vfs"] == 16
    assert pf["sriov"]["vfs"][:5] == ["0000:b1:00.4", "0000:b1:00.5", "0000:b1:00.6", "0000:b1:00.7", "0000:b1:01.0"]
    assert len(pf["sriov"]["vfs"]) == 16 and pf["sriov"]["vfs"][-1] == "0000:b1:02.3"
    assert device(topology, "0000:b1:02.3")["physfn"] == "0000:b1:00.0"
    parents = {entry["parent"]: entry["types"] for entry in topology["mdev_parents"]}
    assert sorted(parents) == pf["sriov"]["vfs"]
    a100_4c = parents["0000:b1:00.5"][0]
    assert a100_4c == {
        "id": "nvidia-471",
        "name": "NVIDIA A100-4C",
        "description": "num_heads=1, frl_config=60, framebuffer=4096M, max_resolution=4096x2160, max_instance=10",
        "available_instances": 1,
        "device_api": "vfio-pci",
    }
    assert parents["0000:b1:00.4"][0]["available_instances"] == 0
    vf = gpu(topology, "0000:b1:00.4")
    assert vf["is_vf"] is True and vf["mdev_parent"] is True and vf["physfn"] == "0000:b1:00.0"
    assert vf["passthrough"]["devices"] == ["0000:b1:00.4"], "VFs are not companions of each other"
    assert "host_graphics_driver" not in codes(topology), "a vGPU host needs the nvidia driver"


def test_per_vf_nvidia_vgpu_interface(make_host):
    topology = detect(make_host("l40s_vgpu"))

    busy = device(topology, "0000:cb:00.4")["nvidia_vgpu"]
    assert busy == {"creatable": [], "current": 1041}
    free = device(topology, "0000:cb:00.5")["nvidia_vgpu"]
    assert free["current"] == 0
    assert free["creatable"][0] == {"id": 1030, "name": "NVIDIA L40S-1B"}
    assert [t["id"] for t in free["creatable"]] == [1030, 1031] + list(range(1036, 1046))
    assert device(topology, "0000:cb:00.0")["nvidia_vgpu"] is None
    assert topology["mdev_parents"] == [] and topology["mdevs"] == []
    assert gpu(topology, "0000:cb:00.5")["nvidia_vgpu"] is True
    # The same under the generic vgpu key, which every vendor's devices have.
    assert device(topology, "0000:cb:00.4")["vgpu"] == dict(busy, vendor="nvidia")
    assert device(topology, "0000:cb:00.5")["vgpu"] == dict(free, vendor="nvidia")
    assert device(topology, "0000:cb:00.0")["vgpu"] is None


def test_gvtg_types_without_names(make_host):
    topology = detect(make_host("intel_gvtg"))

    (parent,) = topology["mdev_parents"]
    assert parent["parent"] == "0000:00:02.0"
    assert [(t["id"], t["name"], t["available_instances"]) for t in parent["types"]] == [
        ("i915-GVTg_V5_4", None, 2),
        ("i915-GVTg_V5_8", None, 4),
    ]
    assert parent["types"][0]["description"].splitlines()[0] == "low_gm_size: 128MB"
    assert gpu(topology, "0000:00:02.0")["mdev_parent"] is True


def test_virtual_mdev_parent(make_host):
    root = make_host(
        "desktop_dgpu",
        mdev_parents=[{"name": "mdpy", "types": [{"id": "mdpy-vga", "name": "vga", "available": 4}]}],
        mdevs=[{"uuid": "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001", "parent": "mdpy", "type": "mdpy-vga"}],
    )

    topology = detect(root)

    assert topology["mdev_parents"][0]["parent"] == "mdpy"
    assert topology["mdevs"][0]["parent"] == "mdpy" and topology["mdevs"][0]["type"] == "mdpy-vga"


# --- the API other modules build on ------------------------------------------------------------------------


def test_reader_api_on_one_device(make_host):
    root = make_host("desktop_dgpu")

    one = read_pci_device(root, "01:00.1")
    assert one.address == "0000:01:00.1" and one.class_code == "040300" and one.driver == "snd_hda_intel"
    assert read_pci_device(root, "05:00.0") is None
    assert read_pci_device(root, "not-an-address") is None
    assert group_of(root, "01:00.0") == "2"
    assert group_members(root, "2") == ["0000:00:01.0"] + DGPU_FUNCTIONS


def test_companions_and_group_endpoints(make_host):
    root = make_host("datacenter_a100")
    devices = read_pci_devices(root)

    assert companions(devices, "0000:b1:00.0") == [], "VFs in the PF's slot are not companions"
    assert companions(devices, "0000:b1:00.5") == []
    desktop = read_pci_devices(make_host("desktop_dgpu"))
    assert companions(desktop, DGPU) == DGPU_FUNCTIONS[1:]
    assert group_endpoints(desktop, "2") == DGPU_FUNCTIONS


def test_passthrough_verdict_standalone(make_host):
    devices = read_pci_devices(make_host("desktop_dgpu_nic"))

    assert passthrough_verdict(DGPU, devices, iommu_enabled=True)["codes"] == ["group_shared"]
    assert passthrough_verdict(DGPU, devices, iommu_enabled=False)["codes"] == ["iommu_disabled", "group_shared"]
    held = {"2": [{"pid": 9, "comm": "qemu"}]}
    assert passthrough_verdict(DGPU, devices, True, holders=held)["codes"] == ["group_shared", "in_use"]
    assert groups_from_devices(devices)["2"][0] == "0000:00:01.0"


def test_findings_are_ordered_host_wide_first(make_host):
    root = make_host("iommu_disabled", files={"sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0/numa_node": "x"})

    topology = detect(root)

    devices_seen = [f["device"] for f in topology["findings"]]
    assert devices_seen[0] is None and devices_seen[-1] is not None
    assert devices_seen == sorted(devices_seen, key=lambda d: (d is not None, d or ""))


def test_large_host(make_host):
    topology = detect(make_host("large_synthetic"))

    assert 550 <= len(topology["devices"]) <= 650
    pfs = [g for g in topology["gpus"] if g["sriov_total_vfs"]]
    vfs = [g for g in topology["gpus"] if g["is_vf"]]
    assert len(pfs) == 8 and len(vfs) == 8 * 16
    assert all(g["passthrough"]["viable"] for g in vfs)
    assert len(topology["mdev_parents"]) == 4 * 16 and len(topology["mdevs"]) == 2
    assert [f for f in topology["findings"] if f["severity"] != "info"] == []


# --- root checks -------------------------------------------------------------------------------------------


def test_check_root(tmp_path):
    with pytest.raises(NotALinuxTree, match="is not a directory"):
        check_root(str(tmp_path / "missing"))
    with pytest.raises(NotALinuxTree, match="does not look like a Linux filesystem tree"):
        check_root(str(tmp_path))
    os.makedirs(tmp_path / "proc")
    (tmp_path / "proc" / "cmdline").write_text("ro\n")
    check_root(str(tmp_path))


def test_findings_collector_rejects_unknown_severity_and_deduplicates():
    findings = Findings()
    findings.warning("x", "same")
    findings.warning("x", "same")
    assert len(findings) == 1
    with pytest.raises(ValueError):
        findings.add("fatal", "x", "y")


# --- architectures ----------------------------------------------------------------------------------


def test_an_arm64_host_has_an_smmu_from_iort_and_no_x86_advice(make_host):
    topology = detect(make_host("grace_hopper"))

    assert topology["cpu"]["architecture"] == "aarch64" and topology["cpu"]["virtualization"] == "el2"
    iommu = topology["iommu"]
    assert iommu["enabled"] is True and iommu["vendor"] == "arm" and iommu["firmware_support"] is True
    assert iommu["units"][0] == "smmu3.0x0000000011000000"
    assert iommu["interrupt_remapping"] is None and iommu["passthrough_mode"] is True
    assert [f["code"] for f in topology["findings"] if f["severity"] != "info"] == []
    assert gpu(topology, "0009:01:00.0")["passthrough"]["viable"] is True


def test_an_arm64_host_without_its_smmu_gets_arm_advice(make_host):
    topology = detect(make_host("grace_hopper", iommu={"enabled": False}))

    error = finding(topology, "iommu_off")
    assert "IORT" in error["message"] and "arm-smmu-v3" in error["message"]
    assert "intel_iommu" not in error["message"] and "VT-d" not in error["message"]
    assert finding(detect(make_host("grace_hopper", iommu={"enabled": False, "firmware": False})),
                   "iommu_unsupported")["message"].startswith("no IOMMU: the firmware describes no SMMU")


def test_x86_arguments_on_an_arm64_command_line_are_flagged(make_host):
    root = make_host("grace_hopper", kernel={"cmdline": "root=/dev/nvme0n1p2 ro intel_iommu=on iommu=pt"})
    warning = finding(detect(root), "foreign_kernel_arguments")
    assert "intel_iommu=on iommu=pt" in warning["message"] and "iommu.passthrough" in warning["message"]


def test_arm64_arguments_on_an_x86_command_line_are_flagged_and_init_words_are_not(make_host):
    cmdline = "root=/dev/sda1 intel_iommu=on arm-smmu-v3.disable_msipolling=1 -- iommu=nobypass"
    root = make_host("desktop_dgpu", kernel={"cmdline": cmdline})
    warning = finding(detect(root), "foreign_kernel_arguments")
    assert warning["message"].startswith("arm-smmu-v3.disable_msipolling=1 on the kernel command line")
    assert "x86_64" in warning["message"] and "nobypass" not in warning["message"].split(":")[0]
    assert not [f for f in detect(make_host("desktop_dgpu"))["findings"] if f["code"] == "foreign_kernel_arguments"]


def test_arm64_without_kvm_says_why(make_host):
    topology = detect(make_host("grace_hopper", cpu={"kvm": False}))
    assert topology["cpu"]["virtualization"] is None
    assert "EL2" in finding(topology, "kvm_unavailable")["message"]


def test_a_power_host_is_unsupported_rather_than_missing_vt_d(make_host):
    topology = detect(make_host("power9_host"))

    assert topology["cpu"]["architecture"] == "ppc64le"
    error = finding(topology, "architecture_unsupported")
    assert error["severity"] == "error" and "sPAPR TCE" in error["message"] and "nothing is changed" in error["message"]
    assert not {"iommu_off", "iommu_unsupported", "iommu_unknown", "no_cpu_virtualization"} & set(codes(topology))
    v100 = gpu(topology, "0035:03:00.0")["passthrough"]
    assert v100["viable"] is False and v100["codes"][0] == "architecture_unsupported"


@pytest.mark.parametrize("name", ["gvtg_laptop", "gvtg_laptop_enabled", "intel_flex_sriov", "amd_mxgpu",
                                  "amd_mxgpu_no_driver", "grace_hopper", "vmd_host", "power9_host"])
def test_platform_hosts_read_cleanly(make_host, name):
    topology = detect(make_host(name))
    assert not {"malformed_attribute", "malformed_entry", "unreadable_attribute", "unreadable_device"} & set(
        codes(topology)
    )
    assert topology["gpus"]


@pytest.mark.parametrize("name", [n for n in hostgen.host_names() if n != "large_synthetic"])
def test_directory_descriptors_read_what_plain_paths_read(make_host, monkeypatch, name):
    root = make_host(name)
    fast = detect(root)
    monkeypatch.setattr(pci_module, "open_directory", lambda *args: None)
    monkeypatch.setattr(mdev_info, "open_directory", lambda *args: None)
    assert detect(root) == fast


@pytest.mark.parametrize("name", hostgen.host_names())
def test_detection_makes_no_reference_cycle_so_pausing_the_collector_frees_nothing_late(make_host, name):
    root = make_host(name)
    gc.collect()
    gc.disable()
    try:
        detect(root)
        unreachable = gc.collect()
    finally:
        gc.enable()

    assert unreachable == 0, "detect() left %d objects in reference cycles" % unreachable


def test_detection_gives_the_collector_back_as_it_found_it(make_host, tmp_path):
    root = make_host("desktop_dgpu")

    assert gc.isenabled()
    detect(root)
    assert gc.isenabled()
    with pytest.raises(NotALinuxTree):
        detect(str(tmp_path))
    assert gc.isenabled(), "given back when detection fails too"

    gc.disable()
    try:
        detect(root)
        assert not gc.isenabled(), "a caller that paused it keeps it paused"
    finally:
        gc.enable()
