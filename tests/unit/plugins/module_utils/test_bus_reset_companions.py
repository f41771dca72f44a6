# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""With pcie_acs_override=downstream,multifunction the functions of a multifunction GPU get IOMMU groups of
their own; the verdict and vfio_pci's bind set still keep those on the GPU's bus. A multifunction
GPU without FLR has no reset method of its own (drivers/pci/pci.c: pci_dev_reset_slot_function() and
pci_parent_bus_reset() return -ENOTTY for a function that shares its bus, so the kernel shows no
reset_method); its only reset is VFIO's hot reset of the bus, which the kernel and QEMU allow only when
the user owns every group on that bus (QEMU hw/vfio/pci.c vfio_pci_hot_reset(): "Cannot reset device %s,
depends on group %d which is not owned."). Left on their host drivers, the audio/xHCI/UCSI functions
make the GPU impossible to reset between guest boots."""

from __future__ import annotations

from ansible_collections.gpuvirt.host.plugins.module_utils import pci, vfio
from ansible_collections.gpuvirt.host.plugins.module_utils.iommu import groups_from_devices
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect

GPU = "0000:01:00.0"
SLOT = [GPU, "0000:01:00.1", "0000:01:00.2", "0000:01:00.3"]


def _host(make_host):
    # desktop_dgpu: RTX 2080 Ti (TU102) with HDMI audio, USB-C xHCI and UCSI on 01:00.x, as in the real
    # listings (e.g. github.com/uwzis/GPU-Passthrough-Manager/issues/21: TU116 .0-.3 in one group).
    # The ACS override splits the slot; none of the four functions shows reset_method (no FLR, bus shared).
    return make_host(
        "desktop_dgpu",
        kernel={"cmdline": "BOOT_IMAGE=/boot/vmlinuz-6.8.0-45-generic root=/dev/nvme0n1p2 ro quiet splash "
                           "intel_iommu=on pcie_acs_override=downstream,multifunction"},
        patch_devices={
            "01:00.0": {"reset_methods": []},
            "01:00.1": {"group": 20, "reset_methods": []},
            "01:00.2": {"group": 21, "reset_methods": []},
            "01:00.3": {"group": 22, "reset_methods": []},
        },
    )


def test_verdict_keeps_the_functions_that_share_the_gpus_only_reset(make_host):
    topology = detect(_host(make_host))
    verdict = next(g for g in topology["gpus"] if g["address"] == GPU)["passthrough"]
    # The GPU can only be reset by a bus reset of 01:xx, so the functions on that bus must go with it.
    assert verdict["devices"] == SLOT


def test_vfio_pci_binds_the_functions_that_share_the_gpus_only_reset(make_host):
    view = vfio.read_host(_host(make_host))
    members = vfio.expand_members(view, {GPU: [GPU]}, with_companions=True)
    assert sorted(members) == SLOT


APU = "0000:04:00.0"


def _split_audio_host(make_host):
    # An APU laptop whose iGPU sits alone in its group while its HDMI audio shares a group with the
    # processor's security processor and USB controllers (as on a Raven/Picasso laptop,
    # github.com/cosminmocan/vfio-single-amdgpu-passthrough/issues/3, whose network is a USB-C dock): the
    # VM can never own that group, so the bus reset stays impossible and the audio stays with the host.
    patch = {"04:00.0": {"group": 8, "reset_methods": [], "boot_vga": False}}
    patch.update({"04:00.%d" % function: {"group": 9, "reset_methods": []} for function in range(1, 7)})
    return make_host("cezanne_laptop", patch_devices=patch)


def test_a_companion_whose_group_the_vm_cannot_own_stays_and_the_missing_reset_is_told(make_host):
    root = _split_audio_host(make_host)
    topology = detect(root)
    gpu = next(g for g in topology["gpus"] if g["address"] == APU)
    assert gpu["passthrough"]["viable"] is True and gpu["passthrough"]["devices"] == [APU]
    warned = [f for f in topology["findings"] if f["code"] == "no_bus_reset"]
    assert [f["device"] for f in warned] == [APU]
    assert "IOMMU group 9 (%s)" % ", ".join("0000:04:00.%d" % f for f in range(1, 7)) in warned[0]["message"]
    view = vfio.read_host(root)
    assert sorted(vfio.expand_members(view, {APU: [APU]}, with_companions=True)) == [APU]


def test_a_gpu_whose_bus_groups_a_vm_can_own_gets_no_reset_warning(make_host):
    topology = detect(_host(make_host))
    assert not [f for f in topology["findings"] if f["code"] == "no_bus_reset"]


def test_the_unowned_groups_are_the_same_with_the_groups_gathered_and_are_copies(make_host):
    root = _split_audio_host(make_host)
    devices = pci.read_pci_devices(root)
    groups = groups_from_devices(devices)
    slots = pci.slot_index(devices)

    looked_up = pci.unowned_bus_groups(devices, APU, slots)
    given = pci.unowned_bus_groups(devices, APU, slots, groups=groups)

    assert looked_up == given == {"9": ["0000:04:00.%d" % function for function in range(1, 7)]}
    given["9"].append("changed")
    assert "changed" not in groups["9"]
