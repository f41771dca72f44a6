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

import hashlib
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
REBOOT_SIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reboot_sim.py")


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


def _tree_digest(root):
    digest = hashlib.sha256()
    for base, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if name == ".kernel-sim.json":
                continue
            path = os.path.join(base, name)
            digest.update(path.encode())
            if not os.path.islink(path):
                with open(path, "rb") as handle:
                    digest.update(handle.read())
    return digest.hexdigest()


class Fleet:
    """Hosts, their trees and an inventory; ``run()`` plays a playbook against them."""

    def __init__(self, base):
        self.base = base
        self.hosts = {}
        self.descriptions = {}
        self.host_vars = {}

    def add(self, name, description, **host_vars):
        described = with_grub(description)
        tree_description = {key: value for key, value in described.items() if not key.startswith("sim_")}
        root = hostgen.build_host(tree_description, os.path.join(self.base, name, "root"))
        _executable(os.path.join(root, "usr/sbin/update-grub"))
        if "etc/default/grub" not in (description.get("files") or {} if isinstance(description, dict) else {}):
            # The boot configuration the host booted with: its running command line.
            with open(os.path.join(root, "proc/cmdline")) as handle:
                arguments = [arg for arg in handle.read().split()
                             if not arg.startswith(("BOOT_IMAGE=", "root=")) and arg != "ro"]
            with open(os.path.join(root, "etc/default/grub"), "w") as handle:
                handle.write(GRUB.replace('DEFAULT="quiet"', 'DEFAULT="%s"' % " ".join(arguments)))
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

    def reboot_tasks(self):
        """The reboot stand-in handed to the rollout (gpuvirt_rollout_reboot_tasks)."""
        path = os.path.join(self.base, "reboot.yml")
        tasks = [{
            "name": "Reboot the simulated host",
            "ansible.builtin.command": {"argv": [sys.executable, REBOOT_SIM, "{{ gpuvirt_root | dirname }}"]},
            "changed_when": True,
        }]
        with open(path, "w") as handle:
            yaml.safe_dump(tasks, handle)
        return path

    def drain_tasks(self, release=True):
        """A drain hook: stops the simulated guests (their processes go) when ``release``."""
        path = os.path.join(self.base, "drain.yml" if release else "drain-noop.yml")
        tasks = [{
            "name": "Record the drain",
            "ansible.builtin.shell": "echo drained >> {{ gpuvirt_root | dirname }}/drains" + (
                " && rm -rf {{ gpuvirt_root }}/proc/[0-9]*" if release else ""),
            "changed_when": True,
        }]
        with open(path, "w") as handle:
            yaml.safe_dump(tasks, handle)
        return path

    def digests(self):
        """A digest of each host's files (the simulators' own bookkeeping file aside), by host."""
        return {name: _tree_digest(root) for name, root in self.hosts.items()}

    def reboots(self, name):
        path = os.path.join(self.base, name, "reboots")
        if not os.path.exists(path):
            return 0
        with open(path) as handle:
            return len(handle.read().splitlines())

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

    def run(self, playbook, *args, check=False, extra_vars=None, group_vars=None, env=None, timeout=900):
        """``(rc, recap, output)``: recap maps each host to its ok/changed/failed/... counts."""
        command = [os.path.join(BIN, "ansible-playbook"), "-i", self.inventory(group_vars), playbook]
        command += ["--check", "--diff"] if check else []
        if extra_vars is not None:
            command += ["-e", json.dumps(extra_vars)]
        command += list(args)
        done = subprocess.run(
            command, env=dict(self.env(), **(env or {})), capture_output=True, text=True, timeout=timeout, check=False
        )
        output = done.stdout + done.stderr
        return done.returncode, recap_of(output), output


def _untag(value):
    if isinstance(value, dict):
        if "__ansible_type" in value and "value" in value:
            return _untag(value["value"])
        return {key: _untag(item) for key, item in value.items() if key != "__ansible_type"}
    if isinstance(value, list):
        return [_untag(item) for item in value]
    return value


def cached_facts(cache_dir, host):
    """The facts the jsonfile fact cache holds for ``host`` (the cache AWX's fact caching uses)."""
    names = [name for name in os.listdir(cache_dir) if name == host or name.endswith("_" + host)]
    assert len(names) == 1, os.listdir(cache_dir)
    with open(os.path.join(cache_dir, names[0])) as handle:
        data = json.load(handle)
    if "__payload__" in data:
        data = json.loads(data["__payload__"])
    return _untag(data)


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
