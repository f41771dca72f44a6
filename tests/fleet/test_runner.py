# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The AWX project's playbooks run the way AWX runs them: ansible-runner with a private data dir
(project, inventory, env/extravars, env/envvars, env/settings), asserted on job events and artifacts."""

from __future__ import annotations

import json
import os
import shutil
import sys

import ansible_runner
import pytest
import yaml
from conftest import COLLECTIONS_BASE, REPO, cached_facts

PROJECT = os.path.join(REPO, "examples", "awx-project")
BIN = os.path.dirname(sys.executable)


@pytest.fixture(autouse=True)
def _venv_on_path(monkeypatch):
    # ansible-runner finds ansible-playbook on PATH, as AWX's execution environment has it.
    monkeypatch.setenv("PATH", BIN + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"))


def private_data_dir(fleet, base, extravars):
    shutil.copytree(PROJECT, os.path.join(base, "project"))
    os.makedirs(os.path.join(base, "inventory"))
    shutil.copy(fleet.inventory(), os.path.join(base, "inventory", "hosts.yml"))
    os.makedirs(os.path.join(base, "env"))
    envvars = {key: value for key, value in fleet.env().items() if key.startswith("ANSIBLE_")}
    envvars["ANSIBLE_COLLECTIONS_PATH"] = COLLECTIONS_BASE
    envvars["PATH"] = BIN + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin")
    for name, data in (("extravars", extravars), ("envvars", envvars),
                       ("settings", {"job_timeout": 1200, "fact_cache_type": "jsonfile"})):
        with open(os.path.join(base, "env", name), "w") as handle:
            yaml.safe_dump(data, handle)
    return base


def run(directory, playbook, ident):
    return ansible_runner.run(private_data_dir=directory, playbook=playbook, ident=ident, quiet=True)


def task_events(runner, event, task):
    return [e for e in runner.events if e["event"] == event and e.get("event_data", {}).get("task") == task]


def test_preflight_through_ansible_runner_fails_on_a_blocked_host_and_passes_on_ready_ones(fleet, tmp_path):
    fleet.add("ready01", "amd_host")
    fleet.add("blocked01", "desktop_dgpu", vfio_devices=["0000:00:02.0"])
    fleet.add("big01", {"generator": "large_synthetic", "parameters": {}})
    reports = tmp_path / "reports"
    extravars = {"target": "gpu_hosts", "gpuvirt_report_dir": str(reports)}
    directory = private_data_dir(fleet, str(tmp_path / "pdd"), extravars)
    runner = run(directory, "preflight.yml", "preflight-1")
    assert runner.status == "failed" and runner.rc != 0
    stats = runner.stats
    assert stats["failures"] == {"blocked01": 1}, stats
    failed = task_events(runner, "runner_on_failed", "Fail the blocked hosts")
    assert [e["event_data"]["host"] for e in failed] == ["blocked01"]
    assert "boot VGA" in failed[0]["event_data"]["res"]["msg"]
    summary = task_events(runner, "runner_on_ok", "Show the fleet summary")
    assert summary and summary[0]["event_data"]["res"]["msg"][0].startswith("Preflight: 3 host(s):")
    assert {e["event"] for e in runner.events} >= {"playbook_on_start", "playbook_on_play_start", "playbook_on_stats"}

    # Job events stay small: the 600-device host's topology is in none of them.
    sizes = [len(json.dumps(e)) for e in runner.events]
    assert max(sizes) < 32768, max(sizes)
    assert not [e for e in runner.events if "iommu_groups" in json.dumps(e)]

    # Artifacts: the job's status and rc, the results for CI and the fact cache AWX stores.
    artifacts = os.path.join(directory, "artifacts", "preflight-1")
    with open(os.path.join(artifacts, "rc")) as handle:
        assert handle.read().strip() == "2"
    assert json.loads((reports / "preflight.json").read_text())["counts"]["blocked"] == 1
    assert (reports / "preflight.junit.xml").exists()
    assert cached_facts(os.path.join(artifacts, "fact_cache"), "ready01")["gpuvirt"]["ready"] is True
    assert cached_facts(os.path.join(artifacts, "fact_cache"), "big01")["gpuvirt"]["gpu_count"] > 0

    # The same job on the ready host alone (a limit, as a job template's) succeeds.
    with open(os.path.join(directory, "env", "cmdline"), "w") as handle:
        handle.write("--limit ready01")
    runner = run(directory, "preflight.yml", "preflight-2")
    assert runner.status == "successful" and runner.rc == 0
    assert set(runner.stats["ok"]) == {"ready01"} and not runner.stats["failures"]


def test_rollout_through_ansible_runner_reboots_only_the_host_that_needs_it(fleet, tmp_path):
    fleet.add("gpu01", "amd_host")
    fleet.add("gpu02", "iommu_disabled")
    reports = tmp_path / "reports"
    directory = private_data_dir(fleet, str(tmp_path / "pdd"), {
        "target": "gpu_hosts", "gpuvirt_report_dir": str(reports), "gpuvirt_reboot": "if_needed",
        "gpuvirt_rollout_batch": 1, "gpuvirt_rollout_reboot_tasks": fleet.reboot_tasks(),
        "drain_hook": "hooks/undrain.yml", "undrain_hook": "hooks/undrain.yml"})
    runner = run(directory, "rollout.yml", "rollout-1")
    assert runner.status == "successful", runner.stdout.read()
    # Each serial batch is a play of its own in the job events.
    plays = [e for e in runner.events if e["event"] == "playbook_on_play_start"]
    # The hooks, the check of target, the pending records, one per batch of one host, the check of a host reached.
    assert len(plays) == 6
    rebooted = task_events(runner, "runner_on_ok", "Reboot the simulated host")
    assert [e["event_data"]["host"] for e in rebooted] == ["gpu02"]
    assert fleet.reboots("gpu01") == 0 and fleet.reboots("gpu02") == 1
    outcome = {item["host"]: item for item in json.loads((reports / "rollout.json").read_text())}
    assert outcome["gpu02"]["rebooted"] is True and outcome["gpu02"]["drained"] is True
    assert outcome["gpu01"]["rebooted"] is False and outcome["gpu01"]["changed"] == []
    assert cached_facts(os.path.join(directory, "artifacts", "rollout-1", "fact_cache"), "gpu02")["gpuvirt"]["iommu"]


def test_a_slice_that_holds_none_of_the_targets_hosts_fails_unless_the_job_template_allows_it(fleet, tmp_path):
    # AWX gives each slice of a sliced job its share of the inventory (hosts sorted by name, round
    # robin) and no slice number: with gpu01 and gpu02, the second slice holds gpu02 alone.
    fleet.add("gpu02", "iommu_disabled")
    before = fleet.digests()
    extravars = {"target": "gpu01", "drain_hook": "", "undrain_hook": ""}
    directory = private_data_dir(fleet, str(tmp_path / "pdd"), extravars)
    runner = run(directory, "rollout.yml", "slice-2")
    assert runner.status == "failed" and runner.rc == 2
    failed = task_events(runner, "runner_on_failed", "Fail when target matched no host")
    assert "gpuvirt.host.rollout reached no host: target 'gpu01'" in failed[0]["event_data"]["res"]["msg"]

    # The job template of a sliced job sets gpuvirt_allow_no_hosts (controller/configure.yml).
    with open(os.path.join(directory, "env", "extravars"), "w") as handle:
        yaml.safe_dump(dict(extravars, gpuvirt_allow_no_hosts=True), handle)
    runner = run(directory, "rollout.yml", "slice-2-allowed")
    assert runner.status == "successful" and runner.rc == 0
    assert fleet.digests() == before
