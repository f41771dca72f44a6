# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PCI devices as sysfs describes them (``Documentation/ABI/testing/sysfs-bus-pci``).

Public API (every reader takes the host ``root``; none raises on a bad attribute):

- :class:`PciDevice`, :class:`SriovState` -- one device and its SR-IOV state; ``to_dict()``.
- :func:`read_pci_device` ``(root, address, findings=None) -> PciDevice | None``
- :func:`read_pci_devices` ``(root, findings=None) -> dict[str, PciDevice]`` (one pass, sorted)
- :func:`companions` ``(devices, address, slots=None) -> list[str]`` (other functions of the same
  slot, and of the same one-GPU card behind its own switch: :func:`card_functions`),
  :func:`slot_index` ``(devices) -> dict[str, list[str]]``
- :func:`vmd_controller` ``(devices, device) -> str | None``: the Intel VMD controller a device sits
  behind; :func:`behind_vmd_reason` ``(address, controller)``.
- :func:`class_name` ``(class_code) -> str | None``, :func:`is_gpu_class`
- :class:`PciIds` -- lazy vendor/device name lookup in the host's ``pci.ids``;
  :func:`name_devices` ``(root, devices) -> PciIds | None`` names a whole host at once.
- ``HOST_GRAPHICS_DRIVERS`` -- drivers that drive a GPU for the host itself (the vendor backends'
  ``host_drivers``).

``PciDevice.path`` is ``sys/bus/pci/devices/<address>`` below the root (the kernel follows the
link); IDs, class and driver come from the device's ``uevent`` in one read, with the individual
attributes as the fallback. Each device's directory is opened once and its attributes are read
relative to it; the attributes every device has are first read in one quick pass that accepts only
the exact bytes the kernel writes, and any other form (or a missing ``uevent``, as in some
snapshots) sends the device through the careful readers, which say what is wrong. Values many
devices share (a model's ``uevent`` lines, NUMA nodes, reset methods) are parsed once per pass, and
a device's ``iommu_group`` link is checked against one listing of ``sys/kernel/iommu_groups``. The
device directory is not listed: on tmpfs and sysfs a listing costs as much as reading four
attributes; an attribute most devices lack (``sriov_totalvfs``) is looked up before it is opened, and
so is ``reset_method`` once a function of the same model was found without it. Each device directory
is opened relative to the bus directory. Vendor backends read their devices relative to the open
directory.
Reading ~600 devices takes a few tens of milliseconds, so callers can afford :func:`read_pci_devices`
instead of caching.
"""

from __future__ import annotations

import gzip
import mmap
import os
import re
import stat
from dataclasses import dataclass, field

from ansible_collections.gpuvirt.host.plugins.module_utils import rules
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import (
    BRIDGE_CLASSES,
    HELD_DESCRIPTORS,
    HOST_BRIDGE_CLASS,
    IOMMU_GROUPS,
    MISSING,
    PCI_ADDRESS_PATTERN,
    PCI_DEVICES,
    address_sort_key,
    close_descriptors,
    host_path,
    link_tail_at,
    list_dir,
    normalize_address,
    open_directory,
    read_attribute,
    read_attribute_at,
    resolve,
    slot_of,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.vendors import (
    DEVICE_DEFAULTS,
    apart_in_slot,
    host_graphics_drivers,
    read_vendor_state,
    readers_for,
)

HOST_GRAPHICS_DRIVERS = host_graphics_drivers()
GPU_BASE_CLASSES = ("03", "12")
# Multimedia controllers (0x04): a card's HDMI/DP audio controller is 0403.
MULTIMEDIA_CLASS = "04"

_ID = re.compile(r"(?:0x)?([0-9a-fA-F]{1,4})\Z")
_CLASS = re.compile(r"(?:0x)?([0-9a-fA-F]{1,6})\Z")
_INT = re.compile(r"-?[0-9]+\Z")
_WORDS = re.compile(r"[a-z0-9_]+(?: [a-z0-9_]+)*\Z")
_GROUP = re.compile(r"[0-9]+\Z")
_PCI_ADDRESS = re.compile(PCI_ADDRESS_PATTERN + r"\Z")
# A bus directory whose entries are all addresses in domains of four hex digits, one per line: they
# sort by their text as by domain, bus, device and function.
_FOUR_DIGIT = r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]"
_FOUR_DIGIT_ADDRESSES = re.compile(r"(?:%s\n)*%s" % (_FOUR_DIGIT, _FOUR_DIGIT))


@dataclass
class SriovState:
    """``sriov_totalvfs``, ``sriov_numvfs`` and the ``virtfnN`` links of a physical function."""

    total_vfs: int | None
    num_vfs: int | None
    vfs: list = field(default_factory=list)

    def to_dict(self):
        return {"total_vfs": self.total_vfs, "num_vfs": self.num_vfs, "vfs": list(self.vfs)}


@dataclass
class PciDevice:
    """One PCI function. Attributes the kernel did not report (or reported garbled) are None."""

    address: str
    path: str
    vendor_id: str | None = None
    device_id: str | None = None
    subsystem_vendor_id: str | None = None
    subsystem_device_id: str | None = None
    class_code: str | None = None
    driver: str | None = None
    driver_override: str | None = None
    iommu_group: str | None = None
    numa_node: int | None = None
    boot_vga: bool | None = False
    reset_methods: list | None = field(default_factory=list)
    physfn: str | None = None
    sriov: SriovState | None = None
    vendor_state: dict = field(default_factory=dict)
    vendor_name: str | None = None
    device_name: str | None = None
    # Attributes a guard depends on that read malformed (boot_vga, class, iommu_group, driver): each
    # says what was read; a guard refuses such a device rather than take it as safe.
    doubts: list = field(default_factory=list)

    @property
    def slot(self):
        return slot_of(self.address)

    @property
    def is_vf(self):
        return self.physfn is not None

    @property
    def is_bridge(self):
        return self.class_code is not None and self.class_code[:4] in BRIDGE_CLASSES

    @property
    def stays_with_host(self):
        """Whether VFIO lets this member of an IOMMU group stay with the host while the rest of the group goes to
        a VM: a PCI bridge, or a host bridge no driver holds. VFIO only refuses a group where a device is bound
        to a driver that uses the kernel's DMA domain; a host bridge does no DMA of its own, and AMD's dummy host
        bridges, never bound, share groups with the GPP bridge beside them and the devices behind it."""
        return self.is_bridge or (self.is_host_bridge and self.driver is None and not self.doubts)

    @property
    def is_host_bridge(self):
        return self.class_code is not None and self.class_code[:4] == HOST_BRIDGE_CLASS

    @property
    def is_gpu(self):
        return self.class_code is not None and self.class_code[:2] in GPU_BASE_CLASSES

    @property
    def class_name(self):
        return class_name(self.class_code)

    @property
    def name(self):
        """A human name: pci.ids names when known, else the class and IDs."""
        if self.device_name:
            return "%s %s" % (self.vendor_name, self.device_name) if self.vendor_name else self.device_name
        return "%s [%s:%s]" % (self.class_name or "PCI device", self.vendor_id or "????", self.device_id or "????")

    def to_dict(self):
        # Vendor state last: a backend's keys for a device of its vendor replace their defaults.
        return {
            "address": self.address,
            "vendor_id": self.vendor_id,
            "device_id": self.device_id,
            "subsystem_vendor_id": self.subsystem_vendor_id,
            "subsystem_device_id": self.subsystem_device_id,
            "class": self.class_code,
            "class_name": class_name(self.class_code),
            "vendor_name": self.vendor_name,
            "device_name": self.device_name,
            "driver": self.driver,
            "driver_override": self.driver_override,
            "iommu_group": self.iommu_group,
            "numa_node": self.numa_node,
            "boot_vga": self.boot_vga,
            "reset_methods": None if self.reset_methods is None else list(self.reset_methods),
            "sriov": self.sriov.to_dict() if self.sriov else None,
            "physfn": self.physfn,
            **DEVICE_DEFAULTS,
            **self.vendor_state,
        }


def _display(address, name):
    return "/%s/%s/%s" % (PCI_DEVICES, address, name)


class _Reader:
    """Reads one device's attributes, reporting problems as findings about that device.

    With a directory descriptor (``fd``) names are opened relative to it; without one (the
    directory could not be opened) below ``base``."""

    __slots__ = ("address", "base", "findings", "fd", "prefix")

    def __init__(self, address, base, findings, fd=None):
        self.address = address
        self.base = base
        self.findings = findings
        self.fd = fd
        self.prefix = "" if fd is not None else base

    def read(self, name):
        """``(text, problem)`` of one attribute (see :func:`sysfs.read_attribute`)."""
        return read_attribute_at(self.fd, self.prefix + name)

    def link_tail(self, name):
        return link_tail_at(self.fd, self.prefix + name)

    def problem(self, name, problem, expected, value=None):
        if self.findings is not None:
            self.findings.bad_attribute(_display(self.address, name), problem, expected, self.address, value)

    def hex_id(self, name, pattern, width, expected):
        text, problem = self.read(name)
        if text is None:
            self.problem(name, problem, expected)
            return None
        match = pattern.match(text)
        if match is None:
            self.problem(name, problem, expected, text)
            return None
        return "%0*x" % (width, int(match.group(1), 16))

    def garbled_uevent(self, values, key, fallback):
        """Report a uevent line that is present but garbled (absent lines are simply not there)."""
        if key in values:
            self.problem(
                "uevent", None, "%s=<hex> as the kernel writes it; read %s instead" % (key, fallback),
                "%s=%s" % (key, values[key]),
            )

    def doubt(self, device, name, doubt):
        """A malformed attribute a guard depends on: recorded on the device and as a finding."""
        device.doubts.append(doubt)
        if self.findings is not None:
            self.findings.warning(
                "doubtful_attribute",
                "%s: %s; guards refuse to change this device until it reads correctly" % (self.address, doubt),
                self.address,
            )


def read_pci_device(root, address, findings=None):
    """Read one PCI device, or return None when ``sys/bus/pci/devices/<address>`` does not exist."""
    full = normalize_address(address)
    if full is None or not os.path.lexists(host_path(root, PCI_DEVICES, full)):
        return None
    return _read_device(full, host_path(root, PCI_DEVICES, full), findings)


_UEVENT_ID = re.compile(r"([0-9a-fA-F]{4}):([0-9a-fA-F]{4})\Z")


def _parse_uevent(text):
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value
    return values


def _read_identity(reader, device):
    """IDs, class and driver: from ``uevent`` (one read), else from the individual attributes.

    The kernel builds ``uevent`` (``PCI_ID``, ``PCI_SUBSYS_ID``, ``PCI_CLASS``, ``DRIVER``) from the
    same fields as ``vendor``, ``device``, ``subsystem_*``, ``class`` and the ``driver`` link, so
    one read replaces five reads and a readlink; a missing or garbled line falls back to them.
    """
    text, problem = reader.read("uevent")
    if text is not None:
        # The kernel writes the lines in this order; one regex is the fast path for a clean file.
        match = _UEVENT_FAST.match(text)
        if match is not None:
            driver, class_code, vendor, dev_id, sub_vendor, sub_device = match.groups()
            device.vendor_id, device.device_id = vendor.lower(), dev_id.lower()
            device.subsystem_vendor_id, device.subsystem_device_id = sub_vendor.lower(), sub_device.lower()
            device.class_code = "%06x" % int(class_code, 16)
            device.driver = driver
            return True
    values = _parse_uevent(text) if text else {}
    if problem is not None and problem is not MISSING:
        reader.problem("uevent", problem, "KEY=value lines")

    match = _UEVENT_ID.match(values.get("PCI_ID", ""))
    if match:
        device.vendor_id, device.device_id = match.group(1).lower(), match.group(2).lower()
    else:
        reader.garbled_uevent(values, "PCI_ID", "vendor and device")
        device.vendor_id = reader.hex_id("vendor", _ID, 4, "a 16-bit hex ID like 0x10de")
        if device.vendor_id is None and not os.path.isdir(reader.base):
            return False
        device.device_id = reader.hex_id("device", _ID, 4, "a 16-bit hex ID like 0x2204")

    match = _UEVENT_ID.match(values.get("PCI_SUBSYS_ID", ""))
    if match:
        device.subsystem_vendor_id, device.subsystem_device_id = match.group(1).lower(), match.group(2).lower()
    else:
        reader.garbled_uevent(values, "PCI_SUBSYS_ID", "subsystem_vendor and subsystem_device")
        device.subsystem_vendor_id = reader.hex_id("subsystem_vendor", _ID, 4, "a 16-bit hex ID")
        device.subsystem_device_id = reader.hex_id("subsystem_device", _ID, 4, "a 16-bit hex ID")

    match = _UEVENT_CLASS.match(values.get("PCI_CLASS", ""))
    if match:
        device.class_code = "%06x" % int(match.group(0), 16)
    else:
        reader.garbled_uevent(values, "PCI_CLASS", "class")
        text, problem = read_attribute(reader.base + "class")
        device.class_code, doubt = rules.class_code(text)
        if doubt is not None and os.path.isdir(reader.base):
            reader.doubt(device, "class", doubt if text is not None else "class is %s: the device's kind is unknown"
                         % problem)

    if values:
        driver = values.get("DRIVER")
        device.driver = driver if driver and _DRIVER.match(driver) else None
        if driver is not None and device.driver is None:
            reader.problem("uevent", None, "DRIVER=<driver name>", "DRIVER=" + driver)
    else:
        device.driver, doubt = rules.driver_of(reader.base)
        if doubt is not None:
            reader.doubt(device, "driver", doubt)
    return True


_UEVENT_FAST = re.compile(
    r"(?:DRIVER=([A-Za-z0-9_.:+-]{1,64})\n)?PCI_CLASS=([0-9A-Fa-f]{1,6})\n"
    r"PCI_ID=([0-9A-Fa-f]{4}):([0-9A-Fa-f]{4})\nPCI_SUBSYS_ID=([0-9A-Fa-f]{4}):([0-9A-Fa-f]{4})\n"
)
_UEVENT_CLASS = re.compile(r"[0-9a-fA-F]{1,6}\Z")
_DRIVER = re.compile(r"[A-Za-z0-9_.:+-]{1,64}\Z")


# The quick reading of the attributes every device has: the bytes as the kernel writes them, taken
# only in exactly that form. Anything else (a missing uevent, a garbled value, a non-ASCII byte, an
# error) makes the careful readers above read the device again and report what is wrong.
_QUICK_UEVENT = re.compile(
    rb"(?:DRIVER=([A-Za-z0-9_.:+-]{1,64})\n)?PCI_CLASS=([0-9A-Fa-f]{1,6})\n"
    rb"PCI_ID=([0-9A-Fa-f]{4}):([0-9A-Fa-f]{4})\nPCI_SUBSYS_ID=([0-9A-Fa-f]{4}):([0-9A-Fa-f]{4})\n"
)
_QUICK_INT = re.compile(rb"-?[0-9]+\n\Z")
_QUICK_WORDS = re.compile(rb"[a-z0-9_]+(?: [a-z0-9_]+)*\n\Z")
_QUICK_NAME = re.compile(rb"[!-~]+\n\Z")  # a driver name, or (null)
# Enough for any clean value of these attributes as the kernel writes them (a uevent's lines under
# 240 bytes; a NUMA node, a driver name or the reset methods under 64), and small: a smaller buffer
# is cheaper to allocate and to trim to the bytes read. A read that fills its buffer may not be the
# whole attribute: the device is then read again carefully (as one with device-tree lines in its
# uevent, or a driver name of 64 characters and more).
_QUICK_UEVENT_SIZE = 256
_QUICK_SIZE = 64
_RDONLY = os.O_RDONLY


class _Model:
    """What the devices of one model and driver share: ``identity`` (vendor, device, subsystem
    vendor, subsystem device, class, driver; None when the uevent lines are not as the kernel
    writes them) and whether a function of it was found without ``reset_method``."""

    __slots__ = ("identity", "resetless")

    def __init__(self, identity):
        self.identity = identity
        self.resetless = False


class _QuickPass:
    """What one pass over many devices learns once: the parsed form of values the devices share
    (a model's ``uevent`` lines, NUMA nodes, reset methods, ``iommu_group`` links), the IOMMU groups
    that exist and the models whose functions lack ``reset_method``."""

    __slots__ = ("groups", "links", "models", "numa", "resets")

    def __init__(self, groups=None):
        # Names listed in sys/kernel/iommu_groups: a device's link to one of them needs no stat of
        # its own. None: not listed, so each link is checked where it points.
        self.groups = groups
        # An iommu_group link's target -> its group number (devices of one group share it).
        self.links = {}
        # A uevent's lines before PCI_SLOT_NAME (the same for every function of one model and
        # driver) -> its _Model.
        self.models = {}
        self.numa = {b"-1\n": -1, b"0\n": 0}
        self.resets = {b"": None}

    def device(self, address, path, directory, held):
        """A :class:`PciDevice` with the IDs, class, driver, IOMMU group, NUMA node, driver override
        and reset methods of the device open as ``directory``, when each reads exactly as the kernel
        writes it; None otherwise (then the careful readers start over). The attributes it opens stay
        open, appended to ``held``, for the caller to close with the directory
        (:func:`close_descriptors`: one system call for all of them)."""
        # This runs for every device of the host: each attribute is opened and read in line, and the
        # values devices share are looked up where they are parsed once.
        open_, read, keep, size = os.open, os.read, held.append, _QUICK_SIZE
        try:
            fd = open_("uevent", _RDONLY, dir_fd=directory)
            keep(fd)
            uevent = read(fd, _QUICK_UEVENT_SIZE)
            fd = open_("numa_node", _RDONLY, dir_fd=directory)
            keep(fd)
            numa = read(fd, size)
            fd = open_("driver_override", _RDONLY, dir_fd=directory)
            keep(fd)
            override = read(fd, size)
            end = uevent.find(b"PCI_SLOT_NAME=")
            head = uevent[:end] if end > 0 else uevent
            model = self.models.get(head)
            if model is None:
                model = self.models[head] = _Model(_identity(head) if end > 0 else None)
            # The kernel shows reset_method only for a function with a reset method, which its model
            # decides: once a function of a model lacks it, a look-up (access) replaces an open that
            # would fail (a failed open costs twice as much, the error being built in Python).
            if model.resetless and not os.access("reset_method", os.F_OK, dir_fd=directory):
                reset = b""
            else:
                try:
                    fd = open_("reset_method", _RDONLY, dir_fd=directory)
                except FileNotFoundError:
                    reset = b""
                    model.resetless = True
                else:
                    keep(fd)
                    reset = read(fd, size)
            try:
                target = os.readlink("iommu_group", dir_fd=directory)
            except FileNotFoundError:
                group = None
            else:
                group = self.links.get(target, self)
                if group is self:
                    group = self.links[target] = _group_number(target)
                if group is None:
                    return None
                if (self.groups is None or group not in self.groups) and not stat.S_ISDIR(
                    os.stat("iommu_group/devices", dir_fd=directory).st_mode
                ):
                    return None
        except OSError:
            return None
        identity = model.identity
        # A full buffer may not be all of an attribute: such a device is read whole, carefully.
        if (
            identity is None
            or len(uevent) >= _QUICK_UEVENT_SIZE or len(numa) >= size or len(override) >= size or len(reset) >= size
            or not uevent.isascii()
        ):
            return None
        node = self.numa.get(numa, self)
        if node is self:
            node = self.numa[numa] = int(numa) if _QUICK_INT.match(numa) is not None else None
        methods = self.resets.get(reset, self)
        if methods is self:
            methods = self.resets[reset] = (
                tuple(reset.decode().split()) if _QUICK_WORDS.match(reset) is not None else False
            )
        if node is None or methods is False:
            return None
        if override == b"(null)\n":
            override = None
        elif _QUICK_NAME.match(override) is not None:
            override = override[:-1].decode()
        else:
            return None
        vendor, device_id, sub_vendor, sub_device, class_code, driver = identity
        # Every field up to reset_methods by position (boot_vga False until the tail reads it): a call
        # with a keyword costs a fifth more.
        return PciDevice(
            address, path, vendor, device_id, sub_vendor, sub_device, class_code, driver, override, group, node,
            False, list(methods) if methods else [],
        )


def _identity(head):
    """``(vendor, device, subsystem vendor, subsystem device, class, driver)`` from a uevent's
    lines before ``PCI_SLOT_NAME``, or None when they are not as the kernel writes them."""
    match = _QUICK_UEVENT.fullmatch(head)
    if match is None or not head.isascii():
        return None
    driver, class_code, vendor, dev_id, sub_vendor, sub_device = match.groups()
    return (
        vendor.decode().lower(), dev_id.decode().lower(), sub_vendor.decode().lower(),
        sub_device.decode().lower(), "%06x" % int(class_code, 16),
        driver.decode() if driver is not None else None,
    )


def _group_number(target):
    """The group number of an ``iommu_group`` link's target (``../../kernel/iommu_groups/12``), or
    None when the target does not end in ``iommu_groups/<number>``."""
    head, _sep, number = target.rpartition("/")
    if number.isdigit() and number.isascii() and (head == "iommu_groups" or head.endswith("/iommu_groups")):
        return number
    return None


def _read_device(address, path, findings, known_vfs=None):
    """Read one device. ``known_vfs`` (``{vf: pf}`` from PFs read earlier in the same pass) saves
    the ``physfn`` and ``sriov_totalvfs`` look-ups; without it they are made."""
    directory = open_directory(path, None, True)
    held = [] if directory is None else [directory]
    try:
        return _read_open_device(address, path, findings, known_vfs, directory, _QuickPass(), held)
    finally:
        close_descriptors(held)


def _read_open_device(address, path, findings, known_vfs, directory, quick, held):
    """Read the device open as ``directory`` (None: not open, read below ``path``): quickly when
    its attributes read as the kernel writes them, else carefully, reporting what is wrong.
    ``held``: the descriptors the caller closes (see :meth:`_QuickPass.device`)."""
    device = quick.device(address, path, directory, held) if directory is not None else None
    if device is not None:
        _read_device_tail(device, findings, directory, known_vfs)
        return device
    reader = _Reader(address, path + "/", findings, directory)
    device = PciDevice(address, path)
    if not _read_identity(reader, device):
        device.reset_methods = None
        if findings is not None:
            findings.warning(
                "unreadable_device",
                "%s points to no readable device directory; every attribute is reported as null"
                % ("/%s/%s" % (PCI_DEVICES, address)),
                address,
            )
        return device
    directory, prefix = reader.fd, reader.prefix
    device.iommu_group, doubt = rules.iommu_group_of(path, directory)
    if doubt is not None:
        reader.doubt(device, "iommu_group", doubt)

    # The three attributes every device has, read without a method call each: detection reads them
    # for hundreds of devices.
    text, problem = read_attribute_at(directory, prefix + "numa_node")
    if text is not None and _INT.match(text) is not None:
        device.numa_node = int(text)
    elif problem is not MISSING:
        reader.problem("numa_node", problem, "a decimal integer", text)

    text, problem = read_attribute_at(directory, prefix + "driver_override")
    if text is not None:
        if text != "(null)" and text != "":
            device.driver_override = text
    elif problem is not MISSING:
        reader.problem("driver_override", problem, "a driver name or (null)")

    text, problem = read_attribute_at(directory, prefix + "reset_method")
    if text is None or text == "":
        if problem is not None and problem is not MISSING:
            device.reset_methods = None
            reader.problem("reset_method", problem, "space-separated method names like 'flr bus'")
    elif _WORDS.match(text) is not None:
        device.reset_methods = text.split()
    else:
        device.reset_methods = None
        reader.problem("reset_method", None, "space-separated method names like 'flr bus'", text)

    _read_device_tail(device, findings, reader.fd, known_vfs, reader)
    return device


def _read_device_tail(device, findings, directory, known_vfs, reader=None):
    """What is read after the common attributes: boot VGA, SR-IOV, vendor state. ``reader``: the
    device's :class:`_Reader`, made here when an attribute needs one."""
    address = device.address
    class_code = device.class_code
    if class_code is not None and class_code.startswith("0300"):
        reader = reader or _Reader(address, device.path + "/", findings, directory)
        # The kernel shows boot_vga on every VGA-class function: a tree without it cannot tell.
        boot_vga, problem = reader.read("boot_vga")
        device.boot_vga, doubt = rules.boot_vga_flag(boot_vga, problem)
        if doubt is not None:
            reader.doubt(device, "boot_vga", doubt)

    if known_vfs is not None:
        device.physfn = known_vfs.get(address)
    else:
        reader = reader or _Reader(address, device.path + "/", findings, directory)
        physfn = reader.link_tail("physfn")
        if physfn is not None:
            device.physfn = physfn if _PCI_ADDRESS.match(physfn) else None
            if device.physfn is None:
                reader.problem("physfn", None, "a link to the physical function's directory", physfn)

    # A virtual function is never a physical function, and a bridge (a type 1 header) has no SR-IOV
    # capability: no sriov_* attributes to look for.
    # Most functions have no SR-IOV capability: a look-up that finds nothing costs less than an open
    # that fails.
    if device.physfn is None and not (class_code is not None and class_code[:4] in BRIDGE_CLASSES) and (
        directory is None or os.access("sriov_totalvfs", os.F_OK, dir_fd=directory, follow_symlinks=False)
    ):
        reader = reader or _Reader(address, device.path + "/", findings, directory)
        text, problem = reader.read("sriov_totalvfs")
        if problem is not MISSING:
            total = int(text) if text is not None and _GROUP.match(text) else None
            if total is not None and total > _MAX_VFS:
                total = None
            if total is None:
                reader.problem("sriov_totalvfs", problem, "a number of VFs", text)
            device.sriov = _read_sriov(reader, total)

    # Vendor backends read their own devices only (every reading backend when the vendor is unknown).
    backends = readers_for(device.vendor_id)
    if backends:
        device.vendor_state = read_vendor_state(backends, device.path, address, findings, directory)


_MAX_VFS = 0xFFFF  # the SR-IOV capability's TotalVFs field is 16 bits


def _read_sriov(reader, total):
    text, problem = reader.read("sriov_numvfs")
    num = int(text) if text is not None and _GROUP.match(text) else None
    if num is not None and num > (_MAX_VFS if total is None else total):
        reader.problem("sriov_numvfs", None, "a number of VFs up to sriov_totalvfs (%s)" % total, text)
        num = None
    elif num is None and problem is not MISSING:
        reader.problem("sriov_numvfs", problem, "a number of VFs", text)
    vfs = []
    for index in range(num or 0):
        name = "virtfn%d" % index
        try:
            target = os.readlink(reader.prefix + name, dir_fd=reader.fd)
        except OSError:
            vf = None
        else:
            vf = target[target.rfind("/") + 1 :] or None
            if vf is not None and _PCI_ADDRESS.match(vf) is None:
                reader.problem(name, None, "a link to a virtual function", vf)
                vf = None
        if vf is None:
            reader.problem("virtfn%d" % index, MISSING, "one virtfnN link per enabled VF")
        else:
            vfs.append(vf)
    return SriovState(total_vfs=total, num_vfs=num, vfs=vfs)


def read_pci_devices(root, findings=None):
    """Read every PCI device in one pass: ``{address: PciDevice}`` in address order."""
    devices = {}
    known_vfs = {}
    bus = host_path(root, PCI_DEVICES)
    groups = host_path(root, IOMMU_GROUPS)
    try:
        quick = _QuickPass(set(os.listdir(groups)))
    except OSError:
        quick = _QuickPass(None)
    # Each device directory is opened relative to the bus directory: its path is resolved once.
    bus_fd = open_directory(bus)
    try:
        _read_bus(bus, bus_fd, findings, devices, known_vfs, quick)
    finally:
        if bus_fd is not None:
            os.close(bus_fd)
    # The kernel links a VF to its PF both ways (virtfnN and physfn); the PF's links, read above,
    # name every VF, so VFs need no physfn look-up of their own. A VF sorted before its PF (not
    # possible within one PCI domain) gets its physfn here.
    for vf, pf in known_vfs.items():
        device = devices.get(vf)
        if device is not None and device.physfn is None:
            device.physfn = pf
    _unknown_reset_methods(devices)
    return devices


def _unknown_reset_methods(devices):
    """Report the reset methods as unknown (None) on a host where no device shows ``reset_method``.

    The attribute appeared in Linux 5.15, and the kernel shows it only on a function with a reset
    method. Nearly every host has such functions, so a host where none shows it runs an older
    kernel (or is a snapshot taken without it): an empty list there would claim that no device can
    be reset."""
    if any(device.reset_methods for device in devices.values()):
        return
    for device in devices.values():
        if device.reset_methods == []:
            device.reset_methods = None


def _read_bus(bus, bus_fd, findings, devices, known_vfs, quick):
    entries = list_dir(bus if bus_fd is None else bus_fd)
    # Addresses in domains of four hex digits sort as text; others (VMD's 10000:) by number. Each
    # such address has 12 characters: a name holding a newline cannot pass for two.
    joined = "\n".join(entries)
    if len(joined) != 13 * len(entries) - 1 or _FOUR_DIGIT_ADDRESSES.fullmatch(joined) is None:
        entries.sort(key=address_sort_key)
        entries = [entry for entry in entries if _is_address(entry, findings)]
    # The descriptors of several devices are closed together (see close_descriptors): opened one after
    # another, they make one run of numbers.
    held = []
    try:
        for address in entries:
            path = bus + "/" + address
            directory = open_directory(path, None, True) if bus_fd is None else open_directory(address, bus_fd, True)
            if directory is not None:
                held.append(directory)
            devices[address] = device = _read_open_device(address, path, findings, known_vfs, directory, quick, held)
            if len(held) >= HELD_DESCRIPTORS:
                batch, held = held, []
                close_descriptors(batch)
            sriov = device.sriov
            if sriov is not None:
                for vf in sriov.vfs:
                    known_vfs[vf] = address
    finally:
        close_descriptors(held)


def _is_address(entry, findings):
    if _PCI_ADDRESS.match(entry) is not None:
        return True
    if findings is not None:
        findings.warning("malformed_entry", "/%s/%s is not a PCI address; ignored" % (PCI_DEVICES, entry))
    return False


def slot_index(devices):
    """``{slot: [addresses]}`` for repeated :func:`companions` calls on many devices."""
    slots = {}
    for address in devices:
        slots.setdefault(slot_of(address), []).append(address)
    return slots


# The first PCI domain the kernel gives the buses behind an Intel VMD controller (vmd_find_free_domain() in
# drivers/pci/controller/vmd.c: "to not clash with ACPI _SEG"); hosts' own segments stay below it.
FIRST_EMULATED_DOMAIN = 0x10000
VMD_DRIVER = "vmd"


def real_path(device):
    """The real path of ``device``'s directory: below ``sys/devices``, each of its bridges' directories
    before it (``.../pci0000:00/0000:00:01.0/0000:01:00.0``), its upstream chain as the kernel nests it."""
    return resolve(device.path)


def vmd_controller(devices, device):
    """The address of the Intel VMD controller ``device`` sits behind, or None.

    VMD hides the devices of the root ports it owns behind its own endpoint, in a PCI domain of its own
    (0x10000 and up): their DMA reaches the IOMMU with the endpoint's requester ID, so they share its
    IOMMU group (Linux 5.6 and later) or have none (before), and none can be assigned to a VM alone.
    Such a device's sysfs directory lies below the endpoint's, which the ``vmd`` driver drives. Only
    devices in a domain that high are looked up (one link resolved each)."""
    # A domain of four hex digits (dddd:bb:dd.f, 12 characters) is below 0x10000.
    if len(device.address) == 12 or int(device.address.rsplit(":", 2)[0], 16) < FIRST_EMULATED_DOMAIN:
        return None
    for part in reversed(real_path(device).split("/")[:-1]):
        ancestor = devices.get(part)
        if ancestor is not None and int(part.rsplit(":", 2)[0], 16) < FIRST_EMULATED_DOMAIN:
            return part if ancestor.driver == VMD_DRIVER else None
    return None


def behind_vmd_reason(address, controller):
    """Why a device behind the VMD controller ``controller`` (:func:`vmd_controller`) cannot be assigned."""
    return (
        "%s sits behind the Intel VMD controller %s (in the PCI domain VMD made for it): its DMA carries the "
        "controller's requester ID, so it shares the controller's IOMMU group (or has none before Linux 5.6) "
        "and cannot be assigned to a VM on its own; turn VMD off in the firmware setup to pass it through"
        % (address, controller)
    )


def companions(devices, address, slots=None):
    """Other functions of ``address``'s slot that belong with it: HDMI/DP audio, USB-C xHCI, UCSI.

    Virtual functions are never companions (of each other or of their physical function); bridges
    neither; nor are the processor's own functions beside the GPU of an APU, whose vendor backend
    names them (``host_slot_vendors``: an AMD APU's GPU and HDMI/DP audio are ``1002``, the security
    processor, USB and HD audio controllers in its slot ``1022``), nor that GPU for one of them. The
    other functions of a one-GPU card with a switch of its own are companions too, in whatever slot
    (:func:`card_functions`: an Intel Arc's audio controller). ``devices`` is the mapping returned by
    :func:`read_pci_devices`; pass ``slots`` from :func:`slot_index` when calling this for many devices.
    """
    device = devices.get(address)
    if device is None or device.is_vf:
        return []
    same_slot = slots.get(device.slot, ()) if slots is not None else devices
    result = []
    for other_address in same_slot:
        other = devices.get(other_address)
        if (
            other is not None
            and other_address != address
            and other.slot == device.slot
            and not apart_in_slot(device.vendor_id, other.vendor_id)
            and not other.is_vf
            and not other.is_bridge
        ):
            result.append(other_address)
    card = card_functions(devices, device)
    result.extend(other for other in card if other != address and slot_of(other) != device.slot)
    return sorted(result)


# Reset methods (``reset_method``, drivers/pci/pci.c ``pci_reset_fn_methods``) that reset the bus the
# device is on, every function on it with the device: the others reset the function alone.
BUS_RESETS = frozenset(("bus", "cxl_bus"))


def group_companions(devices, address, slots=None):
    """The :func:`companions` of ``address`` that its IOMMU group needs: those in its group, or all of
    them when a group is not known (the IOMMU off, a tree that cannot tell). A companion in a group of
    its own (a device with ACS between its functions, ``pcie_acs_override``, an Arc card's switch with
    ACS) is not needed to hand the device to a VM: vfio-pci leaves it to its driver, and the verdict
    and the exports do not ask for it.

    Unless the device can only be reset with its bus: a function of a multifunction GPU without FLR or
    a PM reset (GeForce, Radeon) shows no ``reset_method`` at all, as the kernel offers neither a slot
    nor a bus reset for a function that shares its bus (``pci_dev_reset_slot_function()``,
    ``pci_parent_bus_reset()``). VFIO then resets it with a hot reset of the bus, which the kernel and
    QEMU allow only when the VM owns every group on that bus ("Cannot reset device ..., depends on group
    ... which is not owned", QEMU ``vfio_pci_hot_reset()``): without them the GPU is never reset between
    the guest's boots. So the companions on its bus go with it, whatever their groups, where the VM can
    own those groups: their other members are companions too, or stay with the host (bridges). One whose
    group holds a device the host keeps (an APU's USB controllers beside its HDMI audio) cannot be
    handed over, and would not make the reset possible: it stays (:func:`unowned_bus_groups` names such
    groups). Not when the methods are unknown (a kernel before 5.15 shows none)."""
    device = devices.get(address)
    if device is None:
        return []
    group = device.iommu_group
    found = companions(devices, address, slots)
    if not found:
        return found
    own = [other for other in found if group is None or devices[other].iommu_group in (None, group)]
    if group is None or not bus_only_reset(device):
        return own
    bus = address.rpartition(":")[0]
    others = {devices[other].iommu_group for other in found if other not in own and other.rpartition(":")[0] == bus}
    ownable = {number for number in others if _ownable(devices, number, set(found) | {address})}
    return [other for other in found if other in own or devices[other].iommu_group in ownable]


def bus_only_reset(device):
    """Whether ``device`` can only be reset with its bus (its reset methods known, none of them its own)."""
    methods = device.reset_methods
    return methods is not None and not set(methods) - BUS_RESETS


def _ownable(devices, group, taken, members=None):
    """Whether a VM given ``taken`` owns IOMMU group ``group``: every other member stays with the host.
    ``members``: the group's members, when known (else ``devices`` are looked through)."""
    if members is None:
        members = [address for address, other in devices.items() if other.iommu_group == group]
    return all(address in taken or (address in devices and devices[address].stays_with_host) for address in members)


def unowned_bus_groups(devices, address, slots=None, companions=None, groups=None):
    """``{group: [its members]}``: the IOMMU groups on the bus of ``address`` (a device that can only be
    reset with its bus) that a VM given it and its :func:`group_companions` would not own, so that the
    kernel refuses the bus reset; empty for a device that has a reset of its own, or none known.
    ``slots``: as for :func:`companions`; ``companions``: its :func:`group_companions`, when known;
    ``groups``: ``{group: [its members, sorted]}`` of ``devices`` (``iommu.groups_from_devices``), when known."""
    device = devices.get(address)
    if device is None or device.iommu_group is None or not bus_only_reset(device):
        return {}
    bus = address.rpartition(":")[0]
    if companions is None:
        companions = group_companions(devices, address, slots)
    taken = set(companions) | {address}
    on_bus = []
    for other_address, other in devices.items():
        if other_address.rpartition(":")[0] == bus and other.iommu_group is not None and not other.is_vf \
                and other.iommu_group not in on_bus:
            on_bus.append(other.iommu_group)
    unowned = {}
    for number in on_bus:
        members = groups.get(number) if groups is not None else None
        if members is None:
            members = sorted(a for a, other in devices.items() if other.iommu_group == number)
        if not _ownable(devices, number, taken, members):
            unowned[number] = list(members)
    return unowned


def card_functions(devices, device):
    """The endpoint functions of the one-GPU card ``device`` is on, when the card has a PCIe switch of its
    own; else an empty list.

    An Intel Arc card (DG2, Battlemage) carries a switch: the GPU sits behind one of its downstream
    ports and the HDMI/DP audio controller behind another, on a bus of its own (``03:00.0`` and
    ``04:00.0``), not as function ``.1`` of the GPU's slot. Without ACS on those ports both share one
    IOMMU group, and the audio controller must go with the GPU as a companion.

    A switch is the card's own when its upstream port sits behind a port of the host (it is no root
    port) and both its upstream port and the downstream port of ``device`` are of ``device``'s vendor;
    the card's functions are the endpoints of that vendor behind its downstream ports (virtual
    functions apart). A switch behind which the functions of more than one slot include a GPU (a
    two-GPU card, an nForce 200 platform switch with two cards) or of none (a NIC card), or with an
    endpoint outside the GPU's slot that is not an audio (multimedia) controller, is not taken as one
    GPU's card: a Thunderbolt controller's own switch, with its USB controller and NHI beside a GPU
    of the same vendor in an enclosure, must stay with the host. The device's path is resolved
    (:func:`real_path`); the switch's ports are listed only when its two ports above qualify."""
    if device.is_vf or device.is_bridge:
        return []
    parts = real_path(device).split("/")
    if len(parts) < 4 or parts[-1] != device.address:
        return []
    vendor = device.vendor_id
    port, upstream, above = devices.get(parts[-2]), devices.get(parts[-3]), devices.get(parts[-4])
    if (
        vendor is None or above is None or port is None or upstream is None
        or not (port.is_bridge and upstream.is_bridge and port.vendor_id == vendor and upstream.vendor_id == vendor)
    ):
        return []
    switch = "/".join(parts[:-2])
    functions = []
    for name in list_dir(switch):
        down = devices.get(name)
        if down is None or not down.is_bridge or down.vendor_id != vendor:
            continue
        for entry in list_dir(switch + "/" + name):
            other = devices.get(entry)
            if other is not None and other.vendor_id == vendor and not other.is_vf and not other.is_bridge:
                functions.append(entry)
    gpu_slots = {slot_of(address) for address in functions if devices[address].is_gpu}
    if len(gpu_slots) != 1:
        return []
    gpu_slot = gpu_slots.pop()
    if any(slot_of(address) != gpu_slot and (devices[address].class_code or "")[:2] != MULTIMEDIA_CLASS
           for address in functions):
        return []
    return sorted(functions)


def is_gpu_class(class_code):
    """Display controllers (0x03) and processing accelerators (0x12)."""
    return class_code is not None and class_code[:2] in GPU_BASE_CLASSES


# Names as pci.ids spells them, so reports read like lspci whether or not pci.ids is installed.
_CLASS_NAMES = {
    "00": ("Unclassified device", {"00": "Non-VGA unclassified device", "01": "VGA compatible unclassified device"}),
    "01": (
        "Mass storage controller",
        {
            "00": "SCSI storage controller",
            "01": "IDE interface",
            "04": "RAID bus controller",
            "05": "ATA controller",
            "06": "SATA controller",
            "07": "Serial Attached SCSI controller",
            "08": "Non-Volatile memory controller",
        },
    ),
    "02": ("Network controller", {"00": "Ethernet controller", "07": "Infiniband controller"}),
    "03": (
        "Display controller",
        {"00": "VGA compatible controller", "01": "XGA compatible controller", "02": "3D controller"},
    ),
    "04": (
        "Multimedia controller",
        {"00": "Multimedia video controller", "01": "Multimedia audio controller", "03": "Audio device"},
    ),
    "05": ("Memory controller", {"00": "RAM memory", "01": "FLASH memory"}),
    "06": (
        "Bridge",
        {
            "00": "Host bridge",
            "01": "ISA bridge",
            "04": "PCI bridge",
            "07": "CardBus bridge",
            "09": "Semi-transparent PCI-to-PCI bridge",
        },
    ),
    "07": ("Communication controller", {"00": "Serial controller", "80": "Communication controller"}),
    "08": ("Generic system peripheral", {"05": "SD Host controller", "06": "IOMMU", "80": "System peripheral"}),
    "09": ("Input device controller", {}),
    "0a": ("Docking station", {}),
    "0b": ("Processor", {}),
    "0c": (
        "Serial bus controller",
        {"00": "FireWire (IEEE 1394)", "03": "USB controller", "05": "SMBus", "07": "IPMI Interface"},
    ),
    "0d": ("Wireless controller", {}),
    "0e": ("Intelligent controller", {}),
    "0f": ("Satellite communications controller", {}),
    "10": ("Encryption controller", {}),
    "11": ("Signal processing controller", {"01": "Performance counters"}),
    "12": ("Processing accelerators", {}),
    "13": ("Non-Essential Instrumentation", {}),
    "40": ("Coprocessor", {}),
    "ff": ("Unassigned class", {}),
}


def class_name(class_code):
    """``030000`` -> ``VGA compatible controller``; the base class name when the subclass is unknown."""
    if not class_code:
        return None
    name = _CLASS_NAME_CACHE.get(class_code[:4])
    if name is None:
        entry = _CLASS_NAMES.get(class_code[:2])
        if entry is None:
            return None
        name = _CLASS_NAME_CACHE[class_code[:4]] = entry[1].get(class_code[2:4], entry[0])
    return name


_CLASS_NAME_CACHE = {}


PCI_IDS_PATHS = (
    "usr/share/hwdata/pci.ids",
    "usr/share/misc/pci.ids",
    "usr/share/pci.ids",
    "usr/share/hwdata/pci.ids.gz",
    "usr/share/misc/pci.ids.gz",
)
_HEX4 = re.compile(r"[0-9a-f]{4}\Z")
_VENDOR_LINE = re.compile(rb"\n([0-9a-f]{4})  ([^\n]*)")
_FIRST_VENDOR_LINE = re.compile(rb"([0-9a-f]{4})  ([^\n]*)")
_VENDOR_ID_LINE = re.compile(rb"\n([0-9a-f]{4})  ")
_DEVICE_LINE = re.compile(rb"\n\t([0-9a-f]{4})  ")
# A line that ends a vendor's block: another vendor, or a class (``C 03``); not a device, a
# subsystem, a comment or an empty line.
_BLOCK_END = re.compile(rb"\n[^\t#\n]")
# The ID-ordered lines are probed while the range left is longer than _BISECT_SPAN bytes; a probe
# reads up to _BISECT_PROBE bytes for a line.
_BISECT_SPAN = 4096
_BISECT_PROBE = 512


class PciIds:
    """Vendor and device names from a ``pci.ids`` database.

    The file holds some 40,000 lines and is mapped, not copied: a lookup touches only the pages it
    reads. pci.ids lists its vendors, and each vendor's devices, in ID order, so a host's vendor and
    device lines are found by halving ranges of the file (:meth:`_find_line`) and one pass over each
    wanted vendor's block finds where it ends: naming a host costs about a millisecond instead of a
    full parse. A vendor missed that way (listed out of order, or on the first line) is looked for in
    one pass over the whole file; a device listed out of order in a block of more than a few
    kilobytes can go unnamed (the database writes none so).
    """

    def __init__(self, data):
        self._data = data
        self._vendors = None
        self._vendor_names = {}
        self._devices = {}

    @classmethod
    def load(cls, root):
        """The first ``pci.ids`` found below ``root``, or None when the host has none."""
        for relative in PCI_IDS_PATHS:
            path = host_path(root, relative)
            try:
                if relative.endswith(".gz"):
                    with gzip.open(path, "rb") as handle:
                        return cls(handle.read())
                with open(path, "rb") as handle:
                    return cls(_mapped(handle))
            except (OSError, EOFError, ValueError):
                continue
        return None

    def _vendor_lines(self, pattern):
        """``(vendor_id bytes, name bytes, line start, line end)`` of the vendor lines ``pattern``
        (which starts at a newline) matches, the file's first line included."""
        data = self._data
        first = _FIRST_VENDOR_LINE.match(data)
        if first is not None and pattern.match(b"\n" + data[: first.end()]):
            yield first.group(1), first.group(2), 0, first.end()
        for match in pattern.finditer(data):
            yield match.group(1), match.group(2), match.start(), match.end()

    def _vendor_index(self):
        """``{vendor_id bytes: (name bytes, start of the block, end of the block)}``."""
        if self._vendors is None:
            # Class lines (``C 03  ...``) and their ``\t00  `` subclasses never match a vendor or a
            # 4-digit device line, so the class section needs no special casing.
            lines = list(self._vendor_lines(_VENDOR_LINE))
            ends = [line[2] for line in lines[1:]] + [len(self._data)]
            self._vendors = {}
            for (vendor_id, name, _start, end), block_end in zip(lines, ends):
                self._vendors.setdefault(vendor_id, (name, end, block_end))
        return self._vendors

    def vendor_name(self, vendor_id):
        if not vendor_id:
            return None
        if vendor_id not in self._vendor_names:
            entry = self._vendor_index().get(vendor_id.encode("ascii", "replace"))
            self._vendor_names[vendor_id] = _decode(entry[0]) if entry else None
        return self._vendor_names[vendor_id]

    def names(self, pairs):
        """``{(vendor_id, device_id): (vendor name, device name)}`` for many devices at once.

        The wanted vendors' lines are found in ID order (see :meth:`_wanted_vendor_lines`); one pass
        over each of their blocks finds where it ends, and its wanted devices are found in it in ID
        order too. Cheaper than indexing every vendor when a whole host is named.
        """
        wanted = {}
        for vendor_id, device_id in pairs:
            if vendor_id and _HEX4.match(vendor_id):
                wanted.setdefault(vendor_id, set())
                if device_id and _HEX4.match(device_id):
                    wanted[vendor_id].add(device_id)
        result = {}
        if not wanted:
            return result
        data = self._data
        remaining = set(wanted) - set(self._vendor_names)
        for raw_id, name, _start, line_end in self._wanted_vendor_lines(sorted(remaining)):
            vendor_id = raw_id.decode("ascii")
            if vendor_id not in remaining:
                continue  # the first line of a vendor wins, as in the lookups above
            remaining.discard(vendor_id)
            self._vendor_names[vendor_id] = _decode(name)
            if wanted[vendor_id]:
                # The block ends at the next top-level line: another vendor, or the class section.
                end = _BLOCK_END.search(data, line_end)
                end = end.start() if end is not None else len(data)
                position = line_end
                for device_id in sorted(wanted[vendor_id]):
                    raw = device_id.encode("ascii")
                    found = self._find_line(_DEVICE_LINE, b"\n\t" + raw + b"  ", raw, position, end)
                    self._devices[(vendor_id, device_id)] = self._device_at(found, end)
                    if found >= 0:
                        position = found + 1
            if not remaining:
                break
        for vendor_id in set(wanted) - set(self._vendor_names):
            self._vendor_names[vendor_id] = None
            for device_id in wanted[vendor_id]:
                self._devices[(vendor_id, device_id)] = None
        for vendor_id, device_id in pairs:
            result[(vendor_id, device_id)] = (self.vendor_name(vendor_id), self.device_name(vendor_id, device_id))
        return result

    def _wanted_vendor_lines(self, wanted):
        """:meth:`_vendor_lines` of the ``wanted`` vendor IDs (sorted), each looked for from where the
        one before it was found (see :meth:`_find_line`). Any that this misses (a file out of order,
        a vendor on the first line, an unknown vendor) is looked for in one pass over the whole
        file. (Only a file both out of order and listing a vendor twice can show a later line of that
        vendor.)"""
        data = self._data
        missed = []
        position = 0
        for vendor_id in wanted:
            raw = vendor_id.encode("ascii")
            found = self._find_line(_VENDOR_ID_LINE, b"\n" + raw + b"  ", raw, position, len(data))
            if found < 0:
                missed.append(vendor_id)
                continue
            line = _VENDOR_LINE.match(data, found)
            position = line.end()
            yield line.group(1), line.group(2), line.start(), line.end()
        if missed:
            pattern = re.compile(rb"\n(" + b"|".join(v.encode("ascii") for v in missed) + rb")  ([^\n]*)")
            yield from self._vendor_lines(pattern)

    def _find_line(self, pattern, needle, key, start, end):
        """Where ``needle`` (a newline and the line of ID ``key``) is in ``start:end``, or -1.

        pci.ids lists vendors, and each vendor's devices, in ID order: the lines ``pattern`` matches
        (its group is the ID) are probed in halves of the range, as in a binary search, and the
        needle is looked for between the last line probed with a lower ID and the first with a
        higher one. A probe that finds no line near it (inside a long block of devices or of
        subsystems) looks nearer the start."""
        data = self._data
        low, high, limit, stop = start, end, end, end
        while limit - low > _BISECT_SPAN:
            middle = (low + limit) // 2
            line = pattern.search(data, middle, min(middle + _BISECT_PROBE, high))
            if line is None:
                limit = middle
                continue
            found = line.group(1)
            if found == key:
                return line.start()
            if found < key:
                low = line.end()
            else:
                # No line starts between the middle and this one: the key's line is before both.
                high, stop = middle, line.start()
            limit = high
        return data.find(needle, low, stop)

    def device_name(self, vendor_id, device_id):
        if not vendor_id or not device_id:
            return None
        key = (vendor_id, device_id)
        if key not in self._devices:
            self._devices[key] = self._find_device(vendor_id, device_id)
        return self._devices[key]

    def _find_device(self, vendor_id, device_id):
        entry = self._vendor_index().get(vendor_id.encode("ascii", "replace"))
        if entry is None:
            return None
        _name, start, end = entry
        needle = b"\n\t" + device_id.encode("ascii", "replace") + b"  "
        return self._device_at(self._data.find(needle, start, end), end)

    def _device_at(self, position, end):
        """The name on the device line found at ``position`` (its newline; -1: none) in a block that
        ends at ``end``."""
        if position < 0:
            return None
        line_end = self._data.find(b"\n", position + 1, end)
        return _decode(self._data[position + 8 : line_end if line_end >= 0 else end])


def name_devices(root, devices):
    """Set ``vendor_name`` and ``device_name`` of ``devices`` (``{address: PciDevice}``) from the
    host's ``pci.ids``; they stay None when the host has none. Returns the loaded :class:`PciIds`
    (None without one) for later lookups."""
    pci_ids = PciIds.load(root)
    if pci_ids is not None:
        names = pci_ids.names({(device.vendor_id, device.device_id) for device in devices.values()})
        for device in devices.values():
            device.vendor_name, device.device_name = names[(device.vendor_id, device.device_id)]
    return pci_ids


def _mapped(handle):
    """The file's bytes as a read-only map (pages are read as touched, nothing is copied)."""
    try:
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        # An empty file cannot be mapped, nor can some special files: read them.
        return handle.read()


def _decode(raw):
    text = raw.decode("utf-8", "replace").strip()
    return text or None
