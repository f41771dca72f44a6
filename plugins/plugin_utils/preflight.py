# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet preflight summary: the ``gpuvirt.host.preflight_report`` filter's work.

plugins/filter/preflight_report.py documents the filter, and imports this module when it is first called.
"""

from __future__ import annotations

import re
from xml.etree import ElementTree

from ansible.errors import AnsibleFilterError

STATUSES = ("blocked", "reboot", "changes", "ready")


def _hosts(results):
    if isinstance(results, dict):
        results = [dict(value, host=value.get("host", name)) for name, value in sorted(results.items())]
    if not isinstance(results, list) or not all(isinstance(item, dict) and item.get("host") for item in results):
        raise AnsibleFilterError("preflight_report expects a list of per-host preflight results with a 'host' key")
    return sorted(results, key=lambda item: (STATUSES.index(status_of(item)), str(item["host"])))


def status_of(result):
    if result.get("blockers"):
        return "blocked"
    if result.get("reboot_required"):
        return "reboot"
    if result.get("changes"):
        return "changes"
    return "ready"


def _blocker_text(blocker):
    if isinstance(blocker, dict):
        return "%s: %s" % (blocker.get("source", "?"), blocker.get("message", ""))
    return str(blocker)


def counts(results):
    tally = {status: 0 for status in STATUSES}
    for result in results:
        tally[status_of(result)] += 1
    tally["hosts"] = len(results)
    return tally


def _text(results, max_rows):
    tally = counts(results)
    lines = [
        "Preflight: %(hosts)d host(s): %(ready)d ready, %(changes)d to change, %(reboot)d to change with a "
        "reboot, %(blocked)d blocked" % tally
    ]
    if not results:
        return lines
    width = max(len("HOST"), *(len(str(item["host"])) for item in results[:max_rows]))
    lines.append("%-*s  %-7s  %-6s  %-16s  %s" % (width, "HOST", "STATUS", "REBOOT", "CHANGES", "BLOCKERS"))
    for result in results[:max_rows]:
        blockers = [_blocker_text(item) for item in result.get("blockers") or []]
        first = blockers[0] if blockers else "-"
        if len(first) > 110:
            first = first[:107] + "..."
        more = " (+%d more)" % (len(blockers) - 1) if len(blockers) > 1 else ""
        lines.append(
            "%-*s  %-7s  %-6s  %-16s  %s%s"
            % (width, result["host"], status_of(result), "yes" if result.get("reboot_required") else "no",
               ",".join(result.get("changes") or []) or "-", first, more)
        )  # fmt: skip
    if len(results) > max_rows:
        lines.append("... and %d more host(s); see preflight.json" % (len(results) - max_rows))
    return lines


# What XML 1.0 forbids in a document, even as a character reference (everything outside its Char
# production): the C0 controls other than TAB, LF and CR, surrogates, U+FFFE and U+FFFF. Spelled as
# the forbidden characters, not as the complement of the allowed ones, which takes re 7 ms to compile in
# every process that loads the collection's filters.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_text(text):
    """``text`` with each character XML cannot hold written as its escape (``\\x1b``), so that a host's
    message (a tool's coloured stderr, a NUL) keeps the JUnit file well-formed."""
    return _NOT_XML.sub(lambda match: ascii(match.group(0))[1:-1], str(text))


def _junit(results):
    tally = counts(results)
    suites = ElementTree.Element(
        "testsuites", name="gpuvirt.host preflight", tests=str(tally["hosts"]), failures=str(tally["blocked"])
    )
    suite = ElementTree.SubElement(
        suites, "testsuite", name="gpuvirt.host.preflight", tests=str(tally["hosts"]),
        failures=str(tally["blocked"]), errors="0", skipped="0",
    )  # fmt: skip
    for result in results:
        case = ElementTree.SubElement(suite, "testcase", classname="gpuvirt.host.preflight",
                                      name=_xml_text(result["host"]))
        blockers = [_xml_text(_blocker_text(item)) for item in result.get("blockers") or []]
        if blockers:
            failure = ElementTree.SubElement(case, "failure", message=blockers[0], type="blocker")
            failure.text = "\n".join(blockers)
        out = ElementTree.SubElement(case, "system-out")
        out.text = _xml_text("status: %s\nreboot required: %s\nchanges: %s\n" % (
            status_of(result), "yes" if result.get("reboot_required") else "no",
            ", ".join(result.get("changes") or []) or "none",
        ))  # fmt: skip
    ElementTree.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(suites, encoding="unicode") + "\n"


def preflight_report(results, format="text", max_rows=30):
    hosts = _hosts(results)
    if format == "text":
        return _text(hosts, int(max_rows))
    if format == "json":
        return {"counts": counts(hosts), "hosts": [dict(item, status=status_of(item)) for item in hosts]}
    if format == "junit":
        return _junit(hosts)
    raise AnsibleFilterError("preflight_report: format must be text, json or junit, not %r" % (format,))
