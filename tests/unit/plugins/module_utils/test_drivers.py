# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's modules and the controller's filters tell a VFIO driver by the same rule."""

from __future__ import annotations

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils.drivers import driver_key, is_vfio_driver, is_vfio_pci
from ansible_collections.gpuvirt.host.plugins.plugin_utils import fact, report

NAMES = {
    "vfio-pci": True,
    "vfio_pci": True,
    " vfio-pci\n": True,
    "nvgrace_gpu_vfio_pci": True,
    "mlx5-vfio-pci": True,
    "virtio_vfio_pci": True,
    "vfio_pci_core": False,  # the library the variants are built on, never bound
    "xvfio_pci": False,
    "vfio": False,
    "nvidia": False,
    "nouveau": False,
    "": False,
    None: False,
}


@pytest.mark.parametrize("name, expected", NAMES.items())
def test_a_vfio_driver_is_vfio_pci_or_a_variant_named_like_one(name, expected):
    assert is_vfio_driver(name) is expected


def test_a_variant_the_kernel_lists_counts_whatever_its_name():
    assert not is_vfio_driver("hisi_acc_vfio")
    assert is_vfio_driver("hisi-acc-vfio", variants=["hisi_acc_vfio"])


@pytest.mark.parametrize("name, expected", [("vfio-pci", True), ("vfio_pci", True), (" vfio-pci\n", True),
                                            ("nvgrace_gpu_vfio_pci", False), ("vfio_pci_core", False), (None, False)])
def test_vfio_pci_itself_is_told_from_its_variants(name, expected):
    assert is_vfio_pci(name) is expected


def test_driver_names_compare_with_dash_and_underscore_as_one():
    assert driver_key(" vfio-pci ") == driver_key("vfio_pci") == "vfio_pci"


@pytest.mark.parametrize("name, expected", NAMES.items())
def test_the_fleet_fact_counts_a_gpu_on_the_driver_as_passed_through_exactly_when_the_host_does(name, expected):
    topology = {
        "iommu": {"enabled": True},
        "devices": [{"address": "0000:01:00.0", "driver": name, "class": "030000"}],
        "gpus": [{"address": "0000:01:00.0", "driver": name, "passthrough": {"viable": True}}],
    }
    result = fact.gpuvirt_fact(topology)
    assert (result["passthrough_ready"] == ["0000:01:00.0"]) is expected
    assert (result["gpus"][0]["mode"] == "passthrough") is expected


@pytest.mark.parametrize("name, expected", NAMES.items())
def test_the_fleet_page_counts_a_gpu_on_the_driver_as_ready_exactly_when_the_host_does(name, expected):
    gpu = {"address": "0000:01:00.0", "driver": name, "passthrough": {"viable": True}, "is_vf": False}
    topology = {"iommu": {"enabled": True}, "devices": [dict(gpu, **{"class": "030000"})], "gpus": [gpu],
                "mdev_parents": [], "mdevs": [], "iommu_groups": {}, "findings": [], "kernel": {}, "cpu": {}}
    row = report.host_row({"format": report.RECORD_FORMAT, "host": "gpu01", "source": "live", "topology": topology})
    assert (row["ready"] == 1) is expected, row
