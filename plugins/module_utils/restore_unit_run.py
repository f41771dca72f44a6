# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``restore_unit`` module's run (:mod:`modrun`): install (or remove) the boot-time restore's
code, its systemd unit and the link that enables it, then read them back."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from ansible_collections.gpuvirt.host.plugins.module_utils import rules
from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError
from ansible_collections.gpuvirt.host.plugins.module_utils.files import read_file, remove_file
from ansible_collections.gpuvirt.host.plugins.module_utils.modrun import ModuleRun
from ansible_collections.gpuvirt.host.plugins.module_utils.restore import (
    PACKAGE,
    UNIT_DIR,
    UNIT_NAME,
    WANTED_BY,
    code_sources,
    render_unit,
)


@dataclass(frozen=True)
class RestoreUnitPlan:
    present: bool
    sources: dict  # {file name: source} to install
    files: tuple  # files.FileChange: code files, then the unit
    link_change: bool  # the enabling link is created (present) or removed (absent)
    diff: tuple


class RestoreUnitRun(ModuleRun):
    def __init__(self, module, host):
        super().__init__(module, host)
        self.prefix = self.code_dir = self.unit = self.link = None
        self.link_target = "/%s/%s" % (UNIT_DIR, UNIT_NAME)

    def plan(self):
        params = self.params
        params["prefix"] = rules.unit_value(rules.absolute_path(params["prefix"], "prefix"), "prefix")
        params["python"] = rules.unit_value(rules.absolute_path(params["python"], "python"), "python")
        params["timeout"] = rules.number(params["timeout"], "timeout", maximum=rules.WAIT_MAX)
        params["mdevctl_grace"] = rules.number(
            params["mdevctl_grace"], "mdevctl_grace", minimum_allowed=True, maximum=rules.WAIT_MAX
        )
        self.prefix = "/" + params["prefix"].strip("/")
        self.code_dir = self.host.join(self.prefix, *PACKAGE.split("."))
        self.unit = self.host.join(UNIT_DIR, UNIT_NAME)
        self.link = self.host.join(UNIT_DIR, WANTED_BY + ".wants", UNIT_NAME)
        folders = (self.code_dir, os.path.dirname(self.unit), os.path.dirname(self.link))
        for path, what in zip(folders, ("prefix", "the unit's folder", "the folder of the unit's link")):
            rules.inside_root(self.root, path, what)

        present = params["state"] == "present"
        sources = code_sources() if present else {}
        names = sorted(os.listdir(self.code_dir)) if os.path.isdir(self.code_dir) else []
        installed = [name for name in names if name.endswith(".py")]
        files = [self._change(self.code_dir, name, sources.get(name)) for name in installed]
        files += [self._change(self.code_dir, name, sources[name]) for name in sorted(sources) if name not in names]
        unit_text = None
        if present:
            unit_text = render_unit(self.prefix, params["python"], params["timeout"], params["mdevctl_grace"])
        unit = self._change(os.path.dirname(self.unit), UNIT_NAME, unit_text)
        try:
            link_before = os.readlink(self.link)
        except OSError:
            link_before = None
        link_change = link_before != self.link_target if present else link_before is not None
        existing = {os.path.basename(c.path): c.old for c in files if c.old is not None}
        diff = (
            unit.diff(),
            _manifest_diff(self.code_dir, existing, sources),
        )
        return RestoreUnitPlan(present, sources, tuple(files) + (unit,), link_change, diff)

    def apply(self, plan):
        if plan.link_change and not plan.present:
            self._set_link(False)
        for change in plan.files:
            if change.new is not None or change.old is not None:
                self.write(change)
        if plan.link_change and plan.present:
            self._set_link(True)
        if not plan.present:
            self._prune()
        if not self.changes_made:
            return
        self._read_back(plan)
        unit_changed = plan.link_change or plan.files[-1].changed
        if self.host.live and unit_changed:
            systemctl = self.host.which("systemctl")
            if systemctl is None:
                self.warn("systemctl was not found: reload systemd before the next boot for %s" % UNIT_NAME)
            else:
                self.command([systemctl, "daemon-reload"], "systemctl daemon-reload")
        if self.host.live and plan.present:
            self._try_import()

    def result(self, plan):
        changed_files = [c.full_path for c in plan.files if c.changed] + ([self.link] if plan.link_change else [])
        return dict(
            changed=bool(changed_files),
            unit=self.unit,
            enabled=plan.present,
            code_dir=self.code_dir,
            code_files=sorted(plan.sources),
            files_changed=changed_files,
            reboot_required=False,
            diff=list(plan.diff),
        )

    def _change(self, directory, name, text):
        return self.plan_file(os.path.relpath(os.path.join(directory, name), self.root), text)

    def _set_link(self, present):
        try:
            if os.path.lexists(self.link):
                remove_file(self.link)
            if present:
                os.makedirs(os.path.dirname(self.link), mode=0o755, exist_ok=True)
                os.symlink(self.link_target, self.link)
        except OSError as error:
            self.fail("cannot %s %s: %s: %s" % ("enable" if present else "disable", UNIT_NAME, self.link, error),
                      changed=True)
        self.changes_made = True

    def _prune(self):
        """Remove the now empty folders of the code tree, up to the prefix."""
        stop = self.host.join(self.prefix)
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

    def _read_back(self, plan):
        wrong = [c.full_path for c in plan.files if c.new is not None and read_file(c.full_path) != c.new]
        wrong += [c.full_path for c in plan.files if c.new is None and os.path.lexists(c.full_path)]
        try:
            linked = os.readlink(self.link)
        except OSError:
            linked = None
        if linked != (self.link_target if plan.present else None):
            wrong.append(self.link)
        if wrong:
            raise GpuvirtError("%s did not read back as written" % ", ".join(wrong), changed=True)

    def _try_import(self):
        python = self.params["python"]
        rc, _out, err = self.module.run_command(
            [python, "-c", "import %s.restore" % PACKAGE],
            environ_update={"PYTHONPATH": self.prefix, "LC_ALL": "C"},
        )
        if rc != 0:
            self.fail(
                "the restore code installed under %s does not import with %s (rc %d): %s; the unit would fail "
                "at boot (it needs Python 3.9 or later)" % (self.prefix, python, rc, err.strip()[-500:]),
                changed=True,
            )


def _manifest_diff(code_dir, existing, sources):
    return {
        "before": _manifest(existing),
        "after": _manifest(sources),
        "before_header": code_dir,
        "after_header": code_dir,
    }


def _manifest(files):
    return "".join(
        "%s  %s\n" % (hashlib.sha256(text.encode("utf-8")).hexdigest(), name) for name, text in sorted(files.items())
    )
