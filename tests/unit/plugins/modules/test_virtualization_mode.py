# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``gpuvirt.host.virtualization_mode`` on the vendor fixture hosts; GVT-g end to end through a
simulated boot (tests/sim/gvt_g.py) and the mdev module."""

from __future__ import annotations

import io
import os
import shutil

import ansible.module_utils._internal as ansible_internal
import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import mdev, restore, sysfs
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect
from ansible_collections.gpuvirt.host.tests.sim import gvt_g
from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim
from ansible_collections.gpuvirt.host.tests.sim.sriov_hosts import all_vfs_enabled
from ansible_collections.gpuvirt.host.tests.unit.plugins.modules.test_vfio_pci import read

BOOT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures", "boot", "debian-grub")
IGPU = "0000:00:02.0"
MODULES_LOAD = "etc/modules-load.d/gpuvirt-gvt-g.conf"


def with_grub(root):
    for relative in ("etc/default/grub", "usr/sbin/update-grub", "usr/sbin/grub-mkconfig"):
        os.makedirs(os.path.dirname(os.path.join(root, relative)), exist_ok=True)
        shutil.copy2(os.path.join(BOOT, relative), os.path.join(root, relative))
    return root


def snapshot(root):
    state = {}
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                with open(path, "rb") as handle:
                    state[os.path.relpath(path, root)] = handle.read()
    return state


@pytest.fixture
def mode(run_module):
    def run(root, check_mode=False, diff=False, **args):
        args.setdefault("root", root)
        return run_module("virtualization_mode", args, check_mode=check_mode, diff=diff)

    return run


def test_gvt_g_end_to_end_spec_enabled_carved(make_host, mode, run_module, monkeypatch):
    root = with_grub(make_host("gvtg_laptop"))
    predicted = mode(root, check_mode=True, diff=True, selector=IGPU, mode="gvt-g")
    assert predicted["rc"] == 0 and predicted["changed"] is True, predicted
    assert read(root, MODULES_LOAD) is None

    result = mode(root, diff=True, selector=IGPU, mode="gvt-g")
    assert result["rc"] == 0 and result["changed"] is True, result
    for key in ("changed", "files_changed", "reboot_required", "diff"):
        assert predicted[key] == result[key], key
    assert "i915.enable_gvt=1" in read(root, "etc/default/grub")
    assert read(root, MODULES_LOAD).endswith("kvmgt\n")
    assert result["reboot_required"] is True and result["modules_loaded"] == []
    assert result["verification"]["ready"] is False
    assert mode(root, selector=IGPU, mode="gvt-g")["changed"] is False

    assert gvt_g.boot(root) is True  # the driver brings the types up after the reboot
    after = mode(root, selector=IGPU, mode="gvt-g")
    assert after["rc"] == 0, after
    assert after["changed"] is False and after["reboot_required"] is False
    assert after["verification"] == {"ready": True, "missing": []}

    monkeypatch.setattr(ansible_internal, "is_controller", False)
    with KernelSim(root).active():
        carved = run_module("mdev", {"root": root, "host_id": "laptop-1", "parents": [
            {"selector": IGPU, "mdevs": [{"type": "i915-GVTg_V5_4", "count": 1}]}]})
    assert carved["rc"] == 0 and carved["changed"] is True, carved
    created = os.listdir(os.path.join(root, "sys/bus/mdev/devices"))
    assert len(created) == 1

    # The next boot: the vGPU is gone until the boot-time restore brings it back from the state file.
    with KernelSim(root).active():
        sysfs.write_text(os.path.join(root, "sys/bus/mdev/devices", created[0], "remove"), "1")
    assert os.listdir(os.path.join(root, "sys/bus/mdev/devices")) == []
    assert gvt_g.boot(root) is True
    with KernelSim(root).active():
        status = restore.Restore(root=root, out=io.StringIO(), timeout=0.3, interval=0.01).run()
    assert status["ok"] is True, status
    assert mdev.read_mdev(root, created[0]) == (IGPU, "i915-GVTg_V5_4")


def test_a_running_kernel_with_gvt_g_on_in_another_spelling_needs_no_reboot(make_host, mode):
    # The kernel reads i915.enable_gvt=true as =1: GVT-g is on in this boot, only the module is missing.
    cmdline = "root=/dev/nvme0n1p2 ro intel_iommu=on i915.enable_gvt=true"
    root = with_grub(make_host("gvtg_laptop", kernel={"cmdline": cmdline}))

    result = mode(root, check_mode=True, selector=IGPU, mode="gvt-g")

    assert result["rc"] == 0 and result["reboot_required"] is False and result["reboot_for"] == [], result


def test_gvt_g_is_refused_on_a_later_generation_and_nothing_changes(make_host, mode):
    root = with_grub(make_host("desktop_dgpu"))
    before = snapshot(root)
    result = mode(root, selector=IGPU, mode="gvt-g")
    assert result["rc"] == 1 and result["changed"] is False
    assert "Broadwell to Comet Lake" in result["msg"] and "nothing changed" in result["msg"]
    assert snapshot(root) == before


def test_intel_sriov_puts_max_vfs_on_the_command_line(make_host, mode):
    root = with_grub(make_host("intel_flex_sriov"))
    assert read(root, "sys/bus/pci/devices/0000:4e:00.0/sriov_totalvfs") == "0\n"  # i915 out of PF mode
    result = mode(root, selector="0000:4e:00.0", mode="sriov", max_vfs=7)
    assert result["rc"] == 0 and result["changed"] is True, result
    grub = read(root, "etc/default/grub")
    assert "i915.max_vfs=7" in grub and "i915.enable_guc=3" in grub
    assert result["reboot_required"] is True
    assert mode(root, selector="0000:4e:00.0", mode="sriov", max_vfs=7)["changed"] is False
    # sriov_totalvfs reads 0 before PF mode: the bound is the VFs a Flex 170 has, from its device ID.
    too_many = mode(root, selector="0000:4e:00.0", mode="sriov", max_vfs=64)
    assert too_many["rc"] == 1 and too_many["changed"] is False
    assert "max_vfs must be between 1 and 31 for 0000:4e:00.0 (the VFs of an [8086:56c0] GPU; sriov_totalvfs " \
           "reads 0 until the driver is in PF mode)" in too_many["msg"]


def test_max_vfs_given_as_an_option_is_the_same_setting(make_host, mode):
    root = with_grub(make_host("intel_flex_sriov"))
    assert mode(root, selector="0000:4e:00.0", mode="sriov", options={"max_vfs": 7})["changed"] is True
    assert mode(root, selector="0000:4e:00.0", mode="sriov", max_vfs=7)["changed"] is False
    # As a template gives it: text.
    assert mode(root, selector="0000:4e:00.0", mode="sriov", options={"max_vfs": "7"})["changed"] is False
    assert mode(root, selector="0000:4e:00.0", mode="sriov", max_vfs="7", options={"max_vfs": "7"})["changed"] is False
    twice = mode(root, selector="0000:4e:00.0", mode="sriov", max_vfs=7, options={"max_vfs": 8})
    assert twice.failed and "max_vfs is given twice" in twice["msg"], twice
    wrong = mode(root, selector="0000:4e:00.0", mode="sriov", options={"max_vfs": "seven"})
    assert wrong.failed and "option max_vfs must be an integer, not 'seven'; nothing changed" in wrong["msg"], wrong


@pytest.mark.parametrize("host, args, message", [
    ("gvtg_laptop", {"selector": IGPU, "mode": "gvt-g", "max_vfs": 4}, "mode gvt-g takes no options, not max_vfs"),
    ("intel_flex_sriov", {"selector": "0000:4e:00.0", "mode": "sriov", "options": {"max_vfs": 7, "guc": 3}},
     "mode sriov takes the options max_vfs, not guc"),
    ("intel_flex_sriov", {"selector": "0000:4e:00.0", "mode": "sriov"}, "max_vfs"),
    ("intel_flex_sriov", {"selector": "0000:4e:00.0", "mode": "mxgpu", "max_vfs": 2},
     "cannot offer mxgpu: its vendor's modes are gvt-g, sriov"),
])
def test_an_option_or_mode_the_gpu_does_not_take_is_refused(make_host, mode, host, args, message):
    root = with_grub(make_host(host))
    before = snapshot(root)
    result = mode(root, **args)
    assert result.failed and message in result["msg"] and "nothing changed" in result["msg"], result
    assert snapshot(root) == before


def test_intel_sriov_vfs_before_pf_mode_are_refused_with_advice(make_host, run_module):
    root = with_grub(make_host("intel_flex_sriov"))
    before = snapshot(root)
    for check_mode in (True, False):
        result = run_module("sriov", {"root": root, "devices": [{"selector": "8086:56c0", "num_vfs": 4}]},
                            check_mode=check_mode)
        assert result["rc"] == 1 and result["changed"] is False, result
        assert "offers no VFs (sriov_totalvfs reads 0): it is an Intel GPU out of SR-IOV PF mode: i915 offers " \
               "VFs only with i915.max_vfs=<N> and GuC submission (i915.enable_guc=3)" in result["msg"]
        assert "set it with gpuvirt.host.virtualization_mode (mode sriov, max_vfs) and reboot" in result["msg"]
    assert snapshot(root) == before


def test_mxgpu_without_gim_is_refused_with_advice(make_host, mode):
    root = make_host("amd_mxgpu_no_driver")
    before = snapshot(root)
    result = mode(root, selector="1002:74a1", mode="mxgpu", max_vfs=1)
    assert result["rc"] == 1 and "GIM host driver" in result["msg"] and "blacklist amdgpu" in result["msg"]
    assert snapshot(root) == before


def test_mxgpu_with_gim_sets_vf_num(make_host, mode):
    root = make_host("amd_mxgpu")
    result = mode(root, selector="1002:74a1", mode="mxgpu", max_vfs=8)
    assert result["rc"] == 0 and result["changed"] is True, result
    assert read(root, "etc/modprobe.d/gpuvirt-gim.conf").endswith("options gim vf_num=8\n")
    assert result["reboot_required"] is True and result["verification"]["ready"] is True
    same = mode(root, selector="1002:74a1", mode="mxgpu", max_vfs=1)
    assert same["changed"] is True and same["reboot_required"] is False


def test_nvidia_vgpu_needs_the_running_manager(make_host, mode):
    refused = mode(make_host("grace_hopper"), selector="0009:01:00.0", mode="vgpu")
    assert refused["rc"] == 1 and "nvidia-vgpu-mgr is not running" in refused["msg"]
    manager = [{"pid": 2100, "comm": "nvidia-vgpu-mgr"}]
    root = make_host(all_vfs_enabled("l40s_vgpu"), processes=manager)
    ready = mode(root, selector="0000:cb:00.0", mode="vgpu")
    assert ready["rc"] == 0 and ready["changed"] is False and ready["verification"]["ready"] is True


def test_nvidia_vgpu_with_only_some_vfs_is_not_ready(make_host, mode):
    """SR-IOV mode is every VF: with 8 of 32 enabled, gpuvirt.host.nvidia_vgpu first enables them anew, so
    the mode is not ready yet, and says what is missing."""
    root = make_host("l40s_vgpu", processes=[{"pid": 2100, "comm": "nvidia-vgpu-mgr"}])
    result = mode(root, selector="0000:cb:00.0", mode="vgpu")
    assert result["rc"] == 0 and result["changed"] is False and result["verification"]["ready"] is False
    modes = [g for g in detect(root)["gpus"] if g["address"] == "0000:cb:00.0"][0]["virtualization"]
    [entry] = [m for m in modes if m["mode"] == "vgpu"]
    assert entry["ready"] is False
    assert entry["missing"] == [
        "all of its VFs (8 of 32 enabled; gpuvirt.host.nvidia_vgpu enables them anew: sriov-manage -d, then -e)"
    ]


def test_a_mode_of_another_vendor_is_refused(make_host, mode):
    result = mode(make_host("amd_mxgpu"), selector="1002:74a1", mode="gvt-g")
    assert result["rc"] == 1 and "its vendor's modes are mxgpu" in result["msg"]
