# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The vendor backend interface (:class:`VendorBackend`) and what a backend hands to the generic code: a
plan to turn a mode on or off (:class:`EnablePlan`, applied by :mod:`enablement`) or :class:`EnableError` when
it cannot; its boot-time restore steps (:class:`RestoreStep`, run by :mod:`restore`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError

MANAGED_HEADER = "# Managed by gpuvirt.host (virtualization_mode); changes here are overwritten.\n"


class EnableError(GpuvirtError):
    """The mode cannot be enabled on this GPU; says why and what to do. Nothing was changed."""


class VendorRestoreError(GpuvirtError):
    """A vendor's restore step could not bring one item back at boot; says why and what to do."""


@dataclass(frozen=True)
class EnablePlan:
    """Declarations only: kernel arguments to add (an argument replaces every other value of its key),
    ``pin_arguments`` (arguments that hold a setting off: added only where the boot configuration holds
    another value of their key, as nothing else the backend sees turns the setting on), files to write
    (``((relative path, content), ...)``; content None: the file is removed), modules to load now,
    ``running_needs`` (``(description, satisfied now)``: what the running kernel must show for the mode to
    work, or to be off, without a reboot), ``vf_limits`` (``((PF address, VFs), ...)``: the most VFs each
    physical function is offered once the plan is in effect, for every PF the setting reaches; a
    driver-wide ``max_vfs`` reaches all the GPUs of that driver).

    ``records`` (``((section, key, entry), ...)``): what the boot-time restore must know, written to the
    state file (:mod:`hoststate`) with the files: each ``entry`` of ``section`` (one of the vendor's
    ``state_sections``, or ``sriov`` for a VF count with its ``method``) set under ``key`` (a PCI address),
    or removed when None."""

    mode: str
    address: str
    kernel_arguments: tuple = ()
    pin_arguments: tuple = ()
    files: tuple = ()
    load_modules: tuple = ()
    running_needs: tuple = ()
    notes: tuple = field(default=())
    vf_limits: tuple = ()
    records: tuple = ()


# The generic restore steps (:mod:`restore`) in the order they run; a vendor step is placed before one.
RESTORE_ANCHORS = ("driver", "sriov", "vfio", "mdevs")


@dataclass(frozen=True)
class RestoreStep:
    """One boot-time restore step of a vendor, run by :mod:`restore` right before the generic step
    ``before`` (``driver``: before the drivers are waited for; ``sriov``: once the physical functions
    have a driver, before the VF counts are written; ``vfio``: once the VFs exist, before the recorded ones
    go to vfio-pci; ``mdevs``: before the mediated devices are created).

    ``items(state, root)`` returns ``[(item, action)]`` for the recorded state (the state file's
    sections, :mod:`hoststate`): the item names what is restored (a PCI address, a UUID), and
    ``action(context)`` restores it and returns what it did, or raises :class:`errors.GpuvirtError`
    (or ``OSError``) saying why not. Each item gets its own status line. ``context`` is the running
    :class:`restore.Restore`: ``root``, ``runner`` (``run_command(argv)``, ``get_bin_path(name)``),
    ``wait_for(check, what, timeout=None)``, ``retry(action)``, ``interval``, ``log(message)``,
    ``pf_failed(address)``. An item named by a device address (a physical function or a VF) is not run,
    and fails at once naming the cause, when that device or its physical function failed its ``driver``
    or ``sriov`` item; an action whose item is named otherwise asks ``pf_failed(address)`` for the device
    it needs (the cause, or None). ``wait_for`` and ``retry`` also stop at the run's deadline.

    ``late_items(state, root)``, when given, returns the items that need the vendor's own services of
    ``restore_unit_before`` to have run first (NVIDIA's MIG-backed vGPU types need the GPU instances
    ``nvidia-mig-manager`` creates): ``gpuvirt-restore-late.service`` restores them, ordered after those
    services. ``items`` then leaves them out (or names them as left to the late restore).
    """

    name: str
    before: str
    items: Callable
    late_items: Callable | None = None


# The device key of the vGPU type interface a vendor gives a device of its own, not the mdev bus (NVIDIA's
# per-VF nvidia/current_vgpu_type). A backend whose devices have one puts in
# :meth:`VendorBackend.read_device`'s state ``{VGPU_KEY: vgpu_entry(its name, current, creatable)}`` and
# leaves the key out for a device without one. Every device has the key (None unless a backend sets it);
# the exports, the fleet report and the gpuvirt fact read it, whatever the vendor (:func:`device_vgpu`).
# The exports take a VF with a type set as ready on its vendor's driver: that driver must expose the VF as
# a VFIO device itself, as NVIDIA's does.
VGPU_KEY = "vgpu"


def vgpu_entry(vendor, current, creatable):
    """The :data:`VGPU_KEY` value: ``vendor`` (the backend's name), ``current`` (the type ID set, 0 when none,
    None when unreadable) and ``creatable`` (``[{"id", "name"}]``, the types the device could take now, None
    when unreadable; a list of its own, of the same entries). A value of another form (a recorded topology
    edited by hand) is taken as unreadable, an entry that is no mapping is left out."""
    return {
        "vendor": vendor if isinstance(vendor, str) else None,
        "current": current if isinstance(current, int) and not isinstance(current, bool) else None,
        "creatable": [entry for entry in creatable if isinstance(entry, dict)] if isinstance(creatable, list) else None,
    }


def device_vgpu(device):
    """The :data:`VGPU_KEY` value of a device of a topology (a dict of ``topology_info``'s ``devices``); for a
    topology written before the key existed (a recorded report, a cached topology), what its vendor's backend
    reads from its own keys there. None without one. A value of another form is taken as unreadable. (The
    backends are imported only for such an old topology: the controller's filters that call this on every
    host stay light.)"""
    if not isinstance(device, dict):
        return None
    if VGPU_KEY in device:
        vgpu = device[VGPU_KEY]
        return vgpu_entry(vgpu.get("vendor"), vgpu.get("current"), vgpu.get("creatable")) if isinstance(
            vgpu, dict) else None
    from ansible_collections.gpuvirt.host.plugins.module_utils.vendors import BACKENDS

    return next((vgpu for vgpu in (backend.legacy_vgpu(device) for backend in BACKENDS) if vgpu is not None), None)


class VendorBackend:
    """What a vendor adds to the generic code; each hook's default adds nothing. A backend module
    (``vendor_<name>.py``) subclasses this, overrides what its vendor needs and is listed in
    :data:`vendors.BACKENDS`.

    Reading (:mod:`pci`, :mod:`topology`): ``host_drivers``, ``device_defaults`` / ``gpu_defaults``,
    ``host_slot_vendors``, :meth:`read_device`, :meth:`gpu_keys`, :meth:`modes`.
    The controller's readers of :data:`VGPU_KEY`: :meth:`legacy_vgpu`, ``proxmox_sets_vgpu_types``,
    ``vgpu_removal_advice``.
    Enabling (:mod:`enablement`): ``enable_modes``, ``enable_options``, :meth:`enable_plan`, :meth:`disable_plan`.
    Carving (:mod:`sriov`, :mod:`mdev`): ``vf_tools``, :meth:`vf_count_set_by`, :meth:`vf_count_advice`,
    :meth:`in_use_reasons`, :meth:`no_mdev_types_hint`.
    Guarding (:mod:`device_users`): :meth:`device_nodes`.
    Persisting (:mod:`hoststate`, :mod:`restore`): ``state_sections``, ``restore_steps``,
    ``restore_unit_before``, :meth:`no_driver_advice`.
    """

    name = None
    vendor_id = None
    # The domain its Kubernetes device plugins name resources in (``nvidia.com/GA102GL_A10``); None: none.
    resource_domain = None
    # Whether Proxmox VE sets the vGPU types of its devices (VGPU_KEY) itself when a VM starts, for the
    # proxmox_pci_mapping export's mdev mappings; and how a user takes a vGPU type the collection set off a
    # VF, for good (the boot restore sets it again otherwise), in the exports' advice.
    proxmox_sets_vgpu_types = False
    vgpu_removal_advice = None
    # Its kernel drivers that drive a GPU for the host itself (not for VMs), and those of them that would
    # claim a GPU passed through to VMs before vfio-pci at boot (vfio_pci's modprobe.d soft dependencies).
    host_drivers = ()
    softdep_drivers = ()
    # Vendor IDs of the functions that share a slot with its GPUs without being part of them (an APU's GPU
    # sits beside the processor's own functions): never companions of its GPUs, they stay with the host.
    host_slot_vendors = frozenset()
    device_defaults = {}
    gpu_defaults = {}
    enable_modes = ()
    # ``{mode: {option name: "int", "bool" or "str"}}``: the options each of its modes takes (virtualization_mode's
    # ``options``, and ``max_vfs``), converted to that type before its plan sees them (a templated "7" is 7); a
    # mode not listed takes none, and an option it does not take, or of another type, is refused.
    enable_options = {}
    # State file sections this vendor owns (restored by its own steps), in restore order.
    state_sections = ()
    restore_steps = ()
    # systemd units of its software that must start after the boot-time restore unit (``Before=`` there);
    # the late restore unit starts after them (``After=``) for the steps' ``late_items``.
    restore_unit_before = ()
    # ``{method: factory(command=None)}``: the vendor tools that enable VFs, by the ``method`` an entry of
    # the state file's ``sriov`` section records (:func:`sriov.enable_vfs_by_tool` runs them). A tool has
    # ``name``, ``argv(executable, pf)``, ``executable(runner)``, ``install_advice``, ``failure_advice(pf)``,
    # ``enables_all`` (it enables every VF the PF offers: fewer is a failure), and may have ``pf_driver`` (the
    # driver it unbinds while it works, bound again before each run), ``programs`` (``(program, how to
    # install it)`` pairs it runs, checked first) and ``disable_argv(executable, pf)`` (the command that
    # disables the VFs again, run before retrying after a short count).
    vf_tools = {}

    def read_device(self, path, address, findings, directory=None):
        """Its extra sysfs state of one of its devices (kept in ``PciDevice.vendor_state``).

        ``directory``: a descriptor of the device's directory (``path``) to read relative to, when
        the caller has it open (for look-ups only: it cannot be listed); None to read below ``path``."""
        return {}

    def legacy_vgpu(self, device):
        """The :data:`VGPU_KEY` value of a device of a topology written before the key existed (a dict of
        ``topology_info``'s ``devices``), from the backend's own keys in it; None when it has none."""
        return None

    def gpu_keys(self, device):
        """Its keys of a GPU entry of the topology."""
        return {}

    def modes(self, device, host):
        """The virtualization modes ``device`` can offer: ``[{"mode", "ready", "missing"}]``."""
        return []

    def enable_plan(self, device, host, mode, options):
        """The :class:`EnablePlan` for one of ``enable_modes``; raises :class:`EnableError`. ``options``: the
        values given for the mode's ``enable_options`` (the others are refused before this is called)."""
        raise EnableError("%s: the %s backend cannot enable %s; nothing changed" % (device.address, self.name, mode))

    def disable_plan(self, device, host, mode, recorded):
        """The :class:`EnablePlan` that turns one of ``enable_modes`` off again (``state: absent``): what
        :meth:`enable_plan` wrote undone, so that the GPU no longer offers the mode after the next boot (or
        driver load); raises :class:`EnableError`, nothing changed, when it cannot. ``recorded``: the state
        file (:mod:`hoststate`); a plan that would leave the backend's own restore steps failing on what it
        records (:func:`refuse_recorded`) is refused."""
        raise EnableError("%s: the %s backend cannot turn %s off; nothing changed" % (device.address, self.name, mode))

    def vf_count_set_by(self, device):
        """Why the VF count of this physical function cannot be written through ``sriov_numvfs`` and how
        it is set instead, or None when it can."""
        return None

    def no_driver_advice(self, root, address):
        """Why no driver binds to the device at ``address`` of its vendor at boot and what to do (its host
        driver's module refused, for example), or None; the restore adds it to the driver step's failure."""
        return None

    def vf_count_advice(self, device):
        """The vendor's word on changing the VF count of this physical function through ``sriov_numvfs``
        (warned when a module changes it, added when the kernel refuses it), or None."""
        return None

    def in_use_reasons(self, device):
        """Why this device (a VF) is in use by the vendor's own interface, e.g. a vGPU assigned to it."""
        return []

    def device_nodes(self, root, device):
        """The vendor's ``/dev`` nodes through which the host uses ``device`` while its driver drives it
        (a process holding one keeps the driver from letting go of the device)."""
        return []

    def no_mdev_types_hint(self, device, vfs):
        """Why ``device`` (with its VF devices ``vfs``) offers no mdev types, when the vendor knows."""
        return None

    def late_mdev(self, root, parent, type_id):
        """Why the recorded mdev of type ``type_id`` on ``parent`` (one of the vendor's devices) can only be
        created after the vendor's services have started, by ``gpuvirt-restore-late.service``; None when the
        main restore creates it. The vendor's restore step lists those mdevs in its ``late_items``."""
        return None


def refuse_recorded(mode, items, remove_with):
    """Raise :class:`EnableError` when ``items`` (what the boot-time restore would bring back and could not with
    ``mode`` off, as its restore step selects it) is not empty; ``remove_with`` says how to remove them first."""
    if items:
        raise EnableError(
            "turning %s off would leave the boot restore failing at every boot on what it records: %s. Remove "
            "them first (%s); nothing changed" % (mode, "; ".join(items), remove_with)
        )
