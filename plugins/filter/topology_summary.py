# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter ``topology_summary``: the ``topology`` result of ``topology_info`` as readable lines."""

from __future__ import annotations

DOCUMENTATION = r"""
name: topology_summary
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
short_description: Turn a topology_info result into readable report lines
description:
  - Takes the C(topology) dictionary returned by M(gpuvirt.host.topology_info) (or the whole
    registered result) and returns a list of lines for a person to read.
  - "The lines cover: for a virtual machine, its hypervisor; the IOMMU state; the kernel release and
    command line; every GPU with its IOMMU group, driver, boot VGA (or boot display) flag,
    passthrough viability with reasons and the functions to bind together; mediated-device parents
    with their types and free instances; existing mediated devices; SR-IOV physical functions with
    enabled and total VFs; the findings."
positional: _input
options:
  _input:
    description: The C(topology) dictionary, or the registered result that holds it.
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Detect the topology
  gpuvirt.host.topology_info:
  register: host_topology

- name: Show it
  ansible.builtin.debug:
    msg: "{{ host_topology.topology | gpuvirt.host.topology_summary }}"
"""

RETURN = r"""
_value:
  description: The report, one line per list element (no trailing newlines).
  type: list
  elements: str
"""


def topology_summary(topology):
    """Readable lines for a ``topology`` dict (the ``topology`` key of ``topology_info``'s result)."""
    # Imported when called: to find any of the collection's filters, Ansible loads every file of
    # plugins/filter, compiled from source, in the worker process of each task that uses one.
    from ansible_collections.gpuvirt.host.plugins.plugin_utils import summary

    return summary.topology_summary(topology)


class FilterModule:
    """gpuvirt.host topology filters."""

    def filters(self):
        return {"topology_summary": topology_summary}
