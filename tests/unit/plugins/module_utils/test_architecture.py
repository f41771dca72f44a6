# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which architecture's kernel boots from a root: the running one, a tree's programs, its
/proc/cpuinfo, its IOMMU, or unknown."""

from __future__ import annotations

import os
import struct

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils.architecture import (
    architecture_from_iommu,
    host_architecture,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect

# e_machine and EI_DATA (1 little-endian, 2 big-endian) of real programs.
ELF = {"x86_64": (62, 1), "aarch64": (183, 1), "ppc64le": (21, 1), "ppc64": (21, 2), "i686": (3, 1),
       "s390x": (22, 2), "arm": (40, 1)}


def elf(machine):
    number, data = ELF[machine]
    header = b"\x7fELF" + bytes((2, data, 1, 0)) + bytes(8)
    return header + struct.pack("<HH" if data == 1 else ">HH", 2, number) + bytes(44)


def tree(tmp_path, programs=None, links=None):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=debian\n")
    for path, content in (programs or {}).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(content)
    for path, target in (links or {}).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, str(root / path))
    return str(root)


def test_the_live_root_is_the_running_kernel():
    machine = os.uname().machine
    assert host_architecture("/") == ({"arm64": "aarch64", "amd64": "x86_64"}.get(machine, machine),
                                      "the running kernel (uname -m)")


@pytest.mark.parametrize("machine", ["x86_64", "aarch64", "ppc64le", "ppc64", "i686", "s390x"])
def test_an_image_tree_is_what_its_programs_are_built_for(tmp_path, machine):
    root = tree(tmp_path, {"usr/bin/env": elf(machine)})

    assert host_architecture(root) == (machine, "/usr/bin/env in the tree, a program for %s" % machine)


def test_links_in_the_tree_are_followed_inside_it(tmp_path):
    # Merged /usr and busybox-style links; the absolute target is the tree's, not this machine's.
    root = tree(tmp_path, {"opt/box/busybox": elf("aarch64")},
                {"bin": "usr/bin", "usr/bin/sh": "/opt/box/busybox"})

    assert host_architecture(root)[0] == "aarch64"


def test_programs_win_over_a_cpuinfo_that_belongs_to_the_building_machine(make_host):
    # A chroot of an arm64 image on an x86 builder, /proc bind-mounted: the image's kernel boots.
    root = make_host("desktop_dgpu")
    os.makedirs(os.path.join(root, "usr/bin"), exist_ok=True)
    with open(os.path.join(root, "usr/bin/env"), "wb") as handle:
        handle.write(elf("aarch64"))

    assert host_architecture(root)[0] == "aarch64"


def test_a_32_bit_arm_userland_says_nothing_about_the_kernel(tmp_path):
    # Raspberry Pi OS style: armhf programs on an arm64 kernel.
    assert host_architecture(tree(tmp_path, {"usr/bin/env": elf("arm"), "bin/sh": b"#!/bin/busybox\n"})) == (
        None, None)


CAPTURED = [("desktop_dgpu", "x86_64"), ("amd_host", "x86_64"), ("grace_hopper", "aarch64"), ("power9_host", "ppc64le")]


@pytest.mark.parametrize(("host", "machine"), CAPTURED)
def test_a_captured_tree_has_its_cpuinfo(make_host, host, machine):
    assert host_architecture(make_host(host)) == (machine, "/proc/cpuinfo in the tree")


# s390's summary block (arch/s390/kernel/processor.c show_cpu_summary()): vendor_id, no x86 flags.
S390_CPUINFO = (
    "vendor_id       : IBM/S390\n# processors    : 4\nbogomips per cpu: 3241.00\nmax thread id   : 0\n"
    "features\t: esan3 zarch stfle msa ldisp eimm dfp edat etf3eh highgprs te vx vxd vxe gs sie\n"
    "processor 0: version = 00,  identification = 0B8AF8,  machine = 8561\n\n"
    "cpu number      : 0\nversion         : 00\n"
)
# RISC-V's (arch/riscv/kernel/cpu.c c_show()): processor, hart, isa, mmu and the machine IDs.
RISCV_CPUINFO = (
    "processor\t: 0\nhart\t\t: 0\nisa\t\t: rv64imafdch_zicsr_zifencei_zba_zbb_zbs_sstc\nmmu\t\t: sv57\n"
    "mvendorid\t: 0x0\nmarchid\t\t: 0x0\nmimpid\t\t: 0x0\n\n"
)


@pytest.mark.parametrize(("cpuinfo", "machine"), [(S390_CPUINFO, "s390x"), (RISCV_CPUINFO, "riscv64")])
def test_other_architectures_cpuinfo_is_not_taken_for_x86(make_host, cpuinfo, machine):
    # s390 writes vendor_id as x86 does; taken for x86, its hosts got VT-d advice and no refusal.
    root = make_host("iommu_disabled", files={"proc/cpuinfo": cpuinfo})
    assert host_architecture(root) == (machine, "/proc/cpuinfo in the tree")
    topology = detect(root)
    assert topology["cpu"]["architecture"] == machine
    codes = [finding["code"] for finding in topology["findings"]]
    assert "architecture_unsupported" in codes and "no_cpu_virtualization" not in codes, codes
    assert not any("VT-d" in finding["message"] or "intel_iommu" in finding["message"]
                   for finding in topology["findings"]), topology["findings"]


@pytest.mark.parametrize(
    ("host", "changes", "machine", "source"),
    [
        ("desktop_dgpu", {}, "x86_64", "the IOMMU units in /sys/class/iommu of the tree (dmar0)"),
        ("amd_host", {}, "x86_64", "the IOMMU units in /sys/class/iommu of the tree (ivhd0)"),
        ("grace_hopper", {}, "aarch64", "the IOMMU units in /sys/class/iommu of the tree (smmu3."),
        ("grace_hopper", {"iommu": {"enabled": False}}, "aarch64", "the firmware's ACPI tables in the tree (IORT)"),
        ("iommu_disabled", {}, "x86_64", "the firmware's ACPI tables in the tree (DMAR)"),
    ],
)
def test_without_cpuinfo_the_iommu_tells(make_host, host, changes, machine, source):
    root = make_host(host, files={"proc/cpuinfo": None}, **changes)

    found, where = host_architecture(root)

    assert found == machine and where.startswith(source), where


def test_a_tree_that_does_not_tell_is_unknown(tmp_path, make_host):
    assert host_architecture(tree(tmp_path, {"usr/bin/env": b"#!/bin/sh\n"})) == (None, None)
    # POWER: no IOMMU units, no ACPI; without cpuinfo nothing is left to tell.
    assert host_architecture(make_host("power9_host", files={"proc/cpuinfo": None})) == (None, None)


def test_architecture_from_iommu():
    assert [architecture_from_iommu(v) for v in ("intel", "amd", "arm", None, "spapr")] == [
        "x86_64", "x86_64", "aarch64", None, None]
