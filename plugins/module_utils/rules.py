# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Input rules: what a module accepts from its caller and from the host, checked in one place.

Every rule either returns the checked value or raises :class:`InputError` (or the ``error`` class
the caller passes) with a message that quotes the bad value and says what is allowed. The rules
run before anything is read for a change, so a refusal changes nothing.

- :func:`kernel_argument` ``(text, option)``: one kernel argument as a single word.
- :func:`boot_arguments` ``(present, absent)``: no removal or emptying of :data:`BOOT_CRITICAL_KEYS`.
- :func:`command_line_length` ``(arguments, before)``: the whole line fits the kernel's buffer.
- :func:`architecture_arguments` ``(present, architecture, source)``: no argument that the host's
  architecture has no kernel parameter for (``intel_iommu=`` on arm64, ``arm-smmu-v3.*`` on x86);
  :func:`foreign_arguments` lists them without refusing.
- :func:`unit_value` ``(value, option)``: a value written into a systemd unit.
- :func:`absolute_path` ``(value, option)``: an absolute path without ``..``.
- :func:`existing_root` ``(root)``: the host root exists; it is never created.
- :func:`number` ``(value, option, minimum, maximum)``: a finite number in range.
- :func:`integer` ``(value, option, minimum, maximum)``: a whole number in range (retries).
- :func:`count` ``(value, capacity, option, what)``: a count bounded by what the device can hold.
- :func:`inside_root` ``(root, path, what)``: ``path`` (links resolved as in a chroot) stays below ``root``.
- :func:`load_versioned_json` ``(path, version, what, fix)``: a state file or cache; a newer version
  or a corrupt file is refused, never rewritten.
- :func:`boot_vga_flag`, :func:`class_code`, :func:`iommu_group_of`, :func:`driver_of`: the sysfs
  attributes the guards depend on; a malformed one yields a doubt (text) instead of a safe-looking
  value.

Standard library only: the restore unit ships this file to the host.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat

from ansible_collections.gpuvirt.host.plugins.module_utils import host
from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import MISSING


class InputError(GpuvirtError, ValueError):
    """A value breaks an input rule; nothing was changed."""


def _shown(value, limit=60):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


# ----------------------------------------------------------------------------- kernel arguments

# Arguments the host cannot find or mount its root file system without. Removing one of them, or
# emptying it, leaves a boot configuration whose next boot stops in the initramfs:
#   root, rootflags (btrfs subvol=@), rootfstype, nfsroot, mount.usr: the root and /usr mounts;
#   boot (boot=zfs on Debian and Proxmox ZFS installs): the initramfs script that mounts root;
#   cryptdevice, rd.luks.*, rd.lvm.*, rd.md.uuid: the volumes the root file system lives on.
BOOT_CRITICAL_KEYS = frozenset(
    (
        "boot",
        "cryptdevice",
        "mount.usr",
        "nfsroot",
        "rd.luks.name",
        "rd.luks.uuid",
        "rd.lvm.lv",
        "rd.lvm.vg",
        "rd.md.uuid",
        "root",
        "rootflags",
        "rootfstype",
    )
)
# x86 and arm64 COMMAND_LINE_SIZE: the kernel truncates a longer command line.
COMMAND_LINE_SIZE = 2048
# One argument may take at most half of it; real ones (vfio-pci.ids with a dozen IDs) are far shorter.
ARGUMENT_MAX = COMMAND_LINE_SIZE // 2
# Printable ASCII except what needs quoting in /etc/default/grub, grub.cfg, BLS entries, grubby's
# argv or the kernel's own parser, and '#', which starts a comment in grub.cfg and shell files.
_ARGUMENT = re.compile(r"[A-Za-z0-9!%()*+,\-./:=?@\[\]^_{}~]+\Z")
_ALLOWED_ARGUMENT = "letters, digits and ! % ( ) * + , - . / : = ? @ [ ] ^ _ { } ~"


def _norm_key(text):
    return text.split("=", 1)[0].replace("-", "_")


_CRITICAL_NORM = {key.replace("-", "_"): key for key in BOOT_CRITICAL_KEYS}


def kernel_argument(text, option, error=InputError):
    """``text`` as one kernel argument ``key`` or ``key=value``; returns it unchanged."""
    if not isinstance(text, str):
        raise error("%s: %s is not a string; give arguments as key or key=value" % (option, _shown(text)))
    if not text:
        raise error("%s: an argument is empty; give key or key=value" % option)
    if len(text) > ARGUMENT_MAX:
        raise error(
            "%s: argument %s is %d characters long; one argument may have at most %d (the whole command line "
            "at most %d)" % (option, _shown(text), len(text), ARGUMENT_MAX, COMMAND_LINE_SIZE)
        )
    if _ARGUMENT.match(text) is None:
        bad = next(c for c in text if _ARGUMENT.match(c) is None)
        raise error(
            "%s: argument %s contains %r; arguments are single words of %s (no whitespace, quotes, '#', "
            "control or shell characters; edit such arguments by hand)" % (option, _shown(text), bad, _ALLOWED_ARGUMENT)
        )
    if text.startswith("="):
        raise error("%s: argument %s has an empty key; give key or key=value" % (option, _shown(text)))
    return text


def boot_arguments(present, absent, error=InputError):
    """Refuse removing or emptying an argument of :data:`BOOT_CRITICAL_KEYS`.

    ``present``/``absent``: the argument texts (``key`` or ``key=value``).
    """
    for text in absent:
        key = _CRITICAL_NORM.get(_norm_key(text))
        if key is not None:
            raise error(
                "absent: %s would remove %s=, which the host needs to boot (it names the root file system or a "
                "volume it lives on); a present %s=<value> replaces the value instead. Arguments that cannot be "
                "removed: %s" % (_shown(text), key, key, ", ".join(sorted(BOOT_CRITICAL_KEYS)))
            )
    for text in present:
        key = _CRITICAL_NORM.get(_norm_key(text))
        if key is not None and (("=" not in text) or not text.split("=", 1)[1]):
            raise error(
                "present: %s leaves %s= without a value, and the host cannot boot without one; give %s=<value>"
                % (_shown(text), key, key)
            )


def command_line_length(arguments, before=(), where="the kernel command line", error=InputError):
    """Refuse a command line that grows beyond :data:`COMMAND_LINE_SIZE` (the kernel cuts it off)."""
    length = len(" ".join(arguments))
    if length > COMMAND_LINE_SIZE and length > len(" ".join(before)):
        raise error(
            "%s would be %d characters long; the kernel reads at most %d and cuts the rest off. Remove "
            "arguments, or give shorter ones" % (where, length, COMMAND_LINE_SIZE)
        )


# ------------------------------------------------------------------- kernel arguments per architecture

# Parameters that only some architectures' kernels have (the tags of
# Documentation/admin-guide/kernel-parameters.txt, and where the drivers build). Another kernel does
# not know them: a name without a dot reaches init as an environment variable, a module parameter
# waits for a module that does not exist. iommu.passthrough= and iommu.strict= belong to the IOMMU
# core ([ARM64,X86]) and are not listed.
_FAMILIES = {"x86_64": "x86", "i686": "x86", "i586": "x86", "i386": "x86", "aarch64": "arm64",
             "ppc64le": "power", "ppc64": "power"}
_FAMILY_NAMES = {"x86": "x86", "arm64": "arm64", "power": "POWER"}
ARCHITECTURE_PARAMETERS = {
    "intel_iommu": ("x86",),  # [DMAR] Intel VT-d
    "amd_iommu": ("x86",),  # [HW,X86-64]
    "amd_iommu_dump": ("x86",),
    "amd_iommu_intr": ("x86",),
    "intremap": ("x86",),  # [X86-64,Intel-IOMMU]
    "nointremap": ("x86",),  # [X86-64,Intel-IOMMU] (older spelling of intremap=off)
    "ivrs_ioapic": ("x86",),
    "ivrs_hpet": ("x86",),
    "ivrs_acpihid": ("x86",),
    "iommu": ("x86", "power"),  # [X86]; POWER's own values are checked value by value below
}
# Module parameters (<module>.<name>) of modules only some architectures build.
ARCHITECTURE_MODULES = {
    "kvm_intel": ("x86",),
    "kvm_amd": ("x86",),
    "arm_smmu_v3": ("arm64",),  # drivers/iommu/arm/arm-smmu-v3: depends on ARM64
    "arm_smmu": ("arm64",),  # SMMUv1/v2 (also 32-bit Arm, which this collection does not serve)
    "kvm_arm": ("arm64",),  # kvm-arm.mode= [KVM,ARM]: arm64 only since Linux 5.7
    "arm64": ("arm64",),  # arm64.nobti, arm64.nomte, ...: CPU feature overrides
}
# nobypass [PPC/POWERNV] (kernel-parameters.txt); novmerge and vmerge (arch/powerpc/kernel/iommu.c, setup_iommu()).
_POWER_IOMMU_VALUES = ("nobypass", "novmerge", "vmerge")
_WHAT_INSTEAD = {
    "arm64": (
        "an arm64 kernel turns the SMMU on with no argument when the firmware describes it (ACPI IORT or "
        "the device tree) and the arm-smmu-v3 driver is there; passthrough mode is iommu.passthrough=1 "
        "(iommu=pt on x86), the invalidation policy iommu.strict=0 or 1, and KVM is set with kvm-arm.mode="
    ),
    "x86": (
        "an x86 kernel turns the IOMMU on with intel_iommu=on (Intel VT-d; AMD-Vi needs no argument), "
        "takes iommu=pt or iommu.passthrough=1 for passthrough mode, and sets KVM with kvm_intel.* or kvm_amd.*"
    ),
    "power": (
        "a POWER kernel's VFIO uses the sPAPR TCE IOMMU, which no argument turns on; its iommu= takes nobypass, "
        "novmerge and vmerge (this collection does not configure POWER hosts)"
    ),
}
_ARM64_IOMMU_VALUES = {
    "pt": "use iommu.passthrough=1",
    "nopt": "use iommu.passthrough=0",
    "off": "no argument turns an arm64 SMMU off; iommu.passthrough=1 stops translating the host's own DMA",
}


def iommu_on_advice(architecture=None, vendor=None):
    """How to turn the IOMMU on, for messages: what the kernel of ``architecture`` (``uname -m``, None when
    unknown) needs for an IOMMU of ``vendor`` (``intel``, ``amd``, ``arm``; None when unknown). AMD-Vi and an
    Arm SMMU need no kernel argument (amd_iommu= has no ``on`` value; intel_iommu= and amd_iommu= do not
    exist on arm64)."""
    family = architecture_family(architecture) if architecture else None
    if family == "arm64" or vendor == "arm":
        return (
            "an arm64 kernel turns the SMMU on with no argument once the firmware describes it (ACPI IORT or the "
            "device tree) and the kernel has the arm-smmu-v3 driver: enable the SMMU in the firmware setup"
        )
    if vendor == "amd":
        return (
            "AMD-Vi needs no kernel argument: enable the IOMMU in the firmware setup and remove amd_iommu=off or "
            "iommu=off from the kernel command line (the gpuvirt.host.iommu role does)"
        )
    if vendor == "intel":
        return (
            "enable VT-d in the firmware setup and add intel_iommu=on to the kernel command line (the "
            "gpuvirt.host.iommu role does, or gpuvirt.host.kernel_cmdline)"
        )
    return (
        "enable the IOMMU in the firmware setup (VT-d, AMD-Vi or the SMMU); the gpuvirt.host.iommu role sets the "
        "kernel command line this host needs (intel_iommu=on for Intel VT-d; AMD-Vi and an Arm SMMU need no argument)"
    )


def architecture_family(architecture):
    """``x86``, ``arm64`` or ``power`` for an architecture name (``uname -m``), else the name itself."""
    return _FAMILIES.get(architecture, architecture)


def foreign_arguments(arguments, architecture, source=None):
    """``[(argument, why)]``: the arguments the kernel of ``architecture`` does not have, each with
    the reason and what to use instead; empty when ``architecture`` is None (unknown).

    ``source``: where the architecture was read, for the reason. Names are matched as the kernel
    matches them, dashes and underscores alike, and in any case (``INTEL_IOMMU=on`` on arm64 is a
    mistake too).
    """
    if architecture is None:
        return []
    family = architecture_family(architecture)
    this_host = "this host is %s%s" % (architecture, " (from %s)" % source if source else "")
    instead = _WHAT_INSTEAD.get(family, "remove it")
    foreign = []
    for text in arguments:
        key, has_value, value = text.partition("=")
        # ivrs_ioapic[32]=00:14.0: the bracket belongs to the value (the older spelling of ivrs_ioapic=32@...)
        name = key.lower().replace("-", "_").split("[", 1)[0]
        module = name.split(".", 1)[0] if "." in name else None
        families = ARCHITECTURE_MODULES.get(module) if module else ARCHITECTURE_PARAMETERS.get(name)
        if families is None:
            continue
        values = value.lower().split(",") if has_value else [""]
        if family not in families:
            owners = " and ".join(_FAMILY_NAMES.get(f, f) for f in families)
            unknown = (
                "its kernel has no %s module, so the parameter is never used" % module
                if module
                else "its kernel does not know it (a name without a dot reaches init as an environment variable)"
            )
            advice = [_ARM64_IOMMU_VALUES[v] for v in values if v in _ARM64_IOMMU_VALUES] if (
                name == "iommu" and family == "arm64") else []
            foreign.append((text, "%s is a kernel parameter of %s only, and %s: %s. Instead, %s" % (
                _shown(text), owners, this_host, unknown, "; ".join(advice + [instead]))))
        elif name == "iommu" and family == "x86" and any(v in _POWER_IOMMU_VALUES for v in values):
            foreign.append((text, "%s: iommu=%s exists only on POWER kernels, and %s. Instead, %s"
                            % (_shown(text), next(v for v in values if v in _POWER_IOMMU_VALUES), this_host,
                               instead)))
        elif name == "iommu" and family == "power" and any(v not in _POWER_IOMMU_VALUES for v in values):
            foreign.append((text, "%s: a POWER kernel's iommu= takes only nobypass, novmerge and vmerge (the "
                                  "others are x86's), and %s. Instead, %s" % (_shown(text), this_host, instead)))
    return foreign


def architecture_arguments(present, architecture, source=None, error=InputError):
    """Refuse the first argument of ``present`` that the kernel of ``architecture`` does not have
    (:func:`foreign_arguments`); nothing is refused when the architecture is unknown (None)."""
    for _text, why in foreign_arguments(present, architecture, source):
        raise error("present: %s. Nothing was changed" % why)


# ---------------------------------------------------------------------------------- unit values

# Characters that change the meaning of a systemd unit line: control characters (a newline starts
# a new directive), whitespace and quotes (split or join ExecStart words), '%' (specifiers),
# backslash (escapes), ';' (a second command in old systemd) and '$' (variable expansion).
_UNIT_UNSAFE = re.compile(r"[\x00-\x20\x7f-\x9f\"'\\%;$\u2028\u2029]")


def unit_value(value, option, error=InputError):
    """``value`` as one word of a systemd unit line; returns it."""
    if not isinstance(value, str) or not value:
        raise error("%s: %s is not a non-empty string" % (option, _shown(value)))
    bad = _UNIT_UNSAFE.search(value)
    if bad is not None:
        raise error(
            "%s: %s contains %r, which systemd would read as part of the unit's syntax; give a value without "
            "whitespace, control characters, quotes, backslashes, '%%', ';' or '$'"
            % (option, _shown(value), bad.group())
        )
    return value


def absolute_path(value, option, error=InputError):
    """``value`` as an absolute path without ``..`` or control characters; returns it normalised."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise error("%s: %s is not an absolute path; give one that starts with /" % (option, _shown(value)))
    bad = re.search(r"[\x00-\x1f\x7f]", value)
    if bad is not None:
        raise error(
            "%s: %s contains %r, a control character; give a plain absolute path" % (option, _shown(value), bad.group())
        )
    if ".." in value.split("/"):
        raise error(
            "%s: %s contains '..'; give the absolute path without parent-folder steps" % (option, _shown(value))
        )
    return "/" + "/".join(part for part in value.split("/") if part and part != ".")


def existing_root(root, error=InputError):
    """``root`` must be an existing directory: a mistyped root is never created."""
    if not isinstance(root, str) or not root:
        raise error("root: %s is not a path; give the host's root folder (/ for this host)" % _shown(root))
    if not os.path.isdir(root):
        raise error(
            "root %s %s; give the host's file system root (/ for this host, or an existing image or chroot "
            "directory); it is never created"
            % (root, "is not a directory" if os.path.lexists(root) else "does not exist")
        )
    return root


def inside_root(root, path, what, error=InputError):
    """``path`` (below ``root``) resolved as the tree's own system would (:func:`host.inside`) must stay
    below ``root``; returns the resolved path."""
    try:
        return host.inside(root, os.path.relpath(path, root))
    except host.OutsideRootError as problem:
        raise error("%s: %s" % (what, problem)) from None


# -------------------------------------------------------------------------------------- numbers

# The longest wait for a driver or device a boot-time step may be given: an hour. Longer waits hold
# the boot (and libvirt, ordered after the restore) for no device that would still come.
WAIT_MAX = 3600.0


def number(value, option, minimum=0.0, maximum=None, minimum_allowed=False, error=InputError):
    """``value`` as a finite float above ``minimum`` (or equal when ``minimum_allowed``) and at most
    ``maximum``; returns it."""
    try:
        result = float(value)
    except (TypeError, ValueError, OverflowError):
        raise error("%s: %s is not a number" % (option, _shown(value))) from None
    allowed = "a finite number %s %g%s" % (
        ">=" if minimum_allowed else ">", minimum, "" if maximum is None else " and <= %g" % maximum
    )
    if (
        not math.isfinite(result)
        or result < minimum
        or (result == minimum and not minimum_allowed)
        or (maximum is not None and result > maximum)
    ):
        raise error("%s: %s is out of range; give %s" % (option, _shown(value), allowed))
    return result


# Attempts a module makes at most: beyond this a device that has not answered will not.
RETRIES_MAX = 100


def integer(value, option, minimum, maximum, error=InputError):
    """``value`` as a whole number from ``minimum`` to ``maximum``; returns it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error("%s: %s is not a whole number; give one from %d to %d" % (option, _shown(value), minimum, maximum))
    if value < minimum or value > maximum:
        raise error("%s: %d is out of range; give a whole number from %d to %d" % (option, value, minimum, maximum))
    return value


def waits(params):
    """A module's ``retries`` and ``delay`` options, checked; returns ``(retries, delay)``."""
    return (
        integer(params["retries"], "retries", 0, RETRIES_MAX),
        number(params["delay"], "delay", minimum_allowed=True, maximum=WAIT_MAX),
    )


def count(value, capacity, option, what, error=InputError):
    """``value`` as a whole number from 0 to ``capacity`` (what the device can hold), checked before
    anything is allocated for it; returns it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error("%s: %s is not a whole number; give a count from 0 to %d" % (option, _shown(value), capacity))
    if value < 0 or value > capacity:
        raise error(
            "%s: %d is out of range; %s can hold at most %d, so give a count from 0 to %d"
            % (option, value, what, capacity, capacity)
        )
    return value


# ------------------------------------------------------------------------ state files and caches


def load_versioned_json(path, version, what, fix, error=InputError):
    """The mapping in ``path`` (``{"version": version, ...}``), or None when it does not exist.

    A file of a newer version is refused (an older collection must not drop what a newer one
    recorded); a corrupt one is refused with its path and ``fix``: it is never rewritten silently.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return None
    except OSError as problem:
        raise error("cannot read %s %s: %s; %s" % (what, path, problem.strerror or problem, fix)) from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as problem:
        raise error("cannot read %s %s: it is not valid JSON (%s); %s" % (what, path, problem, fix)) from None
    found = data.get("version") if isinstance(data, dict) else None
    if not isinstance(data, dict) or isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise error(
            "cannot read %s %s: it is corrupt (expected a JSON object with \"version\": %d, found %s); %s"
            % (what, path, version, _shown(found if isinstance(data, dict) else type(data).__name__), fix)
        )
    if found > version:
        raise error(
            "cannot read %s %s: it has version %d, newer than the %d this gpuvirt.host reads: it was written by a "
            "newer release; upgrade the collection (the file was left as it is)" % (what, path, found, version)
        )
    if found < version:
        raise error("cannot read %s %s: it has version %d, which this gpuvirt.host does not read (it reads %d); %s"
                    % (what, path, found, version, fix))
    return data


# --------------------------------------------------------------------- sysfs attributes of guards


def boot_vga_flag(text, problem=None):
    """``(flag, doubt)`` for the ``boot_vga`` attribute of a VGA-class function (``problem``: why it
    could not be read, as :func:`sysfs.read_attribute` says): ``"0"``/``"1"`` give False/True;
    anything else, a missing file included (the kernel shows it on every VGA-class function: a
    snapshot that lacks it), gives None and a doubt, so that the guards refuse instead of taking the
    device as safe."""
    if text == "1":
        return True, None
    if text == "0":
        return False, None
    if problem is MISSING:
        return None, ("boot_vga is missing, which the kernel shows on every VGA-class function (a partial "
                      "snapshot?): it cannot tell whether this is the boot GPU")
    shown = _shown(text if text is not None else "<%s>" % problem)
    return None, "boot_vga reads %s, expected 0 or 1: it cannot tell whether this is the boot GPU" % shown


_CLASS_FILE = re.compile(r"0x([0-9a-fA-F]{6})\Z")


def class_code(text):
    """``(six hex digits, doubt)`` for a ``class`` attribute (the kernel writes ``0x%06x``)."""
    match = _CLASS_FILE.match(text or "")
    if match is None:
        return None, "class reads %s, expected 0x followed by 6 hex digits: the device's kind is unknown" % _shown(
            text
        )
    return match.group(1).lower(), None


def _read_link(link, name, unknown, directory=None):
    """``(target, its path components, doubt)``: ``(None, None, None)`` when the link is absent,
    ``(None, None, doubt)`` when it cannot be read. ``link`` is relative to the directory open as
    ``directory`` when one is given."""
    try:
        target = os.readlink(link, dir_fd=directory)
    except FileNotFoundError:
        return None, None, None
    except OSError as problem:
        return None, None, "%s cannot be read (%s): %s" % (name, problem.strerror, unknown)
    return target, target.rstrip("/").split("/"), None


def iommu_group_of(device_dir, directory=None):
    """``(group number, doubt)`` from a device's ``iommu_group`` link.

    No link: ``(None, None)`` (the IOMMU is off). A link that dangles, loops or does not end in
    ``iommu_groups/<number>``: ``(None, doubt)`` -- the group is unknown, never "a group of its own".
    ``directory``: a descriptor of ``device_dir`` (detection opens each device's directory once).
    """
    link = "iommu_group" if directory is not None else os.path.join(device_dir, "iommu_group")
    target, parts, doubt = _read_link(link, "iommu_group", "the device's IOMMU group is unknown", directory)
    if target is None:
        return None, doubt
    name = parts[-1]
    parent = parts[-2] if len(parts) > 1 else ""
    if not name.isdigit() or not name.isascii() or parent != "iommu_groups":
        return None, "iommu_group links to %s, not to iommu_groups/<number>: the device's IOMMU group is unknown" % (
            _shown(target)
        )
    try:
        exists = stat.S_ISDIR(os.stat(link + "/devices", dir_fd=directory).st_mode)
    except (OSError, ValueError):
        exists = False
    if not exists:
        return None, (
            "iommu_group links to %s, which does not exist or loops: the device's IOMMU group is unknown"
            % _shown(target)
        )
    return name, None


_DRIVER_NAME = re.compile(r"[A-Za-z0-9_.:+-]{1,64}\Z")


def driver_of(device_dir):
    """``(driver name, doubt)`` from a device's ``driver`` link: None when unbound; a doubt when the
    link does not point at a driver directory (``.../drivers/<name>``)."""
    target, parts, doubt = _read_link(os.path.join(device_dir, "driver"), "driver", "the device's driver is unknown")
    if target is None:
        return None, doubt
    if len(parts) < 2 or parts[-2] != "drivers" or _DRIVER_NAME.match(parts[-1]) is None:
        return None, "driver links to %s, not to drivers/<name>: the device's driver is unknown" % _shown(target)
    return parts[-1], None
