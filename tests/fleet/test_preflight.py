# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpuvirt.host.preflight on a simulated fleet: blocked, reboot-needing and ready hosts."""

from __future__ import annotations

import json
from xml.etree import ElementTree

from conftest import cached_facts

GUEST = {"processes": [{"pid": 4242, "comm": "qemu-system-x86", "holds": ["0c:00.0"]}]}


def test_preflight_reports_each_host_and_fails_only_the_blocked_one(fleet, tmp_path):
    fleet.add("ready01", "amd_host")
    fleet.add("reboot01", "iommu_disabled")
    fleet.add("blocked01", "desktop_dgpu", vfio_devices=["0000:00:02.0"])
    before = fleet.digests()
    report = tmp_path / "report"
    cache = tmp_path / "facts"
    rc, recap, output = fleet.run(
        "gpuvirt.host.preflight", extra_vars={"target": "gpu_hosts", "gpuvirt_report_dir": str(report)},
        env={"ANSIBLE_CACHE_PLUGIN": "jsonfile", "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(cache)},
    )
    assert rc == 2, output
    assert recap["blocked01"]["failed"] == 1 and recap["ready01"]["failed"] == 0 and recap["reboot01"]["failed"] == 0
    assert "Preflight: 3 host(s): 1 ready, 0 to change, 1 to change with a reboot, 1 blocked" in output
    # Read-only: no tree changed.
    assert fleet.digests() == before

    result = json.loads((report / "preflight.json").read_text())
    assert result["counts"] == {"hosts": 3, "ready": 1, "changes": 0, "reboot": 1, "blocked": 1}
    hosts = {item["host"]: item for item in result["hosts"]}
    assert hosts["ready01"]["status"] == "ready"
    assert hosts["reboot01"]["status"] == "reboot" and hosts["reboot01"]["changes"] == ["iommu"]
    assert hosts["reboot01"]["kernel_arguments"]["added"] == ["intel_iommu=on"]
    assert hosts["blocked01"]["status"] == "blocked"
    assert [b["source"] for b in hosts["blocked01"]["blockers"]] == ["vfio"]
    assert "boot VGA" in hosts["blocked01"]["blockers"][0]["message"]

    suite = ElementTree.parse(str(report / "preflight.junit.xml")).getroot().find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "1"
    failed = [case.get("name") for case in suite.iter("testcase") if case.find("failure") is not None]
    assert failed == ["blocked01"]

    # The cacheable gpuvirt fact, as AWX's fact cache keeps it: small and filterable.
    ready = cached_facts(cache, "ready01")["gpuvirt"]
    assert ready["ready"] is True and ready["iommu"] is True and ready["reboot_pending"] is False
    assert ready["gpu_count"] == 2 and ready["passthrough_ready"] == ["0000:0c:00.0"]
    reboot = cached_facts(cache, "reboot01")["gpuvirt"]
    assert reboot["reboot_pending"] is True and reboot["ready"] is False and reboot["pending_changes"] == ["iommu"]
    blocked = cached_facts(cache, "blocked01")["gpuvirt"]
    assert blocked["blockers"][0].startswith("vfio: ") and blocked["ready"] is False
    assert len(json.dumps(ready)) < 2000
    assert set(cached_facts(cache, "ready01")) == {"gpuvirt"}


def test_a_host_whose_firmware_keeps_the_iommu_off_is_blocked_with_the_firmware_advice(fleet, tmp_path):
    # An arm64 host needs no argument for its SMMU: with the SMMU off in the firmware, nothing on its
    # command line can turn it on, and no reboot would help.
    fleet.add("arm01", {"extends": "grace_hopper", "iommu": {"enabled": False}})
    fleet.add("ready01", "amd_host")
    report = tmp_path / "report"
    cache = tmp_path / "facts"
    rc, recap, output = fleet.run(
        "gpuvirt.host.preflight", extra_vars={"target": "gpu_hosts", "gpuvirt_report_dir": str(report)},
        env={"ANSIBLE_CACHE_PLUGIN": "jsonfile", "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(cache)},
    )
    assert rc == 2 and recap["arm01"]["failed"] == 1 and recap["ready01"]["failed"] == 0, output
    hosts = {item["host"]: item for item in json.loads((report / "preflight.json").read_text())["hosts"]}
    assert hosts["arm01"]["status"] == "blocked" and hosts["arm01"]["changes"] == [], hosts["arm01"]
    [blocker] = hosts["arm01"]["blockers"]
    message = " ".join(blocker["message"].split())
    assert blocker["source"] == "iommu", blocker
    assert "running kernel did not turn the IOMMU on: check that the SMMU is enabled in the firmware setup" in message
    fact = cached_facts(cache, "arm01")["gpuvirt"]
    assert fact["ready"] is False and fact["iommu"] is False and fact["blockers"][0].startswith("iommu: ")
    assert hosts["ready01"]["status"] == "ready"


def test_preflight_passes_on_a_ready_fleet(fleet, tmp_path):
    for index in range(3):
        fleet.add("gpu%02d" % index, "amd_host")
    rc, recap, output = fleet.run("gpuvirt.host.preflight", extra_vars={"gpuvirt_report_dir": str(tmp_path)})
    assert rc == 0, output
    assert all(counts["failed"] == 0 and counts["changed"] == 0 for counts in recap.values()), recap
    assert json.loads((tmp_path / "preflight.json").read_text())["counts"]["ready"] == 3


def test_a_device_spec_typed_as_text_is_checked_with_a_clear_error(fleet):
    fleet.add("gpu01", "amd_host")
    rc, _recap, output = fleet.run(
        "gpuvirt.host.preflight", extra_vars={"vgpu_devices_text": "- selector: 0c:00.0\n  passthrough: yes please\n"}
    )
    assert rc == 2
    assert "invalid device spec: entry 1 (0c:00.0): passthrough must be true or false" in output
    rc, _recap, output = fleet.run("gpuvirt.host.preflight", extra_vars={"vgpu_devices_text": "- selector: [0c:00.0"})
    assert rc == 2
    assert "invalid device spec: the text is neither JSON nor YAML at line" in output
    # JSON works too, and the parsed spec reaches the vgpu role (whose guard then speaks).
    rc, _recap, output = fleet.run(
        "gpuvirt.host.preflight", extra_vars={"vgpu_devices_text": '[{"selector": "0c:00.0", "passthrough": true}]'}
    )
    assert rc == 2
    assert "vgpu: refusing to change anything: binding by ID 1002:ab28 at boot would also give 0000:0b:00.1" in output


def test_finding_codes_to_ignore_given_as_text_are_a_list(fleet):
    # -e fleet_ignore_findings=a,b and a job template's text survey answer arrive as a string; the role's
    # argument check lets it through as a list but hands the role the string.
    fleet.add("guest01", "kvm_guest_gpu")  # no VT-x and no IOMMU in this VM: two host findings
    cpu, iommu = "host: the CPU flags list neither vmx", "host: no IOMMU"
    rc, _recap, output = fleet.run("gpuvirt.host.preflight", extra_vars={"target": "guest01"})
    assert rc == 2 and cpu in output and iommu in output, output
    for text in ("no_cpu_virtualization,iommu_unsupported", "no_cpu_virtualization, iommu_unsupported\n"):
        rc, _recap, output = fleet.run("gpuvirt.host.preflight", extra_vars={
            "target": "guest01", "fleet_ignore_findings": text})
        # Still blocked, by the iommu role, which cannot turn on an IOMMU the VM does not have.
        assert rc == 2 and "guest01 is blocked: iommu: " in output, output
        assert cpu not in output and iommu not in output
    rc, _recap, output = fleet.run("gpuvirt.host.preflight", extra_vars={
        "target": "guest01", "fleet_ignore_findings": "iommu_unsupported"})
    assert rc == 2 and cpu in output and iommu not in output, output


def test_a_host_that_cannot_be_reached_is_a_blocked_host_of_the_results(fleet, tmp_path):
    # CI's test view must not show every case passed for a fleet with a host never checked.
    fleet.add("ok01", "amd_host")
    fleet.add("down01", "amd_host")
    fleet.host_vars["down01"].update(ansible_connection="ssh", ansible_host="127.0.0.1", ansible_port=1)
    report = tmp_path / "reports"
    rc, recap, output = fleet.run("gpuvirt.host.preflight",
                                  extra_vars={"target": "gpu_hosts", "gpuvirt_report_dir": str(report)})
    assert rc == 4 and recap["down01"]["unreachable"] == 1, output
    hosts = {item["host"]: item for item in json.loads((report / "preflight.json").read_text())["hosts"]}
    assert hosts["down01"]["status"] == "blocked" and hosts["ok01"]["status"] != "blocked"
    assert "could not be checked" in hosts["down01"]["blockers"][0]["message"]
    suite = ElementTree.parse(str(report / "preflight.junit.xml")).getroot().find("testsuite")
    failed = {case.get("name") for case in suite.iter("testcase") if case.find("failure") is not None}
    assert failed == {"down01"}
    assert "Preflight: 2 host(s)" in output


def test_a_report_folder_whose_name_holds_a_wildcard_is_refused_before_any_host(fleet, tmp_path):
    # The summary gathers <folder>/preflight/*.json: in '.../r[1]' the '[1]' would match the folder r1, whose
    # records (another fleet's, or an old run's) would become this run's summary.
    fleet.add("ready01", "amd_host")
    other = tmp_path / "r1" / "preflight"
    other.mkdir(parents=True)
    old = {"host": "old01", "changes": [], "reboot_required": False,
           "blockers": [{"source": "iommu", "message": "off"}]}
    (other / "old01.json").write_text(json.dumps(old))
    report = tmp_path / "r[1]"
    rc, recap, output = fleet.run("gpuvirt.host.preflight", extra_vars={"gpuvirt_report_dir": str(report)})
    assert rc == 2 and "gpuvirt_report_dir must not hold '['" in output, output
    assert not report.exists()
    assert sorted(path.name for path in (tmp_path / "r1").rglob("*")) == ["old01.json", "preflight"]
    assert "ready01" not in recap or recap["ready01"]["ok"] == 0, recap
