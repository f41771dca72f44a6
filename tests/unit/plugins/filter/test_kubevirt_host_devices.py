# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The KubeVirt export over a cluster's nodes: one configuration for every node, resources that hold one
kind of device, and the feature gates the configuration needs.

What KubeVirt does with the configuration (a JSON merge patch of the CR, virt-handler's device plugins) is
modelled in tests/report/test_consumers.py.
"""

from __future__ import annotations

import pytest

from ansible_collections.gpuvirt.host.plugins.filter.kubevirt_host_devices import kubevirt_host_devices
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect
from ansible_collections.gpuvirt.host.plugins.plugin_utils.exports import ExportError

# VF 00.4 of the L40S runs an 8Q vGPU (the fixture); these set another type on VF 00.5.
L40S_4Q_ON_00_5 = {"cb:00.5": {"nvidia_vgpu": {"creatable": {}, "current": 1039}}}
L40S_8Q_ON_00_5 = {"cb:00.5": {"nvidia_vgpu": {"creatable": {}, "current": 1041}}}
# A whole L40S (its physical function, same vendor:device as its VFs) on vfio-pci.
WHOLE_L40S = [{"address": "41:00.0", "ids": "10de:26b9", "subsystem": "10de:1851", "class": "030200",
               "driver": "vfio-pci", "group": 41, "reset_methods": ["flr"], "device_name": "AD102GL [L40S]"}]
# A second RTX 2080 Ti, ready too.
SECOND_2080TI = [{"address": "05:00.0", "ids": "10de:1e04", "subsystem": "1458:37a9", "class": "030000",
                  "driver": "vfio-pci", "group": 20, "reset_methods": ["flr"],
                  "device_name": "TU102 [GeForce RTX 2080 Ti]"}]


def test_one_export_gives_every_node_its_mdev_types(make_host):
    nodes = {"nuc1": detect(make_host("intel_gvtg")), "nuc2": detect(make_host("intel_gvtg"))}
    result = kubevirt_host_devices(nodes, {"mdev_types": ["i915-GVTg_V5_4"]})
    assert result["configuration"]["mediatedDevicesConfiguration"] == {"nodeMediatedDeviceTypes": [
        {"nodeSelector": {"kubernetes.io/hostname": "nuc1"}, "mediatedDeviceTypes": ["i915-GVTg_V5_4"]},
        {"nodeSelector": {"kubernetes.io/hostname": "nuc2"}, "mediatedDeviceTypes": ["i915-GVTg_V5_4"]},
    ]}
    assert result["configuration"]["permittedHostDevices"] == {"mediatedDevices": [
        {"mdevNameSelector": "i915-GVTg_V5_4", "resourceName": "intel.com/i915-GVTg_V5_4"}]}


def test_the_permitted_devices_are_the_union_of_the_nodes(make_host):
    # Each node has one model; a model is permitted once, whatever the number of nodes that have it.
    nodes = {"gpu1": detect(make_host("desktop_vfio")), "gpu2": detect(make_host("desktop_vfio")),
             "gpu3": detect(make_host("amd_host"))}
    result = kubevirt_host_devices(nodes, {"pci_devices": ["GeForce RTX 2080 Ti", "1002:73ff"]})
    assert result["configuration"]["permittedHostDevices"]["pciHostDevices"] == [
        {"pciVendorSelector": "10de:1e04", "resourceName": "nvidia.com/TU102_GeForce_RTX_2080_Ti"},
        {"pciVendorSelector": "1002:73ff", "resourceName": "amd.com/Navi_23_Radeon_RX_6600_6600_XT_6600M"},
    ]
    assert result["feature_gates"] == ["HostDevices"]
    with pytest.raises(ExportError, match=r"pci_devices 'A100' matches no GPU on any node \(gpu1, gpu2, gpu3\)"):
        kubevirt_host_devices(nodes, {"pci_devices": ["10de:1e04", "A100"]})


def test_a_node_that_holds_mdevs_virt_handler_would_delete_is_named(make_host):
    nodes = {"nuc1": detect(make_host("intel_gvtg")), "nuc2": detect(make_host("intel_gvtg", mdevs=[
        {"uuid": "3f1d7a2e-58c4-4c7b-9e0a-6b2d1f4e8c93", "parent": "00:02.0", "type": "i915-GVTg_V5_8"}]))}
    with pytest.raises(ExportError, match="node nuc2 has mdevs of types not listed"):
        kubevirt_host_devices(nodes, {"mdev_types": ["i915-GVTg_V5_4"]})


@pytest.mark.parametrize("nodes, spec, message", [
    ({"Node 1": "desktop_vfio"}, {"pci_devices": ["10de:1e04"]}, "node name 'Node 1' is not the kubernetes.io/host"),
    ({"gpu1": "desktop_vfio"}, {"pci_devices": ["10de:1e04"], "node_selector": {"gpu": "yes"}},
     "node_selector is for a single topology"),
])
def test_nodes_are_named_as_their_hostname_label(nodes, spec, message, make_host):
    with pytest.raises(ExportError, match=message):
        kubevirt_host_devices({node: detect(make_host(host)) for node, host in nodes.items()}, spec)


def test_a_node_whose_value_is_no_topology_is_named(make_host):
    with pytest.raises(ExportError, match=r"expects the topology .*\(node gpu2\)"):
        kubevirt_host_devices({"gpu1": detect(make_host("desktop_vfio")), "gpu2": ["x"]},
                              {"pci_devices": ["10de:1e04"]})


def test_vgpu_vfs_of_different_profiles_are_refused(make_host):
    # KubeVirt offers every nvidia VF of 10de:26b9 with any vGPU type under one resource: a VMI asking for
    # the 8Q could get the 4Q.
    topology = detect(make_host("l40s_vgpu", patch_devices=L40S_4Q_ON_00_5))
    with pytest.raises(ExportError) as error:
        kubevirt_host_devices(topology, {"pci_devices": ["0000:cb:00.4"]})
    message = str(error.value)
    assert "vGPU NVIDIA L40S-4Q - 0000:cb:00.5; vGPU NVIDIA L40S-8Q - 0000:cb:00.4" in message
    assert "cannot select by address or vGPU profile" in message
    assert "give every VF of this ID the same vGPU profile on every node (vgpu_devices of the " \
           "gpuvirt.host.vgpu role)" in message


def test_vgpu_vfs_of_different_profiles_on_two_nodes_are_refused(make_host):
    nodes = {"l40s1": detect(make_host("l40s_vgpu")),
             "l40s2": detect(make_host("l40s_vgpu", patch_devices={
                 "cb:00.4": {"nvidia_vgpu": {"creatable": {}, "current": 1039}}}))}
    with pytest.raises(ExportError, match="vGPU NVIDIA L40S-4Q - 0000:cb:00.4 on l40s2; "
                                          "vGPU NVIDIA L40S-8Q - 0000:cb:00.4 on l40s1"):
        kubevirt_host_devices(nodes, {"pci_devices": ["0000:cb:00.4"]})


def test_a_whole_gpu_and_vgpu_vfs_of_one_id_are_refused(make_host):
    nodes = {"l40s1": detect(make_host("l40s_vgpu")),
             "l40s2": detect(make_host("desktop_vfio", add_devices=WHOLE_L40S))}
    with pytest.raises(ExportError) as error:
        kubevirt_host_devices(nodes, {"pci_devices": ["0000:cb:00.4"]})
    assert "the whole device on vfio-pci - 0000:41:00.0 on l40s2" in str(error.value)
    assert "keep the whole GPUs of this ID off vfio-pci while VFs of this ID carry vGPUs" in str(error.value)


def test_a_vgpu_vf_resource_is_named_for_its_profile(make_host):
    # The VF running the 8Q lists no creatable types: the name comes from its sibling VFs.
    result = kubevirt_host_devices(detect(make_host("l40s_vgpu")), {"pci_devices": ["0000:cb:00.4"]})
    assert result["configuration"]["permittedHostDevices"]["pciHostDevices"] == [
        {"pciVendorSelector": "10de:26b9", "resourceName": "nvidia.com/NVIDIA_L40S-8Q"}]
    assert any("from KubeVirt 1.9" in note for note in result["notes"])
    named = kubevirt_host_devices(detect(make_host("l40s_vgpu")), {
        "pci_devices": ["0000:cb:00.4"], "resource_names": {"NVIDIA L40S-8Q": "nvidia.com/l40s-8q"}})
    assert named["configuration"]["permittedHostDevices"]["pciHostDevices"][0]["resourceName"] == "nvidia.com/l40s-8q"


def test_a_vgpu_vf_whose_profile_name_is_unknown_is_named_by_its_type(make_host):
    # Every VF holds a vGPU: no creatable list names type 1041.
    full = {vf: {"nvidia_vgpu": {"creatable": {}, "current": 1041}} for vf in (
        "cb:00.5", "cb:00.6", "cb:00.7", "cb:01.0", "cb:01.1", "cb:01.2", "cb:01.3")}
    result = kubevirt_host_devices(detect(make_host("l40s_vgpu", patch_devices=full)), {"pci_devices": ["L40S"]})
    assert result["configuration"]["permittedHostDevices"]["pciHostDevices"] == [
        {"pciVendorSelector": "10de:26b9", "resourceName": "nvidia.com/AD102GL_L40S_vGPU-1041"}]


def test_devices_a_selector_admits_that_the_spec_did_not_name_are_noted(make_host):
    vgpus = kubevirt_host_devices(detect(make_host("l40s_vgpu", patch_devices=L40S_8Q_ON_00_5)),
                                  {"pci_devices": ["0000:cb:00.4"]})
    assert any(note.startswith("pciVendorSelector 10de:26b9 also admits 0000:cb:00.5, which the spec did not name")
               for note in vgpus["notes"]), vgpus["notes"]
    nodes = {"gpu1": detect(make_host("desktop_vfio")),
             "gpu2": detect(make_host("desktop_vfio", add_devices=SECOND_2080TI))}
    whole = kubevirt_host_devices(nodes, {"pci_devices": ["0000:01:00.0"]})
    assert [note for note in whole["notes"] if "also admits" in note] == [
        "pciVendorSelector 10de:1e04 also admits 0000:05:00.0 on gpu2, which the spec did not name: KubeVirt's "
        "PCI device plugin offers every device of this ID on vfio-pci (or a VF with a vGPU type) under "
        "nvidia.com/TU102_GeForce_RTX_2080_Ti on every node, and cannot select by address; bind them to another "
        "driver to keep them from VMIs"]
    assert not [note for note in kubevirt_host_devices(nodes, {"pci_devices": ["10de:1e04"]})["notes"]
                if "also admits" in note]


@pytest.mark.parametrize("spec, message", [
    ({"pci_devices": ["10de:1e04", "1002:73ff"],
      "resource_names": {"10de:1e04": "example.com/gpu", "1002:73ff": "example.com/gpu"}},
     "resource name example.com/gpu would stand for pciVendorSelector 1002:73ff and pciVendorSelector 10de:1e04"),
    ({"pci_devices": ["10de:1e04"], "mdev_types": ["i915-GVTg_V5_4"],
      "resource_names": {"10de:1e04": "example.com/gpu", "i915-GVTg_V5_4": "example.com/gpu"}},
     "would stand for mdevNameSelector i915-GVTg_V5_4 and pciVendorSelector 10de:1e04"),
])
def test_a_resource_name_stands_for_one_selector(spec, message, make_host):
    nodes = {"gpu1": detect(make_host("desktop_vfio")), "gpu2": detect(make_host("amd_host")),
             "nuc": detect(make_host("intel_gvtg"))}
    with pytest.raises(ExportError, match=message):
        kubevirt_host_devices(nodes, spec)


def test_with_the_collection_owning_the_mdevs_the_gate_for_kubevirt_before_1_8_is_returned(make_host):
    # KubeVirt before 1.8 drops mediatedDevicesConfiguration.enabled and would delete the collection's mdevs.
    topology = detect(make_host("datacenter_a100", processes=[], mdevs=[
        {"uuid": "9b1f0d52-7e0c-4d8e-a1f3-2c5e8b7d6a10", "parent": "b1:00.5", "type": "nvidia-471"}]))
    result = kubevirt_host_devices(topology, {"mdev_types": ["NVIDIA A100-4C"], "mdev_owner": "gpuvirt.host"})
    assert result["configuration"]["mediatedDevicesConfiguration"] == {"enabled": False}
    assert result["feature_gates"] == ["DisableMDEVConfiguration"]
    passthrough = kubevirt_host_devices(detect(make_host("desktop_vfio")),
                                        {"pci_devices": ["10de:1e04"], "mdev_owner": "gpuvirt.host"})
    assert passthrough["feature_gates"] == ["HostDevices", "DisableMDEVConfiguration"]
    assert "DisableMDEVConfiguration" in passthrough["notes"][0]


def test_a_model_ready_on_one_node_and_on_its_host_driver_on_another_is_exported(make_host):
    # gpu2 keeps its RTX 2080 Ti on nvidia (for containers): KubeVirt offers it nowhere, gpu1's goes to VMIs.
    nodes = {"gpu1": detect(make_host("desktop_vfio")), "gpu2": detect(make_host("desktop_dgpu"))}
    result = kubevirt_host_devices(nodes, {"pci_devices": ["10de:1e04"]})
    assert [entry["pciVendorSelector"] for entry in result["configuration"]["permittedHostDevices"][
        "pciHostDevices"]] == ["10de:1e04"]
    skipped = [entry for entry in result["skipped"] if entry["node"] == "gpu2"]
    assert [entry["device"] for entry in skipped] == ["0000:01:00.0"]
    assert any("nvidia" in reason for reason in skipped[0]["reasons"])


def test_a_model_ready_on_no_node_is_refused_with_each_nodes_reasons(make_host):
    nodes = {"gpu2": detect(make_host("desktop_dgpu")), "gpu3": detect(make_host("desktop_dgpu"))}
    with pytest.raises(ExportError, match="matches no GPU that is ready on any node: 0000:01:00.0 on gpu2: .*"
                                          "0000:01:00.0 on gpu3: "):
        kubevirt_host_devices(nodes, {"pci_devices": ["10de:1e04"]})


def test_a_node_name_kubelet_would_not_label_is_refused(make_host):
    topology = detect(make_host("intel_gvtg"))
    with pytest.raises(ExportError, match="node name 'NUC1' is not the kubernetes.io/hostname label kubelet gives"):
        kubevirt_host_devices({"NUC1": topology, "nuc2": topology}, {"mdev_types": ["i915-GVTg_V5_4"]})
