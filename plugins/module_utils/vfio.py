# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Handing PCI devices to vfio-pci or a variant VFIO driver: selectors, safety guards, runtime
binding and persistence.

Public API (readers take the host ``root``; only :func:`apply_file` and :class:`VfioPciRun` use
the Ansible module, for ``atomic_move`` and ``run_command``):

- :func:`parse_selector` ``(text) -> Selector`` and :func:`resolve_selectors`
  ``(selectors, devices) -> {address: [selector, ...]}``: a PCI address (short, 4- or 8-digit
  domain), ``vendor:device``, or a model name; never an index.
- :func:`read_driver`, :func:`read_override`, :func:`bind_device`, :func:`release_device`: the
  kernel's ``driver_override`` / ``unbind`` / ``drivers_probe`` protocol, read back every time,
  for vfio-pci and the variant VFIO drivers.
- :func:`read_host` ``(root) -> HostView``: devices, IOMMU state, VFIO holders and host-critical
  devices through the topology readers; :func:`framebuffer_devices` ``(root)``.
- :func:`expand_members` ``(view, selected, with_companions) -> {address: Member}``: selected devices
  plus the other functions of their slots in the same IOMMU group.
- :func:`bind_refusals`, :func:`in_use_refusals`, :func:`id_refusals` -> ``[Refusal]``: the guards.
- :func:`choose_drivers` ``(root, members, requested, aliases) -> {address: DriverChoice}``: vfio-pci
  or the variant VFIO driver (``alias vfio_pci:`` in modules.alias) each device gets;
  :func:`is_vfio_driver`, :func:`driver_key` (``-`` and ``_`` as one), :func:`module_of`.
- :func:`render_modprobe_conf`, :func:`modprobe_ids`, :func:`cmdline_ids`, :func:`driverctl_path`,
  :func:`render_initramfs_config`, :class:`FileChange`, :func:`plan_file`, :func:`apply_file`: the
  boot-time configuration that keeps the binding.
- :class:`VfioPciRun`: one module run (``plan()`` reads and guards, ``apply()`` changes,
  ``result()``); raises :class:`GuardError` or :class:`VfioError`.
"""

from __future__ import annotations

import errno
import os
import re
import time
from dataclasses import dataclass, field, replace

from ansible_collections.gpuvirt.host.plugins.module_utils import bootloader, initramfs
from ansible_collections.gpuvirt.host.plugins.module_utils import host as host_model
from ansible_collections.gpuvirt.host.plugins.module_utils.critical import critical_devices
from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError
from ansible_collections.gpuvirt.host.plugins.module_utils.files import (
    FileChange,
    FileError,
    apply_change,
    plan_change,
    read_file,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.iommu import read_iommu, users_of, vfio_holders
from ansible_collections.gpuvirt.host.plugins.module_utils.kernel import (
    cmdline_value,
    read_builtin_modules,
    read_cpu,
    read_kernel,
    read_vfio_aliases,
    vfio_variant_drivers,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.pci import (
    companions,
    name_devices,
    read_pci_devices,
    slot_index,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.selector import (
    SelectorError,
    describe,
    match_selector,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.selector import parse_selector as parse_device_selector
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import (
    PCI_DEVICES,
    PCI_DRIVERS,
    SysfsWriteError,
    host_path,
    link_name,
    list_dir,
    normalize_address,
    read_hex,
    read_text,
    write_text,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import (
    NotALinuxTree,
    check_root,
    group_endpoints,
    host_architecture,
    unsupported_architecture,
)

VFIO_DRIVER = "vfio-pci"
# Host drivers that would claim a GPU or one of its companion functions before vfio-pci does
# unless modprobe loads vfio-pci first.
SOFTDEP_DRIVERS = ("nvidia", "nouveau", "amdgpu", "radeon", "snd_hda_intel", "xhci_hcd")
MODPROBE_CONF = "etc/modprobe.d/gpuvirt-vfio.conf"
MODULES_LOAD_CONF = "etc/modules-load.d/gpuvirt-vfio.conf"
DRIVERCTL_DIR = "etc/driverctl.d"
DRIVERS_PROBE = "sys/bus/pci/drivers_probe"
MANAGED_HEADER = "# Managed by gpuvirt.host.vfio_pci; edits are overwritten.\n"

_OPTIONS_IDS = re.compile(r"^\s*options\s+vfio[-_]pci\s+(.*)$")
_FRAMEBUFFER = re.compile(r"fb[0-9]+\Z")


class VfioError(GpuvirtError):
    """A clear, user-facing failure: what, on which device or file, why, and what to do."""


# ------------------------------------------------------------------------------------ selectors


def parse_selector(text):
    """Classify a selector (:func:`selector.parse_selector`); raise :class:`VfioError` for an empty
    one or an index."""
    try:
        return parse_device_selector(text)
    except SelectorError as error:
        raise VfioError(str(error)) from error


def resolve_selectors(selectors, devices):
    """Map selectors to PCI addresses.

    ``devices``: ``{address: PciDevice}`` named from ``pci.ids``. Returns ``{address: [selector
    text, ...]}`` in address order. Every selector must match: an address that does not exist, an
    ID that matches nothing, or a name that matches nothing or two different models raises
    :class:`VfioError` listing every bad selector at once.
    """
    chosen = {}
    problems = []
    for text in selectors:
        try:
            selector = parse_selector(text)
            matches = _match(selector, devices)
        except VfioError as error:
            problems.append(str(error))
            continue
        for address in matches:
            chosen.setdefault(address, [])
            if selector.text not in chosen[address]:
                chosen[address].append(selector.text)
    if problems:
        raise VfioError("; ".join(problems) + "; nothing was changed")
    return {address: chosen[address] for address in sorted(chosen)}


def _match(selector, devices):
    try:
        matches = match_selector(selector, devices)
    except SelectorError as error:
        raise VfioError(str(error)) from error
    if matches:
        return matches
    if selector.kind == "address":
        raise VfioError(
            "no PCI device at %s (selector %r); list the host's devices with gpuvirt.host.topology_info"
            % (selector.value, selector.text)
        )
    if selector.kind == "id":
        raise VfioError("no PCI device has the ID %s (selector %r)" % (selector.value, selector.text))
    hint = "" if any(d.device_name for d in devices.values()) else (
        " (this host has no pci.ids database, so devices have no names; select by address or vendor:device)"
    )
    raise VfioError("no PCI device is named like %r%s" % (selector.text, hint))


# ------------------------------------------------------------------------------ runtime binding


def device_path(root, address, *parts):
    return host_path(root, PCI_DEVICES, address, *parts)


def read_driver(root, address):
    """The driver bound to the device (the ``driver`` link), or None."""
    return link_name(device_path(root, address, "driver"))


def read_override(root, address):
    """``driver_override``, or None when unset (the kernel shows ``(null)``)."""
    text = read_text(device_path(root, address, "driver_override"))
    return None if text in (None, "", "(null)") else text


def driver_loaded(root, driver=VFIO_DRIVER):
    return os.path.isdir(host_path(root, PCI_DRIVERS, driver))


def _settled_driver(root, address, settled, attempts, delay):
    """Read the ``driver`` link back until ``settled(driver)``; probing is synchronous, the
    retries cover slow udev hosts."""
    driver = read_driver(root, address)
    for _attempt in range(attempts):
        if settled(driver):
            break
        time.sleep(delay)
        driver = read_driver(root, address)
    return driver


def bind_device(root, address, driver=VFIO_DRIVER, attempts=10, delay=0.1):
    """Bind one device to ``driver`` (vfio-pci or a variant VFIO driver): set ``driver_override``,
    unbind, ``drivers_probe``, read back.

    Returns the driver now bound. A bind the kernel accepted but that left another driver (or
    none) is rolled back (the override put back as it was, the device reprobed) and raises
    :class:`VfioError`; so does a refused write, with the kernel's reason.
    """
    before = read_driver(root, address)
    if before == driver:
        return before
    previous = read_override(root, address)
    override_set = False
    try:
        if previous != driver:
            write_text(device_path(root, address, "driver_override"), driver)
            override_set = True
        if before is not None:
            write_text(host_path(root, PCI_DRIVERS, before, "unbind"), address)
        write_text(host_path(root, DRIVERS_PROBE), address)
    except SysfsWriteError as error:
        restored = _roll_back(root, address, override_set, previous)
        raise VfioError(
            "binding %s to %s failed: %s; %s" % (address, driver, error, restored)
        ) from error
    after = _settled_driver(root, address, lambda now: now == driver, attempts, delay)
    if after != driver:
        restored = _roll_back(root, address, override_set, previous)
        raise VfioError(
            "binding %s to %s was accepted by the kernel but did not take effect: its driver "
            "link reads %s; check 'dmesg' for a %s probe error (no IOMMU group, BAR reservation "
            "held by a framebuffer); %s" % (address, driver, after or "nothing (unbound)", driver, restored)
        )
    return after


def _roll_back(root, address, override_set, previous=None):
    """Undo a failed bind so the device is not left without a driver; describe the outcome.
    ``previous``: the override before the bind (a device moving from vfio-pci to a variant
    driver goes back to vfio-pci)."""
    try:
        if override_set:
            write_text(device_path(root, address, "driver_override"), previous or "\n")
        if read_driver(root, address) is None:
            write_text(host_path(root, DRIVERS_PROBE), address)
    except SysfsWriteError as error:  # the original failure matters more; report both
        return "undoing the override failed too (%s); the device may be left unbound" % error
    driver = read_driver(root, address)
    return "the override was undone and the device is now bound to %s" % (driver or "no driver")


def release_device(root, address, variants=(), attempts=10, delay=0.1):
    """Hand a device back: clear ``driver_override``, unbind it from vfio-pci or the variant VFIO
    driver holding it, take its ID out of vfio-pci's dynamic ID table, ``drivers_probe``, read back.

    After a boot that bound the device through ``options vfio-pci ids=`` (or ``vfio-pci.ids=``)
    the ID sits in vfio-pci's table and vfio-pci, loaded first, would win the reprobe again; the
    table is runtime state, rebuilt at the next boot from the configuration. ``variants``: the
    variant VFIO drivers of the kernel (:func:`is_vfio_driver`). Returns the driver bound
    afterwards (the host driver, or None when no driver claims it).
    """
    try:
        if read_override(root, address) is not None:
            write_text(device_path(root, address, "driver_override"), "\n")
        driver = read_driver(root, address)
        if is_vfio_driver(driver, variants):
            write_text(host_path(root, PCI_DRIVERS, driver, "unbind"), address)
            if driver_loaded(root, VFIO_DRIVER):
                _remove_dynamic_id(root, address)
            write_text(host_path(root, DRIVERS_PROBE), address)
    except SysfsWriteError as error:
        raise VfioError("handing %s back to its host driver failed: %s" % (address, error)) from error
    after = _settled_driver(root, address, lambda now: not is_vfio_driver(now, variants), attempts, delay)
    if is_vfio_driver(after, variants):
        raise VfioError(
            "unbinding %s from %s was accepted by the kernel but it is still bound to %s; "
            "check 'dmesg' and whether a process holds the device" % (address, driver, after)
        )
    return after


def _remove_dynamic_id(root, address):
    vendor = read_hex(device_path(root, address, "vendor"), 4)
    device = read_hex(device_path(root, address, "device"), 4)
    if vendor is None or device is None:
        return
    try:
        write_text(host_path(root, PCI_DRIVERS, VFIO_DRIVER, "remove_id"), "%s %s" % (vendor, device))
    except SysfsWriteError as error:
        if error.errno != errno.ENODEV:  # ENODEV: the ID was not in the table
            raise


# ------------------------------------------------------------------------------ driver choice


def driver_key(name):
    """Driver and module names compare with ``-`` and ``_`` as one (``vfio-pci`` = ``vfio_pci``)."""
    return name.strip().replace("-", "_")


def is_vfio_driver(name, variants=()):
    """vfio-pci, one of ``variants`` (the kernel's variant VFIO drivers), or a driver named like one
    (every in-tree variant is ``<something>_vfio_pci``, which also covers one that another kernel
    release listed)."""
    if not name:
        return False
    key = driver_key(name)
    return key == "vfio_pci" or key.endswith("_vfio_pci") or key in {driver_key(v) for v in variants}


def module_of(driver):
    """The module ``modprobe`` loads for a driver: vfio-pci as the module has always been named
    here, a variant by its module name (its registered driver name)."""
    return VFIO_DRIVER if driver_key(driver) == "vfio_pci" else driver_key(driver)


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


def modprobe_ids(text):
    """The IDs of every ``options vfio-pci ids=...`` line in a modprobe.d file's text."""
    ids = []
    for line in (text or "").splitlines():
        match = _OPTIONS_IDS.match(line)
        if not match:
            continue
        for option in match.group(1).split():
            if option.startswith("ids="):
                ids.extend(part.strip().lower() for part in option[4:].split(",") if part.strip())
    return ids


def render_modprobe_conf(ids):
    """The modprobe.d file that binds ``ids`` to vfio-pci at boot, or None when there are none."""
    ids = sorted(set(ids))
    if not ids:
        return None
    lines = [
        MANAGED_HEADER,
        "# Devices with these vendor:device IDs are claimed by vfio-pci at boot.\n",
        "options vfio-pci ids=%s\n" % ",".join(ids),
        "# Load vfio-pci before the host drivers that would otherwise claim them first.\n",
    ]
    lines.extend("softdep %s pre: vfio-pci\n" % driver for driver in SOFTDEP_DRIVERS)
    return "".join(lines)


def render_modules_load(modules=(VFIO_DRIVER,)):
    """modules-load.d content that loads ``modules`` at boot: vfio-pci even when no host driver
    pulls it in, and variant VFIO drivers, which no ``pci:`` alias ever autoloads. None: no file."""
    if not modules:
        return None
    return MANAGED_HEADER + "".join("%s\n" % name for name in modules)


def driverctl_path(address):
    return "%s/pci-%s" % (DRIVERCTL_DIR, address)


def foreign_vfio_ids(root):
    """``{path: ids}`` of modprobe.d files other than ours that also set ``vfio-pci ids=``."""
    found = {}
    ours = os.path.basename(MODPROBE_CONF)
    for directory in ("etc/modprobe.d", "usr/lib/modprobe.d", "lib/modprobe.d", "run/modprobe.d"):
        path = host_path(root, directory)
        try:
            names = sorted(os.listdir(path))
        except OSError:
            continue
        for name in names:
            if not name.endswith(".conf") or (directory == "etc/modprobe.d" and name == ours):
                continue
            ids = modprobe_ids(_read_file(os.path.join(path, name)))
            if ids:
                found["/%s/%s" % (directory, name)] = ids
    return found


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
    holders: dict  # vfio_holders(): {group or address: [{pid, comm}]}
    critical: dict  # critical_devices(): {address: [reasons]}
    slots: dict
    framebuffers: dict  # {address: [fbN]}


def read_host(root):
    """Read the PCI devices, IOMMU state, VFIO users and host-critical devices below ``root``."""
    try:
        check_root(root)
    except NotALinuxTree as error:
        raise VfioError(str(error)) from error
    kernel = read_kernel(root)
    iommu = read_iommu(root, kernel["cmdline"] or [])
    unsupported = unsupported_architecture(host_architecture(read_cpu(root), iommu))
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
        framebuffers=framebuffer_devices(root),
    )


def framebuffer_devices(root):
    """``{PCI address: [fbN, ...]}`` for framebuffers a PCI device drives (fbdev drivers and the
    fbdev emulation of DRM drivers). The text console (fbcon) draws on these; firmware
    framebuffers (efifb, simpledrm) belong to a platform device and show up as the boot VGA."""
    found = {}
    base = host_path(root, "sys/class/graphics")
    for name in list_dir(base):
        if not _FRAMEBUFFER.match(name):  # fb0, fb1, ...; not fbcon
            continue
        owner = os.path.basename(os.path.realpath(os.path.join(base, name, "device")))
        if normalize_address(owner) == owner:
            found.setdefault(owner, []).append(name)
    return found


@dataclass
class Member:
    """A device this run binds or releases, and why it is in the set."""

    address: str
    selected_by: list
    companion_of: str | None = None


def expand_members(view, selected, with_companions):
    """The selected devices plus, with ``with_companions``, the other functions of their slots
    that the IOMMU group needs (same group, or any when the groups are not known yet)."""
    members = {address: Member(address, list(selectors)) for address, selectors in selected.items()}
    if with_companions:
        for address in list(selected):
            group = view.devices[address].iommu_group
            for other in companions(view.devices, address, view.slots):
                other_group = view.devices[other].iommu_group
                if other in members or (group is not None and other_group not in (None, group)):
                    continue
                members[other] = Member(other, [], address)
    return {address: members[address] for address in sorted(members)}


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
        if device.boot_vga:
            refusals.append(Refusal(
                "boot_vga", address,
                "%s is the boot VGA device: the firmware framebuffer and the host console use it; binding it "
                "to vfio-pci takes the console away and vfio-pci cannot reserve its memory while the "
                "framebuffer holds it; pass through another GPU, or make this one secondary in the firmware "
                "setup" % describe(records[address]),
            ))
        for framebuffer in view.framebuffers.get(address, []):
            refusals.append(Refusal(
                "console_framebuffer", address,
                "%s drives the framebuffer %s, which the text console draws on; binding it to vfio-pci "
                "would take the console away; unbind the console (or use another GPU) first"
                % (describe(records[address]), framebuffer),
            ))
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
    refusals.extend(in_use_refusals(view, changing, "binding"))
    return refusals


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


def in_use_refusals(view, changing, action):
    """Devices among ``changing`` whose VFIO group (or iommufd device) a process holds open."""
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
    return refusals


# ----------------------------------------------------------------------------------- persistence

PERSISTENCE_METHODS = ("auto", "modprobe", "driverctl", "cmdline", "none")
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
    stays with vfio-pci."""
    refusals = []
    for address, record in view.records.items():
        identifier = "%s:%s" % (record["vendor_id"], record["device_id"])
        if address in members:
            continue
        if identifier in added_ids and record["driver"] != VFIO_DRIVER:
            refusals.append(Refusal(
                "id_shared", address,
                "binding by ID %s at boot would also give %s to vfio-pci, and it is not being bound; use "
                "persistent: driverctl (per address) or add it to devices" % (identifier, describe(record)),
            ))
        elif identifier in removed_ids and record["driver"] == VFIO_DRIVER:
            released = [a for a in releasing if device_id(view, a) == identifier]
            refusals.append(Refusal(
                "id_shared", address,
                "%s is bound to vfio-pci at boot by its ID %s, like %s; handing back only %s would release it "
                "too at the next boot; release them together, or use persistent: driverctl"
                % (describe(record), identifier, ", ".join(released), "it" if len(released) == 1 else "them"),
            ))
    return refusals


@dataclass
class DriverctlChange:
    """One ``/etc/driverctl.d/pci-<address>`` file to write or remove, by driverctl on a host."""

    address: str
    file: FileChange
    command: list | None  # argv run on the host; None: the file is written directly (image tree)


@dataclass
class PersistencePlan:
    method: str
    files: list  # FileChange written directly
    driverctl: list  # DriverctlChange
    boot_plan: object | None  # bootloader.BootPlan for vfio-pci.ids on the command line
    ids_before: list
    ids_after: list
    refusals: list
    warnings: list

    @property
    def changed(self):
        return (
            any(change.changed for change in self.files)
            or any(entry.file.changed for entry in self.driverctl)
            or bool(self.boot_plan is not None and self.boot_plan.changed)
        )

    def diffs(self):
        result = [change.diff() for change in self.files if change.changed]
        result += [entry.file.diff() for entry in self.driverctl if entry.file.changed]
        if self.boot_plan is not None:
            result += [edit.diff() for edit in self.boot_plan.edits]
        return result

    def paths_changed(self):
        paths = [change.display_path for change in self.files if change.changed]
        paths += [entry.file.display_path for entry in self.driverctl if entry.file.changed]
        if self.boot_plan is not None:
            paths += [edit.display_path for edit in self.boot_plan.edits]
        return paths


@dataclass
class InitramfsPlan:
    tool: str | None = None
    releases: list = field(default_factory=list)
    modules: list = field(default_factory=list)
    config: FileChange | None = None
    regenerate: bool = False
    commands: list = field(default_factory=list)
    run: bool = False
    images: list = field(default_factory=list)
    verified: bool = False

    @property
    def changed(self):
        return self.regenerate or bool(self.config is not None and self.config.changed)

    def to_dict(self):
        return {
            "tool": self.tool,
            "releases": list(self.releases),
            "modules": list(self.modules),
            "regenerated": self.regenerate and self.run,
            "regenerate_required": self.regenerate and not self.run,
            "images": list(self.images),
            "verified": self.verified,
        }


# -------------------------------------------------------------------------------------------- run


class GuardError(VfioError):
    """One or more guards refused the run; nothing was changed."""

    def __init__(self, refusals):
        self.refusals = refusals
        super().__init__(
            "refusing to change anything: " + " | ".join(r.message for r in refusals)
            + " (force: true overrides these checks)",
            refusals=[r.to_dict() for r in refusals],
        )


class VfioPciRun:
    """One run of the vfio_pci module: read, plan, guard, then (outside check mode) apply."""

    def __init__(self, module):
        self.module = module
        params = module.params
        self.root = params["root"]
        self.state = params["state"]
        self.selectors = params["devices"]
        self.with_companions = params["companions"]
        self.runtime = params["runtime"]
        self.persistent = params["persistent"]
        self.regenerate_initramfs = params["initramfs"]
        self.force = params["force"]
        self.driver = params.get("driver") or "auto"
        self.host = host_model.is_live_root(self.root)
        self.warnings = []
        self.commands = []
        self.members = {}
        self.before = {}
        self.after = {}
        self.view = None
        self.applied = False
        self.choices = {}
        self.variants = []
        self.kept_by = {}

    # -- plan -------------------------------------------------------------------------------------

    def plan(self):
        view = self.view = read_host(self.root)
        selected = resolve_selectors(self.selectors, view.devices)
        self.members = expand_members(view, selected, self.with_companions)
        release = view.kernel.get("release")
        aliases = read_vfio_aliases(self.root, release)
        self.variants = sorted({driver for _pattern, driver in aliases})
        requested = self.driver if self.state == "present" else "auto"
        self.choices = choose_drivers(self.root, self.members, requested, aliases, release)
        self.before = {address: view.devices[address].driver for address in self.members}
        if self.state == "present":
            wanted = [a for a in self.members if self.before[a] != self.choices[a].driver]
        else:
            wanted = [
                a for a in self.members
                if is_vfio_driver(self.before[a], self.variants)
                or is_vfio_driver(view.devices[a].driver_override, self.variants)
            ]
        self.runtime_skipped = None
        if not self.runtime:
            self.changing = []
            if wanted:
                self.runtime_skipped = "runtime: false"
        elif self.state == "present" and wanted and not view.iommu_enabled:
            self.changing = []
            self.runtime_skipped = (
                "the IOMMU is off in the running kernel, so no VFIO driver can take %s now; the boot-time "
                "configuration binds %s at the next boot once the IOMMU is on (gpuvirt.host.iommu or "
                "gpuvirt.host.kernel_cmdline with intel_iommu=on / amd_iommu=on)"
                % (", ".join(wanted), "them" if len(wanted) > 1 else "it")
            )
        else:
            self.changing = wanted
        if self.state == "present":
            refusals = bind_refusals(view, self.members, self.changing)
            if not view.iommu_enabled:
                self.warnings.append(
                    "the IOMMU is off, so the IOMMU groups are not known yet and could not be checked; run "
                    "this again after the reboot to check them and bind the devices now"
                )
        else:
            refusals = in_use_refusals(view, self.changing, "unbinding")
        self.persistence = self._plan_persistence(view)
        refusals.extend(self.persistence.refusals)
        self.warnings.extend(self.persistence.warnings)
        if refusals:
            if not self.force:
                raise GuardError(refusals)
            self.warnings.extend("force: true: going ahead although " + r.message for r in refusals)
        self.refusals = refusals
        needed = {self.choices[a].driver for a in self.changing} if self.state == "present" else set()
        self.load_drivers = sorted((d for d in needed if not driver_loaded(self.root, d)),
                                   key=lambda d: (d != VFIO_DRIVER, d))
        if self.load_drivers and not self.host:
            several = len(self.load_drivers) > 1
            raise VfioError(
                "the %s driver%s not loaded below %s (no %s) and modules can only be loaded on this host's /; "
                "nothing was changed"
                % (", ".join(self.load_drivers), "s are" if several else " is", self.root,
                   ", ".join("sys/bus/pci/drivers/" + driver for driver in self.load_drivers))
            )
        self.initramfs = self._plan_initramfs(view)

    def _method(self, view):
        method = self.persistent
        builtin = view.kernel.get("vfio_builtin")
        if method == "auto":
            return "cmdline" if builtin else "modprobe"
        if method == "modprobe" and builtin:
            raise VfioError(
                "vfio-pci is built into kernel %s (modules.builtin), so modprobe.d options for it are ignored; "
                "use persistent: cmdline (or auto), or driverctl" % view.kernel.get("release")
            )
        return method

    def _plan_persistence(self, view):
        method = "none" if self.persistent == "none" else self._method(view)
        plan = PersistencePlan(method, [], [], None, [], [], [], [])
        self.kept_by = {address: method for address in self.members}
        if method == "none":
            return plan
        by_override, by_id = self._split_by_persistence(method)
        self.kept_by.update({address: "driverctl" for address in by_override})
        member_ids = sorted({device_id(view, a) for a in (by_id if self.state == "present" else self.members)})
        modprobe = plan_file(self.root, MODPROBE_CONF, None)
        plan.ids_before = modprobe_ids(modprobe.old)
        modprobe = replace(modprobe, new=modprobe.old)
        cmdline_before = self._cmdline_ids(method)
        cmdline_after = cmdline_before
        releasing = list(self.members) if self.state == "absent" else []

        if self.state == "present":
            dropped = self._ids_moving_to_variants(view, by_override, by_id)
            if method == "modprobe":
                plan.ids_after = sorted((set(plan.ids_before) | set(member_ids)) - dropped)
                modprobe = replace(modprobe, new=render_modprobe_conf(plan.ids_after))
                added = set(member_ids) - set(plan.ids_before)
                plan.refusals += id_refusals(view, self.members, set(member_ids), set(), [])
                if added:
                    for path, ids in foreign_vfio_ids(self.root).items():
                        plan.warnings.append(
                            "%s also sets vfio-pci ids=%s; modprobe keeps only one ids= value, so one of the "
                            "two lists is ignored: merge them into %s" % (path, ",".join(ids), "/" + MODPROBE_CONF)
                        )
            elif method == "cmdline":
                cmdline_after = sorted((set(cmdline_before) | set(member_ids)) - dropped)
                plan.ids_before, plan.ids_after = cmdline_before, cmdline_after
                plan.refusals += id_refusals(view, self.members, set(member_ids), set(), [])
                if cmdline_after != sorted(cmdline_before):
                    plan.boot_plan = self._boot_plan(["vfio-pci.ids=" + ",".join(cmdline_after)], [])
            plan.warnings += self._id_claim_warnings(view, by_override, set(plan.ids_after))
            overrides = {address: self.choices[address].driver for address in by_override}
            # A device kept by ID must not keep an earlier run's override for a variant driver.
            overridden = self._driverctl_overrides()
            overrides.update({
                address: None for address in by_id
                if is_vfio_driver(overridden.get(address), self.variants) and overridden[address] != VFIO_DRIVER
            })
            why = None
            if method != "driverctl" and by_override:
                why = "keeping %s on %s across reboots" % (
                    ", ".join(by_override), ", ".join(sorted({self.choices[a].driver for a in by_override})))
            plan.driverctl = self._plan_overrides(overrides, why)
        else:
            removed_ids = set(member_ids)
            plan.ids_after = [i for i in plan.ids_before if i not in removed_ids]
            if plan.ids_after != plan.ids_before:
                modprobe = replace(modprobe, new=render_modprobe_conf(plan.ids_after))
            cmdline_after = [i for i in cmdline_before if i not in removed_ids]
            if cmdline_after != cmdline_before:
                plan.boot_plan = self._boot_plan(
                    ["vfio-pci.ids=" + ",".join(cmdline_after)] if cmdline_after else [],
                    [] if cmdline_after else ["vfio-pci.ids"],
                )
            touched = removed_ids & (set(plan.ids_before) | set(cmdline_before))
            plan.refusals += id_refusals(view, self.members, set(), touched, releasing)
            overridden = self._driverctl_overrides()
            gone = [a for a in self.members if is_vfio_driver(overridden.get(a), self.variants)]
            self.kept_by.update({address: "driverctl" for address in gone})
            plan.driverctl = self._plan_overrides({address: None for address in gone}, None)
        plan.files.append(self._plan_modules_load(view, plan, cmdline_after))
        if plan.files[-1].old is None and plan.files[-1].new is None:
            plan.files.pop()
        plan.files.insert(0, modprobe)
        return plan

    def _split_by_persistence(self, method):
        """``(by_override, by_id)``: the members kept by a driverctl override and those kept by
        vfio-pci's ID list. Variant drivers bind only through ``driver_override``, never by ID:
        with ``auto`` they get overrides, with an ID method explicitly asked for the run fails."""
        if self.state == "absent":
            return [], list(self.members)
        if method == "driverctl":
            return list(self.members), []
        variant = [a for a in self.members if self.choices[a].variant]
        if variant and self.persistent != "auto":
            raise VfioError(
                "%s get%s the variant VFIO driver %s, which binds only through driver_override and never by "
                "vendor:device ID, so persistent: %s (vfio-pci ids=) would give %s plain vfio-pci at boot; use "
                "persistent: auto or driverctl (a per-address driverctl override plus the module in /%s), "
                "driver: vfio-pci for plain vfio-pci, or persistent: none; nothing was changed"
                % (", ".join(variant), "s" if len(variant) == 1 else "",
                   ", ".join(sorted({self.choices[a].driver for a in variant})), self.persistent,
                   "it" if len(variant) == 1 else "them", MODULES_LOAD_CONF)
            )
        return variant, [a for a in self.members if a not in variant]

    def _ids_moving_to_variants(self, view, by_override, by_id):
        """IDs of devices now kept on a variant driver by an override, which vfio-pci's ID list no
        longer needs: no member kept by ID and no other device on vfio-pci has them."""
        needed = {device_id(view, a) for a in by_id}
        needed.update(device_id(view, a) for a, record in view.records.items()
                      if a not in self.members and record["driver"] == VFIO_DRIVER)
        return {device_id(view, a) for a in by_override} - needed

    def _id_claim_warnings(self, view, by_override, ids):
        """A device moving to a variant driver whose ID vfio-pci's list keeps for another device."""
        return [
            "%s gets %s through a driverctl override, but its ID %s stays in vfio-pci's boot-time ID list "
            "(kept for the devices that need it): vfio-pci claims it first at boot until the override moves it"
            % (address, self.choices[address].driver, device_id(view, address))
            for address in by_override if device_id(view, address) in ids
        ]

    def _plan_overrides(self, overrides, why):
        """``{address: driver or None}`` -> [DriverctlChange]: write (set-override) or remove
        (unset-override) ``/etc/driverctl.d/pci-<address>``, only where it differs."""
        entries = []
        for address, driver in overrides.items():
            change = plan_file(self.root, driverctl_path(address), None if driver is None else driver + "\n")
            if change.old is not None and driver is not None and change.old.strip() == driver:
                continue
            if change.old is None and driver is None:
                continue
            command = None
            if self.host or driver is not None:
                program = self._driverctl_program(why)
                if self.host:
                    command = [program, "--noprobe"] + (
                        ["set-override", address, driver] if driver is not None else ["unset-override", address]
                    )
            entries.append(DriverctlChange(address, change, command))
        return entries

    def _plan_modules_load(self, view, plan, cmdline_after):
        """Our modules-load.d file after the run: vfio-pci when something binds to it at boot and it
        is a module; every variant driver a driverctl override names, as nothing else loads it."""
        overrides = self._driverctl_overrides()
        for entry in plan.driverctl:
            if entry.file.new is None:
                overrides.pop(entry.address, None)
            else:
                overrides[entry.address] = entry.file.new.strip()
        builtin = read_builtin_modules(self.root, view.kernel.get("release")) or set()
        modules = []
        if not view.kernel.get("vfio_builtin") and (
            plan.ids_after or cmdline_after or any(driver_key(d) == "vfio_pci" for d in overrides.values())
        ):
            modules.append(VFIO_DRIVER)
        modules += sorted({
            module_of(driver) for driver in overrides.values()
            if is_vfio_driver(driver, self.variants) and driver_key(driver) != "vfio_pci"
            and driver_key(driver) not in builtin
        })
        return plan_file(self.root, MODULES_LOAD_CONF, render_modules_load(modules))

    def _cmdline_ids(self, method):
        """vfio-pci.ids on the configured command line; only read when this run may change them
        (persistent: cmdline, or handing devices back, which cleans every method)."""
        if method != "cmdline" and self.state == "present":
            return []
        try:
            probe = bootloader.plan(self.module, self.root, "auto", [], [])
        except bootloader.BootloaderError as error:
            if method == "cmdline":
                raise VfioError("persistent: cmdline needs the boot configuration: %s" % error) from error
            return []
        return cmdline_ids(probe.configured_before)

    def _boot_plan(self, present, absent):
        try:
            wanted, unwanted = bootloader.validate_arguments(present, absent)
            return bootloader.plan(self.module, self.root, "auto", wanted, unwanted)
        except (bootloader.ArgumentError, bootloader.BootloaderError) as error:
            raise VfioError("cannot plan vfio-pci.ids on the kernel command line: %s" % error) from error

    def _driverctl_program(self, why=None):
        program = find_program(self.module, self.root, "driverctl")
        if program is None:
            raise VfioError(
                "%s needs driverctl installed (its udev rule applies the overrides at boot); install the "
                "driverctl package, or use %s"
                % (why or "persistent: driverctl",
                   "persistent: modprobe" if not why else "persistent: none, or driver: vfio-pci with persistent: auto")
            )
        return program

    def _driverctl_overrides(self):
        """``{address: driver}`` of every ``/etc/driverctl.d/pci-<address>`` file."""
        overrides = {}
        for name in list_dir(host_path(self.root, DRIVERCTL_DIR)):
            if name.startswith("pci-"):
                text = _read_file(host_path(self.root, DRIVERCTL_DIR, name))
                if text is not None and text.strip():
                    overrides[name[len("pci-"):]] = text.strip()
        return overrides

    def _plan_initramfs(self, view):
        """Our initramfs configuration and whether the image must be rebuilt: only when the
        modprobe.d file or that configuration changes (both are inputs of the image)."""
        plan = InitramfsPlan()
        modprobe = self.persistence.files[0] if self.persistence.files else None
        if modprobe is None or self.persistence.method == "none" or not self.regenerate_initramfs:
            return plan
        if modprobe.old is None and modprobe.new is None:
            return plan
        try:
            plan.tool = initramfs.detect_tool(self.root)
        except initramfs.InitramfsError as error:
            if modprobe.changed:
                self.warnings.append("%s; the modprobe.d file only takes effect once vfio-pci loads from the "
                                     "root filesystem" % error)
            return plan
        kernels = [release for release, _image, initrd in bootloader.installed_kernels(self.root) if initrd]
        plan.releases = kernels or [r for r in [view.kernel.get("release")] if r]
        modules = None
        for release in plan.releases:
            try:
                names = initramfs.vfio_modules(release, self.root)
            except initramfs.InitramfsError:
                continue
            # Only what every kernel has: a module missing from one release breaks its build,
            # and vfio_pci pulls vfio_virqfd in on the kernels that still have it.
            modules = names if modules is None else [name for name in modules if name in names]
        plan.modules = modules or list(initramfs.VFIO_MODULES)
        wanted = render_initramfs_config(plan.tool, plan.modules) if modprobe.new is not None else None
        plan.config = plan_file(self.root, INITRAMFS_CONFIG[plan.tool], wanted)
        if not (modprobe.changed or plan.config.changed) or not plan.releases:
            return plan
        plan.regenerate = True
        plan.commands = [initramfs.regenerate_command(self.root, release, plan.tool) for release in plan.releases]
        plan.run = self.host
        if not self.host:
            self.warnings.append(
                "%s is not this host's root: rebuild its initramfs inside it (%s)"
                % (self.root, "; ".join(" ".join(c) for c in plan.commands))
            )
        return plan

    # -- apply ------------------------------------------------------------------------------------

    @property
    def changed(self):
        return bool(self.changing) or bool(self.load_drivers) or self.persistence.changed or self.initramfs.changed

    def apply(self):
        """Change the host. Raises :class:`VfioError` on failure; ``self.applied`` tells whether
        something had been changed by then."""
        for driver in self.load_drivers:
            self._run([self._program("modprobe"), module_of(driver)], "loading the %s module" % module_of(driver))
            self.applied = True
            if not driver_loaded(self.root, driver):
                raise VfioError(
                    "modprobe %s succeeded but /sys/bus/pci/drivers/%s does not exist; check 'dmesg' (Secure Boot "
                    "lockdown, a kernel without VFIO)" % (module_of(driver), driver)
                )
        for address in self.changing:
            self.applied = True
            if self.state == "present":
                self.after[address] = bind_device(self.root, address, self.choices[address].driver)
            else:
                self.after[address] = release_device(self.root, address, self.variants)
        for change in self.persistence.files:
            if change.changed:
                self.applied = True
                apply_change(change)
        for entry in self.persistence.driverctl:
            if not entry.file.changed:
                continue
            self.applied = True
            if entry.command is None:
                apply_change(entry.file)
                continue
            self._run(entry.command, "driverctl for %s" % entry.address)
            now = _read_file(entry.file.full_path)
            if (now or "").strip() != (entry.file.new or "").strip():
                raise VfioError(
                    "%s ran but %s reads %r afterwards, expected %r"
                    % (" ".join(entry.command), entry.file.display_path, now, entry.file.new)
                )
        if self.persistence.boot_plan is not None and self.persistence.boot_plan.changed:
            self.applied = True
            try:
                bootloader.apply(self.module, self.persistence.boot_plan)
            except bootloader.BootloaderError as error:
                raise VfioError(str(error)) from error
            self.warnings.extend(self.persistence.boot_plan.warnings)
        self._apply_initramfs()

    def _apply_initramfs(self):
        plan = self.initramfs
        if plan.config is not None and plan.config.changed:
            self.applied = True
            apply_change(plan.config)
        if not plan.run:
            return
        modprobe = self.persistence.files[0]
        try:
            for release in plan.releases:
                self.commands.append(initramfs.regenerate(self.module, self.root, release, plan.tool))
            for release in plan.releases:
                self._verify_image(plan, release, modprobe)
        except (initramfs.InitramfsError, VfioError) as error:
            # Put the inputs back so that the next run sees the change again and rebuilds.
            restored = [change for change in (modprobe, plan.config) if change is not None and change.changed]
            for change in restored:
                apply_change(change.reverse())
            raise VfioError(
                "%s; %s put back as before so that the next run rebuilds the initramfs"
                % (error, " and ".join(change.display_path for change in restored) or "nothing was")
            ) from error
        plan.verified = True

    def _verify_image(self, plan, release, modprobe):
        if modprobe.new is not None:
            check = initramfs.verify_image(self.module, self.root, release, plan.modules, ["/" + MODPROBE_CONF],
                                           plan.tool)
            plan.images.append(check.image)
            if not check.ok:
                raise VfioError(
                    "the rebuilt initramfs %s lacks %s; vfio-pci would not claim the devices before their host "
                    "drivers at boot" % (check.image, ", ".join(check.missing_modules + check.missing_files))
                )
            return
        image, paths = initramfs.list_image(self.module, self.root, release, plan.tool)
        plan.images.append(image)
        if MODPROBE_CONF in paths or "usr/" + MODPROBE_CONF in paths:
            raise VfioError("the rebuilt initramfs %s still holds /%s" % (image, MODPROBE_CONF))

    def _program(self, name):
        program = find_program(self.module, self.root, name)
        if program is None:
            raise VfioError("%s was not found on this host" % name)
        return program

    def _run(self, argv, what):
        self.commands.append(argv)
        rc, out, err = self.module.run_command(argv, environ_update={"LC_ALL": "C", "LANG": "C"})
        if rc != 0:
            raise VfioError(
                "%s failed: %s exited with %d: %s" % (what, " ".join(argv), rc, (err or out).strip() or "no output")
            )
        return out

    # -- result -----------------------------------------------------------------------------------

    def devices_result(self):
        result = {}
        for address, member in self.members.items():
            record = self.view.records[address]
            before = self.before[address]
            if address in self.after:
                after = self.after[address]
            elif address in self.changing and self.module.check_mode:
                after = self.choices[address].driver if self.state == "present" else None
            elif address in self.changing:
                after = read_driver(self.root, address)
            else:
                after = before
            result[address] = {
                "id": "%s:%s" % (record["vendor_id"], record["device_id"]),
                "name": describe(record),
                "iommu_group": record["iommu_group"],
                "selected_by": member.selected_by,
                "companion_of": member.companion_of,
                "driver_before": before,
                "driver_after": after,
                "changed": address in self.changing,
            }
            result[address].update(self._driver_result(address))
        return result

    def _driver_result(self, address):
        """The VFIO driver chosen for a device, why, and how it is kept across reboots."""
        choice = self.choices[address]
        present = self.state == "present"
        return {
            "driver": choice.driver if present else None,
            "driver_reason": choice.reason if present else None,
            "modalias": choice.modalias,
            "variant_drivers": list(choice.variants),
            "persistent": self.kept_by.get(address, "none"),
        }

    def reboot_reasons(self, devices):
        if self.persistence.method == "none":
            return []
        reasons = []
        if self.state == "present":
            pending = [a for a, entry in devices.items() if entry["driver_after"] != entry["driver"]]
        else:
            pending = [a for a, entry in devices.items() if is_vfio_driver(entry["driver_after"], self.variants)]
        if pending:
            if self.runtime_skipped and self.runtime_skipped != "runtime: false":
                reasons.append(self.runtime_skipped)
            else:
                reasons.append(
                    "%s %s at the next boot: the runtime binding was %s"
                    % (", ".join(pending),
                       "gets " + ", ".join(sorted({devices[a]["driver"] for a in pending}))
                       if self.state == "present" else "returns to its host driver",
                       "not requested (runtime: false)" if not self.runtime else "not done")
                )
        return reasons

    def result(self):
        devices = self.devices_result()
        reasons = self.reboot_reasons(devices)
        persistence = self.persistence
        result = dict(
            changed=self.changed,
            devices=devices,
            state=self.state,
            iommu_enabled=self.view.iommu_enabled,
            persistent=self._persistent_result(devices),
            ids=persistence.ids_after if persistence.method in ("modprobe", "cmdline") else [],
            files_changed=persistence.paths_changed() + (
                [self.initramfs.config.display_path] if self.initramfs.config is not None
                and self.initramfs.config.changed else []
            ),
            commands=self.commands if not self.module.check_mode else self._predicted_commands(),
            reboot_required=bool(reasons),
            reboot_reasons=reasons,
            refusals=[r.to_dict() for r in self.refusals],
            initramfs=self.initramfs.to_dict(),
        )
        if self.module._diff:
            result["diff"] = persistence.diffs()
            if self.initramfs.config is not None and self.initramfs.config.changed:
                result["diff"].append(self.initramfs.config.diff())
        return result

    def _persistent_result(self, devices):
        """The boot-time method of the devices on plain vfio-pci (``auto`` resolved); driverctl when
        every device is kept by a driverctl override (variant drivers with ``auto``)."""
        method = self.persistence.method
        if self.state == "present" and devices and all(e["persistent"] == "driverctl" for e in devices.values()):
            return "driverctl"
        return method

    def _predicted_commands(self):
        commands = []
        commands += [["modprobe", module_of(driver)] for driver in self.load_drivers]
        commands += [entry.command for entry in self.persistence.driverctl if entry.file.changed and entry.command]
        boot_plan = self.persistence.boot_plan
        if boot_plan is not None and boot_plan.changed and boot_plan.run_commands:
            commands += boot_plan.commands
        if self.initramfs.run:
            commands += self.initramfs.commands
        return commands
