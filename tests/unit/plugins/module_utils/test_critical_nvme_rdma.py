# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Root on an NVMe-over-Fabrics namespace reached over RDMA (RoCE or InfiniBand, ``nvme connect -t rdma``).

The kernel's NVMe/RDMA host driver talks to the target through the RDMA CM, not a TCP socket: nothing of it is in
``/proc/net/tcp``. Its controllers are virtual devices (``/sys/devices/virtual/nvme-fabrics/ctl/nvmeN``) with the
target's address in ``address`` (``nvmf_get_address``: ``traddr=...,trsvcid=...``), and its namespaces live under
them or under their ``nvme-subsystem``. When the RDMA device goes away (its NIC leaves ``mlx5_core``),
``nvme_rdma_remove_one`` deletes every controller using it: the namespaces, and the root filesystem, vanish.
The NIC the target is routed through carries the host's root disk."""

from __future__ import annotations

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils.critical import critical_devices

CONNECTX = "0000:05:00.0"
CONNECTX_DEVICE = {"address": "05:00.0", "parent": "00:06.0", "ids": "15b3:1017", "class": "020000",
                   "driver": "mlx5_core", "group": 9}
MOUNTINFO = (
    "22 1 259:5 / / rw,relatime shared:1 - ext4 /dev/nvme1n1 rw\n"
    "23 22 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:2 - proc proc rw\n"
    "24 22 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:3 - sysfs sysfs rw\n"
)
# The default route on the onboard NIC; the storage network 10.10.0.0/24 on the ConnectX (RoCE).
ROUTES = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    "eno1\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
    "eno1\t0000A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n"
    "ens1f0np0\t00000A0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
)
CONTROLLER = "sys/devices/virtual/nvme-fabrics/ctl/nvme1"


def namespace_layout(multipath):
    """``(disk, links)``: the namespace nvme1n1 (259:5) of the fabrics controller nvme1."""
    if multipath:
        # The usual layout: the namespace is the subsystem's disk, the subsystem links its controllers.
        subsystem = "sys/devices/virtual/nvme-subsystem/nvme-subsys1"
        disk = subsystem + "/nvme1n1"
        links = {subsystem + "/nvme1": "../../nvme-fabrics/ctl/nvme1"}
    else:
        disk = CONTROLLER + "/nvme1n1"
        links = {}
    links.update({
        "sys/class/nvme/nvme1": "../../devices/virtual/nvme-fabrics/ctl/nvme1",
        "sys/block/nvme1n1": "../" + disk[len("sys/"):],
        "sys/class/block/nvme1n1": "../../" + disk[len("sys/"):],
        "sys/dev/block/259:5": "../../" + disk[len("sys/"):],
    })
    return disk, links


def fabrics_host(make_host, multipath, extra_files=None):
    disk, links = namespace_layout(multipath)
    return make_host(
        "desktop_dgpu",
        add_devices=[CONNECTX_DEVICE],
        disks={"nvme0n1": {"device": "02:00.0", "partitions": 2}},
        root_fs="nvme0n1p2",
        network={"default_route": "eno1", "interfaces": {"eno1": "00:1f.6", "ens1f0np0": "05:00.0"}},
        files={
            "proc/self/mountinfo": MOUNTINFO,
            "proc/net/route": ROUTES,
            disk + "/dev": "259:5\n",
            disk + "/size": "2000000000\n",
            CONTROLLER + "/transport": "rdma\n",
            CONTROLLER + "/address": "traddr=10.10.0.5,trsvcid=4420\n",
            CONTROLLER + "/state": "live\n",
            CONTROLLER + "/subsysnqn": "nqn.2014-08.org.example:boot\n",
            **(extra_files or {}),
        },
        links=links,
    )


@pytest.mark.parametrize("multipath", [True, False], ids=["nvme-subsystem", "controller"])
def test_the_nic_of_an_nvme_over_rdma_root_is_critical(make_host, multipath):
    root = fabrics_host(make_host, multipath)
    critical = critical_devices(root)
    assert critical[CONNECTX] == [
        "NIC of network storage in use: the NVMe/RDMA controller nvme1 with 10.10.0.5 (ens1f0np0)"
    ]


def test_a_controller_over_another_transport_is_left_to_its_session(make_host):
    root = fabrics_host(make_host, True, {CONTROLLER + "/transport": "tcp\n"})
    assert CONNECTX not in critical_devices(root)  # NVMe/TCP is a TCP session, and this tree has none


def test_control_the_same_target_over_tcp_is_found(make_host):
    # Control: the tree routes 10.10.0.5 through the ConnectX. With NVMe/TCP (a kernel socket to port 4420 in
    # /proc/net/tcp) the NIC is found, so what the test above misses is the RDMA transport alone.
    tcp = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
           "   0: 02000A0A:D431 05000A0A:1144 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0\n")
    root = fabrics_host(make_host, True, {"proc/net/tcp": tcp, "proc/net/tcp6": ""})
    assert CONNECTX in critical_devices(root)
