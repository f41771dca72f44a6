# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The registry of GPU vendor backends: what a vendor adds to the generic code.

One module per vendor (``vendor_nvidia``, ``vendor_intel``, ``vendor_amd``; flat modules, so the
boot-time restore can ship them as it ships every module_utils file) defines a ``BACKEND``, a
:class:`vendor_plan.VendorBackend` that overrides the hooks its vendor needs:

- reading: ``vendor_id`` (4 lowercase hex digits), ``host_drivers`` (its kernel drivers that drive a GPU
  for the host; ``softdep_drivers``: those that would claim a GPU before vfio-pci), ``device_defaults`` /
  ``gpu_defaults`` (the keys it adds to every device / GPU entry, with their values for other vendors'
  devices), ``read_device(path, address, findings, directory)`` (its extra sysfs state of one of its devices, kept
  in ``PciDevice.vendor_state``; run only for its vendor's devices and for devices whose vendor could not
  be read; a vGPU type interface of the vendor's own goes under the generic ``vgpu`` key,
  :data:`vendor_plan.VGPU_KEY`, with ``legacy_vgpu`` for topologies written before it,
  ``proxmox_sets_vgpu_types`` and ``vgpu_removal_advice``), ``host_slot_vendors`` (vendor IDs of the
  processor's functions beside an APU's GPU, never its companions), ``gpu_keys(device)``,
  ``modes(device, host)`` (the virtualization modes the GPU can offer, each ``{"mode", "ready",
  "missing": [what is needed, as advice]}``, and ``unsupported``: why not at all);
- enabling: ``enable_modes``, ``enable_options`` (``{mode: {option: type}}``) and ``enable_plan(device,
  host, mode, options)``, whose plan may record state file entries for its restore steps (``records``);
- carving: ``vf_tools`` (the vendor tools that enable VFs, by the ``method`` recorded in the state
  file), ``vf_count_set_by(device)``, ``vf_count_advice(device)``, ``in_use_reasons(device)``,
  ``no_mdev_types_hint(device, vfs)``;
- persisting: ``state_sections`` (its sections of ``/etc/gpuvirt/host-state.json``) and
  ``restore_steps`` (:class:`vendor_plan.RestoreStep`, run by :mod:`restore` at boot), ``late_mdev(root,
  parent, type_id)`` (a recorded mdev that only the late restore unit can create).

Adding a vendor is one new module and one entry in :data:`BACKENDS` (:func:`check_registry` refuses one
that clashes with another); no generic module_utils module names a vendor. A vendor that carves devices
through an interface of its own (NVIDIA's per-VF vGPU types) also needs a module of its own, as
``nvidia_vgpu`` is (README, "Adding a vendor").

Public API: :data:`BACKENDS`, :func:`backends_for`, :func:`readers_for`, :func:`read_vendor_state`,
:func:`host_graphics_drivers`, :func:`resource_domain`, :func:`backend_named`,
:func:`host_slot_vendors`, :func:`apart_in_slot`,
:func:`softdep_drivers`,
:data:`DEVICE_DEFAULTS`, :func:`gpu_keys`, :class:`HostFacts`,
:func:`enable_modes`, :func:`virtualization_modes`, :func:`check_registry`, :func:`by_vendor`,
:func:`state_sections`, :func:`restore_steps`,
:func:`vf_tool`, :func:`vf_tool_methods`, :func:`vf_count_set_by`, :func:`vf_count_advice`,
:func:`in_use_reasons`, :func:`no_mdev_types_hint`, :func:`no_driver_advice`, :func:`late_mdev`.
"""

from __future__ import annotations

import re

from ansible_collections.gpuvirt.host.plugins.module_utils import vendor_amd, vendor_intel, vendor_nvidia
from ansible_collections.gpuvirt.host.plugins.module_utils.kernel import cmdline_flag, cmdline_value, module_parameter
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import PCI_DEVICES, host_path, read_text
from ansible_collections.gpuvirt.host.plugins.module_utils.vendor_plan import RESTORE_ANCHORS, VGPU_KEY, VendorBackend

BACKENDS = (vendor_nvidia.BACKEND, vendor_intel.BACKEND, vendor_amd.BACKEND)
# The state file's and the restore's generic names, which no backend may take.
GENERIC_SECTIONS = ("sriov", "mdevs")
_VENDOR_ID = re.compile(r"[0-9a-f]{4}\Z")


def check_registry(backends):
    """Raise ``ValueError`` naming the backends at fault when ``backends`` cannot be told apart: a vendor ID
    that is not 4 lowercase hex digits (it would match no device), two backends of one name, one state file
    section or restore step claimed twice (or a generic one), a mode offered twice for one vendor, options of a
    mode the backend does not offer, or a step placed before no generic step."""
    owners = {}

    def claim(kind, name, backend):
        other = owners.setdefault((kind, name), backend)
        if other is not backend:
            raise ValueError("the %s %r is claimed by both the %s and the %s backends" % (
                kind, name, other.name, backend.name))

    for name in GENERIC_SECTIONS:
        owners[("state section", name)] = owners[("restore step", name)] = VendorBackend
    for anchor in RESTORE_ANCHORS:
        owners[("restore step", anchor)] = VendorBackend
    for backend in backends:
        if not isinstance(backend.vendor_id, str) or not _VENDOR_ID.match(backend.vendor_id):
            raise ValueError("the %s backend's vendor_id %r is not 4 lowercase hex digits" % (
                backend.name, backend.vendor_id))
        claim("backend name", backend.name, backend)
        for section in backend.state_sections:
            claim("state section", section, backend)
        for step in backend.restore_steps:
            claim("restore step", step.name, backend)
            if step.before not in RESTORE_ANCHORS:
                raise ValueError("the %s backend's restore step %r runs before %r, which is no generic step (%s)" % (
                    backend.name, step.name, step.before, ", ".join(RESTORE_ANCHORS)))
        for mode in backend.enable_modes:
            claim("mode of vendor %s" % backend.vendor_id, mode, backend)
        unknown = sorted(set(backend.enable_options) - set(backend.enable_modes))
        if unknown:
            raise ValueError("the %s backend has options for modes it does not offer: %s" % (
                backend.name, ", ".join(unknown)))
        for mode, options in backend.enable_options.items():
            kinds = sorted(set(options.values()) - {"int", "bool", "str"})
            if kinds:
                raise ValueError("the %s backend's mode %s has options of unknown types: %s (int, bool, str)" % (
                    backend.name, mode, ", ".join(kinds)))


def by_vendor(backends, wanted=None):
    """``{vendor ID: (backend, ...)}`` of ``backends`` (those ``wanted`` accepts), in registry order: a
    vendor may have several (a GPU backend and an accelerator backend of one vendor ID)."""
    found = {}
    for backend in backends:
        if wanted is None or wanted(backend):
            found[backend.vendor_id] = found.get(backend.vendor_id, ()) + (backend,)
    return found


check_registry(BACKENDS)
_BY_VENDOR = by_vendor(BACKENDS)
# Every backend's device keys with their values for a device of another vendor, and the generic vGPU key
# (read only).
DEVICE_DEFAULTS = {VGPU_KEY: None}
_GPU_DEFAULTS = {}
for _backend in BACKENDS:
    DEVICE_DEFAULTS.update(_backend.device_defaults)
    _GPU_DEFAULTS.update(_backend.gpu_defaults)


def backends_for(vendor_id):
    """The backends for a vendor ID: its own, none for a vendor without one, every one when unknown."""
    if vendor_id is None:
        return BACKENDS
    return _BY_VENDOR.get(vendor_id, ())


def readers_for(vendor_id):
    """The backends of :func:`backends_for` that read extra device state (override ``read_device``):
    the PCI reader calls no backend for the devices of a vendor whose backends read nothing."""
    if vendor_id is None:
        return _READERS_OF_ANY
    return _READERS.get(vendor_id, ())


def _reads_devices(backend):
    return type(backend).read_device is not VendorBackend.read_device


_READERS = by_vendor(BACKENDS, _reads_devices)
_READERS_OF_ANY = tuple(backend for backend in BACKENDS if _reads_devices(backend))


def read_vendor_state(backends, path, address, findings, directory=None):
    """The vendor-specific state of one device (``{key: value}``) as ``backends`` (see
    :func:`backends_for`) read it (``directory``: a descriptor of ``path``, when open). Where backends share
    a key (the generic ``vgpu``), one's None does not hide another's value, whatever their order."""
    if len(backends) == 1:
        return backends[0].read_device(path, address, findings, directory)
    state = {}
    for backend in backends:
        for key, value in backend.read_device(path, address, findings, directory).items():
            if value is not None or state.get(key) is None:
                state[key] = value
    return state


def host_slot_vendors(vendor_id):
    """The vendor IDs of functions that are never companions of a GPU of ``vendor_id`` (of every backend
    when the vendor is unknown): the processor's own functions beside an APU's GPU."""
    found = _HOST_SLOT_VENDORS.get(vendor_id)
    if found is None:
        found = _HOST_SLOT_VENDORS[vendor_id] = frozenset(
            vendor for backend in backends_for(vendor_id) for vendor in backend.host_slot_vendors
        )
    return found


_HOST_SLOT_VENDORS = {}


def apart_in_slot(first, second):
    """Whether functions of vendors ``first`` and ``second`` in one slot belong to different parts (an
    APU's GPU and the processor beside it), as either vendor's backend says."""
    return second in host_slot_vendors(first) or first in host_slot_vendors(second)


def backend_named(name):
    """The backend called ``name`` (a :data:`vendor_plan.VGPU_KEY` value's ``vendor``), or None."""
    return next((backend for backend in BACKENDS if backend.name == name), None)


def resource_domain(vendor_id):
    """The domain the Kubernetes device plugins of ``vendor_id`` name resources in, or None."""
    return next((backend.resource_domain for backend in _BY_VENDOR.get(vendor_id, ()) if backend.resource_domain),
                None)


def host_graphics_drivers():
    """The drivers that drive a GPU for the host itself (display, compute), of every vendor."""
    return frozenset(driver for backend in BACKENDS for driver in backend.host_drivers)


def softdep_drivers():
    """The vendors' drivers that would claim a GPU before vfio-pci at boot, in registry order."""
    return tuple(driver for backend in BACKENDS for driver in backend.softdep_drivers)


def gpu_keys(device):
    keys = dict(_GPU_DEFAULTS)
    for backend in backends_for(device.vendor_id):
        keys.update(backend.gpu_keys(device))
    return keys


class HostFacts:
    """What the backends' ``modes()`` may ask about the host, read once per detection."""

    def __init__(self, root, devices, kernel, iommu_enabled, parent_names):
        self.root = root
        self.devices = devices
        self.cmdline = kernel.get("cmdline") or []
        self.modules = set(kernel.get("modules_loaded") or [])
        self.iommu_enabled = iommu_enabled
        self.parent_names = parent_names
        self._parameters = {}

    def is_mdev_parent(self, address):
        return address in self.parent_names

    def vfs_of(self, device):
        if device.sriov is None:
            return []
        return [self.devices[vf] for vf in device.sriov.vfs if vf in self.devices]

    def module_loaded(self, name):
        return name.replace("-", "_") in self.modules

    def cmdline_value(self, key):
        return cmdline_value(self.cmdline, key)

    def cmdline_flag(self, key):
        return cmdline_flag(self.cmdline, key)

    def module_parameter(self, module, parameter):
        key = (module, parameter)
        if key not in self._parameters:
            self._parameters[key] = module_parameter(self.root, module, parameter)
        return self._parameters[key]


def enable_modes():
    """Every mode a backend can enable (``virtualization_mode``'s choices), in registry order."""
    return tuple(mode for backend in BACKENDS for mode in backend.enable_modes)


def virtualization_modes(device, host, verdict):
    """The modes ``device`` (a GPU, not a VF) can offer: ``passthrough`` from its verdict, then its
    vendor's modes."""
    modes = [{"mode": "passthrough", "ready": verdict["viable"] is True, "missing": list(verdict["reasons"])}]
    for backend in backends_for(device.vendor_id) if device.vendor_id else ():
        modes.extend(backend.modes(device, host))
    return modes


# -- carving -------------------------------------------------------------------------------------


def _first(device, hook, *args):
    for backend in backends_for(device.vendor_id):
        answer = getattr(backend, hook)(device, *args)
        if answer:
            return answer
    return None


def vf_tool_methods():
    """The VF-enabling methods the vendors' tools provide (``sriov_manage``), in registry order."""
    return tuple(method for backend in BACKENDS for method in backend.vf_tools)


def vf_tool(method, command=None):
    """The vendor tool recorded as ``method`` (``command``: its path, else found on the host), or None."""
    for backend in BACKENDS:
        factory = backend.vf_tools.get(method)
        if factory is not None:
            return factory(command)
    return None


def vf_count_set_by(device):
    """Why the VF count of ``device`` is not written through ``sriov_numvfs``, and how it is set; or None."""
    return _first(device, "vf_count_set_by")


def vf_count_advice(device):
    """The vendor's word on changing the VF count of ``device`` through ``sriov_numvfs``, or None."""
    return _first(device, "vf_count_advice")


def _backends_at(root, address):
    """The backends for the PCI device at ``address`` by its ``vendor`` (every one when unreadable)."""
    vendor = read_text(host_path(root, PCI_DEVICES, address, "vendor"))
    return backends_for(vendor[2:].lower() if vendor and vendor.startswith("0x") else None)


def no_driver_advice(root, address):
    """The vendors' word on why no driver binds to the device at ``address`` (see
    ``VendorBackend.no_driver_advice``), or None."""
    for backend in _backends_at(root, address):
        advice = backend.no_driver_advice(root, address)
        if advice:
            return advice
    return None


def in_use_reasons(device):
    """Why ``device`` is in use through its vendor's own interface (a vGPU assigned to a VF)."""
    return [reason for backend in backends_for(device.vendor_id) for reason in backend.in_use_reasons(device)]


def device_nodes(root, device):
    """The vendors' ``/dev`` nodes of ``device`` (see ``VendorBackend.device_nodes``)."""
    return [node for backend in backends_for(device.vendor_id) for node in backend.device_nodes(root, device)]


def no_mdev_types_hint(device, vfs):
    """The vendor's reason why ``device`` offers no mdev types (``vfs``: its VF devices), or None."""
    return _first(device, "no_mdev_types_hint", vfs)


# -- persisting ----------------------------------------------------------------------------------


def state_sections():
    """The state file sections the vendors own, in restore order."""
    return tuple(section for backend in BACKENDS for section in backend.state_sections)


def late_mdev(root, parent, type_id):
    """Why the mdev of type ``type_id`` on ``parent`` is left to the late restore unit (the vendor's
    ``late_mdev``), or None."""
    for backend in _backends_at(root, parent):
        reason = backend.late_mdev(root, parent, type_id)
        if reason:
            return reason
    return None


def restore_steps(before):
    """The vendors' boot-time restore steps that run before the generic step ``before``."""
    if before not in RESTORE_ANCHORS:
        raise ValueError("no generic restore step %r" % before)
    return [step for backend in BACKENDS for step in backend.restore_steps if step.before == before]
