# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet role's entry points that write into fleet_report_dir check the folder first, as the playbooks
do: the merges gather the per-host files with a file pattern that starts with the folder's name."""

from __future__ import annotations

import json

import pytest

from ansible_collections.gpuvirt.host.tests.tools.playbook import run_playbook

PREFLIGHT = {"host": "localhost", "changes": [], "reboot_required": False, "blockers": []}


def _play(entry, folder):
    return [{
        "name": "fleet role, %s" % entry,
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "vars": {"fleet_preflight": PREFLIGHT, "fleet_applied": []},
        "tasks": [{"name": "fleet %s" % entry, "ansible.builtin.include_role": {
            "name": "gpuvirt.host.fleet", "tasks_from": entry}, "vars": {"fleet_report_dir": folder}}],
    }]


@pytest.mark.parametrize("entry, kind", [("report", "preflight"), ("record", "rollout")])
def test_a_folder_whose_name_holds_a_wildcard_gets_no_file(tmp_path, entry, kind):
    # r[1] would gather r1's files: another run's hosts would become this run's summary.
    other = tmp_path / "r1" / kind
    other.mkdir(parents=True)
    (other / "old01.json").write_text(json.dumps(dict(PREFLIGHT, host="old01")))
    folder = tmp_path / "r[1]"

    (tmp_path / "run").mkdir()
    done = run_playbook(_play(entry, str(folder)), tmp_path / "run")

    assert done.returncode == 2, done.stdout[-3000:]
    assert "must not hold '['" in done.stdout and "Nothing was written." in done.stdout, done.stdout[-3000:]
    assert not folder.exists()
    assert sorted(path.name for path in (tmp_path / "r1").rglob("*")) == sorted([kind, "old01.json"])


@pytest.mark.parametrize("entry, summary", [("report", "preflight.json"), ("record", "rollout.json")])
def test_control_a_plain_folder_gets_the_files(tmp_path, entry, summary):
    folder = tmp_path / "r1"

    (tmp_path / "run").mkdir()
    done = run_playbook(_play(entry, str(folder)), tmp_path / "run")

    assert done.returncode == 0, done.stdout[-3000:]
    assert (folder / summary).is_file()
