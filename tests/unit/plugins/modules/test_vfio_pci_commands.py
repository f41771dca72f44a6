# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The commands a run reports are the ones it ran, and those its check mode predicted."""

from __future__ import annotations

import os
import shutil

from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim
from ansible_collections.gpuvirt.host.tests.sim.pci_kernel import PciKernel

MODULES = ["kvm_intel", "i915", "nvidia", "snd_hda_intel", "xhci_pci", "e1000e", "nvme", "vfio_pci"]
GPU = "0000:01:00.0"


def test_the_run_reports_the_bootloader_command_it_ran(make_host, vfio_pci, fake_commands, as_host):
    # persistence: cmdline on a GRUB host: the run's commands are those its check mode predicted.
    root = make_host("desktop_dgpu", kernel={"modules": MODULES})
    boot = os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures", "boot", "debian-grub")
    for relative in ("etc/default/grub", "usr/sbin/update-grub"):
        os.makedirs(os.path.dirname(os.path.join(root, relative)), exist_ok=True)
        shutil.copy2(os.path.join(boot, relative), os.path.join(root, relative))
    fake_commands.install("update-grub")
    kernel = PciKernel(KernelSim(root))
    args = {"devices": [GPU], "persistence": "cmdline", "runtime": False}
    predicted = vfio_pci(root, kernel=kernel, check_mode=True, **args)
    real = vfio_pci(root, kernel=kernel, **args)
    assert [os.path.basename(call[0]) for call in fake_commands.calls()] == ["update-grub"]
    assert [os.path.basename(c[0]) for c in real["commands"]] == ["update-grub"]
    assert real["commands"] == predicted["commands"]
