# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A run killed while the boot loader's or the initramfs's tool runs (an OOM kill, a lost session, a
power cut) is made whole by the next run (:mod:`pending`).

The tools build their output aside and move it into place at their end, so the kill leaves the inputs
written and the output old. Here the fake tool kills the module's process (its parent) and dies with
it, as a killed session's process group or a power cut takes both."""

from __future__ import annotations

import os
import re

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import pending
from ansible_collections.gpuvirt.host.tests.reliability import faults
from ansible_collections.gpuvirt.host.tests.unit.plugins.modules.test_vfio_pci import (
    GPU,
    IMAGE,
    INITRAMFS_CONFIG,
    MODPROBE,
    MODULES,
    UPDATE_INITRAMFS_BODY,
    calls,
    install_initramfs_tools,
    read,
)
from ansible_collections.gpuvirt.host.tests.unit.plugins.modules.test_virtualization_mode import with_grub

IOMMU = ["intel_iommu=on", "iommu=pt"]
KILL = """
import signal
os.kill(os.getppid(), signal.SIGKILL)
os._exit(137)
"""
# update-grub as grub-mkconfig works: grub.cfg.new written, then moved over grub.cfg at the end.
UPDATE_GRUB = """
root = {root!r}
import re
text = open(os.path.join(root, "etc/default/grub")).read()
words = re.search(r'^GRUB_CMDLINE_LINUX_DEFAULT="([^"]*)"', text, re.M).group(1)
new = os.path.join(root, "boot/grub/grub.cfg.new")
open(new, "w").write("linux /vmlinuz-6.8.0 root=/dev/sda1 ro %s\\n" % words)
{kill}
os.rename(new, os.path.join(root, "boot/grub/grub.cfg"))
"""


def killed(name, root, args):
    """Run module ``name`` in a child process that the fake tool kills; returns its exit code."""
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            faults.call_module(name, root, args)
        finally:
            os._exit(0)
    _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def marker(root, kind):
    return os.path.exists(os.path.join(root, pending.PENDING_DIR, kind))


def grub_cfg(root):
    with open(os.path.join(root, "boot/grub/grub.cfg")) as handle:
        return re.search(r" ro (.*)$", handle.read(), re.M).group(1).split()


def test_update_grub_killed_half_way_runs_again_in_the_next_run(run_module, boot_tree, fake_commands, as_host):
    root = boot_tree("debian-grub")
    os.makedirs(os.path.join(root, "boot/grub"), exist_ok=True)
    with open(os.path.join(root, "boot/grub/grub.cfg"), "w") as handle:
        handle.write("linux /vmlinuz-6.8.0 root=/dev/sda1 ro quiet\n")
    fake_commands.install("update-grub", body=UPDATE_GRUB.format(root=root, kill=KILL))
    assert killed("kernel_cmdline", root, {"present": IOMMU}) == -9
    assert "intel_iommu=on" in read(root, "etc/default/grub") and "intel_iommu=on" not in grub_cfg(root)
    assert marker(root, pending.BOOTLOADER)

    fake_commands.install("update-grub", body=UPDATE_GRUB.format(root=root, kill=""))
    predicted = run_module("kernel_cmdline", {"root": root, "present": IOMMU}, check_mode=True)
    again = run_module("kernel_cmdline", {"root": root, "present": IOMMU})
    assert again["rc"] == 0 and again["changed"] is True, again
    assert grub_cfg(root) == ["quiet", "intel_iommu=on", "iommu=pt"]
    assert [os.path.basename(c[0]) for c in again["commands"]] == ["update-grub"]
    assert again["added"] == [] and again["regenerate_required"] is False
    assert any("not seen to apply it" in (w["event"]["msg"] if isinstance(w, dict) else w)
               for w in again["warnings"])
    for key in ("changed", "commands", "configured", "regenerate_required"):
        assert predicted[key] == again[key], key
    assert not marker(root, pending.BOOTLOADER)
    # Whole again: nothing left to do, and update-grub is not run.
    third = run_module("kernel_cmdline", {"root": root, "present": IOMMU})
    assert third["changed"] is False and third["commands"] == []
    assert len(calls(fake_commands, "update-grub")) == 2


@pytest.mark.parametrize("tree, tool", [("proxmox-zfs-uefi", "proxmox-boot-tool"),
                                        ("systemd-boot", "kernel-install")])
def test_a_killed_refresh_of_the_boot_entries_runs_again(run_module, boot_tree, fake_commands, as_host, tree, tool):
    root = boot_tree(tree)
    fake_commands.install(tool, body=KILL)
    assert killed("kernel_cmdline", root, {"present": ["amd_iommu=on"]}) == -9
    assert "amd_iommu=on" in read(root, "etc/kernel/cmdline")
    fake_commands.install(tool)
    again = run_module("kernel_cmdline", {"root": root, "present": ["amd_iommu=on"]})
    assert again["rc"] == 0 and again["changed"] is True, again
    assert len(calls(fake_commands, tool)) >= 2 and not marker(root, pending.BOOTLOADER)
    assert run_module("kernel_cmdline", {"root": root, "present": ["amd_iommu=on"]})["changed"] is False


def test_an_image_tree_reports_the_pending_regeneration_it_cannot_run(run_module, boot_tree, fake_commands):
    # A marker below a tree that is not this host's root is not this host's: tools never run there.
    root = boot_tree("debian-grub")
    os.makedirs(os.path.join(root, pending.PENDING_DIR))
    with open(os.path.join(root, pending.PENDING_DIR, pending.BOOTLOADER), "w") as handle:
        handle.write('{"bootloader": "grub"}\n')
    result = run_module("kernel_cmdline", {"root": root, "present": []})
    assert result["changed"] is False and result["commands"] == [] and fake_commands.calls() == []


def test_a_rebuild_killed_half_way_is_done_by_the_next_run(make_host, vfio_pci, as_host, fake_commands):
    root = make_host("desktop_dgpu", kernel={"modules": MODULES})
    install_initramfs_tools(root, fake_commands)
    fake_commands.install("update-initramfs", body=KILL)
    assert killed("vfio_pci", root, {"devices": [GPU]}) == -9
    assert read(root, MODPROBE) is not None and read(root, INITRAMFS_CONFIG) is not None
    assert MODPROBE not in read(root, IMAGE).split() and marker(root, pending.INITRAMFS)

    fake_commands.install("update-initramfs", body=UPDATE_INITRAMFS_BODY.format(root=root, config=INITRAMFS_CONFIG))
    predicted = vfio_pci(root, check_mode=True, devices=[GPU])
    again = vfio_pci(root, devices=[GPU])
    assert again["rc"] == 0 and again["changed"] is True, again
    assert again["initramfs"]["regenerated"] is True and again["initramfs"]["verified"] is True
    assert MODPROBE in read(root, IMAGE).split() and not marker(root, pending.INITRAMFS)
    assert predicted["changed"] is True
    assert [[os.path.basename(c[0])] + c[1:] for c in predicted["commands"]] == [
        [os.path.basename(c[0])] + c[1:] for c in again["commands"]]
    third = vfio_pci(root, devices=[GPU])
    assert third["changed"] is False and len(calls(fake_commands, "update-initramfs")) == 2


def test_a_hand_back_whose_rebuild_was_killed_is_rebuilt_by_the_next_run(
    make_host, vfio_pci, as_host, fake_commands
):
    # The old image would keep vfio-pci's ids= and take the GPU from the host at every boot.
    root = make_host("desktop_dgpu", kernel={"modules": MODULES})
    install_initramfs_tools(root, fake_commands)
    assert vfio_pci(root, devices=[GPU])["rc"] == 0 and MODPROBE in read(root, IMAGE).split()
    fake_commands.install("update-initramfs", body=KILL)
    assert killed("vfio_pci", root, {"devices": [GPU], "state": "absent"}) == -9
    assert read(root, MODPROBE) is None and MODPROBE in read(root, IMAGE).split()

    fake_commands.install("update-initramfs", body=UPDATE_INITRAMFS_BODY.format(root=root, config=INITRAMFS_CONFIG))
    again = vfio_pci(root, devices=[GPU], state="absent")
    assert again["rc"] == 0 and again["initramfs"]["regenerated"] is True, again
    assert MODPROBE not in read(root, IMAGE).split() and not marker(root, pending.INITRAMFS)
    assert vfio_pci(root, devices=[GPU], state="absent")["changed"] is False


def test_a_failed_first_build_leaves_nothing_pending(make_host, vfio_pci, as_host, fake_commands):
    root = make_host("desktop_dgpu", kernel={"modules": MODULES})
    install_initramfs_tools(root, fake_commands)
    fake_commands.install("update-initramfs", stderr="E: no space left on /boot\n", rc=1)
    result = vfio_pci(root, devices=[GPU])
    assert result["rc"] == 1 and read(root, MODPROBE) is None
    assert not marker(root, pending.INITRAMFS)


def test_virtualization_mode_runs_a_killed_update_grub_again(make_host, run_module, fake_commands, as_host):
    # GVT-g's i915.enable_gvt=1 reaches the boot entries only through update-grub.
    root = with_grub(make_host("gvtg_laptop"))
    os.makedirs(os.path.join(root, "boot/grub"), exist_ok=True)
    with open(os.path.join(root, "boot/grub/grub.cfg"), "w") as handle:
        handle.write("linux /vmlinuz-6.8.0 root=/dev/sda1 ro quiet\n")
    fake_commands.install("update-grub", body=UPDATE_GRUB.format(root=root, kill=KILL))
    args = {"root": root, "selector": "0000:00:02.0", "mode": "gvt-g"}
    assert killed("virtualization_mode", root, args) == -9
    assert "i915.enable_gvt=1" not in grub_cfg(root)
    fake_commands.install("update-grub", body=UPDATE_GRUB.format(root=root, kill=""))
    predicted = run_module("virtualization_mode", args, check_mode=True)
    again = run_module("virtualization_mode", args)
    assert again["rc"] == 0 and again["changed"] is True and predicted["changed"] is True, again
    assert "i915.enable_gvt=1" in grub_cfg(root) and not marker(root, pending.BOOTLOADER)
    assert run_module("virtualization_mode", args)["changed"] is False
