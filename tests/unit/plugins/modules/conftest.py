# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the vfio_pci module tests (plain vfio-pci and variant drivers)."""

from __future__ import annotations

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import host as host_model
from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim
from ansible_collections.gpuvirt.host.tests.sim.pci_kernel import PciKernel


@pytest.fixture
def vfio_pci(run_module):
    """``vfio_pci(root, check_mode=False, diff=False, kernel=None, **args)``; the PCI core simulated."""

    def run(root, check_mode=False, diff=False, kernel=None, **args):
        args.setdefault("root", root)
        kernel = kernel or PciKernel(KernelSim(root))
        with kernel.sim.active():
            return run_module("vfio_pci", args, check_mode=check_mode, diff=diff)

    return run


@pytest.fixture
def as_host(monkeypatch):
    """Make the module treat the fixture tree as this host's ``/``, so that it runs commands."""
    monkeypatch.setattr(host_model, "is_live_root", lambda root: True)
