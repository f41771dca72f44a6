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
    C(selector), on unknown keys, on values of the wrong type, and on an entry with none of the keys
    C(passthrough), C(sriov), C(nvidia_vgpu), C(mdev), C(mode).
  - YAML is read with a safe loader (no Python tags). A key given twice in one mapping is refused, and so
    is a text that holds more than 100000 values once its aliases are expanded.
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


def device_spec(value):
    # Imported when called: to find any of the collection's filters, Ansible loads every file of
    # plugins/filter, compiled from source, in the worker process of each task that uses one.
    from ansible_collections.gpuvirt.host.plugins.plugin_utils import device_spec

    return device_spec.device_spec(value)


class FilterModule:
    """gpuvirt.host device spec filter."""

    def filters(self):
        return {"device_spec": device_spec}
