# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter ``kubevirt_host_devices``: the KubeVirt CR's ``permittedHostDevices`` and mdev configuration."""

from __future__ import annotations

DOCUMENTATION = r"""
name: kubevirt_host_devices
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
short_description: KubeVirt permittedHostDevices and mediatedDevicesConfiguration for a host
description:
  - Takes the topology of M(gpuvirt.host.topology_info) and returns the C(spec.configuration) keys of the
    KubeVirt CR that let VMIs request the host's GPUs - C(permittedHostDevices.pciHostDevices)
    (C(pciVendorSelector), C(resourceName)), C(permittedHostDevices.mediatedDevices) (C(mdevNameSelector),
    C(resourceName)) and C(mediatedDevicesConfiguration).
  - KubeVirt's PCI device plugin offers every vfio-pci device of a permitted vendor:device, so the GPUs must
    be ready as for every export (IOMMU on, a group of their own, not the boot VGA device, not
    host-critical, not in use, bound to vfio-pci with their companion functions). A device on a variant VFIO
    driver (C(nvgrace_gpu_vfio_pci)) is refused, as the plugin never offers it.
  - "Who owns the mdevs, O(spec.mdev_owner): V(kubevirt) (default) - virt-handler creates the types in
    C(mediatedDevicesConfiguration) and deletes every mdev of any other type on the node (also when that key
    is absent), so the collection prepares only parents, VFs and drivers; the filter refuses when the host
    holds mdevs of types not listed, as virt-handler would delete them. V(gpuvirt.host) - the collection
    creates the mdevs (M(gpuvirt.host.mdev)) and the export sets C(mediatedDevicesConfiguration.enabled:
    false) (KubeVirt 1.8 or later; the C(DisableMDEVConfiguration) feature gate before) so virt-handler
    leaves them alone; the types must have free mdevs."
  - C(mdevNameSelector) is the type's C(name) (the type ID when the driver gives no name), as virt-handler
    matches it. C(resourceName) defaults to the vendor's domain and the pci.ids or type name
    (V(nvidia.com/GA102GL_A10), V(nvidia.com/NVIDIA_A10-4Q)).
positional: _input, spec
options:
  _input:
    description: The C(topology) returned by M(gpuvirt.host.topology_info), or the registered result.
    type: dict
    required: true
  spec:
    description: What to permit.
    type: dict
    required: true
    suboptions:
      pci_devices:
        description: GPUs to pass through whole, each a PCI address, a vendor:device ID or a model name.
        type: list
        elements: str
      mdev_types:
        description: mdev types, each a type ID or name.
        type: list
        elements: str
      mdev_owner:
        description: Who creates and removes the mdevs.
        type: str
        choices: [kubevirt, gpuvirt.host]
        default: kubevirt
      node_selector:
        description: Node labels; the types then go to C(nodeMediatedDeviceTypes) for those nodes.
        type: dict
      resource_names:
        description: Resource names by vendor:device or mdev type name, replacing the defaults.
        type: dict
      resource_domain:
        description:
          - Domain of the default resource names, for a vendor whose backend names none (those of NVIDIA,
            AMD and Intel name C(nvidia.com), C(amd.com) and C(intel.com)).
        type: str
      host:
        description: The host's name, used in messages.
        type: str
"""

EXAMPLES = r"""
- name: Permit the node's A10 vGPU profile, KubeVirt creating the mdevs
  ansible.builtin.set_fact:
    kubevirt_gpus: "{{ host_topology.topology | gpuvirt.host.kubevirt_host_devices(kubevirt_spec) }}"
  vars:
    kubevirt_spec:
      mdev_types: [NVIDIA A10-4Q]
      node_selector:
        kubernetes.io/hostname: "{{ inventory_hostname }}"

- name: Merge it into the KubeVirt CR
  kubernetes.core.k8s:
    state: patched
    kind: KubeVirt
    name: kubevirt
    namespace: kubevirt
    definition:
      spec:
        configuration: "{{ kubevirt_gpus.configuration }}"
"""

RETURN = r"""
_value:
  description: The CR keys and what they mean.
  type: dict
  contains:
    configuration:
      description: C(permittedHostDevices) and C(mediatedDevicesConfiguration), to merge into C(spec.configuration).
      type: dict
    feature_gates:
      description: Feature gates the configuration needs (C(HostDevices) for PCI host devices).
      type: list
      elements: str
    skipped:
      description: GPUs a selector matched that are not ready - C(device) and C(reasons).
      type: list
      elements: dict
    mdev_owner:
      description: V(kubevirt) or V(gpuvirt.host).
      type: str
    notes:
      description: Why the mdevs belong to whom, when mdev types are exported.
      type: list
      elements: str
"""

import re  # noqa: E402

from ansible_collections.gpuvirt.host.plugins.module_utils import vendors  # noqa: E402
from ansible_collections.gpuvirt.host.plugins.plugin_utils.exports import (  # noqa: E402
    MDEV_OWNERS,
    ExportError,
    HostView,
    as_list,
    spec_of,
)

_NAME = "kubevirt_host_devices"
_SPEC = ("pci_devices", "mdev_types", "mdev_owner", "node_selector", "resource_names", "resource_domain", "host")
_OWNERS = ("kubevirt", "gpuvirt.host")
_NOT_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_BRACKET = re.compile(r"\s*\[([^\]]+)\]\s*")
# A Kubernetes extended resource name: an optional DNS prefix, '/', a qualified name.
# \Z, not $: $ also matches before a final newline.
_RESOURCE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?\Z")


def _resource_part(text):
    """``GA102GL [A10]`` -> ``GA102GL_A10``; ``NVIDIA A10-4Q`` -> ``NVIDIA_A10-4Q``."""
    text = _BRACKET.sub(lambda m: "_" + m.group(1) + "_", text)
    return _NOT_NAME.sub("_", text).strip("_.-")


def _domain(spec, vendor_id):
    domain = spec.get("resource_domain") or vendors.resource_domain(vendor_id)
    if not domain:
        raise ExportError(
            "%s: no resource domain is known for vendor %s; give resource_domain (example.com) or "
            "resource_names" % (_NAME, vendor_id)
        )
    return domain


def _resource_name(spec, key, default):
    names = spec.get("resource_names") or {}
    if not isinstance(names, dict):
        raise ExportError(
            "%s: resource_names must be a dict of vendor:device IDs or mdev type names to resource names, got %s"
            % (_NAME, type(names).__name__)
        )
    name = names.get(key) or default
    if not isinstance(name, str) or not _RESOURCE.match(name) or len(name.split("/", 1)[1]) > 63:
        raise ExportError(
            "%s: resource name %r for %s is not a Kubernetes extended resource name (domain/name, name at most "
            "63 letters, digits, '-', '_', '.')" % (_NAME, name, key)
        )
    return name


# KubeVirt's PCI device plugin offers only devices whose driver is vfio-pci (discoverPermittedHostPCIDevices).
_PLAIN_VFIO = ("KubeVirt's PCI device plugin offers only devices on vfio-pci, so the node would advertise none "
               "of this resource and its VMs would stay Pending")


def _pci_entries(view, spec):
    ready, skipped = view.select_gpus(spec.get("pci_devices"), "pci_devices",
                                      lambda address: view.passthrough_refusals(address, plain_vfio=_PLAIN_VFIO))
    entries = {}
    for address in ready:
        device = view.device(address)
        selector = "%s:%s" % (device["vendor_id"], device["device_id"])
        if selector in entries:
            continue
        name = device.get("device_name") or selector.replace(":", "_")
        default = "%s/%s" % (_domain(spec, device["vendor_id"]), _resource_part(name))
        entries[selector] = {"pciVendorSelector": selector, "resourceName": _resource_name(spec, selector, default)}
    # KubeVirt's PCI device plugin offers every vfio-pci device with a permitted vendor:device,
    # so a model that also has a device here that is not ready would be offered too.
    for entry in skipped:
        device = view.device(entry["device"])
        if "%s:%s" % (device.get("vendor_id"), device.get("device_id")) in entries:
            entry["reasons"].append(
                "KubeVirt offers every vfio-pci device with this vendor:device, so keep %s off vfio-pci"
                % entry["device"]
            )
    return list(entries.values()), skipped


def _mdev_entries(view, spec, owner):
    entries, type_ids, errors = [], [], []
    for selector in as_list(spec.get("mdev_types"), "mdev_types"):
        ids = view.type_ids(selector)
        if not ids:
            errors.append("mdev type %r is offered by no mdev parent%s" % (selector, view.where()))
            continue
        for type_id in ids:
            if owner == "kubevirt":
                capacity = sum(view.type_capacity(parent, type_id) for parent in view.parents)
                if not capacity:
                    errors.append("mdev type %s has no free capacity on any parent%s" % (type_id, view.where()))
                    continue
                foreign = sorted(
                    m["uuid"] for m in view.mdevs.values() if m.get("type") == type_id and m.get("in_use_by")
                )
                if foreign:
                    errors.append(
                        "mdevs of type %s are in use (%s); with mdev_owner kubevirt, virt-handler would delete mdevs "
                        "of other types and take over these" % (type_id, ", ".join(foreign))
                    )
                    continue
            elif not view.free_mdevs(type_id):
                errors.append(
                    "no free mdev of type %s exists%s: with mdev_owner gpuvirt.host create them with gpuvirt.host.mdev"
                    % (type_id, view.where())
                )
                continue
            # virt-handler matches the type's name (spaces as underscores) or, without a name, its ID.
            name = view.type_name(type_id) or type_id
            default = "%s/%s" % (_domain(spec, _parent_vendor(view, type_id)), _resource_part(name))
            entry = {"mdevNameSelector": name, "resourceName": _resource_name(spec, name, default)}
            if entry not in entries:
                entries.append(entry)
                type_ids.append(type_id)
    if errors:
        raise ExportError("%s refuses to export: %s" % (_NAME, " | ".join(errors)))
    return entries, type_ids


def _parent_vendor(view, type_id):
    for address, parent in sorted(view.parents.items()):
        if any(t.get("id") == type_id for t in parent.get("types", [])):
            return view.device(address).get("vendor_id") or "virtual"
    return "virtual"


def kubevirt_host_devices(topology, spec=None):
    """``spec.configuration`` keys of the KubeVirt CR for the devices and mdev types ``spec`` names."""
    spec = spec_of(spec, _NAME, _SPEC)
    owner = spec.get("mdev_owner", "kubevirt")
    if owner not in _OWNERS:
        raise ExportError("%s: mdev_owner must be one of %s, got %r" % (_NAME, ", ".join(_OWNERS), owner))
    node_selector = spec.get("node_selector")
    if node_selector is not None and (not isinstance(node_selector, dict) or not node_selector):
        raise ExportError("%s: node_selector must be a non-empty dict of node labels" % _NAME)
    if not spec.get("pci_devices") and not spec.get("mdev_types"):
        raise ExportError("%s: the spec names no pci_devices and no mdev_types" % _NAME)
    view = HostView(topology, spec.get("host"), _NAME)
    permitted, skipped = {}, []
    if spec.get("pci_devices"):
        permitted["pciHostDevices"], skipped = _pci_entries(view, spec)
    type_ids = []
    if spec.get("mdev_types"):
        permitted["mediatedDevices"], type_ids = _mdev_entries(view, spec, owner)
    if owner == "kubevirt":
        doomed = sorted(m["uuid"] for m in view.mdevs.values() if m.get("type") not in type_ids)
        if doomed:
            raise ExportError(
                "%s refuses to export: %s%s has mdevs of types not listed in mdev_types (%s); virt-handler deletes "
                "every mdev of a type it is not told to keep. List their types, or set mdev_owner: gpuvirt.host so "
                "KubeVirt leaves mdevs to the collection" % (_NAME, "the host", view.where(), ", ".join(doomed))
            )
    configuration = {"permittedHostDevices": permitted}
    if owner == "gpuvirt.host":
        configuration["mediatedDevicesConfiguration"] = {"enabled": False}
    elif type_ids and node_selector:
        configuration["mediatedDevicesConfiguration"] = {
            "nodeMediatedDeviceTypes": [
                {"nodeSelector": {str(k): str(v) for k, v in node_selector.items()}, "mediatedDeviceTypes": type_ids}
            ]
        }
    elif type_ids:
        configuration["mediatedDevicesConfiguration"] = {"mediatedDeviceTypes": type_ids}
    return {
        "configuration": configuration,
        "feature_gates": ["HostDevices"] if permitted.get("pciHostDevices") else [],
        "skipped": skipped,
        "mdev_owner": "kubevirt" if owner == "kubevirt" else "gpuvirt.host",
        "notes": [MDEV_OWNERS["kubevirt" if owner == "kubevirt" else "kubevirt-collection"]] if type_ids else [],
    }


class FilterModule:
    """gpuvirt.host KubeVirt export."""

    def filters(self):
        return {"kubevirt_host_devices": kubevirt_host_devices}
