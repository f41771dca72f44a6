# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Storage reached through a host bus adapter, with no socket and no route to show it.

- NVMe over Fibre Channel (``nvme connect -t fc``): the controllers are virtual devices
  (``/sys/devices/virtual/nvme-fabrics/ctl/nvmeN``: ``nvme_init_ctrl()`` is given the nvme-fabrics
  device, not the HBA), so a namespace's sysfs path names no PCI function. The controller's
  ``address`` names the host port (``host_traddr=nn-0x<WWNN>:pn-0x<WWPN>``, required by the FC
  transport); ``/sys/class/fc_host/hostN`` sits below the HBA function and has its ``port_name``.
- iSER: ``iscsi_iser`` adds its SCSI host below the RDMA device's parent, the HCA's PCI function
  (offload iSCSI HBAs add theirs below their own function); ``iscsi_tcp`` adds its host with no
  parent (``/sys/devices/platform/hostN``), its session a kernel socket.
- SRP: ``ib_srp`` adds its SCSI host below the HCA's function; the target port is
  ``/sys/class/srp_remote_ports/port-H:N``.

Taking such an adapter from its driver deletes the controllers, sessions and ports on it, and the
disks of the host and its VMs with them."""

from __future__ import annotations

import os

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils.critical import critical_devices, storage_adapters
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect
from ansible_collections.gpuvirt.host.tests.unit.plugins.module_utils.test_critical_nvme_rdma import (
    CONTROLLER,
    namespace_layout,
)

# A two-port Emulex LPe32002 and a ConnectX-6 (InfiniBand) in the desktop_dgpu host.
HBA = ["0000:05:00.0", "0000:05:00.1"]
HCA = "0000:06:00.0"
ADAPTERS = [
    {"address": "05:00.0", "parent": "00:06.0", "ids": "10df:e300", "class": "0c0400", "driver": "lpfc", "group": 8},
    {"address": "05:00.1", "parent": "00:06.0", "ids": "10df:e300", "class": "0c0400", "driver": "lpfc", "group": 9},
    {"address": "06:00.0", "parent": "00:06.0", "ids": "15b3:101b", "class": "020700", "driver": "mlx5_core",
     "group": 10},
]
HOST_PORTS = {"0000:05:00.0": (5, "0x10000090fa942778"), "0000:05:00.1": (6, "0x10000090fa942779")}
TARGET = "nn-0x200000109b579ef6:pn-0x100000109b579ef6"
MOUNTINFO = (
    "22 1 259:5 / / rw,relatime shared:1 - ext4 /dev/nvme1n1 rw\n"
    "23 22 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:2 - proc proc rw\n"
)


def device_dir(address):
    return "sys/devices/pci0000:00/0000:00:06.0/" + address


def fc_hosts():
    files, links = {}, {}
    for address, (number, wwpn) in HOST_PORTS.items():
        host = "%s/host%d/fc_host/host%d" % (device_dir(address), number, number)
        files[host + "/port_name"] = wwpn + "\n"
        files[host + "/node_name"] = "0x2" + wwpn[3:] + "\n"
        links["sys/class/fc_host/host%d" % number] = "../../" + host[len("sys/"):]
    return files, links


def adapter_host(make_host, files=None, links=None, **changes):
    host_files, host_links = fc_hosts()
    host_files.update(files or {})
    host_links.update(links or {})
    return make_host("desktop_dgpu", add_devices=[dict(device, **changes.pop(device["address"], {}))
                                                  for device in ADAPTERS],
                     files=host_files, links=host_links, **changes)


def nvme_fc(host_traddr="nn-0x20000090fa942779:pn-0x10000090fa942779", multipath=True, mounted=True):
    """An NVMe/FC controller nvme1 through the HBA's second port, and its namespace nvme1n1 on /."""
    disk, links = namespace_layout(multipath)
    address = "traddr=%s" % TARGET + (",host_traddr=%s" % host_traddr if host_traddr else "")
    files = {
        disk + "/dev": "259:5\n",
        disk + "/size": "2000000000\n",
        CONTROLLER + "/transport": "fc\n",
        CONTROLLER + "/address": address + "\n",
        CONTROLLER + "/state": "live\n",
    }
    if mounted:
        files["proc/self/mountinfo"] = MOUNTINFO
    return files, links


FC_REASON = "HBA of storage in use: the NVMe/FC controller nvme1 with target port 0x100000109b579ef6"


@pytest.mark.parametrize("multipath", [True, False], ids=["nvme-subsystem", "controller"])
def test_the_hba_port_of_an_nvme_over_fc_root_is_critical(make_host, multipath):
    files, links = nvme_fc(multipath=multipath)
    critical = critical_devices(adapter_host(make_host, files, links))
    assert critical[HBA[1]] == ["holds the root filesystem (/dev/nvme1n1)", FC_REASON]
    # The other port's function reaches no controller: it stays free to take.
    assert HBA[0] not in critical


def test_nvme_over_fc_namespaces_the_host_does_not_mount_keep_their_hba(make_host):
    # The namespaces of VMs (raw disks, LVM volumes not mounted): the session is what counts.
    files, links = nvme_fc(mounted=False)
    critical = critical_devices(adapter_host(make_host, files, links))
    assert critical[HBA[1]] == [FC_REASON]
    assert HBA[0] not in critical


def test_world_wide_names_without_0x_name_the_same_ports(make_host):
    # nvme_fc_parse_traddr() takes nn-<WWNN>:pn-<WWPN> with or without the 0x, and in any case; the address shows
    # them as given, where fc_host writes 0x and lower case.
    files, links = nvme_fc(host_traddr="nn-20000090FA942779:pn-10000090FA942779")
    files[CONTROLLER + "/address"] = files[CONTROLLER + "/address"].replace("0x", "")
    critical = critical_devices(adapter_host(make_host, files, links))
    assert critical[HBA[1]] == ["holds the root filesystem (/dev/nvme1n1)", FC_REASON]
    assert HBA[0] not in critical


@pytest.mark.parametrize("host_traddr", [None, "nn-0x20000090fa9427ff:pn-0x10000090fa9427ff"],
                         ids=["no-host-traddr", "unknown-port"])
def test_an_nvme_fc_controller_naming_no_port_found_keeps_every_fc_port(make_host, host_traddr):
    files, links = nvme_fc(host_traddr=host_traddr)
    critical = critical_devices(adapter_host(make_host, files, links))
    doubt = "its host port (host_traddr %s) is none of the FC host ports found" % (host_traddr or "not given")
    for address in HBA:
        assert critical[address] == [
            "holds the root filesystem (/dev/nvme1n1)",
            FC_REASON.replace("HBA of", "HBA that may carry") + " (%s)" % doubt,
        ]


def test_with_no_fc_host_port_found_every_fibre_channel_function_may_carry_it(make_host):
    # No fc_host below a PCI function (a snapshot without them, a port under no PCI device): the namespace in use
    # still leads to the Fibre Channel functions (class 0c04), not to none.
    files, links = nvme_fc()
    for number in (5, 6):
        links.pop("sys/class/fc_host/host%d" % number, None)
    root = adapter_host(make_host, files, links)
    for number in (5, 6):
        os.unlink(os.path.join(root, "sys/class/fc_host/host%d" % number))
    critical = critical_devices(root)
    doubt = "no FC host port is found below a PCI function (sys/class/fc_host)"
    for address in HBA:
        assert critical[address] == [
            "holds the root filesystem (/dev/nvme1n1)",
            FC_REASON.replace("HBA of", "HBA that may carry") + " (%s)" % doubt,
        ]
    assert HCA not in critical


def test_an_nvme_fc_root_refuses_the_gpu_sharing_the_hbas_group(make_host):
    # The HBA's second port behind the GPU's switch, in its IOMMU group 2.
    files, links = nvme_fc()
    root = adapter_host(make_host, files, links, **{"05:00.1": {"group": 2}})
    gpu = next(entry for entry in detect(root)["gpus"] if entry["address"] == "0000:01:00.0")
    assert gpu["passthrough"]["viable"] is False
    assert "host_critical" in gpu["passthrough"]["codes"]
    assert any(HBA[1] in reason and "root filesystem" in reason for reason in gpu["passthrough"]["reasons"])


def iscsi_session(host_dir, number=1, target="iqn.2001-05.com.example:boot"):
    session = "%s/session%d/iscsi_session/session%d" % (host_dir, number, number)
    return ({session + "/targetname": target + "\n", session + "/state": "LOGGED_IN\n"},
            {"sys/class/iscsi_session/session%d" % number: "../../" + session[len("sys/"):]})


def test_the_hca_of_an_iser_session_is_critical(make_host):
    files, links = iscsi_session(device_dir(HCA) + "/host7")
    critical = critical_devices(adapter_host(make_host, files, links))
    assert critical[HCA] == ["HBA of storage in use: the iSCSI session session1 with iqn.2001-05.com.example:boot"]


def test_an_iscsi_tcp_session_is_left_to_its_socket(make_host):
    # iscsi_tcp's host has no parent: no adapter carries it, its kernel socket tells the NIC (storage_interfaces).
    files, links = iscsi_session("sys/devices/platform/host7")
    root = adapter_host(make_host, files, links)
    assert storage_adapters(root) == []
    assert not set(HBA + [HCA]) & set(critical_devices(root))


def test_a_filesystem_on_an_iser_lun_names_the_hca(make_host):
    # The LUN's path runs below the HCA's function, as the session's does.
    files, links = iscsi_session(device_dir(HCA) + "/host7")
    disk = device_dir(HCA) + "/host7/session1/target7:0:0/7:0:0:0/block/sdb"
    files.update({disk + "/dev": "8:16\n", disk + "/size": "2000000000\n",
                  "proc/self/mountinfo": "22 1 259:2 / / rw - ext4 /dev/nvme0n1p2 rw\n"
                                         "30 22 8:16 / /srv rw - ext4 /dev/sdb rw\n"})
    links.update({"sys/block/sdb": "../" + disk[len("sys/"):], "sys/class/block/sdb": "../../" + disk[len("sys/"):],
                  "sys/dev/block/8:16": "../../" + disk[len("sys/"):]})
    critical = critical_devices(adapter_host(make_host, files, links))
    assert critical[HCA] == [
        "holds the filesystem mounted on /srv (/dev/sdb)",
        "HBA of storage in use: the iSCSI session session1 with iqn.2001-05.com.example:boot",
    ]


SRP_PORT_ID = "00:02:c9:03:00:a0:b1:c2:00:02:c9:03:00:a0:b1:c2"  # show_srp_rport_id(): 16 bytes, colon-separated


def test_the_hca_of_an_srp_target_port_is_critical(make_host):
    port = device_dir(HCA) + "/host8/port-8:1/srp_remote_ports/port-8:1"
    files = {port + "/port_id": SRP_PORT_ID + "\n"}
    links = {"sys/class/srp_remote_ports/port-8:1": "../../" + port[len("sys/"):]}
    critical = critical_devices(adapter_host(make_host, files, links))
    assert critical[HCA] == ["HBA of storage in use: the SRP target port port-8:1 (%s)" % SRP_PORT_ID]


# The storage network 10.10.0.0/24 on the ConnectX's RoCE port (a bond of both ports: LAG).
ROCE_ROUTES = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    "eno1\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
    "%s\t00000A0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
)


@pytest.mark.parametrize("lag", [False, True], ids=["soft-roce", "roce-lag"])
def test_the_nic_an_iser_session_reaches_its_target_through_is_critical(make_host, lag):
    """Over soft-RoCE (rxe) iSER's SCSI host has no parent (the rxe device none); over a RoCE LAG it is below the
    first port alone. The route to the connection's target tells the interface, and a bond its ports; RDMA opens no
    TCP socket."""
    host_dir = "sys/devices/platform/host7" if not lag else device_dir(HCA) + "/host7"
    files, links = iscsi_session(host_dir)
    connection = host_dir + "/session1/connection1:0/iscsi_connection/connection1:0"
    files.update({connection + "/address": "10.10.0.5\n", connection + "/port": "3260\n",
                  "proc/net/route": ROCE_ROUTES % ("bond0" if lag else "ens1f0np0")})
    links["sys/class/iscsi_connection/connection1:0"] = "../../" + connection[len("sys/"):]
    interfaces = {"eno1": "00:1f.6", "ens1f0np0": "06:00.0"}
    adapters = {}
    if lag:
        interfaces.update({"ens1f1np1": "06:00.1", "bond0": {"lower": ["ens1f0np0", "ens1f1np1"]}})
        adapters["add_devices"] = ADAPTERS + [dict(ADAPTERS[2], address="06:00.1", group=11)]
    root = make_host("desktop_dgpu", add_devices=adapters.get("add_devices", ADAPTERS), files=files, links=links,
                     network={"default_route": "eno1", "interfaces": interfaces})
    critical = critical_devices(root)
    nic = "NIC of network storage in use: the iSCSI session with 10.10.0.5 (%s)" % ("bond0" if lag else "ens1f0np0")
    if lag:
        assert critical[HCA] == [
            "HBA of storage in use: the iSCSI session session1 with iqn.2001-05.com.example:boot", nic]
        assert critical["0000:06:00.1"] == [nic]
    else:
        assert critical[HCA] == [nic]


def test_an_iscsi_session_over_a_socket_is_named_once(make_host):
    # iscsi_tcp: its kernel socket to port 3260 and its connection's address name the same session.
    files, links = iscsi_session("sys/devices/platform/host7")
    connection = "sys/devices/platform/host7/session1/connection1:0/iscsi_connection/connection1:0"
    tcp = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
           "   0: 02000A0A:D431 05000A0A:0CBC 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0\n")
    files.update({connection + "/address": "10.10.0.5\n", "proc/net/route": ROCE_ROUTES % "ens1f0np0",
                  "proc/net/tcp": tcp, "proc/net/tcp6": ""})
    links["sys/class/iscsi_connection/connection1:0"] = "../../" + connection[len("sys/"):]
    root = make_host("desktop_dgpu", add_devices=ADAPTERS, files=files, links=links,
                     network={"default_route": "eno1", "interfaces": {"eno1": "00:1f.6", "ens1f0np0": "06:00.0"}})
    assert critical_devices(root)[HCA] == ["NIC of network storage in use: the iSCSI session with 10.10.0.5 "
                                           "(ens1f0np0)"]


def test_fc_scsi_targets_alone_leave_the_hba_free(make_host):
    # The HBA logs in to every target zoned to it: a remote port is no disk in use. An HBA given to a VM is such
    # a device.
    rport = device_dir(HBA[0]) + "/host5/rport-5:0-0/fc_remote_ports/rport-5:0-0"
    files = {rport + "/port_name": "0x500601603ee0a5b1\n", rport + "/roles": "FCP Target\n"}
    links = {"sys/class/fc_remote_ports/rport-5:0-0": "../../" + rport[len("sys/"):]}
    root = adapter_host(make_host, files, links)
    assert storage_adapters(root) == []
    assert not set(HBA) & set(critical_devices(root))


def test_the_fixture_places_the_fc_hosts_below_their_functions(make_host):
    # Control for the tests above: the tree links each fc_host below the function it names.
    root = adapter_host(make_host)
    for address, (number, _wwpn) in HOST_PORTS.items():
        real = os.path.realpath(os.path.join(root, "sys/class/fc_host/host%d" % number))
        assert "/%s/host%d/" % (address, number) in real
        assert os.path.realpath(os.path.join(root, "sys/bus/pci/devices", address)) in real
