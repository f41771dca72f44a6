# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prove that ``topology.detect()`` gives byte-identical output on every fixture host.

Usage: ``python tests/bench/compare_detect.py [--against REV] [HOST ...]`` (default: every host in
``tests/fixtures/hosts``, ``large_synthetic`` included).

Each host is built once with this checkout's generator, and ``detect()`` output (JSON with sorted
keys) is compared byte for byte:

1. through the fast readers and through plain path reads (no directory descriptors);
2. with every PCI device's ``uevent`` and without it (a snapshot that lacks the file): the readers'
   fall-back to the individual attributes must give the same answer as the one read;
3. with ``--against REV``: this checkout's ``detect()`` and the one of the git revision ``REV``
   (``main``, a commit), each run in its own interpreter on the same tree.

Exits 1 when any output differs and prints the first differing line of each.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "fixtures"))

import hostgen  # noqa: E402

# Run in a separate interpreter with a collection tree on sys.path: prints each root's output.
_DETECT = (
    "import json, sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect\n"
    "for root in sys.argv[2:]:\n"
    "    print(json.dumps(detect(root), sort_keys=True))\n"
)


def canonical(topology):
    return json.dumps(topology, sort_keys=True)


def collection_tree(base, source):
    """A directory holding ``ansible_collections/gpuvirt/host`` -> ``source``."""
    namespace = os.path.join(base, "ansible_collections", "gpuvirt")
    os.makedirs(namespace)
    os.symlink(source, os.path.join(namespace, "host"))
    return base


def export_revision(revision, dest):
    """Extract ``plugins/`` of ``revision`` into ``dest``; returns ``dest``."""
    os.makedirs(dest)
    archive = subprocess.run(
        ["git", "-C", REPO, "archive", "--format=tar", revision, "plugins"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return dest


def outputs_of(collections, roots):
    """``detect()`` output of each root by the collection below ``collections``, in a new interpreter."""
    completed = subprocess.run(
        [sys.executable, "-c", _DETECT, collections] + list(roots), capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError("detect() failed:\n" + completed.stderr)
    return completed.stdout.splitlines()


def first_difference(expected, actual):
    """The first differing line of two outputs, pretty-printed."""
    before = json.dumps(json.loads(expected), indent=1, sort_keys=True).splitlines()
    after = json.dumps(json.loads(actual), indent=1, sort_keys=True).splitlines()
    changed = [line for line in difflib.unified_diff(before, after, lineterm="", n=0) if line[:1] in "+-"]
    return "\n    ".join(changed[2:8])


def plain_paths_output(root):
    """``detect()`` with every directory-descriptor reader replaced by plain path reads."""
    from ansible_collections.gpuvirt.host.plugins.module_utils import mdev_info, pci
    from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect

    saved = pci.open_directory, mdev_info.open_directory
    pci.open_directory = mdev_info.open_directory = lambda *args: None
    try:
        return canonical(detect(root))
    finally:
        pci.open_directory, mdev_info.open_directory = saved


def remove_uevents(root):
    """Delete every PCI device's ``uevent`` (as a snapshot without them would be); returns how many."""
    bus = os.path.join(root, "sys/bus/pci/devices")
    removed = 0
    for address in os.listdir(bus):
        path = os.path.join(bus, address, "uevent")
        if os.path.isfile(path):
            os.unlink(path)
            removed += 1
    return removed


def compare(hosts, against=None, report=print):
    """Compare the outputs on ``hosts``; returns the list of ``(host, check, difference)`` failures."""
    from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect

    workdir = tempfile.mkdtemp(prefix="compare-detect-")
    failures = []
    try:
        roots = {}
        for name in hosts:
            roots[name] = hostgen.build_host(name, os.path.join(workdir, "hosts", name))
        current = {name: canonical(detect(root)) for name, root in roots.items()}
        if against:
            reference = collection_tree(
                os.path.join(workdir, "reference"), export_revision(against, os.path.join(workdir, "exported"))
            )
            for name, output in zip(roots, outputs_of(reference, roots.values())):
                if output != current[name]:
                    failures.append((name, "against " + against, first_difference(output, current[name])))
        for name, root in roots.items():
            if plain_paths_output(root) != current[name]:
                failures.append((name, "plain paths", first_difference(current[name], plain_paths_output(root))))
            removed = remove_uevents(root)
            without = canonical(detect(root))
            if without != current[name]:
                failures.append((name, "without uevent", first_difference(current[name], without)))
            report("%-22s %6d bytes of output, %3d uevent files: %s" % (
                name, len(current[name]), removed,
                "same" if not any(f[0] == name for f in failures) else "DIFFERENT",
            ))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return failures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--against", metavar="REV", help="also compare with detect() of this git revision")
    parser.add_argument("hosts", nargs="*", help="fixture hosts (default: all)")
    options = parser.parse_args(argv)
    collections = collection_tree(tempfile.mkdtemp(prefix="compare-detect-collection-"), REPO)
    sys.path.insert(0, collections)
    try:
        return run(options.hosts or hostgen.host_names(), options.against)
    finally:
        shutil.rmtree(collections, ignore_errors=True)


def run(hosts, against):
    failures = compare(hosts, against)
    for name, check, difference in failures:
        print("DIFFERENT on %s (%s):\n    %s" % (name, check, difference))
    print("detect() output byte-identical on %d hosts (fast and plain readers, with and without uevent%s): %s"
          % (len(hosts), ", against " + against if against else "", "yes" if not failures else "NO"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
