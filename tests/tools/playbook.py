# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a playbook against this checkout as users run it: ansible-playbook on localhost.

The collection is copied once per work folder (every run of one test sees the same collection), and
Ansible's own state (home, local temp) stays in that folder too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def collection_copy(workdir):
    """``<workdir>/collections`` holding a copy of this checkout as ``gpuvirt.host`` (made once)."""
    collections = os.path.join(str(workdir), "collections")
    target = os.path.join(collections, "ansible_collections", "gpuvirt", "host")
    if not os.path.isdir(target):
        for name in ("plugins", "roles", "meta"):
            shutil.copytree(os.path.join(REPO, name), os.path.join(target, name),
                            ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(os.path.join(REPO, "galaxy.yml"), os.path.join(target, "galaxy.yml"))
    return collections


def run_playbook(playbook, workdir, options=(), timeout=900):
    """Write ``playbook`` (a list of plays) into ``workdir`` and run it with ``options``
    (``--check``...) on localhost; returns the completed process (output as text)."""
    path = os.path.join(str(workdir), "play.yml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(yaml.safe_dump(playbook))
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=collection_copy(workdir),
        ANSIBLE_HOME=os.path.join(str(workdir), "ansible-home"),
        ANSIBLE_LOCAL_TEMP=os.path.join(str(workdir), "ansible-tmp"),
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
    )
    env.pop("GPUVIRT_KERNEL_SIM", None)  # plays set it where they want the simulated kernel
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,"]
    return subprocess.run(command + list(options) + [path], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
