# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Malformed sysfs/procfs values never raise: detection returns null for them and a finding.

Each test writes one fuzzed value into a fixture tree built once per module, runs detect(), checks
the result against an independent expectation, and puts the original file back.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect
from ansible_collections.gpuvirt.host.plugins.module_utils.vendor_nvidia import parse_creatable_vgpu_types

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures"))
import hostgen  # noqa: E402

DGPU = "0000:01:00.0"
DGPU_DIR = "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0"
IGPU_DIR = "sys/devices/pci0000:00/0000:00:02.0"
A100_PF_DIR = "sys/devices/pci0000:b0/0000:b0:02.0/0000:b1:00.0"
A100_VF_DIR = "sys/devices/pci0000:b0/0000:b0:02.0/0000:b1:00.5"
A100_FIRST_VF_DIR = "sys/devices/pci0000:b0/0000:b0:02.0/0000:b1:00.4"
L40S_VF_DIR = "sys/devices/pci0000:ca/0000:ca:01.0/0000:cb:00.5"

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Values a broken kernel, a truncated capture or a bad copy could leave behind.
INTERESTING = [
    b"", b"\n", b"0x", b"-", b"-1", b"0", b"1", b"2", b"(null)", b"0x10de", b"10de", b"0xZZZZ", b"flr bus",
    b"99999999999999999999999999", b"\x00", b"\xff\xfe", b"PCI_ID=zz", b"PCI_ID=10DE:1E04\n", b"DRIVER=\n",
    b"ID    : vGPU Name\n", b"1030  : NVIDIA L40S-1B\n", b" 7 ", b"\t\n\t", "número".encode(),
    "²".encode(), "٣".encode(), b"65536", b"21",
]
values = st.one_of(
    st.sampled_from(INTERESTING),
    st.binary(max_size=80),
    st.text(max_size=80).map(lambda text: text.encode("utf-8", "surrogatepass")),
)


def truncations(original):
    return st.integers(min_value=0, max_value=len(original)).map(lambda n: original[:n])


@pytest.fixture(scope="module")
def trees(_host_tree_base):
    built = {}
    for name in ("desktop_dgpu", "datacenter_a100", "l40s_vgpu"):
        built[name] = hostgen.build_host(name, os.path.join(_host_tree_base, "fuzz-" + name))
    return built


@contextlib.contextmanager
def replaced(root, relative, content=None, link=None):
    """Put ``content`` (bytes) or a link to ``link`` at ``relative``; restore the original after."""
    path = os.path.join(root, relative)
    original_link = os.readlink(path) if os.path.islink(path) else None
    original = None
    if original_link is None and os.path.isfile(path):
        with open(path, "rb") as handle:
            original = handle.read()
    if os.path.lexists(path):
        os.unlink(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        if link is not None:
            os.symlink(link, path)
        else:
            with open(path, "wb") as handle:
                handle.write(content)
        yield
    finally:
        if os.path.lexists(path):
            os.unlink(path)
        if original_link is not None:
            os.symlink(original_link, path)
        elif original is not None:
            with open(path, "wb") as handle:
                handle.write(original)


def run(root):
    topology = detect(root)
    json.dumps(topology)  # plain JSON only
    return topology


def number(text):
    """The ASCII decimal number the kernel would write, or None."""
    return int(text) if text is not None and re.fullmatch(r"[0-9]+", text) else None


def text_of(raw):
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None


def device(topology, address):
    return next(d for d in topology["devices"] if d["address"] == address)


def attribute_findings(topology, address, name):
    return [
        f for f in topology["findings"]
        if f["device"] == address and f["code"].endswith("_attribute") and name in f["message"]
    ]


@FUZZ
@given(raw=values)
def test_numa_node(trees, raw):
    with replaced(trees["desktop_dgpu"], DGPU_DIR + "/numa_node", raw):
        topology = run(trees["desktop_dgpu"])
    text = text_of(raw)
    if text is not None and re.fullmatch(r"-?[0-9]+", text):
        assert device(topology, DGPU)["numa_node"] == int(text)
    else:
        assert device(topology, DGPU)["numa_node"] is None
        assert attribute_findings(topology, DGPU, "numa_node")


@FUZZ
@given(raw=values)
def test_reset_method(trees, raw):
    with replaced(trees["desktop_dgpu"], DGPU_DIR + "/reset_method", raw):
        topology = run(trees["desktop_dgpu"])
    text = text_of(raw)
    methods = device(topology, DGPU)["reset_methods"]
    if text == "":
        assert methods == []
    elif text is not None and re.fullmatch(r"[a-z0-9_]+( [a-z0-9_]+)*", text):
        assert methods == text.split()
    else:
        assert methods is None
        assert attribute_findings(topology, DGPU, "reset_method")


@FUZZ
@given(raw=values)
def test_driver_override(trees, raw):
    with replaced(trees["desktop_dgpu"], DGPU_DIR + "/driver_override", raw):
        topology = run(trees["desktop_dgpu"])
    text = text_of(raw)
    override = device(topology, DGPU)["driver_override"]
    if text is None:
        assert override is None and attribute_findings(topology, DGPU, "driver_override")
    else:
        assert override == (None if text in ("", "(null)") else text)


@FUZZ
@given(raw=st.one_of(values, truncations(b"DRIVER=nvidia\nPCI_CLASS=30000\nPCI_ID=10DE:1E04\n"
                                         b"PCI_SUBSYS_ID=1458:37A9\nPCI_SLOT_NAME=0000:01:00.0\n")))
def test_uevent_falls_back_to_the_attributes(trees, raw):
    with replaced(trees["desktop_dgpu"], DGPU_DIR + "/uevent", raw):
        topology = run(trees["desktop_dgpu"])
    text = text_of(raw) or ""
    claimed = {m.lower() for m in re.findall(r"^PCI_ID=([0-9A-Fa-f]{4}):[0-9A-Fa-f]{4}$", text, re.M)}
    entry = device(topology, DGPU)
    # A clean PCI_ID line is believed; anything else falls back to the (intact) vendor file.
    assert entry["vendor_id"] in claimed | {"10de"}
    assert entry["class"] is not None and re.fullmatch(r"[0-9a-f]{6}", entry["class"])
    assert entry["driver"] in (None, "nvidia") or re.fullmatch(r"[A-Za-z0-9_.:+-]+", entry["driver"])


@FUZZ
@given(raw=values)
def test_vendor_file_without_uevent(trees, raw):
    root = trees["desktop_dgpu"]
    with replaced(root, DGPU_DIR + "/uevent", b"garbage"), replaced(root, DGPU_DIR + "/vendor", raw):
        topology = run(root)
    text = text_of(raw)
    if text is not None and re.fullmatch(r"(0x)?[0-9a-fA-F]{1,4}", text):
        assert device(topology, DGPU)["vendor_id"] == "%04x" % int(text, 16)
    else:
        assert device(topology, DGPU)["vendor_id"] is None
        assert attribute_findings(topology, DGPU, "vendor")


@FUZZ
@given(raw=values)
def test_boot_vga(trees, raw):
    with replaced(trees["desktop_dgpu"], IGPU_DIR + "/boot_vga", raw):
        topology = run(trees["desktop_dgpu"])
    text = text_of(raw)
    igpu = device(topology, "0000:00:02.0")
    if text in ("0", "1"):
        assert igpu["boot_vga"] is (text == "1")
    else:
        # Unknown, never "not the boot GPU": the passthrough verdict refuses it.
        assert igpu["boot_vga"] is None and attribute_findings(topology, "0000:00:02.0", "boot_vga")
        gpu = next(g for g in topology["gpus"] if g["address"] == "0000:00:02.0")
        assert "doubtful_attribute" in gpu["passthrough"]["codes"] and not gpu["passthrough"]["viable"]


@FUZZ
@given(target=st.text(min_size=1, max_size=60).filter(lambda t: "\x00" not in t),
       name=st.sampled_from(["iommu_group", "driver", "physfn"]))
def test_odd_links(trees, target, name):
    with replaced(trees["desktop_dgpu"], DGPU_DIR + "/" + name, link=target):
        topology = run(trees["desktop_dgpu"])
    entry = device(topology, DGPU)
    assert entry["iommu_group"] is None or re.fullmatch(r"[0-9]+", entry["iommu_group"])
    assert entry["physfn"] is None or re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", entry["physfn"])
    gpu = next(g for g in topology["gpus"] if g["address"] == DGPU)
    assert isinstance(gpu["passthrough"]["viable"], bool)


@FUZZ
@given(raw=st.one_of(values, truncations(b"ID    : vGPU Name\n1030  : NVIDIA L40S-1B\n1031  : NVIDIA L40S-2B\n")))
def test_creatable_vgpu_types(trees, raw):
    root = trees["l40s_vgpu"]
    with replaced(root, L40S_VF_DIR + "/nvidia/creatable_vgpu_types", raw):
        topology = run(root)
    text = text_of(raw)
    state = device(topology, "0000:cb:00.5")["nvidia_vgpu"]
    expected = parse_creatable_vgpu_types(text) if text is not None else (None, ["undecodable"])
    if expected[1]:
        assert state["creatable"] is None and attribute_findings(topology, "0000:cb:00.5", "creatable_vgpu_types")
    else:
        assert state["creatable"] == expected[0]


@FUZZ
@given(raw=values, name=st.sampled_from(["current_vgpu_type"]))
def test_current_vgpu_type(trees, raw, name):
    root = trees["l40s_vgpu"]
    with replaced(root, L40S_VF_DIR + "/nvidia/" + name, raw):
        topology = run(root)
    text = text_of(raw)
    current = device(topology, "0000:cb:00.5")["nvidia_vgpu"]["current"]
    assert current == number(text)
    if current is None:
        assert attribute_findings(topology, "0000:cb:00.5", "current_vgpu_type")


@FUZZ
@given(raw=values, name=st.sampled_from(["sriov_totalvfs", "sriov_numvfs"]))
def test_sriov_counts(trees, raw, name):
    root = trees["datacenter_a100"]
    with replaced(root, A100_PF_DIR + "/" + name, raw):
        topology = run(root)
    sriov = device(topology, "0000:b1:00.0")["sriov"]
    key = "total_vfs" if name == "sriov_totalvfs" else "num_vfs"
    text = text_of(raw)
    limit = 65535 if name == "sriov_totalvfs" else 20  # numvfs cannot exceed totalvfs (20)
    if number(text) is not None and number(text) <= limit:
        assert sriov[key] == number(text)
    else:
        assert sriov[key] is None and attribute_findings(topology, "0000:b1:00.0", name)
    assert all(re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", vf) for vf in sriov["vfs"])


@FUZZ
@given(raw=values, name=st.sampled_from(["available_instances", "name", "description", "device_api"]))
def test_mdev_type_attributes(trees, raw, name):
    # A type's fixed attributes are read from the first parent of a GPU model (later parents of the
    # model take them from it); available_instances from every parent.
    address, directory = ("0000:b1:00.5", A100_VF_DIR) if name == "available_instances" else (
        "0000:b1:00.4", A100_FIRST_VF_DIR)
    root = trees["datacenter_a100"]
    with replaced(root, directory + "/mdev_supported_types/nvidia-471/" + name, raw):
        topology = run(root)
    parent = next(p for p in topology["mdev_parents"] if p["parent"] == address)
    value = parent["types"][0]["available_instances" if name == "available_instances" else name]
    text = text_of(raw)
    assert value == (number(text) if name == "available_instances" else text)
    if value is None:
        assert attribute_findings(topology, address, name)


HOST_FILES = [
    "proc/cmdline", "proc/cpuinfo", "proc/interrupts", "proc/modules", "proc/self/mountinfo", "proc/net/route",
    "proc/net/ipv6_route", "proc/net/tcp", "proc/net/tcp6", "etc/ssh/sshd_config",
    "proc/sys/kernel/osrelease", "lib/modules/6.8.0-45-generic/modules.builtin", "usr/share/misc/pci.ids",
    "sys/kernel/iommu_groups/2/type", "sys/devices/virtual/iommu/dmar0/intel-iommu/ecap",
    "sys/class/dmi/id/product_name", "sys/class/dmi/id/sys_vendor", "sys/firmware/dmi/entries/0-0/raw",
    "sys/firmware/devicetree/base/hypervisor/compatible", "sys/hypervisor/type",
]


@FUZZ
@given(raw=values, relative=st.sampled_from(HOST_FILES))
def test_host_files(trees, raw, relative):
    with replaced(trees["desktop_dgpu"], relative, raw):
        topology = run(trees["desktop_dgpu"])
    kernel = topology["kernel"]
    assert kernel["cmdline"] is None or all(isinstance(arg, str) for arg in kernel["cmdline"])
    assert kernel["modules_loaded"] is None or all(isinstance(name, str) for name in kernel["modules_loaded"])
    assert topology["cpu"]["virtualization"] in ("vmx", "svm", None)
    assert topology["cpu"]["virtual_machine"] in (True, False, None)
    assert topology["cpu"]["hypervisor"] is None or isinstance(topology["cpu"]["hypervisor"], str)
    assert topology["iommu"]["interrupt_remapping"] in (True, False, None)
    assert len(topology["devices"]) == 15
