# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which processes hold a device open: VFIO files for VMs, and the nodes through which the host itself
uses a device while its host driver drives it.

A device's host nodes, as the kernel names them below the device's sysfs directory:

- DRM: ``drm/cardN`` and ``drm/renderDN`` are ``/dev/dri/cardN`` and ``/dev/dri/renderDN``. A desktop
  compositor opens every GPU's card (GNOME's mutter does, even for a GPU it does not draw on), and
  a compute job opens render nodes;
- framebuffers: ``graphics/fbN`` is ``/dev/fbN``;
- compute accelerators of the DRM accel subsystem: ``accel/accelN`` is ``/dev/accel/accelN``
  (``Documentation/accel/introduction.rst``: Intel's NPU and Gaudi, AMD's XDNA, Qualcomm's AI 100);
- the vendor's own nodes (``VendorBackend.device_nodes``: NVIDIA's ``/dev/nvidiaN``, which CUDA
  programs, nvidia-persistenced and the DCGM exporter hold);
- storage below the device (:data:`STORAGE_CLASSES`): its disks and their partitions, NVMe
  controllers and generic nodes, SCSI generic nodes. A VM given a whole disk (Proxmox VE's ``qm set
  <vmid> -scsi1 /dev/disk/by-id/...``: QEMU opens the node itself) holds it with nothing on the host
  mounting it, so only its open descriptor tells (``/proc/<pid>/fd`` names the node the link resolves
  to, ``/dev/sda``). A namespace of native NVMe multipath lives under its subsystem, and belongs to
  the functions of each of the subsystem's controllers; one of NVMe over FC to the HBA ports of its
  controllers (:func:`critical.namespace_adapters`).

Taking the device from its driver while a process holds one of them pulls it from under that process
or, with a driver that waits for its users (nvidia logs "Attempting to remove device ... with non-zero
usage count!" and waits), leaves the unbinding write, and the run, hanging until they let go.

Public API:

- :class:`Users`: ``{key: [{"pid", "comm"}]}`` plus ``unreadable``, the processes whose descriptors
  could not be read (``[{"pid", "comm", "error"}]``, ``error`` the errno's name), and ``hidden``, why
  ``/proc`` may not list every process to this run (None when it does): what those processes hold is
  unknown, so an empty answer from a scan that is not ``complete`` means "not known", not "not in use".
- :func:`open_files` ``(root, select) -> Users``: one pass over ``/proc/<pid>/fd``; ``select(target)``
  maps a descriptor's target to a key (None: not wanted).
- :func:`hidden_processes` ``(root) -> str | None``: ``Users.hidden`` (see below).
- :func:`merged` ``(scans) -> Users``: the unknown part of several scans of the same ``/proc``.
- :func:`host_nodes` ``(root, device, storage=None) -> list[str]``: the ``/dev`` nodes of ``device`` (a
  PciDevice); :func:`storage_index` ``(root)``: the storage nodes and where they lie, read once for
  several devices.
- :func:`node_users` ``(root, nodes) -> Users`` (``{node: [{"pid", "comm"}]}``).
- :func:`unknown_users_text` ``(users) -> str``: for a scan that is not ``complete``, how many processes
  could not be inspected, a few of them, whether ``/proc`` hides others, why and what lets the module see
  them, for the guards' refusals and warnings.
- :func:`vfio_holders` ``(root, findings=None) -> Users``: which processes hold ``/dev/vfio/<group>``
  (key: the group) or an iommufd cdev ``/dev/vfio/devices/vfioN`` (key: the PCI address or mdev UUID
  owning it), as a VM does its devices.
- :func:`users_of` ``(holders, group, *devices) -> list[dict]``: the holders of a group and of
  the cdevs of the given devices (PCI addresses or mdev UUIDs).

Unreadable descriptors: the kernel lets a process list and read ``/proc/<pid>/fd`` of another only
when it may ptrace it (``PTRACE_MODE_READ``), and answers EACCES otherwise: as a user other than
root, as root without ``CAP_SYS_PTRACE`` (containers drop it) for a process that is not dumpable
(setuid programs, daemons that clear the flag), or under an LSM that restricts ptrace. A process
that exits during the scan answers ENOENT (ESRCH for some entries): it holds nothing any more, so it
is skipped, not counted.

Hidden processes: a ``/proc`` mounted with ``hidepid=invisible`` (``hidepid=2`` as kernels before 5.8
show it) or ``hidepid=ptraceable`` (``4``) does not even list the processes the reader may not ptrace,
so no descriptor of theirs can fail to read: the scan would answer "not in use" for a device a VM holds
(``Documentation/filesystems/proc.rst``, "Mount options"; ``has_pid_permissions()`` in
``fs/proc/base.c``). :func:`hidden_processes` tells when that happens to this run, from the mount's
options in ``<root>/proc/self/mountinfo`` (the line of the scanned ``<root>/proc`` as this run sees it,
else that of ``/proc``, as a tree copied from a host names its own) and from the reader's own
``<root>/proc/self/status``. The reader sees every process when ``CapEff`` holds ``CAP_SYS_PTRACE``, or,
with ``invisible`` only, when its fs group or a supplementary group (``Gid``, ``Groups``) is the
mount's ``gid=`` (root's group, 0, when the mount shows none: the kernel's default). Otherwise the scan
is incomplete, as with unreadable processes. ``hidepid=noaccess`` (``1``) lists every process and
refuses its descriptors (EPERM): unreadable, above. ``subset=pid`` hides no process. A limit: ``status``
shows capabilities and groups in the reader's user namespace and ``mountinfo`` the ``gid=`` in the
initial one, so for a run inside a user namespace (a rootless or unprivileged container) they do not
tell whether the host's processes are visible to it.

A ``/proc`` mounted in a container with a PID namespace of its own lists that namespace's processes
only: a VM on the host is not there for any reader. Its process 1 is then the container's init, whose
``1/ns/pid`` link names a namespace other than the initial one (``pid:[4026531836]``, fixed since Linux
3.8): the scan is incomplete, whatever the reader's rights. Reading that link needs the right to ptrace
process 1; when it cannot be read, only ``hidepid`` is looked at.

When ``mountinfo`` has no such line or ``status`` no ``CapEff`` (unreadable, or a snapshot or fixture
tree without them), nothing is taken as hidden, as before this check: a live ``/proc`` always shows a
process its own ``status``, so only a tree copied from a host lacks it, and its listing is whatever was
copied.
"""

from __future__ import annotations

import errno
import os
import re

from ansible_collections.gpuvirt.host.plugins.module_utils import vendors
from ansible_collections.gpuvirt.host.plugins.module_utils.critical import namespace_adapters
from ansible_collections.gpuvirt.host.plugins.module_utils.mdev_info import UUID
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import (
    host_path,
    list_dir,
    normalize_address,
    read_text,
)

_DRM_NODE = re.compile(r"(?:card|renderD)[0-9]+\Z")
_FRAMEBUFFER = re.compile(r"fb[0-9]+\Z")
_ACCEL_NODE = re.compile(r"accel[0-9]+\Z")
# What /proc answers for a process (or a descriptor) that went away during the scan.
_GONE = (errno.ENOENT, errno.ESRCH)
# How many unreadable processes a message names.
_NAMED = 3
# CAP_SYS_PTRACE's bit in the capability masks of /proc/<pid>/status (include/uapi/linux/capability.h).
_CAP_SYS_PTRACE = 19
# The hidepid= values that keep processes out of the listing: as kernels >= 5.8 show them, and older ones.
_HIDING = {"invisible": "invisible", "2": "invisible", "ptraceable": "ptraceable", "4": "ptraceable"}
# The octal escapes of mountinfo's paths (space, tab, newline, backslash).
_ESCAPE = re.compile(r"\\([0-7]{3})")
# The initial PID namespace's inode (PROC_PID_INIT_INO in include/linux/proc_ns.h, fixed since Linux 3.8):
# a /proc whose process 1 is in another namespace was mounted in a container and lists only its processes.
_HOST_PID_NAMESPACE = "pid:[4026531836]"


class Users(dict):
    """``{key: [{"pid", "comm"}]}`` from one scan, ``unreadable``: the processes whose descriptors could
    not be read (``[{"pid", "comm", "error"}]``, by pid), and ``hidden``: why ``/proc`` may not list
    every process to this run (:func:`hidden_processes`), or None. The holdings of either are unknown."""

    def __init__(self, found=(), unreadable=(), hidden=None):
        super().__init__(found)
        self.unreadable = list(unreadable)
        self.hidden = hidden

    @property
    def complete(self):
        """Whether the holdings of every process are known: none unreadable, none hidden."""
        return not self.unreadable and not self.hidden


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
    return Users(found, unreadable, hidden_processes(root))


def hidden_processes(root):
    """Why ``<root>/proc`` may leave out of its listing processes that this run may not ptrace (``hidepid``)
    or that live outside its PID namespace (see "Hidden processes" in the module docstring), or None when it
    lists them all or that cannot be told."""
    proc = host_path(root, "proc")
    namespace = _pid_namespace(proc)
    if namespace is not None and namespace != _HOST_PID_NAMESPACE:
        return (
            "/proc lists the processes of the PID namespace %s (a container's), not the host's: VMs and other "
            "processes outside it are not listed there at all, so what they hold is unknown; run the module on the "
            "host itself or in the host's PID namespace (--pid=host, hostPID: true)" % namespace
        )
    mount, options = _proc_mount(proc)
    mode = _HIDING.get(options.get("hidepid"))
    if mode is None:
        return None
    reader = _reader(proc)
    if reader is None:
        return None
    capabilities, groups = reader
    if capabilities >> _CAP_SYS_PTRACE & 1:
        return None
    shown = "%s is mounted with hidepid=%s and this run lacks CAP_SYS_PTRACE" % (mount, options["hidepid"])
    advice = "run the module as root with CAP_SYS_PTRACE (root on the host has it; a container must be given it)"
    if mode == "ptraceable":
        return (
            "%s: processes it may not trace are not listed there at all (no group lifts that mode), so what they "
            "hold is unknown; %s, or remount %s without hidepid" % (shown, advice, mount)
        )
    gid = options.get("gid", "0")
    if gid in groups:
        return None
    group = "the mount's group (gid=%s)" % gid if "gid" in options else "root's group (gid 0, the mount sets no gid=)"
    return (
        "%s and is not in %s: processes it may not trace are not listed there at all, so what they hold is unknown; "
        "%s, or in that group, or remount %s without hidepid" % (shown, group, advice, mount)
    )


def _pid_namespace(proc):
    """The PID namespace whose processes ``proc`` lists (``pid:[<inode>]``, the one of its process 1), or
    None when that cannot be read (a tree without it; ``ns/`` links need the right to ptrace process 1)."""
    try:
        return os.readlink(proc + "/1/ns/pid")
    except OSError:
        return None


def _proc_mount(proc):
    """``(mount point, {option: value})`` of the proc mount at ``proc`` as this run sees it, else of
    ``/proc``, from the super options of its last line in ``<root>/proc/self/mountinfo`` (the mount on
    top); ``(None, {})`` when there is none."""
    wanted = (os.path.realpath(proc), "/proc")
    found = {}
    try:
        with open(proc + "/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split()
                if "-" not in fields[6:]:
                    continue
                separator = fields.index("-", 6)
                if len(fields) < separator + 4 or fields[separator + 1] != "proc":
                    continue
                point = _ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), fields[4])
                if point in wanted:
                    found[point] = dict(option.partition("=")[::2] for option in fields[separator + 3].split(","))
    except OSError:
        pass
    for point in wanted:
        if point in found:
            return point, found[point]
    return None, {}


def _reader(proc):
    """``(CapEff, {groups})`` of the process reading ``proc``, from its ``self/status``: its effective
    capabilities, and its fs group with its supplementary groups (decimal strings); None when the file or
    its ``CapEff`` cannot be read."""
    fields = {}
    try:
        with open(proc + "/self/status", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                name, _colon, value = line.partition(":")
                fields[name] = value.split()
        capabilities = int(fields["CapEff"][0], 16)
    except (OSError, KeyError, IndexError, ValueError):
        return None
    groups = set(fields.get("Groups", ()))
    ids = fields.get("Gid", ())
    if len(ids) == 4:
        groups.add(ids[3])  # real, effective, saved, fs: the kernel checks the fs group
    return capabilities, groups


def merged(scans):
    """One :class:`Users` standing for the unknown part of ``scans`` of the same ``/proc``: their
    unreadable processes once each, and the first ``hidden``."""
    unreadable = {}
    hidden = None
    for scan in scans:
        unreadable.update((entry["pid"], entry) for entry in scan.unreadable)
        hidden = hidden or scan.hidden
    return Users(unreadable=[unreadable[pid] for pid in sorted(unreadable)], hidden=hidden)


def unknown_users_text(users):
    """Why the holdings of some processes are unknown, for a scan (:class:`Users`) that is not
    ``complete``: ``the open files of 2 processes could not be read (qemu-system-x86 (pid 4242), ...): ...``
    and ``/proc is mounted with hidepid=invisible and this run lacks CAP_SYS_PTRACE ...``."""
    parts = [_unreadable_text(users.unreadable)] if users.unreadable else []
    if users.hidden:
        parts.append(users.hidden)
    return "; and ".join(parts)


def _unreadable_text(unreadable):
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


def host_nodes(root, device, storage=None):
    """The ``/dev`` nodes through which the host uses ``device`` (a PciDevice) now; ``storage``:
    :func:`storage_index` when already read (for several devices)."""
    base = device.path
    nodes = ["/dev/dri/" + name for name in sorted(list_dir(base + "/drm")) if _DRM_NODE.match(name)]
    nodes += ["/dev/" + name for name in sorted(list_dir(base + "/graphics")) if _FRAMEBUFFER.match(name)]
    nodes += ["/dev/accel/" + name for name in sorted(list_dir(base + "/accel")) if _ACCEL_NODE.match(name)]
    return nodes + vendors.device_nodes(root, device) + storage_nodes(root, base, storage)


# The device classes whose nodes (/dev/<name>) reach storage below a PCI device.
STORAGE_CLASSES = ("block", "nvme", "nvme-generic", "scsi_generic")


def storage_index(root):
    """``[(node, [resolved paths])]`` of the storage nodes (:data:`STORAGE_CLASSES`): where each lies,
    and for an NVMe namespace whose path names no PCI device (native multipath, NVMe over FC) the
    functions it is reached through (:func:`critical.namespace_adapters`), each as a path below its
    function's directory."""
    index = []
    for kind in STORAGE_CLASSES:
        base = host_path(root, "sys/class", kind)
        for name in sorted(list_dir(base)):
            real = os.path.realpath("%s/%s" % (base, name))
            places = [real] + [
                os.path.realpath(host_path(root, "sys/bus/pci/devices", address)) + "/" + name
                for address in namespace_adapters(root, real)
            ] if "/nvme" in real else [real]
            index.append(("/dev/" + name, places))
    return index


def storage_nodes(root, path, index=None):
    """The ``/dev`` nodes of the storage below the PCI device at ``path`` (see the module's text);
    ``index``: :func:`storage_index` when already read."""
    below = os.path.realpath(path) + "/"
    index = storage_index(root) if index is None else index
    return [node for node, places in index if any(place.startswith(below) for place in places)]


def node_users(root, nodes):
    """``{node: [{"pid", "comm"}]}`` for the ``nodes`` some process holds open (none: no scan), with
    ``unreadable`` (:class:`Users`)."""
    wanted = set(nodes)
    if not wanted:
        return Users()
    return open_files(root, lambda target: target if target in wanted else None)


# The prefix of a no-IOMMU group's file below /dev/vfio (vfio_create_group()).
NOIOMMU_PREFIX = "noiommu-"


def vfio_holders(root, findings=None):
    """Processes holding VFIO group files or iommufd device files open (:class:`Users`).

    Only looks at processes when some VFIO device file exists, so hosts without VFIO devices pay
    nothing (and nothing can hold one: the answer is ``complete``). Processes whose descriptors cannot
    be read are in ``unreadable``, why ``/proc`` hides processes (``hidepid``) in ``hidden``; either is in
    an ``info`` finding when ``findings`` is given.
    """
    vfio_dir = host_path(root, "dev/vfio")
    entries = [e for e in list_dir(vfio_dir) if e not in ("vfio", "devices")]
    cdevs = list_dir(vfio_dir + "/devices")
    if not entries and not cdevs:
        return Users()
    held = open_files(root, _vfio_file)
    holders = Users(unreadable=held.unreadable, hidden=held.hidden)
    for name, users in held.items():
        if name.startswith("devices/"):
            key = _cdev_owner(root, name[len("devices/") :])
        else:
            # In no-IOMMU mode a group's file is noiommu-<group> (vfio_create_group()).
            key = name[len(NOIOMMU_PREFIX):] if name.startswith(NOIOMMU_PREFIX) else name
        if key is not None:
            holders.setdefault(key, []).extend(users)
    if not held.complete and findings is not None:
        findings.info(
            "processes_unreadable",
            "%s; so in_use_by may miss a VM holding a device, and the modules that take a device from its "
            "users refuse to without force: true" % unknown_users_text(held),
        )
    for users in holders.values():
        users.sort(key=lambda user: user["pid"])
    return holders


def _vfio_file(target):
    """The name below ``/dev/vfio`` of a VFIO group or cdev file (not the container ``vfio``), or None."""
    if target.startswith("/dev/vfio/") and target != "/dev/vfio/vfio":
        return target[len("/dev/vfio/") :]
    return None


def users_of(holders, group, *devices):
    """The processes holding ``group`` (``/dev/vfio/<group>``) or the iommufd cdev of any of
    ``devices`` (PCI addresses or mdev UUIDs), as :func:`vfio_holders` keys them."""
    if not holders:
        return []
    users = list(holders.get(group, ())) if group is not None else []
    for device in devices:
        users.extend(holders.get(device, ()))
    return users


def _cdev_owner(root, cdev):
    """``vfio3`` -> the PCI address or mdev UUID whose ``vfio-dev/vfio3`` it is.

    The kernel puts the cdev's device below its owner: ``.../0000:01:00.0/vfio-dev/vfio3`` for a
    PCI function, ``.../<parent>/<uuid>/vfio-dev/vfio3`` for a mediated device.
    """
    real = os.path.realpath(host_path(root, "sys/class/vfio-dev", cdev))
    owner = os.path.basename(os.path.dirname(os.path.dirname(real)))
    if UUID.match(owner):
        return owner.lower()
    return normalize_address(owner)
