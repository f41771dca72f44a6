# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every export case, read back by its consumer's own validator or parser.

libvirt: ``virt-xml-validate`` (the domain RNG schema) and ``virsh -c test:///default define
--validate`` (schema plus libvirt's own domain parser, in-process, offline). KubeVirt: the CR's
OpenAPI schema (tests/fixtures/consumers, vendored with its source). Nova: Nova's option
definitions and parsers (oslo.config, ``Whitelist``, ``get_alias_from_config``, the dynamic
``[mdev_*]`` groups) in their own venv. Proxmox VE's Perl modules are not packaged outside Proxmox
VE, so its SectionConfig and property formats are checked by the patterns they use.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import jsonschema
import pytest
from export_cases import CASES  # tests/fixtures
from reporttools import REPO, require_program

from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect

SCHEMA = os.path.join(REPO, "tests", "fixtures", "consumers", "kubevirt-configuration.schema.json")


def _cases(prefix):
    return sorted(name for name in CASES if name.startswith(prefix))


def _export(name, make_host):
    host, export, spec = CASES[name][:3]
    topology = detect(make_host(**host))
    return topology, export(topology, spec)


def _domain(hostdevs_xml, name="gpu-guest"):
    return (
        "<domain type='test'>\n  <name>%s</name>\n  <memory unit='MiB'>1024</memory>\n"
        "  <os><type arch='x86_64' machine='q35'>hvm</type></os>\n  <devices>\n%s  </devices>\n</domain>\n"
        % (name, hostdevs_xml)
    )


def _libvirt_checks(path):
    validate = subprocess.run(
        [require_program("virt-xml-validate", "libvirt-clients"), path, "domain"],
        capture_output=True,
        text=True,
        check=False,
    )
    require_program("xmllint", "libxml2-utils")
    define = subprocess.run(
        [require_program("virsh", "libvirt-clients"), "-q", "-c", "test:///default", "define", "--validate", path],
        capture_output=True,
        text=True,
        check=False,
    )
    return validate, define


@pytest.mark.parametrize("case", _cases("libvirt_"))
def test_libvirt_accepts_the_hostdevs_in_a_domain(case, make_host, tmp_path):
    result = _export(case, make_host)[1]
    path = str(tmp_path / "domain.xml")
    with open(path, "w") as handle:
        handle.write(_domain(result["xml"]))
    validate, define = _libvirt_checks(path)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    assert define.returncode == 0, define.stdout + define.stderr


def test_libvirts_parser_rejects_what_the_exports_must_never_write(make_host, tmp_path):
    """The checks can fail: a hostdev given twice and a mdev with a PCI source are refused."""
    result = _export("libvirt_desktop_gpu_with_companions", make_host)[1]
    twice = str(tmp_path / "twice.xml")
    with open(twice, "w") as handle:
        handle.write(_domain(result["hostdevs"][1] + "\n" + result["hostdevs"][1] + "\n"))
    assert _libvirt_checks(twice)[1].returncode != 0
    wrong = str(tmp_path / "wrong.xml")
    with open(wrong, "w") as handle:
        handle.write(_domain(result["hostdevs"][0].replace("type='pci'", "type='mdev'", 1) + "\n"))
    assert _libvirt_checks(wrong)[0].returncode != 0


@pytest.mark.parametrize("case", _cases("kubevirt_"))
def test_kubevirt_configuration_matches_the_crd_schema(case, make_host):
    result = _export(case, make_host)[1]
    with open(SCHEMA) as handle:
        definitions = json.load(handle)["definitions"]
    validator = jsonschema.Draft4Validator(
        {"$ref": "#/definitions/v1.KubeVirtConfiguration", "definitions": definitions}
    )
    errors = [error.message for error in validator.iter_errors(result["configuration"])]
    assert not errors
    for entry in result["configuration"]["permittedHostDevices"].get("pciHostDevices", []):
        assert re.match(r"^[0-9a-f]{4}:[0-9a-f]{4}$", entry["pciVendorSelector"])
    for entry in result["configuration"]["permittedHostDevices"].get("mediatedDevices", []):
        assert len(entry["resourceName"].split("/")) == 2  # the mdev device plugin splits on '/'


def test_the_kubevirt_schema_catches_a_missing_resource_name():
    with open(SCHEMA) as handle:
        definitions = json.load(handle)["definitions"]
    validator = jsonschema.Draft4Validator(
        {"$ref": "#/definitions/v1.KubeVirtConfiguration", "definitions": definitions}
    )
    bad = {
        "permittedHostDevices": {"pciHostDevices": [{"pciVendorSelector": "10de:2236"}]},
        "mediatedDevicesConfiguration": {"enabled": "no"},
    }
    assert len(list(validator.iter_errors(bad))) == 2


# Proxmox VE's formats (PVE::Mapping::PCI, PVE::JSONSchema, PVE::SectionConfig).
_PVE_ID = re.compile(r"^[a-z][a-z0-9_-]+$", re.IGNORECASE)
_PVE_PATH = re.compile(
    r"^[a-f0-9]{4,}:[a-f0-9]{2}:[a-f0-9]{2}(?:\.[a-f0-9])?(?:;[a-f0-9]{4,}:[a-f0-9]{2}:[a-f0-9]{2}(?:\.[a-f0-9])?)*$"
)
_PVE_MAP = {
    "node": re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?$"),
    "path": _PVE_PATH,
    "id": re.compile(r"^[0-9a-f]{4}:[0-9a-f]{4}$"),
    "subsystem-id": re.compile(r"^[0-9a-f]{4}:[0-9a-f]{4}$"),
    "iommugroup": re.compile(r"^[0-9]+$"),
    "description": re.compile(r"^[^,=]*$"),
}


def _parse_pci_cfg(text):
    """SectionConfig: an ID line, then tab-indented ``key value`` lines; blank lines end a section."""
    sections, current = {}, None
    for line in text.splitlines():
        if not line.strip():
            current = None
        elif not line.startswith("\t"):
            assert _PVE_ID.match(line), line
            current = sections.setdefault(line, {"map": []})
        else:
            key, value = line[1:].split(" ", 1)
            if key == "map":
                entry = dict(item.split("=", 1) for item in value.split(","))
                current["map"].append(entry)
            else:
                current[key] = value
    return sections


@pytest.mark.parametrize("case", _cases("proxmox_"))
def test_proxmox_mapping_follows_the_section_and_property_formats(case, make_host):
    topology, result = _export(case, make_host)
    sections = _parse_pci_cfg(result["cfg"])
    assert list(sections) == [m["id"] for m in result["mappings"]]
    devices = {d["address"]: d for d in topology["devices"]}
    for mapping in result["mappings"]:
        section = sections[mapping["id"]]
        assert section.get("mdev") == ("1" if mapping["mdev"] else None)
        assert len(section["map"]) == len(mapping["map"]) > 0
        for entry in section["map"]:
            assert set(entry) >= {"id", "node", "path", "iommugroup", "subsystem-id"}
            for key, value in entry.items():
                assert _PVE_MAP[key].match(value), (key, value)
            # What assert_valid compares at VM start: sysfs values of the first path's function 0.
            first = entry["path"].split(";")[0]
            device = devices[first if "." in first else first + ".0"]
            assert entry["id"] == "%s:%s" % (device["vendor_id"], device["device_id"])
            assert entry["subsystem-id"] == "%s:%s" % (device["subsystem_vendor_id"], device["subsystem_device_id"])
            assert entry["iommugroup"] == device["iommu_group"]
        api = next(a for a in result["api"] if a["id"] == mapping["id"])
        assert [dict(i.split("=", 1) for i in m.split(",")) for m in api["map"]] == section["map"]


@pytest.mark.parametrize("case", _cases("nova_"))
def test_nova_reads_the_options_as_written(case, make_host, nova_python, tmp_path):
    topology, result = _export(case, make_host)
    conf = tmp_path / "nova.conf"
    conf.write_text(result["ini"])
    devices = [
        {"vendor_id": d["vendor_id"], "product_id": d["device_id"], "address": d["address"], "parent_addr": d["physfn"]}
        for d in topology["devices"]
    ]
    devices_path = tmp_path / "devices.json"
    devices_path.write_text(json.dumps(devices))
    run = subprocess.run(
        [nova_python, os.path.join(REPO, "tests", "report", "nova_parse.py"), str(conf), str(devices_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    parsed = json.loads(run.stdout.strip().splitlines()[-1])
    assert parsed["device_spec_count"] == len(result["pci"]["device_spec"])
    for alias in (json.loads(text) for text in result["pci"]["alias"]):
        spec = parsed["aliases"][alias["name"]]
        assert spec["numa_policy"] == alias.get("numa_policy", "legacy")
        assert spec["specs"] == [
            {"dev_type": alias["device_type"], "product_id": alias["product_id"], "vendor_id": alias["vendor_id"]}
        ]
    # Each device_spec matches exactly the device it names, not its companion functions.
    named = [json.loads(text)["address"] for text in result["pci"]["device_spec"]]
    for device, matched in zip(devices, parsed["matches"]):
        assert (matched != []) == (device["address"] in named), device["address"]
    assert parsed["enabled_mdev_types"] == result["devices"]["enabled_mdev_types"]
    for group in result["mdev_groups"]:
        assert parsed["mdev_groups"][group["type"]]["device_addresses"] == group["device_addresses"]
        assert parsed["mdev_groups"][group["type"]]["mdev_class"] == group.get("mdev_class", "VGPU")


def test_nova_refuses_a_bad_alias(nova_python, tmp_path):
    """The parser check can fail: Nova rejects an alias with an unknown NUMA policy."""
    conf = tmp_path / "nova.conf"
    conf.write_text(
        '[pci]\nalias = {"name": "a", "vendor_id": "10de", "product_id": "2236", "numa_policy": "strict"}\n'
    )
    run = subprocess.run(
        [nova_python, os.path.join(REPO, "tests", "report", "nova_parse.py"), str(conf)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert run.returncode != 0
