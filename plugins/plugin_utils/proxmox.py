# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Proxmox VE export: the ``gpuvirt.host.proxmox_pci_mapping`` filter's work.

plugins/filter/proxmox_pci_mapping.py documents the filter, and imports this module when it is first called.
"""

from __future__ import annotations

import re

from ansible_collections.gpuvirt.host.plugins.module_utils.vendor_plan import device_vgpu
from ansible_collections.gpuvirt.host.plugins.module_utils.vendors import backend_named
from ansible_collections.gpuvirt.host.plugins.plugin_utils.exports import (
    MDEV_OWNERS,
    ExportError,
    HostView,
    as_bool,
    as_list,
    spec_of,
)

_NAME = "proxmox_pci_mapping"
_SPEC = ("mappings", "node")
_MAPPING_KEYS = ("id", "devices", "mdev", "description")
# pve-configid: a letter, then letters, digits, '-' or '_' (PVE::JSONSchema).
# \Z, not $: $ also matches before a final newline, which would end the section early in pci.cfg.
_CONFIG_ID = re.compile(r"^[a-z][a-z0-9_-]+\Z", re.IGNORECASE)
# PVE::Mapping::PCI: description maxLength 4096. SectionConfig reads "\tdescription <value>" with its value
# trimmed and an empty one undefined (the property dropped with a warning): one line, 1 to 4096 characters,
# no blanks around it.
_DESCRIPTION = re.compile(r"^\S(?:[^\n\r]{0,4094}\S)?\Z")
# A node name is a host name label (pve-node); it goes into map property strings, where a ',' or '='
# would add a property (another path) and a newline another line.
_NODE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z", re.IGNORECASE)


def _nodes(value, spec):
    """``{node: topology}`` from one topology plus ``spec.node``, or from a dict of them."""
    if _one_host(value):
        node = spec.get("node")
        if not node:
            raise ExportError(
                "%s: give the Proxmox VE node name of this host in the spec (node: pve1), or pass a dict "
                "of node names to topologies" % _NAME
            )
        return {_node_name(node): value}
    if isinstance(value, dict) and value:
        return {_node_name(node): topology for node, topology in value.items()}
    raise ExportError("%s expects a topology_info topology or a dict of node names to topologies" % _NAME)


def _is_topology(value):
    return isinstance(value, dict) and isinstance(value.get("devices"), list)


def _one_host(value):
    """Whether ``value`` is one host's topology or registered topology_info result, not a dict of node
    names to them (whose nodes may be named ``devices`` or ``topology``)."""
    if not isinstance(value, dict):
        return False
    if _is_topology(value):
        return True
    return _is_topology(value.get("topology")) and not any(
        _is_topology(item) or _is_topology((item or {}).get("topology") if isinstance(item, dict) else None)
        for key, item in value.items() if key != "topology"
    )


def _node_name(node):
    if not isinstance(node, str) or not _NODE.match(node):
        raise ExportError(
            "%s: node name %r is not a Proxmox VE node name (its short host name: letters, digits and '-')"
            % (_NAME, node)
        )
    return node


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


# Proxmox VE binds every device of a passthrough mapping to vfio-pci when a VM starts, whatever driver it is
# on (pci_dev_bind_to_vfio), unless the VM's line names an NVIDIA vGPU type (mdev=).
_PLAIN_VFIO = ("Proxmox VE binds a passed-through device to vfio-pci itself when the VM starts, which leaves "
               "the variant driver and what it adds; pass it to a VM with libvirt or QEMU directly")


# Proxmox VE resets and sets the vGPU type of a VF when it starts a VM on it: a VF whose type the collection
# set (and its boot restore sets again) is the collection's, and Proxmox VE would take it over.
_TAKEN_OVER = "Proxmox VE resets and sets the type of a VF itself when it starts a VM on it, and would take it over"


def _proxmox_vgpu(view, address):
    """``(the VF's vgpu value, its vendor's backend when Proxmox VE sets that vendor's vGPU types)``; ``(None,
    None)`` when it has none."""
    vgpu = device_vgpu(view.device(address))
    if vgpu is None:
        return None, None
    backend = backend_named(vgpu["vendor"])
    return vgpu, backend if backend is not None and backend.proxmox_sets_vgpu_types else None


def _removal(backend):
    return "; to hand it to Proxmox VE, %s" % backend.vgpu_removal_advice if backend.vgpu_removal_advice else ""


def _passthrough_refusals(view, address):
    # A vGPU VF stays on its vendor's driver: passthrough_refusals leaves it to this reason.
    reasons = view.passthrough_refusals(address, plain_vfio=_PLAIN_VFIO)
    vgpu, backend = _proxmox_vgpu(view, address)
    if vgpu is not None and vgpu["current"]:
        reasons.append(
            "%s is a vGPU virtual function (vGPU type %d is set on it): Proxmox VE would take it from %s and pass "
            "a bare VF; %s" % (
                address, vgpu["current"], view.device(address).get("driver") or "its driver",
                "map it with mdev: true once its type is off%s" % _removal(backend) if backend is not None
                else "Proxmox VE does not set %s vGPU types: pass it to a VM with libvirt or QEMU directly"
                % (vgpu["vendor"] or "its vendor's"))
        )
    return reasons


def _passthrough_entries(view, node, selectors):
    ready, skipped = view.select_gpus(selectors, "device", lambda address: _passthrough_refusals(view, address))
    entries = []
    for address in ready:
        companions = view.companions(address)
        slot = address.rsplit(".", 1)[0]
        functions = {other for other in view.devices if other.rsplit(".", 1)[0] == slot}
        # The whole slot only when its functions are exactly the GPU and its companions: Proxmox VE hands a
        # VM every function a path without function matches, and takes each from its host driver.
        whole = bool(companions) and address.endswith(".0") and functions == {address, *companions}
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
    vgpu, backend = _proxmox_vgpu(view, address)
    if vgpu is not None:
        if backend is None:
            reasons.append("%s takes %s vGPU types, which Proxmox VE does not set; pass it to a VM with libvirt or "
                           "QEMU directly" % (address, vgpu["vendor"] or "its vendor's"))
        elif vgpu["current"] is None:
            reasons.append("%s: which vGPU type is set on it cannot be read (see the topology's findings)" % address)
        elif vgpu["current"]:
            reasons.append("%s already has vGPU type %d set, which the collection manages: %s%s"
                           % (address, vgpu["current"], _TAKEN_OVER, _removal(backend)))
        elif vgpu["creatable"] is None:
            reasons.append("%s: which vGPU types it can take cannot be read (see the topology's findings)" % address)
        elif not vgpu["creatable"]:
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
            raise ExportError(
                "%s: the description of %s must be one line of 1 to 4096 characters with no blanks around it (Proxmox "
                "VE drops an empty one)" % (_NAME, mapping_id)
            )
        if not mapping.get("devices"):
            raise ExportError("%s: mapping %s names no devices; give its devices (addresses, IDs or names)"
                              % (_NAME, mapping_id))
        mdev = as_bool(mapping.get("mdev"), "%s: mdev of %s" % (_NAME, mapping_id))
        entries = []
        for node, node_topology in sorted(nodes.items()):
            view = HostView(node_topology, node, _NAME)
            if mdev:
                node_entries, node_skipped = _mdev_entries(view, node, mapping.get("devices"))
            else:
                node_entries, node_skipped = _passthrough_entries(view, node, mapping.get("devices"))
            entries.extend(node_entries)
            skipped.extend(dict(s, node=node, mapping=mapping_id) for s in node_skipped)
        if not entries:
            raise ExportError("%s: mapping %s maps no device on any node, and Proxmox VE requires a map entry"
                              % (_NAME, mapping_id))
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
