# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The quick reading of a device's common attributes gives what the careful readers give.

Detection reads the attributes every device has (uevent, numa_node, driver_override, reset_method,
the iommu_group link) in one quick pass that takes only the exact bytes the kernel writes; any other
form sends the device through the careful readers. Plain path reads (no directory descriptor) use
the careful readers alone, so comparing the two proves the quick pass changes nothing.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import mdev_info, pci
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures"))
import hostgen  # noqa: E402

DGPU = "0000:01:00.0"
DGPU_DIR = "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0"


def careful(root, monkeypatch):
    """detect() through plain paths: the careful readers only."""
    with monkeypatch.context() as patch:
        patch.setattr(pci, "open_directory", lambda *args: None)
        patch.setattr(mdev_info, "open_directory", lambda *args: None)
        return json.dumps(detect(root), sort_keys=True)


def quick_results(root, monkeypatch):
    """``{address: True/False}``: whether the quick pass took each device, and the output."""
    taken = {}
    original = pci._QuickPass.device

    def recording(quick, address, path, directory, held):
        device = original(quick, address, path, directory, held)
        taken[address] = device is not None
        return device

    with monkeypatch.context() as patch:
        patch.setattr(pci._QuickPass, "device", recording)
        output = json.dumps(detect(root), sort_keys=True)
    return taken, output


@pytest.mark.parametrize("name", [name for name in hostgen.host_names() if name != "large_synthetic"])
def test_every_fixture_host_reads_the_same_quick_careful_and_without_uevent(make_host, monkeypatch, name):
    root = make_host(name)

    taken, quick = quick_results(root, monkeypatch)

    assert taken and all(taken.values()), "the kernel's own forms all take the quick pass"
    assert quick == careful(root, monkeypatch)
    bus = os.path.join(root, "sys/bus/pci/devices")
    for address in os.listdir(bus):
        os.unlink(os.path.join(bus, address, "uevent"))
    assert json.dumps(detect(root), sort_keys=True) == quick, "vendor, device, class... and the driver link agree"


ODD_FORMS = {
    "numa_node without a newline": {DGPU_DIR + "/numa_node": "0"},
    "numa_node with spaces": {DGPU_DIR + "/numa_node": " 1 \n"},
    "numa_node not a number": {DGPU_DIR + "/numa_node": "one\n"},
    "an empty driver override": {DGPU_DIR + "/driver_override": "\n"},
    "driver_override missing": {DGPU_DIR + "/driver_override": None},
    "reset_method blank": {DGPU_DIR + "/reset_method": "\n"},
    "reset_method garbled": {DGPU_DIR + "/reset_method": "flr;bus\n"},
    "numa_node longer than a page": {DGPU_DIR + "/numa_node": "1" * 4095 + "\n" + "2" * 10},
    "uevent with CRLF": {DGPU_DIR + "/uevent": "DRIVER=nvidia\r\nPCI_CLASS=30000\r\nPCI_ID=10DE:1E04\r\n"
                                               "PCI_SUBSYS_ID=1458:37A9\r\n"},
    "uevent without its last newline": {DGPU_DIR + "/uevent": "DRIVER=nvidia\nPCI_CLASS=30000\nPCI_ID=10DE:1E04\n"
                                                              "PCI_SUBSYS_ID=1458:37A9"},
    "uevent with a non-ASCII line": {DGPU_DIR + "/uevent": "DRIVER=nvidia\nPCI_CLASS=30000\nPCI_ID=10DE:1E04\n"
                                                           "PCI_SUBSYS_ID=1458:37A9\nMODALIAS=pci:\u00e9\n"},
    "uevent of a full page": {DGPU_DIR + "/uevent": "DRIVER=nvidia\nPCI_CLASS=30000\nPCI_ID=10DE:1E04\n"
                                                    "PCI_SUBSYS_ID=1458:37A9\nX=" + "y" * 5000 + "\n"},
    "uevent missing": {DGPU_DIR + "/uevent": None},
    # Clean forms longer than the quick buffers: read whole by the careful readers.
    "uevent with device-tree lines": {DGPU_DIR + "/uevent": "DRIVER=nvidia\nPCI_CLASS=30000\nPCI_ID=10DE:1E04\n"
                                                            "PCI_SUBSYS_ID=1458:37A9\nPCI_SLOT_NAME=0000:01:00.0\n"
                                                            "MODALIAS=pci:v000010DEd00001E04sv00001458sd000037A9bc03sc00i00\n"
                                                            "OF_NAME=pci\nOF_FULLNAME=/soc/pcie@40000000/pci@0,0\n"
                                                            "OF_COMPATIBLE_0=pciclass,0604\nOF_COMPATIBLE_N=1\n"},
    "driver_override of a 64-character driver name": {DGPU_DIR + "/driver_override": "d" * 64 + "\n"},
}
ODD_LINKS = {
    "iommu_group with a trailing slash": {DGPU_DIR + "/iommu_group": "../../../../kernel/iommu_groups/1/"},
    "iommu_group dangling": {DGPU_DIR + "/iommu_group": "../../../../kernel/iommu_groups/99"},
    "iommu_group not a group": {DGPU_DIR + "/iommu_group": "../../../../kernel/iommu_groups/two"},
}


@pytest.mark.parametrize("case", sorted(ODD_FORMS) + sorted(ODD_LINKS))
def test_any_other_form_goes_through_the_careful_readers(make_host, monkeypatch, case):
    root = make_host("desktop_dgpu", files=ODD_FORMS.get(case), links=ODD_LINKS.get(case))

    taken, quick = quick_results(root, monkeypatch)

    assert taken[DGPU] is False, "the odd form is not taken quickly"
    assert taken["0000:01:00.1"] is True, "the GPU's audio function is"
    assert quick == careful(root, monkeypatch)


def test_the_quick_pass_reads_what_the_kernel_writes(make_host, monkeypatch):
    root = make_host("desktop_dgpu", files={DGPU_DIR + "/numa_node": "-1\n", DGPU_DIR + "/reset_method": "flr bus\n",
                                            DGPU_DIR + "/driver_override": "vfio-pci\n"})
    path = os.path.join(root, "sys/bus/pci/devices", DGPU)
    directory = pci.open_directory(path)
    held = [directory]
    try:
        device = pci._QuickPass().device(DGPU, path, directory, held)
    finally:
        pci.close_descriptors(held)
    assert device is not None
    assert len(held) == 5, "the directory, uevent, numa_node, driver_override and reset_method, left open"

    assert (device.vendor_id, device.device_id, device.class_code) == ("10de", "1e04", "030000")
    assert (device.subsystem_vendor_id, device.subsystem_device_id) == ("1458", "37a9")
    assert (device.driver, device.numa_node, device.driver_override) == ("nvidia", -1, "vfio-pci")
    assert device.reset_methods == ["flr", "bus"] and device.iommu_group is not None
    taken, quick = quick_results(root, monkeypatch)
    assert taken[DGPU] is True and quick == careful(root, monkeypatch)


def test_a_link_to_a_listed_group_needs_no_look_up_and_an_unlisted_one_is_checked(make_host, monkeypatch):
    root = make_host("desktop_dgpu")
    path = os.path.join(root, "sys/bus/pci/devices", DGPU)
    looked_up = []
    real_stat = os.stat
    monkeypatch.setattr(pci.os, "stat", lambda *args, **kwargs: looked_up.append(args[0]) or real_stat(*args, **kwargs))
    directory = pci.open_directory(path)
    held = [directory]
    try:
        group = pci._QuickPass().device(DGPU, path, directory, held).iommu_group
        assert looked_up == ["iommu_group/devices"], "no listing: the link is followed"
        looked_up.clear()
        assert pci._QuickPass({group}).device(DGPU, path, directory, held).iommu_group == group
        assert looked_up == [], "a listed group is taken as it is"
        assert pci._QuickPass({"999"}).device(DGPU, path, directory, held).iommu_group == group
        assert looked_up == ["iommu_group/devices"], "a group missing from the listing is followed"
    finally:
        pci.close_descriptors(held)


def test_a_model_seen_without_reset_method_is_still_looked_up_for_each_function(make_host, monkeypatch):
    # Functions of one model and driver, the first without reset_method: the next are looked up
    # before they are opened, and one that has it is read all the same.
    model = {"ids": "8086:0b23", "class": "088000", "driver": "uncore_sim"}
    methods = {"a0:00.0": [], "a0:00.1": ["pm"], "a0:00.2": [], "a0:00.3": ["flr", "bus"]}
    devices = [dict(model, address=address, reset_methods=found) for address, found in methods.items()]
    root = make_host({"summary": "four functions of one model", "devices": devices})
    opened, looked_up = [], []
    real_open, real_access = os.open, os.access
    monkeypatch.setattr(pci.os, "open", lambda name, *args, **kwargs: opened.append(name) or real_open(
        name, *args, **kwargs))
    monkeypatch.setattr(pci.os, "access", lambda name, *args, **kwargs: looked_up.append(name) or real_access(
        name, *args, **kwargs))

    taken, quick = quick_results(root, monkeypatch)

    assert all(taken.values())
    found = {entry["address"]: entry["reset_methods"] for entry in json.loads(quick)["devices"]}
    assert found == {"0000:" + address: expected for address, expected in methods.items()}
    assert opened.count("reset_method") == 3, "the first function, and the two found by the look-up"
    assert looked_up.count("reset_method") == 3, "every function after the first"
    monkeypatch.undo()
    assert quick == careful(root, monkeypatch)


def open_descriptors():
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("name", ["desktop_dgpu", "large_synthetic", "l40s_vgpu", "intel_gvtg"])
def test_detection_leaves_no_descriptor_open(make_host, monkeypatch, name):
    # Every device's attributes and its types' counts are closed together (close_range), through plain
    # paths too: whatever path a device takes, detection gives back each descriptor it opened.
    root = make_host(name)
    before = open_descriptors()
    detect(root)
    careful(root, monkeypatch)
    assert open_descriptors() == before


def test_detection_closes_descriptors_together_and_keeps_few_open(make_host, monkeypatch):
    # The descriptors of several devices (and of several mdev parents) are closed together, and no more
    # than a few devices' worth are open at any time.
    root = make_host("large_synthetic")
    opened, most, batches = set(), [0], {"pci": 0, "mdev": 0}
    real_open, real_close, real_closerange = os.open, os.close, os.closerange

    def counting_open(*args, **kwargs):
        descriptor = real_open(*args, **kwargs)
        opened.add(descriptor)
        most[0] = max(most[0], len(opened))
        return descriptor

    def counting_close(descriptor):
        opened.discard(descriptor)
        real_close(descriptor)

    def counting_closerange(low, high):
        opened.difference_update(range(low, high))
        real_closerange(low, high)

    def batch_of(name, close):
        def counted(descriptors):
            batches[name] += 1
            close(descriptors)
        return counted

    monkeypatch.setattr(os, "open", counting_open)
    monkeypatch.setattr(os, "close", counting_close)
    monkeypatch.setattr(os, "closerange", counting_closerange)
    monkeypatch.setattr(pci, "close_descriptors", batch_of("pci", pci.close_descriptors))
    monkeypatch.setattr(mdev_info, "close_descriptors", batch_of("mdev", mdev_info.close_descriptors))
    topology = detect(root)
    monkeypatch.undo()

    devices, parents = len(topology["devices"]), len(topology["mdev_parents"])
    assert not opened
    assert devices > 500 and parents > 50
    # A batch holds HELD_DESCRIPTORS descriptors (the last fewer), a device at most eight, a parent of this
    # host seven (its directory and its types' counts): a batch for several devices, or parents.
    assert batches["pci"] <= devices // (pci.HELD_DESCRIPTORS // 8) + 1, batches
    assert batches["mdev"] <= parents // (pci.HELD_DESCRIPTORS // 7) + 1, batches
    assert most[0] <= pci.HELD_DESCRIPTORS + 16


def test_a_failure_in_the_middle_of_a_batch_leaves_no_descriptor_open(make_host, monkeypatch):
    root = make_host("large_synthetic")
    real_read = pci._read_open_device
    count = [0]

    def failing(*args):
        count[0] += 1
        if count[0] == 100:
            raise RuntimeError("a defect")
        return real_read(*args)

    monkeypatch.setattr(pci, "_read_open_device", failing)
    before = open_descriptors()
    with pytest.raises(RuntimeError, match="a defect"):
        pci.read_pci_devices(root)
    assert open_descriptors() == before
