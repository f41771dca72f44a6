# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``nvidia_vgpu`` module's run (:mod:`modrun`): select NVIDIA GPUs, put them in SR-IOV mode
when needed, plan and set each VF's vGPU type, and record the types and the VF counts for the
boot-time restore (state file) and for check mode before the VFs exist (type cache).

SR-IOV mode is all the VFs a GPU offers: ``sriov-manage -e`` enables ``sriov_totalvfs`` of them. A GPU
with only some enabled is not planned on as it is: its VFs are enabled anew (``sriov-manage -d``, then
``-e``) when nothing on them would be lost, or the run fails saying what would be; its short count is
never recorded."""

from __future__ import annotations

from ansible_collections.gpuvirt.host.plugins.module_utils import rules
from ansible_collections.gpuvirt.host.plugins.module_utils.device_users import vfio_holders
from ansible_collections.gpuvirt.host.plugins.module_utils.files import FileError
from ansible_collections.gpuvirt.host.plugins.module_utils.hoststate import (
    StateFileError,
    load_state,
    plan_state,
    state_path,
    with_section,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.mdev_info import mdevs
from ansible_collections.gpuvirt.host.plugins.module_utils.modrun import ModuleRun
from ansible_collections.gpuvirt.host.plugins.module_utils.nvidia_vgpu import (
    Executor,
    VgpuError,
    cache_key,
    cache_path,
    enable_vfs_with_sriov_manage,
    framebuffer_of,
    gpu_reason,
    known_types,
    legacy_mdev_parents,
    load_cache,
    lost_by_reenabling,
    observe,
    plan_cache,
    plan_per_vf,
    predicted_gpu,
    read_gpu,
    wait_for_vf_interfaces,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.pci import name_devices, read_pci_devices
from ansible_collections.gpuvirt.host.plugins.module_utils.selector import select_devices
from ansible_collections.gpuvirt.host.plugins.module_utils.sriov import SriovError, read_sriov, state_entry
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import (
    NotALinuxTree,
    UnsupportedArchitecture,
    check_architecture,
    check_root,
)


class Work:
    """One selected GPU through the run."""

    def __init__(self, gpu, declaration):
        self.gpu = gpu  # as read before the run
        self.view = gpu  # as planned on: predicted after enabling in check mode, re-read in a real run
        self.declaration = declaration
        self.enable = False
        self.enabled = False
        self.known = {}
        self.plan = None
        self.mdev_parents = []
        self.executor = None


class NvidiaVgpuRun(ModuleRun):
    def __init__(self, module, host):
        super().__init__(module, host)
        self.force = self.params["force"]
        self.retries = self.params["retries"]
        self.delay = self.params["delay"]
        self.cache = None
        self.state = None
        self.files = None
        self.afters = []

    def plan(self):
        self.retries, self.delay = rules.waits(self.params)
        try:
            check_root(self.root)
            check_architecture(self.root)
            self.state = load_state(self.root)
            self.cache = load_cache(self.root)
        except (NotALinuxTree, UnsupportedArchitecture, StateFileError, VgpuError) as error:
            self.fail(str(error))
        works = self._select()
        for work in works:
            self.cache = observe(self.cache, work.gpu)
            self._prepare(work)
        return tuple(works)

    def apply(self, plan):
        self._apply(plan)
        self._persist(plan)

    def result(self, plan):
        if self.check_mode:
            self._persist(plan)
            self._warn_partial_cache(plan)
        changed = any(work.enable or bool(work.plan and work.plan.changes) for work in plan)
        state, cache = self.files
        result = dict(
            changed=changed or state.changed or cache.changed,
            gpus=[self._gpu_result(work, after) for work, after in zip(plan, self.afters)],
            mdev_parents=[parent for work in plan for parent in work.mdev_parents],
            state_file={"path": state_path(self.root), "changed": state.changed},
            type_cache={"path": cache_path(self.root), "changed": cache.changed},
        )
        result["diff"] = [self._vgpu_diff(plan), state.diff(), cache.diff()]
        return result

    def _warn_partial_cache(self, works):
        """Say so when check mode cannot show the type cache as the run will write it: a run that removes
        a GPU's last vGPU reads the complete list of its model's types from the emptied GPU and records it,
        and check mode cannot read that list while a VF still holds a vGPU."""
        for work, after in zip(works, self.afters):
            view = work.view
            entry = self.cache["gpus"].get(cache_key(view)) or {}
            empties = bool(after) and not any(after.values()) and any(vf.current for vf in view.vfs)
            if view.framework == "per_vf" and empties and not entry.get("complete"):
                self.warn(
                    "%s: the run removes its last vGPU, and then reads every vGPU type of its model from it and "
                    "records them in the type cache (%s); check mode cannot read them while a VF holds a vGPU, so "
                    "its type cache diff shows only the types known now" % (view.address, cache_path(self.root))
                )

    def partial(self):
        return {"changed": self.changes_made}

    # -- selecting and planning -------------------------------------------------------------------

    def _select(self):
        devices = read_pci_devices(self.root)
        pci_ids = name_devices(self.root, devices)
        holders = vfio_holders(self.root)
        mdev_list = mdevs(self.root)
        owner = {}
        works = []
        for declaration in self.params["gpus"]:
            try:
                addresses = select_devices(declaration["selector"], devices, "NVIDIA GPU", gpu_reason)
                for pf in addresses:
                    if pf in owner:
                        raise VgpuError(
                            "%s is selected twice (by %r and %r); declare each GPU once"
                            % (pf, owner[pf], declaration["selector"])
                        )
                    owner[pf] = declaration["selector"]
                    works.append(Work(read_gpu(self.root, pf, holders, mdev_list, pci_ids), declaration))
            except VgpuError as error:
                self.fail(str(error))
        return works

    def _prepare(self, work):
        gpu = work.gpu
        where = "%s (%s)" % (gpu.address, gpu.name)
        if gpu.driver != "nvidia":
            why = {
                None: "no driver is bound to it",
                "vfio-pci": "it is bound to vfio-pci, set up for passthrough (gpuvirt.host.vfio_pci)",
            }.get(gpu.driver, "it is bound to %s" % gpu.driver)
            self.fail("%s: vGPUs need the NVIDIA vGPU host driver, but %s. Nothing was changed." % (where, why))
        if gpu.partly_enabled:
            self._guard_reenable(work, where)
            work.enable = True
            # Planned on the GPU as it will be, in a real run too, so that bad input fails before the VFs go;
            # only from a complete list of types (one read while no VF held a vGPU), else after enabling.
            entry = self.cache["gpus"].get(cache_key(gpu))
            work.view = predicted_gpu(self.root, gpu, entry if (entry or {}).get("complete") else None)
        elif gpu.framework is None:
            if gpu.sriov and gpu.sriov["total_vfs"] and not gpu.sriov["num_vfs"]:
                self._guard_enable(work, where)
                work.enable = True
                if self.check_mode:
                    work.view = predicted_gpu(self.root, gpu, self.cache["gpus"].get(cache_key(gpu)))
            elif gpu.sriov_mode:
                try:
                    work.view = work.gpu = wait_for_vf_interfaces(self.root, gpu.address, self.retries, self.delay)
                except VgpuError as error:
                    self.fail(str(error))
            else:
                self.fail(
                    "%s offers no vGPU: it has no SR-IOV capability and no nvidia mdev types; install the NVIDIA "
                    "vGPU host driver for it" % where
                )
        if work.view.framework is None:
            if gpu.partly_enabled:
                self.warn(
                    "%s: its VFs are enabled anew first, and no complete list of vGPU types is remembered for this "
                    "model, so the profiles are only checked once a real run has enabled them" % where
                )
            else:
                self.warn(
                    "%s: its VFs are not enabled and no vGPU types are remembered for this model, so the profiles "
                    "are only checked once a real run has enabled the VFs" % where
                )
            return
        try:
            self._plan(work)
        except VgpuError as error:
            self.fail(str(error))

    def _guard_enable(self, work, where):
        gpu = work.gpu
        if not work.declaration["enable_sriov"]:
            self.fail(
                "%s is not in SR-IOV mode (sriov_numvfs is 0); enable_sriov: true enables its VFs with sriov-manage"
                % where
            )
        blockers = ["mdev %s (%s)" % (m["uuid"], m["type"]) for m in gpu.pf_mdevs] + list(gpu.pf_users)
        if blockers and not self.force:
            self.fail(
                "%s is not in SR-IOV mode and hosts vGPUs or users without it: %s. Enabling SR-IOV mode "
                "(sriov-manage -e) would disturb them. Remove them first, or set force: true. Nothing was changed."
                % (where, ", ".join(blockers))
            )

    def _guard_reenable(self, work, where):
        gpu = work.gpu
        short = "only %d of its %d VFs are enabled (sriov_numvfs %d, sriov_totalvfs %d)" % (
            gpu.sriov["num_vfs"], gpu.sriov["total_vfs"], gpu.sriov["num_vfs"], gpu.sriov["total_vfs"])
        if not work.declaration["enable_sriov"]:
            self.fail(
                "%s: %s: sriov-manage stopped part way, a smaller count was written by hand, or a restore was cut "
                "short. NVIDIA vGPU needs all of them, as sriov-manage -e enables them; enable_sriov: true enables "
                "them anew (sriov-manage -d, then -e), or run those two yourself. Nothing was changed." % (where, short)
            )
        lost = lost_by_reenabling(gpu, known_types(gpu, self.cache["gpus"].get(cache_key(gpu))))
        if not lost:
            return
        message = (
            "%s: %s; enabling all of them takes the enabled ones away first (sriov-manage -d, then -e: the kernel "
            "enables VFs only from 0), which would remove %s" % (where, short, "; ".join(lost))
        )
        if not self.force:
            self.fail(
                message + ". Stop the VMs and delete those vGPUs first, or set force: true (the kernel still refuses "
                "while a VM holds a VF). Nothing was changed."
            )
        self.warn("force: true: " + message)

    def _plan(self, work):
        view = work.view
        recorded = {vf.address: self.state["nvidia_vgpu"].get(vf.address) for vf in view.vfs}
        work.known = known_types(view, self.cache["gpus"].get(cache_key(view)), recorded)
        if view.framework == "legacy":
            work.mdev_parents = legacy_mdev_parents(view, work.declaration, work.known)
            return
        cached = self.cache["gpus"].get(cache_key(view)) or {}
        # Only a complete list of the model's types (read while no VF held a vGPU, now or remembered) shows
        # its largest profile, the whole framebuffer.
        framebuffer = framebuffer_of(work.known) if view.complete or cached.get("complete") else None
        work.plan = plan_per_vf(view, work.declaration, work.known, self.force, framebuffer)
        for warning in work.plan.warnings:
            self.warn(warning)
        if work.plan.recheck and self.check_mode:
            self.warn(
                "%s: whether the new vGPUs fit is only known after deleting the old ones" % work.gpu.address
            )

    # -- applying -------------------------------------------------------------------------------

    def _apply(self, works):
        for work in works:
            try:
                if work.enable:
                    self._enable(work)
                if work.plan is not None and work.plan.changes:
                    work.executor = Executor(self.root)
                    work.executor.run(work.plan, work.known)
            except (VgpuError, SriovError) as error:
                self._fail_rolled_back(works, error)

    def _vf_count_moves(self, works):
        """The GPUs whose VF count a failed run changed without enabling all (a short count disabled)."""
        moves = []
        for work in works:
            if work.enable and not work.enabled:
                now = (read_sriov(self.root, work.gpu.address) or {}).get("num_vfs")
                if now != work.gpu.sriov["num_vfs"]:
                    moves.append("%s has %s VFs now, not %d" % (work.gpu.address, now, work.gpu.sriov["num_vfs"]))
        return moves

    def _enable(self, work):
        pf = work.gpu.address
        result = enable_vfs_with_sriov_manage(
            self.module, self.root, pf, self.retries, self.delay, command=self.params["sriov_manage"]
        )
        for warning in result["warnings"]:
            self.warn(warning)
        work.enabled = result["changed"]
        work.view = wait_for_vf_interfaces(self.root, pf, self.retries, self.delay)
        self.cache = observe(self.cache, work.view)
        self._plan(work)

    def _fail_rolled_back(self, works, error):
        problems = []
        undone = 0
        for work in reversed(works):
            if work.executor is not None:
                undone += len(work.executor.created) + len(work.executor.deleted)
                problems.extend(work.executor.rollback())
        enabled = [w.gpu.address for w in works if w.enabled]
        moves = self._vf_count_moves(works)
        message = str(error)
        if undone:
            message += " Rolled back the %d vGPU change(s) this run had made." % undone
        if problems:
            message += " Rolling back failed: %s." % "; ".join(problems)
        if enabled:
            message += " The VFs this run enabled stay enabled (%s)." % ", ".join(enabled)
        if moves:
            message += " %s." % "; ".join(moves)
        self.fail(message, changed=bool(problems or enabled or moves))

    # -- results --------------------------------------------------------------------------------

    def _after_types(self, work):
        """``{vf: type id}`` after the run (predicted in check mode)."""
        if work.plan is None:
            return {}
        if not self.check_mode:
            gpu = read_gpu(self.root, work.gpu.address)
            self.cache = observe(self.cache, gpu)
            return {vf.address: vf.current or 0 for vf in gpu.vfs}
        after = {vf.address: vf.current or 0 for vf in work.view.vfs}
        for vf, _old in work.plan.delete:
            after[vf] = 0
        for vf, type_id in work.plan.create:
            after[vf] = type_id
        return after

    def _persist(self, works):
        """Record the types and VF counts (state file) and the types seen (type cache)."""
        nvidia_section = dict(self.state["nvidia_vgpu"])
        sriov_section = dict(self.state["sriov"])
        self.afters = [self._after_types(work) for work in works]
        if self.params["persistent"]:
            for work, after in zip(works, self.afters):
                self._record(work, after, nvidia_section, sriov_section)
        state = with_section(with_section(self.state, "nvidia_vgpu", nvidia_section), "sriov", sriov_section)
        self.files = (plan_state(self.root, state), plan_cache(self.root, self.cache))
        try:
            for change in self.files:
                self.write(change)
        except (OSError, FileError) as error:
            changed = self.changes_made or any(w.enable or bool(w.plan and w.plan.changes) for w in works)
            self.fail("writing the state or type cache file failed: %s" % error, changed=changed)

    def _vgpu_diff(self, works):
        lines_before, lines_after = [], []
        for work, after in zip(works, self.afters):
            for vf in work.view.vfs if work.plan is not None else []:
                before = (work.gpu.vf(vf.address).current or 0) if work.gpu.vf(vf.address) else 0
                lines_before.append("%s %s" % (vf.address, self._name(work, before)))
                lines_after.append("%s %s" % (vf.address, self._name(work, after.get(vf.address, 0))))
        return {
            "before": "".join(line + "\n" for line in lines_before),
            "after": "".join(line + "\n" for line in lines_after),
            "before_header": "vGPU type per VF",
            "after_header": "vGPU type per VF",
        }

    @staticmethod
    def _name(work, type_id):
        if not type_id:
            return "none"
        return "%s %s" % (type_id, work.known.get(type_id) or "")

    def _record(self, work, after, nvidia_section, sriov_section):
        view = work.view
        if view.sriov_mode:  # never a short count: the boot-time restore would accept it back
            recorded = sriov_section.get(view.address) if isinstance(sriov_section.get(view.address), dict) else {}
            sriov_section[view.address] = state_entry(view.sriov["num_vfs"], recorded.get("drivers_autoprobe"),
                                                      "sriov_manage", vfio=recorded.get("vfio"))
        if work.plan is None:
            return
        exclusive = bool(work.declaration["exclusive"])
        for vf in view.vfs:
            type_id = work.plan.declared.get(vf.address)
            if type_id:
                nvidia_section[vf.address] = {"type_id": type_id, "type_name": work.known.get(type_id)}
                continue
            recorded = nvidia_section.get(vf.address)
            keep = (
                not exclusive
                and isinstance(recorded, dict)
                and recorded.get("type_id") == after.get(vf.address)
                and after.get(vf.address)
            )
            if not keep:
                nvidia_section.pop(vf.address, None)

    def _gpu_result(self, work, after):
        known = work.known

        def typed(type_id):
            return {"type_id": type_id, "type_name": known.get(type_id) if type_id else None}

        plan = work.plan
        vfs = []
        if plan is not None:
            for vf in work.view.vfs:
                original = work.gpu.vf(vf.address)
                before = (original.current or 0) if original else 0
                vfs.append(
                    {
                        "address": vf.address,
                        "before": typed(before),
                        "after": typed(after.get(vf.address, 0)),
                        "in_use": list(original.users) if original else [],
                    }
                )
        sriov = work.view.sriov or {}
        return {
            "address": work.gpu.address,
            "selector": work.declaration["selector"],
            "name": work.gpu.name,
            "framework": work.view.framework,
            "sriov_enabled": work.enable,
            "num_vfs": sriov.get("num_vfs") or 0,
            "types": [{"id": k, "name": v} for k, v in sorted(known.items(), key=lambda i: str(i[0]).zfill(12))],
            "vfs": vfs,
            "created": [dict(vf=vf, **typed(t)) for vf, t in plan.create] if plan else [],
            "deleted": [dict(vf=vf, **typed(t)) for vf, t in plan.delete] if plan else [],
            "kept_in_use": list(plan.kept_in_use) if plan else [],
            "undeclared": list(plan.undeclared) if plan else [],
        }
