# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter ``iommu_kernel_arguments``: the kernel arguments that turn an IOMMU on."""

from __future__ import annotations

DOCUMENTATION = r"""
name: iommu_kernel_arguments
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
short_description: The kernel arguments that turn an IOMMU on, as the iommu role sets them
description:
  - Takes an IOMMU vendor (V(intel), V(amd) or V(arm), as M(gpuvirt.host.topology_info) reports it) and
    returns the arguments the C(gpuvirt.host.iommu) role puts on the kernel command line
    (C(present)) and takes off it (C(absent)) for it, in the form M(gpuvirt.host.kernel_cmdline) and the
    C(kernel_arguments) option of M(gpuvirt.host.topology_info) take.
  - V(intel) needs C(intel_iommu=on); V(amd) only needs C(amd_iommu=off) gone (the AMD IOMMU is on whenever the
    firmware describes it); V(arm) needs none, and takes the x86-only keys off. C(iommu=off) goes unless in
    passthrough mode, which adds C(iommu=pt) (C(iommu.passthrough=1) on Arm).
  - Any other vendor (none, unknown) gives empty lists.
positional: _input, passthrough_mode
options:
  _input:
    description: The IOMMU vendor.
    type: str
    required: true
  passthrough_mode:
    description: Whether the IOMMU is to be in passthrough mode for the host's own devices.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Preview every IOMMU's arguments in the topology read
  gpuvirt.host.topology_info:
    kernel_arguments: "{{ ['intel', 'amd', 'arm'] | map('gpuvirt.host.iommu_kernel_arguments') | list }}"
  register: host
"""

RETURN = r"""
_value:
  description: The arguments, as C(present) and C(absent) lists.
  type: dict
  contains:
    present:
      description: The arguments to put on the command line.
      type: list
      elements: str
    absent:
      description: The arguments (or keys) to take off it.
      type: list
      elements: str
"""


def iommu_kernel_arguments(vendor, passthrough_mode=False):
    """``{"present": [...], "absent": [...]}`` for the IOMMU of ``vendor``."""
    # Imported when called: to find any of the collection's filters, Ansible loads every file of
    # plugins/filter, compiled from source, in the worker process of each task that uses one.
    from ansible.module_utils.parsing.convert_bool import boolean

    from ansible_collections.gpuvirt.host.plugins.module_utils.iommu_arguments import kernel_arguments_for

    present, absent = kernel_arguments_for(vendor, boolean(passthrough_mode, strict=False))
    return {"present": present, "absent": absent}


class FilterModule:
    """gpuvirt.host IOMMU arguments filter."""

    def filters(self):
        return {"iommu_kernel_arguments": iommu_kernel_arguments}
