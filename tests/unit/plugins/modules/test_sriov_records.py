# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The records of what sat on the VFs a lower count removes go with them: the mdevs and vGPU types that
``force`` let the kernel destroy would otherwise have the boot restore wait for parents that never come
(and fail at every boot), and recreate them once VFs came back."""

from __future__ import annotations

import errno
import io
import os

from ansible_collections.gpuvirt.host.plugins.module_utils import files, hoststate, restore
from ansible_collections.gpuvirt.host.tests.sim.nvidia_vgpu_sim import attach
from ansible_collections.gpuvirt.host.tests.sim.sriov_hosts import recorded

PF = "0000:b1:00.0"
VF = "0000:b1:00.4"
MDEV = "6c3e1ab4-4a52-4e2c-9a3e-0a4d9c1e2f01"


def run(run_module, root, name, check_mode=False, **args):
    sim, _kernel, _nvidia = attach(root)
    with sim.active():
        return run_module(name, dict(args, root=root), check_mode=check_mode, diff=True)


def a100_with_a_recorded_mdev(make_host, run_module):
    root = make_host("datacenter_a100")
    for name in os.listdir(os.path.join(root, "proc/31337/fd")):  # its VM has stopped
        os.unlink(os.path.join(root, "proc/31337/fd", name))
    done = run(run_module, root, "mdev", parents=[{"selector": VF, "mdevs": [{"type": "nvidia-471", "uuids": [MDEV]}]}])
    assert done["rc"] == 0 and MDEV in recorded(root)["mdevs"], done
    return root


def test_removing_the_vfs_for_good_forgets_what_was_on_them(make_host, run_module):
    root = a100_with_a_recorded_mdev(make_host, run_module)
    result = run(run_module, root, "sriov", devices=[{"selector": PF, "num_vfs": 0}], force=True, delay=0)
    assert result["rc"] == 0 and result["changed"] is True, result
    assert os.listdir(os.path.join(root, "sys/bus/mdev/devices")) == []
    assert MDEV not in recorded(root)["mdevs"]
    assert PF not in recorded(root)["sriov"]


def test_records_a_run_could_not_drop_go_with_the_next_run(make_host, run_module, monkeypatch):
    # The count was lowered but the state file was not written (/etc full, or the run killed in between):
    # the next run finds the count as declared, and still drops the records of the VFs beyond it, or the
    # restore would wait at every boot for a parent that never comes.
    root = a100_with_a_recorded_mdev(make_host, run_module)
    real = files.write_file

    def full(path, *args, **kwargs):
        if path.endswith("host-state.json"):
            raise files.FileError("cannot write %s: %s" % (path, os.strerror(errno.ENOSPC)))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(files, "write_file", full)
    args = {"devices": [{"selector": PF, "num_vfs": 0}], "force": True, "delay": 0}
    failed = run(run_module, root, "sriov", **args)
    assert failed["rc"] == 1 and failed["changed"] is True and MDEV in recorded(root)["mdevs"], failed
    monkeypatch.setattr(files, "write_file", real)
    again = run(run_module, root, "sriov", **args)
    assert again["rc"] == 0 and again["changed"] is True, again
    assert MDEV not in recorded(root)["mdevs"] and PF not in recorded(root)["sriov"]
    assert run(run_module, root, "sriov", **args)["changed"] is False
    out = io.StringIO()
    sim, _kernel, _nvidia = attach(root)
    with sim.active():
        status = restore.Restore(root=root, out=out, timeout=0.2, interval=0.01, mdevctl_grace=0).run()
    assert status["ok"], [r for r in status["results"] if not r["ok"]]


def test_vfs_removed_for_this_boot_only_keep_the_records(make_host, run_module):
    # persistent: false leaves the recorded count, so the boot restore brings the VFs and the mdev back.
    root = a100_with_a_recorded_mdev(make_host, run_module)
    before = recorded(root)
    result = run(run_module, root, "sriov", devices=[{"selector": PF, "num_vfs": 0}], force=True, delay=0,
                 persistent=False)
    assert result["rc"] == 0 and result["changed"] is True, result
    assert recorded(root) == before


def test_without_devices_drops_vendor_entries_and_mdevs_of_those_devices():
    state = hoststate.empty_state()
    state["mdevs"] = {MDEV: {"parent": VF, "type": "nvidia-471"}, "kept": {"parent": "0000:b1:00.5", "type": "x"}}
    for section in hoststate.sections()[1:-1]:
        state[section] = {VF: {"type": 1}, "0000:b1:00.5": {"type": 2}}
    pruned = hoststate.without_devices(state, [VF])
    assert list(pruned["mdevs"]) == ["kept"]
    assert all(list(pruned[section]) == ["0000:b1:00.5"] for section in hoststate.sections()[1:-1])
    assert state["mdevs"][MDEV]["parent"] == VF  # the state given is left as it was


def test_removing_the_vfs_for_good_also_removes_mdevctls_definitions(make_host, run_module):
    # mdevctl's udev rule starts a parent's "auto" definitions when the parent appears: VFs enabled again
    # at that address would get back the mdev that force let the kernel destroy.
    root = make_host("datacenter_a100")
    os.makedirs(os.path.join(root, "usr/bin"), exist_ok=True)
    open(os.path.join(root, "usr/bin/mdevctl"), "w").close()
    for name in os.listdir(os.path.join(root, "proc/31337/fd")):
        os.unlink(os.path.join(root, "proc/31337/fd", name))
    done = run(run_module, root, "mdev", parents=[{"selector": VF, "mdevs": [{"type": "nvidia-471", "uuids": [MDEV]}]}])
    definition = os.path.join(root, "etc/mdevctl.d", VF, MDEV)
    assert done["rc"] == 0 and os.path.exists(definition), done
    args = {"devices": [{"selector": PF, "num_vfs": 0}], "force": True, "delay": 0}
    predicted = run(run_module, root, "sriov", check_mode=True, **args)
    down = run(run_module, root, "sriov", **args)
    assert down["rc"] == 0 and not os.path.exists(definition), down
    assert MDEV not in recorded(root)["mdevs"]
    assert predicted["changed"] is True and len(predicted["diff"]) == len(down["diff"]) == 3
    assert run(run_module, root, "sriov", **args)["changed"] is False
