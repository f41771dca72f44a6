# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Findings: what a reader noticed about a host, for people and for machines.

A finding is a dict with ``severity`` (``error``/``warning``/``info``), a stable ``code``, a
``message`` that says what is wrong and what to do, and the PCI ``device`` it concerns (or None).
Readers take an optional :class:`Findings` and add to it instead of raising.
"""

from __future__ import annotations

SEVERITIES = ("error", "warning", "info")


class Findings:
    """An ordered list of findings without duplicates."""

    def __init__(self):
        self._items = []
        self._seen = set()

    def add(self, severity, code, message, device=None):
        if severity not in SEVERITIES:
            raise ValueError("unknown severity %r" % severity)
        key = (severity, code, message, device)
        if key not in self._seen:
            self._seen.add(key)
            self._items.append({"severity": severity, "code": code, "message": message, "device": device})

    def error(self, code, message, device=None):
        self.add("error", code, message, device)

    def warning(self, code, message, device=None):
        self.add("warning", code, message, device)

    def info(self, code, message, device=None):
        self.add("info", code, message, device)

    def bad_attribute(self, path, problem, expected, device=None, value=None):
        """Record an attribute that is missing, unreadable or malformed; it is reported as null."""
        if value is not None:
            code = "malformed_attribute"
            message = "%s reads %s, expected %s; reported as null" % (path, _quote(value), expected)
        else:
            code = "unreadable_attribute"
            message = "%s is %s (expected %s); reported as null" % (path, problem, expected)
        self.warning(code, message, device)

    def as_list(self):
        return list(self._items)

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)


def _quote(value, limit=40):
    text = value if len(value) <= limit else value[:limit] + "..."
    return repr(text)
