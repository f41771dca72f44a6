# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel arguments that turn each IOMMU on, as the ``iommu`` role puts them on the command line.

Public API:

- :data:`KERNEL_ARGUMENTS` -- per vendor (``intel``, ``amd``, ``arm``): ``present``, ``absent``, the
  ``passthrough`` argument and the arguments to take off ``without_passthrough``.
- :func:`kernel_arguments_for` ``(vendor, passthrough=False) -> (present, absent)``
"""

from __future__ import annotations

# The kernel arguments that turn each IOMMU on. intel_iommu defaults to off on many distribution
# kernels, so Intel hosts need intel_iommu=on; the AMD IOMMU is on whenever the firmware describes it
# (amd_iommu has no "on" value), so AMD hosts only need amd_iommu=off gone. iommu=off disables either.
# A present key=value replaces the other values of its key (intel_iommu=off becomes intel_iommu=on,
# iommu=off becomes iommu=pt), so only keys not set by present are listed absent. Arm SMMUs need no
# argument to turn on; the x86-only keys mean nothing to an arm64 kernel (they reach init), so they are
# removed, and passthrough mode is iommu.passthrough=1 there. An arm64 IOMMU that is no Arm SMMU
# (virtio-iommu in a VM, Apple's DART) takes the arm set too.
KERNEL_ARGUMENTS = {
    "intel": {"present": ("intel_iommu=on",), "absent": (), "passthrough": "iommu=pt",
              "without_passthrough": ("iommu=off",)},
    "amd": {"present": (), "absent": ("amd_iommu=off",), "passthrough": "iommu=pt",
            "without_passthrough": ("iommu=off",)},
    "arm": {"present": (), "absent": ("intel_iommu", "amd_iommu", "iommu"), "passthrough": "iommu.passthrough=1",
            "without_passthrough": ()},
}


def kernel_arguments_for(vendor, passthrough=False):
    """``(present, absent)``: the arguments the IOMMU of ``vendor`` needs, in passthrough mode or not;
    ``([], [])`` for a vendor that has none here."""
    table = KERNEL_ARGUMENTS.get(vendor)
    if table is None:
        return [], []
    present = list(table["present"]) + ([table["passthrough"]] if passthrough else [])
    absent = list(table["absent"]) + ([] if passthrough else list(table["without_passthrough"]))
    return present, absent
