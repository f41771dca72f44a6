# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import nvidia_vgpu, sriov, sysfs
from ansible_collections.gpuvirt.host.plugins.module_utils.selector import SelectorError, select_devices
from ansible_collections.gpuvirt.host.tests.sim.nvidia_vgpu_sim import attach, fake_sriov_manage, sriov_manage_calls
from ansible_collections.gpuvirt.host.tests.sim.pci_kernel import PciKernel
from ansible_collections.gpuvirt.host.tests.sim.sriov_hosts import (
    NVME,
    NVME_HOST,
    all_vfs_enabled,
    devices_of,
    hold_group,
)
from ansible_collections.gpuvirt.host.tests.sim.sriov_kernel import NUMVFS

L40S = "0000:cb:00.0"
A100 = "0000:b1:00.0"


@pytest.fixture
def nvme(make_host):
    return make_host(NVME_HOST)


def num_vfs(root, pf):
    with open(os.path.join(root, "sys/bus/pci/devices", pf, "sriov_numvfs")) as handle:
        return int(handle.read())


class Runner:
    """What the module passes as ``runner``: ``run_command(argv) -> (rc, out, err)``."""

    def __init__(self):
        self.calls = []

    def run_command(self, argv):
        self.calls.append(argv)
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        return done.returncode, done.stdout, done.stderr


# -- reading ---------------------------------------------------------------------------------------


def test_read_sriov_of_a_physical_function(nvme):
    info = sriov.read_sriov(nvme, NVME)
    assert info["total_vfs"] == 4 and info["num_vfs"] == 0 and info["vfs"] == []
    assert info["driver"] == "nvme" and info["drivers_autoprobe"] is True
    assert (info["offset"], info["stride"]) == (1, 1)


def test_read_sriov_is_none_for_other_devices(nvme, make_host):
    assert sriov.read_sriov(nvme, "0000:05:00.0") is None
    assert sriov.read_sriov(nvme, "0000:09:00.0") is None
    l40s = make_host("l40s_vgpu")
    assert sriov.read_sriov(l40s, "0000:cb:00.4") is None  # a VF
    info = sriov.read_sriov(l40s, L40S)
    assert info["num_vfs"] == 8 and info["vfs"][0] == "0000:cb:00.4" and info["vfs"][-1] == "0000:cb:01.3"


def test_vf_addresses_follow_offset_and_stride(make_host):
    root = make_host("l40s_vgpu")
    predicted = sriov.vf_addresses(root, L40S, 8)
    assert predicted == sriov.read_sriov(root, L40S)["vfs"]
    assert sriov.vf_addresses(root, L40S, 12)[-1] == "0000:cb:01.7"
    assert sriov.vf_addresses(root, "0000:17:00.0", 2) == []  # no sriov_offset


# -- selectors -------------------------------------------------------------------------------------


def select_pfs(devices, text):
    """What the sriov module selects: SR-IOV physical functions (selector.select_devices)."""
    return select_devices(text, devices, "SR-IOV physical function", sriov.pf_reason)


@pytest.mark.parametrize(
    "selector", ["0000:04:00.0", "04:00.0", "00000000:04:00.0", "1b36:0010", "nvm express", "QEMU"]
)
def test_select_pfs_by_address_ids_or_model(nvme, selector):
    assert select_pfs(devices_of(nvme), selector) == [NVME]


@pytest.mark.parametrize(
    "selector, message",
    [
        ("05:00.0", "no SR-IOV capability"),
        ("82574L", "no SR-IOV capability"),
        ("09:00.0", "no PCI device 0000:09:00.0"),
        ("H100", "SR-IOV physical functions here: 0000:04:00.0 "),
        ("", "empty selector"),
    ],
)
def test_select_pfs_explains_what_is_wrong(nvme, selector, message):
    with pytest.raises(SelectorError, match=message.replace("(", r"\(").replace(")", r"\)")):
        select_pfs(devices_of(nvme), selector)


def test_select_pfs_refuses_a_vf_and_ambiguous_models(make_host):
    root = make_host("l40s_vgpu")
    with pytest.raises(SelectorError, match="virtual function of 0000:cb:00.0"):
        select_pfs(devices_of(root), "cb:00.5")
    big = make_host("large_synthetic")
    with pytest.raises(SelectorError, match="'NVIDIA' matches 2 different models"):
        select_pfs(devices_of(big), "NVIDIA")  # GA100 [A100 ...] and AD102GL [L40S]
    with pytest.raises(SelectorError, match="looks like an index"):
        select_pfs(devices_of(big), "1")
    assert len(select_pfs(devices_of(big), "L40S")) == 4


# -- in use ----------------------------------------------------------------------------------------


def test_vfs_in_use_names_processes_mdevs_and_vgpus(make_host):
    a100 = make_host("datacenter_a100")
    users = sriov.vfs_in_use(a100, A100)
    assert list(users) == ["0000:b1:00.4"]
    assert (
        "mdev 6c3e1ab4-4a52-4e2c-9a3e-0a4d9c1e2f01 (nvidia-471) exists on it and is open by process 31337"
        in (users["0000:b1:00.4"][0])
    )
    l40s = make_host("l40s_vgpu")
    assert sriov.vfs_in_use(l40s, L40S) == {
        "0000:cb:00.4": ["NVIDIA vGPU type 1041 is assigned to it (nvidia/current_vgpu_type)"]
    }
    hold_group(l40s, "0000:cb:00.6")
    users = sriov.vfs_in_use(l40s, L40S)
    assert users["0000:cb:00.6"][0].startswith("process 4242 (qemu-system-x86) holds its VFIO device")


# -- changing the count ----------------------------------------------------------------------------


def test_set_num_vfs_goes_through_zero(nvme):
    sim, _sriov, _nvidia = attach(nvme)
    with sim.active():
        assert sriov.set_num_vfs(nvme, NVME, 2, delay=0) is True
        assert sriov.read_sriov(nvme, NVME)["vfs"] == ["0000:04:00.1", "0000:04:00.2"]
        assert sriov.set_num_vfs(nvme, NVME, 3, delay=0) is True
        assert sriov.set_num_vfs(nvme, NVME, 3, delay=0) is False
    writes = [value for path, value in sim.writes if path.endswith("sriov_numvfs")]
    assert writes == ["2", "0", "3"]
    info = sriov.read_sriov(nvme, NVME)
    assert info["num_vfs"] == 3 and len(info["vfs"]) == 3
    # The new VFs are real devices: bound (autoprobe), with physfn and an IOMMU group of their own.
    vf = os.path.join(nvme, "sys/bus/pci/devices/0000:04:00.3")
    assert os.path.basename(os.readlink(vf + "/driver")) == "nvme"
    assert os.path.basename(os.readlink(vf + "/physfn")) == NVME
    assert os.path.isdir(vf + "/iommu_group/devices")


def test_the_simulated_kernel_refuses_like_the_real_one(nvme):
    sim, _sriov, _nvidia = attach(nvme)
    path = os.path.join(nvme, "sys/bus/pci/devices", NVME, "sriov_numvfs")
    with sim.active():
        sysfs.write_text(path, "2")
        for value, code in (("3", errno.EBUSY), ("5", errno.ERANGE), ("two", errno.EINVAL)):
            with pytest.raises(sysfs.SysfsWriteError) as error:
                sysfs.write_text(path, value)
            assert error.value.errno == code
        sysfs.write_text(path, "2")  # the same count: nothing happens
    assert num_vfs(nvme, NVME) == 2


def test_set_num_vfs_refuses_above_totalvfs_without_writing(nvme):
    sim, _sriov, _nvidia = attach(nvme)
    with sim.active(), pytest.raises(sriov.SriovError, match="num_vfs 5 is above sriov_totalvfs 4"):
        sriov.set_num_vfs(nvme, NVME, 5, delay=0)
    assert sim.writes == []


def test_set_num_vfs_without_a_driver_says_so(make_host):
    description = dict(NVME_HOST, patch_devices={"04:00.0": {"driver": None}})
    root = make_host(description)
    sim, _sriov, _nvidia = attach(root)
    with sim.active(), pytest.raises(sriov.SriovError, match="no driver is bound to the physical function"):
        sriov.set_num_vfs(root, NVME, 2, delay=0)


def test_failed_enable_restores_the_previous_count(nvme):
    sim, kernel, _nvidia = attach(nvme)
    with sim.active():
        sriov.set_num_vfs(nvme, NVME, 2, delay=0)
        kernel.configure(NVME, enable_error=errno.ENOMEM)
        with pytest.raises(sriov.SriovError) as error:
            sriov.set_num_vfs(nvme, NVME, 4, delay=0)
    message = str(error.value)
    assert "Cannot allocate memory" in message and "pci=realloc" in message
    # The kernel refuses every enable now, so the old count cannot come back either; it says so.
    assert "restoring the previous 2 VFs failed too" in message
    assert num_vfs(nvme, NVME) == 0


def test_read_back_catches_a_write_that_did_nothing(nvme):
    sim, _sriov, _nvidia = attach(nvme)
    # A kernel that accepts the write and does nothing.
    sim.handlers.insert(0, (NUMVFS, lambda match, value: None))
    with sim.active(), pytest.raises(sriov.SriovError, match="reads 0 with 0 virtfn link.*read back 4 times"):
        sriov.set_num_vfs(nvme, NVME, 2, retries=3, delay=0)


def test_set_drivers_autoprobe_reads_back(nvme):
    sim, _sriov, _nvidia = attach(nvme)
    with sim.active():
        assert sriov.set_drivers_autoprobe(nvme, NVME, False, delay=0) is True
        assert sriov.set_drivers_autoprobe(nvme, NVME, False, delay=0) is False
        sriov.set_num_vfs(nvme, NVME, 1, delay=0)
    assert sriov.read_sriov(nvme, NVME)["drivers_autoprobe"] is False
    # Without autoprobe the new VF stays unbound, as on a real host.
    assert not os.path.lexists(os.path.join(nvme, "sys/bus/pci/devices/0000:04:00.1/driver"))


def test_poll_is_bounded():
    sleeps = []
    value, ok = sriov.poll(lambda: 1, lambda v: v == 2, retries=3, delay=0.5, sleep=sleeps.append)
    assert (value, ok) == (1, False) and sleeps == [0.5, 0.5, 0.5]


# -- a vendor tool: NVIDIA's sriov-manage, run by sriov.enable_vfs_by_tool -----------------------------


@pytest.fixture
def l40s_off(make_host, tmp_path):
    """The L40S host with its VFs disabled, and the simulator knowing what the VFs offer."""
    root = make_host("l40s_vgpu", patch_devices={"cb:00.4": {"nvidia_vgpu": {"creatable": {}, "current": 0}}})
    sim, _kernel, nvidia = attach(root)
    with sim.active():
        sriov.set_num_vfs(root, L40S, 0, delay=0)
    assert nvidia.gpu(L40S)["framework"] == "per_vf"
    return root


@pytest.mark.parametrize("fail_first, lie_first", [(0, 0), (2, 0), (0, 2), (1, 1)])
def test_sriov_manage_is_retried_until_the_vfs_read_back(l40s_off, tmp_path, fail_first, lie_first):
    command = fake_sriov_manage(str(tmp_path / "bin"), l40s_off, fail_first=fail_first, lie_first=lie_first)
    sleeps = []
    result = nvidia_vgpu.enable_vfs_with_sriov_manage(
        Runner(), l40s_off, L40S, retries=4, delay=1.5, command=command, sleep=sleeps.append
    )
    attempts = fail_first + lie_first + 1
    assert result["changed"] is True and result["num_vfs"] == 32
    assert len(result["attempts"]) == attempts and sleeps == [1.5] * (attempts - 1)
    assert [a["rc"] for a in result["attempts"]] == [1] * fail_first + [0] * (lie_first + 1)
    assert len(sriov_manage_calls(l40s_off)) == attempts
    assert bool(result["warnings"]) == (attempts > 1)
    # The VFs offer the complete list again.
    with open(os.path.join(l40s_off, "sys/bus/pci/devices/0000:cb:04.3/nvidia/creatable_vgpu_types")) as handle:
        assert handle.read().count("NVIDIA L40S-") == 12


def test_sriov_manage_exit_status_is_not_trusted(l40s_off, tmp_path):
    command = fake_sriov_manage(str(tmp_path / "bin"), l40s_off, exit_code_when_enabled=1)
    result = nvidia_vgpu.enable_vfs_with_sriov_manage(Runner(), l40s_off, L40S, retries=3, delay=0, command=command)
    assert result["num_vfs"] == 32 and len(result["attempts"]) == 1
    assert "exited with 1 but the VFs are enabled" in result["warnings"][0]


def test_sriov_manage_gives_up_after_the_retries(l40s_off, tmp_path):
    command = fake_sriov_manage(str(tmp_path / "bin"), l40s_off, lie_first=10)
    with pytest.raises(sriov.SriovError) as error:
        nvidia_vgpu.enable_vfs_with_sriov_manage(Runner(), l40s_off, L40S, retries=3, delay=0, command=command)
    message = str(error.value)
    assert "in 3 attempts" in message and "attempt 3: exit 0, sriov_numvfs 0" in message
    assert num_vfs(l40s_off, L40S) == 0


def test_sriov_manage_enabling_fewer_vfs_than_the_gpu_offers_is_retried(l40s_off, tmp_path):
    """sriov-manage enables every VF: a run that leaves fewer than sriov_totalvfs did not succeed; the short
    count is disabled (the kernel enables VFs only from 0) and the tool run again."""
    command = fake_sriov_manage(str(tmp_path / "bin"), l40s_off, partial_first=1, partial_vfs=4)
    result = nvidia_vgpu.enable_vfs_with_sriov_manage(Runner(), l40s_off, L40S, retries=3, delay=0, command=command)
    assert result["num_vfs"] == 32 and [a["num_vfs"] for a in result["attempts"]] == [4, 32]
    assert [call[0] for call in sriov_manage_calls(l40s_off)] == ["-e", "-d", "-e"]
    assert "VFs enabled on attempt 2 of 3" in result["warnings"][0]
    assert num_vfs(l40s_off, L40S) == 32


def test_sriov_manage_that_keeps_enabling_fewer_vfs_fails_and_leaves_none(l40s_off, tmp_path):
    command = fake_sriov_manage(str(tmp_path / "bin"), l40s_off, partial_first=10, partial_vfs=4)
    with pytest.raises(sriov.SriovError) as error:
        nvidia_vgpu.enable_vfs_with_sriov_manage(Runner(), l40s_off, L40S, retries=3, delay=0, command=command)
    message = str(error.value)
    assert "enabled only 4 of the 32 VFs (sriov_totalvfs) of %s in 3 attempts" % L40S in message
    assert "attempt 3: exit 0, sriov_numvfs 4" in message
    assert "disabled them again (%s -d %s), so %s has no VFs, as before" % (command, L40S, L40S) in message
    assert num_vfs(l40s_off, L40S) == 0


def test_restore_pf_wants_at_least_the_recorded_count_from_sriov_manage(l40s_off, tmp_path):
    command = fake_sriov_manage(str(tmp_path / "bin"), l40s_off, partial_first=10, partial_vfs=8)
    runner = Runner()
    runner.get_bin_path = lambda name, opt_dirs=None: command if name == "sriov-manage" else "/usr/bin/" + name
    # 8 recorded: the 8 it enables are enough.
    assert sriov.restore_pf(l40s_off, L40S, 8, method="sriov_manage", runner=runner, retries=2, delay=0) is True
    assert num_vfs(l40s_off, L40S) == 8
    # 16 recorded: 8 are not; the short count is disabled and the tool run again, then it fails.
    with pytest.raises(sriov.SriovError, match="enabled only 8 of the 16 VFs \\(recorded\\) of %s" % L40S):
        sriov.restore_pf(l40s_off, L40S, 16, method="sriov_manage", runner=runner, retries=2, delay=0)
    assert [call[0] for call in sriov_manage_calls(l40s_off)] == ["-e", "-d", "-e", "-d", "-e"]


def test_sriov_manage_is_not_run_when_all_the_vfs_exist(make_host, tmp_path):
    root = make_host(all_vfs_enabled("l40s_vgpu"))
    runner = Runner()
    result = nvidia_vgpu.enable_vfs_with_sriov_manage(runner, root, L40S, command="/nonexistent")
    assert result == {"changed": False, "num_vfs": 32, "attempts": [], "warnings": []} and runner.calls == []


@pytest.fixture
def l40s_short(make_host):
    """The L40S with 8 of its 32 VFs enabled (the l40s_vgpu description), none holding a vGPU."""
    root = make_host("l40s_vgpu", patch_devices={"cb:00.4": {"nvidia_vgpu": {"creatable": {}, "current": 0}}})
    attach(root)
    return root


def test_sriov_manage_on_a_partly_enabled_gpu_disables_the_short_count_first(l40s_short, tmp_path):
    """NVIDIA's sriov-manage -e does nothing on a GPU that has VFs (the kernel takes no other count but 0 while
    some are enabled), so a short count stays short until it is disabled (-d) first."""
    command = fake_sriov_manage(str(tmp_path / "bin"), l40s_short)
    done = subprocess.run([command, "-e", L40S], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "GPU at %s already has VFs enabled." % L40S in done.stdout
    assert num_vfs(l40s_short, L40S) == 8
    result = nvidia_vgpu.enable_vfs_with_sriov_manage(Runner(), l40s_short, L40S, retries=3, delay=0, command=command)
    assert result["changed"] is True and result["num_vfs"] == 32 and len(result["attempts"]) == 1
    assert [call[0] for call in sriov_manage_calls(l40s_short)] == ["-e", "-d", "-e"]
    assert num_vfs(l40s_short, L40S) == 32


def test_a_short_count_the_kernel_will_not_disable_fails_clearly(l40s_short, tmp_path):
    command = fake_sriov_manage(str(tmp_path / "bin"), l40s_short)
    hold_group(l40s_short, "0000:cb:00.5")  # a VM holds a VF: the kernel refuses sriov_numvfs 0
    with pytest.raises(sriov.SriovError) as error:
        nvidia_vgpu.enable_vfs_with_sriov_manage(Runner(), l40s_short, L40S, retries=2, delay=0, command=command)
    message = str(error.value)
    assert message.startswith("%s -d %s did not disable the 8 VFs of %s in 2 attempts" % (command, L40S, L40S))
    assert "attempt 2: disabling exit 1, sriov_numvfs 8" in message and "Device or resource busy" in message
    assert "so the 32 wanted (sriov_totalvfs) cannot be enabled. A VF may be in use by a VM" in message
    assert [call[0] for call in sriov_manage_calls(l40s_short)] == ["-d", "-d"] and num_vfs(l40s_short, L40S) == 8


def driver_of(root, address):
    link = os.path.join(root, "sys/bus/pci/devices", address, "driver")
    return os.path.basename(os.readlink(link)) if os.path.islink(link) else None


def test_sriov_manage_gets_the_gpu_bound_to_nvidia_again_before_a_retry(l40s_off, tmp_path):
    """sriov-manage unbinds nvidia to set the VFs up; a run that fails part way leaves the GPU without a
    driver, and every later run fails on it, unless the GPU is bound to nvidia again first."""
    command = fake_sriov_manage(str(tmp_path / "bin"), l40s_off, unbind_first=1)
    sim = attach(l40s_off)[0]
    PciKernel(sim)
    with sim.active():
        result = nvidia_vgpu.enable_vfs_with_sriov_manage(Runner(), l40s_off, L40S, retries=3, delay=0, command=command)
    assert result["num_vfs"] == 32 and [a["rc"] for a in result["attempts"]] == [1, 0]
    assert "%s had no driver before attempt 2" % L40S in result["warnings"][0]
    assert "bound it to nvidia again" in result["warnings"][0]
    assert ("sys/bus/pci/drivers/nvidia/bind", L40S) in sim.writes
    assert driver_of(l40s_off, L40S) == "nvidia" and num_vfs(l40s_off, L40S) == 32


def test_a_gpu_nvidia_cannot_take_back_fails_clearly(l40s_off, tmp_path):
    command = fake_sriov_manage(str(tmp_path / "bin"), l40s_off)
    sim = attach(l40s_off)[0]
    PciKernel(sim, host_drivers={L40S: None})  # nvidia no longer takes it
    with sim.active():
        sysfs.write_text(os.path.join(l40s_off, "sys/bus/pci/drivers/nvidia/unbind"), L40S)
        with pytest.raises(sriov.SriovError) as error:
            nvidia_vgpu.enable_vfs_with_sriov_manage(Runner(), l40s_off, L40S, retries=3, delay=0, command=command)
    message = str(error.value)
    assert message.startswith("%s has no driver (sriov-manage unbinds nvidia while it works" % L40S)
    assert "binding it again failed" in message and "load nvidia (modprobe nvidia)" in message
    assert sriov_manage_calls(l40s_off) == [] and driver_of(l40s_off, L40S) is None


def test_sriov_manage_is_not_run_without_lspci(l40s_off, tmp_path):
    command = fake_sriov_manage(str(tmp_path / "bin"), l40s_off)
    runner = Runner()
    runner.get_bin_path = lambda name, opt_dirs=None: None
    with pytest.raises(sriov.SriovError) as error:
        nvidia_vgpu.enable_vfs_with_sriov_manage(runner, l40s_off, L40S, retries=3, delay=0, command=command)
    assert str(error.value) == (
        "%s: sriov-manage runs lspci to enable the VFs, but it is not found on PATH; install pciutils, then run "
        "again; nothing was changed" % L40S
    )
    assert sriov_manage_calls(l40s_off) == [] and runner.calls == [] and num_vfs(l40s_off, L40S) == 0
    runner.get_bin_path = lambda name, opt_dirs=None: "/usr/bin/" + name
    assert nvidia_vgpu.enable_vfs_with_sriov_manage(runner, l40s_off, L40S, delay=0, command=command)["num_vfs"] == 32


# -- boot-time restore -----------------------------------------------------------------------------


def test_restore_pf_through_sysfs_and_through_sriov_manage(nvme, l40s_off, tmp_path):
    sim, _kernel, _nvidia = attach(nvme)
    with sim.active():
        assert sriov.restore_pf(nvme, NVME, 3, drivers_autoprobe=True, delay=0) is True
        assert sriov.restore_pf(nvme, NVME, 3, drivers_autoprobe=True, delay=0) is False
    assert num_vfs(nvme, NVME) == 3
    fake_sriov_manage(str(tmp_path / "bin"), l40s_off, fail_first=1)
    os.environ["PATH"] = str(tmp_path / "bin") + os.pathsep + os.environ["PATH"]
    try:
        with pytest.raises(sriov.SriovError, match="needs a command runner"):
            sriov.restore_pf(l40s_off, L40S, 32, method="sriov_manage")
        runner = Runner()
        runner.get_bin_path = lambda name, opt_dirs=None: str(tmp_path / "bin" / name)
        assert sriov.restore_pf(l40s_off, L40S, 32, method="sriov_manage", runner=runner, delay=0) is True
    finally:
        os.environ["PATH"] = os.environ["PATH"].split(os.pathsep, 1)[1]
    assert num_vfs(l40s_off, L40S) == 32 and len(runner.calls) == 2
    with pytest.raises(sriov.SriovError, match="unknown method 'magic'"):
        sriov.restore_pf(nvme, NVME, 3, method="magic")


def test_state_entry():
    assert sriov.state_entry(4) == {"num_vfs": 4}
    assert sriov.state_entry(4, False, "sysfs") == {"num_vfs": 4, "drivers_autoprobe": False}
    assert sriov.state_entry(32, method="sriov_manage") == {"num_vfs": 32, "method": "sriov_manage"}
