# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``gpuvirt.host.vfio_pci`` on a device that carries VFs or mediated devices (``carved``).

Taking the driver away from an SR-IOV physical function disables its VFs, and from an mdev parent
removes its mdevs: a VM on one of them loses it. The VMs hold the VFs' and mdevs' IOMMU groups, not
the parent's, so the ``in_use`` guard does not see them.

``datacenter_a100``: the A100 (``b1:00.0``, nvidia) has 16 VFs enabled; its VF ``b1:00.4`` is the
parent of an A100-4C mdev that a QEMU process holds."""

from __future__ import annotations

import os

from ansible_collections.gpuvirt.host.plugins.module_utils import vfio_bind
from ansible_collections.gpuvirt.host.tests.sim.hosts import tree_state as files
from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim
from ansible_collections.gpuvirt.host.tests.sim.nvidia_vgpu_sim import attach
from ansible_collections.gpuvirt.host.tests.sim.pci_kernel import PciKernel
from ansible_collections.gpuvirt.host.tests.sim.sriov_hosts import all_vfs_enabled, recorded

PF = "0000:b1:00.0"
MDEV_PARENT = "0000:b1:00.4"
MDEV = "6c3e1ab4-4a52-4e2c-9a3e-0a4d9c1e2f01"


def refusals(result, code="carved"):
    return [r for r in result.get("refusals", []) if r["code"] == code]


def test_a_physical_function_with_vfs_is_not_taken_from_its_driver(make_host, vfio_pci):
    root = make_host("datacenter_a100")
    kernel = PciKernel(KernelSim(root))
    before = files(root)

    result = vfio_pci(root, kernel=kernel, devices=[PF], persistent=False)

    assert result["rc"] == 1 and result.get("changed") is False, result
    [refusal] = refusals(result)
    assert refusal["device"] == PF
    assert "has 16 virtual functions enabled (0000:b1:00.4, " in refusal["message"]
    assert "taking it from nvidia disables them" in refusal["message"]
    assert kernel.sim.writes == [] and files(root) == before
    assert vfio_bind.read_driver(root, PF) == "nvidia"


def test_an_mdev_parent_is_not_taken_from_its_driver(make_host, vfio_pci):
    root = make_host("datacenter_a100")
    kernel = PciKernel(KernelSim(root))
    before = files(root)

    result = vfio_pci(root, kernel=kernel, devices=[MDEV_PARENT], persistent=False)

    assert result["rc"] == 1, result
    [refusal] = refusals(result)
    assert refusal["device"] == MDEV_PARENT
    assert "is the parent of 1 mediated device (%s); taking it from nvidia removes them" % MDEV in refusal["message"]
    assert kernel.sim.writes == [] and files(root) == before


def test_check_mode_refuses_alike(make_host, vfio_pci):
    root = make_host("datacenter_a100")

    result = vfio_pci(root, check_mode=True, devices=[PF], persistent=False)

    assert result["rc"] == 1 and [r["device"] for r in refusals(result)] == [PF]


def test_a_parent_without_vfs_or_mdevs_is_bound(make_host, vfio_pci):
    root = make_host("datacenter_a100", patch_devices={"b1:00.0": {"sriov": {"total_vfs": 20, "num_vfs": 0}}},
                     mdevs=[], processes=[])

    result = vfio_pci(root, devices=[PF], persistent=False)

    assert result["rc"] == 0 and result["changed"] is True, result
    assert vfio_bind.read_driver(root, PF) == "vfio-pci"


def test_force_goes_ahead_and_says_what_it_overrode(make_host, vfio_pci):
    root = make_host("datacenter_a100")

    result = vfio_pci(root, devices=[PF], persistent=False, force=True)

    assert result["rc"] == 0 and result["changed"] is True, result
    assert any("force: true: going ahead although" in w and "16 virtual functions" in w
               for w in (x if isinstance(x, str) else x["event"]["msg"] for x in result.get("warnings", [])))


def test_handing_back_a_physical_function_whose_vfs_vfio_pci_made_is_refused(make_host, vfio_pci):
    # vfio-pci made the VFs (its enable_sriov parameter): releasing the PF disables them.
    on_vfio = {"b1:00.0": {"driver": "vfio-pci", "driver_override": "vfio-pci"}}
    root = make_host("datacenter_a100", patch_devices=on_vfio, mdevs=[], processes=[])
    kernel = PciKernel(KernelSim(root))
    before = files(root)

    result = vfio_pci(root, kernel=kernel, devices=[PF], state="absent", persistent=False)

    assert result["rc"] == 1, result
    [refusal] = refusals(result)
    assert refusal["device"] == PF and "taking it from vfio-pci disables them" in refusal["message"]
    assert kernel.sim.writes == [] and files(root) == before


def test_a_vf_with_a_vendor_vgpu_type_is_not_taken_from_its_driver(make_host, vfio_pci):
    # NVIDIA's per-VF vGPU lives under the nvidia driver (nvidia/current_vgpu_type): unbinding the VF
    # destroys it. sriov counts it as in use; vfio_pci refuses it as carved.
    root = make_host(all_vfs_enabled("l40s_vgpu"), patch_devices={"cb:00.4": {"nvidia_vgpu": {
        "creatable": {}, "current": 1041}}})
    kernel = PciKernel(KernelSim(root))
    before = files(root)
    result = vfio_pci(root, kernel=kernel, devices=["0000:cb:00.4"], persistent=False)
    assert result["rc"] == 1 and result.get("changed") is False, result
    [refusal] = refusals(result)
    assert "vGPU type 1041 is assigned to it" in refusal["message"] and "taking it from nvidia" in refusal["message"]
    assert kernel.sim.writes == [] and files(root) == before


def _a100_with_records(make_host, run_module):
    """The A100 with its 16 VFs and the mdev on b1:00.4 recorded for the boot restore (its VM stopped)."""
    root = make_host("datacenter_a100")
    for name in os.listdir(os.path.join(root, "proc/31337/fd")):
        os.unlink(os.path.join(root, "proc/31337/fd", name))
    sim = attach(root)[0]
    with sim.active():
        assert run_module("mdev", {"root": root, "parents": [
            {"selector": MDEV_PARENT, "mdevs": [{"type": "nvidia-471", "uuids": [MDEV]}]}]})["rc"] == 0
        assert run_module("sriov", {"root": root, "devices": [{"selector": PF, "num_vfs": 16}], "delay": 0})["rc"] == 0
    assert recorded(root)["sriov"][PF]["num_vfs"] == 16 and MDEV in recorded(root)["mdevs"]
    return root


def test_a_device_the_restore_carves_is_not_given_to_vfio_pci_at_boot(make_host, vfio_pci, run_module):
    # Bound at the next boot only (runtime: false), or while its VFs are away for maintenance: at boot the
    # restore could not enable the recorded VFs on vfio-pci (no sriov_configure without enable_sriov=1) nor
    # create the mdev on them, at every boot.
    root = _a100_with_records(make_host, run_module)
    later = vfio_pci(root, kernel=PciKernel(KernelSim(root)), devices=[PF], runtime=False)
    assert later["rc"] == 1 and later.get("changed") is False, later
    [refusal] = refusals(later)
    assert "the boot-time restore enables 16 virtual functions on it" in refusal["message"]
    assert "gpuvirt.host.sriov" in refusal["message"]
    # A VF the restore puts an mdev on is refused alike.
    child = vfio_pci(root, kernel=PciKernel(KernelSim(root)), devices=[MDEV_PARENT], runtime=False)
    assert child["rc"] == 1 and any(MDEV in r["message"] for r in refusals(child)), child
    sim = attach(root)[0]
    with sim.active():
        away = run_module("sriov", {"root": root, "devices": [{"selector": PF, "num_vfs": 0}], "delay": 0,
                                    "persistent": False, "force": True})
    assert away["rc"] == 0 and recorded(root)["sriov"][PF]["num_vfs"] == 16, away
    now = vfio_pci(root, kernel=PciKernel(KernelSim(root)), devices=[PF], persistent=False)
    assert now["rc"] == 1 and [r["device"] for r in refusals(now)] == [PF], now


def test_a_vf_the_restore_gives_to_vfio_pci_is_not_handed_back_alone(make_host, run_module):
    # sriov vfio: true has the restore bind every VF of the PF at boot: a VF handed back by vfio_pci
    # would be on vfio-pci again after the next reboot.
    from ansible_collections.gpuvirt.host.tests.sim.sriov_hosts import NVME, NVME_HOST

    root = make_host(NVME_HOST)
    sim = attach(root)[0]
    PciKernel(sim)
    with sim.active():
        done = run_module("sriov", {"root": root, "delay": 0, "devices": [
            {"selector": NVME, "num_vfs": 2, "drivers_autoprobe": False, "vfio": True}]})
        assert done["rc"] == 0 and vfio_bind.read_driver(root, "0000:04:00.1") == "vfio-pci", done
        back = run_module("vfio_pci", {"root": root, "devices": ["0000:04:00.1"], "state": "absent"})
    assert back["rc"] == 1 and back.get("changed") is False, back
    [refusal] = refusals(back, "kept_by_sriov")
    assert "gpuvirt.host.sriov (vfio: false)" in refusal["message"]
    assert vfio_bind.read_driver(root, "0000:04:00.1") == "vfio-pci"
