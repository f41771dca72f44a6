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

- :class:`Users`: ``{key: [{"pid", "comm"}]}`` plus ``unreadable``, the processes whose descriptors
  could not be read (``[{"pid", "comm", "error"}]``, ``error`` the errno's name): what they hold is
  unknown, so an empty answer from a scan with any of them means "not known", not "not in use".
- :func:`open_files` ``(root, select) -> Users``: one pass over ``/proc/<pid>/fd``; ``select(target)``
  maps a descriptor's target to a key (None: not wanted).
- :func:`host_nodes` ``(root, device) -> list[str]``: the ``/dev`` nodes of ``device`` (a PciDevice).
- :func:`node_users` ``(root, nodes) -> Users`` (``{node: [{"pid", "comm"}]}``).
- :func:`unknown_users_text` ``(unreadable) -> str``: how many processes could not be inspected, a few
  of them, why and what lets the module see them, for the guards' refusals and warnings.

Unreadable descriptors: the kernel lets a process list and read ``/proc/<pid>/fd`` of another only
when it may ptrace it (``PTRACE_MODE_READ``), and answers EACCES otherwise: as a user other than
root, as root without ``CAP_SYS_PTRACE`` (containers drop it) for a process that is not dumpable
(setuid programs, daemons that clear the flag), or under an LSM that restricts ptrace. A process
that exits during the scan answers ENOENT (ESRCH for some entries): it holds nothing any more, so it
is skipped, not counted.
"""

from __future__ import annotations

import errno
import os
import re

from ansible_collections.gpuvirt.host.plugins.module_utils import vendors
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import host_path, list_dir, read_text

_DRM_NODE = re.compile(r"(?:card|renderD)[0-9]+\Z")
_FRAMEBUFFER = re.compile(r"fb[0-9]+\Z")
# What /proc answers for a process (or a descriptor) that went away during the scan.
_GONE = (errno.ENOENT, errno.ESRCH)
# How many unreadable processes a message names.
_NAMED = 3


class Users(dict):
    """``{key: [{"pid", "comm"}]}`` from one scan, and ``unreadable``: the processes whose descriptors
    could not be read (``[{"pid", "comm", "error"}]``, by pid), whose holdings are unknown."""

    def __init__(self, found=(), unreadable=()):
        super().__init__(found)
        self.unreadable = list(unreadable)


def open_files(root, select):
    """The processes below ``root``'s ``proc`` holding descriptors that ``select`` keys, sorted by pid."""
    found = {}
    unreadable = []
    proc = host_path(root, "proc")
    for pid in list_dir(proc):
        if not (pid.isascii() and pid.isdigit()):
            continue
        fd_dir = "%s/%s/fd" % (proc, pid)
        keys = set()
        try:
            for fd in os.listdir(fd_dir):
                try:
                    target = os.readlink(fd_dir + "/" + fd)
                except OSError as error:
                    if error.errno in _GONE:
                        continue  # closed since the listing
                    raise
                key = select(target)
                if key is not None:
                    keys.add(key)
        except OSError as error:
            if error.errno not in _GONE:
                unreadable.append({
                    "pid": int(pid),
                    "comm": read_text("%s/%s/comm" % (proc, pid)),
                    "error": errno.errorcode.get(error.errno, str(error.errno)),
                })
            continue
        if not keys:
            continue
        user = {"pid": int(pid), "comm": read_text("%s/%s/comm" % (proc, pid))}
        for key in keys:
            found.setdefault(key, []).append(user)
    for users in found.values():
        users.sort(key=lambda user: user["pid"])
    unreadable.sort(key=lambda entry: entry["pid"])
    return Users(found, unreadable)


def unknown_users_text(unreadable):
    """``the open files of 2 processes could not be read (qemu-system-x86 (pid 4242), ...): ...``."""
    named = ", ".join("%s (pid %d)" % (entry.get("comm") or "?", entry["pid"]) for entry in unreadable[:_NAMED])
    if len(unreadable) > _NAMED:
        named += " and %d more" % (len(unreadable) - _NAMED)
    errors = sorted({entry.get("error") or "?" for entry in unreadable})
    if set(errors) <= {"EACCES", "EPERM"}:
        why = (
            "permission denied: reading another process's descriptors needs root with CAP_SYS_PTRACE, which a "
            "container may withhold, and a /proc mounted with hidepid or a security module may refuse it; run the "
            "module as root on the host itself, or in a container given CAP_SYS_PTRACE and the host's PID namespace"
        )
    else:
        why = "reading them failed with %s" % ", ".join(errors)
    return "the open files of %d process%s could not be read (%s): %s" % (
        len(unreadable), "" if len(unreadable) == 1 else "es", named, why)


def host_nodes(root, device):
    """The ``/dev`` nodes through which the host uses ``device`` (a PciDevice) now."""
    base = device.path
    nodes = ["/dev/dri/" + name for name in sorted(list_dir(base + "/drm")) if _DRM_NODE.match(name)]
    nodes += ["/dev/" + name for name in sorted(list_dir(base + "/graphics")) if _FRAMEBUFFER.match(name)]
    return nodes + vendors.device_nodes(root, device)


def node_users(root, nodes):
    """``{node: [{"pid", "comm"}]}`` for the ``nodes`` some process holds open (none: no scan), with
    ``unreadable`` (:class:`Users`)."""
    wanted = set(nodes)
    if not wanted:
        return Users()
    return open_files(root, lambda target: target if target in wanted else None)
