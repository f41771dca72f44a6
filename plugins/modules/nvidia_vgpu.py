#!/usr/bin/python
# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: nvidia_vgpu
short_description: Assign NVIDIA vGPU profiles to the virtual functions of SR-IOV GPUs
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
description:
  - Makes each selected NVIDIA GPU hold the declared vGPU profiles, given as a number of instances per
    profile (C(L40S-1B) twice) or explicitly per virtual function (VF), and records them so that
    C(gpuvirt-restore.service) (role P(gpuvirt.host.vgpu#role)) recreates them at boot after the VFs.
  - "Detects the vGPU framework of each GPU: the per-VF interface of kernel 6.8+ with vGPU 17+
    (C(nvidia/creatable_vgpu_types) and C(nvidia/current_vgpu_type) on each VF), or legacy mediated
    device types (C(nvidia-471) whose name reads C(NVIDIA A100-4C)) on the VFs or on the GPU itself."
  - "Profiles are named by type ID (C(1030), C(nvidia-471)), by vGPU name (C(NVIDIA L40S-1B)) or by
    profile (C(L40S-1B)), in any case. The creatable list only shows what fits now, so every list read
    is remembered per GPU model in C(/var/lib/gpuvirt/nvidia-vgpu-types.json) and later runs resolve
    names even when the GPU is full. An unknown profile fails with the list of valid ones."
  - A GPU that is not in SR-IOV mode gets its VFs enabled with C(sriov-manage -e <address>); because it
    races the driver's start-up and can report success without having enabled anything, the module
    reads C(sriov_numvfs) back and retries a bounded number of times, whatever it exits with. It refuses
    to do that when the GPU hosts vGPUs created without SR-IOV (mediated devices on the GPU itself) or a
    process holds the GPU, because enabling SR-IOV mode would disturb them; O(force=true) goes ahead.
  - "Per-VF interface: a vGPU is created by writing its type ID to the VF's C(current_vgpu_type) and
    deleted by writing C(0); every write is read back. Existing vGPUs of a declared profile count;
    new ones go to free VFs in VF order. Deletions come first, then creations; before each creation
    the VF's creatable list is read again, and if the GPU has run out of room, every change of the run
    is rolled back and the module fails with the numbers."
  - A vGPU whose VF is in use (a process, a VM, holds its VFIO group or device) is never deleted or
    changed unless O(force=true). An explicit change to it fails, a surplus or undeclared one is kept
    with a warning.
  - "Legacy (mdev) GPUs: the vGPUs are mediated devices, created, persisted and guarded by
    M(gpuvirt.host.mdev). This module enables the VFs, resolves the profiles to type ids and returns
    RV(mdev_parents), which is passed unchanged as the O(gpuvirt.host.mdev#module:parents) of
    M(gpuvirt.host.mdev), so that one module owns every mediated device."
extends_documentation_fragment:
  - gpuvirt.host.attributes
  - gpuvirt.host.attributes.linux
attributes:
  check_mode:
    support: full
    details:
      - Reads everything, writes nothing, and predicts C(changed), the VF assignments and the state file.
      - When deletions must make room for new vGPUs, whether they fit is only known after deleting;
        check mode then warns.
      - For a GPU whose VFs are not enabled yet, the VFs are predicted from C(sriov_offset) and
        C(sriov_stride), and the profiles from the types remembered for the GPU model; without them the
        profiles are resolved only in a real run, and check mode warns.
  diff_mode:
    support: full
    details:
      - Shows the vGPU type of each VF, the state file and the type cache before and after.
options:
  gpus:
    description:
      - The GPUs to manage. A GPU not selected is left alone.
    type: list
    elements: dict
    required: true
    suboptions:
      selector:
        description:
          - The GPU, as its PCI address (C(0000:ca:00.0), 4- or 8-digit domain, or short C(ca:00.0)), a
            C(vendor:device) ID pair (C(10de:26b9)), or a model name matched against the C(pci.ids) device
            name (C(L40S)). An ID pair or model selects every such GPU; each gets the whole declaration.
          - "Model names are matched the same way in every module of this collection: case and repeated
            blanks do not matter; the whole C(pci.ids) name (C(GA100 [A100 PCIe 80GB])), its bracketed
            marketing name, vendor and device name together, or any part of them match; a device whose
            name is exactly the selector wins over devices whose names only contain it. A plain number
            is refused: indexes change between boots."
        type: str
        required: true
      profiles:
        description:
          - How many vGPUs of each profile the GPU must hold. Existing vGPUs of a profile count; those
            beyond the count are deleted (unless in use).
          - Mutually exclusive with O(gpus[].vfs).
        type: list
        elements: dict
        suboptions:
          profile:
            description:
              - The profile, by type ID, vGPU name or profile name.
            type: str
            required: true
          count:
            description:
              - How many vGPUs of the profile, 0 or more.
            type: int
            required: true
      vfs:
        description:
          - The vGPU of each listed VF, explicitly. Mutually exclusive with O(gpus[].profiles).
        type: list
        elements: dict
        suboptions:
          address:
            description:
              - The VF's PCI address.
            type: str
            required: true
          profile:
            description:
              - The profile the VF must hold. Required when O(gpus[].vfs[].state=present).
            type: str
          state:
            description:
              - V(absent) deletes the VF's vGPU.
            type: str
            choices: [present, absent]
            default: present
      exclusive:
        description:
          - Delete the vGPUs of this GPU that are not declared (never one in use, unless O(force=true)).
        type: bool
        default: false
      enable_sriov:
        description:
          - Enable the VFs with C(sriov-manage) when the GPU is not in SR-IOV mode. With V(false) such a
            GPU fails instead.
        type: bool
        default: true
  force:
    description:
      - Delete or change vGPUs whose VF is in use, and enable SR-IOV mode on a GPU that hosts vGPUs created
        without it. The kernel may still refuse a vGPU that a running VM holds.
    type: bool
    default: false
  persistent:
    description:
      - Record the declared vGPU types (state file section C(nvidia_vgpu)) and the GPU's VFs (section
        C(sriov), method C(sriov_manage)) in C(/etc/gpuvirt/host-state.json) for the boot-time restore.
    type: bool
    default: true
  sriov_manage:
    description:
      - The C(sriov-manage) command. Defaults to C(/usr/lib/nvidia/sriov-manage), else the one on E(PATH).
    type: path
  retries:
    description:
      - How many more times C(sriov-manage) is run, and the VFs' vGPU interfaces are waited for, until
        they read back as wanted.
    type: int
    default: 5
  delay:
    description:
      - Seconds between two of those attempts.
    type: float
    default: 2.0
  root:
    description:
      - The host filesystem root to work on (C(<root>/sys), C(<root>/etc)), for image trees and tests.
        Commands (C(sriov-manage)) always run on the managed host itself.
    type: path
    default: /
notes:
  - Requires the NVIDIA vGPU host driver (not the datacenter driver) bound to the GPU.
seealso:
  - module: gpuvirt.host.mdev
  - module: gpuvirt.host.sriov
  - module: gpuvirt.host.topology_info
"""

EXAMPLES = r"""
- name: Four L40S-2B vGPUs on every L40S
  gpuvirt.host.nvidia_vgpu:
    gpus:
      - selector: L40S
        profiles:
          - profile: L40S-2B
            count: 4

- name: Explicit types on the VFs of one GPU; delete every other vGPU on it that no VM uses
  gpuvirt.host.nvidia_vgpu:
    gpus:
      - selector: "0000:ca:00.0"
        vfs:
          - address: "0000:ca:00.4"
            profile: NVIDIA L40S-8Q
          - address: "0000:ca:00.5"
            profile: "1041"
        exclusive: true

- name: Resolve A100-4C on a legacy (mdev) A100 and enable its VFs
  gpuvirt.host.nvidia_vgpu:
    gpus:
      - selector: "10de:20f1"
        profiles:
          - profile: A100-4C
            count: 4
  register: a100

- name: Create the mediated devices it asks for
  gpuvirt.host.mdev:
    parents: "{{ a100.mdev_parents }}"
"""

RETURN = r"""
gpus:
  description: Per selected GPU, what it held before and after the run (predicted in check mode).
  returned: always
  type: list
  elements: dict
  sample:
    - address: "0000:cb:00.0"
      selector: L40S
      name: NVIDIA Corporation AD102GL [L40S]
      framework: per_vf
      sriov_enabled: false
      num_vfs: 8
      types: [{id: 1030, name: NVIDIA L40S-1B}]
      vfs:
        - {address: "0000:cb:00.4", before: {type_id: 0, type_name: null}, after: {type_id: 1030,
           type_name: NVIDIA L40S-1B}, in_use: []}
      created: [{vf: "0000:cb:00.4", type_id: 1030, type_name: NVIDIA L40S-1B}]
      deleted: []
      kept_in_use: []
      undeclared: []
  contains:
    address:
      description: The GPU's PCI address.
      type: str
    selector:
      description: The selector that chose it.
      type: str
    name:
      description: Its name from C(pci.ids).
      type: str
    framework:
      description: V(per_vf), V(legacy), or null when not known yet (check mode, VFs not enabled).
      type: str
    sriov_enabled:
      description: Whether this run enabled its VFs with C(sriov-manage).
      type: bool
    num_vfs:
      description: Its number of VFs after the run.
      type: int
    types:
      description: The vGPU types known for it (live, then remembered), each C(id) and C(name).
      type: list
      elements: dict
    vfs:
      description: Per VF, C(address), C(before) and C(after) (C(type_id), C(type_name)) and C(in_use).
      type: list
      elements: dict
    created:
      description: vGPUs created, each C(vf), C(type_id), C(type_name).
      type: list
      elements: dict
    deleted:
      description: vGPUs deleted, each C(vf), C(type_id), C(type_name).
      type: list
      elements: dict
    kept_in_use:
      description: VFs whose undeclared or surplus vGPU was kept because it is in use.
      type: list
      elements: str
    undeclared:
      description: VFs holding a vGPU that is not declared and was kept (O(gpus[].exclusive=false)).
      type: list
      elements: str
mdev_parents:
  description:
    - For legacy (mdev) GPUs, the O(gpuvirt.host.mdev#module:parents) that make them hold the declaration;
      empty when every GPU uses the per-VF interface.
  returned: always
  type: list
  elements: dict
  sample:
    - selector: "0000:b1:00.0"
      mdevs: [{type: nvidia-471, count: 4}]
      exclusive: false
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
type_cache:
  description: The file remembering the vGPU types read per GPU model, and whether it changed.
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
from ansible_collections.gpuvirt.host.plugins.module_utils.nvidia_vgpu import (  # noqa: E402
    Executor,
    VgpuError,
    cache_key,
    cache_path,
    known_types,
    legacy_mdev_parents,
    load_cache,
    observe,
    plan_per_vf,
    predicted_gpu,
    read_gpu,
    select_gpus,
    wait_for_vf_interfaces,
    write_cache,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.pci import name_devices, read_pci_devices  # noqa: E402
from ansible_collections.gpuvirt.host.plugins.module_utils.sriov import (  # noqa: E402
    SriovError,
    enable_vfs_with_sriov_manage,
    state_entry,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import NotALinuxTree, check_root  # noqa: E402


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


class NvidiaVgpuModule:
    def __init__(self, module):
        self.module = module
        self.root = module.params["root"]
        self.force = module.params["force"]
        self.retries = module.params["retries"]
        self.delay = module.params["delay"]
        self.cache = None
        self.state = None

    def fail(self, message, changed=False, **extra):
        raise GpuvirtError(message, changed=changed, **extra)

    def run(self):
        rules.integer(self.retries, "retries", 0, rules.RETRIES_MAX)
        rules.number(self.delay, "delay", minimum_allowed=True, maximum=rules.WAIT_MAX)
        try:
            check_root(self.root)
            self.state = load_state(self.root)
            self.cache = load_cache(self.root)
        except (NotALinuxTree, StateFileError, VgpuError) as error:
            self.fail(str(error))
        works = self._select()
        for work in works:
            self.cache = observe(self.cache, work.gpu)
            self._prepare(work)
        if not self.module.check_mode:
            self._apply(works)
        return self._finish(works)

    # -- selecting and planning -------------------------------------------------------------------

    def _select(self):
        devices = read_pci_devices(self.root)
        pci_ids = name_devices(self.root, devices)
        holders = vfio_holders(self.root)
        mdev_list = mdevs(self.root)
        owner = {}
        works = []
        for declaration in self.module.params["gpus"]:
            try:
                addresses = select_gpus(devices, declaration["selector"])
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
        if gpu.framework is None:
            if gpu.sriov and gpu.sriov["total_vfs"] and not gpu.sriov_mode:
                self._guard_enable(work, where)
                work.enable = True
                if self.module.check_mode:
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
            self.module.warn(
                "%s: its VFs are not enabled and no vGPU types are remembered for this model, so the profiles are "
                "only checked once a real run has enabled the VFs" % where
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

    def _plan(self, work):
        view = work.view
        recorded = {vf.address: self.state["nvidia_vgpu"].get(vf.address) for vf in view.vfs}
        work.known = known_types(view, self.cache["gpus"].get(cache_key(view)), recorded)
        if view.framework == "legacy":
            work.mdev_parents = legacy_mdev_parents(view, work.declaration, work.known)
            return
        work.plan = plan_per_vf(view, work.declaration, work.known, self.force)
        for warning in work.plan.warnings:
            self.module.warn(warning)
        if work.plan.recheck and self.module.check_mode:
            self.module.warn(
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

    def _enable(self, work):
        pf = work.gpu.address
        result = enable_vfs_with_sriov_manage(
            self.module, self.root, pf, self.retries, self.delay, command=self.module.params["sriov_manage"]
        )
        for warning in result["warnings"]:
            self.module.warn(warning)
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
        message = str(error)
        if undone:
            message += " Rolled back the %d vGPU change(s) this run had made." % undone
        if problems:
            message += " Rolling back failed: %s." % "; ".join(problems)
        if enabled:
            message += " The VFs this run enabled stay enabled (%s)." % ", ".join(enabled)
        self.fail(message, changed=bool(problems or enabled))

    # -- results --------------------------------------------------------------------------------

    def _after_types(self, work):
        """``{vf: type id}`` after the run (predicted in check mode)."""
        if work.plan is None:
            return {}
        if not self.module.check_mode:
            gpu = read_gpu(self.root, work.gpu.address)
            self.cache = observe(self.cache, gpu)
            return {vf.address: vf.current or 0 for vf in gpu.vfs}
        after = {vf.address: vf.current or 0 for vf in work.view.vfs}
        for vf, _old in work.plan.delete:
            after[vf] = 0
        for vf, type_id in work.plan.create:
            after[vf] = type_id
        return after

    def _finish(self, works):
        nvidia_section = dict(self.state["nvidia_vgpu"])
        sriov_section = dict(self.state["sriov"])
        results = []
        mdev_parents = []
        changed = False
        lines_before, lines_after = [], []
        for work in works:
            after = self._after_types(work)
            results.append(self._gpu_result(work, after))
            mdev_parents.extend(work.mdev_parents)
            changed = changed or work.enable or bool(work.plan and work.plan.changes)
            if self.module.params["persistent"]:
                self._record(work, after, nvidia_section, sriov_section)
            for vf in work.view.vfs if work.plan is not None else []:
                before = (work.gpu.vf(vf.address).current or 0) if work.gpu.vf(vf.address) else 0
                lines_before.append("%s %s" % (vf.address, self._name(work, before)))
                lines_after.append("%s %s" % (vf.address, self._name(work, after.get(vf.address, 0))))

        state = with_section(with_section(self.state, "nvidia_vgpu", nvidia_section), "sriov", sriov_section)
        try:
            state_changed, state_diff = write_state(self.module, self.root, state)
            cache_changed, cache_diff = write_cache(self.module, self.root, self.cache)
        except (OSError, FileError) as error:
            self.fail("writing the state or type cache file failed: %s" % error, changed=changed)
        result = dict(
            changed=changed or state_changed or cache_changed,
            gpus=results,
            mdev_parents=mdev_parents,
            state_file={"path": state_path(self.root), "changed": state_changed},
            type_cache={"path": cache_path(self.root), "changed": cache_changed},
        )
        if self.module._diff:
            vgpu_diff = {
                "before": "".join(line + "\n" for line in lines_before),
                "after": "".join(line + "\n" for line in lines_after),
                "before_header": "vGPU type per VF",
                "after_header": "vGPU type per VF",
            }
            result["diff"] = [vgpu_diff, state_diff, cache_diff]
        return result

    @staticmethod
    def _name(work, type_id):
        if not type_id:
            return "none"
        return "%s %s" % (type_id, work.known.get(type_id) or "")

    def _record(self, work, after, nvidia_section, sriov_section):
        view = work.view
        if view.sriov is not None and view.sriov.get("num_vfs"):
            recorded = sriov_section.get(view.address)
            autoprobe = recorded.get("drivers_autoprobe") if isinstance(recorded, dict) else None
            sriov_section[view.address] = state_entry(view.sriov["num_vfs"], autoprobe, "sriov_manage")
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


def main():
    module = AnsibleModule(
        argument_spec=dict(
            gpus=dict(
                type="list",
                elements="dict",
                required=True,
                options=dict(
                    selector=dict(type="str", required=True),
                    profiles=dict(
                        type="list",
                        elements="dict",
                        options=dict(
                            profile=dict(type="str", required=True),
                            count=dict(type="int", required=True),
                        ),
                    ),
                    vfs=dict(
                        type="list",
                        elements="dict",
                        options=dict(
                            address=dict(type="str", required=True),
                            profile=dict(type="str"),
                            state=dict(type="str", choices=["present", "absent"], default="present"),
                        ),
                        required_if=[("state", "present", ("profile",))],
                    ),
                    exclusive=dict(type="bool", default=False),
                    enable_sriov=dict(type="bool", default=True),
                ),
                mutually_exclusive=[("profiles", "vfs")],
                required_one_of=[("profiles", "vfs")],
            ),
            force=dict(type="bool", default=False),
            persistent=dict(type="bool", default=True),
            sriov_manage=dict(type="path"),
            retries=dict(type="int", default=5),
            delay=dict(type="float", default=2.0),
            root=dict(type="path", default="/"),
        ),
        supports_check_mode=True,
    )
    run_locked(module, lambda host: NvidiaVgpuModule(module).run())


if __name__ == "__main__":
    main()
