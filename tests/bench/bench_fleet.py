# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fleet benchmark on simulated hosts (``make bench``).

A simulated fleet is an inventory of hosts with ``ansible_connection: local``, each with its own
fixture tree (``gpuvirt_root``) of the amd_host description (a passthrough GPU on vfio-pci, the
IOMMU on: ready, nothing to change). With ansible-playbook as users run it, at forks 1 and 8:

1. ``gpuvirt.host.preflight`` over N hosts (default 100): hosts per minute;
2. ``gpuvirt.host.rollout`` over the same hosts, which changes nothing there: hosts per minute;
3. a bare ``gather_facts`` play on the same hosts, and the per-host cost of the rollout as a ratio
   to it (target: at most 2), in wall time and in CPU time of ansible-playbook and its children
   (the CPU time does not depend on what else the machine runs).

A ratio above the target prints MISSED, with where the rollout's time goes, task by task
(tests/bench/callback_plugins/task_times.py), and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "fleet"))

from conftest import Fleet  # noqa: E402

TARGET_RATIO = 2.0
FORKS = (1, 8)
# Modules that run on the host; every other task is the controller's work.
HOST_TASKS = ("Gathering Facts", "Detect the IOMMU, PCI and GPU topology", "Put the IOMMU arguments on the kernel")


class Timed:
    """One ansible-playbook run: wall and CPU seconds, and the wall seconds of each task."""

    def __init__(self, fleet, playbook, forks, extra_vars=None):
        times = os.path.join(fleet.base, "task-times.json")
        env = {
            "ANSIBLE_CALLBACK_PLUGINS": os.path.join(HERE, "callback_plugins"),
            "ANSIBLE_CALLBACKS_ENABLED": "task_times",
            "GPUVIRT_TASK_TIMES": times,
        }
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.monotonic()
        rc, self.recap, output = fleet.run(playbook, "--forks", str(forks), extra_vars=extra_vars, env=env,
                                           timeout=7200)
        self.wall = time.monotonic() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        if rc != 0:
            sys.exit("%s failed (rc %d):\n%s" % (playbook, rc, output[-4000:]))
        with open(times) as handle:
            self.tasks = json.load(handle)
        self.hosts = len([name for name in self.recap if name != "localhost"])

    def per_minute(self):
        return self.hosts / self.wall * 60


def where_the_time_goes(run, top=12):
    lines = ["  where the rollout's time goes (forks 8, wall seconds of each task over all hosts):"]
    host = [task for task in run.tasks if task["task"].split(" : ")[-1].startswith(HOST_TASKS)]
    on_host = sum(task["seconds"] for task in host)
    lines.append("    %d modules run on the hosts: %5.1f s (%2.0f%%); the controller's %d other tasks and start-up: "
                 "%5.1f s (%2.0f%%)" % (len(host), on_host, 100 * on_host / run.wall, len(run.tasks) - len(host),
                                        run.wall - on_host, 100 * (run.wall - on_host) / run.wall))
    for task in sorted(run.tasks, key=lambda task: -task["seconds"])[:top]:
        share = 100 * task["seconds"] / run.wall
        lines.append("    %6.2f s  %4.1f%%  %s" % (task["seconds"], share, task["task"][:90]))
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100, help="simulated hosts (default 100)")
    args = parser.parse_args(argv)
    base = tempfile.mkdtemp(prefix="gpuvirt-bench-fleet-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    try:
        fleet = Fleet(base)
        for index in range(args.hosts):
            fleet.add("gpu%03d" % index, "amd_host")
        gather = os.path.join(base, "gather.yml")
        with open(gather, "w") as handle:
            yaml.safe_dump([{"name": "Gather facts", "hosts": "all", "gather_facts": True, "tasks": []}], handle)
        rollout_vars = {"target": "gpu_hosts", "gpuvirt_rollout_batch": "100%"}
        runs = {}
        for forks in FORKS:
            runs["preflight", forks] = Timed(fleet, "gpuvirt.host.preflight", forks)
            runs["rollout", forks] = Timed(fleet, "gpuvirt.host.rollout", forks, rollout_vars)
            runs["gather", forks] = Timed(fleet, gather, forks)
        for forks in FORKS:
            recap = runs["rollout", forks].recap
            changed = {name: counts["changed"] for name, counts in recap.items() if counts["changed"]}
            assert not changed, "the rollout changed hosts that were ready: %s" % changed
            assert all(runs[name, forks].hosts == args.hosts for name in ("preflight", "rollout", "gather"))

        print("Fleet benchmark: %d simulated hosts (amd_host trees, ansible_connection local), %d CPU(s), "
              "load average %.1f" % (args.hosts, os.cpu_count() or 1, os.getloadavg()[0]))
        print("  %-31s %-25s %-25s %s" % ("", "forks 1", "forks 8", "forks 8 / forks 1"))
        for name, label in (("preflight", "preflight"), ("rollout", "rollout, nothing to change"),
                            ("gather", "gather_facts play")):
            one, eight = runs[name, 1], runs[name, 8]
            speedup = eight.per_minute() / one.per_minute()
            print("  %-31s %6.1f s %6.1f hosts/min  %6.1f s %6.1f hosts/min  %.2fx"
                  % (label, one.wall, one.per_minute(), eight.wall, eight.per_minute(), speedup))
        missed = False
        print("  per-host cost, rollout / gather_facts (target <= %.1fx):" % TARGET_RATIO)
        for forks in FORKS:
            rollout, gather = runs["rollout", forks], runs["gather", forks]
            wall, cpu = rollout.wall / gather.wall, rollout.cpu / gather.cpu
            verdict = "met" if wall <= TARGET_RATIO else "MISSED"
            missed = missed or wall > TARGET_RATIO
            print("    forks %d: wall %5.2f s / %5.2f s per host = %.2fx %-6s  CPU %5.2f s / %5.2f s per host = %.2fx"
                  % (forks, rollout.wall / args.hosts, gather.wall / args.hosts, wall, verdict,
                     rollout.cpu / args.hosts, gather.cpu / args.hosts, cpu))
        if missed:
            print("\n".join(where_the_time_goes(runs["rollout", 8])))
        return 1 if missed else 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
