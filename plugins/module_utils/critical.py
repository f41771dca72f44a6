# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PCI devices the host cannot give away: the disks of its storage in use and the NICs that keep it reachable.

Public API (every reader takes the host ``root``):

- :func:`critical_devices` ``(root) -> dict[str, list[str]]``: PCI address -> reasons, e.g.
  ``holds the root filesystem (/dev/nvme0n1p2)``, ``NIC of the default route (eno1)``.
- :func:`storage_in_use` ``(root) -> list[(reason, list[str])]``: the storage the host uses and the
  PCI devices under each: the root filesystem, every other mounted block filesystem, active swap,
  imported ZFS pools (their members from the udev database's blkid labels), and active
  device-mapper and md RAID devices (LVM volumes a VM uses are not mounted). A block device leads to
  its PCI devices through partitions, device-mapper and md ``slaves``, btrfs's and bcachefs's other
  devices, a zram device's backing device and the controllers of a multipath NVMe namespace (an
  NVMe/FC controller by its HBA).
- :func:`storage_adapters` ``(root) -> list[(reason, list[str])]``: the HBAs of the host's sessions to
  storage targets that no socket shows: NVMe/FC controllers, iSCSI sessions of iSER and offload HBAs,
  SRP target ports.
- :func:`default_route_interfaces` ``(root) -> list[str]``: interfaces of the IPv4/IPv6 default routes,
  every next hop of a multipath route or nexthop group (:mod:`rtnetlink` on the live host).
- :func:`ssh_ports` ``(root) -> list[int]``: the ports sshd listens on (sshd_config, and the socket
  unit of socket-activated sshd).
- :func:`management_interfaces` ``(root) -> list[(interface, reason)]``: those, and the interfaces the
  replies of the established SSH sessions leave through (:func:`ssh_peers` routed by
  :func:`route_interfaces`): a management network reached by a route of its own, or by a policy
  rule's table. A snapshot has its ``proc/net`` routes only (the main IPv4 table, a single next hop
  of each route); one without ``proc/net/tcp`` has no sessions.
- :func:`storage_interfaces` ``(root) -> list[(interface, reason)]``: the interfaces that carry network
  storage the host uses: those through which the servers of its mounted NFS, SMB and CephFS
  filesystems are reached, and those of its established sessions to iSCSI, NVMe/TCP, Ceph, NBD,
  GlusterFS, NFS and SMB servers (the disks of VMs as well as the host's), and the targets of its
  NVMe over Fabrics controllers over RDMA and of its iSCSI connections (iSER's too), which open no
  TCP socket, by the same routes.
- :func:`cluster_interfaces` ``(root) -> list[(interface, reason)]``: the interfaces of the corosync
  cluster links (Proxmox VE, Pacemaker): a node cut off its cluster fences itself.
- :func:`nvme_subsystem_controllers` ``(real) -> list[str]``: the controllers of a multipath NVMe
  namespace (or a partition of it) at the resolved path ``real``.
- :func:`interface_devices` ``(root, interface) -> list[str]``: PCI devices behind an interface
  (through bridge, bond and VLAN ``lower_*`` links; for an Open vSwitch bridge, every port of the datapath).

Taking such a device from its host driver pulls the disk from under a mounted filesystem, swap or a
pool (I/O errors, a hung or crashed host), or the network under the storage of the host and its VMs,
or cuts the host off the network, and Ansible's own session with it.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import re
import sys

from ansible_collections.gpuvirt.host.plugins.module_utils import rtnetlink
from ansible_collections.gpuvirt.host.plugins.module_utils.host import is_live_root
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import (
    PCI_ADDRESS_PATTERN,
    host_path,
    list_dir,
    read_text,
    resolve,
)

_PCI_IN_PATH = re.compile(r"(?<![0-9a-f])" + PCI_ADDRESS_PATTERN + r"(?=/|$)")
# The device of Open vSwitch's kernel datapath, which ovs-vswitchd names so; its ports are its lower_ links.
OVS_DATAPATH = "ovs-system"


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
    """``[(major:minor, mount point, filesystem type, source, super options)]`` of ``proc/self/mountinfo``,
    in mount order (the options ``""`` when absent)."""
    mounts = []
    for fields in _table(root, "proc/self/mountinfo", header=False):
        if len(fields) < 7 or "-" not in fields[6:]:
            continue
        separator = fields.index("-", 6)
        fstype = fields[separator + 1] if len(fields) > separator + 1 else None
        source = _unescape(fields[separator + 2]) if len(fields) > separator + 2 else None
        options = _unescape(fields[separator + 3]) if len(fields) > separator + 3 else ""
        mounts.append((fields[2], _unescape(fields[4]), fstype, source, options))
    return mounts


def _root_mount(root):
    """``(major:minor, source)`` of the last mount on ``/`` in ``proc/self/mountinfo``."""
    found = (None, None)
    for dev_number, mount_point, _fstype, source, _options in _mounts(root):
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
# Without multipath (nvme_core.multipath=N) a fabrics namespace is a disk of its controller, a
# virtual device like every NVMe over Fabrics controller (nvme_init_ctrl() under the nvme-fabrics
# device): devices/virtual/nvme-fabrics/ctl/nvmeN/nvmeNnM.
_NVME_FABRICS_CONTROLLER = re.compile(r"^(.*/nvme-fabrics/ctl/nvme[0-9]+)/")


def nvme_subsystem_controllers(real):
    """The controllers (their links in the subsystem's directory) of the multipath-capable NVMe
    subsystem whose namespace, or a partition of it, is at ``real``; none for another block device."""
    subsystem = _NVME_SUBSYSTEM.match(real)
    if subsystem is None:
        return []
    return [subsystem.group(1) + "/" + entry for entry in list_dir(subsystem.group(1)) if _NVME_CONTROLLER.match(entry)]


def namespace_controllers(real):
    """The controllers of the NVMe namespace (or a partition of it) at the resolved path ``real``: its
    subsystem's (:func:`nvme_subsystem_controllers`), or, without multipath, the fabrics controller it
    sits below; none for another block device, and none for a PCIe controller's own namespace (below it)."""
    fabrics = _NVME_FABRICS_CONTROLLER.match(real)
    return [fabrics.group(1)] if fabrics is not None else nvme_subsystem_controllers(real)


def namespace_adapters(root, real):
    """The PCI devices the NVMe namespace at the resolved path ``real`` is reached through when its path
    names none: the functions of its subsystem's PCIe controllers, the HBA ports of its NVMe/FC
    controllers (:func:`_nvme_fc_path`)."""
    real_root = resolve(root)
    owners = []
    for controller in namespace_controllers(real):
        owners.extend(_nvme_controller_owners(real_root, controller))
    return sorted(set(owners))


def _nvme_controller_owners(real_root, controller):
    """The PCI devices an NVMe controller (a path to its directory) reaches its namespaces through: the
    function it sits below (PCIe), or the HBA of an NVMe/FC controller (:func:`_nvme_fc_path`); none for
    another fabrics controller, whose NIC is found by the route to its target (:func:`storage_interfaces`)."""
    owner = _pci_owner(real_root, controller)
    if owner:
        return [owner]
    fc_path = _nvme_fc_path(real_root, controller)
    return fc_path[1] if fc_path is not None else []


def _block_devices(real_root, path, seen):
    """PCI devices under a block device, following ``slaves`` of dm/md devices and a zram device's
    backing device."""
    real = resolve(path)
    if real in seen or not _inside(real_root, real):
        return []
    seen.add(real)
    owners = []
    owner = _pci_owner_of_real(real_root, real)
    if owner:
        owners.append(owner)
    else:
        for controller in namespace_controllers(real):
            owners.extend(_nvme_controller_owners(real_root, controller))
    for slave in list_dir(real + "/slaves"):
        owners.extend(_block_devices(real_root, real + "/slaves/" + slave, seen))
    # A zram device writes idle or incompressible pages out to its backing device (zram's backing_dev,
    # Documentation/admin-guide/blockdev/zram.rst: "none" or the device's path), which nothing mounts.
    backing = read_text(real + "/backing_dev")
    if backing and backing.startswith("/dev/"):
        block = _block_dir(real_root, None, backing)
        if block is not None:
            owners.extend(_block_devices(real_root, block, seen))
    # A partition's holders are listed on the whole disk; its parent directory is the disk.
    if not owners and os.path.exists(real + "/partition"):
        owners.extend(_block_devices(real_root, os.path.dirname(real), seen))
    return owners


def _bcachefs_devices(root, block, source):
    """The block devices of a bcachefs filesystem: the one its device number names (its first online
    member's, ``bch2_fs_get_tree()``) and every member its source lists, joined by ``:``
    (``bch2_show_devname()``). Its data is striped over them: losing any loses the filesystem."""
    blocks = [block]
    for member in (source or "").split(":"):
        found = _block_dir(root, None, member)
        if found is not None and found not in blocks:
            blocks.append(found)
    return blocks


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
    return [_unescape(fields[0]) for fields in _table(root, "proc/swaps", header=True)
            if len(fields) >= 2 and fields[1] == "partition"]


def _storage_controllers(root):
    """Every PCI mass storage controller (class 01): what may hold storage the host cannot place."""
    return _functions_of_class(root, "0x01")


def _functions_of_class(root, prefix):
    """The PCI functions whose ``class`` starts with ``prefix`` (``0x01``, ``0x0c04``), sorted."""
    bus = host_path(root, "sys/bus/pci/devices")
    found = []
    for address in list_dir(bus):
        try:
            with open("%s/%s/class" % (bus, address), encoding="ascii") as handle:
                class_code = handle.read().strip().lower()
        except (OSError, ValueError):
            continue
        if class_code.startswith(prefix):
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


def storage_in_use(root, mounts=None):
    """``[(reason, [PCI addresses])]``: the host's storage in use, in this order: the root filesystem,
    the other mounted block filesystems (each block device once, at its first mount point), active swap,
    the other imported ZFS pools, then the active device-mapper and md devices none of these reached.
    ``mounts``: :func:`_mounts` when already read."""
    real_root = resolve(root)
    seen = set()
    uses = []
    pools = _zfs_pools(root)
    mounts = _mounts(root) if mounts is None else mounts
    root_mounts = [mount for mount in mounts if mount[1] == "/"]
    ordered = root_mounts[-1:] + [mount for mount in mounts if mount[1] != "/"]
    used_blocks = set()
    for dev_number, mount_point, fstype, source, _options in ordered:
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
        if fstype == "btrfs":
            blocks = _btrfs_devices(root, block)
        elif fstype == "bcachefs":
            blocks = _bcachefs_devices(root, block, source)
        else:
            blocks = [block]
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


def default_route_interfaces(root, routes=None):
    """Interfaces that carry a default route, every next hop of each (:func:`_routes`; ``routes``:
    its answer when already read)."""
    return sorted({interface for network, _metric, interface, _table in (_routes(root) if routes is None else routes)
                   if network.prefixlen == 0})


def interface_devices(root, interface):
    """PCI devices behind a network interface, through bridges, bonds and VLANs (``lower_*``)."""
    return sorted(set(_interface_devices(root, resolve(root), interface, set())))


def _interface_devices(root, real_root, interface, seen):
    if interface in seen:
        return []
    seen.add(interface)
    base = host_path(root, "sys/class/net", interface)
    device = os.path.exists(base + "/device")
    owner = _pci_owner(real_root, base + "/device") if device else None
    owners = [owner] if owner else []
    lower = [entry[len("lower_") :] for entry in list_dir(base) if entry.startswith("lower_")]
    for name in lower:
        owners.extend(_interface_devices(root, real_root, name, seen))
    if not device and not lower and interface != OVS_DATAPATH:
        # An Open vSwitch bridge (an internal port) links to no port: the kernel links each port to the
        # datapath's own device instead (ovs_netdev_link()), and sysfs does not say which bridge holds
        # it. Every port of the datapath may carry this interface's traffic.
        owners.extend(_interface_devices(root, real_root, OVS_DATAPATH, seen))
    return owners


def ssh_ports(root):
    """The TCP ports sshd listens on, from ``etc/ssh/sshd_config`` and the files it includes: every
    ``Port``, and the port of a ``ListenAddress`` that names one; 22 when no ``Port`` line says
    otherwise (sshd's default). A tree without the file gets the default. With them, the
    ``ListenStream`` ports of an enabled ``ssh.socket`` or ``sshd.socket`` (:func:`socket_ports`):
    socket-activated sshd listens where its socket unit says, whatever sshd_config says."""
    ports, listen = set(), set()
    _sshd_config(root, host_path(root, _SSH_DIRECTORY, "sshd_config"), ports, listen, set())
    sockets = set()
    for unit in _SSH_SOCKETS:
        if _unit_wanted(root, unit, "sockets.target"):
            sockets.update(socket_ports(root, unit))  # none when the unit is masked
    return sorted((ports or {22}) | listen | sockets)


# The socket units of socket-activated sshd: Debian's and Ubuntu's, and other distributions'.
_SSH_SOCKETS = ("ssh.socket", "sshd.socket")
# The system manager's unit directories, highest precedence first (systemd.unit(5)).
_UNIT_DIRECTORIES = (
    "etc/systemd/system.control", "run/systemd/system.control", "run/systemd/transient",
    "run/systemd/generator.early", "etc/systemd/system", "etc/systemd/system.attached", "run/systemd/system",
    "run/systemd/system.attached", "run/systemd/generator", "usr/local/lib/systemd/system",
    "usr/lib/systemd/system", "lib/systemd/system", "run/systemd/generator.late",
)  # fmt: skip
_LISTEN_STREAM_PORT = re.compile(r"^(?:(?:\[[^\]]+\]|[0-9.]+):)?([0-9]+)$")


def _unit_wanted(root, unit, target):
    """Whether ``unit`` is enabled for ``target``: a ``<target>.wants/<unit>`` link in a unit
    directory (a masked unit may still have one: :func:`socket_ports` tells)."""
    wants = "%s.wants/%s" % (target, unit)
    return any(os.path.lexists(host_path(root, directory, wants)) for directory in _UNIT_DIRECTORIES)


def _unit_file(root, unit):
    """The path of the file that defines ``unit`` (the first in precedence order), or None when
    none does or it is masked (a link to /dev/null, or empty)."""
    for directory in _UNIT_DIRECTORIES:
        path = host_path(root, directory, unit)
        if not os.path.lexists(path):
            continue
        try:
            if os.path.islink(path) and os.readlink(path) == "/dev/null":
                return None
            return path if os.path.getsize(path) > 0 else None
        except OSError:
            return None
    return None


def socket_ports(root, unit):
    """The TCP ports of a socket unit's ``ListenStream=`` lines: its unit file's, then its drop-ins'
    (``<unit>.d/*.conf`` of every unit directory, in file name order; a name in a directory of
    higher precedence hides the same name below it). An empty ``ListenStream=`` drops the ports
    before it; a ``ListenStream`` of a file system or abstract socket, or of a VSOCK address, has
    no port. ``[]`` when the unit is not there or masked."""
    path = _unit_file(root, unit)
    if path is None:
        return []
    dropins = {}
    for directory in _UNIT_DIRECTORIES:
        for name in list_dir(host_path(root, directory, unit + ".d")):
            if name.endswith(".conf"):
                dropins.setdefault(name, host_path(root, directory, unit + ".d", name))
    ports = []
    for source in [path] + [dropins[name] for name in sorted(dropins)]:
        for value in _socket_lines(source, "ListenStream"):
            if not value:
                ports = []
                continue
            found = _LISTEN_STREAM_PORT.match(value)
            if found is not None and 0 < int(found.group(1)) < 65536:
                ports.append(int(found.group(1)))
    return sorted(set(ports))


def _socket_lines(path, key):
    """The values of ``key=`` in the ``[Socket]`` section of a unit file (none when unreadable)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    values, section = [], None
    for line in lines:
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Socket" and "=" in line and not line.startswith(("#", ";")):
            name, _sep, value = line.partition("=")
            if name.strip() == key:
                values.append(value.strip())
    return values


_SSH_DIRECTORY = "etc/ssh"
_CONFIG_LINE = re.compile(r"\s*([A-Za-z]+)(?:\s*=\s*|\s+)(\S.*?)\s*$")
_LISTEN_PORT = re.compile(r"^(?:\[[^\]]+\]|[^:\s]+):([0-9]+)$")


def _sshd_config(root, path, ports, listen, read):
    """Add the ``Port`` and ``ListenAddress`` ports of the sshd configuration file at ``path`` and of
    the files it includes (relative patterns are below ``/etc/ssh``), each file once (``read``)."""
    if path in read:
        return
    read.add(path)
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return
    for line in lines:
        match = _CONFIG_LINE.match(line)
        if match is None:
            continue
        keyword, value = match.group(1).lower(), match.group(2)
        if keyword == "match":
            break  # Port and ListenAddress are not allowed in a Match block, which runs to the end
        if keyword == "port":
            port = value.split()[0]
            if port.isdigit() and 0 < int(port) < 65536:
                ports.add(int(port))
        elif keyword == "listenaddress":
            found = _LISTEN_PORT.match(value.split()[0])
            if found is not None and 0 < int(found.group(1)) < 65536:
                listen.add(int(found.group(1)))
        elif keyword == "include":
            for pattern in value.split():
                base = host_path(root, "/") if pattern.startswith("/") else host_path(root, _SSH_DIRECTORY) + "/"
                for included in sorted(glob.glob(glob.escape(base) + pattern.lstrip("/"))):
                    _sshd_config(root, included, ports, listen, read)


# proc/net/tcp and tcp6 write each address as the 32-bit words the kernel holds, in the host's byte
# order (on x86 0F02000A is 10.0.2.15); a socket's state 01 is TCP_ESTABLISHED.
_ESTABLISHED = "01"


def _proc_address(text):
    """The address in a ``proc/net/tcp``/``tcp6`` address field's hex part or a ``proc/net/route``
    destination or mask, or None when malformed.
    An IPv4-mapped IPv6 address (an IPv4 client of an IPv6 socket) is returned as its IPv4 address."""
    if len(text) not in (8, 32):
        return None
    try:
        packed = b"".join(int(text[i : i + 8], 16).to_bytes(4, sys.byteorder) for i in range(0, len(text), 8))
    except ValueError:
        return None
    address = ipaddress.ip_address(packed)
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _sessions(root):
    """``[(local port, remote address, remote port)]`` of the established TCP connections in
    ``proc/net/tcp`` and ``proc/net/tcp6``, loopback peers left out."""
    sessions = []
    for name in ("proc/net/tcp", "proc/net/tcp6"):
        for fields in _table(root, name, header=True):
            if len(fields) < 4 or fields[3] != _ESTABLISHED:
                continue
            _local, _sep, local_port = fields[1].partition(":")
            remote, _sep, remote_port = fields[2].partition(":")
            try:
                ports = int(local_port, 16), int(remote_port, 16)
            except ValueError:
                continue
            peer = _proc_address(remote)
            if peer is not None and not peer.is_loopback:
                sessions.append((ports[0], peer, ports[1]))
    return sessions


def ssh_peers(root, ports=None, sessions=None):
    """The remote addresses of the established TCP connections to a local ``ports`` port (default:
    :func:`ssh_ports`), from ``proc/net/tcp`` and ``proc/net/tcp6``, loopback left out: the SSH
    sessions of the host's administrators and of Ansible itself. ``sessions``: :func:`_sessions`
    when already read."""
    ports = set(ssh_ports(root) if ports is None else ports)
    peers = {peer for local_port, peer, _port in (_sessions(root) if sessions is None else sessions)
             if local_port in ports}
    return sorted(peers, key=lambda peer: (peer.version, peer))


def _table(root, name, header):
    """The whitespace-separated fields of each line of a procfs table (none when it cannot be read),
    its first line left out when it is a ``header``. Paths in it may be UTF-8."""
    try:
        with open(host_path(root, name), encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    return [line.split() for line in lines[1 if header else 0 :]]


# Route flags (include/uapi/linux/route.h and ipv6_route.h): a route in use, and one that rejects.
_RTF_UP = 0x0001
_RTF_REJECT = 0x0200


def _routes(root):
    """``[(network, metric, interface, table)]``: one entry per next hop of each route.

    On the live host, the kernel's through rtnetlink (:func:`rtnetlink.routes`): every next hop of a
    multipath route or a nexthop group, in the tables the policy rules look up. Elsewhere (a
    snapshot), or where rtnetlink cannot be read, the routes of ``proc/net/route`` (the main IPv4
    table, one next hop of each route) and ``proc/net/ipv6_route`` (a line per next hop) that are up
    and do not reject."""
    if is_live_root(root):
        try:
            return [(route.network, route.metric, interface, route.table)
                    for route in rtnetlink.routes() for interface in route.interfaces]
        except OSError:
            pass
    routes = []
    for fields in _table(root, "proc/net/route", header=True):
        try:
            flags = int(fields[3], 16)
            destination, mask = _proc_address(fields[1]), _proc_address(fields[7])
            network = ipaddress.ip_network("%s/%s" % (destination, mask))
            metric = int(fields[6])
        except (IndexError, ValueError, TypeError):
            continue
        if flags & _RTF_UP and not flags & _RTF_REJECT:
            routes.append((network, metric, fields[0], rtnetlink.RT_TABLE_MAIN))
    # The destination in network byte order, its prefix length, source, next hop, metric (all hex),
    # reference and use counts, flags, interface.
    for fields in _table(root, "proc/net/ipv6_route", header=False):
        try:
            flags = int(fields[8], 16)
            network = ipaddress.ip_network((ipaddress.IPv6Address(bytes.fromhex(fields[0])), int(fields[1], 16)))
            metric = int(fields[5], 16)
            interface = fields[9]
        except (IndexError, ValueError):
            continue
        if flags & _RTF_UP and not flags & _RTF_REJECT and interface != "lo":
            routes.append((network, metric, interface, rtnetlink.RT_TABLE_MAIN))
    return routes


def route_interfaces(root, address, routes=None):
    """The interfaces the host may send ``address`` through. In each routing table (:func:`_routes`),
    those of its most specific route, and of the lowest metric among equally specific ones (several
    when they tie: multipath routes, and link-local addresses, which every interface routes); and
    those of every table, since which table a policy rule picks depends on more than the address."""
    best = {}  # table -> (rank, interfaces)
    for network, metric, interface, table in _routes(root) if routes is None else routes:
        if network.version != address.version or address not in network:
            continue
        rank = (-network.prefixlen, metric)
        held = best.get(table)
        if held is None or rank < held[0]:
            best[table] = (rank, {interface})
        elif rank == held[0]:
            held[1].add(interface)
    return sorted({interface for _rank, interfaces in best.values() for interface in interfaces})


def management_interfaces(root, routes=None, sessions=None):
    """``[(interface, reason)]``: the interfaces that keep the host reachable. Those of the default
    routes, and those the SSH sessions' replies leave through (a management network reached by a
    route of its own, not the default one). ``routes`` and ``sessions``: :func:`_routes` and
    :func:`_sessions` when already read."""
    routes = _routes(root) if routes is None else routes
    found = [(interface, "NIC of the default route (%s)" % interface)
             for interface in default_route_interfaces(root, routes)]
    peers_by_interface = {}
    for peer in ssh_peers(root, sessions=sessions):
        for interface in route_interfaces(root, peer, routes):
            peers_by_interface.setdefault(interface, []).append(str(peer))
    for interface, peers in sorted(peers_by_interface.items()):
        found.append((interface, "NIC of the SSH %s from %s (%s)"
                      % ("session" if len(peers) == 1 else "sessions", _listed(peers), interface)))
    return found


def _listed(items):
    """``a, b, c and 2 more``: the first three of ``items`` and how many others."""
    return ", ".join(items[:3]) + (" and %d more" % (len(items) - 3) if len(items) > 3 else "")


# Network filesystems, by mountinfo's filesystem type. The kernel writes the server's address as the
# ``addr=`` super option for NFS and SMB (cifs); CephFS names its monitors in the source
# (``10.0.0.1:6789,10.0.0.2:6789:/``) or, with the newer device syntax (``name@fsid.fs=/``), in
# ``mon_addr=`` (``10.0.0.1:6789/10.0.0.2:6789``).
_NETWORK_FILESYSTEMS = {"nfs": "NFS", "nfs4": "NFS", "cifs": "SMB", "smb3": "SMB", "ceph": "Ceph"}

# The remote TCP ports of network storage (IANA's and each project's defaults): a session to one is
# storage the host uses, a mounted filesystem or the disks of its VMs (iSCSI LUNs, NVMe/TCP
# namespaces, Ceph RBD images, NBD exports). Ceph's OSDs and MDSs bind ports 6800-7300
# (ms_bind_port_min and _max), its monitors 3300 (msgr2) and 6789.
_STORAGE_PORTS = {2049: "NFS", 445: "SMB", 3260: "iSCSI", 4420: "NVMe/TCP", 3300: "Ceph", 6789: "Ceph",
                  10809: "NBD", 24007: "GlusterFS"}
_CEPH_DAEMON_PORTS = range(6800, 7301)


def _storage_protocol(port):
    """The network storage protocol whose servers listen on ``port``, or None."""
    if port in _CEPH_DAEMON_PORTS:
        return "Ceph"
    return _STORAGE_PORTS.get(port)


def _host_address(text):
    """The IP address in ``text`` (``10.0.0.5``, ``10.0.0.5:6789``, ``[fd00::5]:6789``, ``fd00::5``),
    or None for a host name or anything else."""
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _mount_servers(source, options):
    """The IP addresses of the servers of a network filesystem's mount: its ``addr=`` or ``mon_addr=``
    super options, else the host part of its source when that is an address."""
    texts = []
    for option in options.split(","):
        key, _sep, value = option.partition("=")
        if key == "addr":
            texts.append(value)
        elif key == "mon_addr":
            texts.extend(value.split("/"))
    if not texts and source:
        if source.startswith("//"):  # SMB: //server/share
            texts.append(source[2:].partition("/")[0])
        elif ":/" in source:  # NFS server:/export, CephFS mon1,mon2:/path
            texts.extend(source.partition(":/")[0].split(","))
    servers = []
    for text in texts:
        address = _host_address(text)
        if address is not None and not address.is_loopback and address not in servers:
            servers.append(address)
    return servers


def _rdma_nvme_targets(root):
    """``[(controller, target address)]`` of the NVMe over Fabrics controllers that reach their target
    over RDMA (RoCE, InfiniBand): the RDMA CM opens no TCP socket, so only the controller tells
    (``sys/class/nvme/nvmeN``: ``transport`` ``rdma``, ``address`` ``traddr=...,trsvcid=...``,
    ``nvmf_get_address()``). When the NIC leaves its driver, ``nvme_rdma_remove_one()`` deletes every
    controller using it, and their namespaces with them."""
    found = []
    base = host_path(root, "sys/class/nvme")
    for controller in sorted(list_dir(base)):
        if read_text("%s/%s/transport" % (base, controller)) != "rdma":
            continue
        address = _host_address(_address_fields(read_text("%s/%s/address" % (base, controller))).get("traddr", ""))
        if address is not None:
            found.append((controller, address))
    return found


def _address_fields(text):
    """``{key: value}`` of an NVMe over Fabrics controller's ``address`` (``nvmf_get_address()``:
    ``traddr=...,trsvcid=...,host_traddr=...,host_iface=...``)."""
    fields = {}
    for option in (text or "").split(","):
        key, _sep, value = option.partition("=")
        if value:
            fields[key.strip()] = value.strip()
    return fields


# An FC port's names in an NVMe/FC address: nn-0x<WWNN>:pn-0x<WWPN>, or nn-<WWNN>:pn-<WWPN> without the
# 0x (nvme_fc_parse_traddr() takes both; the address shows them as they were given).
_FC_PORT_NAME = re.compile(r"pn-(?:0[xX])?([0-9a-fA-F]{1,16})\Z")


def _fc_port_name(text):
    """The port name (WWPN, an int) of an NVMe/FC ``traddr`` or ``host_traddr``, or None."""
    match = _FC_PORT_NAME.search(text or "")
    return int(match.group(1), 16) if match is not None else None


def _fc_host_ports(real_root):
    """``[(port name or None, PCI address)]`` of the Fibre Channel host ports
    (``sys/class/fc_host/hostN``, ``port_name`` ``0x<WWPN>``): the HBA function each SCSI host sits
    below, an NPIV port's too. The port name is None when it cannot be read."""
    base = host_path(real_root, "sys/class/fc_host")
    ports = []
    for host in sorted(list_dir(base)):
        owner = _pci_owner(real_root, "%s/%s" % (base, host))
        if owner is None:
            continue
        text = read_text("%s/%s/port_name" % (base, host))
        try:
            ports.append((int(text, 16), owner))
        except (TypeError, ValueError):
            ports.append((None, owner))
    return ports


def _nvme_fc_path(real_root, controller):
    """``(target port, [PCI addresses], doubt)`` of an NVMe/FC controller (``transport`` ``fc``), or None
    for another. Its directory is virtual, below no HBA: the host port is the FC host port its
    ``host_traddr`` names (the FC transport requires it), matched by port name. When it names none of
    them, every FC host port's HBA may carry it; when no FC host port is found below a PCI function,
    every Fibre Channel function (class 0c04) may. ``doubt`` then says why (None when the port is
    found). The target port is the ``pn-`` of ``traddr`` as ``0x<WWPN>``, or the whole ``traddr``."""
    if read_text(controller + "/transport") != "fc":
        return None
    fields = _address_fields(read_text(controller + "/address"))
    ports = _fc_host_ports(real_root)
    wanted = _fc_port_name(fields.get("host_traddr"))
    owners = sorted({owner for name, owner in ports if wanted is not None and name == wanted})
    doubt = None
    if not owners and ports:
        owners = sorted({owner for _name, owner in ports})
        doubt = "its host port (host_traddr %s) is none of the FC host ports found" % (
            fields.get("host_traddr") or "not given")
    elif not owners:
        owners = _functions_of_class(real_root, "0x0c04")
        doubt = "no FC host port is found below a PCI function (sys/class/fc_host)"
    target = _fc_port_name(fields.get("traddr"))
    return ("0x%016x" % target if target is not None else fields.get("traddr") or "an unnamed port"), owners, doubt


def storage_adapters(root):
    """``[(reason, [PCI addresses])]``: the adapters that carry sessions to storage targets without a
    socket or a route: each NVMe/FC controller's HBA (:func:`_nvme_fc_path`), the HBA of each iSCSI
    session whose SCSI host sits below a PCI function (iSER, whose host is the RDMA device's parent,
    and the offload HBAs: bnx2i, cxgbi, qedi, qla4xxx, be2iscsi) and the HCA of each SRP target port.
    Like the iSCSI and NVMe/RDMA sessions of :func:`storage_interfaces`, they are the disks of the
    VMs as well as the host's, mounted or not; an iSCSI session over a socket (``iscsi_tcp``) is
    one of those instead. A Fibre Channel SCSI target is not: the HBA logs in to every target zoned
    to it, so only the disks the host uses (:func:`storage_in_use`) make it critical."""
    real_root = resolve(root)
    found = []
    base = host_path(root, "sys/class/nvme")
    for controller in sorted(list_dir(base)):
        fc_path = _nvme_fc_path(real_root, "%s/%s" % (base, controller))
        if fc_path is not None and fc_path[1]:
            target, owners, doubt = fc_path
            what = "the NVMe/FC controller %s with target port %s" % (controller, target)
            if doubt is None:
                found.append(("HBA of storage in use: " + what, owners))
            else:
                found.append(("HBA that may carry storage in use: %s (%s)" % (what, doubt), owners))
    base = host_path(root, "sys/class/iscsi_session")
    for session in sorted(list_dir(base)):
        owner = _pci_owner(real_root, "%s/%s" % (base, session))
        if owner is not None:
            target = read_text("%s/%s/targetname" % (base, session))
            what = "the iSCSI session %s" % session + (" with " + target if target else "")
            found.append(("HBA of storage in use: " + what, [owner]))
    base = host_path(root, "sys/class/srp_remote_ports")
    for port in sorted(list_dir(base)):
        owner = _pci_owner(real_root, "%s/%s" % (base, port))
        if owner is not None:
            port_id = read_text("%s/%s/port_id" % (base, port))
            what = "the SRP target port %s" % port + (" (%s)" % port_id if port_id else "")
            found.append(("HBA of storage in use: " + what, [owner]))
    return found


def _iscsi_portals(root):
    """The target addresses of the iSCSI connections (``sys/class/iscsi_connection/
    connectionS:C``: ``address``, else ``persistent_address``). iSER's connections go through the RDMA
    CM, with no TCP socket to show them; over soft-RoCE (rxe) or a bond of RoCE ports (LAG) the session's
    SCSI host tells no port, or one, where the route to the target tells the interface."""
    found = []
    base = host_path(root, "sys/class/iscsi_connection")
    for connection in sorted(list_dir(base)):
        for name in ("address", "persistent_address"):
            address = _host_address(read_text("%s/%s/%s" % (base, connection, name)) or "")
            if address is not None:
                found.append(address)
                break
    return found


def storage_interfaces(root, routes=None, sessions=None, mounts=None):
    """``[(interface, reason)]``: the interfaces that carry network storage the host uses. Those
    the mounted network filesystems' servers (NFS, SMB, CephFS) are reached through, and those of the
    established TCP sessions to a storage port (:data:`_STORAGE_PORTS`: iSCSI, NVMe/TCP, Ceph, NBD;
    the VMs' disks as well as the host's), and those of the targets of the NVMe controllers over RDMA
    (:func:`_rdma_nvme_targets`) and of the iSCSI connections, iSER's included (:func:`_iscsi_portals`).
    By the routes, as :func:`route_interfaces`.
    ``routes``, ``sessions`` and ``mounts``: :func:`_routes`, :func:`_sessions` and :func:`_mounts` when
    already read."""
    routes = _routes(root) if routes is None else routes
    uses = {}  # interface -> what it carries, in order
    mounted = set()  # (protocol, server) of the mounts: their sessions add nothing

    def carries(address, what):
        for interface in route_interfaces(root, address, routes):
            whats = uses.setdefault(interface, [])
            if what not in whats:
                whats.append(what)

    for _number, mount_point, fstype, source, options in _mounts(root) if mounts is None else mounts:
        protocol = _NETWORK_FILESYSTEMS.get(fstype)
        if protocol is None:
            continue
        for server in _mount_servers(source, options):
            mounted.add((protocol, server))
            carries(server, "the %s mount on %s (%s)" % (protocol, mount_point, server))
    for _port, peer, remote_port in _sessions(root) if sessions is None else sessions:
        protocol = _storage_protocol(remote_port)
        if protocol is not None and (protocol, peer) not in mounted:
            carries(peer, "the %s session with %s" % (protocol, peer))
    for controller, target in _rdma_nvme_targets(root):
        carries(target, "the NVMe/RDMA controller %s with %s" % (controller, target))
    for target in _iscsi_portals(root):
        carries(target, "the iSCSI session with %s" % target)  # the same as its socket's, if it has one
    return [(interface, "NIC of network storage in use: %s (%s)" % (_listed(whats), interface))
            for interface, whats in sorted(uses.items())]


# corosync.conf (corosync.conf(5)): ``key: value`` lines inside ``name {`` ... ``}`` sections; the
# cluster links are the nodes' ``ringN_addr`` (knet links 0-7; udpu), or the network a totem
# interface binds to (``bindnetaddr``, udp multicast). Proxmox VE keeps this file in step with
# /etc/pve/corosync.conf.
_COROSYNC_CONF = "etc/corosync/corosync.conf"
_COROSYNC_ADDRESS = re.compile(r"\s*(ring[0-9]+_addr|bindnetaddr)\s*:\s*(\S+)\s*$")


def _etc_hosts(root):
    """``{name: [addresses]}`` of ``etc/hosts`` (names in lower case)."""
    names = {}
    for fields in _table(root, "etc/hosts", header=False):
        if not fields or fields[0].startswith("#"):
            continue
        try:
            address = ipaddress.ip_address(fields[0].partition("%")[0])
        except ValueError:
            continue
        for name in fields[1:]:
            if name.startswith("#"):
                break
            names.setdefault(name.lower(), []).append(address)
    return names


def cluster_addresses(root):
    """The addresses of the corosync cluster's links (every node's ``ringN_addr``, and ``bindnetaddr``)
    from ``etc/corosync/corosync.conf``; host names through ``etc/hosts``, others left out."""
    addresses, hosts = [], None
    try:
        with open(host_path(root, _COROSYNC_CONF), encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return addresses
    for line in lines:
        match = _COROSYNC_ADDRESS.match(line)
        if match is None:
            continue
        found = _host_address(match.group(2))
        if found is not None:
            found = [found]
        else:
            hosts = _etc_hosts(root) if hosts is None else hosts
            found = hosts.get(match.group(2).lower(), [])
        addresses.extend(address for address in found if not address.is_loopback and address not in addresses)
    return addresses


def cluster_interfaces(root, routes=None):
    """``[(interface, reason)]``: the interfaces of the corosync cluster links (:func:`cluster_addresses`),
    by the routes (:func:`route_interfaces`). A node cut off its cluster loses quorum, and one with HA resources
    (Proxmox VE, Pacemaker) fences itself: its watchdog resets it."""
    routes = _routes(root) if routes is None else routes
    links = {}
    for address in cluster_addresses(root):
        for interface in route_interfaces(root, address, routes):
            links.setdefault(interface, []).append(str(address))
    return [(interface, "NIC of the corosync cluster link to %s (%s)" % (_listed(addresses), interface))
            for interface, addresses in sorted(links.items())]


def critical_devices(root):
    """``{address: [reasons]}`` for devices the host needs to keep running."""
    critical = {}
    mounts = _mounts(root)
    for reason, addresses in storage_in_use(root, mounts) + storage_adapters(root):
        for address in addresses:
            reasons = critical.setdefault(address, [])
            if reason not in reasons:
                reasons.append(reason)
    routes, sessions = _routes(root), _sessions(root)
    networks = (management_interfaces(root, routes, sessions) + cluster_interfaces(root, routes)
                + storage_interfaces(root, routes, sessions, mounts))
    for interface, reason in networks:
        for address in interface_devices(root, interface):
            critical.setdefault(address, []).append(reason)
    return critical
