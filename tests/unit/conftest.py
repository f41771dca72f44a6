# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run real modules in-process, the way community.general's unit tests do."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import sys
import tempfile

import ansible.module_utils._internal as module_utils_internal
import pytest
from ansible.module_utils.common import warnings as module_warnings
from ansible.module_utils.testing import patch_module_args


def pytest_collection_modifyitems(items):
    """Run the role tests first. Each runs whole playbooks (20-80 s); started first, they are spread
    over the parallel workers with the short tests filling in after them, instead of one worker
    running the last long playbook alone at the end."""
    items.sort(key=lambda item: not item.nodeid.startswith("tests/unit/roles/"))


class ModuleResult(dict):
    """The JSON a module printed, plus ``rc`` (0 for exit_json, 1 for fail_json)."""

    @property
    def failed(self):
        return bool(self.get("failed"))


def _run(name, args, capsys, monkeypatch, check_mode=False, diff=False):
    # Once a test imports controller code, ansible flags the process as the controller and
    # module.warn() stops reaching the result; a module on a target never runs that way.
    monkeypatch.setattr(module_utils_internal, "is_controller", False)
    module_warnings._global_warnings.clear()
    module = importlib.import_module("ansible_collections.gpuvirt.host.plugins.modules." + name)
    module_args = dict(args)
    module_args["_ansible_check_mode"] = check_mode
    module_args["_ansible_diff"] = diff
    capsys.readouterr()
    with patch_module_args(module_args), pytest.raises(SystemExit) as exit_info:
        module.main()
    result = ModuleResult(json.loads(capsys.readouterr().out))
    result["rc"] = exit_info.value.code
    return result


@pytest.fixture
def run_module(capsys, monkeypatch):
    """``run_module('topology_info', {'root': tree}, check_mode=False, diff=False)``."""

    def runner(name, args, check_mode=False, diff=False):
        return _run(name, args, capsys, monkeypatch, check_mode=check_mode, diff=diff)

    return runner


sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures"))
import hostgen  # noqa: E402  (tests/fixtures, put on the path just above)


@pytest.fixture(scope="session")
def _host_tree_base(tmp_path_factory):
    """Where make_host builds trees: tmpfs when there is one (tens of times faster to fill than a
    disk-backed /tmp, and closest to sysfs), else pytest's temporary directory."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        base = tempfile.mkdtemp(prefix="gpuvirt-hosts-", dir=shm)
        yield base
        shutil.rmtree(base, ignore_errors=True)
    else:
        yield str(tmp_path_factory.mktemp("hosts"))


@pytest.fixture
def make_host(_host_tree_base):
    """Build a kernel-shaped host tree and return its root path (a str).

    ``make_host("desktop_dgpu")`` builds ``tests/fixtures/hosts/desktop_dgpu.yml``;
    ``make_host({...})`` builds a description dict (see ``tests/fixtures/hostgen.py``);
    keyword arguments extend a named host: ``make_host("desktop_dgpu", files={...},
    patch_devices={"01:00.0": {"driver": "vfio-pci"}})``. Every call gets a fresh tree, removed after
    the test (a whole run builds hundreds, each a few thousand inodes of tmpfs).
    """
    built = []

    def factory(description="desktop_dgpu", **changes):
        if changes:
            if isinstance(description, str):
                description = dict(changes, extends=description)
            else:
                description = hostgen._merge(hostgen.expand(dict(description)), changes)
        built.append(tempfile.mkdtemp(prefix="host-", dir=_host_tree_base))
        return hostgen.build_host(description, os.path.join(built[-1], "root"))

    yield factory
    for directory in built:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def unreadable_fds(monkeypatch):
    """``unreadable_fds(root, {pid: errno.EACCES})``: the modules' listing of ``<root>/proc/<pid>/fd``
    fails with that errno, as the kernel answers: EACCES when the reader may not ptrace the process (no
    root, no CAP_SYS_PTRACE in a container, hidepid), ENOENT when the process exited during the scan.

    Root reads a tree's files whatever their mode, so the tree cannot refuse by itself. The listing is
    the one call that fails on a host, so only :mod:`device_users` (which scans ``/proc`` for every
    module) sees the refusal; the simulated kernel still sees every process, as a real one does, and
    everything else of the process (its ``comm``) stays in the tree."""
    from ansible_collections.gpuvirt.host.plugins.module_utils import device_users

    denied = {}

    class ModuleView:
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def listdir(path="."):
            if not isinstance(path, int):
                code = denied.get(os.path.abspath(path))
                if code is not None:
                    raise OSError(code, os.strerror(code), path)
            return os.listdir(path)

    monkeypatch.setattr(device_users, "os", ModuleView())

    def deny(root, pids):
        for pid, code in pids.items():
            denied[os.path.abspath(os.path.join(root, "proc", str(pid), "fd"))] = code

    return deny


# A reader of /proc without CAP_SYS_PTRACE (the capabilities Docker leaves a container), outside root's group.
NO_PTRACE = {"cap_eff": "00000000a80425fb", "gid": 1000, "groups": [1000]}


@pytest.fixture
def hidepid():
    """``hidepid(root, hidden=(4242,), options="rw,hidepid=invisible", reader=NO_PTRACE)``: ``<root>/proc``
    becomes a proc mount with those super options (its line in ``proc/self/mountinfo``), read by a
    process whose ``proc/self/status`` shows ``reader`` (see ``hostgen.reader_status``), and the
    processes in ``hidden`` leave its listing, as the kernel leaves out those the reader may not ptrace
    (what they hold, their ``/dev/vfio`` files, stays). The tree is changed, not the modules' view of it."""

    def apply(root, hidden=(4242,), options="rw,hidepid=invisible", reader=None):
        reader = NO_PTRACE if reader is None else reader
        mountinfo = os.path.join(root, "proc/self/mountinfo")
        with open(mountinfo, encoding="utf-8") as handle:
            text = handle.read()
        text, count = re.subn(r"^(\S+ \S+ \S+ \S+ /proc .* - proc \S+ )\S+$", lambda m: m.group(1) + options, text,
                              flags=re.M)
        assert count == 1, text
        with open(mountinfo, "w", encoding="utf-8") as handle:
            handle.write(text)
        with open(os.path.join(root, "proc/self/status"), "w", encoding="utf-8") as handle:
            handle.write(hostgen.reader_status(reader))
        for pid in hidden:
            shutil.rmtree(os.path.join(root, "proc", str(pid)))

    return apply
