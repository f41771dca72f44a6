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

    def calls(self):
        with open(self.log) as handle:
            return [json.loads(line) for line in handle if line.strip()]


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
