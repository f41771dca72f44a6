# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter ``proxmox_pci_mapping``: Proxmox VE cluster PCI resource mappings (``/etc/pve/mapping/pci.cfg``)."""

from __future__ import annotations

import re

from ansible_collections.gpuvirt.host.plugins.plugin_utils.exports import (
    MDEV_OWNERS,
    ExportError,
    HostView,
    as_list,
    spec_of,
)

_NAME = "proxmox_pci_mapping"
_SPEC = ("mappings", "node")
_MAPPING_KEYS = ("id", "devices", "mdev", "description")
# pve-configid: a letter, then letters, digits, '-' or '_' (PVE::JSONSchema).
_CONFIG_ID = re.compile(r"^[a-z][a-z0-9_-]+$", re.IGNORECASE)
_DESCRIPTION = re.compile(r"^[^\n\r]*$")


def _nodes(value, spec):
    """``{node: topology}`` from one topology plus ``spec.node``, or from a dict of them."""
    if isinstance(value, dict) and ("devices" in value or "topology" in value):
        node = spec.get("node")
        if not node:
            raise ExportError(
                "%s: give the Proxmox VE node name of this host in the spec (node: pve1), or pass a dict "
                "of node names to topologies" % _NAME
            )
        return {str(node): value}
    if isinstance(value, dict) and value:
        return {str(node): topology for node, topology in value.items()}
    raise ExportError("%s expects a topology_info topology or a dict of node names to topologies" % _NAME)


def _hex(value):
    return (value or "").lower().replace("0x", "")


def _map_entry(view, node, address, whole_slot):
    device = view.device(address)
    entry = {
        "id": "%s:%s" % (_hex(device.get("vendor_id")), _hex(device.get("device_id"))),
        "iommugroup": int(device["iommu_group"]),
        "node": node,
        # A path without a function passes every function of the slot, as Proxmox VE checks it
        # against function 0; a GPU with companion functions goes whole.
        "path": address.rsplit(".", 1)[0] if whole_slot else address,
    }
    if device.get("subsystem_vendor_id") and device.get("subsystem_device_id"):
        entry["subsystem-id"] = "%s:%s" % (_hex(device["subsystem_vendor_id"]), _hex(device["subsystem_device_id"]))
    return entry


def _property_string(entry):
    return ",".join("%s=%s" % (key, entry[key]) for key in sorted(entry))


def _passthrough_entries(view, node, selectors):
    ready, skipped = view.select_gpus(selectors, "device")
    entries = []
    for address in ready:
        companions = view.companions(address)
        whole = (
            bool(companions)
            and address.endswith(".0")
            and all(c.rsplit(".", 1)[0] == address.rsplit(".", 1)[0] for c in companions)
        )
        entries.append(_map_entry(view, node, address, whole))
    return entries, skipped


def _mdev_refusals(view, address):
    """Whether Proxmox VE can create a mediated device (or set a vGPU type) on ``address`` now."""
    device = view.device(address)
    reasons = []
    if not view.iommu_enabled:
        reasons.append("the IOMMU is not enabled")
    if device.get("iommu_group") is None:
        reasons.append("%s has no IOMMU group" % address)
    if device.get("nvidia_vgpu") is not None:
        current = view.vgpu_vf_type(address)
        if current:
            reasons.append(
                "%s already has vGPU type %d set; Proxmox VE sets the type itself when a VM starts, so leave "
                "current_vgpu_type at 0 on devices it manages" % (address, current)
            )
        elif not device["nvidia_vgpu"].get("creatable"):
            reasons.append("%s has no vGPU type it can create now (no free capacity)" % address)
        return reasons
    parent = view.parents.get(address)
    if parent is None:
        return reasons + ["%s offers no mediated device types (no mdev_supported_types)" % address]
    taken = [m for m in view.mdevs.values() if m.get("parent") == address]
    if taken:
        reasons.append(
            "%s holds mdevs that Proxmox VE did not create (%s); remove them from the collection's "
            "vgpu_devices so Proxmox VE can create its own" % (address, ", ".join(sorted(m["uuid"] for m in taken)))
        )
    if not any((entry.get("available_instances") or 0) > 0 for entry in parent.get("types", [])):
        reasons.append("%s has no free instance of any mdev type (no free capacity)" % address)
    return reasons


def _mdev_entries(view, node, selectors):
    """Map entries for mdev-capable devices: the parents themselves, or the VFs of an SR-IOV GPU."""
    entries, skipped, errors = [], [], []
    done = set()
    for selector in as_list(selectors, "devices"):
        candidates = {a: view.devices.get(a, g) for a, g in view.gpus.items()}
        parsed, matches = view.resolve(selector, candidates, "device")
        if not matches:
            errors.append("device %r matches no GPU%s" % (selector, view.where()))
            continue
        targets = []
        for address in matches:
            vfs = (view.device(address).get("sriov") or {}).get("vfs") or []
            for target in vfs if vfs and not view.parents.get(address) else [address]:
                if target not in targets:
                    targets.append(target)
        found, refused = False, []
        for target in targets:
            if target in done:
                continue
            done.add(target)
            reasons = _mdev_refusals(view, target)
            if reasons:
                refused.append({"device": target, "reasons": reasons})
            else:
                entries.append(_map_entry(view, node, target, False))
                found = True
        skipped.extend(refused)
        if not found:
            errors.append(
                "device %r%s has no device Proxmox VE can create a mediated device on: %s"
                % (
                    selector,
                    view.where(),
                    "; ".join("%s: %s" % (s["device"], "; ".join(s["reasons"])) for s in refused),
                )
            )
    if errors:
        raise ExportError("%s refuses to export: %s" % (_NAME, " | ".join(errors)))
    return entries, skipped


def proxmox_pci_mapping(topology, spec=None):
    """Cluster PCI mappings for the devices that ``spec.mappings`` names, on every node given."""
    spec = spec_of(spec, _NAME, _SPEC)
    nodes = _nodes(topology, spec)
    mappings = as_list(spec.get("mappings"), "mappings")
    if not mappings:
        raise ExportError("%s: the spec has no mappings" % _NAME)
    seen, result, skipped = set(), [], []
    for mapping in mappings:
        if not isinstance(mapping, dict):
            raise ExportError("%s: each mapping must be a dict with id and devices" % _NAME)
        unknown = sorted(set(mapping) - set(_MAPPING_KEYS))
        if unknown:
            raise ExportError(
                "%s: unknown mapping keys %s; known: %s" % (_NAME, ", ".join(unknown), ", ".join(_MAPPING_KEYS))
            )
        mapping_id = str(mapping.get("id") or "")
        if not _CONFIG_ID.match(mapping_id):
            raise ExportError(
                "%s: mapping id %r is not a Proxmox VE config ID (a letter, then letters, digits, - or _)"
                % (_NAME, mapping_id)
            )
        if mapping_id.lower() in seen:
            raise ExportError("%s: mapping id %r is given twice (IDs ignore case)" % (_NAME, mapping_id))
        seen.add(mapping_id.lower())
        description = mapping.get("description")
        if description is not None and not _DESCRIPTION.match(str(description)):
            raise ExportError("%s: the description of %s must be one line" % (_NAME, mapping_id))
        mdev = bool(mapping.get("mdev", False))
        entries = []
        for node, node_topology in sorted(nodes.items()):
            view = HostView(node_topology, node, _NAME)
            if mdev:
                node_entries, node_skipped = _mdev_entries(view, node, mapping.get("devices"))
            else:
                node_entries, node_skipped = _passthrough_entries(view, node, mapping.get("devices"))
            entries.extend(node_entries)
            skipped.extend(dict(s, node=node, mapping=mapping_id) for s in node_skipped)
        result.append({"id": mapping_id, "description": description, "mdev": mdev, "map": entries})
    return {
        "mappings": result,
        "cfg": "\n".join(_section(m) for m in result),
        "api": [_api_arguments(m) for m in result],
        "skipped": skipped,
        "mdev_owner": "proxmox",
        "notes": [MDEV_OWNERS["proxmox"]] if any(m["mdev"] for m in result) else [],
    }


def _section(mapping):
    """One SectionConfig section: the ID line, then ``map`` lines, then the other options sorted."""
    lines = [mapping["id"]]
    lines += ["\tmap %s" % _property_string(entry) for entry in mapping["map"]]
    if mapping["description"] is not None:
        lines.append("\tdescription %s" % mapping["description"])
    if mapping["mdev"]:
        lines.append("\tmdev 1")
    return "\n".join(lines) + "\n"


def _api_arguments(mapping):
    """Arguments of ``POST /cluster/mapping/pci`` (``pvesh create /cluster/mapping/pci``)."""
    arguments = {"id": mapping["id"], "map": [_property_string(entry) for entry in mapping["map"]]}
    if mapping["description"] is not None:
        arguments["description"] = mapping["description"]
    if mapping["mdev"]:
        arguments["mdev"] = 1
    return arguments


class FilterModule:
    """gpuvirt.host Proxmox VE export."""

    def filters(self):
        return {"proxmox_pci_mapping": proxmox_pci_mapping}
