# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The architecture of the kernel a root boots: which kernel parameters its command line can hold.

Public API:

- :func:`host_architecture` ``(root) -> (architecture, source)``: ``x86_64``, ``aarch64``, ``ppc64le``
  (or another ``uname -m`` name) and where it was read, for messages; ``(None, None)`` when the tree
  does not tell.
- :func:`architecture_from_iommu` ``(vendor) -> str | None``: the architecture an IOMMU kind implies.

Where the architecture comes from, in order:

1. a live root (``/`` of this machine): the running kernel (``uname -m``);
2. a tree: its own programs (the ELF header of ``usr/bin/env``, ``bin/sh`` or ``sbin/init``), that
   is the system that boots with the configuration edited there, even in a chroot whose ``/proc``
   belongs to the machine building it;
3. its ``proc/cpuinfo`` (a captured snapshot has no programs): the fields each architecture's kernel
   writes (:func:`kernel.architecture_of`);
4. its IOMMU, as topology detection reads it: Intel or AMD units or ACPI tables (DMAR, IVRS) mean
   x86, an Arm SMMU (``smmu3.*``) or the ACPI IORT table arm64.

Standard library only.
"""

from __future__ import annotations

import os
import struct

from ansible_collections.gpuvirt.host.plugins.module_utils import host as host_model
from ansible_collections.gpuvirt.host.plugins.module_utils.iommu import read_iommu
from ansible_collections.gpuvirt.host.plugins.module_utils.kernel import (
    ARM64,
    POWER,
    X86,
    architecture_of,
    read_cpuinfo,
)

# Programs every installed Linux system has (merged /usr or not); the first that reads as ELF counts.
PROGRAMS = ("usr/bin/env", "bin/sh", "sbin/init")
# ELF e_machine of 64-bit kernels' userlands (and i386, x86 either way). A 32-bit Arm userland may
# run on an arm64 kernel, so EM_ARM says nothing about the kernel and is not listed.
_ELF_MACHINES = {3: "i686", 62: X86, 183: ARM64, 21: "ppc64", 22: "s390x", 243: "riscv64"}
_UNAME_NAMES = {"amd64": X86, "arm64": ARM64}
_IOMMU_ARCHITECTURES = {"intel": X86, "amd": X86, "arm": ARM64}


def architecture_from_iommu(vendor):
    """``x86_64`` for an Intel or AMD IOMMU, ``aarch64`` for an Arm SMMU, else None."""
    return _IOMMU_ARCHITECTURES.get(vendor)


def host_architecture(root):
    """``(architecture, source)`` of the kernel that boots from ``root``; ``(None, None)`` when unknown."""
    if host_model.is_live_root(root):
        machine = os.uname().machine
        return _UNAME_NAMES.get(machine, machine), "the running kernel (uname -m)"
    for program in PROGRAMS:
        machine = _elf_machine(root, program)
        if machine is not None:
            return machine, "/%s in the tree, a program for %s" % (program, machine)
    architecture = architecture_of(read_cpuinfo(root))
    if architecture is not None:
        return architecture, "/proc/cpuinfo in the tree"
    iommu = read_iommu(root, [])
    architecture = architecture_from_iommu(iommu.vendor)
    if architecture is None:
        return None, None
    if iommu.units:
        return architecture, "the IOMMU units in /sys/class/iommu of the tree (%s)" % ", ".join(iommu.units[:2])
    return architecture, "the firmware's ACPI tables in the tree (%s)" % {"intel": "DMAR", "amd": "IVRS"}.get(
        iommu.vendor, "IORT"
    )


def _elf_machine(root, program):
    """The architecture of an ELF program below ``root`` (links resolved as the tree sees them), or None."""
    try:
        with open(host_model.inside(root, program), "rb") as handle:
            header = handle.read(20)
    except (OSError, host_model.OutsideRootError):
        return None
    if len(header) < 20 or header[:4] != b"\x7fELF" or header[5] not in (1, 2):
        return None
    (machine,) = struct.unpack("<H" if header[5] == 1 else ">H", header[18:20])
    name = _ELF_MACHINES.get(machine)
    if name == "ppc64" and header[5] == 1:
        return POWER
    return name
