# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``sriov`` against what vfio-pci takes at the next boot through the host's own configuration: a driverctl
override, or an ID in ``vfio-pci ids=`` (as ``vfio_pci`` persists them, ``runtime: false`` included, or set by
hand). A PF it takes cannot have VFs at boot, so recording VFs for it would have the boot-time restore fail at
every boot; VFs handed back that it takes would be on vfio-pci again after the reboot."""

from __future__ import annotations

import copy
import os

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import vfio
from ansible_collections.gpuvirt.host.tests.sim.boot import write
from ansible_collections.gpuvirt.host.tests.sim.nvidia_vgpu_sim import attach
from ansible_collections.gpuvirt.host.tests.sim.pci_kernel import PciKernel
from ansible_collections.gpuvirt.host.tests.sim.sriov_hosts import NVME, NVME_HOST, recorded, snapshot

VFS = ["0000:04:00.1", "0000:04:00.2"]


@pytest.fixture
def run(run_module):
    def runner(root, check_mode=False, **args):
        sim, _kernel, _nvidia = attach(root)
        PciKernel(sim)
        args.setdefault("delay", 0)
        with sim.active():
            return run_module("sriov", dict(args, root=root), check_mode=check_mode)

    return runner


def warnings_of(result):
    return [w if isinstance(w, str) else w["event"]["msg"] for w in result.get("warnings", [])]


CLAIMS = {
    "driverctl": ("etc/driverctl.d/pci-" + NVME, "vfio-pci\n", "driverctl override"),
    "modprobe": ("etc/modprobe.d/gpuvirt-vfio.conf", "options vfio-pci ids=1b36:0010\n", "ids= in"),
    "another modprobe file": ("etc/modprobe.d/local.conf", "options vfio_pci ids=10de:2236,1b36:0010\n",
                              "/etc/modprobe.d/local.conf"),
}


@pytest.mark.parametrize("claim", sorted(CLAIMS))
def test_vfs_for_a_pf_that_vfio_pci_takes_at_boot_are_refused(make_host, run, claim):
    root = make_host(NVME_HOST)
    path, text, named = CLAIMS[claim]
    write(root, path, text)
    before = snapshot(root)

    for check_mode in (True, False):
        result = run(root, check_mode=check_mode, devices=[{"selector": NVME, "num_vfs": 2}])
        assert result.failed, result
        assert NVME in result["msg"] and named in result["msg"] and "Nothing was changed" in result["msg"]
        assert snapshot(root) == before


def test_force_records_them_with_a_warning_and_without_persistence_nothing_is_recorded(make_host, run):
    root = make_host(NVME_HOST)
    write(root, "etc/driverctl.d/pci-" + NVME, "vfio-pci\n")

    runtime_only = run(root, devices=[{"selector": NVME, "num_vfs": 2}], persistent=False)
    assert not runtime_only.failed and runtime_only["changed"], runtime_only
    assert not os.path.exists(os.path.join(root, "etc/gpuvirt/host-state.json"))

    forced = run(root, devices=[{"selector": NVME, "num_vfs": 2}], force=True)
    assert not forced.failed, forced
    assert any(w.startswith("forced: " + NVME) for w in warnings_of(forced)), forced
    assert recorded(root)["sriov"][NVME]["num_vfs"] == 2


@pytest.mark.parametrize("option", [
    ("etc/modprobe.d/vfio.conf", "options vfio-pci enable_sriov=1\n"),
    ("etc/modprobe.d/vfio.conf", "options vfio_pci disable_vga=1 \\\n  enable_sriov=Y\n"),
])
def test_vfio_pci_with_enable_sriov_can_give_its_pf_vfs(make_host, run, option):
    root = make_host(NVME_HOST)
    write(root, "etc/driverctl.d/pci-" + NVME, "vfio-pci\n")
    write(root, *option)

    result = run(root, devices=[{"selector": NVME, "num_vfs": 2}])

    assert not result.failed and recorded(root)["sriov"][NVME]["num_vfs"] == 2, result


def test_a_pf_with_an_override_for_its_host_driver_or_no_vfs_is_not_refused(make_host, run):
    root = make_host(NVME_HOST)
    write(root, "etc/driverctl.d/pci-" + NVME, "nvme\n")
    assert not run(root, devices=[{"selector": NVME, "num_vfs": 2}]).failed

    other = make_host(NVME_HOST)
    write(other, "etc/driverctl.d/pci-" + NVME, "vfio-pci\n")
    assert not run(other, devices=[{"selector": NVME, "num_vfs": 0, "drivers_autoprobe": False}]).failed


def test_vfs_handed_back_that_an_override_takes_at_boot_are_warned_of(make_host, run):
    root = make_host(NVME_HOST)
    enabled = run(root, devices=[{"selector": NVME, "num_vfs": 2, "drivers_autoprobe": False, "vfio": True}])
    assert not enabled.failed, enabled
    write(root, "etc/driverctl.d/pci-" + VFS[1], "vfio-pci\n")

    released = run(root, devices=[{"selector": NVME, "vfio": False}])

    assert not released.failed, released
    warned = [w for w in warnings_of(released) if "vfio: false" in w]
    assert len(warned) == 1 and warned[0].startswith(VFS[1]) and "driverctl" in warned[0], released


def test_an_override_of_a_vf_removed_for_good_is_warned_of(make_host, run):
    root = make_host(NVME_HOST)
    assert not run(root, devices=[{"selector": NVME, "num_vfs": 2}]).failed
    write(root, "etc/driverctl.d/pci-" + VFS[1], "vfio-pci\n")

    lowered = run(root, devices=[{"selector": NVME, "num_vfs": 1}])

    assert not lowered.failed and lowered["changed"], lowered
    warned = [w for w in warnings_of(lowered) if "removes the VF" in w]
    assert len(warned) == 1 and warned[0].startswith(VFS[1]), lowered
    assert os.path.exists(os.path.join(root, "etc/driverctl.d/pci-" + VFS[1])), "another module's file is left"


# The kernel sets a bool module parameter given without a value (param_set_bool(NULL) -> true),
# on the command line as in a modprobe.d options line; kstrtobool also takes "t"/"T".
@pytest.mark.parametrize("cmdline, modprobe_text", [
    (["vfio_pci.enable_sriov"], None),
    (["vfio-pci.enable_sriov=1"], None),
    ([], "options vfio-pci enable_sriov\n"),
    ([], "options vfio_pci enable_sriov=T\n"),
])
def test_enable_sriov_spellings_the_kernel_accepts(make_host, cmdline, modprobe_text):
    root = make_host(NVME_HOST)
    if modprobe_text:
        write(root, "etc/modprobe.d/vfio.conf", modprobe_text)
    assert vfio.vfio_enables_sriov(root, cmdline) is True


@pytest.mark.parametrize("files", [
    # A bare bool parameter is set (param_set_bool()).
    {"etc/driverctl.d/pci-" + NVME: "vfio-pci\n", "etc/modprobe.d/vfio.conf": "options vfio-pci enable_sriov\n"},
    # A driverctl override naming the PF's own driver keeps vfio-pci off it, whatever ids= it is given.
    {"etc/driverctl.d/pci-" + NVME: "nvme\n", "etc/modprobe.d/local.conf": "options vfio-pci ids=1b36:0010\n"},
])
def test_a_pf_that_vfio_pci_leaves_its_vfs_to_at_boot_is_not_refused(make_host, run, files):
    root = make_host(NVME_HOST)
    for path, text in files.items():
        write(root, path, text)
    result = run(root, devices=[{"selector": NVME, "num_vfs": 2}])
    assert not result.failed, result["msg"]
    assert recorded(root)["sriov"][NVME]["num_vfs"] == 2


# vfio-pci built into the kernel ignores modprobe.d (vfio_pci refuses persistence: modprobe there
# for that reason): ids= in a modprobe.d file claims nothing at boot.
def test_modprobe_ids_claim_nothing_when_vfio_pci_is_built_in(make_host, run):
    host = copy.deepcopy(NVME_HOST)
    host["kernel"]["builtin"] = ["vfio", "vfio_pci"]
    host["kernel"]["modules"] = ["nvme"]
    root = make_host(host)
    write(root, "etc/modprobe.d/local.conf", "options vfio-pci ids=1b36:0010\n")
    result = run(root, devices=[{"selector": NVME, "num_vfs": 2}])
    assert not result.failed, result["msg"]


# modprobe passes the command line's vfio_pci.* options after those of modprobe.d (vfio_boot's own
# warning about vfio-pci.ids= says so), and the kernel keeps the last value: the command line decides.
def test_the_command_line_enable_sriov_is_applied_last(make_host):
    root = make_host(NVME_HOST)
    write(root, "etc/modprobe.d/vfio.conf", "options vfio-pci enable_sriov=1\n")
    assert vfio.vfio_enables_sriov(root, ["vfio_pci.enable_sriov=0"]) is False
