# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which processes hold a device open: VFIO files for VMs, and the nodes through which the host itself
uses a device while its host driver drives it.

A device's host nodes, as the kernel names them below the device's sysfs directory:

- DRM: ``drm/cardN`` and ``drm/renderDN`` are ``/dev/dri/cardN`` and ``/dev/dri/renderDN``. A desktop
  compositor opens every GPU's card (GNOME's mutter does, even for a GPU it does not draw on), and
  a compute job opens render nodes;
- framebuffers: ``graphics/fbN`` is ``/dev/fbN``;
- the vendor's own nodes (``VendorBackend.device_nodes``: NVIDIA's ``/dev/nvidiaN``, which CUDA
  programs, nvidia-persistenced and the DCGM exporter hold).

Taking the device from its driver while a process holds one of them pulls it from under that process
or, with a driver that waits for its users (nvidia logs "Attempting to remove device ... with non-zero
usage count!" and waits), leaves the unbinding write, and the run, hanging until they let go.

Public API:

- :func:`open_files` ``(root, select) -> ({key: [{"pid", "comm"}]}, hidden)``: one pass over
  ``/proc/<pid>/fd``; ``select(target)`` maps a descriptor's target to a key (None: not wanted);
  ``hidden`` counts the processes whose descriptors could not be read.
- :func:`host_nodes` ``(root, device) -> list[str]``: the ``/dev`` nodes of ``device`` (a PciDevice).
- :func:`node_users` ``(root, nodes) -> {node: [{"pid", "comm"}]}``.
"""

from __future__ import annotations

import os
import re

from ansible_collections.gpuvirt.host.plugins.module_utils import vendors
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import host_path, list_dir, read_text

_DRM_NODE = re.compile(r"(?:card|renderD)[0-9]+\Z")
_FRAMEBUFFER = re.compile(r"fb[0-9]+\Z")


def open_files(root, select):
    """The processes below ``root``'s ``proc`` holding descriptors that ``select`` keys, sorted by pid."""
    found = {}
    hidden = 0
    proc = host_path(root, "proc")
    for pid in list_dir(proc):
        if not (pid.isascii() and pid.isdigit()):
            continue
        fd_dir = "%s/%s/fd" % (proc, pid)
        try:
            fds = os.listdir(fd_dir)
        except PermissionError:
            hidden += 1
            continue
        except OSError:
            continue
        keys = set()
        for fd in fds:
            try:
                target = os.readlink(fd_dir + "/" + fd)
            except OSError:
                continue
            key = select(target)
            if key is not None:
                keys.add(key)
        if not keys:
            continue
        user = {"pid": int(pid), "comm": read_text("%s/%s/comm" % (proc, pid))}
        for key in keys:
            found.setdefault(key, []).append(user)
    for users in found.values():
        users.sort(key=lambda user: user["pid"])
    return found, hidden


def host_nodes(root, device):
    """The ``/dev`` nodes through which the host uses ``device`` (a PciDevice) now."""
    base = device.path
    nodes = ["/dev/dri/" + name for name in sorted(list_dir(base + "/drm")) if _DRM_NODE.match(name)]
    nodes += ["/dev/" + name for name in sorted(list_dir(base + "/graphics")) if _FRAMEBUFFER.match(name)]
    return nodes + vendors.device_nodes(root, device)


def node_users(root, nodes):
    """``{node: [{"pid", "comm"}]}`` for the ``nodes`` some process holds open (none: no scan)."""
    wanted = set(nodes)
    if not wanted:
        return {}
    users, _hidden = open_files(root, lambda target: target if target in wanted else None)
    return users
