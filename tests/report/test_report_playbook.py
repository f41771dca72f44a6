# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The gpuvirt.host.report playbook: per-host records, slices merging into one page, the fact cache."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from reporttools import make_fleet, run_report


def _hosts_on_page(report_dir):
    with open(os.path.join(report_dir, "index.html")) as handle:
        page = handle.read()
    return sorted(set(part.split("'", 1)[0] for part in page.split("<tr data-host='")[1:]))


def test_slices_write_their_records_and_the_page_shows_every_slice(tmp_path):
    inventory = make_fleet(str(tmp_path), ["desktop_dgpu", "amd_host", "intel_gvtg"])
    report_dir = str(tmp_path / "report")
    run_report(inventory, report_dir, limit="desktop_dgpu")
    assert _hosts_on_page(report_dir) == ["desktop_dgpu"]
    run_report(inventory, report_dir, limit="amd_host,intel_gvtg")
    assert _hosts_on_page(report_dir) == ["amd_host", "desktop_dgpu", "intel_gvtg"]
    with open(os.path.join(report_dir, "amd_host.json")) as handle:
        record = json.load(handle)
    assert record["format"] == "gpuvirt.host/report-host/1" and record["source"] == "live"
    assert record["pending_reboot"] is False and record["topology"]["gpus"][1]["driver"] == "vfio-pci"


def test_the_page_is_built_from_the_fact_cache_without_contacting_hosts(tmp_path):
    cache = tmp_path / "facts"
    cache.mkdir()
    fact = {
        "version": 1,
        "iommu": True,
        "gpu_count": 2,
        "gpu_model_counts": [{"model": "GA102GL [A10]", "count": 2}],
        "passthrough_ready_count": 2,
        "vgpus": 0,
        "mdevs": 0,
        "mdevs_in_use": 0,
        "reboot_pending": True,
        "blockers": [],
    }
    inventory = tmp_path / "inventory.ini"
    # The host's root does not exist: a live detection would fail.
    inventory.write_text("gpu-node-07 ansible_connection=local gpuvirt_root=/nonexistent\n")
    caching = {"ANSIBLE_CACHE_PLUGIN": "jsonfile", "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(cache)}
    # Cache the fact the way the fleet playbooks publish it: set_fact with cacheable.
    publish = tmp_path / "publish.yml"
    publish.write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - ansible.builtin.set_fact:\n"
        "        gpuvirt: %s\n        cacheable: true\n" % json.dumps(fact)
    )
    ran = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(inventory), str(publish)],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, **caching),
    )
    assert ran.returncode == 0, ran.stdout
    report_dir = str(tmp_path / "report")
    run_report(str(inventory), report_dir, extra_vars={"gpuvirt_report_source": "cache"}, env=caching)
    with open(os.path.join(report_dir, "gpu-node-07.json")) as handle:
        record = json.load(handle)
    assert record["source"] == "cache" and record["fact"] == fact and "topology" not in record
    assert record["pending_reboot"] is True
    assert _hosts_on_page(report_dir) == ["gpu-node-07"]


def test_a_second_report_changes_nothing(tmp_path):
    # The records and the page are the report's output, new at each run: no host changed, so a scheduled
    # report runs clean.
    inventory = make_fleet(str(tmp_path), ["amd_host"])
    report_dir = str(tmp_path / "report")
    run_report(inventory, report_dir)
    run = run_report(inventory, report_dir)
    assert re.search(r"amd_host\s*: ok=\d+\s+changed=0 ", run.stdout), run.stdout[-2000:]
    assert sorted(os.listdir(report_dir)) == [".lock", "amd_host.json", "index.html"]


def test_without_a_report_folder_the_playbook_says_what_to_give(tmp_path):
    inventory = make_fleet(str(tmp_path), ["amd_host"])
    run = run_report(inventory, "", check=False)
    assert run.returncode != 0 and "Give gpuvirt_report_dir" in run.stdout


def test_check_mode_writes_nothing(tmp_path):
    inventory = make_fleet(str(tmp_path), ["amd_host"])
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    run = run_report(inventory, str(report_dir), options=["--check"])
    assert os.listdir(report_dir) == [], run.stdout
