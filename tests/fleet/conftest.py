# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A simulated fleet: inventory hosts with ``ansible_connection: local``, each with its own fixture tree.

Each host's ``gpuvirt_root`` is a kernel-shaped tree (``tests/fixtures/hostgen.py``) with a GRUB
configuration. Its ``ansible_python_interpreter`` is a small script that puts the kernel simulators
(``tests/sim/site``) in front of the modules for that tree only, so that binding a driver, creating
an mdev or enabling VFs behaves as the kernel would. The playbooks run as users run them:
``ansible-playbook gpuvirt.host.<name>`` from a collections path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
import yaml

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TESTS)
sys.path.insert(0, os.path.join(TESTS, "fixtures"))
import hostgen  # noqa: E402

BIN = os.path.dirname(sys.executable)
SIM_SITE = os.path.join(TESTS, "sim", "site")
GRUB = 'GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX=""\n'
UPDATE_GRUB = "#!/bin/sh\nexec grub-mkconfig -o /boot/grub/grub.cfg\n"
# The reboot stand-in the tests hand to the rollout (gpuvirt_rollout_reboot_tasks).
REBOOT_TASKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files", "reboot.yml")
DRAIN_TASKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files", "drain.yml")


def _collections_path():
    """The checkout as ``ansible_collections/gpuvirt/host`` on a collections path of its own."""
    base = tempfile.mkdtemp(prefix="gpuvirt-fleet-collections-")
    os.makedirs(os.path.join(base, "ansible_collections", "gpuvirt"))
    os.symlink(REPO, os.path.join(base, "ansible_collections", "gpuvirt", "host"))
    return base


COLLECTIONS_BASE = _collections_path()


def with_grub(description):
    """A host description with a Debian GRUB set-up in its tree (what kernel_cmdline edits)."""
    described = dict(description) if isinstance(description, dict) else {"extends": description}
    files = dict(described.get("files") or {})
    files.setdefault("etc/default/grub", GRUB)
    files.setdefault("usr/sbin/update-grub", UPDATE_GRUB)
    files.setdefault("etc/machine-id", "5f0c1d2e3a4b4c5d8e9f0a1b2c3d4e5f\n")
    described["files"] = files
    return described


def _executable(path):
    os.chmod(path, 0o755)


class Fleet:
    """Hosts, their trees and an inventory; ``run()`` plays a playbook against them."""

    def __init__(self, base):
        self.base = base
        self.hosts = {}
        self.descriptions = {}
        self.host_vars = {}

    def add(self, name, description, **host_vars):
        described = with_grub(description)
        root = hostgen.build_host(described, os.path.join(self.base, name, "root"))
        _executable(os.path.join(root, "usr/sbin/update-grub"))
        os.makedirs(os.path.join(root, "etc/systemd/system"), exist_ok=True)
        with open(os.path.join(self.base, name, "description.json"), "w") as handle:
            json.dump(described, handle)
        interpreter = os.path.join(self.base, name, "python")
        with open(interpreter, "w") as handle:
            handle.write(
                "#!/bin/sh\nGPUVIRT_KERNEL_SIM=%s PYTHONPATH=%s exec %s \"$@\"\n" % (root, SIM_SITE, sys.executable)
            )
        _executable(interpreter)
        self.hosts[name] = root
        self.descriptions[name] = described
        self.host_vars[name] = dict(
            ansible_connection="local", ansible_python_interpreter=interpreter, gpuvirt_root=root, **host_vars
        )
        return root

    def inventory(self, group_vars=None):
        path = os.path.join(self.base, "inventory.yml")
        data = {"all": {"children": {"gpu_hosts": {"hosts": self.host_vars}}, "vars": group_vars or {}}}
        with open(path, "w") as handle:
            yaml.safe_dump(data, handle)
        return path

    def env(self):
        return dict(
            os.environ,
            ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_BASE,
            ANSIBLE_HOME=os.path.join(self.base, "ansible-home"),
            ANSIBLE_LOCAL_TEMP=os.path.join(self.base, "ansible-tmp"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_RETRY_FILES_ENABLED="0",
            ANSIBLE_HOST_KEY_CHECKING="0",
            ANSIBLE_LOCALHOST_WARNING="0",
            ANSIBLE_DEPRECATION_WARNINGS="0",
            ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        )

    def run(self, playbook, *args, check=False, extra_vars=None, group_vars=None, timeout=900):
        """``(rc, recap, output)``: recap maps each host to its ok/changed/failed/... counts."""
        command = [os.path.join(BIN, "ansible-playbook"), "-i", self.inventory(group_vars), playbook]
        command += ["--check", "--diff"] if check else []
        if extra_vars is not None:
            command += ["-e", json.dumps(extra_vars)]
        command += list(args)
        done = subprocess.run(command, env=self.env(), capture_output=True, text=True, timeout=timeout, check=False)
        output = done.stdout + done.stderr
        return done.returncode, recap_of(output), output


def recap_of(output):
    recap = {}
    for match in re.finditer(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+"
                             r"skipped=(\d+)\s+rescued=(\d+)\s+ignored=(\d+)", output, re.M):
        keys = ("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored")
        recap[match.group(1)] = dict(zip(keys, map(int, match.groups()[1:])))
    return recap


@pytest.fixture
def fleet():
    shm = "/dev/shm"
    base = tempfile.mkdtemp(prefix="gpuvirt-fleet-", dir=shm if os.access(shm, os.W_OK) else None)
    yield Fleet(base)
    shutil.rmtree(base, ignore_errors=True)
