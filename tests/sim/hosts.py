# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host descriptions (``tests/fixtures/hostgen.py`` format) and helpers for the mdev tests."""

from __future__ import annotations

import copy
import os

MACHINE_ID = "5f0c1d2e3a4b4c5d8e9f0a1b2c3d4e5f"
# make_host("datacenter_a100", files=MACHINE_ID_FILE): a fixed host identity, deterministic UUIDs.
MACHINE_ID_FILE = {"etc/machine-id": MACHINE_ID + "\n"}

# The QEMU lab's mediated parents as the kernel's (6.1) sample drivers register them (type ids,
# names and counts read in the lab guest): mbochs types draw
# on one memory pool (small 4 MB, medium 16 MB, large 64 MB of 256 MB), mdpy on one device count.
MEDIATED_LAB = {
    "summary": "The lab guest: the kernel's mtty, mdpy and mbochs sample parents and an SR-IOV NVMe.",
    "kernel": {"release": "6.1.0-28-amd64", "modules": ["mtty", "mdpy", "mbochs", "nvme"]},
    "iommu": {"enabled": False},
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
    ],
    "mdev_parents": [
        {
            "name": "mbochs",
            "types": [
                {"id": "mbochs-small", "name": "mbochs-small", "available": 64, "device_api": "vfio-pci"},
                {"id": "mbochs-medium", "name": "mbochs-medium", "available": 16, "device_api": "vfio-pci"},
                {"id": "mbochs-large", "name": "mbochs-large", "available": 4, "device_api": "vfio-pci"},
            ],
        },
        {
            "name": "mdpy",
            "types": [
                {"id": "mdpy-vga", "name": "mdpy-vga", "available": 4, "device_api": "vfio-pci"},
                {"id": "mdpy-xga", "name": "mdpy-xga", "available": 4, "device_api": "vfio-pci"},
                {"id": "mdpy-hd", "name": "mdpy-hd", "available": 4, "device_api": "vfio-pci"},
            ],
        },
        {
            "name": "mtty",
            "types": [
                {"id": "mtty-1", "name": "Single port serial", "available": 24, "device_api": "vfio-pci"},
                {"id": "mtty-2", "name": "Dual port serial", "available": 12, "device_api": "vfio-pci"},
            ],
        },
    ],
    "files": dict(MACHINE_ID_FILE),
}


def mediated_lab(**changes):
    description = copy.deepcopy(MEDIATED_LAB)
    description.update(changes)
    return description


def hold_vfio_group(root, group, pid=4242, comm="qemu-system-x86", fd=20):
    """Make a fake process (``pid``, ``comm``) hold ``/dev/vfio/<group>`` open, as a running VM does."""
    _hold_file(root, "dev/vfio/" + group, pid, comm, fd)


def _hold_file(root, relative, pid, comm, fd):
    """Create ``relative`` (a device file) and a process ``pid`` with ``fd`` open on it."""
    os.makedirs(os.path.dirname(os.path.join(root, relative)), exist_ok=True)
    with open(os.path.join(root, relative), "w"):
        pass
    fd_dir = os.path.join(root, "proc", str(pid), "fd")
    os.makedirs(fd_dir, exist_ok=True)
    with open(os.path.join(root, "proc", str(pid), "comm"), "w") as handle:
        handle.write(comm + "\n")
    os.symlink("/" + relative, os.path.join(fd_dir, str(fd)))


def hold(root, value, pid=4242, comm="qemu-system-x86"):
    """Make a fake process hold mdev ``value``'s VFIO group open, as a running VM does."""
    group = os.path.basename(os.readlink(os.path.join(root, "sys/bus/mdev/devices", value, "iommu_group")))
    hold_vfio_group(root, group, pid, comm)
    return pid


def hold_cdev(root, value, cdev="vfio0", pid=4243, comm="qemu-system-x86"):
    """Make a fake process hold mdev ``value``'s iommufd device file ``/dev/vfio/devices/<cdev>``
    open, as a VM started with ``-device vfio-pci,fd=`` on an iommufd host does (no group file)."""
    device = os.path.realpath(os.path.join(root, "sys/bus/mdev/devices", value))
    vfio_dev = os.path.join(device, "vfio-dev", cdev)
    os.makedirs(vfio_dev)
    with open(os.path.join(vfio_dev, "dev"), "w") as handle:
        handle.write("511:0\n")
    link = os.path.join(root, "sys/class/vfio-dev", cdev)
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(os.path.relpath(vfio_dev, os.path.dirname(link)), link)
    _hold_file(root, "dev/vfio/devices/" + cdev, pid, comm, 20)
    return pid


def tree_state(root):
    """Every file and link below ``root`` with its content or target, to prove nothing changed.

    Empty folders are left out: the simulator leaves ``dev/vfio`` and the like behind, as a kernel
    that once created a device would.
    """
    state = {}
    for directory, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            if relative == ".kernel-sim.json":
                continue
            if os.path.islink(path):
                state[relative] = "-> " + os.readlink(path)
            else:
                with open(path, "rb") as handle:
                    state[relative] = handle.read()
    return state
