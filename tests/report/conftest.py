# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the report and consumer tests: fixture hosts and the consumers' own tools.

A missing tool fails the test that needs it, with the command that installs it (``make deps``
installs the Debian packages, ``make nova-venv`` Nova): these tests prove the exports against the
real consumers, so they never skip.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from reporttools import NOVA_PYTHON, hostgen  # this folder is on the path


@pytest.fixture(scope="session")
def host_trees():
    base = tempfile.mkdtemp(prefix="gpuvirt-report-hosts-")
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def make_host(host_trees):
    """``make_host(description="desktop_dgpu", **changes)``: a fresh host tree from tests/fixtures/hosts."""

    def factory(description="desktop_dgpu", **changes):
        if changes:
            description = (
                dict(changes, extends=description)
                if isinstance(description, str)
                else dict(hostgen._merge(hostgen.expand(dict(description)), changes))
            )
        root = os.path.join(tempfile.mkdtemp(prefix="host-", dir=host_trees), "root")
        return hostgen.build_host(description, root)

    return factory


@pytest.fixture(scope="session")
def nova_python():
    if not os.access(NOVA_PYTHON, os.X_OK):
        pytest.fail("Nova is not installed in %s: run make nova-venv" % os.path.dirname(os.path.dirname(NOVA_PYTHON)))
    return NOVA_PYTHON
