# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter ``nova_pci_config``: OpenStack Nova ``[pci]``, ``[devices]`` and ``[mdev_*]`` options."""

from __future__ import annotations

DOCUMENTATION = r"""
name: nova_pci_config
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
short_description: OpenStack Nova [pci], [devices] and [mdev_*] options for a host's GPUs
description:
  - Takes the topology of M(gpuvirt.host.topology_info) and returns the C(nova.conf) options of a compute
    node - C([pci] device_spec) and C(alias) for whole GPUs, C([devices] enabled_mdev_types) with one
    C([mdev_<type>]) section per type (C(device_addresses), C(mdev_class), C(max_instances)) for vGPUs -
    and the flavor extra specs that request them.
  - C(device_spec) names each GPU by vendor, product and address; C(alias) carries the C(device_type) the
    device has (C(type-PCI), C(type-PF) for an SR-IOV capable GPU, C(type-VF)) and the C(numa_policy) given.
    Companion functions stay bound to vfio-pci and unassigned, which VFIO accepts.
  - "GPUs must be ready as for every export; the filter also refuses C(numa_policy) V(required) or V(socket)
    for a device without a NUMA node (sysfs C(numa_node) -1), which Nova would never match for a NUMA guest."
  - C(device_addresses) lists the parents of a type that have free capacity; a parent offering two of the
    types is refused, as Nova refuses an address in two types.
  - "Who owns the mdevs: Nova. nova-compute creates mdevs of the enabled types on the listed parents when an
    instance needs one (reusing unassigned ones), so the collection prepares only parents, VFs and drivers."
  - Nova option names are those of Nova 24.0.0 (Xena) and later (C(device_spec) from 26.0.0, Zed;
    C(max_instances) from 29.0.0).
positional: _input, spec
options:
  _input:
    description: The C(topology) returned by M(gpuvirt.host.topology_info), or the registered result.
    type: dict
    required: true
  spec:
    description: What to configure.
    type: dict
    required: true
    suboptions:
      aliases:
        description: PCI aliases.
        type: list
        elements: dict
        suboptions:
          name:
            description:
              - Alias name, used in the flavor's C(pci_passthrough:alias). 1 to 256 characters (Nova's limit)
                without blanks, C(:), C(,) or C($) (nova.conf would read C($) as a reference to another option).
              - Two aliases of the same vendor, device and device type are refused. Nova matches an alias on those
                alone, so each would get the other's devices.
            type: str
            required: true
          devices:
            description:
              - GPUs of one model, each a PCI address, a vendor:device ID or a model name; at least one.
              - An address in a PCI domain above C(ffff) (behind Intel VMD) is refused, as Nova's C(device_spec)
                refuses it.
            type: list
            elements: str
            required: true
          numa_policy:
            description: Nova's NUMA affinity policy for the alias; omitted when not set (Nova's default, V(legacy)).
            type: str
            choices: [required, legacy, preferred, socket]
          device_type:
            description: The device type; the one the devices have when not set.
            type: str
            choices: [type-PCI, type-PF, type-VF]
          count:
            description: Devices per instance in the flavor extra spec.
            type: int
            default: 1
      mdev_types:
        description:
          - vGPU types, each a type ID or name, or a dict with C(type), C(mdev_class) (V(VGPU) or
            V(CUSTOM_...)) and C(max_instances).
        type: list
        elements: raw
      host:
        description: The host's name, used in messages.
        type: str
"""

EXAMPLES = r"""
- name: Write the GPU options of nova.conf
  ansible.builtin.copy:
    content: "{{ (host_topology.topology | gpuvirt.host.nova_pci_config(nova_gpus)).ini }}"
    dest: /etc/nova/nova.conf.d/50-gpus.conf
    mode: "0640"
  vars:
    nova_gpus:
      aliases:
        - {name: a40, devices: ["10de:2235"], numa_policy: preferred}
      mdev_types:
        - {type: nvidia-558, mdev_class: CUSTOM_A10_4Q}
"""

RETURN = r"""
_value:
  description: The options, as a file and as values.
  type: dict
  contains:
    ini:
      description: The C([pci]), C([devices]) and C([mdev_<type>]) sections, ready for C(nova.conf.d).
      type: str
    pci:
      description: C(device_spec) and C(alias), each a list of JSON strings (one option line each).
      type: dict
    devices:
      description: C(enabled_mdev_types).
      type: dict
    mdev_groups:
      description: Per type - C(type), C(device_addresses), C(mdev_class), C(max_instances).
      type: list
      elements: dict
    flavor_extra_specs:
      description: By alias name or type, the flavor extra specs that request it.
      type: dict
    skipped:
      description: Devices a selector matched that are not ready - C(device) and C(reasons).
      type: list
      elements: dict
    mdev_owner:
      description: Always V(nova).
      type: str
    notes:
      description: Why Nova owns the mdevs, when mdev types are exported.
      type: list
      elements: str
"""


def nova_pci_config(topology, spec=None):
    """nova.conf options for PCI passthrough aliases and vGPU (mdev) types that ``spec`` names."""
    # Imported when called: to find any of the collection's filters, Ansible loads every file of
    # plugins/filter, compiled from source, in the worker process of each task that uses one.
    from ansible_collections.gpuvirt.host.plugins.plugin_utils import nova

    return nova.nova_pci_config(topology, spec)


class FilterModule:
    """gpuvirt.host OpenStack Nova export."""

    def filters(self):
        return {"nova_pci_config": nova_pci_config}
