# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fleet playbook whose target matches no host fails the run, unless gpuvirt_allow_no_hosts is true.

Ansible only warns when a play's host pattern matches nothing and ends such a run with rc 0: a green
rollout, preflight gate or report that did nothing. The hosts are two that gpu_host and the rollout
would change (the IOMMU is off), so that a run that reached one shows in its tree.
"""

from __future__ import annotations

import pytest

# What each playbook says when it reached no host.
PLAYBOOKS = {
    "gpuvirt.host.gpu_host": "gpuvirt.host.gpu_host configured no host",
    "gpuvirt.host.rollout": "gpuvirt.host.rollout reached no host",
    "gpuvirt.host.preflight": "gpuvirt.host.preflight checked no host",
    "gpuvirt.host.report": "gpuvirt.host.report covered no host",
    "gpuvirt.host.topology_report": "gpuvirt.host.topology_report reported no host",
}
NOTHING_DONE = {
    "gpuvirt.host.gpu_host": "so nothing was changed",
    "gpuvirt.host.rollout": "so nothing was changed",
    "gpuvirt.host.preflight": "so nothing was checked and no result was written",
    "gpuvirt.host.report": "so no record was written and the page was not rebuilt",
    "gpuvirt.host.topology_report": "so nothing was reported and no file was written",
}


@pytest.fixture
def two_hosts(fleet, tmp_path):
    """The fleet with gpu01 and gpu02, the trees' digests before any run, and the report folder."""
    fleet.add("gpu01", "iommu_disabled")
    fleet.add("gpu02", "iommu_disabled")
    return fleet, fleet.digests(), tmp_path / "report"


def assert_nothing_done(fleet, before, report, recap):
    assert fleet.digests() == before
    assert not report.exists()
    assert fleet.reboots("gpu01") == 0 and fleet.reboots("gpu02") == 0
    assert all(counts["changed"] == 0 for counts in recap.values()), recap


@pytest.mark.parametrize("playbook", sorted(PLAYBOOKS))
def test_a_target_that_matches_no_host_fails_unless_allowed(playbook, two_hosts):
    fleet, before, report = two_hosts
    settings = {"target": "gpu_host", "gpuvirt_report_dir": str(report)}  # the group is gpu_hosts
    rc, recap, output = fleet.run(playbook, extra_vars=settings)
    assert rc == 2, output
    inventory = fleet.inventory()
    assert "%s: target 'gpu_host' matches no host of the inventory, %s." % (
        PLAYBOOKS[playbook], NOTHING_DONE[playbook]) in output
    assert "ansible-inventory -i %s --graph" % inventory in output
    assert "ansible -i %s gpu_host --list-hosts." % inventory in output
    assert "set gpuvirt_allow_no_hosts=true" in output
    assert set(recap) == {"localhost"} and recap["localhost"]["failed"] == 1
    assert_nothing_done(fleet, before, report, recap)

    # As a job template or the command line gives it: text.
    rc, recap, output = fleet.run(playbook, "-e", "gpuvirt_allow_no_hosts=true", extra_vars=settings)
    assert rc == 0, output
    assert PLAYBOOKS[playbook] not in output
    assert_nothing_done(fleet, before, report, recap)


@pytest.mark.parametrize("playbook", sorted(PLAYBOOKS))
def test_a_limit_that_leaves_none_of_the_targets_hosts_fails_in_check_mode_too(playbook, two_hosts):
    fleet, before, report = two_hosts
    rc, recap, output = fleet.run(playbook, "--limit", "gpu02", check=True,
                                  extra_vars={"target": "gpu01", "gpuvirt_report_dir": str(report)})
    assert rc == 2, output
    assert "%s: target 'gpu01' matches no host of the inventory within --limit 'gpu02', %s." % (
        PLAYBOOKS[playbook], NOTHING_DONE[playbook]) in output
    assert "gpu01 --list-hosts --limit gpu02." in output
    # The check runs on a host of the limit, as a play on localhost alone is left out of it.
    assert recap["gpu02"]["failed"] == 1 and "gpu01" not in recap
    assert_nothing_done(fleet, before, report, recap)


@pytest.mark.parametrize("playbook", sorted(PLAYBOOKS))
def test_gpuvirt_allow_no_hosts_must_be_true_or_false_and_is_checked_before_any_host(playbook, two_hosts):
    fleet, before, report = two_hosts
    rc, recap, output = fleet.run(playbook, extra_vars={
        "target": "gpu_hosts", "gpuvirt_report_dir": str(report), "gpuvirt_allow_no_hosts": "maybe"})
    assert rc == 2, output
    assert "gpuvirt_allow_no_hosts must be true or false, got 'maybe'." in output
    assert set(recap) == {"localhost"}
    assert_nothing_done(fleet, before, report, recap)


def test_unreachable_hosts_end_the_run_with_their_own_failure(fleet):
    fleet.add("ready01", "amd_host")
    fleet.add("down01", "amd_host")
    fleet.add("down02", "amd_host")
    for name in ("down01", "down02"):
        # Nothing listens on the discard port: the connection is refused at once.
        fleet.host_vars[name].update(ansible_connection="ssh", ansible_host="127.0.0.1", ansible_port=9)
    check_play = "PLAY [Check that the preflight reached a host]"

    # Every host of the play unreachable: Ansible ends the run before the last check.
    rc, recap, output = fleet.run("gpuvirt.host.preflight", "--limit", "down01,down02", extra_vars={"target": "all"})
    assert rc == 4, output
    assert recap["down01"]["unreachable"] == 1 and recap["down02"]["unreachable"] == 1
    assert check_play not in output and "checked no host" not in output

    # One host reached: the last check passes, and the run keeps the unreachable hosts' rc.
    rc, recap, output = fleet.run("gpuvirt.host.preflight", extra_vars={"target": "all"})
    assert rc == 4, output
    assert recap["ready01"]["failed"] == 0 and recap["down01"]["unreachable"] == 1
    assert check_play in output and "checked no host" not in output
    assert sum(counts["failed"] for counts in recap.values()) == 0, recap


def test_the_topology_report_of_a_target_with_hosts_passes_and_writes_each_hosts_files(two_hosts):
    fleet, before, report = two_hosts
    rc, recap, output = fleet.run("gpuvirt.host.topology_report", "--limit", "gpu02",
                                  extra_vars={"target": "gpu_hosts", "gpuvirt_report_dir": str(report)})
    assert rc == 0, output
    assert "PLAY [Check that the topology report reached a host]" in output and "reported no host" not in output
    assert sorted(path.name for path in report.iterdir()) == ["gpu02.json", "gpu02.txt"]
    assert fleet.digests() == before


# The first task of each playbook's main play.
FIRST_TASKS = {
    "gpuvirt.host.gpu_host": "Turn the IOMMU on",
    "gpuvirt.host.rollout": "Note the hosts of this batch",
    "gpuvirt.host.preflight": "Preview every role on the host",
    "gpuvirt.host.report": "Check the report settings",
    "gpuvirt.host.topology_report": "Detect the IOMMU, PCI and GPU topology",
}


@pytest.mark.parametrize("playbook", sorted(PLAYBOOKS))
def test_a_run_started_at_a_later_task_is_judged_by_the_hosts_its_target_matches(playbook, two_hosts):
    # --start-at-task (or a job template's start_at_task) skips every task before the one named, in
    # every play: the last check cannot count on a task of the main play to have run.
    fleet, before, report = two_hosts
    settings = {"target": "gpu_hosts", "gpuvirt_report_dir": str(report)}
    rc, recap, output = fleet.run(playbook, "--start-at-task", FIRST_TASKS[playbook], "--limit", "gpu02",
                                  check=True, extra_vars=settings)
    assert "TASK [%s]" % FIRST_TASKS[playbook] in output
    assert PLAYBOOKS[playbook] not in output, output
    assert recap["gpu02"]["ok"] > 0 and "gpu01" not in recap
    assert fleet.digests() == before


def test_an_empty_report_folder_saves_nothing(two_hosts):
    # A job template's blank survey answer, or -e gpuvirt_report_dir=, is an empty string: no folder.
    fleet, before, _report = two_hosts
    rc, recap, output = fleet.run("gpuvirt.host.topology_report", extra_vars={
        "target": "gpu_hosts", "gpuvirt_report_dir": ""})
    assert rc == 0 and recap["gpu01"]["failed"] == 0 and recap["gpu02"]["failed"] == 0, output
    assert fleet.digests() == before
