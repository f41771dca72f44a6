# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Binding one PCI device to vfio-pci (or a variant VFIO driver) and handing it back, through the kernel's
``driver_override`` / ``unbind`` / ``drivers_probe`` protocol, read back every time.

Standard library only and nothing of the host reading: the boot-time restore binds recorded VFs with it
(:mod:`restore`), the ``vfio_pci`` and ``sriov`` modules at run time (:mod:`vfio` re-uses these names).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import time

from ansible_collections.gpuvirt.host.plugins.module_utils.drivers import is_vfio_driver
from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError
from ansible_collections.gpuvirt.host.plugins.module_utils.files import FileError, remove_file, write_file
from ansible_collections.gpuvirt.host.plugins.module_utils.host import inside
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import (
    PCI_ADDRESS_PATTERN,
    PCI_DEVICES,
    PCI_DRIVERS,
    SysfsWriteError,
    host_path,
    link_name,
    read_hex,
    read_text,
    write_text,
)

VFIO_DRIVER = "vfio-pci"
DRIVERS_PROBE = "sys/bus/pci/drivers_probe"
# The hand-backs under way (:func:`release_device`). In /run: a reboot probes every device again, so a
# note older than the boot has nothing left to finish.
HANDBACKS = "run/gpuvirt/handbacks.json"
BOOT_ID = "proc/sys/kernel/random/boot_id"
_ADDRESS = re.compile(PCI_ADDRESS_PATTERN + r"\Z")


class VfioError(GpuvirtError):
    """A clear, user-facing failure: what, on which device or file, why, and what to do."""


def device_path(root, address, *parts):
    return host_path(root, PCI_DEVICES, address, *parts)


def read_driver(root, address):
    """The driver bound to the device (the ``driver`` link), or None."""
    return link_name(device_path(root, address, "driver"))


def read_override(root, address):
    """``driver_override``, or None when unset (the kernel shows ``(null)``)."""
    text = read_text(device_path(root, address, "driver_override"))
    return None if text in (None, "", "(null)") else text


def driver_loaded(root, driver=VFIO_DRIVER):
    return os.path.isdir(host_path(root, PCI_DRIVERS, driver))


def _settled_driver(root, address, settled, attempts, delay):
    """Read the ``driver`` link back until ``settled(driver)``; probing is synchronous, the
    retries cover slow udev hosts."""
    driver = read_driver(root, address)
    for _attempt in range(attempts):
        if settled(driver):
            break
        time.sleep(delay)
        driver = read_driver(root, address)
    return driver


def wait_for_a_driver(root, address, attempts=10, delay=0.1):
    """The driver bound to ``address`` once one is (a module just loaded probes its devices), or None."""
    return _settled_driver(root, address, lambda driver: driver is not None, attempts, delay)


def bind_device(root, address, driver=VFIO_DRIVER, attempts=10, delay=0.1):
    """Bind one device to ``driver`` (vfio-pci or a variant VFIO driver): set ``driver_override``,
    unbind, ``drivers_probe``, read back.

    Returns the driver now bound. A bind the kernel accepted but that left another driver (or
    none) is rolled back (the override put back as it was, the device reprobed) and raises
    :class:`VfioError`; so does a refused write, with the kernel's reason.
    """
    before = read_driver(root, address)
    if before == driver:
        return before
    previous = read_override(root, address)
    override_set = False
    try:
        if previous != driver:
            write_text(device_path(root, address, "driver_override"), driver)
            override_set = True
        if before is not None:
            write_text(host_path(root, PCI_DRIVERS, before, "unbind"), address)
        write_text(host_path(root, DRIVERS_PROBE), address)
    except SysfsWriteError as error:
        restored = _roll_back(root, address, override_set, previous)
        raise VfioError(
            "binding %s to %s failed: %s; %s" % (address, driver, error, restored)
        ) from error
    after = _settled_driver(root, address, lambda now: now == driver, attempts, delay)
    if after != driver:
        restored = _roll_back(root, address, override_set, previous)
        raise VfioError(
            "binding %s to %s was accepted by the kernel but did not take effect: its driver "
            "link reads %s; check 'dmesg' for a %s probe error (no IOMMU group, BAR reservation "
            "held by a framebuffer); %s" % (address, driver, after or "nothing (unbound)", driver, restored)
        )
    # On a driver again (a run putting back what it had moved, after a failed hand-back): a note of an
    # unfinished hand-back would later reprobe it once unbound by hand.
    _note_handback(root, address, False)
    return after


def _roll_back(root, address, override_set, previous=None):
    """Undo a failed bind so the device is not left without a driver; describe the outcome.
    ``previous``: the override before the bind (a device moving from vfio-pci to a variant
    driver goes back to vfio-pci)."""
    try:
        if override_set:
            write_text(device_path(root, address, "driver_override"), previous or "\n")
        if read_driver(root, address) is None:
            write_text(host_path(root, DRIVERS_PROBE), address)
    except SysfsWriteError as error:  # the original failure matters more; report both
        return "undoing the override failed too (%s); the device may be left unbound" % error
    driver = read_driver(root, address)
    return "the override was undone and the device is now bound to %s" % (driver or "no driver")


def release_device(root, address, variants=(), attempts=10, delay=0.1, resume=False):
    """Hand a device back: unbind it from vfio-pci or the variant VFIO driver holding it, take its ID
    out of vfio-pci's dynamic ID table, clear ``driver_override``, ``drivers_probe``, read back. A
    device already unbound whose override still names a VFIO driver (a hand-back cut short) is
    completed the same way.

    After a boot that bound the device through ``options vfio-pci ids=`` (or ``vfio-pci.ids=``)
    the ID sits in vfio-pci's table and vfio-pci, loaded first, would win the reprobe again; the
    table is runtime state, rebuilt at the next boot from the configuration. ``variants``: the
    variant VFIO drivers of the kernel (:func:`is_vfio_driver`). ``resume``: the device is one of
    :func:`interrupted_handbacks`, whose hand-back is completed from wherever it stopped. Returns the
    driver bound afterwards (the host driver, or None when no driver claims it).
    """
    try:
        # The override goes last, just before the reprobe: the unbind blocks while a process still holds
        # the device, and a run killed then leaves the override naming the VFIO driver, which the next
        # run sees and completes. A device bound by ID has no override to tell of it: every hand-back is
        # noted before its first write (:func:`interrupted_handbacks`).
        driver, override = read_driver(root, address), read_override(root, address)
        bound = is_vfio_driver(driver, variants)
        # Unbound already, its override still the VFIO driver's (or noted): a hand-back cut short after the
        # unbind.
        moving = bound or (driver is None and (resume or is_vfio_driver(override, variants)))
        if moving:
            _note_handback(root, address, True)
        if bound:
            write_text(host_path(root, PCI_DRIVERS, driver, "unbind"), address)
        if moving and driver_loaded(root, VFIO_DRIVER):
            _remove_dynamic_id(root, address)
        if override is not None:
            write_text(device_path(root, address, "driver_override"), "\n")
        if moving:
            write_text(host_path(root, DRIVERS_PROBE), address)
    except SysfsWriteError as error:
        if moving and read_driver(root, address) is not None:
            # The unbind refused: nothing left to finish. Its failure is the one to report.
            with contextlib.suppress(VfioError):
                _note_handback(root, address, False)
        raise VfioError("handing %s back to its host driver failed: %s" % (address, error)) from error
    after = _settled_driver(root, address, lambda now: not is_vfio_driver(now, variants), attempts, delay)
    if moving:
        _note_handback(root, address, False)
    if is_vfio_driver(after, variants):
        raise VfioError(
            "handing %s back to its host driver was accepted by the kernel but it is %sbound to %s; "
            "check 'dmesg' and whether a process holds the device"
            % (address, "still " if after == driver else "", after)
        )
    return after


def interrupted_handbacks(root):
    """The devices whose hand-back a run started and did not finish, left on no driver: a run killed
    between the unbind and the reprobe (SIGKILL, an OOM kill, a lost session). Nothing on such a device
    says it is to be handed back when it was bound by ID (no ``driver_override``), and a run that plans
    from the devices would leave it on no driver until the next boot. Pass each to
    :func:`release_device` with ``resume``; :func:`forget_finished_handbacks` drops the notes of the
    others.

    A note names one device as it was when noted: its address, IDs, the inode of its sysfs directory and
    the boot. Another device at that address since (a VF removed and made again), a later boot (a tree
    whose ``run`` outlives it), or a ``driver_override`` that names a driver other than a VFIO one (set
    by someone since: the hand-back clears the VFIO driver's last) make it a note of nothing to finish."""
    return [address for address, noted in _noted_handbacks(root).items() if _unfinished(root, address, noted)]


def forget_finished_handbacks(root):
    """Drop the notes of hand-backs with nothing left to do: the device gone, another, or on a driver (the
    reprobe done, or the run stopped before the unbind). Returns whether a note was dropped."""
    notes = _noted_handbacks(root)
    finished = [address for address, noted in notes.items() if not _unfinished(root, address, noted)]
    if finished:
        _write_notes(root, {address: noted for address, noted in notes.items() if address not in finished},
                     "dropping the notes of the finished hand-backs of %s" % ", ".join(finished))
    return bool(finished)


def _unfinished(root, address, noted):
    if noted != _identity(root, address) or read_driver(root, address) is not None:
        return False
    override = read_override(root, address)
    return override is None or is_vfio_driver(override)


def _identity(root, address):
    """What tells this device from another at its address: its IDs, its sysfs directory's inode (sysfs
    gives a device made again a new one) and the boot. None when it is gone."""
    try:
        inode = os.stat(device_path(root, address)).st_ino
    except OSError:
        return None
    return {
        "id": "%s:%s" % _device_ids(root, address),
        "inode": inode,
        "boot": read_text(host_path(root, BOOT_ID)),
    }


def _device_ids(root, address):
    """``(vendor, device)``: the IDs of ``address`` as 4 lowercase hex digits each (None when unreadable)."""
    return read_hex(device_path(root, address, "vendor"), 4), read_hex(device_path(root, address, "device"), 4)


def handback_notes_problem(root):
    """Why the note of the hand-backs under way cannot be read (a file damaged or edited by hand), or None
    when it can (or there is none): its hand-backs cannot be finished, and the caller says so."""
    return _read_notes(root)[1]


def handback_notes_warning(root):
    """The warning for notes that cannot be read (:func:`handback_notes_problem`), with how to hand such a
    device back by hand; None when they can."""
    problem = handback_notes_problem(root)
    if not problem:
        return None
    return (
        "%s: a hand-back an earlier run left unfinished cannot be told from it, so a device you had on "
        "vfio-pci that such a run left on no driver stays so (lspci -k shows no 'Kernel driver in use' for "
        "it). To hand one back, remove its ID from vfio-pci's table (echo '<vendor> <device>' > "
        "/sys/bus/pci/drivers/vfio-pci/remove_id), clear its driver_override and write its address to "
        "/sys/bus/pci/drivers_probe; then delete the file (the next hand-back also replaces it)" % problem
    )


def _noted_handbacks(root):
    """``{address: identity}`` of the notes; an unreadable file notes nothing (the next note replaces it)."""
    return _read_notes(root)[0]


def _read_notes(root):
    """``(notes, problem)``: ``{address: identity}`` of the notes that read as a run writes them, and why the
    file, or some entries of it, cannot be read (None when all can)."""
    path = inside(root, HANDBACKS)
    try:
        with open(path, "rb") as handle:
            noted = json.loads(handle.read().decode("utf-8"))
    except FileNotFoundError:
        return {}, None
    except OSError as error:
        return {}, "/%s cannot be read: %s" % (HANDBACKS, error.strerror or error)
    except (UnicodeDecodeError, ValueError) as error:
        return {}, "/%s is not the JSON a run writes (%s)" % (HANDBACKS, error)
    if not isinstance(noted, dict):
        return {}, "/%s holds a JSON %s, not the object of notes a run writes" % (HANDBACKS, type(noted).__name__)
    notes = {address: identity for address, identity in noted.items()
             if _ADDRESS.match(address) and isinstance(identity, dict)}
    others = sorted(set(noted) - set(notes))
    if others:
        return notes, "/%s holds entries that are not notes a run writes (%s)" % (HANDBACKS, ", ".join(others))
    return notes, None


def _note_handback(root, address, under_way):
    """Note (``under_way``) or drop the hand-back of ``address``, durably, before the next sysfs write."""
    notes = _noted_handbacks(root)
    if under_way:
        identity = _identity(root, address)
        if notes.get(address) == identity:
            return
        notes[address] = identity  # a note of another device at the address is replaced
        _write_notes(root, notes, "noting the hand-back of %s before its first write; nothing was changed on it"
                     % address)
    elif address in notes:
        del notes[address]
        _write_notes(root, notes, "dropping the note of the hand-back of %s" % address)


def _write_notes(root, notes, what):
    path = inside(root, HANDBACKS)
    try:
        if notes:
            write_file(path, json.dumps(notes, sort_keys=True) + "\n", mode=0o644)
        else:
            remove_file(path)
    except FileError as error:
        raise VfioError("%s failed: %s" % (what, error)) from error


def return_device(root, address, driver, override=None, variants=(), attempts=10, delay=0.1):
    """Put a device back on the driver it had before a run moved it (``driver``, None for none) with
    its ``driver_override`` as it was (``override``, None when unset): a VFIO driver through
    :func:`bind_device`, a host driver through :func:`release_device` (the reprobe gives the device
    to the driver the kernel matches). Returns the driver bound afterwards, read back; raises
    :class:`VfioError` when the kernel refuses a write or the device stays on the driver it is leaving.
    """
    if is_vfio_driver(driver, variants):
        after = bind_device(root, address, driver, attempts, delay)
    else:
        after = release_device(root, address, variants, attempts, delay)
    try:
        if read_override(root, address) != override:
            write_text(device_path(root, address, "driver_override"), override or "\n")
    except SysfsWriteError as error:
        raise VfioError("putting back the driver_override of %s failed: %s" % (address, error)) from error
    return after


def _remove_dynamic_id(root, address):
    vendor, device = _device_ids(root, address)
    if vendor is None or device is None:
        return
    try:
        write_text(host_path(root, PCI_DRIVERS, VFIO_DRIVER, "remove_id"), "%s %s" % (vendor, device))
    except SysfsWriteError as error:
        if error.errno != errno.ENODEV:  # ENODEV: the ID was not in the table
            raise
