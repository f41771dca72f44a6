# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter ``gpuvirt_fact``: the small per-host ``gpuvirt`` fact from a topology and a preflight."""

from __future__ import annotations

DOCUMENTATION = r"""
name: gpuvirt_fact
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
short_description: The small C(gpuvirt) host fact from a topology and a preflight result
description:
  - Condenses the C(topology) returned by M(gpuvirt.host.topology_info) into the few keys that fleet
    tools select hosts by (GPU models and counts, passthrough-ready devices, vGPUs and mdevs in use,
    pending reboot, blockers), so that AWX fact caching and smart inventories can filter on them
    without a full topology in every job event.
  - The keys are documented in the README of the C(gpuvirt.host.fleet) role.
positional: _input
options:
  _input:
    description: The C(topology) dictionary, or the registered result that holds it.
    type: dict
    required: true
  reboot_pending:
    description: A change waits for a reboot (the C(*_reboot_required) facts of the roles).
    type: bool
    default: false
  blockers:
    description: What keeps the host from being configured, one sentence each.
    type: list
    elements: str
    default: []
  pending_changes:
    description: The roles that would still change something on the host.
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: Publish the gpuvirt fact
  ansible.builtin.set_fact:
    gpuvirt: "{{ host_topology.topology | gpuvirt.host.gpuvirt_fact(reboot_pending=iommu_reboot_required) }}"
    cacheable: true
"""

RETURN = r"""
_value:
  description: The fact; see the C(gpuvirt.host.fleet) role's README for every key.
  type: dict
"""


def gpuvirt_fact(topology, reboot_pending=False, blockers=None, pending_changes=None):
    # Imported when called: to find any of the collection's filters, Ansible loads every file of
    # plugins/filter, compiled from source, in the worker process of each task that uses one.
    from ansible_collections.gpuvirt.host.plugins.plugin_utils import fact

    return fact.gpuvirt_fact(topology, reboot_pending, blockers, pending_changes)


class FilterModule:
    """gpuvirt.host fact filter."""

    def filters(self):
        return {"gpuvirt_fact": gpuvirt_fact}
