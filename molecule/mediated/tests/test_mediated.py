# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""After converge, the side effects and a reboot: the declared devices are there, as predicted."""

from __future__ import annotations

import json
import time

STATE = "/etc/gpuvirt/host-state.json"


def guest_mdevs(host):
    found = {}
    for value in host.file("/sys/bus/mdev/devices").listdir():
        link = "/sys/bus/mdev/devices/%s" % value
        parent = host.check_output("basename $(dirname $(readlink -f %s))" % link)
        found[value] = (parent, host.check_output("basename $(readlink %s/mdev_type)" % link))
    return found


def test_mdevs_are_the_predicted_ones_after_the_reboot(host, prediction):
    predicted = {m["uuid"]: (m["parent"], m["type"]) for m in prediction["mdevs"]}
    assert sorted(predicted.values()) == [("mbochs", "mbochs-medium"), ("mbochs", "mbochs-medium"), ("mdpy", "mdpy-hd")]
    assert guest_mdevs(host) == predicted


def test_nvme_vfs_are_back_unbound(host, layout, prediction):
    nvme = layout.address("nvme")
    base = "/sys/bus/pci/devices/%s" % nvme
    assert host.file(base + "/sriov_numvfs").content_string.strip() == "2"
    assert host.file(base + "/sriov_drivers_autoprobe").content_string.strip() == "0"
    predicted = [d for d in prediction["sriov"] if d["address"] == nvme][0]
    vfs = sorted(host.file(base + "/virtfn%d" % i).linked_to.split("/")[-1] for i in range(2))
    assert predicted["after"]["vfs"] == vfs
    for vf in vfs:
        assert not host.file("/sys/bus/pci/devices/%s/driver" % vf).exists


def test_state_file_records_the_declaration(host, layout):
    state = json.loads(host.file(STATE).content_string)
    assert state["sriov"] == {layout.address("nvme"): {"num_vfs": 2, "drivers_autoprobe": False}}
    assert {(e["parent"], e["type"]) for e in state["mdevs"].values()} == {
        ("mbochs", "mbochs-medium"),
        ("mdpy", "mdpy-hd"),
    }
    assert set(state["mdevs"]) == set(guest_mdevs(host))


def test_mdevctl_defines_them_for_auto_start(host):
    for value, (parent, type_id) in guest_mdevs(host).items():
        definition = json.loads(host.file("/etc/mdevctl.d/%s/%s" % (parent, value)).content_string)
        assert definition["mdev_type"] == type_id and definition["start"] == "auto"
    listed = host.check_output("mdevctl list --defined --dumpjson")
    for value in guest_mdevs(host):
        assert value in listed


def test_restore_unit_ran_this_boot_in_order(host, restore_status):
    unit = host.service("gpuvirt-restore.service")
    assert unit.is_enabled
    properties = host.check_output("systemctl show -p Type,Before,After,WantedBy,ActiveState gpuvirt-restore.service")
    assert "Type=oneshot" in properties and "ActiveState=active" in properties
    assert "libvirtd.service" in properties and "systemd-modules-load.service" in properties
    assert restore_status["ok"] is True and restore_status["failed"] == 0
    steps = [r["step"] for r in restore_status["results"]]
    assert steps.index("sriov") < steps.index("mdevs")
    assert len([s for s in steps if s == "mdevs"]) == 3
    vfs = [r for r in restore_status["results"] if r["step"] == "sriov"][0]
    assert vfs["message"].startswith("num_vfs 2 (was 0")  # the unit enabled them, nothing else did
    uptime = float(host.file("/proc/uptime").content_string.split()[0])
    assert 0 < restore_status["boot_to_restored_s"] < uptime  # measured in this boot
    journal = host.check_output("journalctl -b -u gpuvirt-restore.service --no-pager")
    assert "boot to restored: %.3f s" % restore_status["boot_to_restored_s"] in journal


def test_late_restore_unit_ran_after_it(host):
    """The late unit (MIG-backed vGPU types, after nvidia-mig-manager) on a host without either: real
    systemd takes its ordering against a unit that is not installed, runs it after the first unit and
    before libvirt, and it finds nothing to do."""
    assert host.service("gpuvirt-restore-late.service").is_enabled
    state = ""
    for _attempt in range(60):
        state = host.check_output("systemctl show --property=ActiveState --value gpuvirt-restore-late.service")
        if state != "activating":
            break
        time.sleep(1)
    assert state == "active"
    after = host.check_output("systemctl show --property=After --value gpuvirt-restore-late.service").split()
    assert "gpuvirt-restore.service" in after and "nvidia-mig-manager.service" in after
    before = host.check_output("systemctl show --property=Before --value gpuvirt-restore-late.service").split()
    assert "libvirtd.service" in before
    status = json.loads(host.file("/run/gpuvirt/restore-late.json").content_string)
    assert status["ok"] is True and status["items"] == 0
    first = json.loads(host.file("/run/gpuvirt/restore.json").content_string)
    assert status["started_s"] >= first["started_s"] + first["duration_s"] - 0.01
