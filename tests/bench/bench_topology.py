# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Topology detection benchmark on the large synthetic host (``make bench``).

Measures, on one generated tree (8 SR-IOV GPUs x 16 VFs, about 600 PCI functions):

1. ``topology.detect()`` in-process (best and median of N runs after one warm-up);
2. the whole module run directly (``python plugins/modules/topology_info.py args.json``: Python
   start-up, Ansible module imports, detection, JSON output), and ``ansible localhost -m
   gpuvirt.host.topology_info`` (everything an ad-hoc run costs);
3. a calibration: the bare I/O of four attributes per device, to judge the figures on a busy or
   slow machine;
4. the usual shell approach, once: a loop over ``<root>/sys/kernel/iommu_groups/*/devices/*``
   running ``lspci -nns <address>`` per device, lspci reading the same tree through
   ``-A linux-sysfs -O sysfs.path=<root>/sys/bus/pci``.

It prints the figures and ratios and exits 1 when a target is missed: the in-process median at
most twice the calibration's (a ratio, so it holds on any machine: both are measured in the same
process, CPU time, so that other work on the machine does not skew it), and at least 10 times
faster than the shell loop. Before timing anything it checks that ``detect()`` gives the same
result through per-device directory descriptors as through plain paths on every fixture host.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "fixtures"))

import hostgen  # noqa: E402

TARGET_CALIBRATION_RATIO = 2.0
TARGET_RATIO = 10.0
SYSTEM_PCI_IDS = ("/usr/share/hwdata/pci.ids", "/usr/share/misc/pci.ids")
SHELL_LOOP = r"""
for d in "$ROOT"/sys/kernel/iommu_groups/*/devices/*; do
    n=${d#*/iommu_groups/}; n=${n%%/*}
    printf 'IOMMU Group %s ' "$n"
    lspci -A linux-sysfs -O sysfs.path="$ROOT/sys/bus/pci" -nns "${d##*/}"
done
"""


def expose_collection(base):
    """Make this checkout importable as ``ansible_collections.gpuvirt.host``."""
    namespace = os.path.join(base, "ansible_collections", "gpuvirt")
    os.makedirs(namespace)
    os.symlink(REPO, os.path.join(namespace, "host"))
    sys.path.insert(0, base)
    return base


def timed(function, runs):
    """``(best, median)`` wall-clock milliseconds of ``runs`` calls."""
    return timed_with_cpu(function, runs)[:2]


def timed_with_cpu(function, runs):
    """``(best, median)`` wall-clock and ``(best, median)`` CPU milliseconds of this process.

    CPU time is what detection itself costs; wall time also counts waiting for a core when other
    work shares the machine."""
    walls, cpus = [], []
    for _attempt in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        cpus.append((time.process_time() - start_cpu) * 1000.0)
        walls.append((time.perf_counter() - start) * 1000.0)
    return min(walls), statistics.median(walls), min(cpus), statistics.median(cpus)


def same_output_everywhere():
    """Fixture hosts whose topology differs between the fast readers and plain path reads."""
    from ansible_collections.gpuvirt.host.plugins.module_utils import mdev_info, pci
    from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect

    differing = []
    for name in hostgen.host_names():
        if name == "large_synthetic":
            continue
        root = tempfile.mkdtemp(prefix="bench-fixture-")
        try:
            hostgen.build_host(name, os.path.join(root, "t"))
            fast = detect(os.path.join(root, "t"))
            saved = pci.open_directory, mdev_info.open_directory
            pci.open_directory = mdev_info.open_directory = lambda path: None
            try:
                plain = detect(os.path.join(root, "t"))
            finally:
                pci.open_directory, mdev_info.open_directory = saved
            if fast != plain:
                differing.append(name)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return differing


def syscall_floor(root):
    """Open, read and close four attributes per device with no parsing at all: what the machine
    charges for the bare I/O detection cannot avoid, to judge the other figures against."""
    bus = os.path.join(root, "sys/bus/pci/devices")
    paths = [
        "%s/%s/%s" % (bus, address, name)
        for address in sorted(os.listdir(bus))
        for name in ("uevent", "numa_node", "driver_override", "reset_method")
    ]

    def read_all():
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            os.read(fd, 4096)
            os.close(fd)

    return timed_with_cpu(read_all, 30)


def build_tree(workdir):
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else workdir
    tree = tempfile.mkdtemp(prefix="bench-host-", dir=base)
    root = os.path.join(tree, "root")
    start = time.perf_counter()
    hostgen.build_host("large_synthetic", root)
    built = time.perf_counter() - start
    pci_ids = next((p for p in SYSTEM_PCI_IDS if os.path.exists(p)), None)
    if pci_ids:
        # A real, full pci.ids makes the name lookups cost what they cost on a real host.
        shutil.copyfile(pci_ids, os.path.join(root, "usr/share/misc/pci.ids"))
    fs = "tmpfs (/dev/shm)" if base == "/dev/shm" else "the temporary directory"
    return tree, root, built, fs, pci_ids


def module_direct(root, collections, runs):
    args_file = os.path.join(collections, "args.json")
    with open(args_file, "w", encoding="utf-8") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": {"root": root}}, handle)
    module = os.path.join(REPO, "plugins", "modules", "topology_info.py")
    env = dict(os.environ, PYTHONPATH=collections + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, module, args_file]
    result = {}

    def run():
        output = subprocess.run(command, env=env, capture_output=True, check=True, text=True).stdout
        result.update(json.loads(output))

    best, median = timed(run, runs)
    return best, median, len(result["topology"]["devices"])


def module_ansible(root, collections, runs):
    ansible = shutil.which("ansible", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if ansible is None:
        return None
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=collections,
        ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false",
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
    )
    command = [ansible, "localhost", "-m", "gpuvirt.host.topology_info", "-a", "root=" + root, "-o"]

    def run():
        subprocess.run(command, env=env, capture_output=True, check=True, text=True)

    return timed(run, runs)


def shell_loop(root):
    if shutil.which("lspci") is None:
        return None
    start = time.perf_counter()
    completed = subprocess.run(
        ["bash", "-c", SHELL_LOOP], env=dict(os.environ, ROOT=root), capture_output=True, text=True, check=False
    )
    elapsed = (time.perf_counter() - start) * 1000.0
    lines = [line for line in completed.stdout.splitlines() if line.startswith("IOMMU Group")]
    return elapsed, len(lines), sum(1 for line in lines if "[" in line)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=30, help="in-process runs (default 30)")
    parser.add_argument("--module-runs", type=int, default=5, help="direct module runs (default 5)")
    parser.add_argument("--ansible-runs", type=int, default=3, help="ansible ad-hoc runs (default 3, 0 skips)")
    parser.add_argument("--no-shell", action="store_true", help="skip the lspci shell loop")
    options = parser.parse_args(argv)

    workdir = tempfile.mkdtemp(prefix="gpuvirt-bench-")
    collections = expose_collection(os.path.join(workdir, "collections"))
    from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect

    tree, root, built, fs, pci_ids = build_tree(workdir)
    failures = []
    try:
        topology = detect(root)
        devices = len(topology["devices"])
        print("host: large_synthetic, %d PCI devices, %d GPUs (PF+VF), %d mdev parents; built in %.1f s on %s"
              % (devices, len(topology["gpus"]), len(topology["mdev_parents"]), built, fs))
        print("pci.ids: %s" % ("a copy of " + pci_ids if pci_ids else "the fixture's own (no system pci.ids)"))
        print("machine: %d CPUs, load average %.2f" % (os.cpu_count() or 0, os.getloadavg()[0]))
        print()

        differing = same_output_everywhere()
        print("same output through directory descriptors and plain paths on every fixture host: %s"
              % ("yes" if not differing else "NO: " + ", ".join(differing)))
        if differing:
            failures.append("different output on " + ", ".join(differing))
        floor = syscall_floor(root)
        print("calibration: bare open/read/close of 4 attributes x %d devices: best %.2f ms, median %.2f ms "
              "(CPU time best %.2f ms, median %.2f ms)" % (devices, floor[0], floor[1], floor[2], floor[3]))
        best, median, cpu_best, cpu_median = timed_with_cpu(lambda: detect(root), options.runs)
        print("in-process detect():        best %8.2f ms   median %8.2f ms   (%d runs; CPU time best %.2f ms, "
              "median %.2f ms)" % (best, median, options.runs, cpu_best, cpu_median))
        module = module_direct(root, collections, options.module_runs)
        print("module run, direct:         best %8.2f ms   median %8.2f ms   (%d runs, %d devices returned)"
              % (module[0], module[1], options.module_runs, module[2]))
        adhoc = module_ansible(root, collections, options.ansible_runs) if options.ansible_runs > 0 else None
        if adhoc:
            print("module run, ansible ad-hoc: best %8.2f ms   median %8.2f ms   (%d runs)"
                  % (adhoc[0], adhoc[1], options.ansible_runs))
        shell = None if options.no_shell else shell_loop(root)
        if shell:
            print("shell loop + lspci -nns:    once %8.2f ms   (%d devices listed, %d with IDs; lspci reads the same "
                  "tree with -O sysfs.path=<root>/sys/bus/pci)" % shell)
        elif not options.no_shell:
            print("shell loop: lspci not found, skipped")
        print()

        calibration_ratio = cpu_median / floor[3]
        print("in-process / calibration (CPU-time medians): %5.2fx (wall-clock medians %.2fx, bests %.2fx)"
              % (calibration_ratio, median / floor[1], best / floor[0]))
        if calibration_ratio > TARGET_CALIBRATION_RATIO:
            failures.append("in-process median is %.2fx the calibration, over %.1fx"
                            % (calibration_ratio, TARGET_CALIBRATION_RATIO))
        if shell:
            ratio = shell[0] / median
            print("shell loop / in-process (median):   %7.1fx" % ratio)
            print("shell loop / direct module run:     %7.1fx" % (shell[0] / module[1]))
            if adhoc:
                print("shell loop / ansible ad-hoc run:    %7.1fx" % (shell[0] / adhoc[1]))
            if ratio < TARGET_RATIO:
                failures.append("in-process detection is only %.1fx faster than the shell loop" % ratio)
        print("targets: in-process median <= %.1fx the calibration, same output everywhere, >= %.0fx faster than "
              "the shell loop: %s" % (TARGET_CALIBRATION_RATIO, TARGET_RATIO,
                                      "met" if not failures else "MISSED (" + "; ".join(failures) + ")"))
    finally:
        shutil.rmtree(tree, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
