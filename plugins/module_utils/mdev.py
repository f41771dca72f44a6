# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Mediated devices: resolve a declaration against a host, plan, apply with rollback, persist.

Public API (standard library only, so the boot-time restore can use it without Ansible):

- :func:`read_snapshot` ``(root) -> Snapshot``: parents with their types, existing mdevs (with
  whether a process holds them), PCI devices (for selectors), the host identity.
- :func:`plan` ``(snapshot, declarations, force=False) -> Plan``: what to keep, create and remove
  per parent; raises :class:`MdevError` for bad input or a request that does not fit, and for a
  removal while some process's open files could not be read, or ``/proc`` does not list them all
  (``Snapshot.users_unknown``: such a process may hold the mdev), unless ``force``.
- :class:`Executor` ``(root)``: ``remove()``/``create()`` with read-back, ``rollback()``.
- :func:`create_mdev` / :func:`remove_mdev` ``(root, ...)``: one sysfs write and its read-back.
- :func:`deterministic_uuid` ``(host_id, parent, type_id, index)``.
- :func:`mdevctl_present`, :func:`read_mdevctl_definitions`, :func:`render_mdevctl_definition`.

A declaration is ``{"selector": str, "mdevs": [{"type": str, "count": int} | {"type": str,
"uuids": [str]}], "exclusive": bool}``. The selector is a PCI address, a ``vendor:device`` ID pair,
the name of a virtual parent (``mbochs``), or a model name matched against the ``pci.ids`` name. A
card that is not itself a parent but whose virtual functions are (NVIDIA's legacy SR-IOV vGPU) gets
its ``count`` spread over its VFs.

Capacity: the kernel reports ``available_instances`` per type, but the types of one parent often
draw on one pool (mbochs memory, a GPU's framebuffer). Creating ``n_T`` new instances of several
types fits when ``sum(n_T / available_T) <= 1``: exact for one shared pool, never too generous for
separate pools. Removing one instance of type T frees at least one instance of T, which is all that
can be known before removing; when only the removals would make room, the plan says so
(``recheck``) and the caller re-plans after removing.
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from fractions import Fraction

from ansible_collections.gpuvirt.host.plugins.module_utils import rules, sysfs, vendors
from ansible_collections.gpuvirt.host.plugins.module_utils.device_users import (
    unknown_users_text,
    users_of,
    vfio_holders,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError
from ansible_collections.gpuvirt.host.plugins.module_utils.mdev_info import UUID, MdevType, mdev_parents, mdevs
from ansible_collections.gpuvirt.host.plugins.module_utils.pci import name_devices, read_pci_devices
from ansible_collections.gpuvirt.host.plugins.module_utils.selector import SelectorError, select_devices
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import (
    MDEV_BUS,
    MDEV_DEVICES,
    SysfsWriteError,
    host_path,
    normalize_address,
)

# Fixed namespace for the deterministic UUIDs: changing it would rename every generated mdev.
UUID_NAMESPACE = uuidlib.uuid5(uuidlib.NAMESPACE_URL, "https://gpuvirt.host/mdev")
MACHINE_ID = "etc/machine-id"
MDEVCTL_DIR = "etc/mdevctl.d"
MDEVCTL_BINARIES = ("usr/sbin/mdevctl", "usr/bin/mdevctl", "sbin/mdevctl", "bin/mdevctl")
# Where udev finds rules; a file in etc/ overrides one of the same name in the others.
UDEV_RULE_DIRS = ("etc/udev/rules.d", "run/udev/rules.d", "usr/lib/udev/rules.d", "lib/udev/rules.d")
_RUN_PATH = re.compile(r"(/[^\s'\"{};|]*/mdevctl)(?=[\s'\";|]|$)")


class MdevError(GpuvirtError):
    """Bad input, a request that does not fit, or a kernel refusal; ``str()`` says what to do."""


@dataclass
class Mdev:
    uuid: str
    parent: str | None
    type: str | None
    in_use: bool = False
    holders: list = field(default_factory=list)

    def to_dict(self):
        return {"uuid": self.uuid, "parent": self.parent, "type": self.type, "in_use": self.in_use}


@dataclass
class Snapshot:
    """What the host has now. ``parents``: name -> {type id -> MdevType}; ``mdevs``: uuid -> Mdev."""

    parents: dict
    mdevs: dict
    devices: dict
    host_id: str | None = None
    users_unknown: str | None = None  # why some process's holdings are unknown (unknown_users_text), or None

    def mdevs_on(self, parent):
        return sorted((m for m in self.mdevs.values() if m.parent == parent), key=lambda m: m.uuid)


# ---------------------------------------------------------------------------------------------
# Reading


def read_host_id(root):
    """The host identity the generated UUIDs derive from (``/etc/machine-id``), or None."""
    text = sysfs.read_text(host_path(root, MACHINE_ID))
    return text or None


def read_snapshot(root, host_id=None):
    """Read parents, types, mdevs (with the processes holding them) and PCI devices below ``root``."""
    parents = {}
    for entry in mdev_parents(root):
        parents[entry["parent"]] = {t["id"]: MdevType(**t) for t in entry["types"]}
    holders = vfio_holders(root)
    current = {}
    for entry in mdevs(root):
        users = users_of(holders, entry["iommu_group"], entry["uuid"])
        current[entry["uuid"]] = Mdev(
            uuid=entry["uuid"],
            parent=entry["parent"],
            type=entry["type"],
            in_use=bool(users),
            holders=["%s (pid %d)" % (user["comm"] or "?", user["pid"]) for user in users],
        )
    devices = read_pci_devices(root)
    name_devices(root, devices)
    return Snapshot(parents=parents, mdevs=current, devices=devices, host_id=host_id or read_host_id(root),
                    users_unknown=None if holders.complete else unknown_users_text(holders))


# ---------------------------------------------------------------------------------------------
# Names: UUIDs, types, selectors


def deterministic_uuid(host_id, parent, type_id, index):
    """The UUID of the ``index``-th generated mdev of ``type_id`` on ``parent`` on this host."""
    return str(uuidlib.uuid5(UUID_NAMESPACE, "%s/%s/%s/%d" % (host_id, parent, type_id, index)))


def normalize_uuid(text):
    """``text`` as a lowercase canonical UUID, or None when it is not one."""
    if not isinstance(text, str):
        return None
    candidate = text.strip().lower()
    return candidate if UUID.match(candidate) else None


def _type_keys(mdev_type):
    """The spellings a user may give for a type, most specific first."""
    keys = [mdev_type.id]
    if mdev_type.name:
        keys.append(mdev_type.name)
        words = mdev_type.name.split()
        if len(words) > 1:
            keys.append(words[-1])
    return keys


def resolve_type(types, query, where):
    """The id of the type in ``types`` (id -> MdevType) that ``query`` names.

    ``query`` may be the type directory's name (``nvidia-471``, ``mbochs-2``), its ``name`` file
    (``NVIDIA A100-4C``, ``mbochs-medium``) or the last word of it (``A100-4C``); exact spellings
    win over case-insensitive ones.
    """
    for fold in (False, True):
        wanted = query.strip().lower() if fold else query.strip()
        for position in range(3):
            hits = []
            for mdev_type in types.values():
                keys = _type_keys(mdev_type)
                if position < len(keys):
                    key = keys[position].lower() if fold else keys[position]
                    if key == wanted:
                        hits.append(mdev_type.id)
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise MdevError(
                    "type %r is ambiguous on %s: it matches %s; give the type id instead"
                    % (query, where, ", ".join(sorted(hits)))
                )
    known = ", ".join(t.label() for t in sorted(types.values(), key=lambda t: t.id)) or "none"
    raise MdevError("type %r does not exist on %s; its types are: %s" % (query, where, known))


@dataclass
class Target:
    """The parents one declaration applies to: one parent, or the VFs of one card."""

    label: str
    parents: list


def resolve_selector(snapshot, selector):
    """The targets ``selector`` names: a list of :class:`Target` (one per card); raises MdevError.

    A selector is a virtual parent's name (``mdpy``), a PCI address (a parent, or a card whose
    VFs are parents), a ``vendor:device`` ID or a model name (:mod:`selector`).
    """
    text = (selector or "").strip()
    if not text:
        raise MdevError("an empty selector was given; use a PCI address, a vendor:device ID, a model or a parent name")
    if text in snapshot.parents and normalize_address(text) is None:
        return [Target(label=text, parents=[text])]
    address = normalize_address(text)
    if address in snapshot.parents:
        return [Target(label=address, parents=[address])]
    try:
        cards = select_devices(text, snapshot.devices, "card", _card_reason)
    except SelectorError as error:
        known = ", ".join(sorted(p for p in snapshot.parents if normalize_address(p) is None))
        raise MdevError("%s%s" % (error, ("; virtual parents here: %s" % known) if known else "")) from error
    return [_card_target(snapshot, address, selector) for address in cards]


def _vanished_parent(snapshot, declaration):
    """The PCI address of a parent that is no longer one (a card taken out, VFs no longer enabled, a
    device whose driver offers no mdev types now: GVT-g turned off), when the declaration asks for none of
    its mdevs (``exclusive`` with no ``mdevs``): a device that offers no types holds no mdevs, and what is
    left of it are records, which such a declaration removes. None otherwise, and for a physical function
    with SR-IOV, whose mdevs live on its VFs (recorded under theirs): selecting it needs its VFs."""
    if declaration.get("mdevs") or not declaration.get("exclusive"):
        return None
    address = normalize_address((declaration.get("selector") or "").strip())
    if address is None or address in snapshot.parents:
        return None
    device = snapshot.devices.get(address)
    if device is not None and device.sriov is not None:
        return None
    return address


def _card_reason(device):
    if device.is_vf:
        return "is a virtual function of %s that offers no mediated device types; select its physical function" % (
            device.physfn
        )
    return None


def _card_target(snapshot, address, selector):
    if address in snapshot.parents:
        return Target(label=address, parents=[address])
    device = snapshot.devices[address]
    vfs = list(device.sriov.vfs) if device.sriov else []
    parents = [vf for vf in vfs if vf in snapshot.parents]
    if parents:
        return Target(label=address, parents=parents)
    hint = vendors.no_mdev_types_hint(device, [snapshot.devices[vf] for vf in vfs if vf in snapshot.devices])
    if hint:
        hint = "; " + hint
    elif device.sriov and not vfs:
        hint = "; its virtual functions are not enabled (gpuvirt.host.sriov), or its driver is not loaded"
    else:
        hint = "; load the driver that offers mediated devices for it"
    raise MdevError("selector %r: %s (%s) offers no mediated device types%s" % (selector, address, device.name, hint))


# ---------------------------------------------------------------------------------------------
# Planning


@dataclass
class ParentPlan:
    parent: str
    selector: str
    exclusive: bool
    before: list
    declared: list = field(default_factory=list)  # [(uuid, type)] kept or created
    create: list = field(default_factory=list)  # [(uuid, type)]
    remove: list = field(default_factory=list)  # [uuid]
    kept_in_use: list = field(default_factory=list)  # [uuid] undeclared, not removed: in use


@dataclass
class Plan:
    parents: dict  # name -> ParentPlan, in declaration order
    recheck: list = field(default_factory=list)  # messages: capacity only known after removing
    warnings: list = field(default_factory=list)

    @property
    def creations(self):
        return [(p.parent, u, t) for p in self.parents.values() for u, t in p.create]

    @property
    def removals(self):
        return [(p.parent, u) for p in self.parents.values() for u in p.remove]

    @property
    def changes(self):
        return bool(self.creations or self.removals)


def plan(snapshot, declarations, force=False):
    """Work out what to create and remove so that each selected parent holds what is declared."""
    owner = {}
    targets = []
    vanished = []
    for declaration in declarations:
        gone = _vanished_parent(snapshot, declaration)
        if gone is not None:
            if gone in owner:
                raise MdevError("parent %s is selected twice (by %r and %r); declare each parent once"
                                % (gone, owner[gone], declaration["selector"]))
            owner[gone] = declaration["selector"]
            vanished.append((declaration, gone))
            continue
        for target in resolve_selector(snapshot, declaration["selector"]):
            for parent in target.parents:
                if parent in owner:
                    raise MdevError(
                        "parent %s is selected twice (by %r and %r); declare each parent once"
                        % (parent, owner[parent], declaration["selector"])
                    )
                owner[parent] = declaration["selector"]
            targets.append((declaration, target))
    result = Plan(parents={})
    for declaration, gone in vanished:
        result.parents[gone] = ParentPlan(parent=gone, selector=declaration["selector"], exclusive=True, before=[])
        result.warnings.append(
            ("%s offers no mediated device types now, so it holds none" if gone in snapshot.devices else
             "%s is not on this host (removed, or VFs no longer enabled)") % gone
            + ": only the records of mdevs on it are removed, if any (the state file, mdevctl's definitions)"
        )
    taken = set(snapshot.mdevs)
    explicit = {}
    for declaration, target in targets:
        _plan_target(snapshot, declaration, target, force, result, taken, explicit)
    if result.removals and snapshot.users_unknown:
        message = unknown_users_message(snapshot, result)
        if not force:
            raise MdevError(
                "refusing to remove %s. Run the module where every process can be inspected, or set force: true. "
                "Nothing was changed." % message
            )
        result.warnings.append("force: true: removing %s" % message)
    return result


def unknown_users_message(snapshot, result):
    """Why removing ``result``'s mdevs is not known to be safe: some process's open files could not be
    read, and it may hold any of them (a kept in-use mdev is named by its holders, these cannot be)."""
    return "mdev %s although whether a VM uses %s cannot be told: %s" % (
        ", ".join(value for _parent, value in result.removals),
        "it" if len(result.removals) == 1 else "them",
        snapshot.users_unknown,
    )


def _priority(snapshot, mdev):
    generated = snapshot.host_id is not None and any(
        deterministic_uuid(snapshot.host_id, mdev.parent, mdev.type, index) == mdev.uuid for index in range(64)
    )
    return (not mdev.in_use, not generated, mdev.uuid)


def _plan_target(snapshot, declaration, target, force, result, taken, explicit):
    selector = declaration["selector"]
    where = target.label if target.label == selector else "%s (selected by %r)" % (target.label, selector)
    group_types = {}
    for parent in target.parents:
        group_types.update(snapshot.parents[parent])
    existing = [m for parent in target.parents for m in snapshot.mdevs_on(parent)]
    for parent in target.parents:
        result.parents[parent] = ParentPlan(
            parent=parent,
            selector=selector,
            exclusive=bool(declaration.get("exclusive")),
            before=[{"uuid": m.uuid, "type": m.type} for m in snapshot.mdevs_on(parent)],
        )

    entries = []
    counted_types = set()
    for entry in declaration.get("mdevs") or []:
        type_id = resolve_type(group_types, entry["type"], where)
        if entry.get("uuids") is None:
            if type_id in counted_types:
                raise MdevError("%s: type %s is declared twice with a count; merge the entries" % (where, type_id))
            counted_types.add(type_id)
        entries.append((entry, type_id))

    claimed = {}
    pending = []  # (uuid or None, type)
    for entry, type_id in entries:
        if entry.get("uuids") is None:
            continue
        for text in entry["uuids"]:
            value = normalize_uuid(text)
            if value is None:
                raise MdevError("%s: %r is not a UUID (expected the 8-4-4-4-12 hex form)" % (where, text))
            if value in explicit:
                raise MdevError("UUID %s is declared twice (%s and %s)" % (value, explicit[value], where))
            explicit[value] = where
            mdev = snapshot.mdevs.get(value)
            if mdev is None:
                pending.append((value, type_id))
            elif mdev.parent not in target.parents:
                raise MdevError(
                    "%s: mdev %s already exists on %s; a UUID cannot move between parents" % (where, value, mdev.parent)
                )
            elif mdev.type != type_id:
                raise MdevError(
                    "%s: mdev %s exists with type %s, not %s; remove it first or declare another UUID"
                    % (where, value, mdev.type, type_id)
                )
            else:
                claimed[value] = mdev
    for entry, type_id in entries:
        if entry.get("uuids") is not None:
            continue
        count = entry.get("count")
        if count is None:
            raise MdevError("%s: type %s needs a count of 0 or more, or a list of uuids" % (where, type_id))
        rules.count(
            count, _capacity(snapshot, target, type_id), "%s: type %s: count" % (where, type_id),
            "the parent(s) offering it", error=MdevError,
        )
        candidates = sorted(
            (m for m in existing if m.type == type_id and m.uuid not in claimed and m.uuid not in explicit),
            key=lambda m: _priority(snapshot, m),
        )
        for mdev in candidates[:count]:
            claimed[mdev.uuid] = mdev
        pending.extend([(None, type_id)] * max(0, count - len(candidates)))

    for mdev in existing:
        if mdev.uuid in claimed:
            result.parents[mdev.parent].declared.append((mdev.uuid, mdev.type))
        elif declaration.get("exclusive"):
            if mdev.in_use and not force:
                result.parents[mdev.parent].kept_in_use.append(mdev.uuid)
                result.warnings.append(
                    "%s: mdev %s (%s) is not declared but is in use by %s; it was kept (force: true removes it)"
                    % (where, mdev.uuid, mdev.type, ", ".join(mdev.holders) or "a process")
                )
            else:
                result.parents[mdev.parent].remove.append(mdev.uuid)

    present = {}
    for mdev in claimed.values():
        present[mdev.type] = present.get(mdev.type, 0) + 1
    _place(snapshot, target, where, pending, present, result, taken)


# Removing mdevs of one type can free several of another (a shared memory pool), so what a parent can
# hold once emptied is not known while it holds some; its bound is at least this many.
MDEV_PER_PARENT_MAX = 256


def _capacity(snapshot, target, type_id):
    """A bound on how many mdevs of ``type_id`` the target's parents could ever hold, checked before
    anything is planned; the exact fit (:func:`_fits`) follows."""
    total = 0
    for parent in target.parents:
        types = snapshot.parents[parent]
        if type_id in types:
            here = len(snapshot.mdevs_on(parent)) + sum(t.available_instances or 0 for t in types.values())
            total += max(MDEV_PER_PARENT_MAX, here)
    return total


def _fits(types, counts, extra):
    total = Fraction(0)
    for type_id, count in counts.items():
        if count == 0:
            continue
        available = types[type_id].available_instances if type_id in types else None
        available = (available or 0) + extra.get(type_id, 0)
        if available <= 0:
            return False
        total += Fraction(count, available)
    return total <= 1


def _place(snapshot, target, where, pending, present, result, taken):
    """Give each pending mdev a parent with room and, when it has none, a generated UUID."""
    counts = {parent: {} for parent in target.parents}
    freed = {}
    for parent in target.parents:
        freed[parent] = {}
        for value in result.parents[parent].remove:
            type_id = snapshot.mdevs[value].type
            freed[parent][type_id] = freed[parent].get(type_id, 0) + 1
    short = {}
    unplaced = []
    for value, type_id in pending:
        home = None
        for parent in target.parents:
            types = snapshot.parents[parent]
            if type_id not in types:
                continue
            trial = dict(counts[parent])
            trial[type_id] = trial.get(type_id, 0) + 1
            if _fits(types, trial, freed[parent]):
                home = parent
                counts[parent] = trial
                break
        if home is None:
            short[type_id] = short.get(type_id, 0) + 1
            unplaced.append((value, type_id))
            continue
        _plan_creation(snapshot, result, home, value, type_id, taken, where)
    if not short:
        return
    message = _shortage_message(snapshot, target, where, pending, present, short)
    if not any(freed[parent] for parent in target.parents):
        raise MdevError(message)
    # The removals may free a pool that the types share, which available_instances shows only once they are
    # gone: the run plans again after removing, first fit in the parents' order. Until then, those that do not
    # fit yet go to the first parent whose removals free room (as the run will find it), so that check mode
    # predicts the whole declaration (and says it may not fit).
    result.recheck.append(message)
    for value, type_id in unplaced:
        offering = [parent for parent in target.parents if type_id in snapshot.parents[parent]]
        home = next((parent for parent in offering if freed[parent]), offering[0])
        _plan_creation(snapshot, result, home, value, type_id, taken, where)


def _plan_creation(snapshot, result, home, value, type_id, taken, where):
    """Create one mdev of ``type_id`` on ``home``, with a generated UUID when ``value`` is None."""
    if value is None:
        value = _next_uuid(snapshot, home, type_id, taken, where)
    taken.add(value)
    result.parents[home].create.append((value, type_id))
    result.parents[home].declared.append((value, type_id))


def _shortage_message(snapshot, target, where, pending, present, short):
    wanted = {}
    for _value, type_id in pending:
        wanted[type_id] = wanted.get(type_id, 0) + 1
    parts = []
    for type_id in sorted(wanted):
        offering = [snapshot.parents[p][type_id] for p in target.parents if type_id in snapshot.parents[p]]
        available = [t.available_instances or 0 for t in offering]
        parts.append(
            "%s: %d declared, %d present, %d to create, available_instances %s, %d cannot be placed"
            % (
                offering[0].label(),
                wanted[type_id] + present.get(type_id, 0),
                present.get(type_id, 0),
                wanted[type_id],
                _numbers(available, len(target.parents)),
                short.get(type_id, 0),
            )
        )
    pool = (
        " Types of one parent may share a pool, so the new instances must together satisfy"
        " sum(to create / available_instances) <= 1 on each parent."
        if len(wanted) > 1
        else ""
    )
    return "%s: the request does not fit: %s.%s Nothing was changed." % (where, "; ".join(parts), pool)


def _numbers(values, parents):
    if parents == 1:
        return str(values[0] if values else 0)
    return "%d in total over %d parents" % (sum(values), parents)


def _next_uuid(snapshot, parent, type_id, taken, where):
    if not snapshot.host_id:
        raise MdevError(
            "%s: cannot generate UUIDs: /etc/machine-id is missing or empty; run systemd-machine-id-setup, "
            "set host_id, or declare uuids" % where
        )
    index = 0
    while True:
        value = deterministic_uuid(snapshot.host_id, parent, type_id, index)
        if value not in taken:
            return value
        index += 1


# ---------------------------------------------------------------------------------------------
# Applying


def mdev_path(root, value):
    return host_path(root, MDEV_DEVICES, value)


def read_mdev(root, value):
    """``(parent, type)`` of an existing mdev, or None when it does not exist."""
    path = mdev_path(root, value)
    if not os.path.lexists(path):
        return None
    real = os.path.realpath(path)
    return os.path.basename(os.path.dirname(real)), sysfs.link_name(os.path.join(path, "mdev_type"))


def read_complete_mdev(root, value):
    """:func:`read_mdev` once the kernel has finished creating the mdev, None before: it makes the
    ``mdev_type`` link last, after the device appears and its driver's probe (``mdev_device_create()``)."""
    found = read_mdev(root, value)
    return found if found is not None and found[1] is not None else None


def _wait(check, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def create_mdev(root, parent, type_id, value, timeout=2.0):
    """Write ``value`` to the type's ``create`` and read the new mdev back."""
    path = host_path(root, MDEV_BUS, parent, "mdev_supported_types", type_id, "create")
    sysfs.write_text(path, value)
    found = _wait(lambda: read_complete_mdev(root, value), timeout) or read_mdev(root, value)
    if found != (parent, type_id):
        raise MdevError(
            "wrote %s to %s but the kernel shows %s; check dmesg for the parent driver's message"
            % (value, path, "no such mdev" if found is None else "parent %s, type %s" % found)
        )


def remove_mdev(root, value, timeout=5.0):
    """Write ``1`` to the mdev's ``remove`` and read back that it is gone."""
    path = os.path.join(mdev_path(root, value), "remove")
    sysfs.write_text(path, "1")
    if not _wait(lambda: read_mdev(root, value) is None, timeout):
        raise MdevError("wrote 1 to %s but mdev %s is still there; check dmesg" % (path, value))


class Executor:
    """Runs removals and creations, remembering them so that a failure can be undone."""

    def __init__(self, root):
        self.root = root
        self.created = []  # (parent, uuid, type)
        self.removed = []  # (parent, uuid, type)

    def remove(self, parent, value, type_id):
        remove_mdev(self.root, value)
        self.removed.append((parent, value, type_id))

    def create(self, parent, value, type_id):
        create_mdev(self.root, parent, type_id, value)
        self.created.append((parent, value, type_id))

    def rollback(self):
        """Undo this run's changes in reverse order; returns the problems met while undoing."""
        problems = []
        for _parent, value, _type_id in reversed(self.created):
            try:
                remove_mdev(self.root, value)
            except (SysfsWriteError, MdevError) as error:
                problems.append("could not remove %s again: %s" % (value, error))
        for parent, value, type_id in reversed(self.removed):
            try:
                create_mdev(self.root, parent, type_id, value)
            except (SysfsWriteError, MdevError) as error:
                problems.append("could not recreate %s (%s on %s): %s" % (value, type_id, parent, error))
        return problems


def available_report(root, parent):
    """``type=N`` for each type of ``parent`` as the kernel reports it now."""
    base = host_path(root, MDEV_BUS, parent, "mdev_supported_types")
    parts = []
    for type_id in sysfs.list_dir(base):
        value = sysfs.read_int(os.path.join(base, type_id, "available_instances"))
        parts.append("%s=%s" % (type_id, "?" if value is None else value))
    return ", ".join(parts) or "no types"


def refusal_message(root, error, parent, value, type_id, plan_, executor):
    planned = [c for c in plan_.creations if c[0] == parent]
    done = [c for c in executor.created if c[0] == parent]
    reason = str(error)
    if isinstance(error, SysfsWriteError) and error.errno in (errno.EDQUOT, errno.ENOSPC, errno.EINVAL):
        reason += "; the types of %s share a pool that the earlier creations used up" % parent
    return (
        "creating mdev %s of type %s on %s failed after %d of the %d planned on that parent: %s. "
        "available_instances at the refusal: %s."
        % (value, type_id, parent, len(done), len(planned), reason, available_report(root, parent))
    )


# ---------------------------------------------------------------------------------------------
# Persistence: mdevctl's definition files


def mdevctl_present(root):
    return any(os.path.exists(host_path(root, path)) for path in MDEVCTL_BINARIES)


def mdevctl_binary(root):
    for path in MDEVCTL_BINARIES:
        if os.path.exists(host_path(root, path)):
            return "/" + path
    return None


def mdevctl_autostart(root):
    """``(works, reason)``: whether mdevctl's udev rule can start defined mdevs at boot.

    The rule runs mdevctl by an absolute path when a parent registers. Debian's bookworm package,
    for one, installs ``/usr/bin/mdevctl`` but its rule calls ``/usr/sbin/mdevctl``: the definitions
    are then never started, and only the collection's restore brings the mdevs back.
    """
    seen = set()
    for directory in UDEV_RULE_DIRS:
        for name in sysfs.list_dir(host_path(root, directory)):
            if "mdevctl" not in name or not name.endswith(".rules") or name in seen:
                continue
            seen.add(name)
            try:
                with open(host_path(root, directory, name), encoding="utf-8") as handle:
                    text = handle.read()
            except OSError:
                continue
            paths = sorted(
                {m.group(1) for line in text.splitlines() if "RUN" in line for m in _RUN_PATH.finditer(line)}
            )
            missing = [path for path in paths if not os.path.exists(host_path(root, path))]
            if paths and not missing:
                return True, "/%s/%s runs %s" % (directory, name, ", ".join(paths))
            if missing:
                return False, "mdevctl's udev rule /%s/%s runs %s, which does not exist" % (
                    directory,
                    name,
                    ", ".join(missing),
                )
    return False, "no udev rule starts mdevctl's definitions when a parent appears"


def mdevctl_path(root, parent, value):
    return host_path(root, MDEVCTL_DIR, parent, value)


def read_mdevctl_definitions(root):
    """``{uuid: {"parent", "path", "text", "data"}}`` for every file under ``/etc/mdevctl.d``."""
    definitions = {}
    base = host_path(root, MDEVCTL_DIR)
    for parent in sysfs.list_dir(base):
        folder = os.path.join(base, parent)
        if not os.path.isdir(folder):
            continue
        for name in sysfs.list_dir(folder):
            value = normalize_uuid(name)
            if value is None:
                continue
            path = os.path.join(folder, name)
            try:
                with open(path, encoding="utf-8") as handle:
                    text = handle.read()
                data = json.loads(text)
            except (OSError, ValueError):
                text, data = None, None
            definitions[value] = {"parent": parent, "path": path, "text": text, "data": data}
    return definitions


def render_mdevctl_definition(type_id, attrs=None):
    """A definition as ``mdevctl define --auto`` writes it."""
    data = {"mdev_type": type_id, "start": "auto", "attrs": list(attrs or [])}
    return json.dumps(data, indent=2) + "\n"


def definition_matches(definition, parent, type_id):
    data = definition.get("data")
    return (
        definition.get("parent") == parent
        and isinstance(data, dict)
        and data.get("mdev_type") == type_id
        and data.get("start") == "auto"
    )


def defined_uuids_from_mdevctl(output):
    """UUIDs (lowercase) found anywhere in ``mdevctl list --defined --dumpjson`` output."""
    found = set()

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if normalize_uuid(key):
                    found.add(key.lower())
                if key == "uuid" and normalize_uuid(value):
                    found.add(value.lower())
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(output) if output.strip() else [])
    return found
