# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The per-host ``gpuvirt`` fact: the ``gpuvirt.host.gpuvirt_fact`` filter's work.

plugins/filter/gpuvirt_fact.py documents the filter, and imports this module when it is first called.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.gpuvirt.host.plugins.module_utils.drivers import is_vfio_driver
from ansible_collections.gpuvirt.host.plugins.module_utils.vendor_plan import device_vgpu

FACT_VERSION = 1


def _model(gpu):
    name = gpu.get("name") or ""
    return name or "%s:%s" % (gpu.get("vendor_id") or "????", gpu.get("device_id") or "????")


def gpuvirt_fact(topology, reboot_pending=False, blockers=None, pending_changes=None):
    if isinstance(topology, dict) and "topology" in topology and "iommu" not in topology:
        topology = topology["topology"]
    if not isinstance(topology, dict):
        raise AnsibleFilterError(
            "gpuvirt_fact expects the 'topology' dict returned by gpuvirt.host.topology_info, got %s"
            % type(topology).__name__
        )
    devices = {device.get("address"): device for device in topology.get("devices") or []}
    gpus = [gpu for gpu in topology.get("gpus") or [] if not gpu.get("is_vf")]
    vfs = [gpu for gpu in topology.get("gpus") or [] if gpu.get("is_vf")]
    mdevs = topology.get("mdevs") or []
    models = {}
    summary = []
    for gpu in gpus:
        model = _model(gpu)
        models[model] = models.get(model, 0) + 1
        driver = gpu.get("driver")
        if is_vfio_driver(driver):
            mode = "passthrough"
        elif any(vf.get("physfn") == gpu.get("address") for vf in vfs) or any(
            mdev.get("parent") == gpu.get("address") for mdev in mdevs
        ):
            mode = "split"
        else:
            mode = "host" if driver else "unbound"
        summary.append({"address": gpu.get("address"), "model": model, "driver": driver, "mode": mode})
    ready = [
        gpu.get("address") for gpu in gpus
        if is_vfio_driver(gpu.get("driver")) and (gpu.get("passthrough") or {}).get("viable")
    ]  # fmt: skip
    vgpus = [
        vf for vf in vfs if (device_vgpu(devices.get(vf.get("address"))) or {}).get("current")
    ]
    in_use = [address for address, device in devices.items() if device.get("in_use_by")]
    blockers = [str(item) for item in blockers or []]
    iommu = topology.get("iommu") or {}
    return {
        "version": FACT_VERSION,
        "iommu": bool(iommu.get("enabled")),
        "iommu_vendor": iommu.get("vendor"),
        "kernel": (topology.get("kernel") or {}).get("release"),
        "gpu_count": len(gpus),
        "gpu_models": sorted(models),
        "gpu_model_counts": [{"model": model, "count": models[model]} for model in sorted(models)],
        "gpus": summary,
        "passthrough_ready": ready,
        "passthrough_ready_count": len(ready),
        "vfs": len(vfs),
        "vgpus": len(vgpus),
        "mdevs": len(mdevs),
        "mdevs_in_use": len([mdev for mdev in mdevs if mdev.get("in_use_by")]),
        "devices_in_use": len(in_use),
        "reboot_pending": bool(reboot_pending),
        "pending_changes": sorted(str(item) for item in pending_changes or []),
        "blockers": blockers,
        "ready": not blockers and not reboot_pending and not pending_changes,
    }
