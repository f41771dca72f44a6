# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The blocks an entry of ``vgpu_devices`` may hold, in one place.

The device spec filter checks entries against them, and the ``vgpu`` and ``vfio`` roles learn from them
which devices are split (into VFs, vGPUs or mdevs, which excludes handing the device whole to a VM):
a block added here is known to all of them at once.
"""

from __future__ import annotations

# Each key of an entry and the Python types its value may have.
ENTRY_KEYS = {
    "selector": (str,),
    "passthrough": (bool,),
    "sriov": (dict,),
    "nvidia_vgpu": (dict,),
    "mdev": (list,),
    "exclusive": (bool,),
    "mode": (dict,),
}
# The blocks that split a device, and those that ask for anything at all.
SPLIT_BLOCKS = ("sriov", "nvidia_vgpu", "mdev")
ACTION_BLOCKS = ("passthrough",) + SPLIT_BLOCKS + ("mode",)


def splits(entry):
    """Whether the ``vgpu_devices`` entry splits its device: a split block given (a mapping, or the mdev list)."""
    return any(
        entry.get(block) is not None and (block == "mdev" or isinstance(entry[block], dict)) for block in SPLIT_BLOCKS
    )


def split_selectors(devices):
    """The selectors of the entries of ``devices`` that split their device, in the list's order."""
    return [
        entry["selector"] for entry in devices or []
        if isinstance(entry, dict) and entry.get("selector") is not None and splits(entry)
    ]
