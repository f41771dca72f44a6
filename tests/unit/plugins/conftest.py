# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixture trees of boot configurations and fake commands that record how they were called.

The lab cannot run grubby, kernel-install, proxmox-boot-tool, dracut or mkinitcpio, and must not
run the real update-grub. Tests put small scripts first on ``PATH`` instead: each appends its argv
to a log (``fake_commands.calls()``), prints a canned output and exits with a chosen code.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys

import pytest
from ansible.module_utils.basic import AnsibleModule

BOOT_FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "boot")

_SCRIPT = """#!{python}
import json, os, sys
name = os.path.basename(sys.argv[0])
with open({log!r}, "a") as log:
    log.write(json.dumps([name] + sys.argv[1:]) + "\\n")
{body}
sys.stdout.write({stdout!r})
sys.stderr.write({stderr!r})
sys.exit({rc})
"""

# What grubby --update-kernel=ALL does to BLS entries: remove the given arguments (a bare key with
# any value), then for each added argument drop the same key's values and append it.
GRUBBY_BODY = """
args = dict(a.split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
entries = os.path.join({root!r}, "boot/loader/entries")
def key(token):
    return token.split("=", 1)[0]
for name_ in sorted(os.listdir(entries)):
    path = os.path.join(entries, name_)
    lines = open(path).read().split("\\n")
    for i, line in enumerate(lines):
        if not line.startswith("options "):
            continue
        tokens = line.split()[1:]
        for gone in args.get("--remove-args", "").split():
            tokens = [t for t in tokens if t != gone and not ("=" not in gone and key(t) == gone)]
        for new in args.get("--args", "").split():
            tokens = [t for t in tokens if key(t) != key(new)] + [new]
        lines[i] = " ".join(["options"] + tokens)
    open(path, "w").write("\\n".join(lines))
"""

# What ``rpm-ostree kargs`` does (rpmostree-builtin-kargs.cxx and the daemon's KernelArg transaction):
# without options it prints the options of the pending deployment when one is staged, else of the
# booted one (here the newest ostree-N entry). With options it takes those arguments, deletes each
# --delete (KEY=VALUE: that pair, which must exist; KEY: the key, which must have one value), then
# appends each --append, and stages a new deployment with them (its own ostree= path). The staged
# deployment lives in the simulator's own file until the next boot.
RPM_OSTREE_BODY = """
argv = sys.argv[1:]
staged = {staged!r}
def fail(message):
    sys.stderr.write("error: " + message + "\\n")
    sys.exit(1)
if argv[:1] != ["kargs"]:
    fail("this simulator only knows kargs")
changes = {{"--append": [], "--delete": [], "--replace": []}}
for option in argv[1:]:
    name, sep, value = option.partition("=")
    if name not in changes or not sep:
        fail("Unknown option " + option)
    changes[name].append(value)
if changes["--delete"] and changes["--replace"]:
    fail("Cannot specify both --delete and --replace")
if changes["--replace"]:
    fail("--replace is not simulated")
if os.path.exists(staged):
    current = open(staged).read().split()
else:
    entries = os.path.join({root!r}, "boot/loader/entries")
    newest = max((n for n in os.listdir(entries) if n.startswith("ostree-")), key=lambda n: int(n.split("-")[1]))
    options = [line for line in open(os.path.join(entries, newest)).read().splitlines() if line.startswith("options ")]
    current = options[0].split()[1:]
if not changes["--append"] and not changes["--delete"]:
    print(" ".join(current))
    sys.exit(0)
def key(text):
    return text.split("=", 1)[0]
kargs = list(current)
for gone in changes["--delete"]:
    if "=" in gone:
        if gone not in kargs:
            fail("No karg '%s' found" % gone)
        kargs.remove(gone)
    else:
        same = [text for text in kargs if key(text) == gone]
        if len(same) != 1:
            fail(("Multiple values for key '%s' found" if same else "No karg '%s' found") % gone)
        kargs.remove(same[0])
kargs += changes["--append"]
kargs = [text.rsplit("/", 1)[0] + "/" + str(int(text.rsplit("/", 1)[1]) + 1) if key(text) == "ostree" else text
         for text in kargs]
open(staged, "w").write(" ".join(kargs))
print("Staging deployment... done")
print('Changes queued for next boot. Run "systemctl reboot" to start a reboot')
"""

# What ``kernelstub`` without options does (kernelstub/application.py, config.py, installer.py): reads
# /etc/kernelstub/configuration (the user section, else default), writes the ESP's
# loader/entries/<OS>-current.conf with ``options root=UUID=<root's UUID> ro <kernel_options>``, and
# saves the configuration back with json.dump(indent=2).
KERNELSTUB_BODY = """
root = {root!r}
path = os.path.join(root, "etc/kernelstub/configuration")
config = json.load(open(path))
user = config.setdefault("user", dict(config["default"]))
entry = os.path.join(root, user["esp_path"].lstrip("/"), "loader/entries/Pop_OS-current.conf")
lines = open(entry).read().splitlines()
uuid = [line for line in lines if line.startswith("options ")][0].split()[1]
lines = [line for line in lines if not line.startswith("options ")]
lines.append("options %s ro %s" % (uuid, " ".join(user["kernel_options"])))
open(entry, "w").write("\\n".join(lines) + "\\n")
json.dump(config, open(path, "w"), indent=2)
"""


class FakeCommands:
    def __init__(self, directory):
        self.bin = os.path.join(directory, "fakebin")
        self.log = os.path.join(directory, "fake-commands.log")
        os.makedirs(self.bin)
        open(self.log, "w").close()

    def install(self, name, stdout="", stderr="", rc=0, body=""):
        path = os.path.join(self.bin, name)
        with open(path, "w") as handle:
            handle.write(
                _SCRIPT.format(python=sys.executable, log=self.log, body=body, stdout=stdout, stderr=stderr, rc=rc)
            )
        os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return path

    def install_grubby(self, root):
        return self.install("grubby", body=GRUBBY_BODY.format(root=root))

    def install_rpm_ostree(self, root, rc=None, stderr=""):
        """A simulated ``rpm-ostree`` for the OSTree tree ``root`` (``rc``: fail every call instead)."""
        if rc is not None:
            return self.install("rpm-ostree", stderr=stderr, rc=rc)
        return self.install("rpm-ostree", body=RPM_OSTREE_BODY.format(root=root, staged=self.staged_kargs))

    def install_mkinitcpio(self, root):
        """A simulated ``mkinitcpio -P`` that builds the unified kernel images of the tree ``root``."""
        fixtures = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "fixtures")
        return self.install("mkinitcpio", body=MKINITCPIO_BODY.format(root=root, fixtures=fixtures))

    def install_sdboot_manage(self, root, sdoptions):
        """A simulated ``sdboot-manage gen`` for the tree ``root``; ``sdoptions``: the root arguments."""
        return self.install("sdboot-manage", body=SDBOOT_MANAGE_BODY.format(root=root, sdoptions=sdoptions))

    def install_kernelstub(self, root):
        """A simulated ``kernelstub`` for the Pop!_OS tree ``root``."""
        return self.install("kernelstub", body=KERNELSTUB_BODY.format(root=root))

    @property
    def staged_kargs(self):
        """The simulated rpm-ostree's staged deployment: its kernel arguments on one line."""
        return os.path.join(os.path.dirname(self.bin), "rpm-ostree-staged")

    def calls(self):
        with open(self.log) as handle:
            return [json.loads(line) for line in handle if line.strip()]


# mkinitcpio -P building the unified kernel images of its presets (*_uki=), as its build_uefi does: the
# command line from a preset's --cmdline, else /etc/kernel/cmdline, else /usr/lib/kernel/cmdline, else
# /proc/cmdline, its lines not starting with # joined by single spaces (grep '^[^#]' | tr -s '\\n' ' ').
MKINITCPIO_BODY = """
import re
sys.path.insert(0, {fixtures!r})
from uki_image import write_uki
root = {root!r}
presets = os.path.join(root, "etc/mkinitcpio.d")
def inside(path):
    return os.path.join(root, path.lstrip("/"))
for name_ in sorted(os.listdir(presets)):
    text = open(os.path.join(presets, name_)).read()
    option = re.search("^[ \\t]*[A-Za-z0-9_]+_options=.*--cmdline[= ]+([^ \\t\\n'\\x22]+)", text, re.M)
    sources = [option.group(1)] if option else ["/etc/kernel/cmdline", "/usr/lib/kernel/cmdline", "/proc/cmdline"]
    source = next(inside(s) for s in sources if os.path.isfile(inside(s)))
    lines = [l for l in open(source).read().splitlines() if l and not l.startswith("#")]
    cmdline = re.sub(" +", " ", " ".join(lines)).encode()
    for image in re.findall("^[ \\t]*[A-Za-z0-9_]+_uki=['\\x22]?(/[^ \\t\\n'\\x22]+)", text, re.M):
        write_uki(inside(image), {{".osrel": b"ID=arch\\n", ".cmdline": cmdline, ".linux": b"vmlinuz",
                                   ".initrd": b"070701"}})
"""


# sdboot-manage gen as its generate_entries does (REMOVE_EXISTING=yes, its default): the configuration
# sourced by bash, every entry removed, then for each /boot/vmlinuz-<name> an entry <name>.conf with
# "options <root arguments> $LINUX_OPTIONS" and <name>-fallback.conf with $LINUX_FALLBACK_OPTIONS. The
# root arguments (findmnt's work on a live host) are given.
SDBOOT_MANAGE_BODY = """
import subprocess
root = {root!r}
esp = os.path.join(root, "boot")
script = '. "$1"; printf "%s\\\\n%s" "$LINUX_OPTIONS" "$LINUX_FALLBACK_OPTIONS"'
values = subprocess.run(["bash", "-c", script, "-", os.path.join(root, "etc/sdboot-manage.conf")],
                        capture_output=True, text=True, check=True).stdout.split("\\n")
entries = os.path.join(esp, "loader/entries")
for name_ in os.listdir(entries):
    if name_.endswith(".conf"):
        os.remove(os.path.join(entries, name_))
for kernel in sorted(os.listdir(esp)):
    if not kernel.startswith("vmlinuz-"):
        continue
    entry = kernel[len("vmlinuz-"):]
    for suffix, title, options in (("", "", values[0]), ("-fallback", " (Fallback)", values[1])):
        with open(os.path.join(entries, entry + suffix + ".conf"), "w") as handle:
            handle.write("title\\t%s%s\\nlinux\\t/%s\\ninitrd\\t/initramfs-%s%s.img\\noptions\\t%s %s\\n"
                         % (entry, title, kernel, entry, suffix, {sdoptions!r}, options))
"""


@pytest.fixture(autouse=True)
def fake_commands(tmp_path_factory, monkeypatch):
    """The only programs a module finds are the ones a test installs here.

    A module looks programs up with ``AnsibleModule.get_bin_path``, which also searches the sbin
    directories of the machine running the tests; replacing the lookup keeps every test independent
    of what that machine has installed (update-grub, driverctl, mkinitcpio...).
    """
    fakes = FakeCommands(str(tmp_path_factory.mktemp("commands")))
    monkeypatch.setenv("PATH", fakes.bin + os.pathsep + os.environ.get("PATH", ""))

    def get_bin_path(self, arg, required=False, opt_dirs=None):
        path = os.path.join(fakes.bin, arg)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
        if required:
            self.fail_json(msg="Failed to find required executable %s" % arg)
        return None

    monkeypatch.setattr(AnsibleModule, "get_bin_path", get_bin_path)
    return fakes


@pytest.fixture
def boot_tree(tmp_path):
    """``boot_tree('debian-grub')`` -> path of a private copy of that fixture tree."""

    def copy(name):
        target = tmp_path / name
        shutil.copytree(os.path.join(BOOT_FIXTURES, name), str(target), symlinks=True)
        return str(target)

    return copy


@pytest.fixture
def put_file():
    """``put_file(root, 'etc/kernel/install.conf', text)``: write a file below a tree, making its folders."""

    def put(root, path, text):
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as handle:
            handle.write(text)

    return put
