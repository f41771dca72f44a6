# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""IOMMU state and IOMMU groups.

Public API (every reader takes the host ``root``):

- :class:`IommuState` -- ``enabled``, ``vendor``, ``firmware_support``, ``passthrough_mode``,
  ``interrupt_remapping``, ``units``, ``unknown``; ``to_dict()``. ``enabled`` and
  ``firmware_support`` are None ("unknown") when the tree lacks what would tell, as a snapshot or a
  container may; False only when the tree shows the absence.
- :func:`read_iommu` ``(root, cmdline, architecture=None) -> IommuState``
- :func:`passthrough_mode` ``(cmdline, x86=True) -> bool``: what the kernel's arguments set
- :func:`listing` ``(root, relative) -> (entries, known)``
- :func:`interrupt_remapping_state` ``(root, cmdline, units) -> bool | None``;
  :func:`intremap_disabled` ``(cmdline) -> bool``
- :func:`group_of` ``(root, address) -> str | None``
- :func:`group_members` ``(root, group) -> list[str]``
- :func:`groups_from_devices` ``(devices) -> dict[str, list[str]]`` (no extra reads)

How interrupt remapping is detected (the kernel has no single attribute for it):

1. ``intremap=off`` (or the older ``nointremap``) on the command line, as the kernel applies it
   (:func:`intremap_disabled`): off.
2. ``/proc/interrupts``: interrupt chips named ``IR-...`` (``IR-PCI-MSI``, ``IR-IO-APIC``) exist
   only when remapping is on, so any such chip means on; MSI or IO-APIC chips without the prefix
   mean off.
3. Intel units: bit 3 (IR) of every ``sys/class/iommu/dmar*/intel-iommu/ecap`` clear: the hardware
   cannot remap, so off.
4. Otherwise unknown: None.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field

from ansible_collections.gpuvirt.host.plugins.module_utils.kernel import (
    X86,
    kernel_bool,
    parameters,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import (
    IOMMU_GROUPS,
    PCI_DEVICES,
    host_path,
    link_name,
    list_dir,
    normalize_address,
    read_text,
)

IOMMU_CLASS = "sys/class/iommu"
ACPI_TABLES = "sys/firmware/acpi/tables"
# ACPI tables describing an IOMMU: Intel DMAR, AMD IVRS, Arm IORT (SMMU).
FIRMWARE_TABLES = frozenset(("DMAR", "IVRS", "IORT"))
# arm-smmu-v3 registers "smmu3.<physical address>", arm-smmu (v1/v2) "smmu.<physical address>".
ARM_SMMU_UNITS = ("smmu3.", "smmu.")
# The name VFIO gives the groups it makes itself for devices no IOMMU translates for (mediated
# devices, no-IOMMU mode; drivers/vfio, vfio_noiommu_group_alloc). They exist with the IOMMU off.
VFIO_SOFTWARE_GROUP = "vfio-noiommu"
_ECAP_INTERRUPT_REMAPPING = 1 << 3
# x86's interrupt chips in /proc/interrupts, whole words: not the ends of arm64's GIC ITS
# (``ITS-PCI-MSIX-0002:00:00.0``) or PowerNV's (``PNV-PCI-MSI``).
_IR_CHIP = re.compile(r"(?<![\w-])IR-[A-Z]")
_PLAIN_CHIP = re.compile(r"(?<![\w-])(?:PCI-MSI|IO-APIC)")


@dataclass
class IommuState:
    """``enabled`` and ``firmware_support`` are None when the tree cannot tell (see :func:`read_iommu`)."""

    enabled: bool | None
    vendor: str | None
    firmware_support: bool | None
    passthrough_mode: bool
    interrupt_remapping: bool | None
    units: list = field(default_factory=list)
    unknown: list = field(default_factory=list)

    def to_dict(self):
        return {
            "enabled": self.enabled,
            "vendor": self.vendor,
            "firmware_support": self.firmware_support,
            "passthrough_mode": self.passthrough_mode,
            "interrupt_remapping": self.interrupt_remapping,
            "units": list(self.units),
            "unknown": list(self.unknown),
        }


def listing(root, relative):
    """``(entries, known)`` of a directory below ``root``.

    ``known`` is False when the tree cannot say what the directory holds: it cannot be listed
    (EACCES: ACPI tables are mode 0400 for an unprivileged capture), or neither it nor its parent
    exists (a snapshot or a container that did not capture that part of sysfs). A missing directory
    whose parent exists is known to be empty, as on a live host.
    """
    path = host_path(root, relative)
    try:
        return sorted(os.listdir(path)), True
    except FileNotFoundError:
        return [], os.path.isdir(os.path.dirname(path))
    except OSError:
        return [], False


# IORT node types (ACPI IO Remapping Table, Arm DEN 0049): 3 an SMMUv1/v2, 4 an SMMUv3.
_IORT_SMMU_NODES = frozenset((3, 4))
# The platform devices the kernel makes of the IORT's SMMU nodes, whether their driver binds or not
# (drivers/acpi/arm64/iort.c iort_add_platform_device(): "arm-smmu-v3.N.auto", "arm-smmu.N.auto").
_SMMU_PLATFORM_DEVICES = ("arm-smmu-v3.", "arm-smmu.")


def iort_describes_smmu(root):
    """Whether the firmware's IORT holds an SMMU node: read from the table (root can read it), else
    from the platform devices the kernel made of such nodes; None when neither tells (a snapshot)."""
    try:
        with open(host_path(root, ACPI_TABLES, "IORT"), "rb") as handle:
            table = handle.read(1 << 20)
    except OSError:
        table = b""
    if len(table) >= 48 and table[:4] == b"IORT":
        count, offset = struct.unpack_from("<II", table, 36)
        for _node in range(min(count, 4096)):
            if offset + 4 > len(table):
                break
            kind, length = struct.unpack_from("<BH", table, offset)
            if kind in _IORT_SMMU_NODES:
                return True
            if length == 0:
                break
            offset += length
        return False
    entries, known = listing(root, "sys/devices/platform")
    if not known or not entries:
        return None
    return any(entry.startswith(_SMMU_PLATFORM_DEVICES) for entry in entries)


def read_iommu(root, cmdline, architecture=None):
    """The IOMMU as firmware, kernel command line and sysfs describe it.

    ``enabled``: IOMMU units registered in ``sys/class/iommu`` or groups in
    ``sys/kernel/iommu_groups`` other than VFIO's own (``name`` ``vfio-noiommu``: a mediated
    device's group, there with the IOMMU off too); None when the tree has neither directory nor
    their parents.
    ``vendor``: from the unit names (``dmar*`` Intel, ``ivhd*`` AMD, ``smmu3.*``/``smmu.*`` Arm),
    else from the ACPI table (DMAR, IVRS, IORT). ``firmware_support``: one of those tables is listed;
    None when ``sys/firmware/acpi/tables`` is missing from a tree without ``sys/firmware``, cannot be
    listed, or the host describes its hardware in a device tree instead. ``passthrough_mode``:
    :func:`passthrough_mode` of ``cmdline`` (``architecture`` None: x86 unless the IOMMU is an Arm
    SMMU, since ``iommu=pt`` is x86's). ``unknown``: the directories that could not be read.
    """
    unknown = []
    units = list_dir(host_path(root, IOMMU_CLASS))
    # One group the IOMMU made is proof enough: stop at the first that is not VFIO's own (and do
    # not look when a unit is registered).
    translated = bool(units) or any(
        read_text(host_path(root, IOMMU_GROUPS, group, "name")) != VFIO_SOFTWARE_GROUP
        for group in list_dir(host_path(root, IOMMU_GROUPS))
    )
    tables, tables_known = listing(root, ACPI_TABLES)
    device_tree = os.path.isdir(host_path(root, "sys/firmware/devicetree"))
    if not tables_known and list_dir(host_path(root, "sys/firmware")) and not os.path.exists(
        host_path(root, "sys/firmware/acpi")
    ):
        # A host booted without ACPI. Without a device tree either, there is no firmware description
        # at all; with one, the IOMMU nodes live there and are not read: unknown. An empty
        # sys/firmware is not such a host: a container runtime masks the host's firmware with one.
        tables_known = not device_tree
    if translated:
        enabled = True
    elif os.path.isdir(host_path(root, IOMMU_CLASS)) or os.path.isdir(host_path(root, "sys/kernel")):
        # The kernel creates both directories at boot when it has IOMMU support, and a live sysfs
        # always has sys/kernel: their absence there is real. A snapshot has only what it copied.
        enabled = False
    else:
        enabled = None
        unknown.extend(["/" + IOMMU_CLASS, "/" + IOMMU_GROUPS])
    if not tables_known:
        unknown.append("/sys/firmware/devicetree" if device_tree else "/" + ACPI_TABLES)
    tables = set(tables)
    vendor = None
    if any(unit.startswith("dmar") for unit in units):
        vendor = "intel"
    elif any(unit.startswith("ivhd") for unit in units):
        vendor = "amd"
    elif any(unit.startswith(ARM_SMMU_UNITS) for unit in units):
        vendor = "arm"
    elif "DMAR" in tables:
        vendor = "intel"
    elif "IVRS" in tables:
        vendor = "amd"
    if "IORT" in tables and vendor is None and iort_describes_smmu(root) is False:
        # Every arm64 ACPI host with a GIC ITS has an IORT (its MSI routing), an SMMU or not.
        tables.discard("IORT")
    if vendor is None and "IORT" in tables:
        vendor = "arm"
    # iommu=pt is an x86 parameter; elsewhere the word is not the kernel's.
    x86 = architecture == X86 if architecture else vendor != "arm"
    firmware = bool(FIRMWARE_TABLES.intersection(tables))
    return IommuState(
        enabled=enabled,
        vendor=vendor,
        firmware_support=firmware if firmware or tables_known else None,
        passthrough_mode=passthrough_mode(cmdline, x86),
        # Interrupt remapping is an x86 IOMMU feature; on arm64 the GIC ITS isolates MSIs and VFIO
        # accepts it, so the question does not arise there, nor on POWER or s390.
        interrupt_remapping=interrupt_remapping_state(root, cmdline, units) if x86 else None,
        units=units,
        unknown=unknown,
    )


def passthrough_mode(cmdline, x86=True):
    """Whether the kernel's arguments put the IOMMU in passthrough mode (DMA of the host's devices not
    translated). ``iommu=pt`` and ``iommu=nopt`` (options of x86's comma-separated ``iommu=``; not a
    kernel parameter elsewhere) and ``iommu.passthrough=<bool>`` all set the default domain type, so
    the last of them wins (drivers/iommu/iommu.c, arch/x86/kernel/pci-dma.c). A kernel built to
    default to passthrough (``CONFIG_IOMMU_DEFAULT_PASSTHROUGH``) without them reads False."""
    mode = False
    for name, value, _word in parameters(cmdline):
        if value is None:
            continue
        if name == "iommu" and x86:
            for option in value.split(","):
                # The kernel compares each option's first characters (strncmp).
                if option.startswith("pt"):
                    mode = True
                elif option.startswith("nopt"):
                    mode = False
        elif name == "iommu.passthrough":
            flag = kernel_bool(value)
            if flag is not None:
                mode = flag
    return mode


def intremap_disabled(cmdline):
    """Whether the kernel's arguments turn interrupt remapping off: ``nointremap``, or ``off`` among
    the comma-separated options of ``intremap=``, where ``on`` turns it back on; the last setting wins
    (drivers/iommu/irq_remapping.c compares each option's first characters)."""
    disabled = False
    for name, value, _word in parameters(cmdline):
        if name == "nointremap":  # its handler takes no value and ignores one
            disabled = True
        elif name == "intremap" and value is not None:
            for option in value.split(","):
                if option.startswith("on"):
                    disabled = False
                elif option.startswith("off"):
                    disabled = True
    return disabled


def interrupt_remapping_state(root, cmdline, units):
    """True/False when the host tells, None when unknown (see the module docstring)."""
    if intremap_disabled(cmdline):
        return False
    seen_plain = False
    try:
        with open(host_path(root, "proc/interrupts"), encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if _IR_CHIP.search(line):
                    return True
                if not seen_plain and _PLAIN_CHIP.search(line):
                    seen_plain = True
    except OSError:
        pass
    if seen_plain:
        return False
    ecaps = [read_text(host_path(root, IOMMU_CLASS, unit, "intel-iommu/ecap")) for unit in units]
    values = []
    for ecap in ecaps:
        try:
            values.append(int(ecap, 16))
        except (TypeError, ValueError):
            return None
    if values and not any(value & _ECAP_INTERRUPT_REMAPPING for value in values):
        return False
    return None


def group_of(root, address):
    """The IOMMU group of one PCI device, or None."""
    full = normalize_address(address)
    if full is None:
        return None
    group = link_name(host_path(root, PCI_DEVICES, full, "iommu_group"))
    return group if group and group.isascii() and group.isdigit() else None


def group_members(root, group):
    """PCI addresses (and mdev UUIDs) in ``sys/kernel/iommu_groups/<group>/devices``, sorted."""
    return list_dir(host_path(root, IOMMU_GROUPS, str(group), "devices"))


def groups_from_devices(devices):
    """``{group: [addresses]}`` from already-read devices, groups in numeric order."""
    groups = {}
    for device in devices.values():
        if device.iommu_group is not None:
            groups.setdefault(device.iommu_group, []).append(device.address)
    return {group: sorted(groups[group]) for group in sorted(groups, key=int)}
