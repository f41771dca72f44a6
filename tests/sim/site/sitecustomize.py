# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Activate the kernel simulator in a child process (a module run by ansible-playbook, the restore).

Put this folder on ``PYTHONPATH`` and set ``GPUVIRT_KERNEL_SIM`` to the fixture root: every write
the simulators claim below that root then behaves as the kernel would. Other processes and paths
are untouched.
"""

from __future__ import annotations

import os
import sys

_ROOT = os.environ.get("GPUVIRT_KERNEL_SIM")
if _ROOT:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        from mdev_kernel import KernelSim
    finally:
        del sys.path[0]
    # Keep the context referenced: collecting it would close it and restore the real os functions.
    _ACTIVE = KernelSim(_ROOT).active()
    _ACTIVE.__enter__()
