# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A device spec given as text: the ``gpuvirt.host.device_spec`` filter's work.

plugins/filter/device_spec.py documents the filter, and imports this module when it is first called.
"""

from __future__ import annotations

import json
import re

import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.gpuvirt.host.plugins.plugin_utils import device_blocks


def _spec_loader():
    """YAML without the YAML 1.1 base-60 numbers: an unquoted 01:00.0 or 0000:01:00.0 (a PCI address)
    or 1234:5678 (an ID pair) stays the text it is instead of becoming 60.0, 0.0 or 4445078."""

    class SpecLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            # A key given twice would silently keep the last value (passthrough: true ... passthrough: false).
            # Keys a merge (<<) brings in may be overridden, as YAML intends.
            if isinstance(node, yaml.MappingNode):
                seen = set()
                for key_node, _value_node in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                        continue
                    if key_node.value in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, "the key %s is given twice in one mapping" % key_node.value, key_node.start_mark
                        )
                    seen.add(key_node.value)
            return super().construct_mapping(node, deep=deep)

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

TYPE_NAMES = {str: "a string", bool: "true or false", dict: "a mapping", list: "a list"}
# Far more than any host's devices need; a document past it is a mistake or YAML aliases expanding
# (a "billion laughs" text, or an alias inside its own anchor), which the modules' JSON arguments would
# otherwise expand in full on the controller.
MAX_VALUES = 100000


def _fail(message):
    raise AnsibleFilterError("invalid device spec: " + message)


def _unique_keys(pairs):
    keys = [key for key, _value in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key is given twice")  # YAML then says which and where
    return dict(pairs)


def _count_values(spec):
    """The values of ``spec`` with every alias expanded, counting no further than ``MAX_VALUES``."""
    count, stack = 0, [spec]
    while stack and count <= MAX_VALUES:
        value = stack.pop()
        count += 1
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return count


def _parse(text):
    stripped = text.strip()
    if not stripped:
        return []
    try:
        if stripped[0] in "[{":
            try:
                return json.loads(stripped, object_pairs_hook=_unique_keys)
            except ValueError:
                pass  # YAML flow style is a superset; let YAML say where it breaks
            except RecursionError:
                _fail("the text nests too deeply")
        return yaml.load(stripped, Loader=SPEC_LOADER)  # noqa: S506 (a SafeLoader)
    except RecursionError:
        _fail("the text nests too deeply")
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = " at line %d, column %d" % (mark.line + 1, mark.column + 1) if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        _fail("the text is neither JSON nor YAML%s: %s" % (where, problem))


def device_spec(value):
    spec = _parse(value) if isinstance(value, str) else value
    if _count_values(spec) > MAX_VALUES:
        _fail(
            "the text holds more than %d values once its YAML aliases are expanded; a device spec needs far "
            "fewer (an alias inside its own anchor, or aliases of aliases, expand without end)" % MAX_VALUES
        )
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
        keys = device_blocks.ENTRY_KEYS
        unknown = sorted(set(entry) - set(keys))
        if unknown:
            _fail("%s: unknown key(s) %s; known: %s" % (name, ", ".join(unknown), ", ".join(sorted(keys))))
        for key, types in keys.items():
            if key in entry and entry[key] is not None and not isinstance(entry[key], types):
                _fail("%s: %s must be %s, got %r" % (name, key, TYPE_NAMES[types[0]], entry[key]))
        actions = device_blocks.ACTION_BLOCKS
        if not any(key in entry for key in actions):
            _fail("%s: says nothing to do; give %s or %s" % (name, ", ".join(actions[:-1]), actions[-1]))
    return spec
