# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared fixtures of the lab verifiers: the layout file and topology_info run in the guest."""

from __future__ import annotations

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(REPO, "tests", "lab"))

from layout import Layout  # noqa: E402


@pytest.fixture(scope="session")
def layout():
    return Layout()


@pytest.fixture(scope="module")
def topology(host):
    result = host.ansible("gpuvirt.host.topology_info", check=False)
    assert "topology" in result, result
    return result["topology"]
