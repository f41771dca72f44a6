# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Boot-time restore of the recorded device state, in a fixed order.

Virtual functions, per-VF vGPU types and mediated devices live in sysfs and are gone after a
reboot. The modules record what was declared in ``/etc/gpuvirt/host-state.json``
(:mod:`hoststate`); ``gpuvirt-restore.service`` runs this file at boot, before libvirt, as::

    PYTHONPATH=/usr/local/lib/gpuvirt python3 -m \\
        ansible_collections.gpuvirt.host.plugins.module_utils.restore

Steps, each waiting for what it needs and reading every write back, with bounded retries:

1. ``driver``: the drivers are ready: every recorded physical function exists with a driver bound
   and its SR-IOV attributes, every non-VF mdev parent is registered.
2. ``sriov``: ``sriov_numvfs`` (0 first, then N) and ``sriov_drivers_autoprobe``; an entry recorded
   with a vendor tool's ``method`` runs that tool (:func:`vendors.vf_tool`).
3. ``vfio``: the VFs of each physical function recorded with ``"vfio": true`` go to vfio-pci, each by its
   address (``driver_override``), as soon as the previous step has created them; vfio-pci is loaded first
   when nothing has loaded it. Never by ``vendor:device`` ID: a VF often shares its ID with the PF, and does
   not exist when ``vfio-pci.ids=`` or modprobe.d would be read.
4. ``mdevs``: each recorded mdev, on its parent with its type. One that mdevctl also defines is
   left to mdevctl's udev rule for a grace period (``--mdevctl-grace``), then verified, or created
   if mdevctl did not start it; the two never race for one UUID.

The vendor backends add their own steps before each of these (:func:`vendors.restore_steps`, each a
:class:`vendor_plan.RestoreStep`): for example GVT-g's ``kvmgt`` before ``driver``, a PF driver's
SR-IOV mode before ``sriov``, NVIDIA's per-VF vGPU types (``nvidia_vgpu``) before ``mdevs``. Every item
of every step gets its own status line, and a step's failure never keeps the later ones from running.
A vendor tool that enables every VF (``enables_all``) must bring back at least the recorded count.

Time budget. Each item waits up to ``--timeout`` for what it needs (the ``driver`` step's items all
count from the step's start: the drivers load together). A device whose ``driver`` or ``sriov`` item
failed is remembered (:meth:`Restore.pf_failed`): every later item named by its address or by the
address of one of its VFs (the VFs it has, or will have from its offset and stride, up to its recorded
count or ``sriov_totalvfs``), and every mdev whose parent is one of them, fails at once, not tried,
naming that cause; vendor steps get this without naming a vendor here, through their items' names.
The whole run has a deadline, ``--deadline`` (:func:`run_deadline`: 4 x ``--timeout`` +
``--mdevctl-grace`` + 30 s by default): waits stop at it, no retry or command starts after it, and the
items left fail at once, so the run ends and writes its status. The units' ``TimeoutStartSec`` is the
same deadline plus :data:`STOP_MARGIN` (:func:`start_timeout`). SIGTERM (systemd stopping the unit)
ends the run where it is and still writes the status file, with a last ``stopped`` entry.

Some items need a vendor's own services to have run first, and those start after this unit (a
backend's ``restore_unit_before``: for example a service that partitions a GPU once its VFs exist,
where a vGPU type of a partition can only be written once the partition exists). The steps'
``late_items`` are restored by ``gpuvirt-restore-late.service``, ordered after those services, which
runs this file with ``--late``: only those items, status in ``/run/gpuvirt/restore-late.json``.

Every line logged carries the seconds since boot (``/proc/uptime``); the last one, and the status
file ``/run/gpuvirt/restore.json``, give the time from boot to restored. Standard library only: the
target needs no Ansible. Exit status 0 when everything was restored, 1 otherwise (every step still
runs, so one missing device does not keep the others from coming back).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

from ansible_collections.gpuvirt.host.plugins.module_utils import host as host_model
from ansible_collections.gpuvirt.host.plugins.module_utils import hoststate, mdev, sriov, vendors
from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError, unexpected_failure
from ansible_collections.gpuvirt.host.plugins.module_utils.files import write_file
from ansible_collections.gpuvirt.host.plugins.module_utils.secureboot import signature_advice
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import (
    MDEV_BUS,
    PCI_DEVICES,
    SysfsWriteError,
    host_path,
    link_name,
    read_int,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.vendor_plan import RESTORE_ANCHORS
from ansible_collections.gpuvirt.host.plugins.module_utils.vfio_bind import VFIO_DRIVER, driver_loaded

STATUS_PATH = "run/gpuvirt/restore.json"
LATE_STATUS_PATH = "run/gpuvirt/restore-late.json"
GENERIC_STEPS = RESTORE_ANCHORS
UNIT_NAME = "gpuvirt-restore.service"
LATE_UNIT_NAME = "gpuvirt-restore-late.service"
UNIT_DIR = "etc/systemd/system"
WANTED_BY = "multi-user.target"
PACKAGE = __name__.rsplit(".", 1)[0]  # ansible_collections.gpuvirt.host.plugins.module_utils
# Seconds systemd's TimeoutStartSec gives a run past its deadline: to end its item, write the status, exit.
STOP_MARGIN = 30
# Steps whose failure for a device makes the later items on it (and on its VFs) fail at once.
DEVICE_STEPS = ("driver", "sriov")


class RestoreError(GpuvirtError):
    """One item could not be restored; ``str()`` says which and why."""


class Stopped(BaseException):
    """SIGTERM arrived (systemd stopping the unit, or its TimeoutStartSec passing). Not an ``Exception``:
    the handlers that keep one item's failure from stopping the others must let it through."""


def run_deadline(timeout, mdevctl_grace=0.0):
    """Seconds one run may take in all (``--deadline``'s default): four item waits of ``timeout``, mdevctl's
    grace period, and 30 s for the writes and the vendors' tools."""
    return timeout * 4 + mdevctl_grace + 30


def start_timeout(deadline):
    """The unit's ``TimeoutStartSec`` for a run with this deadline: :data:`STOP_MARGIN` seconds more."""
    return int(math.ceil(deadline + STOP_MARGIN))


def uptime(root):
    """Seconds since boot from ``<root>/proc/uptime``, or None when unreadable."""
    try:
        with open(host_path(root, "proc/uptime"), encoding="ascii") as handle:
            return float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def steps(late=False):
    """Every step in the order it runs: each generic step after the vendors' steps placed before it.
    ``late``: the vendor steps with ``late_items`` only, in the same order."""
    if late:
        return [step for name in GENERIC_STEPS for step in vendors.restore_steps(name) if step.late_items]
    order = []
    for name in GENERIC_STEPS:
        order.extend(vendors.restore_steps(name))
        order.append(name)
    return order


class CommandRunner:
    """What the shared helpers expect of AnsibleModule for commands (a vendor's tool), at boot.
    ``left()``: the seconds left before the run's deadline (None: no deadline); a command gets at most
    those (and 300 s), and none is started once they are gone."""

    def __init__(self, left=None):
        self.left = left

    def run_command(self, argv):
        environment = dict(os.environ, LC_ALL="C")
        limit = 300.0
        left = self.left() if self.left is not None else None
        if left is not None:
            if left <= 0:
                return 124, "", "not run: the restore's deadline has passed"
            limit = min(limit, left)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, env=environment, timeout=limit, check=False)
        except subprocess.TimeoutExpired as error:
            return 124, error.stdout or "", "timed out after %g s" % limit
        return done.returncode, done.stdout, done.stderr

    def get_bin_path(self, name, opt_dirs=None):
        search = os.pathsep.join(list(opt_dirs or []) + [os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
        return shutil.which(name, path=search)


class Restore:
    """Replays one state file. ``timeout``: seconds each item may wait for its device. ``deadline``: seconds
    the whole run may take (default :func:`run_deadline`); once they are gone every item left fails at
    once, so that the run ends and its status is written before systemd stops the unit."""

    def __init__(self, root="/", timeout=60.0, interval=0.2, attempts=3, out=None, state=None, mdevctl_grace=10.0,
                 late=False, deadline=None):
        self.root = root
        self.late = late
        self.timeout = timeout
        self.deadline = run_deadline(timeout, 0.0 if late else mdevctl_grace) if deadline is None else deadline
        self.ends = None  # time.monotonic() at the deadline, set when the run starts
        self.failed_devices = {}  # address -> why its driver or sriov item failed
        self.vfs_of_failed = {}  # address -> the addresses of its VFs (see _vfs_of)
        self.current = None  # (step, item) being restored
        self.mdevctl_grace = mdevctl_grace
        self.mdevctl = {}
        self.mdevctl_deadline = 0.0
        self.interval = interval
        self.attempts = attempts
        self.out = out or sys.stdout
        self.state = state
        self.results = []  # {"step", "item", "ok", "action", "message", "at"}
        self.started = None
        self.runner = CommandRunner(self.left)

    # -- logging ---------------------------------------------------------------------------------

    def now(self):
        value = uptime(self.root)
        return value if value is not None else time.monotonic()

    def log(self, message):
        self.out.write("gpuvirt-restore: [%9.3f s since boot] %s\n" % (self.now(), message))
        self.out.flush()

    def record(self, step, item, ok, action, message):
        self.results.append(
            {"step": step, "item": item, "ok": ok, "action": action, "message": message, "at": round(self.now(), 3)}
        )
        self.log("%s %s: %s%s" % (step, item, "" if ok else "FAILED: ", message))

    # -- waiting and retrying --------------------------------------------------------------------

    def left(self):
        """Seconds left before the run's deadline; None before the run starts."""
        return None if self.ends is None else self.ends - time.monotonic()

    def wait_for(self, check, what, timeout=None, since=None):
        """Poll ``check()`` until it returns a true value, the timeout passes (counted from ``since``, a
        ``time.monotonic()`` value, else from now) or the run's deadline does."""
        timeout = self.timeout if timeout is None else timeout
        end = (time.monotonic() if since is None else since) + timeout
        cut = self.ends is not None and self.ends < end
        if cut:
            end = self.ends
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() >= end:
                if cut:
                    raise RestoreError("%s did not happen before the restore's deadline (%g s after it started)"
                                       % (what, self.deadline))
                raise RestoreError("%s did not happen within %g s" % (what, timeout))
            time.sleep(self.interval)

    def retry(self, action):
        """Run ``action()`` up to ``attempts`` times; it raises to ask for another try. No new try once
        the run's deadline has passed."""
        error = None
        for attempt in range(1, self.attempts + 1):
            try:
                return action()
            except (GpuvirtError, OSError) as caught:
                error = caught
                if attempt < self.attempts:
                    left = self.left()
                    if left is not None and left <= 0:
                        raise RestoreError("%s (after %d of %d attempts: the restore's deadline, %g s after it "
                                           "started, has passed)" % (error, attempt, self.attempts, self.deadline)
                                           ) from None
                    time.sleep(self.interval * attempt)
        raise RestoreError("%s (after %d attempts)" % (error, self.attempts))

    def pf_failed(self, address):
        """Why nothing on ``address`` can be restored, or None: it (a physical function, an mdev parent) or
        the physical function it is a VF of failed its ``driver`` or ``sriov`` item. :meth:`_item` asks this
        for every item named by a device address and every mdev's parent; a vendor step whose item is
        named otherwise asks it for the device the item needs."""
        if not address:
            return None
        if address in self.failed_devices:
            return "%s %s" % (address, self.failed_devices[address])
        for pf, cause in self.failed_devices.items():
            if address in self.vfs_of_failed[pf]:
                return "%s is a VF of %s, which %s" % (address, pf, cause)
        return None

    def _vfs_of(self, pf):
        """The addresses the VFs of ``pf`` have or will have: up to its recorded count or ``sriov_totalvfs``
        (from its offset and stride, readable without a driver), and those whose ``physfn`` names it."""
        entry = (self.state.get("sriov") or {}).get(pf) if isinstance(self.state, dict) else None
        try:
            recorded = int(entry.get("num_vfs", 0)) if isinstance(entry, dict) else 0
        except (TypeError, ValueError):
            recorded = 0
        total = read_int(host_path(self.root, PCI_DEVICES, pf, "sriov_totalvfs")) or 0
        found = set(sriov.vf_addresses(self.root, pf, max(recorded, total)))
        devices = host_path(self.root, PCI_DEVICES)
        for name in os.listdir(devices) if os.path.isdir(devices) else ():
            if link_name(os.path.join(devices, name, "physfn")) == pf:
                found.add(name)
        return found

    # -- the steps -------------------------------------------------------------------------------

    def run(self):
        """Restore under the host lock that every changing module holds for its read-modify-write
        (:meth:`host.Host.lock`): a module run right after the boot (a play goes on once the host answers,
        while this unit may still be waiting for drivers) waits for the restore, and the restore for a
        module already running, then replays the state that module left. It waits for the lock until its
        deadline. A root whose state directory cannot be written is restored unlocked, as a check-mode
        run reads it: no run can change its state either."""
        self.started = self.now()
        self.ends = time.monotonic() + self.deadline
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(host_model.Host(self.root).lock(wait=max(self.left(), 0.0), check_mode=True))
            except GpuvirtError as error:
                self.record("lock", "/%s/%s" % (host_model.STATE_DIR, host_model.LOCK_NAME), False, "wait", str(error))
                return self.finish()
            return self._restore()

    def _restore(self):
        if self.state is None:
            try:
                self.state = hoststate.load_state(self.root)
            except hoststate.StateFileError as error:
                self.record("state", hoststate.state_path(self.root), False, "read", str(error))
                return self.finish()
        counts = ", ".join("%s %d" % (s, len(self.state.get(s) or {})) for s in hoststate.sections())
        self.log("restoring %s%s (%s)" % (
            hoststate.state_path(self.root), ": the items that need the vendors' services" if self.late else "", counts
        ))
        for step in steps(self.late):
            name = step if isinstance(step, str) else step.name
            try:
                if isinstance(step, str):
                    getattr(self, "step_" + step)()
                else:
                    self.vendor_step(step)
            except (GpuvirtError, OSError) as error:
                self.record(name, "*", False, "failed", str(error))
            except Exception as error:  # noqa: BLE001 - the later steps and the status file still run
                self.record(name, "*", False, "failed", unexpected_failure(error))
        return self.finish()

    def vendor_step(self, step):
        items = step.late_items if self.late else step.items
        for item, action in items(self.state, self.root):
            self._item(step.name, item, lambda action=action: action(self))

    def step_driver(self):
        # The drivers load together: every wait of this step counts from its start, so that N devices
        # whose driver never comes cost one timeout, not N.
        since = time.monotonic()
        entries = self.state.get("sriov") or {}
        for pf in sorted(entries):
            self._item("driver", pf, lambda pf=pf: self._wait_pf(pf, since))
        later = set()
        for pf, entry in entries.items():
            count = int(entry.get("num_vfs", 0)) if isinstance(entry, dict) else 0
            later.update(sriov.vf_addresses(self.root, pf, count))
        parents = sorted(
            {
                entry.get("parent")
                for entry in (self.state.get("mdevs") or {}).values()
                if isinstance(entry, dict) and entry.get("parent")
            }
        )
        for parent in parents:
            if parent not in later:  # a VF parent appears in the next step
                self._item("driver", parent, lambda parent=parent: self._wait_parent(parent, since))

    def _wait_pf(self, pf, since=None):
        base = host_path(self.root, PCI_DEVICES, pf)
        self.wait_for(lambda: os.path.exists(base + "/sriov_numvfs"), "%s with SR-IOV attributes appearing" % pf,
                      since=since)
        try:
            driver = self.wait_for(lambda: link_name(base + "/driver"), "a driver binding to %s" % pf, since=since)
        except RestoreError as error:
            advice = vendors.no_driver_advice(self.root, pf)
            if advice:
                raise RestoreError("%s: %s" % (error, advice)) from None
            raise
        return "present, driver %s" % driver

    def _wait_parent(self, parent, since=None):
        self.wait_for(
            lambda: os.path.lexists(host_path(self.root, MDEV_BUS, parent)), "mdev parent %s registering" % parent,
            since=since,
        )
        return "mdev parent registered"

    def step_sriov(self):
        entries = self.state.get("sriov") or {}
        if not entries:
            return
        for pf, entry in sorted(entries.items()):
            self._item("sriov", pf, lambda pf=pf, entry=entry: self._restore_vfs(pf, entry))

    def _restore_vfs(self, pf, entry):
        wanted = int(entry.get("num_vfs", 0))
        autoprobe = entry.get("drivers_autoprobe")
        method = entry.get("method")
        tool = vendors.vf_tool(method) if method not in (None, "sysfs") else None
        # A tool that enables every VF the GPU has (sriov-manage): at least the recorded count must be back.
        by_tool = tool is not None and tool.enables_all

        def restored(count):
            return (count or 0) >= wanted if by_tool and wanted else count == wanted

        def attempt():
            sriov.restore_pf(
                self.root,
                pf,
                wanted,
                drivers_autoprobe=autoprobe,
                method=entry.get("method"),
                runner=self.runner,
                retries=10,
                delay=self.interval,
            )
            current = read_int(host_path(self.root, PCI_DEVICES, pf, "sriov_numvfs"))
            if not restored(current):
                raise RestoreError("sriov_numvfs of %s reads %s, expected %d" % (pf, current, wanted))
            return current

        before = read_int(host_path(self.root, PCI_DEVICES, pf, "sriov_numvfs"))
        if restored(before) and (autoprobe is None or self._autoprobe(pf) == autoprobe):
            return "num_vfs %d already" % before
        current = self.retry(attempt)
        return "num_vfs %d (was %s%s), read back" % (current, before, ", by %s" % tool.name if tool else "")

    def step_vfio(self):
        entries = self.state.get("sriov") or {}
        for pf, entry in sorted(entries.items()):
            if isinstance(entry, dict) and entry.get("vfio") and int(entry.get("num_vfs", 0)):
                self._item("vfio", pf, lambda pf=pf, entry=entry: self._vfs_to_vfio(pf, entry))

    def _vfs_to_vfio(self, pf, entry):
        wanted = int(entry.get("num_vfs", 0))
        info = sriov.read_sriov(self.root, pf)
        vfs = info["vfs"] if info else []
        if not vfs:
            raise RestoreError("%s has none of its %d recorded VFs to hand to vfio-pci (see its sriov step)"
                               % (pf, wanted))
        loaded = "loaded"
        if not driver_loaded(self.root, VFIO_DRIVER):
            command = [self.runner.get_bin_path("modprobe") or "modprobe", "vfio-pci"]
            rc, out, err = self.runner.run_command(command)
            if rc != 0 or not driver_loaded(self.root, VFIO_DRIVER):
                advice = signature_advice("%s\n%s" % (out, err), "vfio-pci", self.root)
                raise RestoreError("%s failed (exit %s: %s); the VFs of %s stay without vfio-pci%s"
                                   % (" ".join(command), rc, " ".join((out + " " + err).split())[-200:] or "no output",
                                      pf, advice and ". " + advice))
            loaded = "loaded by modprobe"
        bound, already = self.retry(lambda: sriov.hand_vfs_to_vfio(self.root, vfs, delay=self.interval))
        return "%d VF(s) on vfio-pci (%s), read back: %d bound, %d already (vfio-pci %s)" % (
            len(vfs), ", ".join(vfs), len(bound), len(already), loaded)

    def _autoprobe(self, pf):
        value = read_int(host_path(self.root, PCI_DEVICES, pf, "sriov_drivers_autoprobe"))
        return None if value is None else bool(value)

    def step_mdevs(self):
        self.mdevctl = {}
        if mdev.mdevctl_present(self.root):
            works, reason = mdev.mdevctl_autostart(self.root)
            if works:
                self.mdevctl = mdev.read_mdevctl_definitions(self.root)
            else:
                self.log("mdevs: mdevctl will not start them (%s); creating them here" % reason)
        # One grace period for all of them: mdevctl starts a parent's mdevs together.
        self.mdevctl_deadline = time.monotonic() + self.mdevctl_grace
        for value, entry in sorted((self.state.get("mdevs") or {}).items(), key=lambda i: (str(i[1]), i[0])):
            parent = entry.get("parent") if isinstance(entry, dict) else None
            self._item("mdevs", value, lambda value=value, entry=entry: self._restore_mdev(value, entry), parent)

    def restore_mdev(self, value, entry):
        """Create (or verify) the recorded mdev ``value`` for a vendor's late step: its type could not be
        created before the vendor's services had run."""
        return self._restore_mdev(value, entry, late=True)

    def _restore_mdev(self, value, entry, late=False):
        if not isinstance(entry, dict) or not entry.get("parent") or not entry.get("type"):
            raise RestoreError("the state file entry %r has no parent and type" % (entry,))
        parent, type_id = entry["parent"], entry["type"]
        type_dir = host_path(self.root, MDEV_BUS, parent, "mdev_supported_types", type_id)
        self.wait_for(lambda: os.path.isdir(type_dir), "type %s of mdev parent %s appearing" % (type_id, parent))
        if not late:
            reason = vendors.late_mdev(self.root, parent, type_id)
            if reason:
                return reason
        definition = self.mdevctl.get(value)
        if definition is not None and mdev.definition_matches(definition, parent, type_id):
            # mdevctl's udev rule starts it when the parent registers: give it the first go, so that
            # the two do not race for the same UUID, and create it only if mdevctl did not.
            with contextlib.suppress(RestoreError):
                left = max(0.0, self.mdevctl_deadline - time.monotonic())
                self.wait_for(lambda: mdev.read_complete_mdev(self.root, value) is not None, "mdevctl", left)
            found = mdev.read_mdev(self.root, value)
            if found == (parent, type_id):
                return "started by mdevctl on %s (%s), verified" % (parent, type_id)
        found = mdev.read_mdev(self.root, value)
        if found is not None and found[1] is None:
            # Another creator (mdevctl's udev rule) is still at it: the kernel links mdev_type last.
            with contextlib.suppress(RestoreError):
                self.wait_for(lambda: mdev.read_complete_mdev(self.root, value) is not None,
                              "mdev %s being created" % value)
            found = mdev.read_mdev(self.root, value)
        if found == (parent, type_id):
            return "already present on %s (%s), verified" % (parent, type_id)
        if found is not None and found[1] is None:
            raise RestoreError("exists on %s, but the kernel did not finish creating it (no mdev_type link)" % found[0])
        if found is not None:
            raise RestoreError("exists on %s with type %s instead of %s on %s" % (found + (type_id, parent)))

        def attempt():
            try:
                mdev.create_mdev(self.root, parent, type_id, value)
            except SysfsWriteError:
                # mdevctl's udev rule may have created it in the meantime.
                if mdev.read_mdev(self.root, value) != (parent, type_id):
                    raise

        self.retry(attempt)
        late = " (mdevctl had not started it within %g s)" % self.mdevctl_grace if definition is not None else ""
        return "created on %s (%s), read back%s" % (parent, type_id, late)

    def _item(self, step, item, action, needs=None):
        """Run one item and record it. ``needs``: the device it needs besides ``item`` itself (an mdev's
        parent). It fails at once, not tried, when the run's deadline has passed or when that device failed
        its ``driver`` or ``sriov`` item (:meth:`pf_failed`): its wait could only time out."""
        self.current = (step, item)
        if self.ends is not None and time.monotonic() >= self.ends:
            self.record(step, item, False, "not tried", "not tried: the restore's deadline (%g s after it started) "
                        "has passed" % self.deadline)
            return
        cause = self.pf_failed(item) or self.pf_failed(needs)
        if cause:
            self.record(step, item, False, "not tried", "not tried: %s" % cause)
            return
        try:
            message = action()
        except (GpuvirtError, OSError) as error:
            self._failed(step, item, str(error))
        except Exception as error:  # noqa: BLE001 - one bad item must not keep the others from coming back
            self._failed(step, item, unexpected_failure(error))
        else:
            self.record(step, item, True, "done", message)

    def _failed(self, step, item, message):
        self.record(step, item, False, "failed", message)
        if step in DEVICE_STEPS and item not in self.failed_devices:
            short = message if len(message) <= 200 else message[:197] + "..."
            self.failed_devices[item] = "failed its %s step (%s)" % (step, short)
            self.vfs_of_failed[item] = self._vfs_of(item)

    def stopped(self, reason):
        """The status after ``reason`` (a signal) stopped the run: what was done, and where it stopped."""
        if self.started is None:
            self.started = self.now()
        where = "%s %s" % self.current if self.current else "before the first item"
        self.record("restore", "*", False, "stopped",
                    "stopped by %s (systemd stopping the unit, or its TimeoutStartSec passing) during %s; the items "
                    "after it were not tried" % (reason, where))
        return self.finish()

    # -- the end ---------------------------------------------------------------------------------

    def finish(self):
        finished = self.now()
        failed = [r for r in self.results if not r["ok"]]
        status = {
            "ok": not failed,
            "items": len(self.results),
            "failed": len(failed),
            "started_s": round(self.started, 3),
            "boot_to_restored_s": round(finished, 3) if uptime(self.root) is not None else None,
            "duration_s": round(finished - self.started, 3),
            "deadline_s": self.deadline,
            "results": self.results,
        }
        self.log(
            "%s: %d item(s), %d failed, %.3f s; boot to restored: %s"
            % (
                "restored" if not failed else "restore INCOMPLETE",
                len(self.results),
                len(failed),
                status["duration_s"],
                "%.3f s" % status["boot_to_restored_s"] if status["boot_to_restored_s"] is not None else "unknown",
            )
        )
        return status


def render_unit(prefix, python, timeout, mdevctl_grace):
    """The text of ``gpuvirt-restore.service``."""
    later = _vendor_units_after()
    return _unit(
        "Brings back what gpuvirt.host recorded in /etc/gpuvirt/host-state.json: SR-IOV virtual\n"
        "# functions, the vendors' devices (vGPU types), then mediated devices, each read back. `journalctl -u\n"
        "# gpuvirt-restore` and /run/gpuvirt/restore.json give each step and the time from boot to restored.",
        "Restore GPU virtualization devices (SR-IOV VFs, vGPU types, mediated devices)",
        "After=systemd-modules-load.service\nBefore=libvirtd.service virtqemud.service\n"
        + ("Before=%s\n" % " ".join(later) if later else ""),
        prefix,
        "%s -m %s.restore --timeout %g --mdevctl-grace %g --deadline %g"
        % (python, PACKAGE, timeout, mdevctl_grace, run_deadline(timeout, mdevctl_grace)),
        start_timeout(run_deadline(timeout, mdevctl_grace)),
    )


def render_late_unit(prefix, python, timeout):
    """The text of ``gpuvirt-restore-late.service``: the steps' ``late_items``, after the vendors'
    services that start after ``gpuvirt-restore.service``. systemd ignores ordering against a unit
    that is not installed, so on a host without them it runs right after the first."""
    return _unit(
        "Brings back what %s leaves until the vendors' services it starts before have\n"
        "# prepared the devices. `journalctl -u gpuvirt-restore-late` and /run/gpuvirt/restore-late.json\n"
        "# give each item." % UNIT_NAME,
        "Restore GPU virtualization devices that need the vendors' services first",
        "After=%s\nBefore=libvirtd.service virtqemud.service\n" % " ".join([UNIT_NAME] + _vendor_units_after()),
        prefix,
        "%s -m %s.restore --late --timeout %g --deadline %g" % (python, PACKAGE, timeout, run_deadline(timeout)),
        start_timeout(run_deadline(timeout)),
    )


def _unit(comment, description, ordering, prefix, command, start_timeout):
    return (
        "# Managed by gpuvirt.host.restore_unit; edits are overwritten.\n"
        "# %s\n"
        "[Unit]\n"
        "Description=%s\n"
        "%s"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        "Environment=PYTHONPATH=%s\n"
        "ExecStart=%s\n"
        "TimeoutStartSec=%d\n"
        "\n"
        "[Install]\n"
        "WantedBy=%s\n" % (comment, description, ordering, prefix, command, start_timeout, WANTED_BY)
    )


def _vendor_units_after():
    """The vendors' services that must start after this unit has set up the VFs (a backend's
    ``restore_unit_before``), in registry order."""
    units = []
    for backend in vendors.BACKENDS:
        units.extend(unit for unit in backend.restore_unit_before if unit not in units)
    return units


def code_sources(start="restore"):
    """``{file name: source}`` of ``start`` and every collection module_utils it imports, recursively.

    Sources are read through the modules' loaders, so this works from a checkout and from the zip
    Ansible sends to a target alike: what gets installed is exactly what the restore imports.
    """
    sources = {}
    pending = [start]
    while pending:
        name = pending.pop()
        if name + ".py" in sources:
            continue
        full = "%s.%s" % (PACKAGE, name)
        module = importlib.import_module(full)
        source = module.__loader__.get_source(full)
        if source is None:
            raise RuntimeError("cannot read the source of %s to install it" % full)
        sources[name + ".py"] = source
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
                pending.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE + "."):
                pending.append(node.module[len(PACKAGE) + 1 :])
    return dict(sorted(sources.items()))


def write_status(path, status):
    """Write the status file atomically (readers may poll it while the unit runs)."""
    write_file(path, json.dumps(status, indent=2, sort_keys=True) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="gpuvirt-restore",
        description="Restore SR-IOV VFs, the vendors' vGPU state and mediated devices from %s." % hoststate.STATE_PATH,
    )
    parser.add_argument("--root", default="/", help="the host root (default /)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds each item may wait for its device")
    parser.add_argument(
        "--deadline", type=float,
        help="seconds the whole run may take; the items left after it fail at once (default: 4 x --timeout + "
        "--mdevctl-grace + 30; the units' TimeoutStartSec is %d s more)" % STOP_MARGIN,
    )
    parser.add_argument("--attempts", type=int, default=3, help="writes tried per item before giving up")
    parser.add_argument(
        "--mdevctl-grace", type=float, default=10.0, help="seconds mdevctl gets to start the mdevs it defines"
    )
    parser.add_argument(
        "--late", action="store_true",
        help="restore only the items that need the vendors' services (run by %s)" % LATE_UNIT_NAME,
    )
    parser.add_argument(
        "--status-file",
        help="where to write the JSON status (default <root>/%s, with --late <root>/%s)"
        % (STATUS_PATH, LATE_STATUS_PATH),
    )
    args = parser.parse_args(argv)
    restore = Restore(
        root=args.root, timeout=args.timeout, attempts=args.attempts, mdevctl_grace=args.mdevctl_grace, late=args.late,
        deadline=args.deadline,
    )

    def stop(signum, _frame):
        raise Stopped(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        status = restore.run()
    except Stopped as reason:
        status = restore.stopped(str(reason))
    finally:
        # The status is written whatever arrives now: systemd kills the unit after TimeoutStopSec anyway.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        write_status(args.status_file or host_path(args.root, LATE_STATUS_PATH if args.late else STATUS_PATH), status)
    except (GpuvirtError, OSError) as error:
        restore.log("could not write the status file: %s" % error)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0 if status["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
