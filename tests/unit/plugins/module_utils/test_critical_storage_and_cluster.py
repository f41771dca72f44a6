# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NICs that carry network storage the host uses (mounted NFS, SMB and CephFS filesystems, and
sessions to iSCSI, NVMe/TCP, Ceph and NBD servers: the disks of VMs as well as the host's) and those
of a corosync cluster's links (Proxmox VE, Pacemaker: a node cut off its cluster loses quorum and,
with HA resources, is reset by its watchdog; corosync.conf as Proxmox VE writes it).

The mountinfo lines are as the kernel writes them (the NFS and cifs clients show the server as the
``addr=`` super option; CephFS names its monitors in the source or in ``mon_addr=``); the procfs
network tables as an x86 (little-endian) kernel writes them (see test_critical_management.py)."""

from __future__ import annotations

import ipaddress
import os

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils.critical import (
    cluster_addresses,
    cluster_interfaces,
    critical_devices,
    storage_interfaces,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect

ROUTE_HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
# eno1 holds the default route; the storage network 172.16.0.0/24 is on enp3s0, the NIC in the GPU's
# IOMMU group (host address 172.16.0.2).
ROUTES = (
    ROUTE_HEADER
    + "eno1\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"     # default via 192.168.1.1
    + "eno1\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n"     # 192.168.1.0/24
    + "enp3s0\t000010AC\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"     # 172.16.0.0/24
)
NFS_OPTIONS = ("rw,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,"
               "clientaddr=172.16.0.2,local_lock=none,addr=172.16.0.10")
STORAGE_NIC = "0000:03:00.0"
# vmbr0 (a bridge over eno1) holds the default route and 192.168.1.0/24; the cluster network
# 10.10.10.0/24 is on enp3s0, the NIC in the GPU's IOMMU group.
CLUSTER_ROUTES = (
    ROUTE_HEADER
    + "vmbr0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    + "vmbr0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    + "enp3s0\t000A0A0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
)
COROSYNC = """logging {
  debug: off
  to_syslog: yes
}

nodelist {
  node {
    name: pve1
    nodeid: 1
    quorum_votes: 1
    ring0_addr: 10.10.10.1
    ring1_addr: 192.168.1.11
  }
  node {
    name: pve2
    nodeid: 2
    quorum_votes: 1
    ring0_addr: 10.10.10.2
    ring1_addr: 192.168.1.12
  }
  node {
    name: pve3
    nodeid: 3
    quorum_votes: 1
    ring0_addr: pve3-corosync
    ring1_addr: 192.168.1.13
  }
}

quorum {
  provider: corosync_votequorum
}

totem {
  cluster_name: lab
  config_version: 5
  interface {
    linknumber: 0
  }
  interface {
    linknumber: 1
  }
  ip_version: ipv4-6
  link_mode: passive
  secauth: on
  version: 2
}
"""


def mount_line(number, mount_point, fstype, source, options):
    return "%d 1 0:%d / %s rw,relatime shared:%d - %s %s %s\n" % (
        number, number, mount_point, number, fstype, source, options)


def tcp_line(slot, local, remote, state="01"):
    return ("%4d: %s %s %s 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 "
            "10 -1\n" % (slot, local, remote, state))


def write(root, relative, content, append=False):
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a" if append else "w", encoding="utf-8") as handle:
        handle.write(content)


@pytest.fixture
def storage_host(make_host):
    """desktop_dgpu_nic with the default route on eno1 (00:1f.6) and enp3s0 (03:00.0, in the GPU's
    IOMMU group 2) on a storage network of its own."""
    root = make_host("desktop_dgpu_nic", network={"default_route": None,
                                                  "interfaces": {"eno1": "00:1f.6", "enp3s0": "03:00.0"}})
    write(root, "proc/net/route", ROUTES)
    write(root, "proc/net/tcp", TCP_HEADER)
    return root


def test_an_nfs_mount_makes_its_nic_critical_and_keeps_the_gpu_on_the_host(storage_host):
    assert STORAGE_NIC not in critical_devices(storage_host)

    write(storage_host, "proc/self/mountinfo",
          mount_line(40, "/mnt/pve/nas", "nfs4", "172.16.0.10:/export/vms", NFS_OPTIONS), append=True)

    reason = "NIC of network storage in use: the NFS mount on /mnt/pve/nas (172.16.0.10) (enp3s0)"
    assert storage_interfaces(storage_host) == [("enp3s0", reason)]
    assert critical_devices(storage_host)[STORAGE_NIC] == [reason]
    topology = detect(storage_host)
    gpu = next(gpu for gpu in topology["gpus"] if gpu["address"] == "0000:01:00.0")
    assert gpu["passthrough"]["viable"] is False
    assert any(reason in text for text in gpu["passthrough"]["reasons"]), gpu["passthrough"]["reasons"]


@pytest.mark.parametrize(
    "fstype, source, options",
    [
        # NFSv3: the mount daemon's address too, and the server's; a host name in the source
        ("nfs", "nas.example.org:/srv/vms", "rw,vers=3,hard,proto=tcp,sec=sys,mountaddr=172.16.0.10,mountvers=3,"
                                            "mountport=20048,mountproto=udp,local_lock=none,addr=172.16.0.10"),
        ("cifs", "//172.16.0.10/vms", "rw,vers=3.1.1,cache=strict,username=backup,uid=0,noforceuid,gid=0,"
                                      "noforcegid,addr=172.16.0.10,file_mode=0755,dir_mode=0755,soft,nounix"),
        ("ceph", "172.16.0.10:6789,172.16.0.11:6789:/volumes", "rw,relatime,name=admin,secret=<hidden>,acl"),
        ("ceph", "admin@9a2b8d5e-4c1f-4f7e-9d57-2b1c0e6f3a10.cephfs=/", "rw,relatime,name=admin,secret=<hidden>,"
                                                                        "acl,mon_addr=172.16.0.10:3300/172.16.0.11:3300"),
        ("nfs4", "172.16.0.10:/", "rw,vers=4.1,proto=rdma,port=20049,sec=sys,clientaddr=172.16.0.2,local_lock=none"),
    ],
    ids=["nfs3", "cifs", "cephfs-monitors-in-source", "cephfs-mon_addr", "nfs-over-rdma-source-only"],
)
def test_the_server_of_each_network_filesystem_is_read(storage_host, fstype, source, options):
    write(storage_host, "proc/self/mountinfo", mount_line(41, "/srv/share", fstype, source, options), append=True)

    [(interface, reason)] = storage_interfaces(storage_host)
    assert interface == "enp3s0"
    assert "mount on /srv/share (172.16.0.10)" in reason


def test_servers_that_cannot_be_placed_add_nothing(storage_host):
    write(storage_host, "proc/self/mountinfo",
          mount_line(42, "/mnt/a", "nfs4", "nas.example.org:/a", "rw,vers=4.2,sec=sys")  # a host name only
          + mount_line(43, "/mnt/b", "nfs4", "127.0.0.1:/b", "rw,vers=4.2,addr=127.0.0.1")  # the host itself
          + mount_line(44, "/mnt/c", "fuse.sshfs", "user@172.16.0.10:/c", "rw,user_id=0")  # not kernel storage
          + mount_line(45, "/mnt/d", "nfs4", "10.99.0.1:/d", "rw,vers=4.2,addr=10.99.0.1"),  # the default route
          append=True)

    assert storage_interfaces(storage_host) == [
        ("eno1", "NIC of network storage in use: the NFS mount on /mnt/d (10.99.0.1) (eno1)")]
    assert STORAGE_NIC not in critical_devices(storage_host)


def test_sessions_to_storage_ports_make_their_nic_critical(storage_host):
    # 172.16.0.2 -> 172.16.0.20:3260 (iSCSI), .21:4420 (NVMe/TCP), .22:6801 (a Ceph OSD, an RBD disk);
    # a web session, a closing iSCSI session and a local NBD server are not storage in use.
    write(storage_host, "proc/net/tcp", TCP_HEADER
          + tcp_line(0, "020010AC:D2F0", "140010AC:0CBC")
          + tcp_line(1, "020010AC:D2F1", "150010AC:1144")
          + tcp_line(2, "020010AC:D2F2", "160010AC:1A91")
          + tcp_line(3, "020010AC:D2F3", "170010AC:1F90")
          + tcp_line(4, "020010AC:D2F4", "180010AC:0CBC", "06")
          + tcp_line(5, "0100007F:D2F5", "0100007F:2A39"))

    assert storage_interfaces(storage_host) == [(
        "enp3s0", "NIC of network storage in use: the iSCSI session with 172.16.0.20, the NVMe/TCP session with "
                  "172.16.0.21, the Ceph session with 172.16.0.22 (enp3s0)")]
    assert critical_devices(storage_host)[STORAGE_NIC] == [storage_interfaces(storage_host)[0][1]]


def test_a_mount_and_its_own_sessions_are_named_once(storage_host):
    # nconnect=2: two TCP sessions to the NFS server of the mount; one more iSCSI portal on it.
    write(storage_host, "proc/self/mountinfo",
          mount_line(40, "/mnt/pve/nas", "nfs4", "172.16.0.10:/export/vms", NFS_OPTIONS), append=True)
    write(storage_host, "proc/net/tcp", TCP_HEADER
          + tcp_line(0, "020010AC:03FF", "0A0010AC:0801")
          + tcp_line(1, "020010AC:03FE", "0A0010AC:0801")
          + tcp_line(2, "020010AC:D2F0", "0A0010AC:0CBC")
          + tcp_line(3, "020010AC:D2F1", "0A0010AC:0CBC"))

    assert storage_interfaces(storage_host) == [(
        "enp3s0", "NIC of network storage in use: the NFS mount on /mnt/pve/nas (172.16.0.10), the iSCSI session "
                  "with 172.16.0.10 (enp3s0)")]


def test_many_uses_are_counted_past_the_first_three(storage_host):
    write(storage_host, "proc/self/mountinfo", "".join(
        mount_line(50 + index, "/mnt/share%d" % index, "nfs4", "172.16.0.%d:/" % (30 + index),
                   "rw,vers=4.2,addr=172.16.0.%d" % (30 + index))
        for index in range(5)), append=True)

    [(_interface, reason)] = storage_interfaces(storage_host)
    assert reason.endswith("the NFS mount on /mnt/share2 (172.16.0.32) and 2 more (enp3s0)")


@pytest.fixture
def cluster_host(make_host):
    root = make_host("desktop_dgpu_nic", network={"default_route": None,
                                                  "interfaces": {"eno1": "00:1f.6", "enp3s0": "03:00.0"}})
    os.makedirs(os.path.join(root, "sys/class/net/vmbr0"))
    os.symlink("../eno1", os.path.join(root, "sys/class/net/vmbr0/lower_eno1"))
    write(root, "proc/net/route", CLUSTER_ROUTES)
    write(root, "etc/hosts", "127.0.0.1 localhost\n# the cluster network\n10.10.10.3 pve3-corosync.lab pve3-Corosync\n")
    return root


def test_the_nic_of_a_cluster_link_is_critical(cluster_host):
    assert "0000:03:00.0" not in critical_devices(cluster_host)

    write(cluster_host, "etc/corosync/corosync.conf", COROSYNC)

    assert cluster_addresses(cluster_host) == [ipaddress.ip_address(address) for address in (
        "10.10.10.1", "192.168.1.11", "10.10.10.2", "192.168.1.12", "10.10.10.3", "192.168.1.13")]
    assert cluster_interfaces(cluster_host) == [
        ("enp3s0", "NIC of the corosync cluster link to 10.10.10.1, 10.10.10.2, 10.10.10.3 (enp3s0)"),
        ("vmbr0", "NIC of the corosync cluster link to 192.168.1.11, 192.168.1.12, 192.168.1.13 (vmbr0)"),
    ]
    critical = critical_devices(cluster_host)
    assert critical["0000:03:00.0"] == ["NIC of the corosync cluster link to 10.10.10.1, 10.10.10.2, 10.10.10.3 "
                                        "(enp3s0)"]
    assert critical["0000:00:1f.6"] == [  # eno1, under the bridge
        "NIC of the default route (vmbr0)",
        "NIC of the corosync cluster link to 192.168.1.11, 192.168.1.12, 192.168.1.13 (vmbr0)",
    ]


def test_corosync_2_binds_a_network_and_unknown_names_are_left_out(cluster_host):
    write(cluster_host, "etc/corosync/corosync.conf",
          "totem {\n  version: 2\n  interface {\n    ringnumber: 0\n    bindnetaddr: 10.10.10.0\n"
          "    mcastport: 5405\n  }\n}\nnodelist {\n  node {\n    ring0_addr: nowhere\n  }\n"
          "  node {\n    ring0_addr: 127.0.0.1\n  }\n}\n")

    assert cluster_addresses(cluster_host) == [ipaddress.ip_address("10.10.10.0")]
    assert [interface for interface, _reason in cluster_interfaces(cluster_host)] == ["enp3s0"]


def test_no_cluster_no_links(cluster_host):
    assert cluster_addresses(cluster_host) == []
    assert cluster_interfaces(cluster_host) == []
