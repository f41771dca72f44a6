# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The running kernel and CPU, as procfs and ``lib/modules`` describe them.

Public API (every reader takes the host ``root``):

- :func:`parse_cmdline` ``(text) -> list[str]``: every word as written (double quotes group spaces)
- :func:`kernel_arguments` ``(words)``, :func:`init_arguments` ``(words)``: the words before and after
  the first bare ``--`` (the kernel stops parsing there and hands the rest to init)
- :func:`split_argument` ``(word) -> (name, value | None)``: one word as the kernel reads it;
  :func:`parameters` ``(args)``: ``(name, value, word)`` of each of the kernel's own arguments
- :func:`cmdline_values` ``(args, key) -> list[str]``, :func:`cmdline_value` ``(args, key) -> str | None``
  (the last wins, as in the kernel; ``-`` and ``_`` alike in names; nothing after ``--``)
- :func:`kernel_bool` ``(text) -> bool | None``: a boolean value as the kernel reads it;
  :func:`cmdline_flag` ``(args, key, bare=True) -> bool | None``: a boolean parameter's setting
- :func:`read_cmdline` ``(root) -> list[str] | None``: the kernel's own arguments;
  :func:`read_cmdline_words` ``(root)``: every word of ``proc/cmdline``
- :func:`read_release` ``(root) -> str | None`` (falls back to the only ``lib/modules/<release>``
  of an image tree)
- :func:`read_loaded_modules` ``(root) -> list[str] | None``
- :func:`read_builtin_modules` ``(root, release) -> set[str] | None`` (names with ``_``)
- :func:`read_vfio_aliases` ``(root, release) -> list[(pattern, driver)]``: variant VFIO drivers
  from ``modules.alias`` (``alias vfio_pci:<pattern> <driver>``)
- :func:`vfio_variant_drivers` ``(modalias, aliases) -> list[str]`` (best match first)
- :func:`module_parameter` ``(root, module, parameter) -> str | None``
- :func:`kernel_config_option` ``(root, release, option) -> str | None``: a build option of the
  kernel (``y``, ``m``, a value; ``n`` when the configuration leaves it unset), None when no
  configuration of that release can be read (:data:`KERNEL_CONFIGS`)
- :func:`read_cpuinfo` ``(root) -> dict | None``, :func:`architecture_of` ``(cpuinfo) -> str | None``
  (``x86_64``, ``aarch64``, ``ppc64le``)
- :func:`read_cpu_flags` ``(root) -> (vendor_id | None, set[str] | None)``
- :func:`read_kernel` ``(root, findings=None) -> dict``, :func:`read_cpu` ``(root, findings=None)
  -> dict``: the ``kernel`` and ``cpu`` parts of the topology (``read_kernel``'s ``secure_boot`` is
  :func:`secureboot.read_secure_boot`, which adds ``module_signatures_enforced``; ``read_cpu`` adds the
  ``no_cpu_virtualization`` and ``kvm_unavailable`` findings).
"""

from __future__ import annotations

import fnmatch
import gzip
import os
import zlib

from ansible_collections.gpuvirt.host.plugins.module_utils.machine import read_machine
from ansible_collections.gpuvirt.host.plugins.module_utils.secureboot import read_secure_boot
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import host_path, list_dir, read_text

VFIO_PCI_BUILTIN_NAMES = ("vfio_pci",)


def parse_cmdline(text):
    """Split a command line into its words as written: double quotes group spaces (the kernel's
    ``next_arg()``, lib/cmdline.c) and stay in the words. The whole line, init arguments after
    ``--`` included: boot configuration editors keep every word; readers of the kernel's view
    take :func:`kernel_arguments` of it."""
    args = []
    current = []
    quoted = False
    started = False
    for char in text:
        if char == '"':
            quoted = not quoted
            started = True
            current.append(char)
        elif char.isspace() and not quoted:
            if started:
                args.append("".join(current))
                current = []
                started = False
        else:
            current.append(char)
            started = True
    if started:
        args.append("".join(current))
    return args


INIT_SEPARATOR = "--"


def kernel_arguments(words):
    """The words the kernel parses as its own parameters: those before the first bare ``--``.

    ``parse_args()`` (kernel/params.c) stops at ``--`` and hands the rest to init, so
    ``-- iommu=pt`` sets nothing in the kernel.
    """
    for index, word in enumerate(words):
        if _is_separator(word):
            return words[:index]
    return list(words)


def init_arguments(words):
    """The words after the first bare ``--`` (init's arguments), or an empty list."""
    for index, word in enumerate(words):
        if _is_separator(word):
            return words[index + 1 :]
    return []


def _is_separator(word):
    # next_arg() drops the quotes of a quoted word first, so "--" separates too.
    return word == INIT_SEPARATOR or word == '"--"'


def split_argument(word):
    """``(name, value)`` of one word as ``next_arg()`` reads it: the first ``=`` splits, quotes
    around the whole word or around the value are dropped; ``value`` is None without ``=``."""
    body = word[1:] if word.startswith('"') else word
    name, sep, value = body.partition("=")
    if word.startswith('"') and body.endswith('"'):
        if sep:
            value = value[:-1]
        else:
            name = name[:-1]
    elif sep and value.startswith('"'):
        value = value[1:-1] if value.endswith('"') and len(value) > 1 else value[1:]
    return name, (value if sep else None)


def parameter_name(name):
    """The kernel treats ``-`` and ``_`` in parameter names alike (kernel-parameters.rst)."""
    return name.replace("-", "_")


def parameters(args):
    """``(name, value, word)`` for each of the kernel's arguments in ``args``, in order: ``name`` with
    ``-`` as ``_``, ``value`` as :func:`split_argument` gives it (None without ``=``), ``word`` as
    written; nothing after ``--``."""
    for word in kernel_arguments(args):
        name, value = split_argument(word)
        yield parameter_name(name), value, word


def cmdline_values(args, key):
    """Every value of ``key=value`` among the kernel's arguments in ``args``, in order, quotes removed;
    ``vfio-pci.ids`` and ``vfio_pci.ids`` are one key; nothing after ``--`` counts."""
    wanted = parameter_name(key)
    return [value for name, value, _word in parameters(args) if name == wanted and value is not None]


def cmdline_value(args, key):
    """The value of the last ``key=value`` (the kernel applies them in order), or None."""
    values = cmdline_values(args, key)
    return values[-1] if values else None


def kernel_bool(text):
    """A boolean as the kernel's ``kstrtobool()`` (lib/kstrtox.c) reads it, or None where it refuses
    the text (the parameter then keeps its value): the first character decides (``Y``, ``T``, ``1``
    true; ``N``, ``F``, ``0`` false; either case), and ``on`` or ``off`` by their first two. So
    ``yes``, ``true`` and ``On`` are true; ``enabled`` and ``2`` are refused."""
    first = text[:1].lower()
    if first and first in "yt1":
        return True
    if first and first in "nf0":
        return False
    if first == "o":
        return {"n": True, "f": False}.get(text[1:2].lower())
    return None


def cmdline_flag(args, key, bare=True):
    """How the kernel's arguments in ``args`` set the boolean parameter ``key``: each occurrence in
    order, the last one the kernel accepts wins (:func:`kernel_bool`); None when none sets it (its
    default holds). ``bare``: a ``key`` without ``=`` sets it true, as for a module's ``bool``
    parameter (``param_set_bool()``, kernel/params.c); early parameters refuse it."""
    wanted = parameter_name(key)
    setting = None
    for name, value, _word in parameters(args):
        if name != wanted:
            continue
        if value is None:
            if bare:
                setting = True
            continue
        flag = kernel_bool(value)
        if flag is not None:
            setting = flag
    return setting


def read_cmdline_words(root):
    """Every word of ``proc/cmdline`` (init arguments included), or None when unreadable."""
    text = read_text(host_path(root, "proc/cmdline"))
    return None if text is None else parse_cmdline(text)


def read_cmdline(root):
    """The running kernel's own arguments (``proc/cmdline`` up to ``--``), or None when unreadable."""
    words = read_cmdline_words(root)
    return None if words is None else kernel_arguments(words)


def read_release(root):
    """``proc/sys/kernel/osrelease``; for an image tree, its only ``lib/modules`` release."""
    release = read_text(host_path(root, "proc/sys/kernel/osrelease"))
    if release:
        return release
    releases = [r for r in list_dir(host_path(root, "lib/modules")) if not r.startswith(".")]
    return releases[0] if len(releases) == 1 else None


def read_loaded_modules(root):
    """Names in ``proc/modules`` (first column), sorted; None when unreadable."""
    text = read_text(host_path(root, "proc/modules"))
    if text is None:
        return None
    return sorted({line.split(None, 1)[0] for line in text.splitlines() if line.strip()})


def modules_dir(root, release):
    """``lib/modules/<release>`` (or ``usr/lib/modules/<release>``) below ``root``, or None."""
    for base in ("lib/modules", "usr/lib/modules"):
        path = host_path(root, base, release)
        if os.path.isdir(path):
            return path
    return None


def _module_name(path):
    name = os.path.basename(path.strip())
    for suffix in (".ko.zst", ".ko.xz", ".ko.gz", ".ko"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def read_builtin_modules(root, release):
    """Names of the modules built into the kernel (``modules.builtin``), or None when unknown."""
    if not release:
        return None
    directory = modules_dir(root, release)
    if directory is None:
        return None
    try:
        with open(directory + "/modules.builtin", encoding="utf-8", errors="replace") as handle:
            return {_module_name(line) for line in handle if line.strip()}
    except OSError:
        return None


def read_vfio_aliases(root, release):
    """``[(modalias pattern, driver)]`` of variant VFIO drivers (``alias vfio_pci:...`` lines).

    vfio-pci's own ``alias vfio_pci:v*d*sv*sd*bc*sc*i* vfio_pci`` (its override-only table, which
    matches every device) is not a variant and is left out.
    """
    directory = modules_dir(root, release) if release else None
    if directory is None:
        return []
    aliases = []
    try:
        with open(directory + "/modules.alias", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("alias vfio_pci:"):
                    parts = line.split()
                    if len(parts) == 3 and parts[2].replace("-", "_") != "vfio_pci":
                        aliases.append((parts[1][len("vfio_pci:") :], parts[2]))
    except OSError:
        return []
    return aliases


def vfio_variant_drivers(modalias, aliases):
    """Every variant VFIO driver whose alias matches a device's ``pci:v...`` modalias, the most
    specific pattern (fewest wildcards) first, as libvirt ranks them; ties keep the file order."""
    if not modalias or not modalias.startswith("pci:"):
        return []
    subject = modalias[len("pci:") :]
    matches = [(pattern.count("*"), index, driver) for index, (pattern, driver) in enumerate(aliases)
               if fnmatch.fnmatchcase(subject, pattern)]
    drivers = []
    for _wildcards, _index, driver in sorted(matches):
        if driver not in drivers:
            drivers.append(driver)
    return drivers


def module_parameter(root, module, parameter):
    """``sys/module/<module>/parameters/<parameter>`` of a loaded module, or None."""
    return read_text(host_path(root, "sys/module", module, "parameters", parameter))


# Where a kernel's build configuration is: the running kernel's own (CONFIG_IKCONFIG_PROC), then the
# copies distributions install beside it (Debian, Ubuntu, SUSE in /boot; Fedora, RHEL, Arch in the
# modules' directory).
KERNEL_CONFIGS = ("boot/config-{release}", "usr/lib/modules/{release}/config", "lib/modules/{release}/config")
PROC_CONFIG = "proc/config.gz"


def _kernel_config(root, release):
    """The text of kernel ``release``'s build configuration (:data:`PROC_CONFIG` for the running
    kernel, else the first of :data:`KERNEL_CONFIGS`), or None."""
    if release == read_text(host_path(root, "proc/sys/kernel/osrelease")):
        try:
            with gzip.open(host_path(root, PROC_CONFIG), "rt", encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except (OSError, EOFError, zlib.error):
            pass
    for pattern in KERNEL_CONFIGS:
        try:
            with open(host_path(root, pattern.format(release=release)), encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            continue
    return None


def kernel_config_option(root, release, option):
    """``CONFIG_<option>``'s value in the configuration of kernel ``release`` (``y``, ``m``, or its
    value with the quotes kept), ``n`` when the configuration does not set it (``# ... is not set``,
    or no line), None when no configuration can be read. ``proc/config.gz`` is the running kernel's,
    so it counts only for the running release."""
    text = _kernel_config(root, release) if release else None
    if text is None:
        return None
    prefix = "CONFIG_%s=" % option
    for line in text.splitlines():
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    return "n"


def read_kernel(root, findings=None):
    """The ``kernel`` part of the topology."""
    release = read_release(root)
    words = read_cmdline_words(root)
    cmdline = None if words is None else kernel_arguments(words)
    if cmdline is None and findings is not None and os.path.isdir(host_path(root, "proc/sys")):
        findings.warning("unreadable_attribute", "/proc/cmdline could not be read; reported as null")
    builtin = read_builtin_modules(root, release)
    return {
        "release": release,
        "cmdline": cmdline,
        "init_arguments": None if words is None else init_arguments(words),
        "modules_loaded": read_loaded_modules(root),
        "vfio_builtin": None if builtin is None else any(name in builtin for name in VFIO_PCI_BUILTIN_NAMES),
        "vfio_builtin_modules": None if builtin is None else sorted(n for n in builtin if n.startswith("vfio")),
        "secure_boot": read_secure_boot(root, findings),
    }


def read_cpuinfo(root):
    """``{key: value}`` of the first CPU block of ``proc/cpuinfo`` (keys as written), or None."""
    values = {}
    try:
        with open(host_path(root, "proc/cpuinfo"), encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, sep, value = line.partition(":")
                key = key.strip()
                if not sep:
                    if values:
                        break  # a blank line ends the first CPU's block
                    continue
                values.setdefault(key, value.strip())
    except OSError:
        return None
    return values


# What each architecture's /proc/cpuinfo shows (arch/*/kernel/cpuinfo.c, arch/powerpc/kernel/setup-common.c).
X86 = "x86_64"
ARM64 = "aarch64"
POWER = "ppc64le"
S390 = "s390x"
RISCV = "riscv64"
SUPPORTED_ARCHITECTURES = (X86, ARM64)


def architecture_of(cpuinfo):
    """``x86_64``, ``aarch64``, ``ppc64le``, ``s390x`` or ``riscv64`` from the first block of
    ``proc/cpuinfo``, else None. s390's summary block starts ``vendor_id : IBM/S390`` and counts
    ``# processors`` (arch/s390/kernel/processor.c ``show_cpu_summary()``); RISC-V's names each
    ``hart`` and its ``isa`` (arch/riscv/kernel/cpu.c ``c_show()``)."""
    if not cpuinfo:
        return None
    if cpuinfo.get("vendor_id") == "IBM/S390" or "# processors" in cpuinfo:
        return S390
    if "isa" in cpuinfo and "hart" in cpuinfo:
        return RISCV
    if "flags" in cpuinfo or "vendor_id" in cpuinfo:
        return X86
    if "CPU implementer" in cpuinfo or "Features" in cpuinfo:
        return ARM64
    if "platform" in cpuinfo or cpuinfo.get("cpu", "").upper().startswith("POWER"):
        return POWER
    return None


def read_cpu_flags(root):
    """``(vendor_id, flags)`` of the first CPU in ``proc/cpuinfo``; flags is None when not listed
    (unreadable file, or an architecture without x86 flags)."""
    cpuinfo = read_cpuinfo(root)
    if cpuinfo is None:
        return None, None
    flags = cpuinfo.get("flags")
    return cpuinfo.get("vendor_id") or None, None if flags is None else set(flags.split())


def read_cpu(root, findings=None):
    """The ``cpu`` part of the topology: ``architecture``, ``vendor``, ``virtualization``, ``kvm``,
    ``virtual_machine`` and ``hypervisor`` (:func:`machine.read_machine`).

    ``virtualization``: ``vmx``/``svm`` from the x86 flags; ``el2`` on arm64 when ``/dev/kvm`` exists
    (KVM is built in there and works only when the kernel was entered at EL2; the CPU features do
    not show it). Adds ``no_cpu_virtualization`` (error) when x86 flags lack vmx and svm, and
    ``kvm_unavailable`` (warning) when the CPU can virtualize but ``/dev/kvm`` is missing. In a
    virtual machine the missing virtualization is its hypervisor's to pass on (nested virtualization),
    and the advice says so.
    """
    cpuinfo = read_cpuinfo(root)
    architecture = architecture_of(cpuinfo)
    vendor = (cpuinfo or {}).get("vendor_id") or None
    flags = (cpuinfo or {}).get("flags")
    flags = None if flags is None else set(flags.split())
    kvm = os.path.exists(host_path(root, "dev/kvm"))
    virtual_machine, hypervisor = read_machine(root, flags)
    virtualization = None
    if flags is not None:
        virtualization = "vmx" if "vmx" in flags else "svm" if "svm" in flags else None
    elif architecture == ARM64 and kvm:
        virtualization = "el2"
    if findings is not None and architecture == ARM64 and not kvm:
        findings.warning(
            "kvm_unavailable",
            "/dev/kvm does not exist: arm64 KVM is built into the kernel and starts only when the kernel "
            "is entered at EL2 (dmesg says \"HYP mode not available\" otherwise); %s"
            % (nested_advice(hypervisor, ARM64) if virtual_machine else "check the firmware's virtualization "
               "setting and that the kernel has CONFIG_KVM"),
        )
    elif findings is not None and flags is not None:
        if virtualization is None and not kvm:
            findings.error(
                "no_cpu_virtualization",
                "the CPU flags list neither vmx (Intel VT-x) nor svm (AMD-V): %s; KVM cannot run guests "
                "without it"
                % (nested_advice(hypervisor, X86) if virtual_machine else "enable virtualization in the "
                   "firmware setup (or expose it to this VM with nested virtualization)"),
            )
        elif virtualization is None:
            findings.warning(
                "no_cpu_virtualization",
                "the CPU flags list neither vmx (Intel VT-x) nor svm (AMD-V) although /dev/kvm exists "
                "(a paravirtualized or unusual KVM): hardware-assisted guests and device assignment may "
                "not work; %s"
                % (nested_advice(hypervisor, X86) if virtual_machine else "enable VT-x/AMD-V in the "
                   "firmware or for this VM"),
            )
        elif not kvm:
            module = "kvm_intel" if virtualization == "vmx" else "kvm_amd"
            findings.warning(
                "kvm_unavailable",
                "the CPU supports %s but /dev/kvm does not exist: load the %s module (modprobe %s)"
                % (virtualization, module, module),
            )
    elif findings is not None and not os.path.exists(host_path(root, "proc/cpuinfo")) and os.path.isdir(
        host_path(root, "proc/sys")
    ):
        findings.warning(
            "unreadable_attribute", "/proc/cpuinfo could not be read; CPU virtualization is reported as null"
        )
    return {
        "architecture": architecture, "vendor": vendor, "virtualization": virtualization, "kvm": kvm,
        "virtual_machine": virtual_machine, "hypervisor": hypervisor,
    }


def virtual_machine_name(hypervisor):
    """``this virtual machine (QEMU)``, or without the name when it is unknown."""
    return "this virtual machine (%s)" % hypervisor if hypervisor else "this virtual machine"


def nested_advice(hypervisor, architecture):
    """What to change, at the hypervisor of a virtual machine, for its guests to get CPU virtualization."""
    if architecture == ARM64:
        return (
            "%s is entered at EL1 unless its hypervisor emulates EL2 for it (nested virtualization; on "
            "QEMU: -machine virt,virtualization=on, which under KVM needs a host CPU and kernel that can "
            "nest); the firmware setup of this machine changes nothing" % virtual_machine_name(hypervisor)
        )
    return (
        "%s gets VT-x or AMD-V only from its hypervisor, through nested virtualization: turn it on there (on a "
        "KVM hypervisor: the kvm_intel or kvm_amd module's nested=1, and a CPU model that keeps vmx or "
        "svm, as libvirt's <cpu mode='host-passthrough'/>); the firmware setup of this machine changes "
        "nothing" % virtual_machine_name(hypervisor)
    )
