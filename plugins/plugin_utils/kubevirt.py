# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The KubeVirt export: the ``gpuvirt.host.kubevirt_host_devices`` filter's work.

plugins/filter/kubevirt_host_devices.py documents the filter, and imports this module when it is first called.
"""

from __future__ import annotations

import re

from ansible_collections.gpuvirt.host.plugins.module_utils import vendors
from ansible_collections.gpuvirt.host.plugins.module_utils.drivers import is_vfio_driver, is_vfio_pci
from ansible_collections.gpuvirt.host.plugins.module_utils.vendor_plan import device_vgpu
from ansible_collections.gpuvirt.host.plugins.plugin_utils.exports import (
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
# A node's kubernetes.io/hostname label value: at most 63 characters, letters and digits at both ends.
# kubelet writes the node's host name, in lower case, as its kubernetes.io/hostname label: a node name with
# upper case would select no node (and its node would get no mdev types, whose mdevs virt-handler removes).
_NODE = re.compile(r"^[a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?\Z")
_HOSTNAME_LABEL = "kubernetes.io/hostname"
_GATE_HOST_DEVICES = "HostDevices"
_GATE_NO_MDEV_HANDLING = "DisableMDEVConfiguration"


def _nodes(value, spec):
    """``(multi, {node: HostView})``: one topology (``multi`` false, its node None), or a dict of node names to
    topologies (sorted by name)."""
    if _is_topology(value):
        return False, {None: HostView(value, spec.get("host"), _NAME)}
    if not isinstance(value, dict) or not value:
        raise ExportError(
            "%s expects the topology returned by gpuvirt.host.topology_info (or the registered result), or a "
            "dict of Kubernetes node names to topologies, got %s"
            % (_NAME, type(value).__name__ if not isinstance(value, dict) else "an empty dict")
        )
    if spec.get("node_selector") is not None:
        raise ExportError(
            "%s: node_selector is for a single topology; with a dict of nodes each node's entry selects its "
            "%s label (the node name)" % (_NAME, _HOSTNAME_LABEL)
        )
    views = {}
    for node, topology in sorted(value.items(), key=lambda item: str(item[0])):
        if not isinstance(node, str) or not _NODE.match(node):
            raise ExportError(
                "%s: node name %r is not the %s label kubelet gives a node (its host name in lower case: at most "
                "63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit)"
                % (_NAME, node, _HOSTNAME_LABEL)
            )
        try:
            views[node] = HostView(topology, node, _NAME)
        except ExportError as error:
            raise ExportError("%s (node %s)" % (error, node)) from None
    return True, views


def _is_topology(value):
    """A topology, or the registered result holding one, rather than a dict of nodes."""
    if not isinstance(value, dict):
        return False
    if isinstance(value.get("devices"), list):
        return True
    inner = value.get("topology")
    return isinstance(inner, dict) and isinstance(inner.get("devices"), list)


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


def _resource_name(spec, keys, default):
    """The resource name ``resource_names`` gives the first of ``keys`` it has, else ``default``."""
    names = spec.get("resource_names") or {}
    if not isinstance(names, dict):
        raise ExportError(
            "%s: resource_names must be a dict of vendor:device IDs, mdev type names or vGPU profile names to "
            "resource names, got %s" % (_NAME, type(names).__name__)
        )
    name = next((names[key] for key in keys if key and names.get(key)), default)
    if not isinstance(name, str) or not _RESOURCE.match(name) or len(name.split("/", 1)[1]) > 63:
        raise ExportError(
            "%s: resource name %r for %s is not a Kubernetes extended resource name (domain/name, name at most "
            "63 letters, digits, '-', '_', '.')" % (_NAME, name, keys[0])
        )
    return name


def _where(node, address):
    return "%s on %s" % (address, node) if node else address


def _id_of(device):
    return "%s:%s" % (device.get("vendor_id"), device.get("device_id"))


def _offered(view, address):
    """Whether KubeVirt's PCI device plugin offers ``address`` when its ID is permitted
    (discoverPermittedHostPCIDevices): on vfio-pci, or (KubeVirt 1.9) a virtual function with a vGPU type set
    on its vendor's own driver (shouldPermitNvidia skips a physical function and a VF without a type; the
    topology's vgpu key holds that type, and only NVIDIA's backend reads one)."""
    device = view.device(address)
    driver = device.get("driver")
    if is_vfio_pci(driver):
        return True
    return (bool(driver) and not is_vfio_driver(driver) and bool(device.get("physfn"))
            and view.vgpu_vf_type(address) != 0)


def _vgpu_type_names(views):
    """``{(vendor, type ID): name}`` from the types the nodes' virtual functions can take (a VF with its type
    set lists none, so its name comes from another VF, or another node)."""
    names = {}
    for view in views.values():
        for device in view.devices.values():
            vgpu = device_vgpu(device)
            for entry in (vgpu or {}).get("creatable") or []:
                if isinstance(entry.get("id"), int) and entry.get("name"):
                    names.setdefault((vgpu["vendor"], entry["id"]), str(entry["name"]))
    return names


class _Profiles:
    """What a device KubeVirt offers is: a whole device, or a VF with a vGPU type, named for messages."""

    def __init__(self, views):
        self.names = _vgpu_type_names(views)

    def of(self, view, address):
        type_id = view.vgpu_vf_type(address)
        if not type_id:
            return None
        return (device_vgpu(view.device(address)) or {}).get("vendor"), type_id

    def name(self, profile):
        if profile is None:
            return None
        return self.names.get(profile)

    def describe(self, profile):
        if profile is None:
            return "the whole device on vfio-pci"
        return "vGPU %s" % (self.names.get(profile) or "type %d" % profile[1])


# KubeVirt's PCI device plugin offers only devices on vfio-pci (discoverPermittedHostPCIDevices).
_PLAIN_VFIO = ("KubeVirt's PCI device plugin offers only devices on vfio-pci, so the node would advertise none "
               "of this resource and its VMs would stay Pending")


def _refusals(view, address):
    reasons = view.passthrough_refusals(address, plain_vfio=_PLAIN_VFIO)
    if not reasons and not _offered(view, address):
        reasons.append(
            "%s is on %s: KubeVirt's PCI device plugin offers a device off vfio-pci only when it is a virtual "
            "function with a vGPU type set on its vendor's driver"
            % (address, view.device(address).get("driver") or "no driver")
        )
    return reasons


def _node_selection(view, selectors, candidates, ready_somewhere):
    """``(ready, skipped)`` of one node of several: a selector none of whose matches is ready here is
    skipped on this node (another may offer it), and ``ready_somewhere`` collects those ready here."""
    ready, skipped = [], []
    for selector in selectors:
        matches = view.resolve(selector, candidates, "pci_devices")[1]
        refusals = {address: _refusals(view, address) for address in matches}
        for address in matches:
            if refusals[address]:
                entry = {"device": address, "reasons": refusals[address]}
                if entry not in skipped:
                    skipped.append(entry)
            elif address not in ready:
                ready.append(address)
                ready_somewhere.add(str(selector))
    return ready, skipped


def _pci_entries(views, spec, multi, profiles):
    """``(entries, skipped, notes)`` for ``pci_devices`` over every node."""
    selectors = as_list(spec.get("pci_devices"), "pci_devices")
    found, ready_by_id, named, skipped = set(), {}, set(), []
    ready_somewhere = set()
    for node, view in views.items():
        candidates = {a: view.devices.get(a, g) for a, g in view.gpus.items()}
        here = []
        for selector in selectors:
            matches = view.resolve(selector, candidates, "pci_devices")[1]
            named.update((node, address) for address in matches)
            if matches or not multi:
                here.append(selector)
                found.add(str(selector))
        if not here:
            continue
        if multi:
            ready, node_skipped = _node_selection(view, here, candidates, ready_somewhere)
        else:
            ready, node_skipped = view.select_gpus(here, "pci_devices", lambda address, v=view: _refusals(v, address))
        for address in ready:
            ready_by_id.setdefault(_id_of(view.device(address)), []).append((node, address))
        skipped.extend(dict(entry, node=node) if multi else entry for entry in node_skipped)
    missing = [selector for selector in selectors if str(selector) not in found]
    if missing:
        raise ExportError(
            "%s refuses to export: %s" % (_NAME, " | ".join(
                "pci_devices %r matches no GPU on any node (%s)" % (selector, ", ".join(views))
                for selector in missing))
        )
    unready = [selector for selector in selectors if multi and str(selector) not in ready_somewhere]
    if unready:
        raise ExportError(
            "%s refuses to export: %s" % (_NAME, " | ".join(
                "pci_devices %r matches no GPU that is ready on any node: %s" % (selector, "; ".join(
                    "%s on %s: %s" % (entry["device"], entry["node"], "; ".join(entry["reasons"]))
                    for entry in skipped))
                for selector in unready))
        )
    entries, notes, errors = [], [], []
    for selector, ready in ready_by_id.items():
        offered = [(node, address) for node, view in views.items() for address in sorted(view.devices)
                   if _id_of(view.device(address)) == selector and _offered(view, address)]
        kinds = {}
        for node, address in offered:
            kinds.setdefault(profiles.of(views[node], address), []).append(_where(node, address))
        if len(kinds) > 1:
            errors.append(_mixed_resource(selector, kinds, profiles))
            continue
        profile = profiles.of(views[ready[0][0]], ready[0][1])
        entries.append({"pciVendorSelector": selector,
                        "resourceName": _pci_resource_name(spec, selector, views, ready, profile, profiles)})
        unnamed = [_where(node, address) for node, address in offered if (node, address) not in named]
        if unnamed:
            notes.append(
                "pciVendorSelector %s also admits %s, which the spec did not name: KubeVirt's PCI device plugin "
                "offers every device of this ID on vfio-pci (or a VF with a vGPU type) under %s on every "
                "node, and cannot select by address; bind them to another driver to keep them from VMIs"
                % (selector, ", ".join(unnamed), entries[-1]["resourceName"])
            )
        if profile is not None:
            notes.append(
                "pciVendorSelector %s permits vGPU virtual functions (%s), which KubeVirt's PCI device "
                "plugin offers from KubeVirt 1.9; an older one offers only devices on vfio-pci, so the nodes "
                "would advertise none of them" % (selector, profiles.describe(profile))
            )
    if errors:
        raise ExportError("%s refuses to export: %s" % (_NAME, " | ".join(errors)))
    # KubeVirt's PCI device plugin offers every vfio-pci device with a permitted vendor:device,
    # so a model that also has a device here that is not ready would be offered too.
    for entry in skipped:
        device = views[entry.get("node")].device(entry["device"])
        if _id_of(device) in ready_by_id:
            entry["reasons"].append(
                "KubeVirt offers every vfio-pci device with this vendor:device, so keep %s off vfio-pci"
                % entry["device"]
            )
    return entries, skipped, notes


def _mixed_resource(selector, kinds, profiles):
    advice = []
    if len([profile for profile in kinds if profile is not None]) > 1:
        advice.append("give every VF of this ID the same vGPU profile on every node (vgpu_devices of the "
                      "gpuvirt.host.vgpu role)")
    if None in kinds:
        advice.append("keep the whole GPUs of this ID off vfio-pci while VFs of this ID carry vGPUs")
    return (
        "the devices KubeVirt would offer under pciVendorSelector %s are not all the same (%s): KubeVirt's PCI "
        "device plugin puts every device of this ID (on vfio-pci, or a VF with any vGPU type on its vendor's driver) "
        "into one resource on every node and cannot select by address or vGPU profile, so a VMI asking for it "
        "could get any of them; %s, or hand the others to VMs through libvirt, which selects by address"
        % (selector, "; ".join("%s - %s" % (profiles.describe(profile), ", ".join(where))
                               for profile, where in sorted(kinds.items(), key=lambda item: str(item[0]))),
           " and ".join(advice))
    )


def _pci_resource_name(spec, selector, views, ready, profile, profiles):
    devices = [views[node].device(address) for node, address in ready]
    device = devices[0]
    if profile is not None:
        name = profiles.name(profile)
        part = _resource_part(name) if name else "%s_vGPU-%d" % (
            _resource_part(device.get("device_name") or selector.replace(":", "_")), profile[1])
        return _resource_name(spec, [selector, name], "%s/%s" % (_domain(spec, device["vendor_id"]), part))
    # The pci.ids name of the first node that has one: nodes with and without a pci.ids entry name one resource.
    name = next((d["device_name"] for d in devices if d.get("device_name")), None)
    return _resource_name(spec, [selector], "%s/%s" % (
        _domain(spec, device["vendor_id"]), _resource_part(name or selector.replace(":", "_"))))


def _mdev_entries(views, spec, owner, multi):
    """``(entries, {node: type IDs})`` for ``mdev_types`` over every node."""
    selectors = as_list(spec.get("mdev_types"), "mdev_types")
    entries, type_ids, errors, found = [], {}, [], set()
    for node, view in views.items():
        ids_here = type_ids.setdefault(node, [])
        for selector in selectors:
            ids = view.type_ids(selector)
            if not ids:
                if not multi:
                    errors.append("mdev type %r is offered by no mdev parent%s" % (selector, view.where()))
                continue
            found.add(str(selector))
            for type_id in ids:
                error = _type_refusal(view, type_id, owner)
                if error:
                    errors.append(error)
                    continue
                # virt-handler matches the type's name (spaces as underscores) or, without a name, its ID.
                name = view.type_name(type_id) or type_id
                default = "%s/%s" % (_domain(spec, _parent_vendor(view, type_id)), _resource_part(name))
                entry = {"mdevNameSelector": name, "resourceName": _resource_name(spec, [name], default)}
                if entry not in entries:
                    entries.append(entry)
                if type_id not in ids_here:
                    ids_here.append(type_id)
    if multi:
        errors.extend("mdev type %r is offered by no mdev parent on any node (%s)"
                      % (selector, ", ".join(views)) for selector in selectors
                      if str(selector) not in found)
    if errors:
        raise ExportError("%s refuses to export: %s" % (_NAME, " | ".join(errors)))
    return entries, type_ids


def _type_refusal(view, type_id, owner):
    if owner == "kubevirt":
        if not sum(view.type_capacity(parent, type_id) for parent in view.parents):
            return "mdev type %s has no free capacity on any parent%s" % (type_id, view.where())
        foreign = sorted(m["uuid"] for m in view.mdevs.values() if m.get("type") == type_id and m.get("in_use_by"))
        if foreign:
            return (
                "mdevs of type %s are in use%s (%s); with mdev_owner kubevirt, virt-handler would delete mdevs "
                "of other types and take over these" % (type_id, view.where(), ", ".join(foreign))
            )
    elif not view.free_mdevs(type_id):
        return ("no free mdev of type %s exists%s: with mdev_owner gpuvirt.host create them with gpuvirt.host.mdev"
                % (type_id, view.where()))
    return None


def _parent_vendor(view, type_id):
    for address, parent in sorted(view.parents.items()):
        if any(t.get("id") == type_id for t in parent.get("types", [])):
            return view.device(address).get("vendor_id") or "virtual"
    return "virtual"


def _one_meaning(pci, mdevs):
    """Refuse a resource name two selectors share, and a selector given two resource names.

    virt-handler maps each selector to one resource name (the last wins), pools the PCI devices of every
    selector of one name, and starts one device plugin per resource name, so two mdev types, or PCI devices
    and an mdev type, of one name leave all but one unoffered."""
    by_name, errors = {}, []
    for kind, entries in (("pciVendorSelector", pci), ("mdevNameSelector", mdevs)):
        by_selector = {}
        for entry in entries:
            # virt-handler lowercases PCI selectors and writes spaces in mdev names as underscores.
            selector = entry[kind].lower() if kind == "pciVendorSelector" else entry[kind].replace(" ", "_")
            by_selector.setdefault(selector, set()).add(entry["resourceName"])
            by_name.setdefault(entry["resourceName"], set()).add("%s %s" % (kind, entry[kind]))
        errors.extend("%s %s would be given the resource names %s" % (kind, selector, ", ".join(sorted(names)))
                      for selector, names in by_selector.items() if len(names) > 1)
    errors.extend("resource name %s would stand for %s; give each its own in resource_names"
                  % (name, " and ".join(sorted(selectors))) for name, selectors in by_name.items()
                  if len(selectors) > 1)
    if errors:
        raise ExportError(
            "%s refuses to export: %s (KubeVirt gives each selector one resource name and offers each resource "
            "name through one device plugin)" % (_NAME, " | ".join(errors))
        )


def kubevirt_host_devices(topology, spec=None):
    """``spec.configuration`` keys of the KubeVirt CR for the devices and mdev types ``spec`` names, on one
    host or on every node of a dict of node names to topologies."""
    spec = spec_of(spec, _NAME, _SPEC)
    owner = spec.get("mdev_owner", "kubevirt")
    if owner not in _OWNERS:
        raise ExportError("%s: mdev_owner must be one of %s, got %r" % (_NAME, ", ".join(_OWNERS), owner))
    node_selector = spec.get("node_selector")
    if node_selector is not None and (not isinstance(node_selector, dict) or not node_selector):
        raise ExportError("%s: node_selector must be a non-empty dict of node labels" % _NAME)
    if not spec.get("pci_devices") and not spec.get("mdev_types"):
        raise ExportError("%s: the spec names no pci_devices and no mdev_types" % _NAME)
    multi, views = _nodes(topology, spec)
    profiles = _Profiles(views)
    permitted, skipped, notes = {}, [], []
    if spec.get("pci_devices"):
        permitted["pciHostDevices"], skipped, notes = _pci_entries(views, spec, multi, profiles)
    type_ids = {}
    if spec.get("mdev_types"):
        permitted["mediatedDevices"], type_ids = _mdev_entries(views, spec, owner, multi)
    _one_meaning(permitted.get("pciHostDevices", []), permitted.get("mediatedDevices", []))
    if owner == "kubevirt":
        for node, view in views.items():
            doomed = sorted(m["uuid"] for m in view.mdevs.values() if m.get("type") not in type_ids.get(node, []))
            if doomed:
                raise ExportError(
                    "%s refuses to export: %s has mdevs of types not listed in mdev_types (%s); virt-handler "
                    "deletes every mdev of a type it is not told to keep. List their types, or set mdev_owner: "
                    "gpuvirt.host so KubeVirt leaves mdevs to the collection"
                    % (_NAME, "node %s" % node if multi else "the host%s" % view.where(), ", ".join(doomed))
                )
    configuration = {"permittedHostDevices": permitted}
    listed = any(type_ids.values())
    if owner == "gpuvirt.host":
        configuration["mediatedDevicesConfiguration"] = {"enabled": False}
    elif listed and multi:
        configuration["mediatedDevicesConfiguration"] = {
            "nodeMediatedDeviceTypes": [
                {"nodeSelector": {_HOSTNAME_LABEL: node}, "mediatedDeviceTypes": ids}
                for node, ids in type_ids.items() if ids
            ]
        }
    elif listed and node_selector:
        configuration["mediatedDevicesConfiguration"] = {
            "nodeMediatedDeviceTypes": [
                {"nodeSelector": {str(k): str(v) for k, v in node_selector.items()},
                 "mediatedDeviceTypes": type_ids[None]}
            ]
        }
    elif listed:
        configuration["mediatedDevicesConfiguration"] = {"mediatedDeviceTypes": type_ids[None]}
    feature_gates = [_GATE_HOST_DEVICES] if permitted.get("pciHostDevices") else []
    if owner == "gpuvirt.host":
        feature_gates.append(_GATE_NO_MDEV_HANDLING)
        notes.insert(0, MDEV_OWNERS["kubevirt-collection"])
    elif listed:
        notes.insert(0, MDEV_OWNERS["kubevirt"])
    return {
        "configuration": configuration,
        "feature_gates": feature_gates,
        "skipped": skipped,
        "mdev_owner": owner,
        "notes": notes,
    }
