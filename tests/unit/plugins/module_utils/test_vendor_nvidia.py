# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NVIDIA backend: reading ``nvidia/creatable_vgpu_types`` as NVIDIA's vgpu-device-manager does, and
what its sriov-manage tool declares."""

from __future__ import annotations

import os

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import vendor_nvidia
from ansible_collections.gpuvirt.host.plugins.module_utils.findings import Findings
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect
from ansible_collections.gpuvirt.host.plugins.module_utils.vendor_nvidia import (
    parse_creatable_vgpu_types,
    read_nvidia_vgpu,
)

H200X = [{"id": 1414, "name": "NVIDIA H200X-1-18C"}, {"id": 1428, "name": "NVIDIA H200X-141C"}]
L40S_VF = "0000:cb:00.5"


@pytest.mark.parametrize("header", [
    "ID    : vGPU Name",
    "ID : vGPU type",
    "vGPU Type ID : vGPU Name",
    "Type ID    vGPU Name",
    "Creatable vGPU types:",
    "----",
])
def test_a_header_in_any_form_is_skipped(header):
    text = "%s\n1414 : NVIDIA H200X-1-18C\n1428 : NVIDIA H200X-141C\n" % header
    assert parse_creatable_vgpu_types(text) == (H200X, [])


@pytest.mark.parametrize("text", [
    "1414 NVIDIA H200X-1-18C\n1428 NVIDIA H200X-141C\n",  # no colon
    "  1414\t:   NVIDIA H200X-1-18C  \n\n\n1428:NVIDIA H200X-141C\n",  # odd spacing, blank lines
])
def test_entries_in_the_forms_vgpu_device_manager_reads(text):
    assert parse_creatable_vgpu_types(text) == (H200X, [])


def test_a_numeric_line_without_a_name_is_reported():
    assert parse_creatable_vgpu_types("ID : vGPU Name\n1414 :\n1428 : NVIDIA H200X-141C\n1430\n") == (
        [{"id": 1428, "name": "NVIDIA H200X-141C"}],
        ["1414 :", "1430"],
    )
    # A word that only starts with digits is not a type ID (vgpu-device-manager skips it too).
    assert parse_creatable_vgpu_types("2024x vGPU types\n63 : GRID P40-2Q\n") == (
        [{"id": 63, "name": "GRID P40-2Q"}], []
    )


def test_another_header_keeps_the_list_and_raises_no_finding(tmp_path):
    directory = tmp_path / "vf" / "nvidia"
    directory.mkdir(parents=True)
    (directory / "creatable_vgpu_types").write_text("Type ID  : vGPU Type Name\n1414 : NVIDIA H200X-1-18C\n")
    (directory / "current_vgpu_type").write_text("0\n")
    findings = Findings()
    state = read_nvidia_vgpu(str(tmp_path / "vf"), L40S_VF, findings)
    assert state == {"creatable": [H200X[0]], "current": 0} and findings.as_list() == []


def test_the_topology_reads_a_vf_with_another_header(make_host):
    root = make_host("l40s_vgpu")
    path = os.path.join(root, "sys/bus/pci/devices", L40S_VF, "nvidia/creatable_vgpu_types")
    with open(path) as handle:
        lines = handle.read().splitlines()
    with open(path, "w") as handle:
        handle.write("\n".join(["vGPU Type ID    vGPU Type Name"] + lines[1:]) + "\n")
    topology = detect(root)
    vf = next(device for device in topology["devices"] if device["address"] == L40S_VF)
    creatable = vf["nvidia_vgpu"]["creatable"]
    assert creatable and all(isinstance(entry["id"], int) for entry in creatable)
    assert not [f for f in topology["findings"] if "creatable_vgpu_types" in f.get("message", "")]


def test_sriov_manage_declares_what_it_needs_and_what_it_unbinds():
    tool = vendor_nvidia.SriovManage()
    assert tool.pf_driver == "nvidia"
    assert tool.programs == (("lspci", "install pciutils"),)


def test_the_restore_unit_comes_before_nvidia_mig_manager():
    assert vendor_nvidia.BACKEND.restore_unit_before == ("nvidia-mig-manager.service",)
