# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The running kernel's routes, every next hop of each, read through rtnetlink.

Public API:

- :func:`routes` ``() -> [Route]``: the unicast routes of the tables the host looks routes up in,
  one :class:`Route` per destination with the interfaces of all its next hops. Raises
  :class:`OSError` where rtnetlink cannot be read (no ``AF_NETLINK``, a seccomp filter).

``proc/net/route`` shows one next hop of a route: the first of a multipath route (``nexthop via ...
nexthop via ...``, BGP-to-the-host ECMP uplinks) and of a route through a nexthop object's group
(``nhid``, as FRR installs them), and only the main table (``fib_route_seq_show()``,
``fib_info_nhc(fi, 0)``). A route dump through ``NETLINK_ROUTE`` carries them all: ``RTA_OIF``, or
``RTA_MULTIPATH``'s ``struct rtnexthop`` entries, or ``RTA_NH_ID`` resolved by a nexthop dump
(``RTM_GETNEXTHOP``; ``NHA_OIF``, ``NHA_GROUP``). The tables read are the main table and those the
policy rules send lookups to (``RTM_GETRULE``; ``FRA_TABLE``, the ``fib_rule_hdr`` table); with an
``l3mdev`` rule (VRFs), every table. The local table (the host's own addresses) is left out.

Formats: ``include/uapi/linux/netlink.h``, ``rtnetlink.h``, ``nexthop.h``, ``fib_rules.h``.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

NETLINK_ROUTE = 0
_NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP = 0x01, 0x300
_NLM_F_DUMP_INTR = 0x10  # the tables changed during the dump: it may have missed or repeated entries
_RTM_GETROUTE, _RTM_NEWROUTE = 26, 24
_RTM_GETRULE, _RTM_NEWRULE = 34, 32
_RTM_GETNEXTHOP, _RTM_NEWNEXTHOP = 106, 104
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_NHMSG = struct.Struct("=BBBBI")  # family, scope, protocol, reserved, flags
_RTA_HEADER = struct.Struct("=HH")  # length, type
_RTNEXTHOP = struct.Struct("=HBBi")  # length, flags, hops, ifindex
_NEXTHOP_GRP = struct.Struct("=IBBH")  # id, weight, weight_high, reserved
_U32 = struct.Struct("=I")
RTA_DST, RTA_OIF, RTA_PRIORITY, RTA_MULTIPATH, RTA_TABLE, RTA_NH_ID = 1, 4, 6, 9, 15, 30
NHA_ID, NHA_GROUP, NHA_OIF = 1, 2, 5
FRA_TABLE, FRA_L3MDEV = 15, 19
RTN_UNICAST = 1
RTM_F_CLONED = 0x200
FR_ACT_TO_TBL = 1
RT_TABLE_MAIN, RT_TABLE_LOCAL = 254, 255
_PREFIXES = {socket.AF_INET: 32, socket.AF_INET6: 128}


@dataclass(frozen=True)
class Route:
    """A unicast route: its destination network, metric, table and the interfaces of its next hops."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    metric: int
    table: int
    interfaces: tuple


def _attributes(data, offset):
    """``{type: payload}`` of the ``struct rtattr`` list in ``data`` from ``offset`` (4-byte aligned)."""
    found = {}
    while offset + _RTA_HEADER.size <= len(data):
        length, kind = _RTA_HEADER.unpack_from(data, offset)
        if length < _RTA_HEADER.size:
            break
        found[kind & 0x3FFF] = data[offset + _RTA_HEADER.size : offset + length]  # without NLA_F_NESTED
        offset += (length + 3) & ~3
    return found


def _u32(payload):
    return _U32.unpack_from(payload)[0] if len(payload) >= 4 else None


def _dump(sock, message_type, header, sequence):
    """The payloads of the messages a ``message_type`` dump of ``header`` (the family's request
    struct) answers with. Raises :class:`OSError` with the kernel's error number when it refuses or
    fails the dump (an error in its ``NLMSG_DONE``), and when the tables changed during it."""
    request = _NLMSG_HEADER.pack(_NLMSG_HEADER.size + len(header), message_type,
                                 _NLM_F_REQUEST | _NLM_F_DUMP, sequence, 0) + header
    sock.send(request)
    payloads = []
    while True:
        data = sock.recv(1 << 16)
        if not data:
            raise OSError("rtnetlink closed the dump")
        offset = 0
        while offset + _NLMSG_HEADER.size <= len(data):
            length, kind, flags, seq, _port = _NLMSG_HEADER.unpack_from(data, offset)
            if length < _NLMSG_HEADER.size:
                raise OSError("rtnetlink sent a message of %d bytes" % length)
            body = data[offset + _NLMSG_HEADER.size : offset + length]
            offset += (length + 3) & ~3
            if seq != sequence:
                continue
            if flags & _NLM_F_DUMP_INTR:
                raise OSError(errno.EAGAIN, "the routing tables changed during the dump")
            if kind == _NLMSG_DONE:
                error = -struct.unpack_from("=i", body)[0] if len(body) >= 4 else 0
                if error:
                    raise OSError(error, "rtnetlink failed the dump: %s" % os.strerror(error))
                return payloads
            if kind == _NLMSG_ERROR:
                error = -struct.unpack_from("=i", body)[0] if len(body) >= 4 else 0
                if error:
                    raise OSError(error, "rtnetlink refused the dump: %s" % os.strerror(error))
                continue
            payloads.append(body)


def _tables(rules):
    """The tables the policy ``rules`` send lookups to (the main table always), or None for every
    table (an ``l3mdev`` rule: each VRF has a table of its own)."""
    tables = {RT_TABLE_MAIN}
    for payload in rules:
        if len(payload) < _RTMSG.size:
            continue
        _family, _dst, _src, _tos, table, _r1, _r2, action, _flags = _RTMSG.unpack_from(payload)
        attributes = _attributes(payload, _RTMSG.size)
        if attributes.get(FRA_L3MDEV, b"\0")[:1] != b"\0":
            return None
        if action == FR_ACT_TO_TBL:
            tables.add(_u32(attributes.get(FRA_TABLE, b"")) or table)
    return tables


def _nexthops(payloads):
    """``{id: [ifindex]}`` of the nexthop objects: a next hop's device, a group's members' devices."""
    devices, groups = {}, {}
    for payload in payloads:
        attributes = _attributes(payload, _NHMSG.size)
        identifier = _u32(attributes.get(NHA_ID, b""))
        if identifier is None:
            continue
        if NHA_GROUP in attributes:
            group = attributes[NHA_GROUP]
            groups[identifier] = [_NEXTHOP_GRP.unpack_from(group, at)[0]
                                  for at in range(0, len(group) - _NEXTHOP_GRP.size + 1, _NEXTHOP_GRP.size)]
        elif NHA_OIF in attributes:
            devices[identifier] = [_u32(attributes[NHA_OIF])]
    for identifier, members in groups.items():  # a group's members are single next hops, not groups
        devices[identifier] = [index for member in members for index in devices.get(member, [])]
    return devices


def _hops(payload):
    """The interface indexes of an ``RTA_MULTIPATH`` payload's ``struct rtnexthop`` entries."""
    indexes, offset = [], 0
    while offset + _RTNEXTHOP.size <= len(payload):
        length, _flags, _hops, index = _RTNEXTHOP.unpack_from(payload, offset)
        if length < _RTNEXTHOP.size:
            break
        indexes.append(index)
        offset += (length + 3) & ~3
    return indexes


def _route(payload, tables, nexthops, names):
    """The :class:`Route` of one ``RTM_NEWROUTE`` payload, or None for a route left out."""
    if len(payload) < _RTMSG.size:
        return None
    family, dst_len, _src_len, _tos, table, _protocol, _scope, kind, flags = _RTMSG.unpack_from(payload)
    if kind != RTN_UNICAST or flags & RTM_F_CLONED or family not in _PREFIXES:
        return None
    attributes = _attributes(payload, _RTMSG.size)
    table = _u32(attributes.get(RTA_TABLE, b"")) or table
    if table == RT_TABLE_LOCAL or (tables is not None and table not in tables):
        return None
    if RTA_NH_ID in attributes:
        indexes = nexthops.get(_u32(attributes[RTA_NH_ID]), [])
    elif RTA_MULTIPATH in attributes:
        indexes = _hops(attributes[RTA_MULTIPATH])
    else:
        indexes = [_u32(attributes.get(RTA_OIF, b""))]
    interfaces = []
    for index in indexes:
        name = names(index)
        if name is not None and name != "lo" and name not in interfaces:
            interfaces.append(name)
    if not interfaces:
        return None
    packed = attributes.get(RTA_DST, b"\0" * (_PREFIXES[family] // 8))
    try:
        network = ipaddress.ip_network((ipaddress.ip_address(packed), dst_len), strict=False)
    except ValueError:
        return None
    return Route(network, _u32(attributes.get(RTA_PRIORITY, b"")) or 0, table, tuple(interfaces))


def _name(index):
    try:
        return socket.if_indextoname(index) if index else None
    except OSError:  # the interface went away during the dump
        return None


def routes(names=_name, attempts=3):
    """The unicast routes of the tables the host looks routes up in (see the module's text), each
    with every next hop's interface (``names``: interface index -> name, or None). A dump the tables
    changed during is read again, up to ``attempts`` times. Raises :class:`OSError` when rtnetlink
    cannot be read."""
    for attempt in range(attempts):
        try:
            return _routes(names)
        except OSError as error:
            if error.errno != errno.EAGAIN or attempt == attempts - 1:
                raise
    raise ValueError("attempts must be 1 or more")


def _routes(names):
    found = {}  # a dict keeps the dump's order and drops a route listed twice
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        # AF_UNSPEC: every family the kernel has (a kernel booted with ipv6.disable=1 refuses AF_INET6).
        everything = _RTMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0, 0)
        tables = _tables(_dump(sock, _RTM_GETRULE, everything, 1))
        try:
            nexthops = _nexthops(_dump(sock, _RTM_GETNEXTHOP, _NHMSG.pack(0, 0, 0, 0, 0), 2))
        except OSError as error:  # before Linux 5.3 there are no nexthop objects
            if error.errno == errno.EAGAIN:
                raise
            nexthops = {}
        for payload in _dump(sock, _RTM_GETROUTE, everything, 3):
            route = _route(payload, tables, nexthops, names)
            if route is not None:
                found[route] = None
    return list(found)
