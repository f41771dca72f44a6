# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PCI devices the host cannot give away: the root filesystem's disk and the default route's NIC.

Public API (every reader takes the host ``root``):

- :func:`critical_devices` ``(root) -> dict[str, list[str]]``: PCI address -> reasons, e.g.
  ``holds the root filesystem (/dev/nvme0n1p2)``, ``NIC of the default route (eno1)``.
- :func:`root_filesystem` ``(root) -> (source | None, list[str])``: the root mount's source and
  the PCI devices under it (through partitions, device-mapper and md ``slaves``).
- :func:`default_route_interfaces` ``(root) -> list[str]``: interfaces of the IPv4/IPv6 default routes.
- :func:`interface_devices` ``(root, interface) -> list[str]``: PCI devices behind an interface
  (through bridge, bond and VLAN ``lower_*`` links).
"""

from __future__ import annotations

import os
import re

from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import (
    PCI_ADDRESS_PATTERN,
    host_path,
    list_dir,
    resolve,
)

_PCI_IN_PATH = re.compile(r"(?<![0-9a-f])" + PCI_ADDRESS_PATTERN + r"(?=/|$)")


def _inside(real_root, path):
    """Whether ``path`` is ``real_root`` (the root with its links resolved) or below it."""
    return path == real_root or path.startswith(real_root.rstrip("/") + "/")


def _pci_owner(real_root, path):
    """The PCI device closest to ``path`` (a sysfs directory), following links; None if none."""
    return _pci_owner_of_real(real_root, resolve(path))


def _pci_owner_of_real(real_root, real):
    """:func:`_pci_owner` of a path whose links are already resolved."""
    if not _inside(real_root, real):
        return None
    found = _PCI_IN_PATH.findall(real)
    return found[-1] if found else None


def _root_mount(root):
    """``(major:minor, source)`` of the last mount on ``/`` in ``proc/self/mountinfo``."""
    found = (None, None)
    try:
        with open(host_path(root, "proc/self/mountinfo"), encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) < 7 or fields[4] != "/" or "-" not in fields[6:]:
                    continue
                separator = fields.index("-", 6)
                source = fields[separator + 2] if len(fields) > separator + 2 else None
                found = (fields[2], source)
    except OSError:
        pass
    return found


def _block_dir(root, dev_number, source):
    if dev_number and not dev_number.startswith("0:"):
        path = host_path(root, "sys/dev/block", dev_number)
        if os.path.exists(path):
            return path
    if source and source.startswith("/dev/"):
        name = os.path.basename(source)
        path = host_path(root, "sys/class/block", name)
        if os.path.exists(path):
            return path
        # /dev/mapper/<name>: find the dm-N whose dm/name matches.
        for block in list_dir(host_path(root, "sys/block")):
            dm_name = host_path(root, "sys/block", block, "dm/name")
            try:
                with open(dm_name, encoding="utf-8") as handle:
                    if handle.read().strip() == name:
                        return host_path(root, "sys/block", block)
            except OSError:
                continue
    return None


def _block_devices(real_root, path, seen):
    """PCI devices under a block device, following ``slaves`` of dm/md devices."""
    real = resolve(path)
    if real in seen or not _inside(real_root, real):
        return []
    seen.add(real)
    owners = []
    owner = _pci_owner_of_real(real_root, real)
    if owner:
        owners.append(owner)
    for slave in list_dir(real + "/slaves"):
        owners.extend(_block_devices(real_root, real + "/slaves/" + slave, seen))
    # A partition's holders are listed on the whole disk; its parent directory is the disk.
    if not owners and os.path.exists(real + "/partition"):
        owners.extend(_block_devices(real_root, os.path.dirname(real), seen))
    return owners


def root_filesystem(root):
    """``(source, [PCI addresses])`` of the filesystem mounted on ``/``."""
    dev_number, source = _root_mount(root)
    block = _block_dir(root, dev_number, source)
    if block is None:
        return source, []
    return source, sorted(set(_block_devices(resolve(root), block, set())))


def default_route_interfaces(root):
    """Interfaces that carry a default route (``proc/net/route`` and ``proc/net/ipv6_route``)."""
    interfaces = []
    try:
        with open(host_path(root, "proc/net/route"), encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 8 and fields[1] == "00000000" and fields[7] == "00000000":
                    interfaces.append(fields[0])
    except OSError:
        pass
    try:
        with open(host_path(root, "proc/net/ipv6_route"), encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 10 and fields[0] == "0" * 32 and fields[1] == "00" and fields[9] != "lo":
                    interfaces.append(fields[9])
    except OSError:
        pass
    return sorted(set(interfaces))


def interface_devices(root, interface):
    """PCI devices behind a network interface, through bridges, bonds and VLANs (``lower_*``)."""
    return sorted(set(_interface_devices(root, resolve(root), interface, set())))


def _interface_devices(root, real_root, interface, seen):
    if interface in seen:
        return []
    seen.add(interface)
    base = host_path(root, "sys/class/net", interface)
    owner = _pci_owner(real_root, base + "/device") if os.path.exists(base + "/device") else None
    owners = [owner] if owner else []
    for entry in list_dir(base):
        if entry.startswith("lower_"):
            owners.extend(_interface_devices(root, real_root, entry[len("lower_") :], seen))
    return owners


def critical_devices(root):
    """``{address: [reasons]}`` for devices the host needs to keep running."""
    critical = {}
    source, disks = root_filesystem(root)
    for address in disks:
        critical.setdefault(address, []).append("holds the root filesystem (%s)" % source)
    for interface in default_route_interfaces(root):
        for address in interface_devices(root, interface):
            critical.setdefault(address, []).append("NIC of the default route (%s)" % interface)
    return critical
