# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The registry of GPU vendor backends: what a vendor adds to the generic readers.

One module per vendor (``vendor_nvidia``, ``vendor_intel``, ``vendor_amd``; flat modules, so the
boot-time restore can ship them as it ships every module_utils file) defines a ``BACKEND`` with:

- ``name``, ``vendor_id`` (4 lowercase hex digits);
- ``device_defaults`` / ``gpu_defaults``: the keys it adds to every device / GPU entry, with their
  values for other vendors' devices;
- ``read_device(path, address, findings) -> dict``: its extra sysfs state of one of its devices
  (kept in ``PciDevice.vendor_state``); run only for its vendor's devices (and for devices whose
  vendor could not be read);
- ``gpu_keys(device) -> dict``: its keys of a GPU entry;
- ``modes(device, host) -> list[dict]``: the virtualization modes the GPU can offer, each
  ``{"mode", "ready", "missing": [what is needed, as advice]}`` (and ``unsupported``: why not at all).

Adding a vendor is one new module and one entry in :data:`BACKENDS`.

Public API: :data:`BACKENDS`, :func:`backends_for`, :func:`read_vendor_state`,
:func:`device_defaults`, :func:`gpu_keys`, :class:`HostFacts`, :func:`virtualization_modes`.
"""

from __future__ import annotations

from ansible_collections.gpuvirt.host.plugins.module_utils import vendor_amd, vendor_intel, vendor_nvidia
from ansible_collections.gpuvirt.host.plugins.module_utils.kernel import cmdline_value, module_parameter

BACKENDS = (vendor_nvidia.BACKEND, vendor_intel.BACKEND, vendor_amd.BACKEND)
_BY_VENDOR = {backend.vendor_id: (backend,) for backend in BACKENDS}
_DEVICE_DEFAULTS = {}
_GPU_DEFAULTS = {}
for _backend in BACKENDS:
    _DEVICE_DEFAULTS.update(_backend.device_defaults)
    _GPU_DEFAULTS.update(_backend.gpu_defaults)


def backends_for(vendor_id):
    """The backends for a vendor ID: its own, none for a vendor without one, every one when unknown."""
    if vendor_id is None:
        return BACKENDS
    return _BY_VENDOR.get(vendor_id, ())


def read_vendor_state(vendor_id, path, address, findings):
    """The vendor-specific state of one device (``{key: value}``), from its vendor's backend only."""
    state = {}
    for backend in backends_for(vendor_id):
        state.update(backend.read_device(path, address, findings))
    return state


def device_defaults():
    """Every backend's device keys with their values for a device of another vendor."""
    return dict(_DEVICE_DEFAULTS)


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

    def module_parameter(self, module, parameter):
        key = (module, parameter)
        if key not in self._parameters:
            self._parameters[key] = module_parameter(self.root, module, parameter)
        return self._parameters[key]


def virtualization_modes(device, host, verdict):
    """The modes ``device`` (a GPU, not a VF) can offer: ``passthrough`` from its verdict, then its
    vendor's modes."""
    modes = [{"mode": "passthrough", "ready": verdict["viable"] is True, "missing": list(verdict["reasons"])}]
    for backend in backends_for(device.vendor_id) if device.vendor_id else ():
        modes.extend(backend.modes(device, host))
    return modes
