# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel's routes through rtnetlink: every next hop, and the tables the policy rules look up.

The routes are this machine's kernel's, set up with iproute2 in a network namespace of their own
(``unshare --net``, veth pairs): the test needs root, ``unshare`` and ``ip``, and fails without them.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import textwrap

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import critical, rtnetlink

# Four veth pairs: a0, b0 and c0 carry routes; d0 carries one only in a table no rule looks up.
NETWORK = """
set -e
for n in a b c d; do
  ip link add ${n}0 type veth peer name ${n}1
  ip link set ${n}0 up; ip link set ${n}1 up
done
ip addr add 10.0.0.1/24 dev a0; ip addr add 10.1.0.1/24 dev b0
ip addr add 10.2.0.1/24 dev c0; ip addr add 10.3.0.1/24 dev d0
ip route add default nexthop via 10.0.0.2 dev a0 nexthop via 10.1.0.2 dev b0
ip nexthop add id 1 via 10.0.0.3 dev a0
ip nexthop add id 2 via 10.2.0.3 dev c0
ip nexthop add id 10 group 1/2
ip route add 192.168.0.0/16 nhid 10
ip rule add from 10.2.0.1 table 100
ip route add default via 10.2.0.2 dev c0 table 100
ip route add 203.0.113.0/24 via 10.3.0.2 dev d0 table 200
ip -6 addr add fd00::1/64 dev a0 nodad; ip -6 addr add fd01::1/64 dev b0 nodad
ip -6 route add default nexthop via fd00::2 dev a0 nexthop via fd01::2 dev b0
"""

PROBE = """
import ipaddress, json, sys
from ansible_collections.gpuvirt.host.plugins.module_utils import critical, rtnetlink

def interfaces(address, root):
    return critical.route_interfaces(root, ipaddress.ip_address(address))

root = sys.argv[1]
print(json.dumps({
    "routes": [[str(r.network), r.metric, r.table, list(r.interfaces)] for r in rtnetlink.routes()],
    "defaults": critical.default_route_interfaces(root),
    "grouped": interfaces("192.168.7.7", root),
    "policy": interfaces("198.51.100.7", root),
    "unlooked": interfaces("203.0.113.7", root),
    "v6": interfaces("2001:db8::7", root),
}))
"""


def _collections_path():
    """The directory holding ``ansible_collections``, for the probe's own interpreter."""
    path = os.path.abspath(critical.__file__)
    for _level in range(6):
        path = os.path.dirname(path)
    return path


@pytest.fixture(scope="module")
def namespace(tmp_path_factory):
    """Run the probe in a new network namespace set up by :data:`NETWORK`, once on the live root
    (rtnetlink) and once on a copy of that namespace's ``proc/net`` route files (a snapshot)."""
    for tool in ("unshare", "ip"):
        assert shutil.which(tool), "%s is needed (util-linux, iproute2: make deps)" % tool
    snapshot = tmp_path_factory.mktemp("snapshot")
    (snapshot / "proc" / "net").mkdir(parents=True)
    script = textwrap.dedent(NETWORK) + textwrap.dedent("""
        cat /proc/net/route > {snapshot}/proc/net/route
        cat /proc/net/ipv6_route > {snapshot}/proc/net/ipv6_route
        "{python}" -c "$PROBE" /
        "{python}" -c "$PROBE" {snapshot}
    """).format(snapshot=snapshot, python=sys.executable)
    env = dict(os.environ, PROBE=PROBE, PYTHONPATH=_collections_path())
    done = subprocess.run(["unshare", "--net", "sh", "-c", script], env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, "network namespace set-up failed: %s" % done.stderr
    live, snap = (json.loads(line) for line in done.stdout.splitlines())
    return live, snap


def test_multipath_default_route_has_every_next_hop(namespace):
    live, snap = namespace
    assert live["defaults"] == ["a0", "b0", "c0"]  # c0: the default route of table 100, which a rule looks up
    # proc/net/route shows the main table only, and a multipath route's first next hop: b0 is there
    # by the IPv6 default route alone (proc/net/ipv6_route writes a line per next hop).
    assert snap["defaults"] == ["a0", "b0"]
    assert snap["policy"] == ["a0"]
    assert ["0.0.0.0/0", 0, 254, ["a0", "b0"]] in live["routes"]
    assert ["::/0", 1024, 254, ["a0", "b0"]] in live["routes"]


def test_nexthop_group_route_has_every_member(namespace):
    live, snap = namespace
    assert live["grouped"] == ["a0", "c0"]
    assert ["192.168.0.0/16", 0, 254, ["a0", "c0"]] in live["routes"]
    assert len(snap["grouped"]) == 1


def test_policy_rule_tables_are_read_and_others_are_not(namespace):
    live, snap = namespace
    assert live["policy"] == ["a0", "b0", "c0"]
    assert ["0.0.0.0/0", 0, 100, ["c0"]] in live["routes"]
    # Table 200 has a route but no rule that looks it up: the kernel never uses it.
    assert not any(route[2] == 200 for route in live["routes"])
    assert live["unlooked"] == ["a0", "b0", "c0"]
    assert snap["policy"] == ["a0"]


def test_ipv6_multipath_in_both_sources(namespace):
    live, snap = namespace
    assert live["v6"] == ["a0", "b0"]
    assert snap["v6"] == ["a0", "b0"]  # proc/net/ipv6_route writes a line per next hop


def test_no_local_or_loopback_routes(namespace):
    live, _snap = namespace
    assert all(route[2] != rtnetlink.RT_TABLE_LOCAL for route in live["routes"])
    assert all("lo" not in route[3] for route in live["routes"])


def _rule(table, action=rtnetlink.FR_ACT_TO_TBL, attributes=b""):
    return struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, min(table, 252), 0, 0, action, 0) + attributes


def _attribute(kind, payload):
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def test_rule_tables_from_fra_table_and_l3mdev():
    rules = [_rule(0, attributes=_attribute(rtnetlink.FRA_TABLE, struct.pack("=I", 1000))),
             _rule(0, action=2)]  # FR_ACT_GOTO: no table
    assert rtnetlink._tables(rules) == {254, 1000}
    vrf = _rule(0, attributes=_attribute(rtnetlink.FRA_L3MDEV, b"\1"))
    assert rtnetlink._tables(rules + [vrf]) is None  # every VRF's table


def test_live_root_falls_back_to_proc_files_without_rtnetlink(tmp_path, monkeypatch):
    def refused(*_args, **_kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(rtnetlink, "routes", refused)
    monkeypatch.setattr(critical, "is_live_root", lambda root: True)
    (tmp_path / "proc" / "net").mkdir(parents=True)
    (tmp_path / "proc" / "net" / "route").write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eno1\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n")
    assert critical.default_route_interfaces(str(tmp_path)) == ["eno1"]
    assert critical._routes(str(tmp_path)) == [(ipaddress.ip_network("0.0.0.0/0"), 0, "eno1", 254)]


class Replies:
    """A socket that answers each dump request with the messages given for it (bytes per recv)."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.sequence = None

    def send(self, request):
        self.sequence = struct.unpack_from("=IHHII", request)[3]

    def recv(self, _size):
        return self.answers.pop(0)(self.sequence)


def message(kind, body=b"", flags=0):
    return lambda sequence: struct.pack("=IHHII", 16 + len(body), kind, flags, sequence, 0) + body


def test_a_dump_the_tables_changed_during_is_refused():
    interrupted = Replies(message(24, b"\0" * 12, flags=0x10))
    with pytest.raises(OSError) as caught:
        rtnetlink._dump(interrupted, 26, b"\0" * 12, 7)
    assert caught.value.errno == errno.EAGAIN


def test_an_error_in_the_end_of_a_dump_is_a_failure():
    failed = Replies(message(24, b"\0" * 12), message(3, struct.pack("=i", -errno.ENOBUFS)))
    with pytest.raises(OSError) as caught:
        rtnetlink._dump(failed, 26, b"\0" * 12, 7)
    assert caught.value.errno == errno.ENOBUFS
    done = Replies(message(24, b"\1" * 12), message(3, struct.pack("=i", 0)))
    assert rtnetlink._dump(done, 26, b"\0" * 12, 7) == [b"\1" * 12]


def test_an_interrupted_read_is_read_again(monkeypatch):
    calls = []

    def interrupted_once(names):
        calls.append(names)
        if len(calls) == 1:
            raise OSError(errno.EAGAIN, "the routing tables changed during the dump")
        return ["route"]

    monkeypatch.setattr(rtnetlink, "_routes", interrupted_once)
    assert rtnetlink.routes() == ["route"] and len(calls) == 2
