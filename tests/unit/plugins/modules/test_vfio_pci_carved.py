# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``gpuvirt.host.vfio_pci`` on a device that carries VFs or mediated devices (``carved``).

Taking the driver away from an SR-IOV physical function disables its VFs, and from an mdev parent
removes its mdevs: a VM on one of them loses it. The VMs hold the VFs' and mdevs' IOMMU groups, not
the parent's, so the ``in_use`` guard does not see them.

``datacenter_a100``: the A100 (``b1:00.0``, nvidia) has 16 VFs enabled; its VF ``b1:00.4`` is the
parent of an A100-4C mdev that a QEMU process holds."""

from __future__ import annotations

from ansible_collections.gpuvirt.host.plugins.module_utils import vfio_bind
from ansible_collections.gpuvirt.host.tests.sim.hosts import tree_state as files
from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim
from ansible_collections.gpuvirt.host.tests.sim.pci_kernel import PciKernel

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
