# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write points of a module run, and faults injected at them.

A *write point* is a call that changes the file system: opening a file for writing (``os.open``
or ``open``), ``os.write``, ``rename``/``replace``, ``symlink``, ``unlink``, ``rmdir``, ``chmod``.
The hooks count them in one run; a later run is killed (``os._exit``, no clean-up, as SIGKILL),
failed with an ``OSError`` or paused at one of them.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import importlib
import json
import os
import sys
import time

import ansible.module_utils._internal as module_utils_internal
from ansible.module_utils.common import warnings as module_warnings
from ansible.module_utils.testing import patch_module_args

from ansible_collections.gpuvirt.host.tests.reliability.support import defaults, simulated

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class Point:
    """One write point: its kind (``open``, ``write``, ``rename``...) and the path it concerns."""

    def __init__(self, kind, path):
        self.kind = kind
        self.path = path

    def __repr__(self):
        return "%s %s" % (self.kind, self.path)


@contextlib.contextmanager
def write_points(root, on_point):
    """Call ``on_point(Point)`` before every write point below ``root`` (sysfs writes included)."""
    real = {
        name: getattr(os, name)
        for name in ("open", "write", "close", "rename", "replace", "symlink", "unlink", "rmdir", "chmod")
    }
    real_open = builtins.open
    base = os.path.realpath(root)
    fd_paths = {}
    # The simulated kernel does its own file work inside the module's call (a VF's whole directory
    # appears on one write to sriov_numvfs): only the module's own calls, not nested ones, are points.
    depth = [0]

    def point(kind, path, call, *args, **kwargs):
        if depth[0]:
            return call(*args, **kwargs)
        if path is not None:
            on_point(Point(kind, path))
        depth[0] += 1
        try:
            return call(*args, **kwargs)
        finally:
            depth[0] -= 1

    def inside(path):
        if isinstance(path, int):
            return fd_paths.get(path)
        text = os.fsdecode(path)
        full = os.path.realpath(text) if os.path.isabs(text) else os.path.realpath(os.path.join(os.getcwd(), text))
        return full if full == base or full.startswith(base + "/") else None

    def make(name, path_arg=0):
        def hooked(*args, **kwargs):
            path = inside(args[path_arg]) if len(args) > path_arg and not depth[0] else None
            return point(name, path, real[name], *args, **kwargs)

        return hooked

    def hooked_open(path, flags, *args, **kwargs):
        full = inside(path) if flags & _WRITE_FLAGS and not depth[0] else None
        fd = point("open", full, real["open"], path, flags, *args, **kwargs)
        if full is not None:
            fd_paths[fd] = full
        return fd

    def hooked_write(fd, data):
        return point("write", None if depth[0] else fd_paths.get(fd), real["write"], fd, data)

    def hooked_close(fd):
        fd_paths.pop(fd, None)
        return point("close", None, real["close"], fd)

    def hooked_builtin_open(file, mode="r", *args, **kwargs):
        full = None
        if not depth[0] and not isinstance(file, int) and any(c in mode for c in "wax+"):
            full = inside(file)
        return point("open", full, real_open, file, mode, *args, **kwargs)

    hooks = {name: make(name) for name in ("rename", "replace", "symlink", "unlink", "rmdir", "chmod")}
    hooks["symlink"] = make("symlink", 1)
    hooks["open"] = hooked_open
    hooks["write"] = hooked_write
    hooks["close"] = hooked_close
    for name, hook in hooks.items():
        setattr(os, name, hook)
    builtins.open = hooked_builtin_open
    try:
        yield
    finally:
        for name, function in real.items():
            setattr(os, name, function)
        builtins.open = real_open


def call_module(name, root, args, check_mode=False, on_point=None, diff=False):
    """Run module ``name`` in this process with its kernel simulated, calling ``on_point`` at each
    write point; return its result dict (``rc`` 0 or 1)."""
    with simulated(name, root):
        if on_point is None:
            return _call(name, root, args, check_mode, diff)
        with write_points(root, on_point):
            return _call(name, root, args, check_mode, diff)


def _call(name, root, args, check_mode, diff):
    module_utils_internal.is_controller = False
    module_warnings._global_warnings.clear()
    module = importlib.import_module("ansible_collections.gpuvirt.host.plugins.modules." + name)
    module_args = defaults(name, dict(args, root=root))
    module_args["_ansible_check_mode"] = check_mode
    module_args["_ansible_diff"] = diff
    stdout = sys.stdout
    captured = _Capture()
    sys.stdout = captured
    try:
        with patch_module_args(module_args):
            try:
                module.main()
                code = 0
            except SystemExit as done:
                code = done.code
    finally:
        sys.stdout = stdout
    result = json.loads(captured.text or "{}")
    result["rc"] = code
    return result


class _Capture:
    def __init__(self):
        self.parts = []

    def write(self, text):
        self.parts.append(text)
        return len(text)

    def flush(self):
        pass

    @property
    def text(self):
        return "".join(self.parts)


def count_points(name, root, args):
    """The write points of one clean run of ``name`` on ``root`` (which it changes)."""
    points = []
    result = call_module(name, root, args, on_point=points.append)
    return points, result


def run_killed(name, root, args, kill_at):
    """Run ``name`` in a child process that dies (``os._exit``) at write point ``kill_at`` (1-based)."""
    pid = os.fork()
    if pid == 0:  # the child: no clean-up of any kind once killed
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            seen = [0]

            def on_point(point):
                seen[0] += 1
                if seen[0] == kill_at:
                    os._exit(137)

            call_module(name, root, args, on_point=on_point)
        finally:
            os._exit(0)
    _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def run_failing(name, root, args, kind, fail_at, code):
    """Run ``name`` in-process; the ``fail_at``-th write point of ``kind`` raises ``OSError(code)``."""
    seen = [0]

    def on_point(point):
        if point.kind in kind and not point.path.startswith(os.path.realpath(root) + "/sys/"):
            seen[0] += 1
            if seen[0] == fail_at:
                raise OSError(code, os.strerror(code), point.path)

    return call_module(name, root, args, on_point=on_point)


def run_paused(name, root, args, paused_flag, resume_flag, wait=3.0):
    """Fork a run of ``name`` that pauses at its first write point outside sysfs (creating
    ``paused_flag``) until ``resume_flag`` exists or ``wait`` seconds pass; return the child's pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            paused = [False]
            sysfs = os.path.realpath(root) + "/sys/"

            def on_point(point):
                if paused[0] or point.path.startswith(sysfs):
                    return
                paused[0] = True
                with open(paused_flag, "w"):
                    pass
                deadline = time.monotonic() + wait
                while not os.path.exists(resume_flag) and time.monotonic() < deadline:
                    time.sleep(0.02)

            result = call_module(name, root, args, on_point=on_point)
            code = 0 if result["rc"] == 0 else 3
        finally:
            if not os.path.exists(paused_flag):
                with open(paused_flag, "w"):
                    pass
            os._exit(code)
    return pid


def wait_child(pid):
    _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


ENOSPC = errno.ENOSPC
EIO = errno.EIO
