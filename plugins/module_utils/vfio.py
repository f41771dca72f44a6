# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Handing PCI devices to vfio-pci or a variant VFIO driver: selectors, safety guards, runtime
binding and persistence.

Public API (readers take the host ``root``; the module's run is :class:`vfio_run.VfioPciRun`, its
boot-time planning :class:`vfio_boot.BootConfigPlanner`):

- :func:`resolve_selectors` ``(selectors, devices, binding=True) -> {address: [selector, ...]}``: a PCI address
  (short, 4- or 8-digit domain), ``vendor:device``, or a model name; never an index.
- binding and handing back one device (``read_driver``, ``bind_device``, ``release_device``,
  ``is_vfio_driver``...) are in :mod:`vfio_bind`, which the boot-time restore uses too.
- :func:`read_host` ``(root) -> HostView``: devices, IOMMU state, VFIO holders and host-critical
  devices through the topology readers, and the displays the kernel marks (:mod:`display`).
- :func:`expand_members` ``(view, selected, with_companions) -> {address: Member}``: selected devices
  plus their companions that share their IOMMU group (:func:`pci.group_companions`: their slots' other
  functions, their card's behind its own switch).
- :func:`bind_refusals`, :func:`in_use_refusals`, :func:`carved_refusals`, :func:`host_user_refusals`,
  :func:`id_refusals` -> ``[Refusal]``: the guards. :func:`host_node_users` ``(view, changing)``: the
  one scan of the host nodes that :func:`host_user_refusals` and :func:`in_use_refusals` share when
  binding.
- :func:`choose_drivers` ``(root, members, requested, aliases) -> {address: DriverChoice}``: vfio-pci
  or the variant VFIO driver (``alias vfio_pci:`` in modules.alias) each device gets;
  :func:`is_vfio_driver`, :func:`driver_key` (``-`` and ``_`` as one), :func:`module_of`.
- :func:`render_modprobe_conf`, :func:`modprobe_ids`, :func:`cmdline_ids`, :func:`driverctl_path`,
  :func:`render_initramfs_config`, :func:`plan_file`: the boot-time configuration that keeps the
  binding; :func:`host_softdeps`, :func:`softdep_warnings`, :func:`foreign_vfio_ids`: the host's own
  modprobe configuration it lives among (:mod:`modprobe`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ansible_collections.gpuvirt.host.plugins.module_utils import host as host_model
from ansible_collections.gpuvirt.host.plugins.module_utils import hoststate, modprobe, vendors
from ansible_collections.gpuvirt.host.plugins.module_utils.critical import critical_devices
from ansible_collections.gpuvirt.host.plugins.module_utils.device_users import (
    host_nodes,
    merged,
    node_users,
    storage_index,
    unknown_users_text,
    users_of,
    vfio_holders,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.display import Displays, read_displays
from ansible_collections.gpuvirt.host.plugins.module_utils.drivers import driver_key, is_vfio_driver, is_vfio_pci
from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError
from ansible_collections.gpuvirt.host.plugins.module_utils.files import (
    FileError,
    plan_change,
    read_file,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.iommu import read_iommu
from ansible_collections.gpuvirt.host.plugins.module_utils.kernel import (
    cmdline_flag,
    cmdline_value,
    kernel_bool,
    read_builtin_modules,
    read_cpu,
    read_kernel,
    read_release,
    vfio_variant_drivers,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.mdev_info import mdevs
from ansible_collections.gpuvirt.host.plugins.module_utils.pci import (
    behind_vmd_reason,
    group_companions,
    name_devices,
    read_pci_devices,
    slot_index,
    vmd_controller,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.selector import (
    SelectorError,
    describe,
    match_selector,
    parse_selector,
    select_devices,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import (
    host_path,
    list_dir,
    read_text,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import (
    NotALinuxTree,
    check_root,
    group_endpoints,
    host_architecture,
    unsupported_architecture,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.vfio_bind import (
    VFIO_DRIVER,
    VfioError,
    device_path,
)

# Host drivers that would claim a GPU (the vendors' own) or one of its companion functions (HDMI audio,
# USB-C) before vfio-pci does unless modprobe loads vfio-pci first.
COMPANION_SOFTDEP_DRIVERS = ("snd_hda_intel", "xhci_hcd")
SOFTDEP_DRIVERS = vendors.softdep_drivers() + COMPANION_SOFTDEP_DRIVERS
MODPROBE_CONF = "etc/modprobe.d/gpuvirt-vfio.conf"
MODULES_LOAD_CONF = "etc/modules-load.d/gpuvirt-vfio.conf"
DRIVERCTL_DIR = "etc/driverctl.d"


def softdep_drivers_for(ids):
    """The drivers of :data:`SOFTDEP_DRIVERS` that may claim a device of ``ids`` (``vendor:device``): its
    vendor's GPU drivers (none for a vendor without a backend) and the companions'."""
    vendor_ids = {identifier.partition(":")[0] for identifier in ids}
    drivers = set(COMPANION_SOFTDEP_DRIVERS)
    for vendor_id in vendor_ids:
        drivers.update(driver for backend in vendors.backends_for(vendor_id or None) for driver in
                       backend.softdep_drivers)
    return tuple(driver for driver in SOFTDEP_DRIVERS if driver in drivers)


MANAGED_HEADER = "# Managed by gpuvirt.host.vfio_pci; edits are overwritten.\n"

_VFIO_OPTIONS = re.compile(r"^\s*options\s+vfio[-_]pci\s+(.*)$")


# ------------------------------------------------------------------------------------ selectors


def resolve_selectors(selectors, devices, binding=True):
    """Map selectors to PCI addresses.

    ``devices``: ``{address: PciDevice}`` named from ``pci.ids``. Returns ``{address: [selector
    text, ...]}`` in address order. Every selector must match (:func:`selector.select_devices`);
    :class:`VfioError` lists every bad selector at once. With ``binding``, a selector may not name a
    bridge (:func:`not_assignable`); handing one back (``binding`` false) may.
    """
    chosen = {}
    problems = []
    for text in selectors:
        try:
            matches = select_devices(text, devices, "PCI device", not_assignable if binding else None)
        except SelectorError as error:
            problems.append(str(error))
            continue
        for address in matches:
            chosen.setdefault(address, [])
            if text not in chosen[address]:
                chosen[address].append(text)
    if problems:
        raise VfioError("; ".join(problems) + "; nothing was changed")
    return {address: chosen[address] for address in sorted(chosen)}


def split_overlap(view, members, split):
    """Why binding ``members`` contradicts ``split`` (selectors of the devices the rest of the
    configuration splits into VFs, vGPUs or mdevs), or None. A selector there that names nothing,
    or names two models, is left to the step that splits."""
    named = {}
    for text in split:
        try:
            matches = match_selector(parse_selector(text), view.devices)
        except SelectorError:
            continue
        for address in matches:
            named.setdefault(address, []).append(text)
    clashes = []
    for address, member in members.items():
        if address not in named:
            continue
        by = ", ".join(member.selected_by) if member.selected_by else "a companion of %s" % member.companion_of
        clashes.append("%s (selected by %s) is also split by %s" % (
            describe(view.records[address]), by, ", ".join(named[address])))
    if not clashes:
        return None
    return (
        "%s: a device handed whole to a VM cannot also be split into VFs, vGPUs or mdevs; select the devices "
        "to pass through by PCI address, or declare one or the other; nothing was changed" % "; ".join(clashes)
    )


# ------------------------------------------------------------------------------ driver choice


def module_of(driver):
    """The module ``modprobe`` loads for a driver: vfio-pci as the module has always been named
    here, a variant by its module name (its registered driver name)."""
    return VFIO_DRIVER if is_vfio_pci(driver) else driver_key(driver)


@dataclass(frozen=True)
class DriverChoice:
    """The VFIO driver one device gets, and why.

    ``reason``: ``option`` (the module's ``driver`` option named it), ``modules.alias`` (``auto``:
    a variant driver's ``vfio_pci:`` alias matches the device), ``default`` (``auto``: none does).
    ``variants``: the variant drivers whose alias matches the device's ``modalias``, best first.
    """

    driver: str
    reason: str
    modalias: str | None
    variants: tuple

    @property
    def variant(self):
        return self.driver != VFIO_DRIVER


def choose_drivers(root, members, requested, aliases, release=None):
    """``{address: DriverChoice}`` for ``members`` (:func:`expand_members`).

    ``requested``: ``auto`` (the best matching variant driver, else vfio-pci), ``vfio-pci`` (plain
    vfio-pci for all), or a variant driver for the selected devices (companions keep ``auto``),
    which must match each of them; otherwise :class:`VfioError` names every such device, the
    driver and the variant drivers that do match.
    """
    wanted = None if requested == "auto" else driver_key(requested)
    choices = {}
    problems = []
    for address, member in members.items():
        modalias = read_text(device_path(root, address, "modalias"))
        variants = tuple(vfio_variant_drivers(modalias, aliases))
        if wanted == "vfio_pci":
            choices[address] = DriverChoice(VFIO_DRIVER, "option", modalias, variants)
        elif wanted is not None and member.companion_of is None:
            named = [v for v in variants if driver_key(v) == wanted]
            if named:
                choices[address] = DriverChoice(named[0], "option", modalias, variants)
                continue
            problems.append(
                "driver %s does not match %s (modalias %s): %s" % (
                    requested, address, modalias or "unreadable",
                    "the variant VFIO drivers that match it are %s" % ", ".join(variants) if variants
                    else "no variant VFIO driver in modules.alias of kernel %s matches it" % (release or "?"),
                )
            )
        elif variants:
            choices[address] = DriverChoice(variants[0], "modules.alias", modalias, variants)
        else:
            choices[address] = DriverChoice(VFIO_DRIVER, "default", modalias, variants)
    if problems:
        raise VfioError(
            "; ".join(problems) + "; use driver: auto (the matching variant driver, else vfio-pci), driver: "
            "vfio-pci, or one of the matching drivers; nothing was changed"
        )
    return choices


# ---------------------------------------------------------------------------------- persistence


def vfio_options(text):
    """``(name, "=" or "", value)`` of each option on the ``options vfio-pci`` lines of a modprobe.d file's
    text, in order."""
    for line in modprobe.logical_lines(text):
        match = _VFIO_OPTIONS.match(line)
        if match:
            for option in match.group(1).split():
                yield option.partition("=")


def modprobe_ids(text):
    """The IDs of every ``options vfio-pci ids=...`` line in a modprobe.d file's text."""
    ids = []
    for name, equals, value in vfio_options(text):
        if name == "ids" and equals:
            ids.extend(part.strip().lower() for part in value.split(",") if part.strip())
    return ids


def modprobe_softdeps(text):
    """The modules whose ``softdep`` line in a modprobe.d file's text loads vfio-pci first."""
    found = []
    for line in modprobe.logical_lines(text):
        softdep = modprobe.parse_softdep(line)
        if softdep is not None and softdep.pre and is_vfio_pci(softdep.pre[0]):
            found.append(softdep.module)
    return found


def render_modprobe_conf(ids, softdeps=(), host_softdeps=None):
    """The modprobe.d file that binds ``ids`` to vfio-pci at boot, or None when there are none.
    ``softdeps``: the modules of the devices' host drivers (and those the file already has), loaded after
    vfio-pci like those of :func:`softdep_drivers_for` the IDs (the companion functions' drivers vary:
    ``xhci_pci``, ``i2c_nvidia_gpu``). Only the drivers of the IDs' vendors, so that a vendor added to the
    collection changes no host's file (and rebuilds no initramfs) where its GPUs are not passed through.
    ``host_softdeps``: the host's own softdep lines (:func:`host_softdeps`). modprobe uses one softdep
    line per module, so each of ours carries the modules of the host's line after vfio-pci."""
    ids = sorted(set(ids))
    if not ids:
        return None
    lines = [
        MANAGED_HEADER,
        "# Devices with these vendor:device IDs are claimed by vfio-pci at boot.\n",
        "options vfio-pci ids=%s\n" % ",".join(ids),
        "# Load vfio-pci before the host drivers that would otherwise claim them first.\n",
    ]
    wanted = {driver_key(driver) for driver in softdep_drivers_for(ids)} | {driver_key(m) for m in softdeps}
    known = {driver_key(driver) for driver in SOFTDEP_DRIVERS}
    modules = [driver for driver in SOFTDEP_DRIVERS if driver_key(driver) in wanted] + sorted(
        {module for module in softdeps if driver_key(module) not in known}, key=driver_key)
    host_softdeps = host_softdeps or {}
    for module in modules:
        theirs = host_softdeps.get(driver_key(module)) or modprobe.Softdep(module)
        pre = [VFIO_DRIVER] + [name for name in theirs.pre if not is_vfio_pci(name)]
        lines.append(modprobe.Softdep(module, pre, list(theirs.post)).render())
    return "".join(lines)


def host_softdeps(root, release):
    """``{module key: Softdep}``: the softdep line modprobe uses for each module, from the host's
    configuration other than ours (``modules.softdep`` of kernel ``release`` included)."""
    try:
        return modprobe.first_softdeps(root, release, skip=(MODPROBE_CONF,))
    except FileError as error:
        raise VfioError(str(error)) from error


def softdep_warnings(host_softdeps, modules):
    """Warnings for the ``modules`` whose softdep line in a file modprobe reads before ours leaves
    vfio-pci out: ours is then ignored."""
    ours = os.path.basename(MODPROBE_CONF)
    warnings = []
    for module in sorted(set(modules), key=driver_key):
        theirs = host_softdeps.get(driver_key(module))
        if theirs is None or os.path.basename(theirs.path) >= ours:
            continue
        if any(is_vfio_pci(name) for name in theirs.pre):
            continue
        warnings.append(
            "/%s has a softdep line for %s, and modprobe uses only the first softdep line of a module: it reads "
            "that file before /%s, so vfio-pci is not loaded before %s at boot and %s may claim a device first; "
            "put vfio-pci at the start of that line's pre: list (softdep %s pre: vfio-pci%s)"
            % (theirs.path, module, MODPROBE_CONF, module, module, module,
               "".join(" " + name for name in theirs.pre) + (" post: " + " ".join(theirs.post) if theirs.post else ""))
        )
    return warnings


def render_modules_load(modules=(VFIO_DRIVER,)):
    """modules-load.d content that loads ``modules`` at boot: vfio-pci even when no host driver
    pulls it in, and variant VFIO drivers, which no ``pci:`` alias ever autoloads. None: no file."""
    if not modules:
        return None
    return MANAGED_HEADER + "".join("%s\n" % name for name in modules)


def driverctl_path(address):
    return "%s/pci-%s" % (DRIVERCTL_DIR, address)


def vfio_ids_by_file(root):
    """``{"/" + path: ids}`` of the modprobe.d files modprobe reads that set ``vfio-pci ids=``, ours included,
    in the order it reads them."""
    found = {}
    for path in modprobe.config_files(root):
        ids = modprobe_ids(_read_file(host_path(root, path)))
        if ids:
            found["/" + path] = ids
    return found


def foreign_vfio_ids(root):
    """``{path: ids}`` of the modprobe.d files other than ours that modprobe reads and that also set
    ``vfio-pci ids=``."""
    return {path: ids for path, ids in vfio_ids_by_file(root).items() if path != "/" + MODPROBE_CONF}


def driverctl_overrides(root):
    """``{address: driver}`` of every ``/etc/driverctl.d/pci-<address>`` file below ``root``."""
    overrides = {}
    for name in list_dir(host_path(root, DRIVERCTL_DIR)):
        if name.startswith("pci-"):
            text = _read_file(host_path(root, DRIVERCTL_DIR, name))
            if text is not None and text.strip():
                overrides[name[len("pci-"):]] = text.strip()
    return overrides


def boot_vfio_claims(root, devices, addresses, configured_cmdline=None):
    """``{address: why}``: those of ``addresses`` that a VFIO driver takes at the next boot, through the
    host's persistent configuration rather than the boot-time restore: a driverctl override naming vfio-pci
    or a variant driver, or the device's ``vendor:device`` in ``vfio-pci ids=`` of a modprobe.d file (this
    collection's or another; not when vfio-pci is built into the kernel, which ignores modprobe.d) or in
    ``vfio-pci.ids=`` on ``configured_cmdline`` (the arguments the boot configuration gives the next boot).
    A driverctl override naming another driver keeps the device on that driver, whatever the IDs.
    ``devices``: ``{address: PciDevice}``."""
    sources = []
    if not _vfio_builtin(root):
        sources = [("vfio-pci ids= in " + path, ids) for path, ids in vfio_ids_by_file(root).items()]
    booted = cmdline_ids(configured_cmdline)
    if booted:
        sources.append(("vfio-pci.ids= on the kernel command line", booted))
    overrides = driverctl_overrides(root)
    claims = {}
    for address in addresses:
        driver = overrides.get(address)
        if driver is not None:
            if is_vfio_driver(driver):
                claims[address] = "a driverctl override (/%s) binds it to %s" % (driverctl_path(address), driver)
            continue
        device = devices.get(address)
        if device is None or device.vendor_id is None:
            continue
        identifier = "%s:%s" % (device.vendor_id, device.device_id)
        for where, ids in sources:
            if identifier in ids:
                claims[address] = "its ID %s is in %s" % (identifier, where)
                break
    return claims


def vfio_enables_sriov(root, configured_cmdline=None):
    """Whether vfio-pci is configured to enable VFs on a PF it holds (its bool parameter ``enable_sriov``,
    off by default: without it the kernel refuses ``sriov_numvfs`` on such a PF). modprobe passes the
    command line's options after modprobe.d's, so the command line has the last word; a built-in vfio-pci
    reads the command line alone. A bare name sets it, and values are read as the kernel reads them."""
    setting = None
    if not _vfio_builtin(root):
        for path in modprobe.config_files(root):
            for name, equals, value in vfio_options(_read_file(host_path(root, path))):
                flag = (kernel_bool(value) if equals else True) if name == "enable_sriov" else None
                if flag is not None:
                    setting = flag
    flag = cmdline_flag(configured_cmdline or [], "vfio_pci.enable_sriov", bare=True)
    return bool(flag if flag is not None else setting)


def _vfio_builtin(root):
    """Whether vfio-pci is built into the running kernel (``modules.builtin``)."""
    builtin = read_builtin_modules(root, read_release(root))
    return bool(builtin) and "vfio_pci" in builtin


def _read_file(path):
    try:
        return read_file(path)
    except FileError as error:
        raise VfioError(str(error)) from error


def plan_file(root, path, new):
    """Compare ``root/path`` with the wanted content (None: the file should not exist)."""
    try:
        return plan_change(root, path, new)
    except GpuvirtError as error:
        raise VfioError(str(error)) from error


# ------------------------------------------------------------------------------------ host view


@dataclass
class HostView:
    """What the guards and the plan need, read once through the topology readers."""

    root: str
    devices: dict  # {address: PciDevice}
    records: dict  # {address: device dict (PciDevice.to_dict())}
    iommu_enabled: bool
    kernel: dict
    holders: dict  # vfio_holders(): {group or address: [{pid, comm}]}, .unreadable, .hidden, .complete
    critical: dict  # critical_devices(): {address: [reasons]}
    slots: dict
    displays: Displays  # the boot display (DRM) and the framebuffers each device drives
    architecture: str | None = None  # uname -m of the host's kernel, None when unknown
    iommu_vendor: str | None = None  # intel, amd, arm (IommuState.vendor), None when unknown
    mdevs: list = field(default_factory=list)  # mdev_info.mdevs(): [{uuid, parent, type, iommu_group}]


def read_host(root):
    """Read the PCI devices, IOMMU state, VFIO users and host-critical devices below ``root``."""
    try:
        check_root(root)
    except NotALinuxTree as error:
        raise VfioError(str(error)) from error
    kernel = read_kernel(root)
    iommu = read_iommu(root, kernel["cmdline"] or [])
    architecture = host_architecture(read_cpu(root), iommu)
    unsupported = unsupported_architecture(architecture)
    if unsupported:
        raise VfioError(unsupported)
    devices = read_pci_devices(root)
    name_devices(root, devices)
    return HostView(
        root=root,
        devices=devices,
        records={address: device.to_dict() for address, device in devices.items()},
        iommu_enabled=iommu.enabled,
        kernel=kernel,
        holders=vfio_holders(root),
        critical=critical_devices(root),
        slots=slot_index(devices),
        displays=read_displays(root, kernel["cmdline"] or []),
        architecture=architecture,
        iommu_vendor=iommu.vendor,
        mdevs=mdevs(root),
    )


@dataclass
class Member:
    """A device this run binds or releases, and why it is in the set."""

    address: str
    selected_by: list
    companion_of: str | None = None


def expand_members(view, selected, with_companions):
    """The selected devices plus, with ``with_companions``, their companions that the IOMMU group needs
    (:func:`pci.group_companions`: same group, or any when the groups are not known yet)."""
    members = {address: Member(address, list(selectors)) for address, selectors in selected.items()}
    if with_companions:
        for address in list(selected):
            for other in group_companions(view.devices, address, view.slots):
                if other not in members:
                    members[other] = Member(other, [], address)
    return {address: members[address] for address in sorted(members)}


def not_assignable(device):
    """Why ``device`` can never be handed to a VM, or None: a PCI bridge (vfio-pci only takes
    endpoint functions; unbinding pcieport from a port takes hotplug, AER and power management from
    every device behind it), or a host bridge (the CPU's own registers). A mistyped address
    (``00:01.0`` for ``01:00.0``) names one of these."""
    if device.is_bridge:
        return "is a PCI bridge: it stays with the host and vfio-pci cannot take it; select the device behind it"
    if device.is_host_bridge:
        return "is a host bridge: it stays with the host and cannot be handed to a VM; select a device instead"
    return None


# ----------------------------------------------------------------------------------------- guards

@dataclass
class Refusal:
    code: str
    device: str
    message: str

    def to_dict(self):
        return {"code": self.code, "device": self.device, "message": self.message}


def bind_refusals(view, members, changing):
    """Why binding ``members`` would hurt the host. ``changing``: the addresses whose driver this
    run changes now (a device already on vfio-pci and in use is not disturbed by a run)."""
    refusals = doubt_refusals(view, members)
    records = view.records
    for address in members:
        device = view.devices[address]
        for code, framebuffer in view.displays.console_uses(device):
            words = {"device": describe(records[address]), "framebuffer": framebuffer}
            refusals.append(Refusal(code, address, _CONSOLE_REFUSALS[code] % words))
    for address in members:
        controller = vmd_controller(view.devices, view.devices[address])
        if controller is not None:
            refusals.append(Refusal("behind_vmd", address, behind_vmd_reason(describe(records[address]), controller)))
    groups = {}
    for address in members:
        group = view.devices[address].iommu_group
        if group is not None:
            groups.setdefault(group, []).append(address)
    for group, bound in sorted(groups.items(), key=lambda item: int(item[0])):
        for other in group_endpoints(view.devices, group):
            if other in members:
                continue
            refusals.append(Refusal(
                "group_shared", bound[0],
                "IOMMU group %s of %s also holds %s, which is neither a function of the same card nor being "
                "bound: a VM can only get a whole group, so that device would leave the host too; add it to "
                "devices if the VM may have it, or move the card to a slot with its own group"
                % (group, ", ".join(bound), describe(records[other])),
            ))
    concerned = set(members)
    for group in groups:
        concerned.update(group_endpoints(view.devices, group))
    for address in sorted(concerned):
        for reason in view.critical.get(address, []):
            refusals.append(Refusal(
                "host_critical", address,
                "%s %s; binding %s to vfio-pci would take it from the host"
                % (describe(records[address]), reason,
                   "it" if address in members else "a device of its IOMMU group"),
            ))
    scanned = host_node_users(view, changing)
    refusals.extend(in_use_refusals(view, changing, "binding", scanned))
    carved = carved_refusals(view, changing)
    refusals.extend(carved)
    refusals.extend(recorded_carving_refusals(view, members, {refusal.device for refusal in carved}))
    refusals.extend(host_user_refusals(view, changing, scanned))
    return refusals


def _recorded_state(root):
    """The state file the boot-time restore replays (:mod:`hoststate`); one that cannot be read fails the run."""
    try:
        return hoststate.load_state(root)
    except hoststate.StateFileError as error:
        raise VfioError(str(error)) from error


def kept_by_sriov_refusals(view, changing):
    """``kept_by_sriov``: VFs among ``changing`` (being handed back) whose physical function the state
    file has the boot-time restore give every VF of to vfio-pci (``gpuvirt.host.sriov`` with ``vfio: true``):
    at the next boot such a VF is on vfio-pci again."""
    recorded = _recorded_state(view.root)["sriov"]
    refusals = []
    for address in changing:
        pf = view.devices[address].physfn
        entry = recorded.get(pf) if pf else None
        if isinstance(entry, dict) and entry.get("vfio"):
            refusals.append(Refusal(
                "kept_by_sriov", address,
                "%s is a VF of %s, whose VFs the boot-time restore gives to vfio-pci (gpuvirt.host.sriov with vfio: "
                "true, recorded in /%s): it would be on vfio-pci again at the next boot; hand the VFs back with "
                "gpuvirt.host.sriov (vfio: false)" % (describe(view.records[address]), pf, hoststate.STATE_PATH),
            ))
    return refusals


def recorded_carving_refusals(view, members, skip=()):
    """``carved``: members (``skip`` apart) that the state file has the boot-time restore carve: VFs to
    enable, mdevs to create, a vendor's record (a vGPU type on a VF). Bound to a VFIO driver at boot, such a
    device cannot be carved (vfio-pci enables no VFs, offers no mdev types), and the restore fails on it at
    every boot; this holds whether the device moves now or only at the next boot, and whether its VFs are
    there now or not."""
    state = _recorded_state(view.root)
    where = "/" + hoststate.STATE_PATH
    refusals = []
    for address in members:
        if address in skip:
            continue
        device = describe(view.records[address])
        entry = state["sriov"].get(address)
        count = entry.get("num_vfs") if isinstance(entry, dict) else None
        if isinstance(count, int) and not isinstance(count, bool) and count > 0:
            refusals.append(Refusal(
                "carved", address,
                "%s: the boot-time restore enables %d virtual function%s on it (%s), which it cannot do on vfio-pci, "
                "and what they carry is lost at every boot; set its VFs to 0 first (gpuvirt.host.sriov), which "
                "forgets them" % (device, count, "" if count == 1 else "s", where),
            ))
        children = sorted(uuid for uuid, mdev in state["mdevs"].items()
                          if isinstance(mdev, dict) and mdev.get("parent") == address)
        if children:
            refusals.append(Refusal(
                "carved", address,
                "%s: the boot-time restore creates the mediated device%s %s on it (%s), which it cannot do on "
                "vfio-pci; remove them first (gpuvirt.host.mdev, exclusive with no mdevs)"
                % (device, "" if len(children) == 1 else "s", ", ".join(children), where),
            ))
        for section in vendors.state_sections():
            if isinstance(state.get(section), dict) and address in state[section]:
                refusals.append(Refusal(
                    "carved", address,
                    "%s: the boot-time restore sets it up from its %s record (%s), which it cannot do on vfio-pci; "
                    "remove that first with the module that set it" % (device, section, where),
                ))
    return refusals


def host_node_users(view, changing):
    """``({node: address}, device_users.Users)``: the host nodes of the devices among ``changing`` and
    the processes holding them (one scan of ``/proc``, none when they have no nodes)."""
    nodes = {}
    storage = storage_index(view.root) if changing else None
    for address in changing:
        nodes.update((node, address) for node in host_nodes(view.root, view.devices[address], storage))
    return nodes, node_users(view.root, nodes)


def host_user_refusals(view, changing, scanned=None):
    """Devices among ``changing`` that host processes use through their host driver's nodes (a
    compositor's DRM card, a CUDA job's ``/dev/nvidiaN``): taking the driver away pulls the device from
    under them, or leaves the run waiting until they let go (see :mod:`device_users`). ``scanned``:
    :func:`host_node_users` output, read when not given."""
    nodes, users = scanned or host_node_users(view, changing)
    refusals = []
    for node, address in nodes.items():
        holders = users.get(node)
        if not holders:
            continue
        who = ", ".join("%s (pid %d)" % (user.get("comm") or "?", user["pid"]) for user in holders)
        refusals.append(Refusal(
            "host_users", address,
            "%s is in use on the host: %s %s %s open; taking it from %s now would pull it from under them, or "
            "leave this run waiting until they let go; stop them first, or bind it at the next boot only "
            "(runtime: false)"
            % (describe(view.records[address]), who, "holds" if len(holders) == 1 else "hold", node,
               view.devices[address].driver),
        ))
    return refusals


# Why the console uses a device (display.Displays.console_uses), as vfio-pci's guard says it.
_CONSOLE_REFUSALS = {
    "boot_vga": "%(device)s is the boot VGA device: the firmware framebuffer and the host console use it; binding "
    "it to vfio-pci takes the console away and vfio-pci cannot reserve its memory while the framebuffer holds it; "
    "pass through another GPU, or make this one secondary in the firmware setup",
    "boot_display": "%(device)s showed the boot sequence (the kernel marks its DRM card with boot_display): the "
    "host console uses it; binding it to vfio-pci takes the console away; pass through another GPU, or make this "
    "one secondary in the firmware setup",
    "console_framebuffer": "%(device)s drives the framebuffer %(framebuffer)s, which the text console draws on; "
    "binding it to vfio-pci would take the console away; unbind the console (or use another GPU) first",
    "firmware_framebuffer": "%(device)s holds the firmware's boot framebuffer (%(framebuffer)s in /proc/iomem) in "
    "its memory: vfio-pci cannot reserve that memory for a VM while the framebuffer is registered (\"BAR n: "
    "can't reserve\", and the guest's driver fails); boot with initcall_blacklist=sysfb_init to keep the kernel "
    "from registering it, or pass through another GPU",
}


def doubt_refusals(view, addresses):
    """Devices whose guard attributes (boot_vga, class, iommu_group, driver) read malformed: the
    guards cannot tell whether changing them is safe, so they refuse."""
    return [
        Refusal(
            "doubtful_attribute", address,
            "%s: %s; check the device (lspci -vv -s %s) and run again once sysfs reads correctly"
            % (describe(view.records[address]), doubt, address),
        )
        for address in addresses
        for doubt in view.devices[address].doubts
    ]


def carved_refusals(view, changing):
    """``carved``: devices among ``changing`` that carry virtual functions or mediated devices. Taking
    the driver away from an SR-IOV physical function disables its VFs (the driver's remove does), and
    from an mdev parent removes its mdevs; a VM using one loses it (or the unbind waits for the VM to
    let go). VMs hold the VFs' and mdevs' IOMMU groups, not the parent's, so :func:`in_use_refusals`
    does not see them."""
    refusals = []
    for address in changing:
        device = view.devices[address]
        driver = device.driver or "its driver"
        vfs = device.sriov.vfs if device.sriov is not None and device.sriov.num_vfs else []
        if vfs:
            refusals.append(Refusal(
                "carved", address,
                "%s has %d virtual function%s enabled (%s); taking it from %s disables them, and a VM using one "
                "loses it; set its VFs to 0 first (gpuvirt.host.sriov), or pass a VF through instead"
                % (describe(view.records[address]), len(vfs), "" if len(vfs) == 1 else "s", ", ".join(vfs), driver),
            ))
        children = sorted(mdev["uuid"] for mdev in view.mdevs if mdev.get("parent") == address)
        if children:
            refusals.append(Refusal(
                "carved", address,
                "%s is the parent of %d mediated device%s (%s); taking it from %s removes them, and a VM using "
                "one loses it (or the unbind waits until it lets go); remove them first (gpuvirt.host.mdev)"
                % (describe(view.records[address]), len(children), "" if len(children) == 1 else "s",
                   ", ".join(children), driver),
            ))
        # A vendor's own carving (a vGPU type set on a VF) goes with the driver too.
        for reason in vendors.in_use_reasons(device):
            refusals.append(Refusal(
                "carved", address,
                "%s: %s; taking it from %s removes it, and a VM using it loses it; remove it first with the module "
                "that set it" % (describe(view.records[address]), reason, driver),
            ))
    return refusals


def in_use_refusals(view, changing, action, scanned=None):
    """Devices among ``changing`` whose VFIO group (or iommufd device) a process holds open, and one
    ``in_use_unknown`` refusal for those whose users cannot be told (:func:`unknown_user_refusals`).
    ``scanned``: :func:`host_node_users` output, when the host nodes were scanned too."""
    refusals = [] if action == "binding" else doubt_refusals(view, changing)
    for address in changing:
        group = view.devices[address].iommu_group
        users = users_of(view.holders, group, address)
        if not users:
            continue
        who = ", ".join("%s (pid %d)" % (user.get("comm") or "?", user["pid"]) for user in users)
        refusals.append(Refusal(
            "in_use", address,
            "%s is in use: %s holds /dev/vfio/%s open (a running VM?); %s it now would pull it away from "
            "that process (or block until it lets go); stop the VM first"
            % (describe(view.records[address]), who, group, action),
        ))
    refusals.extend(unknown_user_refusals(view, changing, action, scanned))
    return refusals


def unknown_user_refusals(view, changing, action, scanned=None):
    """``in_use_unknown``: some process's open files could not be read, or ``/proc`` does not list every
    process (``hidepid``), so whether one holds a device among ``changing`` is not known. That concerns
    the devices a process could hold: through VFIO when their group file (``/dev/vfio/<group>``) or
    iommufd device (``vfio-dev``) exists, through their host nodes when ``scanned``
    (:func:`host_node_users`) found some. One refusal for them all, on the first (as ``group_shared``
    names a group's devices)."""
    unknown = set()
    scans = []
    if not getattr(view.holders, "complete", True):
        reachable = [address for address in changing if _vfio_reachable(view, address)]
        if reachable:
            unknown.update(reachable)
            scans.append(view.holders)
    if scanned is not None and not scanned[1].complete:
        unknown.update(scanned[0].values())
        scans.append(scanned[1])
    if not unknown:
        return []
    addresses = sorted(unknown)
    several = len(addresses) > 1
    return [Refusal(
        "in_use_unknown", addresses[0],
        "whether a running VM or a host process uses %s cannot be told: %s; %s %s now could pull %s from under "
        "such a process (or block until it lets go)"
        % (", ".join(describe(view.records[address]) for address in addresses),
           unknown_users_text(merged(scans)), action,
           "them" if several else "it", "them" if several else "it"),
    )]


def _vfio_reachable(view, address):
    """Whether a process could hold ``address`` through VFIO now: its group file or its iommufd
    device exists."""
    device = view.devices[address]
    if device.iommu_group is not None and os.path.lexists(host_path(view.root, "dev/vfio", device.iommu_group)):
        return True
    return os.path.isdir(device.path + "/vfio-dev")


# ----------------------------------------------------------------------------------- persistence

PERSISTENCE_METHODS = ("auto", "modprobe", "driverctl", "cmdline")
# Our part of each initramfs tool's configuration: the vfio modules, and the modprobe.d file
# for tools that do not copy modprobe.d on their own.
INITRAMFS_CONFIG = {
    "update-initramfs": "usr/share/initramfs-tools/modules.d/gpuvirt-vfio",
    "dracut": "etc/dracut.conf.d/gpuvirt-vfio.conf",
    "mkinitcpio": "etc/mkinitcpio.conf.d/gpuvirt-vfio.conf",
}


def find_program(module, root, name):
    """The program's path on this host (``root`` is ``/``) or inside the tree (as the tree sees it), else None."""
    host = host_model.Host(root, module)
    path = host.which(name)
    return host.display(path) if path and not host.live else path


def render_initramfs_config(tool, modules):
    """Our configuration file for ``tool`` that puts ``modules`` and the modprobe.d file in the image."""
    names = " ".join(modules)
    if tool == "update-initramfs":
        return MANAGED_HEADER + "".join("%s\n" % name for name in modules)
    if tool == "dracut":
        return MANAGED_HEADER + 'add_drivers+=" %s "\ninstall_items+=" /%s "\n' % (names, MODPROBE_CONF)
    return MANAGED_HEADER + "MODULES+=(%s)\nFILES+=(/%s)\n" % (names, MODPROBE_CONF)


def device_id(view, address):
    record = view.records[address]
    return "%s:%s" % (record["vendor_id"], record["device_id"])


def cmdline_ids(arguments):
    """The IDs of the last ``vfio-pci.ids=`` (or ``vfio_pci.ids=``) argument; the kernel keeps the last."""
    value = cmdline_value(arguments or [], "vfio_pci.ids")
    return [part.strip().lower() for part in (value or "").split(",") if part.strip()]


def id_refusals(view, members, added_ids, removed_ids, releasing):
    """IDs persisted for vfio-pci claim every device with that ID at boot. Refuse when an added ID
    would take a device that stays with the host, or a removed ID would release a device that
    stays with vfio-pci (unless a driverctl override keeps that one on a VFIO driver by its address)."""
    refusals = []
    kept_by_address = {
        address for address, driver in driverctl_overrides(view.root).items() if is_vfio_driver(driver)
    } if removed_ids else set()
    vfs_of = {}
    for address in members:
        if view.devices[address].physfn is not None:
            vfs_of.setdefault(view.devices[address].physfn, []).append(address)
    for address, record in view.records.items():
        identifier = "%s:%s" % (record["vendor_id"], record["device_id"])
        if address in members:
            continue
        if identifier in added_ids and record["driver"] != VFIO_DRIVER and address in vfs_of:
            refusals.append(Refusal(
                "id_shared", address,
                "binding %s by ID %s at boot would also give their physical function %s to vfio-pci (an SR-IOV "
                "GPU's VFs often have its ID); keep VFs on vfio-pci with gpuvirt.host.sriov (vfio: true), whose "
                "boot-time restore binds them by address once it has created them, or use persistent: false"
                % (", ".join(vfs_of[address]), identifier, describe(record)),
            ))
        elif identifier in added_ids and record["driver"] != VFIO_DRIVER:
            refusals.append(Refusal(
                "id_shared", address,
                "binding by ID %s at boot would also give %s to vfio-pci, and it is not being bound; use "
                "persistence: driverctl (per address) or add it to devices" % (identifier, describe(record)),
            ))
        elif identifier in removed_ids and record["driver"] == VFIO_DRIVER and address not in kept_by_address:
            released = [a for a in releasing if device_id(view, a) == identifier]
            refusals.append(Refusal(
                "id_shared", address,
                "%s is bound to vfio-pci at boot by its ID %s, like %s; handing back only %s would release it "
                "too at the next boot; release them together, or use persistence: driverctl"
                % (describe(record), identifier, ", ".join(released), "it" if len(released) == 1 else "them"),
            ))
    return refusals


class GuardError(VfioError):
    """One or more guards refused the run; nothing was changed."""

    def __init__(self, refusals):
        self.refusals = refusals
        super().__init__(
            "refusing to change anything: " + " | ".join(r.message for r in refusals)
            + " (force: true overrides these checks)",
            refusals=[r.to_dict() for r in refusals],
        )
