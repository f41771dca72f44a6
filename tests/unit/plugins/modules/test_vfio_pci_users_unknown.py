# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``gpuvirt.host.vfio_pci`` when the open files of some process cannot be read (``unreadable_fds``):
whether a VM or a host process holds the device is then unknown, so taking the device from its driver
is refused (``in_use_unknown``) unless ``force: true``. A process that exited during the scan holds
nothing and is not counted.

``desktop_dgpu``: the RTX 2080 Ti (``01:00.0``) and its three functions share IOMMU group 2."""

from __future__ import annotations

import errno
import os
import shutil

from ansible_collections.gpuvirt.host.plugins.module_utils import vfio_bind
from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim
from ansible_collections.gpuvirt.host.tests.sim.pci_kernel import PciKernel

MODULES = ["kvm_intel", "i915", "nvidia", "snd_hda_intel", "xhci_pci", "e1000e", "nvme", "vfio_pci"]
GPU = "0000:01:00.0"
GPU_FUNCTIONS = ("0000:01:00.0", "0000:01:00.1", "0000:01:00.2", "0000:01:00.3")
HOST_DRIVERS = {"0000:01:00.0": "nvidia", "0000:01:00.1": "snd_hda_intel", "0000:01:00.2": "xhci_hcd",
                "0000:01:00.3": "nvidia-gpu"}
QEMU = {"pid": 4242, "comm": "qemu-system-x86", "holds": [2]}
EXITED = {"pid": 4300, "comm": "qemu-system-x86"}


def passed_through(make_host, processes):
    """The GPU's functions on vfio-pci, its group file open by ``processes``."""
    return make_host(
        "desktop_dgpu",
        kernel={"modules": MODULES},
        patch_devices={a: {"driver": "vfio-pci", "driver_override": "vfio-pci"} for a in GPU_FUNCTIONS},
        processes=processes,
    )


def on_host_drivers(make_host, processes):
    """The GPU on nvidia with its DRM card and /dev/nvidia0, a compositor holding the card."""
    return make_host(
        "desktop_dgpu",
        kernel={"modules": MODULES},
        patch_devices={"01:00.0": {"drm_card": 1, "nvidia_minor": 0}},
        processes=processes,
    )


def warnings(result):
    return [w["event"]["msg"] if isinstance(w, dict) else w for w in result.get("warnings", [])]


def unknown(result):
    return [r for r in result["refusals"] if r["code"] == "in_use_unknown"]


def test_handing_back_is_refused_when_the_vms_cannot_be_seen(make_host, vfio_pci, unreadable_fds):
    root = passed_through(make_host, [QEMU])
    unreadable_fds(root, {4242: errno.EACCES})
    for check_mode in (True, False):
        kernel = PciKernel(KernelSim(root), host_drivers=HOST_DRIVERS)
        result = vfio_pci(root, kernel=kernel, check_mode=check_mode, devices=[GPU], state="absent",
                          persistent=False)
        assert result["rc"] == 1 and result["changed"] is False, result
        assert result["msg"].startswith("refusing to change anything")
        [refusal] = unknown(result)
        assert refusal["device"] == GPU
        assert "the open files of 1 process could not be read (qemu-system-x86 (pid 4242))" in refusal["message"]
        assert "CAP_SYS_PTRACE" in refusal["message"]
        assert "unbinding them now" in refusal["message"]
        assert kernel.sim.writes == [] and kernel.blocked == []
        assert {a: vfio_bind.read_driver(root, a) for a in GPU_FUNCTIONS} == {a: "vfio-pci" for a in GPU_FUNCTIONS}


def test_handing_back_with_force_goes_ahead_with_a_warning(make_host, vfio_pci, unreadable_fds):
    root = passed_through(make_host, [{"pid": 812, "comm": "sshd"}])
    unreadable_fds(root, {812: errno.EACCES})
    kernel = PciKernel(KernelSim(root), host_drivers=HOST_DRIVERS)
    result = vfio_pci(root, kernel=kernel, devices=[GPU], state="absent", persistent=False, force=True)
    assert result["rc"] == 0 and result["changed"] is True, result
    assert [r["code"] for r in result["refusals"]] == ["in_use_unknown"]
    assert any(w.startswith("force: true: going ahead although whether a running VM") for w in warnings(result))
    assert vfio_bind.read_driver(root, GPU) != "vfio-pci"


def test_binding_is_refused_when_the_host_users_cannot_be_seen(make_host, vfio_pci, unreadable_fds):
    root = on_host_drivers(make_host, [{"pid": 2101, "comm": "gnome-shell", "holds": ["/dev/dri/card1"]}])
    unreadable_fds(root, {2101: errno.EACCES})
    kernel = PciKernel(KernelSim(root))
    result = vfio_pci(root, kernel=kernel, devices=[GPU], persistent=False)
    assert result["rc"] == 1 and result["changed"] is False, result
    [refusal] = unknown(result)
    assert "gnome-shell (pid 2101)" in refusal["message"] and "binding it now" in refusal["message"]
    assert kernel.sim.writes == []
    assert vfio_bind.read_driver(root, GPU) == "nvidia"

    forced = vfio_pci(root, kernel=PciKernel(KernelSim(root)), devices=[GPU], persistent=False, force=True)
    assert forced["rc"] == 0 and forced["changed"] is True, forced
    assert [r["code"] for r in forced["refusals"]] == ["in_use_unknown"]
    assert vfio_bind.read_driver(root, GPU) == "vfio-pci"


def exited(root, pid):
    """The process exited after ``proc`` was listed: its ``fd`` directory is gone (ENOENT)."""
    shutil.rmtree(os.path.join(root, "proc", str(pid), "fd"))


def test_a_process_that_exited_during_the_scan_is_not_counted(make_host, vfio_pci, unreadable_fds):
    root = passed_through(make_host, [QEMU, EXITED])
    unreadable_fds(root, {4242: errno.EACCES})
    exited(root, 4300)
    result = vfio_pci(root, devices=[GPU], state="absent", persistent=False)
    [refusal] = unknown(result)
    assert "the open files of 1 process could not be read (qemu-system-x86 (pid 4242))" in refusal["message"]

    root = passed_through(make_host, [EXITED])
    exited(root, 4300)
    kernel = PciKernel(KernelSim(root), host_drivers=HOST_DRIVERS)
    result = vfio_pci(root, kernel=kernel, devices=[GPU], state="absent", persistent=False)
    assert result["rc"] == 0 and result["changed"] is True and result["refusals"] == [], result["msg"]
    assert vfio_bind.read_driver(root, GPU) != "vfio-pci"


def test_the_verdict_is_unknown_when_the_vms_cannot_be_seen(make_host, unreadable_fds):
    """topology_info's verdict says what vfio_pci would refuse: a passed-through GPU whose holders cannot
    be told is neither viable nor refused, it is unknown."""
    from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect

    root = passed_through(make_host, [QEMU])
    unreadable_fds(root, {4242: errno.EACCES})
    verdict = next(g for g in detect(root)["gpus"] if g["address"] == GPU)["passthrough"]
    assert verdict["codes"] == ["in_use_unknown"] and verdict["viable"] is None
    assert "qemu-system-x86 (pid 4242)" in verdict["reasons"][0]
    # On its host driver nothing holds its group file: the unreadable process does not matter.
    root = on_host_drivers(make_host, [QEMU])
    unreadable_fds(root, {4242: errno.EACCES})
    assert "in_use_unknown" not in next(g for g in detect(root)["gpus"] if g["address"] == GPU)["passthrough"]["codes"]
