# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpuvirt.host.topology_info run as a real module against fixture trees."""

from __future__ import annotations

import json
import os

TOPOLOGY_KEYS = {
    "root", "iommu", "kernel", "cpu", "iommu_groups", "devices", "gpus", "mdev_parents", "mdevs", "findings",
}


def test_reports_the_desktop_topology(make_host, run_module):
    root = make_host("desktop_dgpu")

    result = run_module("topology_info", {"root": root})

    assert result["rc"] == 0 and not result.failed
    assert result["changed"] is False
    topology = result["topology"]
    assert set(topology) == TOPOLOGY_KEYS
    assert topology["iommu"]["enabled"] is True and topology["iommu"]["vendor"] == "intel"
    assert topology["cpu"] == {"architecture": "x86_64", "vendor": "GenuineIntel", "virtualization": "vmx", "kvm": True,
                               "virtual_machine": False, "hypervisor": None}
    gpus = {gpu["address"]: gpu for gpu in topology["gpus"]}
    assert gpus["0000:01:00.0"]["passthrough"]["viable"] is True
    assert gpus["0000:00:02.0"]["passthrough"]["codes"] == ["boot_vga"]
    json.dumps(result)  # everything returned is plain JSON


def test_check_mode_reads_the_same_and_changes_nothing(make_host, run_module):
    root = make_host("datacenter_a100")
    before = sorted(os.path.join(d, f) for d, _dirs, files in os.walk(root) for f in files)

    normal = run_module("topology_info", {"root": root})
    checked = run_module("topology_info", {"root": root}, check_mode=True)

    assert checked["rc"] == 0 and checked["changed"] is False
    assert checked["topology"] == normal["topology"]
    assert sorted(os.path.join(d, f) for d, _dirs, files in os.walk(root) for f in files) == before


def test_missing_root_fails_clearly(tmp_path, run_module):
    result = run_module("topology_info", {"root": str(tmp_path / "nowhere")})

    assert result.failed and result["rc"] == 1
    assert "is not a directory" in result["msg"] and "nowhere" in result["msg"]


def test_root_that_is_not_a_linux_tree_fails_clearly(tmp_path, run_module):
    (tmp_path / "photos").mkdir()

    result = run_module("topology_info", {"root": str(tmp_path)})

    assert result.failed
    assert "does not look like a Linux filesystem tree" in result["msg"]
    assert "sys/bus/pci/devices" in result["msg"]


def test_image_tree_without_sysfs_is_read(tmp_path, run_module):
    """A chroot/image tree: /etc and /lib/modules, empty /sys and /proc mount points."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "os-release").write_text("ID=debian\n")
    (tmp_path / "lib" / "modules" / "6.1.0-25-amd64").mkdir(parents=True)
    (tmp_path / "lib" / "modules" / "6.1.0-25-amd64" / "modules.builtin").write_text(
        "kernel/drivers/vfio/pci/vfio-pci.ko\n"
    )
    (tmp_path / "sys").mkdir()
    (tmp_path / "proc").mkdir()

    result = run_module("topology_info", {"root": str(tmp_path)})

    assert result["rc"] == 0
    assert result["topology"]["kernel"]["release"] == "6.1.0-25-amd64"
    assert result["topology"]["kernel"]["vfio_builtin"] is True
    assert result["topology"]["devices"] == [] and result["topology"]["gpus"] == []


def test_reads_this_machine_without_failing(run_module):
    result = run_module("topology_info", {})

    assert result["rc"] == 0, result.get("msg")
    assert result["topology"]["root"] == "/"
    assert set(result["topology"]) == TOPOLOGY_KEYS


def test_the_collections_own_markers_on_the_host_are_reported(make_host, run_module):
    root = make_host("desktop_dgpu")
    assert run_module("topology_info", {"root": root})["gpuvirt"] == {
        "state_file": False, "pending": [], "drained": False}
    for relative in ("etc/gpuvirt/host-state.json", "etc/gpuvirt/drained", "etc/gpuvirt/pending/initramfs"):
        os.makedirs(os.path.dirname(os.path.join(root, relative)), exist_ok=True)
        with open(os.path.join(root, relative), "w") as handle:
            handle.write("{}\n")
    assert run_module("topology_info", {"root": root})["gpuvirt"] == {
        "state_file": True, "pending": ["initramfs"], "drained": True}
    # A marker linked out of the root is not the host's.
    os.unlink(os.path.join(root, "etc/gpuvirt/drained"))
    os.symlink("../../" * 8 + "tmp", os.path.join(root, "etc/gpuvirt/drained"))
    assert run_module("topology_info", {"root": root})["gpuvirt"]["drained"] is False
