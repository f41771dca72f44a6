# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``mdev`` module's run (:mod:`modrun`): plan the mdevs per parent, create and remove them,
record them for the next boot (mdevctl definitions and the state file)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ansible_collections.gpuvirt.host.plugins.module_utils.files import FileError
from ansible_collections.gpuvirt.host.plugins.module_utils.hoststate import (
    StateFileError,
    load_state,
    plan_state,
    state_path,
    with_section,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.mdev import (
    Executor,
    MdevError,
    defined_uuids_from_mdevctl,
    definition_matches,
    mdevctl_autostart,
    mdevctl_binary,
    mdevctl_path,
    read_mdevctl_definitions,
    read_snapshot,
    refusal_message,
    render_mdevctl_definition,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.mdev import (
    plan as plan_mdevs,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.modrun import ModuleRun
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import SysfsWriteError
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import UnsupportedArchitecture, check_architecture


@dataclass(frozen=True)
class MdevRunPlan:
    before: object  # mdev.Snapshot
    mdevs: object  # mdev.Plan


class MdevRun(ModuleRun):
    def __init__(self, module, host):
        super().__init__(module, host)
        self.declarations = self.params["parents"]
        self.force = self.params["force"]
        self.host_id = self.params["host_id"]
        self.final = None
        self.created = []
        self.removed = []
        self.persistence = None

    def plan(self):
        try:
            check_architecture(self.root)
            if self.params["persistent"]:
                load_state(self.root)  # a state file that cannot be updated refuses the run before any change
            before = read_snapshot(self.root, self.host_id)
            first = plan_mdevs(before, self.declarations, self.force)
        except (MdevError, StateFileError, UnsupportedArchitecture) as error:
            self.fail(str(error))
        for warning in first.warnings:
            self.warn(warning)
        if self.check_mode:
            for message in first.recheck:
                self.warn(
                    "capacity can only be confirmed after removing undeclared mdevs (the prediction takes the "
                    "removals to make room; the run plans again once they are gone, and fails, rolling back, "
                    "if they do not): " + message.replace(" Nothing was changed.", "")
                )
        return MdevRunPlan(before, first)

    def apply(self, plan):
        self.final, self.created, self.removed = self._apply_mdevs(plan.before, plan.mdevs)
        self.persistence = self._persist_or_fail()

    def result(self, plan):
        if self.check_mode:
            self.final = plan.mdevs
            self.created = list(plan.mdevs.creations)
            self.removed = _removals(plan.before, plan.mdevs)
            self.persistence = self._persist_or_fail()
        before = plan.before
        after = self._after(before)
        result = dict(
            changed=bool(self.created or self.removed or self.files_changed),
            parents=self._parents_result(before, after),
            created=[value for _parent, value, _type in self.created],
            removed=[value for _parent, value, _type in self.removed],
            mdevs=list(after),
            persistence=self.persistence,
            reboot_required=False,
        )
        result["diff"] = [self._mdev_diff(before, after)] + self.diffs
        return result

    def partial(self):
        return {"changed": bool(self.changes_made or self.created or self.removed)}

    # -- mediated devices -------------------------------------------------------------------------

    def _apply_mdevs(self, before, first):
        executor = Executor(self.root)
        final = first
        current = None
        try:
            if first.recheck:
                for parent, value, type_id in _removals(before, first):
                    current = (parent, value, type_id)
                    executor.remove(parent, value, type_id)
                after_removal = read_snapshot(self.root, self.host_id)
                final = plan_mdevs(after_removal, self.declarations, self.force)
                if final.recheck:
                    raise MdevError(" ".join(final.recheck))
                removals = _removals(after_removal, final)
            else:
                removals = _removals(before, first)
            for parent, value, type_id in removals:
                current = (parent, value, type_id)
                executor.remove(parent, value, type_id)
            for parent, value, type_id in final.creations:
                current = (parent, value, type_id)
                executor.create(parent, value, type_id)
        except (MdevError, SysfsWriteError) as error:
            if current is not None and any(current == c for c in final.creations):
                message = refusal_message(self.root, error, current[0], current[1], current[2], final, executor)
            else:
                message = str(error)
            undone = len(executor.created) + len(executor.removed)
            problems = executor.rollback()
            if problems:
                self.fail("%s Rolling back failed: %s" % (message, "; ".join(problems)), changed=True)
            self.fail("%s Rolled back the %d change(s) this run had made." % (message, undone))
        return final, executor.created, executor.removed

    def _after(self, before):
        if not self.check_mode:
            return [m.to_dict() for m in sorted(read_snapshot(self.root, self.host_id).mdevs.values(), key=_key)]
        gone = {value for _parent, value, _type in self.removed}
        after = [m.to_dict() for m in before.mdevs.values() if m.uuid not in gone]
        after.extend({"uuid": v, "parent": p, "type": t, "in_use": False} for p, v, t in self.created)
        return sorted(after, key=lambda m: (m["parent"] or "", m["uuid"]))

    def _parents_result(self, before, after):
        result = {}
        for name, planned in self.final.parents.items():
            result[name] = dict(
                selector=planned.selector,
                exclusive=planned.exclusive,
                before=[{"uuid": m.uuid, "type": m.type} for m in before.mdevs_on(name)],
                after=[{"uuid": m["uuid"], "type": m["type"]} for m in after if m["parent"] == name],
                created=[v for p, v, _t in self.created if p == name],
                removed=[v for p, v, _t in self.removed if p == name],
                kept_in_use=list(planned.kept_in_use),
            )
        return result

    def _mdev_diff(self, before, after):
        lines_before, lines_after = [], []
        for name in self.final.parents:
            lines_before += ["%s %s %s" % (name, m.uuid, m.type) for m in before.mdevs_on(name)]
            lines_after += ["%s %s %s" % (name, m["uuid"], m["type"]) for m in after if m["parent"] == name]
        return {
            "before": "".join(line + "\n" for line in lines_before),
            "after": "".join(line + "\n" for line in lines_after),
            "before_header": "mediated devices",
            "after_header": "mediated devices",
        }

    # -- persistence ------------------------------------------------------------------------------

    def _persist_or_fail(self):
        if not self.params["persistent"]:
            return {
                "mdevctl": False, "mdevctl_autostart": False, "state_file": state_path(self.root), "files_changed": [],
            }
        try:
            return self._persist()
        except (OSError, FileError) as error:
            changes = bool(self.created or self.removed or self.changes_made)
            done = "the mdevs were changed (created %s, removed %s);" % (
                [v for _p, v, _t in self.created], [v for _p, v, _t in self.removed])
            self.fail(
                "recording the mdevs failed: %s; %s run again once it can be written, so that they come back at "
                "boot" % (error, done if changes else "nothing was changed;"),
                changed=changes,
            )

    def _wanted(self):
        """(declared {uuid: (parent, type)}, parents whose undeclared records go, kept uuids)."""
        declared = {}
        exclusive = set()
        kept = set()
        for name, planned in self.final.parents.items():
            for value, type_id in planned.declared:
                declared[value] = (name, type_id)
            if planned.exclusive:
                exclusive.add(name)
            kept.update(planned.kept_in_use)
        return declared, exclusive, kept

    def _persist(self):
        declared, exclusive, kept = self._wanted()
        binary = mdevctl_binary(self.root)
        autostart = False
        if binary is not None:
            self._persist_mdevctl(declared, exclusive, kept, binary)
            autostart, reason = mdevctl_autostart(self.root)
            if not autostart and declared:
                self.warn(
                    "%s: mdevctl will not start the defined mdevs at boot; gpuvirt-restore.service (role "
                    "gpuvirt.host.vgpu) recreates them from %s" % (reason, state_path(self.root))
                )
        try:
            state = load_state(self.root)
        except StateFileError as error:
            self.fail(str(error))
        section = dict(state["mdevs"])
        for value, entry in list(section.items()):
            parent = entry.get("parent") if isinstance(entry, dict) else None
            if parent in exclusive and value not in declared and value not in kept:
                del section[value]
        for value, (parent, type_id) in declared.items():
            section[value] = {"parent": parent, "type": type_id}
        self.write(plan_state(self.root, with_section(state, "mdevs", section)))
        return {
            "mdevctl": binary is not None,
            "mdevctl_autostart": autostart,
            "state_file": state_path(self.root),
            "files_changed": self.files_changed,
        }

    def _persist_mdevctl(self, declared, exclusive, kept, binary):
        definitions = read_mdevctl_definitions(self.root)
        for value, (parent, type_id) in sorted(declared.items()):
            existing = definitions.get(value)
            if existing is not None and definition_matches(existing, parent, type_id):
                continue
            attrs = []
            if existing is not None and existing["parent"] != parent:
                self._write_definition(existing["path"], None)
            elif (
                existing is not None
                and isinstance(existing["data"], dict)
                and existing["data"].get("mdev_type") == type_id
            ):
                attrs = existing["data"].get("attrs") or []
            self._write_definition(mdevctl_path(self.root, parent, value), render_mdevctl_definition(type_id, attrs))
        for value, existing in sorted(definitions.items()):
            if existing["parent"] in exclusive and value not in declared and value not in kept:
                self._write_definition(existing["path"], None)
        if not self.check_mode:
            self._verify_mdevctl(declared, binary)

    def _write_definition(self, path, text):
        self.write(self.plan_file(os.path.relpath(path, self.root), text, mode=None))

    def _verify_mdevctl(self, declared, binary):
        """Read back what mdevctl will act on at boot."""
        definitions = read_mdevctl_definitions(self.root)
        wrong = [
            value
            for value, (parent, type_id) in declared.items()
            if value not in definitions or not definition_matches(definitions[value], parent, type_id)
        ]
        if wrong:
            self.fail("mdevctl definitions for %s did not read back as written" % ", ".join(sorted(wrong)))
        if self.host.live and declared:
            rc, out, err = self.module.run_command(
                [binary, "list", "--defined", "--dumpjson"], environ_update={"LC_ALL": "C"}
            )
            try:
                listed = defined_uuids_from_mdevctl(out) if rc == 0 else None
            except ValueError:
                listed = None
            missing = sorted(set(declared) - (listed or set()))
            if listed is None or missing:
                self.fail(
                    "mdevctl does not list the definitions written for %s (rc %d: %s); check the files under "
                    "/etc/mdevctl.d" % (", ".join(missing or sorted(declared)), rc, (err or out).strip())
                )


def _removals(snapshot, planned):
    return [(parent, value, snapshot.mdevs[value].type) for parent, value in planned.removals]


def _key(mdev):
    return (mdev.parent or "", mdev.uuid)
