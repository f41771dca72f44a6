# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpuvirt.host.gpu_host: hosts must be named, and gpuvirt_root points every role at a tree."""

from __future__ import annotations

import json
import os

from ansible_collections.gpuvirt.host.tests.sim.hosts import mediated_lab


def test_gpu_host_refuses_to_guess_its_hosts(fleet):
    root = fleet.add("gpu01", "iommu_disabled")
    with open(os.path.join(root, "etc/default/grub")) as handle:
        before = handle.read()
    rc, recap, output = fleet.run("gpuvirt.host.gpu_host")
    assert rc != 0
    assert "Name the hosts to configure with -e target=" in output
    assert "gpu01" not in recap
    with open(os.path.join(root, "etc/default/grub")) as handle:
        assert handle.read() == before
    # A --limit leaves a play on localhost alone out; the check must not go with it.
    rc, recap, output = fleet.run("gpuvirt.host.gpu_host", "--limit", "gpu01")
    assert rc != 0
    assert "Name the hosts to configure with -e target=" in output


def test_gpu_host_configures_the_tree_of_each_host(fleet):
    off = fleet.add("gpu01", "iommu_disabled")
    on = fleet.add("gpu02", "desktop_dgpu")
    rc, recap, output = fleet.run("gpuvirt.host.gpu_host", extra_vars={"target": "gpu_hosts"})
    assert rc == 0, output
    with open(os.path.join(off, "etc/default/grub")) as handle:
        assert "intel_iommu=on" in handle.read()
    with open(os.path.join(on, "etc/default/grub")) as handle:
        grub = handle.read()
    # desktop_dgpu boots with intel_iommu=on already; its GRUB file gets it too, for the next boot.
    assert "intel_iommu=on" in grub
    assert recap["gpu01"]["failed"] == 0 and recap["gpu02"]["failed"] == 0
    rc, recap, output = fleet.run("gpuvirt.host.gpu_host", extra_vars={"target": "gpu_hosts"})
    assert rc == 0, output
    assert recap["gpu01"]["changed"] == 0 and recap["gpu02"]["changed"] == 0, output


def test_a_device_vfio_binds_by_id_and_vgpu_splits_by_address_is_refused(fleet):
    root = fleet.add("gpu01", "desktop_dgpu")
    devices = {
        "vfio_devices": ["10de:1e04"],
        # Entries of each kind: the role's default reads every entry whatever keys it has.
        "vgpu_devices": [{"selector": "0000:00:02.0", "mdev": [{"type": "i915-GVTg_V5_4", "count": 1}]},
                         {"selector": "0000:01:00.0", "sriov": {"num_vfs": 2}},
                         {"selector": "0000:04:00.0", "passthrough": True}],
    }
    rc, recap, output = fleet.run("gpuvirt.host.gpu_host", extra_vars=dict(devices, target="gpu01"))
    assert rc != 0 and recap["gpu01"]["failed"] == 1, output
    assert "(selected by 10de:1e04) is also split by 0000:01:00.0" in output
    assert os.path.realpath(os.path.join(root, "sys/bus/pci/devices/0000:01:00.0/driver")).endswith("/nvidia")
    assert not os.path.exists(os.path.join(root, "etc/modprobe.d/gpuvirt-vfio.conf"))


def test_gpu_host_takes_the_device_spec_as_text(fleet):
    # The survey field of a job template, as the preflight reads it: the same spec, as JSON or YAML text.
    root = fleet.add("gpu01", mediated_lab())
    text = json.dumps([{"selector": "mbochs", "mdev": [{"type": "mbochs-medium", "count": 1}]}])
    rc, _recap, output = fleet.run("gpuvirt.host.gpu_host", extra_vars={"target": "gpu01", "vgpu_devices_text": text})
    assert rc == 0, output
    assert len(os.listdir(os.path.join(root, "sys/bus/mdev/devices"))) == 1
    rc, _recap, output = fleet.run("gpuvirt.host.gpu_host",
                                   extra_vars={"target": "gpu01", "vgpu_devices_text": "- selector: [mbochs"})
    assert rc == 2
    assert "invalid device spec: the text is neither JSON nor YAML at line" in output
    assert "Nothing was changed." in output
