# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fleet benchmark on simulated hosts (``make bench``).

A simulated fleet is an inventory of hosts with ``ansible_connection: local``, each with its own
fixture tree (``gpuvirt_root``) of the amd_host description (a passthrough GPU on vfio-pci, the
IOMMU on: ready, nothing to change). Measures, with ansible-playbook as users run it:

1. ``gpuvirt.host.preflight`` over N hosts (default 100) at forks 1 and 8: hosts per minute;
2. per-host cost of a ``gpuvirt.host.rollout`` that changes nothing, and of a bare ``gather_facts``
   play on the same hosts, side by side, with their ratio (target: at most 2).

Every figure is printed with its ratio; exit status 1 when the rollout ratio misses the target.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "fleet"))

from conftest import Fleet  # noqa: E402

TARGET_RATIO = 2.0


def timed(fleet, playbook, *args, extra_vars=None):
    start = time.monotonic()
    rc, recap, output = fleet.run(playbook, *args, extra_vars=extra_vars, timeout=7200)
    elapsed = time.monotonic() - start
    if rc != 0:
        sys.exit("%s failed (rc %d):\n%s" % (playbook, rc, output[-4000:]))
    return elapsed, recap


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100, help="simulated hosts (default 100)")
    parser.add_argument("--rollout-hosts", type=int, default=20, help="hosts of the rollout comparison (default 20)")
    args = parser.parse_args(argv)
    base = tempfile.mkdtemp(prefix="gpuvirt-bench-fleet-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    try:
        fleet = Fleet(base)
        for index in range(args.hosts):
            fleet.add("gpu%03d" % index, "amd_host")
        print("Fleet benchmark: %d simulated hosts (amd_host trees, ansible_connection local), %d CPU(s)"
              % (args.hosts, os.cpu_count() or 1))
        rates = {}
        for forks in (1, 8):
            elapsed, recap = timed(fleet, "gpuvirt.host.preflight", "--forks", str(forks))
            assert len(recap) == args.hosts, recap
            rates[forks] = args.hosts / elapsed * 60
            print("  preflight, forks %d: %7.1f s  %7.1f hosts/min" % (forks, elapsed, rates[forks]))
        print("  preflight, forks 8 / forks 1: %.2fx" % (rates[8] / rates[1]))

        small = Fleet(os.path.join(base, "rollout"))
        for index in range(args.rollout_hosts):
            small.add("gpu%03d" % index, "amd_host")
        gather = os.path.join(base, "gather.yml")
        with open(gather, "w") as handle:
            yaml.safe_dump([{"name": "Gather facts", "hosts": "all", "gather_facts": True, "tasks": []}], handle)
        gather_s, _recap = timed(small, gather, "--forks", "8")
        rollout_s, recap = timed(small, "gpuvirt.host.rollout", "--forks", "8",
                                 extra_vars={"target": "gpu_hosts", "gpuvirt_rollout_batch": "100%"})
        assert all(counts["changed"] == 0 for name, counts in recap.items() if name != "localhost"), recap
        per_gather = gather_s / args.rollout_hosts
        per_rollout = rollout_s / args.rollout_hosts
        ratio = per_rollout / per_gather
        print("  gather_facts play, %d hosts, forks 8:      %6.2f s per host" % (args.rollout_hosts, per_gather))
        print("  rollout changing nothing, same hosts:       %6.2f s per host" % per_rollout)
        print("  rollout / gather_facts: %.2fx (target <= %.1fx)%s"
              % (ratio, TARGET_RATIO, "" if ratio <= TARGET_RATIO else "  MISSED"))
        return 0 if ratio <= TARGET_RATIO else 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
