# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The reboot of a simulated fleet host: ``python reboot_sim.py HOST_DIR``.

What the next boot of the tree below ``HOST_DIR/root`` shows: the kernel command line of its GRUB
configuration (``GRUB_CMDLINE_LINUX_DEFAULT``), the IOMMU on when the firmware offers one and the
command line turns it on (Intel: ``intel_iommu=on``; AMD: unless ``amd_iommu=off``; neither with
``iommu=off``), no processes. The tree is rebuilt from the host's description (``description.json``)
and keeps its ``etc``. Each reboot appends a line to ``HOST_DIR/reboots``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures"))
import hostgen  # noqa: E402


def next_cmdline(root):
    with open(os.path.join(root, "etc/default/grub")) as handle:
        match = re.search(r'^GRUB_CMDLINE_LINUX_DEFAULT=(.*)$', handle.read(), re.M)
    arguments = shlex.split(match.group(1))[0].split() if match else []
    with open(os.path.join(root, "proc/cmdline")) as handle:
        kept = [arg for arg in handle.read().split() if arg.startswith(("BOOT_IMAGE=", "root=")) or arg == "ro"]
    return kept + arguments


def main(host_dir):
    root = os.path.join(host_dir, "root")
    with open(os.path.join(host_dir, "description.json")) as handle:
        described = json.load(handle)
    stays_off = described.pop("sim_iommu_stays_off", False)
    description = hostgen.expand(described)
    description["sim_iommu_stays_off"] = stays_off
    cmdline = next_cmdline(root)
    iommu = dict(description.get("iommu") or {})
    vendor = iommu.get("vendor", "intel")
    turned_on = "intel_iommu=on" in cmdline if vendor == "intel" else "amd_iommu=off" not in cmdline
    # A host whose firmware setup has VT-d / AMD-Vi switched off boots without an IOMMU whatever the
    # command line says (the test marks it sim_iommu_stays_off).
    stays_off = description.pop("sim_iommu_stays_off", False)
    iommu["enabled"] = bool(iommu.get("firmware", True)) and turned_on and "iommu=off" not in cmdline and not stays_off
    description["iommu"] = iommu
    description["kernel"] = dict(description.get("kernel") or {}, cmdline=" ".join(cmdline))
    description.pop("processes", None)
    saved = tempfile.mkdtemp()
    try:
        shutil.copytree(os.path.join(root, "etc"), os.path.join(saved, "etc"), symlinks=True)
        usr = os.path.join(root, "usr/sbin")
        shutil.copytree(usr, os.path.join(saved, "sbin"), symlinks=True)
        hostgen.build_host(description, root)
        shutil.rmtree(os.path.join(root, "etc"))
        shutil.copytree(os.path.join(saved, "etc"), os.path.join(root, "etc"), symlinks=True)
        shutil.copytree(os.path.join(saved, "sbin"), usr, symlinks=True, dirs_exist_ok=True)
    finally:
        shutil.rmtree(saved)
    with open(os.path.join(host_dir, "reboots"), "a") as handle:
        handle.write(" ".join(cmdline) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
