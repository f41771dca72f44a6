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

from ansible_collections.gpuvirt.host.plugins.module_utils import vfio
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
