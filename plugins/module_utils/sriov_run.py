# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``sriov`` module's run (:mod:`modrun`): plan each physical function's VF count and
autoprobe flag, guard VFs in use, write sysfs, and record the counts for the boot-time restore."""

from __future__ import annotations

from dataclasses import dataclass

from ansible_collections.gpuvirt.host.plugins.module_utils import rules, vendors
from ansible_collections.gpuvirt.host.plugins.module_utils.files import FileError
from ansible_collections.gpuvirt.host.plugins.module_utils.hoststate import (
    StateFileError,
    load_state,
    plan_state,
    state_path,
    with_section,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.iommu import vfio_holders
from ansible_collections.gpuvirt.host.plugins.module_utils.mdev_info import mdevs
from ansible_collections.gpuvirt.host.plugins.module_utils.modrun import ModuleRun
from ansible_collections.gpuvirt.host.plugins.module_utils.pci import name_devices, read_pci_devices
from ansible_collections.gpuvirt.host.plugins.module_utils.selector import select_devices
from ansible_collections.gpuvirt.host.plugins.module_utils.sriov import (
    SriovError,
    pf_reason,
    read_sriov,
    set_drivers_autoprobe,
    set_num_vfs,
    state_entry,
    vf_addresses,
    vf_users,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import NotALinuxTree, check_root


@dataclass(frozen=True)
class SriovRunPlan:
    pfs: tuple  # one dict per physical function, in declaration order
    state: object  # files.FileChange of the state file


class SriovRun(ModuleRun):
    def __init__(self, module, host):
        super().__init__(module, host)
        self.retries = self.params["retries"]
        self.delay = self.params["delay"]
        self.done = []

    def plan(self):
        self.retries, self.delay = rules.waits(self.params)
        try:
            check_root(self.root)
            state = load_state(self.root)
        except (NotALinuxTree, StateFileError) as error:
            self.fail(str(error))
        plans = self._plan(self.params["devices"])
        blocked = [p for p in plans if p["in_use"]]
        if blocked and not self.params["force"]:
            self.fail(
                "refusing to change the VF count: that removes every VF of the PF, and some are in use. %s. "
                "Stop the VMs and remove the mediated devices or vGPU types first, or set force: true. "
                "Nothing was changed." % "; ".join(self._in_use_text(p) for p in blocked),
                devices=[self._result(p, p["before"]) for p in plans],
            )
        for planned in blocked:
            self.warn("forced: %s" % self._in_use_text(planned))
        wanted = self._state_section(state, plans) if self.params["persistent"] else state["sriov"]
        return SriovRunPlan(tuple(plans), plan_state(self.root, with_section(state, "sriov", wanted)))

    def apply(self, plan):
        self._apply(plan.pfs)
        try:
            self.write(plan.state)
        except (OSError, FileError) as error:
            self.fail("writing %s failed: %s" % (state_path(self.root), error), changed=self._any_change(plan.pfs))

    def result(self, plan):
        for pf in plan.pfs:
            pf["after"] = self._after(pf)
        result = dict(
            changed=self._any_change(plan.pfs) or plan.state.changed,
            devices=[self._result(p, p["after"]) for p in plan.pfs],
            state_file={"path": state_path(self.root), "changed": plan.state.changed},
        )
        result["diff"] = [self._device_diff(plan.pfs), plan.state.diff()]
        return result

    def partial(self):
        return {"changed": self.changes_made or bool(self.done)}

    # -- planning -------------------------------------------------------------------------------

    def _devices(self):
        devices = read_pci_devices(self.root)
        name_devices(self.root, devices)
        return devices

    def _plan(self, declarations):
        devices = self._devices()
        holders = vfio_holders(self.root)
        mdev_list = mdevs(self.root)
        owner = {}
        plans = []
        for declaration in declarations:
            if declaration["num_vfs"] is None and declaration["drivers_autoprobe"] is None:
                self.fail("selector %r: give num_vfs, drivers_autoprobe or both" % declaration["selector"])
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
        return {
            "address": pf,
            "selector": declaration["selector"],
            "total_vfs": total,
            "num_vfs": wanted,
            "declared_num_vfs": declaration["num_vfs"],
            "drivers_autoprobe": autoprobe,
            "change_count": change_count,
            "change_autoprobe": autoprobe is not None and autoprobe != info["drivers_autoprobe"],
            "in_use": in_use,
            "before": {"num_vfs": current, "drivers_autoprobe": info["drivers_autoprobe"], "vfs": info["vfs"]},
        }

    @staticmethod
    def _in_use_text(planned):
        parts = ["%s: %s" % (vf, ", ".join(reasons)) for vf, reasons in sorted(planned["in_use"].items())]
        return "%s has VFs in use (%s)" % (planned["address"], "; ".join(parts))

    @staticmethod
    def _any_change(plans):
        return any(p["change_count"] or p["change_autoprobe"] for p in plans)

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
            except SriovError as error:
                self.fail(
                    "%s%s" % (error, "; done before: %s" % ", ".join(done) if done else ""),
                    changed=bool(done) or planned["change_count"],
                )

    def _after(self, planned):
        pf = planned["address"]
        if not self.check_mode:
            info = read_sriov(self.root, pf)
            return {"num_vfs": info["num_vfs"], "drivers_autoprobe": info["drivers_autoprobe"], "vfs": info["vfs"]}
        before = planned["before"]
        autoprobe = (
            before["drivers_autoprobe"] if planned["drivers_autoprobe"] is None else planned["drivers_autoprobe"]
        )
        vfs = before["vfs"] if not planned["change_count"] else vf_addresses(self.root, pf, planned["num_vfs"])
        return {"num_vfs": planned["num_vfs"], "drivers_autoprobe": autoprobe, "vfs": vfs}

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
            if num_vfs == 0 and autoprobe in (None, True):
                section.pop(pf, None)
            else:
                section[pf] = state_entry(num_vfs, autoprobe)
        return section

    def _result(self, planned, after):
        return {
            "address": planned["address"],
            "selector": planned["selector"],
            "total_vfs": planned["total_vfs"],
            "before": planned["before"],
            "after": after,
            "in_use": planned["in_use"],
            "changed": planned["change_count"] or planned["change_autoprobe"],
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
            return "\n".join(lines) + "\n"

        return {
            "before": render("before"),
            "after": render("after"),
            "before_header": "SR-IOV physical functions",
            "after_header": "SR-IOV physical functions",
        }


def _flag(value):
    return "unknown" if value is None else ("1" if value else "0")
