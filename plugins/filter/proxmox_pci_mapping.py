# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter ``proxmox_pci_mapping``: Proxmox VE cluster PCI resource mappings (``/etc/pve/mapping/pci.cfg``)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: proxmox_pci_mapping
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
short_description: Proxmox VE cluster PCI resource mappings for a host's ready GPUs
description:
  - Takes the topology of M(gpuvirt.host.topology_info) (with the node name in the spec), or a dict of node
    names to topologies for a cluster, and returns Proxmox VE PCI resource mappings (Proxmox VE 8.0 or later)
    - as the content of C(/etc/pve/mapping/pci.cfg) and as the arguments of C(pvesh create
    /cluster/mapping/pci) (C(POST /cluster/mapping/pci)).
  - Every C(map) entry carries C(id) (vendor:device), C(iommugroup), C(node), C(path) and C(subsystem-id)
    as Proxmox VE reads them from sysfs when a VM starts; a GPU with companion functions is mapped as its
    whole slot (a C(path) without function), so its audio and USB functions go with it, when the slot holds
    just these functions (Proxmox VE hands a VM every function of such a path).
  - For C(mdev) mappings the filter maps the mdev parents - a GPU offering mdev types, or the virtual
    functions of an SR-IOV GPU (NVIDIA vGPU, either on the mdev bus or through its per-VF vGPU types in
    C(nvidia/current_vgpu_type), the topology's C(vgpu) key of a vendor whose types Proxmox VE sets).
  - "Passthrough devices must be ready as for every export (IOMMU on, a group of their own, not the boot VGA
    device, not host-critical, not in use, bound to vfio-pci with their companion functions). Proxmox VE binds
    a passed-through device to vfio-pci itself when a VM starts, so a device on a variant VFIO driver, or a
    virtual function with a vGPU type set (for a vendor whose types Proxmox VE sets, map it with C(mdev) once
    its vGPU is removed), is refused. An mdev parent must have free capacity, hold no mdevs and, for a VF with
    per-VF vGPU types, have no vGPU type set yet (Proxmox VE resets and sets the type itself) and one that
    can be read; the per-VF vGPU types of a vendor whose types Proxmox VE does not set are refused."
  - "Who owns the mdevs: Proxmox VE. It creates the mdev (or writes the vGPU type of a VF) when a VM starts
    and removes it when the VM stops, so the collection prepares only the parents and VFs (SR-IOV, drivers)
    and must not create mdevs or set vGPU types on these devices; a parent that holds mdevs is refused."
positional: _input, spec
options:
  _input:
    description:
      - A topology (or registered result) of M(gpuvirt.host.topology_info), or a dict of Proxmox VE
        node names to topologies.
    type: raw
    required: true
  spec:
    description: What to map.
    type: dict
    required: true
    suboptions:
      node:
        description: The Proxmox VE node name (its short host name) of a single topology.
        type: str
      mappings:
        description: The mappings.
        type: list
        elements: dict
        required: true
        suboptions:
          id:
            description: Mapping ID, a letter then letters, digits, V(-) or V(_) (case-insensitive, unique).
            type: str
            required: true
          devices:
            description: GPUs, each a PCI address, a vendor:device ID or a model name.
            type: list
            elements: str
            required: true
          mdev:
            description: The mapping is used with mediated devices (Proxmox VE creates them at VM start).
            type: bool
            default: false
          description:
            description: One line of description, 1 to 4096 characters with no blanks around it.
            type: str
"""

EXAMPLES = r"""
- name: Map the A10 GPUs of every node (run once; hostvars hold each node's topology)
  ansible.builtin.set_fact:
    a10_mapping: >-
      {{ dict(groups['pve'] | zip(groups['pve'] | map('extract', hostvars, ['host_topology', 'topology'])))
         | gpuvirt.host.proxmox_pci_mapping({'mappings': [{'id': 'a10-vgpu', 'devices': ['10de:2236'],
                                                          'mdev': true}]}) }}
  run_once: true

- name: Create the mapping through the API
  ansible.builtin.command:
    argv: >-
      {{ ['pvesh', 'create', '/cluster/mapping/pci', '--id', item.id]
         + (item.map | map('regex_replace', '^', '--map=') | list)
         + (['--mdev', '1'] if item.mdev | default(0) else [])
         + (['--description', item.description] if item.description is defined else []) }}
  loop: "{{ a10_mapping.api }}"
  run_once: true
  changed_when: true
"""

RETURN = r"""
_value:
  description: The mappings in the forms Proxmox VE takes.
  type: dict
  contains:
    cfg:
      description: The sections of C(/etc/pve/mapping/pci.cfg).
      type: str
    api:
      description:
        - Per mapping, the arguments of C(POST /cluster/mapping/pci) - C(id), C(map) (property
          strings), C(mdev), C(description).
      type: list
      elements: dict
    mappings:
      description: Per mapping - C(id), C(description), C(mdev) and C(map) entries as dicts.
      type: list
      elements: dict
    skipped:
      description: Devices a selector matched that are not ready - C(device), C(reasons), C(node), C(mapping).
      type: list
      elements: dict
    mdev_owner:
      description: Always V(proxmox).
      type: str
    notes:
      description: Why Proxmox VE owns the mdevs, when a mapping is for mdevs.
      type: list
      elements: str
"""


def proxmox_pci_mapping(topology, spec=None):
    """Cluster PCI mappings for the devices that ``spec.mappings`` names, on every node given."""
    # Imported when called: to find any of the collection's filters, Ansible loads every file of
    # plugins/filter, compiled from source, in the worker process of each task that uses one.
    from ansible_collections.gpuvirt.host.plugins.plugin_utils import proxmox

    return proxmox.proxmox_pci_mapping(topology, spec)


class FilterModule:
    """gpuvirt.host Proxmox VE export."""

    def filters(self):
        return {"proxmox_pci_mapping": proxmox_pci_mapping}
