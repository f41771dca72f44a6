# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the passthrough verifier: the lab's layout, the files the side effect left and the
boot-time restore's status."""

from __future__ import annotations

import json
import os
import sys
import time

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


@pytest.fixture(scope="module")
def restore_status(host):
    """``/run/gpuvirt/restore.json`` once gpuvirt-restore.service has finished in this boot."""
    for _attempt in range(150):
        state = host.check_output("systemctl show --property=ActiveState --value gpuvirt-restore.service")
        if state in ("active", "failed"):
            break
        time.sleep(2)
    return json.loads(host.file("/run/gpuvirt/restore.json").content_string)
