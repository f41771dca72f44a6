# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Intel backend (vendor_intel): which iGPUs have GVT-g and what it needs at boot (the IOMMU, GVT-g
on however it was set; not GuC submission off, which these iGPUs never select), and what an SR-IOV plan
may promise (mainline i915 has no PF mode, xe's unlimited default, the platforms' VF counts and the DKMS
recipes), on the Intel fixture hosts (tests/fixtures/hosts/gvtg_laptop*, intel_*) and an Alder Lake host
described here."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import enablement, hoststate, restore, sysfs, vendor_intel
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect
from ansible_collections.gpuvirt.host.plugins.module_utils.vendor_plan import EnableError
from ansible_collections.gpuvirt.host.tests.sim import gvt_g
from ansible_collections.gpuvirt.host.tests.unit.plugins.modules.test_virtualization_mode import snapshot, with_grub

IGPU = "0000:00:02.0"
FLEX = "0000:4e:00.0"
LAPTOP_CMDLINE = ("BOOT_IMAGE=/boot/vmlinuz-6.5.0-41-generic root=UUID=8e0f6d4c-5a1b-4c2d-9e3f-a0b1c2d3e4f5 ro quiet "
                  "splash")
UNLIMITED = "4294967295"  # UINT_MAX: xe's max_vfs default since 6.17
ADL_CMDLINE = "BOOT_IMAGE=/vmlinuz-6.8.0-45-generic root=/dev/nvme0n1p2 ro quiet intel_iommu=on"
IOMMU_OFF = {"vendor": "intel", "firmware": True, "enabled": False, "interrupt_remapping": False}

# A small server on a 12th-gen Core (Alder Lake-S): its UHD Graphics 770 iGPU (the boot VGA and only GPU) on
# the mainline i915 of Ubuntu's 6.8 kernel, which has no SR-IOV PF mode: i915's parameters directory lists
# no max_vfs, and the iGPU's SR-IOV capability shows through the PCI core alone (sriov_totalvfs is the
# capability's TotalVFs, 7; nothing calls pci_sriov_set_totalvfs). udev loaded xe by its modalias (xe lists
# Alder Lake behind force_probe), but xe drives nothing. Kept here rather than in tests/fixtures/hosts: a
# capture (tests/fixtures/capture.py) keeps no i915 parameters, so its snapshot cannot tell mainline i915.
ADL_HOST = {
    "kernel": {
        "release": "6.8.0-45-generic",
        "cmdline": ADL_CMDLINE,
        "modules": ["kvm_intel", "kvm", "i915", "xe", "drm_kms_helper", "snd_hda_intel", "xhci_pci", "e1000e", "nvme"],
        "parameters": {"i915": {"enable_guc": "-1", "enable_gvt": "N"}, "xe": {"force_probe": ""}},
    },
    "cpu": {"vendor": "GenuineIntel", "model": "12th Gen Intel(R) Core(TM) i7-12700", "count": 8},
    "iommu": {"vendor": "intel", "firmware": True, "enabled": True, "interrupt_remapping": True},
    "devices": [
        {"address": "00:00.0", "ids": "8086:4668", "class": "060000", "vendor_name": "Intel Corporation",
         "device_name": "12th Gen Core Processor Host Bridge/DRAM Registers"},
        {"address": "00:02.0", "ids": "8086:4680", "subsystem": "1043:8694", "class": "030000", "driver": "i915",
         "boot_vga": True, "reset_methods": ["flr", "bus"], "device_name": "AlderLake-S GT1 [UHD Graphics 770]",
         "sriov": {"total_vfs": 7, "num_vfs": 0, "offset": 1, "stride": 1, "vf_device": "4680"}},
        {"address": "00:06.0", "ids": "8086:464d", "class": "060400", "driver": "pcieport",
         "device_name": "12th Gen Core Processor PCI Express x4 Controller #0"},
        {"address": "01:00.0", "parent": "00:06.0", "ids": "144d:a80a", "class": "010802", "driver": "nvme",
         "vendor_name": "Samsung Electronics Co Ltd", "device_name": "NVMe SSD Controller PM9A1/PM9A3/980PRO"},
        {"address": "00:14.0", "ids": "8086:7ae0", "class": "0c0330", "driver": "xhci_hcd", "group": "usb",
         "device_name": "Alder Lake-S PCH USB 3.2 Gen 2x2 XHCI Controller"},
        {"address": "00:1f.0", "ids": "8086:7a84", "class": "060100", "group": "pch",
         "device_name": "Z690 Chipset LPC/eSPI Controller"},
        {"address": "00:1f.3", "ids": "8086:7ad0", "class": "040300", "driver": "snd_hda_intel", "group": "pch",
         "device_name": "Alder Lake-S HD Audio Controller"},
        {"address": "00:1f.6", "ids": "8086:1a1c", "class": "020000", "driver": "e1000e", "group": "pch",
         "device_name": "Ethernet Connection (17) I219-LM"},
    ],
    "disks": {"nvme0n1": {"device": "01:00.0", "partitions": 2}},
    "root_fs": "nvme0n1p2",
    "network": {"default_route": "eno1", "interfaces": {"eno1": "00:1f.6"}},
}


def modes(root, address=IGPU):
    gpu = next(entry for entry in detect(root)["gpus"] if entry["address"] == address)
    return {mode["mode"]: mode for mode in gpu["virtualization"]}


def plan(root, mode, address=IGPU, **options):
    device, host = enablement.read_gpu(root, address)
    return enablement.plan_mode(device, host, mode, options)


def unmet(enable_plan):
    return [need for need, satisfied in enable_plan.running_needs if not satisfied]


# -- GVT-g: which iGPUs have it ------------------------------------------------------------------------


@pytest.mark.parametrize("device_id", ["0a84", "1a84", "1a85", "5a84", "5a85"])
def test_every_broxton_id_of_pciids_is_gvt_g_capable(make_host, device_id):
    assert vendor_intel.gvt_g_generation(device_id) and vendor_intel.gvt_g_generation(device_id.upper())
    gvt = modes(make_host("gvtg_laptop", patch_devices={"00:02.0": {"ids": "8086:" + device_id}}))["gvt-g"]
    assert "unsupported" not in gvt
    assert gvt["missing"] == ["i915.enable_gvt=1 on the kernel command line and a reboot", "the kvmgt module loaded"]


@pytest.mark.parametrize("device_id, platform", [("3185", "a Gemini Lake iGPU"), ("3184", "a Gemini Lake iGPU"),
                                                 ("8a52", "not one of them")])
def test_an_igpu_without_gvt_g_is_refused_without_a_wrong_generation(make_host, device_id, platform):
    # Gemini Lake is a Gen9 iGPU without GVT-g, Ice Lake a Gen11 one: no generation is claimed for either.
    root = make_host("gvtg_laptop", patch_devices={"00:02.0": {"ids": "8086:" + device_id}})
    gvt = modes(root)["gvt-g"]
    assert gvt["ready"] is False and "Broadwell to Comet Lake" in gvt["unsupported"]
    assert "%s [%s] is %s" % (IGPU, device_id, platform) in gvt["unsupported"]
    assert "Gen12" not in gvt["unsupported"] and "generation" not in gvt["unsupported"]
    assert "SR-IOV" not in gvt["unsupported"]
    with pytest.raises(EnableError) as refused:
        plan(root, "gvt-g")
    assert "Gen12" not in str(refused.value) and str(refused.value).endswith("nothing changed")


def test_an_igpu_the_firmware_made_a_display_controller_keeps_gvt_g(make_host):
    # With a discrete card as the primary display, the firmware gives the iGPU class 0380 (display
    # controller) instead of 0300 (VGA); GVT-g does not depend on the class.
    root = make_host("skylake_igd_secondary")

    gvt = modes(root)["gvt-g"]

    assert gvt == {"mode": "gvt-g", "ready": False,
                   "missing": ["i915.enable_gvt=1 on the kernel command line and a reboot", "the kvmgt module loaded"]}
    assert plan(root, "gvt-g").kernel_arguments == ("i915.enable_gvt=1",)


def test_an_sr_iov_igpu_refused_gvt_g_is_pointed_at_sr_iov(make_host):
    # Raptor Lake-S UHD 770, an Alder Lake platform to i915, showing its SR-IOV capability.
    offered = modes(make_host("desktop_dgpu", patch_devices={"00:02.0": {"sriov": {"total_vfs": 7, "num_vfs": 0}}}))
    assert offered["gvt-g"]["unsupported"].endswith(
        "[a780] is an Alder Lake/Raptor Lake iGPU, which has SR-IOV instead (mode sriov)")
    assert "sriov" in offered


def test_an_sr_iov_igpu_without_the_capability_is_not_pointed_at_a_mode_it_lacks(make_host):
    offered = modes(make_host("desktop_dgpu"))  # no sriov_totalvfs on the iGPU
    assert "sriov" not in offered
    assert offered["gvt-g"]["unsupported"].endswith(
        "[a780] is an Alder Lake/Raptor Lake iGPU, which has SR-IOV instead (mode sriov), but this one shows no "
        "SR-IOV capability (no sriov_totalvfs)")


# -- GVT-g: what the boot needs -----------------------------------------------------------------------


def test_gvt_g_with_the_iommu_off_plans_intel_iommu_on_too(make_host):
    root = make_host("gvtg_laptop", kernel={"cmdline": LAPTOP_CMDLINE}, iommu=IOMMU_OFF)
    assert modes(root)["gvt-g"]["missing"][-1] == "the IOMMU (intel_iommu=on)"
    enable = plan(root, "gvt-g")
    assert enable.kernel_arguments == ("i915.enable_gvt=1", "intel_iommu=on")
    assert "the IOMMU on in the running kernel (intel_iommu=on)" in unmet(enable)
    assert enable.notes == ()


def test_gvt_g_with_vt_d_off_in_the_firmware_also_says_so(make_host):
    root = make_host("gvtg_laptop", kernel={"cmdline": LAPTOP_CMDLINE}, iommu=dict(IOMMU_OFF, firmware=False))
    enable = plan(root, "gvt-g")
    assert enable.kernel_arguments[-1] == "intel_iommu=on"
    assert enable.notes == ("the firmware lists no DMAR table: turn VT-d on in the firmware setup too, "
                            "intel_iommu=on alone does not",)


@pytest.mark.parametrize("value", ["-1", "0", "1", "2", "3", "0x1"])
def test_gvt_g_leaves_enable_guc_alone_whatever_it_asks(make_host, value):
    # i915 never selects GuC submission below graphics version 11 (__guc_submission_supported()), so
    # enable_guc=1 or 3 cannot keep GVT-g from starting on these iGPUs; 2 (HuC) matters to media encoding.
    root = make_host("gvtg_laptop", kernel={"cmdline": LAPTOP_CMDLINE + " intel_iommu=on i915.enable_guc=" + value,
                                            "parameters": {"i915": {"enable_gvt": "N", "enable_guc": value}}})
    assert not any("GuC" in item for item in modes(root)["gvt-g"]["missing"])
    enable = plan(root, "gvt-g")
    assert enable.kernel_arguments == ("i915.enable_gvt=1",)
    assert not any("GuC" in need for need in unmet(enable)) and enable.notes == ()


def test_gvt_g_with_enable_guc_from_modprobe_d_is_ready_after_the_one_reboot(make_host, run_module):
    root = with_grub(make_host("gvtg_laptop", kernel={"parameters": {"i915": {"enable_gvt": "N", "enable_guc": "3"}}},
                               files={"etc/modprobe.d/i915.conf": "options i915 enable_guc=3\n"}))
    args = {"root": root, "selector": IGPU, "mode": "gvt-g"}

    result = run_module("virtualization_mode", args)
    assert result["rc"] == 0 and result["reboot_required"] is True, result
    assert not any("enable_guc" in argument for argument in result["kernel_arguments"])

    assert gvt_g.boot(root) is True  # enable_guc=3 selects no GuC submission on a Gen9 iGPU
    after = run_module("virtualization_mode", args)
    assert after["changed"] is False and after["reboot_required"] is False, after
    assert after["verification"] == {"ready": True, "missing": []}


def test_gvt_g_set_through_modprobe_d_is_not_asked_for_on_the_command_line(make_host):
    root = make_host("gvtg_laptop", kernel={"parameters": {"i915": {"enable_gvt": "Y", "enable_guc": "-1"}}},
                     files={"etc/modprobe.d/i915-gvt.conf": "options i915 enable_gvt=1\n"})
    assert modes(root)["gvt-g"]["missing"] == ["the kvmgt module loaded"]
    enable = plan(root, "gvt-g")
    assert unmet(enable) == []  # GVT-g is on in this boot: kvmgt can load now, no reboot


# -- SR-IOV: mainline i915, xe's defaults ---------------------------------------------------------------


def test_sr_iov_on_mainline_i915_is_refused_with_what_to_install(make_host, run_module):
    root = with_grub(make_host(ADL_HOST))
    sriov = modes(root)["sriov"]
    assert sriov["ready"] is False
    assert sriov["missing"][0].startswith(
        "an i915 with SR-IOV PF mode: the loaded one has no max_vfs parameter (mainline i915 has none); an Alder "
        "Lake/Raptor Lake GPU has SR-IOV PF mode only with the i915-sriov-dkms build")
    assert "xe.force_probe=4680" in sriov["missing"][0]
    with pytest.raises(EnableError) as refused:
        plan(root, "sriov", max_vfs=7)
    message = str(refused.value)
    assert message.startswith("SR-IOV cannot be enabled on 0000:00:02.0: the loaded i915 has no max_vfs parameter, "
                              "so it has no SR-IOV PF mode (mainline i915 has none)")
    assert ("its i915 (i915.max_vfs=<N> i915.enable_guc=3 module_blacklist=xe) or its xe (xe.max_vfs=<N> "
            "xe.force_probe=4680 module_blacklist=i915)") in message
    assert message.endswith("Nothing changed")

    before = snapshot(root)
    result = run_module("virtualization_mode", {"root": root, "selector": IGPU, "mode": "sriov", "max_vfs": 7})
    assert result["rc"] == 1 and result["changed"] is False and "i915-sriov-dkms" in result["msg"], result
    assert snapshot(root) == before


def test_restore_on_mainline_i915_says_it_has_no_pf_mode(make_host):
    state = hoststate.empty_state()
    state["sriov"] = {IGPU: {"num_vfs": 2}}
    status = restore.Restore(root=make_host(ADL_HOST), out=io.StringIO(), timeout=0.1, interval=0.01,
                             attempts=1, state=state).run()
    message = next(r["message"] for r in status["results"] if r["step"] == "intel_sriov")
    assert "the loaded i915 has no max_vfs parameter (mainline i915 has none), so no PF mode" in message


def xe_flex(make_host, max_vfs, total_vfs, release="6.17.0-5-generic"):
    """The Flex host with (the DKMS build's) xe driving its GPUs, as a 6.17-based xe shows them."""
    kernel = {"release": release, "parameters": {"xe": {"max_vfs": max_vfs}},
              "modules": ["kvm_intel", "kvm", "xe", "vfio_pci", "vfio_pci_core", "vfio", "vfio_iommu_type1", "ice",
                          "nvme", "ast"]}
    pf = {"driver": "xe", "sriov": {"total_vfs": total_vfs, "num_vfs": 0, "offset": 1, "stride": 1}}
    return make_host("intel_flex_sriov", kernel=kernel, patch_devices={"4e:00.0": pf, "8c:00.0": pf})


def test_xe_unlimited_by_default_needs_no_reboot_when_its_vfs_cover_the_count(make_host):
    root = xe_flex(make_host, UNLIMITED, 31)
    assert modes(root, FLEX)["sriov"]["missing"] == [
        "VFs enabled (sriov_numvfs, gpuvirt.host.sriov) and handed to vfio-pci"]
    enable = plan(root, "sriov", FLEX, max_vfs=7)
    assert enable.kernel_arguments == ("xe.max_vfs=7",)
    assert unmet(enable) == []


def test_xe_unlimited_but_out_of_pf_mode_still_needs_pf_mode(make_host):
    enable = plan(xe_flex(make_host, UNLIMITED, 0), "sriov", FLEX, max_vfs=7)
    assert unmet(enable) == ["xe.max_vfs covering 7 VFs in the loaded xe driver (now 4294967295)"]


@pytest.mark.parametrize("live, count, covered", [("31", 7, True), ("7", 7, True), ("4", 4, True), ("0", 7, False)])
def test_a_live_max_vfs_at_or_above_the_count_needs_no_reboot(make_host, live, count, covered):
    root = xe_flex(make_host, live, min(int(live), 31))
    assert (unmet(plan(root, "sriov", FLEX, max_vfs=count)) == []) is covered


def test_an_unreadable_max_vfs_is_unknown_not_zero(make_host, monkeypatch):
    # xe's max_vfs is mode 0400: an unprivileged reader gets EACCES (the tests run as root, so it is faked).
    root = xe_flex(make_host, UNLIMITED, 31)
    real = sysfs.read_attribute_at

    def denied(directory, name):
        if str(name).endswith("/parameters/max_vfs"):
            return None, "unreadable: Permission denied"
        return real(directory, name)

    monkeypatch.setattr(sysfs, "read_attribute_at", denied)
    assert modes(root, FLEX)["sriov"]["missing"] == [
        "VFs enabled (sriov_numvfs, gpuvirt.host.sriov) and handed to vfio-pci"]
    enable = plan(root, "sriov", FLEX, max_vfs=7)
    assert unmet(enable) == []  # sriov_totalvfs 31: the driver is in PF mode with room for 7

    out_of_pf_mode = xe_flex(make_host, UNLIMITED, 0)
    missing = modes(out_of_pf_mode, FLEX)["sriov"]["missing"]
    assert not any(item.startswith("xe.max_vfs=<N>") for item in missing)
    assert missing[0].startswith("VFs reported by the driver (sriov_totalvfs is 0; xe's max_vfs is unreadable here "
                                 "(mode 0400): read as root)")
    assert unmet(plan(out_of_pf_mode, "sriov", FLEX, max_vfs=7)) == [
        "xe.max_vfs covering 7 VFs in the loaded xe driver (now unreadable)"]
    assert vendor_intel.parameter_state(root, "xe", "max_vfs") == (None, "unreadable")


# -- SR-IOV: platforms ---------------------------------------------------------------------------------


def dkms_i915_adl(make_host, cmdline=ADL_CMDLINE, **changes):
    """The Alder Lake host with the i915-sriov-dkms i915 out of PF mode: max_vfs 0, so sriov_totalvfs 0."""
    kernel = {"cmdline": cmdline, "parameters": {"i915": {"enable_guc": "3", "enable_gvt": "N", "max_vfs": "0"},
                                                 "xe": {"force_probe": ""}}}
    pf = {"sriov": {"total_vfs": 0, "num_vfs": 0, "offset": 1, "stride": 1, "vf_device": "4680"}}
    return make_host(ADL_HOST, kernel=kernel, patch_devices={"00:02.0": pf}, **changes)


@pytest.mark.parametrize("device_id, name", [
    ("4680", "an Alder Lake/Raptor Lake"), ("a7a0", "an Alder Lake/Raptor Lake"), ("9a49", "a Tiger Lake"),
    ("7d55", "a Meteor Lake")])
def test_an_igpu_offers_at_most_7_vfs(make_host, device_id, name):
    root = make_host(ADL_HOST, kernel={"parameters": {"i915": {"enable_guc": "3", "max_vfs": "0"}}},
                     patch_devices={"00:02.0": {"ids": "8086:" + device_id, "sriov": {
                         "total_vfs": 0, "num_vfs": 0, "offset": 1, "stride": 1, "vf_device": device_id}}})
    with pytest.raises(EnableError) as refused:
        plan(root, "sriov", max_vfs=8)
    assert str(refused.value) == (
        "max_vfs must be between 1 and 7 for 0000:00:02.0 (%s iGPU has at most 7 VFs; sriov_totalvfs reads 0 "
        "until the driver is in PF mode); nothing changed" % name)
    assert plan(root, "sriov", max_vfs=7).kernel_arguments[:2] == ("i915.max_vfs=7", "i915.enable_guc=3")


# INTEL_PVC_IDS of include/drm/intel/pciids.h: every Data Center GPU Max SKU is the PVC platform, whose
# SR-IOV support xe gives per platform, not per SKU.
@pytest.mark.parametrize("device_id", ["0b69", "0b6e", "0bd4", "0bd5", "0bd6", "0bd7", "0bd8", "0bd9", "0bda",
                                       "0bdb", "0be0", "0be1", "0be5"])
def test_every_pvc_id_of_pciids_is_a_max_gpu_with_63_vfs(device_id):
    assert vendor_intel.platform_of(device_id).name == "Data Center GPU Max (PVC)"
    assert vendor_intel.SRIOV_VFS[device_id] == 63


def test_the_dkms_i915_plan_blacklists_an_idle_xe(make_host):
    enable = plan(dkms_i915_adl(make_host), "sriov", max_vfs=7)
    assert enable.kernel_arguments == ("i915.max_vfs=7", "i915.enable_guc=3", "module_blacklist=xe")
    assert unmet(enable) == ["i915.max_vfs covering 7 VFs in the loaded i915 driver (now 0)"]
    # module_blacklist takes one value: the names already on the command line stay.
    kept = plan(dkms_i915_adl(make_host, cmdline=ADL_CMDLINE + " module_blacklist=nouveau,pcspkr"), "sriov",
                max_vfs=7)
    assert kept.kernel_arguments[-1] == "module_blacklist=nouveau,pcspkr,xe"


def test_xe_driving_another_gpu_is_not_blacklisted(make_host):
    port = {"address": "00:01.0", "ids": "8086:460d", "class": "060400", "driver": "pcieport",
            "device_name": "12th Gen Core Processor PCI Express x16 Controller #1"}
    arc = {"address": "03:00.0", "parent": "00:01.0", "ids": "8086:e20b", "class": "030000", "driver": "xe",
           "device_name": "Battlemage G21 [Arc B580]"}
    root = dkms_i915_adl(make_host, add_devices=[port, arc])
    enable = plan(root, "sriov", max_vfs=7)
    assert enable.kernel_arguments == ("i915.max_vfs=7", "i915.enable_guc=3")
    assert enable.notes[0] == ("xe also drives 0000:03:00.0, so module_blacklist=xe (the SR-IOV recipe) is not "
                               "added: make sure it does not claim 0000:00:02.0 at boot")


def dkms_xe_adl(make_host, cmdline=ADL_CMDLINE, force_probe="4680"):
    """The Alder Lake host with the i915-sriov-dkms xe on the iGPU (forced through modprobe.d), out of PF mode;
    i915, loaded by udev as well, drives nothing."""
    kernel = {"cmdline": cmdline, "parameters": {"xe": {"max_vfs": "0", "force_probe": force_probe},
                                                 "i915": {"enable_guc": "-1", "enable_gvt": "N"}}}
    pf = {"driver": "xe", "sriov": {"total_vfs": 0, "num_vfs": 0, "offset": 1, "stride": 1, "vf_device": "4680"}}
    return make_host(ADL_HOST, kernel=kernel, patch_devices={"00:02.0": pf},
                     files={"etc/modprobe.d/xe.conf": "options xe force_probe=%s\n" % force_probe})


def test_the_xe_plan_on_alder_lake_keeps_force_probe_on_the_command_line_and_blacklists_i915(make_host):
    enable = plan(dkms_xe_adl(make_host), "sriov", max_vfs=7)
    assert enable.kernel_arguments == ("xe.max_vfs=7", "xe.force_probe=4680", "module_blacklist=i915")
    assert ("upstream xe has no SR-IOV PF mode for an Alder Lake/Raptor Lake GPU: only the xe of the "
            "i915-sriov-dkms build") in enable.notes[0]
    # The IDs the loaded xe forces stay; one already on the command line is not added twice.
    assert plan(dkms_xe_adl(make_host, force_probe="56a0,4680"), "sriov", max_vfs=7).kernel_arguments[1] == (
        "xe.force_probe=56a0,4680")
    assert plan(dkms_xe_adl(make_host, force_probe="56a0"), "sriov", max_vfs=7).kernel_arguments[1] == (
        "xe.force_probe=56a0,4680")
    on_cmdline = plan(dkms_xe_adl(make_host, cmdline=ADL_CMDLINE + " xe.force_probe=4680"), "sriov", max_vfs=7)
    assert on_cmdline.kernel_arguments == ("xe.max_vfs=7", "module_blacklist=i915")


def test_a_platform_says_which_driver_has_pf_mode_for_it():
    def advice(device_id):
        return vendor_intel.pf_driver_advice(SimpleNamespace(device_id=device_id))

    assert advice("b080").startswith("a Panther Lake GPU has SR-IOV PF mode in the upstream xe driver")
    # Battlemage's PF mode is in the DKMS xe; its upstream release is not confirmed, and not claimed.
    assert advice("e20b") == ("a Battlemage GPU has SR-IOV PF mode in the xe of the i915-sriov-dkms build "
                              "(github.com/strongtz/i915-sriov-dkms) (xe.max_vfs=<N> module_blacklist=i915); which "
                              "upstream xe release has it is not confirmed")
    assert "intel-gpu-i915-backports" in advice("56c0") and "xe.force_probe" not in advice("56c0")
    assert "xe.force_probe=9a49" in advice("9a49")
    assert advice("7d55").startswith("install the i915-sriov-dkms build")  # Meteor Lake: nothing on record
    assert "xe.force_probe" not in advice("7d55")


def test_sr_iov_with_the_iommu_off_plans_intel_iommu_on_too(make_host):
    root = make_host("intel_flex_sriov", kernel={"cmdline": "BOOT_IMAGE=/vmlinuz-6.8.0-45-generic "
                                                            "root=/dev/mapper/vg-root ro i915.enable_guc=3"},
                     iommu=IOMMU_OFF)
    assert modes(root, FLEX)["sriov"]["missing"][-1] == "the IOMMU (intel_iommu=on)"
    enable = plan(root, "sriov", FLEX, max_vfs=7)
    assert enable.kernel_arguments == ("i915.max_vfs=7", "i915.enable_guc=3", "intel_iommu=on")
    assert "the IOMMU on in the running kernel (intel_iommu=on)" in unmet(enable)


def test_an_intel_gpu_in_an_amd_host_gets_no_intel_iommu(make_host):
    root = make_host("intel_flex_sriov", iommu={"vendor": "amd", "firmware": True, "enabled": False,
                                                "interrupt_remapping": False})
    enable = plan(root, "sriov", FLEX, max_vfs=7)
    assert "intel_iommu=on" not in enable.kernel_arguments
    assert enable.notes[0].startswith("the IOMMU is off, and it is not Intel's VT-d")


# An i915 (the SR-IOV build) loaded with max_vfs=7 that went on as a plain GPU: pf_verify_readiness()
# wants GuC submission, and enable_guc -1 gives none on Tiger Lake (uc_expand_default_options()), so
# sriov_totalvfs reads 0. The plan's i915.enable_guc=3 is read at the next probe only.
def tigerlake(make_host, enable_guc, total_vfs=0, extra=""):
    return with_grub(make_host(
        "gvtg_laptop",
        kernel={"cmdline": "BOOT_IMAGE=/boot/vmlinuz-6.8.0-45-generic root=UUID=8e0f6d4c ro quiet intel_iommu=on"
                + extra,
                "parameters": {"i915": {"enable_guc": enable_guc, "max_vfs": "7"}}},
        patch_devices={"00:02.0": {"ids": "8086:9a49", "device_name": "TigerLake-LP GT2 [Iris Xe Graphics]",
                                   "sriov": {"total_vfs": total_vfs, "num_vfs": 0, "offset": 1, "stride": 1}}},
    ))


@pytest.mark.parametrize("enable_guc", ["0", "-1", "2"])
def test_an_i915_out_of_pf_mode_needs_a_reboot_though_max_vfs_covers(make_host, run_module, enable_guc):
    root = tigerlake(make_host, enable_guc)
    result = run_module("virtualization_mode", {"root": root, "selector": IGPU, "mode": "sriov", "max_vfs": 7},
                        check_mode=True)
    assert result["rc"] == 0, result
    assert "i915.enable_guc=3" in result["kernel_arguments"]
    assert result["reboot_required"] is True
    assert any("sriov_totalvfs now 0" in need and "GuC submission" in need for need in result["reboot_for"])


def test_an_i915_in_pf_mode_needs_no_reboot(make_host, run_module):
    root = tigerlake(make_host, "3", total_vfs=7, extra=" i915.enable_guc=3 i915.max_vfs=7")
    result = run_module("virtualization_mode", {"root": root, "selector": IGPU, "mode": "sriov", "max_vfs": 7},
                        check_mode=True)
    assert result["rc"] == 0 and result["reboot_required"] is False, result


def test_the_simulated_i915_takes_enable_guc_auto_per_platform(make_host):
    from ansible_collections.gpuvirt.host.tests.sim import intel_sriov

    assert intel_sriov.probe(tigerlake(make_host, "-1"), "i915") == {IGPU: 0}
    assert intel_sriov.probe(tigerlake(make_host, "3"), "i915") == {IGPU: 7}
