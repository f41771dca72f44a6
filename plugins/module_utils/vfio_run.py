# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``vfio_pci`` module's run (:mod:`modrun`): read the host, resolve and guard the devices,
plan the runtime binding and (through :class:`vfio_boot.BootConfigPlanner`) the boot-time
configuration, then apply both and read them back."""

from __future__ import annotations

import os

from ansible_collections.gpuvirt.host.plugins.module_utils import bootloader, initramfs, pending
from ansible_collections.gpuvirt.host.plugins.module_utils.drivers import is_vfio_driver
from ansible_collections.gpuvirt.host.plugins.module_utils.files import (
    apply_change,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.kernel import (
    read_vfio_aliases,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.modrun import ModuleRun
from ansible_collections.gpuvirt.host.plugins.module_utils.rules import iommu_on_advice
from ansible_collections.gpuvirt.host.plugins.module_utils.secureboot import signature_advice
from ansible_collections.gpuvirt.host.plugins.module_utils.selector import (
    describe,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import read_text
from ansible_collections.gpuvirt.host.plugins.module_utils.vfio import (
    MODPROBE_CONF,
    VFIO_DRIVER,
    GuardError,
    VfioError,
    _read_file,
    bind_refusals,
    carved_refusals,
    choose_drivers,
    expand_members,
    find_program,
    in_use_refusals,
    kept_by_sriov_refusals,
    module_of,
    read_host,
    resolve_selectors,
    split_overlap,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.vfio_bind import (
    bind_device,
    device_path,
    driver_loaded,
    forget_finished_handbacks,
    handback_notes_warning,
    interrupted_handbacks,
    read_driver,
    read_override,
    release_device,
    return_device,
    wait_for_a_driver,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.vfio_boot import (
    BootConfigPlanner,
)


class VfioPciRun(BootConfigPlanner, ModuleRun):
    """One run of the vfio_pci module: read, plan, guard, then (outside check mode) apply."""

    def __init__(self, module, host):
        super().__init__(module, host)
        params = module.params
        self.state = params["state"]
        self.selectors = params["devices"]
        self.with_companions = params["companions"]
        self.runtime = params["runtime"]
        self.persistence_method = params["persistence"] if params["persistent"] else "none"
        self.regenerate_initramfs = params["initramfs"]
        self.force = params["force"]
        self.driver = params.get("driver") or "auto"
        self.live = host.live
        self.warnings = []
        self.commands = []
        self.members = {}
        self.before = {}
        self.after = {}
        self.view = None
        self.choices = {}
        self.variants = []
        self.kept_by = {}
        self.modules_loaded = []
        self.overrides_before = {}
        self.runtime_undone = False
        self.interrupted = set()
        self.resumed = {}
        self.resumed_done = []

    # -- plan -------------------------------------------------------------------------------------

    def plan(self):
        """Read, resolve, guard and plan; the plan is kept on the run (``self.changing``, ``self.persistence``, ...)."""
        view = self.view = read_host(self.root)
        if not self.selectors:
            self.warnings.append(
                "devices is empty, so there is nothing to %s: was it meant to be a templated list that came out "
                "empty?" % ("bind" if self.state == "present" else "hand back")
            )
        selected = resolve_selectors(self.selectors, view.devices, binding=self.state == "present")
        self.members = expand_members(view, selected, self.with_companions)
        if self.state == "present":
            contradiction = split_overlap(view, self.members, self.params["split"])
            if contradiction is not None:
                raise VfioError(contradiction)
        release = view.kernel.get("release")
        aliases = read_vfio_aliases(self.root, release)
        self.variants = sorted({driver for _pattern, driver in aliases})
        requested = self.driver if self.state == "present" else "auto"
        self.choices = choose_drivers(self.root, self.members, requested, aliases, release)
        self.before = {address: view.devices[address].driver for address in self.members}
        # Devices an earlier run left on no driver, killed in the middle of handing them back: handed back
        # first, whatever the run does with the others, and outside their all or nothing (a failure there
        # does not put them back on no driver); but one this run binds now needs nothing more.
        self.interrupted = set(interrupted_handbacks(self.root)) if self.runtime else set()
        unreadable = handback_notes_warning(self.root) if self.runtime else None
        if unreadable:
            self.warnings.append(unreadable)
        self.resumed = {address: None for address in sorted(self.interrupted)
                        if not (self.state == "present" and address in self.members)}
        if self.state == "present":
            wanted = [a for a in self.members if self.before[a] != self.choices[a].driver]
        else:
            wanted = [
                a for a in self.members
                if a not in self.resumed and (is_vfio_driver(self.before[a], self.variants)
                                              or is_vfio_driver(view.devices[a].driver_override, self.variants))
            ]
        self.runtime_skipped = None
        if not self.runtime:
            self.changing = []
            if wanted:
                self.runtime_skipped = "runtime: false"
        elif self.state == "present" and wanted and not view.iommu_enabled:
            self.changing = []
            self.runtime_skipped = (
                "the IOMMU is off in the running kernel, so no VFIO driver can take %s now; the boot-time "
                "configuration binds %s at the next boot once the IOMMU is on: %s"
                % (", ".join(wanted), "them" if len(wanted) > 1 else "it",
                   iommu_on_advice(view.architecture, view.iommu_vendor))
            )
        else:
            self.changing = wanted
        if self.state == "present":
            refusals = bind_refusals(view, self.members, self.changing)
            if not view.iommu_enabled:
                self.warnings.append(
                    "the IOMMU is off, so the IOMMU groups are not known yet and could not be checked; run "
                    "this again after the reboot to check them and bind the devices now"
                )
        else:
            refusals = (in_use_refusals(view, self.changing, "unbinding") + carved_refusals(view, self.changing)
                        + kept_by_sriov_refusals(view, self.changing))
        # A host driver put on a device of a group a VM holds (kernels before 5.19 stop the host).
        refusals += in_use_refusals(view, list(self.resumed), "handing back")
        self.persistence = self._plan_persistence(view)
        refusals.extend(self.persistence.refusals)
        self.warnings.extend(self.persistence.warnings)
        if refusals:
            if not self.force:
                raise GuardError(refusals)
            self.warnings.extend("force: true: going ahead although " + r.message for r in refusals)
        self.refusals = refusals
        needed = {self.choices[a].driver for a in self.changing} if self.state == "present" else set()
        self.load_drivers = sorted((d for d in needed if not driver_loaded(self.root, d)),
                                   key=lambda d: (d != VFIO_DRIVER, d))
        if self.load_drivers and not self.live:
            several = len(self.load_drivers) > 1
            raise VfioError(
                "the %s driver%s not loaded below %s (no %s) and modules can only be loaded on this host's /; "
                "nothing was changed"
                % (", ".join(self.load_drivers), "s are" if several else " is", self.root,
                   ", ".join("sys/bus/pci/drivers/" + driver for driver in self.load_drivers))
            )
        self.initramfs = self._plan_initramfs(view)

    # -- apply ------------------------------------------------------------------------------------

    @property
    def changed(self):
        return (bool(self.changing) or bool(self.resumed) or bool(self.load_drivers) or self.persistence.changed
                or self.initramfs.changed)

    def apply(self, _plan=None):
        """Change the host. Raises :class:`VfioError` on failure; ``self.changes_made`` tells whether
        something had been changed by then."""
        for driver in self.load_drivers:
            self._run([self._program("modprobe"), module_of(driver)], "loading the %s module" % module_of(driver))
            self.changes_made = True
            self.modules_loaded.append(module_of(driver))
            if not driver_loaded(self.root, driver):
                raise VfioError(
                    "modprobe %s succeeded but /sys/bus/pci/drivers/%s does not exist; check 'dmesg' (Secure Boot "
                    "lockdown, a kernel without VFIO)" % (module_of(driver), driver)
                )
        for address in self.resumed:
            try:
                self.resumed[address] = release_device(self.root, address, self.variants, resume=True)
            except VfioError as error:
                self.runtime_undone = True  # stopped before the devices it names and the boot configuration
                self.changes_made = bool(self.resumed_done) or read_driver(self.root, address) is not None
                raise VfioError(
                    "%s; an earlier run was stopped while handing %s back, and this run finishes that first: the "
                    "devices it names were not touched" % (error, address), changed=self.changes_made) from error
            self.changes_made = True
            self.resumed_done.append(address)
        self._load_host_drivers([a for a in self.resumed_done if self.resumed[a] is None], self.resumed)
        self._move_devices()
        if self.state == "absent":
            self._load_host_drivers([a for a in self.changing if self.after.get(a) is None], self.after)
        forget_finished_handbacks(self.root)
        # The boot-time configuration is written only once every device has moved: a failure above
        # leaves the files as they were, matching the devices handed back. The images built from it
        # are marked out of date first, so that a run killed before they are rebuilt is made whole
        # by the next.
        if self.initramfs.run:
            pending.mark(self.root, pending.INITRAMFS, releases=self.initramfs.releases, tool=self.initramfs.tool)
        for change in self.persistence.files:
            if change.changed:
                self.changes_made = True
                apply_change(change)
        for entry in self.persistence.driverctl:
            if not entry.file.changed:
                continue
            self.changes_made = True
            if entry.command is None:
                apply_change(entry.file)
                continue
            self._run(entry.command, "driverctl for %s" % entry.address)
            now = _read_file(entry.file.full_path)
            if (now or "").strip() != (entry.file.new or "").strip():
                raise VfioError(
                    "%s ran but %s reads %r afterwards, expected %r"
                    % (" ".join(entry.command), entry.file.display_path, now, entry.file.new)
                )
        if self.persistence.boot_plan is not None and self.persistence.boot_plan.changed:
            self.changes_made = True
            try:
                bootloader.apply(self.module, self.persistence.boot_plan)
            except bootloader.BootloaderError as error:
                raise VfioError(str(error)) from error
            if self.persistence.boot_plan.run_commands:
                self.commands.extend(self.persistence.boot_plan.commands)
            self.warnings.extend(self.persistence.boot_plan.warnings)
        self._apply_initramfs()

    def _move_devices(self):
        """Move every device of the plan, all or nothing: when one fails, the devices moved before it
        go back to the driver they had (an IOMMU group split between a VFIO driver and host drivers
        serves neither a VM nor the host)."""
        moved = []
        for address in self.changing:
            self.overrides_before[address] = read_override(self.root, address)
            self.changes_made = True
            try:
                if self.state == "present":
                    self.after[address] = bind_device(self.root, address, self.choices[address].driver)
                else:
                    self.after[address] = release_device(
                        self.root, address, self.variants, resume=address in self.interrupted)
            except VfioError as error:
                self._move_back(moved, address, error)
            moved.append(address)

    def _load_host_drivers(self, left, drivers):
        """Devices handed back that no driver took: the boot bound them by ID, so nothing loaded their
        host driver's module, and ``drivers_probe`` tries loaded drivers only. On this host their
        modalias is loaded as udev loads a new device's (``modprobe -b``: blacklists kept), and the
        module's driver takes them as it registers; a device left without a driver is warned about.
        ``drivers``: where the driver each of ``left`` ends on is kept (``self.after``, ``self.resumed``)."""
        modprobe = find_program(self.module, self.root, "modprobe") if left and self.live else None
        if modprobe is not None:
            aliases = {read_text(device_path(self.root, address, "modalias")) for address in left}
            for alias in sorted(alias for alias in aliases if alias):
                argv = [modprobe, "-b", alias]
                self.commands.append(argv)
                self.module.run_command(argv, environ_update={"LC_ALL": "C", "LANG": "C"})
            for address in left:
                drivers[address] = wait_for_a_driver(self.root, address)
        for address in left:
            if drivers[address] is None:
                self.warnings.append(
                    "%s was handed back but no driver took it: its host driver's module is not loaded%s; load it "
                    "(modprobe -b $(cat /sys/bus/pci/devices/%s/modalias)) or reboot"
                    % (address, "" if self.live else " below %s (not this host's /)" % self.root, address)
                )

    def _move_back(self, moved, failed, error):
        """Put ``moved`` and, if it is not as it was, ``failed`` back as they were before this run, read
        them back and raise the failure with the outcome; ``changed`` stays true only when a device
        could not be put back or a module was loaded."""
        self.runtime_undone = True
        returned, stuck = [], []
        for address in reversed(moved + [failed]):
            before, override = self.before[address], self.overrides_before[address]
            problem = None
            if address not in moved and self._as_before(address):
                self.after[address] = before
                continue
            try:
                return_device(self.root, address, before, override, self.variants)
            except VfioError as undo_error:
                problem = str(undo_error)
            self.after[address] = read_driver(self.root, address)
            if problem is None and self._as_before(address):
                returned.append("%s to %s" % (address, before or "no driver"))
            else:
                stuck.append("%s (%snow %s; it was %s)" % (
                    address, problem + "; " if problem else "",
                    _binding(self.after[address], read_override(self.root, address)), _binding(before, override)))
        self.changes_made = bool(stuck) or bool(self.modules_loaded) or bool(self.resumed_done)
        message = str(error)
        if returned:
            message += "; the devices of one run move all or nothing, so those this run had moved were put " \
                "back: " + ", ".join(reversed(returned))
        if stuck:
            message += "; %scould not be put back: %s. The host was changed: free the device%s and run the " \
                "task again, or reboot (the boot-time configuration was not changed)" % (
                    "" if returned else "the devices of one run move all or nothing, but ",
                    ", ".join(reversed(stuck)), "s" if len(stuck) > 1 else "")
        elif self.modules_loaded:
            message += "; the %s module%s loaded by this run stay%s loaded, nothing else was changed" % (
                " and ".join(self.modules_loaded), *(("s", "") if len(self.modules_loaded) > 1 else ("", "s")))
        elif not self.resumed_done:
            message += "; nothing was changed"
        if self.resumed_done:
            message += "; the hand-back%s of %s, which an earlier run left unfinished, %s finished first" % (
                "s" if len(self.resumed_done) > 1 else "", ", ".join(self.resumed_done),
                "were" if len(self.resumed_done) > 1 else "was")
        raise VfioError(message, changed=self.changes_made) from error

    def _as_before(self, address):
        return (read_driver(self.root, address), read_override(self.root, address)) == (
            self.before[address], self.overrides_before[address])

    def _apply_initramfs(self):
        plan = self.initramfs
        if plan.config is not None and plan.config.changed:
            self.changes_made = True
            apply_change(plan.config)
        if not plan.run:
            return
        modprobe = self.persistence.files[0]
        built = 0
        try:
            for release in plan.releases:
                self.commands.append(initramfs.regenerate(self.module, self.root, release, plan.tool))
                built += 1
            for release in plan.releases:
                self._verify_image(plan, release, modprobe)
        except (initramfs.InitramfsError, VfioError) as error:
            # Put the inputs back so that the next run sees the change again and rebuilds.
            restored = [change for change in (modprobe, plan.config) if change is not None and change.changed]
            for change in restored:
                apply_change(change.reverse())
            # The tools build an image aside and move it into place at their end: when the first build
            # failed, the images are as old as the inputs put back. Otherwise (an image was built from
            # the new inputs, or an earlier run's inputs are still newer than the images) the next run
            # rebuilds them whatever it changes.
            if built == 0 and not plan.resumed:
                pending.clear(self.root, pending.INITRAMFS)
            raise VfioError(
                "%s; %s put back as before so that the next run rebuilds the initramfs"
                % (error, " and ".join(change.display_path for change in restored) or "nothing was")
            ) from error
        plan.verified = True
        pending.clear(self.root, pending.INITRAMFS)

    def _verify_image(self, plan, release, modprobe):
        if modprobe.new is not None:
            check = initramfs.verify_image(self.module, self.root, release, plan.modules, ["/" + MODPROBE_CONF],
                                           plan.tool)
            plan.images.append(check.image)
            if not check.ok:
                raise VfioError(
                    "the rebuilt initramfs %s lacks %s; vfio-pci would not claim the devices before their host "
                    "drivers at boot" % (check.image, ", ".join(check.missing_modules + check.missing_files))
                )
            return
        image, paths = initramfs.list_image(self.module, self.root, release, plan.tool)
        plan.images.append(image)
        if MODPROBE_CONF in paths or "usr/" + MODPROBE_CONF in paths:
            raise VfioError("the rebuilt initramfs %s still holds /%s" % (image, MODPROBE_CONF))

    def _program(self, name):
        program = find_program(self.module, self.root, name)
        if program is None:
            raise VfioError("%s was not found on this host" % name)
        return program

    def _run(self, argv, what):
        self.commands.append(argv)
        rc, out, err = self.module.run_command(argv, environ_update={"LC_ALL": "C", "LANG": "C"})
        if rc != 0:
            advice = signature_advice("%s\n%s" % (out, err), root=self.root)
            raise VfioError(
                "%s failed: %s exited with %d: %s%s"
                % (what, " ".join(argv), rc, (err or out).strip() or "no output", advice and "; " + advice)
            )
        return out

    # -- result -----------------------------------------------------------------------------------

    def devices_result(self):
        result = {}
        for address, member in self.members.items():
            record = self.view.records[address]
            before = self.before[address]
            resumed = address in self.resumed  # an earlier run's hand-back, finished first
            if resumed:
                after = self.resumed[address] if address in self.resumed_done else before
            elif address in self.after:
                after = self.after[address]
            elif address in self.changing and self.check_mode:
                after = self.choices[address].driver if self.state == "present" else None
            elif address in self.changing:
                after = read_driver(self.root, address)
            else:
                after = before
            result[address] = {
                "id": "%s:%s" % (record["vendor_id"], record["device_id"]),
                "name": describe(record),
                "iommu_group": record["iommu_group"],
                "selected_by": member.selected_by,
                "companion_of": member.companion_of,
                "driver_before": before,
                "driver_after": after,
                "changed": after != before if self.runtime_undone else address in self.changing or resumed,
            }
            result[address].update(self._driver_result(address))
        return result

    def _driver_result(self, address):
        """The VFIO driver chosen for a device, why, and how it is kept across reboots."""
        choice = self.choices[address]
        present = self.state == "present"
        return {
            "driver": choice.driver if present else None,
            "driver_reason": choice.reason if present else None,
            "modalias": choice.modalias,
            "variant_drivers": list(choice.variants),
            "persistence": self.kept_by.get(address, "none"),
        }

    def reboot_reasons(self, devices):
        if self.persistence.method == "none":
            return []
        reasons = []
        if self.state == "present":
            pending = [a for a, entry in devices.items() if entry["driver_after"] != entry["driver"]]
        else:
            pending = [a for a, entry in devices.items() if is_vfio_driver(entry["driver_after"], self.variants)]
        if pending:
            if self.runtime_skipped and self.runtime_skipped != "runtime: false":
                reasons.append(self.runtime_skipped)
            else:
                reasons.append(
                    "%s %s at the next boot: the runtime binding was %s"
                    % (", ".join(pending),
                       "gets " + ", ".join(sorted({devices[a]["driver"] for a in pending}))
                       if self.state == "present" else "returns to its host driver",
                       "not requested (runtime: false)" if not self.runtime else "not done")
                )
        return reasons

    def result(self, _plan=None):
        for address in sorted(self.interrupted):
            if address not in self.resumed:
                outcome = "this run binds it as asked"
            elif self.check_mode:
                outcome = "this run would hand it back first"
            elif address in self.resumed_done:
                outcome = "handed back, it is now bound to %s" % (self.resumed[address] or "no driver")
            else:
                outcome = "this run could not hand it back"
            self.warnings.append(
                "%s was on no driver: an earlier run was stopped while handing it back to its host driver, between "
                "the unbind and the reprobe; %s" % (address, outcome))
        for warning in self.warnings:
            self.warn(warning)
        self.warnings = []
        devices = self.devices_result()
        reasons = self.reboot_reasons(devices)
        persistence = self.persistence
        result = dict(
            changed=self.changed,
            devices=devices,
            state=self.state,
            iommu_enabled=self.view.iommu_enabled,
            persistence=self._persistence_result(devices),
            ids=persistence.ids_after if persistence.method in ("modprobe", "cmdline") else [],
            files_changed=persistence.paths_changed() + (
                [self.initramfs.config.display_path] if self.initramfs.config is not None
                and self.initramfs.config.changed else []
            ),
            commands=self.commands if not self.check_mode else self._predicted_commands(),
            reboot_required=bool(reasons),
            reboot_reasons=reasons,
            refusals=[r.to_dict() for r in self.refusals],
            initramfs=self.initramfs.to_dict(),
            resumed=dict(self.resumed),
        )
        result["diff"] = persistence.diffs()
        if self.initramfs.config is not None and self.initramfs.config.changed:
            result["diff"].append(self.initramfs.config.diff())
        return result

    def partial(self):
        result = dict(self.result(), changed=self.changes_made)
        if self.runtime_undone:
            # The run stopped before the boot-time configuration: nothing of it was written.
            result.update(files_changed=[], diff=[], commands=self.commands, reboot_required=False,
                          reboot_reasons=[], ids=self.persistence.ids_before
                          if self.persistence.method in ("modprobe", "cmdline") else [])
        return result

    def _persistence_result(self, devices):
        """The boot-time method of the devices on plain vfio-pci (``auto`` resolved); driverctl when
        every device is kept by a driverctl override (variant drivers with ``auto``)."""
        method = self.persistence.method
        if self.state == "present" and devices and all(e["persistence"] == "driverctl" for e in devices.values()):
            return "driverctl"
        return method

    def _predicted_commands(self):
        """The commands the run would run, each program named by the path it would be run from (as
        the run reports them; the bare name when this host has no such program)."""
        commands = []
        commands += [["modprobe", module_of(driver)] for driver in self.load_drivers]
        commands += [entry.command for entry in self.persistence.driverctl if entry.file.changed and entry.command]
        boot_plan = self.persistence.boot_plan
        if boot_plan is not None and boot_plan.changed and boot_plan.run_commands:
            commands += boot_plan.commands
        if self.initramfs.run:
            commands += self.initramfs.commands
        return [[self._program_path(argv[0])] + list(argv[1:]) for argv in commands]

    def _program_path(self, name):
        if os.path.isabs(name):
            return name
        return find_program(self.module, self.root, name) or name


def _binding(driver, override):
    """``on nvidia``, ``on vfio-pci with driver_override vfio-pci``, ``on no driver``."""
    return "on %s%s" % (driver or "no driver", " with driver_override %s" % override if override else "")
