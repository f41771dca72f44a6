# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``gpuvirt.host.vfio_pci`` and the GPUs the host shows its console on, the PCI core simulated: an AMD
APU whose GPU carries the console (the ``strix_halo`` fixture) is refused unless forced, and forced
it leaves the processor's functions of its slot; a second GPU's framebuffer carries no console."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import display, vfio, vfio_bind
from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim
from ansible_collections.gpuvirt.host.tests.sim.pci_kernel import PciKernel

IGPU = "0000:c5:00.0"
IGPU_AUDIO = "0000:c5:00.1"
PROCESSOR_FUNCTIONS = ["0000:c5:00.2", "0000:c5:00.4", "0000:c5:00.6"]
BOOT_DISPLAY = {"kernel": {"release": "6.18.2-061802-generic"}, "patch_devices": {"c5:00.0": {"boot_display": True}}}


@pytest.mark.parametrize(
    "changes, expected",
    [({}, ["console_framebuffer"]), (BOOT_DISPLAY, ["boot_display", "console_framebuffer"])],
)
def test_vfio_pci_refuses_the_console_apu_gpu(make_host, vfio_pci, changes, expected):
    root = make_host("strix_halo", kernel=dict(changes.get("kernel", {}), modules=["amdgpu", "vfio_pci"]),
                     **{k: v for k, v in changes.items() if k != "kernel"})
    kernel = PciKernel(KernelSim(root))
    result = vfio_pci(root, kernel=kernel, devices=["Radeon 8060S Graphics"], persistent=False)
    assert result["rc"] == 1 and result["changed"] is False, result
    assert sorted(r["code"] for r in result["refusals"]) == expected
    assert kernel.sim.writes == []


def test_forced_the_apu_gpu_goes_alone_and_its_card_goes_away(make_host, vfio_pci):
    # A GPU with a reset of its own (FLR), not only its bus's (pci.group_companions).
    patch = {"c5:00.0": dict(BOOT_DISPLAY["patch_devices"]["c5:00.0"], reset_methods=["flr", "bus"])}
    root = make_host("strix_halo", kernel=dict(BOOT_DISPLAY["kernel"], modules=["amdgpu", "vfio_pci"]),
                     patch_devices=patch)
    kernel = PciKernel(KernelSim(root))
    result = vfio_pci(root, kernel=kernel, devices=[IGPU], force=True, persistent=False)
    assert result["rc"] == 0 and result["changed"] is True, result
    # Every function of the slot has an IOMMU group of its own: the GPU goes alone.
    assert sorted(result["devices"]) == [IGPU]
    assert vfio_bind.read_driver(root, IGPU) == "vfio-pci"
    assert [vfio_bind.read_driver(root, a) for a in [IGPU_AUDIO] + PROCESSOR_FUNCTIONS] == [
        "snd_hda_intel", "ccp", "xhci_hcd", "snd_hda_intel"]
    # amdgpu released the GPU: its card and framebuffer went with it.
    assert display.read_displays(root) == display.Displays()


def test_with_the_iommu_off_the_boot_configuration_names_the_gpu_and_its_audio_only(make_host, vfio_pci):
    # The first run, before the reboot that turns the IOMMU on: the groups are not known, so the slot's
    # functions that go with the GPU are all that the next boot binds; the processor's USB controller,
    # security processor and HD audio must not be among them.
    root = make_host("strix_halo", kernel={"modules": ["amdgpu", "vfio_pci"]}, iommu={"enabled": False})
    kernel = PciKernel(KernelSim(root))
    result = vfio_pci(root, kernel=kernel, devices=[IGPU], force=True)
    assert result["rc"] == 0 and result["changed"] is True, result
    assert sorted(result["devices"]) == [IGPU, IGPU_AUDIO]
    with open(os.path.join(root, "etc/modprobe.d/gpuvirt-vfio.conf")) as handle:
        assert vfio.modprobe_ids(handle.read()) == ["1002:1586", "1002:1640"]
    assert kernel.sim.writes == []


def test_a_second_gpu_with_a_framebuffer_is_bound_and_its_framebuffer_goes(make_host, vfio_pci):
    # desktop_dgpu: i915 drives the boot VGA's fb0 (the console), nvidia-drm the RTX 2080 Ti's fb1.
    root = make_host("desktop_dgpu", kernel={"modules": ["i915", "nvidia", "snd_hda_intel", "xhci_pci", "vfio_pci"]},
                     patch_devices={"00:02.0": {"framebuffer": 0}, "01:00.0": {"framebuffer": 1}})
    kernel = PciKernel(KernelSim(root))
    result = vfio_pci(root, kernel=kernel, devices=["0000:01:00.0"], persistent=False)
    assert result["rc"] == 0 and result["changed"] is True and result["refusals"] == [], result
    assert vfio_bind.read_driver(root, "0000:01:00.0") == "vfio-pci"
    assert display.framebuffer_devices(root) == {"0000:00:02.0": ["fb0"]}


# strix_halo_vfio: the GPU and its audio on vfio-pci from boot, the firmware framebuffer (BOOTFB, with
# simpledrm drawing the console on it) left in the GPU's BAR.
def test_vfio_pci_refuses_the_gpu_the_firmware_framebuffer_holds(make_host, vfio_pci):
    root = make_host("strix_halo_vfio")
    kernel = PciKernel(KernelSim(root))
    result = vfio_pci(root, kernel=kernel, devices=[IGPU], persistent=False)
    assert result["rc"] == 1 and result["changed"] is False, result
    assert [(r["code"], r["device"]) for r in result["refusals"]] == [("firmware_framebuffer", IGPU)]
    message = result["refusals"][0]["message"]
    assert "(BOOTFB (simpledrm) in /proc/iomem)" in message and "initcall_blacklist=sysfb_init" in message
    assert kernel.sim.writes == []
    # Forced, the binding stands and the warning says what the VM will meet.
    result = vfio_pci(root, kernel=kernel, devices=[IGPU], persistent=False, force=True)
    assert result["rc"] == 0 and result["changed"] is False, result
    assert "going ahead although %s" % IGPU in json.dumps(result["warnings"])
    assert "initcall_blacklist=sysfb_init" in json.dumps(result["warnings"])
    assert vfio_bind.read_driver(root, IGPU) == "vfio-pci"
