# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Intel backend: GVT-g (mediated devices on Gen8/Gen9 iGPUs) and SR-IOV GPUs (Gen12+ iGPUs,
Data Center Flex, Arc Pro) under ``i915`` or ``xe``.

Interface notes (Linux drivers/gpu/drm/i915/intel_gvt.c, gvt/, i915_params.c; drivers/gpu/drm/xe/
xe_module.c; the i915-sriov-dkms project):

- GVT-g exists only on Broadwell, Skylake, Kaby Lake, Broxton, Coffee Lake and Comet Lake iGPUs
  (``is_supported_device()``); Ice Lake (Gen11) and later have none. It needs ``i915.enable_gvt=1``
  on the kernel command line (read at probe) and the ``kvmgt`` module (all GVT code since 5.19;
  ``vfio_mdev`` is gone); only then does the iGPU (``0000:00:02.0``) get ``mdev_supported_types``
  (``i915-GVTg_V5_{8,4,2,1}`` on Gen9, ``i915-GVTg_V4_*`` on Gen8). Creating one vGPU lowers
  ``available_instances`` of every type.
- SR-IOV: mainline i915 has no PF mode; the DKMS i915 takes ``i915.max_vfs=<N>`` with GuC submission
  (``i915.enable_guc=3``), the xe driver ``xe.max_vfs=<N>`` (PF mode by default since 6.17). Both
  are read at probe: a change needs a driver reload or a reboot. VFs are then enabled through
  ``sriov_numvfs`` (gpuvirt.host.sriov) and handed to vfio-pci, so the host driver does not probe them.
  A PF driver without ``max_vfs`` (or without GuC submission) "continues as native" and sets
  ``sriov_totalvfs`` to 0 (``pf_continue_as_native()``); with it, ``sriov_totalvfs`` reads
  ``min(max_vfs, the device's VFs)`` once the driver has probed.

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

from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError
from ansible_collections.gpuvirt.host.plugins.module_utils.kernel import module_parameter
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import (
    MDEV_BUS,
    PCI_DEVICES,
    host_path,
    link_name,
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
)

VENDOR_ID = "8086"
IGPU_SLOT = "0000:00:02"

# First two hex digits (or whole IDs) of i915's platform ID tables (include/drm/intel/pciids.h) for
# the platforms GVT-g supports: Broadwell 16xx, Skylake 19xx, Kaby Lake 59xx/87C0, Coffee Lake 3Exx/87CA,
# Comet Lake 9Bxx, Broxton 5A84/5A85.
GVT_G_ID_PREFIXES = ("16", "19", "59", "3e", "9b")
GVT_G_IDS = frozenset(("87c0", "87ca", "5a84", "5a85"))
# Data Center GPU Flex (ATS-M) and Max (PVC) physical functions, with the VFs each has ("Xe - SR-IOV
# Support Plan" RFC: ATS-M 31, PVC 63). Out of PF mode the driver reports sriov_totalvfs 0, so this is
# what bounds max_vfs before the first reboot.
SRIOV_VFS = {"56c0": 31, "56c1": 31, "56c2": 31, "0bd5": 63, "0bd6": 63, "0bda": 63, "0bdb": 63}
SRIOV_IDS = frozenset(SRIOV_VFS)
GVT_G_MODULE = "kvmgt"
GVT_G_ARGUMENT = "i915.enable_gvt=1"
GVT_G_TYPE_PREFIX = "i915-GVTg_"
SRIOV_DRIVERS = ("i915", "xe")


def gvt_g_generation(device_id):
    """True for a GVT-g capable iGPU ID (Gen8/Gen9), False for another Intel GPU ID."""
    device_id = (device_id or "").lower()
    return device_id in GVT_G_IDS or device_id[:2] in GVT_G_ID_PREFIXES


def is_integrated(device):
    return device.address.startswith(IGPU_SLOT + ".") and not device.is_vf


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
    max_vfs = module_parameter(root, driver, "max_vfs")
    if not (max_vfs or "").isdigit() or int(max_vfs) < wanted:
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
            "native'%s" % (error, driver, max_vfs, read_int(total_path),
                           " (GuC submission off: i915.enable_guc=3)" if driver == "i915" else "")
        ) from error
    return "%s in SR-IOV PF mode: max_vfs %s, sriov_totalvfs %d" % (driver, max_vfs, total)


def _gvt_g_items(state, root):
    parents = sorted({
        entry["parent"] for entry in (state.get("mdevs") or {}).values()
        if isinstance(entry, dict) and str(entry.get("type") or "").startswith(GVT_G_TYPE_PREFIX)
        and entry.get("parent")
    })
    return [(parent, lambda context, parent=parent: restore_gvt_g(context, parent)) for parent in parents]


def _sriov_items(state, root):
    entries = state.get("sriov") or {}
    return [
        (pf, lambda context, pf=pf, entry=entry: restore_sriov_mode(context, pf, entry))
        for pf, entry in sorted(entries.items())
        if isinstance(entry, dict) and _is_intel_gpu(root, pf)
    ]


def device_vfs(device):
    """``(VFs the GPU has, where that comes from)``: ``sriov_totalvfs`` in PF mode; out of it (where the
    driver reports 0) the count of its device ID; ``(None, None)`` when neither is known."""
    total = device.sriov.total_vfs if device.sriov is not None else None
    if total:
        return total, "its sriov_totalvfs"
    known = SRIOV_VFS.get((device.device_id or "").lower())
    if known:
        return known, "the VFs of an [8086:%s] GPU; sriov_totalvfs reads 0 until the driver is in PF mode" % (
            device.device_id.lower())
    return None, None


class IntelBackend(VendorBackend):
    """Intel GPUs: the ``gvt-g`` and ``sriov`` virtualization modes."""

    name = "intel"
    vendor_id = VENDOR_ID
    host_drivers = ("i915", "xe")
    # A discrete Intel GPU (Arc, Flex) for passthrough must reach vfio-pci before i915 or xe claims
    # it; vfio-pci takes only the IDs it is given, so the host's own iGPU stays with its driver.
    softdep_drivers = host_drivers
    enable_modes = ("gvt-g", "sriov")
    restore_steps = (
        RestoreStep(name="gvt_g", before="driver", items=_gvt_g_items),
        RestoreStep(name="intel_sriov", before="sriov", items=_sriov_items),
    )

    def enable_plan(self, device, host, mode, options):
        """GVT-g: ``i915.enable_gvt=1`` and ``kvmgt`` at boot (and now, once the running kernel has
        GVT-g on). SR-IOV: ``<driver>.max_vfs=<N>`` (with GuC submission for i915) on the command line,
        read at probe, so a reboot; the VFs themselves come from gpuvirt.host.sriov afterwards."""

        if mode == "gvt-g":
            gvt = self._gvt_g(device, host) if is_integrated(device) else None
            if gvt is None or gvt.get("unsupported"):
                raise EnableError(
                    "GVT-g cannot be enabled on %s: %s; nothing changed"
                    % (device.address, gvt["unsupported"] if gvt else "GVT-g is an iGPU (0000:00:02.0) feature")
                )
            running = bool(host.cmdline_flag("i915.enable_gvt"))
            return EnablePlan(
                mode=mode,
                address=device.address,
                kernel_arguments=(GVT_G_ARGUMENT,),
                files=(("etc/modules-load.d/gpuvirt-gvt-g.conf", MANAGED_HEADER + GVT_G_MODULE + "\n"),),
                load_modules=(GVT_G_MODULE,),
                running_needs=(("%s in the running kernel's command line" % GVT_G_ARGUMENT, running),),
            )
        driver = device.driver
        if driver not in ("i915", "xe"):
            raise EnableError(
                "SR-IOV on %s needs the i915 (SR-IOV build) or xe driver bound to it, not %s; nothing changed"
                % (device.address, driver or "no driver")
            )
        count = options.get("max_vfs")
        total, source = device_vfs(device)
        if not count or count < 1 or (total and count > total):
            raise EnableError(
                "max_vfs must be between 1 and %s for %s%s; nothing changed"
                % (total or "the GPU's VF count", device.address, " (%s)" % source if total else "")
            )
        arguments = ["%s.max_vfs=%d" % (driver, count)]
        if driver == "i915":
            arguments.append("i915.enable_guc=3")
        live = host.module_parameter(driver, "max_vfs")
        return EnablePlan(
            mode=mode,
            address=device.address,
            kernel_arguments=tuple(arguments),
            running_needs=(("%s.max_vfs=%d in the loaded %s driver" % (driver, count, driver), live == str(count)),),
            notes=("then create the VFs with gpuvirt.host.sriov and hand them to vfio-pci",),
        )

    def vf_count_advice(self, device):
        if device.driver not in SRIOV_DRIVERS or device.sriov is None or device.sriov.total_vfs:
            return None
        return (
            "an Intel GPU out of SR-IOV PF mode: %s offers VFs only with %s.max_vfs=<N>%s, read when it probes; "
            "set it with gpuvirt.host.virtualization_mode (mode sriov, max_vfs) and reboot"
            % (device.driver, device.driver, " and GuC submission (i915.enable_guc=3)" if device.driver == "i915"
               else "")
        )

    def modes(self, device, host):
        modes = []
        if is_integrated(device) and (device.class_code or "").startswith("0300"):
            modes.append(self._gvt_g(device, host))
        if device.sriov is not None or (device.device_id or "") in SRIOV_IDS:
            modes.append(self._sriov(device, host))
        return modes

    def _gvt_g(self, device, host):
        if not gvt_g_generation(device.device_id):
            return {
                "mode": "gvt-g", "ready": False, "missing": [],
                "unsupported": "GVT-g exists only on Broadwell to Comet Lake (Gen8/Gen9) iGPUs; %s [%s] is a later "
                               "generation (Gen12 and later iGPUs offer SR-IOV instead, with the i915 SR-IOV or xe "
                               "driver)" % (device.address, device.device_id),
            }
        if host.is_mdev_parent(device.address):
            return {"mode": "gvt-g", "ready": True, "missing": []}
        missing = []
        if device.driver != "i915":
            missing.append("the i915 driver bound to it (now: %s)" % (device.driver or "no driver"))
        if not host.cmdline_flag("i915.enable_gvt"):
            missing.append("%s on the kernel command line and a reboot" % GVT_G_ARGUMENT)
        if not host.module_loaded(GVT_G_MODULE):
            missing.append("the %s module loaded" % GVT_G_MODULE)
        if host.iommu_enabled is False:
            missing.append("the IOMMU (intel_iommu=on)")
        if not missing:
            missing.append("mdev types: i915 registered none although GVT-g is on; check dmesg for 'gvt:'")
        return {"mode": "gvt-g", "ready": False, "missing": missing}

    def _sriov(self, device, host):
        sriov = device.sriov
        if sriov is not None and sriov.num_vfs:
            return {"mode": "sriov", "ready": True, "missing": []}
        missing = []
        driver = device.driver
        if driver in ("i915", "xe"):
            max_vfs = host.module_parameter(driver, "max_vfs")
            if max_vfs in (None, "0") and host.cmdline_value(driver + ".max_vfs") in (None, "0"):
                missing.append(
                    "%s.max_vfs=<N>%s and a driver reload or reboot (PF mode)"
                    % (driver, " with i915.enable_guc=3" if driver == "i915" else "")
                )
        else:
            missing.append("an SR-IOV capable i915 or xe driver bound to it (now: %s)" % (driver or "no driver"))
        if sriov is None or not sriov.total_vfs:
            missing.append("VFs reported by the driver (sriov_totalvfs is %s)" % ("absent" if sriov is None else 0))
        else:
            missing.append("VFs enabled (sriov_numvfs, gpuvirt.host.sriov) and handed to vfio-pci")
        return {"mode": "sriov", "ready": False, "missing": missing}


BACKEND = IntelBackend()
