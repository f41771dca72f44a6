# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The boot-time restore holds the host lock that every changing module holds for its read-modify-write:
a play that goes on right after a reboot, while gpuvirt-restore.service still runs, does not interleave
with it."""

from __future__ import annotations

import io
import os
import threading
import time

from ansible_collections.gpuvirt.host.plugins.module_utils import hoststate, mdev, restore
from ansible_collections.gpuvirt.host.plugins.module_utils.host import Host
from ansible_collections.gpuvirt.host.tests.sim.hosts import MACHINE_ID, mediated_lab
from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim

HD = mdev.deterministic_uuid(MACHINE_ID, "mdpy", "mdpy-hd", 0)


def _record(root, mdevs):
    state = hoststate.empty_state()
    state["mdevs"] = mdevs
    path = hoststate.state_path(root)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(hoststate.render_state(state))


def test_restore_waits_for_a_module_run_that_holds_the_host_lock(make_host):
    root = make_host(mediated_lab())
    # A previous run recorded one mdev; the host has just booted, so it does not exist yet.
    _record(root, {HD: {"parent": "mdpy", "type": "mdpy-hd"}})
    sim = KernelSim(root)
    statuses = []

    def boot_restore():
        statuses.append(restore.Restore(root=root, out=io.StringIO(), timeout=0.3, interval=0.01).run())

    with sim.active():
        # A changing module (here: mdev with exclusive: true and no mdevs on mdpy, i.e. the user
        # removes the HD mdev) holds the host lock for its read-modify-write, exactly as modrun.run does.
        with Host(root).lock():
            worker = threading.Thread(target=boot_restore)
            worker.start()
            time.sleep(1.0)
            writes_while_locked = list(sim.writes)
            # The module's write: the mdev is no longer declared.
            _record(root, {})
        worker.join(30)
    assert not worker.is_alive()
    # Correct: the restore does not touch sysfs while another run holds the lock ...
    assert writes_while_locked == [], "restore wrote %r while a module held the host lock" % writes_while_locked
    # ... and so replays the state the module left: the undeclared mdev is not brought back.
    assert mdev.read_mdev(root, HD) is None


def test_mdev_module_right_after_boot_is_not_broken_by_the_running_restore(make_host, run_module, monkeypatch):
    """The vgpu role runs right after the iommu role's reboot (playbooks/gpu_host.yml), while
    gpuvirt-restore.service may still be replaying the state file (it is not ordered before sshd).
    Both create the same deterministic UUID; the kernel refuses the second create with EEXIST."""
    from ansible_collections.gpuvirt.host.plugins.module_utils import mdev_run

    root = make_host(mediated_lab())
    _record(root, {HD: {"parent": "mdpy", "type": "mdpy-hd"}})  # recorded by the previous run
    threads = []
    real_apply = mdev_run.MdevRun.apply

    def apply_while_the_restore_runs(self, plan):
        # The restore unit gets the CPU between the module's read (plan) and its writes (apply).
        worker = threading.Thread(
            target=lambda: restore.Restore(root=root, out=io.StringIO(), timeout=0.3, interval=0.01).run()
        )
        worker.start()
        threads.append(worker)
        worker.join(2.0)  # a restore that waits for the lock is still waiting: the module goes on
        return real_apply(self, plan)

    monkeypatch.setattr(mdev_run.MdevRun, "apply", apply_while_the_restore_runs)
    with KernelSim(root).active():
        result = run_module("mdev", {"root": root, "parents": [
            {"selector": "mdpy", "mdevs": [{"type": "mdpy-hd", "count": 1}]}]})
        for worker in threads:
            worker.join(30)
    assert result["rc"] == 0, result.get("msg")
    assert mdev.read_mdev(root, HD) == ("mdpy", "mdpy-hd")


def test_a_restore_that_cannot_take_the_lock_by_its_deadline_changes_nothing(make_host):
    root = make_host(mediated_lab())
    _record(root, {HD: {"parent": "mdpy", "type": "mdpy-hd"}})
    sim = KernelSim(root)
    with sim.active(), Host(root).lock():
        status = restore.Restore(root=root, out=io.StringIO(), timeout=0.1, interval=0.01, deadline=0.3).run()
    assert sim.writes == []
    assert status["ok"] is False
    assert [(r["step"], r["item"], r["action"]) for r in status["results"]] == [("lock", "/etc/gpuvirt/.lock", "wait")]
    assert "another gpuvirt.host run (pid %d) holds" % os.getpid() in status["results"][0]["message"]


def test_a_state_directory_that_cannot_be_written_is_restored_unlocked(make_host, monkeypatch):
    from ansible_collections.gpuvirt.host.plugins.module_utils import host as host_model

    root = make_host(mediated_lab())
    _record(root, {HD: {"parent": "mdpy", "type": "mdpy-hd"}})

    def read_only(directory, wait):
        raise host_model.LockError("cannot create the lock file: Read-only file system", errno=30)

    monkeypatch.setattr(host_model, "_acquire", read_only)
    with KernelSim(root).active():
        status = restore.Restore(root=root, out=io.StringIO(), timeout=0.3, interval=0.01).run()
    assert status["ok"] is True, status["results"]
    assert mdev.read_mdev(root, HD) == ("mdpy", "mdpy-hd")
