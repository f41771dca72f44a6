# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""NVIDIA vGPU readers: the per-VF ``nvidia/`` interface and legacy mdev profile names.

Public API:

- :func:`parse_creatable_vgpu_types` ``(text) -> (list[{"id": int, "name": str}], list[str])``:
  the entries of ``nvidia/creatable_vgpu_types`` and the lines that could not be parsed.
- :func:`read_nvidia_vgpu` ``(device_path, address, findings=None, display=None) -> dict | None``:
  ``{"creatable": [...], "current": int}`` for a device with an ``nvidia/`` directory, else None.
- :func:`profile_name` ``(type_name) -> str | None``: ``NVIDIA A100-4C`` -> ``A100-4C``.

Kernel 6.8+ with recent vGPU drivers has no mdev bus: each VF carries
``nvidia/creatable_vgpu_types`` (a header ``ID    : vGPU Name`` then ``1030  : NVIDIA L40S-1B``
lines, shrinking to the header alone as capacity is used) and ``nvidia/current_vgpu_type``
(``0`` when none).
"""

from __future__ import annotations

import re

from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import MISSING, read_attribute

_ENTRY = re.compile(r"\s*([0-9]+)\s*:\s*(\S.*?)\s*\Z")
_HEADER = re.compile(r"\s*ID\s*:", re.IGNORECASE)


def parse_creatable_vgpu_types(text):
    """Parse ``nvidia/creatable_vgpu_types``; returns ``(entries, bad_lines)``."""
    entries = []
    bad = []
    for line in text.splitlines():
        if not line.strip() or _HEADER.match(line):
            continue
        match = _ENTRY.match(line)
        if match is None:
            bad.append(line)
        else:
            entries.append({"id": int(match.group(1)), "name": match.group(2)})
    return entries, bad


def read_nvidia_vgpu(device_path, address, findings=None, display=None):
    """The per-VF vGPU state of one device, or None when it has no ``nvidia/`` interface.

    ``display`` is how findings name the ``nvidia/`` directory (default: its
    ``/sys/bus/pci/devices/<address>/nvidia`` path).
    """
    text, problem = read_attribute(device_path + "/nvidia/creatable_vgpu_types")
    if problem is MISSING:
        return None
    display = display or "/sys/bus/pci/devices/%s/nvidia" % address
    creatable = None
    if text is None:
        _report(findings, display + "/creatable_vgpu_types", problem, None, address)
    else:
        creatable, bad = parse_creatable_vgpu_types(text)
        if bad:
            _report(findings, display + "/creatable_vgpu_types", None, bad[0], address)
            creatable = None
    current_text, problem = read_attribute(device_path + "/nvidia/current_vgpu_type")
    current = None
    if current_text is not None and current_text.isascii() and current_text.isdigit():
        current = int(current_text)
    elif problem is not MISSING:
        _report(findings, display + "/current_vgpu_type", problem, current_text, address)
    return {"creatable": creatable, "current": current}


def _report(findings, path, problem, value, address):
    if findings is not None:
        expected = "'<id> : <vGPU name>' lines" if path.endswith("types") else "a vGPU type ID (0 for none)"
        findings.bad_attribute(path, problem, expected, address, value)


def profile_name(type_name):
    """The vGPU profile of a legacy mdev type name: its last word (``NVIDIA A100-4C`` -> ``A100-4C``)."""
    if not type_name:
        return None
    words = type_name.split()
    return words[-1] if words else None
