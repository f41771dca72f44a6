# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``sriov`` module's run (:mod:`modrun`): plan each physical function's VF count, autoprobe flag
and whether its VFs go to vfio-pci, guard VFs in use, write sysfs, and record it all for the boot-time
restore."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ansible_collections.gpuvirt.host.plugins.module_utils import bootloader, rules, vendors
from ansible_collections.gpuvirt.host.plugins.module_utils.architecture import host_architecture as tree_architecture
from ansible_collections.gpuvirt.host.plugins.module_utils.device_users import unknown_users_text, vfio_holders
from ansible_collections.gpuvirt.host.plugins.module_utils.drivers import is_vfio_driver
from ansible_collections.gpuvirt.host.plugins.module_utils.files import FileError
from ansible_collections.gpuvirt.host.plugins.module_utils.hoststate import (
    StateFileError,
    load_state,
    plan_state,
    state_path,
    with_section,
    without_devices,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.iommu import read_iommu
from ansible_collections.gpuvirt.host.plugins.module_utils.kernel import read_kernel
from ansible_collections.gpuvirt.host.plugins.module_utils.mdev import read_mdevctl_definitions
from ansible_collections.gpuvirt.host.plugins.module_utils.mdev_info import mdevs
from ansible_collections.gpuvirt.host.plugins.module_utils.modrun import ModuleRun
from ansible_collections.gpuvirt.host.plugins.module_utils.pci import name_devices, read_pci_devices
from ansible_collections.gpuvirt.host.plugins.module_utils.selector import select_devices
from ansible_collections.gpuvirt.host.plugins.module_utils.sriov import (
    SriovError,
    hand_vfs_to_vfio,
    pf_reason,
    read_sriov,
    set_drivers_autoprobe,
    set_num_vfs,
    state_entry,
    vf_addresses,
    vf_drivers,
    vf_users,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import (
    NotALinuxTree,
    UnsupportedArchitecture,
    check_architecture,
    check_root,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.vfio import (
    boot_vfio_claims,
    driverctl_overrides,
    driverctl_path,
    find_program,
    vfio_enables_sriov,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.vfio_bind import (
    VFIO_DRIVER,
    VfioError,
    driver_loaded,
    forget_finished_handbacks,
    handback_notes_warning,
    interrupted_handbacks,
    read_driver,
    release_device,
)


@dataclass(frozen=True)
class SriovRunPlan:
    pfs: tuple  # one dict per physical function, in declaration order
    state: object  # files.FileChange of the state file
    definitions: tuple = ()  # files.FileChange removing the mdevctl definitions of the VFs gone for good


class SriovRun(ModuleRun):
    def __init__(self, module, host):
        super().__init__(module, host)
        self.retries = self.params["retries"]
        self.delay = self.params["delay"]
        self.done = []
        self.load_vfio = False
        self.holders = None

    def plan(self):
        self.retries, self.delay = rules.waits(self.params)
        try:
            check_root(self.root)
            check_architecture(self.root)
            state = load_state(self.root)
        except (NotALinuxTree, UnsupportedArchitecture, StateFileError) as error:
            self.fail(str(error))
        # VFs an earlier run left on no driver, killed between the unbind and the reprobe of a hand-back.
        self.interrupted = set(interrupted_handbacks(self.root))
        plans = self._plan(self.params["devices"])
        self._interrupted_notes(plans, state)
        blocked = [p for p in plans if p["in_use"]]
        if blocked and not self.params["force"]:
            self.fail(
                "refusing to change the VF count or the VFs' driver: a new count removes every VF of the PF and "
                "a new driver takes the VF from its user, and some are in use. %s. "
                "Stop the VMs and remove the mediated devices or vGPU types first, or set force: true. "
                "Nothing was changed." % "; ".join(self._in_use_text(p) for p in blocked),
                devices=[self._result(p, p["before"]) for p in plans],
            )
        for planned in blocked:
            self.warn("forced: %s" % self._in_use_text(planned))
        unknown = [p for p in plans if p["users_unknown"] and not p["in_use"]]
        if unknown and not self.params["force"]:
            self.fail(
                "refusing to change the VF count or the VFs' driver: %s. Run the module where every process can "
                "be inspected, or set force: true. Nothing was changed." % self._unknown_text(unknown),
                devices=[self._result(p, p["before"]) for p in plans],
            )
        if unknown:
            self.warn("forced: %s" % self._unknown_text(unknown))
        if self.params["persistent"]:
            self._check_boot_claims(plans)
        self.load_vfio = any(p["bind"] for p in plans) and not driver_loaded(self.root, VFIO_DRIVER)
        if self.load_vfio and not self.host.live:
            self.fail("the vfio-pci driver is not loaded below %s (no sys/bus/pci/drivers/vfio-pci) and modules can "
                      "only be loaded on this host's /; nothing was changed" % self.root)
        definitions = ()
        if self.params["persistent"]:
            # The VFs a lower count removes for good take the records of what was on them along (the
            # mdevs and vGPU types destroyed with them, which force let go). Those beyond the declared
            # count go on every run, not only the one that lowers it: a run killed between lowering the
            # count and writing this file, or one whose write failed, left them, and the restore would
            # wait at every boot for a parent that never comes.
            gone = {vf for p in plans if p["change_count"] for vf in p["before"]["vfs"] if vf not in p["vfs_after"]}
            for planned in plans:
                if planned["declared_num_vfs"] is not None and planned["total_vfs"]:
                    possible = vf_addresses(self.root, planned["address"], planned["total_vfs"])
                    gone.update(possible[planned["declared_num_vfs"]:])
            state = with_section(without_devices(state, gone), "sriov", self._state_section(state, plans))
            # mdevctl's own definitions of those mdevs too: its udev rule would start them again on VFs
            # that come back at those addresses.
            definitions = tuple(
                self.plan_file(os.path.relpath(entry["path"], self.root), None, mode=None)
                for _uuid, entry in sorted(read_mdevctl_definitions(self.root).items()) if entry["parent"] in gone
            )
        return SriovRunPlan(tuple(plans), plan_state(self.root, state), definitions)

    def apply(self, plan):
        if self.load_vfio:
            modprobe = find_program(self.module, self.root, "modprobe")
            if modprobe is None:
                self.fail("modprobe was not found on this host to load vfio-pci; nothing was changed")
            self.command([modprobe, "vfio-pci"], "loading vfio-pci")
            if not driver_loaded(self.root, VFIO_DRIVER):
                self.fail("modprobe vfio-pci succeeded but /sys/bus/pci/drivers/vfio-pci does not exist; check dmesg "
                          "(Secure Boot lockdown, a kernel without VFIO)")
        self._apply(plan.pfs)
        if self.interrupted and any(p["bind"] or p["resume"] or p["change_count"] for p in plan.pfs):
            # Drop the notes with nothing left to finish (a VF this run bound, handed back or removed among them).
            try:
                forget_finished_handbacks(self.root)
            except VfioError as error:
                self.warn(str(error))
        try:
            self.write(plan.state)
            for change in plan.definitions:
                self.write(change)
        except (OSError, FileError) as error:
            self.fail("writing %s failed: %s" % (state_path(self.root), error), changed=self._any_change(plan.pfs))

    def result(self, plan):
        for pf in plan.pfs:
            pf["after"] = self._after(pf)
            for vf in pf["resume"]:
                now = None if self.check_mode else read_driver(self.root, vf)
                self.warn(
                    "%s was on no driver: an earlier run was stopped while handing it back to its host driver, "
                    "between the unbind and the reprobe; %s"
                    % (vf, "this run would hand it back" if self.check_mode
                       else "handed back, it is now bound to %s" % (now or "no driver"))
                )
        result = dict(
            changed=self._any_change(plan.pfs) or plan.state.changed or any(c.changed for c in plan.definitions),
            devices=[self._result(p, p["after"]) for p in plan.pfs],
            state_file={"path": state_path(self.root), "changed": plan.state.changed},
        )
        result["diff"] = [self._device_diff(plan.pfs), plan.state.diff()] + [c.diff() for c in plan.definitions]
        return result

    def partial(self):
        return {"changed": self.changes_made or bool(self.done)}

    # -- planning -------------------------------------------------------------------------------

    def _devices(self):
        devices = read_pci_devices(self.root)
        name_devices(self.root, devices)
        return devices

    def _plan(self, declarations):
        devices = self.devices = self._devices()
        holders = self.holders = vfio_holders(self.root)
        mdev_list = mdevs(self.root)
        owner = {}
        plans = []
        for declaration in declarations:
            if all(declaration[key] is None for key in ("num_vfs", "drivers_autoprobe", "vfio")):
                self.fail("selector %r: give num_vfs, drivers_autoprobe, vfio or any of them together"
                          % declaration["selector"])
            addresses = select_devices(declaration["selector"], devices, "SR-IOV physical function", pf_reason)
            for pf in addresses:
                if pf in owner:
                    self.fail(
                        "%s is selected twice (by %r and %r); declare each physical function once"
                        % (pf, owner[pf], declaration["selector"])
                    )
                owner[pf] = declaration["selector"]
                plans.append(self._plan_pf(pf, declaration, devices[pf], holders, mdev_list))
        return plans

    def _plan_pf(self, pf, declaration, device, holders, mdev_list):
        info = read_sriov(self.root, pf)
        total = info["total_vfs"]
        current = info["num_vfs"]
        if current is None:
            self.fail("%s: sriov_numvfs cannot be read; check the kernel log for the driver" % pf)
        wanted = current if declaration["num_vfs"] is None else declaration["num_vfs"]
        if wanted < 0:
            self.fail("%s: num_vfs must be 0 or more, not %d" % (pf, wanted))
        if total is not None and wanted > total:
            self.fail(
                "%s (%s): num_vfs %d is above its sriov_totalvfs %d; nothing was changed"
                % (pf, device.name, wanted, total)
            )
        autoprobe = declaration["drivers_autoprobe"]
        if autoprobe is not None and info["drivers_autoprobe"] is None:
            self.fail("%s has no readable sriov_drivers_autoprobe; the kernel may be older than 4.12" % pf)
        change_count = wanted != current
        if change_count and info["driver"] is None:
            self.fail(
                "%s (%s) has no driver bound, and the VF count is changed through the PF's driver; load and "
                "bind its driver first (nothing was changed)" % (pf, device.name)
            )
        set_by = vendors.vf_count_set_by(device) if change_count else None
        if set_by:
            self.fail(
                "%s (%s) has %d VFs, not %d: %s; nothing was changed" % (pf, device.name, current, wanted, set_by)
            )
        advice = vendors.vf_count_advice(device) if change_count else None
        if advice:
            self.warn("%s is %s" % (pf, advice))
        in_use = vf_users(self.root, info["vfs"], holders, mdev_list) if change_count and current else {}
        drivers = vf_drivers(self.root, info["vfs"])
        vfio = declaration["vfio"]
        vfs_after = vf_addresses(self.root, pf, wanted) if change_count else list(info["vfs"])
        # New VFs start without vfio-pci: every one is bound. Kept VFs move only when on another driver.
        bind = [vf for vf in vfs_after if change_count or drivers.get(vf) != VFIO_DRIVER] if vfio else []
        release = [vf for vf in info["vfs"] if is_vfio_driver(drivers[vf])] if vfio is False and not change_count \
            else []
        probes = autoprobe if autoprobe is not None else info["drivers_autoprobe"]
        # An interrupted hand-back of a VF this run neither binds nor removes is finished: the run that started
        # it meant the VF for its host driver. The kernel probes a VF only while its PF's autoprobe is on
        # (pci_device_can_probe()), so with it off the VF stays as it is, and so does its note.
        interrupted = [] if change_count else [vf for vf in info["vfs"] if vf in self.interrupted and vf not in bind]
        resume = interrupted if probes is not False else []
        for vf in interrupted if probes is False else []:
            self.warn(
                "%s is on no driver: an earlier run was stopped while handing it back to its host driver, between "
                "the unbind and the reprobe; with %s's sriov_drivers_autoprobe off no driver can take it, so it is "
                "left so: set drivers_autoprobe: true to hand it back, or vfio: true to bind it" % (vf, pf)
            )
        if vfio:
            self._check_vfio(pf, device, wanted, probes)
        moving = [vf for vf in bind + release + resume if vf in drivers]
        if moving and not change_count:
            in_use = vf_users(self.root, moving, holders, mdev_list)
        # The VFs this run removes (a new count removes them all) or moves to another driver; new VFs
        # have no user yet, so creating them from none is never held up.
        taken = list(info["vfs"]) if change_count and current else ([] if change_count else moving)
        return {
            "address": pf,
            "selector": declaration["selector"],
            "total_vfs": total,
            "num_vfs": wanted,
            "declared_num_vfs": declaration["num_vfs"],
            "drivers_autoprobe": autoprobe,
            "vfio": vfio,
            "change_count": change_count,
            "change_autoprobe": autoprobe is not None and autoprobe != info["drivers_autoprobe"],
            "bind": bind,
            "release": release,
            "resume": resume,
            "vfs_after": vfs_after,
            "in_use": in_use,
            "users_unknown": [] if holders.complete else taken,
            "before": {"num_vfs": current, "drivers_autoprobe": info["drivers_autoprobe"], "vfs": info["vfs"],
                       "vf_drivers": drivers},
        }

    def _check_boot_claims(self, plans):
        """What vfio-pci takes at the next boot through the host's own configuration (a driverctl override,
        or an ID in ``vfio-pci ids=``, as gpuvirt.host.vfio_pci persists them, or set by hand), against what
        this run records for the boot-time restore.

        A PF it takes gets no VFs at boot (vfio-pci refuses ``sriov_numvfs`` unless its ``enable_sriov``
        is on), so the restore would fail on it at every boot: refused without ``force``. A VF handed back
        (``vfio: false``) that it takes would be on vfio-pci again after the next boot, and a VF removed
        for good leaves its override to take a VF that comes back at that address: both are warned of."""
        handed_back = {p["address"]: p["vfs_after"] for p in plans if p["vfio"] is False}
        gone = {p["address"]: [vf for vf in p["before"]["vfs"] if vf not in p["vfs_after"]] for p in plans}
        if not any(p["num_vfs"] for p in plans) and not any(handed_back.values()) and not any(gone.values()):
            return
        configured = self._configured_cmdline()
        claimed_pfs = boot_vfio_claims(self.root, self.devices, [p["address"] for p in plans if p["num_vfs"]],
                                       configured)
        if claimed_pfs and not vfio_enables_sriov(self.root, configured):
            text = "; ".join(
                "%s: %s at the next boot, and vfio-pci enables no VFs on a PF it holds (its enable_sriov is off), "
                "so the boot-time restore could not give it the %d VFs recorded"
                % (p["address"], claimed_pfs[p["address"]], p["num_vfs"])
                for p in plans if p["address"] in claimed_pfs
            )
            if not self.params["force"]:
                self.fail(
                    "refusing to record VFs for a PF that vfio-pci takes at boot: %s. Hand it back first "
                    "(gpuvirt.host.vfio_pci with state: absent), record no VFs (persistent: false), or set force: "
                    "true. Nothing was changed." % text,
                    devices=[self._result(p, p["before"]) for p in plans],
                )
            self.warn("forced: %s" % text)
        back = [vf for p in plans for vf in handed_back.get(p["address"], [])]
        for vf, why in sorted(boot_vfio_claims(self.root, self.devices, back, configured).items()):
            self.warn(
                "%s: %s, so it is on vfio-pci again after the next boot although vfio: false hands it back; "
                "release it with gpuvirt.host.vfio_pci (state: absent)" % (vf, why)
            )
        overrides = driverctl_overrides(self.root)
        for vf in (vf for p in plans for vf in gone[p["address"]]):
            if is_vfio_driver(overrides.get(vf)):
                self.warn(
                    "%s: this run removes the VF, but its driverctl override (/%s) stays and binds to %s any VF "
                    "that comes back at that address; delete the file if that is not wanted"
                    % (vf, driverctl_path(vf), overrides[vf])
                )

    def _configured_cmdline(self):
        """The arguments the boot configuration gives the next boot; the running kernel's when it cannot
        be read."""
        try:
            return bootloader.plan(self.module, self.root, "auto", [], []).configured_before
        except bootloader.BootloaderError:
            return read_kernel(self.root)["cmdline"] or []

    def _check_vfio(self, pf, device, wanted, autoprobe):
        """VFs can go to vfio-pci only with the IOMMU on (they need an IOMMU group)."""
        if wanted and device.iommu_group is None:
            advice = rules.iommu_on_advice(tree_architecture(self.root)[0], read_iommu(self.root, []).vendor)
            self.fail(
                "%s (%s): vfio: true needs the IOMMU on, and %s has no IOMMU group, so its VFs would get none and "
                "vfio-pci could not take them; turn the IOMMU on and reboot (%s); nothing was changed"
                % (pf, device.name, pf, advice)
            )
        if wanted and autoprobe:
            self.warn(
                "%s: sriov_drivers_autoprobe is on, so %s probes each new VF before it moves to vfio-pci (and again "
                "at every boot); set drivers_autoprobe: false to give the VFs to vfio-pci directly"
                % (pf, device.driver or "the VF driver")
            )

    @staticmethod
    def _in_use_text(planned):
        parts = ["%s: %s" % (vf, ", ".join(reasons)) for vf, reasons in sorted(planned["in_use"].items())]
        return "%s has VFs in use (%s)" % (planned["address"], "; ".join(parts))

    def _unknown_text(self, plans):
        taken = ", ".join("%s (%s)" % (p["address"], ", ".join(p["users_unknown"])) for p in plans)
        return (
            "it would take the VFs of %s from whatever uses them, and whether a VM does cannot be told: %s"
            % (taken, unknown_users_text(self.holders))
        )

    @staticmethod
    def _any_change(plans):
        return any(_pf_changes(p) for p in plans)

    # -- applying -------------------------------------------------------------------------------

    def _apply(self, plans):
        done = self.done
        for planned in plans:
            pf = planned["address"]
            try:
                if planned["change_autoprobe"]:
                    set_drivers_autoprobe(self.root, pf, planned["drivers_autoprobe"], self.retries, self.delay)
                    done.append("%s: sriov_drivers_autoprobe %d" % (pf, planned["drivers_autoprobe"]))
                if planned["change_count"]:
                    set_num_vfs(self.root, pf, planned["num_vfs"], self.retries, self.delay)
                    done.append("%s: %d VFs" % (pf, planned["num_vfs"]))
                if planned["bind"]:
                    vfs = read_sriov(self.root, pf)["vfs"] if planned["change_count"] else planned["bind"]
                    bound, _already = hand_vfs_to_vfio(self.root, vfs)
                    done.append("%s: VFs %s bound to vfio-pci" % (pf, ", ".join(bound) or "(none)"))
                for vf in planned["release"]:
                    self._hand_back(vf, False, "%s released from vfio-pci" % vf, "")
                for vf in planned["resume"]:
                    self._hand_back(vf, True, "%s handed back, finishing an earlier run's hand-back" % vf,
                                    "an earlier run was stopped while handing %s back; finishing that failed: " % vf)
            except SriovError as error:
                self.fail(
                    "%s%s" % (error, "; done before: %s" % ", ".join(done) if done else ""),
                    changed=bool(done) or planned["change_count"],
                )

    def _hand_back(self, vf, resume, step, context):
        """Hand ``vf`` back (``resume``: one an earlier run left on no driver); on failure, a VF that left
        vfio-pci or found a driver all the same counts among the steps done."""
        try:
            release_device(self.root, vf, resume=resume)
        except VfioError as error:
            now = read_driver(self.root, vf)
            if now is not None and not is_vfio_driver(now):
                self.done.append("%s, now on %s" % (step, now))
            raise SriovError(context + str(error)) from error
        self.done.append(step)

    def _interrupted_notes(self, plans, state):
        """Warnings about interrupted hand-backs beside the plan: notes that cannot be read while a VF of a
        named PF is on no driver, and a VF handed back that the restore puts on vfio-pci again at boot."""
        if any(driver is None for p in plans for driver in p["before"]["vf_drivers"].values()):
            warning = handback_notes_warning(self.root)
            if warning:
                self.warn(warning)
        for planned in plans:
            recorded = (state.get("sriov") or {}).get(planned["address"]) or {}
            if planned["resume"] and planned["vfio"] is None and recorded.get("vfio"):
                self.warn(
                    "%s: the state file records vfio: true for %s, so the boot-time restore puts %s on vfio-pci "
                    "again at the next boot; declare vfio: false to hand its VFs back for good"
                    % (planned["address"], planned["address"], ", ".join(planned["resume"]))
                )

    def _after(self, planned):
        pf = planned["address"]
        if not self.check_mode:
            info = read_sriov(self.root, pf)
            return {"num_vfs": info["num_vfs"], "drivers_autoprobe": info["drivers_autoprobe"], "vfs": info["vfs"],
                    "vf_drivers": vf_drivers(self.root, info["vfs"])}
        before = planned["before"]
        autoprobe = (
            before["drivers_autoprobe"] if planned["drivers_autoprobe"] is None else planned["drivers_autoprobe"]
        )
        vfs = planned["vfs_after"]
        drivers = {vf: before["vf_drivers"].get(vf) for vf in vfs}
        if planned["change_count"]:  # new VFs: the PF's driver probes them when autoprobe is on
            drivers = dict.fromkeys(vfs, read_sriov(self.root, pf)["driver"] if autoprobe else None)
        drivers.update(dict.fromkeys(planned["bind"], VFIO_DRIVER))
        drivers.update(dict.fromkeys(planned["release"] + planned["resume"]))  # whatever claims it on the reprobe
        return {"num_vfs": planned["num_vfs"], "drivers_autoprobe": autoprobe, "vfs": vfs, "vf_drivers": drivers}

    # -- results --------------------------------------------------------------------------------

    def _state_section(self, state, plans):
        section = dict(state["sriov"])
        for planned in plans:
            pf = planned["address"]
            recorded = section.get(pf) if isinstance(section.get(pf), dict) else {}
            autoprobe = planned["drivers_autoprobe"]
            if autoprobe is None:
                autoprobe = recorded.get("drivers_autoprobe")
            num_vfs = planned["num_vfs"]
            if planned["declared_num_vfs"] is None and "num_vfs" in recorded:
                num_vfs = recorded["num_vfs"]
            vfio = recorded.get("vfio") if planned["vfio"] is None else planned["vfio"]
            # The vendor tool a backend recorded the VFs to be enabled with (sriov-manage) stays, unless
            # this run set the count itself.
            method = None if planned["change_count"] else recorded.get("method")
            if num_vfs == 0 and autoprobe in (None, True):
                section.pop(pf, None)
            else:
                section[pf] = state_entry(num_vfs, autoprobe, method=method, vfio=vfio)
        return section

    def _result(self, planned, after):
        return {
            "address": planned["address"],
            "selector": planned["selector"],
            "total_vfs": planned["total_vfs"],
            "before": planned["before"],
            "after": after,
            "vfio": planned["vfio"],
            "in_use": planned["in_use"],
            "changed": _pf_changes(planned),
        }

    @staticmethod
    def _device_diff(plans):
        def render(side):
            lines = []
            for planned in plans:
                values = planned[side]
                lines.append(
                    "%s num_vfs=%s drivers_autoprobe=%s"
                    % (planned["address"], values["num_vfs"], _flag(values["drivers_autoprobe"]))
                )
                lines.extend("  %s driver=%s" % (vf, driver or "none")
                             for vf, driver in sorted(values["vf_drivers"].items()))
            return "\n".join(lines) + "\n"

        return {
            "before": render("before"),
            "after": render("after"),
            "before_header": "SR-IOV physical functions",
            "after_header": "SR-IOV physical functions",
        }


def _pf_changes(planned):
    return bool(planned["change_count"] or planned["change_autoprobe"] or planned["bind"] or planned["release"]
                or planned["resume"])


def _flag(value):
    return "unknown" if value is None else ("1" if value else "0")
