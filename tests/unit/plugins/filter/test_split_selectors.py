# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``split_selectors``: the devices a vgpu_devices list splits, from the one list of blocks that the device
spec, the vgpu role and the vfio role share."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.gpuvirt.host.plugins.filter.device_spec import device_spec
from ansible_collections.gpuvirt.host.plugins.filter.split_selectors import split_selectors
from ansible_collections.gpuvirt.host.plugins.plugin_utils import device_blocks

DEVICES = [
    {"selector": "0000:01:00.0", "passthrough": True},
    {"selector": "L40S", "nvidia_vgpu": {"profiles": []}},
    {"selector": "0000:00:02.0", "mode": {"name": "gvt-g"}},
    {"selector": "0000:00:02.0", "mdev": []},
    {"selector": "8086:56c0", "sriov": {"num_vfs": 4}},
    {"selector": "0000:05:00.0", "sriov": None, "mdev": None},
]


def test_the_entries_with_a_split_block_are_named_in_order():
    assert split_selectors(DEVICES) == ["L40S", "0000:00:02.0", "8086:56c0"]
    assert split_selectors([]) == [] and split_selectors(None) == []


def test_a_block_added_to_the_list_is_known_to_the_spec_and_the_split(monkeypatch):
    # One list: a new vendor's carving block is accepted by device_spec and counted as a split at once.
    monkeypatch.setitem(device_blocks.ENTRY_KEYS, "acme_slices", (dict,))
    monkeypatch.setattr(device_blocks, "SPLIT_BLOCKS", device_blocks.SPLIT_BLOCKS + ("acme_slices",))
    monkeypatch.setattr(device_blocks, "ACTION_BLOCKS", device_blocks.ACTION_BLOCKS + ("acme_slices",))
    entry = {"selector": "0000:41:00.0", "acme_slices": {"count": 4}}
    assert device_spec([entry]) == [entry]
    assert split_selectors([entry]) == ["0000:41:00.0"]


def test_the_spec_names_every_block_when_an_entry_asks_for_nothing():
    message = "says nothing to do; give passthrough, sriov, nvidia_vgpu, mdev or mode"
    with pytest.raises(AnsibleFilterError, match=message):
        device_spec([{"selector": "0000:01:00.0"}])
