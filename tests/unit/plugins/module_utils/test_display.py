# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's console GPU as the kernel marks it, and an APU's GPU beside the processor's functions.

The ``strix_halo`` fixture is an AMD Ryzen AI MAX+ 395 as a GMKtec EVO-X2 shows it: the iGPU
(``c5:00.0``, class 0380, no ``boot_vga``) is the only GPU and drives the console; its slot also holds
its HDMI audio (``.1``, 1002) and the processor's CCP/PSP, xHCI and HD audio (``.2``, ``.4``, ``.6``,
1022), each function in an IOMMU group of its own.
"""

from __future__ import annotations

import os

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import display, rules, vfio
from ansible_collections.gpuvirt.host.plugins.module_utils.pci import companions, read_pci_devices
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import MISSING
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect

IGPU = "0000:c5:00.0"
IGPU_AUDIO = "0000:c5:00.1"
PROCESSOR_FUNCTIONS = ["0000:c5:00.2", "0000:c5:00.4", "0000:c5:00.6"]
# Newer kernels mark the card of the display that showed the boot sequence.
BOOT_DISPLAY = {"kernel": {"release": "6.18.2-061802-generic"}, "patch_devices": {"c5:00.0": {"boot_display": True}}}


def gpu_entry(topology, address):
    return next(gpu for gpu in topology["gpus"] if gpu["address"] == address)


def codes(topology, address):
    return gpu_entry(topology, address)["passthrough"]["codes"]


# ------------------------------------------------------------------------------- the readers


def test_the_boot_display_and_the_framebuffer_name_the_igpu(make_host):
    root = make_host("strix_halo", **BOOT_DISPLAY)
    assert display.boot_display_devices(root) == frozenset({IGPU})
    assert display.framebuffer_devices(root) == {IGPU: ["fb0"]}
    assert display.read_displays(root) == display.Displays(boot=frozenset({IGPU}), framebuffers={IGPU: ["fb0"]})


def test_older_kernels_and_snapshots_without_the_classes_mark_nothing(make_host):
    assert display.boot_display_devices(make_host("strix_halo")) == frozenset()
    bare = make_host("desktop_dgpu")
    assert not os.path.exists(os.path.join(bare, "sys/class/drm"))
    assert display.read_displays(bare) == display.Displays()


def test_only_a_card_of_a_pci_device_counts_and_its_presence_decides(make_host):
    root = make_host("strix_halo")
    drm = os.path.join(root, "sys/class/drm")
    card = os.path.realpath(os.path.join(drm, "card0"))
    # A connector and a render node are not cards; simpledrm's card belongs to a platform device.
    for name in ("card0-HDMI-A-1", "renderD128"):
        node = os.path.join(card if name.startswith("card0-") else os.path.dirname(card), name)
        os.makedirs(node, exist_ok=True)
        with open(os.path.join(node, "boot_display"), "w") as handle:
            handle.write("1\n")
        if not os.path.lexists(os.path.join(drm, name)):
            os.symlink(os.path.relpath(node, drm), os.path.join(drm, name))
    platform = os.path.join(root, "sys/devices/platform/simple-framebuffer.0")
    os.makedirs(os.path.join(platform, "drm/card1"))
    card1 = os.path.join(platform, "drm/card1")
    os.symlink(os.path.relpath(platform, card1), os.path.join(card1, "device"))
    with open(os.path.join(platform, "drm/card1/boot_display"), "w") as handle:
        handle.write("1\n")
    os.symlink(os.path.relpath(os.path.join(platform, "drm/card1"), drm), os.path.join(drm, "card1"))
    assert display.boot_display_devices(root) == frozenset()
    # The kernel creates the file on the boot display's card only: whatever it reads, it marks the card.
    with open(os.path.join(card, "boot_display"), "w") as handle:
        handle.write("garbled\n")
    assert display.boot_display_devices(root) == frozenset({IGPU})


@pytest.mark.parametrize(
    "cmdline, expected",
    [
        ([], {"fb0"}),
        (["quiet", "fbcon=map:1"], {"fb1"}),
        (["fbcon=font:VGA8x16,map:01"], {"fb0", "fb1"}),
        (["fbcon=map:0", "fbcon=map:2"], {"fb2"}),
        (["fbcon=map:"], {"fb0"}),
        (["fbcon=map:a"], {"fb17"}),
        (["fbcon=map:/"], set()),
        (["fbcon=map:1", "--", "fbcon=map:0"], {"fb1"}),
        (['"fbcon=map:12"'], {"fb1", "fb2"}),
    ],
)
def test_the_console_framebuffers_follow_fbcon_map(cmdline, expected):
    assert display.console_framebuffers(cmdline) == frozenset(expected)


# ---------------------------------------------------------------------------- the verdicts


def test_an_apu_gpu_goes_with_its_own_audio_and_leaves_the_processor_functions(make_host):
    root = make_host("strix_halo")
    devices = read_pci_devices(root)
    assert companions(devices, IGPU) == [IGPU_AUDIO]
    assert companions(devices, IGPU_AUDIO) == [IGPU]
    for address in PROCESSOR_FUNCTIONS:
        assert IGPU not in companions(devices, address) and IGPU_AUDIO not in companions(devices, address)
    # Each function of the slot has an IOMMU group of its own here. A GPU whose only reset is its bus's
    # takes the functions on its bus that go with it (its audio), not the processor's.
    assert gpu_entry(detect(root), IGPU)["passthrough"]["devices"] == [IGPU, IGPU_AUDIO]
    # With a reset of its own it can go without its audio: only the GPU is to be bound (vfio_pci leaves
    # the audio controller to its driver too).
    own_reset = make_host("strix_halo", patch_devices={"c5:00.0": {"reset_methods": ["flr", "bus"]}})
    assert gpu_entry(detect(own_reset), IGPU)["passthrough"]["devices"] == [IGPU]


def test_the_processor_functions_sharing_the_apu_gpu_group_block_it(make_host):
    # Without ACS between the functions the kernel puts the slot in one group: the host's USB and
    # security processor would have to go with the GPU, which the verdict says instead of taking them.
    root = make_host("strix_halo", patch_devices={a: {"group": 28} for a in [IGPU, IGPU_AUDIO] + PROCESSOR_FUNCTIONS})
    verdict = gpu_entry(detect(root), IGPU)["passthrough"]
    assert verdict["devices"] == [IGPU, IGPU_AUDIO]
    assert "group_shared" in verdict["codes"]
    assert sum("IOMMU group 28 also holds" in reason for reason in verdict["reasons"]) == 3


def test_the_console_apu_gpu_is_not_viable(make_host):
    topology = detect(make_host("strix_halo"))
    entry = gpu_entry(topology, IGPU)
    assert entry["boot_vga"] is False
    assert entry["passthrough"]["viable"] is False
    assert entry["passthrough"]["codes"] == ["console_framebuffer"]
    assert entry["passthrough"]["reasons"] == [
        "0000:c5:00.0 drives the framebuffer fb0, which the text console draws on"
    ]
    # No advice to hand the GPU the console draws on to vfio-pci.
    assert not [f for f in topology["findings"] if f["code"] == "host_graphics_driver"]


def test_the_boot_display_of_another_class_is_kept_like_the_boot_vga(make_host):
    topology = detect(make_host("strix_halo", **BOOT_DISPLAY))
    assert codes(topology, IGPU) == ["boot_display", "console_framebuffer"]
    assert "showed the boot sequence" in gpu_entry(topology, IGPU)["passthrough"]["reasons"][0]
    # No advice to hand the host's boot display to vfio-pci.
    assert not [f for f in topology["findings"] if f["code"] == "host_graphics_driver"]


# desktop_dgpu: the iGPU (00:02.0) is the boot VGA; the RTX 2080 Ti (01:00.0) is free for VMs.
TWO_FRAMEBUFFERS = {"patch_devices": {"00:02.0": {"framebuffer": 0}, "01:00.0": {"framebuffer": 1}}}


def test_a_second_gpu_s_framebuffer_does_not_carry_the_console(make_host):
    topology = detect(make_host("desktop_dgpu", **TWO_FRAMEBUFFERS))
    assert codes(topology, "0000:00:02.0") == ["boot_vga", "console_framebuffer"]
    assert gpu_entry(topology, "0000:01:00.0")["passthrough"]["viable"] is True
    # Mapped there by fbcon=map:, the console is on fb1 and the dGPU carries it.
    mapped = detect(make_host("desktop_dgpu", kernel={"cmdline": "ro intel_iommu=on fbcon=map:1"}, **TWO_FRAMEBUFFERS))
    assert codes(mapped, "0000:00:02.0") == ["boot_vga"]
    assert codes(mapped, "0000:01:00.0") == ["console_framebuffer"]
    assert "drives the framebuffer fb1" in gpu_entry(mapped, "0000:01:00.0")["passthrough"]["reasons"][0]


def test_a_vga_function_without_boot_vga_is_doubtful(make_host):
    root = make_host("desktop_dgpu", files={"sys/bus/pci/devices/0000:00:02.0/boot_vga": None})
    topology = detect(root)
    entry = gpu_entry(topology, "0000:00:02.0")
    assert entry["boot_vga"] is None
    assert entry["passthrough"]["viable"] is False
    assert entry["passthrough"]["codes"] == ["doubtful_attribute"]
    assert "boot_vga is missing" in entry["passthrough"]["reasons"][0]
    assert [f["device"] for f in topology["findings"] if f["code"] == "doubtful_attribute"] == ["0000:00:02.0"]
    # A display controller (0380) has no boot_vga to miss.
    assert gpu_entry(detect(make_host("strix_halo")), IGPU)["boot_vga"] is False


def test_boot_vga_flag_wording():
    assert rules.boot_vga_flag("1") == (True, None)
    flag, doubt = rules.boot_vga_flag(None, MISSING)
    assert flag is None and doubt.startswith("boot_vga is missing, which the kernel shows on every VGA-class")
    flag, doubt = rules.boot_vga_flag(None, "unreadable: Permission denied")
    assert flag is None and "reads '<unreadable: Permission denied>'" in doubt


# ---------------------------------------------------------------------- vfio-pci's companions


def test_the_groups_unknown_the_apu_gpu_takes_only_its_audio(make_host):
    # IOMMU off (the first run, before the reboot): companions cannot be checked against the groups.
    root = make_host("strix_halo", iommu={"enabled": False})
    view = vfio.read_host(root)
    assert sorted(vfio.expand_members(view, {IGPU: []}, True)) == [IGPU, IGPU_AUDIO]


# fbcon's primary device (drivers/video/fbdev/core/fbcon.c, fbcon_select_primary()): with
# CONFIG_FRAMEBUFFER_CONSOLE_DETECT_PRIMARY and no fbcon=map:, the consoles move to the boot VGA
# device's framebuffer once it registers. Here the dGPU's driver took fb0 first (no firmware
# framebuffer held it) and the boot VGA iGPU registered fb1.
DGPU_FIRST = {"patch_devices": {"00:02.0": {"framebuffer": 1}, "01:00.0": {"framebuffer": 0, "driver": "nouveau"}}}
DETECT_PRIMARY = "CONFIG_FRAMEBUFFER_CONSOLE=y\nCONFIG_FRAMEBUFFER_CONSOLE_DETECT_PRIMARY=y\n"
NO_DETECT_PRIMARY = "CONFIG_FRAMEBUFFER_CONSOLE=y\n# CONFIG_FRAMEBUFFER_CONSOLE_DETECT_PRIMARY is not set\n"
CONFIG = "boot/config-6.8.0-45-generic"


def test_the_console_moves_to_the_primary_device_s_framebuffer(make_host):
    topology = detect(make_host("desktop_dgpu", files={CONFIG: DETECT_PRIMARY}, **DGPU_FIRST))
    assert codes(topology, "0000:00:02.0") == ["boot_vga", "console_framebuffer"]
    assert "fb1" in gpu_entry(topology, "0000:00:02.0")["passthrough"]["reasons"][1]
    assert gpu_entry(topology, "0000:01:00.0")["passthrough"]["viable"] is True


@pytest.mark.parametrize(
    "files, cmdline",
    [
        ({CONFIG: NO_DETECT_PRIMARY}, None),  # built without it: fbcon stays on fb0
        ({}, None),  # no configuration to read: fb0, as the kernel may leave it
        ({CONFIG: DETECT_PRIMARY}, "ro intel_iommu=on fbcon=map:0"),  # a map overrides the primary device
    ],
)
def test_fb0_keeps_the_console_otherwise(make_host, files, cmdline):
    kernel = {"cmdline": cmdline} if cmdline else {}
    topology = detect(make_host("desktop_dgpu", files=files, kernel=kernel, **DGPU_FIRST))
    assert codes(topology, "0000:01:00.0") == ["console_framebuffer"]
    assert "drives the framebuffer fb0" in gpu_entry(topology, "0000:01:00.0")["passthrough"]["reasons"][0]


def test_the_running_kernel_s_own_configuration_counts(make_host, tmp_path):
    import gzip

    root = make_host("desktop_dgpu", **DGPU_FIRST)
    with gzip.open(os.path.join(root, "proc/config.gz"), "wt") as handle:
        handle.write(DETECT_PRIMARY)
    assert display.read_displays(root).console == frozenset({"fb1"})
    # proc/config.gz is the running kernel's: another release's configuration is not in it.
    from ansible_collections.gpuvirt.host.plugins.module_utils.kernel import kernel_config_option

    assert kernel_config_option(root, "6.8.0-45-generic", "FRAMEBUFFER_CONSOLE_DETECT_PRIMARY") == "y"
    assert kernel_config_option(root, "6.9.0-1-generic", "FRAMEBUFFER_CONSOLE_DETECT_PRIMARY") is None
    assert kernel_config_option(root, "6.8.0-45-generic", "DRM_SIMPLEDRM") == "n"


def test_only_x86_kernels_remap_to_a_pci_device(make_host):
    # Elsewhere video_is_primary_device() names no PCI device (asm-generic/video.h).
    root = make_host("desktop_dgpu", cpu={"arch": "aarch64"}, files={CONFIG: DETECT_PRIMARY}, **DGPU_FIRST)
    assert display.read_displays(root).console == frozenset({"fb0"})
