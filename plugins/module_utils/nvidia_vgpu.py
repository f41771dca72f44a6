# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""NVIDIA vGPU on SR-IOV GPUs: detect the framework, resolve profiles, plan and assign vGPU types.

Public API (standard library only, so the boot-time restore can use it without Ansible):

- :func:`read_gpu` ``(root, pf, holders=None, mdev_list=None, pci_ids=None) -> Gpu``: the GPU, its framework
  (``per_vf``, ``legacy`` or None), its VFs with their vGPU state and users.
- :func:`gpu_reason` ``(device) -> str | None``: why a device cannot be selected as an NVIDIA GPU
  (for :func:`selector.select_devices`).
- :func:`profile_key` ``(name) -> str``: ``NVIDIA L40S-1B`` and ``l40s-1b`` -> ``L40S-1B``.
- :func:`known_types` ``(gpu, cache_entry=None, recorded=None) -> dict``: type id -> name from a
  live read, then from the type cache and the state file (live wins).
- :func:`resolve_vgpu_profile` ``(profile, known, where, complete=True) -> type id``: by ID
  (``1030``, ``nvidia-471``), name (``NVIDIA L40S-1B``) or profile (``L40S-1B``, any case);
  raises VgpuError listing the valid profiles.
- :func:`plan_per_vf` ``(gpu, declaration, known, force=False) -> VgpuPlan``: deletions and
  creations for the per-VF interface; :func:`legacy_mdev_parents` ``(gpu, declaration, known)
  -> list``: the ``parents`` entries for ``gpuvirt.host.mdev`` on a legacy (mdev) GPU.
- :func:`assign_vgpu_type` ``(root, vf, type_id, retries=10, delay=0.1) -> bool``: write
  ``nvidia/current_vgpu_type`` (``0`` first when another type is there; ``0`` deletes) and read it
  back. :func:`restore_vf` ``(root, vf, type_id)`` is the same for the boot-time restore, and
  :func:`restore_vgpu` ``(context, vf, entry)`` its step for one ``nvidia_vgpu`` entry of the state file.
- :func:`enable_vfs_with_sriov_manage` ``(runner, root, pf, retries=5, delay=2.0, command=None) -> dict``:
  ``sriov-manage -e <pf>`` (:class:`vendor_nvidia.SriovManage`) until all the VFs read back
  (:func:`sriov.enable_vfs_by_tool`); a GPU with only some of them enabled gets ``sriov-manage -d`` first.
- :func:`lost_by_reenabling` ``(gpu, known) -> list[str]``: what enabling the VFs of a partly enabled GPU
  anew would delete or take from a VM (vGPUs, mdevs, processes holding a VF or the GPU).
- :class:`Executor` ``(root, retries, delay)``: runs a plan with a creatable-list check before each
  creation and ``rollback()``. :func:`offered_now` ``(root, vf) -> {id: name} | None``.
- :func:`predicted_gpu` ``(root, gpu, cache_entry) -> Gpu``: the GPU once ``sriov-manage`` has
  enabled its VFs, from the remembered types (check mode).
- :func:`wait_for_vf_interfaces` ``(root, pf, retries=10, delay=1.0) -> Gpu``: after enabling VFs, until
  every VF shows ``nvidia/creatable_vgpu_types`` or mdev types.
- Type cache (``/var/lib/gpuvirt/nvidia-vgpu-types.json``): :func:`load_cache` ``(root)``,
  :func:`observe` ``(cache, gpu) -> cache``, :func:`plan_cache` ``(root, cache) ->
  files.FileChange``, :func:`cache_key` ``(gpu)``.

Why a cache: ``creatable_vgpu_types`` lists only what fits now and shrinks to its header when the
GPU is full, so a profile name can only be resolved from a read taken while the GPU had room. Every
line ever read is kept per GPU model (``vendor:device``), so a later run, or check mode before the
VFs exist, still resolves names.

Framework per GPU: ``per_vf`` when its VFs have ``nvidia/creatable_vgpu_types`` (kernel 6.8+ with
vGPU 17+: the VF itself becomes the vGPU by writing a type ID to ``nvidia/current_vgpu_type``);
``legacy`` when its VFs (A100 with vGPU 13-16) or the GPU itself (pre-Ampere, no SR-IOV) offer
``nvidia-NNN`` mdev types: those vGPUs are mediated devices, created by ``gpuvirt.host.mdev``, to
which :func:`legacy_mdev_parents` hands the resolved request, so that one module owns every mdev,
its UUID and its persistence.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import re
import time
from dataclasses import dataclass, field

from ansible_collections.gpuvirt.host.plugins.module_utils import rules, sysfs
from ansible_collections.gpuvirt.host.plugins.module_utils.device_users import (
    unknown_users_text,
    users_of,
    vfio_holders,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError
from ansible_collections.gpuvirt.host.plugins.module_utils.files import plan_change
from ansible_collections.gpuvirt.host.plugins.module_utils.host import inside
from ansible_collections.gpuvirt.host.plugins.module_utils.mdev_info import list_mdev_parents, read_mdev_types
from ansible_collections.gpuvirt.host.plugins.module_utils.mdev_info import mdevs as list_mdevs
from ansible_collections.gpuvirt.host.plugins.module_utils.pci import PciIds, is_gpu_class, read_pci_device
from ansible_collections.gpuvirt.host.plugins.module_utils.sriov import (
    enable_vfs_by_tool,
    poll,
    read_sriov,
    vf_addresses,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import PCI_DEVICES, host_path, normalize_address
from ansible_collections.gpuvirt.host.plugins.module_utils.vendor_nvidia import (
    SriovManage,
    is_mig_backed,
    parse_creatable_vgpu_types,
    time_sliced_size,
    vgpu_state,
)

NVIDIA = "10de"
CACHE_PATH = "var/lib/gpuvirt/nvidia-vgpu-types.json"
CACHE_VERSION = 1
FRAMEWORKS = ("per_vf", "legacy")

_LEGACY_TYPE = re.compile(r"nvidia-[0-9]+\Z")
_VENDOR_PREFIX = re.compile(r"^(?:NVIDIA|GRID)\s+", re.IGNORECASE)

_WRITE_ADVICE = {
    errno.EBUSY: "the VF is in use by a VM, or already holds a vGPU; stop the VM (or write 0 first) and retry",
    errno.EINVAL: "the VF does not offer this type now: the GPU's capacity for the profile is used up, or it "
    "hosts vGPUs of another size (a GPU hosts one time-sliced vGPU size at a time)",
    errno.ENODEV: "the VF has no vGPU interface; is the NVIDIA vGPU host driver loaded?",
}


class VgpuError(GpuvirtError):
    """Bad input, a refused change or a failed read-back; ``str()`` says where, why and what to do."""


@dataclass
class Vf:
    address: str
    index: int
    current: int | None = None  # per-VF interface: the assigned type ID (0: none)
    creatable: list | None = None  # per-VF interface: [{"id", "name"}] offered now
    users: list = field(default_factory=list)  # processes holding its VFIO group or device
    mdev_types: dict = field(default_factory=dict)  # legacy: type id -> name
    mdevs: list = field(default_factory=list)  # legacy: [{"uuid", "type"}]

    @property
    def per_vf(self):
        return self.current is not None or self.creatable is not None

    def to_dict(self, known=None):
        entry = {"address": self.address, "in_use": list(self.users)}
        if self.per_vf:
            type_id = self.current or 0
            entry["type_id"] = type_id
            entry["type_name"] = (known or {}).get(type_id) if type_id else None
        if self.mdevs:
            entry["mdevs"] = list(self.mdevs)
        return entry


@dataclass
class Gpu:
    address: str
    name: str
    vendor_id: str | None
    device_id: str | None
    driver: str | None
    sriov: dict | None
    vfs: list
    framework: str | None = None
    pf_mdev_types: dict = field(default_factory=dict)
    pf_mdevs: list = field(default_factory=list)
    pf_users: list = field(default_factory=list)
    users_unknown: str | None = None  # why some process's holdings are unknown (unknown_users_text), or None

    @property
    def sriov_mode(self):
        """Whether the GPU is in SR-IOV mode: all the VFs it offers are enabled, as ``sriov-manage -e`` leaves
        it (it writes ``sriov_totalvfs``), which is the state NVIDIA vGPU supports."""
        if not self.sriov or not self.sriov["num_vfs"]:
            return False
        return self.sriov["num_vfs"] >= (self.sriov["total_vfs"] or 0)

    @property
    def partly_enabled(self):
        """Whether only some of its VFs are enabled (0 < ``sriov_numvfs`` < ``sriov_totalvfs``): sriov-manage
        stopped part way, a smaller count was written by hand, or a restore was cut short."""
        return bool(self.sriov and self.sriov["num_vfs"]) and not self.sriov_mode

    def vf(self, address):
        return next((vf for vf in self.vfs if vf.address == address), None)

    @property
    def complete(self):
        """Whether the creatable lists read now are complete: no VF holds a vGPU."""
        return self.framework == "per_vf" and all(vf.creatable is not None and not vf.current for vf in self.vfs)


# ---------------------------------------------------------------------------------------------
# Reading


def _people(held):
    return ["process %d (%s)" % (user["pid"], user.get("comm") or "?") for user in held]


def _users(device, holders):
    return _people(users_of(holders, device.iommu_group, device.address))


def _mdevs_of(parent, mdev_list, holders):
    found = []
    for entry in mdev_list:
        if entry["parent"] == parent:
            held = users_of(holders, entry["iommu_group"], entry["uuid"])
            found.append({"uuid": entry["uuid"], "type": entry["type"], "in_use": _people(held)})
    return found


def _nvidia_types(root, parent):
    return {t.id: t.name for t in read_mdev_types(root, parent) if _LEGACY_TYPE.match(t.id)}


def read_gpu(root, pf, holders=None, mdev_list=None, pci_ids=None):
    """Read one NVIDIA GPU (a physical function) and its VFs; raises VgpuError when it is not one.

    ``pci_ids``: a loaded :class:`pci.PciIds` for the name (loaded from the host when None).
    """
    device = read_pci_device(root, pf)
    if device is None:
        raise VgpuError("no PCI device %s on this host" % pf)
    pci_ids = PciIds.load(root) if pci_ids is None else pci_ids
    if pci_ids:
        device.vendor_name = pci_ids.vendor_name(device.vendor_id)
        device.device_name = pci_ids.device_name(device.vendor_id, device.device_id)
    holders = vfio_holders(root) if holders is None else holders
    mdev_list = list_mdevs(root) if mdev_list is None else mdev_list
    parents = set(list_mdev_parents(root))
    info = read_sriov(root, device.address)
    gpu = Gpu(
        address=device.address,
        name=device.name,
        vendor_id=device.vendor_id,
        device_id=device.device_id,
        driver=device.driver,
        sriov=info,
        vfs=[],
        pf_users=_users(device, holders),
        pf_mdevs=_mdevs_of(device.address, mdev_list, holders),
        users_unknown=None if getattr(holders, "complete", True) else unknown_users_text(holders),
    )
    if device.address in parents:
        gpu.pf_mdev_types = _nvidia_types(root, device.address)
    for index, address in enumerate((info or {}).get("vfs") or []):
        vf_device = read_pci_device(root, address)
        if vf_device is None:
            continue
        vf = Vf(address=address, index=index, users=_users(vf_device, holders))
        state = vgpu_state(vf_device)
        if state is not None:
            vf.current = state.get("current")
            vf.creatable = state.get("creatable")
        if address in parents:
            vf.mdev_types = _nvidia_types(root, address)
            vf.mdevs = _mdevs_of(address, mdev_list, holders)
        gpu.vfs.append(vf)
    if any(vf.per_vf for vf in gpu.vfs):
        gpu.framework = "per_vf"
    elif gpu.pf_mdev_types or any(vf.mdev_types for vf in gpu.vfs):
        gpu.framework = "legacy"
    return gpu


def lost_by_reenabling(gpu, known):
    """What enabling the VFs of ``gpu`` anew (``sriov-manage -d``, then ``-e``: every VF device goes) would delete
    or take from a VM: each VF's vGPU or mdevs and the processes holding a VF, and the mdevs and holders of
    the GPU itself (sriov-manage unbinds its driver). ``known``: type id -> name, for the labels."""

    def mdev(entry):
        used = " in use by %s" % ", ".join(entry["in_use"]) if entry.get("in_use") else ""
        return "mdev %s of type %s%s" % (entry["uuid"], _label(entry["type"], known.get(entry["type"])), used)

    lost = []
    for vf in gpu.vfs:
        held = []
        if vf.current:
            held.append("vGPU %s" % _label(vf.current, known.get(vf.current)))
        held += [mdev(entry) for entry in vf.mdevs]
        if vf.users:
            held.append("in use by %s" % ", ".join(vf.users))
        if held:
            lost.append("VF %s (%s)" % (vf.address, ", ".join(held)))
    lost += ["%s on the GPU itself" % mdev(entry) for entry in gpu.pf_mdevs]
    lost += ["%s holding the GPU itself" % user for user in gpu.pf_users]
    return lost


def gpu_reason(device):
    """Why ``device`` cannot be selected as an NVIDIA GPU; None when it can."""
    if device.is_vf:
        return "is a virtual function of %s; select the GPU (its physical function), and the VF in vfs[]" % (
            device.physfn
        )
    if device.vendor_id != NVIDIA or not is_gpu_class(device.class_code):
        return "is not an NVIDIA GPU"
    return None


def wait_for_vf_interfaces(root, pf, retries=10, delay=1.0, sleep=time.sleep):
    """Re-read ``pf`` until every VF shows its vGPU interface (the driver probes VFs after enabling)."""

    def ready(gpu):
        return bool(gpu.vfs) and all(vf.per_vf or vf.mdev_types for vf in gpu.vfs)

    gpu, ok = poll(lambda: read_gpu(root, pf), ready, retries, delay, sleep)
    if not ok:
        missing = [vf.address for vf in gpu.vfs if not (vf.per_vf or vf.mdev_types)]
        raise VgpuError(
            "%s: %d VF(s) show neither nvidia/creatable_vgpu_types nor nvidia mdev types after %d reads (%s); "
            "is the NVIDIA vGPU host driver (not the datacenter driver) loaded and bound to them?"
            % (pf, len(missing) or len(gpu.vfs), retries + 1, ", ".join(missing[:4]) or "no VFs")
        )
    return gpu


# ---------------------------------------------------------------------------------------------
# Names


def profile_key(name):
    """The comparable form of a profile or type name: ``NVIDIA L40S-1B`` -> ``L40S-1B``."""
    return _VENDOR_PREFIX.sub("", (name or "").strip()).upper()


def known_types(gpu, cache_entry=None, recorded=None):
    """Type id -> name for ``gpu``: what it shows now, then the cache, then the state file.

    Per-VF IDs are ints, legacy ids strings (``nvidia-471``). A name seen live with one ID hides the
    same name remembered with another (a driver update may renumber).
    """
    live = {}
    if gpu.framework == "legacy" or (gpu.framework is None and gpu.pf_mdev_types):
        for types in [gpu.pf_mdev_types] + [vf.mdev_types for vf in gpu.vfs]:
            live.update({k: v for k, v in types.items() if v})
    else:
        for vf in gpu.vfs:
            for entry in vf.creatable or []:
                live[entry["id"]] = entry["name"]
    known = dict(live)
    names = {profile_key(name) for name in live.values()}
    remembered = dict((cache_entry or {}).get("types") or {})
    for entry in (recorded or {}).values():
        if isinstance(entry, dict) and entry.get("type_id") and entry.get("type_name"):
            remembered.setdefault(str(entry["type_id"]), entry["type_name"])
    for key, name in remembered.items():
        type_id = int(key) if str(key).isdigit() else key
        if type_id not in known and profile_key(name) not in names:
            known[type_id] = name
    return known


def _label(type_id, name):
    profile = profile_key(name) if name else None
    return "%s (%s)" % (profile, type_id) if profile else str(type_id)


def describe_types(known):
    """``L40S-1B (1030), L40S-2B (1031)`` in ID order."""
    return ", ".join(_label(k, v) for k, v in sorted(known.items(), key=lambda item: str(item[0]).zfill(12)))


def resolve_vgpu_profile(profile, known, where, complete=True):
    """The type id ``profile`` names among ``known`` (id -> name); raises VgpuError listing them."""
    text = str(profile).strip()
    if text.isdigit() and int(text) in known:
        return int(text)
    if text in known:
        return text
    lowered = text.lower()
    if lowered in known:
        return lowered
    key = profile_key(text)
    hits = sorted({k for k, name in known.items() if name and profile_key(name) == key}, key=str)
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise VgpuError(
            "%s: profile %r is ambiguous: it names types %s; give the type ID"
            % (where, profile, ", ".join(str(h) for h in hits))
        )
    note = ""
    if not complete:
        note = (
            " (the GPU hosts vGPUs, so it only lists what still fits; types read earlier are remembered in "
            "/%s)" % CACHE_PATH
        )
    raise VgpuError(
        "%s: %r is not a vGPU profile of this GPU; valid profiles: %s%s"
        % (where, profile, describe_types(known) or "none known", note)
    )


# ---------------------------------------------------------------------------------------------
# Planning


@dataclass
class VgpuPlan:
    gpu: str
    selector: str
    delete: list = field(default_factory=list)  # [(vf, old type id)]
    create: list = field(default_factory=list)  # [(vf, type id)]
    declared: dict = field(default_factory=dict)  # vf -> type id it holds after the run
    kept_in_use: list = field(default_factory=list)  # vfs whose undeclared vGPU stays: in use
    undeclared: list = field(default_factory=list)  # vfs whose undeclared vGPU stays: not exclusive
    warnings: list = field(default_factory=list)
    recheck: bool = False  # capacity only known after the deletions

    @property
    def changes(self):
        return bool(self.delete or self.create)


# A bound on the vGPUs one GPU hosts: one per VF (32 on an L40S), and boards without VFs top out
# at 32 (a V100's 32 GB in 1 GB profiles). A count above it is refused before anything is planned;
# a count above what is free now fails later with the details.
VGPUS_MAX = 64


def _capacity(gpu):
    """A bound on how many vGPUs ``gpu`` could ever hold."""
    return max(len(gpu.vfs), (gpu.sriov or {}).get("total_vfs") or 0, VGPUS_MAX)


def _counts(declaration, known, where, complete, capacity):
    counts = {}
    for entry in declaration.get("profiles") or []:
        count = entry.get("count")
        if count is None:
            raise VgpuError("%s: profile %s needs a count of 0 or more" % (where, entry["profile"]))
        rules.count(count, capacity, "%s: profile %s: count" % (where, entry["profile"]), "the GPU", error=VgpuError)
        type_id = resolve_vgpu_profile(entry["profile"], known, where, complete)
        if type_id in counts:
            raise VgpuError(
                "%s: profile %s is declared twice; merge the entries" % (where, _label(type_id, known[type_id]))
            )
        counts[type_id] = count
    return counts


def _explicit(gpu, declaration, known, where, complete):
    wanted = {}
    for entry in declaration.get("vfs") or []:
        address = normalize_address(entry["address"])
        vf = gpu.vf(address) if address else None
        if vf is None:
            raise VgpuError(
                "%s: %s is not a VF of this GPU; its VFs are %s"
                % (where, address or entry["address"], ", ".join(v.address for v in gpu.vfs) or "none (SR-IOV is off)")
            )
        if vf.address in wanted:
            raise VgpuError("%s: VF %s is declared twice" % (where, vf.address))
        if entry.get("state", "present") == "absent":
            wanted[vf.address] = 0
        else:
            if not entry.get("profile"):
                raise VgpuError("%s: VF %s needs a profile (or state: absent)" % (where, vf.address))
            wanted[vf.address] = resolve_vgpu_profile(entry["profile"], known, where, complete)
    return wanted


def plan_per_vf(gpu, declaration, known, force=False, framebuffer=None):
    """What to delete and create so that ``gpu`` (per-VF interface) holds what is declared.

    ``declaration``: ``{"selector", "profiles": [{"profile", "count"}] | None, "vfs": [{"address",
    "profile", "state"}] | None, "exclusive": bool}``. Existing vGPUs of a declared profile count,
    in-use ones first; new ones go to the free VFs in VF order. A vGPU in use (a process holds its
    VF) is never deleted unless ``force``: an explicit change to it fails, an undeclared or surplus
    one is kept with a warning. Any deletion while some process's open files could not be read
    or ``/proc`` hides some (``gpu.users_unknown``: it may hold any VF) fails unless ``force``; creations
    alone go ahead. ``framebuffer`` (GB, see :func:`framebuffer_of`): the time-sliced vGPUs the GPU would
    hold must fit in it, else the plan fails before anything changes (the driver would stop offering the
    type part way, and the run roll back).
    """
    where = "%s (%s)" % (gpu.address, gpu.name)
    complete = gpu.complete
    result = VgpuPlan(gpu=gpu.address, selector=declaration.get("selector") or gpu.address)
    current = {vf.address: vf.current or 0 for vf in gpu.vfs}
    order = {vf.address: vf.index for vf in gpu.vfs}
    busy = {vf.address: vf.users for vf in gpu.vfs if vf.users}

    def drop(address, why):
        if address in busy and not force:
            result.kept_in_use.append(address)
            result.warnings.append(
                "%s: VF %s keeps its %s vGPU (%s) although it is %s: it is in use by %s (force: true deletes it)"
                % (
                    where,
                    address,
                    _label(current[address], known.get(current[address])),
                    current[address],
                    why,
                    ", ".join(busy[address]),
                )
            )
        else:
            result.delete.append((address, current[address]))

    if declaration.get("vfs"):
        wanted = _explicit(gpu, declaration, known, where, complete)
        for address in sorted(wanted, key=order.get):
            type_id = wanted[address]
            if current[address] == type_id:
                if type_id:
                    result.declared[address] = type_id
                continue
            if address in busy and not force:
                raise VgpuError(
                    "%s: VF %s is in use by %s; changing its vGPU from %s to %s would take it from the VM. Stop the "
                    "VM first or set force: true. Nothing was changed."
                    % (where, address, ", ".join(busy[address]), current[address] or "none", type_id or "none")
                )
            if current[address]:
                result.delete.append((address, current[address]))
            if type_id:
                result.create.append((address, type_id))
                result.declared[address] = type_id
        others = [a for a in current if a not in wanted and current[a]]
    else:
        counts = _counts(declaration, known, where, complete, _capacity(gpu))
        for type_id, count in counts.items():
            holding = sorted((a for a in current if current[a] == type_id), key=lambda a: (a not in busy, order[a]))
            for address in holding[:count]:
                result.declared[address] = type_id
            for address in holding[count:]:
                drop(address, "beyond the declared count of %d" % count)
        others = [a for a in current if current[a] and current[a] not in counts]
        _undeclared(others, declaration, drop, result, order)
        others = []
        free = [a for a in sorted(current, key=order.get) if not current[a] and a not in busy]
        free += [a for a, _old in result.delete]
        shortage = []
        for type_id, count in counts.items():
            need = count - sum(1 for t in result.declared.values() if t == type_id)
            for _index in range(max(0, need)):
                if not free:
                    shortage.append(type_id)
                    continue
                address = free.pop(0)
                result.create.append((address, type_id))
                result.declared[address] = type_id
        if shortage:
            raise VgpuError(
                "%s: the profiles need %d more VF(s) than are free: %d VFs, %d with a vGPU, %d in use by a process. "
                "Lower the counts, or free VFs (exclusive: true deletes undeclared vGPUs). Nothing was changed."
                % (where, len(shortage), len(gpu.vfs), sum(1 for t in current.values() if t), len(busy))
            )
    _undeclared(others, declaration, drop, result, order)
    result.delete.sort(key=lambda item: order[item[0]])
    if result.delete and gpu.users_unknown:
        message = "%s: deleting the vGPUs of VF %s (or changing their type) would take them from any VM using them, " \
            "and whether one does cannot be told: %s" % (
                where, ", ".join(address for address, _old in result.delete), gpu.users_unknown)
        if not force:
            raise VgpuError(message + ". Run the module where every process can be inspected, or set force: true. "
                            "Nothing was changed.")
        result.warnings.append("force: true: " + message)
    result.recheck = bool(result.delete) and bool(result.create)
    if result.create and not result.delete:
        _check_offered(gpu, result, known, where)
    if result.create and framebuffer:
        _check_framebuffer(result, current, known, where, framebuffer)
    _warn_mixed_sizes(result, current, known, where)
    return result


def framebuffer_of(known):
    """The GPU's framebuffer (GB) as a complete list of its vGPU types ``known`` (id -> name) tells: the
    size of its largest time-sliced profile, which takes the whole GPU (L40S-48Q on a 48 GB L40S); None
    when the list has no time-sliced type."""
    sizes = [time_sliced_size(name) for name in known.values()]
    sizes = [size for size in sizes if size]
    return max(sizes) if sizes else None


def _check_framebuffer(result, current, known, where, framebuffer):
    """Refuse a plan whose time-sliced vGPUs take more framebuffer than the GPU has."""
    gone = {address for address, _old in result.delete}
    held = {address: type_id for address, type_id in current.items() if type_id and address not in gone}
    held.update(result.declared)
    taken = {}
    for type_id in held.values():
        size = time_sliced_size(known.get(type_id))
        if size:
            taken[type_id] = taken.get(type_id, 0) + 1
    used = sum(time_sliced_size(known[type_id]) * count for type_id, count in taken.items())
    if used > framebuffer:
        raise VgpuError(
            "%s: the vGPUs would take %d GB of the GPU's %d GB of framebuffer (%s); lower the counts. Nothing was "
            "changed." % (where, used, framebuffer, ", ".join(
                "%d x %s" % (count, _label(type_id, known[type_id])) for type_id, count in sorted(taken.items())))
        )


def _warn_mixed_sizes(result, current, known, where):
    """Warn when the GPU would host time-sliced vGPUs of more than one framebuffer size: in NVIDIA's
    default equal-size mode a GPU offers only the size of the vGPUs it hosts, so the creations of the
    other sizes fail (and the run is rolled back); mixed-size mode (NVML's vGPU heterogeneous mode), which
    sysfs does not show, allows it."""
    gone = {address for address, _old in result.delete}
    held = {address: type_id for address, type_id in current.items() if type_id and address not in gone}
    held.update(result.declared)
    sizes = {time_sliced_size(known.get(type_id)) for type_id in held.values()} - {None}
    if result.create and len(sizes) > 1:
        result.warnings.append(
            "%s: the GPU would host time-sliced vGPUs of %s GB: in equal-size mode (the default) a GPU hosts one "
            "size at a time, so the vGPUs of the other sizes cannot be created and the run is rolled back, unless "
            "the GPU is in mixed-size mode (NVIDIA's vGPU heterogeneous mode, set through NVML)"
            % (where, " and ".join(str(size) for size in sorted(sizes)))
        )


def _undeclared(addresses, declaration, drop, result, order):
    for address in sorted(addresses, key=order.get):
        if declaration.get("exclusive"):
            drop(address, "not declared")
        else:
            result.undeclared.append(address)


def _check_offered(gpu, plan, known, where):
    """With nothing deleted first, each type to create must be offered by its VF now."""
    for address, type_id in plan.create:
        vf = gpu.vf(address)
        if vf is None or vf.creatable is None:  # predicted VFs of a GPU not yet in SR-IOV mode
            continue
        offered = {entry["id"] for entry in vf.creatable}
        if type_id not in offered:
            hosted = {}
            for other in gpu.vfs:
                if other.current:
                    label = _label(other.current, known.get(other.current))
                    hosted[label] = hosted.get(label, 0) + 1
            mig = (
                " %s is MIG-backed: it is offered only once MIG mode is on and its GPU instances exist (created "
                "by nvidia-mig-manager or nvidia-smi mig), after the VFs." % _label(type_id, known.get(type_id))
                if is_mig_backed(known.get(type_id)) else ""
            )
            raise VgpuError(
                "%s: %s cannot be created: the free VFs offer %s, and the GPU hosts %s (a GPU hosts vGPUs of one "
                "size at a time, up to its framebuffer).%s Declare fewer or another profile, or free the GPU "
                "(exclusive: true deletes undeclared vGPUs). Nothing was changed."
                % (
                    where,
                    _label(type_id, known.get(type_id)),
                    describe_types({e["id"]: e["name"] for e in vf.creatable}) or "nothing",
                    ", ".join("%d x %s" % (n, label) for label, n in sorted(hosted.items())) or "no vGPU",
                    mig,
                )
            )


def legacy_mdev_parents(gpu, declaration, known):
    """``parents`` entries for ``gpuvirt.host.mdev`` that make a legacy GPU hold the declaration."""
    where = "%s (%s)" % (gpu.address, gpu.name)
    if declaration.get("vfs"):
        wanted = _explicit(gpu, declaration, known, where, True)
        parents = []
        for vf in gpu.vfs:
            if vf.address in wanted:
                type_id = wanted[vf.address]
                mdevs = [{"type": type_id, "count": 1}] if type_id else []
                parents.append({"selector": vf.address, "mdevs": mdevs, "exclusive": True})
            elif declaration.get("exclusive") and vf.mdevs:
                parents.append({"selector": vf.address, "mdevs": [], "exclusive": True})
        return parents
    counts = _counts(declaration, known, where, True, _capacity(gpu))
    mdevs = [{"type": type_id, "count": count} for type_id, count in counts.items()]
    return [{"selector": gpu.address, "mdevs": mdevs, "exclusive": bool(declaration.get("exclusive"))}]


# ---------------------------------------------------------------------------------------------
# Applying


def _type_path(root, vf):
    return host_path(root, PCI_DEVICES, vf, "nvidia", "current_vgpu_type")


def _write_type(root, vf, value):
    path = _type_path(root, vf)
    try:
        sysfs.write_text(path, str(value))
    except sysfs.SysfsWriteError as error:
        advice = _WRITE_ADVICE.get(error.errno)
        raise VgpuError("%s%s" % (error, "" if not advice or advice in str(error) else " (%s)" % advice)) from error


def assign_vgpu_type(root, vf, type_id, retries=10, delay=0.1):
    """Make ``vf`` hold vGPU type ``type_id`` (``0``: none) and read it back; returns whether written."""
    path = _type_path(root, vf)
    current = sysfs.read_int(path)
    if current is None:
        raise VgpuError("%s has no readable nvidia/current_vgpu_type; is the NVIDIA vGPU host driver bound?" % vf)
    if current == type_id:
        return False
    steps = [0, type_id] if current and type_id else [type_id]
    for value in steps:
        _write_type(root, vf, value)
        read, ok = poll(lambda: sysfs.read_int(path), lambda v, value=value: v == value, retries, delay)
        if not ok:
            raise VgpuError(
                "%s: nvidia/current_vgpu_type reads %s after writing %d; check dmesg for the nvidia driver's message"
                % (vf, read, value)
            )
    return True


def restore_vf(root, vf, type_id, retries=10, delay=0.1):
    """What the boot-time restore calls for one ``nvidia_vgpu`` entry of the state file."""
    return assign_vgpu_type(root, vf, int(type_id), retries, delay)


def restore_vgpu(context, vf, entry, offered_first=False):
    """The boot-time restore of one ``nvidia_vgpu`` entry of the state file (the NVIDIA backend's
    restore step): wait for the VF's vGPU interface, write the recorded type, read it back.
    ``context``: the running :class:`restore.Restore`. ``offered_first``: wait until the VF offers the
    type (a MIG-backed type, offered once its GPU instance exists), saying what is missing if it never does."""
    wanted = int(entry.get("type_id", 0))
    path = _type_path(context.root, vf)
    context.wait_for(lambda: os.path.exists(path), "%s appearing" % path)
    if sysfs.read_int(path) == wanted:
        return "type %d already" % wanted
    if offered_first:
        try:
            context.wait_for(lambda: wanted in (offered_now(context.root, vf) or {}), "type %d offered" % wanted)
        except GpuvirtError as error:
            raise VgpuError(
                "%s does not offer type %d (%s): %s. It is MIG-backed: MIG mode must be on and a GPU instance of its "
                "size must exist (nvidia-mig-manager creates them at boot from its configuration; or nvidia-smi mig "
                "-cgi)" % (vf, wanted, entry.get("type_name") or "?", error)
            ) from None

    def attempt():
        restore_vf(context.root, vf, wanted)
        current = sysfs.read_int(path)
        if current != wanted:
            raise VgpuError("current_vgpu_type of %s reads %s after writing %d" % (vf, current, wanted))

    context.retry(attempt)
    return "type %d (%s), read back" % (wanted, entry.get("type_name") or "?")


def enable_vfs_with_sriov_manage(runner, root, pf, retries=5, delay=2.0, command=None, sleep=time.sleep):
    """Put an NVIDIA GPU in SR-IOV mode with ``sriov-manage -e <pf>`` and read the VFs back; see
    :func:`sriov.enable_vfs_by_tool` for the result and the retries."""
    return enable_vfs_by_tool(runner, root, pf, SriovManage(command), retries, delay, sleep)


def offered_now(root, vf):
    """The type IDs ``vf`` lists in ``creatable_vgpu_types`` now, or None when unreadable."""
    text = sysfs.read_text(host_path(root, PCI_DEVICES, vf, "nvidia", "creatable_vgpu_types"))
    if text is None:
        return None
    entries, _bad = parse_creatable_vgpu_types(text)
    return {entry["id"]: entry["name"] for entry in entries}


class Executor:
    """Runs the deletions, then the creations of a plan, remembering them for :meth:`rollback`."""

    def __init__(self, root, retries=10, delay=0.1):
        self.root = root
        self.retries = retries
        self.delay = delay
        self.deleted = []  # (vf, old type id)
        self.created = []  # (vf, type id)

    def run(self, plan, known):
        for vf, old in plan.delete:
            assign_vgpu_type(self.root, vf, 0, self.retries, self.delay)
            self.deleted.append((vf, old))
        planned = {}
        for _vf, type_id in plan.create:
            planned[type_id] = planned.get(type_id, 0) + 1
        for vf, type_id in plan.create:
            offered = offered_now(self.root, vf)
            if offered is not None and type_id not in offered:
                done = sum(1 for _v, t in self.created if t == type_id)
                raise VgpuError(
                    "%s: %s: the GPU has no room for more: %d of the %d planned were created before %s stopped "
                    "offering it (it now offers %s)"
                    % (
                        plan.gpu,
                        _label(type_id, known.get(type_id)),
                        done,
                        planned[type_id],
                        vf,
                        describe_types(offered) or "nothing",
                    )
                )
            assign_vgpu_type(self.root, vf, type_id, self.retries, self.delay)
            self.created.append((vf, type_id))

    def rollback(self):
        """Undo this run's changes, newest first; returns the problems met while undoing."""
        problems = []
        for vf, _type_id in reversed(self.created):
            try:
                assign_vgpu_type(self.root, vf, 0, self.retries, self.delay)
            except VgpuError as error:
                problems.append("could not delete the new vGPU on %s: %s" % (vf, error))
        for vf, old in reversed(self.deleted):
            try:
                assign_vgpu_type(self.root, vf, old, self.retries, self.delay)
            except VgpuError as error:
                problems.append("could not give %s its type %s back: %s" % (vf, old, error))
        return problems


def predicted_gpu(root, gpu, cache_entry):
    """``gpu`` as it will be once ``sriov-manage -e`` enabled all its VFs, from the cache (check mode)."""
    total = (gpu.sriov or {}).get("total_vfs") or 0
    predicted = copy.deepcopy(gpu)
    framework = (cache_entry or {}).get("framework")
    predicted.framework = framework
    types = (cache_entry or {}).get("types") or {}
    predicted.vfs = []
    for index, address in enumerate(vf_addresses(root, gpu.address, total)):
        vf = Vf(address=address, index=index)
        if framework == "per_vf":
            vf.current = 0
            vf.creatable = [{"id": int(k), "name": v} for k, v in sorted(types.items(), key=lambda i: int(i[0]))]
        elif framework == "legacy":
            vf.mdev_types = dict(types)
        predicted.vfs.append(vf)
    if predicted.sriov is not None:
        predicted.sriov = dict(predicted.sriov, num_vfs=total, vfs=[vf.address for vf in predicted.vfs])
    return predicted


# ---------------------------------------------------------------------------------------------
# The type cache


def cache_path(root):
    return inside(root, CACHE_PATH)


def cache_key(gpu):
    return "%s:%s" % (gpu.vendor_id or "????", gpu.device_id or "????")


def load_cache(root):
    """The remembered types, ``{"version", "gpus": {"10de:26b9": {"framework", "types", "complete"}}}``.

    A missing cache is an empty one. A corrupt one, one of a newer version or one that leads out of
    ``root`` raises :class:`VgpuError`: the names it remembers are not thrown away silently.
    """
    path = cache_path(root)
    rules.inside_root(root, path, "the vGPU type cache", error=VgpuError)
    fix = (
        "move it aside (mv %s %s.bad) and run again while the GPUs offer their vGPU types (before creating "
        "vGPUs) so that they are learnt anew" % (path, path)
    )
    data = rules.load_versioned_json(path, CACHE_VERSION, "the vGPU type cache", fix, error=VgpuError)
    if data is None:
        return {"version": CACHE_VERSION, "gpus": {}}
    if not isinstance(data.get("gpus"), dict) or not all(isinstance(e, dict) for e in data["gpus"].values()):
        raise VgpuError("the vGPU type cache %s is corrupt (\"gpus\" is not a mapping of mappings); %s" % (path, fix))
    return data


def observe(cache, gpu):
    """``cache`` with what ``gpu`` shows now merged in (a new dict)."""
    if gpu.framework not in FRAMEWORKS:
        return cache
    updated = copy.deepcopy(cache)
    entry = updated["gpus"].setdefault(cache_key(gpu), {"framework": gpu.framework, "types": {}, "complete": False})
    entry["framework"] = gpu.framework
    live = known_types(gpu)
    live_keys = {profile_key(name): str(k) for k, name in live.items()}
    for key, name in list(entry["types"].items()):
        if live_keys.get(profile_key(name), key) != key:  # renumbered by a driver update
            del entry["types"][key]
    entry["types"].update({str(k): v for k, v in live.items()})
    entry["complete"] = bool(entry.get("complete")) or gpu.complete or gpu.framework == "legacy"
    return updated


def render_cache(cache):
    return json.dumps(cache, indent=2, sort_keys=True) + "\n"


def plan_cache(root, cache):
    """The :class:`files.FileChange` that records ``cache`` (unchanged when the file already holds it)."""
    return plan_change(root, CACHE_PATH, render_cache(cache))
