# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``mdev`` check mode when only removals make room, on a card whose VFs are the parents: the new mdev is
predicted on the parent (and so with the UUID) the run, planning again after the removals, gives it."""

from __future__ import annotations

import ansible.module_utils._internal as ansible_internal
import pytest

from ansible_collections.gpuvirt.host.tests.sim.hosts import MACHINE_ID_FILE
from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim

PF = "0000:41:00.0"
VF1, VF2 = "0000:41:00.4", "0000:41:00.5"
U1, U2, U3 = ("aaaaaaaa-0000-4000-8000-00000000000%d" % i for i in (1, 2, 3))

HOST = {
    "kernel": {"release": "6.1.0-28-amd64", "modules": ["nvidia", "vfio_pci"]},
    "devices": [
        {"address": "40:01.0", "ids": "8086:29c0", "class": "060400", "driver": "pcieport"},
        {
            "address": "41:00.0", "parent": "40:01.0", "ids": "10de:2236", "class": "030200",
            "driver": "nvidia", "vendor_name": "NVIDIA Corporation", "device_name": "GA102GL [A10]",
            "sriov": {
                "total_vfs": 2, "num_vfs": 2, "offset": 4, "stride": 1,
                "vf": {"driver": "nvidia", "group": "own", "mdev_types": [
                    {"id": "small", "name": "small", "available": 2, "device_api": "vfio-pci"},
                    {"id": "big", "name": "big", "available": 1, "device_api": "vfio-pci"},
                ]},
            },
        },
    ],
    "mdevs": [
        {"uuid": U1, "parent": "41:00.4", "type": "small"},
        {"uuid": U2, "parent": "41:00.5", "type": "small"},
        {"uuid": U3, "parent": "41:00.5", "type": "small"},
    ],
    "files": dict(MACHINE_ID_FILE),
}


@pytest.fixture
def mdev_module(run_module, monkeypatch):
    monkeypatch.setattr(ansible_internal, "is_controller", False)

    def run(root, check_mode=False, **args):
        args.setdefault("root", root)
        with KernelSim(root).active():
            return run_module("mdev", args, check_mode=check_mode)

    return run


def test_check_mode_predicts_the_parent_and_uuid_the_run_uses(make_host, mdev_module):
    root = make_host(HOST)
    sim = KernelSim(root)
    for vf in (VF1, VF2):
        sim.configure_pool(vf, 2, {"small": 1, "big": 2})
    wanted = [{"selector": PF, "exclusive": True, "mdevs": [{"type": "big", "count": 1}]}]

    predicted = mdev_module(root, check_mode=True, parents=wanted)
    assert not predicted.failed, predicted
    done = mdev_module(root, parents=wanted)
    assert not done.failed, done
    assert predicted["created"] == done["created"], (predicted["parents"], done["parents"])
    assert predicted["mdevs"] == done["mdevs"]
