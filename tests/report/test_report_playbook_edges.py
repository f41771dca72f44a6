# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The gpuvirt.host.report playbook on the fleet's awkward days: a host it cannot reach, a private folder,
a relative folder, inventory names that are no file names."""

from __future__ import annotations

import os
import stat

from reporttools import REPO, collections_path, make_fleet, run_report


def page_of(report_dir):
    with open(os.path.join(report_dir, "index.html"), encoding="utf-8") as handle:
        return handle.read()


def test_a_host_the_run_cannot_reach_stays_on_the_page_marked(tmp_path):
    inventory = make_fleet(str(tmp_path), ["desktop_dgpu", "amd_host"])
    report_dir = str(tmp_path / "report")
    run_report(inventory, report_dir)
    # amd_host's tree goes away: its detection fails in the next run.
    os.rename(os.path.join(str(tmp_path), "hosts", "amd_host"), os.path.join(str(tmp_path), "hosts", "gone"))
    run = run_report(inventory, report_dir, check=False)
    assert run.returncode != 0 and "not reached amd_host" in run.stdout, run.stdout[-3000:]
    page = page_of(report_dir)
    assert "<p class='muted'>2 hosts, 4 GPUs, 1 ready for passthrough, 1 not reached in their last run " in page
    assert "The run at " in page and "what follows is its record from an earlier run" in page
    assert page.count("sev sev-error'>not reached at ") == 1


def test_check_mode_with_a_new_folder_writes_nothing_and_passes(tmp_path):
    inventory = make_fleet(str(tmp_path), ["amd_host"])
    run = run_report(inventory, str(tmp_path / "new-report"), options=["--check"])
    assert "new-report/index.html: 0 hosts" in run.stdout and not (tmp_path / "new-report").exists()


def test_a_private_report_folder_stays_private(tmp_path):
    inventory = make_fleet(str(tmp_path), ["amd_host"])
    report_dir = tmp_path / "report"
    report_dir.mkdir(mode=0o700)
    os.chmod(report_dir, 0o700)
    run_report(inventory, str(report_dir))
    assert stat.S_IMODE(os.stat(report_dir).st_mode) == 0o700
    assert sorted(os.listdir(report_dir)) == [".lock", "amd_host.json", "index.html"]


def test_a_relative_report_folder_is_refused_with_nothing_written(tmp_path):
    inventory = make_fleet(str(tmp_path), ["amd_host"])
    run = run_report(inventory, "relative-report", check=False)
    refusal = "gpuvirt_report_dir must be an absolute path (or start with ~), got 'relative-report'"
    assert run.returncode != 0 and refusal in run.stdout
    playbooks = os.path.join(os.path.realpath(collections_path()), "ansible_collections", "gpuvirt", "host",
                             "playbooks")
    for folder in (playbooks, os.path.join(REPO, "playbooks"), os.getcwd()):
        assert not os.path.exists(os.path.join(folder, "relative-report"))


def test_an_inventory_name_that_leaves_the_folder_is_refused(tmp_path):
    inventory = make_fleet(str(tmp_path), ["amd_host"])
    with open(inventory, encoding="utf-8") as handle:
        text = handle.read()
    with open(inventory, "w", encoding="utf-8") as handle:
        handle.write(text.replace("amd_host ansible_connection", "../escaped ansible_connection"))
    report_dir = tmp_path / "report"
    run = run_report(inventory, str(report_dir), check=False)
    assert run.returncode != 0 and "'../escaped' cannot name a file in the report folder" in run.stdout, run.stdout
    assert not (tmp_path / "escaped.json").exists() and not report_dir.exists()
