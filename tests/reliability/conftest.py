# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The reliability suite: every case is one test; the table at the end counts them per row.

A case that fails is a *lost* case: the row shows it and ``make reliability`` exits non-zero.
"""

from __future__ import annotations

import collections

import pytest

# The module-running fixtures of the unit tests: real modules in-process, fixture host trees,
# programs found only where a test installs them.
from ansible_collections.gpuvirt.host.tests.unit.conftest import _host_tree_base, make_host, run_module  # noqa: F401
from ansible_collections.gpuvirt.host.tests.unit.plugins.conftest import boot_tree, fake_commands  # noqa: F401

# Fixtures shared by name with pytest.
__all__ = ["_host_tree_base", "boot_tree", "fake_commands", "make_host", "run_module"]

SECTIONS = (
    ("bad input", "rejected: message names the value and what is allowed, no traceback, tree unchanged"),
    ("fault", "recovered: fails cleanly or converges on the next run, reports accurately, no temp files"),
    ("random spec", "check mode predicts the run exactly, a second run changes nothing"),
)
_rows = collections.OrderedDict()
_lost = []


@pytest.fixture
def row(request):
    """``row(section, subject)``: the table row this case counts in."""

    def record(section, subject):
        request.node.user_properties.append(("row", (section, subject)))

    return record


@pytest.fixture
def tally(request):
    """``tally(section, subject, problem, case)``: count one case run inside a test (``problem`` None
    when it held); the test fails at its end when any of its cases was lost.

    The counts travel in the test's report (``user_properties``), so the table adds them up in the
    process that writes it, also when pytest-xdist runs the tests in workers."""
    problems = []

    def record(section, subject, problem, case):
        held = problem is None
        request.node.user_properties.append(("case", (section, subject, held, case, None if held else str(problem))))
        if not held:
            problems.append("%s: %s" % (case, problem))

    yield record
    assert not problems, "; ".join(problems[:5])


def pytest_runtest_logreport(report):
    if report.when == "call":
        for name, value in report.user_properties:
            if name == "case":
                section, subject, held, case, problem = value
                _count((section, subject), held, "%s[%s]" % (report.nodeid, case), problem)
    key = dict(report.user_properties).get("row")
    if key is not None and (report.when == "call" or (report.when == "setup" and report.failed)):
        problem = None
        if not report.passed:
            lines = report.longreprtext.strip().splitlines()
            errors = [line[1:].strip() for line in lines if line.startswith("E ")]
            problem = (errors[:1] or lines[-1:] or [""])[0]
        _count(tuple(key), report.passed, report.nodeid, problem)


def _count(key, held, nodeid, problem):
    """Count one case in the table row ``key`` (a tuple: reports carry lists); a lost one is listed."""
    counts = _rows.setdefault(key, [0, 0])
    counts[0] += 1
    if held:
        counts[1] += 1
    else:
        _lost.append((key, nodeid, problem))


def pytest_terminal_summary(terminalreporter):
    write = terminalreporter.write_line
    write("")
    write("Reliability figures")
    write("%-12s %-40s %7s %7s %6s" % ("", "", "tried", "held", "lost"))
    for section, meaning in SECTIONS:
        keys = [k for k in _rows if k[0] == section]
        tried = sum(_rows[k][0] for k in keys)
        held = sum(_rows[k][1] for k in keys)
        write("%-12s %-40s %7d %7d %6d" % (section, "(all)", tried, held, tried - held))
        for key in sorted(keys):
            total, ok = _rows[key]
            write("%-12s %-40s %7d %7d %6d" % ("", key[1], total, ok, total - ok))
        write("%-12s %s" % ("", "held = " + meaning))
    if _lost:
        write("")
        write("Lost cases:")
        for key, nodeid, problem in _lost:
            write("  [%s / %s] %s: %s" % (key[0], key[1], nodeid.split("::", 1)[-1], problem[:200]))


@pytest.fixture(scope="session")
def _templates(_host_tree_base):  # noqa: F811
    import os
    import tempfile

    from ansible_collections.gpuvirt.host.tests.reliability import support
    from ansible_collections.gpuvirt.host.tests.unit.conftest import hostgen

    built = {}

    def template(name):
        if name not in built:
            description = {"combined": support.COMBINED, "desktop": support.DESKTOP}[name]
            root = os.path.join(tempfile.mkdtemp(prefix="template-", dir=_host_tree_base), "root")
            hostgen.build_host(description, root)
            with support.simulated("nvidia_vgpu", root):
                pass
            built[name] = root
        return built[name]

    return template


@pytest.fixture
def host(_templates, _host_tree_base):  # noqa: F811
    """``host("combined")`` / ``host("desktop")``: a fresh copy of a fixture host (built once)."""
    import os
    import shutil
    import tempfile

    def copy(name):
        root = os.path.join(tempfile.mkdtemp(prefix="case-", dir=_host_tree_base), "root")
        shutil.copytree(_templates(name), root, symlinks=True)
        return root

    return copy
