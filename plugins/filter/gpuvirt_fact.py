# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter ``gpuvirt_fact``: the small per-host ``gpuvirt`` fact from a topology and a preflight."""

from __future__ import annotations

DOCUMENTATION = r"""
name: gpuvirt_fact
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
short_description: The small C(gpuvirt) host fact from a topology and a preflight result
description:
  - Condenses the C(topology) returned by M(gpuvirt.host.topology_info) into the few keys that fleet
    tools select hosts by (GPU models and counts, passthrough-ready devices, vGPUs and mdevs in use,
    pending reboot, blockers), so that AWX fact caching and smart inventories can filter on them
    without a full topology in every job event.
  - The keys are documented in the README of the C(gpuvirt.host.fleet) role.
positional: _input
options:
  _input:
    description: The C(topology) dictionary, or the registered result that holds it.
    type: dict
    required: true
  reboot_pending:
    description: A change waits for a reboot (the C(*_reboot_required) facts of the roles).
    type: bool
    default: false
  blockers:
    description: What keeps the host from being configured, one sentence each.
    type: list
    elements: str
    default: []
  pending_changes:
    description: The roles that would still change something on the host.
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: Publish the gpuvirt fact
  ansible.builtin.set_fact:
    gpuvirt: "{{ host_topology.topology | gpuvirt.host.gpuvirt_fact(reboot_pending=iommu_reboot_required) }}"
    cacheable: true
"""

RETURN = r"""
_value:
  description: The fact; see the C(gpuvirt.host.fleet) role's README for every key.
  type: dict
"""

from ansible.errors import AnsibleFilterError  # noqa: E402

from ansible_collections.gpuvirt.host.plugins.module_utils.vendor_plan import device_vgpu  # noqa: E402

FACT_VERSION = 1


def is_vfio_driver(driver):
    """vfio-pci itself or a variant VFIO driver (nvgrace_gpu_vfio_pci, mlx5_vfio_pci...)."""
    return bool(driver) and (driver == "vfio-pci" or driver.replace("-", "_").endswith("vfio_pci"))


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


class FilterModule:
    """gpuvirt.host fact filter."""

    def filters(self):
        return {"gpuvirt_fact": gpuvirt_fact}
