# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared by the report and consumer tests: paths, the consumers' tools, a simulated fleet, the playbook."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TESTS)
OUTPUT = os.path.join(TESTS, "output")
sys.path.insert(0, os.path.join(TESTS, "fixtures"))

import hostgen  # noqa: E402  (tests/fixtures)

NOVA_PYTHON = os.environ.get("GPUVIRT_NOVA_PYTHON", os.path.join(REPO, ".build", "nova-venv", "bin", "python"))


def require_program(name, package):
    path = shutil.which(name)
    if path is None:
        pytest.fail("%s is not installed: install the Debian package %s (make deps does)" % (name, package))
    return path


def collections_path():
    """The collections path that exposes this checkout as gpuvirt.host (made by tests/conftest.py)."""
    for path in sys.path:
        if "gpuvirt-collections-" in path:
            return path
    raise RuntimeError("tests/conftest.py did not expose the checkout as a collection")


def make_fleet(base, names, reboot_pending=()):
    """An inventory of fixture hosts, each a local host reading its own tree (``gpuvirt_root``)."""
    lines = ["[fleet]"]
    for name in names:
        root = os.path.join(base, "hosts", name)
        hostgen.build_host(hostgen.load_description(name), root)
        if name in reboot_pending:
            os.makedirs(os.path.join(root, "run"), exist_ok=True)
            open(os.path.join(root, "run", "reboot-required"), "w").close()
        lines.append(
            "%s ansible_connection=local gpuvirt_root=%s ansible_python_interpreter=%s" % (name, root, sys.executable)
        )
    path = os.path.join(base, "inventory.ini")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def run_report(inventory, report_dir, limit=None, extra_vars=None, env=None, check=True, options=()):
    """Run ``gpuvirt.host.report`` by its collection name, as an installed collection is run."""
    argv = [
        os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
        "-i",
        inventory,
        "gpuvirt.host.report",
        "-e",
        "gpuvirt_report_dir=%s" % report_dir,
    ]
    if limit:
        argv += ["--limit", limit]
    argv += list(options)
    for key, value in (extra_vars or {}).items():
        argv += ["-e", "%s=%s" % (key, value)]
    environment = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=collections_path(),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_HOST_KEY_CHECKING="False",
        **(env or {}),
    )
    run = subprocess.run(argv, capture_output=True, text=True, check=False, env=environment, timeout=900)
    if check:
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    return run
