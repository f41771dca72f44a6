#!/usr/bin/python
# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_report
short_description: Build the fleet's static HTML page from the per-host report records in a folder
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
description:
  - Runs on the controller. Reads every C(*.json) file in O(path) - the per-host records the
    C(gpuvirt.host.report) playbook writes, and the raw topologies C(gpuvirt.host.topology_report) writes
    (the host is the file name) - and writes one self-contained page, O(dest), from all of them.
  - Because the page is built from every record present, runs that each see part of the fleet (AWX job
    slices, C(serial) batches, C(--limit)) write into one folder and the last build shows every host. A build
    holds C(.lock) in the folder (C(flock)) from reading the records to writing the page, so builds that share
    the folder take turns and the page written last holds every record written before it. On NFS that needs
    a mount with locking (the default C(lock) option).
  - "The page: a host table (GPU models and counts, GPUs ready for passthrough, vGPU and mdev profiles in use
    and free capacity, pending reboot, findings by severity) that sorts by a click on a column and filters by
    text; per host, its IOMMU groups drawn as boxes holding their devices, coloured by verdict (viable,
    companion, blocked with the reasons, boot VGA, host-critical), with VFs and mdevs under their parents and
    each device's NUMA node; and the findings with their advice."
  - The page loads nothing from the network (no fonts, scripts or images; its content security policy forbids
    it), so it can be opened from a file, an artifact store or an air-gapped share.
  - Other JSON files (C(preflight.json)...) are left alone and listed in RV(ignored); hidden files
    (C(.ansible_tmp...json), a copy being moved in from another filesystem) are not read.
  - The hosts in O(not_reached) get their record marked with the time (a record holding only that when they
    have none), and the page shows them as not reached, with the earlier record they kept, until a run
    reaches them again.
extends_documentation_fragment:
  - gpuvirt.host.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
    details: Runs on the controller.
options:
  path:
    description: The folder holding the per-host records.
    type: path
    required: true
  dest:
    description: The page to write; C(index.html) in O(path) by default.
    type: path
  title:
    description: The page's title.
    type: str
    default: GPU virtualization fleet report
  not_reached:
    description:
      - The hosts of this run that it did not reach (unreachable, or a task failed on them), such as
        C(ansible_play_hosts_all | difference(ansible_play_hosts)) (every batch's, under C(serial)). Each is a
        file name in O(path), so a name with C(/), or starting with C(.), is refused. A file of the host that
        is not its record (a raw topology of C(gpuvirt.host.topology_report)) is left as it is.
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: Rebuild the page from the records in the folder
  gpuvirt.host.fleet_report:
    path: /srv/gpu-report
  run_once: true
"""

RETURN = r"""
dest:
  description: The page written.
  returned: always
  type: str
  sample: /srv/gpu-report/index.html
hosts:
  description: The hosts on the page, in name order.
  returned: always
  type: list
  elements: str
  sample: [gpu-node-01, gpu-node-02]
not_reached:
  description: The hosts marked as not reached (O(not_reached)).
  returned: always
  type: list
  elements: str
  sample: [gpu-node-03]
ignored:
  description: JSON files in the folder that are not host records (or not readable JSON), with why.
  returned: always
  type: list
  elements: str
  sample: ["preflight.json: not a host record"]
"""
