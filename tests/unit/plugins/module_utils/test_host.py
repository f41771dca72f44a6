# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import host as host_model
from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError
from ansible_collections.gpuvirt.host.plugins.module_utils.host import (
    Host,
    HostRootError,
    LockError,
    OutsideRootError,
    inside,
)


def test_root_must_be_an_existing_directory_and_is_never_created(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(HostRootError, match="does not exist.*never created"):
        Host(str(missing))
    assert not missing.exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(HostRootError, match="is not a directory"):
        Host(str(a_file))
    with pytest.raises(HostRootError):
        Host("")
    assert issubclass(HostRootError, GpuvirtError)


def test_live_root_is_only_slash(tmp_path):
    assert Host("/").live is True
    assert Host(str(tmp_path)).live is False


def test_paths_resolve_inside_root(tmp_path):
    root = str(tmp_path)
    (tmp_path / "etc/real").mkdir(parents=True)
    os.symlink("real", str(tmp_path / "etc/linked"))
    assert inside(root, "etc/linked/file") == os.path.join(root, "etc/real/file")
    assert inside(root, "/etc/gpuvirt/host-state.json") == os.path.join(root, "etc/gpuvirt/host-state.json")
    assert Host(root).path("etc") == os.path.join(root, "etc")


@pytest.mark.parametrize("target", ["../../..", "../../outside", "../../../tmp"])
def test_a_link_out_of_root_is_refused(tmp_path, target):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(target, str(root / "etc/gpuvirt"))
    with pytest.raises(OutsideRootError, match="leads out of root"):
        Host(str(root)).path("etc/gpuvirt/host-state.json")
    with pytest.raises(OutsideRootError):
        inside(str(root), "../escape")


def test_an_absolute_link_is_taken_below_root_and_loops_are_refused(tmp_path):
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "etc"))
    os.symlink("/var/lib/gpuvirt", os.path.join(root, "etc/gpuvirt"))
    assert inside(root, "etc/gpuvirt/x") == os.path.join(root, "var/lib/gpuvirt/x")
    os.symlink("loop", os.path.join(root, "etc/loop"))
    with pytest.raises(OutsideRootError, match="too many levels"):
        inside(root, "etc/loop/x")


def test_programs_are_looked_up_below_a_tree_root(tmp_path):
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "usr/sbin"))
    program = os.path.join(root, "usr/sbin/driverctl")
    with open(program, "w") as handle:
        handle.write("#!/bin/sh\n")
    host = Host(root)
    assert host.which("driverctl") is None  # not executable
    os.chmod(program, 0o755)
    assert host.which("driverctl") == program
    assert host.display(program) == "/usr/sbin/driverctl"
    assert host.which("grubby") is None


def test_a_live_host_asks_the_module(monkeypatch):
    class Module:
        def get_bin_path(self, name):
            return "/usr/bin/" + name

    assert Host("/", Module()).which("systemctl") == "/usr/bin/systemctl"


def test_the_lock_leaves_no_trace_and_keeps_an_existing_state_dir(tmp_path):
    host = Host(str(tmp_path))
    with host.lock():
        assert os.path.isfile(os.path.join(host.state_dir, ".lock"))
    assert os.listdir(str(tmp_path)) == []
    os.makedirs(host.state_dir)
    with host.lock():
        pass
    assert os.listdir(host.state_dir) == []


def test_a_second_run_waits_then_fails_naming_the_holder(tmp_path):
    host = Host(str(tmp_path))
    with host.lock():
        started = time.monotonic()
        holder = r"another gpuvirt.host run \(pid %d\) holds" % os.getpid()
        with pytest.raises(LockError, match=holder), Host(str(tmp_path)).lock(wait=0.3):
            pass
        assert time.monotonic() - started >= 0.3


def test_check_mode_reads_a_read_only_root_unlocked(tmp_path, monkeypatch):
    def refuse(directory, wait):
        raise LockError("cannot create the lock file", errno=30)

    monkeypatch.setattr(host_model, "_acquire", refuse)
    with Host(str(tmp_path)).lock(check_mode=True):
        pass
    with pytest.raises(LockError), Host(str(tmp_path)).lock():
        pass


def _add_one(root, rounds):
    path = os.path.join(root, "counter")
    for _round in range(rounds):
        with Host(root).lock():
            with open(path) as handle:
                value = int(handle.read())
            time.sleep(0.001)
            with open(path, "w") as handle:
                handle.write(str(value + 1))


def test_concurrent_runs_lose_no_update(tmp_path):
    root = str(tmp_path)
    with open(os.path.join(root, "counter"), "w") as handle:
        handle.write("0")
    workers = [multiprocessing.Process(target=_add_one, args=(root, 40)) for _worker in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    with open(os.path.join(root, "counter")) as handle:
        assert handle.read() == "120"
    for _directory, _dirs, names in os.walk(os.path.join(root, "etc")):
        assert ".lock" not in names
