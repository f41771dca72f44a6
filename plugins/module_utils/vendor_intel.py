# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Intel backend: GVT-g (mediated devices on Gen8/Gen9 iGPUs) and SR-IOV GPUs (Gen12+ iGPUs,
Data Center Flex, Arc Pro) under ``i915`` or ``xe``.

Interface notes (Linux drivers/gpu/drm/i915/intel_gvt.c, gvt/, i915_params.c, gt/uc/intel_uc.c;
drivers/gpu/drm/xe/xe_module.c, xe_pci.c; include/drm/intel/pciids.h; the i915-sriov-dkms project):

- GVT-g exists only on Broadwell, Skylake, Kaby Lake, Broxton, Coffee Lake and Comet Lake iGPUs
  (``is_supported_device()``), known here by their IDs in pciids.h; every other iGPU has none (Gemini
  Lake, a Gen9 Atom, included; Ice Lake and later too). The iGPU (``0000:00:02.0``) offers its types
  (``mdev_supported_types``: ``i915-GVTg_V5_{8,4,2,1}`` on Gen9, ``i915-GVTg_V4_*`` on Gen8) only when
  all of these hold at i915's probe, then ``kvmgt`` (all GVT code since 5.19; ``vfio_mdev`` is gone)
  loads:

  * GVT-g on: ``i915.enable_gvt=1`` on the command line, or ``enable_gvt`` set through modprobe.d (the
    loaded i915's parameter then reads ``Y`` either way, and that counts);
  * the IOMMU on (``intel_iommu=on``), which the plan adds while it is off.

  ``i915.enable_guc`` is left as it is: GVT-g does not start under GuC submission
  (``intel_uc_wants_guc_submission()``, ``intel_gvt_init_device()``), but i915 never selects it on these
  Gen8/Gen9 iGPUs, whatever ``enable_guc`` asks: ``__guc_submission_supported()``
  (gt/uc/intel_guc_submission.c) requires graphics version 11 or later. Its HuC bit (2) matters to the
  host's media encoding.

  Creating one vGPU lowers ``available_instances`` of every type.
- SR-IOV: mainline i915 has no PF mode and no ``max_vfs`` parameter. A loaded i915 without it (its
  ``/sys/module/i915/parameters/`` lists no ``max_vfs``) is refused with what to install: the
  i915-sriov-dkms build, or xe where xe has PF mode. The DKMS i915 takes ``i915.max_vfs=<N>`` with GuC
  submission (``i915.enable_guc=3``), xe ``xe.max_vfs=<N>``: 0 ("no VFs") by default in 6.12, and since
  6.17 "unlimited" (UINT_MAX, ``4294967295``) with PF mode on by default. Both are read at probe: a
  change needs a driver reload or a reboot, unless the loaded driver's ``max_vfs`` already covers the
  count (at or above it, or unlimited with ``sriov_totalvfs`` covering it). ``max_vfs`` is mode 0400:
  unreadable to an unprivileged reader, it counts as unknown (``sriov_totalvfs`` then tells), never
  as 0. VFs are then enabled through ``sriov_numvfs`` (gpuvirt.host.sriov) and handed to vfio-pci, so
  the host driver does not probe them. A PF driver without ``max_vfs`` (or without GuC submission, or on
  a platform it has no PF mode for) "continues as native" and sets ``sriov_totalvfs`` to 0
  (``pf_continue_as_native()``); with it, ``sriov_totalvfs`` reads ``min(max_vfs, the device's VFs)``
  once the driver has probed.
- SR-IOV platforms (:data:`PLATFORMS`; xe's PF mode needs the platform flag ``has_sriov``, xe_pci.c):
  upstream xe has it for Panther Lake; the i915-sriov-dkms xe adds Tiger Lake, Alder Lake (with its
  Raptor Lake subplatforms, which i915 and xe drive as Alder Lake) and ATS-M (Data Center GPU Flex),
  which have PF mode only with the DKMS build, and Battlemage and Crescent Island, for which the upstream
  release that has it is not confirmed (an xe without it stays out of PF mode: ``sriov_totalvfs`` 0). Tiger Lake
  and Alder Lake under xe need ``xe.force_probe=<device ID>``: the xe plan puts it on the command line
  unless it is there already, keeping the IDs listed there (or, where the command line has none, in the
  loaded xe's ``force_probe``, which it would replace). The DKMS recipes keep the other
  driver off the GPU (``module_blacklist=xe`` with i915, ``module_blacklist=i915`` with xe): the plan
  adds that when the other driver is loaded and drives no other device (a note says so when it does),
  merged into the running command line's ``module_blacklist`` list, which takes one value. VFs per GPU
  ("Xe - SR-IOV Support Plan" RFC): Tiger Lake, Alder Lake and Meteor Lake iGPUs 7, ATS-M 31, PVC 63;
  a larger ``max_vfs`` is refused.
- Both plans add ``intel_iommu=on`` while the IOMMU is off (unless the host's firmware describes an AMD
  or Arm IOMMU, which that argument does not turn on), so that the one reboot leaves the mode ready.
- Turning a mode off (``state: absent``): GVT-g by ``i915.enable_gvt=0``, which outweighs an ``options``
  line in modprobe.d (modprobe, libkmod's ``kmod_config_new()``, puts the command line's options for a
  module after those of its configuration files, and the last value given wins),
  SR-IOV by ``<driver>.max_vfs=0`` (removing the argument would leave xe 6.17+ at its unlimited default).
  Both are refused while the state file has the restore bring back what the mode carries.

Restore steps (:mod:`restore`):

- ``gvt_g``, before the drivers are waited for: for each iGPU with recorded GVT-g mdevs, i915 drives it
  with GVT-g on in this boot, ``kvmgt`` is loaded (``modprobe kvmgt`` when ``modules-load.d`` did not
  load it), and the iGPU has registered its mdev types, so the mdevs can be recreated.
- ``intel_sriov``, before the VF counts are written: for each Intel GPU with recorded VFs, its i915 or
  xe driver has probed it in SR-IOV PF mode with ``max_vfs`` covering the count (``sriov_totalvfs``), so
  that ``sriov_numvfs`` is written only once the PF can take it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError
from ansible_collections.gpuvirt.host.plugins.module_utils.kernel import kernel_bool, module_parameter
from ansible_collections.gpuvirt.host.plugins.module_utils.modprobe import option_value
from ansible_collections.gpuvirt.host.plugins.module_utils.secureboot import signature_advice
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import (
    MDEV_BUS,
    MISSING,
    PCI_DEVICES,
    host_path,
    link_name,
    list_dir,
    read_attribute,
    read_int,
    read_text,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.vendor_plan import (
    MANAGED_HEADER,
    EnableError,
    EnablePlan,
    RestoreStep,
    VendorBackend,
    VendorRestoreError,
    refuse_recorded,
)

VENDOR_ID = "8086"
IGPU_SLOT = "0000:00:02"


def _ids(text):
    return frozenset(text.split())


# First two hex digits (or whole IDs) of i915's platform ID tables (include/drm/intel/pciids.h) for
# the platforms GVT-g supports: Broadwell 16xx, Skylake 19xx, Kaby Lake 59xx/87C0, Coffee Lake (with
# Whiskey Lake) 3Exx/87CA, Comet Lake 9Bxx, Broxton (INTEL_BXT_IDS) 0A84/1A84/1A85/5A84/5A85.
GVT_G_ID_PREFIXES = ("16", "19", "59", "3e", "9b")
GVT_G_IDS = _ids("87c0 87ca 0a84 1a84 1a85 5a84 5a85")

# SR-IOV platforms by the IDs of pciids.h. Alder Lake holds ADL-S/-P/-N and the Raptor Lake IDs that
# i915 and xe drive with the Alder Lake descriptions (RPL-S as ADL-S, RPL-P/-U as ADL-P).
TGL_IDS = _ids("9a60 9a68 9a70 9a40 9a49 9a59 9a78 9ac0 9ac9 9ad9 9af8")
ADL_IDS = _ids(
    "4680 4682 4688 468a 468b 4690 4692 4693"  # ADL-S
    " 46a0 46a1 46a2 46a3 46a6 46a8 46aa 462a 4626 4628 46b0 46b1 46b2 46b3 46c0 46c1 46c2 46c3"  # ADL-P
    " 46d0 46d1 46d2 46d3 46d4"  # ADL-N
    " a780 a781 a782 a783 a788 a789 a78a a78b"  # RPL-S
    " a721 a7a1 a7a9 a7ac a7ad"  # RPL-U
    " a720 a7a0 a7a8 a7aa a7ab"  # RPL-P
)
MTL_IDS = _ids("7d40 7d45 7d55 7d60 7dd5")
PTL_IDS = _ids("b080 b081 b082 b083 b084 b085 b086 b087 b08f b090 b0a0 b0b0")
ATS_M_IDS = _ids("56c0 56c1 56c2")
PVC_IDS = _ids("0b69 0b6e 0bd4 0bd5 0bd6 0bd7 0bd8 0bd9 0bda 0bdb 0be0 0be1 0be5")
BMG_IDS = _ids("e202 e209 e20b e20c e20d e210 e211 e212 e216 e220 e221 e222 e223")
CRI_IDS = _ids("674c 674d 674e 674f 6750")
GLK_IDS = _ids("3184 3185")

# Where xe has SR-IOV PF mode (its has_sriov flag) for a platform, as far as the sources tell.
XE_PF_UPSTREAM = "upstream"  # upstream xe_pci.c sets has_sriov
XE_PF_DKMS = "dkms"  # only the i915-sriov-dkms xe sets it
XE_PF_DKMS_NEWER = "dkms-newer"  # the DKMS xe sets it; the upstream release that does is not confirmed


@dataclass(frozen=True)
class Platform:
    """What the sources say about one Intel GPU platform: its name, whether it is an iGPU, its VFs
    (None: not stated), where xe has PF mode for it (``XE_PF_*``, None: not stated) and whether xe
    needs ``xe.force_probe`` for it."""

    name: str
    integrated: bool
    vfs: int | None = None
    xe_pf: str | None = None
    force_probe: bool = False

    @property
    def with_article(self):
        """The name with its article: "an Alder Lake/Raptor Lake", "a Tiger Lake"."""
        return ("an " if self.name[:1] in "AEIOU" else "a ") + self.name


PLATFORMS = (
    (TGL_IDS, Platform("Tiger Lake", True, 7, XE_PF_DKMS, True)),
    (ADL_IDS, Platform("Alder Lake/Raptor Lake", True, 7, XE_PF_DKMS, True)),
    (MTL_IDS, Platform("Meteor Lake", True, 7)),
    (PTL_IDS, Platform("Panther Lake", True, None, XE_PF_UPSTREAM)),
    (ATS_M_IDS, Platform("Data Center GPU Flex (ATS-M)", False, 31, XE_PF_DKMS)),
    (PVC_IDS, Platform("Data Center GPU Max (PVC)", False, 63)),
    (BMG_IDS, Platform("Battlemage", False, None, XE_PF_DKMS_NEWER)),
    (CRI_IDS, Platform("Crescent Island", False, None, XE_PF_DKMS_NEWER)),
    (GLK_IDS, Platform("Gemini Lake", True)),
)

# Discrete Data Center GPU Flex (ATS-M) and Max (PVC) physical functions, with the VFs each has. Out of
# PF mode the driver reports sriov_totalvfs 0, so this is what bounds max_vfs before the first reboot
# (and the presence of the SR-IOV mode even where sriov_totalvfs is missing).
SRIOV_VFS = {device_id: platform.vfs for ids, platform in PLATFORMS if not platform.integrated and platform.vfs
             for device_id in ids}
SRIOV_IDS = frozenset(SRIOV_VFS)
GVT_G_MODULE = "kvmgt"
GVT_G_ARGUMENT = "i915.enable_gvt=1"
GVT_G_OFF_ARGUMENT = "i915.enable_gvt=0"
IOMMU_ARGUMENT = "intel_iommu=on"
GVT_G_TYPE_PREFIX = "i915-GVTg_"
SRIOV_DRIVERS = ("i915", "xe")
# xe's max_vfs default since 6.17: "unlimited" (the driver then offers every VF the device has).
UINT_MAX = 4294967295
DKMS = "the i915-sriov-dkms build (github.com/strongtz/i915-sriov-dkms)"


def gvt_g_generation(device_id):
    """True for a GVT-g capable iGPU ID (Broadwell to Comet Lake), False for another Intel GPU ID."""
    device_id = (device_id or "").lower()
    return device_id in GVT_G_IDS or device_id[:2] in GVT_G_ID_PREFIXES


def platform_of(device_id):
    """The :class:`Platform` of an Intel GPU's device ID, or None when :data:`PLATFORMS` lacks it."""
    device_id = (device_id or "").lower()
    for ids, platform in PLATFORMS:
        if device_id in ids:
            return platform
    return None


def is_integrated(device):
    return device.address.startswith(IGPU_SLOT + ".") and not device.is_vf


def kernel_int(text):
    """An ``int`` module parameter's text as the kernel's ``kstrtoint(text, 0)`` reads it (``0x`` hex, a
    leading ``0`` octal, an optional sign), or None when it is not a number (or not known)."""
    text = (text or "").strip()
    digits = text[1:] if text[:1] in ("+", "-") else text
    try:
        if digits[:2].lower() == "0x":
            value = int(digits[2:], 16)
        elif len(digits) > 1 and digits.startswith("0"):
            value = int(digits[1:], 8)
        else:
            value = int(digits, 10)
    except ValueError:
        return None
    return -value if text.startswith("-") else value


def parameter_state(root, module, name):
    """``(text, state)`` of the parameter ``name`` of ``module``: ``state`` is ``value`` (``text`` read),
    ``unreadable`` (it exists, but cannot be read: i915's and xe's are mode 0400, so an unprivileged
    reader cannot; unknown, not 0), ``absent`` (the module is loaded and has no such parameter) or
    ``unloaded`` (no ``parameters`` directory: the module is not loaded, or the tree does not tell)."""
    directory = host_path(root, "sys/module", module, "parameters")
    text, problem = read_attribute(os.path.join(directory, name))
    if text is not None:
        return text, "value"
    if problem != MISSING:
        return None, "unreadable"
    return None, "absent" if os.path.isdir(directory) else "unloaded"


def max_vfs_covers(max_vfs, count, total_vfs):
    """Whether a loaded driver with ``max_vfs`` (its text; None when unknown) offers ``count`` VFs
    without a reload: at or above the count, or unlimited (xe's default since 6.17) or unknown with
    ``sriov_totalvfs`` (``min(max_vfs, the device's VFs)`` in PF mode) covering it."""
    number = kernel_int(max_vfs)
    if number is None or number >= UINT_MAX:
        return bool(total_vfs) and total_vfs >= count
    return number >= count


def _forces(value, device_id):
    """Whether xe's ``force_probe`` value (comma-separated hex IDs, ``!`` blocking one; the whole value
    ``*`` forces all, ``!*`` blocks all) lets xe probe ``device_id`` (``id_forced()`` and not
    ``id_blocked()``, xe_pci.c)."""
    value = (value or "").strip()
    if value in ("*", "!*"):
        return value == "*"
    wanted = int(device_id, 16)

    def listed(blocked):
        for token in value.split(","):
            token = token.strip()
            if token.startswith("!") != blocked:
                continue
            try:
                if int(token.lstrip("!"), 16) == wanted:
                    return True
            except ValueError:
                continue
        return False

    return listed(False) and not listed(True)


def pf_driver_advice(device):
    """What gives ``device`` an SR-IOV PF mode, by what the sources say about its platform."""
    platform = platform_of(device.device_id)
    device_id = (device.device_id or "????").lower()
    if platform is not None and platform.xe_pf == XE_PF_UPSTREAM:
        return ("%s GPU has SR-IOV PF mode in the upstream xe driver (xe.max_vfs=<N>, unlimited and PF mode "
                "on by default since Linux 6.17): bind xe to it" % platform.with_article)
    if platform is not None and platform.xe_pf == XE_PF_DKMS_NEWER:
        return ("%s GPU has SR-IOV PF mode in the xe of %s (xe.max_vfs=<N> module_blacklist=i915); which "
                "upstream xe release has it is not confirmed" % (platform.with_article, DKMS))
    recipes = ("its i915 (i915.max_vfs=<N> i915.enable_guc=3 module_blacklist=xe) or its xe (xe.max_vfs=<N>%s "
               "module_blacklist=i915)" % (" xe.force_probe=%s" % device_id if platform and platform.force_probe
                                           else ""))
    if platform is not None and platform.xe_pf == XE_PF_DKMS:
        older = (" (or Intel's older Flex stack, github.com/intel-gpu/intel-gpu-i915-backports)"
                 if platform.name.startswith("Data Center GPU Flex") else "")
        return "%s GPU has SR-IOV PF mode only with %s: %s%s" % (platform.with_article, DKMS, recipes, older)
    return ("install %s: %s, or use an xe that has SR-IOV PF mode for this GPU (xe.max_vfs=<N>; its platform "
            "needs xe's has_sriov)" % (DKMS, recipes))


def _xe_platform_hint(device):
    """Why xe may stay out of PF mode on ``device``'s platform whatever ``max_vfs`` is, or ""."""
    platform = platform_of(device.device_id)
    if device.driver != "xe" or platform is None:
        return ""
    if platform.xe_pf == XE_PF_DKMS:
        return ("upstream xe has no SR-IOV PF mode for %s GPU: only the xe of %s has (with another xe it "
                "continues as native)" % (platform.with_article, DKMS))
    if platform.xe_pf == XE_PF_DKMS_NEWER:
        return ("the xe of %s has SR-IOV PF mode for %s GPU, and which upstream release has it is not "
                "confirmed: if sriov_totalvfs stays 0, use that xe" % (DKMS, platform.with_article))
    return ""


def _joined(clause):
    return "; " + clause if clause else ""


def _device_file(root, address, name):
    return host_path(root, PCI_DEVICES, address, name)


def _is_intel_gpu(root, address):
    return (read_text(_device_file(root, address, "vendor")) == "0x" + VENDOR_ID
            and (read_text(_device_file(root, address, "class")) or "").startswith("0x03"))


def _wait_driver(context, address):
    return context.wait_for(lambda: link_name(_device_file(context.root, address, "driver")),
                            "a driver binding to %s" % address)


def restore_gvt_g(context, parent):
    """Make the recorded GVT-g parent ``parent`` ready for its mdevs: i915 with GVT-g on, ``kvmgt``."""
    root = context.root
    driver = _wait_driver(context, parent)
    if driver != "i915":
        raise VendorRestoreError("%s is driven by %s, not i915: GVT-g needs i915 on the iGPU" % (parent, driver))
    if module_parameter(root, "i915", "enable_gvt") not in ("Y", "1"):
        raise VendorRestoreError(
            "GVT-g is off in this boot (i915's enable_gvt is %s): %s is not on the kernel command line; run "
            "gpuvirt.host.virtualization_mode (mode gvt-g) again and reboot"
            % (module_parameter(root, "i915", "enable_gvt") or "unreadable", GVT_G_ARGUMENT)
        )
    how = "already loaded"
    if not os.path.isdir(host_path(root, "sys/module", GVT_G_MODULE)):
        command = [context.runner.get_bin_path("modprobe") or "modprobe", GVT_G_MODULE]
        rc, out, err = context.runner.run_command(command)
        if rc != 0 or not os.path.isdir(host_path(root, "sys/module", GVT_G_MODULE)):
            advice = signature_advice("%s\n%s" % (out, err), GVT_G_MODULE, root)
            if advice:
                raise VendorRestoreError("%s failed (exit %s): %s" % (" ".join(command), rc, advice))
            raise VendorRestoreError(
                "%s failed (exit %s: %s); without %s the iGPU offers no GVT-g types (is %s a Broadwell to Comet "
                "Lake iGPU, and kvmgt installed for this kernel?)"
                % (" ".join(command), rc, " ".join((out + " " + err).split())[-200:] or "no output", GVT_G_MODULE,
                   parent)
            )
        how = "loaded by modprobe"
    context.wait_for(lambda: os.path.lexists(host_path(root, MDEV_BUS, parent)),
                     "the GVT-g mdev types of %s appearing" % parent)
    return "i915 with GVT-g on, %s %s, mdev types registered" % (GVT_G_MODULE, how)


def restore_sriov_mode(context, pf, entry):
    """Wait until the i915/xe driver of ``pf`` is in SR-IOV PF mode with room for the recorded VFs."""
    root = context.root
    wanted = int(entry.get("num_vfs", 0))
    driver = _wait_driver(context, pf)
    if driver not in SRIOV_DRIVERS:
        raise VendorRestoreError(
            "%s is driven by %s: its VFs come from the i915 (SR-IOV build) or xe driver in SR-IOV PF mode"
            % (pf, driver)
        )
    if not wanted:
        return "%s drives it; no VFs recorded" % driver
    max_vfs, state = parameter_state(root, driver, "max_vfs")
    if state == "absent":
        raise VendorRestoreError(
            "%s is not in SR-IOV PF mode for the %d VFs recorded: the loaded %s has no max_vfs parameter%s, so no "
            "PF mode; install %s" % (pf, wanted, driver, " (mainline i915 has none)" if driver == "i915" else "", DKMS)
        )
    # An unreadable max_vfs (mode 0400) is unknown, and unlimited (xe's default since 6.17) covers any
    # count: sriov_totalvfs below tells whether the driver is in PF mode.
    number = kernel_int(max_vfs)
    if state != "unreadable" and (number is None or number < wanted):
        raise VendorRestoreError(
            "%s is not in SR-IOV PF mode for the %d VFs recorded: %s.max_vfs is %s in this boot; put "
            "%s.max_vfs=<N> back on the kernel command line (gpuvirt.host.virtualization_mode, mode sriov) and "
            "reboot" % (pf, wanted, driver, max_vfs if max_vfs is not None else "unreadable", driver)
        )
    total_path = _device_file(root, pf, "sriov_totalvfs")

    def offered():
        total = read_int(total_path)
        return total if total is not None and total >= wanted else None

    try:
        total = context.wait_for(offered, "%s offering %d VFs (sriov_totalvfs)" % (pf, wanted))
    except GpuvirtError as error:
        raise VendorRestoreError(
            "%s; %s with max_vfs %s stayed out of PF mode (sriov_totalvfs %s): look in dmesg for 'continuing as "
            "native'%s" % (error, driver, max_vfs if max_vfs is not None else "unreadable", read_int(total_path),
                           " (GuC submission off: i915.enable_guc=3)" if driver == "i915" else "")
        ) from error
    return "%s in SR-IOV PF mode: max_vfs %s, sriov_totalvfs %d" % (
        driver, max_vfs if max_vfs is not None else "unreadable", total)


def _gvt_g_mdevs(state):
    """``[(uuid, entry)]``: the recorded mdevs of a GVT-g type, whatever their parent (the ``gvt_g`` step's
    selection, and what turning GVT-g off is refused for)."""
    return [
        (uuid, entry) for uuid, entry in sorted((state.get("mdevs") or {}).items())
        if isinstance(entry, dict) and str(entry.get("type") or "").startswith(GVT_G_TYPE_PREFIX)
    ]


def _gvt_g_items(state, root):
    parents = sorted({entry["parent"] for _uuid, entry in _gvt_g_mdevs(state) if entry.get("parent")})
    return [(parent, lambda context, parent=parent: restore_gvt_g(context, parent)) for parent in parents]


def _intel_sriov_entries(state, root):
    """``[(pf, entry)]``: the recorded SR-IOV entries of Intel GPUs (the ``intel_sriov`` step's selection)."""
    return [
        (pf, entry) for pf, entry in sorted((state.get("sriov") or {}).items())
        if isinstance(entry, dict) and _is_intel_gpu(root, pf)
    ]


def _sriov_items(state, root):
    return [
        (pf, lambda context, pf=pf, entry=entry: restore_sriov_mode(context, pf, entry))
        for pf, entry in _intel_sriov_entries(state, root)
    ]


def device_vfs(device):
    """``(VFs the GPU has, where that comes from)``: ``sriov_totalvfs`` in PF mode, bounded by what its
    platform has (a Tiger Lake, Alder Lake or Meteor Lake iGPU 7); out of PF mode (where the driver
    reports 0) the count of its platform; ``(None, None)`` when neither is known."""
    total = device.sriov.total_vfs if device.sriov is not None else None
    platform = platform_of(device.device_id)
    if platform is not None and platform.integrated and platform.vfs and (not total or total > platform.vfs):
        return platform.vfs, "%s iGPU has at most %d VFs%s" % (
            platform.with_article, platform.vfs, "; sriov_totalvfs reads 0 until the driver is in PF mode" if not total
            else "")
    if total:
        return total, "its sriov_totalvfs"
    known = SRIOV_VFS.get((device.device_id or "").lower())
    if known:
        return known, "the VFs of an [8086:%s] GPU; sriov_totalvfs reads 0 until the driver is in PF mode" % (
            device.device_id.lower())
    return None, None


def _iommu_argument(host):
    """``(argument, note)``: ``intel_iommu=on`` while the IOMMU is off, with a note when the firmware
    lists no DMAR table (VT-d off in its setup); no argument while it is on or unknown, or when the
    firmware describes an AMD or Arm IOMMU (which ``intel_iommu=`` does not turn on)."""
    if host.iommu_enabled is not False:
        return None, None
    tables = list_dir(host_path(host.root, "sys/firmware/acpi/tables"))
    if "IVRS" in tables or "IORT" in tables or os.path.isdir(host_path(host.root, "sys/firmware/devicetree")):
        return None, ("the IOMMU is off, and it is not Intel's VT-d, which %s turns on: turn it on as its vendor "
                      "says (gpuvirt.host.iommu role)" % IOMMU_ARGUMENT)
    if tables and "DMAR" not in tables:
        return IOMMU_ARGUMENT, ("the firmware lists no DMAR table: turn VT-d on in the firmware setup too, %s "
                                "alone does not" % IOMMU_ARGUMENT)
    return IOMMU_ARGUMENT, None


def _force_probe_argument(device, host):
    """``xe.force_probe=<IDs>`` with ``device``'s ID, for a platform xe probes only when forced (Tiger Lake,
    Alder Lake), unless the command line forces it already; else None. The IDs already there (or, when
    the command line has none, those of the loaded xe's ``force_probe``, set through modprobe.d, which the
    command line's value would replace) are kept."""
    platform = platform_of(device.device_id)
    if platform is None or not platform.force_probe:
        return None
    device_id = device.device_id.lower()
    current = host.cmdline_value("xe.force_probe")
    if current is not None and _forces(current, device_id):
        return None
    if current is None:
        current, _state = parameter_state(host.root, "xe", "force_probe")
        if current and _forces(current, device_id):
            return "xe.force_probe=" + current
    kept = [token.strip() for token in (current or "").split(",")
            if token.strip() and token.strip().lstrip("!") not in ("*",) and not _same_id(token, device_id)]
    return "xe.force_probe=" + ",".join(kept + [device_id])


def _same_id(token, device_id):
    try:
        return int(token.strip().lstrip("!"), 16) == int(device_id, 16)
    except ValueError:
        return False


def _cross_blacklist(device, host, driver):
    """``(argument, note)``: ``module_blacklist=<list>`` with the other Intel driver added (the DKMS
    recipes: ``module_blacklist=xe`` with i915, ``module_blacklist=i915`` with xe), so that it cannot
    claim the GPU at boot, when it is loaded and drives no other device; the list keeps the running
    command line's names (``module_blacklist`` takes one value). A note instead when it drives another."""
    other = "xe" if driver == "i915" else "i915"
    if not host.module_loaded(other):
        return None, None
    users = sorted(d.address for d in host.devices.values()
                   if d.driver == other and d.address != device.address and d.physfn != device.address)
    if users:
        return None, ("%s also drives %s, so module_blacklist=%s (the SR-IOV recipe) is not added: make sure it "
                      "does not claim %s at boot" % (other, ", ".join(users), other, device.address))
    names = [name for name in (host.cmdline_value("module_blacklist") or "").split(",") if name]
    if other in [name.replace("-", "_") for name in names]:
        return None, None
    return "module_blacklist=" + ",".join(names + [other]), None


def _gvt_g_on(host):
    """GVT-g on in this boot: ``i915.enable_gvt`` on the command line, or the loaded i915's parameter
    ``Y`` (set through modprobe.d)."""
    return bool(host.cmdline_flag("i915.enable_gvt")) or host.module_parameter("i915", "enable_gvt") in ("Y", "1")


class IntelBackend(VendorBackend):
    """Intel GPUs: the ``gvt-g`` and ``sriov`` virtualization modes."""

    name = "intel"
    vendor_id = VENDOR_ID
    resource_domain = "intel.com"
    host_drivers = ("i915", "xe")
    # A discrete Intel GPU (Arc, Flex) for passthrough must reach vfio-pci before i915 or xe claims
    # it; vfio-pci takes only the IDs it is given, so the host's own iGPU stays with its driver.
    softdep_drivers = host_drivers
    enable_modes = ("gvt-g", "sriov")
    enable_options = {"sriov": {"max_vfs": "int"}}
    restore_steps = (
        RestoreStep(name="gvt_g", before="driver", items=_gvt_g_items),
        RestoreStep(name="intel_sriov", before="sriov", items=_sriov_items),
    )

    def enable_plan(self, device, host, mode, options):
        """GVT-g: ``i915.enable_gvt=1`` (with ``intel_iommu=on`` while the IOMMU is off) and ``kvmgt`` at boot
        (and now, once the running kernel has all that). SR-IOV: ``<driver>.max_vfs=<N>`` (with GuC submission
        for i915; the platform's ``xe.force_probe`` and the other driver blacklisted, as the DKMS recipes do;
        ``intel_iommu=on`` while the IOMMU is off) on the command line, read at probe, so a reboot unless the
        loaded driver already covers the count; the VFs themselves come from gpuvirt.host.sriov afterwards."""

        if mode == "gvt-g":
            return self._gvt_g_plan(device, host)
        return self._sriov_plan(device, host, options)

    def _gvt_g_plan(self, device, host):
        gvt = self._gvt_g(device, host) if is_integrated(device) else None
        if gvt is None or gvt.get("unsupported"):
            raise EnableError(
                "GVT-g cannot be enabled on %s: %s; nothing changed"
                % (device.address, gvt["unsupported"] if gvt else "GVT-g is an iGPU (0000:00:02.0) feature")
            )
        arguments = [GVT_G_ARGUMENT]
        running = [("GVT-g on in the loaded i915 (%s)" % GVT_G_ARGUMENT, _gvt_g_on(host))]
        notes = []
        self._add_iommu(host, arguments, running, notes)
        return EnablePlan(
            mode="gvt-g",
            address=device.address,
            kernel_arguments=tuple(arguments),
            files=(("etc/modules-load.d/gpuvirt-gvt-g.conf", MANAGED_HEADER + GVT_G_MODULE + "\n"),),
            load_modules=(GVT_G_MODULE,),
            running_needs=tuple(running),
            notes=tuple(notes),
        )

    def disable_plan(self, device, host, mode, recorded):
        """GVT-g off: the ``kvmgt`` modules-load file gone and, where something turns GVT-g on,
        ``i915.enable_gvt=0`` on the command line (which outweighs an ``options i915 enable_gvt=1`` line in
        modprobe.d), so the next boot's i915 offers no GVT-g types. SR-IOV off: ``<driver>.max_vfs=0`` (0 and
        not the argument removed: xe's default is unlimited since 6.17), so the driver probes every GPU it
        drives as a plain GPU. Each is refused while the state file records what the mode's restore step brings
        back (GVT-g mdevs; VFs of an Intel GPU the driver may drive). What the SR-IOV plan added beside
        ``max_vfs`` stays (see the notes)."""
        if mode == "gvt-g":
            return self._gvt_g_off_plan(device, host, recorded)
        return self._sriov_off_plan(device, host, recorded)

    def _gvt_g_off_plan(self, device, host, recorded):
        if not is_integrated(device):
            raise EnableError("GVT-g is an iGPU (0000:00:02.0) feature: %s has none to turn off; select the iGPU; "
                              "nothing changed" % device.address)
        refuse_recorded("gvt-g", [
            "mdev %s (%s on %s)" % (uuid, entry.get("type"), entry.get("parent"))
            for uuid, entry in _gvt_g_mdevs(recorded)
        ], "gpuvirt.host.mdev, state absent")
        files = (("etc/modules-load.d/gpuvirt-gvt-g.conf", None),)
        gvt = self._gvt_g(device, host)
        if gvt.get("unsupported"):
            # Never on for this iGPU: nothing to pin off on the command line.
            return EnablePlan(mode="gvt-g", address=device.address, files=files, notes=(gvt["unsupported"],))
        notes = []
        if host.module_loaded(GVT_G_MODULE):
            notes.append("%s stays loaded and the iGPU's mdevs stay until the reboot" % GVT_G_MODULE)
        # i915.enable_gvt=0 outweighs every other setting of it; it is needed where one turns GVT-g on: the
        # loaded i915 (modprobe.d or the running command line), an options line for the next load, or this
        # collection's kvmgt file (the mode turned on, not yet booted). Otherwise only where the boot
        # configuration sets it (the generic code looks).
        option = option_value(host.root, "i915", "enable_gvt")
        # A bare parameter name sets a bool parameter on.
        on = _gvt_g_on(host) or (option is not None and kernel_bool(option or "1") is True) or os.path.exists(
            host_path(host.root, files[0][0]))
        return EnablePlan(
            mode="gvt-g",
            address=device.address,
            kernel_arguments=(GVT_G_OFF_ARGUMENT,) if on else (),
            pin_arguments=() if on else (GVT_G_OFF_ARGUMENT,),
            files=files,
            running_needs=(("GVT-g off in the loaded i915 (enable_gvt N)", not _gvt_g_on(host)),),
            notes=tuple(notes),
        )

    @staticmethod
    def _sriov_off_plan(device, host, recorded):
        driver = device.driver
        if driver not in SRIOV_DRIVERS:
            raise EnableError(
                "turning SR-IOV off on %s needs the i915 or xe driver bound to it, whose max_vfs it sets, not %s; "
                "nothing changed" % (device.address, driver or "no driver")
            )
        # The restore step's own selection, with VFs, less the GPUs the other driver drives now: max_vfs is
        # this driver's, and a GPU on no driver now may be this driver's at the next boot.
        other = [name for name in SRIOV_DRIVERS if name != driver][0]
        refuse_recorded("sriov", [
            "%s (%d VFs recorded)" % (pf, entry["num_vfs"])
            for pf, entry in _intel_sriov_entries(recorded, host.root)
            if isinstance(entry.get("num_vfs"), int) and entry["num_vfs"] > 0
            and link_name(_device_file(host.root, pf, "driver")) != other
        ], "set their num_vfs to 0 with gpuvirt.host.sriov")
        max_vfs, state = parameter_state(host.root, driver, "max_vfs")
        gpus = [address for address, other_device in sorted(host.devices.items())
                if other_device.driver == driver and not other_device.is_vf and other_device.sriov is not None]
        notes = []
        if state == "absent":
            notes.append("the loaded %s has no max_vfs parameter, so no SR-IOV PF mode in this boot; %s.max_vfs=0 "
                         "holds for a kernel whose %s has one" % (driver, driver, driver))
        live = ["%s (%d)" % (address, host.devices[address].sriov.num_vfs) for address in gpus
                if host.devices[address].sriov.num_vfs]
        if live:
            notes.append("the VFs enabled now go with the reboot: %s" % ", ".join(live))
        if len(gpus) > 1:
            notes.append("max_vfs is %s's: SR-IOV goes off on every GPU it drives (%s)" % (driver, ", ".join(gpus)))
        notes.append(
            "i915.enable_guc, xe.force_probe and module_blacklist stay as they are: they decide which driver drives "
            "the GPU and how, not SR-IOV alone; remove what nothing else needs with gpuvirt.host.kernel_cmdline"
        )
        # Off now: max_vfs 0 in the loaded driver, or no GPU of it in PF mode (sriov_totalvfs 0 on each).
        off = kernel_int(max_vfs) == 0 or not any(host.devices[address].sriov.total_vfs for address in gpus)
        return EnablePlan(
            mode="sriov",
            address=device.address,
            kernel_arguments=("%s.max_vfs=0" % driver,),
            running_needs=(("%s out of SR-IOV PF mode in the loaded driver (max_vfs now %s)"
                            % (driver, max_vfs if state == "value" else state), off),),
            notes=tuple(notes),
        )

    @staticmethod
    def _add_iommu(host, arguments, running, notes):
        argument, note = _iommu_argument(host)
        if argument is not None:
            arguments.append(argument)
        if host.iommu_enabled is False:
            running.append(("the IOMMU on in the running kernel (%s)" % IOMMU_ARGUMENT, False))
        if note is not None:
            notes.append(note)

    def _sriov_plan(self, device, host, options):
        driver = device.driver
        if driver not in SRIOV_DRIVERS:
            raise EnableError(
                "SR-IOV on %s needs the i915 (SR-IOV build) or xe driver bound to it, not %s; nothing changed"
                % (device.address, driver or "no driver")
            )
        max_vfs, state = parameter_state(host.root, driver, "max_vfs")
        if state == "absent":
            raise EnableError(
                "SR-IOV cannot be enabled on %s: the loaded %s has no max_vfs parameter, so it has no SR-IOV PF "
                "mode%s, and %s=<N> on the command line would change nothing; %s. Nothing changed"
                % (device.address, driver, " (mainline i915 has none)" if driver == "i915" else "",
                   "%s.max_vfs" % driver, pf_driver_advice(device))
            )
        count = options.get("max_vfs")
        total, source = device_vfs(device)
        if not count or count < 1 or (total and count > total):
            raise EnableError(
                "max_vfs must be between 1 and %s for %s%s; nothing changed"
                % (total or "the GPU's VF count", device.address, " (%s)" % source if total else "")
            )
        arguments = ["%s.max_vfs=%d" % (driver, count)]
        notes = []
        if driver == "i915":
            arguments.append("i915.enable_guc=3")
        else:
            force_probe = _force_probe_argument(device, host)
            if force_probe is not None:
                arguments.append(force_probe)
        blacklist, note = _cross_blacklist(device, host, driver)
        if blacklist is not None:
            arguments.append(blacklist)
        if note is not None:
            notes.append(note)
        live_total = device.sriov.total_vfs if device.sriov is not None else None
        covered = max_vfs_covers(max_vfs, count, live_total)
        running = [("%s.max_vfs covering %d VFs in the loaded %s driver (now %s)"
                    % (driver, count, driver, max_vfs if state == "value" else state), covered)]
        if covered and live_total is not None and live_total < count:
            # The driver read max_vfs and still went on as a plain GPU (pf_verify_readiness()): i915 without
            # GuC submission, which its default gives no Tiger Lake, Rocket Lake or Alder Lake-S.
            running.append((
                "the loaded %s in SR-IOV PF mode with %d VFs (sriov_totalvfs now %d%s)"
                % (driver, count, live_total,
                   ": i915 enters it only with GuC submission, i915.enable_guc=3" if driver == "i915" else ""),
                False,
            ))
        self._add_iommu(host, arguments, running, notes)
        hint = _xe_platform_hint(device)
        if hint:
            notes.append(hint)
        notes.append("then create the VFs with gpuvirt.host.sriov and hand them to vfio-pci")
        return EnablePlan(
            mode="sriov",
            address=device.address,
            kernel_arguments=tuple(arguments),
            running_needs=tuple(running),
            notes=tuple(notes),
            # max_vfs is the driver's: every GPU it drives is offered at most that many VFs.
            vf_limits=tuple((address, count) for address, other in sorted(host.devices.items())
                            if other.driver == driver and not other.is_vf and other.sriov is not None),
        )

    def vf_count_advice(self, device):
        if device.driver not in SRIOV_DRIVERS or device.sriov is None or device.sriov.total_vfs:
            return None
        return (
            "an Intel GPU out of SR-IOV PF mode: %s offers VFs only with %s.max_vfs=<N>%s, read when it probes; "
            "set it with gpuvirt.host.virtualization_mode (mode sriov, max_vfs) and reboot%s"
            % (device.driver, device.driver, " and GuC submission (i915.enable_guc=3)" if device.driver == "i915"
               else "", _joined(_xe_platform_hint(device)))
        )

    def modes(self, device, host):
        modes = []
        # The firmware gives the iGPU class 0300 (VGA) when it is the primary display and 0380 (display
        # controller) when a discrete card is; GVT-g does not depend on it.
        if is_integrated(device) and device.is_gpu:
            modes.append(self._gvt_g(device, host))
        if device.sriov is not None or (device.device_id or "") in SRIOV_IDS:
            modes.append(self._sriov(device, host))
        return modes

    def _gvt_g(self, device, host):
        if not gvt_g_generation(device.device_id):
            platform = platform_of(device.device_id)
            what = "not one of them"
            if platform is not None and platform.integrated:
                sriov = platform.vfs or platform.xe_pf
                instead = ""
                if sriov:
                    # Mode sriov is offered only where the kernel shows the SR-IOV capability.
                    instead = ", which has SR-IOV instead (mode sriov)" if device.sriov is not None else (
                        ", which has SR-IOV instead (mode sriov), but this one shows no SR-IOV capability (no "
                        "sriov_totalvfs)")
                what = "%s iGPU%s" % (platform.with_article, instead)
            return {
                "mode": "gvt-g", "ready": False, "missing": [],
                "unsupported": "GVT-g exists only on Broadwell to Comet Lake iGPUs (Broadwell, Skylake, Kaby Lake, "
                               "Broxton, Coffee Lake, Comet Lake); %s [%s] is %s"
                               % (device.address, device.device_id, what),
            }
        if host.is_mdev_parent(device.address):
            return {"mode": "gvt-g", "ready": True, "missing": []}
        missing = []
        if device.driver != "i915":
            missing.append("the i915 driver bound to it (now: %s)" % (device.driver or "no driver"))
        if not _gvt_g_on(host):
            missing.append("%s on the kernel command line and a reboot" % GVT_G_ARGUMENT)
        if not host.module_loaded(GVT_G_MODULE):
            missing.append("the %s module loaded" % GVT_G_MODULE)
        if host.iommu_enabled is False:
            missing.append("the IOMMU (%s)" % IOMMU_ARGUMENT)
        if not missing:
            missing.append("mdev types: i915 registered none although GVT-g is on; check dmesg for 'gvt:'")
        return {"mode": "gvt-g", "ready": False, "missing": missing}

    def _sriov(self, device, host):
        sriov = device.sriov
        if sriov is not None and sriov.num_vfs:
            return {"mode": "sriov", "ready": True, "missing": []}
        missing = []
        driver = device.driver
        state = None
        if driver in SRIOV_DRIVERS:
            max_vfs, state = parameter_state(host.root, driver, "max_vfs")
            if state == "absent":
                missing.append(
                    "%s with SR-IOV PF mode: the loaded one has no max_vfs parameter%s; %s"
                    % ("an i915" if driver == "i915" else "an xe", " (mainline i915 has none)" if driver == "i915"
                       else "", pf_driver_advice(device))
                )
            elif state != "unreadable" and max_vfs in (None, "0") and host.cmdline_value(driver + ".max_vfs") in (
                    None, "0"):
                missing.append(
                    "%s.max_vfs=<N>%s and a driver reload or reboot (PF mode)"
                    % (driver, " with i915.enable_guc=3" if driver == "i915" else "")
                )
        else:
            missing.append("an SR-IOV capable i915 or xe driver bound to it (now: %s)" % (driver or "no driver"))
        if sriov is None or not sriov.total_vfs:
            unknown = ("; %s's max_vfs is unreadable here (mode 0400): read as root" % driver
                       if state == "unreadable" else "")
            missing.append("VFs reported by the driver (sriov_totalvfs is %s%s)%s"
                           % ("absent" if sriov is None else 0, unknown, _joined(_xe_platform_hint(device))))
        else:
            missing.append("VFs enabled (sriov_numvfs, gpuvirt.host.sriov) and handed to vfio-pci")
        if host.iommu_enabled is False:
            missing.append("the IOMMU (%s)" % IOMMU_ARGUMENT)
        return {"mode": "sriov", "ready": False, "missing": missing}


BACKEND = IntelBackend()
