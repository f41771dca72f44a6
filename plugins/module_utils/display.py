# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which GPUs the host shows its console on, as the kernel marks them: the guards leave them to the host.

The kernel marks the host's display GPUs in three places:

- ``boot_vga`` of a PCI function (read with each device by :mod:`pci`): ``1`` on the VGA device the
  firmware booted on. The kernel shows it on VGA-class functions (class ``0300``) only: the GPU of
  an AMD APU is a display controller (class ``0380``) and has none, even when it is the only GPU.
- ``boot_display`` of a DRM card (``/sys/class/drm/cardN/boot_display``, ``Documentation/ABI/testing/
  sysfs-class-drm``): newer kernels create it, reading ``1``, on the card of the PCI device whose
  display showed the boot sequence, whatever its class. Older kernels, a boot display no DRM driver
  drives and a snapshot without ``sys/class/drm`` show none.
- framebuffers (``/sys/class/graphics/fbN/device``): the PCI device that drives one (an fbdev
  driver, or a DRM driver's fbdev emulation). The text console (fbcon) draws on ``fb0`` unless the
  command line maps its consoles elsewhere (``fbcon=map:<digits>``, one framebuffer number per
  console in turn; the last map given wins): the device that drives that framebuffer carries the
  console. Other framebuffers (a second GPU's, registered after the boot display's) carry none.
  Firmware framebuffers (efifb, simpledrm) belong to a platform device, not to a PCI address.
  Without a map, an x86 kernel built with ``CONFIG_FRAMEBUFFER_CONSOLE_DETECT_PRIMARY`` (Debian's,
  Ubuntu's, Fedora's) moves the consoles to the primary device's framebuffer when it registers
  (``fbcon_select_primary()``; ``video_is_primary_device()``: the boot VGA device, or the one the
  firmware's framebuffer lay in, which ``boot_display`` marks): when a second GPU's driver took
  ``fb0`` first (no firmware framebuffer held it: a BIOS boot, ``initcall_blacklist=sysfb_init``),
  the console is on the boot GPU's framebuffer and ``fb0`` carries none. Where the kernel's
  configuration cannot be read, ``fb0`` is still taken as the console's.
- the firmware's framebuffer in a PCI device's memory (``/proc/iomem``): the framebuffer the firmware
  left the kernel (``screen_info``) is registered by sysfb as the region ``BOOTFB`` and claimed by
  the driver that draws the boot console on it (``simpledrm``, ``efidrm``, ``vesadrm``, ``efifb``,
  ``vesafb``, ``simplefb``), each a region inside the BAR of the GPU it lies in. A native driver
  (amdgpu, i915, nouveau) removes them as it takes over; a GPU left to vfio-pci or to no driver at
  boot keeps them, and vfio-pci then cannot reserve that BAR for a VM ("BAR 0: can't reserve"):
  the guest's driver fails. ``initcall_blacklist=sysfb_init`` keeps the kernel from registering it.
  Regions are matched to devices by their addresses, or by their nesting where the file shows
  zeros (read without CAP_SYS_ADMIN).

Public API: :class:`Displays`, :func:`read_displays` ``(root, cmdline=None) -> Displays``,
:func:`boot_display_devices` ``(root) -> frozenset``, :func:`framebuffer_devices` ``(root) -> {address:
[fbN]}``, :func:`console_framebuffers` ``(cmdline) -> frozenset`` (by the command line alone),
:func:`primary_framebuffer` ``(root, framebuffers, boot) -> str | None``, :func:`fbcon_detects_primary`
``(root) -> bool``, :func:`firmware_framebuffer_devices`
``(root) -> {address: [region names]}``; ``Displays.console_uses(device)``: the one rule for which GPUs the
console uses.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ansible_collections.gpuvirt.host.plugins.module_utils.architecture import host_architecture
from ansible_collections.gpuvirt.host.plugins.module_utils.kernel import (
    X86,
    cmdline_values,
    kernel_config_option,
    read_release,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import (
    MISSING,
    PCI_DEVICES,
    host_path,
    list_dir,
    normalize_address,
    read_attribute,
    read_text,
)

DRM_CLASS = "sys/class/drm"
GRAPHICS_CLASS = "sys/class/graphics"
IOMEM = "proc/iomem"
# The names of the firmware framebuffer's regions in /proc/iomem: sysfb's (drivers/firmware/
# sysfb_simplefb.c) and those of the drivers that claim it (their own names).
FIRMWARE_FRAMEBUFFER_REGIONS = frozenset(
    ("BOOTFB", "simpledrm", "efidrm", "vesadrm", "ofdrm", "efifb", "vesafb", "simplefb", "offb")
)
_REGION = re.compile(r"( *)([0-9a-f]+)-([0-9a-f]+) : (.*)\Z")
_FIRMWARE_FRAMEBUFFER_LINE = re.compile(
    rb" : (?:%s)$" % "|".join(sorted(FIRMWARE_FRAMEBUFFER_REGIONS)).encode("ascii"), re.MULTILINE
)
_CARD = re.compile(r"card[0-9]+\Z")  # card0, not its connectors (card0-HDMI-A-1) nor renderD128
_FRAMEBUFFER = re.compile(r"fb[0-9]+\Z")  # fb0, fb1, ...; not fbcon


@dataclass(frozen=True)
class Displays:
    """``boot``: the addresses whose DRM card is marked as the boot display; ``framebuffers``:
    ``{address: [fbN, ...]}`` for the framebuffers a PCI device drives; ``console``: the framebuffers
    the text console draws on; ``firmware``: ``{address: [region names]}`` for the devices whose memory
    holds the firmware's framebuffer (``["BOOTFB", "simpledrm"]``: sysfb's region, then its claimant)."""

    boot: frozenset = frozenset()
    framebuffers: dict = field(default_factory=dict)
    console: frozenset = frozenset(("fb0",))
    firmware: dict = field(default_factory=dict)

    def console_framebuffers(self, address):
        """The framebuffers the text console draws on that ``address`` drives."""
        return [name for name in self.framebuffers.get(address, ()) if name in self.console]

    def console_uses(self, device):
        """``[(code, framebuffer or None)]``: why the host's console uses ``device`` (a PciDevice) -
        ``boot_vga``, ``boot_display`` (a boot display that is not the boot VGA device), and
        ``console_framebuffer`` once per framebuffer of the console it drives, and
        ``firmware_framebuffer`` (its regions, ``BOOTFB (simpledrm)``) when the firmware's framebuffer
        lies in its memory. The passthrough verdict and vfio_pci's guards word each in their own terms."""
        address = device.address
        if not device.boot_vga and address not in self.boot and address not in self.framebuffers \
                and address not in self.firmware:
            return []
        uses = []
        if device.boot_vga:
            uses.append(("boot_vga", None))
        elif address in self.boot:
            uses.append(("boot_display", None))
        uses.extend(("console_framebuffer", name) for name in self.console_framebuffers(address))
        regions = self.firmware.get(address)
        if regions:
            uses.append(("firmware_framebuffer", regions[0] + "".join(" (%s)" % name for name in regions[1:])))
        return uses


def read_displays(root, cmdline=None):
    """The displays below ``root``; ``cmdline``: the running kernel's arguments (for ``fbcon=map:``)."""
    boot, framebuffers = boot_display_devices(root), framebuffer_devices(root)
    mapping = _fbcon_map(cmdline or [])
    console = _mapped_framebuffers(mapping)
    if mapping is None:
        primary = primary_framebuffer(root, framebuffers, boot)
        if primary is not None and primary not in console and fbcon_detects_primary(root):
            console = frozenset((primary,))
    return Displays(boot=boot, framebuffers=framebuffers, console=console, firmware=firmware_framebuffer_devices(root))


def _fbcon_map(cmdline):
    """The last ``map:`` of the ``fbcon=`` arguments (``fb_console_setup()``: comma-separated options),
    or None."""
    mapping = None
    for value in cmdline_values(cmdline, "fbcon"):
        for option in value.split(","):
            if option.startswith("map:") and len(option) > 4:
                mapping = option[4:]
    return mapping


def console_framebuffers(cmdline):
    """The framebuffers fbcon maps its consoles to by the command line (``map:`` takes each character
    as a framebuffer number, its code less ``'0'`` modulo 32, and one below ``'0'`` as none): ``fb0``
    without a map."""
    return _mapped_framebuffers(_fbcon_map(cmdline))


def _mapped_framebuffers(mapping):
    """The framebuffers a ``map:`` value (:func:`_fbcon_map`) names; ``fb0`` for None."""
    if mapping is None:
        return frozenset(("fb0",))
    return frozenset("fb%d" % ((ord(char) - ord("0")) % _FB_MAX) for char in mapping if "0" <= char < "\x80")


_FB_MAX = 32  # FB_MAX in include/uapi/linux/fb.h


def primary_framebuffer(root, framebuffers, boot):
    """The first framebuffer of the primary display device (``boot_vga`` reads ``1``, or in ``boot``:
    :func:`boot_display_devices`), or None when it drives none."""
    names = [name for address, names in framebuffers.items()
             if address in boot or read_text(host_path(root, PCI_DEVICES, address, "boot_vga")) == "1"
             for name in names]
    return min(names, key=lambda name: int(name[2:])) if names else None


def fbcon_detects_primary(root):
    """Whether fbcon moves the consoles to the primary device's framebuffer: an x86 kernel built with
    ``CONFIG_FRAMEBUFFER_CONSOLE_DETECT_PRIMARY`` (other architectures' ``video_is_primary_device()``
    name no PCI device). False when the configuration cannot be read."""
    if host_architecture(root)[0] not in _X86_ARCHITECTURES:
        return False
    return kernel_config_option(root, read_release(root), "FRAMEBUFFER_CONSOLE_DETECT_PRIMARY") == "y"


_X86_ARCHITECTURES = (X86, "i686")


def boot_display_devices(root):
    """The PCI addresses whose DRM card has ``boot_display``. The kernel creates the file on that one
    card only, so its presence decides: a file that cannot be read, or reads otherwise than ``1``,
    still marks the card."""
    found = set()
    base = host_path(root, DRM_CLASS)
    for name in list_dir(base):
        if not _CARD.match(name):
            continue
        _text, problem = read_attribute("%s/%s/boot_display" % (base, name))
        if problem is MISSING:
            continue
        owner = _owner("%s/%s" % (base, name))
        if owner is not None:
            found.add(owner)
    return frozenset(found)


def framebuffer_devices(root):
    """``{PCI address: [fbN, ...]}`` for the framebuffers a PCI device drives."""
    found = {}
    base = host_path(root, GRAPHICS_CLASS)
    for name in list_dir(base):
        if not _FRAMEBUFFER.match(name):
            continue
        owner = _owner("%s/%s" % (base, name))
        if owner is not None:
            found.setdefault(owner, []).append(name)
    return found


def _owner(node):
    """The PCI address of the device a class node belongs to (its ``device`` link), or None for a
    device of another bus (simpledrm's platform device)."""
    owner = os.path.basename(os.path.realpath(node + "/device"))
    return owner if normalize_address(owner) == owner else None


def firmware_framebuffer_devices(root):
    """``{PCI address: [region names]}``: the devices whose BAR holds a firmware framebuffer region of
    ``/proc/iomem`` (its lines ``<start>-<end> : <name>``, indented two spaces a level, kernel/resource.c
    ``r_show()``), the names in the order the file lists them. The file is parsed only when such a
    region is in it: most hosts have none once their GPU drivers took over."""
    try:
        with open(host_path(root, IOMEM), "rb") as handle:
            raw = handle.read()
    except OSError:
        return {}
    if _FIRMWARE_FRAMEBUFFER_LINE.search(raw) is None:
        return {}
    regions = []
    for line in raw.decode("utf-8", "replace").splitlines():
        match = _REGION.match(line)
        if match is not None:
            indent, start, end, name = match.groups()
            regions.append((len(indent) // 2, int(start, 16), int(end, 16), name))
    found = {}
    for index, (_depth, _start, end, name) in enumerate(regions):
        if name in FIRMWARE_FRAMEBUFFER_REGIONS:
            owner = _region_owner(regions, index) if end else _nesting_owner(regions, index)
            if owner is not None:
                found.setdefault(owner, []).append(name)
    return found


def _region_owner(regions, index):
    """The PCI device whose BAR holds region ``index``: the smallest region named by a PCI address
    that contains it. (The file stops indenting at five levels, so nesting alone can mislead.)"""
    _depth, start, end, _name = regions[index]
    owner, size = None, None
    for _other_depth, other_start, other_end, name in regions:
        inside = other_start <= start and end <= other_end
        if inside and normalize_address(name) == name and (size is None or other_end - other_start < size):
            owner, size = name, other_end - other_start
    return owner


def _nesting_owner(regions, index):
    """The PCI device whose BAR holds region ``index`` by the file's nesting alone (the addresses
    read as zeros): the nearest region before it, less indented, named by a PCI address."""
    depth = regions[index][0]
    for other_depth, _start, _end, name in reversed(regions[:index]):
        if other_depth < depth:
            if normalize_address(name) == name:
                return name
            depth = other_depth
    return None
