# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action ``fleet_report``: build the fleet page on the controller from the records in a folder."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import tempfile

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

from ansible_collections.gpuvirt.host.plugins.plugin_utils.report import (
    RECORD_FORMAT,
    load_record,
    not_reached_record,
    render,
    unsafe_host_names,
)


def read_records(path):
    """``(records, ignored)`` from the ``*.json`` files of ``path``, in file name order. Hidden files are
    not records: a copy being moved into the folder from another filesystem is staged as one
    (``.ansible_tmp...<host>.json``)."""
    records, ignored = [], []
    for name in sorted(os.listdir(path)):
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            with open(os.path.join(path, name), encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as error:
            ignored.append("%s: %s" % (name, error))
            continue
        record = load_record(data, name[: -len(".json")])
        if record is None:
            ignored.append("%s: not a host record" % name)
            continue
        try:
            render([record])  # a record edited by hand or cut short must not stop the fleet's page
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            ignored.append("%s: a host record that cannot be drawn (%s: %s)" % (name, type(error).__name__, error))
            continue
        records.append(record)
    return records, ignored


def mark_not_reached(path, host, when):
    """Mark the record of ``host`` in ``path`` as not reached at ``when`` (a record holding only that when
    there is none); returns whether it did. A file there that is not the host's record (a raw topology of
    topology_report, another host's record, one that cannot be read) is left as it is."""
    dest = os.path.join(path, "%s.json" % host)
    record = None
    if os.path.lexists(dest):
        try:
            with open(dest, encoding="utf-8") as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            return False
        if not (isinstance(record, dict) and record.get("format") == RECORD_FORMAT and record.get("host") == host):
            return False
    write_atomically(dest, json.dumps(not_reached_record(record, host, when)), suffix=".json")
    return True


@contextlib.contextmanager
def folder_lock(path):
    """Hold ``<path>/.lock`` (``flock``) while the page is built: runs that share the folder (the slices of a
    sliced job) build one after the other, so the last page written holds every record written before it."""
    lock = os.path.join(path, ".lock")
    try:
        try:
            handle = open(lock, "a", encoding="utf-8")  # noqa: SIM115 - held across the yield
        except PermissionError:
            # Made by another user of a shared folder: a read-only descriptor takes a local lock as well.
            handle = open(lock, encoding="utf-8")  # noqa: SIM115
        fcntl.flock(handle, fcntl.LOCK_EX)
    except OSError as error:
        raise AnsibleActionFail("cannot lock %s: %s" % (lock, error.strerror or error)) from error
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def write_atomically(dest, content, suffix=".html"):
    """Write ``content`` through a temporary file in the same folder, so readers never see half a page."""
    folder = os.path.dirname(os.path.abspath(dest))
    handle, temporary = tempfile.mkstemp(prefix=".index-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as output:
            output.write(content)
        os.chmod(temporary, 0o644)
        os.replace(temporary, dest)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("path", "dest", "title", "not_reached"))
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        unknown = sorted(set(args) - self._VALID_ARGS)
        if unknown:
            raise AnsibleActionFail("unknown options %s; known: dest, not_reached, path, title" % ", ".join(unknown))
        if not args.get("path"):
            raise AnsibleActionFail("path is required: the folder holding the per-host report records")
        path = os.path.expanduser(to_text(args["path"]))
        if self._task.check_mode and not os.path.exists(path):
            # The folder the play would have made in a real run.
            result.update(changed=True, dest=os.path.join(path, "index.html"), hosts=[], ignored=[], not_reached=[])
            return result
        if not os.path.isdir(path):
            raise AnsibleActionFail(
                "%s is not a folder; give the folder the report playbook writes its records to" % path
            )
        dest = os.path.expanduser(to_text(args.get("dest") or os.path.join(path, "index.html")))
        not_reached = [to_text(host) for host in args.get("not_reached") or []]
        unsafe = unsafe_host_names(not_reached)
        if unsafe:
            raise AnsibleActionFail("not_reached: %s cannot name a record file in %s (a '/', or a leading '.')"
                                    % (", ".join(repr(host) for host in unsafe), path))
        if self._task.check_mode:
            return self._build(result, path, dest, args, not_reached)
        with folder_lock(path):
            return self._build(result, path, dest, args, not_reached)

    def _build(self, result, path, dest, args, not_reached):
        now = datetime.datetime.now(datetime.timezone.utc)
        if not self._task.check_mode:
            for host in not_reached:
                try:
                    mark_not_reached(path, host, now.strftime("%Y-%m-%dT%H:%M:%SZ"))
                except OSError as error:
                    raise AnsibleActionFail("cannot mark the record of %s: %s" % (host, error)) from error
        records, ignored = read_records(path)
        generated = now.strftime("%Y-%m-%d %H:%M UTC")
        page = render(records, to_text(args.get("title") or "GPU virtualization fleet report"), generated)
        before = None
        if os.path.exists(dest):
            with open(dest, encoding="utf-8") as handle:
                before = handle.read()
        # The time stamp alone does not make a change.
        changed = before is None or _without_stamp(before) != _without_stamp(page)
        if changed and not self._task.check_mode:
            try:
                write_atomically(dest, page)
            except OSError as error:
                raise AnsibleActionFail("cannot write %s: %s" % (dest, error.strerror or error)) from error
        result.update(changed=changed, dest=dest, hosts=sorted(str(r["host"]) for r in records), ignored=ignored,
                      not_reached=not_reached)
        return result


def _without_stamp(page):
    start = page.find(" &middot; generated ")
    if start < 0:
        return page
    end = page.find(".</p>", start)
    return page[:start] + page[end:]
