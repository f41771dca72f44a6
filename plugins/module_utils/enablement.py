# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Turning a GPU's virtualization mode on or off: one generic read -> plan -> apply; the vendor backends
say what a mode needs (:meth:`enable_plan` of each backend) and what turns it off again (:meth:`disable_plan`).

A vendor plan (:class:`EnablePlan`) holds only declarations: kernel arguments to add (written through
:mod:`bootloader`, so every boot loader the collection knows is covered), files to write (modprobe.d,
modules-load.d), entries of the state file for the vendor's boot-time restore steps, modules to load now,
and the parameters the running kernel must show for the mode to work without a reboot. The mode's
options are the vendor's (``enable_options``): the module passes them through without knowing them.
A backend that cannot enable the mode raises :class:`EnableError` with the reason and what to do;
nothing is changed then.

Public API: :class:`EnablePlan`, :class:`EnableError`, :func:`read_gpu`,
:func:`plan_mode`, :class:`ModeRun` (the module's run), :func:`verify`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ansible_collections.gpuvirt.host.plugins.module_utils import bootloader, vendors
from ansible_collections.gpuvirt.host.plugins.module_utils.hoststate import (
    StateFileError,
    load_state,
    plan_state,
    with_section,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.iommu import read_iommu
from ansible_collections.gpuvirt.host.plugins.module_utils.kernel import read_kernel
from ansible_collections.gpuvirt.host.plugins.module_utils.mdev_info import list_mdev_parents
from ansible_collections.gpuvirt.host.plugins.module_utils.modrun import ModuleRun
from ansible_collections.gpuvirt.host.plugins.module_utils.pci import name_devices, read_pci_devices
from ansible_collections.gpuvirt.host.plugins.module_utils.selector import describe, select_devices
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import host_path
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import UnsupportedArchitecture, check_architecture
from ansible_collections.gpuvirt.host.plugins.module_utils.vendor_plan import EnableError


def read_gpu(root, selector_text):
    """``(device, host facts)`` of the one GPU ``selector_text`` names."""
    try:
        check_architecture(root)
    except UnsupportedArchitecture as error:
        raise EnableError(str(error)) from error
    devices = read_pci_devices(root)
    name_devices(root, devices)
    matched = select_devices(selector_text, devices, "GPU", _gpu_reason)
    if len(matched) > 1:
        raise EnableError(
            "selector %r matches %d GPUs (%s); name one by its PCI address"
            % (selector_text, len(matched), ", ".join(matched))
        )
    kernel = read_kernel(root)
    iommu = read_iommu(root, kernel["cmdline"] or [])
    host = vendors.HostFacts(root, devices, kernel, iommu.enabled, set(list_mdev_parents(root)))
    return devices[matched[0]], host


def _gpu_reason(device):
    if device.is_vf:
        return "is a virtual function of %s; select its physical function" % device.physfn
    if not device.is_gpu:
        return "is not a GPU (PCI class 03)"
    return None


def plan_mode(device, host, mode, options, state="present", recorded=None):
    """The vendor's :class:`EnablePlan` for ``mode`` on ``device``, to turn it on (``state`` present) or off
    (absent; ``recorded``: the state file, which the backend checks its restore against). ``options``:
    ``{name: value}`` (None: not given); an option the mode does not take is refused, and turning a mode off
    takes none."""
    for backend in vendors.backends_for(device.vendor_id):
        if mode in backend.enable_modes:
            if state == "absent":
                given = sorted(name for name, value in options.items() if value is not None)
                if given:
                    raise EnableError("turning mode %s off (state absent) takes no options, not %s; nothing changed"
                                      % (mode, ", ".join(given)))
                return backend.disable_plan(device, host, mode, recorded)
            taken = backend.enable_options.get(mode, {})
            foreign = sorted(name for name, value in options.items() if value is not None and name not in taken)
            if foreign:
                raise EnableError(
                    "mode %s takes %s, not %s; nothing changed" % (
                        mode, "the options %s" % ", ".join(taken) if taken else "no options", ", ".join(foreign))
                )
            given = {name: convert_option(name, options.get(name), kind) for name, kind in taken.items()}
            return backend.enable_plan(device, host, mode, given)
    offered = sorted(m for b in vendors.backends_for(device.vendor_id) for m in b.enable_modes)
    raise EnableError(
        "%s cannot offer %s: %s" % (
            describe(device), mode,
            "its vendor's modes are %s" % ", ".join(offered) if offered else "no backend knows its vendor %s"
            % device.vendor_id,
        ) + "; nothing changed"
    )


@dataclass(frozen=True)
class ModeRunPlan:
    mode: object  # EnablePlan
    files: tuple  # files.FileChange
    boot: object  # bootloader.BootPlan or None
    pinned: tuple = ()  # the pin arguments the boot configuration holds, or gets from this run


class ModeRun(ModuleRun):
    """The ``virtualization_mode`` module's run (:mod:`modrun`)."""

    def __init__(self, module, host):
        super().__init__(module, host)
        self.loaded = []

    def plan(self):
        params = self.params
        device, host = read_gpu(self.root, params["selector"])
        state = params["state"]
        recorded = None
        if state == "absent":
            try:
                recorded = load_state(self.root)
            except StateFileError as error:
                raise EnableError("%s; nothing changed" % error) from error
        mode = plan_mode(device, host, params["mode"], _options(params), state, recorded)
        _check_recorded_vfs(self.root, mode)
        files = tuple(self.plan_file(relative, content) for relative, content in mode.files)
        if mode.records:
            files += (_plan_records(self.root, mode.records),)
        boot = None
        pinned = ()
        if mode.pin_arguments:
            try:
                boot = self._boot_plan(mode.kernel_arguments + mode.pin_arguments)
            except bootloader.BootloaderError as error:
                if mode.kernel_arguments:
                    raise
                # Only pins were to go there, and nothing the backend sees turns their settings on: a boot
                # configuration this cannot read is said, not an error.
                self.module.warn("the boot configuration was not read (%s): whether it sets %s is not known"
                                 % (error, ", ".join(sorted({a.split("=", 1)[0] for a in mode.pin_arguments}))))
            else:
                # Another value of a pinned key anywhere in the configuration (each entry, not only the default)
                # is one this plan replaces.
                if _held_otherwise(boot.removed + boot.configured_before, mode.pin_arguments):
                    pinned = mode.pin_arguments
                else:
                    pinned = tuple(pin for pin in mode.pin_arguments if pin in boot.configured_before)
                    boot = self._boot_plan(mode.kernel_arguments) if mode.kernel_arguments else None
        elif mode.kernel_arguments:
            boot = self._boot_plan(mode.kernel_arguments)
        return ModeRunPlan(mode, files, boot, pinned)

    def _boot_plan(self, arguments):
        wanted, unwanted = bootloader.validate_arguments(list(arguments), [])
        return bootloader.plan(
            self.module, self.root, self.params["bootloader"], wanted, unwanted, update=self.params["update"]
        )

    def apply(self, plan):
        for change in plan.files:
            self.write(change)
        if plan.boot is not None and plan.boot.changed:
            bootloader.apply(self.module, plan.boot)
            self.changes_made = True
        if not self._running_needs(plan) and self.host.live:
            for name in plan.mode.load_modules:
                if not host_module_loaded(self.root, name):
                    self.command([self.host.which("modprobe") or "modprobe", name], "modprobe %s" % name)
                    self.loaded.append(name)
                    self.changes_made = True

    def result(self, plan):
        edits = plan.boot.edits if plan.boot is not None else []
        changed_files = [c.display_path for c in plan.files if c.changed] + [e.display_path for e in edits]
        running = self._running_needs(plan)
        return {
            "changed": bool(changed_files or self.loaded or (plan.boot is not None and plan.boot.resumed)),
            "files_changed": changed_files,
            "kernel_arguments": list(plan.mode.kernel_arguments) + list(plan.pinned),
            "modules_loaded": list(self.loaded),
            "reboot_required": bool(running),
            "reboot_for": running,
            "diff": [c.diff() for c in plan.files] + [e.diff() for e in edits],
            "notes": list(plan.mode.notes),
            "mode": plan.mode.mode,
            "state": self.params["state"],
            "device": plan.mode.address,
            "verification": verify(self.root, plan.mode.address, plan.mode.mode),
        }

    @staticmethod
    def _running_needs(plan):
        return [need for need, satisfied in plan.mode.running_needs if not satisfied]


def _held_otherwise(configured, pins):
    """Whether the boot configuration (``configured``: its arguments) holds a key of ``pins`` with another value."""
    wanted = [bootloader.parse_argument(pin) for pin in pins]
    return any(
        bootloader.same_key(pin, held) and pin.value != held.value
        for held in (bootloader.parse_argument(text) for text in configured) for pin in wanted
    )


_TRUE = ("1", "true", "yes", "on", "y", "t")
_FALSE = ("0", "false", "no", "off", "n", "f")


def convert_option(name, value, kind):
    """``value`` of the mode option ``name`` as ``kind`` (``int``, ``bool`` or ``str``), taken from the text a
    template gives too; None stays None. Raises :class:`EnableError` on a value of another type."""
    if value is None:
        return None
    text = value.strip() if isinstance(value, str) else None
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text is not None and text.lstrip("+-").isdigit() and text.isascii():
            return int(text)
    elif kind == "bool":
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
    elif kind == "str" and isinstance(value, str):
        return value
    raise EnableError("option %s must be %s, not %r; nothing changed" % (
        name, {"int": "an integer", "bool": "true or false"}.get(kind, "a text"), value))


def _options(params):
    """The mode's options: ``options`` with ``max_vfs`` (the one option with a parameter of its own)."""
    options = dict(params["options"] or {})
    if params["max_vfs"] is not None:
        given = options.get("max_vfs")
        if given is not None and convert_option("max_vfs", given, "int") != params["max_vfs"]:
            raise EnableError("max_vfs is given twice, as %s and in options as %s; nothing changed"
                              % (params["max_vfs"], given))
        options["max_vfs"] = params["max_vfs"]
    return options


def _plan_records(root, records):
    """The state file change that writes a plan's ``records`` (see :class:`EnablePlan`)."""
    try:
        state = load_state(root)
        for section, key, entry in records:
            entries = dict(state.get(section) or {})
            if entry is None:
                entries.pop(key, None)
            else:
                entries[key] = entry
            state = with_section(state, section, entries)
    except (StateFileError, ValueError) as error:
        raise EnableError("%s; nothing changed" % error) from error
    return plan_state(root, state)


def _check_recorded_vfs(root, mode):
    """Refuse a plan that offers a physical function fewer VFs than the state file has the boot restore
    enable on it: the restore would fail on it at every boot, and its VFs would not come back."""
    if not mode.vf_limits:
        return
    try:
        recorded = load_state(root)["sriov"]
    except StateFileError as error:
        raise EnableError(str(error)) from error
    short = []
    for address, limit in mode.vf_limits:
        entry = recorded.get(address)
        count = entry.get("num_vfs") if isinstance(entry, dict) else None
        if isinstance(count, int) and not isinstance(count, bool) and count > limit:
            short.append("%s (%d VFs recorded, %d offered)" % (address, count, limit))
    if short:
        raise EnableError(
            "the VF limit this sets is below the VFs the boot restore enables on %s: it would fail there at every "
            "boot. Lower their VF counts first (gpuvirt.host.sriov), or set a limit that covers them; nothing "
            "changed" % "; ".join(short)
        )


def host_module_loaded(root, name):
    return os.path.isdir(host_path(root, "sys/module", name.replace("-", "_")))


def verify(root, address, mode):
    """``{"ready", "missing"}`` of ``mode`` on the GPU at ``address``, read again from the host."""
    device, host = read_gpu(root, address)
    for entry in vendors.virtualization_modes(device, host, {"viable": False, "reasons": []}):
        if entry["mode"] == mode:
            return {"ready": entry["ready"], "missing": entry["missing"]}
    return {"ready": False, "missing": ["the mode is not offered by this GPU"]}
