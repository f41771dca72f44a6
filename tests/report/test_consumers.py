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

from ansible_collections.gpuvirt.host.plugins.filter.kubevirt_host_devices import kubevirt_host_devices
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect
from ansible_collections.gpuvirt.host.plugins.plugin_utils.exports import ExportError

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


def _kubevirt_validator():
    with open(SCHEMA) as handle:
        definitions = json.load(handle)["definitions"]
    return jsonschema.Draft4Validator({"$ref": "#/definitions/v1.KubeVirtConfiguration", "definitions": definitions})


@pytest.mark.parametrize("case", _cases("kubevirt_"))
def test_kubevirt_configuration_matches_the_crd_schema(case, make_host):
    result = _export(case, make_host)[1]
    validator = _kubevirt_validator()
    errors = [error.message for error in validator.iter_errors(result["configuration"])]
    assert not errors
    for entry in result["configuration"]["permittedHostDevices"].get("pciHostDevices", []):
        assert re.match(r"^[0-9a-f]{4}:[0-9a-f]{4}$", entry["pciVendorSelector"])
    for entry in result["configuration"]["permittedHostDevices"].get("mediatedDevices", []):
        assert len(entry["resourceName"].split("/")) == 2  # the mdev device plugin splits on '/'


def test_the_kubevirt_schema_catches_a_missing_resource_name():
    validator = _kubevirt_validator()
    bad = {
        "permittedHostDevices": {"pciHostDevices": [{"pciVendorSelector": "10de:2236"}]},
        "mediatedDevicesConfiguration": {"enabled": "no"},
    }
    assert len(list(validator.iter_errors(bad))) == 2


def _merge_patch(target, patch):
    """RFC 7386, the only merge a patch of a custom resource gets: objects merge, lists are replaced."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge_patch(merged.get(key), value)
    return merged


def _desired_mdev_types(configuration, labels):
    """virt-handler's GetDesiredMDEVTypes: the types of every nodeMediatedDeviceTypes entry whose
    nodeSelector the node's labels match, else the cluster-wide mediatedDeviceTypes."""
    mdevs = configuration.get("mediatedDevicesConfiguration") or {}
    types = set()
    for entry in mdevs.get("nodeMediatedDeviceTypes") or []:
        if all(labels.get(key) == value for key, value in entry["nodeSelector"].items()):
            types.update(entry.get("mediatedDeviceTypes") or [])
    return sorted(types) if types else sorted(mdevs.get("mediatedDeviceTypes") or [])


def _kubevirt_offers(configuration, topology):
    """``{resourceName: [device]}`` that virt-handler's PCI device plugins offer on a node: each
    pciVendorSelector (lowercased) names one resource, the last entry winning; every device of a permitted
    ID is offered on vfio-pci, or as an NVIDIA VF with a vGPU type on nvidia (device_controller.go,
    pci_device.go discoverPermittedHostPCIDevices, nvidia.go shouldPermitNvidia)."""
    names = {}
    for entry in configuration["permittedHostDevices"].get("pciHostDevices", []):
        names[entry["pciVendorSelector"].lower()] = entry["resourceName"]
    offers = {}
    for device in topology["devices"]:
        name = names.get("%s:%s" % (device["vendor_id"], device["device_id"]))
        vgpu = device.get("vgpu") or {}
        if name and (device["driver"] == "vfio-pci"
                     or (device["driver"] == "nvidia" and device.get("physfn") and vgpu.get("current"))):
            offers.setdefault(name, []).append(device)
    return offers


def test_one_kubevirt_patch_gives_every_node_its_types(make_host):
    nodes = {name: detect(make_host("intel_gvtg")) for name in ("nuc1", "nuc2")}
    result = kubevirt_host_devices(nodes, {"mdev_types": ["i915-GVTg_V5_4"]})
    assert not [error.message for error in _kubevirt_validator().iter_errors(result["configuration"])]
    # A CR that an earlier run patched for another node: the lists the export gives replace its lists.
    stale = {"mediatedDevicesConfiguration": {"nodeMediatedDeviceTypes": [
        {"nodeSelector": {"kubernetes.io/hostname": "nuc0"}, "mediatedDeviceTypes": ["i915-GVTg_V5_8"]}]}}
    cr = _merge_patch({"spec": {"configuration": stale}}, {"spec": {"configuration": result["configuration"]}})
    configuration = cr["spec"]["configuration"]
    for node in nodes:
        assert _desired_mdev_types(configuration, {"kubernetes.io/hostname": node}) == ["i915-GVTg_V5_4"]
    assert _desired_mdev_types(configuration, {"kubernetes.io/hostname": "nuc0"}) == []


@pytest.mark.parametrize("hosts, spec", [
    ({"l40s1": ("l40s_vgpu", {}), "l40s2": ("l40s_vgpu", {})}, {"pci_devices": ["0000:cb:00.4"]}),
    ({"l40s1": ("l40s_vgpu", {"patch_devices": {"cb:00.5": {"nvidia_vgpu": {"creatable": {}, "current": 1041}}}})},
     {"pci_devices": ["0000:cb:00.4"]}),
    ({"gpu1": ("desktop_vfio", {}), "gpu2": ("desktop_vfio", {"add_devices": [
        {"address": "05:00.0", "ids": "10de:1e04", "class": "030000", "driver": "vfio-pci", "group": 20,
         "reset_methods": ["flr"], "device_name": "TU102 [GeForce RTX 2080 Ti]"}]})},
     {"pci_devices": ["0000:01:00.0"]}),
])
def test_each_kubevirt_resource_offers_one_kind_of_device_and_the_notes_name_the_unnamed(hosts, spec, make_host):
    nodes = {node: detect(make_host(host, **changes)) for node, (host, changes) in hosts.items()}
    result = kubevirt_host_devices(nodes, spec)
    notes = " ".join(result["notes"])
    for node, topology in nodes.items():
        for name, devices in _kubevirt_offers(result["configuration"], topology).items():
            assert len({(device.get("vgpu") or {}).get("current") or 0 for device in devices}) == 1, name
            for device in devices:
                if device["address"] not in spec["pci_devices"]:
                    assert "%s on %s" % (device["address"], node) in notes


def test_kubevirt_would_pool_vgpu_profiles_that_the_export_refuses(make_host):
    """The model can fail: VFs of two profiles under one ID land in one resource, and the export refuses."""
    four_q = {"cb:00.5": {"nvidia_vgpu": {"creatable": {}, "current": 1039}}}
    topology = detect(make_host("l40s_vgpu", patch_devices=four_q))
    offers = _kubevirt_offers({"permittedHostDevices": {"pciHostDevices": [
        {"pciVendorSelector": "10de:26b9", "resourceName": "nvidia.com/AD102GL_L40S"}]}}, topology)
    assert sorted(device["vgpu"]["current"] for device in offers["nvidia.com/AD102GL_L40S"]) == [1039, 1041]
    with pytest.raises(ExportError, match="are not all the same"):
        kubevirt_host_devices(topology, {"pci_devices": ["0000:cb:00.4"]})


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
