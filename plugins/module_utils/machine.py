# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether the host is a virtual machine, and whose.

A GPU virtualization host can itself be a virtual machine: a nested lab, or a cloud or KVM instance
with GPUs passed through to it. Its IOMMU and its CPU virtualization are then what its hypervisor
gives it, and no firmware setup inside it changes them: the advice for a missing IOMMU differs.

Public API:

- :func:`read_machine` ``(root, flags=None) -> (virtual_machine, hypervisor)``: ``virtual_machine``
  is True, False or None (cannot tell); ``hypervisor`` names it when a sign does, else None.

The signs, the ones ``systemd-detect-virt`` reads (src/basic/virt.c):

- x86: the CPU's hypervisor bit (``hypervisor`` among ``/proc/cpuinfo``'s flags), which hypervisors
  set unless told to hide it (some GPU passthrough setups hide it from a guest's driver). The flags
  without it and without any sign below mean bare metal;
- SMBIOS: bit 4 of the BIOS Characteristics Extension Byte 2 (offset 0x13 of the BIOS Information
  structure, ``/sys/firmware/dmi/entries/0-0/raw``, readable by root) says "virtual machine". Set, it
  says so; clear, it says nothing (SeaBIOS leaves it clear);
- DMI strings (``/sys/class/dmi/id``): ``product_name``, ``sys_vendor``, ``board_vendor``,
  ``bios_vendor`` and ``product_version``, in that order, starting with a hypervisor's name. Names a
  maker of physical servers also uses (Amazon EC2's bare-metal instances, Oracle's and Microsoft's
  servers) name the hypervisor of a machine known to be virtual, and tell a VM by themselves only as
  systemd does: Amazon EC2 through the SMBIOS bit, else a product name (the instance type) without
  ``.metal``; Microsoft with the product name ``Virtual Machine`` (Hyper-V);
- the device tree (arm64, POWER): a ``hypervisor`` node (``linux,kvm``, ``xen``, ``vmware``), or
  QEMU's ``fw-cfg`` node;
- ``/sys/hypervisor/type`` (Xen; a Xen control domain counts too: Xen, not its kernel, owns the
  IOMMU there).

Without the x86 flags and without a sign, whether the host is virtual is unknown (None): an arm64
server's firmware names its maker, not whether it is physical.
"""

from __future__ import annotations

from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import host_path, list_dir, read_text

DMI = "sys/class/dmi/id"
DMI_FIELDS = ("product_name", "sys_vendor", "board_vendor", "bios_vendor", "product_version")
SMBIOS_BIOS = "sys/firmware/dmi/entries/0-0/raw"
DEVICE_TREE = "sys/firmware/devicetree/base"
SYS_HYPERVISOR = "sys/hypervisor/type"

# The start of a DMI string -> the hypervisor it names, and whether it tells a VM by itself.
_DMI_HYPERVISORS = (
    ("KVM", "KVM", True),
    ("OpenStack", "OpenStack", True),
    ("KubeVirt", "KubeVirt", True),
    ("Amazon EC2", "Amazon EC2", False),
    ("QEMU", "QEMU", True),
    ("VMware", "VMware", True),
    ("VMW", "VMware", True),
    ("innotek GmbH", "VirtualBox", True),
    ("VirtualBox", "VirtualBox", True),
    ("Oracle Corporation", "VirtualBox", False),
    ("Xen", "Xen", True),
    ("Bochs", "Bochs", True),
    ("Parallels", "Parallels", True),
    ("BHYVE", "bhyve", True),
    ("Hyper-V", "Hyper-V", True),
    ("Apple Virtualization", "Apple Virtualization", True),
    ("Google Compute Engine", "Google Compute Engine", False),
)
# A device tree's hypervisor/compatible (a substring of it) -> the hypervisor.
_DEVICE_TREE_HYPERVISORS = (("linux,kvm", "KVM"), ("xen", "Xen"), ("vmware", "VMware"))
_SMBIOS_VM_BYTE = 0x13
_SMBIOS_VM_BIT = 1 << 4


def read_machine(root, flags=None):
    """``(virtual_machine, hypervisor)`` of the host below ``root``; ``flags``: the x86 CPU flags
    (a set), or None on other architectures or when ``/proc/cpuinfo`` could not be read."""
    dmi = {name: read_text(host_path(root, DMI, name)) for name in DMI_FIELDS}
    smbios = _smbios_vm_bit(root)
    dmi_name, dmi_tells = _dmi_hypervisor(dmi, smbios)
    tree_tells, tree_name = _device_tree_hypervisor(root)
    xen = _sys_hypervisor(root)
    name = dmi_name or tree_name or xen
    if (flags is not None and "hypervisor" in flags) or dmi_tells or tree_tells or xen or smbios:
        return True, name
    if flags is not None or dmi_tells is False:
        return False, None  # no sign on x86, or an Amazon EC2 bare-metal instance
    return None, None


def _smbios_vm_bit(root):
    """True when the SMBIOS BIOS Information structure sets its "virtual machine" bit, False when it
    has the byte and leaves the bit clear, None when it cannot be read or is too short to have it."""
    try:
        with open(host_path(root, SMBIOS_BIOS), "rb") as handle:
            raw = handle.read(256)
    except OSError:
        return None
    # Byte 1 is the structure's formatted length: 0x12 plus its extension bytes.
    if len(raw) <= _SMBIOS_VM_BYTE or raw[0] != 0 or raw[1] <= _SMBIOS_VM_BYTE:
        return None
    return bool(raw[_SMBIOS_VM_BYTE] & _SMBIOS_VM_BIT)


def _dmi_hypervisor(dmi, smbios):
    """``(name, tells)``: the hypervisor the DMI strings name (or None) and whether they tell a VM:
    True, None (they do not tell), or False for an Amazon EC2 instance known to be bare metal."""
    for field in DMI_FIELDS:
        text = dmi[field]
        if not text:
            continue
        for prefix, name, tells in _DMI_HYPERVISORS:
            if text.startswith(prefix):
                if name == "Amazon EC2":
                    # The product name is the instance type; a bare-metal one ends in .metal.
                    return name, smbios if smbios is not None else not _metal(dmi["product_name"])
                return name, True if tells else None
    if dmi["sys_vendor"] == "Microsoft Corporation" and dmi["product_name"] == "Virtual Machine":
        return "Hyper-V", True
    return None, None


def _metal(product_name):
    """An EC2 product name (the instance type) of a bare-metal instance: ``m7g.metal``, ``c6i.metal-24xl``."""
    if not product_name:
        return False
    _head, dot, tail = product_name.partition(".metal")
    return bool(dot) and (tail == "" or tail.startswith("-"))


def _device_tree_hypervisor(root):
    """``(tells, name)``: whether the device tree shows a hypervisor, and which when it says."""
    base = host_path(root, DEVICE_TREE)
    compatible = read_text(base + "/hypervisor/compatible")
    if compatible is not None:
        return True, next((name for key, name in _DEVICE_TREE_HYPERVISORS if key in compatible), None)
    if any("fw-cfg" in entry for entry in list_dir(base)):
        return True, "QEMU"
    return False, None


def _sys_hypervisor(root):
    """The hypervisor ``sys/hypervisor/type`` names (Xen writes ``xen``), or None."""
    kind = read_text(host_path(root, SYS_HYPERVISOR))
    if not kind:
        return None
    return "Xen" if kind == "xen" else kind
