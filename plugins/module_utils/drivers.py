# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Driver names as the collection compares them, on the host and on the controller.

Public API:

- :func:`driver_key` ``(name) -> str``: ``-`` and ``_`` as one (``vfio-pci`` = ``vfio_pci``).
- :func:`is_vfio_driver` ``(name, variants=()) -> bool``: vfio-pci or a variant VFIO driver.
- :func:`is_vfio_pci` ``(name) -> bool``: vfio-pci itself, no variant.
"""

from __future__ import annotations


def driver_key(name):
    """Driver and module names compare with ``-`` and ``_`` as one (``vfio-pci`` = ``vfio_pci``)."""
    return name.strip().replace("-", "_")


def is_vfio_driver(name, variants=()):
    """vfio-pci, one of ``variants`` (the kernel's variant VFIO drivers), or a driver named like one
    (every in-tree variant is ``<something>_vfio_pci``: ``nvgrace_gpu_vfio_pci``, ``mlx5_vfio_pci``,
    which also covers one that another kernel release listed)."""
    if not name:
        return False
    key = driver_key(name)
    return key == "vfio_pci" or key.endswith("_vfio_pci") or key in {driver_key(v) for v in variants}


def is_vfio_pci(name):
    """vfio-pci itself (``vfio-pci`` or ``vfio_pci``), not a variant."""
    return bool(name) and driver_key(name) == "vfio_pci"
