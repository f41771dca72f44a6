# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""sriov finishes a VF hand-back an earlier run cut short.

A run killed between the unbind and the reprobe (SIGKILL, an OOM kill, a lost session) leaves the VF on no
driver, and nothing on the VF says it is to be handed back: only the note in ``/run/gpuvirt/handbacks.json``.
The next run that names the PF finishes it, unless it binds the VF or removes it, and under the same guards as
any hand-back: not from under a VM, and not where the kernel would not probe the VF (its PF's autoprobe off)."""

from __future__ import annotations

import errno
import json
import os
import re

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import vfio_bind
from ansible_collections.gpuvirt.host.plugins.module_utils.files import FileError
from ansible_collections.gpuvirt.host.tests.sim.nvidia_vgpu_sim import attach
from ansible_collections.gpuvirt.host.tests.sim.pci_kernel import PciKernel
from ansible_collections.gpuvirt.host.tests.sim.sriov_hosts import NVME, NVME_HOST, hold_group, recorded, snapshot
from ansible_collections.gpuvirt.host.tests.unit.plugins.modules.test_vfio_pci_undo import Killed, kill_at

VFS = ["0000:04:00.1", "0000:04:00.2"]
INTERRUPTED = ("%s was on no driver: an earlier run was stopped while handing it back to its host driver, between "
               "the unbind and the reprobe; " % VFS[0])


@pytest.fixture
def nvme(make_host):
    return make_host(NVME_HOST)


@pytest.fixture
def sriov(nvme, run_module):
    """Run the module on the NVMe host with the PCI core simulated (nvme takes the VFs back); returns
    (result, writes)."""

    def go(check_mode=False, kill=None, fail=None, force=False, **spec):
        sim, _kernel, _nvidia = attach(nvme)
        kernel = PciKernel(sim, host_drivers=dict.fromkeys(VFS, "nvme"))
        if kill:
            kill_at(kernel, kill)
        if fail:
            def refuse(_match, _value):
                raise OSError(errno.EIO, os.strerror(errno.EIO))

            sim.handlers.insert(0, (re.compile(fail), refuse))
        with sim.active():
            result = run_module("sriov", {"root": nvme, "delay": 0, "force": force,
                                          "devices": [dict(spec, selector=NVME)]}, check_mode=check_mode)
        return result, sim.writes

    return go


def killed(nvme, sriov, **first):
    """Two VFs on vfio-pci, then a hand-back killed before the first VF's reprobe."""
    sriov(num_vfs=2, vfio=True, **first)
    with pytest.raises(Killed):
        sriov(kill=r"sys/bus/pci/drivers_probe\Z", vfio=False)
    assert drivers(nvme) == [None, "vfio-pci"]
    assert vfio_bind.interrupted_handbacks(nvme) == [VFS[0]]


def drivers(root):
    return [vfio_bind.read_driver(root, vf) for vf in VFS]


def warned(result):
    return json.dumps(result.get("warnings") or [])


@pytest.mark.parametrize("vfio", [None, False], ids=["vfio-not-given", "vfio-false"])
def test_the_next_run_finishes_the_hand_back(nvme, sriov, vfio):
    killed(nvme, sriov)
    spec = {"drivers_autoprobe": True} if vfio is None else {"vfio": False}
    before = snapshot(nvme)
    predicted, writes = sriov(check_mode=True, **spec)
    assert not predicted.failed and predicted["changed"] is True and writes == [], predicted
    assert snapshot(nvme) == before
    assert INTERRUPTED + "this run would hand it back" in warned(predicted)

    done, writes = sriov(**spec)
    assert not done.failed and done["changed"] is True, done
    assert ("sys/bus/pci/drivers_probe", VFS[0]) in writes
    assert drivers(nvme) == ["nvme", "vfio-pci" if vfio is None else "nvme"]
    assert INTERRUPTED + "handed back, it is now bound to nvme" in warned(done)
    assert not os.path.exists(os.path.join(nvme, vfio_bind.HANDBACKS))
    # The prediction is the real outcome but for the driver a VF going back to its host driver gets, which only
    # the kernel's probe tells (null, as for any VF handed back from vfio-pci).
    after = done["devices"][0]["after"]
    handed_back = dict.fromkeys(VFS[:1] if vfio is None else VFS)
    assert predicted["devices"][0]["after"] == dict(after, vf_drivers=dict(after["vf_drivers"], **handed_back))
    # With vfio not given the record keeps vfio: true from the first run: the restore binds the VF again at boot.
    record = "the state file records vfio: true for %s, so the boot-time restore puts %s on vfio-pci again" % (
        NVME, VFS[0])
    assert (record in warned(done)) is (vfio is None)
    assert recorded(nvme)["sriov"][NVME].get("vfio") is (True if vfio is None else None)

    again, writes = sriov(**spec)
    assert again["changed"] is False and writes == [] and "earlier run" not in warned(again), again


@pytest.mark.parametrize("spec", [{"vfio": True}, {"num_vfs": 3}, {"num_vfs": 1, "vfio": False}],
                         ids=["bound", "count-up", "count-down"])
def test_a_run_that_binds_or_removes_the_vf_leaves_nothing_to_finish(nvme, sriov, spec):
    killed(nvme, sriov)
    predicted, _writes = sriov(check_mode=True, **spec)
    done, writes = sriov(**spec)
    assert not done.failed and predicted["changed"] is done["changed"] is True, done
    assert "earlier run" not in warned(predicted) + warned(done)
    if "vfio" in spec and spec["vfio"]:
        assert drivers(nvme) == ["vfio-pci", "vfio-pci"]
    assert not os.path.exists(os.path.join(nvme, vfio_bind.HANDBACKS))
    again, writes = sriov(**spec)
    assert again["changed"] is False and writes == []


def test_with_the_pfs_autoprobe_off_the_vf_is_left_and_so_is_its_note(nvme, sriov):
    # The kernel offers a VF of a PF with sriov_drivers_autoprobe 0 to no driver, drivers_probe or not.
    killed(nvme, sriov, drivers_autoprobe=False)
    before = snapshot(nvme)
    for check_mode in (True, False):
        result, writes = sriov(check_mode=check_mode, drivers_autoprobe=False)
        assert not result.failed and result["changed"] is False and writes == [], result
        assert ("%s is on no driver" % VFS[0]) in warned(result) and "set drivers_autoprobe: true" in warned(result)
    assert snapshot(nvme) == before and vfio_bind.interrupted_handbacks(nvme) == [VFS[0]]
    done, writes = sriov(drivers_autoprobe=True)
    assert done["changed"] is True and drivers(nvme) == ["nvme", "vfio-pci"], done
    assert [path for path, _value in writes][:1] == ["sys/bus/pci/devices/%s/sriov_drivers_autoprobe" % NVME]


def test_a_vf_whose_group_a_vm_holds_is_not_handed_back_unless_forced(nvme, sriov):
    killed(nvme, sriov)
    hold_group(nvme, VFS[0])
    before = snapshot(nvme)
    for check_mode in (True, False):
        refused, writes = sriov(check_mode=check_mode, drivers_autoprobe=True)
        assert refused.failed and refused["changed"] is False and writes == [], refused
        assert "%s: process 4242 (qemu-system-x86) holds its VFIO" % VFS[0] in refused["msg"]
        assert "earlier run" not in warned(refused)
    assert snapshot(nvme) == before
    forced, writes = sriov(drivers_autoprobe=True, force=True)
    assert not forced.failed and ("sys/bus/pci/drivers_probe", VFS[0]) in writes, forced


def test_a_failed_reprobe_fails_the_run_with_nothing_changed(nvme, sriov):
    killed(nvme, sriov)
    failed, _writes = sriov(drivers_autoprobe=True, fail=r"sys/bus/pci/drivers_probe\Z")
    assert failed.failed and failed["changed"] is False, failed
    assert failed["msg"].startswith("an earlier run was stopped while handing %s back; finishing that failed: "
                                    % VFS[0])
    assert drivers(nvme) == [None, "vfio-pci"] and vfio_bind.interrupted_handbacks(nvme) == [VFS[0]]


def test_a_failure_after_the_reprobe_says_the_vf_was_handed_back(nvme, sriov, monkeypatch):
    # /run read-only or full: the note of the finished hand-back cannot be dropped, but the VF is on nvme.
    killed(nvme, sriov)

    def refuse(*_args, **_kwargs):
        raise FileError("read-only file system")

    monkeypatch.setattr(vfio_bind, "remove_file", refuse)
    monkeypatch.setattr(vfio_bind, "write_file", refuse)
    failed, _writes = sriov(drivers_autoprobe=True)
    assert failed.failed and failed["changed"] is True, failed
    assert "done before: %s handed back, finishing an earlier run's hand-back, now on nvme" % VFS[0] in failed["msg"]
    assert drivers(nvme) == ["nvme", "vfio-pci"]


def test_notes_that_cannot_be_read_are_warned_about_where_a_vf_is_on_no_driver(nvme, sriov):
    killed(nvme, sriov)
    with open(os.path.join(nvme, vfio_bind.HANDBACKS), "w", encoding="utf-8") as handle:
        handle.write("{not json")
    result, writes = sriov(check_mode=True, drivers_autoprobe=True)
    assert not result.failed and writes == []
    assert "a hand-back an earlier run left unfinished cannot be told from it" in warned(result)
    assert "/sys/bus/pci/drivers/vfio-pci/remove_id" in warned(result)
