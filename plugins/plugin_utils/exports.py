# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the export filters share: one view of a host's topology and one readiness rule.

Public API:

- :class:`ExportError` -- an export that cannot be made; the message lists every reason.
- :class:`HostView` ``(topology, host=None)`` -- the ``topology`` of ``gpuvirt.host.topology_info``
  (or the whole registered result) indexed by address, parent and UUID, with:

  - :meth:`HostView.select_gpus` ``(selectors, what)`` -> ``(ready, skipped)``: GPUs named by
    selectors (PCI address, ``vendor:device`` or model name, the collection's selector grammar),
    ready for passthrough; ``skipped`` holds ``{"device", "reasons"}`` for GPUs an ID or a name
    matched that are not ready. A device named by address that is not ready, or a selector that
    finds nothing ready, raises :class:`ExportError`.
  - :meth:`HostView.passthrough_refusals` ``(address)`` -> reasons against passing it through now.
  - :meth:`HostView.type_capacity` ``(parent, type_id)`` -> instances the consumer may still use
    (free instances plus existing, unused mdevs of that type).
- :func:`as_bool` ``(value, what, default=False)`` -- a boolean option, strings such as ``"false"`` read
  as Ansible reads them; anything else raises :class:`ExportError`.
- :data:`MDEV_OWNERS`: who creates and removes mediated devices, per consumer, and why.

Readiness, the same for every consumer: the IOMMU is on, the device's group holds nothing but its
own functions and bridges, it is not the boot display, no host-critical device is in the group, no
process holds it, and the device and its companion functions are bound to a VFIO driver (vfio-pci or
a variant driver). A virtual function with a vGPU type set through its vendor's own interface (the
topology's ``vgpu`` key: NVIDIA's ``nvidia/current_vgpu_type``) is ready without VFIO (the vendor's
driver exports it as a VFIO device itself).
"""

from __future__ import annotations

from types import SimpleNamespace

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.gpuvirt.host.plugins.module_utils.drivers import is_vfio_driver, is_vfio_pci
from ansible_collections.gpuvirt.host.plugins.module_utils.selector import (
    SelectorError,
    match_selector,
    parse_selector,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.vendor_plan import device_vgpu

COLLECTION = "gpuvirt.host"

MDEV_OWNERS = {
    "libvirt": (
        "gpuvirt.host: libvirt attaches mediated devices that exist and never creates them, so "
        "gpuvirt.host.mdev (vgpu role) creates and keeps them; this export names existing mdevs by UUID"
    ),
    "proxmox": (
        "proxmox: Proxmox VE creates the mdev (or sets the vGPU type of a VF) when a VM starts "
        "and removes it when the VM stops; the collection only prepares the parents and VFs, and must "
        "not pre-create mdevs or pre-set vGPU types on these devices"
    ),
    "kubevirt": (
        "kubevirt: virt-handler creates the mediatedDeviceTypes listed here and deletes every other "
        "mdev on the node, so the collection only prepares parents and VFs and creates no mdevs"
    ),
    "kubevirt-collection": (
        "gpuvirt.host: the collection creates the mdevs and virt-handler neither creates nor deletes any - "
        "mediatedDevicesConfiguration.enabled is false (read from KubeVirt 1.8) and feature_gates holds "
        "DisableMDEVConfiguration (KubeVirt before 1.8 drops the enabled field and needs the gate; 1.8 and "
        "later still honour it, deprecated), to add to developerConfiguration.featureGates"
    ),
    "nova": (
        "nova: nova-compute creates the mdevs of enabled_mdev_types on the listed parents when an "
        "instance needs one (reusing unassigned ones), so the collection only prepares parents and VFs"
    ),
}


class ExportError(AnsibleFilterError):
    """An export that cannot be made."""


def _get(mapping, key, default=None):
    if isinstance(mapping, dict):
        value = mapping.get(key)
        return default if value is None else value
    return default


def topology_of(value, filter_name):
    """The topology dict from a ``topology`` dict or the registered ``topology_info`` result."""
    if isinstance(value, dict) and "topology" in value and "devices" not in value:
        value = value["topology"]
    if not isinstance(value, dict) or "devices" not in value:
        raise ExportError(
            "%s expects the topology returned by gpuvirt.host.topology_info (or the registered result), "
            "got %s"
            % (filter_name, type(value).__name__ if not isinstance(value, dict) else "a dict without 'devices'")
        )
    return value


def spec_of(spec, filter_name, allowed):
    """``spec`` as a dict, refusing keys the filter does not know (a typo must not pass silently)."""
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise ExportError("%s: the spec must be a dict, got %s" % (filter_name, type(spec).__name__))
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ExportError(
            "%s: unknown spec keys %s; known keys: %s" % (filter_name, ", ".join(unknown), ", ".join(sorted(allowed)))
        )
    return spec


def as_list(value, what):
    if value is None:
        return []
    if isinstance(value, (str, int)):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ExportError("%s must be a list, got %s" % (what, type(value).__name__))


def as_bool(value, what, default=False):
    """``value`` as a boolean, reading the strings Ansible reads as booleans (``"false"``, ``"no"``,
    ``"off"``, ``"0"``...) as such: a non-empty string must not count as true."""
    if value is None:
        return default
    try:
        return boolean(value, strict=True)
    except TypeError:
        raise ExportError("%s must be true or false, got %r" % (what, value)) from None


class HostView:
    """A host's topology indexed for the exports."""

    def __init__(self, topology, host=None, filter_name="export"):
        self.topology = topology_of(topology, filter_name)
        self.host = host
        self.filter_name = filter_name
        self.devices = {d["address"]: d for d in _get(self.topology, "devices", []) if _get(d, "address")}
        self.gpus = {g["address"]: g for g in _get(self.topology, "gpus", []) if _get(g, "address")}
        self.parents = {p["parent"]: p for p in _get(self.topology, "mdev_parents", []) if _get(p, "parent")}
        self.mdevs = {m["uuid"]: m for m in _get(self.topology, "mdevs", []) if _get(m, "uuid")}
        self.iommu_enabled = bool(_get(_get(self.topology, "iommu", {}), "enabled", False))

    def where(self):
        return " on %s" % self.host if self.host else ""

    def device(self, address):
        return self.devices.get(address, {})

    def companions(self, address):
        verdict = _get(self.gpus.get(address, {}), "passthrough", {})
        return [a for a in _get(verdict, "devices", [address]) if a != address]

    def vgpu_vf_type(self, address):
        """The vGPU type ID set on a VF through its vendor's own interface (the device's ``vgpu``), 0 when none
        (or unreadable)."""
        vgpu = device_vgpu(self.device(address))
        return (vgpu["current"] or 0) if vgpu is not None else 0

    def passthrough_refusals(self, address, allow_vgpu_vf=True, need_vfio=True, plain_vfio=None):
        """Reasons against handing ``address`` (a GPU) and its companion functions to a VM now.

        ``plain_vfio``: a consumer that takes devices on vfio-pci only (its name): a device on a variant
        VFIO driver is refused, with why (the consumer never offers it, or rebinds it to vfio-pci)."""
        gpu = self.gpus.get(address)
        if gpu is None:
            return ["%s is not a GPU of this host%s" % (address, self.where())]
        verdict = _get(gpu, "passthrough", {})
        reasons = list(_get(verdict, "reasons", []))
        if not reasons and not _get(verdict, "viable", False):
            reasons.append("%s is not viable for passthrough (%s)" % (address, ", ".join(_get(verdict, "codes", []))))
        if need_vfio:
            vgpu_vf = allow_vgpu_vf and self.vgpu_vf_type(address) != 0
            for member in [address] + self.companions(address):
                driver = _get(self.device(member), "driver")
                if vgpu_vf and member == address:
                    continue
                if not is_vfio_driver(driver):
                    reasons.append(
                        "%s is bound to %s, not to vfio-pci: bind it%s with gpuvirt.host.vfio_pci (the vfio role)"
                        % (member, driver or "no driver", " and its companion functions" if member == address else "")
                    )
                elif plain_vfio and not is_vfio_pci(driver):
                    reasons.append("%s is bound to the variant VFIO driver %s: %s" % (member, driver, plain_vfio))
        for member in [address] + self.companions(address):
            for user in _get(self.device(member), "in_use_by", []):
                text = "%s is in use by process %s (%s)" % (member, _get(user, "pid", "?"), _get(user, "comm", "?"))
                if text not in reasons and not any("holds the VFIO device" in r for r in reasons):
                    reasons.append(text)
        return reasons

    def resolve(self, selector, candidates, what):
        """Addresses among ``candidates`` (``{address: record}``) that a selector names."""
        try:
            parsed = parse_selector(str(selector))
            return parsed, match_selector(parsed, {a: _as_device(r) for a, r in candidates.items()})
        except SelectorError as error:
            raise ExportError("%s: %s: %s" % (self.filter_name, what, error)) from error

    def select_gpus(self, selectors, what, refusals=None):
        """GPUs named by ``selectors`` and ready, with the ones skipped and why.

        ``refusals(address) -> [reasons]`` replaces :meth:`passthrough_refusals`.
        """
        refusals = refusals or self.passthrough_refusals
        candidates = {a: self.devices.get(a, g) for a, g in self.gpus.items()}
        ready, skipped, errors = [], [], []
        for selector in as_list(selectors, what):
            parsed, matches = self.resolve(selector, candidates, what)
            if not matches:
                errors.append("%s %r matches no GPU%s" % (what, selector, self.where()))
                continue
            found_ready = False
            for address in matches:
                reasons = refusals(address)
                if reasons:
                    if parsed.kind == "address":
                        errors.append("%s is not ready%s: %s" % (address, self.where(), "; ".join(reasons)))
                    elif not any(s["device"] == address for s in skipped):
                        skipped.append({"device": address, "reasons": reasons})
                elif address not in ready:
                    ready.append(address)
                    found_ready = True
            if not found_ready and parsed.kind != "address":
                errors.append(
                    "%s %r matches no GPU that is ready%s: %s"
                    % (
                        what,
                        selector,
                        self.where(),
                        "; ".join(
                            "%s: %s" % (s["device"], "; ".join(s["reasons"])) for s in skipped if s["device"] in matches
                        ),
                    )
                )
        if errors:
            raise ExportError("%s refuses to export: %s" % (self.filter_name, " | ".join(errors)))
        return ready, skipped

    def free_mdevs(self, type_id=None, parent=None):
        """Existing mdevs no process holds, optionally of one type or parent, by UUID."""
        return [
            uuid
            for uuid, mdev in sorted(self.mdevs.items())
            if not _get(mdev, "in_use_by", [])
            and (type_id is None or mdev.get("type") == type_id)
            and (parent is None or mdev.get("parent") == parent)
        ]

    def mdev_type(self, parent, type_id):
        for entry in _get(self.parents.get(parent, {}), "types", []):
            if entry.get("id") == type_id:
                return entry
        return None

    def type_capacity(self, parent, type_id):
        entry = self.mdev_type(parent, type_id)
        if entry is None:
            return 0
        return int(_get(entry, "available_instances", 0) or 0) + len(self.free_mdevs(type_id, parent))

    def type_ids(self, selector):
        """mdev type IDs a selector names: a type ID, or a type's ``name`` (case and blanks ignored)."""
        wanted = " ".join(str(selector).split()).casefold()
        ids = set()
        for parent in self.parents.values():
            for entry in _get(parent, "types", []):
                names = {str(entry.get("id", "")).casefold(), " ".join(str(_get(entry, "name", "")).split()).casefold()}
                if wanted in names:
                    ids.add(entry["id"])
        return sorted(ids)

    def type_name(self, type_id):
        for parent in self.parents.values():
            for entry in _get(parent, "types", []):
                if entry.get("id") == type_id and _get(entry, "name"):
                    return entry["name"]
        return None


def _as_device(record):
    """A device record as the attribute object the selector grammar reads."""
    return SimpleNamespace(
        address=record.get("address"),
        vendor_id=record.get("vendor_id"),
        device_id=record.get("device_id"),
        vendor_name=record.get("vendor_name"),
        device_name=record.get("device_name") or record.get("name"),
        class_name=record.get("class_name"),
        driver=record.get("driver"),
    )
