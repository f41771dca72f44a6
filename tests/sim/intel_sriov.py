# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Intel's SR-IOV PF mode as i915 (the SR-IOV build) and xe decide it when they probe a GPU.

``pf_verify_readiness()`` (i915-sriov-dkms ``drivers/gpu/drm/i915/i915_sriov.c``) and
``xe_sriov_pf_readiness()`` (``drivers/gpu/drm/xe/xe_sriov_pf.c``) take ``newlimit = min(max_vfs, the
device's VFs)``; with 0 (``max_vfs`` 0, the default before xe 6.17) or, for i915, without GuC submission,
they "continue as native" and call ``pci_sriov_set_totalvfs(pdev, 0)``, so ``sriov_totalvfs`` reads 0;
otherwise ``pci_sriov_set_totalvfs(pdev, newlimit)``: ``sriov_totalvfs`` reads ``newlimit``. Both read
``max_vfs`` only at probe, so a change shows after a driver reload or a reboot (:func:`boot.reboot`).
VFs are then enabled through ``sriov_numvfs`` (:mod:`sriov_kernel`: the drivers have ``sriov_configure``).

The device's own VF count (the SR-IOV capability's TotalVFs) is learnt once per GPU: from
:data:`DEVICE_VFS` by device ID (Flex/ATS-M 31, Max/PVC 63, Gen12 iGPUs 7: the "Xe - SR-IOV Support
Plan" RFC), else from what ``sriov_totalvfs`` read when the simulator first met the GPU. i915's
``enable_guc`` -1 (auto) is what ``uc_expand_default_options()`` (``intel_uc.c``) makes of it: no GuC on
Tiger Lake and Rocket Lake, HuC authentication only on Alder Lake-S (not its Raptor Lake-S), GuC
submission on the later platforms.
"""

from __future__ import annotations

import os

try:
    from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim
except ImportError:  # run as the fake modprobe: tests/sim is on sys.path
    from mdev_kernel import KernelSim

DEVICE_VFS = {"56c0": 31, "56c1": 31, "56c2": 31, "0bd5": 63, "0bd6": 63, "0bda": 63, "0bdb": 63,
              "a720": 7, "a7a0": 7, "4680": 7, "4690": 7, "9a49": 7}


def _read(root, address, name):
    try:
        with open(os.path.join(root, "sys/bus/pci/devices", address, name), encoding="ascii") as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return None


def _parameter(root, module, name):
    try:
        with open(os.path.join(root, "sys/module", module, "parameters", name), encoding="ascii") as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return None


def device_vfs(root, pf):
    """The VFs the GPU itself has, learnt once and kept in the simulator's state."""
    sim = KernelSim(root)
    state = sim.load()
    known = state.setdefault("device_vfs", {})
    if pf not in known:
        device_id = (_read(root, pf, "device") or "")[2:]
        known[pf] = DEVICE_VFS.get(device_id) or int(_read(root, pf, "sriov_totalvfs") or 0)
        sim.save(state)
    return known[pf]


# enable_guc -1 without GuC submission (i915_pciids.h: INTEL_TGL_IDS, INTEL_RKL_IDS, INTEL_ADLS_IDS).
_NO_GUC_SUBMISSION_BY_DEFAULT = frozenset(
    ["9a60", "9a68", "9a70", "9a40", "9a49", "9a59", "9a78", "9ac0", "9ac9", "9ad9", "9af8"]  # Tiger Lake
    + ["4c80", "4c8a", "4c8b", "4c8c", "4c90", "4c9a"]  # Rocket Lake
    + ["4680", "4682", "4688", "468a", "468b", "4690", "4692", "4693"]  # Alder Lake-S: HuC only
)


def _guc_submission(root, pf):
    value = _parameter(root, "i915", "enable_guc") or "-1"
    number = int(value) if value.lstrip("-").isdigit() else -1
    if number < 0:
        return (_read(root, pf, "device") or "")[2:] not in _NO_GUC_SUBMISSION_BY_DEFAULT
    return bool(number & 1)


def probe(root, module):
    """``module`` (i915 or xe) probes its SR-IOV capable GPUs; returns ``{pf: sriov_totalvfs}``."""
    done = {}
    bus = os.path.join(root, "sys/bus/pci/devices")
    for pf in sorted(os.listdir(bus)):
        base = os.path.join(bus, pf)
        link = os.path.join(base, "driver")
        if not os.path.exists(os.path.join(base, "sriov_totalvfs")) or os.path.exists(os.path.join(base, "physfn")):
            continue
        if not os.path.islink(link) or os.path.basename(os.readlink(link)) != module:
            continue
        total = device_vfs(root, pf)
        max_vfs = _parameter(root, module, "max_vfs") or "0"
        limit = min(int(max_vfs) if max_vfs.isdigit() else 0, total)
        if module == "i915" and not _guc_submission(root, pf):
            limit = 0
        with open(os.path.join(bus, pf, "sriov_totalvfs"), "w", encoding="ascii") as handle:
            handle.write("%d\n" % limit)
        done[pf] = limit
    return done
