# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NICs that keep a host reachable: default routes and the routes of its SSH sessions.

The procfs lines are as an x86 (little-endian) kernel writes them: addresses in ``proc/net/route``,
``tcp`` and ``tcp6`` are the kernel's 32-bit words in host byte order (``0F02000A`` is 10.0.2.15),
``ipv6_route`` is in network byte order. (The readers use the running host's byte order: these
tests hold on the little-endian machines the collection is tested on.)"""

from __future__ import annotations

import ipaddress
import os

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils.critical import (
    critical_devices,
    interface_devices,
    management_interfaces,
    route_interfaces,
    socket_ports,
    ssh_peers,
    ssh_ports,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect

ROUTE_HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
TCP_HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n")
TCP6_HEADER = ("  sl  local_address                         remote_address                        st tx_queue "
               "rx_queue tr tm->when retrnsmt   uid  timeout inode\n")
# A data network on enp3s0 holds the default route; the management network 10.0.0.0/8 is reached
# through eno1 (10.101.0.7/16, gateway 10.101.0.1).
ROUTES = (
    ROUTE_HEADER
    + "enp3s0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"      # default via 192.168.1.1
    + "enp3s0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n"      # 192.168.1.0/24
    + "eno1\t0000000A\t0100650A\t0003\t0\t0\t0\t000000FF\t0\t0\t0\n"          # 10.0.0.0/8 via 10.101.0.1
    + "eno1\t0000650A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"          # 10.101.0.0/16
)


def tcp_line(slot, local, remote, state):
    return ("%4d: %s %s %s 00000000:00000000 02:0009B0F6 00000000     0        0 21012 4 0000000000000000 20 4 31 "
            "10 -1\n" % (slot, local, remote, state))


def write(root, relative, content):
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(content)


@pytest.fixture
def nic_host(make_host):
    """desktop_dgpu_nic: eno1 (00:1f.6) on the management network, enp3s0 (03:00.0, in the GPU's
    group) on the data network with the default route."""
    root = make_host("desktop_dgpu_nic", network={"default_route": None,
                                                  "interfaces": {"eno1": "00:1f.6", "enp3s0": "03:00.0"}})
    write(root, "proc/net/route", ROUTES)
    return root


def test_the_nic_of_an_ssh_session_on_a_management_route_is_critical(nic_host):
    # 10.101.0.7:22 <- 10.20.30.40:49872, established; the listening socket and a session to another
    # port are not sessions.
    write(nic_host, "proc/net/tcp", TCP_HEADER
          + tcp_line(0, "00000000:0016", "00000000:0000", "0A")
          + tcp_line(1, "0700650A:0016", "281E140A:C2D0", "01")
          + tcp_line(2, "0700650A:01BB", "0900650A:D431", "01"))

    assert ssh_peers(nic_host) == [ipaddress.ip_address("10.20.30.40")]
    assert management_interfaces(nic_host) == [
        ("enp3s0", "NIC of the default route (enp3s0)"),
        ("eno1", "NIC of the SSH session from 10.20.30.40 (eno1)"),
    ]
    critical = critical_devices(nic_host)
    assert critical["0000:00:1f.6"] == ["NIC of the SSH session from 10.20.30.40 (eno1)"]
    assert critical["0000:03:00.0"] == ["NIC of the default route (enp3s0)"]
    topology = detect(nic_host)
    eno1 = next(device for device in topology["devices"] if device["address"] == "0000:00:1f.6")
    assert eno1["critical"] == ["NIC of the SSH session from 10.20.30.40 (eno1)"]


def test_without_sessions_only_the_default_route_counts(nic_host):
    write(nic_host, "proc/net/tcp", TCP_HEADER + tcp_line(0, "00000000:0016", "00000000:0000", "0A"))

    assert "0000:00:1f.6" not in critical_devices(nic_host)


def test_loopback_sessions_and_closing_ones_are_left_out(nic_host):
    write(nic_host, "proc/net/tcp", TCP_HEADER
          + tcp_line(0, "0100007F:0016", "0100007F:A000", "01")    # ssh localhost
          + tcp_line(1, "0700650A:0016", "281E140A:C2D0", "06"))   # TIME_WAIT

    assert ssh_peers(nic_host) == []
    assert [interface for interface, _reason in management_interfaces(nic_host)] == ["enp3s0"]


def test_the_ports_come_from_sshd_config_and_its_includes(nic_host):
    write(nic_host, "etc/ssh/sshd_config", "# Port 22\nInclude /etc/ssh/sshd_config.d/*.conf\n"
                                           "ListenAddress [2001:db8::7]:2200\nMatch User backup\n  Port 9999\n")
    write(nic_host, "etc/ssh/sshd_config.d/10-port.conf", "Port=2222\n")
    write(nic_host, "proc/net/tcp", TCP_HEADER
          + tcp_line(0, "0700650A:0016", "0900650A:C2D0", "01")     # port 22: sshd does not listen there
          + tcp_line(1, "0700650A:08AE", "281E140A:C2D1", "01"))    # port 2222

    assert ssh_ports(nic_host) == [2200, 2222]
    assert ssh_peers(nic_host) == [ipaddress.ip_address("10.20.30.40")]


SSH_SOCKET = "[Unit]\nDescription=OpenBSD Secure Shell server socket\n\n[Socket]\nListenStream=22\nAccept=no\n"


def enable(root, unit):
    link = os.path.join(root, "etc/systemd/system/sockets.target.wants", unit)
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink("/lib/systemd/system/" + unit, link)


def test_socket_activated_sshd_listens_where_its_socket_unit_says(nic_host):
    # Ubuntu 22.10 to 23.10 start sshd from ssh.socket, which ignores sshd_config's Port: the port
    # is changed in a drop-in that empties ListenStream first.
    write(nic_host, "lib/systemd/system/ssh.socket", SSH_SOCKET)
    write(nic_host, "etc/systemd/system/ssh.socket.d/override.conf", "[Socket]\nListenStream=\nListenStream=2022\n")
    write(nic_host, "proc/net/tcp", TCP_HEADER + tcp_line(0, "0700650A:07E6", "281E140A:C2D0", "01"))  # :2022
    assert ssh_ports(nic_host) == [22]  # not enabled: sshd_config alone
    assert ssh_peers(nic_host) == []

    enable(nic_host, "ssh.socket")
    assert socket_ports(nic_host, "ssh.socket") == [2022]
    assert ssh_ports(nic_host) == [22, 2022]
    assert ssh_peers(nic_host) == [ipaddress.ip_address("10.20.30.40")]
    assert critical_devices(nic_host)["0000:00:1f.6"] == ["NIC of the SSH session from 10.20.30.40 (eno1)"]


def test_socket_unit_precedence_masking_and_listen_stream_forms(nic_host):
    write(nic_host, "usr/lib/systemd/system/sshd.socket", SSH_SOCKET.replace("ListenStream=22", "ListenStream=2200"))
    # the same drop-in name in /etc hides the one below it; drop-ins apply in name order
    write(nic_host, "usr/lib/systemd/system/sshd.socket.d/20-more.conf", "[Socket]\nListenStream=9999\n")
    write(nic_host, "etc/systemd/system/sshd.socket.d/20-more.conf",
          "[Socket]\n# ListenStream=1111\nListenStream=[::]:2201\nListenStream=0.0.0.0:2202\n"
          "ListenStream=/run/sshd.sock\nListenStream=vsock::22\nListenStream=@abstract\nListenStream=70000\n"
          "[Install]\nListenStream=3333\n")
    write(nic_host, "run/systemd/generator/sshd.socket.d/10-addresses.conf", "[Socket]\nListenStream=2203\n")
    assert socket_ports(nic_host, "sshd.socket") == [2200, 2201, 2202, 2203]
    enable(nic_host, "sshd.socket")
    assert ssh_ports(nic_host) == [22, 2200, 2201, 2202, 2203]

    os.makedirs(os.path.join(nic_host, "etc/systemd/system"), exist_ok=True)
    os.symlink("/dev/null", os.path.join(nic_host, "etc/systemd/system/sshd.socket"))  # masked
    assert socket_ports(nic_host, "sshd.socket") == []
    assert ssh_ports(nic_host) == [22]


def test_sshd_listens_on_22_without_a_port_line(nic_host):
    assert ssh_ports(nic_host) == [22]
    write(nic_host, "etc/ssh/sshd_config", "ListenAddress 10.101.0.7\nPasswordAuthentication no\n")
    assert ssh_ports(nic_host) == [22]


def test_ipv6_sessions_and_ipv4_clients_of_an_ipv6_socket(nic_host):
    # The management network's IPv6 prefix 2001:db8:5::/48 is routed through eno1; an IPv4 client of
    # sshd's IPv6 socket shows as ::ffff:10.20.30.40.
    write(nic_host, "proc/net/ipv6_route",
          "20010db8000500000000000000000000 30 00000000000000000000000000000000 00 "
          "00000000000000000000000000000000 00000100 00000001 00000000 00000001     eno1\n"
          "00000000000000000000000000000001 80 00000000000000000000000000000000 00 "
          "00000000000000000000000000000000 00000000 00000003 00000000 80200001       lo\n")
    write(nic_host, "proc/net/tcp6", TCP6_HEADER
          + tcp_line(0, "B80D0120000005000000000007000000:0016", "B80D0120000005000000000020000000:E3A2", "01")
          + tcp_line(1, "0000000000000000FFFF00000700650A:0016", "0000000000000000FFFF0000281E140A:E3A3", "01"))

    assert ssh_peers(nic_host) == [ipaddress.ip_address("10.20.30.40"), ipaddress.ip_address("2001:db8:5::20")]
    assert management_interfaces(nic_host)[1] == (
        "eno1", "NIC of the SSH sessions from 10.20.30.40, 2001:db8:5::20 (eno1)")


def test_the_most_specific_route_wins_then_the_lowest_metric(nic_host):
    write(nic_host, "proc/net/route", ROUTES
          + "enp3s0\t0014140A\t0101A8C0\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"   # 10.20.20.0/24 via the data network
          + "enp3s0\t0000000A\t0101A8C0\t0003\t0\t0\t50\t000000FF\t0\t0\t0\n"  # 10.0.0.0/8 again, metric 50
          + "eno1\t00001E0A\t00000000\t0201\t0\t0\t0\t0000FFFF\t0\t0\t0\n")    # 10.30.0.0/16 rejected

    def through(address):
        return route_interfaces(nic_host, ipaddress.ip_address(address))

    assert through("10.20.20.5") == ["enp3s0"]
    assert through("10.20.30.40") == ["eno1"]          # /8 on both: metric 0 beats 50
    assert through("10.30.1.1") == ["eno1"]            # the reject route does not count: the /8 does
    assert through("172.16.0.1") == ["enp3s0"]         # the default route
    assert through("2001:db8::1") == []                # no IPv6 route at all


def test_equally_good_routes_all_count(nic_host):
    # Link-local peers: every interface routes fe80::/64 with the same metric.
    write(nic_host, "proc/net/ipv6_route", "".join(
        "fe800000000000000000000000000000 40 00000000000000000000000000000000 00 "
        "00000000000000000000000000000000 00000100 00000001 00000000 00000001 %8s\n" % name
        for name in ("eno1", "enp3s0")))
    write(nic_host, "proc/net/tcp6", TCP6_HEADER
          + tcp_line(0, "000080FE00000000FF005450020000FE:0016", "000080FE00000000FF005450030000FE:C000", "01"))

    critical = critical_devices(nic_host)
    assert critical["0000:00:1f.6"] == ["NIC of the SSH session from fe80::5054:ff:fe00:3 (eno1)"]
    assert critical["0000:03:00.0"] == ["NIC of the default route (enp3s0)",
                                        "NIC of the SSH session from fe80::5054:ff:fe00:3 (enp3s0)"]


def test_garbled_lines_are_skipped(nic_host):
    write(nic_host, "proc/net/route", ROUTES + "eno1\tnot-hex\t00000000\t0001\t0\t0\t0\t0000FFFF\n" + "short\n")
    write(nic_host, "proc/net/tcp", TCP_HEADER + "   0: 0700650A:zz16 281E140A:C2D0 01\n"
          + "   1: 0700650A:0016 281E14:C2D0 01\n" + "garbage\n" + tcp_line(2, "0700650A:0016", "281E140A:C2D0", "01"))

    assert ssh_peers(nic_host) == [ipaddress.ip_address("10.20.30.40")]
    assert route_interfaces(nic_host, ipaddress.ip_address("10.20.30.40")) == ["eno1"]


def test_an_include_loop_reads_each_file_once(nic_host):
    write(nic_host, "etc/ssh/sshd_config", "Include *\nPort 2022\n")
    write(nic_host, "etc/ssh/other", "Include sshd_config other\nPort 2023\n")

    assert ssh_ports(nic_host) == [2022, 2023]


# An I226 NIC (04:00.0) behind a bridge vmbr0 that holds the default route.
UPLINK = "0000:04:00.0"
UPLINK_HOST = {
    "extends": "desktop_dgpu",
    "add_devices": [
        {"address": "00:1c.0", "ids": "8086:7ab8", "class": "060400", "driver": "pcieport", "group": 8},
        {"address": "04:00.0", "parent": "00:1c.0", "ids": "8086:125c", "class": "020000", "driver": "igc",
         "group": 9},
    ],
}


@pytest.mark.parametrize("bridge", [
    # A Linux bridge lists its ports (lower_enp4s0).
    {"vmbr0": {"lower": ["enp4s0"]}},
    # Open vSwitch (Proxmox VE's OVSBridge, OpenStack, OVN): the kernel links each port to the datapath's
    # device, ovs-system, and the bridge, an internal port, has neither a device nor a lower_ link.
    {"ovs-system": {"lower": ["enp4s0"]}, "vmbr0": {}},
    # A VLAN on the OVS bridge.
    {"ovs-system": {"lower": ["enp4s0"]}, "vmbr0": {}, "vlan20": {"lower": ["vmbr0"]}},
])
def test_the_nic_under_the_bridge_of_the_default_route_is_critical(make_host, bridge):
    route = "vlan20" if "vlan20" in bridge else "vmbr0"
    root = make_host(dict(UPLINK_HOST, network={"default_route": route, "interfaces": dict(
        {"eno1": "00:1f.6", "enp4s0": "04:00.0"}, **bridge)}))
    assert interface_devices(root, route) == [UPLINK]
    assert UPLINK in critical_devices(root)
    # The NIC not routed through stays free.
    assert "0000:00:1f.6" not in critical_devices(root)
