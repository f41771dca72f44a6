#!/usr/bin/python
# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: restore_unit
short_description: Install gpuvirt-restore.service, which restores VFs, vGPU types and mediated devices at boot
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
description:
  - Installs the boot-time restore of what M(gpuvirt.host.sriov), M(gpuvirt.host.nvidia_vgpu) and
    M(gpuvirt.host.mdev) record in C(/etc/gpuvirt/host-state.json), and enables it.
  - "The restore is the collection's own target-side code (Python standard library only): this module
    writes exactly the files it imports under O(prefix) (as
    C(ansible_collections/gpuvirt/host/plugins/module_utils/)), taken from the module's own payload, so
    that the controller sends them in one go. Files left from an older version are removed."
  - "The unit, C(/etc/systemd/system/gpuvirt-restore.service), is C(Type=oneshot), ordered
    C(After=systemd-modules-load.service) and C(Before=libvirtd.service virtqemud.service), and wanted by
    C(multi-user.target): VMs start after their devices are back. It runs
    C(python3 -m ansible_collections.gpuvirt.host.plugins.module_utils.restore), which restores VFs, then
    vGPU types, then mediated devices, reads each back with bounded retries, and logs the time from boot
    to restored (C(journalctl -u gpuvirt-restore), C(/run/gpuvirt/restore.json))."
  - Enabling is done as C(systemctl enable) does it, with the C(multi-user.target.wants) link, so it also
    works on image trees (O(root)). On the live host (O(root=/)) systemd is reloaded when the unit changed,
    and the installed code is imported once with O(python) to prove it runs.
extends_documentation_fragment:
  - gpuvirt.host.attributes
  - gpuvirt.host.attributes.linux
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - Shows the unit file, and the list of installed code files with their SHA-256 digests.
options:
  state:
    description:
      - V(absent) removes the unit, its link and the installed code.
    type: str
    choices: [present, absent]
    default: present
  prefix:
    description:
      - The folder that receives the code (the unit's C(PYTHONPATH)), below O(root).
      - An absolute path without C(..), whitespace, quotes, backslashes, C(%), C(;) or C($), which
        systemd would read as unit syntax.
    type: path
    default: /usr/local/lib/gpuvirt
  python:
    description:
      - The Python 3 (3.9 or later) the unit runs the restore with; an absolute path, with the same
        limits as O(prefix).
    type: path
    default: /usr/bin/python3
  timeout:
    description:
      - Seconds the restore waits for each driver or device to appear; more than 0 and at most 3600.
    type: float
    default: 60
  mdevctl_grace:
    description:
      - Seconds the restore leaves mdevctl to start the mdevs it defines before creating them itself
        (only when mdevctl's udev rule can run at all); from 0 to 3600.
    type: float
    default: 10
  root:
    description:
      - The host filesystem root to install into, for image trees and tests. systemd is only reloaded,
        and the code only test-imported, when this is V(/).
      - It must exist; it is never created.
    type: path
    default: /
seealso:
  - module: gpuvirt.host.mdev
  - module: gpuvirt.host.sriov
  - module: gpuvirt.host.nvidia_vgpu
"""

EXAMPLES = r"""
- name: Restore VFs, vGPU types and mdevs at every boot
  gpuvirt.host.restore_unit:

- name: Into an image tree, with a longer wait for slow drivers
  gpuvirt.host.restore_unit:
    root: /srv/images/gpu-host
    timeout: 180
"""

RETURN = r"""
unit:
  description: The unit file.
  returned: always
  type: str
  sample: /etc/systemd/system/gpuvirt-restore.service
enabled:
  description: Whether the unit is enabled (wanted by C(multi-user.target)) after the run.
  returned: always
  type: bool
code_dir:
  description: Where the restore code is (would be) installed.
  returned: always
  type: str
  sample: /usr/local/lib/gpuvirt/ansible_collections/gpuvirt/host/plugins/module_utils
code_files:
  description: The code files the restore needs.
  returned: always
  type: list
  elements: str
  sample: [hoststate.py, mdev.py, restore.py, sriov.py, sysfs.py]
files_changed:
  description: Files and links written or removed (to be, in check mode).
  returned: always
  type: list
  elements: str
reboot_required:
  description: Always V(false); the unit acts at the next boot, nothing needs one.
  returned: always
  type: bool
"""

import hashlib  # noqa: E402
import os  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.gpuvirt.host.plugins.module_utils import rules  # noqa: E402
from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError  # noqa: E402
from ansible_collections.gpuvirt.host.plugins.module_utils.files import remove_file, write_file  # noqa: E402
from ansible_collections.gpuvirt.host.plugins.module_utils.host import is_live_root, run_locked  # noqa: E402
from ansible_collections.gpuvirt.host.plugins.module_utils.restore import (  # noqa: E402
    PACKAGE,
    UNIT_DIR,
    UNIT_NAME,
    WANTED_BY,
    code_sources,
    render_unit,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import host_path  # noqa: E402


def _read(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return ""  # unreadable: rewrite it


def _manifest(files):
    return "".join(
        "%s  %s\n" % (hashlib.sha256(text.encode("utf-8")).hexdigest(), name) for name, text in sorted(files.items())
    )


class RestoreUnit:
    def __init__(self, module):
        self.module = module
        self.root = module.params["root"]
        self.prefix = "/" + module.params["prefix"].strip("/")
        self.code_dir = host_path(self.root, self.prefix, *PACKAGE.split("."))
        self.unit = host_path(self.root, UNIT_DIR, UNIT_NAME)
        self.link = host_path(self.root, UNIT_DIR, WANTED_BY + ".wants", UNIT_NAME)
        self.link_target = "/%s/%s" % (UNIT_DIR, UNIT_NAME)
        self.changed_files = []
        self.diff = []

    def run(self):
        present = self.module.params["state"] == "present"
        sources = code_sources() if present else {}
        existing = {
            name: _read(os.path.join(self.code_dir, name))
            for name in (sorted(os.listdir(self.code_dir)) if os.path.isdir(self.code_dir) else [])
            if name.endswith(".py")
        }
        params = self.module.params
        unit_text = None
        if present:
            unit_text = render_unit(self.prefix, params["python"], params["timeout"], params["mdevctl_grace"])
        unit_before = _read(self.unit)
        try:
            link_before = os.readlink(self.link)
        except OSError:
            link_before = None

        self.diff.append(
            {
                "before": unit_before or "",
                "after": unit_text or "",
                "before_header": self.unit,
                "after_header": self.unit,
            }
        )
        self.diff.append(
            {
                "before": _manifest({k: v for k, v in existing.items() if v is not None}),
                "after": _manifest(sources),
                "before_header": self.code_dir,
                "after_header": self.code_dir,
            }
        )
        for name, text in sources.items():
            if existing.get(name) != text:
                self._write(os.path.join(self.code_dir, name), text)
        for name in existing:
            if name not in sources:
                self._remove(os.path.join(self.code_dir, name))
        if unit_text is not None and unit_before != unit_text:
            self._write(self.unit, unit_text)
        if present and link_before != self.link_target:
            self._link()
        if not present:
            if link_before is not None:
                self._remove(self.link)
            if unit_before is not None:
                self._remove(self.unit)
            if not self.module.check_mode:
                self._prune()

        unit_changed = any(path in (self.unit, self.link) for path in self.changed_files)
        if self.changed_files and not self.module.check_mode:
            self._read_back(sources, unit_text)
            if is_live_root(self.root) and unit_changed:
                self._daemon_reload()
            if is_live_root(self.root) and present:
                self._try_import()
        result = dict(
            changed=bool(self.changed_files),
            unit=self.unit,
            enabled=present,
            code_dir=self.code_dir,
            code_files=sorted(sources),
            files_changed=self.changed_files,
            reboot_required=False,
        )
        if self.module._diff:
            result["diff"] = self.diff
        return result

    def _write(self, path, text):
        self.changed_files.append(path)
        if self.module.check_mode:
            return
        try:
            write_file(path, text)
        except GpuvirtError as error:
            error.changed = bool(self.changed_files[:-1])
            raise

    def _link(self):
        self.changed_files.append(self.link)
        if self.module.check_mode:
            return
        try:
            os.makedirs(os.path.dirname(self.link), mode=0o755, exist_ok=True)
            if os.path.lexists(self.link):
                os.unlink(self.link)
            os.symlink(self.link_target, self.link)
        except OSError as error:
            raise GpuvirtError("cannot enable %s: %s: %s" % (UNIT_NAME, self.link, error), changed=True) from error

    def _remove(self, path):
        self.changed_files.append(path)
        if not self.module.check_mode:
            try:
                remove_file(path)
            except GpuvirtError as error:
                error.changed = True
                raise

    def _prune(self):
        """Remove the now empty folders of the code tree, up to the prefix."""
        stop = host_path(self.root, self.prefix)
        cache = os.path.join(self.code_dir, "__pycache__")
        if os.path.isdir(cache):
            for name in os.listdir(cache):
                os.unlink(os.path.join(cache, name))
            os.rmdir(cache)
        directory = self.code_dir
        while directory.startswith(stop) and directory != stop:
            try:
                os.rmdir(directory)
            except OSError:
                break
            directory = os.path.dirname(directory)

    def _read_back(self, sources, unit_text):
        wrong = [name for name, text in sources.items() if _read(os.path.join(self.code_dir, name)) != text]
        if unit_text is not None and _read(self.unit) != unit_text:
            wrong.append(self.unit)
        if unit_text is not None:
            try:
                linked = os.readlink(self.link)
            except OSError:
                linked = None
            if linked != self.link_target:
                wrong.append(self.link)
        if unit_text is None:
            wrong.extend(path for path in (self.unit, self.link) if os.path.lexists(path))
        if wrong:
            raise GpuvirtError("%s did not read back as written" % ", ".join(wrong), changed=True)

    def _daemon_reload(self):
        systemctl = self.module.get_bin_path("systemctl")
        if systemctl is None:
            self.module.warn("systemctl was not found: reload systemd before the next boot for %s" % UNIT_NAME)
            return
        rc, _out, err = self.module.run_command([systemctl, "daemon-reload"], environ_update={"LC_ALL": "C"})
        if rc != 0:
            raise GpuvirtError("systemctl daemon-reload failed: %s" % err.strip(), changed=True)

    def _try_import(self):
        python = self.module.params["python"]
        rc, _out, err = self.module.run_command(
            [python, "-c", "import %s.restore" % PACKAGE],
            environ_update={"PYTHONPATH": self.prefix, "LC_ALL": "C"},
        )
        if rc != 0:
            self.module.fail_json(
                msg="the restore code installed under %s does not import with %s (rc %d): %s; the unit would fail "
                "at boot (it needs Python 3.9 or later)" % (self.prefix, python, rc, err.strip()[-500:]),
                changed=True,
            )


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "absent"], default="present"),
            prefix=dict(type="path", default="/usr/local/lib/gpuvirt"),
            python=dict(type="path", default="/usr/bin/python3"),
            timeout=dict(type="float", default=60),
            mdevctl_grace=dict(type="float", default=10),
            root=dict(type="path", default="/"),
        ),
        supports_check_mode=True,
    )
    params = module.params

    def work(host):
        unit = RestoreUnit(module)
        folders = (unit.code_dir, os.path.dirname(unit.unit), os.path.dirname(unit.link))
        for path, what in zip(folders, ("prefix", "the unit's folder", "the folder of the unit's link")):
            rules.inside_root(params["root"], path, what)
        return unit.run()

    try:
        rules.existing_root(params["root"])
        params["prefix"] = rules.unit_value(rules.absolute_path(params["prefix"], "prefix"), "prefix")
        params["python"] = rules.unit_value(rules.absolute_path(params["python"], "python"), "python")
        params["timeout"] = rules.number(params["timeout"], "timeout", maximum=rules.WAIT_MAX)
        params["mdevctl_grace"] = rules.number(
            params["mdevctl_grace"], "mdevctl_grace", minimum_allowed=True, maximum=rules.WAIT_MAX
        )
    except GpuvirtError as error:
        module.fail_json(msg=str(error), changed=False)
    run_locked(module, work)


if __name__ == "__main__":
    main()
