# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One shape for every changing module: read, plan, apply, report.

A module file holds its documentation and argument spec; its work is a :class:`ModuleRun`
subclass here in ``module_utils``, run by :func:`run`::

    plan = job.plan()          # read the host, check the input, decide; raises GpuvirtError
    if not check_mode:
        job.apply(plan)        # make the planned changes, nothing else
    result = job.result(plan)  # the state after (read back, or predicted in check mode)

Check mode is "do not apply": the same plan is made and reported, so it predicts the run exactly.
The run holds the host lock from the first read to the last write (:func:`host.run_locked`); a
:class:`errors.GpuvirtError` at any phase becomes ``fail_json`` with ``changed`` true once
:meth:`ModuleRun.changes_made` says the host was changed, plus :meth:`ModuleRun.partial`.

File changes go through :meth:`ModuleRun.write`, so every module's files are written by one atomic
writer (:mod:`files`) and described by one diff format; diffs are returned only when the task asks
for them (``--diff``).
"""

from __future__ import annotations

import abc

from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError
from ansible_collections.gpuvirt.host.plugins.module_utils.files import (
    DEFAULT_MODE,
    FileError,
    apply_change,
    plan_change,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.host import run_locked
from ansible_collections.gpuvirt.host.plugins.module_utils.secureboot import signature_advice


class ModuleRun(abc.ABC):
    """The phases of one module's run; subclasses implement :meth:`plan`, :meth:`apply`, :meth:`result`."""

    def __init__(self, module, host):
        self.module = module
        self.host = host
        self.params = module.params
        self.root = host.root
        self.check_mode = bool(module.check_mode)
        self.diffs = []
        self.files_changed = []
        self.changes_made = False

    # -- phases -----------------------------------------------------------------------------------

    @abc.abstractmethod
    def plan(self):
        """Read the host and decide; no write. Returns the plan :meth:`apply` and :meth:`result` take."""

    @abc.abstractmethod
    def apply(self, plan):
        """Make the planned changes (never called in check mode)."""

    @abc.abstractmethod
    def result(self, plan):
        """The module's result: ``changed`` and the state after (predicted in check mode)."""

    def partial(self):
        """The results known so far, merged into a failure's result."""
        return {"changed": self.changes_made}

    # -- shared steps -----------------------------------------------------------------------------

    def warn(self, message):
        self.module.warn(message)

    def fail(self, message, **details):
        """Refuse or stop: raise the one error type with the true ``changed``."""
        details.setdefault("changed", self.changes_made)
        raise GpuvirtError(message, **details)

    def plan_file(self, path, content, mode=DEFAULT_MODE, **options):
        """The :class:`files.FileChange` that makes ``root/path`` hold ``content`` (None: absent)."""
        return plan_change(self.root, path, content, mode=mode, **options)

    def write(self, change):
        """Record ``change``'s diff and, outside check mode, make it; True when the file changes."""
        self.diffs.append(change.diff())
        if not change.changed:
            return False
        self.files_changed.append(change.full_path)
        if not self.check_mode:
            try:
                apply_change(change)
            except FileError as error:
                error.changed = error.changed or self.changes_made
                raise
            self.changes_made = True
        return True

    def command(self, argv, what, **kwargs):
        """Run ``argv`` (a list, C locale); raise with ``what`` and the command's message on failure.

        A module load the kernel refused for its signature (modprobe's "Key was rejected by service")
        says so and how to sign it (:func:`secureboot.signature_advice`)."""
        kwargs.setdefault("environ_update", {"LC_ALL": "C"})
        rc, out, err = self.module.run_command(argv, **kwargs)
        if rc != 0:
            advice = signature_advice("%s\n%s" % (out, err), root=self.root)
            self.fail("%s failed (rc %d): %s%s" % (what, rc, (err or out).strip()[-500:], advice and "; " + advice))
        return out


def run(module, run_class):
    """Run ``run_class`` (a :class:`ModuleRun`) under the host lock and end the module with its result."""
    jobs = []

    def work(host):
        job = run_class(module, host)
        jobs.append(job)
        plan = job.plan()
        if not job.check_mode:
            job.apply(plan)
        result = job.result(plan)
        result["changed"] = bool(result.get("changed")) or job.changes_made
        if module._diff:
            result.setdefault("diff", job.diffs)
        else:
            result.pop("diff", None)
        return result

    run_locked(module, work, partial=lambda: jobs[0].partial() if jobs else {})
