# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel command line a host boots with: argument logic, bootloader detection and layouts.

Public API (every reader takes the host ``root``; only :func:`apply` writes or runs anything):

- :class:`Argument`, :func:`parse_argument` ``(text) -> Argument``, :func:`same_key`,
  :data:`REPEATABLE_KEYS`: one kernel argument; keys compare with dashes and underscores equal.
- :func:`validate_arguments` ``(present, absent, architecture) -> (list[Argument], list[Argument])``: raises
  :class:`ArgumentError` for bad input.
- :func:`plan_arguments` ``(current, present, absent, replace_in_place=True) -> ArgumentPlan``:
  the pure list logic (order kept, new arguments appended, one value per key unless repeatable).
- :func:`reboot_required` ``(running, present, absent) -> bool``.
- :func:`detect_bootloader` ``(root) -> str``: ``ostree``, ``kernelstub``, ``sdboot-manage``, ``grub``,
  ``grubby``, ``systemd-boot`` or ``proxmox``; raises :class:`BootloaderError` when nothing is recognised
  or the host boots a configuration that is not supported (NixOS, Limine).
- :func:`booted_loader` ``(root) -> str | None``: the loader that names itself in ``LoaderInfo``;
  :func:`efi_string` ``(root, variable) -> str | None`` reads a string EFI variable.
- :func:`plan` ``(module, root, bootloader, present, absent, update=True) -> BootPlan`` and
  :func:`apply` ``(module, boot_plan, backup=False) -> dict``: read everything, predict every file
  and command; then write (temp file + atomic move), run the regeneration command, restore the
  files when it fails, and read the result back.
- Commands only ever run when ``root`` is this host's ``/`` (:func:`host.is_live_root`).
- :func:`installed_kernels` ``(root) ->
  [(release, image, debian_initrd | None)]``.
- Layout readers, each with ``arguments()`` and ``render(ArgumentPlan)``: :class:`GrubDefaults`
  (``GrubDefaults.read(root, target)``), :class:`KernelCmdlineFile`, :class:`KernelstubConfig`,
  :class:`LoaderEntry` (a systemd-boot entry kernel-install did not write; :func:`loader_entries`
  ``(root) -> (paths, kernel_install_wrote_any)``), :class:`BlsEntry` with :func:`read_bls_entries`
  ``(root) -> (entries, GrubEnv)`` and :func:`default_entry`.
- OSTree: :func:`ostree_system` ``(root) -> bool``; :func:`read_ostree_kargs` ``(module, tool) ->
  list[str]`` (the next boot's deployment); its change is a :class:`KargsChange` among the edits.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import json
import os
import re
from dataclasses import dataclass, field

from ansible_collections.gpuvirt.host.plugins.module_utils import host as host_model
from ansible_collections.gpuvirt.host.plugins.module_utils import kernel_install as install_config
from ansible_collections.gpuvirt.host.plugins.module_utils import pending, rules, uki
from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError
from ansible_collections.gpuvirt.host.plugins.module_utils.files import FileChange, apply_change, read_file
from ansible_collections.gpuvirt.host.plugins.module_utils.host import inside
from ansible_collections.gpuvirt.host.plugins.module_utils.kernel import (
    INIT_SEPARATOR,
    parse_cmdline,
    read_cmdline_words,
    split_argument,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import host_path, list_dir

BOOTLOADERS = ("grub", "grubby", "systemd-boot", "proxmox", "ostree", "kernelstub", "sdboot-manage")

# Keys the kernel, dracut or systemd accept several times, each occurrence adding to the others
# (two consoles, one hugepage pool per size, several LUKS volumes). Every other key takes one
# value: the last occurrence wins, so a new value replaces the old ones. Names use ``_``.
REPEATABLE_KEYS = frozenset(
    (
        "acpi_osi",
        "bond",
        "bridge",
        "console",
        "crashkernel",
        "hugepages",
        "hugepagesz",
        "ifname",
        "initcall_blacklist",
        "ip",
        "memmap",
        "modprobe.blacklist",
        "nameserver",
        "rd.driver.blacklist",
        "rd.driver.post",
        "rd.driver.pre",
        "rd.luks.name",
        "rd.luks.uuid",
        "rd.lvm.lv",
        "rd.lvm.vg",
        "rd.md.uuid",
        "rd.route",
        "systemd.mount_extra",
        "systemd.setenv",
        "systemd.swap_extra",
        "vlan",
    )
)

GRUB_DEFAULTS = "etc/default/grub"
GRUB_DROPINS = "etc/default/grub.d"
KERNEL_CMDLINE = "etc/kernel/cmdline"
KERNEL_CMDLINE_VENDOR = "usr/lib/kernel/cmdline"
BLS_ENTRIES = "boot/loader/entries"
GRUBENV = "boot/grub2/grubenv"
PROXMOX_ESP_LIST = "etc/kernel/proxmox-boot-uuids"
KERNELSTUB_CONFIG = "etc/kernelstub/configuration"
SDBOOT_MANAGE_CONFIG = "etc/sdboot-manage.conf"
SDBOOT_MANAGE_OPTIONS = "LINUX_OPTIONS"
NIXOS_MARKER = "etc/NIXOS"  # present on every NixOS system
# The argument by which the initramfs finds the deployment; ostree writes it into each deployment's
# boot entry itself.
OSTREE_KEY = "ostree"
# The Boot Loader Interface's variable naming the loader that booted the running system: systemd-boot
# ("systemd-boot 257.4"), but also GRUB with its bli module ("GRUB 2.12") and Limine ("Limine 9.3.0").
LOADER_INFO = "sys/firmware/efi/efivars/LoaderInfo-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
# The loaders named by LoaderInfo's first word; any other is none of the configurations read here.
_LOADER_NAMES = {"systemd-boot": "systemd-boot", "grub": "grub", "limine": "limine"}
# limine-entry-tool's configuration (the lowest layer and the last one it reads), and the places Limine
# looks for limine.conf on its boot partition.
LIMINE_TOOL_CONFIGS = ("etc/limine-entry-tool.conf", "etc/default/limine")
LIMINE_CONFIGS = ("limine.conf", "limine/limine.conf", "boot/limine.conf", "boot/limine/limine.conf",
                  "EFI/BOOT/limine.conf", "EFI/limine/limine.conf")
ESP_MOUNTS = ("efi", "boot/efi", "boot")
# systemd-stub sets it when it starts a unified kernel image.
STUB_INFO = "sys/firmware/efi/efivars/StubInfo-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
MKINITCPIO_PRESETS = "etc/mkinitcpio.d"
LINUX = "GRUB_CMDLINE_LINUX"
LINUX_DEFAULT = "GRUB_CMDLINE_LINUX_DEFAULT"
_GRUB_VARIABLES = (LINUX, LINUX_DEFAULT)
_C_LOCALE = {"LANG": "C", "LC_ALL": "C"}


class ArgumentError(GpuvirtError, ValueError):
    """``present``/``absent`` are not valid; nothing was read or changed."""


class BootloaderError(GpuvirtError):
    """The boot configuration cannot be read, edited or regenerated; says where and what to do."""


# ------------------------------------------------------------------------------------ arguments


@dataclass(frozen=True)
class Argument:
    """One kernel argument: ``text`` as written, ``key``, and ``value`` (None for a bare key)."""

    text: str
    key: str
    value: str | None

    @property
    def norm_key(self):
        # The kernel treats dashes and underscores in parameter names alike (kernel-parameters.rst),
        # so vfio-pci.ids and vfio_pci.ids are one parameter.
        return self.key.replace("-", "_")

    @property
    def repeatable(self):
        return self.norm_key in REPEATABLE_KEYS


def parse_argument(text):
    """Split one argument as the kernel does: ``key=value`` with quotes around the value removed."""
    key, value = split_argument(text)
    return Argument(text, key, value)


def same_key(first, second):
    return first.norm_key == second.norm_key


def _same(existing, wanted):
    return same_key(existing, wanted) and existing.value == wanted.value


def _removes(absent, existing):
    """``absent`` ``key`` removes every value of the key; ``key=value`` only that value."""
    return same_key(absent, existing) and (absent.value is None or absent.value == existing.value)


def _checked(text, option):
    if not isinstance(text, str):
        raise ArgumentError("%s: %r is not a string; give arguments as key or key=value" % (option, text))
    rules.kernel_argument(text, option, error=ArgumentError)
    if text == "--":
        raise ArgumentError("%s: '--' separates init arguments and cannot be managed as an argument" % option)
    argument = parse_argument(text)
    if not argument.key:
        raise ArgumentError("%s: argument %r has an empty key" % (option, text))
    return argument


def validate_arguments(present, absent, architecture=(None, None)):
    """Check and de-duplicate ``present`` and ``absent``; raise :class:`ArgumentError` on conflicts.

    ``architecture``: ``(name, source)`` of the host (:func:`architecture.host_architecture`); a
    present argument its kernel does not have is refused (:func:`rules.architecture_arguments`)."""
    wanted = []
    for text in present or []:
        argument = _checked(text, "present")
        # hugepages= belongs to the hugepagesz= before it: an equal one may be another size's.
        if argument.norm_key not in (HUGEPAGES, HUGEPAGESZ) and any(argument == other for other in wanted):
            continue
        for other in wanted:
            if same_key(argument, other) and not argument.repeatable:
                raise ArgumentError(
                    "present: %r and %r set the same parameter %s, which takes one value; keep one"
                    % (other.text, argument.text, argument.key)
                )
        wanted.append(argument)
    sizes = [_wanted_size(wanted, i) for i, arg in enumerate(wanted) if arg.norm_key == HUGEPAGES]
    for size in sizes:
        if sizes.count(size) > 1:
            raise ArgumentError(
                "present: hugepages= is given twice for %s, and the kernel takes one per page size (the "
                "hugepagesz= before it names the size); keep one"
                % ("the default page size" if size is None else "page size %s" % size)
            )
    unwanted = []
    for text in absent or []:
        argument = _checked(text, "absent")
        if argument not in unwanted:
            unwanted.append(argument)
    for gone in unwanted:
        for kept in wanted:
            if not same_key(gone, kept):
                continue
            if kept.repeatable and gone.value is not None and gone.value != kept.value:
                continue
            raise ArgumentError(
                "%r is in present and %r in absent: the same parameter %s cannot be both; a present "
                "key=value already replaces the other values of its key" % (kept.text, gone.text, kept.key)
            )
    rules.boot_arguments([a.text for a in wanted], [a.text for a in unwanted], error=ArgumentError)
    rules.architecture_arguments([a.text for a in wanted], *architecture, error=ArgumentError)
    return wanted, unwanted


@dataclass
class ArgumentPlan:
    """``result``: ``(index in current or None for a new argument, text)`` in order."""

    result: list
    added: list
    removed: list

    @property
    def arguments(self):
        return [text for _index, text in self.result]

    @property
    def changed(self):
        return bool(self.added or self.removed)


# hugepages= sets the pool of the page size the hugepagesz= before it names, or of the default size when
# none comes before it; a second hugepages= for one size is ignored (mm/hugetlb.c, hugepages_setup()).
HUGEPAGES, HUGEPAGESZ = "hugepages", "hugepagesz"
DEFAULT_SIZE = None


def _hugepage_sizes(parsed, keep=None):
    """``{index of a hugepages= argument: the page size it sets (None: the default size)}``."""
    sizes, size = {}, DEFAULT_SIZE
    for i, arg in enumerate(parsed):
        if keep is not None and not keep[i]:
            continue
        if arg.norm_key == HUGEPAGESZ:
            size = arg.value
        elif arg.norm_key == HUGEPAGES:
            sizes[i] = size
    return sizes


def _wanted_size(present, position):
    """The page size a present ``hugepages=`` sets: that of a hugepagesz= given just before it."""
    previous = present[position - 1] if position > 0 else None
    return previous.value if previous is not None and previous.norm_key == HUGEPAGESZ else DEFAULT_SIZE


def _plan_hugepages(parsed, keep, present, position, replace_in_place):
    """Where a present ``hugepages=`` goes: ``("keep", None)``, ``("replace", index)``, ``("move", index)``
    (removed there and appended), ``("insert", index)`` (before that argument; None: at the end) or
    ``("append", None)``. Raises :class:`ArgumentError` when no edit keeps it paired with its page size."""
    wanted = present[position]
    size = _wanted_size(present, position)
    sizes = _hugepage_sizes(parsed, keep)
    same = sorted(i for i, at in sizes.items() if at == size)
    label = "the default page size" if size is None else "page size %s" % size
    if same and parsed[same[0]].value == wanted.value:
        return "keep", None
    sizers = [i for i, arg in enumerate(parsed) if keep[i] and arg.norm_key == HUGEPAGESZ]
    if same and replace_in_place:
        return "replace", same[0]
    if same and not sizers:
        return "move", same[0]  # removed and appended: still of the default size
    if not same and size is None and not sizers:
        return "append", None
    if not same and size is None and replace_in_place:
        return "insert", sizers[0]
    if not same and size is not None and not any(parsed[i].value == size for i in sizers):
        return "append", None  # its hugepagesz= comes with it, just before
    if not same and size is not None and replace_in_place:
        following = [i for i in range(len(parsed)) if i > max(j for j in sizers if parsed[j].value == size)]
        return "insert", following[0] if following else None
    raise ArgumentError(
        "%s for %s: the kernel takes one hugepages= per page size, from the hugepagesz= before it, and "
        "this bootloader's tool appends new arguments at the end, where it would pair with another size; "
        "edit the hugepages arguments of %s by hand" % (wanted.text, label, " ".join(a.text for a in parsed))
    )


def plan_arguments(current, present, absent, replace_in_place=True):
    """Apply validated ``present``/``absent`` :class:`Argument` lists to the ``current`` texts.

    Existing arguments keep their order; new ones are appended. A present ``key=value`` replaces the
    other values of its key (in place, or removed and appended when ``replace_in_place`` is false,
    as grubby does), unless the key is repeatable.

    Words from a bare ``--`` on belong to init, not to the kernel: they are never matched or
    removed, and a line holding them cannot take new kernel arguments at its end.
    """
    init_start = current.index(INIT_SEPARATOR) if INIT_SEPARATOR in current else len(current)
    parsed = [parse_argument(text) for text in current[:init_start]]
    keep = [not any(_removes(gone, arg) for gone in absent) for arg in parsed] + [True] * (len(current) - init_start)
    replacement = {}
    appended = []
    inserted = {}
    for position, wanted in enumerate(present):
        same = [i for i, arg in enumerate(parsed) if keep[i] and same_key(arg, wanted)]
        exact = [i for i in same if _same(parsed[i], wanted)]
        if wanted.norm_key == HUGEPAGES and wanted.value is not None:
            action, index = _plan_hugepages(parsed, keep, present, position, replace_in_place)
            if action in ("replace", "move"):
                # Later ones of the same size are ignored by the kernel: they go.
                for i, size in _hugepage_sizes(parsed, keep).items():
                    if i > index and size == _wanted_size(present, position):
                        keep[i] = False
            if action == "move":
                keep[index] = False
            if action == "replace":
                replacement[index] = wanted.text
            elif action == "insert" and index is not None:
                inserted.setdefault(index, []).append(wanted.text)
            elif action != "keep":
                # A default-size pool goes before a hugepagesz= this plan appends: after it, it would
                # be that size's.
                sizers = [i for i, text in enumerate(appended) if parse_argument(text).norm_key == HUGEPAGESZ]
                if _wanted_size(present, position) is DEFAULT_SIZE and sizers:
                    appended.insert(sizers[0], wanted.text)
                else:
                    appended.append(wanted.text)
            continue
        if wanted.repeatable:
            if not exact:
                appended.append(wanted.text)
            continue
        if exact:
            for i in same:
                keep[i] = i == exact[0]
        elif same:
            for i in same[1:]:
                keep[i] = False
            if replace_in_place:
                replacement[same[0]] = wanted.text
            else:
                keep[same[0]] = False
                appended.append(wanted.text)
        else:
            appended.append(wanted.text)
    if appended and init_start < len(current):
        raise BootloaderError(
            "the configured command line %r passes init arguments after '--'; %s would be appended after "
            "them and reach init instead of the kernel: move the '--' part to the end by hand first"
            % (" ".join(current), " ".join(appended))
        )
    result = []
    for i, text in enumerate(current):
        result.extend((None, new) for new in inserted.get(i, ()))
        if keep[i]:
            result.append((i, replacement.get(i, text)))
    result.extend((None, text) for text in appended)
    removed = [text for i, text in enumerate(current) if not keep[i] or i in replacement]
    added = ([replacement[i] for i in sorted(replacement)] + [t for i in sorted(inserted) for t in inserted[i]]
             + appended)
    return ArgumentPlan(result, added, removed)


def reboot_required(running, present, absent):
    """True while the running kernel lacks a ``present`` argument or still has an ``absent`` one."""
    if running is None:
        return False
    parsed = [parse_argument(text) for text in running]
    sizes = _hugepage_sizes(parsed)
    for position, wanted in enumerate(present):
        same = [arg for arg in parsed if same_key(arg, wanted)]
        if wanted.norm_key == HUGEPAGES and wanted.value is not None:
            size = _wanted_size(present, position)
            # The first hugepages= of a size is the one the kernel takes.
            taken = [parsed[i] for i in sorted(sizes) if sizes[i] == size][:1]
            satisfied = bool(taken) and taken[0].value == wanted.value
        elif wanted.repeatable:
            satisfied = any(_same(arg, wanted) for arg in same)
        else:
            satisfied = bool(same) and _same(same[-1], wanted)
        if not satisfied:
            return True
    return any(_removes(gone, arg) for gone in absent for arg in parsed)


def _merge_unique(lists):
    merged = []
    for items in lists:
        for item in items:
            if item not in merged:
                merged.append(item)
    return merged


# ------------------------------------------------------------------------------------ files


def _read(root, path):
    """The text of ``root/path`` (symlinks followed inside ``root``), or None when it does not exist."""
    try:
        return read_file(inside(root, path))
    except GpuvirtError as error:
        raise BootloaderError(str(error)) from error


def _line_of(text, offset):
    return text.count("\n", 0, offset) + 1


# ------------------------------------------------------------------------------------ GRUB defaults
# /etc/default/grub and /etc/default/grub.d/*.cfg are shell scripts that grub-mkconfig sources in
# that order. Only plain assignments to the two command line variables are edited; the rest of the
# files, comments and quoting included, is kept byte for byte.

_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")
_REFERENCE = re.compile(r"\$(?:([A-Za-z_][A-Za-z0-9_]*)|\{([A-Za-z_][A-Za-z0-9_]*)\})\Z")
_OPENERS = ("if", "while", "until", "for", "case", "select", "{")
_CLOSERS = ("fi", "done", "esac", "}")
_PREFIXES = ("then", "else", "elif", "do", "!")


class _ShellError(ValueError):
    def __init__(self, message, offset):
        super().__init__(message)
        self.offset = offset


def _skip_single(text, i):
    end = text.find("'", i + 1)
    if end < 0:
        raise _ShellError("unterminated single quote", i)
    return end + 1


def _skip_backtick(text, i):
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
        elif text[j] == "`":
            return j + 1
        else:
            j += 1
    raise _ShellError("unterminated backquote", i)


def _skip_double(text, i):
    j = i + 1
    while j < len(text):
        char = text[j]
        if char == "\\":
            j += 2
        elif char == '"':
            return j + 1
        elif char == "`":
            j = _skip_backtick(text, j)
        elif text.startswith("$(", j):
            j = _skip_parens(text, j + 1)
        else:
            j += 1
    raise _ShellError("unterminated double quote", i)


def _skip_parens(text, i):
    depth = 0
    j = i
    while j < len(text):
        char = text[j]
        if char == "\\":
            j += 2
            continue
        if char == "'":
            j = _skip_single(text, j)
            continue
        if char == '"':
            j = _skip_double(text, j)
            continue
        if char == "`":
            j = _skip_backtick(text, j)
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    raise _ShellError("unterminated $(", i)


def _shell_statements(text):
    """Split a shell script into simple commands, each a list of ``(start, end)`` word spans; those
    after ``&&``, ``||`` or ``|`` (which run only if the command before succeeds or fails, or in a
    subshell of a pipeline) in :data:`conditional` of the returned list, by index."""
    statements = _Statements()
    words = []
    start = None
    joined = False
    i = 0
    while i < len(text):
        char = text[i]
        if text.startswith("\\\n", i):
            i += 2
            continue
        if char in " \t\r" or char in "\n;&|()":
            if start is not None:
                words.append((start, i))
                start = None
            ended = char not in " \t\r" and bool(words)
            if ended:
                if joined:
                    statements.conditional.add(len(statements))
                statements.append(words)
                words = []
            if char in "&|":
                # A lone '&' (a background job) runs what follows anyway; '&&', '||' and '|' do not.
                joined = char == "|" or text.startswith("&&", i) or (i > 0 and text[i - 1] == "&")
            elif ended or char in ";()":
                joined = False  # a newline right after '&&' or '||' goes on with the list
            i += 1
            continue
        if char == "#" and start is None:
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        if start is None:
            start = i
        if char == "\\":
            i += 2
        elif char == "'":
            i = _skip_single(text, i)
        elif char == '"':
            i = _skip_double(text, i)
        elif char == "`":
            i = _skip_backtick(text, i)
        elif text.startswith("$(", i):
            i = _skip_parens(text, i + 1)
        elif text.startswith("${", i):
            end = text.find("}", i)
            if end < 0:
                raise _ShellError("unterminated ${", i)
            i = end + 1
        else:
            i += 1
    if start is not None:
        words.append((start, min(i, len(text))))
    if words:
        if joined:
            statements.conditional.add(len(statements))
        statements.append(words)
    return statements


class _Statements(list):
    """The statements of :func:`_shell_statements`, with ``conditional``: the indexes of those that may
    not run, or run in a subshell."""

    def __init__(self):
        super().__init__()
        self.conditional = set()


@dataclass
class _Token:
    raw: str
    text: str


@dataclass
class _Ref:
    raw: str
    name: str


@dataclass
class _Assignment:
    path: str
    name: str
    start: int
    end: int
    quote: str
    items: list
    line: int


def _split_shell_value(content, quote):
    """Split a quoted shell value into kernel arguments (``_Token``) and ``$VAR`` references."""
    items = []
    i = 0
    while i < len(content):
        if content[i] in " \t\n":
            i += 1
            continue
        start = i
        logical = []
        kernel_quoted = False
        while i < len(content):
            char = content[i]
            if char in " \t\n" and not kernel_quoted:
                break
            if quote == '"' and char == "\\" and i + 1 < len(content):
                following = content[i + 1]
                if following == "\n":
                    i += 2
                    continue
                if following in '"\\$`':
                    logical.append(following)
                    kernel_quoted ^= following == '"'
                    i += 2
                    continue
            if quote == '"' and char == "$" and i == start:
                end = i + 1
                while end < len(content) and content[end] not in " \t\n":
                    end += 1
                match = _REFERENCE.match(content[i:end])
                if not match:
                    raise ValueError("%r is an expansion this module cannot evaluate" % content[i:end])
                items.append(_Ref(content[i:end], match.group(1) or match.group(2)))
                i = end
                logical = None
                break
            if (quote == '"' and char in "$`") or (quote == "" and char in "\"'$`\\"):
                raise ValueError("%r needs shell expansion this module cannot evaluate" % content[start:])
            if quote == "'" and char == '"':
                kernel_quoted = not kernel_quoted
            logical.append(char)
            i += 1
        if logical is not None:
            items.append(_Token(content[start:i], "".join(logical)))
    return items


def _value_form(raw):
    """``(quote, content)`` of an assignment's value word; ValueError when it is not one string."""
    if raw == "":
        return "", ""
    if raw[0] == '"' and _skip_double(raw, 0) == len(raw):
        return '"', raw[1:-1]
    if raw[0] == "'" and _skip_single(raw, 0) == len(raw):
        return "'", raw[1:-1]
    if not re.search(r"[\"'`$\\]", raw):
        return "", raw
    raise ValueError("the value is not a single quoted string")


class GrubDefaults:
    """The command line variables of ``/etc/default/grub`` plus ``/etc/default/grub.d/*.cfg``.

    ``arguments()`` is ``GRUB_CMDLINE_LINUX`` followed by ``GRUB_CMDLINE_LINUX_DEFAULT`` as
    grub-mkconfig puts them on the ``linux`` line. New arguments go to the ``target`` variable in
    the file whose assignment wins (a drop-in overrides /etc/default/grub).
    """

    # The variables that make the command line, in the order they are joined; the file a new assignment
    # goes to; the tool that reads them (for messages).
    VARIABLES = _GRUB_VARIABLES
    MAIN = GRUB_DEFAULTS
    TOOL = "grub-mkconfig"

    def __init__(self, root, texts, target=LINUX_DEFAULT):
        self.root = root
        self.texts = texts
        self.target = target
        self.warnings = []
        self.assignments = []
        for path, text in texts.items():
            if text is not None:
                self._parse(path, text)
        self._evaluate()

    @classmethod
    def read(cls, root, target=LINUX_DEFAULT):
        texts = {GRUB_DEFAULTS: _read(root, GRUB_DEFAULTS)}
        for name in list_dir(host_path(root, GRUB_DROPINS)):
            if name.endswith(".cfg"):
                path = GRUB_DROPINS + "/" + name
                texts[path] = _read(root, path)
        return cls(root, texts, target)

    @property
    def files(self):
        return [path for path, text in self.texts.items() if text is not None]

    def _parse(self, path, text):
        try:
            statements = _shell_statements(text)
        except _ShellError as error:
            raise BootloaderError(
                "cannot parse /%s line %d: %s; fix the file (%s would fail too)"
                % (path, _line_of(text, error.offset), error, self.TOOL)
            ) from error
        depth = 0
        for number, words in enumerate(statements):
            while words and text[words[0][0] : words[0][1]] in _PREFIXES:
                words = words[1:]
            if not words:
                continue
            first = text[words[0][0] : words[0][1]]
            if first in _OPENERS:
                depth += 1
                continue
            if first in _CLOSERS:
                depth = max(0, depth - 1)
                continue
            index = 1 if first in ("export", "readonly") else 0
            found = []
            while index < len(words):
                match = _ASSIGNMENT.match(text, words[index][0], words[index][1])
                if not match:
                    break
                found.append((match.group(1), match.end(), words[index][1]))
                index += 1
            if index < len(words) and first not in ("export", "readonly"):
                continue  # VAR=value before a command only sets it for that command
            for name, start, end in found:
                if name not in self.VARIABLES:
                    continue
                line = _line_of(text, start)
                if depth or number in statements.conditional:
                    self.warnings.append(
                        "/%s line %d sets %s %s; that assignment is neither evaluated nor edited"
                        % (path, line, name, "inside a conditional block" if depth
                           else "after &&, || or | (it runs only as the command before it says)")
                    )
                    continue
                try:
                    quote, content = _value_form(text[start:end])
                    items = _split_shell_value(content, quote)
                except ValueError as error:
                    raise BootloaderError(
                        "cannot edit %s in /%s line %d: %s; write it as one quoted string of arguments, "
                        'e.g. %s="quiet intel_iommu=on"' % (name, path, line, error, name)
                    ) from error
                self.assignments.append(_Assignment(path, name, start, end, quote, items, line))

    def _evaluate(self):
        values = {name: [] for name in self.VARIABLES}
        for number, assignment in enumerate(self.assignments):
            value = []
            for index, item in enumerate(assignment.items):
                if isinstance(item, _Ref):
                    if item.name not in values:
                        raise BootloaderError(
                            "cannot edit %s in /%s line %d: it refers to $%s, which this module does not "
                            "evaluate; move those arguments into %s"
                            % (assignment.name, assignment.path, assignment.line, item.name, assignment.name)
                        )
                    value.extend(values[item.name])
                else:
                    value.append((item.text, number, index))
            values[assignment.name] = value
        self._effective = [item for name in self.VARIABLES for item in values[name]]

    def arguments(self):
        return [text for text, _number, _index in self._effective]

    def render(self, argument_plan):
        """``{path: new text}`` of the files the plan changes."""
        kept = {i for i, _text in argument_plan.result if i is not None}
        operations = {}
        for i, (_text, number, index) in enumerate(self._effective):
            if i not in kept:
                operations[(number, index)] = None
        for i, text in argument_plan.result:
            if i is not None and text != self._effective[i][0]:
                _old, number, index = self._effective[i]
                operations[(number, index)] = text
        appended = [text for i, text in argument_plan.result if i is None]
        target = None
        for number, assignment in enumerate(self.assignments):
            if assignment.name == self.target:
                target = number
        changes = {}
        for number, assignment in enumerate(self.assignments):
            touched = any(key[0] == number for key in operations) or (appended and number == target)
            if not touched:
                continue
            raws = []
            for index, item in enumerate(assignment.items):
                new = operations.get((number, index), item.raw)
                if new is not None:
                    raws.append(new)
            if number == target:
                raws.extend(appended)
            quote = assignment.quote or '"'
            changes.setdefault(assignment.path, []).append(
                (assignment.start, assignment.end, quote + " ".join(raws) + quote)
            )
        rendered = {}
        for path, edits in changes.items():
            text = self.texts[path]
            for start, end, value in sorted(edits, reverse=True):
                text = text[:start] + value + text[end:]
            rendered[path] = text
        if appended and target is None:
            text = rendered.get(self.MAIN, self.texts.get(self.MAIN)) or ""
            if text and not text.endswith("\n"):
                text += "\n"
            rendered[self.MAIN] = text + '%s="%s"\n' % (self.target, " ".join(appended))
        check = type(self)(self.root, dict(self.texts, **rendered), self.target)
        if check.arguments() != argument_plan.arguments:
            raise BootloaderError(
                "cannot edit %s safely: the edit would give %r instead of %r; simplify how the files "
                "set %s"
                % (
                    ", ".join("/" + p for p in self.files),
                    check.arguments(),
                    argument_plan.arguments,
                    " and ".join(self.VARIABLES),
                )
            )
        return rendered


class SdbootManageConfig(GrubDefaults):
    """``/etc/sdboot-manage.conf`` (sdboot-manage: CachyOS, EndeavourOS): a shell file that sdboot-manage
    sources. On every kernel install it removes the systemd-boot entries and writes one per kernel with
    ``options <root= arguments it works out> $LINUX_OPTIONS`` (the fallback entries get
    ``$LINUX_FALLBACK_OPTIONS`` instead, as GRUB's recovery entries leave ``GRUB_CMDLINE_LINUX_DEFAULT``
    out). ``LINUX_OPTIONS`` is edited as GRUB's variables are, then ``sdboot-manage gen`` writes the
    entries."""

    VARIABLES = (SDBOOT_MANAGE_OPTIONS,)
    MAIN = SDBOOT_MANAGE_CONFIG
    TOOL = "sdboot-manage"

    def __init__(self, root, texts, target=SDBOOT_MANAGE_OPTIONS):
        super().__init__(root, texts, target)

    @classmethod
    def read(cls, root, target=SDBOOT_MANAGE_OPTIONS):
        return cls(root, {SDBOOT_MANAGE_CONFIG: _read(root, SDBOOT_MANAGE_CONFIG)}, target)


# ------------------------------------------------------------------------------------ /etc/kernel/cmdline


class KernelCmdlineFile:
    """``/etc/kernel/cmdline`` (kernel-install, systemd-boot, proxmox-boot-tool).

    When it is missing the tools fall back to ``/usr/lib/kernel/cmdline`` and then to
    ``/proc/cmdline`` without ``BOOT_IMAGE=``/``initrd=``; the file is created from the same source.
    """

    def __init__(self, root):
        self.root = root
        self.path = KERNEL_CMDLINE
        self.text = _read(root, KERNEL_CMDLINE)
        # Lines starting with '#' are comments to mkinitcpio, which builds a unified kernel image's command
        # line from the others (build_uefi: grep '^[^#]'): they are kept, and hold no argument.
        self._comments = []
        if self.text is not None:
            lines = self.text.splitlines()
            self._comments = [line + "\n" for line in lines if line.startswith("#")]
            self._arguments = parse_cmdline("\n".join(line for line in lines if not line.startswith("#")))
            return
        vendor = _read(root, KERNEL_CMDLINE_VENDOR)
        if vendor is not None:
            self._arguments = parse_cmdline(vendor)
        else:
            running = read_cmdline_words(root)
            if running is None:
                raise BootloaderError(
                    "/%s is missing below %s and there is no /proc/cmdline to start it from; create it with "
                    "the arguments the kernel needs (root=...) first" % (KERNEL_CMDLINE, root)
                )
            self._arguments = [a for a in running if not a.startswith(("BOOT_IMAGE=", "initrd="))]

    def arguments(self):
        return list(self._arguments)

    def render(self, argument_plan):
        after = "".join(self._comments) + " ".join(argument_plan.arguments) + "\n"
        if self.text is not None and not argument_plan.changed:
            return {}
        return {} if after == self.text else {self.path: after}


class KernelstubConfig:
    """``/etc/kernelstub/configuration`` (Pop!_OS): JSON whose ``user.kernel_options`` kernelstub puts,
    after ``root=UUID=... ro``, on the systemd-boot entries it writes to the ESP.

    As kernelstub does, a configuration without a ``user`` section starts from ``default``, and
    ``kernel_options`` given as one string is split. Written back as kernelstub saves it (``json.dump``
    with an indent of 2): kernelstub rewrites the file on every run.
    """

    def __init__(self, root):
        self.root = root
        self.path = KERNELSTUB_CONFIG
        self.text = _read(root, KERNELSTUB_CONFIG)
        where = "/%s below %s" % (KERNELSTUB_CONFIG, root)
        if self.text is None:
            raise BootloaderError("%s is missing: kernelstub keeps the kernel options there" % where)
        try:
            self.config = json.loads(self.text)
        except ValueError as error:
            raise BootloaderError("%s is not JSON (%s); kernelstub cannot read it either: fix it first"
                                  % (where, error)) from error
        section = self.config.get("user", self.config.get("default")) if isinstance(self.config, dict) else None
        options = section.get("kernel_options") if isinstance(section, dict) else None
        if isinstance(options, str):
            options = parse_cmdline(options)
        if not isinstance(options, list) or not all(isinstance(option, str) for option in options):
            raise BootloaderError(
                "%s has no list of kernel_options in its user (or default) section; kernelstub cannot use it "
                "either: fix it first" % where
            )
        self._arguments = [word for option in options for word in parse_cmdline(option)]

    def arguments(self):
        return list(self._arguments)

    def render(self, argument_plan):
        config = copy.deepcopy(self.config)
        if "user" not in config:
            config["user"] = dict(config["default"])
        config["user"]["kernel_options"] = argument_plan.arguments
        after = json.dumps(config, indent=2)
        return {} if after == self.text else {self.path: after}


# ------------------------------------------------------------------------------------ BLS entries


class GrubEnv:
    """``/boot/grub2/grubenv``: a 1024-byte block of ``name=value`` lines padded with ``#``."""

    def __init__(self, root, path=GRUBENV, text=None):
        self.path = path
        self.text = _read(root, path) if text is None else text
        self.values = {}
        for line in (self.text or "").split("\n"):
            if line and not line.startswith("#") and "=" in line:
                name, _sep, value = line.partition("=")
                self.values[name] = value

    def render(self, updates):
        if not updates:
            return None
        lines = []
        seen = set()
        body = self.text or "# GRUB Environment Block\n"
        for line in body.split("\n"):
            if line.startswith("#") and set(line) == {"#"}:
                continue
            name = line.partition("=")[0]
            if line and not line.startswith("#") and name in updates:
                line = "%s=%s" % (name, updates[name])
                seen.add(name)
            lines.append(line)
        while lines and lines[-1] == "":
            lines.pop()
        lines.extend("%s=%s" % (name, value) for name, value in updates.items() if name not in seen)
        text = "\n".join(lines) + "\n"
        size = max(1024, len((self.text or "").encode("utf-8")))
        if len(text.encode("utf-8")) > size:
            raise BootloaderError("the new values do not fit the %d bytes of /%s" % (size, self.path))
        return text + "#" * (size - len(text.encode("utf-8")))


_OPTIONS_LINE = re.compile(r"^([ \t]*options)([ \t]+([^\n]*?))?[ \t]*$")
_VARIABLE_TOKEN = re.compile(r"\$(?:([A-Za-z_][A-Za-z0-9_]*)|\{([A-Za-z_][A-Za-z0-9_]*)\})\Z")


class BlsEntry:
    """A Boot Loader Specification entry (``/boot/loader/entries/*.conf``) and its ``options``.

    ``$name`` tokens expand from grubenv, as GRUB's blscfg does (RHEL 8 keeps the arguments in
    ``kernelopts`` there); arguments for such entries are added to ``kernelopts``.
    """

    def __init__(self, path, text, env):
        self.path = path
        self.text = text
        self.env = env
        self.lines = text.split("\n")
        self.name = os.path.basename(path)[: -len(".conf")]
        self.version = None
        self._effective = []
        self._options = {}
        self._references = set()
        for number, line in enumerate(self.lines):
            key, _sep, value = line.strip().partition(" ")
            if key == "version":
                self.version = value.strip()
            match = _OPTIONS_LINE.match(line)
            if not match:
                continue
            tokens = parse_cmdline(match.group(3) or "")
            self._options[number] = (match.group(1), tokens)
            for index, token in enumerate(tokens):
                reference = _VARIABLE_TOKEN.match(token)
                if reference:
                    name = reference.group(1) or reference.group(2)
                    self._references.add(name)
                    for env_index, text in enumerate(parse_cmdline(env.values.get(name, ""))):
                        self._effective.append((text, ("env", name), env_index))
                else:
                    self._effective.append((token, ("line", number), index))

    def arguments(self):
        return [text for text, _origin, _index in self._effective]

    def render(self, argument_plan):
        """``({path: new text}, {grubenv name: new value})`` for this entry."""
        kept = {i for i, _text in argument_plan.result if i is not None}
        operations = {}
        for i, (_text, origin, index) in enumerate(self._effective):
            if i not in kept:
                operations[(origin, index)] = None
        for i, text in argument_plan.result:
            if i is not None and text != self._effective[i][0]:
                _old, origin, index = self._effective[i]
                operations[(origin, index)] = text
        appended = [text for i, text in argument_plan.result if i is None]
        if "kernelopts" in self._references:
            target = ("env", "kernelopts")
        elif self._options:
            target = ("line", max(self._options))
        else:
            target = ("line", None)

        def rebuilt(origin, tokens):
            out = []
            for index, token in enumerate(tokens):
                new = operations.get((origin, index), token)
                if new is not None:
                    out.append(new)
            if origin == target:
                out.extend(appended)
            return out

        lines = list(self.lines)
        for number, (prefix, tokens) in self._options.items():
            origin = ("line", number)
            if origin == target or any(key[0] == origin for key in operations):
                lines[number] = " ".join([prefix.rstrip()] + rebuilt(origin, tokens))
        if target == ("line", None) and appended:
            if lines and lines[-1] == "":
                lines.insert(len(lines) - 1, "options " + " ".join(appended))
            else:
                lines.append("options " + " ".join(appended))
        files = {}
        text = "\n".join(lines)
        if text != self.text:
            files[self.path] = text
        env_updates = {}
        for name in sorted(self._references):
            origin = ("env", name)
            if origin == target and appended or any(key[0] == origin for key in operations):
                env_updates[name] = " ".join(rebuilt(origin, parse_cmdline(self.env.values.get(name, ""))))
        return files, env_updates


class _NoEnv:
    """systemd-boot expands no variables in an entry."""

    values = {}


class LoaderEntry:
    """A systemd-boot entry on the ESP that kernel-install did not write (Arch's ``arch.conf``, an
    entry written by hand): systemd-boot boots its ``options`` as they are, so they are edited in place.
    Its ``$name`` words stay as written."""

    def __init__(self, root, path):
        self.root = root
        self.path = path
        self.text = _read(root, path) or ""
        self._entry = BlsEntry(path, self.text, _NoEnv())

    def arguments(self):
        return self._entry.arguments()

    def render(self, argument_plan):
        files, _env = self._entry.render(argument_plan)
        return files


# kernel-install writes this comment on the entries it makes (systemd 251 and later).
_KERNEL_INSTALL_MARK = re.compile(r"^# File created by \S*90-loaderentry\.install\b", re.MULTILINE)
_VERSION_LINE = re.compile(r"^[ \t]*version[ \t]+(\S+)", re.MULTILINE)
_TRIES = re.compile(r"\+[0-9]+(?:-[0-9]+)?\Z")  # boot counting: <token>-<release>+<left>[-<done>].conf


def _written_by_kernel_install(name, text, token):
    """Whether kernel-install wrote the entry ``name``: it marks its entries with a comment naming
    ``90-loaderentry.install`` (systemd 251 and later), and names them ``<token>-<release>.conf`` with
    the release on their ``version`` line (an entry written by hand, such as ``arch-fallback.conf``,
    may share the token's prefix but not that)."""
    if _KERNEL_INSTALL_MARK.search(text):
        return True
    if not token or not name.startswith(token + "-"):
        return False
    release = name[len(token) + 1 : -len(".conf")]
    release = _TRIES.sub("", release)
    return any(version == release for version in _VERSION_LINE.findall(text))


def loader_entries(root):
    """``(own, kernel_install)``: the paths of the ESP's systemd-boot entries that kernel-install did
    not write (the one ``loader.conf`` names as default first), and whether it wrote any (see
    :func:`_written_by_kernel_install` and :func:`kernel_install.entry_token`)."""
    token = install_config.entry_token(root)
    own, kernel_install = [], False
    for esp in ESP_MOUNTS:
        directory = "%s/loader/entries" % esp
        names = sorted(name for name in list_dir(host_path(root, directory)) if name.endswith(".conf"))
        if not names:
            continue
        default = None
        for line in (_read(root, "%s/loader/loader.conf" % esp) or "").splitlines():
            key, _sep, value = line.strip().partition(" ")
            if key == "default":
                default = value.strip()
        for name in names:
            path = directory + "/" + name
            if _written_by_kernel_install(name, _read(root, path) or "", token):
                kernel_install = True
            else:
                own.append(path)
        if default:
            patterns = (default, default + ".conf")
            own.sort(key=lambda path: not any(fnmatch.fnmatchcase(os.path.basename(path), p) for p in patterns))
        break
    return own, kernel_install


# ------------------------------------------------------------------------------------ unified kernel images

# A mkinitcpio preset line that builds a unified kernel image (``default_uki=``; ``_efi_image=`` before
# mkinitcpio 36), and one passing its own command line file.
_PRESET_UKI = re.compile(r"^[ \t]*[A-Za-z0-9_]+_(?:uki|efi_image)=[ \t]*[\"']?([^\s\"'#][^\s\"']*)", re.MULTILINE)
_PRESET_CMDLINE = re.compile(r"^[ \t]*[A-Za-z0-9_]+_options=[^\n]*--cmdline(?:=|[ \t]+)([^\s\"']+)", re.MULTILINE)
_DRACUT_UEFI = re.compile(r"^[ \t]*uefi[ \t]*=[ \t]*[\"']?yes\b", re.MULTILINE)
_UKI_CMDLINE = re.compile(r"^[ \t]*Cmdline[ \t]*=", re.MULTILINE)


def unified_kernel_images(root):
    """The ESP's unified kernel images (``EFI/Linux/*.efi``, systemd-boot's type #2 entries) when the host
    boots one: systemd-stub says so (its ``StubInfo`` EFI variable), or the ESP's menu holds them and no
    loader entry. Empty otherwise. Their command line is built into them."""
    images, entries = [], False
    for esp in ESP_MOUNTS:
        directory = "%s/EFI/Linux" % esp
        images.extend(directory + "/" + name for name in sorted(list_dir(host_path(root, directory)))
                      if name.lower().endswith(".efi"))
        entries = entries or any(name.endswith(".conf")
                                 for name in list_dir(host_path(root, "%s/loader/entries" % esp)))
    if os.path.exists(host_path(root, STUB_INFO)) or not entries:
        return images
    return []


def _mkinitcpio_presets(root):
    """``{file name: text}`` of the mkinitcpio presets below ``root``."""
    return {
        name: _read(root, "%s/%s" % (MKINITCPIO_PRESETS, name)) or ""
        for name in sorted(list_dir(host_path(root, MKINITCPIO_PRESETS)))
        if name.endswith(".preset")
    }


def mkinitcpio_images(root):
    """The unified kernel images the mkinitcpio presets build (``*_uki=``), as paths below ``root``."""
    return [
        path.lstrip("/")
        for text in _mkinitcpio_presets(root).values()
        for path in _PRESET_UKI.findall(text)
        if path.startswith("/")
    ]


def uki_generator(root, images):
    """What rebuilds the unified kernel images ``images`` with ``/etc/kernel/cmdline``: ``kernel-install``
    (``layout=uki``, through ukify) or ``mkinitcpio`` (presets with ``*_uki=``). Raises
    :class:`BootloaderError` when the command line comes from elsewhere or no generator is known: an edit
    of ``/etc/kernel/cmdline`` would not reach the images."""
    shown = ", ".join("/" + image for image in images[:3]) + (", ..." if len(images) > 3 else "")
    where = "%s boots unified kernel images (%s), whose kernel command line is built into them" % (root, shown)
    if install_config.install_conf_value(root, "layout") == "uki":
        for path in ("etc/kernel/uki.conf", "usr/lib/kernel/uki.conf"):
            if _UKI_CMDLINE.search(_read(root, path) or ""):
                raise BootloaderError(
                    "%s by kernel-install and ukify; /%s sets Cmdline=, which ukify uses instead of "
                    "/etc/kernel/cmdline: remove that line (and put its arguments in /etc/kernel/cmdline) "
                    "so that the arguments can be managed" % (where, path)
                )
        return "kernel-install"
    texts = _mkinitcpio_presets(root)
    if any(_PRESET_UKI.search(text) for text in texts.values()):
        for name, text in texts.items():
            other = next((path for path in _PRESET_CMDLINE.findall(text) if path != "/" + KERNEL_CMDLINE), None)
            if other is not None:
                raise BootloaderError(
                    "%s by mkinitcpio; /%s/%s builds them with --cmdline %s instead of /etc/kernel/cmdline: "
                    "drop that option (and put its arguments in /etc/kernel/cmdline) so that the arguments "
                    "can be managed" % (where, MKINITCPIO_PRESETS, name, other)
                )
        dropins = [name for name in list_dir(host_path(root, "etc/cmdline.d")) if name.endswith(".conf")]
        if dropins:
            raise BootloaderError(
                "%s by mkinitcpio, from the drop-ins in /etc/cmdline.d (%s); move their arguments to "
                "/etc/kernel/cmdline and remove them so that the arguments can be managed in one file"
                % (where, ", ".join(sorted(dropins)))
            )
        return "mkinitcpio"
    dracut = ["etc/dracut.conf"] + ["etc/dracut.conf.d/" + name for name in sorted(
        list_dir(host_path(root, "etc/dracut.conf.d"))) if name.endswith(".conf")]
    if any(_DRACUT_UEFI.search(_read(root, path) or "") for path in dracut):
        raise BootloaderError(
            "%s by dracut (uefi=yes), from its kernel_cmdline setting; add the arguments there (or build "
            "the images with kernel-install and layout=uki) and rebuild them with dracut --regenerate-all"
            % where
        )
    raise BootloaderError(
        "%s, and no generator that builds them from /etc/kernel/cmdline was recognised (kernel-install "
        "with layout=uki in /etc/kernel/install.conf, or mkinitcpio presets with *_uki=); add the arguments "
        "where the images are built and rebuild them" % where
    )


def _version_key(text):
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text or "")]


def read_bls_entries(root):
    """The BLS entries below ``root`` in GRUB's menu order (newest version first), and the grubenv."""
    env = GrubEnv(root)
    entries = []
    for name in list_dir(host_path(root, BLS_ENTRIES)):
        if name.endswith(".conf"):
            path = BLS_ENTRIES + "/" + name
            text = _read(root, path)
            if text is not None:
                entries.append(BlsEntry(path, text, env))
    entries.sort(key=lambda entry: _version_key(entry.version or entry.name), reverse=True)
    return entries, env


def default_entry(entries, env):
    """The entry GRUB boots by default: grubenv ``saved_entry`` when it names one, else the newest."""
    saved = env.values.get("saved_entry")
    for entry in entries:
        if entry.name == saved:
            return entry
    return entries[0] if entries else None


# ------------------------------------------------------------------------------------ detection


def _proxmox_esps(root):
    text = _read(root, PROXMOX_ESP_LIST) or ""
    return [line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")]


def efi_string(root, variable):
    """The text of the string EFI variable ``variable`` (a path below ``root``): efivarfs gives 4 bytes of
    attributes, then UCS-2 up to a NUL. ``None`` when the variable is absent, ``""`` when it is unreadable
    or holds no text."""
    try:
        with open(host_path(root, variable), "rb") as handle:
            data = handle.read(4096)
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    return data[4:].decode("utf-16-le", "replace").split("\0", 1)[0].strip()


def booted_loader(root):
    """Which loader booted the running system, from LoaderInfo: ``systemd-boot``, ``grub``, ``limine``,
    ``other`` (a loader none of these), ``None`` (no such variable: BIOS, another loader, an image tree).
    A variable that cannot be read counts as systemd-boot's, the only loader that set it for years."""
    text = efi_string(root, LOADER_INFO)
    if text is None:
        return None
    if not text:
        return "systemd-boot"
    return _LOADER_NAMES.get(text.split()[0].lower(), "other")


def _booted_systemd_boot(root):
    return booted_loader(root) == "systemd-boot"


def _limine_configuration(root):
    """The Limine configuration files below ``root``: limine-entry-tool's and limine.conf on an ESP."""
    places = list(LIMINE_TOOL_CONFIGS) + [
        "%s/%s" % (esp, name) if esp else name for esp in ("",) + ESP_MOUNTS for name in LIMINE_CONFIGS
    ]
    # /boot is an ESP mount and holds boot/limine.conf of the root's own list: each place once.
    return [path for path in dict.fromkeys(places) if os.path.isfile(host_path(root, path))]


def _refuse_limine(root, reason):
    raise BootloaderError(
        "%s boots Limine (%s), which is not supported: its entries carry their command line in limine.conf "
        "(cmdline:), written by limine-entry-tool from KERNEL_CMDLINE in /etc/default/limine at each kernel "
        "install. Add the arguments there and run limine-update (or edit the cmdline: lines of a hand-written "
        "limine.conf); set bootloader explicitly if another configuration boots this host" % (root, reason)
    )


def _kernelstub_manages(root):
    firmware = host_path(root, "sys/firmware")
    bios_booted = os.path.isdir(firmware) and not os.path.isdir(os.path.join(firmware, "efi"))
    return (
        os.path.isfile(host_path(root, KERNELSTUB_CONFIG))
        and bool(host_model.find_in_tree(root, "kernelstub"))
        and not bios_booted
    )


def _sdboot_manage_manages(root):
    return os.path.isfile(host_path(root, SDBOOT_MANAGE_CONFIG)) and bool(
        host_model.find_in_tree(root, "sdboot-manage")
    )


def _bls_entry_names(root):
    return [name for name in list_dir(host_path(root, BLS_ENTRIES)) if name.endswith(".conf")]


def _systemd_boot_installed(root):
    for esp in ESP_MOUNTS:
        if os.path.isfile(host_path(root, esp, "loader/loader.conf")) or os.path.isdir(
            host_path(root, esp, "EFI/systemd")
        ):
            return True
    return False


def _grub_tools(root):
    return any(host_model.find_in_tree(root, name) for name in ("update-grub", "grub-mkconfig", "grub2-mkconfig"))


def ostree_system(root):
    """True when ``root`` boots OSTree deployments: a live host with ``/run/ostree-booted``, or a
    tree whose boot entries carry ``ostree=``."""
    if host_model.ostree_booted(root):
        return True
    for name in _bls_entry_names(root):
        text = _read(root, BLS_ENTRIES + "/" + name) or ""
        if _OSTREE_OPTION.search(text):
            return True
    return False


_OSTREE_OPTION = re.compile(r"^[ \t]*options[ \t][^\n]*?(?<![^ \t])ostree=", re.MULTILINE)


def detect_bootloader(root):
    """Name the bootloader configuration in use below ``root``; raise :class:`BootloaderError`."""
    # An OSTree system may also carry /etc/default/grub, grub2-mkconfig or grubby, but its boot
    # entries are the deployments' own: ostree rewrites them and nothing else reaches them.
    if ostree_system(root):
        return "ostree"
    # kernelstub (Pop!_OS) writes the systemd-boot entries itself, from its own configuration:
    # /etc/kernel/cmdline and kernel-install do not reach them. It only runs on a host booted by UEFI.
    if _kernelstub_manages(root):
        return "kernelstub"
    # sdboot-manage (CachyOS, EndeavourOS) rewrites every systemd-boot entry from its configuration at
    # each kernel install: an edit of the entries would last until then.
    if _sdboot_manage_manages(root):
        return "sdboot-manage"
    if os.path.exists(host_path(root, NIXOS_MARKER)):
        raise BootloaderError(
            "%s is NixOS (/%s): its boot entries are built from the system configuration by nixos-rebuild, "
            "which overwrites any other edit; add the arguments to boot.kernelParams in configuration.nix "
            "and run nixos-rebuild boot" % (root, NIXOS_MARKER)
        )
    if _proxmox_esps(root) and host_model.find_in_tree(root, "proxmox-boot-tool"):
        return "proxmox"
    loader = booted_loader(root)
    # Limine's entries (and the unified kernel images limine-entry-tool builds) take their command line
    # from its own configuration: an edit of /etc/default/grub or /etc/kernel/cmdline would not boot.
    if loader == "limine":
        _refuse_limine(root, "LoaderInfo: %s" % efi_string(root, LOADER_INFO))
    limine = _limine_configuration(root)
    if limine and loader is None:
        _refuse_limine(root, "/" + ", /".join(limine))
    # systemd-boot, or the firmware itself, started a unified kernel image through systemd-stub. GRUB
    # with its bli module names itself in LoaderInfo too; it is told by its configuration below.
    if loader == "systemd-boot" or os.path.exists(host_path(root, STUB_INFO)):
        return "systemd-boot"
    if _bls_entry_names(root) and host_model.find_in_tree(root, "grubby"):
        return "grubby"
    grub_defaults = os.path.isfile(host_path(root, GRUB_DEFAULTS))
    if grub_defaults and _grub_tools(root):
        return "grub"
    if _systemd_boot_installed(root):
        return "systemd-boot"
    if grub_defaults:
        return "grub"
    raise BootloaderError(
        "no bootloader configuration recognised below %s: looked for /%s with proxmox-boot-tool, the "
        "systemd-boot LoaderInfo EFI variable, /%s/*.conf with grubby, /%s, and a systemd-boot ESP "
        "(%s); set bootloader explicitly"
        % (root, PROXMOX_ESP_LIST, BLS_ENTRIES, GRUB_DEFAULTS, ", ".join("/" + m for m in ESP_MOUNTS))
    )


# ------------------------------------------------------------------------------------ plan and apply


@dataclass
class BootPlan:
    """Everything one run will do, computed before anything is written.

    ``configured_before``/``configured`` are what the boot configuration holds before and after the
    run; ``commands`` are the argv lists that apply it to the boot entries (run only when
    ``run_commands``); ``pending`` is true when such commands are needed but will not run
    (``update: false`` or an image tree); ``resumed`` when they run again for an earlier run that
    did not see them finish (:mod:`pending`), with nothing to edit."""

    bootloader: str
    root: str
    configured_before: list
    configured: list
    added: list
    removed: list
    edits: list
    commands: list
    run_commands: bool
    pending: bool
    warnings: list = field(default_factory=list)
    expected_entries: dict = field(default_factory=dict)
    expected_kargs: list | None = None
    expected_images: dict = field(default_factory=dict)
    resumed: bool = False

    @property
    def changed(self):
        return bool(self.edits) or self.resumed


def _resolve(module, host, root, *candidates):
    """The command to run (host: full path from PATH) among ``candidates``; None when none exists."""
    for name in candidates:
        if host:
            path = module.get_bin_path(name)
            if path:
                return path
        elif host_model.find_in_tree(root, name):
            return name
    return None if host else candidates[0]


# Where grub-mkconfig's output is read from: the usual place of each tool first, then GRUB's folder on the
# ESP (grub-install --boot-directory=/efi, as for an encrypted /boot).
GRUB_CONFIGS = {
    "grub-mkconfig": ("boot/grub/grub.cfg", "efi/grub/grub.cfg", "boot/efi/grub/grub.cfg", "boot/grub2/grub.cfg"),
    "grub2-mkconfig": ("boot/grub2/grub.cfg", "efi/grub2/grub.cfg", "boot/efi/grub2/grub.cfg", "boot/grub/grub.cfg"),
}


def grub_config(root, tool):
    """The grub.cfg that ``tool`` (grub-mkconfig or grub2-mkconfig) regenerates below ``root``: the first of
    its places that holds one, else its usual place."""
    places = GRUB_CONFIGS[tool]
    return "/" + next((path for path in places if os.path.isfile(host_path(root, path))), places[0])


def _grub_command(module, host, root):
    """update-grub when present, else grub-mkconfig / grub2-mkconfig with the grub.cfg GRUB reads."""
    for name in ("update-grub", "grub-mkconfig", "grub2-mkconfig"):
        found = module.get_bin_path(name) if host else host_model.find_in_tree(root, name) and name
        if found:
            return [found] + ([] if name == "update-grub" else ["-o", grub_config(root, name)])
    return ["update-grub"]


def kernel_image(root, release):
    """The kernel image of ``release`` below ``root`` (``/lib/modules/<release>/vmlinuz``, the same below
    ``/usr``, or ``/boot/vmlinuz-<release>``), as an absolute path in the tree; None when it has none."""
    for candidate in ("lib/modules/%s/vmlinuz" % release, "usr/lib/modules/%s/vmlinuz" % release,
                      "boot/vmlinuz-%s" % release):
        if os.path.isfile(host_path(root, candidate)):
            return "/" + candidate
    return None


def installed_kernels(root):
    """``[(release, image, initrd or None)]`` for ``lib/modules/<release>`` that have a kernel image."""
    kernels = []
    releases = set(list_dir(host_path(root, "lib/modules"))) | set(list_dir(host_path(root, "usr/lib/modules")))
    for release in sorted(releases, key=_version_key):
        image = kernel_image(root, release)
        if image is None:
            continue
        initrd = "boot/initrd.img-%s" % release
        kernels.append((release, image, "/" + initrd if os.path.isfile(host_path(root, initrd)) else None))
    return kernels


def _edits_for(root, sources, present, absent):
    """Plan each source; return ``([(source, ArgumentPlan)], {path: FileChange})``, clashing edits refused."""
    plans = []
    files = {}
    for source in sources:
        argument_plan = plan_arguments(source.arguments(), present, absent)
        rules.command_line_length(argument_plan.arguments, source.arguments(), error=BootloaderError)
        plans.append((source, argument_plan))
        if not argument_plan.changed:
            continue
        rendered = source.render(argument_plan)
        for path, after in rendered.items():
            before = source.texts.get(path) if isinstance(source, GrubDefaults) else source.text
            _add_edit(files, FileChange(root, path, before, after, mode=None))
    return plans, files


def _add_edit(files, edit):
    previous = files.get(edit.path)
    if previous is not None and previous.new != edit.new:
        raise BootloaderError(
            "/%s would need two different edits; make the boot entries that share it consistent first" % edit.path
        )
    files[edit.path] = edit


def _proxmox_sources(root):
    """/etc/kernel/cmdline when the ESPs boot systemd-boot, /etc/default/grub when they boot GRUB.

    proxmox-boot-tool keeps a list of ESPs and copies kernels to them; which loader they run follows
    how the host boots (systemd-boot on UEFI, GRUB on BIOS or with Secure Boot). A live host says so
    with the LoaderInfo EFI variable; an image tree without sysfs is judged by /etc/kernel/cmdline.
    """
    managed = bool(_proxmox_esps(root))
    cmdline = os.path.isfile(host_path(root, KERNEL_CMDLINE))
    live = os.path.isdir(host_path(root, "sys/firmware"))
    systemd_boot = _booted_systemd_boot(root) if live else managed and cmdline
    if managed and systemd_boot:
        return [KernelCmdlineFile(root)]
    sources = []
    if os.path.isfile(host_path(root, GRUB_DEFAULTS)):
        sources.append(GrubDefaults.read(root))
    if managed and cmdline:
        sources.append(KernelCmdlineFile(root))
    if not sources:
        raise BootloaderError(
            "bootloader proxmox: neither /%s (ESPs synced by proxmox-boot-tool) nor /%s found below %s"
            % (KERNEL_CMDLINE, GRUB_DEFAULTS, root)
        )
    return sources


def plan(module, root, bootloader, present, absent, update=True):
    """Read the configuration of ``bootloader`` (``auto``: detected) and plan the edits and commands."""
    name = detect_bootloader(root) if bootloader == "auto" else bootloader
    if name not in BOOTLOADERS:
        raise BootloaderError("unknown bootloader %r; use one of auto, %s" % (name, ", ".join(BOOTLOADERS)))
    host = host_model.is_live_root(root)
    generator = None
    if name == "grubby":
        return _plan_grubby(module, root, host, present, absent, update)
    if name == "ostree":
        return _plan_ostree(module, root, host, present, absent, update)
    sources = []
    if name == "grub":
        if not os.path.isfile(host_path(root, GRUB_DEFAULTS)):
            raise BootloaderError("bootloader grub: /%s does not exist below %s" % (GRUB_DEFAULTS, root))
        sources.append(GrubDefaults.read(root))
    elif name == "systemd-boot":
        images = unified_kernel_images(root)
        if images:
            # Unified kernel images carry their command line: rebuilt from /etc/kernel/cmdline.
            generator = uki_generator(root, images)
            sources.append(KernelCmdlineFile(root))
        else:
            # Entries kernel-install did not write are booted as they are: edited in place. Those it
            # wrote come from /etc/kernel/cmdline when it runs again.
            own, kernel_install = loader_entries(root)
            sources.extend(LoaderEntry(root, path) for path in own)
            if kernel_install or not own:
                sources.append(KernelCmdlineFile(root))
    elif name == "kernelstub":
        sources.append(KernelstubConfig(root))
    elif name == "sdboot-manage":
        if not os.path.isfile(host_path(root, SDBOOT_MANAGE_CONFIG)):
            raise BootloaderError(
                "bootloader sdboot-manage: /%s does not exist below %s" % (SDBOOT_MANAGE_CONFIG, root)
            )
        sources.append(SdbootManageConfig.read(root))
    else:
        sources = _proxmox_sources(root)
    plans, files = _edits_for(root, sources, present, absent)
    primary_source, primary = plans[0]
    edits = list(files.values())
    # An earlier run wrote the configuration but was not seen to finish applying it: applied again.
    marker = pending.read(root, pending.BOOTLOADER) if host else None
    resumed = marker is not None and marker.get("bootloader", name) == name
    # /etc/kernel/cmdline changed: kernel-install has entries to write from it.
    cmdline_changed = resumed or any(isinstance(source, KernelCmdlineFile) and p.changed for source, p in plans)
    regenerate = bool(edits) or resumed
    commands = []
    if regenerate:
        if name == "grub" or (name == "proxmox" and not _proxmox_esps(root)):
            commands = [_grub_command(module, host, root)]
        elif name == "proxmox":
            commands = [[_resolve(module, host, root, "proxmox-boot-tool") or "proxmox-boot-tool", "refresh"]]
        elif name == "kernelstub":
            # Without options, kernelstub writes the entries from its configuration.
            commands = [[_resolve(module, host, root, "kernelstub") or "kernelstub"]]
        elif name == "sdboot-manage":
            commands = [[_resolve(module, host, root, "sdboot-manage") or "sdboot-manage", "gen"]]
        elif generator == "mkinitcpio":
            commands = [[_resolve(module, host, root, "mkinitcpio") or "mkinitcpio", "-P"]]
        elif cmdline_changed:
            tool = _resolve(module, host, root, "kernel-install") or "kernel-install"
            for release, image, initrd in installed_kernels(root):
                commands.append([tool, "add", release, image] + ([initrd] if initrd else []))
        if update and host:
            for command in commands:
                if not os.path.isabs(command[0]):
                    raise BootloaderError(
                        "%s was not found on this host to apply the change; install it or set update: false"
                        % command[0]
                    )
    warnings = _merge_unique(getattr(source, "warnings", []) for source, _p in plans)
    if name == "systemd-boot" and not commands and cmdline_changed:
        warnings.append("no kernel with an image was found below /lib/modules; no boot entry was regenerated")
    resumed = resumed and bool(commands)
    if resumed:
        warnings.append(
            "an earlier run changed the boot configuration but was not seen to apply it to the boot entries "
            "(/%s/%s is left): %s again"
            % (pending.PENDING_DIR, pending.BOOTLOADER, "; ".join(" ".join(command) for command in commands))
        )
    run = bool(regenerate and update and host and commands)
    return BootPlan(
        bootloader=name,
        root=root,
        configured_before=primary_source.arguments(),
        configured=primary.arguments,
        added=_merge_unique(p.added for _s, p in plans),
        removed=_merge_unique(p.removed for _s, p in plans),
        edits=edits,
        commands=commands,
        run_commands=run,
        pending=bool(regenerate and commands and not run),
        warnings=warnings,
        expected_images={path: primary.arguments for path in mkinitcpio_images(root)}
        if generator == "mkinitcpio" and run else {},
        resumed=resumed,
    )


def _repeated_keys_added(entry_plans):
    """The repeatable keys (``console``) of which a plan adds a value to an entry that then holds more than
    one value of the key. grubby cannot write such an entry, whatever its version: ``--args=key=value``
    puts the value in place of the key's first one (grubby-bls' older ``update_args``), or removes the
    key's first value and appends the new one (its newer one)."""
    keys = set()
    for _entry, argument_plan in entry_plans:
        for text in argument_plan.added:
            added = parse_argument(text)
            if added.repeatable and sum(
                1 for other in argument_plan.arguments if same_key(parse_argument(other), added)
            ) > 1:
                keys.add(added.norm_key)
    return sorted(keys)


def _plan_grubby(module, root, host, present, absent, update):
    entries, env = read_bls_entries(root)
    if not entries:
        raise BootloaderError("bootloader grubby: no /%s/*.conf below %s" % (BLS_ENTRIES, root))
    sources = [GrubDefaults.read(root, target=LINUX)] if os.path.isfile(host_path(root, GRUB_DEFAULTS)) else []
    if os.path.isfile(host_path(root, KERNEL_CMDLINE)):
        sources.append(KernelCmdlineFile(root))
    config_plans, files = _edits_for(root, sources, present, absent)
    # grubby removes the old value of a key and appends the new one; predict exactly that.
    entry_plans = [(entry, plan_arguments(entry.arguments(), present, absent, False)) for entry in entries]
    for entry, argument_plan in entry_plans:
        rules.command_line_length(argument_plan.arguments, entry.arguments(), entry.path, error=BootloaderError)
    # grubby holds one value per key: the entries get a second value of a repeatable key (console=) only
    # when they are edited directly, as in an image tree.
    repeated = _repeated_keys_added(entry_plans) if host else []
    writer = "grubby" if host and not (update and repeated) else None
    entry_files = {}
    env_updates = {}
    for entry, argument_plan in entry_plans:
        if not argument_plan.changed:
            continue
        rendered, updates = entry.render(argument_plan)
        for path, after in rendered.items():
            _add_edit(entry_files, FileChange(root, path, entry.text, after, mode=None, written_by=writer))
        for variable, value in updates.items():
            if env_updates.get(variable, value) != value:
                raise BootloaderError(
                    "entries disagree on grubenv %s; make the boot entries consistent first" % variable
                )
            env_updates[variable] = value
    if env_updates:
        _add_edit(
            entry_files, FileChange(root, env.path, env.text, env.render(env_updates), mode=None, written_by=writer)
        )
    added = _merge_unique([p.added for _s, p in config_plans] + [p.added for _e, p in entry_plans])
    removed = _merge_unique([p.removed for _s, p in config_plans] + [p.removed for _e, p in entry_plans])
    entry_added = _merge_unique(p.added for _e, p in entry_plans)
    entry_removed = _merge_unique(p.removed for _e, p in entry_plans)
    commands = []
    # In an image tree grubby cannot run; the entries are edited the way grubby would edit them.
    direct = update and (not host or bool(repeated))
    warnings = _merge_unique(getattr(source, "warnings", []) for source, _p in config_plans)
    if repeated and entry_files:
        why = ("they keep more than one value of %s, and grubby replaces a key's value when it adds one "
               "(console=tty0 would take the place of console=ttyS0,115200)" % ", ".join(k + "=" for k in repeated))
        warnings.append(
            "the boot entries are edited directly, not through grubby: " + why if update
            else "the grubby command below would not give the boot entries what is configured: " + why
        )
    if entry_files and not direct:
        tool = _resolve(module, host, root, "grubby") or "grubby"
        command = [tool, "--update-kernel=ALL"]
        if entry_added:
            command.append("--args=" + " ".join(entry_added))
        if entry_removed:
            command.append("--remove-args=" + " ".join(entry_removed))
        commands.append(command)
        if update and not os.path.isabs(tool):
            raise BootloaderError(
                "grubby was not found on this host to update the boot entries; install it or set update: false"
            )
    edits = list(files.values()) + (list(entry_files.values()) if update else [])
    default = default_entry(entries, env)
    default_plan = {entry.path: p for entry, p in entry_plans}[default.path]
    return BootPlan(
        bootloader="grubby",
        root=root,
        configured_before=default.arguments(),
        configured=default_plan.arguments if update else default.arguments(),
        added=added if update else _merge_unique(p.added for _s, p in config_plans),
        removed=removed if update else _merge_unique(p.removed for _s, p in config_plans),
        edits=edits,
        commands=commands,
        run_commands=bool(commands and update),
        pending=bool(commands) and not update,
        warnings=warnings,
        expected_entries={e.path: p.arguments for e, p in entry_plans} if commands and update else {},
    )


@dataclass
class KargsChange:
    """The kernel arguments of an OSTree host's next deployment, which ``rpm-ostree kargs`` changes
    (it stages a new deployment with them; no file of the collection's own). Shown and reported as
    the edits of the other bootloaders are."""

    old: str
    new: str
    written_by: str = "rpm-ostree kargs"
    display_path: str = "rpm-ostree kargs (the next boot's deployment)"

    @property
    def changed(self):
        return self.old != self.new

    def diff(self):
        return {
            "before": self.old + "\n",
            "after": self.new + "\n",
            "before_header": self.display_path,
            "after_header": "%s (as rpm-ostree will stage it)" % self.display_path,
        }


def _deployment_arguments(words):
    """The words of a deployment's options without ``ostree=``, which ostree writes for each deployment."""
    return [word for word in words if split_argument(word)[0] != OSTREE_KEY]


def read_ostree_kargs(module, tool):
    """The kernel arguments the next boot's deployment has (``rpm-ostree kargs``: the pending
    deployment's when one is staged, else the booted one's), every word as written."""
    rc, out, err = module.run_command([tool, "kargs"], environ_update=_C_LOCALE)
    if rc != 0:
        raise BootloaderError(
            "%s kargs failed (rc %d): %s; nothing was changed" % (tool, rc, (err or out).strip() or "no output")
        )
    return parse_cmdline(out.strip())


def _plan_ostree(module, root, host, present, absent, update):
    for argument in list(present) + list(absent):
        if same_key(argument, parse_argument(OSTREE_KEY)):
            raise ArgumentError(
                "%s: ostree= names the deployment to boot; ostree writes it into each deployment's boot entry"
                " and it cannot be managed as an argument" % argument.text
            )
    if not host:
        raise BootloaderError(
            "bootloader ostree: %s is an OSTree system (its boot entries carry ostree=): the kernel arguments "
            "of its deployments are changed with rpm-ostree kargs on the booted host, which stages a new "
            "deployment; run against that host (root: /)" % root
        )
    tool = _resolve(module, host, root, "rpm-ostree")
    if tool is None:
        raise BootloaderError(
            "this host boots an OSTree deployment (/%s): its kernel arguments belong to the deployment and "
            "rpm-ostree kargs changes them, but rpm-ostree was not found; editing /%s or the boot entries "
            "would not reach the next deployment" % (host_model.OSTREE_BOOTED, GRUB_DEFAULTS)
        )
    current = read_ostree_kargs(module, tool)
    # rpm-ostree deletes the old value of a key and appends the new one, as grubby does.
    argument_plan = plan_arguments(current, present, absent, replace_in_place=False)
    rules.command_line_length(argument_plan.arguments, current, "the next deployment's kernel arguments",
                              error=BootloaderError)
    before = _deployment_arguments(current)
    after = _deployment_arguments(argument_plan.arguments)
    commands, edits = [], []
    if argument_plan.changed:
        # One call: one new deployment. Every removed occurrence is deleted by its exact text.
        commands = [[tool, "kargs"] + ["--delete=" + text for text in argument_plan.removed]
                    + ["--append=" + text for text in argument_plan.added]]
        if update:
            edits = [KargsChange(" ".join(before), " ".join(after))]
    return BootPlan(
        bootloader="ostree",
        root=root,
        configured_before=before,
        configured=after if update else before,
        added=argument_plan.added if update else [],
        removed=argument_plan.removed if update else [],
        edits=edits,
        commands=commands,
        run_commands=bool(commands and update),
        pending=bool(commands) and not update,
        expected_kargs=after if commands and update else None,
    )


def _restore(edits):
    for edit in reversed(edits):
        with contextlib.suppress(GpuvirtError):
            apply_change(edit.reverse())


def apply(module, boot_plan, backup=False):
    """Write the planned files, run the commands, read the entries back. Returns ``{path: backup}``.

    When a command fails the files written by the module are put back as they were, so the next run
    tries again, and :class:`BootloaderError` says which command failed and why.
    """
    backups = {}
    written = []
    # grubby's and rpm-ostree's entries are planned from the entries themselves: nothing to mark.
    marked = boot_plan.run_commands and boot_plan.bootloader not in ("grubby", "ostree")
    if marked:
        pending.mark(boot_plan.root, pending.BOOTLOADER, bootloader=boot_plan.bootloader, commands=boot_plan.commands)
    for edit in boot_plan.edits:
        if edit.written_by is not None:
            continue
        if backup and edit.old is not None:
            backups[edit.display_path] = module.backup_local(edit.full_path)
        apply_change(edit)
        written.append(edit)
    if not boot_plan.run_commands:
        return backups
    for command in boot_plan.commands:
        rc, out, err = module.run_command(command, environ_update=_C_LOCALE)
        if rc != 0:
            # The configuration is as it was and the tool said it failed: nothing is left pending.
            _restore(written)
            if marked:
                with contextlib.suppress(GpuvirtError):
                    pending.clear(boot_plan.root, pending.BOOTLOADER)
            raise BootloaderError(
                "%s failed (rc %d): %s; the files this run changed were put back as they were (%s); "
                "fix the cause and run again"
                % (
                    " ".join(command),
                    rc,
                    (err or out).strip() or "no output",
                    ", ".join(e.display_path for e in written) or "none",
                )
            )
    if boot_plan.expected_kargs is not None:
        staged = _deployment_arguments(read_ostree_kargs(module, boot_plan.commands[0][0]))
        if sorted(staged) != sorted(boot_plan.expected_kargs):
            boot_plan.warnings.append(
                "after rpm-ostree kargs, the next deployment has %r, expected %r" % (staged, boot_plan.expected_kargs)
            )
    if boot_plan.expected_entries:
        entries, _env = read_bls_entries(boot_plan.root)
        for entry in entries:
            expected = boot_plan.expected_entries.get(entry.path)
            if expected is not None and sorted(entry.arguments()) != sorted(expected):
                boot_plan.warnings.append(
                    "after grubby, /%s has %r, expected %r" % (entry.path, entry.arguments(), expected)
                )
    for path, expected in sorted(boot_plan.expected_images.items()):
        built = _image_arguments(host_path(boot_plan.root, path))
        if built is not None and built != expected:
            boot_plan.warnings.append(
                "after %s, the unified kernel image /%s carries %r, expected %r: it is built from another "
                "command line; find where (a drop-in in /etc/cmdline.d, a preset option) and move the "
                "arguments to /etc/kernel/cmdline"
                % (" ".join([os.path.basename(boot_plan.commands[0][0])] + boot_plan.commands[0][1:]), path, built,
                   expected)
            )
    if marked:
        pending.clear(boot_plan.root, pending.BOOTLOADER)
    return backups


def _image_arguments(path):
    """The kernel arguments built into the unified kernel image at ``path`` (its ``.cmdline``), or None
    when it cannot be read (missing, or no PE image)."""
    try:
        data = uki.section(path, ".cmdline")
    except (OSError, uki.UkiError):
        return None
    return parse_cmdline(data.decode("utf-8", "replace").replace("\0", " ")) if data is not None else None
