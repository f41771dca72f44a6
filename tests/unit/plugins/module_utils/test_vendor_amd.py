# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The AMD backend: GIM's GPUs, ``vf_num`` per GPU and the VF counts each model supports."""

from __future__ import annotations

import os

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import enablement, vendor_amd
from ansible_collections.gpuvirt.host.plugins.module_utils.vendor_plan import EnableError
from ansible_collections.gpuvirt.host.tests.sim.boot import reboot
from ansible_collections.gpuvirt.host.tests.sim.nvidia_vgpu_sim import attach

MI300X = "0000:06:00.0"
GPU0 = "0000:06:00.0"  # amd_mi355x_pair: GIM's GPU 0 and 1
GPU1 = "0000:86:00.0"


def plan(root, address, max_vfs):
    device, host = enablement.read_gpu(root, address)
    return enablement.plan_mode(device, host, "mxgpu", {"max_vfs": max_vfs})


def conf_line(mode_plan):
    (relative, content), (load, loaded) = mode_plan.files
    assert relative == "etc/modprobe.d/gpuvirt-gim.conf"
    # gim has no device table for udev to load it by: the plan names it for systemd-modules-load.
    assert (load, loaded.splitlines()[-1]) == ("etc/modules-load.d/gpuvirt-gim.conf", "gim")
    return content.splitlines()[-1]


def reboot_needed(mode_plan):
    return [need for need, satisfied in mode_plan.running_needs if not satisfied]


def vf_count(root, pf):
    return sum(1 for name in os.listdir(os.path.join(root, "sys/bus/pci/devices", pf)) if name.startswith("virtfn"))


# -- the GPUs GIM drives --------------------------------------------------------------------------


@pytest.mark.parametrize("device_id, model", [
    ("75a0", "MI350X"), ("75a3", "MI355X"), ("740f", "MI210"), ("7460", "Radeon PRO V710"),
])
def test_gpus_of_later_gim_releases_are_offered_mxgpu(make_host, device_id, model):
    """GIM 8.5-9.4 drive them (amdgv_marketing_name.c): under amdgpu they are asked for GIM, not ignored."""
    root = make_host("amd_mxgpu_no_driver", patch_devices={"06:00.0": {"ids": "1002:" + device_id}})
    device, host = enablement.read_gpu(root, MI300X)
    assert device.device_id == device_id and model in vendor_amd.GIM_MODELS[device_id]
    (offered,) = vendor_amd.BACKEND.modes(device, host)
    assert offered["mode"] == "mxgpu" and offered["ready"] is False
    assert "GIM host driver" in offered["missing"][0] and "instead of amdgpu" in offered["missing"][0]


def test_a_gpu_gim_does_not_know_is_not_offered_mxgpu(make_host):
    root = make_host("amd_mxgpu_no_driver", patch_devices={"06:00.0": {"ids": "1002:7448"}})  # a Radeon PRO W7900
    device, host = enablement.read_gpu(root, MI300X)
    assert vendor_amd.BACKEND.modes(device, host) == []


# -- vf_num, one entry per GPU ---------------------------------------------------------------------


def test_vf_num_text_follows_gim():
    assert vendor_amd.parse_vf_num("2,8") == [2, 8] and vendor_amd.parse_vf_num("8\n") == [8]
    assert vendor_amd.parse_vf_num(None) is None and vendor_amd.parse_vf_num("(null)") is None
    # GIM repeats the last value to every later GPU.
    assert [vendor_amd.vf_num_of([2, 8], index) for index in range(4)] == [2, 8, 8, 8]
    assert vendor_amd.vf_num_of(None, 0) is None
    assert vendor_amd.render_vf_num([8, 8]) == "8" and vendor_amd.render_vf_num([2, 8, 8]) == "2,8"
    assert vendor_amd.render_vf_num([8, 2]) == "8,2"


def test_the_selected_gpus_entry_is_set_and_the_others_are_kept(make_host):
    root = make_host("amd_mi355x_pair")  # gim loaded with vf_num=2,8
    device, host = enablement.read_gpu(root, GPU1)
    assert vendor_amd.gim_gpus(host.devices) == [GPU0, GPU1]

    # GPU 1 already has 8: nothing to change and nothing to reboot for, GPU 0 keeps its 2.
    same = plan(root, GPU1, 8)
    assert conf_line(same) == "options gim vf_num=2,8" and reboot_needed(same) == []
    # GPU 0 to 8: both 8, which GIM reads from a single value; GPU 0 needs a reload.
    first = plan(root, GPU0, 8)
    assert conf_line(first) == "options gim vf_num=8"
    assert reboot_needed(first) == ["gim loaded with vf_num=8 (GPU 0, %s: 8 VFs)" % GPU0]
    # GPU 1 to 2: GPU 0's 2 stays.
    second = plan(root, GPU1, 2)
    assert conf_line(second) == "options gim vf_num=2" and len(reboot_needed(second)) == 1


def test_the_next_load_is_planned_from_the_file_already_written(make_host):
    root = make_host("amd_mi355x_pair")
    os.makedirs(os.path.join(root, "etc/modprobe.d"), exist_ok=True)
    with open(os.path.join(root, "etc/modprobe.d/gpuvirt-gim.conf"), "w") as handle:
        handle.write("options gim vf_num=1,2\n")
    assert conf_line(plan(root, GPU1, 8)) == "options gim vf_num=1,8"
    assert conf_line(plan(root, GPU0, 2)) == "options gim vf_num=2"


def test_without_vf_num_each_gpu_keeps_what_gim_gave_it(make_host):
    root = make_host("amd_mi355x_pair", kernel={"parameters": {}})
    assert conf_line(plan(root, GPU0, 1)) == "options gim vf_num=1,8"


def test_gim_gives_each_gpu_its_entry_at_the_next_load(make_host, run_module):
    root = make_host("amd_mi355x_pair")
    sim = attach(root)[0]
    with sim.active():
        result = run_module("virtualization_mode", {"root": root, "selector": GPU0, "mode": "mxgpu", "max_vfs": 1})
    assert result["rc"] == 0 and result["changed"] is True and result["reboot_required"] is True, result
    assert reboot(root)["gim"] == {GPU0: 1, GPU1: 8}
    assert (vf_count(root, GPU0), vf_count(root, GPU1)) == (1, 8)
    with sim.active():
        again = run_module("virtualization_mode", {"root": root, "selector": GPU1, "mode": "mxgpu", "max_vfs": 8})
    assert again["changed"] is False and again["reboot_required"] is False, again
    # GPU 0 to 8 as well: one value, which GIM repeats to GPU 1.
    with sim.active():
        both = run_module("virtualization_mode", {"root": root, "selector": GPU0, "mode": "mxgpu", "max_vfs": 8})
    assert both["changed"] is True, both
    with open(os.path.join(root, "etc/modprobe.d/gpuvirt-gim.conf")) as handle:
        assert handle.read().endswith("options gim vf_num=8\n")
    assert reboot(root)["gim"] == {GPU0: 8, GPU1: 8}


# -- the VF counts a model supports -----------------------------------------------------------------


@pytest.mark.parametrize("host, address, refused, accepted", [
    ("amd_mxgpu", MI300X, (2, 4, 16), (1, 8)),
    ("amd_mi355x_pair", GPU0, (4, 16), (1, 2, 8)),
])
def test_only_the_vf_counts_amd_states_for_the_model_are_accepted(make_host, host, address, refused, accepted):
    root = make_host(host)
    for count in refused:
        with pytest.raises(EnableError) as error:
            plan(root, address, count)
        message = str(error.value)
        assert "max_vfs %d is not a VF count" % count in message and "nothing changed" in message
        assert " or ".join(str(n) for n in accepted) + " VFs per GPU" in message
    for count in accepted:
        assert conf_line(plan(root, address, count)).startswith("options gim vf_num=%d" % count)


def test_a_model_without_stated_counts_takes_gims_range(make_host):
    root = make_host("amd_mxgpu", patch_devices={"06:00.0": {"ids": "1002:74a5"}})  # MI325X
    assert conf_line(plan(root, MI300X, 4)) == "options gim vf_num=4"
    with pytest.raises(EnableError, match="between 1 and 31"):
        plan(root, MI300X, 32)


def test_a_refused_count_changes_nothing(make_host, run_module):
    root = make_host("amd_mxgpu")
    result = run_module("virtualization_mode", {"root": root, "selector": MI300X, "mode": "mxgpu", "max_vfs": 4})
    assert result["rc"] == 1 and result["changed"] is False
    assert "AMD Instinct MI300X on %s supports: it runs 1 or 8 VFs per GPU" % MI300X in result["msg"]
    assert not os.path.exists(os.path.join(root, "etc/modprobe.d/gpuvirt-gim.conf"))


def test_the_enabled_gpu_has_gim_after_the_reboot(make_host, run_module):
    # gim has no device table (gim_drv.c: id_table NULL): udev never loads it, only its name does.
    root = make_host("amd_mxgpu")
    assert "gim" not in reboot(make_host("amd_mxgpu"))  # loaded by hand before: gone after a reboot
    result = run_module("virtualization_mode", {"root": root, "selector": "1002:74a1", "mode": "mxgpu", "max_vfs": 8})
    assert result["rc"] == 0 and result["reboot_required"] is True, result
    assert "/etc/modules-load.d/gpuvirt-gim.conf" in result["files_changed"]
    assert reboot(root)["gim"] == {MI300X: 8}
