# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host descriptions and helpers shared by the sriov and nvidia_vgpu tests."""

from __future__ import annotations

import copy
import json
import os

from ansible_collections.gpuvirt.host.plugins.module_utils.pci import PciIds, read_pci_devices
from ansible_collections.gpuvirt.host.tests.fixtures import hostgen
from ansible_collections.gpuvirt.host.tests.sim.hosts import hold_vfio_group, tree_state

NVME = "0000:04:00.0"

# The sriov and nvidia_vgpu tests prove "nothing changed" with the same snapshot as the others.
snapshot = tree_state
STATE = "etc/gpuvirt/host-state.json"

# A small host with an SR-IOV NVMe like the QEMU lab's (sriov_totalvfs 4, nvme driver) and a NIC
# without SR-IOV.
NVME_HOST = {
    "kernel": {"release": "6.1.0-28-amd64", "modules": ["nvme", "vfio_pci"]},
    "devices": [
        {"address": "00:06.0", "ids": "8086:29c0", "class": "060400", "driver": "pcieport"},
        {
            "address": "04:00.0",
            "parent": "00:06.0",
            "ids": "1b36:0010",
            "class": "010802",
            "driver": "nvme",
            "vendor_name": "Red Hat, Inc.",
            "device_name": "QEMU NVM Express Controller",
            "sriov": {"total_vfs": 4, "num_vfs": 0, "offset": 1, "stride": 1},
        },
        {
            "address": "05:00.0",
            "ids": "8086:10d3",
            "class": "020000",
            "driver": "e1000e",
            "vendor_name": "Intel Corporation",
            "device_name": "82574L Gigabit Network Connection",
        },
    ],
}


def hold_group(root, address, pid=4242):
    """Make a fake VM process hold the VFIO group of ``address``; returns the group."""
    group = os.path.basename(os.readlink(os.path.join(root, "sys/bus/pci/devices", address, "iommu_group")))
    hold_vfio_group(root, group, pid, fd=30)
    return group


def devices_of(root):
    """Every PCI device below ``root`` with its pci.ids names, as the modules read them."""
    devices = read_pci_devices(root)
    ids = PciIds.load(root)
    for device in devices.values():
        device.vendor_name = ids.vendor_name(device.vendor_id)
        device.device_name = ids.device_name(device.vendor_id, device.device_id)
    return devices


def recorded(root):
    """The state file the modules write for the boot-time restore."""
    with open(os.path.join(root, STATE)) as handle:
        return json.load(handle)


def all_vfs_enabled(name):
    """Host description ``name`` with every NVIDIA GPU's VFs all enabled (``num_vfs`` = ``total_vfs``), as
    ``sriov-manage -e`` leaves them: SR-IOV mode for ``nvidia_vgpu``. The ``l40s_vgpu`` (8 of 32) and
    ``datacenter_a100`` (16 of 20) descriptions enable only some, to keep the trees small for readers."""
    description = copy.deepcopy(hostgen.load_description(name))
    for device in description["devices"]:
        if device.get("sriov") and device["ids"].startswith("10de:"):
            device["sriov"] = dict(device["sriov"], num_vfs=device["sriov"]["total_vfs"])
    return description
