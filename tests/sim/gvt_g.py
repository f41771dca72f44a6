# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A boot of a fixture host with an Intel iGPU, as i915 and kvmgt behave (drivers/gpu/drm/i915/intel_gvt.c,
gvt/kvmgt.c): the next kernel command line comes from the boot configuration; GVT-g comes up only when
it has ``i915.enable_gvt=1``, the iGPU is a Gen8/Gen9 one, and ``kvmgt`` is loaded (from
``/etc/modules-load.d``); only then does the iGPU become an mdev parent with the Gen9 types.
"""

from __future__ import annotations

import glob
import os
import re
import shlex

GEN9_TYPES = (
    ("i915-GVTg_V5_8", 7, "low_gm_size: 64MB\nhigh_gm_size: 384MB\nfence: 4\nresolution: 1024x768\nweight: 2"),
    ("i915-GVTg_V5_4", 3, "low_gm_size: 128MB\nhigh_gm_size: 512MB\nfence: 4\nresolution: 1920x1200\nweight: 4"),
    ("i915-GVTg_V5_2", 1, "low_gm_size: 256MB\nhigh_gm_size: 1024MB\nfence: 4\nresolution: 1920x1200\nweight: 8"),
    ("i915-GVTg_V5_1", 0, "low_gm_size: 512MB\nhigh_gm_size: 2048MB\nfence: 4\nresolution: 1920x1200\nweight: 16"),
)
IGPU = "0000:00:02.0"
_GVT_IDS = re.compile(r"0x(16|19|59|3e|9b)[0-9a-f]{2}\Z|0x(87c0|87ca|5a84|5a85)\Z")


def _read(root, relative):
    try:
        with open(os.path.join(root, relative), encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _write(root, relative, text):
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def boot(root):
    """Reboot the tree: new proc/cmdline from /etc/default/grub, modules from modules-load.d, GVT-g."""
    grub = _read(root, "etc/default/grub") or ""
    values = dict(re.findall(r'^(GRUB_CMDLINE_LINUX(?:_DEFAULT)?)="([^"]*)"', grub, re.M))
    running = (_read(root, "proc/cmdline") or "").split()
    image = [word for word in running if word.startswith(("BOOT_IMAGE=", "root=", "ro"))]
    cmdline = image + shlex.split(values.get("GRUB_CMDLINE_LINUX", "")) + shlex.split(
        values.get("GRUB_CMDLINE_LINUX_DEFAULT", ""))
    _write(root, "proc/cmdline", " ".join(cmdline) + "\n")
    modules = [line.split()[0] for line in (_read(root, "proc/modules") or "").splitlines() if line.strip()]
    for path in sorted(glob.glob(os.path.join(root, "etc/modules-load.d/*.conf"))):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                name = line.split("#", 1)[0].strip()
                if name and name not in modules:
                    modules.append(name)
    enabled = "i915.enable_gvt=1" in cmdline
    device = (_read(root, "sys/bus/pci/devices/%s/device" % IGPU) or "").strip()
    gvt = enabled and "kvmgt" in modules and _GVT_IDS.match(device) is not None
    if enabled and "kvmgt" in modules and not gvt:
        modules.remove("kvmgt")  # modprobe kvmgt: No such device
    _write(root, "proc/modules", "".join("%s 0 0 - Live 0x0000000000000000\n" % name for name in modules))
    for name in modules:
        os.makedirs(os.path.join(root, "sys/module", name), exist_ok=True)
    if os.path.isdir(os.path.join(root, "sys/module/i915")):
        _write(root, "sys/module/i915/parameters/enable_gvt", "Y\n" if enabled else "N\n")
    if gvt:
        device_dir = os.path.realpath(os.path.join(root, "sys/bus/pci/devices", IGPU))
        for type_id, available, description in GEN9_TYPES:
            base = os.path.join(device_dir, "mdev_supported_types", type_id)
            os.makedirs(os.path.join(base, "devices"), exist_ok=True)
            for name, value in (("available_instances", str(available)), ("device_api", "vfio-pci"),
                                ("description", description), ("create", "")):
                with open(os.path.join(base, name), "w", encoding="utf-8") as handle:
                    handle.write(value + "\n" if value else "")
        link = os.path.join(root, "sys/class/mdev_bus", IGPU)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if not os.path.lexists(link):
            os.symlink(os.path.relpath(device_dir, os.path.dirname(link)), link)
    return gvt
