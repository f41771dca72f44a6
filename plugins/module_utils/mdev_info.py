# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Mediated device readers (``Documentation/ABI/testing/sysfs-bus-vfio-mdev``).

Public API (every reader takes the host ``root`` and never raises on a bad attribute):

- :class:`MdevType` -- one supported type of a parent; ``to_dict()``.
- :func:`list_mdev_parents` ``(root) -> list[str]``: names under ``sys/class/mdev_bus``.
- :func:`read_mdev_types` ``(root, parent, findings=None) -> list[MdevType]``
- :func:`mdev_parents` ``(root, findings=None) -> list[dict]``: ``{"parent", "types": [...]}``.
- :func:`mdevs` ``(root, findings=None) -> list[dict]``: ``{"uuid", "parent", "type",
  "iommu_group"}`` for every device under ``sys/bus/mdev/devices``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import (
    HELD_DESCRIPTORS,
    MDEV_BUS,
    MDEV_DEVICES,
    MISSING,
    close_descriptors,
    host_path,
    link_name,
    list_dir,
    open_directory,
    read_attribute_at,
)

UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_COUNT = re.compile(r"[0-9]+\Z")
_COUNT_LINE = re.compile(rb"[0-9]{1,20}\n")


@dataclass
class MdevType:
    """``mdev_supported_types/<id>/``: ``name`` and ``description`` are optional in the ABI."""

    id: str
    name: str | None = None
    description: str | None = None
    available_instances: int | None = None
    device_api: str | None = None

    def label(self):
        return "%s (%s)" % (self.id, self.name) if self.name and self.name != self.id else self.id

    def to_dict(self):
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "available_instances": self.available_instances,
            "device_api": self.device_api,
        }


def list_mdev_parents(root):
    """Names of the devices that can host mediated devices (PCI addresses or virtual names)."""
    return list_dir(host_path(root, MDEV_BUS))


def read_mdev_types(root, parent, findings=None):
    """The supported types of one parent, sorted by type id."""
    return [MdevType(**entry) for entry in _read_types(root, parent, findings)]


def _read_types(root, parent, findings, model=None, known=None, bus=None, counts=None, held=None):
    """The types of ``parent`` as dicts (what :func:`mdev_parents` returns), sorted by type id.

    ``model`` names the parent's device model and driver; ``known`` (``{(model, type id): fixed
    attributes}``) holds what earlier parents of the same model gave. ``bus``: a descriptor of
    ``sys/class/mdev_bus``, when open. ``counts``: the ``available_instances`` contents parsed so far
    in this pass (see :func:`_read_some_types`). ``held``: where the descriptors it opens go, for the
    caller to close (:func:`sysfs.close_descriptors`); closed here without it."""
    relative = parent + "/mdev_supported_types"
    directory = open_directory(relative, bus) if bus is not None else None
    if directory is None:
        base = host_path(root, MDEV_BUS, relative)
        directory = open_directory(base)
        if directory is None:
            return _read_some_types(list_dir(base), None, base + "/", parent, findings, model, known, counts)
    own = held is None
    held = [] if own else held
    held.append(directory)
    try:
        try:
            type_ids = sorted(os.listdir(directory))
        except OSError as error:
            type_ids = []
            if findings is not None:
                findings.bad_attribute(
                    "/%s/%s" % (MDEV_BUS, relative), "unreadable: %s" % os.strerror(error.errno),
                    "a listing of the parent's mdev types", parent if ":" in parent else None,
                )
        return _read_some_types(type_ids, directory, "", parent, findings, model, known, counts, held)
    finally:
        if own:
            close_descriptors(held)


_FIXED = ("name", "description", "device_api")


def _read_some_types(type_ids, directory, prefix, parent, findings, model=None, known=None, counts=None, held=None):
    """Read each type's files relative to the directory open as ``directory`` (below ``prefix``
    when None). A type's fixed attributes come from ``known`` when a parent of the same ``model``
    gave them cleanly; ``available_instances`` is read for every parent. ``counts`` (``{contents:
    count}``) holds the clean counts parsed earlier in the pass: parents share a few values.
    ``held``: where the ``available_instances`` descriptors go, for the caller to close together
    (:func:`sysfs.close_descriptors`); each is closed at once without it."""
    device = parent if ":" in parent else None
    counts = {} if counts is None else counts
    types = []
    for type_id in type_ids:
        path = prefix + type_id + "/"
        fixed = known.get((model, type_id)) if model is not None else None
        if fixed is not None:
            entry = dict(fixed)
        else:
            entry = {"id": type_id}
            clean = True
            for name in _FIXED:
                text, problem = read_attribute_at(directory, path + name)
                if problem is not None and problem is not MISSING:
                    clean = False
                    if findings is not None:
                        findings.bad_attribute(_type_display(parent, type_id, name), problem, "readable text", device)
                entry[name] = text
            if clean and model is not None:
                known[model, type_id] = dict(entry)
        # The count as the kernel writes it ("%d\n") is taken at once; anything else is read again
        # as text and reported.
        try:
            fd = os.open(path + "available_instances", os.O_RDONLY, dir_fd=directory)
        except OSError:
            raw = b""
        else:
            if held is not None:
                held.append(fd)
            try:
                raw = os.read(fd, 32)
            except OSError:
                raw = b""
            finally:
                if held is None:
                    os.close(fd)
        count = counts.get(raw)
        if count is None and _COUNT_LINE.fullmatch(raw) is not None:
            count = counts[raw] = int(raw)
        if count is not None:
            entry["available_instances"] = count
            types.append(entry)
            continue
        text, problem = read_attribute_at(directory, path + "available_instances")
        if text is not None and _COUNT.match(text):
            entry["available_instances"] = int(text)
        else:
            entry["available_instances"] = None
            if findings is not None:
                findings.bad_attribute(
                    _type_display(parent, type_id, "available_instances"), problem,
                    "a count of instances that can still be created", device, text,
                )
        types.append(entry)
    return types


def _type_display(parent, type_id, name):
    return "/%s/%s/mdev_supported_types/%s/%s" % (MDEV_BUS, parent, type_id, name)


def mdev_parents(root, findings=None, devices=None):
    """Every mdev parent with its types, sorted by parent name.

    With ``devices`` (``{address: PciDevice}`` already read), a type's name, description and
    device API are read once per device model (vendor, device and subsystem IDs) and driver: the
    driver derives them from the model and the type, so parents of one model show the same. Each
    parent's ``available_instances`` is read: it changes with what the parent carries."""
    known = {}
    counts = {}
    result = []
    path = host_path(root, MDEV_BUS)
    bus = open_directory(path)
    # The descriptors of several parents are closed together (see close_descriptors).
    held = []
    try:
        for parent in list_dir(path if bus is None else bus):
            result.append(_read_parent(root, parent, findings, devices, known, bus, counts, held))
            if len(held) >= HELD_DESCRIPTORS:
                batch, held = held, []
                close_descriptors(batch)
    finally:
        try:
            close_descriptors(held)
        finally:
            if bus is not None:
                os.close(bus)
    return result


def _read_parent(root, parent, findings, devices, known, bus, counts, held=None):
    device = devices.get(parent) if devices is not None else None
    model = None
    if device is not None and device.driver is not None and device.vendor_id is not None:
        model = (device.driver, device.vendor_id, device.device_id, device.subsystem_vendor_id,
                 device.subsystem_device_id)
    return {"parent": parent, "types": _read_types(root, parent, findings, model, known, bus, counts, held)}


def mdevs(root, findings=None):
    """Every mediated device that exists now, sorted by UUID."""
    result = []
    bus = host_path(root, MDEV_DEVICES)
    for uuid in list_dir(bus):
        if UUID.match(uuid) is None:
            if findings is not None:
                findings.warning("malformed_entry", "/%s/%s is not a UUID; ignored" % (MDEV_DEVICES, uuid))
            continue
        path = "%s/%s" % (bus, uuid)
        # The mdev lives in its parent's directory: sys/devices/.../<parent>/<uuid>.
        real = os.path.realpath(path)
        parent = os.path.basename(os.path.dirname(real)) if real != path else None
        mdev_type = link_name(path + "/mdev_type")
        if mdev_type is None and findings is not None:
            findings.bad_attribute(
                "/%s/%s/mdev_type" % (MDEV_DEVICES, uuid), MISSING, "a link to the mdev's type", parent
            )
        group = link_name(path + "/iommu_group")
        result.append({"uuid": uuid.lower(), "parent": parent, "type": mdev_type, "iommu_group": group})
    return result
