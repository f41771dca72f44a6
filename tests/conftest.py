# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make this checkout importable as ``ansible_collections.gpuvirt.host`` for the test run."""

from __future__ import annotations

import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _expose_collection():
    base = tempfile.mkdtemp(prefix="gpuvirt-collections-")
    namespace = os.path.join(base, "ansible_collections", "gpuvirt")
    os.makedirs(namespace)
    os.symlink(REPO, os.path.join(namespace, "host"))
    sys.path.insert(0, base)
    return base


COLLECTIONS_BASE = _expose_collection()
