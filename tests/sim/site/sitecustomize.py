# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Activate the kernel simulators in a child process (a module run by ansible-playbook, the restore).

Put this folder on ``PYTHONPATH`` and set ``GPUVIRT_KERNEL_SIM`` to the fixture root: every write
the simulators claim below that root (mdev core, SR-IOV core, NVIDIA vGPU driver, PCI binding) then
behaves as the kernel would. Other processes and paths are untouched.
"""

from __future__ import annotations

import os
import sys

_ROOT = os.environ.get("GPUVIRT_KERNEL_SIM")
if _ROOT:
    _TESTS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path[:0] = [os.path.join(_TESTS, "sim"), os.path.join(_TESTS, "fixtures")]
    try:
        from nvidia_vgpu_sim import attach
        from pci_kernel import PciKernel
    finally:
        del sys.path[:2]
    _SIM = attach(_ROOT)[0]
    PciKernel(_SIM)
    # Keep the context referenced: collecting it would close it and restore the real os functions.
    _ACTIVE = _SIM.active()
    _ACTIVE.__enter__()
