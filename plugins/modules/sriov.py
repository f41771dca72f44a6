#!/usr/bin/python
# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: sriov
short_description: Set the number of SR-IOV virtual functions per physical function and keep it across reboots
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
description:
  - Makes each selected SR-IOV physical function (PF) have the declared number of virtual functions
    (VFs) and C(sriov_drivers_autoprobe) setting, and records both so that C(gpuvirt-restore.service)
    (role P(gpuvirt.host.vgpu#role)) enables the VFs again at boot.
  - The kernel only changes a non-zero VF count through 0, so a different count is set by writing 0,
    reading back that the VFs are gone, then writing the new count and reading back C(sriov_numvfs)
    and the C(virtfnN) links, with a bounded number of retries. If the new count fails, the previous
    count is enabled again when possible.
  - Changing the count removes every VF of the PF. The module refuses, before changing anything, when a
    VF is in use, that is when a process (a VM) holds its VFIO group or device, a mediated device exists
    on it, or an NVIDIA vGPU type is assigned to it; O(force=true) goes ahead anyway.
  - A count above C(sriov_totalvfs), a selector that matches nothing, and a PF without a driver fail
    before anything is changed.
  - "NVIDIA GPUs in vGPU mode enable their VFs with C(sriov-manage): use M(gpuvirt.host.nvidia_vgpu) for them."
extends_documentation_fragment:
  - gpuvirt.host.attributes
  - gpuvirt.host.attributes.linux
attributes:
  check_mode:
    support: full
    details:
      - Reads everything, writes nothing, and predicts C(changed), the VF addresses and the state file exactly.
  diff_mode:
    support: full
    details:
      - Shows the VF counts and the state file C(/etc/gpuvirt/host-state.json) before and after.
options:
  devices:
    description:
      - The physical functions to manage. A PF not selected is left alone.
    type: list
    elements: dict
    required: true
    suboptions:
      selector:
        description:
          - The PF, as its PCI address (C(0000:41:00.0), 4- or 8-digit domain, or short C(41:00.0)), a
            C(vendor:device) ID pair, or a model name matched against the C(pci.ids) device name
            (C(X710), C(NVM Express)). An ID pair or model selects every SR-IOV PF of that model.
          - A model name matching two different models fails; a virtual function or a device without
            SR-IOV capability fails.
          - "Model names are matched the same way in every module of this collection: case and repeated
            blanks do not matter; the whole C(pci.ids) name (C(GA100 [A100 PCIe 80GB])), its bracketed
            marketing name, vendor and device name together, or any part of them match; a device whose
            name is exactly the selector wins over devices whose names only contain it. A plain number
            is refused: indexes change between boots."
        type: str
        required: true
      num_vfs:
        description:
          - How many VFs the PF must have, from 0 to its C(sriov_totalvfs).
          - When omitted the count is left as it is (and recorded as it is).
        type: int
      drivers_autoprobe:
        description:
          - Whether new VFs are bound to a driver as they appear (C(sriov_drivers_autoprobe)). V(false)
            leaves them unbound, for example to bind them to vfio-pci with M(gpuvirt.host.vfio_pci).
          - Set before the VF count changes, so that it applies to the new VFs. When omitted the setting
            is left as it is.
        type: bool
  force:
    description:
      - Change the VF count even when a VF is in use. Running VMs lose their device, and mediated devices
        and vGPU types on the VFs are destroyed with the VFs.
    type: bool
    default: false
  persistent:
    description:
      - Record each selected PF's count and autoprobe setting in C(/etc/gpuvirt/host-state.json), which
        C(gpuvirt-restore.service) replays at boot before vGPU types and mediated devices.
      - A PF declared with V(0) VFs and autoprobe on (the boot default) has its record removed.
    type: bool
    default: true
  retries:
    description:
      - How many more times C(sriov_numvfs) and C(sriov_drivers_autoprobe) are read back after a write
        until they show the written value.
    type: int
    default: 10
  delay:
    description:
      - Seconds between two read-backs.
    type: float
    default: 0.5
  root:
    description:
      - The host filesystem root to work on (C(<root>/sys), C(<root>/etc)), for image trees and tests.
    type: path
    default: /
notes:
  - Requires the PF's driver to be loaded and bound (C(sriov_numvfs) writes go through it), and SR-IOV
    enabled in the firmware setup.
seealso:
  - module: gpuvirt.host.nvidia_vgpu
  - module: gpuvirt.host.mdev
  - module: gpuvirt.host.topology_info
"""

EXAMPLES = r"""
- name: Four VFs on the NVMe controller, one on each X710 port, bound to no driver
  gpuvirt.host.sriov:
    devices:
      - selector: "0000:04:00.0"
        num_vfs: 4
      - selector: "8086:1572"
        num_vfs: 1
        drivers_autoprobe: false

- name: Disable the VFs of a card, even if a VM still uses one
  gpuvirt.host.sriov:
    devices:
      - selector: "41:00.0"
        num_vfs: 0
    force: true
"""

RETURN = r"""
devices:
  description: Per selected PF, its state before and after the run (predicted in check mode).
  returned: always
  type: list
  elements: dict
  sample:
    - address: "0000:04:00.0"
      selector: "0000:04:00.0"
      total_vfs: 4
      before: {num_vfs: 0, drivers_autoprobe: true, vfs: []}
      after: {num_vfs: 2, drivers_autoprobe: true, vfs: ["0000:04:00.1", "0000:04:00.2"]}
      in_use: {}
      changed: true
  contains:
    address:
      description: The PF's PCI address.
      type: str
    selector:
      description: The selector that chose it.
      type: str
    total_vfs:
      description: Its C(sriov_totalvfs).
      type: int
    before:
      description: C(num_vfs), C(drivers_autoprobe) and C(vfs) (addresses) before the run.
      type: dict
    after:
      description: C(num_vfs), C(drivers_autoprobe) and C(vfs) after the run.
      type: dict
    in_use:
      description: The VFs that were in use when the count had to change, each with the reasons.
      type: dict
    changed:
      description: Whether this PF was (or, in check mode, would be) changed.
      type: bool
state_file:
  description: The state file the boot-time restore replays, and whether it changed.
  returned: always
  type: dict
  contains:
    path:
      description: Its path.
      type: str
    changed:
      description: Whether it was (would be) written.
      type: bool
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.gpuvirt.host.plugins.module_utils import rules  # noqa: E402
from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError  # noqa: E402
from ansible_collections.gpuvirt.host.plugins.module_utils.files import FileError  # noqa: E402
from ansible_collections.gpuvirt.host.plugins.module_utils.host import run_locked  # noqa: E402
from ansible_collections.gpuvirt.host.plugins.module_utils.hoststate import (  # noqa: E402
    StateFileError,
    load_state,
    state_path,
    with_section,
    write_state,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.iommu import vfio_holders  # noqa: E402
from ansible_collections.gpuvirt.host.plugins.module_utils.mdev_info import mdevs  # noqa: E402
from ansible_collections.gpuvirt.host.plugins.module_utils.pci import name_devices, read_pci_devices  # noqa: E402
from ansible_collections.gpuvirt.host.plugins.module_utils.sriov import (  # noqa: E402
    SriovError,
    read_sriov,
    select_pfs,
    set_drivers_autoprobe,
    set_num_vfs,
    state_entry,
    vf_addresses,
    vf_users,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import NotALinuxTree, check_root  # noqa: E402


class SriovModule:
    def __init__(self, module):
        self.module = module
        self.root = module.params["root"]
        self.retries = module.params["retries"]
        self.delay = module.params["delay"]

    def fail(self, message, **extra):
        extra.setdefault("changed", False)
        raise GpuvirtError(message, **extra)

    def run(self):
        params = self.module.params
        rules.integer(self.retries, "retries", 0, rules.RETRIES_MAX)
        rules.number(self.delay, "delay", minimum_allowed=True, maximum=rules.WAIT_MAX)
        try:
            check_root(self.root)
            state = load_state(self.root)
        except (NotALinuxTree, StateFileError) as error:
            self.fail(str(error))
        plans = self._plan(params["devices"])
        blocked = [p for p in plans if p["in_use"]]
        if blocked and not params["force"]:
            self.fail(
                "refusing to change the VF count: that removes every VF of the PF, and some are in use. %s. "
                "Stop the VMs and remove the mediated devices or vGPU types first, or set force: true. "
                "Nothing was changed." % "; ".join(self._in_use_text(p) for p in blocked),
                devices=[self._result(p, p["before"]) for p in plans],
            )
        for planned in blocked:
            self.module.warn("forced: %s" % self._in_use_text(planned))

        if not self.module.check_mode:
            self._apply(plans)
        for planned in plans:
            planned["after"] = self._after(planned)

        wanted = self._state_section(state, plans) if params["persistent"] else state["sriov"]
        try:
            state_changed, state_diff = write_state(self.module, self.root, with_section(state, "sriov", wanted))
        except (OSError, FileError) as error:
            self.fail("writing %s failed: %s" % (state_path(self.root), error), changed=self._any_change(plans))
        result = dict(
            changed=self._any_change(plans) or state_changed,
            devices=[self._result(p, p["after"]) for p in plans],
            state_file={"path": state_path(self.root), "changed": state_changed},
        )
        if self.module._diff:
            result["diff"] = [self._device_diff(plans), state_diff]
        return result

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
            try:
                addresses = select_pfs(devices, declaration["selector"])
            except SriovError as error:
                self.fail(str(error))
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
        if change_count and device.vendor_id == "10de" and info["driver"] == "nvidia":
            self.module.warn(
                "%s is an NVIDIA GPU on the nvidia driver: vGPU hosts enable its VFs with sriov-manage; "
                "gpuvirt.host.nvidia_vgpu does that" % pf
            )
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
        done = []
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
        if not self.module.check_mode:
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


def main():
    module = AnsibleModule(
        argument_spec=dict(
            devices=dict(
                type="list",
                elements="dict",
                required=True,
                options=dict(
                    selector=dict(type="str", required=True),
                    num_vfs=dict(type="int"),
                    drivers_autoprobe=dict(type="bool"),
                ),
            ),
            force=dict(type="bool", default=False),
            persistent=dict(type="bool", default=True),
            retries=dict(type="int", default=10),
            delay=dict(type="float", default=0.5),
            root=dict(type="path", default="/"),
        ),
        supports_check_mode=True,
    )
    run_locked(module, lambda host: SriovModule(module).run())


if __name__ == "__main__":
    main()
