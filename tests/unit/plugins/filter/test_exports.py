# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The consumer exports: exact output for fixture hosts (golden files) and refusals with reasons.

The consumers' own validators (virt-xml-validate, libvirt's parser, KubeVirt's schema, Nova's
parser) run over the same cases in tests/consumers/. Rewrite the golden files after a deliberate
change with ``GPUVIRT_UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import json
import os

import pytest
from export_cases import CASES, GOLDEN_DIR, REFUSALS, golden_text  # tests/fixtures, on the path (conftest)

from ansible_collections.gpuvirt.host.plugins.filter.kubevirt_host_devices import kubevirt_host_devices
from ansible_collections.gpuvirt.host.plugins.filter.libvirt_hostdevs import libvirt_hostdevs
from ansible_collections.gpuvirt.host.plugins.filter.nova_pci_config import nova_pci_config
from ansible_collections.gpuvirt.host.plugins.filter.proxmox_pci_mapping import proxmox_pci_mapping
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect
from ansible_collections.gpuvirt.host.plugins.plugin_utils.exports import ExportError


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_matches_its_golden_file(case, make_host):
    host, export, spec, extension = CASES[case]
    result = export(detect(make_host(**host)), spec)
    text = golden_text(result, extension)
    path = os.path.join(GOLDEN_DIR, "%s.%s" % (case, extension))
    if os.environ.get("GPUVIRT_UPDATE_GOLDEN"):
        with open(path, "w") as handle:
            handle.write(text)
    with open(path) as handle:
        assert text == handle.read(), "%s differs from %s" % (case, path)


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_export_refuses_a_device_that_is_not_ready(case, make_host):
    host, export, spec, reasons = REFUSALS[case]
    with pytest.raises(ExportError) as error:
        export(detect(make_host(**host)), spec)
    for reason in reasons:
        assert reason in str(error.value)


def test_every_export_says_who_owns_the_mdevs(make_host):
    a100 = detect(make_host(**{"description": "datacenter_a100"}))
    gvtg = detect(make_host(**{"description": "intel_gvtg"}))
    assert (
        proxmox_pci_mapping(
            a100, {"node": "pve", "mappings": [{"id": "a100", "devices": ["A100 PCIe 40GB"], "mdev": True}]}
        )["mdev_owner"]
        == "proxmox"
    )
    assert nova_pci_config(gvtg, {"mdev_types": ["i915-GVTg_V5_4"]})["mdev_owner"] == "nova"
    kubevirt = kubevirt_host_devices(gvtg, {"mdev_types": ["i915-GVTg_V5_4"]})
    assert kubevirt["mdev_owner"] == "kubevirt" and "deletes every other mdev" in kubevirt["notes"][0]


def test_kubevirt_refuses_to_let_virt_handler_delete_the_collections_mdevs(make_host):
    gvtg = detect(
        make_host(
            "intel_gvtg",
            mdevs=[{"uuid": "3f1d7a2e-58c4-4c7b-9e0a-6b2d1f4e8c93", "parent": "00:02.0", "type": "i915-GVTg_V5_8"}],
        )
    )
    with pytest.raises(ExportError, match="virt-handler deletes every mdev of a type it is not told to keep"):
        kubevirt_host_devices(gvtg, {"mdev_types": ["i915-GVTg_V5_4"]})
    kept = kubevirt_host_devices(gvtg, {"mdev_types": ["i915-GVTg_V5_4", "i915-GVTg_V5_8"]})
    assert kept["configuration"]["mediatedDevicesConfiguration"] == {
        "mediatedDeviceTypes": ["i915-GVTg_V5_4", "i915-GVTg_V5_8"]
    }
    owned = kubevirt_host_devices(gvtg, {"mdev_types": ["i915-GVTg_V5_8"], "mdev_owner": "gpuvirt.host"})
    assert owned["configuration"]["mediatedDevicesConfiguration"] == {"enabled": False}


def test_selection_by_model_skips_devices_that_are_not_ready_and_says_why(make_host):
    # Two RTX 2080 Ti: one bound to vfio-pci, one still on nvidia.
    root = make_host(
        "desktop_vfio",
        add_devices=[
            {
                "address": "05:00.0",
                "ids": "10de:1e04",
                "subsystem": "1458:37a9",
                "class": "030000",
                "driver": "nvidia",
                "group": 20,
                "vendor_name": "NVIDIA Corporation",
                "device_name": "TU102 [GeForce RTX 2080 Ti]",
            }
        ],
    )
    result = libvirt_hostdevs(detect(root), {"devices": ["10de:1e04"]})
    assert [d["device"] for d in result["devices"]] == ["0000:01:00.0"]
    assert result["skipped"][0]["device"] == "0000:05:00.0"
    assert "bound to nvidia, not to vfio-pci" in result["skipped"][0]["reasons"][0]


def test_a_proxmox_mapping_spans_the_nodes_given(make_host):
    nodes = {"pve1": detect(make_host("desktop_vfio")), "pve2": detect(make_host("desktop_vfio"))}
    result = proxmox_pci_mapping(nodes, {"mappings": [{"id": "rtx", "devices": ["GeForce RTX 2080 Ti"]}]})
    assert [entry["node"] for entry in result["mappings"][0]["map"]] == ["pve1", "pve2"]
    assert result["api"][0]["map"][1] == "id=10de:1e04,iommugroup=2,node=pve2,path=0000:01:00,subsystem-id=1458:37a9"


@pytest.mark.parametrize(
    "node, mapping, message",
    [
        ("pve1,path=0000:00:02.0", {}, "not a Proxmox VE node name"),
        ("pve1\n\tmap id=10de:1e04,node=pve1,path=0000:00:02.0", {}, "not a Proxmox VE node name"),
        ("", {}, "give the Proxmox VE node name"),
        ("pve1", {"id": "rtx\n"}, "not a Proxmox VE config ID"),
        ("pve1", {"description": "GPU\n"}, "must be one line"),
        ("pve1", {"mdev": "maybe"}, "mdev of rtx must be true or false"),
    ],
)
def test_proxmox_refuses_names_that_would_add_lines_or_properties(node, mapping, message, make_host):
    topology = detect(make_host("desktop_vfio"))
    spec = {"node": node, "mappings": [dict({"id": "rtx", "devices": ["10de:1e04"]}, **mapping)]}
    with pytest.raises(ExportError, match=message):
        proxmox_pci_mapping(topology, spec)
    with pytest.raises(ExportError, match=message if node else "not a Proxmox VE node name"):
        proxmox_pci_mapping({node: topology}, {"mappings": spec["mappings"]})


@pytest.mark.parametrize("mdev", ["false", "no", "off", "0", 0, None])
def test_a_proxmox_mdev_flag_given_as_a_false_string_maps_for_passthrough(mdev, make_host):
    spec = {"node": "pve1", "mappings": [{"id": "rtx", "devices": ["10de:1e04"], "mdev": mdev}]}
    result = proxmox_pci_mapping(detect(make_host("desktop_vfio")), spec)
    assert result["mappings"][0]["mdev"] is False
    assert result["cfg"] == (
        "rtx\n\tmap id=10de:1e04,iommugroup=2,node=pve1,path=0000:01:00,subsystem-id=1458:37a9\n"
    )


@pytest.mark.parametrize("flag", ["false", "no", "off", "0", False])
def test_libvirt_flags_given_as_false_strings_are_off(flag, make_host):
    spec = {"devices": ["10de:1e04"], "managed": flag, "rom_bar": flag}
    xml = libvirt_hostdevs(detect(make_host("desktop_vfio")), spec)["xml"]
    assert "managed='no'" in xml and "managed='yes'" not in xml
    assert "<rom bar='off'/>" in xml


def test_libvirt_refuses_flags_that_are_not_booleans(make_host):
    with pytest.raises(ExportError, match="managed must be true or false, got 'nope'"):
        libvirt_hostdevs(detect(make_host("desktop_vfio")), {"devices": ["10de:1e04"], "managed": "nope"})


def test_libvirt_refuses_topology_values_that_would_break_the_xml(make_host):
    topology = detect(make_host("desktop_vfio"))
    # A companion function whose address would close the element and add another device.
    bad = "0000:01:00.1'/><address domain='0x0000' bus='0x02' slot='0x00' function='0x0"
    for record in topology["devices"]:
        if record["address"] == "0000:01:00.1":
            record["address"] = bad
    for gpu in topology["gpus"]:
        if gpu["address"] == "0000:01:00.0":
            gpu["passthrough"]["devices"] = [bad if a == "0000:01:00.1" else a for a in gpu["passthrough"]["devices"]]
    with pytest.raises(ExportError, match="is not a PCI address"):
        libvirt_hostdevs(topology, {"devices": ["10de:1e04"]})
    a100 = detect(make_host(**{"description": "datacenter_a100"}))
    a100["mdevs"] = [
        {"uuid": "x'/><evil a='", "parent": p["parent"], "type": p["types"][0]["id"]} for p in a100["mdev_parents"][:1]
    ]
    with pytest.raises(ExportError, match="is not a UUID"):
        libvirt_hostdevs(a100, {"mdevs": [a100["mdevs"][0]["type"]]})


@pytest.mark.parametrize(
    "export, spec, message",
    [
        (libvirt_hostdevs, {"device": ["x"]}, "unknown spec keys device"),
        (libvirt_hostdevs, {"devices": ["0"]}, "looks like an index"),
        (libvirt_hostdevs, {"devices": ["GeForce RTX 2080 Ti"], "guest_bus": 0}, "guest_bus must be"),
        (proxmox_pci_mapping, {"mappings": [{"id": "rtx", "devices": ["10de:1e04"]}]}, "give the Proxmox VE node name"),
        (proxmox_pci_mapping, {"node": "n", "mappings": [{"id": "9rtx", "devices": ["10de:1e04"]}]}, "config ID"),
        (kubevirt_host_devices, {"pci_devices": ["10de:1e04"], "mdev_owner": "me"}, "mdev_owner must be"),
        (
            kubevirt_host_devices,
            {"pci_devices": ["10de:1e04"], "resource_names": {"10de:1e04": "gpu"}},
            "not a Kubernetes extended resource name",
        ),
        (nova_pci_config, {"aliases": [{"name": "a b", "devices": ["10de:1e04"]}]}, "alias name"),
        (nova_pci_config, {"aliases": [{"name": "gpu\n", "devices": ["10de:1e04"]}]}, "alias name"),
        (
            kubevirt_host_devices,
            {"pci_devices": ["10de:1e04"], "resource_names": {"10de:1e04": "nvidia.com/gpu\n"}},
            "not a Kubernetes extended resource name",
        ),
        (
            kubevirt_host_devices,
            {"pci_devices": ["10de:1e04"], "resource_names": {"10de:1e04": 7}},
            "not a Kubernetes extended resource name",
        ),
        (kubevirt_host_devices, {"pci_devices": ["10de:1e04"], "resource_names": ["gpu"]}, "resource_names must be"),
        (
            nova_pci_config,
            {"aliases": [{"name": "a", "devices": ["10de:1e04"], "numa_policy": "strict"}]},
            "numa_policy",
        ),
        (nova_pci_config, {"mdev_types": [{"type": "nvidia-1", "mdev_class": "gpu"}]}, "offered by no mdev parent"),
    ],
)
def test_bad_specs_are_refused_with_what_to_give(export, spec, message, make_host):
    with pytest.raises(ExportError, match=message):
        export(detect(make_host("desktop_vfio")), spec)


@pytest.mark.parametrize(
    "item, message",
    [
        ({"mdev_class": "VGPU\n"}, "mdev_class"),
        ({"mdev_class": "CUSTOM_GVTG\n"}, "mdev_class"),
        ({"max_instances": "abc"}, "max_instances of i915-GVTg_V5_4 must be a positive integer, got 'abc'"),
        ({"max_instances": 0}, "must be a positive integer"),
        ({"max_instances": -1}, "must be a positive integer"),
        ({"max_instances": 2.5}, "must be a positive integer"),
        ({"max_instances": True}, "must be a positive integer"),
    ],
)
def test_nova_refuses_mdev_options_that_are_not_what_nova_reads(item, message, make_host):
    gvtg = detect(make_host(**{"description": "intel_gvtg"}))
    with pytest.raises(ExportError, match=message):
        nova_pci_config(gvtg, {"mdev_types": [dict({"type": "i915-GVTg_V5_4"}, **item)]})


def test_nova_reads_max_instances_typed_as_digits(make_host):
    gvtg = detect(make_host(**{"description": "intel_gvtg"}))
    result = nova_pci_config(gvtg, {"mdev_types": [{"type": "i915-GVTg_V5_4", "max_instances": " 2"}]})
    assert "max_instances = 2\n" in result["ini"]


def test_exports_accept_the_registered_result_and_refuse_other_input(make_host):
    topology = detect(make_host("desktop_vfio"))
    assert libvirt_hostdevs({"topology": topology, "changed": False}, {"devices": ["10de:1e04"]})["devices"]
    with pytest.raises(ExportError, match="expects the topology"):
        libvirt_hostdevs(["not", "a", "topology"], {"devices": ["10de:1e04"]})


def test_golden_files_have_no_strays():
    expected = {"%s.%s" % (case, CASES[case][3]) for case in CASES}
    assert set(os.listdir(GOLDEN_DIR)) == expected


def test_golden_text_renders_json_sorted():
    assert json.loads(golden_text({"b": 1, "a": [1]}, "json")) == {"a": [1], "b": 1}


def test_a_proxmox_mapping_takes_the_whole_slot_only_when_it_holds_just_the_gpus_functions(make_host):
    # A path without a function hands the VM every function of the slot (PVE::SysFSTools::lspci matches
    # the path as a prefix), each taken from its host driver when the VM starts.
    spec = {"node": "pve1", "mappings": [{"id": "gpu", "devices": ["0000:01:00.0"]}]}
    on_vfio = {"01:00.0": {"driver": "vfio-pci"}, "01:00.1": {"driver": "vfio-pci"},
               "01:00.2": {"driver": "vfio-pci"}, "01:00.3": {"driver": "vfio-pci"}}
    whole = proxmox_pci_mapping(detect(make_host("desktop_dgpu", patch_devices=on_vfio)), spec)
    assert whole["mappings"][0]["map"][0]["path"] == "0000:01:00"
    # The card's USB controller and UCSI function in IOMMU groups of their own stay with the host: the GPU
    # and its audio (one group) are not the whole slot.
    split = {"01:00.0": {"driver": "vfio-pci", "reset_methods": ["flr", "bus"]}, "01:00.1": {"driver": "vfio-pci"},
             "01:00.2": {"group": 11}, "01:00.3": {"group": 12}}
    topology = detect(make_host("desktop_dgpu", patch_devices=split))
    assert sorted(next(g for g in topology["gpus"] if g["address"] == "0000:01:00.0")["passthrough"]["devices"]) \
        == ["0000:01:00.0", "0000:01:00.1"]
    assert proxmox_pci_mapping(topology, spec)["mappings"][0]["map"][0]["path"] == "0000:01:00.0"


def test_kubevirt_names_resources_in_the_domain_the_vendors_backend_gives(make_host, monkeypatch):
    # A GPU of a vendor the collection has no backend for needs resource_domain; one whose backend names
    # a domain gets it from there, as NVIDIA's, AMD's and Intel's do.
    from ansible_collections.gpuvirt.host.plugins.module_utils import vendors
    from ansible_collections.gpuvirt.host.plugins.module_utils.vendor_plan import VendorBackend

    root = make_host("desktop_vfio", add_devices=[
        {"address": "41:00.0", "ids": "1ed5:0100", "class": "030000", "driver": "vfio-pci", "group": 41,
         "device_name": "MTT S4000"}])
    topology = detect(root)
    with pytest.raises(ExportError, match="no resource domain is known for vendor 1ed5"):
        kubevirt_host_devices(topology, {"pci_devices": ["1ed5:0100"]})
    given = kubevirt_host_devices(topology, {"pci_devices": ["1ed5:0100"], "resource_domain": "example.com"})
    assert json.dumps(given).count("example.com/") == 1

    attributes = {"name": "moore", "vendor_id": "1ed5", "resource_domain": "mthreads.com"}
    backend = type("Moore", (VendorBackend,), attributes)()
    monkeypatch.setattr(vendors, "_BY_VENDOR", vendors.by_vendor(vendors.BACKENDS + (backend,)))
    named = kubevirt_host_devices(topology, {"pci_devices": ["1ed5:0100"]})
    assert json.dumps(named).count("\"mthreads.com/") == 1, named
    nvidia = kubevirt_host_devices(topology, {"pci_devices": ["10de:1e04"]})
    assert "nvidia.com/" in json.dumps(nvidia)


def test_proxmox_says_why_a_vgpu_vf_with_its_type_set_is_left_out_of_an_mdev_mapping(make_host):
    # Proxmox VE resets and sets an NVIDIA VF's vGPU type itself when a VM starts: a VF whose type the
    # collection set is skipped, with how to take the vGPU off for good (its boot restore sets it again
    # otherwise); the others are mapped.
    topology = detect(make_host(**{"description": "l40s_vgpu"}))
    result = proxmox_pci_mapping(topology, {"node": "pve3", "mappings": [
        {"id": "l40s-vgpu", "devices": ["L40S"], "mdev": True}]})
    assert [entry["device"] for entry in result["skipped"]] == ["0000:cb:00.4"]
    reason = result["skipped"][0]["reasons"][0]
    assert "0000:cb:00.4 already has vGPU type 1041 set, which the collection manages" in reason
    assert "remove its vGPU with gpuvirt.host.nvidia_vgpu (its GPU's entry with vfs: [{address: <the VF>, state: " \
           "absent}]" in reason and "the boot restore sets the type again" in reason
    assert len(result["mappings"][0]["map"]) == 7


def test_a_topology_from_before_the_generic_vgpu_key_keeps_its_vgpus(make_host):
    # A recorded report or cached facts from a release before the vgpu key: the vendor's own key stands
    # in for it, so the vGPU is still counted and its VF still exported as it is.
    from ansible_collections.gpuvirt.host.plugins.filter.gpuvirt_fact import gpuvirt_fact
    from ansible_collections.gpuvirt.host.plugins.plugin_utils import report
    from ansible_collections.gpuvirt.host.plugins.plugin_utils.exports import HostView

    topology = detect(make_host(**{"description": "l40s_vgpu"}))
    for device in topology["devices"]:
        del device["vgpu"]
    assert gpuvirt_fact(topology)["vgpus"] == 1
    row = report.host_row(report.load_record(topology, "l40s"))
    assert row["vgpus"] == 1 and row["profiles_in_use"] == {"nvidia vGPU type 1041": 1}
    assert HostView(topology).passthrough_refusals("0000:cb:00.4") == []
    assert "<hostdev" in libvirt_hostdevs(topology, {"devices": ["0000:cb:00.4"]})["xml"]


def test_proxmox_leaves_out_a_vf_whose_vgpu_type_cannot_be_read(make_host):
    # An unreadable current_vgpu_type may be a type in use: not a free VF for Proxmox VE to take.
    topology = detect(make_host(**{"description": "l40s_vgpu", "files": {
        "sys/bus/pci/devices/0000:cb:00.5/nvidia/current_vgpu_type": "garbled\n"}}))
    result = proxmox_pci_mapping(topology, {"node": "pve3", "mappings": [
        {"id": "l40s-vgpu", "devices": ["L40S"], "mdev": True}]})
    skipped = {entry["device"]: entry["reasons"] for entry in result["skipped"]}
    assert skipped["0000:cb:00.5"] == ["0000:cb:00.5: which vGPU type is set on it cannot be read (see the "
                                       "topology's findings)"]
    assert "0000:cb:00.5" not in [entry["path"] for entry in result["mappings"][0]["map"]]


@pytest.mark.parametrize("vgpu, counted, label", [
    ({"vendor": "nvidia", "current": 1041, "creatable": ["x", 3, None]}, 1, "nvidia vGPU type 1041"),
    ({"current": 1041, "creatable": []}, 1, "vGPU type 1041"),
    ({"vendor": "nvidia", "current": "abc", "creatable": "abc"}, 0, None),
    ("1041", 0, None),
])
def test_a_recorded_vgpu_of_another_form_is_read_as_unreadable(make_host, vgpu, counted, label):
    # A record or facts edited by hand: the report draws the host, the exports refuse with reasons, and a
    # value of another form counts as unreadable, never as a free VF.
    from ansible_collections.gpuvirt.host.plugins.plugin_utils import report

    topology = detect(make_host(**{"description": "l40s_vgpu"}))
    for device in topology["devices"]:
        if device["address"] == "0000:cb:00.4":
            device["vgpu"] = vgpu
    row = report.host_row(report.load_record(topology, "l40s"))
    assert row["vgpus"] == counted and row["profiles_in_use"] == ({label: 1} if label else {})
    assert report.group_boxes(topology)
    result = proxmox_pci_mapping(topology, {"node": "pve3", "mappings": [
        {"id": "l40s-vgpu", "devices": ["L40S"], "mdev": True}]})
    assert "0000:cb:00.4" not in [entry["path"] for entry in result["mappings"][0]["map"]]
    with pytest.raises(ExportError):
        libvirt_hostdevs(topology, {"devices": ["0000:cb:00.4"]}) if not counted else proxmox_pci_mapping(
            topology, {"node": "pve3", "mappings": [{"id": "vf", "devices": ["0000:cb:00.4"]}]})


def test_proxmox_leaves_out_a_vf_whose_creatable_types_cannot_be_read(make_host):
    topology = detect(make_host(**{"description": "l40s_vgpu"}))
    for device in topology["devices"]:
        if device["address"] == "0000:cb:00.5":
            device["vgpu"]["creatable"] = None
    result = proxmox_pci_mapping(topology, {"node": "pve3", "mappings": [
        {"id": "l40s-vgpu", "devices": ["L40S"], "mdev": True}]})
    skipped = {entry["device"]: entry["reasons"] for entry in result["skipped"]}
    assert skipped["0000:cb:00.5"] == ["0000:cb:00.5: which vGPU types it can take cannot be read (see the "
                                       "topology's findings)"]
