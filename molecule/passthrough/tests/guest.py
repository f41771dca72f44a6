# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the passthrough verifier reads and runs in the guest: drivers, IOMMU groups, the modules."""

from __future__ import annotations

import json
import os

from testinfra.modules.ansible import AnsibleException


def driver(host, address):
    """The driver bound to ``address``, or None."""
    link = "/sys/bus/pci/devices/%s/driver" % address
    return os.path.basename(host.file(link).linked_to) if host.file(link).exists else None


def group(host, address):
    """The IOMMU group of ``address``."""
    return os.path.basename(host.file("/sys/bus/pci/devices/%s/iommu_group" % address).linked_to)


def run_module(host, name, args, check=False):
    """Run a module in the guest; its result whether it failed or not (``ansible --tree``, which
    testinfra reads, leaves ``failed`` out of a failed result on ansible-core 2.19, so testinfra's
    AnsibleException cannot be relied on). ``args``: ``key=value`` text, or a dict sent as JSON."""
    try:
        return host.ansible(name, args if isinstance(args, str) else json.dumps(args), check=check)
    except AnsibleException as error:
        return error.result
