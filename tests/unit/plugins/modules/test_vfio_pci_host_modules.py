# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``vfio_pci``'s boot-time configuration and the modules of the host drivers it takes devices from:
each gets a soft dependency on vfio-pci (the companion functions' drivers are not the GPU vendors'),
and one built into the kernel, which takes its device before vfio-pci can load, is kept by a
driverctl override instead of the ID list."""

from __future__ import annotations

import pytest

from ansible_collections.gpuvirt.host.tests.unit.plugins.modules.test_vfio_pci import (
    GPU,
    GPU_FUNCTIONS,
    MODPROBE,
    MODULES,
    assert_second_run_changes_nothing,
    drivers,
    install_driverctl,
    read,
    snapshot,
)

XHCI = "0000:01:00.2"
# As sysfs links them: each PCI driver to its module (the xHCI and UCSI drivers' modules are not named
# like the drivers).
DRIVER_MODULES = {"nvidia": "nvidia", "snd_hda_intel": "snd_hda_intel", "xhci_hcd": "xhci_pci",
                  "nvidia-gpu": "i2c_nvidia_gpu", "vfio-pci": "vfio_pci"}


@pytest.fixture
def desktop(make_host):
    def build(builtin=(), driverctl=False):
        modules = [m for m in MODULES if m not in builtin]
        root = make_host("desktop_dgpu", kernel={"modules": modules, "builtin": list(builtin),
                                                 "driver_modules": DRIVER_MODULES})
        if driverctl:
            install_driverctl(root)
        return root

    return build


def softdeps(text):
    return [line.split()[1] for line in text.splitlines() if line.startswith("softdep ")]


def test_the_companions_driver_modules_load_after_vfio_pci(desktop, vfio_pci):
    root = desktop()
    result = vfio_pci(root, devices=[GPU])
    assert result["rc"] == 0 and result["changed"] is True, result
    listed = softdeps(read(root, MODPROBE))
    # The UCSI function's driver (nvidia-gpu) is the module i2c_nvidia_gpu; the xHCI's (xhci_hcd) xhci_pci.
    assert "i2c_nvidia_gpu" in listed and "xhci_pci" in listed
    assert len(listed) == len(set(listed))  # nvidia and snd_hda_intel are listed once
    # The devices are on vfio-pci now: the next run keeps the lines it cannot learn again.
    again = vfio_pci(root, devices=[GPU])
    assert again["changed"] is False and softdeps(read(root, MODPROBE)) == listed


def test_a_built_in_host_driver_is_kept_by_a_driverctl_override(desktop, vfio_pci):
    root = desktop(builtin=("xhci_pci",), driverctl=True)
    result = vfio_pci(root, devices=[GPU])
    assert result["rc"] == 0 and result["changed"] is True, result
    assert drivers(root) == {address: "vfio-pci" for address in GPU_FUNCTIONS}
    assert result["devices"][XHCI]["persistence"] == "driverctl"
    assert read(root, "etc/driverctl.d/pci-" + XHCI) == "vfio-pci\n"
    # Its ID leaves vfio-pci's list (no other device needs it); no soft dependency on a built-in module.
    assert result["ids"] == ["10de:10f7", "10de:1ad7", "10de:1e04"]
    assert "xhci_pci" not in softdeps(read(root, MODPROBE))
    assert_second_run_changes_nothing(vfio_pci, desktop(builtin=("xhci_pci",), driverctl=True), devices=[GPU])


def test_an_id_method_asked_for_refuses_a_built_in_host_driver(desktop, vfio_pci):
    root = desktop(builtin=("xhci_pci",), driverctl=True)
    before = snapshot(root)
    result = vfio_pci(root, devices=[GPU], persistence="modprobe")
    assert result["rc"] == 1 and result["changed"] is False
    assert "0000:01:00.2: the host driver's module xhci_pci is built into kernel" in result["msg"]
    assert "use persistence: auto or driverctl" in result["msg"] and "nothing was changed" in result["msg"]
    assert snapshot(root) == before


def test_a_snapshot_keeps_what_decides_it(desktop, vfio_pci, tmp_path):
    """capture.py keeps each driver's module link and modules.builtin: planned on the snapshot, the
    built-in xHCI driver's function is kept by an override as on the host."""
    from ansible_collections.gpuvirt.host.tests.fixtures import capture

    root = desktop(builtin=("xhci_pci",), driverctl=True)
    output, _devices, _copied = capture.capture(root, str(tmp_path / "snapshot"))
    install_driverctl(output)
    on_host = vfio_pci(root, devices=[GPU], check_mode=True)
    on_snapshot = vfio_pci(output, devices=[GPU], check_mode=True)
    assert on_snapshot["devices"][XHCI]["persistence"] == on_host["devices"][XHCI]["persistence"] == "driverctl"
    assert on_snapshot["ids"] == on_host["ids"]
