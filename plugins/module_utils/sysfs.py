# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Root-aware readers and writers for sysfs and procfs.

Every function takes the host root (``/`` on a live host, a fixture or image tree in tests) and
never raises on a missing or malformed attribute: readers return ``None`` and leave the reason to
the caller. Writers raise :class:`SysfsWriteError` with the path, the errno's meaning and advice.
"""

from __future__ import annotations

import errno
import os
import re

from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError

PCI_DEVICES = "sys/bus/pci/devices"
PCI_DRIVERS = "sys/bus/pci/drivers"
IOMMU_GROUPS = "sys/kernel/iommu_groups"
MDEV_BUS = "sys/class/mdev_bus"
MDEV_DEVICES = "sys/bus/mdev/devices"
# PCI-to-PCI, CardBus and semi-transparent bridges (header types 1 and 2): VFIO lets them stay on
# their host driver (pcieport) inside a group that is passed through.
BRIDGE_CLASSES = ("0604", "0607", "0609")
HOST_BRIDGE_CLASS = "0600"

# The kernel names a function "%04x:%02x:%02x.%d" (drivers/pci/probe.c): the domain has at least four
# hex digits and up to eight (Intel VMD puts its buses at domain 10000 and above; nvidia-smi prints
# every domain with eight). A full address as sysfs spells it, lowercase:
PCI_ADDRESS_PATTERN = r"[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]"
_ADDRESS = re.compile(r"^(?:([0-9a-fA-F]{4,8}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")


def host_path(root, *parts):
    """Join ``parts`` (absolute or relative) below ``root``."""
    return os.path.join(root, *(p.lstrip("/") for p in parts))


def read_text(path):
    """Return the stripped content of a small attribute file, or None when it cannot be read."""
    return read_attribute(path)[0]


def read_int(path, base=10):
    """Return an integer attribute, or None when missing or malformed."""
    text = read_text(path)
    if text is None:
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


def read_hex(path, width):
    """Return a ``0x``-prefixed hex attribute as ``width`` lowercase digits, or None."""
    text = read_text(path)
    if text is None or not re.fullmatch(r"(0x)?[0-9a-fA-F]{1,%d}" % width, text):
        return None
    return "%0*x" % (width, int(text, 16))


def link_name(path):
    """Return the last component of a symlink's target (``driver`` -> ``vfio-pci``), or None."""
    # No os.path calls: detection reads thousands of links per run.
    try:
        target = os.readlink(path).rstrip("/")
    except OSError:
        return None
    return target[target.rfind("/") + 1 :] or None


def driver_module(root, driver):
    """The module a PCI driver belongs to (its ``module`` link to ``/sys/module/<name>``), or None when
    sysfs shows none: a snapshot without it, or a built-in driver on a kernel that links only the
    built-in modules that have a ``/sys/module`` entry of their own (module parameters)."""
    return link_name(host_path(root, PCI_DRIVERS, driver, "module"))


def resolve(path):
    """``os.path.realpath(path)``, resolved by the kernel when the path exists: one open and one
    ``readlink`` of its ``/proc/self/fd`` entry instead of a look-up per component in Python (sysfs
    paths run to a dozen components, several of them links)."""
    try:
        fd = os.open(path, _LOOKUP_ANY)
    except OSError:
        return os.path.realpath(path)
    try:
        real = os.readlink("/proc/self/fd/%d" % fd)
    except OSError:
        real = None
    finally:
        os.close(fd)
    # Without /proc, or for a path the process cannot name (another mount namespace, deleted):
    # resolved in Python.
    if real is None or not real.startswith("/") or real.endswith(" (deleted)"):
        return os.path.realpath(path)
    return real


_LOOKUP_ANY = getattr(os, "O_PATH", os.O_RDONLY)


def list_dir(path):
    """Return the sorted entries of a directory (a path or an open descriptor), or an empty list when it
    cannot be listed."""
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def normalize_address(text):
    """Return a PCI address as sysfs names it (``dddd:bb:dd.f``, lowercase), or None when not one.

    Accepts short ``bb:dd.f`` (domain 0) and domains of four to eight hex digits: ``00000000:01:00.0``
    (nvidia-smi) is ``0000:01:00.0``, and ``10000:e1:00.0`` (behind Intel VMD) stays as it is.
    """
    match = _ADDRESS.match(text.strip()) if isinstance(text, str) else None
    if not match:
        return None
    domain, bus, dev, fn = match.groups()
    return "%04x:%s:%s.%s" % (int(domain, 16) if domain else 0, bus.lower(), dev.lower(), fn)


def address_sort_key(address):
    """Order addresses by domain number, then bus, device and function (``ffff:`` before ``10000:``)."""
    domain, _sep, rest = address.partition(":")
    try:
        return (int(domain, 16), rest)
    except ValueError:
        return (-1, address)


def slot_of(address):
    """``0000:01:00.1`` -> ``0000:01:00`` (the functions of one slot share it)."""
    return address.rsplit(".", 1)[0]


class SysfsWriteError(GpuvirtError):
    """A sysfs write failed; ``str()`` says where, why and what to do."""

    def __init__(self, path, value, error, advice=""):
        self.path = path
        self.value = value
        self.errno = error.errno if isinstance(error, OSError) else None
        reason = os.strerror(self.errno) if self.errno else str(error)
        message = "writing %r to %s failed: %s" % (value, path, reason)
        if not advice:
            advice = _ADVICE.get(self.errno, "")
        if advice:
            message += " (%s)" % advice
        super().__init__(message)


_ADVICE = {
    errno.EBUSY: "the device is in use; stop the VM or process holding it and retry",
    errno.ENODEV: "the device or driver is not present; check the address and that the driver is loaded",
    errno.EINVAL: "the kernel rejected the value; check the type, count or identifier",
    errno.EPERM: "permission denied; run as root, and check Secure Boot/lockdown for module parameters",
    errno.EACCES: "permission denied; run as root",
    errno.ENOSPC: "no capacity left on this parent for another instance",
    errno.ENOENT: "the attribute does not exist; the driver or kernel may not support it",
}


def write_text(path, value, advice=""):
    """Write ``value`` to a sysfs attribute in one ``write()`` call."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as error:
        raise SysfsWriteError(path, value, error, advice) from error
    try:
        os.write(fd, value.encode("ascii") if isinstance(value, str) else value)
    except OSError as error:
        raise SysfsWriteError(path, value, error, advice) from error
    finally:
        os.close(fd)


MISSING = "missing"


def read_attribute(path):
    """Return ``(text, problem)`` for a small attribute file.

    ``text`` is the stripped content, or None; ``problem`` is None, :data:`MISSING` when the file
    does not exist, or a short reason (``"unreadable: Permission denied"``, ``"not UTF-8 text"``)
    that callers put into a finding.
    """
    return read_attribute_at(None, path)


def open_directory(path, parent=None, lookup=False):
    """A descriptor of the directory ``path`` (links followed; relative to the directory open as
    ``parent`` when given), or None when it cannot be opened.

    Reading a device's attributes relative to it (:func:`read_attribute_at`, :func:`link_tail_at`)
    resolves ``sys/bus/pci/devices/<address>`` and its link once per device instead of once per file,
    which makes the reads about a third cheaper. ``lookup``: the descriptor only serves to open, read
    links and look up names relative to it (``O_PATH``, a tenth cheaper to open); it cannot be listed."""
    try:
        return os.open(path, _LOOKUP_FLAGS if lookup else _DIRECTORY_FLAGS, dir_fd=parent)
    except OSError:
        return None


_DIRECTORY_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
_LOOKUP_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | getattr(os, "O_DIRECTORY", 0)


# How many descriptors a reader that goes through many directories keeps open before it closes them
# together (:func:`close_descriptors`): a few devices' worth, far below any limit on open files.
HELD_DESCRIPTORS = 64


def close_descriptors(descriptors):
    """Close ``descriptors``: descriptors this process opened and holds, none closed since.

    The kernel gives each new descriptor the lowest free number, so descriptors opened one after
    another usually have consecutive numbers: each run of consecutive numbers is closed with one
    system call (``os.closerange``, ``close_range()`` on Linux 5.9 and later) instead of one
    ``close()`` each, which spares detection a system call for every attribute it reads. A run of
    numbers that are all held here holds no other descriptor; a descriptor held elsewhere (one the
    process opened earlier and keeps, between the ones held here) only splits the runs."""
    if not descriptors:
        return
    low = min(descriptors)
    if max(descriptors) - low == len(descriptors) - 1:
        os.closerange(low, low + len(descriptors))
        return
    ordered = sorted(descriptors)
    start = previous = ordered[0]
    for descriptor in ordered[1:]:
        if descriptor != previous + 1:
            _close_run(start, previous)
            start = descriptor
        previous = descriptor
    _close_run(start, previous)


def _close_run(first, last):
    if first == last:
        os.close(first)
    else:
        os.closerange(first, last + 1)


def read_attribute_at(directory, name):
    """:func:`read_attribute` of ``name`` in the directory open as ``directory`` (a path when None)."""
    try:
        fd = os.open(name, os.O_RDONLY, dir_fd=directory)
        try:
            raw = os.read(fd, 65536)
        finally:
            os.close(fd)
    except FileNotFoundError:
        return None, MISSING
    except (OSError, ValueError) as error:
        reason = os.strerror(error.errno) if getattr(error, "errno", None) else str(error)
        return None, "unreadable: %s" % reason
    try:
        return raw.decode("utf-8").strip(), None
    except UnicodeDecodeError:
        return None, "not UTF-8 text"


def link_tail_at(directory, name):
    """:func:`link_name` of ``name`` in the directory open as ``directory`` (a path when None)."""
    try:
        target = os.readlink(name, dir_fd=directory)
    except OSError:
        return None
    return target[target.rfind("/") + 1 :] or None
