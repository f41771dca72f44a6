# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host topology for GPU virtualization: one entry point over the readers of this package.

Public API:

- :func:`detect` ``(root="/") -> dict``: the ``topology`` that ``gpuvirt.host.topology_info``
  returns (``iommu``, ``kernel``, ``cpu``, ``iommu_groups``, ``devices``, ``gpus``,
  ``mdev_parents``, ``mdevs``, ``findings``).
- :func:`check_root` ``(root)``: raises :class:`NotALinuxTree` with a clear message.
- :func:`passthrough_verdict` ``(address, devices, iommu_enabled, groups=None, holders=None,
  critical=None, slots=None, displays=None) -> dict``: ``viable``, ``reasons``, ``codes``, ``devices``
  for one device.
- :func:`group_endpoints` ``(devices, group) -> list[str]``: non-bridge members of a group.

Readers it builds on (import them directly when a module needs one piece):

- ``pci``: :func:`read_pci_devices`, :func:`read_pci_device`, :func:`companions`,
  :class:`PciDevice`, :class:`PciIds`, :func:`class_name`.
- ``iommu``: :func:`read_iommu`, :func:`group_of`, :func:`group_members`,
  :func:`groups_from_devices`.
- ``device_users``: :func:`vfio_holders`, :func:`users_of`.
- ``mdev_info``: :func:`mdev_parents`, :func:`read_mdev_types`, :func:`mdevs`.
- ``vendors``: the vendor backends (``vendor_nvidia``: :func:`read_nvidia_vgpu`,
  :func:`parse_creatable_vgpu_types`, :func:`profile_name`; ``vendor_intel``; ``vendor_amd``) and
  :func:`virtualization_modes`.
- ``kernel``: :func:`read_kernel`, :func:`read_cpu`, :func:`parse_cmdline`, :func:`cmdline_value`,
  :func:`read_vfio_aliases`, :func:`vfio_variant_drivers`.
- ``critical``: :func:`critical_devices`.
- ``display``: :func:`read_displays` (the boot display and framebuffers the kernel marks).
- ``findings``: :class:`Findings`.
"""

from __future__ import annotations

import gc
import os

from ansible_collections.gpuvirt.host.plugins.module_utils import rules, vendors
from ansible_collections.gpuvirt.host.plugins.module_utils.architecture import architecture_from_iommu
from ansible_collections.gpuvirt.host.plugins.module_utils.architecture import host_architecture as tree_architecture
from ansible_collections.gpuvirt.host.plugins.module_utils.critical import critical_devices
from ansible_collections.gpuvirt.host.plugins.module_utils.device_users import (
    unknown_users_text,
    users_of,
    vfio_holders,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.display import Displays, read_displays
from ansible_collections.gpuvirt.host.plugins.module_utils.drivers import is_vfio_driver
from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError
from ansible_collections.gpuvirt.host.plugins.module_utils.findings import Findings
from ansible_collections.gpuvirt.host.plugins.module_utils.iommu import (
    groups_from_devices,
    read_iommu,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.kernel import (
    ARM64,
    POWER,
    SUPPORTED_ARCHITECTURES,
    X86,
    cmdline_flag,
    cmdline_value,
    kernel_arguments,
    module_parameter,
    parameters,
    read_cpu,
    read_kernel,
    virtual_machine_name,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.mdev_info import mdev_parents, mdevs
from ansible_collections.gpuvirt.host.plugins.module_utils.pci import (
    HOST_GRAPHICS_DRIVERS,
    behind_vmd_reason,
    group_companions,
    name_devices,
    read_pci_devices,
    slot_index,
    unowned_bus_groups,
    vmd_controller,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import PCI_DEVICES, host_path

# What a tree must contain to be read as a Linux host: a live or captured sysfs/procfs, or an
# installed image.
_LINUX_MARKERS = (PCI_DEVICES, "proc/cmdline", "etc/os-release", "usr/lib/os-release")


class NotALinuxTree(GpuvirtError):
    """``root`` is not a Linux filesystem tree."""


def check_root(root):
    if not os.path.isdir(root):
        raise NotALinuxTree("root %s is not a directory" % root)
    if not any(os.path.exists(host_path(root, marker)) for marker in _LINUX_MARKERS):
        raise NotALinuxTree(
            "root %s does not look like a Linux filesystem tree: none of %s exists below it; "
            "give the directory that holds sys/, proc/ and etc/ (/ for this host)"
            % (root, ", ".join(_LINUX_MARKERS))
        )


class UnsupportedArchitecture(GpuvirtError):
    """The host is an architecture this collection does not configure (:func:`unsupported_architecture`)."""


def check_architecture(root):
    """Raise :class:`UnsupportedArchitecture` when the kernel booting from ``root`` is of an architecture
    this collection cannot configure (POWER, ...); an unknown architecture passes. Every changing module
    calls it before it plans anything."""
    unsupported = unsupported_architecture(tree_architecture(root)[0])
    if unsupported:
        raise UnsupportedArchitecture(unsupported)


def group_endpoints(devices, group):
    """Members of ``group`` other than those that stay with the host (PCI bridges, unbound host bridges; see
    ``PciDevice.stays_with_host``)."""
    return [
        device.address
        for device in devices.values()
        if device.iommu_group == group and not device.stays_with_host
    ]


def passthrough_verdict(
    address, devices, iommu_enabled, groups=None, holders=None, critical=None, slots=None, displays=None
):
    """Whether ``address`` can be handed to a VM now, and if not, why.

    ``devices``: ``{address: PciDevice}``; ``groups``: ``{group: [addresses]}`` (computed when
    None); ``holders``: :func:`device_users.vfio_holders` output; ``critical``:
    :func:`critical.critical_devices` output; ``slots``: :func:`pci.slot_index` output (saves a
    scan of all devices per call); ``displays``: :func:`display.read_displays` output (the boot
    display and the framebuffers, none when not given). ``devices`` in the result are the addresses to bind together:
    the device and its companion functions in its IOMMU group (:func:`pci.group_companions`).

    ``iommu_enabled`` None (a tree that cannot tell) gives the code ``iommu_unknown``; ``viable`` is
    then None unless another reason already rules the device out.
    """
    device = devices[address]
    groups = groups_from_devices(devices) if groups is None else groups
    holders = {} if holders is None else holders
    critical = critical or {}
    displays = displays or Displays()
    bound = [address] + group_companions(devices, address, slots)
    codes = []
    reasons = []

    def refuse(code, reason):
        if code not in codes:
            codes.append(code)
        reasons.append(reason)

    if iommu_enabled is None:
        refuse(
            "iommu_unknown",
            "whether the IOMMU is on is unknown: the tree lacks /sys/class/iommu and /sys/kernel/iommu_groups "
            "(a partial snapshot?); read the live host",
        )
    elif not iommu_enabled:
        refuse(
            "iommu_disabled",
            "the IOMMU is not enabled, so no device can be assigned to a VM (see the iommu findings)",
        )
    elif device.iommu_group is None:
        refuse("no_iommu_group", "%s has no IOMMU group although the IOMMU is on" % address)
    controller = vmd_controller(devices, device)
    if controller is not None:
        refuse("behind_vmd", behind_vmd_reason(address, controller))
    for doubt in device.doubts:
        refuse("doubtful_attribute", "%s: %s" % (address, doubt))
    for code, framebuffer in displays.console_uses(device):
        refuse(code, _CONSOLE_REASONS[code] % {"address": address, "framebuffer": framebuffer})
    members = groups.get(device.iommu_group, []) if device.iommu_group is not None else []
    for member in members:
        other = devices.get(member)
        if member in bound or other is None or other.stays_with_host:
            continue
        refuse(
            "group_shared",
            "IOMMU group %s also holds %s (%s), which is not a function of this device; it would have "
            "to be given to the same VM" % (device.iommu_group, member, other.name),
        )
    users = users_of(holders, device.iommu_group, *bound)
    for user in users:
        refuse(
            "in_use",
            "process %s (%s) holds the VFIO device of IOMMU group %s"
            % (user["pid"], user.get("comm") or "?", device.iommu_group),
        )
    # A device on a VFIO driver has its group's /dev/vfio file: a process whose open files cannot be read,
    # or that /proc does not list, may hold it. (A plain mapping stands for a complete scan.)
    if not users and not getattr(holders, "complete", True) \
            and any(m in devices and is_vfio_driver(devices[m].driver) for m in bound):
        refuse(
            "in_use_unknown",
            "whether a process (a running VM) holds the VFIO device of IOMMU group %s cannot be told: %s"
            % (device.iommu_group, unknown_users_text(holders)),
        )
    if critical:
        # The device, its companions and the group's other endpoints (bridges stay with the host).
        needed = set()
        for member in bound:
            if member in critical:
                needed.add(member)
        for member in members:
            if member in critical and member in devices and not devices[member].stays_with_host:
                needed.add(member)
        for member in sorted(needed):
            for reason in critical[member]:
                refuse("host_critical", "%s %s; the host needs it" % (member, reason))
    viable = not codes
    if codes and set(codes) <= {"iommu_unknown", "in_use_unknown"}:
        viable = None
    return {"viable": viable, "reasons": reasons, "codes": codes, "devices": bound}


def detect(root="/"):
    """Read the whole host below ``root`` and return the topology dict.

    The cyclic garbage collector is paused while it reads: detection makes tens of thousands of
    objects and no reference cycle, so a collection pass during it frees nothing (a test holds it to
    that on every fixture host)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        return _detect(root)
    finally:
        if paused:
            gc.enable()


def _detect(root):
    check_root(root)
    findings = Findings()
    kernel = read_kernel(root, findings)
    cmdline = kernel["cmdline"] or []
    cpu = read_cpu(root, findings)
    iommu = read_iommu(root, cmdline, cpu.get("architecture"))
    devices = read_pci_devices(root, findings)
    name_devices(root, devices)
    groups = groups_from_devices(devices)
    holders = vfio_holders(root, findings)
    critical = critical_devices(root)
    displays = read_displays(root, cmdline)
    parents = mdev_parents(root, findings, devices)
    parent_names = {entry["parent"] for entry in parents}
    slots = slot_index(devices)

    architecture = host_architecture(cpu, iommu)
    _iommu_findings(root, iommu, cmdline, findings, architecture, cpu)
    _cmdline_findings(root, cmdline, findings, architecture)
    host = vendors.HostFacts(root, devices, kernel, iommu.enabled, parent_names)
    device_dicts = []
    gpus = []
    for device in devices.values():
        entry = device.to_dict()
        reasons = critical.get(device.address)
        entry["critical"] = list(reasons) if reasons else []
        entry["in_use_by"] = users_of(holders, device.iommu_group, device.address) if holders else []
        device_dicts.append(entry)
        if device.is_gpu:
            gpus.append(_gpu_entry(
                device, devices, iommu, groups, holders, critical, parent_names, slots, findings, architecture, host,
                displays,
            ))

    return {
        "root": root,
        "iommu": iommu.to_dict(),
        "kernel": kernel,
        "cpu": cpu,
        "iommu_groups": groups,
        "devices": device_dicts,
        "gpus": gpus,
        "mdev_parents": parents,
        "mdevs": [
            dict(mdev, in_use_by=users_of(holders, mdev["iommu_group"], mdev["uuid"])) for mdev in mdevs(root, findings)
        ],
        "findings": _ordered(findings),
    }


def _gpu_entry(device, devices, iommu, groups, holders, critical, parent_names, slots, findings, architecture=None,
               host=None, displays=None):
    verdict = passthrough_verdict(device.address, devices, iommu.enabled, groups, holders, critical, slots, displays)
    unsupported = unsupported_architecture(architecture)
    if unsupported:
        verdict["codes"].insert(0, "architecture_unsupported")
        verdict["reasons"].insert(0, unsupported)
        verdict["viable"] = False
    modes = []
    if host is not None and not device.is_vf and not unsupported:
        modes = vendors.virtualization_modes(device, host, verdict)
        _modes_finding(device, modes, findings)
    vgpu_host = device.address in parent_names or bool(device.sriov and device.sriov.total_vfs)
    if (
        not unsupported
        and device.driver in HOST_GRAPHICS_DRIVERS
        and not _CONSOLE_REASONS.keys() & set(verdict["codes"])
        and not device.is_vf
        and not vgpu_host
    ):
        others = [address for address in verdict["devices"] if address != device.address]
        findings.info(
            "host_graphics_driver",
            "%s (%s) is bound to the host graphics driver %s; to pass it through, bind it%s to vfio-pci with "
            "gpuvirt.host.vfio_pci"
            % (device.address, device.name, device.driver,
               " and its companion functions (%s)" % ", ".join(others) if others else ""),
            device.address,
        )
    if "firmware_framebuffer" in verdict["codes"] and is_vfio_driver(device.driver):
        findings.warning(
            "firmware_framebuffer",
            "%s (%s) is bound to %s, but the firmware's boot framebuffer still holds its memory: a VM started "
            "with it fails (\"BAR n: can't reserve\" on the host, the guest's driver fails to start); boot with "
            "initcall_blacklist=sysfb_init so that the kernel does not register it"
            % (device.address, device.name, device.driver),
            device.address,
        )
    if iommu.enabled and device.iommu_group is None:
        findings.warning(
            "no_iommu_group",
            "%s has no IOMMU group although the IOMMU is on; it cannot be assigned to a VM" % device.address,
            device.address,
        )
    unowned = {}
    if iommu.enabled and not device.is_vf:
        unowned = unowned_bus_groups(devices, device.address, slots, verdict["devices"], groups)
    if unowned and verdict["viable"] is not False:
        findings.warning(
            "no_bus_reset",
            "%s (%s) has no reset of its own (reset_method: %s), so VFIO resets it with its whole bus, and that "
            "bus also holds %s, which a VM given it cannot own: the kernel refuses that reset, so the GPU is not "
            "reset between its guest's boots (a guest's driver may then fail to start it a second time)"
            % (device.address, device.name, " ".join(device.reset_methods) or "none",
               "; ".join("IOMMU group %s (%s)" % (number, ", ".join(members))
                         for number, members in sorted(unowned.items(), key=lambda item: int(item[0])))),
            device.address,
        )
    return {
        "address": device.address,
        "vendor_id": device.vendor_id,
        "device_id": device.device_id,
        "name": device.name,
        "class": device.class_code,
        "driver": device.driver,
        "boot_vga": device.boot_vga,
        "is_vf": device.is_vf,
        "physfn": device.physfn,
        "iommu_group": device.iommu_group,
        "mdev_parent": device.address in parent_names,
        "sriov_total_vfs": device.sriov.total_vfs if device.sriov else None,
        **vendors.gpu_keys(device),
        "passthrough": verdict,
        "virtualization": modes,
    }


# Why the console uses a GPU (display.Displays.console_uses), as the verdict says it.
_CONSOLE_REASONS = {
    "boot_vga": "%(address)s is the boot VGA device: the host console and firmware framebuffer use it",
    "boot_display": "%(address)s showed the boot sequence (the kernel marks its DRM card with boot_display): the "
    "host console uses it",
    "console_framebuffer": "%(address)s drives the framebuffer %(framebuffer)s, which the text console draws on",
    "firmware_framebuffer": "%(address)s holds the firmware's boot framebuffer (%(framebuffer)s in /proc/iomem) in "
    "its memory: vfio-pci cannot reserve that memory for a VM while the framebuffer is registered (\"BAR n: "
    "can't reserve\", and the guest's driver fails); boot with initcall_blacklist=sysfb_init to keep the kernel "
    "from registering it",
}


def host_architecture(cpu, iommu):
    """The architecture from ``proc/cpuinfo``, else from the IOMMU's kind, else None."""
    return cpu.get("architecture") or architecture_from_iommu(iommu.vendor)


def unsupported_architecture(architecture):
    """Why the collection cannot manage this architecture, or None when it can (or is unknown)."""
    if architecture is None or architecture in SUPPORTED_ARCHITECTURES:
        return None
    if architecture == POWER:
        return (
            "ppc64le hosts are not supported: VFIO there uses the sPAPR TCE IOMMU (vfio_iommu_spapr_tce, "
            "partitionable endpoints and DMA windows), not the type1 IOMMU this collection configures; "
            "nothing is changed on this host"
        )
    return "%s hosts are not supported (only x86_64 and aarch64); nothing is changed on this host" % architecture


def _modes_finding(device, modes, findings):
    """One ``virtualization_modes`` finding per GPU: what it offers now, what the rest lack."""
    ready = [mode["mode"] for mode in modes if mode["ready"]]
    lacking = [
        "%s needs %s" % (mode["mode"], "; ".join(mode["missing"]))
        for mode in modes
        if not mode["ready"] and mode["missing"] and mode["mode"] != "passthrough"
    ]
    unsupported = [mode["unsupported"] for mode in modes if mode.get("unsupported")]
    if len(modes) == 1:
        return  # passthrough alone, already covered by its verdict
    parts = ["%s (%s) can offer now: %s" % (device.address, device.name, ", ".join(ready) or "nothing")]
    parts.extend(lacking)
    parts.extend(unsupported)
    findings.info("virtualization_modes", "; ".join(parts), device.address)


def _iommu_findings(root, iommu, cmdline, findings, architecture=None, cpu=None):
    unsupported = unsupported_architecture(architecture)
    if unsupported:
        # x86 or arm64 advice (firmware switches, intel_iommu=...) would be wrong here.
        findings.error("architecture_unsupported", unsupported)
        return
    if (cpu or {}).get("virtual_machine") and iommu.enabled is False and not iommu.firmware_support:
        # No firmware setup inside a VM adds an IOMMU: only its hypervisor can give it one.
        _virtual_iommu_missing(iommu, findings, architecture, cpu.get("hypervisor"))
        return
    if iommu.enabled is None:
        findings.warning(
            "iommu_unknown",
            "whether the IOMMU is on cannot be told: this tree has neither /sys/class/iommu nor "
            "/sys/kernel/iommu_groups (nor /sys/kernel); a snapshot that did not capture them, or a "
            "container. Read the live host (or capture it with tests/fixtures/capture.py as root)",
        )
    elif not iommu.enabled and architecture == ARM64:
        _arm_iommu_off(iommu, findings)
    elif not iommu.enabled:
        if iommu.firmware_support is None:
            findings.error(
                "iommu_off",
                "the kernel registered no IOMMU; whether the firmware describes one is unknown (this tree "
                "has no readable /sys/firmware/acpi/tables: a snapshot, a container or an unprivileged "
                "read): enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware setup if it is off; an Intel "
                "IOMMU also needs intel_iommu=on on the kernel command line (AMD-Vi needs no argument); reboot",
            )
        elif iommu.firmware_support and iommu.vendor == "amd":
            off = _iommu_off_arguments(cmdline)
            if off:
                findings.error(
                    "iommu_off",
                    "the firmware describes an AMD IOMMU (ACPI IVRS table) but the kernel did not enable it: "
                    "remove %s from the kernel command line and reboot (gpuvirt.host.kernel_cmdline); AMD-Vi "
                    "needs no argument to turn on" % " ".join(off),
                )
            else:
                findings.error(
                    "iommu_off",
                    "the firmware describes an AMD IOMMU (ACPI IVRS table) but the kernel did not enable it, and "
                    "nothing on its command line turns it off; AMD-Vi needs no kernel argument (amd_iommu= has no "
                    "'on' value): the kernel log says why (dmesg | grep AMD-Vi: an IVRS table it rejects, the "
                    "IOMMU disabled in the firmware setup), or the kernel was built without CONFIG_AMD_IOMMU",
                )
        elif iommu.firmware_support:
            off = _iommu_off_arguments(cmdline)
            findings.error(
                "iommu_off",
                "the firmware describes an Intel IOMMU (ACPI DMAR table) but the kernel did not enable it: add "
                "intel_iommu=on to the kernel command line%s and reboot (gpuvirt.host.kernel_cmdline)"
                % (" and remove %s" % " ".join(off) if off else ""),
            )
        else:
            findings.error(
                "iommu_unsupported",
                "no IOMMU: the firmware has no DMAR or IVRS ACPI table and the kernel registered no IOMMU; "
                "enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware setup",
            )
    elif iommu.interrupt_remapping is False:
        findings.warning(
            "interrupt_remapping_off",
            "interrupt remapping is off: VFIO refuses to assign devices unless "
            "vfio_iommu_type1.allow_unsafe_interrupts=1, which lets a guest forge interrupts; enable "
            "interrupt remapping in the firmware (x2APIC/VT-d) and remove intremap=off if present",
        )


_IOMMU_SWITCHES = ("intel_iommu", "amd_iommu", "iommu")


def _iommu_off_arguments(cmdline):
    """The arguments, as written, that turn the IOMMU off: ``off`` among the comma-separated options
    of ``intel_iommu=``, ``amd_iommu=`` or ``iommu=``."""
    return [
        word for name, value, word in parameters(cmdline)
        if name in _IOMMU_SWITCHES and value is not None and "off" in value.split(",")
    ]


# Per architecture: how a QEMU/KVM hypervisor gives a VM an IOMMU that can take devices passed through
# to the VM (the caching mode makes the VM's IOMMU mappings visible to the hypervisor: libvirt
# formatdomain, <iommu>), the ACPI tables that would show one, why a tree may not show them, and what
# else the kernel needs.
_VIRTUAL_IOMMU = {
    ARM64: {
        "recipe": "on QEMU/KVM, an Arm virt machine with a virtual SMMUv3 (libvirt: <iommu model='smmuv3'/>; "
        "QEMU: -machine virt,iommu=smmuv3)",
        "tables": "SMMU node in its IORT",
        "unknown": "no readable ACPI IORT table: a device-tree VM, a snapshot or an unprivileged read",
        "kernel": "",
    },
    X86: {
        "recipe": "on QEMU/KVM, a q35 machine with a virtual Intel IOMMU in caching mode, which lets the VM "
        "assign devices passed through to it (libvirt: <iommu model='intel'><driver intremap='on' "
        "caching_mode='on'/></iommu> and <ioapic driver='qemu'/> under <features>; QEMU: -machine "
        "q35,kernel-irqchip=split -device intel-iommu,intremap=on,caching-mode=on)",
        "tables": "DMAR or IVRS",
        "unknown": "this tree has no readable /sys/firmware/acpi/tables: a snapshot, a container or an "
        "unprivileged read",
        "kernel": "; an Intel one also needs intel_iommu=on on the kernel command line",
    },
}


def _virtual_iommu_missing(iommu, findings, architecture, hypervisor):
    """A virtual machine without an IOMMU: the firmware setup advice would be wrong there."""
    machine = virtual_machine_name(hypervisor)
    facts = _VIRTUAL_IOMMU[ARM64 if architecture == ARM64 else X86]
    advice = (
        "give it one at its hypervisor: %s; other hypervisors have their own setting, and cloud instances "
        "rarely offer one" % facts["recipe"]
    )
    if iommu.firmware_support is None:
        findings.error(
            "iommu_off",
            "the kernel registered no IOMMU, and %s can only have a virtual one, from its hypervisor; whether it "
            "has one is unknown (%s): if it has none, %s%s" % (machine, facts["unknown"], advice, facts["kernel"]),
        )
    else:
        findings.error(
            "iommu_unsupported",
            "no IOMMU: %s has no virtual IOMMU (no %s ACPI table), and no firmware setup inside it adds one: %s"
            % (machine, facts["tables"], advice),
        )


def _arm_iommu_off(iommu, findings):
    """arm64: the SMMU needs no kernel argument to turn on (intel_iommu= and amd_iommu= are x86-only
    and would reach init as unknown words); it is on when the firmware describes it and the kernel
    has its driver."""
    if iommu.firmware_support:
        findings.error(
            "iommu_off",
            "the firmware describes an SMMU (ACPI IORT table) but the kernel registered none under "
            "/sys/class/iommu: the kernel needs the arm-smmu-v3 driver (CONFIG_ARM_SMMU_V3; arm-smmu for "
            "SMMUv2) built in or loaded, and the SMMU must not be disabled in the firmware setup; remove "
            "iommu.passthrough=1 only if you want host DMA translated too (it does not stop VFIO)",
        )
    elif iommu.firmware_support is None:
        findings.error(
            "iommu_off",
            "the kernel registered no SMMU under /sys/class/iommu; whether the firmware describes one is "
            "unknown (device-tree host, or no readable ACPI IORT table in this tree): check the SMMU node "
            "of the device tree or the firmware setup, and the arm-smmu-v3 driver (CONFIG_ARM_SMMU_V3)",
        )
    else:
        findings.error(
            "iommu_unsupported",
            "no IOMMU: the firmware describes no SMMU (its ACPI IORT table, if any, has no SMMU node) and the "
            "kernel registered none; enable the SMMU in the firmware setup (some Arm servers ship with it off)",
        )


def _cmdline_findings(root, cmdline, findings, architecture=None):
    foreign = rules.foreign_arguments(kernel_arguments(cmdline), architecture)
    if foreign:
        findings.warning(
            "foreign_kernel_arguments",
            "%s on the kernel command line: parameters of other architectures that this %s kernel does not "
            "have; remove them (gpuvirt.host.kernel_cmdline absent). %s"
            % (" ".join(text for text, _why in foreign), architecture, foreign[0][1]),
        )
    acs = cmdline_value(cmdline, "pcie_acs_override")
    if acs is not None:
        findings.warning(
            "acs_override",
            "pcie_acs_override=%s is on the kernel command line: IOMMU groups are split without hardware "
            "isolation, so devices in different VMs (and the host) can still reach each other by "
            "peer-to-peer DMA" % acs,
        )
    # A bool module parameter: "true", "on" or the bare name set it as "1" does.
    unsafe_cmdline = cmdline_flag(cmdline, "vfio_iommu_type1.allow_unsafe_interrupts")
    unsafe_live = module_parameter(root, "vfio_iommu_type1", "allow_unsafe_interrupts")
    if unsafe_cmdline or unsafe_live == "Y":
        where = "on the kernel command line" if unsafe_cmdline else "set on the loaded vfio_iommu_type1 module"
        # What isolates a device's MSIs: x86's interrupt remapping, arm64's GICv3/v4 ITS (a GICv2m does not).
        isolation = (
            "an MSI controller that isolates devices (a GICv3 or v4 ITS); remove it once the host has one"
            if architecture == ARM64 else "interrupt remapping; remove it once interrupt remapping is on"
        )
        findings.warning(
            "unsafe_interrupts",
            "vfio_iommu_type1.allow_unsafe_interrupts is %s: a guest can inject interrupts into the host "
            "without %s" % (where, isolation),
        )


def _ordered(findings):
    rank = {"error": 0, "warning": 1, "info": 2}
    items = findings.as_list()
    return sorted(items, key=lambda item: (item["device"] is not None, item["device"] or "", rank[item["severity"]]))
