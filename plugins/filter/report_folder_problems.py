# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter ``report_folder_problems``: why a report folder or a host's name cannot hold the fleet's files."""

from __future__ import annotations

DOCUMENTATION = r"""
name: report_folder_problems
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
short_description: Why a report folder, or the inventory names of its hosts, cannot hold the fleet's files
description:
  - Takes the report folder (C(gpuvirt_report_dir)) and returns what stops the fleet playbooks from writing
    their files there, one text each; an empty list when nothing does. The playbooks check it once, before
    any host is touched.
  - The folder must be an absolute path (C(~) for the home folder is one). Ansible runs the controller's own
    modules in the playbook's folder, so a relative folder would land inside the collection (or a read-only
    execution environment) and not where the page is built.
  - The folder's name must not hold C(*), C(?) or C([). The summaries gather the per-host files with a
    file pattern that starts with the folder's name, so these would be read as wildcards. The summary would
    gather another folder's files, or none, and a preflight of blocked hosts could pass.
  - A host's inventory name becomes a file name in the folder (C(<host>.json)), so a name with C(/) (which
    would write outside the folder or into a subfolder), a name starting with C(.) (a hidden file, which
    the page does not read), or one of the O(reserved) names (the summaries that share the folder) is
    refused.
positional: _input, hosts
options:
  _input:
    description: The report folder.
    type: str
    required: true
  hosts:
    description: The inventory names of the hosts whose files go into the folder.
    type: list
    elements: str
    required: true
  reserved:
    description: File names in the folder that are not a host's (without C(.json)).
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: Check the report folder and the host names
  ansible.builtin.assert:
    that: __problems | length == 0
    fail_msg: "{{ __problems | join('; ') }}. Nothing was written."
  vars:
    __problems: >-
      {{ gpuvirt_report_dir | gpuvirt.host.report_folder_problems(query('inventory_hostnames', 'all'),
                                                                  reserved=['preflight', 'rollout']) }}
"""

RETURN = r"""
_value:
  description: The problems, each a sentence; empty when there is none.
  type: list
  elements: str
"""

import os  # noqa: E402


def report_folder_problems(folder, hosts, reserved=()):
    """What keeps ``folder`` from holding the files of ``hosts``: ``[]`` when nothing does."""
    # Imported when called: to find any of the collection's filters, Ansible loads every file of
    # plugins/filter, compiled from source, in the worker process of each task that uses one.
    from ansible_collections.gpuvirt.host.plugins.plugin_utils.report import unsafe_host_names

    problems = []
    folder = "" if folder is None else str(folder)
    if not os.path.isabs(os.path.expanduser(folder)):
        problems.append(
            "gpuvirt_report_dir must be an absolute path (or start with ~), got '%s': Ansible runs the controller's "
            "modules in the playbook's folder, so a relative one would not land where you run it from (give "
            "$PWD/%s)" % (folder, folder or "reports")
        )
    wildcards = [character for character in "*?[" if character in folder]
    if wildcards:
        problems.append(
            "gpuvirt_report_dir must not hold %s, got '%s': the fleet's summaries gather the hosts' files with a "
            "file pattern that starts with the folder's name, which would read %s as a wildcard and gather "
            "another folder's files, or none" % (
                " or ".join("'%s'" % character for character in wildcards), folder,
                "it" if len(wildcards) == 1 else "them")
        )
    unsafe = unsafe_host_names(hosts)
    if unsafe:
        problems.append(
            "the inventory names %s cannot name a file in the report folder (a '/' leaves the folder, a leading "
            "'.' makes a hidden file); rename them, or give them an ansible_host" % ", ".join(repr(h) for h in unsafe)
        )
    taken = sorted(str(host) for host in hosts or [] if str(host) in set(reserved or ()))
    if taken:
        problems.append(
            "the inventory names %s are the names of the fleet's summaries in the report folder (%s); rename them"
            % (", ".join(repr(h) for h in taken), ", ".join("%s.json" % name for name in reserved))
        )
    return problems


class FilterModule:
    """gpuvirt.host report folder filter."""

    def filters(self):
        return {"report_folder_problems": report_folder_problems}
