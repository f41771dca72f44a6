# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""modprobe's configuration as libkmod reads it.

Public API (every reader takes the host ``root``):

- :func:`config_files` ``(root, release=None) -> [path]``: the files modprobe reads, in its order.
- :func:`logical_lines` ``(text) -> [str]``: a file's lines with backslash continuations joined and
  comments left out.
- :func:`option_value` ``(root, module, parameter) -> str | None``: what the ``options`` lines set a parameter to.
- :func:`parse_softdep` ``(line) -> Softdep | None`` and :func:`first_softdeps` ``(root, release, skip)
  -> {module: Softdep}``: the soft dependencies modprobe uses, one line per module.

libkmod (kmod's ``libkmod-config.c``) reads the ``*.conf`` files of :data:`CONFIG_DIRS`; a name in an
earlier directory hides the same name in later ones, and all of them are read in the order of their
names, with depmod's ``modules.softdep`` (the modules' own ``MODULE_SOFTDEP``) sorted among them under
that name. A line ending in a backslash goes on on the next line. Of the ``softdep`` lines for a
module, ``kmod_module_get_softdeps()`` uses the first and ignores the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ansible_collections.gpuvirt.host.plugins.module_utils.drivers import driver_key
from ansible_collections.gpuvirt.host.plugins.module_utils.files import FileError, read_file
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import host_path, list_dir

CONFIG_DIRS = ("etc/modprobe.d", "run/modprobe.d", "usr/local/lib/modprobe.d", "usr/lib/modprobe.d", "lib/modprobe.d")
MODULES_SOFTDEP = "modules.softdep"


def config_files(root, release=None):
    """The files modprobe reads below ``root`` (paths relative to it), in the order it reads them; with
    ``release``, that kernel's ``modules.softdep`` among them."""
    by_name = {}
    for directory in CONFIG_DIRS:
        for name in list_dir(host_path(root, directory)):
            if name.endswith(".conf") and not name.startswith(".") and name not in by_name:
                path = "%s/%s" % (directory, name)
                if os.path.isfile(host_path(root, path)):
                    by_name[name] = path
    if release:
        for base in ("lib/modules", "usr/lib/modules"):
            path = "%s/%s/%s" % (base, release, MODULES_SOFTDEP)
            if os.path.isfile(host_path(root, path)):
                by_name.setdefault(MODULES_SOFTDEP, path)
                break
    return [by_name[name] for name in sorted(by_name)]


def logical_lines(text):
    """The lines modprobe parses in a configuration file's ``text``: a backslash at the end of a line
    joins the next one; blank lines and comments are left out."""
    lines = []
    for line in (text or "").replace("\\\n", "").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def option_value(root, module, parameter):
    """The value the ``options <module> ...`` lines of modprobe's configuration give ``parameter`` (dashes and
    underscores alike, as modprobe takes them; the last one read wins, as the module sees them in that order;
    ``""`` for a bare name), or None when none sets it. A file that cannot be read sets nothing."""
    wanted = (module.replace("-", "_"), parameter.replace("-", "_"))
    value = None
    for path in config_files(root):
        try:
            lines = read_lines(root, path)
        except FileError:
            continue
        for line in lines:
            words = line.split()
            if len(words) >= 3 and words[0] == "options" and words[1].replace("-", "_") == wanted[0]:
                for word in words[2:]:
                    name, _sep, given = word.partition("=")
                    if name.replace("-", "_") == wanted[1]:
                        value = given
    return value


def read_lines(root, path):
    """:func:`logical_lines` of ``root/path``; raises :class:`files.FileError` when it cannot be read."""
    return logical_lines(read_file(host_path(root, path)))


@dataclass
class Softdep:
    """A ``softdep <module> pre: ... post: ...`` line and the file (below the root) it is in."""

    module: str
    pre: list = field(default_factory=list)
    post: list = field(default_factory=list)
    path: str = ""

    def render(self):
        return "softdep %s%s%s\n" % (
            self.module,
            " pre: " + " ".join(self.pre) if self.pre else "",
            " post: " + " ".join(self.post) if self.post else "",
        )


def parse_softdep(line):
    """The :class:`Softdep` of one logical line, or None when it is not a softdep line."""
    words = line.split()
    if len(words) < 2 or words[0] != "softdep":
        return None
    softdep, target = Softdep(words[1]), None
    for word in words[2:]:
        if word in ("pre:", "post:"):
            target = softdep.pre if word == "pre:" else softdep.post
        elif target is not None:
            target.append(word)
    return softdep


def first_softdeps(root, release=None, skip=()):
    """``{module key: Softdep}``: for each module, the softdep line modprobe uses (the first one in its
    order), leaving out the files ``skip`` (paths below the root). Raises :class:`files.FileError`."""
    found = {}
    for path in config_files(root, release):
        if path in skip:
            continue
        for line in read_lines(root, path):
            softdep = parse_softdep(line)
            if softdep is not None:
                softdep.path = path
                found.setdefault(driver_key(softdep.module), softdep)
    return found
