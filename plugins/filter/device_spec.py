# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter ``device_spec``: a device spec typed as text (a survey's textarea) as the vgpu role's list."""

from __future__ import annotations

DOCUMENTATION = r"""
name: device_spec
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
short_description: Read a device spec given as YAML or JSON text, with a clear error
description:
  - Turns the text of a multi-line field (an AWX or Automation Controller survey C(textarea) gives a
    string) into the list the C(gpuvirt.host.vgpu) role takes as C(vgpu_devices), and checks its shape
    before anything runs.
  - JSON is accepted as well as YAML. A mapping with a C(vgpu_devices) key, or a single device
    mapping, is accepted too.
  - Unquoted PCI addresses and ID pairs stay text (YAML 1.1 would read C(01:00.0) as the base-60
    number 60.0).
  - Fails, naming the entry and the key, on text that does not parse, on an entry without a string
    C(selector), on unknown keys, and on values of the wrong type.
positional: _input
options:
  _input:
    description: The text, or an already parsed list (returned checked).
    type: raw
    required: true
"""

EXAMPLES = r"""
- name: Take the device spec from a survey field
  ansible.builtin.set_fact:
    vgpu_devices: "{{ vgpu_devices_text | gpuvirt.host.device_spec }}"
"""

RETURN = r"""
_value:
  description: The device spec, a list of dicts each with a C(selector).
  type: list
  elements: dict
"""

import json  # noqa: E402
import re  # noqa: E402

import yaml  # noqa: E402
from ansible.errors import AnsibleFilterError  # noqa: E402


def _spec_loader():
    """YAML without the YAML 1.1 base-60 numbers: an unquoted 01:00.0 or 0000:01:00.0 (a PCI address)
    or 1234:5678 (an ID pair) stays the text it is instead of becoming 60.0, 0.0 or 4445078."""

    class SpecLoader(yaml.SafeLoader):
        pass

    numbers = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    SpecLoader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in numbers]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    SpecLoader.add_implicit_resolver(
        numbers[0], re.compile(r"^[-+]?(?:0|[1-9][0-9_]*|0x[0-9a-fA-F_]+)$"), list("-+0123456789")
    )
    SpecLoader.add_implicit_resolver(
        numbers[1], re.compile(r"^[-+]?(?:[0-9][0-9_]*)?\.[0-9_]*(?:[eE][-+][0-9]+)?$"), list("-+.0123456789")
    )
    return SpecLoader


SPEC_LOADER = _spec_loader()

KEYS = {
    "selector": (str,),
    "passthrough": (bool,),
    "sriov": (dict,),
    "nvidia_vgpu": (dict,),
    "mdev": (list,),
    "exclusive": (bool,),
    "mode": (dict,),
}
TYPE_NAMES = {str: "a string", bool: "true or false", dict: "a mapping", list: "a list"}


def _fail(message):
    raise AnsibleFilterError("invalid device spec: " + message)


def _parse(text):
    stripped = text.strip()
    if not stripped:
        return []
    try:
        if stripped[0] in "[{":
            try:
                return json.loads(stripped)
            except ValueError:
                pass  # YAML flow style is a superset; let YAML say where it breaks
        return yaml.load(stripped, Loader=SPEC_LOADER)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = " at line %d, column %d" % (mark.line + 1, mark.column + 1) if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        _fail("the text is neither JSON nor YAML%s: %s" % (where, problem))


def device_spec(value):
    spec = _parse(value) if isinstance(value, str) else value
    if isinstance(spec, dict):
        spec = spec.get("vgpu_devices", [spec])
    if spec is None:
        return []
    if not isinstance(spec, list):
        _fail("expected a list of devices (each a mapping with a selector), got %s" % type(spec).__name__)
    for index, entry in enumerate(spec, 1):
        if not isinstance(entry, dict):
            _fail("entry %d is %r, not a mapping with a selector" % (index, entry))
        name = "entry %d (%s)" % (index, entry.get("selector", "no selector"))
        if not isinstance(entry.get("selector"), str) or not entry["selector"].strip():
            _fail("%s: every device needs a selector: a PCI address, a vendor:device ID or a model name" % name)
        unknown = sorted(set(entry) - set(KEYS))
        if unknown:
            _fail("%s: unknown key(s) %s; known: %s" % (name, ", ".join(unknown), ", ".join(sorted(KEYS))))
        for key, types in KEYS.items():
            if key in entry and entry[key] is not None and not isinstance(entry[key], types):
                _fail("%s: %s must be %s, got %r" % (name, key, TYPE_NAMES[types[0]], entry[key]))
        if not any(key in entry for key in ("passthrough", "sriov", "nvidia_vgpu", "mdev", "mode")):
            _fail("%s: says nothing to do; give passthrough, sriov, nvidia_vgpu, mdev or mode" % name)
    return spec


class FilterModule:
    """gpuvirt.host device spec filter."""

    def filters(self):
        return {"device_spec": device_spec}
