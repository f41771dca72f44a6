# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter ``selector_key``: a device selector in the one form the modules read it in."""

from __future__ import annotations

DOCUMENTATION = r"""
name: selector_key
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
short_description: The form a device selector is read in, to tell whether two selectors are the same
description:
  - Takes a device selector (a PCI address, a C(vendor:device) ID or a model name, as the collection's
    modules accept them) and returns it in the form the modules read it in, so that two spellings of
    one selector compare equal.
  - A PCI address in any accepted spelling (short C(01:00.0), upper case, a 4- to 8-digit domain)
    becomes C(address:0000:01:00.0); an ID pair becomes C(id:10de:2236) in lower case; a model name
    becomes C(name:) and the name in lower case with its blanks folded.
  - Two different kinds never compare equal; an ID and the address of a device with that ID are two
    keys (the host alone can tell that they name the same device).
  - Anything else (an empty text, an index, not a string) is returned as C(invalid:) and its text, for
    the module that reads it to refuse.
positional: _input
options:
  _input:
    description: The selector.
    type: raw
    required: true
"""

EXAMPLES = r"""
- name: The devices of one list that another list also names, whatever their spelling
  ansible.builtin.set_fact:
    both: "{{ first | map('gpuvirt.host.selector_key') | intersect(second | map('gpuvirt.host.selector_key')) }}"
"""

RETURN = r"""
_value:
  description: The key, C(<kind>:<value>) with kind C(address), C(id), C(name) or C(invalid).
  type: str
"""


def selector_key(selector):
    """``address:0000:01:00.0``, ``id:10de:2236``, ``name:geforce rtx 3090`` or ``invalid:<text>``."""
    # Imported when called: to find any of the collection's filters, Ansible loads every file of
    # plugins/filter, compiled from source, in the worker process of each task that uses one.
    from ansible_collections.gpuvirt.host.plugins.module_utils.selector import SelectorError, parse_selector

    try:
        parsed = parse_selector(selector)
    except SelectorError:
        return "invalid:%s" % (selector,)
    return "%s:%s" % (parsed.kind, parsed.value)


class FilterModule:
    """gpuvirt.host selector filter."""

    def filters(self):
        return {"selector_key": selector_key}
