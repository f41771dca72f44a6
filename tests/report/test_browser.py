# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet page in a real browser: headless Chromium (Debian's package), offline, through DevTools.

The page is built the way a fleet builds it: the ``gpuvirt.host.report`` playbook runs over fixture
hosts (tests/fixtures/hosts, built by hostgen) in two separate runs, as two AWX job slices would,
into a folder that already holds the lab host's record (written by the ``default`` Molecule
scenario on the QEMU lab's real kernel). Chromium runs in an empty network namespace. The page and
a full-page screenshot are kept in tests/output/report/.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from chromium import Browser, find_chromium
from reporttools import OUTPUT, make_fleet, run_report

LAB_RECORDS = os.path.join(OUTPUT, "lab-report")
SLICES = (
    ["desktop_dgpu", "desktop_vfio", "desktop_dgpu_nic", "amd_host"],
    ["datacenter_a100", "l40s_vgpu", "intel_gvtg", "iommu_disabled"],
)
VERDICT_COLOURS = {
    "viable": "rgb(27, 127, 59)",
    "companion": "rgb(31, 95, 168)",
    "blocked": "rgb(179, 38, 30)",
    "boot-vga": "rgb(161, 92, 0)",
    "host-critical": "rgb(106, 27, 154)",
    "bridge": "rgb(107, 107, 107)",
}


def _lab_records():
    names = sorted(n for n in os.listdir(LAB_RECORDS) if n.endswith(".json")) if os.path.isdir(LAB_RECORDS) else []
    if not names:
        pytest.fail(
            "no lab host record in %s: the default Molecule scenario writes it (make molecule, before make report)"
            % LAB_RECORDS
        )
    return {name[: -len(".json")]: os.path.join(LAB_RECORDS, name) for name in names}


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    chromium = find_chromium()
    if chromium is None:
        pytest.fail("chromium is not installed: install the Debian package chromium (make deps does)")
    lab = _lab_records()
    base = tmp_path_factory.mktemp("fleet")
    report_dir = base / "report"
    report_dir.mkdir()
    for path in lab.values():
        shutil.copy(path, report_dir)
    inventory = make_fleet(str(base), [name for names in SLICES for name in names], reboot_pending=["desktop_vfio"])
    for names in SLICES:  # two runs, as two job slices, sharing the folder
        run_report(inventory, str(report_dir), limit=",".join(names))
    out = os.path.join(OUTPUT, "report")
    os.makedirs(out, exist_ok=True)
    shutil.copy(report_dir / "index.html", os.path.join(out, "index.html"))
    records = {}
    for name in os.listdir(report_dir):
        if name.endswith(".json"):
            with open(report_dir / name) as handle:
                records[name[: -len(".json")]] = json.load(handle)
    browser = Browser(chromium, offline=True)
    try:
        browser.open("file://" + str(report_dir / "index.html"))
        browser.screenshot(os.path.join(out, "screenshot.png"))
        yield browser, records, set(lab)
    finally:
        browser.close()


def _js(browser, expression):
    return browser.evaluate("(function(){%s})()" % expression)


def test_every_host_of_both_slices_and_the_lab_has_a_row_and_a_section(page):
    browser, records, lab = page
    expected = {name for names in SLICES for name in names} | lab
    rows = _js(browser, "return Array.from(document.querySelectorAll('#hosts tbody tr')).map(r => r.dataset.host)")
    sections = _js(browser, "return Array.from(document.querySelectorAll('section.host')).map(s => s.dataset.host)")
    assert set(rows) == expected == set(sections)
    assert set(records) == expected


def test_the_script_ran_with_no_console_error_and_no_network(page):
    browser = page[0]
    assert _js(browser, "return document.body.dataset.ready") == "1"
    assert browser.problems() == []
    assert [url for url in browser.requests() if not url.startswith("file://")] == []


def test_group_boxes_hold_their_devices_coloured_by_verdict(page):
    browser = page[0]
    boxes = _js(
        browser,
        """
        var out = {};
        document.querySelectorAll("section[data-host='desktop_vfio'] .group").forEach(function (g) {
          out[g.dataset.group] = Array.from(g.querySelectorAll(':scope > .dev')).map(function (d) {
            return [d.dataset.address, d.dataset.verdict, getComputedStyle(d).borderTopColor];
          });
        });
        return out;""",
    )
    assert sorted(boxes) == ["1", "2"]
    assert [d[:2] for d in boxes["1"]] == [["0000:00:02.0", "boot-vga"]]
    assert [d[:2] for d in boxes["2"]] == [
        ["0000:00:01.0", "bridge"],
        ["0000:01:00.0", "viable"],
        ["0000:01:00.1", "companion"],
        ["0000:01:00.2", "companion"],
        ["0000:01:00.3", "companion"],
    ]
    for _address, verdict, colour in boxes["1"] + boxes["2"]:
        assert colour == VERDICT_COLOURS[verdict]
    nic = _js(
        browser,
        """
        return Array.from(document.querySelectorAll("section[data-host='desktop_dgpu_nic'] .dev")).map(function (d) {
          return [d.dataset.address, d.dataset.verdict, getComputedStyle(d).borderTopColor, d.textContent];
        });""",
    )
    by_address = {d[0]: d for d in nic}
    assert by_address["0000:01:00.0"][1] == "host-critical"
    assert by_address["0000:01:00.0"][2] == VERDICT_COLOURS["host-critical"]
    assert "group_shared" in by_address["0000:01:00.0"][3] and "the host needs it" in by_address["0000:01:00.0"][3]


def test_vfs_and_mdevs_sit_under_their_parent_with_the_numa_node(page):
    browser = page[0]
    parent = _js(
        browser,
        """
        var d = document.querySelector("section[data-host='datacenter_a100'] .dev[data-address='0000:b1:00.0']");
        return {vfs: d.querySelectorAll(".chip[data-kind='vf']").length, text: d.textContent};""",
    )
    assert parent["vfs"] == 16
    assert "NUMA 1" in parent["text"] and "mdev nvidia-471" in parent["text"]
    assert _js(browser, "return document.querySelectorAll(\"section[data-host='datacenter_a100'] .group\").length") == 2


def test_the_table_says_readiness_use_capacity_reboot_and_findings(page):
    browser = page[0]
    cells = _js(
        browser,
        """
        var out = {};
        document.querySelectorAll('#hosts tbody tr').forEach(function (r) {
          out[r.dataset.host] = Array.from(r.cells).map(function (c) { return c.textContent; });
        });
        return out;""",
    )
    assert cells["desktop_vfio"][2].startswith("1 of 2")
    assert cells["desktop_vfio"][5] == "yes" and cells["desktop_dgpu"][5] == "no"
    assert "NVIDIA A100-4C" in cells["datacenter_a100"][3] and "15 \u00d7 NVIDIA A100-4C" in cells["datacenter_a100"][4]
    assert cells["iommu_disabled"][6] == "1"
    advice = _js(
        browser, "return document.querySelector(\"section[data-host='iommu_disabled'] .findings\").textContent"
    )
    assert "intel_iommu=on" in advice


def test_the_lab_hosts_gpus_are_drawn_with_the_verdicts_its_kernel_gave(page):
    browser, records, lab = page
    for host in lab:
        for gpu in records[host]["topology"]["gpus"]:
            if gpu["iommu_group"] is None or gpu["is_vf"]:
                continue
            verdict = _js(
                browser,
                "var d = document.querySelector(\"section[data-host='%s'] .dev[data-address='%s']\");"
                "return d && d.dataset.verdict;" % (host, gpu["address"]),
            )
            if gpu["boot_vga"]:
                assert verdict == "boot-vga"
            elif gpu["passthrough"]["viable"]:
                assert verdict == "viable"
            else:
                assert verdict in ("blocked", "host-critical"), (gpu["address"], verdict)


def test_sorting_and_filtering_work_without_a_server(page):
    browser = page[0]
    order = _js(
        browser,
        """
        var th = document.querySelectorAll('#hosts thead th')[1];
        th.click(); th.click();
        return Array.from(document.querySelectorAll('#hosts tbody tr')).map(r => parseInt(r.cells[1].dataset.sort));""",
    )
    assert order == sorted(order, reverse=True) and order[0] > order[-1]
    visible = _js(
        browser,
        """
        var box = document.getElementById('filter');
        box.value = 'L40S'; box.dispatchEvent(new Event('input'));
        var rows = Array.from(document.querySelectorAll('#hosts tbody tr')).filter(r => !r.hidden)
          .map(r => r.dataset.host);
        var sections = Array.from(document.querySelectorAll('section.host')).filter(s => !s.hidden).length;
        box.value = ''; box.dispatchEvent(new Event('input'));
        return {rows: rows, sections: sections};""",
    )
    assert visible == {"rows": ["l40s_vgpu"], "sections": 1}
    problems = _js(
        browser,
        """
        var only = document.getElementById('only-problems');
        only.checked = true; only.dispatchEvent(new Event('change'));
        var rows = Array.from(document.querySelectorAll('#hosts tbody tr')).filter(r => !r.hidden)
          .map(r => r.dataset.host);
        only.checked = false; only.dispatchEvent(new Event('change'));
        return rows;""",
    )
    assert "iommu_disabled" in problems and "desktop_vfio" in problems and "amd_host" not in problems


def test_the_screenshot_is_kept(page):
    with open(os.path.join(OUTPUT, "report", "screenshot.png"), "rb") as handle:
        data = handle.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50000


def test_the_browser_checks_catch_console_errors_and_network_use(tmp_path):
    """The checks above can fail: a page that logs an error and fetches from the network is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<html><body><script>console.error('broken'); fetch('http://192.0.2.1/font.woff')"
        ".catch(function () {});</script></body></html>"
    )
    browser = Browser(find_chromium(), offline=True)
    try:
        browser.open("file://" + str(bad))
        browser.evaluate("new Promise(function (done) { setTimeout(done, 500); })")
        assert any("broken" in problem for problem in browser.problems())
        assert "http://192.0.2.1/font.woff" in browser.requests()
    finally:
        browser.close()
