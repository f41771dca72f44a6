# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Handing devices back (state: absent) leaves none of the collection's boot configuration: the
initramfs configuration names the modprobe.d file (mkinitcpio's FILES+=, a build error once the file is
gone), so it goes with that file, whether the image is rebuilt now or not."""

from __future__ import annotations

import os

from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim
from ansible_collections.gpuvirt.host.tests.sim.pci_kernel import PciKernel

MODULES = ["kvm_intel", "i915", "nvidia", "snd_hda_intel", "xhci_pci", "e1000e", "nvme", "vfio_pci"]
GPU = "0000:01:00.0"
MODPROBE = "etc/modprobe.d/gpuvirt-vfio.conf"
MKINITCPIO_CONF = "etc/mkinitcpio.conf.d/gpuvirt-vfio.conf"


def put(root, relative, text="", mode=0o644):
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, mode)


def bound_on_mkinitcpio(make_host, vfio_pci):
    root = make_host("desktop_dgpu", kernel={"modules": MODULES})
    put(root, "usr/bin/mkinitcpio", "#!/bin/sh\nexit 1\n", 0o755)  # a tree: the module only names the command
    put(root, "boot/initramfs-linux.img")
    kernel = PciKernel(KernelSim(root))
    bound = vfio_pci(root, kernel=kernel, devices=[GPU])
    assert bound["rc"] == 0, bound
    with open(os.path.join(root, MKINITCPIO_CONF), encoding="utf-8") as handle:
        assert "/" + MODPROBE in handle.read()
    return root, kernel


def exists(root, relative):
    return os.path.exists(os.path.join(root, relative))


def test_absent_without_a_rebuild_removes_the_initramfs_configuration_too(make_host, vfio_pci):
    root, kernel = bound_on_mkinitcpio(make_host, vfio_pci)
    preview = vfio_pci(root, kernel=kernel, check_mode=True, devices=[GPU], state="absent", initramfs=False)
    assert "/" + MKINITCPIO_CONF in preview["files_changed"] and exists(root, MKINITCPIO_CONF)
    done = vfio_pci(root, kernel=kernel, devices=[GPU], state="absent", initramfs=False)
    assert done["rc"] == 0 and done["files_changed"] == preview["files_changed"], done
    assert not exists(root, MODPROBE) and not exists(root, MKINITCPIO_CONF)
    again = vfio_pci(root, kernel=kernel, devices=[GPU], state="absent", initramfs=False)
    assert again["rc"] == 0 and again["changed"] is False, again


def test_a_later_absent_run_removes_what_an_earlier_one_left(make_host, vfio_pci):
    root, kernel = bound_on_mkinitcpio(make_host, vfio_pci)
    os.unlink(os.path.join(root, MODPROBE))  # as an earlier version's absent run with initramfs: false left it
    done = vfio_pci(root, kernel=kernel, devices=[GPU], state="absent")
    assert done["rc"] == 0 and "/" + MKINITCPIO_CONF in done["files_changed"], done
    assert not exists(root, MKINITCPIO_CONF)
    # A tree: the rebuild the removal needs is left to be run inside it.
    assert done["initramfs"]["regenerate_required"] is True
