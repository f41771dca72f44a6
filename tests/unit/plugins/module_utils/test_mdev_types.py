# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Detection reads a type's fixed attributes once per device model, its free instances per parent."""

from __future__ import annotations

import errno
import os

from ansible_collections.gpuvirt.host.plugins.module_utils import mdev_info
from ansible_collections.gpuvirt.host.plugins.module_utils.findings import Findings
from ansible_collections.gpuvirt.host.plugins.module_utils.mdev_info import mdev_parents
from ansible_collections.gpuvirt.host.plugins.module_utils.pci import read_pci_devices

FIRST, SECOND = "0000:b1:00.4", "0000:b1:00.5"
TYPE = "mdev_supported_types/nvidia-471/"


def type_dir(root, parent):
    return os.path.join(root, "sys/bus/pci/devices", parent, TYPE)


def write(path, text):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def types_of(parents, parent):
    return {entry["id"]: entry for entry in next(p for p in parents if p["parent"] == parent)["types"]}


def a100(make_host):
    root = make_host("datacenter_a100")
    write(type_dir(root, SECOND) + "description", "only this parent says so\n")
    write(type_dir(root, SECOND) + "available_instances", "3\n")
    return root


def test_later_parents_of_a_model_take_its_fixed_attributes_and_read_their_free_instances(make_host):
    root = a100(make_host)
    with open(type_dir(root, FIRST) + "description", encoding="utf-8") as handle:
        first_description = handle.read().strip()

    parents = mdev_parents(root, Findings(), read_pci_devices(root))

    assert types_of(parents, SECOND)["nvidia-471"]["description"] == first_description
    assert types_of(parents, SECOND)["nvidia-471"]["available_instances"] == 3
    assert types_of(parents, FIRST)["nvidia-471"]["available_instances"] != 3


def test_without_the_devices_every_parent_is_read_whole(make_host):
    root = a100(make_host)

    parents = mdev_parents(root, Findings())

    assert types_of(parents, SECOND)["nvidia-471"]["description"] == "only this parent says so"


def test_a_parent_of_another_model_or_driver_reads_its_own(make_host):
    root = a100(make_host)
    for change in ({"subsystem_device_id": "ffff"}, {"driver": "nvidia_other"}):
        devices = read_pci_devices(root)
        for key, value in change.items():
            setattr(devices[SECOND], key, value)

        parents = mdev_parents(root, Findings(), devices)

        assert types_of(parents, SECOND)["nvidia-471"]["description"] == "only this parent says so", change


def test_a_fixed_attribute_that_reads_badly_is_not_passed_on(make_host):
    root = a100(make_host)
    with open(type_dir(root, FIRST) + "name", "wb") as handle:
        handle.write(b"\xff\xfe\n")
    findings = Findings()

    parents = mdev_parents(root, findings, read_pci_devices(root))

    assert types_of(parents, FIRST)["nvidia-471"]["name"] is None
    assert types_of(parents, SECOND)["nvidia-471"]["name"] is not None, "the next parent is read for itself"
    assert types_of(parents, SECOND)["nvidia-471"]["description"] == "only this parent says so"
    assert [f for f in findings.as_list() if FIRST in f["message"] and "name" in f["message"]]


def test_a_parent_whose_types_cannot_be_listed_has_none_and_a_finding(make_host, monkeypatch):
    # The directory opens but cannot be listed (EIO, or a permission only root lacks on an image): no types,
    # said as a finding, and the other parents are read.
    root = make_host("datacenter_a100")
    parents = mdev_info.list_mdev_parents(root)
    real_listdir = mdev_info.os.listdir

    def listdir(path):
        if isinstance(path, int) and os.readlink("/proc/self/fd/%d" % path).endswith("/mdev_supported_types"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_listdir(path)

    monkeypatch.setattr(mdev_info.os, "listdir", listdir)
    findings = Findings()
    read = mdev_info.mdev_parents(root, findings)

    assert [entry["parent"] for entry in read] == parents and parents
    assert all(entry["types"] == [] for entry in read)
    messages = [finding["message"] for finding in findings.as_list()]
    assert len(messages) == len(parents), messages
    assert "mdev_supported_types is unreadable: Input/output error" in messages[0], messages
