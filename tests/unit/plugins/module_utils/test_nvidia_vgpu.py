# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import os

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import nvidia_vgpu as nv
from ansible_collections.gpuvirt.host.plugins.module_utils import sriov, vendor_nvidia
from ansible_collections.gpuvirt.host.plugins.module_utils.selector import SelectorError, select_devices
from ansible_collections.gpuvirt.host.tests.sim.nvidia_vgpu_sim import attach
from ansible_collections.gpuvirt.host.tests.sim.sriov_hosts import all_vfs_enabled, devices_of, hold_group

L40S = "0000:cb:00.0"
A100 = "0000:b1:00.0"
VF0, VF1, VF2, VF3 = "0000:cb:00.4", "0000:cb:00.5", "0000:cb:00.6", "0000:cb:00.7"
L40S_TYPES = {
    1030: "NVIDIA L40S-1B", 1031: "NVIDIA L40S-2B", 1036: "NVIDIA L40S-1Q", 1037: "NVIDIA L40S-2Q",
    1038: "NVIDIA L40S-3Q", 1039: "NVIDIA L40S-4Q", 1040: "NVIDIA L40S-6Q", 1041: "NVIDIA L40S-8Q",
    1042: "NVIDIA L40S-12Q", 1043: "NVIDIA L40S-16Q", 1044: "NVIDIA L40S-24Q", 1045: "NVIDIA L40S-48Q",
}  # fmt: skip


@pytest.fixture
def l40s(make_host):
    """The L40S host as the simulated driver shows it: VF 0 holds an 8Q, the others offer 8Q only."""
    root = make_host("l40s_vgpu")
    attach(root)
    return root


@pytest.fixture
def l40s_empty(make_host):
    """The L40S host with no vGPU: every VF offers the complete list."""
    root = make_host("l40s_vgpu", patch_devices={"cb:00.4": {"nvidia_vgpu": {"creatable": {}, "current": 0}}})
    attach(root)
    return root


def creatable(root, vf):
    with open(os.path.join(root, "sys/bus/pci/devices", vf, "nvidia/creatable_vgpu_types")) as handle:
        return handle.read()


def declare(profiles=None, vfs=None, exclusive=False):
    return {"selector": L40S, "profiles": profiles, "vfs": vfs, "exclusive": exclusive}


# -- reading ---------------------------------------------------------------------------------------


def test_read_gpu_per_vf_layout(l40s):
    gpu = nv.read_gpu(l40s, L40S)
    assert gpu.framework == "per_vf" and gpu.driver == "nvidia"
    assert [vf.address for vf in gpu.vfs][:2] == [VF0, VF1] and len(gpu.vfs) == 8
    assert gpu.vf(VF0).current == 1041 and gpu.vf(VF0).creatable == []
    assert gpu.vf(VF1).creatable == [{"id": 1041, "name": "NVIDIA L40S-8Q"}]
    assert gpu.complete is False
    # 8 of its 32 VFs: not SR-IOV mode as sriov-manage -e leaves it; enabling all anew would remove VF 0's vGPU.
    assert not gpu.sriov_mode and gpu.partly_enabled
    assert nv.lost_by_reenabling(gpu, nv.known_types(gpu)) == ["VF %s (vGPU L40S-8Q (1041))" % VF0]


def test_sriov_mode_is_all_the_vfs(make_host):
    root = make_host(all_vfs_enabled("l40s_vgpu"))
    attach(root)
    hold_group(root, VF0)
    gpu = nv.read_gpu(root, L40S)
    assert gpu.sriov_mode and not gpu.partly_enabled and len(gpu.vfs) == 32
    assert nv.lost_by_reenabling(gpu, {}) == ["VF %s (vGPU 1041, in use by process 4242 (qemu-system-x86))" % VF0]
    legacy = nv.read_gpu(make_host("datacenter_a100"), A100)
    assert legacy.partly_enabled and nv.lost_by_reenabling(legacy, nv.known_types(legacy))[0] == (
        "VF 0000:b1:00.4 (mdev 6c3e1ab4-4a52-4e2c-9a3e-0a4d9c1e2f01 of type A100-4C (nvidia-471) in use by process "
        "31337 (qemu-system-x86))"
    )


def test_read_gpu_legacy_layout(make_host):
    root = make_host("datacenter_a100")
    gpu = nv.read_gpu(root, A100)
    assert gpu.framework == "legacy" and len(gpu.vfs) == 16
    vf = gpu.vf("0000:b1:00.4")
    assert vf.mdev_types["nvidia-471"] == "NVIDIA A100-4C"
    assert vf.mdevs[0]["type"] == "nvidia-471" and vf.mdevs[0]["in_use"] == ["process 31337 (qemu-system-x86)"]
    assert nv.known_types(gpu)["nvidia-476"] == "NVIDIA A100-40C"


def test_read_gpu_of_something_else_fails(l40s):
    with pytest.raises(nv.VgpuError, match="no PCI device 0000:99:00.0"):
        nv.read_gpu(l40s, "0000:99:00.0")


def select_gpus(devices, text):
    """What the nvidia_vgpu module selects: NVIDIA GPUs (selector.select_devices)."""
    return select_devices(text, devices, "NVIDIA GPU", nv.gpu_reason)


@pytest.mark.parametrize("selector", ["cb:00.0", "0000:cb:00.0", "10de:26b9", "l40s", "AD102GL"])
def test_select_gpus(l40s, selector):
    assert select_gpus(devices_of(l40s), selector) == [L40S]


@pytest.mark.parametrize(
    "selector, message",
    [
        ("cb:00.5", "virtual function of 0000:cb:00.0"),
        ("02:00.0", "is not an NVIDIA GPU"),
        ("A100", "NVIDIA GPUs here: 0000:cb:00.0 [10de:26b9] NVIDIA Corporation AD102GL [L40S]"),
        ("  ", "empty selector"),
    ],
)
def test_select_gpus_explains(l40s, selector, message):
    with pytest.raises(SelectorError) as error:
        select_gpus(devices_of(l40s), selector)
    assert message in str(error.value)


# -- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["NVIDIA L40S-1B", "L40S-1B", "l40s-1b", " 1030 ", "nvidia l40s-1B"])
def test_resolve_profile_by_id_name_or_profile(query):
    assert nv.resolve_vgpu_profile(query, L40S_TYPES, "gpu") == 1030


def test_unknown_profile_lists_the_valid_ones():
    with pytest.raises(nv.VgpuError) as error:
        nv.resolve_vgpu_profile("L40S-5Q", L40S_TYPES, "0000:cb:00.0 (L40S)")
    message = str(error.value)
    assert "'L40S-5Q' is not a vGPU profile of this GPU" in message
    assert "L40S-1B (1030), L40S-2B (1031), L40S-1Q (1036)" in message and "L40S-48Q (1045)" in message
    with pytest.raises(nv.VgpuError, match="only lists what still fits"):
        nv.resolve_vgpu_profile("L40S-5Q", {1041: "NVIDIA L40S-8Q"}, "gpu", complete=False)


def test_legacy_ids_resolve_by_name_and_id():
    known = {"nvidia-471": "NVIDIA A100-4C", "nvidia-474": "NVIDIA A100-10C"}
    assert nv.resolve_vgpu_profile("A100-4C", known, "gpu") == "nvidia-471"
    assert nv.resolve_vgpu_profile("NVIDIA-474", known, "gpu") == "nvidia-474"
    with pytest.raises(nv.VgpuError, match="ambiguous"):
        nv.resolve_vgpu_profile("A100-4C", dict(known, **{"nvidia-999": "GRID A100-4C"}), "gpu")


def test_known_types_prefer_what_the_gpu_shows(l40s):
    gpu = nv.read_gpu(l40s, L40S)
    cache_entry = {"types": {"1030": "NVIDIA L40S-1B", "999": "NVIDIA L40S-8Q"}}  # 8Q renumbered since
    recorded = {
        VF0: {"type_id": 1041, "type_name": "NVIDIA L40S-8Q"},
        VF1: {"type_id": 1044, "type_name": "NVIDIA L40S-24Q"},
    }
    known = nv.known_types(gpu, cache_entry, recorded)
    assert known == {1041: "NVIDIA L40S-8Q", 1030: "NVIDIA L40S-1B", 1044: "NVIDIA L40S-24Q"}


# -- the type cache --------------------------------------------------------------------------------


def test_cache_remembers_a_complete_read_after_the_list_shrank(l40s_empty):
    cache = nv.observe(nv.load_cache(l40s_empty), nv.read_gpu(l40s_empty, L40S))
    entry = cache["gpus"]["10de:26b9"]
    assert entry["complete"] is True and entry["framework"] == "per_vf" and len(entry["types"]) == 12
    sim, _kernel, _nvidia = attach(l40s_empty)
    with sim.active():
        for vf in (VF0, VF1):
            nv.assign_vgpu_type(l40s_empty, vf, 1044, delay=0)
    full = nv.read_gpu(l40s_empty, L40S)
    assert all(vf.creatable == [] for vf in full.vfs)  # down to the header alone
    assert creatable(l40s_empty, VF3) == "ID    : vGPU Name\n"
    assert nv.known_types(full) == {}
    again = nv.observe(cache, full)
    assert again == cache
    assert nv.resolve_vgpu_profile("L40S-1B", nv.known_types(full, again["gpus"]["10de:26b9"]), "gpu") == 1030


def test_cache_renumbering_and_broken_files(l40s):
    cache = {"version": 1, "gpus": {"10de:26b9": {"framework": "per_vf", "types": {"77": "NVIDIA L40S-8Q"}}}}
    updated = nv.observe(cache, nv.read_gpu(l40s, L40S))
    assert updated["gpus"]["10de:26b9"]["types"] == {"1041": "NVIDIA L40S-8Q"}
    assert cache["gpus"]["10de:26b9"]["types"] == {"77": "NVIDIA L40S-8Q"}  # not modified in place
    os.makedirs(os.path.dirname(nv.cache_path(l40s)))
    with open(nv.cache_path(l40s), "w") as handle:
        handle.write("garbage")
    # Refused with its path and the way out, never replaced by an empty cache.
    with pytest.raises(nv.VgpuError, match="cannot read the vGPU type cache .*not valid JSON.*mv "):
        nv.load_cache(l40s)
    with open(nv.cache_path(l40s), "w") as handle:
        handle.write('{"version": 2, "gpus": {}}')
    with pytest.raises(nv.VgpuError, match="version 2, newer than the 1"):
        nv.load_cache(l40s)


# -- the simulated driver ----------------------------------------------------------------------------


def test_capacity_shrinks_one_size_at_a_time(l40s_empty):
    sim, _kernel, _nvidia = attach(l40s_empty)
    assert creatable(l40s_empty, VF1).count("NVIDIA") == 12
    with sim.active():
        assert nv.assign_vgpu_type(l40s_empty, VF0, 1044, delay=0) is True
        assert nv.offered_now(l40s_empty, VF1) == {1044: "NVIDIA L40S-24Q"}
        assert nv.offered_now(l40s_empty, VF0) == {}
        with pytest.raises(nv.VgpuError) as error:
            nv.assign_vgpu_type(l40s_empty, VF1, 1030, delay=0)
        assert "Invalid argument" in str(error.value) and "one time-sliced vGPU size" in str(error.value)
        nv.assign_vgpu_type(l40s_empty, VF1, 1044, delay=0)
        assert nv.offered_now(l40s_empty, VF2) == {}
        assert nv.assign_vgpu_type(l40s_empty, VF0, 0, delay=0) is True
        assert nv.offered_now(l40s_empty, VF2) == {1044: "NVIDIA L40S-24Q"}
        nv.assign_vgpu_type(l40s_empty, VF1, 0, delay=0)
    assert nv.offered_now(l40s_empty, VF2) == L40S_TYPES


def test_a_vf_in_use_refuses_and_a_type_change_goes_through_zero(l40s):
    sim, _kernel, _nvidia = attach(l40s)
    hold_group(l40s, VF0)
    with sim.active():
        with pytest.raises(nv.VgpuError, match="Device or resource busy.*in use by a VM"):
            nv.assign_vgpu_type(l40s, VF0, 0, delay=0)
        assert nv.assign_vgpu_type(l40s, VF1, 1041, delay=0) is True
        assert nv.assign_vgpu_type(l40s, VF1, 1041, delay=0) is False
        nv.assign_vgpu_type(l40s, VF2, 1041, delay=0)
        assert nv.restore_vf(l40s, VF2, "0") is True
    values = [v for p, v in sim.writes if p.endswith(VF2 + "/nvidia/current_vgpu_type")]
    assert values == ["1041", "0"]


def test_assign_reads_back(l40s):
    sim, _kernel, _nvidia = attach(l40s)
    sim.handlers.insert(0, (__import__("re").compile(r".*/current_vgpu_type\Z"), lambda match, value: None))
    with sim.active(), pytest.raises(nv.VgpuError, match="reads 0 after writing 1041"):
        nv.assign_vgpu_type(l40s, VF1, 1041, retries=2, delay=0)
    with pytest.raises(nv.VgpuError, match="no readable nvidia/current_vgpu_type"):
        nv.assign_vgpu_type(l40s, L40S, 1041)


# -- planning --------------------------------------------------------------------------------------


def plan(root, declaration, force=False):
    gpu = nv.read_gpu(root, L40S)
    return gpu, nv.plan_per_vf(gpu, declaration, dict(L40S_TYPES), force)


def test_plan_counts_existing_vgpus_and_fills_free_vfs_in_order(l40s):
    _gpu, result = plan(l40s, declare([{"profile": "L40S-8Q", "count": 3}]))
    assert result.delete == [] and result.create == [(VF1, 1041), (VF2, 1041)]
    assert result.declared == {VF0: 1041, VF1: 1041, VF2: 1041}


def test_plan_deletes_the_surplus_but_keeps_one_in_use(l40s):
    sim, _kernel, _nvidia = attach(l40s)
    with sim.active():
        nv.assign_vgpu_type(l40s, VF3, 1041, delay=0)
    hold_group(l40s, VF3)
    _gpu, result = plan(l40s, declare([{"profile": "L40S-8Q", "count": 1}]))
    assert result.declared == {VF3: 1041} and result.delete == [(VF0, 1041)] and result.create == []
    _gpu, result = plan(l40s, declare([{"profile": "L40S-8Q", "count": 0}]))
    assert result.delete == [(VF0, 1041)] and result.kept_in_use == [VF3]
    assert "in use by process 4242 (qemu-system-x86) (force: true deletes it)" in result.warnings[0]
    _gpu, result = plan(l40s, declare([{"profile": "L40S-8Q", "count": 0}]), force=True)
    assert result.delete == [(VF0, 1041), (VF3, 1041)]


def test_plan_undeclared_vgpus_stay_unless_exclusive(l40s):
    _gpu, result = plan(l40s, declare([{"profile": "L40S-2B", "count": 0}]))
    assert result.undeclared == [VF0] and result.delete == [] and not result.changes
    _gpu, result = plan(l40s, declare([{"profile": "L40S-2B", "count": 2}], exclusive=True))
    assert result.delete == [(VF0, 1041)] and result.create == [(VF1, 1031), (VF2, 1031)] and result.recheck


def test_plan_refuses_what_the_gpu_does_not_offer(l40s):
    with pytest.raises(nv.VgpuError) as error:
        plan(l40s, declare([{"profile": "L40S-2B", "count": 2}]))
    message = str(error.value)
    assert "L40S-2B (1031) cannot be created: the free VFs offer L40S-8Q (1041)" in message
    assert "the GPU hosts 1 x L40S-8Q (1041)" in message and "Nothing was changed" in message


@pytest.mark.parametrize(("name", "mig"), [
    ("NVIDIA A100-1-5C", True), ("NVIDIA H200X-1-18C", True), ("NVIDIA A100-1-5CME", True),
    ("NVIDIA A100-4C", False), ("NVIDIA L40S-2B", False), ("NVIDIA A100D-80C", False), (None, False),
])
def test_mig_backed_profiles_are_told_from_time_sliced_ones(name, mig):
    assert vendor_nvidia.is_mig_backed(name) is mig


def test_a_mig_backed_profile_that_is_not_offered_says_what_it_needs(l40s):
    # The same refusal for a type whose vGPU lives in a MIG GPU instance names MIG mode and the instances.
    known = {**L40S_TYPES, 1031: "NVIDIA H200X-1-18C"}
    gpu = nv.read_gpu(l40s, L40S)
    with pytest.raises(nv.VgpuError) as error:
        nv.plan_per_vf(gpu, declare([{"profile": "H200X-1-18C", "count": 2}]), known, False)
    message = str(error.value)
    assert "H200X-1-18C (1031) cannot be created" in message
    assert "is MIG-backed: it is offered only once MIG mode is on and its GPU instances exist" in message
    with pytest.raises(nv.VgpuError) as time_sliced:
        plan(l40s, declare([{"profile": "L40S-2B", "count": 2}]))
    assert "MIG" not in str(time_sliced.value)


def test_plan_explicit_vfs(l40s):
    vfs = [{"address": "cb:00.5", "profile": "1044"}, {"address": VF0, "state": "absent"}]
    _gpu, result = plan(l40s, declare(vfs=vfs))
    assert result.delete == [(VF0, 1041)] and result.create == [(VF1, 1044)] and result.declared == {VF1: 1044}
    hold_group(l40s, VF0)
    with pytest.raises(nv.VgpuError, match="VF 0000:cb:00.4 is in use by process 4242.*from 1041 to none"):
        plan(l40s, declare(vfs=[{"address": VF0, "state": "absent"}]))
    with pytest.raises(nv.VgpuError, match="0000:cb:02.0 is not a VF of this GPU; its VFs are 0000:cb:00.4, "):
        plan(l40s, declare(vfs=[{"address": "cb:02.0", "profile": "L40S-8Q"}]))
    with pytest.raises(nv.VgpuError, match="declared twice"):
        plan(l40s, declare(vfs=[{"address": VF1, "profile": "L40S-8Q"}, {"address": VF1, "profile": "L40S-8Q"}]))


def test_plan_bad_counts(l40s):
    with pytest.raises(nv.VgpuError, match="the profiles need 2 more VF"):
        plan(l40s, declare([{"profile": "L40S-8Q", "count": 10}]))
    with pytest.raises(nv.VgpuError, match="declared twice"):
        plan(l40s, declare([{"profile": "L40S-8Q", "count": 1}, {"profile": "1041", "count": 2}]))
    with pytest.raises(nv.VgpuError, match="count: -1 is out of range.*from 0 to 64"):
        plan(l40s, declare([{"profile": "L40S-8Q", "count": -1}]))
    with pytest.raises(nv.VgpuError, match="count: 1000000000000 is out of range"):
        plan(l40s, declare([{"profile": "L40S-8Q", "count": 10**12}]))


def test_executor_rolls_back_when_the_gpu_runs_out_of_room(l40s):
    # 48 GB hold six 8Q; VF 0 has one, so the seventh cannot be created.
    gpu, result = plan(l40s, declare([{"profile": "L40S-8Q", "count": 7}]))
    assert len(result.create) == 6
    sim, _kernel, _nvidia = attach(l40s)
    executor = nv.Executor(l40s, delay=0)
    with sim.active(), pytest.raises(nv.VgpuError) as error:
        executor.run(result, L40S_TYPES)
    assert "5 of the 6 planned were created before 0000:cb:01.2 stopped offering it" in str(error.value)
    with sim.active():
        assert executor.rollback() == []
    after = nv.read_gpu(l40s, L40S)
    assert [vf.current for vf in after.vfs] == [1041, 0, 0, 0, 0, 0, 0, 0]
    assert after.vf(VF1).creatable == [{"id": 1041, "name": "NVIDIA L40S-8Q"}]


# -- legacy GPUs and GPUs not in SR-IOV mode ---------------------------------------------------------


def test_legacy_gpus_hand_their_vgpus_to_the_mdev_module(make_host):
    root = make_host("datacenter_a100")
    gpu = nv.read_gpu(root, A100)
    known = nv.known_types(gpu)
    parents = nv.legacy_mdev_parents(gpu, {"profiles": [{"profile": "A100-4C", "count": 3}]}, known)
    assert parents == [{"selector": A100, "mdevs": [{"type": "nvidia-471", "count": 3}], "exclusive": False}]
    declaration = {"vfs": [{"address": "b1:00.5", "profile": "NVIDIA A100-4C"}], "exclusive": True}
    assert nv.legacy_mdev_parents(gpu, declaration, known) == [
        {"selector": "0000:b1:00.4", "mdevs": [], "exclusive": True},
        {"selector": "0000:b1:00.5", "mdevs": [{"type": "nvidia-471", "count": 1}], "exclusive": True},
    ]
    with pytest.raises(nv.VgpuError, match="valid profiles: A100-4C \\(nvidia-471\\)"):
        nv.legacy_mdev_parents(gpu, {"profiles": [{"profile": "A100-3C", "count": 1}]}, known)


def test_predicted_gpu_and_waiting_for_the_vf_interfaces(l40s_empty):
    sim, _kernel, _nvidia = attach(l40s_empty)
    cache = nv.observe(nv.load_cache(l40s_empty), nv.read_gpu(l40s_empty, L40S))
    with sim.active():
        sriov.set_num_vfs(l40s_empty, L40S, 0, delay=0)
    off = nv.read_gpu(l40s_empty, L40S)
    assert off.framework is None and not off.sriov_mode and not off.partly_enabled and off.vfs == []
    predicted = nv.predicted_gpu(l40s_empty, off, cache["gpus"]["10de:26b9"])
    assert predicted.framework == "per_vf" and len(predicted.vfs) == 32 and predicted.sriov["num_vfs"] == 32
    assert predicted.vfs[-1].address == "0000:cb:04.3" and len(predicted.vfs[0].creatable) == 12
    assert nv.predicted_gpu(l40s_empty, off, None).framework is None
    with pytest.raises(nv.VgpuError, match="show neither nvidia/creatable_vgpu_types nor nvidia mdev types"):
        nv.wait_for_vf_interfaces(l40s_empty, L40S, retries=2, delay=0)
    with sim.active():
        sriov.set_num_vfs(l40s_empty, L40S, 4, delay=0)
    ready = nv.wait_for_vf_interfaces(l40s_empty, L40S, retries=0, delay=0)
    assert ready.framework == "per_vf" and ready.complete
