# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The topology_summary filter: what a person reads in the report."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.gpuvirt.host.plugins.filter.topology_summary import FilterModule, topology_summary


def _topology(iommu_on=True):
    shared_reason = "IOMMU group 9 also holds 0000:03:02.0 (82540EM), which is not a function of this device"
    return {
        "iommu": {"enabled": iommu_on, "vendor": "intel", "firmware_support": True, "passthrough_mode": False,
                  "interrupt_remapping": True if iommu_on else None},
        "kernel": {"release": "6.1.0-56-amd64", "cmdline": ["ro", "intel_iommu=on" if iommu_on else "intel_iommu=off"]},
        "iommu_groups": {"1": ["0000:00:02.0"], "8": ["0000:01:00.0", "0000:01:00.1"],
                         "9": ["0000:02:00.0", "0000:03:01.0", "0000:03:02.0"]},
        "gpus": [
            {"address": "0000:03:01.0", "vendor_id": "1234", "device_id": "1111",
             "name": "Display controller [1234:1111]", "driver": "bochs-drm",
             "boot_vga": False, "is_vf": False, "iommu_group": "9",
             "passthrough": {"viable": False, "codes": ["group_shared"], "reasons": [shared_reason],
                             "devices": ["0000:03:01.0"]}},
            {"address": "0000:00:02.0", "vendor_id": "1234", "device_id": "1111", "name": "QEMU VGA",
             "driver": "bochs-drm", "boot_vga": True, "is_vf": False, "iommu_group": "1",
             "passthrough": {"viable": False, "codes": ["boot_vga"], "reasons": ["it is the boot VGA"],
                             "devices": ["0000:00:02.0"]}},
            {"address": "0000:01:00.0", "vendor_id": "1002", "device_id": "5046", "name": "Rage 128 PRO",
             "driver": None, "boot_vga": False, "is_vf": False, "iommu_group": "8",
             "passthrough": {"viable": True, "codes": [], "reasons": [],
                             "devices": ["0000:01:00.0", "0000:01:00.1"]}},
        ],
        "mdev_parents": [
            {"parent": "mtty", "types": [{"id": "mtty-2", "name": "Dual port", "available_instances": 12}]},
            {"parent": "mbochs", "types": [{"id": "mbochs-small", "name": "mbochs-small", "available_instances": 8},
                                           {"id": "mbochs-large", "name": "large", "available_instances": 2}]},
        ],
        "mdevs": [{"uuid": "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001", "parent": "mbochs", "type": "mbochs-small"}],
        "devices": [
            {"address": "0000:04:00.0", "vendor_id": "1b36", "device_id": "0010", "device_name": "NVMe",
             "driver": "nvme", "sriov": {"total_vfs": 4, "num_vfs": 2, "vfs": []}},
            {"address": "0000:00:03.0", "vendor_id": "1af4", "device_id": "1000", "driver": "virtio-pci",
             "sriov": None},
        ],
        "findings": [{"severity": "warning", "code": "no_virtualization", "message": "no VT-x", "device": None}],
    }  # fmt: skip


def _gpu_block(lines, address):
    start = next(i for i, line in enumerate(lines) if line.startswith("  " + address))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("    ")), len(lines))
    return lines[start:end]


def test_gpus_are_listed_in_address_order_with_group_driver_and_flags():
    lines = topology_summary(_topology())
    assert lines[0] == "IOMMU: on (intel, interrupt remapping on)"
    gpu_lines = [line for line in lines if line.startswith("  0000:0")]
    assert [line.split()[0] for line in gpu_lines[:3]] == ["0000:00:02.0", "0000:01:00.0", "0000:03:01.0"]
    boot = _gpu_block(lines, "0000:00:02.0")
    assert "BOOT VGA" in boot[0] and "group=1" in boot[0] and "driver=bochs-drm" in boot[0]
    assert "BOOT VGA" not in _gpu_block(lines, "0000:01:00.0")[0]


def test_viable_gpu_names_the_functions_to_bind_together():
    block = _gpu_block(topology_summary(_topology()), "0000:01:00.0")
    assert "driver=none" in block[0]
    assert "      group 8: 0000:01:00.0, 0000:01:00.1" in block
    assert "      passthrough: viable, bind together 0000:01:00.0, 0000:01:00.1" in block


def test_not_viable_gpu_shows_codes_and_every_reason():
    block = _gpu_block(topology_summary(_topology()), "0000:03:01.0")
    assert block[0].startswith("  0000:03:01.0 [1234:1111] Display controller  driver=")
    assert "      passthrough: NOT viable (group_shared)" in block
    assert any("0000:03:02.0" in line and line.startswith("        - ") for line in block)
    assert "      group 9: 0000:02:00.0, 0000:03:01.0, 0000:03:02.0" in block


def test_mdev_parents_mdevs_sriov_and_findings():
    lines = topology_summary(_topology())
    assert "Mediated-device parents: 2" in lines
    assert "  mbochs: mbochs-small (8 free); mbochs-large (large, 2 free)" in lines
    assert "  mtty: mtty-2 (Dual port, 12 free)" in lines
    assert "Mediated devices: 1" in lines
    assert "  83b8f4f2-509f-382f-3c1e-e6bfe0fa1001  mbochs-small on mbochs" in lines
    assert "SR-IOV physical functions: 1" in lines
    assert "  0000:04:00.0 [1b36:0010] NVMe  driver=nvme  VFs 2 of 4 enabled" in lines
    assert "  [warning] no_virtualization: no VT-x" in lines


def test_iommu_off_says_so_and_accepts_the_whole_registered_result():
    lines = topology_summary({"changed": False, "topology": _topology(iommu_on=False)})
    assert lines[0].startswith("IOMMU: off (the firmware offers intel")
    assert "intel_iommu=off" in lines[1]


def test_missing_keys_and_nulls_do_not_break_the_report():
    lines = topology_summary({"iommu": {"enabled": False}, "gpus": [{"address": "0000:00:02.0"}]})
    assert lines[0] == "IOMMU: off (no IOMMU offered by the firmware)"
    assert "GPUs: 1" in lines
    assert "      passthrough: NOT viable (no reason given)" in lines


@pytest.mark.parametrize("bad", [None, "text", ["list"]])
def test_bad_input_is_a_clear_filter_error(bad):
    with pytest.raises(AnsibleFilterError, match="topology_summary expects"):
        topology_summary(bad)


def test_filter_is_registered():
    assert FilterModule().filters()["topology_summary"] is topology_summary


def test_a_boot_display_of_another_class_is_flagged():
    topology = _topology()
    topology["gpus"][0]["passthrough"] = {"viable": False, "codes": ["boot_display", "group_shared"],
                                          "reasons": ["showed the boot sequence"], "devices": ["0000:03:01.0"]}
    lines = topology_summary(topology)
    assert "BOOT DISPLAY" in _gpu_block(lines, "0000:03:01.0")[0]
    assert "BOOT DISPLAY" not in _gpu_block(lines, "0000:00:02.0")[0]


def test_passthrough_mode_is_named_by_the_architectures_own_argument():
    x86 = _topology()
    x86["iommu"]["passthrough_mode"] = True
    assert topology_summary(x86)[0] == "IOMMU: on (intel, interrupt remapping on, iommu=pt)"
    # iommu= is x86's parameter (kernel-parameters.txt [X86]); arm64 asks with iommu.passthrough=1.
    arm = _topology()
    arm["iommu"].update(vendor="arm", passthrough_mode=True, interrupt_remapping=None)
    arm["cpu"] = {"architecture": "aarch64"}
    assert topology_summary(arm)[0] == "IOMMU: on (arm, iommu.passthrough=1)"
