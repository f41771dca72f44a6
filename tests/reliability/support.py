# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Trees, digests and module runs shared by the reliability cases."""

from __future__ import annotations

import hashlib
import os
import stat

from ansible_collections.gpuvirt.host.tests.fixtures import hostgen
from ansible_collections.gpuvirt.host.tests.sim.hosts import MEDIATED_LAB
from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim
from ansible_collections.gpuvirt.host.tests.sim.nvidia_vgpu_sim import attach
from ansible_collections.gpuvirt.host.tests.sim.pci_kernel import PciKernel
from ansible_collections.gpuvirt.host.tests.sim.sriov_hosts import all_vfs_enabled

SIM_STATE = ".kernel-sim.json"
STATE = "etc/gpuvirt/host-state.json"
CACHE = "var/lib/gpuvirt/nvidia-vgpu-types.json"
LOCK = "etc/gpuvirt/.lock"  # the host lock (flock) every changing module holds
BOOTLOADER_TREES = {
    "grub": "debian-grub",
    "grubby": "rocky9-grubby",
    "systemd-boot": "systemd-boot",
    "proxmox": "proxmox-zfs-uefi",
}

# One host for every writer of the state file: the L40S (per-VF vGPUs, all 32 VFs: SR-IOV mode), the
# lab's SR-IOV NVMe and its virtual mdev parents (mbochs, mdpy, mtty).
COMBINED = hostgen._merge(
    all_vfs_enabled("l40s_vgpu"),
    {
        "add_devices": [dict(MEDIATED_LAB["devices"][1], address="04:00.0", parent=None)],
        "mdev_parents": MEDIATED_LAB["mdev_parents"],
        "files": dict(MEDIATED_LAB["files"]),
    },
)
NVME = "0000:04:00.0"
L40S = "0000:cb:00.0"
# The desktop with vfio-pci loaded, so that binding its GPU works when nothing is wrong.
DESKTOP = {
    "extends": "desktop_dgpu",
    "kernel": {
        "modules": [
            "kvm_intel",
            "kvm",
            "i915",
            "nvidia",
            "snd_hda_intel",
            "xhci_pci",
            "typec_ucsi",
            "e1000e",
            "nvme",
            "vfio_pci",
            "vfio_pci_core",
            "vfio",
        ],
    },
}
DGPU = "0000:01:00.0"
DGPU_DIR = "sys/bus/pci/devices/" + DGPU


def digest(root):
    """Every file, folder and link below ``root`` with its mode and content or target (the
    simulator's own bookkeeping left out): equal digests mean a byte-for-byte equal tree."""
    entries = {}
    for directory, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            if name == SIM_STATE:
                continue
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                entries[relative] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                entries[relative] = ("dir", stat.S_IMODE(info.st_mode))
            else:
                with open(path, "rb") as handle:
                    content = hashlib.sha256(handle.read()).hexdigest()
                entries[relative] = ("file", stat.S_IMODE(info.st_mode), content)
    return entries


def tree_digest(root):
    """:func:`digest` without writers' temp files: the tree as a user sees it."""
    left = set(temp_files(root))
    left.add(LOCK)
    # Files and links only: a folder a run created for its lock, or a killed run left empty, is no
    # change a user sees. dev/ is the kernel's devtmpfs: the simulator leaves a group's node behind.
    return {
        path: entry
        for path, entry in digest(root).items()
        if entry[0] != "dir" and path not in left and not path.startswith("dev/")
    }


def changed_paths(before, after):
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def temp_files(root):
    """Dot-temp files a writer left behind (``.<name>.<random>`` next to a file it replaces)."""
    found = []
    for directory, _dirs, files in os.walk(root):
        if "/sys/" in directory + "/" or "/proc/" in directory + "/":
            continue
        for name in files:
            if name.startswith(".") and name != SIM_STATE and name.count(".") >= 2:
                found.append(os.path.relpath(os.path.join(directory, name), root))
    return sorted(found)


def simulated(name, root):
    """The simulated kernel a module's writes go to (a context manager)."""
    if name == "vfio_pci":
        return PciKernel(KernelSim(root)).sim.active()
    sim, _sriov, _nvidia = attach(root)
    return sim.active()


def defaults(name, args):
    args = dict(args)
    if name in ("sriov", "nvidia_vgpu"):
        args.setdefault("delay", 0)
    return args


def run(run_module, name, root, args, check_mode=False, diff=False):
    """Run module ``name`` on ``root`` with its kernel simulated."""
    with simulated(name, root):
        return run_module(name, defaults(name, dict(args, root=args.get("root", root))), check_mode, diff)


def no_traceback(result):
    text = str(result.get("msg", "")) + str(result.get("exception", ""))
    return "Traceback" not in text and "exception" not in result
