# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The libvirt export: the ``gpuvirt.host.libvirt_hostdevs`` filter's work.

plugins/filter/libvirt_hostdevs.py documents the filter, and imports this module when it is first called.
"""

from __future__ import annotations

import re

from ansible_collections.gpuvirt.host.plugins.module_utils.mdev_info import UUID
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import PCI_ADDRESS_PATTERN
from ansible_collections.gpuvirt.host.plugins.plugin_utils.exports import (
    MDEV_OWNERS,
    ExportError,
    HostView,
    as_bool,
    as_list,
    spec_of,
)

_NAME = "libvirt_hostdevs"
_SPEC = ("devices", "mdevs", "managed", "rom_bar", "guest_bus", "display", "host")
_UUID_CHARS = set("0123456789abcdef-")
_PCI_ADDRESS = re.compile(PCI_ADDRESS_PATTERN + r"\Z", re.IGNORECASE)


def _address_parts(address):
    """The parts of a full PCI address; anything else in the topology is refused, as it would be pasted
    into the XML."""
    if not _PCI_ADDRESS.match(str(address)):
        raise ExportError("%s: %r in the topology is not a PCI address (0000:01:00.0)" % (_NAME, address))
    domain, bus, slot_function = address.split(":")
    slot, function = slot_function.split(".")
    return domain, bus, slot, function


def _uuid(uuid):
    if not UUID.match(str(uuid)):
        raise ExportError("%s: mdev %r in the topology is not a UUID" % (_NAME, uuid))
    return uuid


def _pci_hostdev(address, managed, rom_bar, guest):
    domain, bus, slot, function = _address_parts(address)
    lines = [
        "<hostdev mode='subsystem' type='pci' managed='%s'>" % ("yes" if managed else "no"),
        "  <source>",
        "    <address domain='0x%s' bus='0x%s' slot='0x%s' function='0x%s'/>" % (domain, bus, slot, function),
        "  </source>",
    ]
    if rom_bar is not None:
        lines.append("  <rom bar='%s'/>" % ("on" if rom_bar else "off"))
    if guest is not None:
        guest_bus, guest_function, multifunction = guest
        lines.append(
            "  <address type='pci' domain='0x0000' bus='0x%02x' slot='0x00' function='0x%d'%s/>"
            % (guest_bus, guest_function, " multifunction='on'" if multifunction else "")
        )
    lines.append("</hostdev>")
    return "\n".join(lines)


def _mdev_hostdev(uuid, display):
    return "\n".join(
        [
            "<hostdev mode='subsystem' type='mdev' model='vfio-pci' display='%s'>" % ("on" if display else "off"),
            "  <source>",
            "    <address uuid='%s'/>" % _uuid(uuid),
            "  </source>",
            "</hostdev>",
        ]
    )


def _mdev_refusals(view, uuid):
    mdev = view.mdevs[uuid]
    users = mdev.get("in_use_by") or []
    if users:
        return ["mdev %s is in use by process %s (%s)" % (uuid, users[0].get("pid"), users[0].get("comm"))]
    return []


def _select_mdevs(view, selectors):
    """mdev UUIDs for UUIDs or type IDs/names; a type gives every free mdev of it."""
    chosen, errors = [], []
    for selector in as_list(selectors, "mdevs"):
        text = str(selector).strip().lower()
        if set(text) <= _UUID_CHARS and len(text) == 36:
            if text not in view.mdevs:
                errors.append("mdev %s does not exist%s; create it with gpuvirt.host.mdev" % (text, view.where()))
                continue
            reasons = _mdev_refusals(view, text)
            if reasons:
                errors.append("; ".join(reasons))
            elif text not in chosen:
                chosen.append(text)
            continue
        type_ids = view.type_ids(selector)
        if not type_ids:
            errors.append("mdev type %r is offered by no mdev parent%s" % (selector, view.where()))
            continue
        free = [uuid for type_id in type_ids for uuid in view.free_mdevs(type_id)]
        if not free:
            errors.append(
                "no free mdev of type %s exists%s (%d in use): create one with gpuvirt.host.mdev"
                % (", ".join(type_ids), view.where(), sum(1 for m in view.mdevs.values() if m.get("type") in type_ids))
            )
        chosen.extend(uuid for uuid in free if uuid not in chosen)
    if errors:
        raise ExportError("%s refuses to export: %s" % (_NAME, " | ".join(errors)))
    return chosen


def libvirt_hostdevs(topology, spec=None):
    """``<hostdev>`` XML for the GPUs (with companion functions) and mdevs that ``spec`` names."""
    spec = spec_of(spec, _NAME, _SPEC)
    view = HostView(topology, spec.get("host"), _NAME)
    managed = as_bool(spec.get("managed"), "%s: managed" % _NAME)
    rom_bar = None if spec.get("rom_bar") is None else as_bool(spec["rom_bar"], "%s: rom_bar" % _NAME)
    display = as_bool(spec.get("display"), "%s: display" % _NAME)
    guest_bus = spec.get("guest_bus", 1)
    if guest_bus is not None and (
        not isinstance(guest_bus, int) or isinstance(guest_bus, bool) or not 1 <= guest_bus <= 0xFF
    ):
        raise ExportError("%s: guest_bus must be an integer from 1 to 255 or null, got %r" % (_NAME, guest_bus))
    if not spec.get("devices") and not spec.get("mdevs"):
        raise ExportError("%s: the spec names no devices and no mdevs" % _NAME)

    ready, skipped = view.select_gpus(spec.get("devices"), "device") if spec.get("devices") else ([], [])
    elements, devices = [], []
    for index, address in enumerate(ready):
        # The guest sees the functions in one slot, in host order from function 0, so a GPU and its
        # HDMI audio, USB and UCSI functions stay one multifunction device as the guest driver expects.
        functions = sorted([address] + view.companions(address))
        if guest_bus is not None and guest_bus + index > 0xFF:
            raise ExportError("%s: %d GPUs from guest bus %d run past bus 0xff" % (_NAME, len(ready), guest_bus))
        for guest_function, function_address in enumerate(functions):
            guest = None
            if guest_bus is not None:
                guest = (guest_bus + index, guest_function, len(functions) > 1 and guest_function == 0)
            elements.append(
                _pci_hostdev(function_address, managed, rom_bar if function_address == address else None, guest)
            )
        devices.append(
            {"device": address, "functions": functions, "guest_bus": None if guest_bus is None else guest_bus + index}
        )
    mdevs = _select_mdevs(view, spec.get("mdevs")) if spec.get("mdevs") else []
    for uuid in mdevs:
        elements.append(_mdev_hostdev(uuid, display))
    return {
        "xml": "\n".join(elements) + "\n",
        "hostdevs": elements,
        "devices": devices,
        "mdevs": [dict(uuid=u, parent=view.mdevs[u].get("parent"), type=view.mdevs[u].get("type")) for u in mdevs],
        "skipped": skipped,
        "mdev_owner": "gpuvirt.host",
        "notes": [MDEV_OWNERS["libvirt"]] if mdevs else [],
    }
