# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the mediated scenario's verifier: the lab layout and what check mode predicted."""

from __future__ import annotations

import json
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
def prediction(host):
    """``vgpu_result`` of the check-mode run in prepare, before anything existed."""
    return json.loads(host.file("/root/gpuvirt-predicted.json").content_string)


@pytest.fixture(scope="module")
def restore_status(host):
    return json.loads(host.file("/run/gpuvirt/restore.json").content_string)
