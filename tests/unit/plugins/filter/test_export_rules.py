# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Specs the consumers would take wrongly or not at all, refused by the Nova and Proxmox VE exports.

Nova matches a PCI alias on vendor_id, product_id and device_type alone (nova/pci/request.py), so two aliases of
one model share one pool. Proxmox VE requires a ``map`` entry in a PCI mapping and drops an empty description or
one above 4096 characters (PVE::Mapping::PCI, PVE::SectionConfig)."""

from __future__ import annotations

import pytest

from ansible_collections.gpuvirt.host.plugins.filter.nova_pci_config import nova_pci_config
from ansible_collections.gpuvirt.host.plugins.filter.proxmox_pci_mapping import proxmox_pci_mapping
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect
from ansible_collections.gpuvirt.host.plugins.plugin_utils.exports import ExportError

SECOND_2080TI = {"address": "05:00.0", "ids": "10de:1e04", "subsystem": "1458:37a9", "class": "030000",
                 "driver": "vfio-pci", "group": 20, "device_name": "TU102 [GeForce RTX 2080 Ti]"}


@pytest.fixture
def two_2080ti(make_host):
    return detect(make_host("desktop_vfio", add_devices=[SECOND_2080TI]))


def test_nova_refuses_two_aliases_of_one_model(two_2080ti):
    aliases = [{"name": "gpu-a", "devices": ["0000:01:00.0"]}, {"name": "gpu-b", "devices": ["0000:05:00.0"]}]
    refusal = "aliases gpu-a and gpu-b both ask for 10de:1e04 \\(type-PCI\\); Nova matches"
    with pytest.raises(ExportError, match=refusal):
        nova_pci_config(two_2080ti, {"aliases": aliases})
    # Control: one alias for both cards is what Nova can tell apart from others.
    both = nova_pci_config(two_2080ti, {"aliases": [{"name": "gpu", "devices": ["0000:01:00.0", "0000:05:00.0"]}]})
    assert len(both["pci"]["device_spec"]) == 2 and len(both["pci"]["alias"]) == 1


@pytest.mark.parametrize("alias", [{"name": "gpu", "devices": []}, {"name": "gpu"}], ids=["empty", "missing"])
def test_nova_refuses_an_alias_without_devices(make_host, alias):
    with pytest.raises(ExportError, match="alias gpu names no devices"):
        nova_pci_config(detect(make_host("desktop_vfio")), {"aliases": [alias]})


@pytest.mark.parametrize("mapping", [{"id": "rtx", "devices": []}, {"id": "rtx"}], ids=["empty", "missing"])
def test_proxmox_refuses_a_mapping_without_devices(make_host, mapping):
    with pytest.raises(ExportError, match="mapping rtx names no devices"):
        proxmox_pci_mapping(detect(make_host("desktop_vfio")), {"node": "pve1", "mappings": [mapping]})


@pytest.mark.parametrize("description", ["", " padded", "x" * 4097, "two\nlines"],
                         ids=["empty", "blank-around", "4097", "two-lines"])
def test_proxmox_refuses_a_description_proxmox_would_drop(make_host, description):
    spec = {"node": "pve1", "mappings": [{"id": "rtx", "devices": ["10de:1e04"], "description": description}]}
    with pytest.raises(ExportError, match="one line of 1 to 4096 characters"):
        proxmox_pci_mapping(detect(make_host("desktop_vfio")), spec)


def test_proxmox_takes_the_longest_description(make_host):
    spec = {"node": "pve1", "mappings": [{"id": "rtx", "devices": ["10de:1e04"], "description": "x" * 4096}]}
    result = proxmox_pci_mapping(detect(make_host("desktop_vfio")), spec)
    assert result["api"][0]["description"] == "x" * 4096
    assert "\tdescription " + "x" * 4096 + "\n" in result["cfg"]


@pytest.mark.parametrize("node", ["devices", "topology"])
def test_proxmox_nodes_may_be_named_like_a_topologys_keys(make_host, node):
    topology = detect(make_host("desktop_vfio"))
    result = proxmox_pci_mapping({node: topology, "pve2": topology},
                                 {"mappings": [{"id": "rtx", "devices": ["10de:1e04"]}]})
    assert sorted(entry["node"] for entry in result["mappings"][0]["map"]) == sorted([node, "pve2"])


def test_proxmox_takes_a_registered_topology_info_result_for_one_node(make_host):
    registered = {"changed": False, "topology": detect(make_host("desktop_vfio")), "invocation": {"module_args": {}}}
    result = proxmox_pci_mapping(registered, {"node": "pve1", "mappings": [{"id": "rtx", "devices": ["10de:1e04"]}]})
    assert [entry["node"] for entry in result["mappings"][0]["map"]] == ["pve1"]
