# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One error type for every failure the collection reports, and one runner that reports it.

Every failure a module or the boot-time restore can meet is a :class:`GpuvirtError` (each concern
keeps its own subclass, such as ``VfioError`` or ``StateFileError``), so a caller catches one
thing. The error carries:

- ``message`` (also ``str(error)``): what failed, where, why and what to do;
- ``changed``: whether the host was already changed when it was raised (False: nothing changed);
- ``details``: extra result keys for the user (refusals, partial results, the current state).

:func:`run_module` runs a module's work and turns the outcome into ``exit_json`` or
``fail_json``: a :class:`GpuvirtError` becomes a failure with its message, the true ``changed``
and its details; any other exception becomes a clean failure naming the exception and where it
was raised, never a traceback.

Standard library only (the restore unit ships this file to the host); :func:`run_module` only
needs an object with ``exit_json``/``fail_json``.
"""

from __future__ import annotations

import os


class GpuvirtError(Exception):
    """A failure to report to the user.

    ``GpuvirtError(message, changed=False, **details)``: ``details`` become keys of the module's
    failure result (for example ``refusals=[...]`` or ``devices=[...]``).
    """

    def __init__(self, message="", changed=False, **details):
        super().__init__(message)
        self.changed = bool(changed)
        self.details = details

    @property
    def message(self):
        return str(self)


def unexpected_failure(error):
    """A one-line message for an exception that is not a :class:`GpuvirtError` (a defect)."""
    where = ""
    trace = error.__traceback__
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    if trace is not None:
        code = trace.tb_frame.f_code
        where = " in %s (%s line %d)" % (code.co_name, os.path.basename(code.co_filename), trace.tb_lineno)
    return "internal error%s: %s: %s; nothing after this point was done. Please report it with the task's arguments" % (
        where,
        type(error).__name__,
        error,
    )


def run_module(module, work, partial=None):
    """Run ``work()`` and end the module with its result.

    ``work()`` returns the result dict (with ``changed``) for ``exit_json``. On a
    :class:`GpuvirtError` the module fails with the error's message and details; on any other
    exception with :func:`unexpected_failure`'s message. ``partial()``, when given, returns the
    results known so far (for example ``{"changed": True, "devices": [...]}``); they are merged into
    the failure, and ``changed`` is true when either the error or the partial results say so.
    """
    try:
        result = work()
    except GpuvirtError as error:
        _fail(module, str(error), error.changed, error.details, partial)
    except Exception as error:  # noqa: BLE001 - every defect becomes a clean failure, not a traceback
        _fail(module, unexpected_failure(error), False, {}, partial)
    else:
        module.exit_json(**result)


def _fail(module, message, changed, details, partial):
    known = {}
    if partial is not None:
        try:
            known = dict(partial() or {})
        except Exception:  # noqa: BLE001 - the failure itself must still be reported
            known = {}
    known.update(details)
    known["changed"] = bool(changed or known.get("changed"))
    known.pop("msg", None)
    known.pop("failed", None)
    module.fail_json(msg=message, **known)
