# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The AMD backend: MxGPU (SR-IOV through AMD's GIM host driver) on Instinct and Radeon PRO V GPUs.

Interface notes (github.com/amd/MxGPU-Virtualization: gim_shim, gim_drv.c, release notes):

- The host driver is ``gim`` (DKMS package ``gim``), not ``amdgpu`` (blacklist it): GIM binds the
  PFs through dynamic IDs and calls ``pci_enable_sriov`` itself at probe, with ``vf_num=N0,N1,...``
  (per GPU, 1-31) or ``/etc/gim_config``. It has no ``sriov_configure``: writing ``sriov_numvfs``
  fails with ENOENT, so the VF count is a driver parameter and a reload.
- Signs of a running GIM: the PF's ``driver`` is ``gim``; ``/sys/bus/pci/drivers/gim/`` holds
  ``guard_status``, ``guard_threshold``, ``self_switch``, ``force_hot_reset``, ``live_update``.
- Supported GPUs (GIM 8.x-9.x): MI300X 1002:74a1 (VF 74b5), MI325X 74a5, MI308X 74a2/74a8, 74a9;
  later releases add MI350X/MI355X, MI210X and Radeon PRO V710.
"""

from __future__ import annotations

import os

from ansible_collections.gpuvirt.host.plugins.module_utils.vendor_plan import (
    MANAGED_HEADER,
    EnableError,
    EnablePlan,
    VendorBackend,
)

VENDOR_ID = "1002"
HOST_DRIVER = "gim"
GIM_IDS = frozenset(("74a1", "74a2", "74a5", "74a8", "74a9"))
GIM_DRIVER_FILES = ("guard_status", "guard_threshold", "self_switch", "force_hot_reset", "live_update")


def gim_present(root):
    """The GIM driver is registered (``sys/bus/pci/drivers/gim`` with its attributes)."""
    base = os.path.join(root, "sys/bus/pci/drivers", HOST_DRIVER)
    return os.path.isdir(base) and any(os.path.exists(os.path.join(base, name)) for name in GIM_DRIVER_FILES)


class AmdBackend(VendorBackend):
    """AMD GPUs: the ``mxgpu`` virtualization mode."""

    name = "amd"
    vendor_id = VENDOR_ID
    enable_modes = ("mxgpu",)

    def enable_plan(self, device, host, mode, options):
        """MxGPU: refuse with advice while GIM is missing; with GIM, ``options gim vf_num=<N>`` (GIM
        enables the VFs itself when it loads, so a reload or reboot)."""

        if device.driver != HOST_DRIVER or not gim_present(host.root):
            raise EnableError(
                "MxGPU on %s needs AMD's GIM host driver, which is not driving it (driver: %s): install the gim "
                "package from AMD's MxGPU-Virtualization releases for this GPU, blacklist amdgpu "
                "(modprobe.blacklist=amdgpu), reboot and run again; nothing changed"
                % (device.address, device.driver or "none")
            )
        count = options.get("max_vfs")
        if not count or not 1 <= count <= 31:
            raise EnableError("max_vfs (GIM's vf_num) must be between 1 and 31; nothing changed")
        live = host.module_parameter(HOST_DRIVER, "vf_num")
        return EnablePlan(
            mode=mode,
            address=device.address,
            files=(("etc/modprobe.d/gpuvirt-gim.conf", MANAGED_HEADER + "options gim vf_num=%d\n" % count),),
            running_needs=(("gim loaded with vf_num=%d" % count, (live or "").split(",")[0] == str(count)),),
        )

    def modes(self, device, host):
        if (device.device_id or "") not in GIM_IDS and device.driver != HOST_DRIVER:
            return []
        sriov = device.sriov
        if device.driver == HOST_DRIVER and sriov is not None and sriov.num_vfs:
            return [{"mode": "mxgpu", "ready": True, "missing": []}]
        missing = []
        if device.driver != HOST_DRIVER:
            missing.append(
                "AMD's GIM host driver (gim, AMD's MxGPU-Virtualization package) bound to it instead of %s; "
                "blacklist amdgpu" % (device.driver or "no driver")
            )
        elif not gim_present(host.root):
            missing.append("the gim driver's attributes under /sys/bus/pci/drivers/gim (is gim loaded?)")
        if sriov is None or not sriov.num_vfs:
            missing.append(
                "VFs: gim enables them itself at load (vf_num=<N> or /etc/gim_config), not through sriov_numvfs"
            )
        return [{"mode": "mxgpu", "ready": False, "missing": missing}]


BACKEND = AmdBackend()
