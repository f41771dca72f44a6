# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""topology_info's kernel_arguments: kernel_cmdline's check-mode answer in the same read, and the IOMMU
arguments (iommu_kernel_arguments) the iommu role asks for."""

from __future__ import annotations

import os
import pathlib

import pytest
from ansible.module_utils import _internal as ansible_internal
from ansible.module_utils.common import warnings as ansible_warnings

from ansible_collections.gpuvirt.host.plugins.filter.iommu_kernel_arguments import iommu_kernel_arguments
from ansible_collections.gpuvirt.host.plugins.module_utils import bootloader
from ansible_collections.gpuvirt.host.plugins.modules import topology_info

BOOT_FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures", "boot")
TREES = sorted(name for name in os.listdir(BOOT_FIXTURES) if os.path.isdir(os.path.join(BOOT_FIXTURES, name)))
IOMMU_SETS = [iommu_kernel_arguments(vendor, passthrough) for vendor in ("intel", "amd", "arm")
              for passthrough in (False, True)]
OTHER_SETS = [
    {"present": ["amd_iommu=on", "iommu=pt"], "absent": ["nomodeset", "quiet"]},
    {"present": ["hugepagesz=1G", "hugepages=8"], "absent": []},
    {"present": ["intel_iommu=on iommu=pt"], "absent": []},  # not one argument: an error for the set alone
]
# No known boot loader; rpm-ostree edits only the booted host.
UNANSWERED = ("unknown", "fedora-coreos")
# What kernel_cmdline's check mode returns that the preview carries (its diff aside).
KEYS = ("changed", "bootloader", "configured", "running", "added", "removed", "reboot_required",
        "regenerate_required", "commands")


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(ansible_internal, "is_controller", False)
    ansible_warnings._global_warnings.clear()


def snapshot(root):
    paths = (pathlib.Path(directory, name) for directory, _dirs, names in os.walk(root) for name in names)
    return {str(path.relative_to(root)): path.read_bytes() for path in paths if not path.is_symlink()}


@pytest.mark.parametrize("name", ["grub2", "lilo", ""])
def test_a_boot_loader_kernel_cmdline_does_not_know_is_the_sets_error(run_module, boot_tree, name):
    read = run_module("topology_info", {"root": boot_tree("debian-grub"), "kernel_arguments": [
        {"present": ["iommu=pt"], "bootloader": name}, {"present": ["iommu=pt"]}]})
    assert read["rc"] == 0 and read["topology"]["kernel"], read
    unknown, auto = read["kernel_arguments"]
    assert "preview" not in unknown and "bootloader must be auto or one of grub, grubby" in unknown["error"]
    assert auto["preview"]["bootloader"] == "grub"
    assert all("V(%s)" % known in topology_info.DOCUMENTATION for known in bootloader.BOOTLOADERS)


def test_a_defect_in_one_preview_is_that_sets_error(run_module, boot_tree, monkeypatch):
    real_plan = bootloader.plan

    def plan(module, root, name, present, absent, update=True):
        if name == "grubby":
            raise RuntimeError("a defect")
        return real_plan(module, root, name, present, absent, update=update)

    monkeypatch.setattr(bootloader, "plan", plan)
    read = run_module("topology_info", {"root": boot_tree("debian-grub"), "kernel_arguments": [
        {"present": ["iommu=pt"], "bootloader": "grubby"}, {"present": ["iommu=pt"]}]})
    assert read["rc"] == 0, read
    broken, fine = read["kernel_arguments"]
    assert "RuntimeError" in broken["error"] and "a defect" in broken["error"]
    assert fine["preview"]["bootloader"] == "grub" and "error" not in fine


@pytest.mark.parametrize("tree", TREES)
def test_each_preview_is_what_kernel_cmdline_answers_in_check_mode(run_module, boot_tree, tree):
    root = boot_tree(tree)
    if not os.path.exists(os.path.join(root, "proc", "cmdline")):
        # topology_info reads Linux trees only; both modules read this running command line.
        os.makedirs(os.path.join(root, "proc"), exist_ok=True)
        with open(os.path.join(root, "proc", "cmdline"), "w") as handle:
            handle.write("BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet\n")
    sets = IOMMU_SETS + OTHER_SETS
    before = snapshot(root)
    read = run_module("topology_info", {"root": root, "kernel_arguments": sets})
    assert read["rc"] == 0, read
    assert snapshot(root) == before
    assert [entry["present"] for entry in read["kernel_arguments"]] == [wanted["present"] for wanted in sets]
    assert [entry["bootloader"] for entry in read["kernel_arguments"]] == ["auto"] * len(sets)
    answered = 0
    for wanted, entry in zip(sets, read["kernel_arguments"]):
        ansible_warnings._global_warnings.clear()
        expected = run_module("kernel_cmdline", dict(wanted, root=root), check_mode=True)
        if expected.get("failed"):
            assert "preview" not in entry and entry["error"] == expected["msg"], (wanted, entry)
            continue
        answered += 1
        assert "error" not in entry, entry
        assert {key: entry["preview"][key] for key in KEYS} == {key: expected[key] for key in KEYS}, wanted
        assert len(entry["preview"]["warnings"]) == len(expected.get("warnings", [])), wanted
    assert snapshot(root) == before
    # Every tree answers the IOMMU sets but those kernel_cmdline cannot edit as an image tree.
    assert answered >= (0 if tree in UNANSWERED else len(IOMMU_SETS)), read["kernel_arguments"]


def test_a_set_names_its_boot_loader(run_module, boot_tree):
    root = boot_tree("debian-grub")
    read = run_module("topology_info", {"root": root, "kernel_arguments": [
        {"present": ["iommu=pt"]}, {"present": ["iommu=pt"], "bootloader": "grubby"}]})
    grub, grubby = read["kernel_arguments"]
    assert grub["bootloader"] == "auto" and grub["preview"]["bootloader"] == "grub"
    assert grubby["bootloader"] == "grubby" and "no /boot/loader/entries/*.conf" in grubby["error"]


def test_the_previews_warnings_are_the_reads_once(run_module, boot_tree, put_file):
    root = boot_tree("debian-grub")
    put_file(root, "etc/default/grub", 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
             '[ -e /etc/x ] && GRUB_CMDLINE_LINUX_DEFAULT="quiet splash"\n')
    read = run_module("topology_info", {"root": root, "kernel_arguments": IOMMU_SETS})
    (warning,) = read["kernel_arguments"][0]["preview"]["warnings"]
    assert "/etc/default/grub line 2 sets GRUB_CMDLINE_LINUX_DEFAULT after &&" in warning
    assert all(entry["preview"]["warnings"] == [warning] for entry in read["kernel_arguments"])
    assert [w["event"]["msg"] if isinstance(w, dict) else w for w in read["warnings"]].count(warning) == 1


def test_a_boot_configuration_that_cannot_be_read_is_each_sets_error(run_module, boot_tree):
    root = boot_tree("debian-grub")
    os.remove(os.path.join(root, "etc/default/grub"))
    os.makedirs(os.path.join(root, "etc/default/grub"))
    read = run_module("topology_info", {"root": root, "kernel_arguments": IOMMU_SETS[:2]})
    assert read["rc"] == 0 and read["topology"]["kernel"], read
    assert [sorted(entry) for entry in read["kernel_arguments"]] == [["absent", "bootloader", "error", "present"]] * 2
    assert "/etc/default/grub" in read["kernel_arguments"][0]["error"]


def test_without_sets_the_read_previews_nothing(run_module, boot_tree):
    read = run_module("topology_info", {"root": boot_tree("debian-grub")})
    assert read["rc"] == 0 and read["kernel_arguments"] == []


@pytest.mark.parametrize(("vendor", "passthrough", "present", "absent"), [
    ("intel", False, ["intel_iommu=on"], ["iommu=off"]),
    ("intel", True, ["intel_iommu=on", "iommu=pt"], []),
    ("amd", False, [], ["amd_iommu=off", "iommu=off"]),
    ("amd", "true", ["iommu=pt"], ["amd_iommu=off"]),
    ("arm", False, [], ["intel_iommu", "amd_iommu", "iommu"]),
    ("arm", True, ["iommu.passthrough=1"], ["intel_iommu", "amd_iommu", "iommu"]),
    (None, False, [], []),
    ("s390", True, [], []),
])
def test_the_iommu_arguments_of_each_vendor(vendor, passthrough, present, absent):
    assert iommu_kernel_arguments(vendor, passthrough) == {"present": present, "absent": absent}
