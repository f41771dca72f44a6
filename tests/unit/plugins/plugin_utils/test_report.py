# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet report's model and page (the browser test in tests/report drives the page itself)."""

from __future__ import annotations

import json

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect
from ansible_collections.gpuvirt.host.plugins.plugin_utils.report import (
    RECORD_FORMAT,
    group_boxes,
    host_row,
    load_record,
    render,
)


def _record(topology, host="gpu-node-01", **extra):
    record = {
        "format": RECORD_FORMAT,
        "host": host,
        "collected_at": "2026-12-02T06:00:00Z",
        "source": "live",
        "pending_reboot": False,
        "pending_reboot_reasons": [],
        "topology": topology,
    }
    record.update(extra)
    return record


def test_records_raw_topologies_and_other_json_are_told_apart(make_host):
    topology = detect(make_host("desktop_vfio"))
    assert load_record(_record(topology), "x")["host"] == "gpu-node-01"
    raw = load_record(topology, "gpu-node-02")
    assert raw["host"] == "gpu-node-02" and raw["source"] == "topology_report" and raw["topology"] is topology
    assert load_record({"hosts": 3, "failed": []}, "preflight") is None
    assert load_record(["a"], "list") is None


def test_host_row_counts_models_readiness_profiles_and_findings(make_host):
    row = host_row(_record(detect(make_host("desktop_vfio"))))
    assert row["models"] == {"Raptor Lake-S GT1 [UHD Graphics 770]": 1, "TU102 [GeForce RTX 2080 Ti]": 1}
    assert (row["gpus"], row["ready"], row["viable"]) == (2, 1, 1)
    unbound = host_row(_record(detect(make_host("desktop_dgpu"))))
    assert (unbound["ready"], unbound["viable"]) == (0, 1)
    a100 = host_row(_record(detect(make_host("datacenter_a100"))))
    assert a100["profiles_in_use"] == {"NVIDIA A100-4C": 1} and a100["mdevs_in_use"] == 1
    assert a100["free"] == {"NVIDIA A100-4C": 15}
    l40s = host_row(_record(detect(make_host("l40s_vgpu"))))
    assert l40s["vgpus"] == sum(l40s["profiles_in_use"].values()) > 0
    off = host_row(_record(detect(make_host("iommu_disabled"))))
    assert off["findings"]["error"] == 1 and off["iommu"] is False


def test_a_row_from_the_cached_gpuvirt_fact_alone():
    fact = {
        "gpu_count": 4,
        "gpu_model_counts": [{"model": "GA102GL [A10]", "count": 4}],
        "passthrough_ready_count": 3,
        "mdevs_in_use": 0,
        "vgpus": 2,
        "reboot_pending": True,
        "blockers": ["vfio: 0000:41:00.0 is in use"],
        "iommu": True,
    }
    row = host_row({"format": RECORD_FORMAT, "host": "n1", "source": "cache", "pending_reboot": None, "fact": fact})
    assert row["models"] == {"GA102GL [A10]": 4} and row["ready"] == 3 and row["pending_reboot"] is True
    assert row["findings"]["error"] == 1
    page = render([{"format": RECORD_FORMAT, "host": "n1", "source": "cache", "fact": fact}])
    assert "0000:41:00.0 is in use" in page and "fact cache" in page


def test_group_boxes_draw_gpu_groups_with_vfs_under_their_parent(make_host):
    boxes = group_boxes(detect(make_host("datacenter_a100")))
    assert [box["group"] for box in boxes] == ["11", "31"]
    pf = next(d for d in boxes[1]["devices"] if d["address"] == "0000:b1:00.0")
    assert len(pf["vfs"]) == 16 and pf["numa_node"] == 1
    assert pf["vfs"][0]["mdevs"][0]["type"] == "nvidia-471" and pf["vfs"][0]["mdevs"][0]["in_use_by"]


@pytest.mark.parametrize("name", ["<script>alert(1)</script>", "a'b\"c&d"])
def test_everything_from_a_host_is_escaped(name, make_host):
    topology = detect(make_host("desktop_vfio"))
    topology["findings"].append({"severity": "warning", "code": "x", "message": name, "device": None})
    page = render([_record(topology, host=name)])
    assert name not in page
    assert page.count("<script") == 2  # the data block and the page's own script


def test_the_page_loads_nothing_from_elsewhere(make_host):
    page = render([_record(detect(make_host("amd_host")))])
    assert "http://" not in page and "https://" not in page and " src=" not in page
    assert "default-src 'none'" in page


def test_the_boot_display_of_another_class_is_drawn_as_the_boot_gpu(make_host):
    # strix_halo: the APU's GPU is a display controller without boot_vga; a newer kernel marks its DRM card.
    root = make_host("strix_halo", kernel={"release": "6.18.2-061802-generic"},
                     patch_devices={"c5:00.0": {"boot_display": True}})
    boxes = {box["group"]: box["devices"] for box in group_boxes(detect(root))}
    gpu = next(d for devices in boxes.values() for d in devices if d["address"] == "0000:c5:00.0")
    assert gpu["verdict"] == "boot-vga"
    older = {box["group"]: box["devices"] for box in group_boxes(detect(make_host("strix_halo")))}
    gpu = next(d for devices in older.values() for d in devices if d["address"] == "0000:c5:00.0")
    assert gpu["verdict"] == "blocked" and gpu["codes"] == ["console_framebuffer"]


def test_an_unbound_host_bridge_in_a_gpu_group_is_drawn_as_a_bridge(make_host):
    # cezanne_laptop: group 5 holds the dummy host bridge 00:08.0 (no driver), the bridge 00:08.1 and the
    # iGPU with its functions; a host bridge a driver holds is another endpoint.
    boxes = {box["group"]: box["devices"] for box in group_boxes(detect(make_host("cezanne_laptop")))}
    members = {device["address"]: device["verdict"] for device in boxes["5"]}
    assert members["0000:00:08.0"] == "bridge" and members["0000:00:08.1"] == "bridge"
    bound = make_host("cezanne_laptop", patch_devices={"00:08.0": {"driver": "k10temp"}})
    boxes = {box["group"]: box["devices"] for box in group_boxes(detect(bound))}
    assert {device["address"]: device["verdict"] for device in boxes["5"]}["0000:00:08.0"] == "other"


def test_a_malformed_record_is_left_out_of_the_page_and_named(make_host, tmp_path):
    from ansible_collections.gpuvirt.host.plugins.action.fleet_report import read_records

    good = detect(make_host("desktop_vfio"))
    broken = detect(make_host("desktop_vfio"))
    broken["findings"].append(None)
    broken["devices"][0]["driver"] = 7
    for name, topology in (("good", good), ("broken", broken)):
        (tmp_path / (name + ".json")).write_text(json.dumps(_record(topology, host=name)))
    (tmp_path / "cut.json").write_text('{"format": "gpuvirt.host/report-host/1", "host": ')

    records, ignored = read_records(str(tmp_path))
    assert [record["host"] for record in records] == ["good"]
    assert [line.split(":")[0] for line in ignored] == ["broken.json", "cut.json"]
    assert "cannot be drawn" in ignored[0]
    assert "good" in render(records)
