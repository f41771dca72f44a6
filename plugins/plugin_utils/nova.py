# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The OpenStack Nova export: the ``gpuvirt.host.nova_pci_config`` filter's work.

plugins/filter/nova_pci_config.py documents the filter, and imports this module when it is first called.
"""

from __future__ import annotations

import json
import re

from ansible_collections.gpuvirt.host.plugins.plugin_utils.exports import (
    MDEV_OWNERS,
    ExportError,
    HostView,
    as_list,
    spec_of,
)

_NAME = "nova_pci_config"
_SPEC = ("aliases", "mdev_types", "host")
_ALIAS_KEYS = ("name", "devices", "numa_policy", "device_type", "count")
_MDEV_KEYS = ("type", "mdev_class", "max_instances")
_NUMA_POLICIES = ("required", "legacy", "preferred", "socket")
_DEVICE_TYPES = ("type-PCI", "type-PF", "type-VF")
# \Z, not $: $ also matches before a final newline, which would reach nova.conf and the flavor.
_MDEV_CLASS = re.compile(r"^(VGPU|CUSTOM_[A-Z0-9_]+)\Z")
# Nova's alias schema caps the name at 256 characters; oslo.config reads $ in any value as a reference to
# another option (nova.conf fails to load with NoSuchOptError).
_ALIAS_NAME = re.compile(r"^[^\s:,$]{1,256}\Z")
# nova/pci/devspec.py: MAX_DOMAIN = 0xFFFF; a device_spec address in a higher domain is refused.
_MAX_DOMAIN = 0xFFFF


def _json(value):
    return json.dumps(value, sort_keys=False, separators=(", ", ": "))


def _device_type(view, address):
    device = view.device(address)
    if device.get("physfn"):
        return "type-VF"
    if (device.get("sriov") or {}).get("total_vfs"):
        return "type-PF"
    return "type-PCI"


def _alias(view, alias, device_specs, seen_addresses):
    unknown = sorted(set(alias) - set(_ALIAS_KEYS))
    if unknown:
        raise ExportError("%s: unknown alias keys %s; known: %s" % (_NAME, ", ".join(unknown), ", ".join(_ALIAS_KEYS)))
    name = str(alias.get("name") or "")
    if not _ALIAS_NAME.match(name):
        raise ExportError(
            "%s: alias name %r must be 1 to 256 characters without blanks, ':', ',' or '$' (nova.conf reads $ as a "
            "reference to another option)" % (_NAME, name)
        )
    if not alias.get("devices"):
        raise ExportError("%s: alias %s names no devices; give its devices (addresses, IDs or names)" % (_NAME, name))
    policy = alias.get("numa_policy")
    if policy is not None and policy not in _NUMA_POLICIES:
        raise ExportError("%s: numa_policy of %s must be one of %s" % (_NAME, name, ", ".join(_NUMA_POLICIES)))
    wanted_type = alias.get("device_type")
    if wanted_type is not None and wanted_type not in _DEVICE_TYPES:
        raise ExportError("%s: device_type of %s must be one of %s" % (_NAME, name, ", ".join(_DEVICE_TYPES)))

    def refusals(address):
        reasons = view.passthrough_refusals(address, allow_vgpu_vf=False)
        numa = view.device(address).get("numa_node")
        if policy in ("required", "socket") and (numa is None or numa < 0):
            reasons.append(
                "%s has no NUMA node (numa_node %s), and numa_policy %s never matches such a device for a NUMA "
                "guest; use preferred or legacy" % (address, numa, policy)
            )
        return reasons

    ready, skipped = view.select_gpus(alias.get("devices"), "devices of alias %s" % name, refusals)
    models = sorted({"%s:%s" % (view.device(a)["vendor_id"], view.device(a)["device_id"]) for a in ready})
    types = sorted({_device_type(view, a) for a in ready})
    if len(models) > 1 or len(types) > 1:
        raise ExportError(
            "%s: alias %s names %s; an alias requests one vendor:device of one device type, so give one alias per model"
            % (_NAME, name, ", ".join(models + types))
        )
    device_type = wanted_type or types[0]
    if device_type != types[0]:
        raise ExportError("%s: alias %s asks for %s but its devices are %s" % (_NAME, name, device_type, types[0]))
    vendor_id, product_id = models[0].split(":")
    for address in ready:
        if int(address.split(":", 1)[0], 16) > _MAX_DOMAIN:
            raise ExportError(
                "%s: %s is in PCI domain %s, above the ffff that Nova's device_spec takes (nova/pci/devspec.py)"
                % (_NAME, address, address.split(":", 1)[0])
            )
        if address in seen_addresses:
            raise ExportError(
                "%s: %s is named by two aliases (%s and %s)" % (_NAME, address, seen_addresses[address], name)
            )
        seen_addresses[address] = name
        device_specs.append({"vendor_id": vendor_id, "product_id": product_id, "address": address})
    entry = {"name": name, "vendor_id": vendor_id, "product_id": product_id, "device_type": device_type}
    if policy is not None:
        entry["numa_policy"] = policy
    count = alias.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ExportError("%s: count of alias %s must be a positive integer" % (_NAME, name))
    return entry, skipped, "%s:%d" % (name, count)


def _mdev_groups(view, mdev_types):
    groups, skipped, used = [], [], {}
    for item in as_list(mdev_types, "mdev_types"):
        item = item if isinstance(item, dict) else {"type": item}
        unknown = sorted(set(item) - set(_MDEV_KEYS))
        if unknown:
            raise ExportError(
                "%s: unknown mdev_types keys %s; known: %s" % (_NAME, ", ".join(unknown), ", ".join(_MDEV_KEYS))
            )
        ids = view.type_ids(item.get("type", ""))
        if len(ids) != 1:
            raise ExportError(
                "%s: mdev type %r %s%s"
                % (
                    _NAME,
                    item.get("type"),
                    "matches %s" % ", ".join(ids) if ids else "is offered by no mdev parent",
                    view.where(),
                )
            )
        type_id = ids[0]
        addresses = []
        for parent in sorted(view.parents):
            if view.mdev_type(parent, type_id) is None:
                continue
            if parent not in view.devices:
                skipped.append(
                    {"device": parent, "reasons": ["%s is not a PCI device; Nova lists PCI parents only" % parent]}
                )
            elif not view.type_capacity(parent, type_id):
                skipped.append({"device": parent, "reasons": ["%s has no free capacity for %s" % (parent, type_id)]})
            elif parent in used:
                raise ExportError(
                    "%s: %s would be listed for both %s and %s; Nova refuses an address in two types"
                    % (_NAME, parent, used[parent], type_id)
                )
            else:
                used[parent] = type_id
                addresses.append(parent)
        if not addresses:
            raise ExportError(
                "%s refuses to export: no parent of mdev type %s has free capacity%s: %s"
                % (_NAME, type_id, view.where(), "; ".join("; ".join(s["reasons"]) for s in skipped))
            )
        group = {"type": type_id, "device_addresses": addresses}
        if item.get("mdev_class") is not None:
            if not _MDEV_CLASS.match(str(item["mdev_class"])):
                raise ExportError(
                    "%s: mdev_class %r must be VGPU or CUSTOM_ followed by A-Z, 0-9, _" % (_NAME, item["mdev_class"])
                )
            group["mdev_class"] = item["mdev_class"]
        if item.get("max_instances") is not None:
            group["max_instances"] = _max_instances(item["max_instances"], type_id)
        groups.append(group)
    return groups, skipped


def _max_instances(value, type_id):
    """A positive integer (Nova's option has a minimum of 1); a survey gives digits as text."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ExportError("%s: max_instances of %s must be a positive integer, got %r" % (_NAME, type_id, value))
    return value


def _ini(device_specs, aliases, groups):
    lines = []
    if device_specs:
        lines.append("[pci]")
        lines += ["device_spec = %s" % _json(entry) for entry in device_specs]
        lines += ["alias = %s" % _json(entry) for entry in aliases]
        lines.append("")
    if groups:
        lines += ["[devices]", "enabled_mdev_types = %s" % ", ".join(g["type"] for g in groups), ""]
        for group in groups:
            lines += ["[mdev_%s]" % group["type"], "device_addresses = %s" % ",".join(group["device_addresses"])]
            if "mdev_class" in group:
                lines.append("mdev_class = %s" % group["mdev_class"])
            if "max_instances" in group:
                lines.append("max_instances = %d" % group["max_instances"])
            lines.append("")
    return "\n".join(lines)


def nova_pci_config(topology, spec=None):
    """nova.conf options for PCI passthrough aliases and vGPU (mdev) types that ``spec`` names."""
    spec = spec_of(spec, _NAME, _SPEC)
    if not spec.get("aliases") and not spec.get("mdev_types"):
        raise ExportError("%s: the spec names no aliases and no mdev_types" % _NAME)
    view = HostView(topology, spec.get("host"), _NAME)
    device_specs, aliases, skipped, extra_specs, seen = [], [], [], {}, {}
    names = set()
    for alias in as_list(spec.get("aliases"), "aliases"):
        if not isinstance(alias, dict):
            raise ExportError("%s: each alias must be a dict with name and devices" % _NAME)
        entry, alias_skipped, request = _alias(view, alias, device_specs, seen)
        if entry["name"] in names:
            raise ExportError("%s: alias %s is given twice" % (_NAME, entry["name"]))
        names.add(entry["name"])
        same = [other["name"] for other in aliases
                if (other["vendor_id"], other["product_id"], other["device_type"])
                == (entry["vendor_id"], entry["product_id"], entry["device_type"])]
        if same:
            raise ExportError(
                "%s: aliases %s and %s both ask for %s:%s (%s); Nova matches an alias on vendor_id, product_id and "
                "device_type alone, so either would get the other's devices: give them as one alias"
                % (_NAME, same[0], entry["name"], entry["vendor_id"], entry["product_id"], entry["device_type"])
            )
        aliases.append(entry)
        skipped += alias_skipped
        extra_specs[entry["name"]] = {"pci_passthrough:alias": request}
    groups, mdev_skipped = _mdev_groups(view, spec.get("mdev_types"))
    for group in groups:
        extra_specs[group["type"]] = {"resources:%s" % group.get("mdev_class", "VGPU"): "1"}
    return {
        "ini": _ini(device_specs, aliases, groups),
        "pci": {"device_spec": [_json(e) for e in device_specs], "alias": [_json(e) for e in aliases]},
        "devices": {"enabled_mdev_types": [g["type"] for g in groups]},
        "mdev_groups": groups,
        "flavor_extra_specs": extra_specs,
        "skipped": skipped + mdev_skipped,
        "mdev_owner": "nova",
        "notes": [MDEV_OWNERS["nova"]] if groups else [],
    }
