# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small simulator of the kernel's mediated-device core for fixture trees.

Plain files do not react to writes, so the tests route the collection's sysfs writes through this
simulator. It follows ``Documentation/ABI/testing/sysfs-bus-vfio-mdev`` and the mdev core:

- writing a UUID to ``<parent>/mdev_supported_types/<type>/create`` makes the device directory
  ``<parent dir>/<uuid>`` with ``mdev_type`` and ``iommu_group`` links and a ``remove`` attribute,
  the ``sys/bus/mdev/devices/<uuid>`` link and the type's ``devices/<uuid>`` link, a group under
  ``sys/kernel/iommu_groups`` (VFIO's own: ``name`` ``vfio-noiommu``, ``type`` ``unknown``) and its
  ``dev/vfio/<group>`` node; a malformed UUID is ``EINVAL``, an existing one ``EEXIST``, a full pool
  ``ENOSPC``;
- writing ``1`` to ``sys/bus/mdev/devices/<uuid>/remove`` undoes all of that (``EBUSY`` while a
  process in ``proc/*/fd`` holds the group);
- each parent's types draw on one pool: type T costs ``size / available_instances(T)`` as first
  read, and every create or remove rewrites ``available_instances`` of *all* types of the parent
  (``floor(free / cost)``), like mbochs's memory or a GPU's framebuffer. ``configure_pool`` sets
  sizes and costs explicitly; ``refuse_after`` makes the kernel refuse a later create, to exercise
  roll-back when the refusal could not be predicted.

The simulator keeps its bookkeeping in ``<root>/.kernel-sim.json`` so that module runs in other
processes (``ansible-playbook`` through ``tests/sim/site/sitecustomize.py``) see the same pools.
Writes are intercepted at ``os.open``/``os.write`` for paths below the root that a handler claims;
everything else goes to the real functions.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re

STATE_FILE = ".kernel-sim.json"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_CREATE = re.compile(r"sys/class/mdev_bus/([^/]+)/mdev_supported_types/([^/]+)/create\Z")
_REMOVE = re.compile(r"sys/bus/mdev/devices/([^/]+)/remove\Z")


def _fail(code):
    raise OSError(code, os.strerror(code))


class KernelSim:
    """Reacts to writes below ``root`` the way the kernel would. Extra handlers may be added
    with :meth:`add_handler` (``pattern`` matched against the path relative to the root)."""

    def __init__(self, root):
        self.root = os.path.realpath(root)
        self.handlers = [(_CREATE, self._create), (_REMOVE, self._remove)]
        self.writes = []  # (relative path, value) in order, for assertions

    # -- state ---------------------------------------------------------------------------------

    def _state_path(self):
        return os.path.join(self.root, STATE_FILE)

    def load(self):
        try:
            with open(self._state_path(), encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            return {"pools": {}, "refuse_after": {}, "next_group": 1000}

    def save(self, state):
        with open(self._state_path(), "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=1, sort_keys=True)

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def parent_dir(self, parent):
        return os.path.realpath(self.path("sys/class/mdev_bus", parent))

    def types_dir(self, parent):
        return os.path.join(self.parent_dir(parent), "mdev_supported_types")

    def _read_available(self, parent, type_id):
        with open(os.path.join(self.types_dir(parent), type_id, "available_instances")) as handle:
            return int(handle.read().strip())

    def configure_pool(self, parent, size, costs):
        """Give ``parent`` a pool of ``size`` units; ``costs`` maps each type id to its units."""
        state = self.load()
        used = sum(costs.get(m["type"], 0) for m in self._mdevs_of(parent))
        state["pools"][parent] = {"size": size, "used": used, "costs": dict(costs)}
        self.save(state)
        self._publish(parent, state["pools"][parent])

    def refuse_after(self, parent, creations, code=errno.ENOSPC):
        """Let ``creations`` more creates succeed on ``parent``, then refuse with ``code``."""
        state = self.load()
        state["refuse_after"][parent] = [creations, code]
        self.save(state)

    def _pool(self, state, parent):
        pool = state["pools"].get(parent)
        if pool is not None:
            return pool
        available = {t: self._read_available(parent, t) for t in sorted(os.listdir(self.types_dir(parent)))}
        positive = [a for a in available.values() if a > 0]
        size = math.lcm(*positive) if positive else 1
        costs = {t: (size // a if a > 0 else size + 1) for t, a in available.items()}
        used = sum(costs.get(m["type"], 0) for m in self._mdevs_of(parent))
        pool = {"size": size + used, "used": used, "costs": costs}
        state["pools"][parent] = pool
        return pool

    def _publish(self, parent, pool):
        free = pool["size"] - pool["used"]
        for type_id, cost in pool["costs"].items():
            with open(os.path.join(self.types_dir(parent), type_id, "available_instances"), "w") as handle:
                handle.write("%d\n" % max(0, free // cost))

    def _mdevs_of(self, parent):
        found = []
        bus = self.path("sys/bus/mdev/devices")
        for name in sorted(os.listdir(bus)) if os.path.isdir(bus) else []:
            real = os.path.realpath(os.path.join(bus, name))
            if os.path.basename(os.path.dirname(real)) == parent:
                found.append({"uuid": name, "type": os.path.basename(os.readlink(os.path.join(real, "mdev_type")))})
        return found

    def holders_of_group(self, group):
        node = "/dev/vfio/%s" % group
        pids = []
        proc = self.path("proc")
        for pid in os.listdir(proc) if os.path.isdir(proc) else []:
            fd_dir = os.path.join(proc, pid, "fd")
            for fd in os.listdir(fd_dir) if os.path.isdir(fd_dir) else []:
                with contextlib.suppress(OSError):
                    if os.readlink(os.path.join(fd_dir, fd)) == node:
                        pids.append(int(pid))
        return pids

    # -- kernel behaviour ------------------------------------------------------------------------

    def _create(self, match, value):
        parent, type_id = match.group(1), match.group(2)
        text = value.decode("ascii", "replace").strip().lower()
        if not _UUID.match(text):
            _fail(errno.EINVAL)
        if os.path.lexists(self.path("sys/bus/mdev/devices", text)):
            _fail(errno.EEXIST)
        state = self.load()
        pool = self._pool(state, parent)
        refusal = state["refuse_after"].get(parent)
        if refusal is not None:
            if refusal[0] <= 0:
                _fail(refusal[1])
            refusal[0] -= 1
        cost = pool["costs"].get(type_id)
        if cost is None or pool["used"] + cost > pool["size"]:
            self.save(state)
            _fail(errno.ENOSPC)
        pool["used"] += cost
        group = str(state["next_group"])
        state["next_group"] += 1
        self.save(state)

        device = os.path.join(self.parent_dir(parent), text)
        os.makedirs(device)
        os.symlink("../mdev_supported_types/%s" % type_id, os.path.join(device, "mdev_type"))
        with open(os.path.join(device, "remove"), "w") as handle:
            handle.write("")
        group_dir = self.path("sys/kernel/iommu_groups", group, "devices")
        os.makedirs(group_dir, exist_ok=True)
        for name, value in (("name", "vfio-noiommu\n"), ("type", "unknown\n")):
            with open(os.path.join(os.path.dirname(group_dir), name), "w") as handle:
                handle.write(value)
        os.symlink(os.path.relpath(group_dir[: -len("/devices")], device), os.path.join(device, "iommu_group"))
        os.symlink(os.path.relpath(device, group_dir), os.path.join(group_dir, text))
        bus = self.path("sys/bus/mdev/devices")
        os.makedirs(bus, exist_ok=True)
        os.symlink(os.path.relpath(device, bus), os.path.join(bus, text))
        type_devices = os.path.join(self.types_dir(parent), type_id, "devices")
        os.makedirs(type_devices, exist_ok=True)
        os.symlink(os.path.relpath(device, type_devices), os.path.join(type_devices, text))
        os.makedirs(self.path("dev/vfio"), exist_ok=True)
        with open(self.path("dev/vfio", group), "w") as handle:
            handle.write("")
        self._publish(parent, pool)

    def _remove(self, match, value):
        name = match.group(1)
        if value.decode("ascii", "replace").strip() != "1":
            _fail(errno.EINVAL)
        link = self.path("sys/bus/mdev/devices", name)
        device = os.path.realpath(link)
        parent = os.path.basename(os.path.dirname(device))
        type_id = os.path.basename(os.readlink(os.path.join(device, "mdev_type")))
        group_link = os.path.join(device, "iommu_group")
        group = os.path.basename(os.readlink(group_link)) if os.path.islink(group_link) else None
        if group is not None and self.holders_of_group(group):
            _fail(errno.EBUSY)
        state = self.load()
        pool = self._pool(state, parent)
        pool["used"] -= pool["costs"].get(type_id, 0)
        self.save(state)
        for path in (link, os.path.join(self.types_dir(parent), type_id, "devices", name)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if group is not None:
            group_dir = self.path("sys/kernel/iommu_groups", group)
            for path in (os.path.join(group_dir, "devices", name), self.path("dev/vfio", group)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(group_dir, "devices"))
                for name in ("name", "type"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(group_dir, name))
                os.rmdir(group_dir)
        for entry in os.listdir(device):
            os.unlink(os.path.join(device, entry))
        os.rmdir(device)
        self._publish(parent, pool)

    # -- interception ----------------------------------------------------------------------------

    def add_handler(self, pattern, handler):
        """``handler(match, value_bytes)`` reacts to a write; raise OSError to refuse it."""
        self.handlers.append((re.compile(pattern) if isinstance(pattern, str) else pattern, handler))

    def claim(self, path):
        """The handler and match for a write to ``path``, or None when the sim does not own it."""
        absolute = os.path.abspath(path)
        if not absolute.startswith(self.root + os.sep):
            return None
        relative = absolute[len(self.root) + 1 :]
        for pattern, handler in self.handlers:
            match = pattern.match(relative)
            if match:
                return handler, match, relative
        return None

    @contextlib.contextmanager
    def active(self):
        """Route the claimed writes of this process through the simulator while inside."""
        real_open, real_write, real_close = os.open, os.write, os.close
        pending = {}

        def sim_open(path, flags, *args, **kwargs):
            claimed = self.claim(os.fsdecode(path)) if flags & (os.O_WRONLY | os.O_RDWR) else None
            if claimed is None:
                return real_open(path, flags, *args, **kwargs)
            if not os.path.lexists(os.path.join(self.root, claimed[2])):
                _fail(errno.ENOENT)
            fd = real_open(os.devnull, os.O_WRONLY)
            pending[fd] = claimed
            return fd

        def sim_write(fd, data):
            claimed = pending.get(fd)
            if claimed is None:
                return real_write(fd, data)
            handler, match, relative = claimed
            self.writes.append((relative, bytes(data).decode("ascii", "replace")))
            handler(match, bytes(data))
            return len(data)

        def sim_close(fd):
            pending.pop(fd, None)
            return real_close(fd)

        os.open, os.write, os.close = sim_open, sim_write, sim_close
        try:
            yield self
        finally:
            os.open, os.write, os.close = real_open, real_write, real_close
