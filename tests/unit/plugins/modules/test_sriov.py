# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest

from ansible_collections.gpuvirt.host.tests.sim.nvidia_vgpu_sim import attach
from ansible_collections.gpuvirt.host.tests.sim.pci_kernel import PciKernel
from ansible_collections.gpuvirt.host.tests.sim.sriov_hosts import (
    NVME,
    NVME_HOST,
    STATE,
    hold_group,
    recorded,
    snapshot,
)

A100 = "0000:b1:00.0"


@pytest.fixture
def nvme(make_host):
    return make_host(NVME_HOST)


@pytest.fixture
def run(run_module):
    """Run the module with the simulated kernel reacting to its writes; returns (result, writes)."""

    def runner(root, check_mode=False, diff=False, pci=False, **args):
        sim, _kernel, _nvidia = attach(root)
        if pci:  # the PCI core's driver binding too, for vfio
            PciKernel(sim)
        args.setdefault("delay", 0)
        with sim.active():
            result = run_module("sriov", dict(args, root=root), check_mode=check_mode, diff=diff)
        return result, sim.writes

    return runner


def test_enable_vfs_check_mode_predicts_then_run_then_idempotent(nvme, run):
    devices = [{"selector": "QEMU NVM Express", "num_vfs": 2}]
    before = snapshot(nvme)
    predicted, writes = run(nvme, check_mode=True, diff=True, devices=devices)
    assert predicted["changed"] is True and writes == [] and snapshot(nvme) == before
    assert predicted["devices"][0]["after"]["vfs"] == ["0000:04:00.1", "0000:04:00.2"]

    result, writes = run(nvme, diff=True, devices=devices)
    assert result["changed"] is True and writes == [("sys/bus/pci/devices/0000:04:00.0/sriov_numvfs", "2")]
    assert result["devices"] == predicted["devices"]
    assert result["diff"] == predicted["diff"]
    assert "0000:04:00.0 num_vfs=0 drivers_autoprobe=1" in result["diff"][0]["before"]
    assert "0000:04:00.0 num_vfs=2 drivers_autoprobe=1" in result["diff"][0]["after"]
    assert recorded(nvme)["sriov"] == {NVME: {"num_vfs": 2}}
    assert result["state_file"] == {"path": os.path.join(nvme, STATE), "changed": True}

    again, writes = run(nvme, devices=devices)
    assert again["changed"] is False and writes == []
    checked, writes = run(nvme, check_mode=True, devices=devices)
    assert checked["changed"] is False and writes == []


def test_a_new_count_goes_through_zero(nvme, run):
    run(nvme, devices=[{"selector": NVME, "num_vfs": 2}])
    result, writes = run(nvme, devices=[{"selector": "04:00.0", "num_vfs": 3}])
    assert [value for _path, value in writes] == ["0", "3"]
    assert result["devices"][0]["before"]["num_vfs"] == 2
    assert result["devices"][0]["after"]["vfs"] == ["0000:04:00.1", "0000:04:00.2", "0000:04:00.3"]
    assert recorded(nvme)["sriov"][NVME] == {"num_vfs": 3}


def test_a_vf_in_use_blocks_the_change_and_nothing_changes(nvme, run):
    run(nvme, devices=[{"selector": NVME, "num_vfs": 2}])
    hold_group(nvme, "0000:04:00.2")
    before = snapshot(nvme)
    for check_mode in (True, False):
        result, writes = run(nvme, check_mode=check_mode, devices=[{"selector": NVME, "num_vfs": 4}])
        assert result.failed and result["changed"] is False and writes == []
        assert "0000:04:00.2: process 4242 (qemu-system-x86) holds its VFIO device" in result["msg"]
        assert "force: true" in result["msg"] and "Nothing was changed" in result["msg"]
    assert snapshot(nvme) == before
    # autoprobe alone does not touch the VFs, so it is allowed.
    result, writes = run(nvme, devices=[{"selector": NVME, "drivers_autoprobe": False}])
    assert result["changed"] is True and [v for _p, v in writes] == ["0"]


def test_force_removes_vfs_with_mdevs_but_the_kernel_still_refuses_a_running_vm(make_host, run):
    root = make_host("datacenter_a100")
    result, writes = run(root, devices=[{"selector": "A100", "num_vfs": 20}])
    assert result.failed and "0000:b1:00.4: mdev 6c3e1ab4" in result["msg"] and writes == []
    # The mdev is open by process 31337 (a VM): forcing reaches the kernel, which refuses.
    result, writes = run(root, devices=[{"selector": "A100", "num_vfs": 20}], force=True)
    assert result.failed and "Device or resource busy" in result["msg"]
    assert [v for _p, v in writes] == ["0"]
    assert len(os.listdir(os.path.join(root, "sys/bus/mdev/devices"))) == 1
    # Once the VM is gone, force removes the VFs with the mdev on them.
    for name in os.listdir(os.path.join(root, "proc/31337/fd")):
        os.unlink(os.path.join(root, "proc/31337/fd", name))
    result, writes = run(root, devices=[{"selector": "10de:20f1", "num_vfs": 20}], force=True)
    assert result["changed"] is True and [v for _p, v in writes] == ["0", "20"]
    assert "forced: 0000:b1:00.0 has VFs in use" in json.dumps(result["warnings"])
    assert "NVIDIA GPU on the nvidia driver" in json.dumps(result["warnings"])
    assert os.listdir(os.path.join(root, "sys/bus/mdev/devices")) == []
    assert len(result["devices"][0]["after"]["vfs"]) == 20


def test_an_mdev_open_only_through_its_iommufd_cdev_counts_as_in_use(make_host, run):
    uuid = "6c3e1ab4-4a52-4e2c-9a3e-0a4d9c1e2f01"
    cdev_holder = {"pid": 77, "comm": "qemu-kvm", "holds": ["devices/vfio5"], "cdev_devices": {"vfio5": "mdev:" + uuid}}
    root = make_host("datacenter_a100", processes=[cdev_holder])
    result, writes = run(root, devices=[{"selector": "A100", "num_vfs": 20}])
    assert result.failed and writes == []
    reason = "mdev %s (nvidia-471) exists on it and is open by process 77 (qemu-kvm)" % uuid
    assert "0000:b1:00.4: " + reason in result["msg"]


def test_above_totalvfs_fails_with_the_numbers(nvme, run):
    result, writes = run(nvme, devices=[{"selector": NVME, "num_vfs": 5}])
    assert result.failed and writes == []
    assert "num_vfs 5 is above its sriov_totalvfs 4" in result["msg"]
    assert not os.path.exists(os.path.join(nvme, STATE))


def test_autoprobe_off_leaves_new_vfs_unbound_and_is_recorded(nvme, run):
    devices = [{"selector": NVME, "num_vfs": 1, "drivers_autoprobe": False}]
    result, writes = run(nvme, devices=devices)
    assert [(p.rsplit("/", 1)[1], v) for p, v in writes] == [("sriov_drivers_autoprobe", "0"), ("sriov_numvfs", "1")]
    assert not os.path.lexists(os.path.join(nvme, "sys/bus/pci/devices/0000:04:00.1/driver"))
    assert recorded(nvme)["sriov"][NVME] == {"num_vfs": 1, "drivers_autoprobe": False}
    result, writes = run(nvme, devices=[{"selector": NVME, "num_vfs": 0, "drivers_autoprobe": False}])
    assert recorded(nvme)["sriov"][NVME] == {"num_vfs": 0, "drivers_autoprobe": False}
    result, writes = run(nvme, devices=[{"selector": NVME, "drivers_autoprobe": True}])
    assert NVME not in recorded(nvme)["sriov"]


def test_vfio_alone_hands_the_vfs_back_and_takes_them_again(nvme, run):
    """``vfio`` without a count moves the VFs that exist; with autoprobe off no driver probes them on the way back."""
    vfs = ["0000:04:00.1", "0000:04:00.2"]
    done, _writes = run(nvme, pci=True, devices=[{"selector": NVME, "num_vfs": 2, "drivers_autoprobe": False,
                                                  "vfio": True}])
    assert done["devices"][0]["after"]["vf_drivers"] == dict.fromkeys(vfs, "vfio-pci"), done
    devices = [{"selector": NVME, "vfio": False}]
    predicted, writes = run(nvme, pci=True, check_mode=True, devices=devices)
    assert not predicted.failed and predicted["changed"] is True and writes == [], predicted
    assert predicted["devices"][0]["after"]["vf_drivers"] == dict.fromkeys(vfs)
    released, writes = run(nvme, pci=True, devices=devices)
    assert released["changed"] is True and released["devices"] == predicted["devices"]
    assert not any(p.endswith("sriov_numvfs") for p, _value in writes)  # the count stays
    assert not any(os.path.lexists(os.path.join(nvme, "sys/bus/pci/devices", vf, "driver")) for vf in vfs)
    assert recorded(nvme)["sriov"][NVME] == {"num_vfs": 2, "drivers_autoprobe": False}
    again, writes = run(nvme, pci=True, devices=devices)
    assert again["changed"] is False and writes == []
    taken, _writes = run(nvme, pci=True, devices=[{"selector": NVME, "vfio": True}])
    assert taken["changed"] is True and taken["devices"][0]["after"]["vf_drivers"] == dict.fromkeys(vfs, "vfio-pci")
    assert recorded(nvme)["sriov"][NVME] == {"num_vfs": 2, "drivers_autoprobe": False, "vfio": True}


def test_persistence_keeps_other_sections_and_can_be_turned_off(nvme, run):
    os.makedirs(os.path.join(nvme, "etc/gpuvirt"))
    other = {
        "version": 1,
        "sriov": {"0000:99:00.0": {"num_vfs": 8}},
        "nvidia_vgpu": {"0000:99:00.4": {"type_id": 1030, "type_name": "NVIDIA L40S-1B"}},
        "mdevs": {},
    }
    with open(os.path.join(nvme, STATE), "w") as handle:
        json.dump(other, handle)
    run(nvme, devices=[{"selector": NVME, "num_vfs": 1}], persistent=False)
    assert recorded(nvme) == other
    run(nvme, devices=[{"selector": NVME, "num_vfs": 2}])
    state = recorded(nvme)
    assert state["sriov"] == {"0000:99:00.0": {"num_vfs": 8}, NVME: {"num_vfs": 2}}
    assert state["nvidia_vgpu"] == other["nvidia_vgpu"]
    result, _writes = run(nvme, devices=[{"selector": NVME, "num_vfs": 0}])
    assert result["changed"] is True and recorded(nvme)["sriov"] == {"0000:99:00.0": {"num_vfs": 8}}


def test_recording_an_existing_count(nvme, run):
    run(nvme, devices=[{"selector": NVME, "num_vfs": 3}], persistent=False)
    result, writes = run(nvme, devices=[{"selector": NVME, "drivers_autoprobe": True}])
    assert writes == [] and result["changed"] is True  # only the state file
    assert recorded(nvme)["sriov"][NVME] == {"num_vfs": 3, "drivers_autoprobe": True}


@pytest.mark.parametrize("devices", [[], [{"selector": NVME, "num_vfs": 0}]], ids=["no-devices", "zero-vfs"])
def test_a_run_with_nothing_to_keep_makes_no_state_file(nvme, run, devices):
    before = snapshot(nvme)
    predicted, _writes = run(nvme, check_mode=True, devices=devices)
    result, writes = run(nvme, devices=devices)
    assert predicted["changed"] is False and result["changed"] is False and writes == [], result
    assert snapshot(nvme) == before and not os.path.exists(os.path.join(nvme, "etc/gpuvirt/host-state.json"))


@pytest.mark.parametrize(
    "devices, message",
    [
        ([{"selector": "0000:09:00.0", "num_vfs": 1}], "no PCI device 0000:09:00.0"),
        ([{"selector": "05:00.0", "num_vfs": 1}], "no SR-IOV capability"),
        ([{"selector": "H100", "num_vfs": 1}], "the SR-IOV physical functions here: 0000:04:00.0"),
        ([{"selector": NVME, "num_vfs": 1}, {"selector": "1b36:0010", "num_vfs": 2}], "selected twice"),
        ([{"selector": NVME}], "give num_vfs, drivers_autoprobe, vfio or any of them together"),
        ([{"selector": NVME, "num_vfs": -1}], "must be 0 or more"),
    ],
)
def test_bad_input_fails_clearly_and_changes_nothing(nvme, run, devices, message):
    before = snapshot(nvme)
    result, writes = run(nvme, devices=devices)
    assert result.failed and message in result["msg"] and writes == []
    assert snapshot(nvme) == before


def test_a_pf_without_driver_and_a_tree_that_is_not_linux(make_host, run, tmp_path):
    root = make_host(dict(NVME_HOST, patch_devices={"04:00.0": {"driver": None}}))
    result, writes = run(root, devices=[{"selector": NVME, "num_vfs": 1}])
    assert result.failed and "has no driver bound" in result["msg"] and writes == []
    empty = tmp_path / "empty"
    empty.mkdir()
    result, _writes = run(str(empty), devices=[{"selector": NVME, "num_vfs": 1}])
    assert result.failed and "does not look like a Linux filesystem tree" in result["msg"]


def test_a_broken_state_file_fails_before_any_change(nvme, run):
    os.makedirs(os.path.join(nvme, "etc/gpuvirt"))
    with open(os.path.join(nvme, STATE), "w") as handle:
        handle.write("{not json")
    result, writes = run(nvme, devices=[{"selector": NVME, "num_vfs": 1}])
    assert result.failed and "cannot read the state file" in result["msg"] and writes == []


def test_a_state_directory_linked_out_of_root_is_refused(nvme, run, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.makedirs(os.path.join(nvme, "etc"), exist_ok=True)
    os.symlink(os.path.relpath(str(outside), os.path.join(nvme, "etc")), os.path.join(nvme, "etc/gpuvirt"))
    before = snapshot(nvme)
    result, writes = run(nvme, devices=[{"selector": NVME, "num_vfs": 2}])
    assert result["failed"] and result["changed"] is False and writes == []
    assert "leads out of root" in result["msg"]
    assert os.listdir(str(outside)) == [] and snapshot(nvme) == before


def test_an_absolute_state_directory_link_stays_below_root(nvme, run, tmp_path):
    os.makedirs(os.path.join(nvme, "etc"), exist_ok=True)
    os.symlink(str(tmp_path / "outside"), os.path.join(nvme, "etc/gpuvirt"))
    result, _writes = run(nvme, devices=[{"selector": NVME, "num_vfs": 2}])
    assert result["changed"] is True and not (tmp_path / "outside").exists()
    with open(os.path.join(nvme, str(tmp_path / "outside").lstrip("/"), "host-state.json")) as handle:
        assert json.load(handle)["sriov"] == {NVME: {"num_vfs": 2}}


def test_unknown_users_block_removing_vfs_but_not_creating_them(nvme, run, unreadable_fds):
    """A process whose open files cannot be read may hold any VF: removing or moving VFs is refused
    (check mode too) and changes nothing unless forced; creating VFs where there are none is not held up."""
    run(nvme, devices=[{"selector": NVME, "num_vfs": 2}])
    hold_group(nvme, "0000:04:00.2", pid=4242)  # /dev/vfio/<group> exists: a VM could hold it
    os.unlink(os.path.join(nvme, "proc/4242/fd/30"))  # though QEMU let go, the scan cannot tell
    unreadable_fds(nvme, {4242: errno.EACCES})
    before = snapshot(nvme)
    for check_mode in (True, False):
        result, writes = run(nvme, check_mode=check_mode, devices=[{"selector": NVME, "num_vfs": 4}])
        assert result.failed and result["changed"] is False and writes == [], result
        assert "the VFs of 0000:04:00.0 (0000:04:00.1, 0000:04:00.2)" in result["msg"]
        assert "the open files of 1 process could not be read (qemu-system-x86 (pid 4242))" in result["msg"]
        assert "CAP_SYS_PTRACE" in result["msg"] and "Nothing was changed" in result["msg"]
    assert snapshot(nvme) == before
    result, writes = run(nvme, pci=True, devices=[{"selector": NVME, "vfio": True}])
    assert result.failed and writes == [] and "whether a VM does cannot be told" in result["msg"]

    result, writes = run(nvme, devices=[{"selector": NVME, "num_vfs": 0}], force=True)
    assert result["changed"] is True and [v for _p, v in writes] == ["0"], result
    assert "forced: it would take the VFs of 0000:04:00.0" in json.dumps(result["warnings"])
    result, writes = run(nvme, devices=[{"selector": NVME, "num_vfs": 2}])
    assert result["changed"] is True and [v for _p, v in writes] == ["2"], result
    assert "warnings" not in result


def test_processes_proc_hides_block_removing_vfs(nvme, run, hidepid):
    """/proc mounted with hidepid=2 and read without CAP_SYS_PTRACE: the VM holding a VF is not listed."""
    run(nvme, devices=[{"selector": NVME, "num_vfs": 2}])
    hold_group(nvme, "0000:04:00.2", pid=4242)
    hidepid(nvme, options="rw,hidepid=2")
    before = snapshot(nvme)
    result, writes = run(nvme, devices=[{"selector": NVME, "num_vfs": 4}])
    assert result.failed and result["changed"] is False and writes == [], result
    assert "/proc is mounted with hidepid=2 and this run lacks CAP_SYS_PTRACE" in result["msg"]
    assert snapshot(nvme) == before
    result, writes = run(nvme, devices=[{"selector": NVME, "num_vfs": 0}], force=True)
    assert result["changed"] is True and [v for _p, v in writes] == ["0"], result


def test_a_process_that_exited_does_not_block_the_count(nvme, run, unreadable_fds):
    run(nvme, devices=[{"selector": NVME, "num_vfs": 2}])
    hold_group(nvme, "0000:04:00.1", pid=4242)
    hold_group(nvme, "0000:04:00.2", pid=4300)
    os.unlink(os.path.join(nvme, "proc/4242/fd/30"))
    shutil.rmtree(os.path.join(nvme, "proc/4300/fd"))  # exited after proc was listed: ENOENT
    unreadable_fds(nvme, {4242: errno.EACCES})
    result, writes = run(nvme, devices=[{"selector": NVME, "num_vfs": 4}])
    assert result.failed and "the open files of 1 process could not be read" in result["msg"]
    unreadable_fds(nvme, {4242: errno.ENOENT})  # and now 4242 too
    result, writes = run(nvme, devices=[{"selector": NVME, "num_vfs": 4}])
    assert result["changed"] is True and [v for _p, v in writes] == ["0", "4"], result
