# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import copy
import errno
import json
import os
import shutil

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import hoststate, sriov
from ansible_collections.gpuvirt.host.tests.fixtures import hostgen
from ansible_collections.gpuvirt.host.tests.sim.nvidia_vgpu_sim import attach, fake_sriov_manage, sriov_manage_calls
from ansible_collections.gpuvirt.host.tests.sim.sriov_hosts import all_vfs_enabled, hold_group, recorded, snapshot

L40S = "0000:cb:00.0"
A100 = "0000:b1:00.0"
VF0, VF1, VF2, VF3 = "0000:cb:00.4", "0000:cb:00.5", "0000:cb:00.6", "0000:cb:00.7"
CACHE = "var/lib/gpuvirt/nvidia-vgpu-types.json"
MACHINE_ID = "5f0c1d2e3a4b4c5d8e9f0a1b2c3d4e5f\n"
L40S_TYPES = {1030 + i: "NVIDIA L40S-%s" % p for i, p in enumerate(["1B", "2B", "4Q", "8Q"])}
EMPTY_VF0 = {"cb:00.4": {"nvidia_vgpu": {"creatable": {}, "current": 0}}}


@pytest.fixture(autouse=True)
def lspci(fake_commands):
    """sriov-manage runs lspci: the module finds it (or refuses before running sriov-manage)."""
    return fake_commands.install("lspci")


@pytest.fixture
def run(run_module):
    """Run a module with the simulated kernel and driver reacting; returns (result, sysfs writes)."""

    def runner(root, name="nvidia_vgpu", check_mode=False, diff=False, **args):
        sim, _kernel, _nvidia = attach(root)
        if name == "nvidia_vgpu":
            args.setdefault("delay", 0)
        with sim.active():
            result = run_module(name, dict(args, root=root), check_mode=check_mode, diff=diff)
        return result, sim.writes

    return runner


L40S_HOST = all_vfs_enabled("l40s_vgpu")  # in SR-IOV mode: all 32 VFs, as sriov-manage -e leaves it
A100_HOST = all_vfs_enabled("datacenter_a100")


@pytest.fixture
def l40s(make_host):
    """The L40S host as the simulated driver shows it (the others VFs offer only what fits next to VF 0's 8Q)."""
    root = make_host(L40S_HOST)
    attach(root)
    return root


def gpu(selector=L40S, **declaration):
    return dict(declaration, selector=selector)


def current(root, vf):
    with open(os.path.join(root, "sys/bus/pci/devices", vf, "nvidia/current_vgpu_type")) as handle:
        return int(handle.read())


def warnings(result):
    return json.dumps(result.get("warnings") or [])


# -- the per-VF layout (L40S) ------------------------------------------------------------------------


def test_per_vf_check_mode_run_and_second_run(l40s, run):
    gpus = [gpu("L40S", profiles=[{"profile": "NVIDIA L40S-8Q", "count": 3}])]
    before = snapshot(l40s)
    predicted, writes = run(l40s, check_mode=True, diff=True, gpus=gpus)
    assert predicted["changed"] is True and writes == [] and snapshot(l40s) == before
    result, writes = run(l40s, diff=True, gpus=gpus)
    assert result["changed"] is True
    assert [(p.split("/")[4], v) for p, v in writes] == [(VF1, "1041"), (VF2, "1041")]
    for key in ("gpus", "mdev_parents", "state_file", "type_cache", "diff"):
        assert result[key] == predicted[key], key
    entry = result["gpus"][0]
    assert entry["framework"] == "per_vf" and entry["num_vfs"] == 32 and entry["sriov_enabled"] is False
    assert entry["created"] == [
        {"vf": VF1, "type_id": 1041, "type_name": "NVIDIA L40S-8Q"},
        {"vf": VF2, "type_id": 1041, "type_name": "NVIDIA L40S-8Q"},
    ]
    assert entry["vfs"][1] == {
        "address": VF1,
        "before": {"type_id": 0, "type_name": None},
        "after": {"type_id": 1041, "type_name": "NVIDIA L40S-8Q"},
        "in_use": [],
    }
    assert (
        "0000:cb:00.5 none" in result["diff"][0]["before"]
        and "0000:cb:00.5 1041 NVIDIA L40S-8Q" in result["diff"][0]["after"]
    )
    state = recorded(l40s)
    assert state["nvidia_vgpu"] == {vf: {"type_id": 1041, "type_name": "NVIDIA L40S-8Q"} for vf in (VF0, VF1, VF2)}
    assert state["sriov"] == {L40S: {"num_vfs": 32, "method": "sriov_manage"}}
    assert [current(l40s, vf) for vf in (VF0, VF1, VF2, VF3)] == [1041, 1041, 1041, 0]

    again, writes = run(l40s, gpus=gpus)
    assert again["changed"] is False and writes == []
    checked, writes = run(l40s, check_mode=True, gpus=gpus)
    assert checked["changed"] is False and writes == []


def test_a_full_gpu_still_resolves_names_from_the_type_cache(make_host, run):
    root = make_host(L40S_HOST, patch_devices=EMPTY_VF0)
    result, _writes = run(root, gpus=[gpu(profiles=[{"profile": "L40S-24Q", "count": 2}])])
    assert result["changed"] is True and result["type_cache"]["changed"] is True
    with open(os.path.join(root, "sys/bus/pci/devices", VF3, "nvidia/creatable_vgpu_types")) as handle:
        assert handle.read() == "ID    : vGPU Name\n"  # the GPU is full: the list is the header alone
    # A new declaration still finds every profile, and says why it does not fit.
    result, writes = run(root, gpus=[gpu(profiles=[{"profile": "L40S-1B", "count": 1}])])
    assert result.failed and writes == []
    assert (
        "L40S-1B (1030) cannot be created: the free VFs offer nothing, and the GPU hosts 2 x L40S-24Q (1044)"
        in (result["msg"])
    )
    result, writes = run(root, gpus=[gpu(profiles=[{"profile": "L40S-1B", "count": 2}], exclusive=True)])
    assert result["changed"] is True
    assert [v for _p, v in writes] == ["0", "0", "1030", "1030"]
    assert {e["type_id"] for e in recorded(root)["nvidia_vgpu"].values()} == {1030}


def test_unknown_profile_lists_the_valid_ones_and_changes_nothing(l40s, run):
    before = snapshot(l40s)
    result, writes = run(l40s, gpus=[gpu(profiles=[{"profile": "L40S-5Q", "count": 1}])])
    assert result.failed and writes == [] and snapshot(l40s) == before
    assert "'L40S-5Q' is not a vGPU profile of this GPU; valid profiles: L40S-8Q (1041)" in result["msg"]
    assert "only lists what still fits" in result["msg"]


def test_running_out_of_room_rolls_back_everything(l40s, run):
    before = snapshot(l40s)
    result, writes = run(l40s, gpus=[gpu(profiles=[{"profile": "L40S-8Q", "count": 7}])])
    assert result.failed and result["changed"] is False
    assert "5 of the 6 planned were created before 0000:cb:01.2 stopped offering it" in result["msg"]
    assert "Rolled back the 5 vGPU change(s)" in result["msg"]
    assert [v for _p, v in writes] == ["1041"] * 5 + ["0"] * 5
    assert snapshot(l40s) == before


def test_in_use_vgpus_are_kept_or_refused(l40s, run):
    hold_group(l40s, VF0)
    result, writes = run(l40s, gpus=[gpu(vfs=[{"address": VF0, "state": "absent"}])])
    assert result.failed and writes == [] and "is in use by process 4242" in result["msg"]
    result, writes = run(l40s, gpus=[gpu(profiles=[{"profile": "L40S-8Q", "count": 0}])])
    assert result["changed"] is True and writes == []  # only the state file and type cache
    assert result["gpus"][0]["kept_in_use"] == [VF0] and "force: true deletes it" in warnings(result)
    assert recorded(l40s)["nvidia_vgpu"] == {}
    # Forcing reaches the driver, which refuses while the VM holds the VF.
    result, writes = run(l40s, gpus=[gpu(vfs=[{"address": VF0, "state": "absent"}])], force=True)
    assert result.failed and "Device or resource busy" in result["msg"] and current(l40s, VF0) == 1041


def test_explicit_vfs_and_exclusive(l40s, run):
    gpus = [
        gpu(vfs=[{"address": "cb:00.5", "profile": "1041"}, {"address": VF2, "profile": "L40S-8Q"}], exclusive=True)
    ]
    result, writes = run(l40s, gpus=gpus)
    assert [(p.split("/")[4], v) for p, v in writes] == [(VF0, "0"), (VF1, "1041"), (VF2, "1041")]
    assert result["gpus"][0]["deleted"] == [{"vf": VF0, "type_id": 1041, "type_name": "NVIDIA L40S-8Q"}]
    assert set(recorded(l40s)["nvidia_vgpu"]) == {VF1, VF2}
    again, writes = run(l40s, gpus=gpus)
    assert again["changed"] is False and writes == []


def test_persistent_false_and_other_records(l40s, run):
    run(l40s, gpus=[gpu(profiles=[{"profile": "L40S-8Q", "count": 2}])], persistent=False)
    # Nothing to keep: no state file is made for it.
    assert not os.path.exists(os.path.join(l40s, "etc/gpuvirt/host-state.json"))
    state = hoststate.empty_state()
    state["nvidia_vgpu"]["0000:99:00.4"] = {"type_id": 7, "type_name": "elsewhere"}
    os.makedirs(os.path.join(l40s, "etc/gpuvirt"))
    with open(os.path.join(l40s, "etc/gpuvirt/host-state.json"), "w") as handle:
        json.dump(state, handle)
    run(l40s, gpus=[gpu(profiles=[{"profile": "L40S-8Q", "count": 2}])])
    assert set(recorded(l40s)["nvidia_vgpu"]) == {"0000:99:00.4", VF0, VF1}


# -- GPUs not in SR-IOV mode: sriov-manage --------------------------------------------------------------


@pytest.fixture
def l40s_off(make_host, tmp_path):
    root = make_host("l40s_vgpu", patch_devices=EMPTY_VF0)
    sim, _kernel, _nvidia = attach(root)
    with sim.active():
        sriov.set_num_vfs(root, L40S, 0, delay=0)
    return root


def test_sriov_manage_enables_the_vfs_with_retries(l40s_off, run, tmp_path):
    command = fake_sriov_manage(str(tmp_path / "bin"), l40s_off, fail_first=1, lie_first=1)
    gpus = [gpu(profiles=[{"profile": "L40S-4Q", "count": 3}])]
    predicted, writes = run(l40s_off, check_mode=True, gpus=gpus, sriov_manage=command, retries=3)
    assert predicted["changed"] is True and writes == [] and sriov_manage_calls(l40s_off) == []
    assert "only checked once a real run has enabled the VFs" in warnings(predicted)
    result, writes = run(l40s_off, gpus=gpus, sriov_manage=command, retries=3)
    assert result["changed"] is True and len(sriov_manage_calls(l40s_off)) == 3
    assert "VFs enabled on attempt 3 of 3" in warnings(result)
    entry = result["gpus"][0]
    assert entry["sriov_enabled"] is True and entry["num_vfs"] == 32 and len(entry["created"]) == 3
    assert [current(l40s_off, vf) for vf in (VF0, VF1, VF2, VF3)] == [1039, 1039, 1039, 0]
    assert recorded(l40s_off)["sriov"] == {L40S: {"num_vfs": 32, "method": "sriov_manage"}}
    again, writes = run(l40s_off, gpus=gpus, sriov_manage=command)
    assert again["changed"] is False and writes == [] and len(sriov_manage_calls(l40s_off)) == 3


def test_check_mode_predicts_enabling_from_the_remembered_types(l40s_off, make_host, run, tmp_path):
    # The model's types were read once while its VFs were enabled.
    seen = make_host(L40S_HOST, patch_devices=EMPTY_VF0)
    run(seen, gpus=[gpu(profiles=[{"profile": "L40S-4Q", "count": 0}])])
    os.makedirs(os.path.join(l40s_off, os.path.dirname(CACHE)))
    with open(os.path.join(seen, CACHE)) as source, open(os.path.join(l40s_off, CACHE), "w") as target:
        target.write(source.read())
    command = fake_sriov_manage(str(tmp_path / "bin"), l40s_off)
    bad, _writes = run(l40s_off, check_mode=True, gpus=[gpu(profiles=[{"profile": "L40S-5Q", "count": 1}])])
    assert bad.failed and "valid profiles: L40S-1B (1030), L40S-2B (1031)" in bad["msg"]
    gpus = [gpu(profiles=[{"profile": "L40S-4Q", "count": 2}])]
    predicted, _writes = run(l40s_off, check_mode=True, gpus=gpus, sriov_manage=command)
    assert sriov_manage_calls(l40s_off) == [] and "only checked" not in warnings(predicted)
    result, _writes = run(l40s_off, gpus=gpus, sriov_manage=command)
    for key in ("changed", "gpus", "state_file"):
        assert result[key] == predicted[key], key
    assert result["gpus"][0]["created"][1] == {"vf": VF1, "type_id": 1039, "type_name": "NVIDIA L40S-4Q"}


def test_sriov_manage_that_never_enables_fails_after_the_retries(l40s_off, run, tmp_path):
    command = fake_sriov_manage(str(tmp_path / "bin"), l40s_off, lie_first=9)
    result, _writes = run(
        l40s_off, gpus=[gpu(profiles=[{"profile": "L40S-4Q", "count": 1}])], sriov_manage=command, retries=2
    )
    assert result.failed and "did not enable the VFs of 0000:cb:00.0 in 2 attempts" in result["msg"]
    assert not os.path.exists(os.path.join(l40s_off, "etc/gpuvirt/host-state.json"))


def test_sriov_manage_that_enables_fewer_vfs_than_offered_fails_and_records_nothing(l40s_off, run, tmp_path):
    """A short count is not SR-IOV mode: recorded, it would come back short at every boot."""
    command = fake_sriov_manage(str(tmp_path / "bin"), l40s_off, partial_first=9, partial_vfs=4)
    result, _writes = run(
        l40s_off, gpus=[gpu(profiles=[{"profile": "L40S-4Q", "count": 1}])], sriov_manage=command, retries=2
    )
    assert result.failed
    assert "enabled only 4 of the 32 VFs (sriov_totalvfs) of 0000:cb:00.0 in 2 attempts" in result["msg"]
    assert "so 0000:cb:00.0 has no VFs, as before" in result["msg"]
    assert not os.path.exists(os.path.join(l40s_off, "etc/gpuvirt/host-state.json"))
    assert sriov.read_sriov(l40s_off, L40S)["num_vfs"] == 0


def l40s_without_vfs(**device_changes):
    """The L40S host description with SR-IOV mode off from boot, the GPU changed as given."""
    description = copy.deepcopy(hostgen.load_description("l40s_vgpu"))
    description.pop("patch_devices")
    for device in description["devices"]:
        if device["address"] == "cb:00.0":
            device["sriov"] = dict(device["sriov"], num_vfs=0)
            device.update(device_changes)
    return description


def test_a_gpu_with_vgpus_on_itself_stays_out_of_sriov_mode(make_host, run, tmp_path):
    uuid = "0b1d5e8e-1c1f-4f4e-9a51-3b0e6a1c2d10"
    mdev_types = [{"id": "nvidia-1041", "name": "NVIDIA L40S-8Q", "available": 5}]
    root = make_host(
        l40s_without_vfs(mdev_types=mdev_types), mdevs=[{"uuid": uuid, "parent": "cb:00.0", "type": "nvidia-1041"}]
    )
    command = fake_sriov_manage(str(tmp_path / "bin"), root)
    result, writes = run(root, gpus=[gpu(profiles=[{"profile": "L40S-8Q", "count": 2}])], sriov_manage=command)
    # Its vGPUs are mediated devices on the GPU itself: sriov-manage is not run, no per-VF type written.
    assert result["gpus"][0]["framework"] == "legacy" and sriov_manage_calls(root) == [] and writes == []
    assert result["mdev_parents"] == [
        {"selector": L40S, "mdevs": [{"type": "nvidia-1041", "count": 2}], "exclusive": False}
    ]
    result, _writes = run(root, gpus=[gpu(profiles=[{"profile": "L40S-1B", "count": 1}])], sriov_manage=command)
    assert result.failed and "valid profiles: L40S-8Q (nvidia-1041)" in result["msg"] and sriov_manage_calls(root) == []


def test_enabling_sriov_mode_is_refused_while_a_process_holds_the_gpu(make_host, run, tmp_path):
    holder = {"pid": 4242, "comm": "qemu-system-x86", "holds": ["devices/vfio0"], "cdev_devices": {"vfio0": "cb:00.0"}}
    root = make_host(l40s_without_vfs(), processes=[holder])
    attach(root)[2].configure_gpu(L40S, types=L40S_TYPES)  # what its VFs will offer
    command = fake_sriov_manage(str(tmp_path / "bin"), root)
    gpus = [gpu(profiles=[{"profile": "L40S-8Q", "count": 1}])]
    for check_mode in (True, False):
        result, _writes = run(root, check_mode=check_mode, gpus=gpus, sriov_manage=command)
        assert result.failed and "not in SR-IOV mode and hosts vGPUs or users without it: process 4242" in result["msg"]
    assert sriov_manage_calls(root) == []
    result, _writes = run(root, gpus=gpus, sriov_manage=command, force=True)
    assert result["changed"] is True and len(sriov_manage_calls(root)) == 1 and current(root, VF0) == 1033


def test_enable_sriov_false_and_wrong_drivers(l40s_off, make_host, run):
    result, _writes = run(l40s_off, gpus=[gpu(profiles=[{"profile": "L40S-4Q", "count": 1}], enable_sriov=False)])
    assert result.failed and "is not in SR-IOV mode (sriov_numvfs is 0)" in result["msg"]
    vfio = make_host("l40s_vgpu", patch_devices={"cb:00.0": {"driver": "vfio-pci"}})
    result, _writes = run(vfio, gpus=[gpu(profiles=[{"profile": "L40S-4Q", "count": 1}])])
    assert result.failed and "bound to vfio-pci, set up for passthrough" in result["msg"]


# -- GPUs with only some of their VFs enabled ------------------------------------------------------------


@pytest.fixture
def l40s_short(make_host):
    """The L40S with 8 of its 32 VFs enabled and no vGPU: sriov-manage stopped part way, or someone wrote 8."""
    root = make_host("l40s_vgpu", patch_devices=EMPTY_VF0)
    attach(root)
    return root


def test_a_partly_enabled_gpu_gets_all_its_vfs_anew(l40s_short, run, tmp_path):
    command = fake_sriov_manage(str(tmp_path / "bin"), l40s_short)
    # Ten vGPUs on a GPU with 8 VFs enabled: planned over those 8, this failed as a shortage of VFs.
    gpus = [gpu(profiles=[{"profile": "L40S-1B", "count": 10}])]
    before = snapshot(l40s_short)
    predicted, writes = run(l40s_short, check_mode=True, diff=True, gpus=gpus, sriov_manage=command)
    assert predicted["changed"] is True and writes == [] and sriov_manage_calls(l40s_short) == []
    assert snapshot(l40s_short) == before and "only checked" not in warnings(predicted)
    result, _writes = run(l40s_short, diff=True, gpus=gpus, sriov_manage=command)
    # sriov-manage -e does nothing on a GPU with VFs, and the kernel takes no other count but 0: -d first.
    assert [call[0] for call in sriov_manage_calls(l40s_short)] == ["-d", "-e"]
    for key in ("changed", "gpus", "mdev_parents", "state_file", "type_cache", "diff"):
        assert result[key] == predicted[key], key
    entry = result["gpus"][0]
    assert entry["sriov_enabled"] is True and entry["num_vfs"] == 32 and len(entry["created"]) == 10
    assert sriov.read_sriov(l40s_short, L40S)["num_vfs"] == 32
    assert recorded(l40s_short)["sriov"] == {L40S: {"num_vfs": 32, "method": "sriov_manage"}}
    again, writes = run(l40s_short, gpus=gpus, sriov_manage=command)
    assert again["changed"] is False and writes == [] and len(sriov_manage_calls(l40s_short)) == 2
    checked, writes = run(l40s_short, check_mode=True, gpus=gpus, sriov_manage=command)
    assert checked["changed"] is False and writes == []


def test_a_partly_enabled_gpu_is_refused_without_enable_sriov_or_with_bad_input(l40s_short, run, tmp_path):
    command = fake_sriov_manage(str(tmp_path / "bin"), l40s_short)
    before = snapshot(l40s_short)
    for check_mode in (True, False):
        result, writes = run(
            l40s_short, check_mode=check_mode, sriov_manage=command,
            gpus=[gpu(profiles=[{"profile": "L40S-1B", "count": 1}], enable_sriov=False)],
        )
        assert result.failed and result["changed"] is False and writes == [], result
        assert "%s (NVIDIA Corporation AD102GL [L40S]): only 8 of its 32 VFs are enabled" % L40S in result["msg"]
        assert "enable_sriov: true enables them anew (sriov-manage -d, then -e)" in result["msg"]
        assert "Nothing was changed" in result["msg"]
        # A profile it does not offer fails before the VFs are touched.
        unknown = [gpu(profiles=[{"profile": "L40S-5Q", "count": 1}])]
        result, writes = run(l40s_short, check_mode=check_mode, sriov_manage=command, gpus=unknown)
        assert result.failed and "'L40S-5Q' is not a vGPU profile of this GPU" in result["msg"] and writes == []
    assert snapshot(l40s_short) == before and sriov_manage_calls(l40s_short) == []


def test_a_partly_enabled_gpu_whose_vfs_hold_vgpus_is_refused_unless_force(make_host, run, tmp_path):
    root = make_host("l40s_vgpu")  # 8 of 32 VFs; VF 0 holds an L40S-8Q
    attach(root)
    command = fake_sriov_manage(str(tmp_path / "bin"), root)
    hold_group(root, VF0)  # a VM uses it
    gpus = [gpu(profiles=[{"profile": "L40S-8Q", "count": 2}])]
    before = snapshot(root)
    for check_mode in (True, False):
        result, writes = run(root, check_mode=check_mode, gpus=gpus, sriov_manage=command)
        assert result.failed and result["changed"] is False and writes == [], result
        assert "only 8 of its 32 VFs are enabled" in result["msg"]
        lost = "which would remove VF %s (vGPU L40S-8Q (1041), in use by process 4242 (qemu-system-x86))" % VF0
        assert lost in result["msg"]
        assert "or set force: true" in result["msg"] and "Nothing was changed" in result["msg"]
    assert snapshot(root) == before and sriov_manage_calls(root) == []
    # Forced while the VM runs: the kernel refuses to take the VFs away, and the run says so.
    result, _writes = run(root, gpus=gpus, sriov_manage=command, force=True, retries=2)
    assert result.failed and result["changed"] is False, result
    assert "sriov-manage -d %s did not disable the 8 VFs of %s in 2 attempts" % (L40S, L40S) in result["msg"]
    assert "A VF may be in use by a VM" in result["msg"]
    assert sriov.read_sriov(root, L40S)["num_vfs"] == 8 and current(root, VF0) == 1041
    # The VM stopped: forced, its vGPU goes with the VFs, and the declared ones are created on all 32.
    os.unlink(os.path.join(root, "proc/4242/fd/30"))
    predicted, writes = run(root, check_mode=True, gpus=gpus, sriov_manage=command, force=True)
    assert predicted["changed"] is True and writes == [] and "force: true" in warnings(predicted)
    # VF 0's 8Q hides the other types, so the profiles are checked once the VFs are back.
    assert "no complete list of vGPU types is remembered" in warnings(predicted)
    result, _writes = run(root, gpus=gpus, sriov_manage=command, force=True)
    assert result["changed"] is True and "would remove VF %s (vGPU L40S-8Q (1041))" % VF0 in warnings(result)
    assert result["gpus"][0]["num_vfs"] == 32 and [current(root, vf) for vf in (VF0, VF1, VF2)] == [1041, 1041, 0]
    assert result["gpus"][0]["vfs"][0]["before"] == {"type_id": 1041, "type_name": "NVIDIA L40S-8Q"}
    again, writes = run(root, gpus=gpus, sriov_manage=command)
    assert again["changed"] is False and writes == []


def test_sriov_manage_stopping_part_way_again_fails_and_says_what_changed(l40s_short, run, tmp_path):
    command = fake_sriov_manage(str(tmp_path / "bin"), l40s_short, partial_first=9, partial_vfs=4)
    result, _writes = run(
        l40s_short, gpus=[gpu(profiles=[{"profile": "L40S-1B", "count": 1}])], sriov_manage=command, retries=2
    )
    assert result.failed and result["changed"] is True, result  # 8 VFs before, 4 now
    assert "enabled only 4 of the 32 VFs (sriov_totalvfs) of %s in 2 attempts" % L40S in result["msg"]
    assert "%s had 8 VFs before, disabled first" % L40S in result["msg"]
    assert "%s has 4 VFs now, not 8." % L40S in result["msg"]
    assert not os.path.exists(os.path.join(l40s_short, "etc/gpuvirt/host-state.json"))


# -- the legacy layout (A100 with mdev types) ----------------------------------------------------------


def test_legacy_gpu_hands_the_request_to_the_mdev_module(make_host, run):
    root = make_host(A100_HOST, files={"etc/machine-id": MACHINE_ID})
    gpus = [gpu("A100", profiles=[{"profile": "A100-4C", "count": 3}])]
    predicted, _writes = run(root, check_mode=True, gpus=gpus)
    result, writes = run(root, gpus=gpus)
    assert writes == [] and result["mdev_parents"] == predicted["mdev_parents"]
    assert result["mdev_parents"] == [
        {"selector": A100, "mdevs": [{"type": "nvidia-471", "count": 3}], "exclusive": False}
    ]
    assert result["gpus"][0]["framework"] == "legacy" and result["gpus"][0]["vfs"] == []
    assert recorded(root)["sriov"] == {A100: {"num_vfs": 20, "method": "sriov_manage"}}
    created, writes = run(root, name="mdev", parents=result["mdev_parents"])
    assert created["changed"] is True and len(created["created"]) == 2  # one A100-4C existed already
    parents = sorted({m["parent"] for m in created["mdevs"]})
    assert parents == ["0000:b1:00.4", "0000:b1:00.5", "0000:b1:00.6"]
    # The simulated driver applies the one-size rule across the VFs: no A100-8C fits now.
    with open(
        os.path.join(root, "sys/bus/pci/devices/0000:b1:00.7/mdev_supported_types/nvidia-473/available_instances")
    ) as h:
        assert h.read().strip() == "0"
    again, _writes = run(root, gpus=gpus)
    assert again["changed"] is False
    again, writes = run(root, name="mdev", parents=again["mdev_parents"])
    assert again["changed"] is False and writes == []


def test_legacy_gpu_with_vfs_off_is_enabled_first(make_host, run, tmp_path):
    root = make_host("datacenter_a100", mdevs=[], processes=[])
    sim, _kernel, nvidia = attach(root)
    assert nvidia.gpu(A100)["framework"] == "legacy"
    with sim.active():
        sriov.set_num_vfs(root, A100, 0, delay=0)
    command = fake_sriov_manage(str(tmp_path / "bin"), root)
    result, _writes = run(
        root, gpus=[gpu("10de:20f1", vfs=[{"address": "b1:00.5", "profile": "A100-10C"}])], sriov_manage=command
    )
    assert result["changed"] is True and result["gpus"][0]["num_vfs"] == 20
    assert result["mdev_parents"] == [
        {"selector": "0000:b1:00.5", "mdevs": [{"type": "nvidia-474", "count": 1}], "exclusive": True}
    ]


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gpus, message",
    [
        ([gpu("H100", profiles=[])], "matches no NVIDIA GPU on this host"),
        ([gpu(profiles=[]), gpu("10de:26b9", profiles=[])], "selected twice"),
        ([gpu(profiles=[], vfs=[])], "mutually exclusive"),
        ([gpu()], "one of the following is required: profiles, vfs"),
        ([gpu(vfs=[{"address": VF1}])], "state is present but all of the following are missing: profile"),
        ([gpu(profiles=[{"profile": "L40S-8Q", "count": 33}])], "the profiles need 1 more VF"),
    ],
)
def test_bad_input_fails_clearly_and_changes_nothing(l40s, run, gpus, message):
    before = snapshot(l40s)
    result, writes = run(l40s, gpus=gpus)
    assert result.failed and message in result["msg"] and writes == []
    assert snapshot(l40s) == before


# -- users that cannot be told ---------------------------------------------------------------------------


def unreadable_vm(root, unreadable_fds):
    """A VFIO group file exists and process 4242's open files cannot be read: it may hold any VF."""
    hold_group(root, VF0)
    os.unlink(os.path.join(root, "proc/4242/fd/30"))  # QEMU let go, but the scan cannot tell
    unreadable_fds(root, {4242: errno.EACCES})


def test_deleting_a_vgpu_is_refused_while_the_users_cannot_be_told(l40s, run, unreadable_fds):
    unreadable_vm(l40s, unreadable_fds)
    before = snapshot(l40s)
    for declaration in (gpu(vfs=[{"address": VF0, "state": "absent"}]),
                        gpu(profiles=[{"profile": "L40S-8Q", "count": 0}], exclusive=True)):
        for check_mode in (True, False):
            result, writes = run(l40s, check_mode=check_mode, gpus=[declaration])
            assert result.failed and result["changed"] is False and writes == [], result
            assert "deleting the vGPUs of VF %s (or changing their type)" % VF0 in result["msg"]
            assert "the open files of 1 process could not be read (qemu-system-x86 (pid 4242))" in result["msg"]
            assert "CAP_SYS_PTRACE" in result["msg"] and "Nothing was changed" in result["msg"]
    assert snapshot(l40s) == before and current(l40s, VF0) == 1041
    # Creating next to it deletes nothing and goes ahead.
    result, writes = run(l40s, gpus=[gpu(profiles=[{"profile": "L40S-8Q", "count": 2}])])
    assert result["changed"] is True and [(p.split("/")[4], v) for p, v in writes] == [(VF1, "1041")], result
    assert "cannot be told" not in warnings(result)


def test_force_deletes_a_vgpu_whose_users_cannot_be_told(l40s, run, unreadable_fds):
    unreadable_vm(l40s, unreadable_fds)
    result, writes = run(l40s, gpus=[gpu(vfs=[{"address": VF0, "state": "absent"}])], force=True)
    assert result["changed"] is True and [(p.split("/")[4], v) for p, v in writes] == [(VF0, "0")], result
    assert "deleting the vGPUs of VF %s" % VF0 in warnings(result) and current(l40s, VF0) == 0


def test_deleting_a_vgpu_is_refused_while_proc_hides_processes(l40s, run, hidepid):
    """/proc mounted with hidepid=ptraceable and read without CAP_SYS_PTRACE: a VM may hold any VF."""
    hold_group(l40s, VF0)
    hidepid(l40s, options="rw,hidepid=ptraceable")
    absent = [gpu(vfs=[{"address": VF0, "state": "absent"}])]
    result, writes = run(l40s, gpus=absent)
    assert result.failed and result["changed"] is False and writes == [], result
    assert "/proc is mounted with hidepid=ptraceable and this run lacks CAP_SYS_PTRACE" in result["msg"]
    assert current(l40s, VF0) == 1041
    result, writes = run(l40s, gpus=absent, force=True)
    assert result["changed"] is True and [v for _p, v in writes] == ["0"], result


def test_a_process_that_exited_does_not_block_deleting(l40s, run, unreadable_fds):
    unreadable_vm(l40s, unreadable_fds)
    hold_group(l40s, VF1, pid=4300)
    shutil.rmtree(os.path.join(l40s, "proc/4300/fd"))  # exited after proc was listed: ENOENT
    absent = [gpu(vfs=[{"address": VF0, "state": "absent"}])]
    result, _writes = run(l40s, gpus=absent)
    assert result.failed and "the open files of 1 process could not be read" in result["msg"], result
    unreadable_fds(l40s, {4242: errno.ENOENT})  # and now 4242 too
    result, writes = run(l40s, gpus=absent)
    assert result["changed"] is True and [v for _p, v in writes] == ["0"], result


def test_more_vgpus_than_the_framebuffer_holds_are_refused_in_check_mode_and_run(make_host, run):
    # All VFs free: the type lists are complete, so the largest profile (L40S-48Q) gives the framebuffer. Seven
    # 8 GB vGPUs do not fit in 48 GB: refused before anything changes, in check mode as in the run.
    root = make_host(L40S_HOST, patch_devices=EMPTY_VF0)
    attach(root)
    before = snapshot(root)
    for check_mode in (True, False):
        result, writes = run(root, check_mode=check_mode, gpus=[gpu(profiles=[{"profile": "L40S-8Q", "count": 7}])])
        assert result.failed and writes == [], result
        assert "the vGPUs would take 56 GB of the GPU's 48 GB of framebuffer (7 x L40S-8Q" in result["msg"]
        assert snapshot(root) == before
    fits, _writes = run(root, check_mode=True, gpus=[gpu(profiles=[{"profile": "L40S-8Q", "count": 6}])])
    assert not fits.failed and len(fits["gpus"][0]["created"]) == 6, fits


def test_check_mode_says_when_the_run_learns_the_types_the_cache_diff_lacks(l40s, run):
    # VF 0 holds the only vGPU: the others offer only what fits beside it, so no complete list is known.
    gpus = [gpu("L40S", profiles=[{"profile": "NVIDIA L40S-8Q", "count": 0}])]
    predicted, writes = run(l40s, check_mode=True, diff=True, gpus=gpus)
    assert writes == [] and predicted["changed"] is True
    assert "removes its last vGPU" in warnings(predicted) and "type cache diff shows only" in warnings(predicted)
    result, _writes = run(l40s, diff=True, gpus=gpus)
    assert current(l40s, VF0) == 0
    with open(os.path.join(l40s, CACHE)) as handle:
        cache = json.load(handle)
    learned = next(iter(cache["gpus"].values()))
    # What the warning is about: the run read the complete list, which the check-mode diff could not show.
    assert learned["complete"] is True and result["diff"][2] != predicted["diff"][2]
    assert "removes its last vGPU" not in warnings(result)

    # With the complete list remembered, check mode shows the cache as the run writes it: no warning.
    run(l40s, gpus=[gpu("L40S", profiles=[{"profile": "NVIDIA L40S-8Q", "count": 1}])])
    predicted, _writes = run(l40s, check_mode=True, diff=True, gpus=gpus)
    assert "removes its last vGPU" not in warnings(predicted)
    result, _writes = run(l40s, diff=True, gpus=gpus)
    assert result["diff"][2] == predicted["diff"][2]
