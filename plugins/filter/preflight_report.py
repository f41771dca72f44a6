# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter ``preflight_report``: per-host preflight results as a fleet summary, JSON or JUnit XML."""

from __future__ import annotations

DOCUMENTATION = r"""
name: preflight_report
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
short_description: Per-host preflight results as a one-screen fleet summary, JSON or JUnit XML
description:
  - Takes the per-host results of the C(gpuvirt.host.preflight) playbook (the C(fleet_preflight) fact
    of the C(gpuvirt.host.fleet) role, one dict per host) and renders them for people or CI systems.
  - V(text) is a one-screen summary, blocked hosts first; V(json) the machine-readable result with
    counts; V(junit) JUnit XML with one test case per host that fails when the host has a blocker, so
    that CI systems show the preflight as tests.
positional: _input
options:
  _input:
    description: The per-host results, a list of dicts (or a dict by host name).
    type: raw
    required: true
  format:
    description: What to render.
    type: str
    choices: [text, json, junit]
    default: text
  max_rows:
    description: Hosts listed by V(text) before it only counts the rest.
    type: int
    default: 30
"""

EXAMPLES = r"""
- name: Show the fleet summary
  ansible.builtin.debug:
    msg: "{{ results | gpuvirt.host.preflight_report }}"

- name: Write the JUnit XML
  ansible.builtin.copy:
    content: "{{ results | gpuvirt.host.preflight_report(format='junit') }}"
    dest: reports/preflight.junit.xml
    mode: "0644"
"""

RETURN = r"""
_value:
  description: V(text) a list of lines; V(json) a dict (C(counts), C(hosts)); V(junit) an XML string.
  type: raw
"""


def preflight_report(results, format="text", max_rows=30):
    # Imported when called: to find any of the collection's filters, Ansible loads every file of
    # plugins/filter, compiled from source, in the worker process of each task that uses one.
    from ansible_collections.gpuvirt.host.plugins.plugin_utils import preflight

    return preflight.preflight_report(results, format, max_rows)


class FilterModule:
    """gpuvirt.host preflight report filter."""

    def filters(self):
        return {"preflight_report": preflight_report}
