# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""After the reboot: gpuvirt-restore.service made the NVMe VFs again and its vfio step, after its sriov
step, handed them to vfio-pci by address; then ``vfio: false`` hands them back, left unbound because
autoprobe is off, exactly as check mode predicted, and ``vfio: true`` takes the VFs that exist."""

from __future__ import annotations

import json

import pytest
from guest import driver, group, run_module

STATE = "/etc/gpuvirt/host-state.json"


@pytest.fixture(scope="module")
def pf(layout):
    return layout.role("sriov_pf")[0]["address"]


@pytest.fixture(scope="module")
def vfs(host, pf):
    links = [host.file("/sys/bus/pci/devices/%s/virtfn%d" % (pf, index)) for index in range(3)]
    assert [link.exists for link in links] == [True, True, False]
    return [link.linked_to.split("/")[-1] for link in links[:2]]


def _sriov(host, pf, vfio, check=False):
    return run_module(host, "gpuvirt.host.sriov", {"devices": [{"selector": pf, "vfio": vfio}]}, check=check)


def _recorded(host, pf):
    return json.loads(host.file(STATE).content_string)["sriov"][pf]


def test_the_restore_made_the_vfs_and_bound_them_in_this_boot(host, pf, vfs, restore_status):
    properties = host.check_output("systemctl show -p ActiveState,UnitFileState gpuvirt-restore.service")
    assert "ActiveState=active" in properties and "UnitFileState=enabled" in properties
    assert restore_status["ok"] is True and restore_status["failed"] == 0, restore_status
    mine = [r for r in restore_status["results"] if r["item"] == pf]
    assert [r["step"] for r in mine] == ["driver", "sriov", "vfio"]
    assert all(r["ok"] for r in mine), mine
    assert mine[1]["message"].startswith("num_vfs 2 (was 0")  # the unit made the VFs; nothing else did
    # "2 bound, 0 already": the restore moved both; no boot configuration had put them on vfio-pci.
    bound = "2 VF(s) on vfio-pci (%s), read back: 2 bound, 0 already" % ", ".join(vfs)
    assert mine[2]["message"].startswith(bound), mine[2]
    assert mine[1]["at"] <= mine[2]["at"]
    uptime = float(host.file("/proc/uptime").content_string.split()[0])
    assert 0 < restore_status["boot_to_restored_s"] < uptime
    journal = host.check_output("journalctl -b -u gpuvirt-restore.service --no-pager")
    assert "vfio %s: %s" % (pf, bound) in journal


def test_the_vfs_are_on_vfio_pci_each_in_an_iommu_group(host, pf, vfs):
    base = "/sys/bus/pci/devices/%s" % pf
    assert host.file(base + "/sriov_numvfs").content_string.strip() == "2"
    assert host.file(base + "/sriov_drivers_autoprobe").content_string.strip() == "0"
    for vf in vfs:
        assert driver(host, vf) == "vfio-pci", vf
        # Runtime state, so set in this boot: by address, not by an ID that the PF shares.
        assert host.file("/sys/bus/pci/devices/%s/driver_override" % vf).content_string.strip() == "vfio-pci"
        assert host.run("test -c /dev/vfio/%s", group(host, vf)).rc == 0, vf
    assert _recorded(host, pf) == {"num_vfs": 2, "drivers_autoprobe": False, "vfio": True}


def test_vfio_false_hands_them_back_unbound_as_predicted(host, pf, vfs):
    predicted = _sriov(host, pf, False, check=True)
    assert "msg" not in predicted and predicted["changed"] is True, predicted
    assert predicted["devices"][0]["after"]["vf_drivers"] == dict.fromkeys(vfs)
    assert all(driver(host, vf) == "vfio-pci" for vf in vfs)  # check mode changed nothing
    released = _sriov(host, pf, False)
    assert "msg" not in released and released["changed"] is True, released
    assert released["devices"] == predicted["devices"] and released["state_file"] == predicted["state_file"]
    for vf in vfs:
        # Autoprobe is off, so with its override cleared no driver may probe the VF (pci_device_can_probe).
        assert driver(host, vf) is None, vf
        assert host.file("/sys/bus/pci/devices/%s/driver_override" % vf).content_string.strip() == "(null)"
    assert host.file("/sys/bus/pci/devices/%s/sriov_numvfs" % pf).content_string.strip() == "2"
    assert _recorded(host, pf) == {"num_vfs": 2, "drivers_autoprobe": False}


def test_vfio_true_takes_the_vfs_that_exist(host, pf, vfs):
    taken = _sriov(host, pf, True)
    assert "msg" not in taken and taken["changed"] is True, taken
    assert taken["devices"][0]["before"]["vf_drivers"] == dict.fromkeys(vfs)
    assert taken["devices"][0]["after"]["vf_drivers"] == dict.fromkeys(vfs, "vfio-pci")
    assert [driver(host, vf) for vf in vfs] == ["vfio-pci", "vfio-pci"]
    assert _recorded(host, pf) == {"num_vfs": 2, "drivers_autoprobe": False, "vfio": True}


def test_vfio_pci_does_not_take_the_pf_that_carries_the_vfs(host, pf, vfs):
    # Unbinding nvme from the PF would disable its VFs under whatever holds them.
    refused = run_module(host, "gpuvirt.host.vfio_pci", {"devices": [pf], "persistent": False})
    assert refused.get("changed") is False, refused
    carved = [r for r in refused.get("refusals", []) if r["code"] == "carved"]
    assert [r["device"] for r in carved] == [pf], refused
    assert "has 2 virtual functions enabled (%s)" % ", ".join(vfs) in carved[0]["message"]
    assert driver(host, pf) == "nvme"
    assert host.file("/sys/bus/pci/devices/%s/sriov_numvfs" % pf).content_string.strip() == "2"
    assert [driver(host, vf) for vf in vfs] == ["vfio-pci", "vfio-pci"]
