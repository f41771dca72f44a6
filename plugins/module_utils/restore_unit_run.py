# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``restore_unit`` module's run (:mod:`modrun`): install (or remove) the boot-time restore's
code, its systemd units (``gpuvirt-restore.service`` and ``gpuvirt-restore-late.service``) and the links
that enable them, then read them back."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from ansible_collections.gpuvirt.host.plugins.module_utils import rules
from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError
from ansible_collections.gpuvirt.host.plugins.module_utils.files import read_file, remove_file
from ansible_collections.gpuvirt.host.plugins.module_utils.modrun import ModuleRun
from ansible_collections.gpuvirt.host.plugins.module_utils.restore import (
    LATE_UNIT_NAME,
    PACKAGE,
    UNIT_DIR,
    UNIT_NAME,
    WANTED_BY,
    code_sources,
    render_late_unit,
    render_unit,
)

UNIT_NAMES = (UNIT_NAME, LATE_UNIT_NAME)
MANAGED_UNIT = "# Managed by gpuvirt.host.restore_unit"
PYTHONPATH_LINE = "Environment=PYTHONPATH="


@dataclass(frozen=True)
class RestoreUnitPlan:
    present: bool
    sources: dict  # {file name: source} to install
    files: tuple  # files.FileChange: code files, then the units (UNIT_NAMES order)
    link_changes: tuple  # the enabling links (UNIT_NAMES order) that are created (present) or removed (absent)
    diff: tuple


class RestoreUnitRun(ModuleRun):
    def __init__(self, module, host):
        super().__init__(module, host)
        self.prefix = self.code_dir = self.unit = self.old_prefix = None
        self.links = {}  # unit name -> the path of its enabling link

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
        self.links = {name: self.host.join(UNIT_DIR, WANTED_BY + ".wants", name) for name in UNIT_NAMES}
        folders = (self.code_dir, os.path.dirname(self.unit), os.path.dirname(self.links[UNIT_NAME]))
        for path, what in zip(folders, ("prefix", "the unit's folder", "the folder of the unit's link")):
            rules.inside_root(self.root, path, what)
        self._refuse_a_collection()

        present = params["state"] == "present"
        sources = code_sources() if present else {}
        names = sorted(os.listdir(self.code_dir)) if os.path.isdir(self.code_dir) else []
        installed = [name for name in names if name.endswith(".py")]
        files = [self._change(self.code_dir, name, sources.get(name)) for name in installed]
        files += [self._change(self.code_dir, name, sources[name]) for name in sorted(sources) if name not in names]
        self.old_prefix, old_code = self._earlier_prefix()
        if old_code is not None:
            # The code an earlier run installed at another prefix: every .py file of its folder, as at this
            # run's prefix (an older release shipped files this one does not), unless a collection is installed
            # there; then only the files the restore ships.
            ours = code_sources()
            whole = not _collection_entries(old_code)
            files += [
                self._change(old_code, name, None) for name in _listing(old_code)
                if name in ours or (whole and name.endswith(".py"))
            ]
        texts = dict.fromkeys(UNIT_NAMES)
        if present:
            texts[UNIT_NAME] = render_unit(self.prefix, params["python"], params["timeout"], params["mdevctl_grace"])
            texts[LATE_UNIT_NAME] = render_late_unit(self.prefix, params["python"], params["timeout"])
        units = tuple(self._change(os.path.dirname(self.unit), name, texts[name]) for name in UNIT_NAMES)
        link_changes = []
        for name in UNIT_NAMES:
            try:
                link_before = os.readlink(self.links[name])
            except OSError:
                link_before = None
            link_changes.append(link_before != _link_target(name) if present else link_before is not None)
        existing = {
            os.path.basename(c.path): c.old for c in files if c.old is not None and os.path.dirname(c.full_path)
            == self.code_dir
        }
        diff = (
            units[0].diff(),
            _manifest_diff(self.code_dir, existing, sources),
        ) + tuple(unit.diff() for unit in units[1:])
        if old_code is not None:
            earlier = {os.path.basename(c.path): c.old for c in files if os.path.dirname(c.full_path) == old_code}
            diff += (_manifest_diff(old_code, earlier, {}),)
        return RestoreUnitPlan(present, sources, tuple(files) + units, tuple(link_changes), diff)

    def apply(self, plan):
        links = [name for name, change in zip(UNIT_NAMES, plan.link_changes) if change]
        if not plan.present:
            for name in links:
                self._set_link(name, False)
        for change in plan.files:
            if change.new is not None or change.old is not None:
                self.write(change)
        if plan.present:
            for name in links:
                self._set_link(name, True)
        if not plan.present:
            self._prune(self.code_dir, self.prefix)
        if self.old_prefix is not None:
            self._prune(self.host.join(self.old_prefix, *PACKAGE.split(".")), self.old_prefix)
        if not self.changes_made:
            return
        self._read_back(plan)
        unit_changed = bool(links) or any(unit.changed for unit in plan.files[-len(UNIT_NAMES):])
        if self.host.live and unit_changed:
            systemctl = self.host.which("systemctl")
            if systemctl is None:
                self.warn("systemctl was not found: reload systemd before the next boot for %s"
                          % " and ".join(UNIT_NAMES))
            else:
                self.command([systemctl, "daemon-reload"], "systemctl daemon-reload")
        if self.host.live and plan.present:
            self._try_import()

    def result(self, plan):
        changed_files = [c.full_path for c in plan.files if c.changed] + [
            self.links[name] for name, change in zip(UNIT_NAMES, plan.link_changes) if change
        ]
        return dict(
            changed=bool(changed_files),
            unit=self.unit,
            late_unit=self.host.join(UNIT_DIR, LATE_UNIT_NAME),
            enabled=plan.present,
            code_dir=self.code_dir,
            code_files=sorted(plan.sources),
            files_changed=changed_files,
            reboot_required=False,
            diff=list(plan.diff),
        )

    def _refuse_a_collection(self):
        """The code folder replaces (and with state absent deletes) every .py file it holds: refuse a
        prefix where gpuvirt.host is installed as a collection (more than plugins/module_utils below
        it), whose module_utils would be rewritten or deleted."""
        foreign = _collection_entries(self.code_dir)
        collection = os.path.dirname(os.path.dirname(self.code_dir))
        if foreign:
            raise rules.InputError(
                "prefix: %s holds an installed collection (%s has %s); the restore code would replace its "
                "module_utils and state absent would delete them; give a folder of the restore's own (the "
                "default is /usr/local/lib/gpuvirt); nothing was changed"
                % (self.prefix, collection, ", ".join(foreign[:5]))
            )

    def _change(self, directory, name, text):
        return self.plan_file(os.path.relpath(os.path.join(directory, name), self.root), text)

    def _set_link(self, name, present):
        link = self.links[name]
        try:
            if os.path.lexists(link):
                remove_file(link)
            if present:
                os.makedirs(os.path.dirname(link), mode=0o755, exist_ok=True)
                os.symlink(_link_target(name), link)
        except OSError as error:
            self.fail("cannot %s %s: %s: %s" % ("enable" if present else "disable", name, link, error),
                      changed=True)
        self.changes_made = True

    def _earlier_prefix(self):
        """``(prefix, code folder)`` of the restore code an earlier run installed elsewhere, as the installed
        unit names it (its ``PYTHONPATH``), when that is another prefix than this run's; ``(None, None)``."""
        text = read_file(self.unit) if os.path.isfile(self.unit) else None
        if not text or not text.startswith(MANAGED_UNIT):
            return None, None
        found = [line[len(PYTHONPATH_LINE):] for line in text.splitlines() if line.startswith(PYTHONPATH_LINE)]
        if len(found) != 1 or not found[0].startswith("/") or found[0] == self.prefix:
            return None, None
        prefix = "/" + found[0].strip("/")
        code = self.host.join(prefix, *PACKAGE.split("."))
        rules.inside_root(self.root, code, "the prefix the installed unit names")
        return (prefix, code) if os.path.isdir(code) else (None, None)

    def _prune(self, code_dir, prefix):
        """Remove the now empty folders of the code tree ``code_dir``, up to ``prefix``."""
        stop = self.host.join(prefix)
        cache = os.path.join(code_dir, "__pycache__")
        if os.path.isdir(cache):
            for name in os.listdir(cache):
                os.unlink(os.path.join(cache, name))
            os.rmdir(cache)
        directory = code_dir
        while directory.startswith(stop) and directory != stop:
            try:
                os.rmdir(directory)
            except OSError:
                break
            directory = os.path.dirname(directory)

    def _read_back(self, plan):
        wrong = [c.full_path for c in plan.files if c.new is not None and read_file(c.full_path) != c.new]
        wrong += [c.full_path for c in plan.files if c.new is None and os.path.lexists(c.full_path)]
        for name, link in self.links.items():
            try:
                linked = os.readlink(link)
            except OSError:
                linked = None
            if linked != (_link_target(name) if plan.present else None):
                wrong.append(link)
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


def _collection_entries(code_dir):
    """What the collection folder above the code folder ``code_dir`` holds besides ``plugins/module_utils``
    (an installed collection has more), as paths relative to it."""
    collection = os.path.dirname(os.path.dirname(code_dir))
    plugins = os.path.join(collection, "plugins")
    foreign = [name for name in _listing(collection) if name != "plugins"]
    return foreign + ["plugins/" + name for name in _listing(plugins) if name != "module_utils"]


def _listing(folder):
    try:
        return sorted(os.listdir(folder)) if os.path.isdir(folder) and not os.path.islink(folder) else []
    except OSError:
        return []


def _link_target(name):
    return "/%s/%s" % (UNIT_DIR, name)


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
