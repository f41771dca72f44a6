# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the passthrough verifier: the lab's layout and the files the side effect left."""

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


def _ephemeral(name):
    return os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], name)


@pytest.fixture(scope="session")
def boot_id_before_reboot():
    with open(_ephemeral("passthrough-boot-id"), encoding="utf-8") as handle:
        return handle.read().strip()


@pytest.fixture(scope="session")
def timings():
    with open(_ephemeral("passthrough-timings.json"), encoding="utf-8") as handle:
        return json.load(handle)
