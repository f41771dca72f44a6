# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A topology in a few lines: the ``gpuvirt.host.topology_summary`` filter's work.

plugins/filter/topology_summary.py documents the filter, and imports this module when it is first called.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError


def _get(mapping, key, default=None):
    if isinstance(mapping, dict):
        value = mapping.get(key, default)
        return default if value is None else value
    return default


def _iommu_line(topology):
    iommu = _get(topology, "iommu", {})
    vendor = _get(iommu, "vendor")
    if _get(iommu, "enabled", False):
        details = [vendor or "unknown vendor"]
        remap = _get(iommu, "interrupt_remapping")
        if remap is not None:
            details.append("interrupt remapping " + ("on" if remap else "off"))
        if _get(iommu, "passthrough_mode", False):
            # iommu=pt is x86's word; elsewhere iommu.passthrough=1 asks for it.
            x86 = _get(_get(topology, "cpu", {}), "architecture", "x86_64") == "x86_64"
            details.append("iommu=pt" if x86 else "iommu.passthrough=1")
        return "IOMMU: on (%s)" % ", ".join(details)
    if _get(iommu, "enabled") is None:
        return "IOMMU: unknown (the tree does not show IOMMU units or groups)"
    firmware = _get(iommu, "firmware_support", False)
    if firmware:
        return "IOMMU: off (the firmware offers %s; it is not enabled in the kernel)" % (vendor or "one")
    virtual = _get(_get(topology, "cpu", {}), "virtual_machine", False)
    if firmware is None:
        return "IOMMU: off (whether the %s offers one is unknown: its ACPI tables are not in the tree)" % (
            "hypervisor" if virtual else "firmware")
    if virtual:
        return "IOMMU: off (the hypervisor gives this virtual machine none)"
    return "IOMMU: off (no IOMMU offered by the firmware)"


def _machine_line(topology):
    """``Host: virtual machine (QEMU)`` for a virtual machine, else None."""
    cpu = _get(topology, "cpu", {})
    if not _get(cpu, "virtual_machine", False):
        return None
    hypervisor = _get(cpu, "hypervisor")
    return "Host: virtual machine%s" % (" (%s)" % hypervisor if hypervisor else "")


def _device_label(device):
    ids = "%s:%s" % (_get(device, "vendor_id", "????"), _get(device, "device_id", "????"))
    name = _get(device, "name") or _get(device, "device_name")
    if name and name.endswith(" [%s]" % ids):
        name = name[: -len(ids) - 3]  # a fallback name that already carries the IDs
    return "%s [%s]%s" % (_get(device, "address", "?"), ids, " " + name if name else "")


def _gpu_lines(topology):
    gpus = _get(topology, "gpus", [])
    lines = ["GPUs: %d" % len(gpus)]
    groups = _get(topology, "iommu_groups", {})
    for gpu in sorted(gpus, key=lambda g: _get(g, "address", "")):
        group = _get(gpu, "iommu_group")
        flags = []
        if _get(gpu, "boot_vga", False):
            flags.append("BOOT VGA")
        elif "boot_display" in _get(_get(gpu, "passthrough", {}), "codes", []):
            flags.append("BOOT DISPLAY")
        if "firmware_framebuffer" in _get(_get(gpu, "passthrough", {}), "codes", []):
            flags.append("FIRMWARE FRAMEBUFFER")
        if _get(gpu, "is_vf", False):
            flags.append("VF of %s" % _get(gpu, "physfn", "?"))
        if _get(gpu, "mdev_parent", False):
            flags.append("mdev parent")
        if _get(gpu, "sriov_total_vfs"):
            flags.append("SR-IOV %s VFs" % gpu["sriov_total_vfs"])
        lines.append(
            "  %s  driver=%s  group=%s%s"
            % (_device_label(gpu), _get(gpu, "driver", "none"), group if group is not None else "none",
               "  " + ", ".join(flags) if flags else "")
        )  # fmt: skip
        if group is not None and len(groups.get(str(group), [])) > 1:
            lines.append("      group %s: %s" % (group, ", ".join(groups[str(group)])))
        verdict = _get(gpu, "passthrough", {})
        if _get(verdict, "viable", False):
            lines.append("      passthrough: viable, bind together %s" % ", ".join(_get(verdict, "devices", [])))
        else:
            codes = _get(verdict, "codes", [])
            lines.append("      passthrough: NOT viable (%s)" % (", ".join(codes) or "no reason given"))
            for reason in _get(verdict, "reasons", []):
                lines.append("        - %s" % reason)
    return lines


def _mdev_lines(topology):
    parents = _get(topology, "mdev_parents", [])
    lines = ["Mediated-device parents: %d" % len(parents)]
    for parent in sorted(parents, key=lambda p: _get(p, "parent", "")):
        types = []
        for mdev_type in _get(parent, "types", []):
            type_id, name = _get(mdev_type, "id", "?"), _get(mdev_type, "name")
            free = "%s free" % _get(mdev_type, "available_instances", "?")
            types.append("%s (%s)" % (type_id, free if name in (None, type_id) else "%s, %s" % (name, free)))
        lines.append("  %s: %s" % (_get(parent, "parent", "?"), "; ".join(types) or "no types"))
    mdevs = _get(topology, "mdevs", [])
    lines.append("Mediated devices: %d" % len(mdevs))
    for mdev in sorted(mdevs, key=lambda m: (_get(m, "parent", ""), _get(m, "uuid", ""))):
        lines.append("  %s  %s on %s" % (_get(mdev, "uuid", "?"), _get(mdev, "type", "?"), _get(mdev, "parent", "?")))
    return lines


def _sriov_lines(topology):
    pfs = [d for d in _get(topology, "devices", []) if _get(_get(d, "sriov", {}), "total_vfs", 0)]
    lines = ["SR-IOV physical functions: %d" % len(pfs)]
    for device in sorted(pfs, key=lambda d: _get(d, "address", "")):
        sriov = device["sriov"]
        lines.append(
            "  %s  driver=%s  VFs %s of %s enabled"
            % (_device_label(device), _get(device, "driver", "none"), _get(sriov, "num_vfs", 0), sriov["total_vfs"])
        )
    return lines


def _finding_lines(topology):
    findings = _get(topology, "findings", [])
    lines = ["Findings: %d" % len(findings)]
    for finding in findings:
        device = _get(finding, "device")
        lines.append(
            "  [%s] %s%s: %s"
            % (_get(finding, "severity", "?"), _get(finding, "code", "?"), " (%s)" % device if device else "",
               _get(finding, "message", ""))
        )  # fmt: skip
    return lines


def topology_summary(topology):
    """Readable lines for a ``topology`` dict (the ``topology`` key of ``topology_info``'s result)."""
    if isinstance(topology, dict) and "topology" in topology and "iommu" not in topology:
        topology = topology["topology"]  # the whole registered result was passed
    if not isinstance(topology, dict):
        raise AnsibleFilterError(
            "topology_summary expects the 'topology' dict returned by gpuvirt.host.topology_info, got %s"
            % type(topology).__name__
        )
    kernel = _get(topology, "kernel", {})
    lines = [_iommu_line(topology)]
    machine = _machine_line(topology)
    if machine:
        lines.insert(0, machine)
    cmdline = _get(kernel, "cmdline", [])
    lines.append("Kernel: %s  cmdline: %s" % (_get(kernel, "release", "?"), " ".join(cmdline) or "?"))
    lines += _gpu_lines(topology)
    lines += _mdev_lines(topology)
    lines += _sriov_lines(topology)
    lines += _finding_lines(topology)
    return lines
