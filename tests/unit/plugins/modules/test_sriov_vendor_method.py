# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``sriov`` on a GPU whose VFs ``nvidia_vgpu`` enabled keeps the ``method: sriov_manage`` that was recorded:
the boot restore enables such VFs with sriov-manage, which unbinds nvidia and binds pci-pf-stub before it
writes sriov_numvfs (the nvidia driver has no sriov_configure: the kernel's sriov_numvfs_store fails
ENOENT). And the two modules, declared together for one GPU, settle: neither rewrites the other's entry."""

from __future__ import annotations

import io
import os

from ansible_collections.gpuvirt.host.plugins.module_utils import hoststate, restore
from ansible_collections.gpuvirt.host.tests.sim.boot import reboot
from ansible_collections.gpuvirt.host.tests.sim.nvidia_vgpu_sim import attach, fake_sriov_manage, sriov_manage_calls

L40S = "0000:cb:00.0"


def module(run_module, name, root, **args):
    sim = attach(root)[0]
    with sim.active():
        return run_module(name, dict(args, root=root))


def test_sriov_on_an_nvidia_vgpu_gpu_keeps_the_sriov_manage_method(make_host, run_module, monkeypatch, tmp_path,
                                                                   fake_commands):
    root = make_host("l40s_vgpu", patch_devices={"cb:00.4": {"nvidia_vgpu": {"creatable": {}, "current": 0}}})
    bin_dir = str(tmp_path / "bin")
    command = fake_sriov_manage(bin_dir, root)
    fake_commands.install("lspci")
    reboot(root)  # SR-IOV off until sriov-manage
    carve = {"gpus": [{"selector": "L40S", "profiles": [{"profile": "L40S-8Q", "count": 3}]}],
             "sriov_manage": command, "delay": 0}
    carved = module(run_module, "nvidia_vgpu", root, **carve)
    assert carved["rc"] == 0, carved
    assert hoststate.load_state(root)["sriov"][L40S] == {"num_vfs": 32, "method": "sriov_manage"}

    # The operator (or another play) declares the PF to the generic sriov module too: its VF count as it is,
    # and autoprobe off. Nothing about how the VFs are enabled changes.
    done = module(run_module, "sriov", root, devices=[{"selector": L40S, "num_vfs": 32, "drivers_autoprobe": False}],
                  delay=0)
    assert done["rc"] == 0, done
    entry = hoststate.load_state(root)["sriov"][L40S]
    assert entry.get("method") == "sriov_manage", entry

    reboot(root, uptime=50.0)
    calls_before = len(sriov_manage_calls(root))
    monkeypatch.setenv("PATH", bin_dir + os.pathsep + os.environ["PATH"])
    sim = attach(root)[0]
    with sim.active():
        status = restore.Restore(root=root, out=io.StringIO(), timeout=0.5, interval=0.01, attempts=2).run()
    sriov_item = next(r for r in status["results"] if r["step"] == "sriov")
    assert sriov_manage_calls(root)[calls_before:] == [["-e", L40S]], sriov_item
    assert "by sriov-manage" in sriov_item["message"], sriov_item


def test_sriov_and_nvidia_vgpu_on_one_gpu_settle(make_host, run_module, tmp_path, fake_commands):
    """The vgpu role with one device declaring both ``sriov`` and ``nvidia_vgpu`` runs sriov then nvidia_vgpu
    on every play: each keeps the other's part of the state entry, so a settled host changes nothing."""
    from ansible_collections.gpuvirt.host.tests.sim.sriov_hosts import all_vfs_enabled

    root = make_host(all_vfs_enabled("l40s_vgpu"))
    command = fake_sriov_manage(str(tmp_path / "bin"), root)
    fake_commands.install("lspci")
    sriov_args = {"devices": [{"selector": L40S, "drivers_autoprobe": False}], "delay": 0}
    vgpu_args = {"gpus": [{"selector": L40S, "profiles": [{"profile": "L40S-8Q", "count": 2}]}],
                 "sriov_manage": command, "delay": 0}
    for _play in range(2):  # the first play, then one more to settle
        assert module(run_module, "sriov", root, **sriov_args)["rc"] == 0
        assert module(run_module, "nvidia_vgpu", root, **vgpu_args)["rc"] == 0
    again = (module(run_module, "sriov", root, **sriov_args), module(run_module, "nvidia_vgpu", root, **vgpu_args))
    assert [r["changed"] for r in again] == [False, False], [r["state_file"] for r in again]
