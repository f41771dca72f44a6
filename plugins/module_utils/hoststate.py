# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The declared device state that the modules record and the boot-time restore replays.

One JSON file, ``/etc/gpuvirt/host-state.json`` below the host root, with one section per
concern, each keyed by a stable identifier (PCI address or mdev UUID)::

    {
      "version": 1,
      "sriov":  {"0000:41:00.0": {"num_vfs": 4, "drivers_autoprobe": false, "vfio": true}},
      ...the vendors' sections (:func:`vendors.state_sections`)...
      "mdevs":  {"<uuid>": {"parent": "0000:00:02.0", "type": "i915-GVTg_V5_4"}}
    }

The generic sections are ``sriov`` (VF counts; an entry's ``method`` names the vendor tool that
enables them, :func:`vendors.vf_tool`; ``vfio``: its VFs go to vfio-pci once created) and ``mdevs``;
each vendor backend adds its own between them (its ``state_sections``, replayed by its own restore
steps). The restore replays them in that order: VFs first, then the vendors' sections, then mdevs.
Each module reads the file, changes the entries it declares and writes the whole file atomically
(:mod:`files`). Every changing module holds the host lock (:mod:`host`) from that read to that
write, so two runs never lose each other's entries. A file written by a newer version of the
collection, or that cannot be parsed, is refused, never rewritten.
"""

from __future__ import annotations

import copy
import json
import os

from ansible_collections.gpuvirt.host.plugins.module_utils import rules, vendors
from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError
from ansible_collections.gpuvirt.host.plugins.module_utils.files import plan_change
from ansible_collections.gpuvirt.host.plugins.module_utils.host import inside
from ansible_collections.gpuvirt.host.plugins.module_utils.pending import PENDING_DIR

STATE_PATH = "etc/gpuvirt/host-state.json"
VERSION = 1
# Written by the fleet role when it drains a host before its reboot, removed once its undrain hook ran.
DRAINED_PATH = "etc/gpuvirt/drained"


def sections():
    """The state file's sections in restore order: ``sriov``, the vendors' own, ``mdevs``."""
    return ("sriov",) + vendors.state_sections() + ("mdevs",)


class StateFileError(GpuvirtError):
    """The state file exists but cannot be used; ``str()`` says which file and why."""


def empty_state():
    state = {"version": VERSION}
    state.update({section: {} for section in sections()})
    return state


def state_path(root):
    """The state file below ``root``; :class:`host.OutsideRootError` when a link leads out of ``root``."""
    return inside(root, STATE_PATH)


def load_state(root):
    """Return the recorded state, or an empty one when no file exists yet.

    A file that leads out of ``root``, is corrupt or has a newer version is refused, never rewritten.
    """
    path = state_path(root)
    rules.inside_root(root, path, "the state file", error=StateFileError)
    data = rules.load_versioned_json(
        path,
        VERSION,
        "the state file",
        "move it aside (mv %s %s.bad) and run the modules again: they record the state anew" % (path, path),
        error=StateFileError,
    )
    state = empty_state()
    for section in sections():
        value = (data or {}).get(section, {})
        if not isinstance(value, dict):
            raise StateFileError(
                "the state file %s: section %r is not a mapping; move it aside (mv %s %s.bad) and run the "
                "modules again" % (path, section, path, path)
            )
        state[section] = value
    return state


def with_section(state, section, entries):
    """Return a copy of ``state`` whose ``section`` is replaced by ``entries``."""
    if section not in sections():
        raise ValueError("unknown state section %r" % section)
    updated = copy.deepcopy(state)
    updated[section] = entries
    return updated


def without_devices(state, addresses):
    """Return a copy of ``state`` without the entries of the devices at ``addresses`` (VFs a run removes
    for good): the vendors' sections' entries keyed by those addresses, and the mdevs whose parent is
    one of them. Their records would have the restore wait for devices that no longer come, and
    recreate what was destroyed once they came back."""
    gone = set(addresses)
    updated = copy.deepcopy(state)
    for section in vendors.state_sections():
        entries = updated.get(section)
        if isinstance(entries, dict):
            updated[section] = {key: value for key, value in entries.items() if key not in gone}
    entries = updated.get("mdevs")
    if isinstance(entries, dict):
        updated["mdevs"] = {
            key: value for key, value in entries.items()
            if not (isinstance(value, dict) and value.get("parent") in gone)
        }
    return updated


def render_state(state):
    return json.dumps(state, indent=2, sort_keys=True) + "\n"


def plan_state(root, state):
    """The :class:`files.FileChange` that records ``state`` (unchanged when the file already holds it).

    A state that records nothing is not written where no file exists yet: a run that declares nothing
    to keep (an empty device list) leaves the host as it found it."""
    if state == empty_state():
        change = plan_change(root, STATE_PATH, None)
        if change.old is None:
            return change
    return plan_change(root, STATE_PATH, render_state(state))


def host_markers(root):
    """What the collection keeps about this host beside the devices: ``{"state_file": whether
    :data:`STATE_PATH` exists, "pending": the boot tools a run was interrupted in (:mod:`pending`'s
    markers), "drained": whether a fleet rollout left the host drained (:data:`DRAINED_PATH`)}``. A link
    that leads out of ``root`` counts as absent."""
    def below(relative):
        try:
            return inside(root, relative)
        except GpuvirtError:
            return None

    pending_dir = below(PENDING_DIR)
    pending = []
    if pending_dir is not None and os.path.isdir(pending_dir):
        pending = sorted(name for name in os.listdir(pending_dir) if not name.startswith("."))
    state, drained = below(STATE_PATH), below(DRAINED_PATH)
    return {"state_file": state is not None and os.path.lexists(state), "pending": pending,
            "drained": drained is not None and os.path.lexists(drained)}
