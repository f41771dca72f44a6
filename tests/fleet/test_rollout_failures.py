# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpuvirt.host.rollout when it goes wrong part way: a host that does not come back from its reboot, a
drain hook that fails, a failed verification, a host lost after its reboot, a run interrupted between a
reboot and the undrain hook.

Ansible's own max_fail_percentage is checked after every task: once over budget it stops the other hosts
of the batch where they are (drained, rebooted and not verified, never undrained) and counts them as
successful. The rollout applies its budget once every host of the batch is through, and its records say
which hosts are done, failed, unreachable or still pending."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import yaml

from ansible_collections.gpuvirt.host.tests.fleet.conftest import BIN, REBOOT_SIM


def write_tasks(fleet, name, tasks):
    path = os.path.join(fleet.base, name)
    with open(path, "w") as handle:
        yaml.safe_dump(tasks, handle)
    return path


def hooks(fleet):
    """A drain and an undrain hook that count their runs per host; the drain fails on a host marked
    'drain-fails' (a guest that will not migrate)."""
    drain = write_tasks(fleet, "drain.yml", [{
        "name": "Drain the host",
        "ansible.builtin.shell": "test ! -e {{ gpuvirt_root | dirname }}/drain-fails && "
                                 "echo drained >> {{ gpuvirt_root | dirname }}/drains",
        "changed_when": True,
    }])
    undrain = write_tasks(fleet, "undrain.yml", [{
        "name": "Undrain the host",
        "ansible.builtin.shell": "echo undrained >> {{ gpuvirt_root | dirname }}/undrains",
        "changed_when": True,
    }])
    return drain, undrain


def reboot_tasks(fleet, pause=False, dark=False):
    """The simulated reboot; a host marked 'dead' does not come back (the task fails as
    ansible.builtin.reboot does at reboot_timeout). ``pause``: a host marked 'interrupt' then waits, for
    the test to interrupt the run. ``dark``: a host marked 'dark' is unreachable once back."""
    tasks = [{
        "name": "Reboot the simulated host",
        "ansible.builtin.shell": "%s %s {{ gpuvirt_root | dirname }} && "
                                 "if [ -e {{ gpuvirt_root | dirname }}/dead ]; then "
                                 "echo 'Timed out waiting for last boot time check (timeout=900)' >&2; exit 1; fi"
                                 % (sys.executable, REBOOT_SIM),
        "changed_when": True,
    }]
    if pause:
        tasks.append({
            "name": "Wait for the rest of the batch",
            "ansible.builtin.shell": "touch {{ gpuvirt_root | dirname }}/rebooted-now && sleep 120",
            "when": "(gpuvirt_root | dirname ~ '/interrupt') is exists",
            "changed_when": False,
        })
    if dark:
        tasks.append({
            "name": "Drop off the network",
            "ansible.builtin.set_fact": {"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": 1},
            "when": "(gpuvirt_root | dirname ~ '/dark') is exists",
        })
    return write_tasks(fleet, "reboot%s%s.yml" % ("-pause" if pause else "", "-dark" if dark else ""), tasks)


def mark(fleet, host, name):
    open(os.path.join(fleet.base, host, name), "w").close()


def count(fleet, host, name):
    path = os.path.join(fleet.base, host, name)
    if not os.path.exists(path):
        return 0
    with open(path) as handle:
        return len(handle.read().splitlines())


def outcomes(report):
    with open(os.path.join(str(report), "rollout.json")) as handle:
        return {item["host"]: item for item in json.load(handle)}


def grub(fleet, name):
    with open(os.path.join(fleet.hosts[name], "etc/default/grub")) as handle:
        return handle.read()


def rollout(fleet, tmp_path, **extra):
    drain, undrain = hooks(fleet)
    variables = {
        "target": "gpu_hosts", "gpuvirt_rollout_batch": 3, "gpuvirt_reboot": "if_needed",
        "gpuvirt_rollout_reboot_tasks": reboot_tasks(fleet), "gpuvirt_rollout_drain_tasks": drain,
        "gpuvirt_rollout_undrain_tasks": undrain, "gpuvirt_report_dir": str(tmp_path / "reports"),
    }
    variables.update(extra)
    return fleet.run("gpuvirt.host.rollout", extra_vars=variables)


def test_a_host_that_does_not_come_back_lets_its_batch_finish_then_stops_the_rollout(fleet, tmp_path):
    for name in ("r1", "r2", "r3", "r4"):
        fleet.add(name, "iommu_disabled")
    mark(fleet, "r2", "dead")
    rc, recap, output = rollout(fleet, tmp_path)
    assert rc != 0 and recap["r2"]["failed"] == 1, output
    # r1 and r3, in r2's batch, are rebooted, verified, undrained and recorded; r4 is never started.
    for host in ("r1", "r3"):
        assert (count(fleet, host, "drains"), fleet.reboots(host), count(fleet, host, "undrains")) == (1, 1, 1), host
        assert recap[host]["failed"] == 0
    assert "r4" not in recap and fleet.reboots("r4") == 0
    records = outcomes(tmp_path / "reports")
    statuses = {"r1": "done", "r2": "failed", "r3": "done", "r4": "pending"}
    assert {h: r["status"] for h, r in records.items()} == statuses
    assert "Timed out waiting" in records["r2"]["message"] and records["r2"]["drained"] is True
    # r2 stays marked drained on itself: the next rollout verifies and undrains it once it is back.
    assert os.path.exists(os.path.join(fleet.hosts["r2"], "etc/gpuvirt/drained"))
    os.unlink(os.path.join(fleet.base, "r2", "dead"))
    rc, recap, output = rollout(fleet, tmp_path, gpuvirt_rollout_max_fail_percentage=0)
    assert rc == 0, output
    assert count(fleet, "r2", "undrains") == 1 and count(fleet, "r4", "undrains") == 1
    assert not os.path.exists(os.path.join(fleet.hosts["r2"], "etc/gpuvirt/drained"))
    assert {r["status"] for r in outcomes(tmp_path / "reports").values()} == {"done"}


def test_a_failed_drain_hook_and_a_failed_verification_let_the_others_finish(fleet, tmp_path):
    fleet.add("v1", dict(extends="iommu_disabled", sim_iommu_stays_off=True))  # its verification fails
    fleet.add("v2", "iommu_disabled")
    fleet.add("v3", "iommu_disabled")
    fleet.add("v4", "iommu_disabled")
    mark(fleet, "v3", "drain-fails")
    rc, recap, output = rollout(fleet, tmp_path, gpuvirt_rollout_max_fail_percentage=100)
    assert rc != 0 and "Verification failed on v1" in output, output
    # A verification failure stops the rollout whatever the budget, once v2 has finished.
    assert (count(fleet, "v2", "drains"), fleet.reboots("v2"), count(fleet, "v2", "undrains")) == (1, 1, 1)
    assert recap["v3"]["failed"] == 1 and fleet.reboots("v3") == 0 and "v4" not in recap
    records = outcomes(tmp_path / "reports")
    assert records["v1"]["status"] == "failed" and "Verification failed on v1" in records["v1"]["message"]
    assert records["v4"]["status"] == "pending"


def test_a_host_lost_after_its_reboot_counts_against_the_budget(fleet, tmp_path):
    for name in ("d1", "d2", "d3", "d4"):
        fleet.add(name, "iommu_disabled")
    mark(fleet, "d1", "dark")
    untouched = grub(fleet, "d3")
    rc, recap, output = rollout(fleet, tmp_path, gpuvirt_rollout_batch=2,
                                gpuvirt_rollout_reboot_tasks=reboot_tasks(fleet, dark=True))
    assert rc != 0 and recap["d1"]["unreachable"] == 1, output
    assert fleet.reboots("d2") == 1 and count(fleet, "d2", "undrains") == 1
    assert [fleet.reboots("d3"), fleet.reboots("d4")] == [0, 0] and grub(fleet, "d3") == untouched
    records = outcomes(tmp_path / "reports")
    assert [records[h]["status"] for h in ("d1", "d2", "d3", "d4")] == ["unreachable", "done", "pending", "pending"]


def test_a_rollout_interrupted_after_a_reboot_is_finished_by_the_next(fleet, tmp_path):
    fleet.add("i1", "iommu_disabled")
    fleet.add("i2", "iommu_disabled")
    mark(fleet, "i1", "interrupt")
    drain, undrain = hooks(fleet)
    variables = {
        "target": "gpu_hosts", "gpuvirt_rollout_batch": 1, "gpuvirt_reboot": "if_needed",
        "gpuvirt_rollout_reboot_tasks": reboot_tasks(fleet, pause=True), "gpuvirt_rollout_drain_tasks": drain,
        "gpuvirt_rollout_undrain_tasks": undrain, "gpuvirt_report_dir": str(tmp_path / "reports"),
    }
    # Ctrl-C (an AWX cancel, a job timeout) while i1's reboot finishes: drained and rebooted, not undrained.
    process = subprocess.Popen(
        [os.path.join(BIN, "ansible-playbook"), "-i", fleet.inventory(), "gpuvirt.host.rollout",
         "-e", json.dumps(variables)],
        env=fleet.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not os.path.exists(os.path.join(fleet.base, "i1", "rebooted-now")):
        assert process.poll() is None and time.time() < deadline, process.communicate()[0][-3000:]
        time.sleep(0.2)
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)
    process.communicate(timeout=120)
    assert (count(fleet, "i1", "drains"), fleet.reboots("i1"), count(fleet, "i1", "undrains")) == (1, 1, 0)
    os.unlink(os.path.join(fleet.base, "i1", "interrupt"))
    # Launched again: i1 has nothing left to change, and is verified and undrained all the same.
    rc, recap, output = fleet.run("gpuvirt.host.rollout", extra_vars=variables)
    assert rc == 0, output
    assert (count(fleet, "i1", "drains"), fleet.reboots("i1"), count(fleet, "i1", "undrains")) == (1, 1, 1)
    assert fleet.reboots("i2") == 1 and count(fleet, "i2", "undrains") == 1
    assert outcomes(tmp_path / "reports")["i1"]["drained"] is True
