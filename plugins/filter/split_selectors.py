# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter ``split_selectors``: the devices a ``vgpu_devices`` list splits into VFs, vGPUs or mdevs."""

from __future__ import annotations

DOCUMENTATION = r"""
name: split_selectors
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
short_description: The selectors of the devices a vgpu_devices list splits
description:
  - Takes the C(gpuvirt.host.vgpu) role's C(vgpu_devices) list and returns the selectors of its entries that
    split their device (an C(sriov) or C(nvidia_vgpu) mapping, or an C(mdev) list), in the list's order.
  - Such a device cannot also be handed whole to a VM; the C(vgpu) role refuses an entry that asks for both,
    and the C(vfio) role takes this list as C(vfio_split_devices) by default.
positional: _input
options:
  _input:
    description: The C(vgpu_devices) list.
    type: list
    elements: dict
    required: true
"""

EXAMPLES = r"""
- name: The devices split elsewhere, which vfio_pci must not bind
  ansible.builtin.set_fact:
    split: "{{ vgpu_devices | gpuvirt.host.split_selectors }}"
"""

RETURN = r"""
_value:
  description: The selectors, as the entries give them.
  type: list
  elements: str
"""

from ansible_collections.gpuvirt.host.plugins.plugin_utils.device_blocks import split_selectors  # noqa: E402


class FilterModule:
    """gpuvirt.host split_selectors filter."""

    def filters(self):
        return {"split_selectors": split_selectors}
