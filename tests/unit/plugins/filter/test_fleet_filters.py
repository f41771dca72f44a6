# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet filters: the gpuvirt fact, the preflight report and the device spec text."""

from __future__ import annotations

import json
from xml.etree import ElementTree

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.gpuvirt.host.plugins.filter.device_spec import device_spec
from ansible_collections.gpuvirt.host.plugins.filter.gpuvirt_fact import gpuvirt_fact
from ansible_collections.gpuvirt.host.plugins.filter.preflight_report import preflight_report
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect


def test_fact_of_a_host_with_passthrough_ready(make_host):
    fact = gpuvirt_fact(detect(make_host("amd_host")))
    assert fact["iommu"] is True and fact["iommu_vendor"] == "amd"
    assert fact["gpu_count"] == 2
    assert fact["passthrough_ready"] == ["0000:0c:00.0"] and fact["passthrough_ready_count"] == 1
    modes = {gpu["address"]: gpu["mode"] for gpu in fact["gpus"]}
    assert modes == {"0000:0b:00.0": "host", "0000:0c:00.0": "passthrough"}
    assert fact["ready"] is True and fact["blockers"] == [] and fact["reboot_pending"] is False


def test_fact_counts_vfs_vgpus_and_mdevs_and_stays_small(make_host):
    topology = detect(make_host("datacenter_a100"))
    fact = gpuvirt_fact({"topology": topology}, reboot_pending=True, blockers=["vfio: no"], pending_changes=["vgpu"])
    assert fact["vfs"] == len([gpu for gpu in topology["gpus"] if gpu["is_vf"]]) > 0
    assert fact["mdevs"] == len(topology["mdevs"])
    assert fact["gpu_count"] == len([gpu for gpu in topology["gpus"] if not gpu["is_vf"]])
    assert sum(item["count"] for item in fact["gpu_model_counts"]) == fact["gpu_count"]
    assert fact["ready"] is False and fact["reboot_pending"] is True and fact["pending_changes"] == ["vgpu"]
    assert len(json.dumps(fact)) < len(json.dumps(topology)) / 10


def test_fact_of_a_large_host_is_a_few_kilobytes(make_host):
    topology = detect(make_host({"generator": "large_synthetic", "parameters": {}}))
    assert len(topology["devices"]) > 500
    assert len(json.dumps(gpuvirt_fact(topology))) < 4096


def test_fact_refuses_what_is_not_a_topology():
    with pytest.raises(AnsibleFilterError, match="expects the 'topology' dict"):
        gpuvirt_fact(["not", "a", "topology"])


RESULTS = [
    {"host": "b", "blockers": [], "changes": ["iommu"], "reboot_required": True},
    {"host": "a", "blockers": [{"source": "vfio", "message": "0000:00:02.0 is the boot VGA <&>"}], "changes": []},
    {"host": "c", "blockers": [], "changes": [], "reboot_required": False},
    {"host": "d", "blockers": [], "changes": ["vgpu"], "reboot_required": False},
]


def test_text_summary_fits_a_screen_and_lists_blocked_hosts_first():
    lines = preflight_report(RESULTS)
    assert lines[0] == "Preflight: 4 host(s): 1 ready, 1 to change, 1 to change with a reboot, 1 blocked"
    assert [line.split()[0] for line in lines[2:]] == ["a", "b", "d", "c"]
    many = [{"host": "h%03d" % n, "blockers": [], "changes": []} for n in range(200)]
    lines = preflight_report(many, max_rows=20)
    assert len(lines) == 23 and lines[-1] == "... and 180 more host(s); see preflight.json"


def test_json_and_junit_agree():
    result = preflight_report(RESULTS, format="json")
    assert result["counts"] == {"hosts": 4, "ready": 1, "changes": 1, "reboot": 1, "blocked": 1}
    assert [item["status"] for item in result["hosts"]] == ["blocked", "reboot", "changes", "ready"]
    root = ElementTree.fromstring(preflight_report({item["host"]: item for item in RESULTS}, format="junit"))
    suite = root.find("testsuite")
    assert suite.get("tests") == "4" and suite.get("failures") == "1"
    failure = suite.find("testcase[@name='a']/failure")
    assert failure.get("message") == "vfio: 0000:00:02.0 is the boot VGA <&>"
    assert suite.find("testcase[@name='c']/failure") is None


def test_report_refuses_other_input_and_formats():
    with pytest.raises(AnsibleFilterError, match="'host' key"):
        preflight_report([{"blockers": []}])
    with pytest.raises(AnsibleFilterError, match="format must be"):
        preflight_report(RESULTS, format="html")


def test_device_spec_reads_yaml_json_and_wrappers():
    expected = [{"selector": "0000:01:00.0", "passthrough": True}]
    assert device_spec("- selector: '0000:01:00.0'\n  passthrough: true\n") == expected
    assert device_spec('[{"selector": "0000:01:00.0", "passthrough": true}]') == expected
    assert device_spec("vgpu_devices:\n  - {selector: '0000:01:00.0', passthrough: true}") == expected
    assert device_spec("selector: '0000:01:00.0'\npassthrough: true") == expected
    assert device_spec("  \n") == []
    # Unquoted addresses and IDs stay text, where YAML 1.1 makes numbers of them.
    unquoted = device_spec("- {selector: 0000:01:00.0, passthrough: yes}\n- {selector: 01:00.1, passthrough: true}\n"
                           "- {selector: 1234:5678, sriov: {num_vfs: 4}}")
    assert [entry["selector"] for entry in unquoted] == ["0000:01:00.0", "01:00.1", "1234:5678"]
    assert unquoted[2]["sriov"]["num_vfs"] == 4 and unquoted[0]["passthrough"] is True
    mdev = device_spec("- selector: mbochs\n  mdev:\n    - {type: mbochs-small, count: 2}\n")
    assert mdev == [{"selector": "mbochs", "mdev": [{"type": "mbochs-small", "count": 2}]}]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- selector: [0c:00.0", "the text is neither JSON nor YAML at line 1"),
        ("- passthrough: true", "entry 1 (no selector): every device needs a selector"),
        ("- selector: 01:00.0\n  passthrough: maybe", "entry 1 (01:00.0): passthrough must be true or false"),
        ("- selector: 01:00.0\n  passthru: true", "unknown key(s) passthru"),
        ("- selector: 01:00.0", "says nothing to do"),
        ("- selector: 01:00.0\n  mdev: {type: x}", "mdev must be a list"),
        ("42", "expected a list of devices"),
        ("- just text", "entry 1 is 'just text'"),
    ],
)
def test_device_spec_errors_name_the_entry_and_the_key(text, message):
    with pytest.raises(AnsibleFilterError) as error:
        device_spec(text)
    assert message in str(error.value)


BILLION_LAUGHS = """
a: &a [{type: x, count: 1}, {type: x, count: 1}, {type: x, count: 1}, {type: x, count: 1}, {type: x, count: 1}]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
vgpu_devices:
  - {selector: 01:00.0, mdev: *g}
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BILLION_LAUGHS, "more than 100000 values once its YAML aliases are expanded"),
        ("- &a {selector: 01:00.0, mdev: [*a]}", "more than 100000 values"),
        ("[" * 20000 + "]" * 20000, "nests too deeply"),
        ("- selector: 01:00.0\n  passthrough: true\n  passthrough: false", "the key passthrough is given twice"),
        ('[{"selector": "01:00.0", "passthrough": true, "passthrough": false}]', "passthrough is given twice"),
        ("- !!python/object/apply:os.system ['touch /tmp/gpuvirt-spec-ran']", "neither JSON nor YAML at line 1"),
    ],
)
def test_device_spec_refuses_hostile_yaml(text, message):
    with pytest.raises(AnsibleFilterError) as error:
        device_spec(text)
    assert message in str(error.value)


def test_device_spec_keeps_anchors_that_stay_small_and_merge_overrides():
    text = (
        "- &gpu {selector: 01:00.0, sriov: {num_vfs: 4}}\n"
        "- {<<: *gpu, selector: 02:00.0}\n"
    )
    assert [entry["selector"] for entry in device_spec(text)] == ["01:00.0", "02:00.0"]


@pytest.mark.parametrize("message", ["grub: \x1b[31merror\x1b[0m", "nul\x00byte", "form\x0cfeed", "bell\x07 \ufffe"])
def test_junit_report_stays_well_formed_whatever_a_host_says(message):
    # XML 1.0 cannot hold C0 controls other than TAB, LF and CR; ElementTree writes them as they are.
    results = [
        {"host": "gpu01\x1b", "blockers": [{"source": "host", "message": message}], "changes": ["a\x00"],
         "reboot_required": False},
        {"host": "gpu02", "blockers": [], "changes": ["vfio"], "reboot_required": True},
    ]
    suites = ElementTree.fromstring(preflight_report(results, format="junit").split("\n", 1)[1])
    assert [case.get("name") for case in suites.iter("testcase")] == ["gpu01\\x1b", "gpu02"]
    failure = next(suites.iter("failure"))
    assert failure.get("message") == failure.text
    assert "\\x" in failure.text and message.split("\\")[0][:3] in failure.text
