# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The boot-time configuration that keeps a vfio_pci binding across reboots, planned.

:class:`BootConfigPlanner` is the planning half of :class:`vfio_run.VfioPciRun`: which method keeps
each device (``modprobe`` options, ``vfio-pci.ids`` on the kernel command line, or driverctl
overrides for variant drivers), the files and bootloader edits that method needs, and the
initramfs rebuild that makes the early boot see them. It reads and decides; nothing is written here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from ansible_collections.gpuvirt.host.plugins.module_utils import bootloader, initramfs, pending
from ansible_collections.gpuvirt.host.plugins.module_utils.drivers import is_vfio_driver, is_vfio_pci
from ansible_collections.gpuvirt.host.plugins.module_utils.files import (
    FileChange,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.kernel import (
    read_builtin_modules,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import (
    driver_module,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.vfio import (
    INITRAMFS_CONFIG,
    MODPROBE_CONF,
    MODULES_LOAD_CONF,
    VFIO_DRIVER,
    VfioError,
    cmdline_ids,
    device_id,
    driver_key,
    driverctl_overrides,
    driverctl_path,
    find_program,
    foreign_vfio_ids,
    host_softdeps,
    id_refusals,
    modprobe_ids,
    modprobe_softdeps,
    module_of,
    plan_file,
    render_initramfs_config,
    render_modprobe_conf,
    render_modules_load,
    softdep_warnings,
)


@dataclass
class DriverctlChange:
    """One ``/etc/driverctl.d/pci-<address>`` file to write or remove, by driverctl on a host."""

    address: str
    file: FileChange
    command: list | None  # argv run on the host; None: the file is written directly (image tree)


@dataclass
class PersistencePlan:
    method: str
    files: list  # FileChange written directly
    driverctl: list  # DriverctlChange
    boot_plan: object | None  # bootloader.BootPlan for vfio-pci.ids on the command line
    ids_before: list
    ids_after: list
    refusals: list
    warnings: list

    @property
    def changed(self):
        return (
            any(change.changed for change in self.files)
            or any(entry.file.changed for entry in self.driverctl)
            or bool(self.boot_plan is not None and self.boot_plan.changed)
        )

    def diffs(self):
        result = [change.diff() for change in self.files if change.changed]
        result += [entry.file.diff() for entry in self.driverctl if entry.file.changed]
        if self.boot_plan is not None:
            result += [edit.diff() for edit in self.boot_plan.edits]
        return result

    def paths_changed(self):
        paths = [change.display_path for change in self.files if change.changed]
        paths += [entry.file.display_path for entry in self.driverctl if entry.file.changed]
        if self.boot_plan is not None:
            paths += [edit.display_path for edit in self.boot_plan.edits]
        return paths


@dataclass
class InitramfsPlan:
    tool: str | None = None
    releases: list = field(default_factory=list)
    modules: list = field(default_factory=list)
    config: FileChange | None = None
    regenerate: bool = False
    commands: list = field(default_factory=list)
    run: bool = False
    images: list = field(default_factory=list)
    verified: bool | None = False
    resumed: bool = False  # an earlier run's rebuild is pending (:mod:`pending`)

    @property
    def changed(self):
        return self.regenerate or bool(self.config is not None and self.config.changed)

    def to_dict(self):
        return {
            "tool": self.tool,
            "releases": list(self.releases),
            "modules": list(self.modules),
            "regenerated": self.regenerate and self.run,
            "regenerate_required": self.regenerate and not self.run,
            "images": list(self.images),
            "verified": self.verified,
        }


class BootConfigPlanner:
    """Planning of the boot-time configuration (see the module docstring); mixed into VfioPciRun."""

    def _method(self, view):
        method = self.persistence_method
        builtin = view.kernel.get("vfio_builtin")
        if method == "auto":
            return "cmdline" if builtin else "modprobe"
        if method == "modprobe" and builtin:
            raise VfioError(
                "vfio-pci is built into kernel %s (modules.builtin), so modprobe.d options for it are ignored; "
                "use persistence: cmdline (or auto), or driverctl" % view.kernel.get("release")
            )
        return method

    def _plan_persistence(self, view):
        method = "none" if self.persistence_method == "none" else self._method(view)
        plan = PersistencePlan(method, [], [], None, [], [], [], [])
        self.kept_by = {address: method for address in self.members}
        if method == "none":
            return plan
        by_override, by_id = self._split_by_persistence(method, view)
        self.kept_by.update({address: "driverctl" for address in by_override})
        member_ids = sorted({device_id(view, a) for a in (by_id if self.state == "present" else self.members)})
        modprobe = plan_file(self.root, MODPROBE_CONF, None)
        plan.ids_before = modprobe_ids(modprobe.old)
        modprobe = replace(modprobe, new=modprobe.old)
        cmdline_before = self._cmdline_ids(method)
        cmdline_after = cmdline_before
        releasing = list(self.members) if self.state == "absent" else []

        if self.state == "present":
            dropped = self._ids_moving_to_variants(view, by_override, by_id)
            if method == "modprobe":
                plan.ids_after = sorted((set(plan.ids_before) | set(member_ids)) - dropped)
                softdeps = set(modprobe_softdeps(modprobe.old)) | set(self._host_modules(view, builtin=False).values())
                theirs = host_softdeps(self.root, view.kernel.get("release"))
                modprobe = replace(modprobe, new=render_modprobe_conf(plan.ids_after, softdeps, theirs))
                if modprobe.new:
                    plan.warnings += softdep_warnings(theirs, modprobe_softdeps(modprobe.new))
                added = set(member_ids) - set(plan.ids_before)
                plan.refusals += id_refusals(view, self.members, set(member_ids), set(), [])
                if added:
                    for path, ids in foreign_vfio_ids(self.root).items():
                        plan.warnings.append(
                            "%s also sets vfio-pci ids=%s; modprobe keeps only one ids= value, so one of the "
                            "two lists is ignored: merge them into %s" % (path, ",".join(ids), "/" + MODPROBE_CONF)
                        )
                    booted = cmdline_ids(view.kernel.get("cmdline"))
                    if booted and set(plan.ids_after) - set(booted):
                        # modprobe passes the command line's module options after modprobe.d's, and the
                        # module keeps the last ids= it is given.
                        plan.warnings.append(
                            "the kernel command line sets vfio-pci.ids=%s, which modprobe passes after the options "
                            "of %s, so vfio-pci most likely takes only that list at boot and not %s: remove "
                            "vfio-pci.ids from the command line, or keep every ID there (persistence: cmdline)"
                            % (",".join(booted), "/" + MODPROBE_CONF,
                               ",".join(sorted(set(plan.ids_after) - set(booted))))
                        )
            elif method == "cmdline":
                cmdline_after = sorted((set(cmdline_before) | set(member_ids)) - dropped)
                plan.ids_before, plan.ids_after = cmdline_before, cmdline_after
                plan.refusals += id_refusals(view, self.members, set(member_ids), set(), [])
                if cmdline_after != sorted(cmdline_before):
                    plan.boot_plan = self._boot_plan(["vfio-pci.ids=" + ",".join(cmdline_after)], [])
            plan.warnings += self._id_claim_warnings(view, by_override, set(plan.ids_after))
            overrides = {address: self.choices[address].driver for address in by_override}
            # A device kept by ID must not keep an earlier run's override for a variant driver.
            overridden = self._driverctl_overrides()
            overrides.update({
                address: None for address in by_id
                if is_vfio_driver(overridden.get(address), self.variants) and overridden[address] != VFIO_DRIVER
            })
            why = None
            if method != "driverctl" and by_override:
                why = "keeping %s on %s across reboots" % (
                    ", ".join(by_override), ", ".join(sorted({self.choices[a].driver for a in by_override})))
            plan.driverctl = self._plan_overrides(overrides, why)
        else:
            removed_ids = set(member_ids)
            plan.ids_after = [i for i in plan.ids_before if i not in removed_ids]
            if plan.ids_after != plan.ids_before:
                theirs = host_softdeps(self.root, view.kernel.get("release"))
                modprobe = replace(modprobe, new=render_modprobe_conf(
                    plan.ids_after, modprobe_softdeps(modprobe.old), theirs))
            cmdline_after = [i for i in cmdline_before if i not in removed_ids]
            if cmdline_after != cmdline_before:
                plan.boot_plan = self._boot_plan(
                    ["vfio-pci.ids=" + ",".join(cmdline_after)] if cmdline_after else [],
                    [] if cmdline_after else ["vfio-pci.ids"],
                )
            touched = removed_ids & (set(plan.ids_before) | set(cmdline_before))
            plan.refusals += id_refusals(view, self.members, set(), touched, releasing)
            overridden = self._driverctl_overrides()
            gone = [a for a in self.members if is_vfio_driver(overridden.get(a), self.variants)]
            self.kept_by.update({address: "driverctl" for address in gone})
            plan.driverctl = self._plan_overrides({address: None for address in gone}, None)
        plan.files.append(self._plan_modules_load(view, plan, cmdline_after))
        if plan.files[-1].old is None and plan.files[-1].new is None:
            plan.files.pop()
        plan.files.insert(0, modprobe)
        return plan

    def _split_by_persistence(self, method, view):
        """``(by_override, by_id)``: the members kept by a driverctl override and those kept by
        vfio-pci's ID list. Variant drivers bind only through ``driver_override``, never by ID, and a
        built-in host driver takes its device when the kernel starts, before vfio-pci can: with
        ``auto`` such members get overrides, with an ID method explicitly asked for the run fails."""
        if self.state == "absent":
            return [], list(self.members)
        if method == "driverctl":
            return list(self.members), []
        variant = [a for a in self.members if self.choices[a].variant]
        claimed = {a: module for a, module in self._host_modules(view, builtin=True).items() if a not in variant}
        if claimed and self.persistence_method != "auto":
            raise VfioError(
                "%s: the host driver's module %s is built into kernel %s (modules.builtin), so it takes the device "
                "when the kernel starts, before vfio-pci loads, and persistence: %s (vfio-pci ids=) cannot keep it; "
                "use persistence: auto or driverctl (a per-address driverctl override, which rebinds it when udev "
                "starts), or persistent: false; nothing was changed"
                % (", ".join(claimed), ", ".join(sorted(set(claimed.values()))), view.kernel.get("release"),
                   self.persistence_method)
            )
        if variant and self.persistence_method != "auto":
            raise VfioError(
                "%s get%s the variant VFIO driver %s, which binds only through driver_override and never by "
                "vendor:device ID, so persistence: %s (vfio-pci ids=) would give %s plain vfio-pci at boot; use "
                "persistence: auto or driverctl (a per-address driverctl override plus the module in /%s), "
                "driver: vfio-pci for plain vfio-pci, or persistent: false; nothing was changed"
                % (", ".join(variant), "s" if len(variant) == 1 else "",
                   ", ".join(sorted({self.choices[a].driver for a in variant})), self.persistence_method,
                   "it" if len(variant) == 1 else "them", MODULES_LOAD_CONF)
            )
        # Once on vfio-pci, a device's host driver is not known any more: with auto, one an earlier run
        # kept by an override for vfio-pci stays so.
        overridden = self._driverctl_overrides() if self.persistence_method == "auto" else {}
        kept = [
            a for a in self.members
            if a in variant or a in claimed or is_vfio_pci(overridden.get(a))
        ]
        return kept, [a for a in self.members if a not in kept]

    def _host_modules(self, view, builtin):
        """``{address: module}`` of the members on a host driver whose module sysfs names, those built
        into the kernel (``builtin``) or the others. Members already on a VFIO driver name none."""
        built_in = read_builtin_modules(self.root, view.kernel.get("release")) or set()
        found = {}
        for address in self.members:
            driver = view.records[address]["driver"]
            if driver is None or is_vfio_driver(driver, self.variants):
                continue
            module = driver_module(self.root, driver)
            if module is not None and (driver_key(module) in built_in) == builtin:
                found[address] = module
        return found

    def _ids_moving_to_variants(self, view, by_override, by_id):
        """IDs of devices now kept on a variant driver by an override, which vfio-pci's ID list no
        longer needs: no member kept by ID and no other device on vfio-pci has them."""
        needed = {device_id(view, a) for a in by_id}
        needed.update(device_id(view, a) for a, record in view.records.items()
                      if a not in self.members and record["driver"] == VFIO_DRIVER)
        return {device_id(view, a) for a in by_override} - needed

    def _id_claim_warnings(self, view, by_override, ids):
        """A device moving to a variant driver whose ID vfio-pci's list keeps for another device."""
        return [
            "%s gets %s through a driverctl override, but its ID %s stays in vfio-pci's boot-time ID list "
            "(kept for the devices that need it): vfio-pci claims it first at boot until the override moves it"
            % (address, self.choices[address].driver, device_id(view, address))
            for address in by_override if device_id(view, address) in ids
        ]

    def _plan_overrides(self, overrides, why):
        """``{address: driver or None}`` -> [DriverctlChange]: write (set-override) or remove
        (unset-override) ``/etc/driverctl.d/pci-<address>``, only where it differs."""
        entries = []
        for address, driver in overrides.items():
            change = plan_file(self.root, driverctl_path(address), None if driver is None else driver + "\n")
            if change.old is not None and driver is not None and change.old.strip() == driver:
                continue
            if change.old is None and driver is None:
                continue
            command = None
            if self.live or driver is not None:
                program = self._driverctl_program(why)
                if self.live:
                    command = [program, "--noprobe"] + (
                        ["set-override", address, driver] if driver is not None else ["unset-override", address]
                    )
            entries.append(DriverctlChange(address, change, command))
        return entries

    def _plan_modules_load(self, view, plan, cmdline_after):
        """Our modules-load.d file after the run: vfio-pci when something binds to it at boot and it
        is a module; every variant driver a driverctl override names, as nothing else loads it."""
        overrides = self._driverctl_overrides()
        for entry in plan.driverctl:
            if entry.file.new is None:
                overrides.pop(entry.address, None)
            else:
                overrides[entry.address] = entry.file.new.strip()
        builtin = read_builtin_modules(self.root, view.kernel.get("release")) or set()
        modules = []
        if not view.kernel.get("vfio_builtin") and (
            plan.ids_after or cmdline_after or any(is_vfio_pci(d) for d in overrides.values())
        ):
            modules.append(VFIO_DRIVER)
        modules += sorted({
            module_of(driver) for driver in overrides.values()
            if is_vfio_driver(driver, self.variants) and not is_vfio_pci(driver)
            and driver_key(driver) not in builtin
        })
        return plan_file(self.root, MODULES_LOAD_CONF, render_modules_load(modules))

    def _cmdline_ids(self, method):
        """vfio-pci.ids on the configured command line; only read when this run may change them
        (persistence: cmdline, or handing devices back, which cleans every method)."""
        if method != "cmdline" and self.state == "present":
            return []
        try:
            probe = bootloader.plan(self.module, self.root, "auto", [], [])
        except bootloader.BootloaderError as error:
            if method == "cmdline":
                raise VfioError("persistence: cmdline needs the boot configuration: %s" % error) from error
            return []
        return cmdline_ids(probe.configured_before)

    def _boot_plan(self, present, absent):
        try:
            wanted, unwanted = bootloader.validate_arguments(present, absent)
            return bootloader.plan(self.module, self.root, "auto", wanted, unwanted)
        except (bootloader.ArgumentError, bootloader.BootloaderError) as error:
            raise VfioError("cannot plan vfio-pci.ids on the kernel command line: %s" % error) from error

    def _driverctl_program(self, why=None):
        program = find_program(self.module, self.root, "driverctl")
        if program is None:
            raise VfioError(
                "%s needs driverctl installed (its udev rule applies the overrides at boot); install the "
                "driverctl package, or use %s"
                % (why or "persistence: driverctl",
                   "persistence: modprobe" if not why
                   else "persistent: false, or driver: vfio-pci with persistence: auto")
            )
        return program

    def _driverctl_overrides(self):
        """``{address: driver}`` of every ``/etc/driverctl.d/pci-<address>`` file."""
        return driverctl_overrides(self.root)

    def _initramfs_config_left(self):
        """The removal of our initramfs configuration that exists (an earlier run may have removed the
        modprobe.d file and left it), or None."""
        for path in INITRAMFS_CONFIG.values():
            change = plan_file(self.root, path, None)
            if change.changed:
                return change
        return None

    def _plan_initramfs(self, view):
        """Our initramfs configuration and whether the image must be rebuilt: only when the
        modprobe.d file or that configuration changes (both are inputs of the image)."""
        plan = InitramfsPlan()
        modprobe = self.persistence.files[0] if self.persistence.files else None
        if modprobe is None or self.persistence.method == "none":
            return plan
        left = self._initramfs_config_left() if modprobe.new is None else None
        # An earlier run changed the image's inputs but was not seen to rebuild it (:mod:`pending`).
        resumed = self.live and pending.read(self.root, pending.INITRAMFS) is not None
        if not self.regenerate_initramfs:
            # Removed without a rebuild, our configuration of the image goes too: it names the
            # modprobe.d file, and mkinitcpio fails a build whose FILES+= names a file that is gone.
            plan.config = left
            return plan
        if modprobe.old is None and modprobe.new is None and left is None and not resumed:
            return plan
        try:
            plan.tool = initramfs.detect_tool(self.root)
        except initramfs.InitramfsError as error:
            if modprobe.changed:
                self.warnings.append("%s; the modprobe.d file only takes effect once vfio-pci loads from the "
                                     "root filesystem" % error)
            return plan
        # Every installed kernel whose image this tool builds exists (a kernel installed but not yet
        # booted included), else the running one.
        kernels = [
            release for release, _image, _initrd in bootloader.installed_kernels(self.root)
            if os.path.isfile(initramfs.image_path(self.root, release, plan.tool))
        ]
        plan.releases = kernels or [r for r in [view.kernel.get("release")] if r]
        modules = None
        for release in plan.releases:
            try:
                names = initramfs.vfio_modules(release, self.root)
            except initramfs.InitramfsError:
                continue
            # Only what every kernel has: a module missing from one release breaks its build,
            # and vfio_pci pulls vfio_virqfd in on the kernels that still have it.
            modules = names if modules is None else [name for name in modules if name in names]
        plan.modules = modules or list(initramfs.VFIO_MODULES)
        wanted = render_initramfs_config(plan.tool, plan.modules) if modprobe.new is not None else None
        plan.config = plan_file(self.root, INITRAMFS_CONFIG[plan.tool], wanted)
        if not (modprobe.changed or plan.config.changed or resumed) or not plan.releases:
            return plan
        if resumed and not (modprobe.changed or plan.config.changed):
            self.warnings.append(
                "an earlier run changed the initramfs's inputs but was not seen to rebuild it (/%s/%s is left): "
                "rebuilding it again" % (pending.PENDING_DIR, pending.INITRAMFS)
            )
        plan.regenerate = True
        plan.resumed = resumed
        plan.commands = [initramfs.regenerate_command(self.root, release, plan.tool) for release in plan.releases]
        plan.run = self.live
        if self.live and self.check_mode:
            # What the run reads back: each release's image, as it will be after the rebuild; whether it
            # holds what it should is known only once it is built.
            plan.images = [initramfs.image_path(self.root, release, plan.tool) for release in plan.releases]
            plan.verified = None
        if not self.live:
            self.warnings.append(
                "%s is not this host's root: rebuild its initramfs inside it (%s)"
                % (self.root, "; ".join(" ".join(c) for c in plan.commands))
            )
        return plan
