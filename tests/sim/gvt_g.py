# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Intel GVT-g as i915 and kvmgt behave (drivers/gpu/drm/i915/intel_gvt.c, gvt/kvmgt.c): ``kvmgt`` loads
only when i915 drives a Gen8/Gen9 iGPU with GVT-g on (``i915.enable_gvt=1`` at i915's probe; elsewhere
``modprobe kvmgt`` fails "No such device"), and only then does the iGPU become an mdev parent with the
Gen9 types; without kvmgt it has none (no ``mdev_supported_types`` directory at all). ``enable_guc``
changes nothing: i915 selects GuC submission, which GVT-g does not start under, only from graphics
version 11 on (``__guc_submission_supported()``).

:func:`probe` is kvmgt loading (:func:`boot.reboot`, the fake ``modprobe``); :func:`boot` reboots the tree.
"""

from __future__ import annotations

import os
import re
import shutil

GEN9_TYPES = (
    ("i915-GVTg_V5_8", 7, "low_gm_size: 64MB\nhigh_gm_size: 384MB\nfence: 4\nresolution: 1024x768\nweight: 2"),
    ("i915-GVTg_V5_4", 3, "low_gm_size: 128MB\nhigh_gm_size: 512MB\nfence: 4\nresolution: 1920x1200\nweight: 4"),
    ("i915-GVTg_V5_2", 1, "low_gm_size: 256MB\nhigh_gm_size: 1024MB\nfence: 4\nresolution: 1920x1200\nweight: 8"),
    ("i915-GVTg_V5_1", 0, "low_gm_size: 512MB\nhigh_gm_size: 2048MB\nfence: 4\nresolution: 1920x1200\nweight: 16"),
)
IGPU = "0000:00:02.0"
MODULE = "kvmgt"
_GVT_IDS = re.compile(r"0x(16|19|59|3e|9b)[0-9a-f]{2}\Z|0x(87c0|87ca|0a84|1a84|1a85|5a84|5a85)\Z")


def _read(root, relative):
    try:
        with open(os.path.join(root, relative), encoding="utf-8") as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return None


def _igpu_dir(root):
    return os.path.realpath(os.path.join(root, "sys/bus/pci/devices", IGPU))


def remove_types(root):
    """The iGPU as a new boot finds it: no GVT-g types until kvmgt loads."""
    if os.path.isdir(os.path.join(root, "sys/bus/pci/devices", IGPU)):
        shutil.rmtree(os.path.join(_igpu_dir(root), "mdev_supported_types"), ignore_errors=True)
    link = os.path.join(root, "sys/class/mdev_bus", IGPU)
    if os.path.lexists(link):
        os.unlink(link)


def probe(root):
    """kvmgt loading: True with the types registered, False when it cannot (no GVT-g on this iGPU)."""
    link = os.path.join(root, "sys/bus/pci/devices", IGPU, "driver")
    on_i915 = os.path.islink(link) and os.path.basename(os.readlink(link)) == "i915"
    enabled = _read(root, "sys/module/i915/parameters/enable_gvt") == "Y"
    device = _read(root, "sys/bus/pci/devices/%s/device" % IGPU) or ""
    if not (on_i915 and enabled and _GVT_IDS.match(device)):
        return False
    for type_id, available, description in GEN9_TYPES:
        base = os.path.join(_igpu_dir(root), "mdev_supported_types", type_id)
        os.makedirs(os.path.join(base, "devices"), exist_ok=True)
        for name, value in (("available_instances", str(available)), ("device_api", "vfio-pci"),
                            ("description", description), ("create", "")):
            with open(os.path.join(base, name), "w", encoding="utf-8") as handle:
                handle.write(value + "\n" if value else "")
    link = os.path.join(root, "sys/class/mdev_bus", IGPU)
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if not os.path.lexists(link):
        os.symlink(os.path.relpath(_igpu_dir(root), os.path.dirname(link)), link)
    return True


def boot(root):
    """Reboot the tree (:func:`boot.reboot`); True when GVT-g came up."""
    try:
        from ansible_collections.gpuvirt.host.tests.sim import boot as reboot_sim
    except ImportError:
        import boot as reboot_sim

    return reboot_sim.reboot(root).get(MODULE) is True
