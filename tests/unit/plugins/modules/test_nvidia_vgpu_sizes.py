# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A declaration of time-sliced vGPUs of more than one size on one GPU: in NVIDIA's default equal-size
mode the GPU offers only the size of the vGPUs it hosts once it hosts one, so the real run cannot create
the others. Check mode, which sees every size offered on the empty GPU, says so before the run."""

from __future__ import annotations

from ansible_collections.gpuvirt.host.plugins.module_utils.vendor_nvidia import time_sliced_size
from ansible_collections.gpuvirt.host.tests.sim.nvidia_vgpu_sim import attach
from ansible_collections.gpuvirt.host.tests.sim.sriov_hosts import all_vfs_enabled

L40S = "0000:cb:00.0"
EMPTY_VF0 = {"cb:00.4": {"nvidia_vgpu": {"creatable": {}, "current": 0}}}


def run(run_module, root, profiles, check_mode):
    sim, _sriov, _nvidia = attach(root)
    gpus = [{"selector": L40S, "exclusive": True, "profiles": profiles}]
    with sim.active():
        return run_module("nvidia_vgpu", {"root": root, "gpus": gpus, "delay": 0}, check_mode=check_mode)


def warnings(result):
    return [w["event"]["msg"] if isinstance(w, dict) else w for w in result.get("warnings", [])]


def test_two_sizes_on_one_gpu_are_warned_about_before_the_run_fails(make_host, run_module, fake_commands):
    fake_commands.install("lspci")
    root = make_host(all_vfs_enabled("l40s_vgpu"), patch_devices=EMPTY_VF0)
    attach(root)
    mixed = [{"profile": "L40S-2B", "count": 4}, {"profile": "L40S-1B", "count": 2}]
    predicted = run(run_module, root, mixed, check_mode=True)
    assert any("vGPUs of 1 and 2 GB" in w and "equal-size mode" in w for w in warnings(predicted)), predicted
    real = run(run_module, root, mixed, check_mode=False)
    assert real.failed  # the simulated GPU, as NVIDIA's in equal-size mode, offers 2 GB types only then
    one_size = run(run_module, root, [{"profile": "L40S-2B", "count": 4}], check_mode=True)
    assert not any("equal-size mode" in w for w in warnings(one_size))


def test_the_size_of_a_time_sliced_profile():
    assert time_sliced_size("NVIDIA L40S-2B") == 2
    assert time_sliced_size("A100-40C") == 40
    assert time_sliced_size("NVIDIA A100-1-5C") is None  # MIG-backed: a GPU instance's, not a size mode's
    assert time_sliced_size(None) is None
