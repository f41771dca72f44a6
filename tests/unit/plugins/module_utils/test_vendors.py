# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The vendor backends: the registry, vendor readers limited to their vendor, and per-GPU modes."""

from __future__ import annotations

from ansible_collections.gpuvirt.host.plugins.module_utils import vendor_intel, vendors
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect


def modes(topology, address):
    gpu = next(entry for entry in topology["gpus"] if entry["address"] == address)
    return {mode["mode"]: mode for mode in gpu["virtualization"]}


def modes_finding(topology, address):
    return next(f for f in topology["findings"] if f["code"] == "virtualization_modes" and f["device"] == address)


def test_the_registry_gives_each_vendor_its_backend_only():
    assert [b.name for b in vendors.backends_for("8086")] == ["intel"]
    assert [b.name for b in vendors.backends_for("10de")] == ["nvidia"]
    assert [b.name for b in vendors.backends_for("1002")] == ["amd"]
    assert vendors.backends_for("15b3") == ()
    assert len(vendors.backends_for(None)) == len(vendors.BACKENDS)


def test_a_vendor_reader_never_reads_another_vendors_device(make_host):
    # An Intel iGPU with a stray nvidia/ directory: the NVIDIA reader is not asked.
    root = make_host("gvtg_laptop", files={
        "sys/devices/pci0000:00/0000:00:02.0/nvidia/creatable_vgpu_types": "ID    : vGPU Name\n1 : NVIDIA X-1Q\n",
        "sys/devices/pci0000:00/0000:00:02.0/nvidia/current_vgpu_type": "0\n",
    })
    device = next(d for d in detect(root)["devices"] if d["address"] == "0000:00:02.0")
    assert device["nvidia_vgpu"] is None


def test_gvt_g_before_enablement_names_the_argument_and_the_module(make_host):
    topology = detect(make_host("gvtg_laptop"))
    gvt = modes(topology, "0000:00:02.0")["gvt-g"]
    assert gvt["ready"] is False
    assert gvt["missing"] == ["i915.enable_gvt=1 on the kernel command line and a reboot", "the kvmgt module loaded"]
    assert "can offer now: nothing" in modes_finding(topology, "0000:00:02.0")["message"]


def test_gvt_g_after_enablement_is_ready(make_host):
    topology = detect(make_host("gvtg_laptop_enabled"))
    assert modes(topology, "0000:00:02.0")["gvt-g"] == {"mode": "gvt-g", "ready": True, "missing": []}
    assert "can offer now: gvt-g" in modes_finding(topology, "0000:00:02.0")["message"]


def test_gvt_g_is_refused_on_a_later_generation_with_the_reason(make_host):
    gvt = modes(detect(make_host("desktop_dgpu")), "0000:00:02.0")["gvt-g"]
    assert gvt["ready"] is False and "Broadwell to Comet Lake" in gvt["unsupported"]
    assert vendor_intel.gvt_g_generation("9bc8") and vendor_intel.gvt_g_generation("5917")
    assert not vendor_intel.gvt_g_generation("8a52") and not vendor_intel.gvt_g_generation("a780")


def test_intel_sriov_needs_max_vfs_then_vfs(make_host):
    before = modes(detect(make_host("intel_flex_sriov")), "0000:4e:00.0")["sriov"]
    assert before["ready"] is False
    assert before["missing"][0].startswith("i915.max_vfs=<N> with i915.enable_guc=3")
    after = modes(detect(make_host("intel_flex_sriov", kernel={"parameters": {"i915": {"max_vfs": "31"}}})),
                  "0000:4e:00.0")["sriov"]
    assert after["missing"] == ["VFs enabled (sriov_numvfs, gpuvirt.host.sriov) and handed to vfio-pci"]


def test_amd_mxgpu_is_ready_under_gim_and_asks_for_gim_otherwise(make_host):
    assert modes(detect(make_host("amd_mxgpu")), "0000:06:00.0")["mxgpu"]["ready"] is True
    missing = modes(detect(make_host("amd_mxgpu_no_driver")), "0000:06:00.0")["mxgpu"]["missing"]
    assert "GIM host driver" in missing[0] and "instead of amdgpu" in missing[0]
    assert "not through sriov_numvfs" in missing[1]


def test_nvidia_vgpu_modes(make_host):
    assert modes(detect(make_host("l40s_vgpu")), "0000:cb:00.0")["vgpu"]["ready"] is True
    grace = modes(detect(make_host("grace_hopper")), "0009:01:00.0")["vgpu"]
    assert grace["ready"] is False and "nvidia_vgpu_vfio" in grace["missing"][0]
    # A GeForce-class VGA controller without SR-IOV is not offered vGPU at all.
    assert "vgpu" not in modes(detect(make_host("desktop_dgpu")), "0000:01:00.0")
