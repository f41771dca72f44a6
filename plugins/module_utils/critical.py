# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PCI devices the host cannot give away: the disks of its storage in use and the default route's NIC.

Public API (every reader takes the host ``root``):

- :func:`critical_devices` ``(root) -> dict[str, list[str]]``: PCI address -> reasons, e.g.
  ``holds the root filesystem (/dev/nvme0n1p2)``, ``NIC of the default route (eno1)``.
- :func:`storage_in_use` ``(root) -> list[(reason, list[str])]``: the storage the host uses and the
  PCI devices under each: the root filesystem, every other mounted block filesystem, active swap,
  imported ZFS pools (their members from the udev database's blkid labels), and active
  device-mapper and md RAID devices (LVM volumes a VM uses are not mounted). A block device leads to
  its PCI devices through partitions, device-mapper and md ``slaves``, btrfs's other devices and
  the controllers of a multipath NVMe namespace.
- :func:`default_route_interfaces` ``(root) -> list[str]``: interfaces of the IPv4/IPv6 default routes.
- :func:`interface_devices` ``(root, interface) -> list[str]``: PCI devices behind an interface
  (through bridge, bond and VLAN ``lower_*`` links).

Taking such a device from its host driver pulls the disk from under a mounted filesystem, swap or a
pool (I/O errors, a hung or crashed host) or cuts the host off the network.
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


# mountinfo and /proc/swaps write a space, tab, newline and backslash in a path as an octal escape.
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(text):
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), text)


def _mounts(root):
    """``[(major:minor, mount point, filesystem type, source)]`` of ``proc/self/mountinfo``, in mount order."""
    mounts = []
    try:
        with open(host_path(root, "proc/self/mountinfo"), encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) < 7 or "-" not in fields[6:]:
                    continue
                separator = fields.index("-", 6)
                fstype = fields[separator + 1] if len(fields) > separator + 1 else None
                source = _unescape(fields[separator + 2]) if len(fields) > separator + 2 else None
                mounts.append((fields[2], _unescape(fields[4]), fstype, source))
    except OSError:
        pass
    return mounts


def _root_mount(root):
    """``(major:minor, source)`` of the last mount on ``/`` in ``proc/self/mountinfo``."""
    found = (None, None)
    for dev_number, mount_point, _fstype, source in _mounts(root):
        if mount_point == "/":
            found = (dev_number, source)
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


# A namespace of a multipath-capable NVMe subsystem (dual-port U.2 drives, and QEMU's nvme-subsys) is
# a disk of the subsystem (devices/virtual/nvme-subsystem/nvme-subsysN/nvmeXnY), not of a controller:
# the subsystem's directory links each controller (nvme0 -> .../<PCI address>/nvme/nvme0).
_NVME_SUBSYSTEM = re.compile(r"^(.*/nvme-subsystem/nvme-subsys[0-9]+)/")
_NVME_CONTROLLER = re.compile(r"nvme[0-9]+\Z")


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
    else:
        subsystem = _NVME_SUBSYSTEM.match(real)
        if subsystem is not None:
            for entry in list_dir(subsystem.group(1)):
                if _NVME_CONTROLLER.match(entry):
                    owner = _pci_owner(real_root, subsystem.group(1) + "/" + entry)
                    if owner:
                        owners.append(owner)
    for slave in list_dir(real + "/slaves"):
        owners.extend(_block_devices(real_root, real + "/slaves/" + slave, seen))
    # A partition's holders are listed on the whole disk; its parent directory is the disk.
    if not owners and os.path.exists(real + "/partition"):
        owners.extend(_block_devices(real_root, os.path.dirname(real), seen))
    return owners


def _btrfs_devices(root, block):
    """The block directories of every device of the btrfs filesystem that ``block`` belongs to
    (``sys/fs/btrfs/<fsid>/devices/<name>``); just ``block`` when no filesystem lists it."""
    name = os.path.basename(resolve(block))
    base = host_path(root, "sys/fs/btrfs")
    for fsid in list_dir(base):
        members = list_dir("%s/%s/devices" % (base, fsid))
        if name in members:
            return ["%s/%s/devices/%s" % (base, fsid, member) for member in members]
    return [block]


def _owners(real_root, blocks, walked=None):
    """The sorted PCI devices under the block directories ``blocks``; ``walked`` (a set) collects the
    block directories walked."""
    seen = set()
    owners = set()
    for block in blocks:
        owners.update(_block_devices(real_root, block, seen))
    if walked is not None:
        walked.update(seen)
    return sorted(owners)


def _udev_properties(root, dev_number):
    """``{key: value}`` of the ``E:`` lines of the udev database entry of block device ``dev_number``."""
    properties = {}
    try:
        with open(host_path(root, "run/udev/data", "b" + dev_number), encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("E:") and "=" in line:
                    key, _sep, value = line[2:].rstrip("\n").partition("=")
                    properties[key] = value
    except OSError:
        pass
    return properties


def _zfs_pools(root):
    """``{pool: [block directories]}`` of the imported ZFS pools: a pool has a directory in
    ``proc/spl/kstat/zfs`` while imported; its members are the block devices blkid labels as
    ``zfs_member`` with the pool's name (``ID_FS_LABEL`` in the udev database)."""
    kstat = host_path(root, "proc/spl/kstat/zfs")
    pools = {name: [] for name in list_dir(kstat) if os.path.isdir(kstat + "/" + name)}
    if not pools:
        return pools
    for name in list_dir(host_path(root, "sys/class/block")):
        block = host_path(root, "sys/class/block", name)
        try:
            with open(block + "/dev", encoding="ascii") as handle:
                dev_number = handle.read().strip()
        except (OSError, ValueError):
            continue
        properties = _udev_properties(root, dev_number)
        if properties.get("ID_FS_TYPE") == "zfs_member" and properties.get("ID_FS_LABEL") in pools:
            pools[properties["ID_FS_LABEL"]].append(block)
    return pools


def _swaps(root):
    """The sources of the active swap areas on partitions and disks (``proc/swaps``; swap files live
    on a mounted filesystem, counted there)."""
    sources = []
    try:
        with open(host_path(root, "proc/swaps"), encoding="utf-8", errors="replace") as handle:
            for line in list(handle)[1:]:
                fields = line.split()
                if len(fields) >= 2 and fields[1] == "partition":
                    sources.append(_unescape(fields[0]))
    except OSError:
        pass
    return sources


def _storage_controllers(root):
    """Every PCI mass storage controller (class 01): what may hold storage the host cannot place."""
    bus = host_path(root, "sys/bus/pci/devices")
    found = []
    for address in list_dir(bus):
        try:
            with open("%s/%s/class" % (bus, address), encoding="ascii") as handle:
                class_code = handle.read().strip().lower()
        except (OSError, ValueError):
            continue
        if class_code.startswith("0x01"):
            found.append(address)
    return sorted(found)


def _holders_top(real_root, seen):
    """``[(name, [PCI addresses])]`` of the active device-mapper and md devices no other block device
    holds (the top of each stack) that the mounts, swap and pools did not reach (``seen``)."""
    found = []
    for block in list_dir(host_path(real_root, "sys/block")):
        path = host_path(real_root, "sys/block", block)
        real = resolve(path)
        if real in seen or not list_dir(real + "/slaves") or list_dir(real + "/holders"):
            continue
        try:
            with open(real + "/dm/name", encoding="utf-8", errors="replace") as handle:
                name = handle.read().strip() or block
        except OSError:
            name = block
        # What the mounts, swap and pools reached is theirs: a volume beside them on the same disk
        # (a thin pool beside the root volume) adds nothing.
        seen_here = set(seen)
        addresses = sorted(set(_block_devices(real_root, path, seen_here)))
        if addresses:
            found.append((name, addresses))
    return found


def storage_in_use(root):
    """``[(reason, [PCI addresses])]``: the host's storage in use, in this order: the root filesystem,
    the other mounted block filesystems (each block device once, at its first mount point), active swap,
    the other imported ZFS pools, then the active device-mapper and md devices none of these reached."""
    real_root = resolve(root)
    seen = set()
    uses = []
    pools = _zfs_pools(root)
    mounts = _mounts(root)
    root_mounts = [mount for mount in mounts if mount[1] == "/"]
    ordered = root_mounts[-1:] + [mount for mount in mounts if mount[1] != "/"]
    used_blocks = set()
    for dev_number, mount_point, fstype, source in ordered:
        is_root = mount_point == "/"
        what = ("holds the root filesystem (%s)" % source if is_root
                else "holds the filesystem mounted on %s (%s)" % (mount_point, source))
        if fstype == "zfs" and source:
            pool = source.split("/", 1)[0]
            if pool not in pools:
                if is_root:
                    pools[pool] = []
                else:
                    continue
            if is_root:
                uses.append(_pool_use(root, real_root, what, pool, pools.pop(pool), seen))
            continue
        block = _block_dir(root, dev_number, source)
        if block is None:
            continue
        real = resolve(block)
        if real in used_blocks:
            continue
        used_blocks.add(real)
        blocks = _btrfs_devices(root, block) if fstype == "btrfs" else [block]
        uses.append((what, _owners(real_root, blocks, seen)))
    for source in _swaps(root):
        block = _block_dir(root, None, source)
        real = resolve(block) if block is not None else None
        if real is not None and real not in used_blocks:
            used_blocks.add(real)
            uses.append(("holds active swap (%s)" % source, _owners(real_root, [block], seen)))
    for pool in sorted(pools):
        uses.append(_pool_use(root, real_root, "holds the imported ZFS pool %s" % pool, pool, pools[pool], seen))
    for name, addresses in _holders_top(real_root, seen):
        uses.append(("holds the active device-mapper or RAID device %s" % name, addresses))
    return [(reason, addresses) for reason, addresses in uses if addresses]


def _pool_use(root, real_root, what, pool, members, seen):
    """A ZFS pool's use: its members' PCI devices, or, when no block device carries its label (no udev
    database, as in a snapshot), every storage controller, as one that may hold it."""
    if members:
        return what, _owners(real_root, members, seen)
    return ("may hold %s: no block device carries the ZFS pool %s's label in the udev database "
            "(/run/udev/data), so its disks are unknown" % (what[len("holds ") :], pool),
            _storage_controllers(root))


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
    for reason, addresses in storage_in_use(root):
        for address in addresses:
            reasons = critical.setdefault(address, [])
            if reason not in reasons:
                reasons.append(reason)
    for interface in default_route_interfaces(root):
        for address in interface_devices(root, interface):
            critical.setdefault(address, []).append("NIC of the default route (%s)" % interface)
    return critical
