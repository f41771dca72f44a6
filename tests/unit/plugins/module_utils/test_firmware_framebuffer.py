# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The firmware's boot framebuffer in a GPU's memory (``/proc/iomem``): a GPU left to vfio-pci at boot
keeps sysfb's ``BOOTFB`` region and the driver that draws the console on it (simpledrm, efifb) in its
BAR, and vfio-pci then cannot reserve that BAR for a VM.

The ``strix_halo_vfio`` fixture is the Strix Halo workstation with its GPU (``c5:00.0``, class 0380)
and HDMI audio on vfio-pci from boot, simpledrm's card0 and fb0 on a platform device and ``BOOTFB``
with simpledrm's claim inside the GPU's BAR, as users of such machines report it.
"""

from __future__ import annotations

import os
import re

from ansible_collections.gpuvirt.host.plugins.filter.topology_summary import topology_summary
from ansible_collections.gpuvirt.host.plugins.module_utils import display
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect
from ansible_collections.gpuvirt.host.plugins.plugin_utils import report

IGPU = "0000:c5:00.0"
ZEROS = re.compile(r"[0-9a-f]+-[0-9a-f]+ :")


def iomem(tmp_path, text):
    os.makedirs(tmp_path / "proc", exist_ok=True)
    (tmp_path / "proc" / "iomem").write_text(text)
    return str(tmp_path)


def gpu_entry(topology, address):
    return next(gpu for gpu in topology["gpus"] if gpu["address"] == address)


# ------------------------------------------------------------------------------------- the reader

# The lines of a host whose GPU kept the firmware framebuffer (64-bit BAR; r_show() prints at least
# eight hex digits), among the GPU's neighbours.
GPU_WITH_BOOTFB = """\
00000000-00000fff : Reserved
00001000-0009ffff : System RAM
2000000000-2fffffffff : PCI Bus 0000:00
  2000000000-20000fffff : PCI Bus 0000:c1
    2000000000-20000fffff : 0000:c1:00.0
      2000000000-20000fffff : r8169
  2800000000-2fffffffff : PCI Bus 0000:c3
    2800000000-2fffffffff : 0000:c3:00.0
      2800000000-2801fa3fff : BOOTFB
        2800000000-2801fa3fff : simpledrm
"""


def test_the_framebuffer_regions_name_the_gpu_whose_bar_holds_them(tmp_path):
    root = iomem(tmp_path, GPU_WITH_BOOTFB)
    assert display.firmware_framebuffer_devices(root) == {"0000:c3:00.0": ["BOOTFB", "simpledrm"]}


def test_without_privilege_the_nesting_names_the_gpu(tmp_path):
    # Read without CAP_SYS_ADMIN, every address is zero; the nesting is still there.
    zeros = ZEROS.sub("00000000-00000000 :", GPU_WITH_BOOTFB)
    assert "2800000000" not in zeros and "    00000000-00000000 : 0000:c3:00.0\n" in zeros
    assert display.firmware_framebuffer_devices(iomem(tmp_path, zeros)) == {"0000:c3:00.0": ["BOOTFB", "simpledrm"]}


def test_below_five_levels_the_addresses_decide(tmp_path):
    # r_show() indents no deeper than five levels: a GPU behind a switch and its BOOTFB print alike.
    deep = """\
80000000-8fffffff : PCI Bus 0000:00
  80000000-8fffffff : PCI Bus 0000:01
    80000000-8fffffff : PCI Bus 0000:02
      80000000-8fffffff : PCI Bus 0000:03
        80000000-8fffffff : PCI Bus 0000:04
          80000000-87ffffff : 0000:04:00.0
          80000000-807e8fff : efifb
          88000000-8fffffff : 0000:04:00.1
"""
    assert display.firmware_framebuffer_devices(iomem(tmp_path, deep)) == {"0000:04:00.0": ["efifb"]}
    # With the addresses zeroed the nesting cannot tell which device holds it: none is named.
    zeroed = ZEROS.sub("00000000-00000000 :", deep)
    assert display.firmware_framebuffer_devices(iomem(tmp_path, zeroed)) == {}


def test_framebuffers_outside_a_pci_bar_and_other_regions_name_no_device(tmp_path):
    text = """\
00001000-0009ffff : System RAM
80000000-807e8fff : BOOTFB
90000000-9fffffff : PCI Bus 0000:00
  90000000-90ffffff : 0000:00:02.0
    90000000-907e8fff : BOOTFB-like
    90000000-907e8fff : i915
  a0000000-a0ffffff : 0000:00:1f.3
    a0000000-a0ffffff : snd_hda_intel efifb
"""
    assert display.firmware_framebuffer_devices(iomem(tmp_path, text)) == {}
    assert display.firmware_framebuffer_devices(str(tmp_path / "nowhere")) == {}


def test_every_fixture_host_gets_a_kernel_shaped_iomem(make_host):
    root = make_host("vmd_host")
    with open(os.path.join(root, "proc/iomem")) as handle:
        lines = handle.read().splitlines()
    # Devices behind Intel VMD sit in the VMD endpoint's BAR, in their own domain's bus windows.
    assert "  81000000-82ffffff : 0000:00:0e.0" in lines
    assert "    81000000-82ffffff : PCI Bus 10000:e0" in lines
    assert display.firmware_framebuffer_devices(root) == {}


# ----------------------------------------------------------------------- verdict, finding, report


def test_the_gpu_left_to_vfio_pci_with_the_firmware_framebuffer_is_not_viable(make_host):
    topology = detect(make_host("strix_halo_vfio"))
    entry = gpu_entry(topology, IGPU)
    assert entry["driver"] == "vfio-pci"
    assert entry["passthrough"]["viable"] is False
    assert entry["passthrough"]["codes"] == ["firmware_framebuffer"]
    reason = entry["passthrough"]["reasons"][0]
    assert "(BOOTFB (simpledrm) in /proc/iomem)" in reason and "initcall_blacklist=sysfb_init" in reason
    # Bound to vfio-pci already, the GPU is meant for a VM: the host is warned that the VM will fail.
    warnings = [f for f in topology["findings"] if f["code"] == "firmware_framebuffer"]
    assert [f["device"] for f in warnings] == [IGPU] and warnings[0]["severity"] == "warning"
    assert not [f for f in topology["findings"] if f["code"] == "host_graphics_driver"]
    # simpledrm's card and framebuffer belong to a platform device: they name no PCI device.
    displays = display.read_displays(make_host("strix_halo_vfio"))
    assert displays.boot == frozenset() and displays.framebuffers == {}


def test_the_native_driver_took_the_framebuffer_away(make_host):
    # amdgpu removes the firmware framebuffer as it takes over: the fb0 rule keeps the GPU instead.
    topology = detect(make_host("strix_halo"))
    assert gpu_entry(topology, IGPU)["passthrough"]["codes"] == ["console_framebuffer"]
    assert not [f for f in topology["findings"] if f["code"] == "firmware_framebuffer"]


def test_the_boot_vga_holding_it_says_both(make_host):
    root = make_host("desktop_dgpu", patch_devices={"00:02.0": {"firmware_framebuffer": ["BOOTFB", "efifb"]}})
    topology = detect(root)
    assert gpu_entry(topology, "0000:00:02.0")["passthrough"]["codes"] == ["boot_vga", "firmware_framebuffer"]
    assert "(BOOTFB (efifb) in /proc/iomem)" in gpu_entry(topology, "0000:00:02.0")["passthrough"]["reasons"][1]
    # Not on a VFIO driver: no warning about a VM that would fail.
    assert not [f for f in topology["findings"] if f["code"] == "firmware_framebuffer"]
    assert gpu_entry(topology, "0000:01:00.0")["passthrough"]["viable"] is True


def test_summary_and_report_show_the_gpu_as_the_boot_gpu(make_host):
    topology = detect(make_host("strix_halo_vfio"))
    line = next(line for line in topology_summary(topology) if "c5:00.0" in line)
    assert "FIRMWARE FRAMEBUFFER" in line
    boxes = report.group_boxes(topology)
    verdicts = {device["address"]: device["verdict"] for box in boxes for device in box["devices"]}
    assert verdicts[IGPU] == "boot-vga"
