# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Companions across a card's own PCIe switch: an Intel Arc's audio controller sits on a bus of its own."""

from __future__ import annotations

from ansible_collections.gpuvirt.host.plugins.module_utils.pci import card_functions, companions, read_pci_devices
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect

ARC = "0000:03:00.0"
ARC_AUDIO = "0000:04:00.0"


def endpoint(address, parent, ids, class_code, driver, group=2):
    """A PCI function as the fixture hosts describe it."""
    return {"address": address, "parent": parent, "ids": ids, "class": class_code, "driver": driver, "group": group}


def port(address, parent, ids, group=2):
    """A PCIe switch or root port on pcieport."""
    return endpoint(address, parent, ids, "060400", "pcieport", group)


def verdict(topology, address):
    return next(entry for entry in topology["gpus"] if entry["address"] == address)["passthrough"]


def test_an_arc_cards_audio_controller_behind_its_switch_goes_with_the_gpu(make_host):
    topology = detect(make_host("arc_desktop"))

    # The root port and the card's three switch ports share group 2 and stay with the host.
    assert verdict(topology, ARC) == {"viable": True, "reasons": [], "codes": [], "devices": [ARC, ARC_AUDIO]}


def test_each_function_of_the_card_names_the_other(make_host):
    devices = read_pci_devices(make_host("arc_desktop"))

    assert companions(devices, ARC) == [ARC_AUDIO]
    assert companions(devices, ARC_AUDIO) == [ARC]
    assert card_functions(devices, devices[ARC]) == [ARC, ARC_AUDIO]
    # A port of the switch is no function of the card.
    assert companions(devices, "0000:02:04.0") == []


def test_a_switch_holding_two_gpus_is_not_one_card(make_host):
    # A two-GPU card (or a platform switch of the GPU's vendor with two cards): which GPU an audio
    # controller behind another port belongs to cannot be told, so neither takes it.
    root = make_host("arc_desktop", add_devices=[
        port("02:08.0", "01:00.0", "8086:4fa4"),
        endpoint("06:00.0", "02:08.0", "8086:56a0", "030000", "i915"),
    ])
    devices = read_pci_devices(root)

    assert card_functions(devices, devices[ARC]) == []
    assert companions(devices, ARC) == [] and companions(devices, ARC_AUDIO) == []
    result = verdict(detect(root), ARC)
    assert result["codes"] == ["group_shared"] and result["devices"] == [ARC]
    others = {reason.split(" also holds ")[1].split(" ")[0] for reason in result["reasons"]}
    assert others == {ARC_AUDIO, "0000:06:00.0"}


def test_a_switch_of_another_vendor_is_not_the_cards_own(make_host):
    # The same layout behind a Broadcom/PLX switch: two cards on a platform switch, not one.
    root = make_host("arc_desktop", remove_devices=["01:00.0", "02:01.0", "02:04.0"], add_devices=[
        port("01:00.0", "00:01.0", "10b5:8747"), port("02:01.0", "01:00.0", "10b5:8747"),
        port("02:04.0", "01:00.0", "10b5:8747"),
    ])
    devices = read_pci_devices(root)

    assert card_functions(devices, devices[ARC]) == []
    assert companions(devices, ARC) == []


def test_a_card_without_a_gpu_gets_no_companions_across_its_switch(make_host):
    # A quad-port NIC behind its vendor's own switch: selecting one port must not take the others.
    nic_card = [
        port("00:1c.0", None, "8086:7ab8", 9), port("06:00.0", "00:1c.0", "8086:37c0", 9),
        port("07:01.0", "06:00.0", "8086:37c5", 9), port("07:02.0", "06:00.0", "8086:37c5", 9),
        endpoint("08:00.0", "07:01.0", "8086:1572", "020000", "i40e", 9),
        endpoint("09:00.0", "07:02.0", "8086:1572", "020000", "i40e", 9),
    ]
    devices = read_pci_devices(make_host("arc_desktop", add_devices=nic_card))

    assert card_functions(devices, devices["0000:08:00.0"]) == []
    assert companions(devices, "0000:08:00.0") == []
    assert companions(devices, ARC) == [ARC_AUDIO]


def test_a_gpu_on_a_root_port_keeps_its_slots_functions_only(make_host):
    # desktop_dgpu: the GeForce sits on the root port itself (no switch of its own).
    devices = read_pci_devices(make_host("desktop_dgpu"))

    assert card_functions(devices, devices["0000:01:00.0"]) == []
    assert companions(devices, "0000:01:00.0") == ["0000:01:00.1", "0000:01:00.2", "0000:01:00.3"]


def test_a_thunderbolt_controllers_switch_is_not_a_card(make_host):
    # An Intel DG1 (no switch of its own) in a Thunderbolt enclosure: its ports above are the Intel
    # Thunderbolt controller's, whose USB controller and NHI sit behind the same switch. Taking them
    # with the GPU would cut the enclosure off.
    thunderbolt = [
        port("00:07.0", None, "8086:a76e", 9), port("06:00.0", "00:07.0", "8086:15ef", 9),
        port("07:00.0", "06:00.0", "8086:15ef", 9), port("07:01.0", "06:00.0", "8086:15ef", 9),
        port("07:02.0", "06:00.0", "8086:15ef", 9),
        endpoint("08:00.0", "07:00.0", "8086:15eb", "088000", "thunderbolt", 9),
        endpoint("09:00.0", "07:01.0", "8086:4905", "030000", "i915", 9),
        endpoint("0a:00.0", "07:02.0", "8086:15ec", "0c0330", "xhci_hcd", 9),
    ]
    devices = read_pci_devices(make_host("arc_desktop", add_devices=thunderbolt))

    assert card_functions(devices, devices["0000:09:00.0"]) == []
    assert companions(devices, "0000:09:00.0") == []
    assert companions(devices, ARC) == [ARC_AUDIO]


def test_the_host_driver_finding_names_the_cards_audio_controller_as_its_companion(make_host):
    topology = detect(make_host("arc_desktop"))

    [info] = [f for f in topology["findings"] if f["code"] == "host_graphics_driver"]
    assert info["device"] == ARC
    assert "bound to the host graphics driver i915; to pass it through, bind it and its companion functions " \
        "(0000:04:00.0) to vfio-pci" in info["message"]
