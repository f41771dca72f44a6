# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Device selectors, the same in every module: a PCI address, a ``vendor:device`` ID or a model name.

Public API:

- :class:`Selector` -- ``text`` (as given), ``kind`` (``address``, ``id`` or ``name``), ``value``
  (the full address, the lowercase ``vendor:device`` pair, or the folded name).
- :func:`parse_selector` ``(text) -> Selector``; raises :class:`SelectorError` for an empty text or
  an index (indexes change between boots and driver versions).
- :func:`match_selector` ``(selector, devices) -> list[str]``: the addresses, in address order, of
  the devices (``{address: PciDevice}``, named from ``pci.ids``) that the selector names; raises
  :class:`SelectorError` when a name fits two different models.
- :func:`select_devices` ``(text, devices, what, reason=None) -> list[str]``: the one selector
  wrapper every module uses: the addresses a selector names among the devices it may name here
  (``reason(device)`` says why a device may not be named, None when it may), with the errors worded
  once: no such address, an address naming a device that may not be named (and why), a name or ID
  matching nothing it may name (listing what it may name), a name matching two models.
- :func:`describe` ``(device) -> str``: ``0000:01:00.0 [10de:1e04] NVIDIA Corporation TU102 ...``
  for a :class:`pci.PciDevice` or its record.

A name matches a device's ``pci.ids`` name, the bracketed marketing name in it (``GA102 [GeForce
RTX 3080]`` -> ``GeForce RTX 3080``) or vendor and device name together, ignoring case and repeated
blanks. A device whose name is exactly the selector wins over devices whose names only contain it,
so ``GeForce RTX 3090`` does not also pick a ``GeForce RTX 3090 Ti``. Callers choose which devices
a selector may name (all functions, physical functions, NVIDIA GPUs) by the mapping they pass, and
word their own "matches nothing" errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import normalize_address

_ID = re.compile(r"(?:0x)?([0-9a-fA-F]{4}):(?:0x)?([0-9a-fA-F]{4})\Z")
_INDEX = re.compile(r"[0-9]+\Z")
_BRACKETED = re.compile(r"\[([^\]]+)\]")
LISTED = 20  # devices named in one message at most


class SelectorError(GpuvirtError, ValueError):
    """A selector that cannot be used; ``str()`` says why and what to give instead."""


@dataclass(frozen=True)
class Selector:
    text: str
    kind: str
    value: str


def parse_selector(text):
    """Classify a selector; raise :class:`SelectorError` for an empty one or an index."""
    if not isinstance(text, str) or not text.strip():
        raise SelectorError("an empty selector was given; use a PCI address, a vendor:device ID or a model name")
    stripped = text.strip()
    if _INDEX.match(stripped):
        raise SelectorError(
            "selector %r looks like an index; indexes change between boots and driver versions, so "
            "select by PCI address (0000:01:00.0), vendor:device ID (10de:2236) or model name instead" % text
        )
    address = normalize_address(stripped)
    if address is not None:
        return Selector(text, "address", address)
    match = _ID.match(stripped)
    if match:
        return Selector(text, "id", "%s:%s" % (match.group(1).lower(), match.group(2).lower()))
    return Selector(text, "name", _fold(stripped))


def match_selector(selector, devices):
    """The addresses among ``devices`` that ``selector`` (a :class:`Selector`) names, sorted."""
    if selector.kind == "address":
        return [selector.value] if selector.value in devices else []
    if selector.kind == "id":
        return sorted(a for a, d in devices.items() if "%s:%s" % (d.vendor_id, d.device_id) == selector.value)
    exact = [a for a, d in devices.items() if selector.value in _names(d)]
    matches = sorted(exact or (a for a, d in devices.items() if any(selector.value in name for name in _names(d))))
    models = {(devices[a].vendor_id, devices[a].device_id) for a in matches}
    if len(models) > 1:
        raise SelectorError(
            "the name %r matches %d different models: %s; use a more precise name, the vendor:device ID "
            "or the PCI address" % (selector.text, len(models), ", ".join(describe(devices[a]) for a in matches))
        )
    return matches


def select_devices(text, devices, what, reason=None):
    """The addresses of the devices ``text`` names, in address order; raises :class:`SelectorError`.

    ``devices``: every device of the host (``{address: PciDevice}``, named from ``pci.ids``).
    ``what``: the noun for the devices the caller takes (``"SR-IOV physical function"``).
    ``reason(device)``: why ``device`` may not be named here (``"is a virtual function of ..."``), or
    None when it may; without it every device may be named.
    """
    selector = parse_selector(text)
    reason = reason or (lambda _device: None)
    eligible = {a: d for a, d in devices.items() if reason(d) is None}
    if selector.kind == "address":
        device = devices.get(selector.value)
        if device is None:
            raise SelectorError(
                "selector %r: no PCI device %s on this host; list the host's devices with "
                "gpuvirt.host.topology_info" % (text, selector.value)
            )
        if selector.value not in eligible:
            raise SelectorError("selector %r: %s %s" % (text, describe(device), reason(device)))
        return [selector.value]
    hits = match_selector(selector, eligible)
    if hits:
        return hits
    others = match_selector(selector, devices)
    if others:
        why = ["%s, which %s" % (address, reason(devices[address])) for address in others]
        raise SelectorError("selector %r matches %s" % (text, _listing(why, "; ")))
    hint = ""
    if selector.kind == "name" and not any(d.device_name for d in devices.values()):
        hint = " (this host has no pci.ids database, so devices have no names; select by address or vendor:device)"
    known = _listing([describe(eligible[a]) for a in sorted(eligible)], ", ") or "none"
    raise SelectorError(
        "selector %r matches no %s on this host (not a PCI address, vendor:device ID or model name of one)%s; "
        "the %ss here: %s" % (text, what, hint, what, known)
    )


def _listing(items, separator, limit=LISTED):
    """``items`` joined, the first ``limit`` only, then how many more (messages stay readable)."""
    text = separator.join(items[:limit])
    if len(items) > limit:
        text += " and %d more" % (len(items) - limit)
    return text


def describe(device):
    """``0000:01:00.0 [1002:5046] ATI Rage 128 (driver amdgpu)`` for messages.

    ``device``: a :class:`pci.PciDevice` or its ``to_dict()`` record."""
    field = device.get if isinstance(device, dict) else lambda key: getattr(device, key)
    name = field("device_name")
    if name and field("vendor_name"):
        name = "%s %s" % (field("vendor_name"), name)
    text = "%s [%s:%s]" % (field("address"), field("vendor_id"), field("device_id"))
    if name:
        text += " " + name
    elif field("class_name"):
        text += " " + field("class_name")
    text += " (driver %s)" % field("driver") if field("driver") else " (no driver)"
    return text


def _fold(text):
    return " ".join(text.split()).casefold()


def _names(device):
    """The spellings a user may give for a device (folded)."""
    device_name = device.device_name
    if not device_name:
        return []
    names = [device_name] + _BRACKETED.findall(device_name)
    if device.vendor_name:
        names.append("%s %s" % (device.vendor_name, device_name))
    return [_fold(name) for name in names]
