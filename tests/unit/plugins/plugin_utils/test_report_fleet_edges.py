# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet page on the fleet's awkward days: hosts a run did not reach, rows from the fact cache, copies
staged into the folder, hosts whose names differ only in punctuation, GPUs without an IOMMU group."""

from __future__ import annotations

import json
import re
from unittest import mock

import pytest
from ansible.errors import AnsibleActionFail

from ansible_collections.gpuvirt.host.plugins.action.fleet_report import mark_not_reached, read_records
from ansible_collections.gpuvirt.host.plugins.filter.report_folder_problems import report_folder_problems
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect
from ansible_collections.gpuvirt.host.plugins.plugin_utils.report import RECORD_FORMAT, host_row, render
from ansible_collections.gpuvirt.host.tests.unit.plugins.plugin_utils.test_report import _record

FACT = {"gpu_count": 4, "gpu_model_counts": [{"model": "GA102GL [A10]", "count": 4}], "passthrough_ready_count": 3,
        "mdevs_in_use": 3, "vgpus": 2, "reboot_pending": False, "blockers": [], "iommu": True}


def rows_of(page):
    return re.findall(r"<tr data-host='([^']*)' data-section='([^']*)' data-problem='(\d)'>(.*?)</tr>", page)


def test_a_host_the_run_did_not_reach_keeps_its_record_marked(make_host, tmp_path):
    (tmp_path / "gpu01.json").write_text(json.dumps(_record(detect(make_host("desktop_vfio")), host="gpu01")))
    mark_not_reached(str(tmp_path), "gpu01", "2026-12-07T03:00:00Z")
    mark_not_reached(str(tmp_path), "gpu02", "2026-12-07T03:00:00Z")  # never reported before
    records, ignored = read_records(str(tmp_path))
    assert ignored == [] and [r["host"] for r in records] == ["gpu01", "gpu02"]
    assert records[0]["topology"]["gpus"] and records[0]["collected_at"] == "2026-12-02T06:00:00Z"
    page = render(records)
    assert re.search(r"2 hosts, \d+ GPUs, \d+ ready for passthrough, 2 not reached in their last run\.", page)
    for _host, _section, problem, cells in rows_of(page):
        assert problem == "1" and "not reached at 2026-12-07T03:00:00Z" in cells
    assert "what follows is its record from an earlier run" in page
    assert "no earlier run left a record of it" in page
    stub = rows_of(page)[1][3]  # nothing is known of gpu02: unknown, not none
    assert ">none<" not in stub and "0 of 0" not in stub and stub.count("title='unknown'>?</span>") == 3
    assert stub.count(">unknown</td>") == 5  # models, readiness, use, capacity, pending reboot
    # A run that reaches the host again writes its record whole: the mark goes.
    (tmp_path / "gpu01.json").write_text(json.dumps(_record(detect(make_host("desktop_vfio")), host="gpu01")))
    assert "not reached" not in render(read_records(str(tmp_path))[0][:1])


def test_control_a_reached_host_is_not_marked(make_host):
    page = render([_record(detect(make_host("desktop_vfio")), host="gpu01")])
    assert "not reached" not in page and rows_of(page)[0][2] == "0"


def test_a_row_from_the_fact_cache_shows_what_the_fact_counts_and_no_more():
    row = host_row({"format": RECORD_FORMAT, "host": "n1", "source": "cache", "fact": FACT})
    assert row["free"] is None and row["findings"] == {"error": 0, "warning": None, "info": None}
    cells = rows_of(render([{"format": RECORD_FORMAT, "host": "n1", "source": "cache", "fact": FACT}]))[0][3]
    assert "<td>2 vGPUs, 3 mdevs in use</td><td>unknown</td>" in cells
    assert cells.count("title='unknown'>?</span>") == 2


def test_a_file_that_is_not_the_hosts_record_is_not_marked(make_host, tmp_path):
    # A raw topology of topology_report, another host's record, a file that cannot be read: left as they are.
    topology = json.dumps(detect(make_host("desktop_vfio")))
    files = {"gpu01": topology, "gpu02": json.dumps(_record(json.loads(topology), host="gpu09")), "gpu03": "{"}
    for host, text in files.items():
        (tmp_path / ("%s.json" % host)).write_text(text)
        assert mark_not_reached(str(tmp_path), host, "2026-12-07T03:00:00Z") is False
        assert (tmp_path / ("%s.json" % host)).read_text() == text


def test_hidden_files_in_the_folder_are_not_records(make_host, tmp_path):
    record = json.dumps(_record(detect(make_host("desktop_vfio")), host="gpu02"))
    (tmp_path / "gpu02.json").write_text(record)
    (tmp_path / ".ansible_tmpk2j4gpu02.json").write_text(record)  # a copy staged from another filesystem
    records, ignored = read_records(str(tmp_path))
    assert [r["host"] for r in records] == ["gpu02"] and ignored == []


def test_hosts_whose_names_differ_in_punctuation_get_their_own_sections(make_host):
    topology = detect(make_host("desktop_vfio"))
    page = render([_record(topology, host="gpu.01"), _record(topology, host="gpu_01")])
    sections = [section for _host, section, _problem, _cells in rows_of(page)]
    assert len(set(sections)) == 2
    for section in sections:
        assert page.count("id='%s'" % section) == 1


def test_hosts_sort_as_the_page_sorts_a_column():
    records = [{"format": RECORD_FORMAT, "host": host, "source": "cache", "fact": FACT}
               for host in ("gpu10", "GPU3", "gpu2", "node1\u00b2")]
    assert [host for host, *_rest in rows_of(render(records))] == ["gpu2", "GPU3", "gpu10", "node1\u00b2"]


def test_a_gpu_without_a_group_is_drawn_beside_the_grouped_ones(make_host):
    topology = detect(make_host("desktop_vfio"))
    grouped = [g for g in topology["gpus"] if g["iommu_group"] is not None]
    assert len(grouped) >= 2
    grouped[0]["iommu_group"] = None
    page = render([_record(topology)])
    assert "<h4>No IOMMU group</h4>" in page and "data-address='%s'" % grouped[0]["address"] in page


def test_a_host_without_a_gpu_says_so(make_host):
    topology = detect(make_host("desktop_vfio"))
    topology["gpus"] = []
    page = render([_record(topology)])
    assert "No GPU.</p>" in page and "No GPU is in an IOMMU group" not in page


@pytest.mark.parametrize("folder, hosts, reserved, problem", [
    ("reports", ["gpu01"], [], "must be an absolute path (or start with ~), got 'reports'"),
    ("/srv/r", ["../escaped", "rack1/gpu01", ".hidden"], [], "'../escaped', '.hidden', 'rack1/gpu01' cannot name"),
    ("/srv/r", ["preflight", "gpu01"], ["preflight", "rollout"], "'preflight' are the names of the fleet's summaries"),
    ("/srv/reports [prod]", ["gpu01"], [], "must not hold '[', got '/srv/reports [prod]'"),
    ("/srv/*/gpu", ["gpu01"], [], "must not hold '*', got '/srv/*/gpu'"),
    ("~/run?/r[1]", ["gpu01"], [], "must not hold '?' or '[', got '~/run?/r[1]'"),
])
def test_report_folder_problems(folder, hosts, reserved, problem):
    problems = report_folder_problems(folder, hosts, reserved=reserved)
    assert len(problems) == 1 and problem in problems[0]


def test_control_an_absolute_folder_and_plain_names_have_no_problem():
    assert report_folder_problems("/srv/gpu-report", ["gpu01", "gpu-02.example.com", "fd00::7"], ["preflight"]) == []
    assert report_folder_problems("~/gpu-report", ["gpu01"]) == []
    assert report_folder_problems("/srv/gpu report (prod)]", ["gpu01"]) == []  # ']' alone opens no wildcard


def test_the_page_action_refuses_a_name_that_is_no_file_name(tmp_path):
    from ansible_collections.gpuvirt.host.plugins.action import fleet_report

    class Task:
        args = {"path": str(tmp_path), "not_reached": ["../escaped"]}
        check_mode = False

    action = fleet_report.ActionModule.__new__(fleet_report.ActionModule)
    action._task = Task()
    with mock.patch("ansible.plugins.action.ActionBase.run", return_value={}), pytest.raises(
        AnsibleActionFail, match="cannot name a record file"
    ):
        action.run(None, {})
    assert list(tmp_path.iterdir()) == []


def test_builds_that_share_a_folder_take_turns(tmp_path):
    """A build holds the folder's lock from reading the records to writing the page: a slice that wrote its
    records meanwhile builds after it, and its page, written last, holds every record."""
    import fcntl
    import threading

    from ansible_collections.gpuvirt.host.plugins.action.fleet_report import folder_lock

    order = []

    def second():
        with folder_lock(str(tmp_path)):
            order.append("second")

    with folder_lock(str(tmp_path)):
        waiting = threading.Thread(target=second)
        waiting.start()
        waiting.join(0.3)
        assert waiting.is_alive() and order == []  # the second build waits for the first
        order.append("first")
    waiting.join(5)
    assert order == ["first", "second"]
    with open(tmp_path / ".lock") as handle:  # and let it go
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
