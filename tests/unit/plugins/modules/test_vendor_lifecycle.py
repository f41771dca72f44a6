# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Each vendor end to end on its fixture host, the modules in the order the vgpu role calls them:
spec -> enabled (virtualization_mode) -> reboot -> carved (sriov / nvidia_vgpu / mdev) -> reboot ->
restored at boot (the restore run against the tree, its vendor steps through the registry); and each
mode turned off again (``state: absent``) and booted without it, or refused with the host left as it was.

The simulators react as the drivers do (tests/sim/boot.py: the next command line from the boot
configuration, module parameters from it and modprobe.d; i915/xe PF mode from ``max_vfs``, GIM enabling
its VFs from ``vf_num``, NVIDIA's VFs only through ``sriov-manage``, kvmgt and the GVT-g types).
"""

from __future__ import annotations

import io
import json
import os

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import hoststate, mdev, restore
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import read_int, read_text
from ansible_collections.gpuvirt.host.tests.sim import gvt_g
from ansible_collections.gpuvirt.host.tests.sim.boot import fake_modprobe, modprobe_calls, reboot
from ansible_collections.gpuvirt.host.tests.sim.nvidia_vgpu_sim import attach, fake_sriov_manage
from ansible_collections.gpuvirt.host.tests.sim.pci_kernel import PciKernel
from ansible_collections.gpuvirt.host.tests.unit.plugins.modules.test_vfio_pci import read
from ansible_collections.gpuvirt.host.tests.unit.plugins.modules.test_virtualization_mode import snapshot, with_grub

FLEX = "0000:4e:00.0"
FLEX2 = "0000:8c:00.0"
MI300X = "0000:06:00.0"
L40S = "0000:cb:00.0"
IGPU = "0000:00:02.0"
GIM_CONF = "etc/modprobe.d/gpuvirt-gim.conf"


def edit_grub(root, old, new=""):
    path = os.path.join(root, "etc/default/grub")
    with open(path) as handle:
        text = handle.read()
    assert old in text
    with open(path, "w") as handle:
        handle.write(text.replace(old, new))


def device(root, address, name):
    return read_text(os.path.join(root, "sys/bus/pci/devices", address, name))


def vfs_of(root, pf):
    base = os.path.join(root, "sys/bus/pci/devices", pf)
    links = [os.path.join(base, name) for name in os.listdir(base) if name.startswith("virtfn")]
    return sorted(os.path.basename(os.readlink(link)) for link in links)


@pytest.fixture
def module(run_module):
    """``module(name, root, check_mode=False, **args)`` with the kernel's SR-IOV core, mdev core and
    NVIDIA's driver reacting to its writes."""

    def run(name, root, check_mode=False, **args):
        sim = attach(root)[0]
        with sim.active():
            return run_module(name, dict(args, root=root), check_mode=check_mode)

    return run


def run_restore(root, path_dirs=(), monkeypatch=None):
    """The boot-time restore against the tree, as the unit runs it (tools found on PATH)."""
    if path_dirs:
        monkeypatch.setenv("PATH", os.pathsep.join(list(path_dirs) + [os.environ["PATH"]]))
    sim = attach(root)[0]
    with sim.active():
        status = restore.Restore(root=root, out=io.StringIO(), timeout=0.5, interval=0.01, attempts=2).run()
    return status, [(r["step"], r["item"], r["ok"], r["message"]) for r in status["results"]]


def twice_changes_nothing(module, name, root, **args):
    again = module(name, root, **args)
    assert again["rc"] == 0 and again["changed"] is False, again
    return again


# -- Intel SR-IOV (Data Center GPU Flex) ------------------------------------------------------------


def flex_host(make_host, driver):
    """The Flex host as its PF driver (``driver``) shows it before PF mode: max_vfs 0, so sriov_totalvfs reads 0."""
    kernel = {"parameters": {driver: {"max_vfs": "0"}}}
    if driver == "xe":
        kernel["modules"] = ["kvm_intel", "kvm", "xe", "vfio_pci", "vfio_pci_core", "vfio", "vfio_iommu_type1",
                             "ice", "nvme", "ast"]
    patch = {FLEX: {"driver": driver}, FLEX2: {"driver": driver}}
    return with_grub(make_host("intel_flex_sriov", patch_devices=patch, kernel=kernel))


@pytest.mark.parametrize("driver", ["i915", "xe"])
def test_intel_sriov_spec_enabled_carved_restored(make_host, module, monkeypatch, driver):
    root = flex_host(make_host, driver)
    spec = {"selector": FLEX, "mode": "sriov", "max_vfs": 7}

    predicted = module("virtualization_mode", root, check_mode=True, **spec)
    assert predicted["rc"] == 0 and predicted["changed"] is True, predicted
    enabled = module("virtualization_mode", root, **spec)
    assert enabled["rc"] == 0 and enabled["reboot_required"] is True, enabled
    assert [enabled[k] for k in ("changed", "files_changed")] == [predicted[k] for k in ("changed", "files_changed")]
    expected = ["%s.max_vfs=7" % driver] + (["i915.enable_guc=3"] if driver == "i915" else [])
    assert enabled["kernel_arguments"] == expected and all(a in read(root, "etc/default/grub") for a in expected)
    twice_changes_nothing(module, "virtualization_mode", root, **spec)
    # Not in PF mode yet: the VFs cannot be carved before the reboot, and nothing is written.
    early = module("sriov", root, devices=[{"selector": FLEX, "num_vfs": 4}])
    assert early["rc"] == 1 and device(root, FLEX, "sriov_numvfs") == "0", early
    assert "offers no VFs (sriov_totalvfs reads 0): it is an Intel GPU out of SR-IOV PF mode" in early["msg"]
    assert "gpuvirt.host.virtualization_mode (mode sriov, max_vfs) and reboot" in early["msg"]

    assert reboot(root)[driver] == {FLEX: 7, FLEX2: 7}  # max_vfs is the driver's: both GPUs offer 7 VFs
    after = module("virtualization_mode", root, **spec)
    assert after["rc"] == 0 and after["changed"] is False and after["reboot_required"] is False, after
    assert after["verification"]["missing"] == ["VFs enabled (sriov_numvfs, gpuvirt.host.sriov) and handed to vfio-pci"]

    carve = {"devices": [{"selector": FLEX, "num_vfs": 4, "drivers_autoprobe": False}]}
    predicted = module("sriov", root, check_mode=True, **carve)
    carved = module("sriov", root, **carve)
    assert carved["rc"] == 0 and carved["changed"] is True and predicted["changed"] is True, carved
    assert carved["devices"][0]["after"] == predicted["devices"][0]["after"]
    vfs = vfs_of(root, FLEX)
    assert len(vfs) == 4 and not any(os.path.lexists(os.path.join(root, "sys/bus/pci/devices", vf, "driver"))
                                     for vf in vfs)  # the host driver does not probe them
    twice_changes_nothing(module, "sriov", root, **carve)
    assert module("virtualization_mode", root, **spec)["verification"]["ready"] is True
    assert hoststate.load_state(root)["sriov"] == {FLEX: {"num_vfs": 4, "drivers_autoprobe": False}}

    reboot(root, uptime=33.0)
    assert vfs_of(root, FLEX) == [] and device(root, FLEX, "sriov_totalvfs") == "7"
    status, results = run_restore(root)
    assert status["ok"] is True, results
    assert [(step, item) for step, item, _ok, _m in results] == [
        ("driver", FLEX), ("intel_sriov", FLEX), ("sriov", FLEX)]
    assert results[1][3] == "%s in SR-IOV PF mode: max_vfs 7, sriov_totalvfs 7" % driver
    assert vfs_of(root, FLEX) == vfs and device(root, FLEX, "sriov_drivers_autoprobe") == "0"
    twice_changes_nothing(module, "sriov", root, **carve)

    # The argument lost from the boot configuration: the driver comes up native and the restore says why.
    edit_grub(root, "%s.max_vfs=7" % driver)
    reboot(root)
    assert device(root, FLEX, "sriov_totalvfs") == "0"
    status, results = run_restore(root)
    assert status["ok"] is False
    failed = {step: message for step, _item, ok, message in results if not ok}
    assert set(failed) == {"intel_sriov", "sriov"}
    assert "%s.max_vfs is 0 in this boot; put %s.max_vfs=<N> back" % (driver, driver) in failed["intel_sriov"]
    assert vfs_of(root, FLEX) == []


def test_vfio_pci_will_not_keep_an_intel_vf_by_the_id_it_shares_with_its_pf(make_host, module):
    root = flex_host(make_host, "i915")
    assert module("virtualization_mode", root, selector=FLEX, mode="sriov", max_vfs=2)["rc"] == 0
    reboot(root)
    carved = module("sriov", root, devices=[{"selector": FLEX, "num_vfs": 2, "drivers_autoprobe": False}])
    assert carved["rc"] == 0, carved["msg"]
    vf = vfs_of(root, FLEX)[0]
    assert device(root, vf, "device") == device(root, FLEX, "device") == "0x56c0"
    refused = module("vfio_pci", root, devices=[vf])  # persistence auto: options vfio-pci ids=8086:56c0
    assert refused["rc"] == 1 and refused["changed"] is False, refused
    assert "binding %s by ID 8086:56c0 at boot would also give their physical function" % vf in refused["msg"]
    assert "keep VFs on vfio-pci with gpuvirt.host.sriov (vfio: true)" in refused["msg"]
    assert not os.path.lexists(os.path.join(root, "sys/bus/pci/devices", vf, "driver"))
    assert not os.path.exists(os.path.join(root, "etc/modprobe.d/gpuvirt-vfio.conf"))


def test_intel_sriov_restore_says_why_pf_mode_did_not_come(make_host, module):
    root = flex_host(make_host, "i915")
    assert module("virtualization_mode", root, selector=FLEX, mode="sriov", max_vfs=2)["rc"] == 0
    edit_grub(root, "i915.enable_guc=3", "i915.enable_guc=0")  # no GuC submission: i915 continues as native
    reboot(root)
    assert device(root, FLEX, "sriov_totalvfs") == "0"
    state = hoststate.empty_state()
    state["sriov"] = {FLEX: {"num_vfs": 2}}
    status = restore.Restore(root=root, out=io.StringIO(), timeout=0.2, interval=0.01, attempts=1, state=state).run()
    message = next(r["message"] for r in status["results"] if r["step"] == "intel_sriov")
    assert "i915 with max_vfs 2 stayed out of PF mode (sriov_totalvfs 0)" in message
    assert "GuC submission off: i915.enable_guc=3" in message


# -- AMD MxGPU (Instinct MI300X under GIM) ----------------------------------------------------------


def test_mxgpu_spec_enabled_carved_restored(make_host, module):
    root = make_host("amd_mxgpu")
    spec = {"selector": MI300X, "mode": "mxgpu", "max_vfs": 8}
    carve = {"devices": [{"selector": MI300X, "num_vfs": 8}]}

    predicted = module("virtualization_mode", root, check_mode=True, **spec)
    enabled = module("virtualization_mode", root, **spec)
    assert enabled["rc"] == 0 and enabled["changed"] is True and predicted["changed"] is True, enabled
    assert enabled["files_changed"] == predicted["files_changed"] and enabled["reboot_required"] is True
    assert read(root, GIM_CONF).endswith("options gim vf_num=8\n")
    twice_changes_nothing(module, "virtualization_mode", root, **spec)
    # GIM sets the count when it loads: the sriov module refuses to write it, in check mode as well.
    for check_mode in (True, False):
        refused = module("sriov", root, check_mode=check_mode, **carve)
        assert refused["rc"] == 1 and "has 1 VFs, not 8: gim enables the VFs itself" in refused["msg"], refused
    assert len(vfs_of(root, MI300X)) == 1 and not os.path.exists(hoststate.state_path(root))

    assert reboot(root)["gim"] == {MI300X: 8}
    after = module("virtualization_mode", root, **spec)
    assert after["changed"] is False and after["reboot_required"] is False and after["verification"]["ready"] is True
    carved = module("sriov", root, **carve)
    assert carved["rc"] == 0 and carved["devices"][0]["changed"] is False and carved["state_file"]["changed"] is True
    twice_changes_nothing(module, "sriov", root, **carve)
    vfs = vfs_of(root, MI300X)
    assert len(vfs) == 8 and device(root, vfs[0], "device") == "0x74b5"

    reboot(root, uptime=41.0)
    status, results = run_restore(root)
    assert status["ok"] is True, results
    assert results == [
        ("driver", MI300X, True, "present, driver gim"),
        ("mxgpu", MI300X, True, "gim enabled 8 VFs (vf_num 8)"),
        ("sriov", MI300X, True, "num_vfs 8 already"),
    ]
    assert vfs_of(root, MI300X) == vfs

    # vf_num lost: GIM comes up with its default; the restore says so and writes nothing.
    os.unlink(os.path.join(root, GIM_CONF))
    reboot(root)
    status, results = run_restore(root)
    failed = {step: message for step, _item, ok, message in results if not ok}
    assert set(failed) == {"mxgpu", "sriov"}
    assert "gim enabled 1 VFs on %s (its vf_num is not set), 8 are recorded" % MI300X in failed["mxgpu"]
    assert "gim enables the VFs itself" in failed["sriov"] and len(vfs_of(root, MI300X)) == 1


def test_mxgpu_vfs_go_to_vfio_pci_and_come_back_there_at_boot(make_host, run_module):
    """GIM enables the VFs itself and nothing binds them (amdgpu is blacklisted): vfio: true hands them to
    vfio-pci by address, the count stays GIM's, and the restore binds them again after GIM's next load."""
    root = make_host("amd_mxgpu")
    enabled = run_module("virtualization_mode", {"root": root, "selector": MI300X, "mode": "mxgpu", "max_vfs": 8})
    assert enabled["rc"] == 0, enabled
    assert reboot(root)["gim"] == {MI300X: 8}
    vfs = vfs_of(root, MI300X)
    carve = {"root": root, "devices": [{"selector": MI300X, "num_vfs": 8, "vfio": True}]}

    def sriov(check_mode=False):
        sim = attach(root)[0]
        PciKernel(sim)
        with sim.active():
            return run_module("sriov", carve, check_mode=check_mode)

    predicted = sriov(check_mode=True)
    assert predicted["rc"] == 0 and predicted["changed"] is True, predicted
    assert [device(root, vf, "driver_override") for vf in vfs] == ["(null)"] * 8
    done = sriov()
    assert done["rc"] == 0 and done["changed"] is True, done
    assert done["devices"][0]["after"] == predicted["devices"][0]["after"]
    assert done["devices"][0]["after"]["vf_drivers"] == dict.fromkeys(vfs, "vfio-pci")
    assert hoststate.load_state(root)["sriov"] == {MI300X: {"num_vfs": 8, "vfio": True}}
    assert sriov()["changed"] is False

    reboot(root, uptime=44.0)
    assert vfs_of(root, MI300X) == vfs  # GIM enabled them again at load, and nothing bound them
    assert not any(os.path.lexists(os.path.join(root, "sys/bus/pci/devices", vf, "driver")) for vf in vfs)
    sim = attach(root)[0]
    PciKernel(sim)
    with sim.active():
        status = restore.Restore(root=root, out=io.StringIO(), timeout=0.5, interval=0.01, attempts=2).run()
    results = [(r["step"], r["item"], r["ok"]) for r in status["results"]]
    assert status["ok"] is True and results == [
        ("driver", MI300X, True), ("mxgpu", MI300X, True), ("sriov", MI300X, True), ("vfio", MI300X, True)], status
    assert {vf: os.path.basename(os.readlink(os.path.join(root, "sys/bus/pci/devices", vf, "driver")))
            for vf in vfs} == dict.fromkeys(vfs, "vfio-pci")


def test_mxgpu_restore_names_amdgpu_when_gim_lost_the_gpu(make_host):
    root = make_host("amd_mxgpu_no_driver")
    state = hoststate.empty_state()
    state["sriov"] = {MI300X: {"num_vfs": 4}}
    status = restore.Restore(root=root, out=io.StringIO(), timeout=0.2, interval=0.01, attempts=1, state=state).run()
    message = next(r["message"] for r in status["results"] if r["step"] == "mxgpu")
    assert "driven by amdgpu, not AMD's GIM host driver" in message and "blacklist amdgpu" in message


# -- NVIDIA vGPU (L40S, per-VF interface) ------------------------------------------------------------


def test_nvidia_vgpu_spec_enabled_carved_restored(make_host, module, monkeypatch, tmp_path, fake_commands):
    root = make_host("l40s_vgpu", patch_devices={"cb:00.4": {"nvidia_vgpu": {"creatable": {}, "current": 0}}})
    bin_dir = str(tmp_path / "bin")
    command = fake_sriov_manage(bin_dir, root)
    fake_commands.install("lspci")  # sriov-manage runs it
    spec = {"selector": "L40S", "mode": "vgpu"}
    carve = {"gpus": [{"selector": "L40S", "profiles": [{"profile": "L40S-8Q", "count": 3}]}], "sriov_manage": command}

    refused = module("virtualization_mode", root, **spec)
    assert refused["rc"] == 1 and "nvidia-vgpu-mgr is not running" in refused["msg"]
    reboot(root)  # the vGPU manager starts with the driver; SR-IOV stays off until sriov-manage
    assert vfs_of(root, L40S) == []
    enabled = module("virtualization_mode", root, **spec)
    assert enabled["rc"] == 0 and enabled["changed"] is False and enabled["reboot_required"] is False, enabled
    assert enabled["verification"]["missing"] == ["its VFs (sriov-manage -e, as gpuvirt.host.nvidia_vgpu runs it)"]

    carved = module("nvidia_vgpu", root, **carve)
    assert carved["rc"] == 0 and carved["changed"] is True, carved
    types = {vf: read_int(os.path.join(root, "sys/bus/pci/devices", vf, "nvidia/current_vgpu_type"))
             for vf in vfs_of(root, L40S)}
    assigned = {vf: t for vf, t in types.items() if t}
    assert sorted(assigned.values()) == [1041, 1041, 1041]
    twice_changes_nothing(module, "nvidia_vgpu", root, **carve)
    assert module("virtualization_mode", root, **spec)["verification"]["ready"] is True
    state = hoststate.load_state(root)
    assert state["sriov"][L40S]["method"] == "sriov_manage" and set(state["nvidia_vgpu"]) == set(assigned)

    reboot(root, uptime=52.0)
    assert vfs_of(root, L40S) == []
    status, results = run_restore(root, path_dirs=[bin_dir], monkeypatch=monkeypatch)
    assert status["ok"] is True, results
    assert [(step, item) for step, item, _ok, _m in results] == [("driver", L40S), ("sriov", L40S)] + [
        ("nvidia_vgpu", vf) for vf in sorted(assigned)]
    assert results[1][3] == "num_vfs 32 (was 0, by sriov-manage), read back"
    assert {vf: read_int(os.path.join(root, "sys/bus/pci/devices", vf, "nvidia/current_vgpu_type"))
            for vf in assigned} == assigned
    twice_changes_nothing(module, "nvidia_vgpu", root, **carve)


# -- Intel GVT-g: kvmgt before the mdevs -------------------------------------------------------------


def gvt_laptop_with_a_vgpu(make_host, module):
    root = with_grub(make_host("gvtg_laptop"))
    assert module("virtualization_mode", root, selector=IGPU, mode="gvt-g")["reboot_required"] is True
    assert gvt_g.boot(root) is True
    carved = module("mdev", root, host_id="laptop-1",
                    parents=[{"selector": IGPU, "mdevs": [{"type": "i915-GVTg_V5_4", "count": 1}]}])
    assert carved["rc"] == 0 and carved["changed"] is True, carved
    return root, os.listdir(os.path.join(root, "sys/bus/mdev/devices"))[0]


def test_gvt_g_restore_loads_kvmgt_when_modules_load_did_not(make_host, module, monkeypatch, tmp_path):
    root, uuid = gvt_laptop_with_a_vgpu(make_host, module)
    os.unlink(os.path.join(root, "etc/modules-load.d/gpuvirt-gvt-g.conf"))
    assert gvt_g.boot(root) is False  # nothing loads kvmgt in the next boot, so the iGPU has no types
    assert not os.path.exists(os.path.join(root, "sys/module/kvmgt"))
    bin_dir = str(tmp_path / "bin")
    fake_modprobe(bin_dir, root)
    status, results = run_restore(root, path_dirs=[bin_dir], monkeypatch=monkeypatch)
    assert status["ok"] is True, results
    assert results == [
        ("gvt_g", IGPU, True, "i915 with GVT-g on, kvmgt loaded by modprobe, mdev types registered"),
        ("driver", IGPU, True, "mdev parent registered"),
        ("mdevs", uuid, True, "created on %s (i915-GVTg_V5_4), read back" % IGPU),
    ]
    assert modprobe_calls(root) == [["kvmgt"]] and mdev.read_mdev(root, uuid) == (IGPU, "i915-GVTg_V5_4")


def test_gvt_g_restore_says_when_the_kernel_argument_is_gone(make_host, module, monkeypatch, tmp_path):
    root, uuid = gvt_laptop_with_a_vgpu(make_host, module)
    edit_grub(root, "i915.enable_gvt=1")
    assert gvt_g.boot(root) is False
    bin_dir = str(tmp_path / "bin")
    fake_modprobe(bin_dir, root)
    status, results = run_restore(root, path_dirs=[bin_dir], monkeypatch=monkeypatch)
    assert status["ok"] is False
    gvt = next(message for step, _item, _ok, message in results if step == "gvt_g")
    assert "GVT-g is off in this boot (i915's enable_gvt is N): i915.enable_gvt=1 is not on the kernel" in gvt
    assert modprobe_calls(root) == [] and mdev.read_mdev(root, uuid) is None


def test_a_driver_wide_vf_limit_below_what_the_restore_enables_is_refused(make_host, module):
    # i915/xe read max_vfs at probe, for every GPU they drive: set up for the second Flex 170, a lower
    # limit would leave the first one's recorded 7 VFs above its sriov_totalvfs after the reboot, and the
    # restore failing on it at every boot.
    root = with_grub(make_host("intel_flex_sriov", patch_devices={FLEX: {"driver": "i915"}, FLEX2: {"driver": "i915"}},
                               kernel={"parameters": {"i915": {"max_vfs": "0"}}}))
    assert module("virtualization_mode", root, selector=FLEX, mode="sriov", max_vfs=7)["rc"] == 0
    reboot(root)
    assert module("sriov", root, devices=[{"selector": FLEX, "num_vfs": 7}], delay=0)["rc"] == 0
    before = read(root, "etc/default/grub")
    second = module("virtualization_mode", root, selector=FLEX2, mode="sriov", max_vfs=2)
    assert second["rc"] == 1 and "0000:4e:00.0 (7 VFs recorded, 2 offered)" in second["msg"], second
    assert read(root, "etc/default/grub") == before
    assert module("virtualization_mode", root, selector=FLEX2, mode="sriov", max_vfs=7)["rc"] == 0


def test_a_gim_vf_num_below_what_the_restore_enables_is_refused(make_host, module, run_module):
    root = make_host("amd_mxgpu")
    assert module("virtualization_mode", root, selector=MI300X, mode="mxgpu", max_vfs=8)["rc"] == 0
    reboot(root)
    sim = attach(root)[0]
    PciKernel(sim)
    with sim.active():
        carved = run_module("sriov", {"root": root, "devices": [{"selector": MI300X, "num_vfs": 8, "vfio": True}]})
    assert carved["rc"] == 0, carved["msg"]
    lowered = module("virtualization_mode", root, selector=MI300X, mode="mxgpu", max_vfs=1)
    assert lowered["rc"] == 1 and "0000:06:00.0 (8 VFs recorded, 1 offered)" in lowered["msg"], lowered


# -- Turning a mode off (state: absent) ---------------------------------------------------------------

GVT_G_MODULES_LOAD = "etc/modules-load.d/gpuvirt-gvt-g.conf"
GIM_MODULES_LOAD = "etc/modules-load.d/gpuvirt-gim.conf"
PREDICTED = ("changed", "files_changed", "reboot_required", "reboot_for", "kernel_arguments")
ARC = {"address": "04:00.0", "parent": "00:1d.0", "ids": "8086:56a5", "class": "030000", "driver": "i915"}


def off_as_predicted(module, root, **spec):
    """Turn the mode off in check mode, then for real: the same prediction, and a second run changes nothing."""
    spec = dict(spec, state="absent")
    before = snapshot(root)
    predicted = module("virtualization_mode", root, check_mode=True, **spec)
    assert predicted["rc"] == 0 and predicted["changed"] is True, predicted
    assert snapshot(root) == before
    done = module("virtualization_mode", root, **spec)
    assert done["rc"] == 0 and done["state"] == "absent", done
    assert {key: done[key] for key in PREDICTED} == {key: predicted[key] for key in PREDICTED}
    again = module("virtualization_mode", root, **spec)
    assert again["rc"] == 0 and again["changed"] is False and again["files_changed"] == [], again
    return done


def refused_as_it_was(module, root, *texts, **spec):
    """A refusal of ``state: absent`` in check mode and for real, saying ``texts``, with the tree as it was."""
    before = snapshot(root)
    for check_mode in (True, False):
        refused = module("virtualization_mode", root, check_mode=check_mode, **dict(spec, state="absent"))
        assert refused["rc"] == 1 and refused["changed"] is False, refused
        assert all(text in refused["msg"] for text in texts), refused["msg"]
    assert snapshot(root) == before


def unbind(root, address):
    """The device on no driver, as the kernel shows it (no driver link, no DRIVER= in its uevent)."""
    base = os.path.join(root, "sys/bus/pci/devices", address)
    os.unlink(os.path.join(base, "driver"))
    with open(os.path.join(base, "uevent")) as handle:
        lines = [line for line in handle.read().splitlines() if not line.startswith("DRIVER=")]
    with open(os.path.join(base, "uevent"), "w") as handle:
        handle.write("\n".join(lines) + "\n")


def test_gvt_g_off_pins_it_off_and_the_next_boot_has_no_types(make_host, module):
    root = with_grub(make_host("gvtg_laptop"))
    grub = read(root, "etc/default/grub")
    assert module("virtualization_mode", root, selector=IGPU, mode="gvt-g")["changed"] is True
    assert gvt_g.boot(root) is True

    done = off_as_predicted(module, root, selector=IGPU, mode="gvt-g")

    assert done["kernel_arguments"] == ["i915.enable_gvt=0"], done
    assert read(root, "etc/default/grub") == grub.replace("intel_iommu=off", "intel_iommu=off i915.enable_gvt=0")
    assert read(root, GVT_G_MODULES_LOAD) is None
    assert done["reboot_required"] is True and done["verification"]["ready"] is True  # on until the reboot
    assert "/" + GVT_G_MODULES_LOAD in done["files_changed"]

    assert gvt_g.boot(root) is False
    assert not os.path.exists(os.path.join(root, "sys/bus/pci/devices", IGPU, "mdev_supported_types"))
    after = module("virtualization_mode", root, selector=IGPU, mode="gvt-g", state="absent")
    assert after["changed"] is False and after["reboot_required"] is False, after
    assert after["verification"]["ready"] is False
    # A spec that still declares the iGPU's mdevs empty holds: a device with no mdev types has none.
    empty = module("mdev", root, host_id="laptop-1", parents=[{"selector": IGPU, "mdevs": [], "exclusive": True}])
    assert empty["rc"] == 0 and empty["changed"] is False, empty
    assert any("%s offers no mediated device types now, so it holds none" % IGPU in w
               for w in map(str, empty["warnings"])), empty
    wanted = module("mdev", root, host_id="laptop-1",
                    parents=[{"selector": IGPU, "mdevs": [{"type": "i915-GVTg_V5_4", "count": 1}]}])
    assert wanted["rc"] == 1 and "offers no mediated device types" in wanted["msg"], wanted
    # And on again.
    assert module("virtualization_mode", root, selector=IGPU, mode="gvt-g")["changed"] is True
    assert gvt_g.boot(root) is True


def test_gvt_g_off_outweighs_an_options_line_in_modprobe_d(make_host, module):
    # GVT-g on through modprobe.d and the host's own modules-load.d, nothing on the command line.
    root = with_grub(make_host("gvtg_laptop", files={"etc/modprobe.d/i915.conf": "options i915 enable_gvt=1\n",
                                                     "etc/modules-load.d/kvmgt.conf": "kvmgt\n"}))
    assert gvt_g.boot(root) is True
    done = off_as_predicted(module, root, selector=IGPU, mode="gvt-g")
    assert done["files_changed"] == ["/etc/default/grub"] and done["reboot_required"] is True, done
    assert gvt_g.boot(root) is False  # the command line's 0 wins over the options line
    after = module("virtualization_mode", root, selector=IGPU, mode="gvt-g", state="absent")
    assert after["changed"] is False and after["reboot_required"] is False, after


def test_gvt_g_off_writes_nothing_where_nothing_turns_it_on(make_host, module):
    root = with_grub(make_host("gvtg_laptop"))
    before = snapshot(root)
    done = module("virtualization_mode", root, selector=IGPU, mode="gvt-g", state="absent")
    assert done["rc"] == 0 and done["changed"] is False and done["kernel_arguments"] == [], done
    assert snapshot(root) == before
    # An options line for i915's next load (not loaded with it yet): pinned off.
    options = os.path.join(root, "etc/modprobe.d/gvt.conf")
    os.makedirs(os.path.dirname(options), exist_ok=True)
    with open(options, "w") as handle:
        handle.write("options i915 enable_guc=0 \\\n    enable-gvt=1\n")
    pinned = module("virtualization_mode", root, selector=IGPU, mode="gvt-g", state="absent", check_mode=True)
    assert pinned["changed"] is True and pinned["kernel_arguments"] == ["i915.enable_gvt=0"], pinned
    with open(options, "w") as handle:
        handle.write("options i915 enable_gvt=1\noptions i915 enable_gvt=N\n")  # the last one read wins
    assert module("virtualization_mode", root, selector=IGPU, mode="gvt-g", state="absent",
                  check_mode=True)["changed"] is False
    os.unlink(options)
    # Put on the boot configuration by hand, not booted yet: pinned off.
    edit_grub(root, "intel_iommu=off", "intel_iommu=off i915.enable_gvt=1")
    done = off_as_predicted(module, root, selector=IGPU, mode="gvt-g")
    assert done["kernel_arguments"] == ["i915.enable_gvt=0"] and done["reboot_required"] is False, done
    assert "i915.enable_gvt=0" in read(root, "etc/default/grub") and "i915.enable_gvt=1" not in read(
        root, "etc/default/grub")
    assert gvt_g.boot(root) is False


def test_gvt_g_off_where_nothing_turns_it_on_needs_no_boot_configuration_it_can_read(make_host, module):
    root = make_host("gvtg_laptop")  # no boot loader configuration in the tree
    done = module("virtualization_mode", root, selector=IGPU, mode="gvt-g", state="absent")
    assert done["rc"] == 0 and done["changed"] is False, done
    assert any("the boot configuration was not read" in str(w) for w in done["warnings"]), done
    # Where something turns it on, the argument must be written: an unreadable configuration is an error.
    os.makedirs(os.path.join(root, "etc/modules-load.d"), exist_ok=True)
    with open(os.path.join(root, "etc/modules-load.d/gpuvirt-gvt-g.conf"), "w") as handle:
        handle.write("kvmgt\n")
    assert module("virtualization_mode", root, selector=IGPU, mode="gvt-g", state="absent")["rc"] == 1


def test_gvt_g_off_is_refused_while_the_boot_restore_creates_a_gvt_g_vgpu(make_host, module):
    root, uuid = gvt_laptop_with_a_vgpu(make_host, module)
    refused_as_it_was(module, root, "mdev %s (i915-GVTg_V5_4 on %s)" % (uuid, IGPU), "gpuvirt.host.mdev, state absent",
                      selector=IGPU, mode="gvt-g")
    # The restore recreates every recorded GVT-g mdev, whatever spelling its parent was recorded in.
    path = hoststate.state_path(root)
    with open(path) as handle:
        recorded = handle.read()
    state = json.loads(recorded)
    state["mdevs"][uuid]["parent"] = "00:02.0"
    with open(path, "w") as handle:
        json.dump(state, handle)
    refused_as_it_was(module, root, "mdev %s" % uuid, selector=IGPU, mode="gvt-g")
    with open(path, "w") as handle:
        handle.write(recorded)

    removed = module("mdev", root, host_id="laptop-1", parents=[{"selector": IGPU, "mdevs": [], "exclusive": True}])
    assert removed["rc"] == 0 and removed["changed"] is True, removed
    done = module("virtualization_mode", root, selector=IGPU, mode="gvt-g", state="absent")
    assert done["rc"] == 0, done.get("msg")


def test_gvt_g_off_through_another_intel_gpu_is_refused(make_host, module):
    root = with_grub(make_host("gvtg_laptop", add_devices=[ARC]))
    refused_as_it_was(module, root, "GVT-g is an iGPU (0000:00:02.0) feature: 0000:04:00.0 has none to turn off",
                      selector="0000:04:00.0", mode="gvt-g")


def test_intel_sriov_off_sets_max_vfs_0_for_every_gpu_of_the_driver(make_host, module):
    for driver in ("i915", "xe"):
        root = flex_host(make_host, driver)
        assert module("virtualization_mode", root, selector=FLEX, mode="sriov", max_vfs=7)["rc"] == 0
        assert reboot(root)[driver] == {FLEX: 7, FLEX2: 7}
        grub = read(root, "etc/default/grub")

        done = off_as_predicted(module, root, selector=FLEX2, mode="sriov")

        assert done["kernel_arguments"] == ["%s.max_vfs=0" % driver], done
        # Only max_vfs changes: enable_guc, force_probe and module_blacklist stay as they were.
        assert read(root, "etc/default/grub") == grub.replace("%s.max_vfs=7" % driver, "%s.max_vfs=0" % driver)
        assert done["reboot_required"] is True
        assert any("SR-IOV goes off on every GPU it drives (%s, %s)" % (FLEX, FLEX2) in note
                   for note in done["notes"]), done["notes"]

        assert reboot(root)[driver] == {FLEX: 0, FLEX2: 0}
        assert device(root, FLEX, "sriov_totalvfs") == "0"
        after = module("virtualization_mode", root, selector=FLEX, mode="sriov", state="absent")
        assert after["changed"] is False and after["reboot_required"] is False, after


def test_intel_sriov_off_is_refused_while_the_boot_restore_enables_vfs(make_host, module):
    root = flex_host(make_host, "xe")
    assert module("virtualization_mode", root, selector=FLEX, mode="sriov", max_vfs=7)["rc"] == 0
    reboot(root)
    carved = module("sriov", root, devices=[{"selector": FLEX2, "num_vfs": 4}], delay=0)
    assert carved["rc"] == 0, carved["msg"]
    # Turned off through the other GPU of the driver: max_vfs reaches the VFs recorded on this one too.
    refused_as_it_was(module, root, "%s (4 VFs recorded)" % FLEX2, "set their num_vfs to 0 with gpuvirt.host.sriov",
                      selector=FLEX, mode="sriov")
    # On no driver now, the GPU is xe's again at the next boot: still refused.
    unbind(root, FLEX2)
    refused_as_it_was(module, root, "%s (4 VFs recorded)" % FLEX2, selector=FLEX, mode="sriov")
    # A loaded xe without max_vfs (another kernel booted) says nothing of the default kernel's: still refused.
    os.unlink(os.path.join(root, "sys/module/xe/parameters/max_vfs"))
    refused_as_it_was(module, root, "%s (4 VFs recorded)" % FLEX2, selector=FLEX, mode="sriov")


def test_intel_sriov_off_leaves_the_vfs_of_the_other_driver_alone(make_host, module):
    kernel = {"parameters": {"i915": {"max_vfs": "7"}, "xe": {"max_vfs": "7"}},
              "modules": ["kvm_intel", "kvm", "i915", "xe", "vfio_pci", "vfio_pci_core", "vfio", "vfio_iommu_type1",
                          "ice", "nvme", "ast"]}
    root = with_grub(make_host("intel_flex_sriov", patch_devices={FLEX: {"driver": "i915"}, FLEX2: {"driver": "xe"}},
                               kernel=kernel))
    edit_grub(root, "intel_iommu=off", "intel_iommu=off i915.max_vfs=7 i915.enable_guc=3 xe.max_vfs=7")
    assert reboot(root) == {"i915": {FLEX: 7}, "xe": {FLEX2: 7}}
    carved = module("sriov", root, devices=[{"selector": FLEX2, "num_vfs": 4}], delay=0)
    assert carved["rc"] == 0, carved["msg"]
    done = module("virtualization_mode", root, selector=FLEX, mode="sriov", state="absent")
    assert done["rc"] == 0 and done["kernel_arguments"] == ["i915.max_vfs=0"], done
    refused_as_it_was(module, root, "%s (4 VFs recorded)" % FLEX2, selector=FLEX2, mode="sriov")


def test_mxgpu_off_stops_loading_gim_and_the_next_boot_has_no_vfs(make_host, module):
    root = make_host("amd_mxgpu")
    assert module("virtualization_mode", root, selector=MI300X, mode="mxgpu", max_vfs=8)["rc"] == 0
    assert reboot(root)["gim"] == {MI300X: 8}

    done = off_as_predicted(module, root, selector=MI300X, mode="mxgpu")

    assert read(root, GIM_CONF) is None and read(root, GIM_MODULES_LOAD) is None
    assert sorted(done["files_changed"]) == ["/" + GIM_CONF, "/" + GIM_MODULES_LOAD]
    assert done["reboot_required"] is True and done["reboot_for"] == ["gim not loaded"]
    assert "gim" not in reboot(root)
    assert not os.path.exists(os.path.join(root, "sys/module/gim")) and vfs_of(root, MI300X) == []
    # gim is not loaded: nothing drives the GPU.
    assert not os.path.lexists(os.path.join(root, "sys/bus/pci/devices", MI300X, "driver"))
    after = module("virtualization_mode", root, selector=MI300X, mode="mxgpu", state="absent")
    assert after["changed"] is False and after["reboot_required"] is False, after
    assert after["verification"]["ready"] is False


def test_mxgpu_off_takes_the_records_of_gims_vfs_with_it(make_host, module):
    """The sriov module cannot set the VF count of a GIM GPU (gim does): turning MxGPU off drops their records
    itself, or nothing could, and the restore would wait for gim's VFs at every boot."""
    root = make_host("amd_mxgpu", add_devices=[
        {"address": "0000:c1:00.0", "ids": "1002:73bf", "class": "030000", "driver": "amdgpu", "group": 90}])
    assert module("virtualization_mode", root, selector=MI300X, mode="mxgpu", max_vfs=8)["rc"] == 0
    reboot(root)
    assert module("sriov", root, devices=[{"selector": MI300X, "num_vfs": 8}])["rc"] == 0
    refused_as_it_was(module, root, "0000:c1:00.0 is not a GPU of AMD's GIM driver (driver: amdgpu)",
                      selector="0000:c1:00.0", mode="mxgpu")
    unbind(root, MI300X)  # gim lost the GPU in this boot: its records go all the same

    done = off_as_predicted(module, root, selector=MI300X, mode="mxgpu")

    assert MI300X not in hoststate.load_state(root)["sriov"]
    assert "/" + hoststate.STATE_PATH in done["files_changed"]
    assert any("the boot restore's records of gim's VFs go with it: %s (8 VFs)" % MI300X in note
               for note in done["notes"]), done["notes"]
    reboot(root)
    status, results = run_restore(root)
    assert status["ok"] is True and not any(item == MI300X for _step, item, _ok, _message in results), results


def test_off_takes_no_options_and_vgpu_is_off_only_where_no_vgpu_driver_runs(make_host, module, run_module):
    root = flex_host(make_host, "i915")
    refused_as_it_was(module, root, "takes no options, not max_vfs; nothing changed",
                      selector=FLEX, mode="sriov", max_vfs=0)

    root = make_host("l40s_vgpu")
    before = snapshot(root)
    vgpu = run_module("virtualization_mode", {"root": root, "selector": L40S, "mode": "vgpu", "state": "absent"})
    assert vgpu["rc"] == 1 and "has nothing to turn off" in vgpu["msg"] and "vgpu-kvm" in vgpu["msg"], vgpu
    assert snapshot(root) == before

    root = make_host("desktop_dgpu")  # a GeForce, no vGPU host driver: off already
    off = run_module("virtualization_mode", {"root": root, "selector": "0000:01:00.0", "mode": "vgpu",
                                             "state": "absent"})
    assert off["rc"] == 0 and off["changed"] is False and off["reboot_required"] is False, off
