# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The initramfs: which tool builds it, rebuilding it, and proving what the image that boots holds.

Public API (every function takes the host ``root``; the ones that run commands take the Ansible
``module`` for ``run_command``/``get_bin_path`` and raise :class:`InitramfsError` with what failed and
what to do):

- :func:`vfio_modules` ``(kernel_release, root=None) -> list[str]``: ``vfio``, ``vfio_iommu_type1``,
  ``vfio_pci``, plus ``vfio_virqfd`` before 6.2 (or, when ``root`` has the release's module lists,
  exactly when that release has it).
- :func:`parse_release` ``(kernel_release) -> (major, minor)``.
- :func:`detect_tool` ``(root) -> str``: ``update-initramfs``, ``dracut`` or ``mkinitcpio``; refuses
  an OSTree system.
- :func:`image_path` ``(root, kernel_release, tool=None) -> str``: the image that will boot (the unified
  kernel image a mkinitcpio preset builds, when there is no separate image, or that kernel-install builds with
  ``layout=uki``: :func:`list_image` reads its ``.initrd`` section).
- :func:`releases_with_image` ``(root, tool=None) -> list[str]``: installed releases that have one.
- :func:`regenerate_command` ``(root, kernel_release, tool=None) -> list[str]``: the argv (bare
  command name) that rebuilds it, for reports and check mode.
- :func:`regenerate` ``(module, root, kernel_release, tool=None) -> list[str]``: runs it; refuses an
  image tree (``root`` other than this host's ``/``).
- :func:`list_image` ``(module, root, kernel_release, tool=None) -> (image, list[str])``: the paths in
  the image (lsinitramfs, lsinitrd, lsinitcpio; works on an image tree's image too).
- :func:`verify_image` ``(module, root, kernel_release, modules=(), files=(), tool=None) -> ImageCheck``.
- :func:`available_modules` ``(root, kernel_release) -> set[str] | None``: modules the release has,
  loadable or built in.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field

from ansible_collections.gpuvirt.host.plugins.module_utils import host as host_model
from ansible_collections.gpuvirt.host.plugins.module_utils import uki
from ansible_collections.gpuvirt.host.plugins.module_utils.bootloader import kernel_image
from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError
from ansible_collections.gpuvirt.host.plugins.module_utils.kernel import modules_dir, read_builtin_modules
from ansible_collections.gpuvirt.host.plugins.module_utils.kernel_install import entry_token, install_conf_value
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import host_path, list_dir, read_text

TOOLS = ("update-initramfs", "dracut", "mkinitcpio")
LISTERS = {"update-initramfs": "lsinitramfs", "dracut": "lsinitrd", "mkinitcpio": "lsinitcpio"}
PACKAGES = {"update-initramfs": "initramfs-tools", "dracut": "dracut", "mkinitcpio": "mkinitcpio"}
VFIO_MODULES = ("vfio", "vfio_iommu_type1", "vfio_pci")
# vfio_virqfd was folded into the vfio module in Linux 6.2; naming it later makes the
# initramfs tools fail to find it.
VIRQFD_MERGED = (6, 2)
_C_LOCALE = {"LANG": "C", "LC_ALL": "C"}
_RELEASE = re.compile(r"(\d+)\.(\d+)")
_MODULE_SUFFIXES = (".ko.zst", ".ko.xz", ".ko.gz", ".ko")
# A mkinitcpio preset's unified kernel image (``default_uki=``; ``default_efi_image=`` before mkinitcpio 36).
_PRESET_UKI = re.compile(r"^[ \t]*default_(?:uki|efi_image)=[ \t]*[\"']?(/[^\s\"'#]+)", re.MULTILINE)
# One line of lsinitrd's listing (cpio -tv, C locale): mode, links, owner, group, size (or
# "major, minor"), month, day, time or year, path (" -> target" for symlinks).
_LONG_LISTING = re.compile(
    r"^[-dlcbps][-rwxsStT]{9}\S*\s+\d+\s+\S+\s+\S+\s+(?:\d+,\s*)?\d+\s+\w{3}\s+\d+\s+[\d:]+\s+(.+)$"
)
# lsinitrd lists an image that dracut's squash modules built with its squashed root too: the files of
# squashfs-root.img as ``unsquashfs -ll`` shows them (owner/group, a date, below squashfs-root/), and those
# of erofs-root.img as ``find erofs-root/ -ls`` (an inode number and a block count first).
_SQUASHFS_LISTING = re.compile(
    r"^[-dlcbps][-rwxsStT]{9}\S*\s+\S+/\S+\s+(?:\d+,\s*)?\d+\s+\d{4}-\d\d-\d\d\s+\d\d:\d\d\s+(.+)$"
)
_FIND_LISTING = re.compile(r"^\s*\d+\s+\d+\s+(.+)$")
_SQUASHED_ROOTS = ("squashfs-root/", "squash-root/", "erofs-root/")


class InitramfsError(GpuvirtError):
    """An initramfs tool is missing, failed, or the image cannot be read; says what to do."""


@dataclass
class ImageCheck:
    """What :func:`verify_image` found in the image ``image`` built by ``tool``."""

    tool: str
    image: str
    missing_modules: list = field(default_factory=list)
    missing_files: list = field(default_factory=list)
    builtin_modules: list = field(default_factory=list)

    @property
    def ok(self):
        return not (self.missing_modules or self.missing_files)


def parse_release(kernel_release):
    """``6.1.0-18-amd64`` -> ``(6, 1)``; :class:`InitramfsError` when it is not a kernel release."""
    match = _RELEASE.match(kernel_release or "")
    if not match:
        raise InitramfsError("%r is not a kernel release (such as 6.1.0-18-amd64)" % (kernel_release,))
    return int(match.group(1)), int(match.group(2))


def module_name(path):
    """``.../vfio-pci.ko.xz`` -> ``vfio_pci`` (module names use ``_``)."""
    name = os.path.basename(path.strip())
    for suffix in _MODULE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def available_modules(root, kernel_release):
    """Names of the modules ``kernel_release`` has (``modules.dep`` plus ``modules.builtin``), or None."""
    directory = modules_dir(root, kernel_release)
    if directory is None:
        return None
    names = set()
    found = False
    try:
        with open(os.path.join(directory, "modules.dep"), encoding="utf-8", errors="replace") as handle:
            names.update(module_name(line.split(":", 1)[0]) for line in handle if ":" in line)
            found = True
    except OSError:
        pass
    builtin = read_builtin_modules(root, kernel_release)
    if builtin is not None:
        names.update(builtin)
        found = True
    return names if found else None


def vfio_modules(kernel_release, root=None):
    """The modules an initramfs needs for vfio-pci to claim devices early on ``kernel_release``."""
    names = list(VFIO_MODULES)
    virqfd = parse_release(kernel_release) < VIRQFD_MERGED
    known = available_modules(root, kernel_release) if root is not None else None
    if known is not None:
        # Distribution kernels backport: trust the release's own module list over its version.
        virqfd = "vfio_virqfd" in known
    if virqfd:
        names.append("vfio_virqfd")
    return names


def detect_tool(root):
    """The initramfs generator installed below ``root``; :class:`InitramfsError` when none is, or
    when ``root`` is an OSTree system, whose initramfs belongs to each deployment."""
    if host_model.ostree_booted(root):
        raise InitramfsError(
            "this host boots an OSTree deployment (/%s): its initramfs is part of the deployment, which "
            "dracut cannot rebuild in place; rpm-ostree builds it into a new deployment (rpm-ostree "
            "initramfs-etc --track=<file> carries a file of /etc into it)" % host_model.OSTREE_BOOTED
        )
    if host_model.find_in_tree(root, "update-initramfs") and host_model.find_in_tree(root, "mkinitramfs"):
        return "update-initramfs"
    for tool in ("dracut", "mkinitcpio", "update-initramfs"):
        if host_model.find_in_tree(root, tool):
            return tool
    raise InitramfsError(
        "no initramfs tool found below %s: looked for update-initramfs (initramfs-tools), dracut and "
        "mkinitcpio in /usr/sbin, /usr/bin, /sbin and /bin; install one" % root
    )


def _pkgbase(root, kernel_release):
    directory = modules_dir(root, kernel_release)
    base = read_text(os.path.join(directory, "pkgbase")) if directory else None
    return base or "linux"


def _candidates(root, kernel_release, tool):
    if tool == "update-initramfs":
        return ["boot/initrd.img-%s" % kernel_release]
    if tool == "mkinitcpio":
        pkgbase = _pkgbase(root, kernel_release)
        # A preset that builds a unified kernel image (default_uki=) carries the initramfs in it.
        preset = read_text(host_path(root, "etc/mkinitcpio.d/%s.preset" % pkgbase)) or ""
        return ["boot/initramfs-%s.img" % pkgbase] + [path.lstrip("/") for path in _PRESET_UKI.findall(preset)]
    if install_conf_value(root, "layout") == "uki":
        # kernel-install builds a unified kernel image per kernel (ukify, with dracut's initramfs in it):
        # <ESP>/EFI/Linux/<entry token>-<release>[+<tries>].efi.
        return _uki_candidates(root, kernel_release)
    candidates = ["boot/initramfs-%s.img" % kernel_release]
    # kernel-install's layout on systemd-boot hosts: <ESP or /boot>/<entry token>/<release>/initrd; the
    # token is the machine ID unless kernel-install is told otherwise.
    tokens = [entry_token(root), read_text(host_path(root, "etc/machine-id"))]
    for token in dict.fromkeys(token for token in tokens if token):
        for esp in ("boot", "boot/efi", "efi"):
            candidates.append("%s/%s/%s/initrd" % (esp, token, kernel_release))
    return candidates


def _uki_candidates(root, kernel_release):
    name = "%s-%s" % (entry_token(root) or "", kernel_release)
    candidates = []
    for esp in ("efi", "boot/efi", "boot"):
        directory = "%s/EFI/Linux" % esp
        counted = sorted(entry for entry in list_dir(host_path(root, directory))
                         if entry.startswith(name + "+") and entry.endswith(".efi"))
        candidates.extend("%s/%s" % (directory, entry) for entry in [name + ".efi"] + counted)
    return candidates


def _tool(root, tool):
    if tool is None:
        return detect_tool(root)
    if tool not in TOOLS:
        raise InitramfsError("unknown initramfs tool %r; use one of %s" % (tool, ", ".join(TOOLS)))
    return tool


def image_path(root, kernel_release, tool=None):
    """The image below ``root`` that boots ``kernel_release`` (the first that exists, else the default)."""
    tool = _tool(root, tool)
    candidates = _candidates(root, kernel_release, tool)
    for candidate in candidates:
        if os.path.isfile(host_path(root, candidate)):
            return host_path(root, candidate)
    return host_path(root, candidates[0])


def releases_with_image(root, tool=None):
    """Kernel releases below ``root`` (``lib/modules/<release>``) whose initramfs image exists, in
    version order: the images a rebuild must cover."""
    tool = _tool(root, tool)
    releases = set(list_dir(host_path(root, "lib/modules"))) | set(list_dir(host_path(root, "usr/lib/modules")))
    found = [r for r in releases if _RELEASE.match(r) and os.path.isfile(image_path(root, r, tool))]
    return sorted(found, key=lambda r: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", r)])


def regenerate_command(root, kernel_release, tool=None):
    """The argv that rebuilds the image of ``kernel_release`` (command by name, paths below ``root``)."""
    tool = _tool(root, tool)
    parse_release(kernel_release)
    image = image_path(root, kernel_release, tool)
    if tool == "update-initramfs":
        return ["update-initramfs", "-u" if os.path.isfile(image) else "-c", "-k", kernel_release]
    if tool == "dracut" and image.endswith(".efi"):
        # kernel-install runs dracut and ukify and puts the image in place.
        kernel = kernel_image(root, kernel_release) or "/lib/modules/%s/vmlinuz" % kernel_release
        return ["kernel-install", "add", kernel_release, kernel]
    if tool == "dracut":
        return ["dracut", "--force", image, kernel_release]
    pkgbase = _pkgbase(root, kernel_release)
    if os.path.isfile(host_path(root, "etc/mkinitcpio.d/%s.preset" % pkgbase)):
        return ["mkinitcpio", "-p", pkgbase]
    return ["mkinitcpio", "-k", kernel_release, "-g", image]


def _run(module, argv, package):
    binary = module.get_bin_path(argv[0])
    if not binary:
        raise InitramfsError("%s was not found on this host; install %s" % (argv[0], package))
    command = [binary] + argv[1:]
    rc, out, err = module.run_command(command, environ_update=_C_LOCALE)
    if rc != 0:
        raise InitramfsError("%s failed (rc %d): %s" % (" ".join(command), rc, (err or out).strip() or "no output"))
    return command, out


def regenerate(module, root, kernel_release, tool=None):
    """Rebuild the image of ``kernel_release`` on this host; returns the argv run."""
    tool = _tool(root, tool)
    if not host_model.is_live_root(root):
        raise InitramfsError(
            "refusing to rebuild the initramfs of %s with this host's %s: %s is not this host's root; run %s "
            "inside that tree" % (kernel_release, tool, root, " ".join(regenerate_command(root, kernel_release, tool)))
        )
    argv = regenerate_command(root, kernel_release, tool)
    command, _out = _run(module, argv, "systemd" if argv[0] == "kernel-install" else PACKAGES[tool])
    return command


def _normalize(path):
    path = path.strip()
    while path.startswith("./"):
        path = path[2:]
    return path.lstrip("/")


def parse_listing(tool, text):
    """The paths of a lsinitramfs / lsinitrd / lsinitcpio listing, without leading ``./`` or ``/``."""
    paths = []
    for line in text.splitlines():
        if tool == "dracut":
            line = _dracut_listed(line)
            if line is None:
                continue
        path = _normalize(line)
        if path and path != ".":
            paths.append(path)
    return paths


def _dracut_listed(line):
    """The path of one line of lsinitrd's listing (the cpio part's, or the squashed root's), or None."""
    match = _LONG_LISTING.match(line)
    if match:
        return match.group(1).split(" -> ", 1)[0]
    found = _FIND_LISTING.match(line)
    match = _LONG_LISTING.match(found.group(1)) if found else _SQUASHFS_LISTING.match(line)
    path = match.group(1).split(" -> ", 1)[0] if match else ""
    squashed = next((prefix for prefix in _SQUASHED_ROOTS if path.startswith(prefix)), None)
    return None if squashed is None else path[len(squashed):]


def list_image(module, root, kernel_release, tool=None):
    """``(image, paths)``: the image that boots ``kernel_release`` and the paths it holds."""
    tool = _tool(root, tool)
    image = image_path(root, kernel_release, tool)
    if not os.path.isfile(image):
        raise InitramfsError(
            "no initramfs image for %s at %s; build it with %s"
            % (kernel_release, image, " ".join(regenerate_command(root, kernel_release, tool)))
        )
    if not image.endswith(".efi"):
        _command, out = _run(module, [LISTERS[tool], image], PACKAGES[tool])
        return image, parse_listing(tool, out)
    # A unified kernel image: its .initrd section is the initramfs.
    try:
        data = uki.section(image, ".initrd")
    except (OSError, uki.UkiError) as error:
        raise InitramfsError("cannot read the initramfs in the unified kernel image %s: %s" % (image, error)) from error
    if not data:
        raise InitramfsError("the unified kernel image %s holds no initramfs (.initrd section); rebuild it with %s"
                             % (image, " ".join(regenerate_command(root, kernel_release, tool))))
    with tempfile.NamedTemporaryFile(prefix="gpuvirt-initrd-") as extracted:
        extracted.write(data)
        extracted.flush()
        _command, out = _run(module, [LISTERS[tool], extracted.name], PACKAGES[tool])
    return image, parse_listing(tool, out)


def _variants(path):
    """A path and its merged-/usr twin (``lib/x`` and ``usr/lib/x``)."""
    if path.startswith("usr/") and path.split("/")[1] in ("lib", "lib64", "bin", "sbin"):
        return {path, path[4:]}
    if path.split("/")[0] in ("lib", "lib64", "bin", "sbin"):
        return {path, "usr/" + path}
    return {path}


def verify_image(module, root, kernel_release, modules=(), files=(), tool=None):
    """Check that the image that boots ``kernel_release`` holds ``modules`` (or has them built in) and
    ``files`` (paths such as ``/etc/modprobe.d/vfio.conf``)."""
    tool = _tool(root, tool)
    image, paths = list_image(module, root, kernel_release, tool)
    present = set(paths)
    in_image = {module_name(path) for path in paths if path.endswith(_MODULE_SUFFIXES)}
    builtin = read_builtin_modules(root, kernel_release) or set()
    check = ImageCheck(tool=tool, image=image)
    for name in modules:
        wanted = module_name(name)
        if wanted in in_image:
            continue
        if wanted in builtin:
            check.builtin_modules.append(wanted)
        else:
            check.missing_modules.append(wanted)
    for path in files:
        if not _variants(_normalize(path)) & present:
            check.missing_files.append(path)
    return check
