# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Device selectors: one grammar for vfio_pci, sriov, mdev and nvidia_vgpu."""

from __future__ import annotations

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import mdev, nvidia_vgpu, sriov
from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError
from ansible_collections.gpuvirt.host.plugins.module_utils.pci import PciDevice, name_devices, read_pci_devices
from ansible_collections.gpuvirt.host.plugins.module_utils.selector import (
    SelectorError,
    describe,
    match_selector,
    parse_selector,
    select_devices,
)

A100_PFS = ["0000:12:00.0", "0000:22:00.0", "0000:32:00.0", "0000:42:00.0"]


def card(address, ids, device_name, vendor_name="NVIDIA Corporation"):
    vendor_id, device_id = ids.split(":")
    device = PciDevice(address, "sys/bus/pci/devices/" + address, vendor_id=vendor_id, device_id=device_id)
    device.vendor_name, device.device_name, device.class_code = vendor_name, device_name, "030000"
    return device


CARDS = {
    d.address: d
    for d in (
        card("0000:01:00.0", "10de:2204", "GA102 [GeForce RTX 3090]"),
        card("0000:02:00.0", "10de:2203", "GA102 [GeForce RTX 3090 Ti]"),
        card("0000:03:00.0", "10de:2204", "GA102 [GeForce RTX 3090]"),
        card("0000:04:00.0", "1002:73bf", "Navi 21 [Radeon RX 6800/6800 XT / 6900 XT]", "AMD/ATI"),
    )
}


def match(text, devices=CARDS):
    return match_selector(parse_selector(text), devices)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("01:00.0", ["0000:01:00.0"]),
        ("00000000:03:00.0", ["0000:03:00.0"]),
        ("09:00.0", []),
        ("10DE:2204", ["0000:01:00.0", "0000:03:00.0"]),
        ("0x1002:0x73bf", ["0000:04:00.0"]),
        ("GeForce RTX 3090", ["0000:01:00.0", "0000:03:00.0"]),
        ("geforce   rtx 3090 ti", ["0000:02:00.0"]),
        ("NVIDIA Corporation GA102 [GeForce RTX 3090 Ti]", ["0000:02:00.0"]),
        ("Radeon", ["0000:04:00.0"]),
        ("Voodoo", []),
    ],
)
def test_match(text, expected):
    assert match(text) == expected


def test_a_name_inside_two_models_names_them_all():
    with pytest.raises(SelectorError) as error:
        match("RTX 309")
    message = str(error.value)
    assert "'RTX 309' matches 2 different models" in message
    for address in ("0000:01:00.0", "0000:02:00.0", "0000:03:00.0"):
        assert address in message


@pytest.mark.parametrize("text", ["", "  ", None, "0", " 12 "])
def test_empty_and_index_selectors_are_refused(text):
    with pytest.raises(SelectorError, match="empty|looks like an index"):
        parse_selector(text)


def test_describe_a_device_or_its_record():
    device = CARDS["0000:04:00.0"]
    expected = "0000:04:00.0 [1002:73bf] AMD/ATI Navi 21 [Radeon RX 6800/6800 XT / 6900 XT] (no driver)"
    assert describe(device) == describe(device.to_dict()) == expected


@pytest.fixture
def synthetic(make_host):
    return make_host("large_synthetic")


def every_module(root, text):
    """What each module's selector resolution makes of ``text`` (addresses, or the error)."""
    devices = read_pci_devices(root)
    name_devices(root, devices)
    snapshot = mdev.read_snapshot(root, host_id="0" * 32)
    resolvers = {
        "sriov": (lambda: select_devices(text, devices, "PF", sriov.pf_reason), GpuvirtError),
        "nvidia_vgpu": (lambda: select_devices(text, devices, "GPU", nvidia_vgpu.gpu_reason), GpuvirtError),
        "mdev": (lambda: [t.label for t in mdev.resolve_selector(snapshot, text)], GpuvirtError),
    }
    results = {}
    for name, (resolve, error_type) in resolvers.items():
        try:
            results[name] = resolve()
        except error_type as error:
            results[name] = str(error)
    return results


@pytest.mark.parametrize(
    "text",
    ["A100 PCIe 80GB", "ga100 [a100 pcie 80gb]", "NVIDIA Corporation GA100 [A100 PCIe 80GB]", "10de:20b5", "A100"],
)
def test_every_module_reads_a_selector_the_same_way(synthetic, text):
    assert every_module(synthetic, text) == {"sriov": A100_PFS, "nvidia_vgpu": A100_PFS, "mdev": A100_PFS}


def test_every_module_refuses_an_index_and_an_ambiguous_name(synthetic):
    for message in every_module(synthetic, "1").values():
        assert "looks like an index" in message
    for message in every_module(synthetic, "NVIDIA Corporation").values():
        assert "matches 2 different models" in message and "[10de:20b5]" in message and "[10de:26b9]" in message


def _named(root):
    devices = read_pci_devices(root)
    name_devices(root, devices)
    return devices


def test_select_devices_says_why_an_address_cannot_be_named(make_host):
    devices = _named(make_host("l40s_vgpu"))
    with pytest.raises(SelectorError) as error:
        select_devices("cb:00.5", devices, "NVIDIA GPU", nvidia_vgpu.gpu_reason)
    assert "selector 'cb:00.5': 0000:cb:00.5 [10de:" in str(error.value)
    assert "is a virtual function of 0000:cb:00.0" in str(error.value)
    assert select_devices("cb:00.5", devices, "PCI device") == ["0000:cb:00.5"]  # no reason: anything goes


def test_select_devices_names_what_a_name_matched_and_why_it_does_not_count(synthetic):
    devices = _named(synthetic)
    with pytest.raises(SelectorError) as error:
        select_devices("A100", devices, "GPU", lambda device: "is not wanted here")
    message = str(error.value)
    assert message.startswith("selector 'A100' matches 0000:12:00.0, which is not wanted here; ")
    assert message.count("which is not wanted here") == 20 and message.endswith(" and 48 more")  # 4 PFs, 64 VFs


def test_select_devices_lists_at_most_twenty_candidates(synthetic):
    devices = _named(synthetic)
    with pytest.raises(SelectorError) as error:
        select_devices("dead:beef", devices, "PCI device")
    message = str(error.value)
    assert "matches no PCI device on this host" in message
    assert message.endswith(" and %d more" % (len(devices) - 20))
