# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``gpuvirt.host.vfio_pci`` leaves a GPU that host processes use through its host driver: a desktop
compositor holding its DRM card, nvidia-persistenced or a CUDA job holding ``/dev/nvidiaN``. Unbinding
the driver then pulls the GPU from under them, or (nvidia) waits until they let go, and the run hangs.

``desktop_dgpu``: the RTX 2080 Ti (``01:00.0``) on nvidia, with nvidia-drm's ``card1`` and the driver's
``Device Minor: 0``; the iGPU (``00:02.0``) drives ``card0``."""

from __future__ import annotations

import json

from ansible_collections.gpuvirt.host.plugins.module_utils import device_users, vfio_bind
from ansible_collections.gpuvirt.host.plugins.module_utils.pci import read_pci_devices
from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim
from ansible_collections.gpuvirt.host.tests.sim.pci_kernel import PciKernel

DGPU = "0000:01:00.0"
NODES = {"patch_devices": {"00:02.0": {"drm_card": 0}, "01:00.0": {"drm_card": 1, "nvidia_minor": 0}}}
MODULES = ["kvm_intel", "kvm", "i915", "nvidia", "nvidia_modeset", "nvidia_uvm", "snd_hda_intel", "xhci_pci",
           "typec_ucsi", "ucsi_ccg", "e1000e", "nvme", "vfio_pci"]


def host(make_host, processes, **changes):
    return make_host("desktop_dgpu", processes=processes, kernel={"modules": MODULES}, **dict(NODES, **changes))


def test_the_host_nodes_of_a_device(make_host):
    root = host(make_host, [])
    devices = read_pci_devices(root)
    assert device_users.host_nodes(root, devices[DGPU]) == ["/dev/dri/card1", "/dev/dri/renderD129", "/dev/nvidia0"]
    assert device_users.host_nodes(root, devices["0000:00:02.0"]) == ["/dev/dri/card0", "/dev/dri/renderD128"]
    assert device_users.host_nodes(root, devices["0000:01:00.1"]) == []
    # The driver's number is read from its own file: nouveau has none, and neither has a GPU the
    # nvidia driver lists without a Device Minor line.
    root = host(make_host, [], patch_devices={"01:00.0": {"driver": "nouveau", "nvidia_minor": 0}})
    assert device_users.host_nodes(root, read_pci_devices(root)[DGPU]) == []
    root = host(make_host, [], files={"proc/driver/nvidia/gpus/0000:01:00.0/information": "Model: \t x\n"})
    assert device_users.host_nodes(root, read_pci_devices(root)[DGPU]) == ["/dev/dri/card1", "/dev/dri/renderD129"]


def test_vfio_pci_refuses_a_gpu_host_processes_hold(make_host, vfio_pci):
    root = host(make_host, [
        {"pid": 1804, "comm": "nvidia-persistenced", "holds": ["/dev/nvidiactl", "/dev/nvidia0"]},
        {"pid": 2101, "comm": "gnome-shell", "holds": ["/dev/dri/card0", "/dev/dri/card1"]},
        {"pid": 2230, "comm": "python3", "holds": ["/dev/nvidia0"]},
    ])
    for check_mode in (True, False):
        kernel = PciKernel(KernelSim(root))
        result = vfio_pci(root, kernel=kernel, check_mode=check_mode, devices=[DGPU], persistent=False)
        assert result["rc"] == 1 and result["changed"] is False, result
        refusals = [r for r in result["refusals"] if r["code"] == "host_users"]
        assert [r["device"] for r in refusals] == [DGPU, DGPU]
        assert "gnome-shell (pid 2101) holds /dev/dri/card1 open; taking it from nvidia now" in refusals[0]["message"]
        assert "nvidia-persistenced (pid 1804), python3 (pid 2230) hold /dev/nvidia0 open" in refusals[1]["message"]
        assert kernel.sim.writes == []
        assert vfio_bind.read_driver(root, DGPU) == "nvidia"


def test_other_gpus_nodes_and_the_control_node_do_not_count(make_host, vfio_pci):
    root = host(make_host, [
        {"pid": 2101, "comm": "gnome-shell", "holds": ["/dev/dri/card0", "/dev/dri/renderD128"]},
        {"pid": 2230, "comm": "python3", "holds": ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia1"]},
    ])
    result = vfio_pci(root, devices=[DGPU], persistent=False)
    assert result["rc"] == 0 and result["changed"] is True, result
    assert vfio_bind.read_driver(root, DGPU) == "vfio-pci"


def test_forced_or_at_the_next_boot_only_the_binding_goes_ahead(make_host, vfio_pci):
    processes = [{"pid": 1804, "comm": "nvidia-persistenced", "holds": ["/dev/nvidia0"]}]
    # At the next boot only: the running driver is not touched, so its users are not in the way.
    root = host(make_host, processes)
    result = vfio_pci(root, devices=[DGPU], runtime=False)
    assert result["rc"] == 0 and not result["refusals"], result
    assert vfio_bind.read_driver(root, DGPU) == "nvidia"
    result = vfio_pci(root, devices=[DGPU], persistent=False, force=True)
    assert result["rc"] == 0 and result["changed"] is True, result
    assert "going ahead although 0000:01:00.0" in json.dumps(result["warnings"])
    assert "nvidia-persistenced (pid 1804) holds /dev/nvidia0 open" in json.dumps(result["warnings"])
