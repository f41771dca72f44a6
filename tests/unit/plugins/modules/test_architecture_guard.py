# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every module that changes a host refuses an architecture the collection does not configure (POWER)
before it plans anything, with the reason, and changes nothing; an arm64 host is served."""

from __future__ import annotations

import pytest

from ansible_collections.gpuvirt.host.tests.unit.plugins.modules.test_vfio_pci import snapshot

POWER_GPU = "0035:03:00.0"  # a Tesla V100 on the POWER9 host
CALLS = {
    "sriov": {"devices": [{"selector": POWER_GPU, "num_vfs": 2}]},
    "mdev": {"host_id": "p9", "parents": [{"selector": POWER_GPU, "mdevs": []}]},
    "nvidia_vgpu": {"gpus": [{"selector": POWER_GPU, "profiles": [{"profile": "V100-4Q", "count": 1}]}]},
    "virtualization_mode": {"selector": POWER_GPU, "mode": "vgpu"},
    "vfio_pci": {"devices": [POWER_GPU]},
}


@pytest.mark.parametrize("check_mode", [False, True], ids=["apply", "check"])
@pytest.mark.parametrize("module", sorted(CALLS))
def test_a_power_host_is_refused_by_every_changing_module(make_host, run_module, module, check_mode):
    root = make_host("power9_host")
    before = snapshot(root)
    result = run_module(module, dict(CALLS[module], root=root), check_mode=check_mode)
    assert result["rc"] == 1 and result["changed"] is False, result
    assert "ppc64le hosts are not supported" in result["msg"] and "sPAPR TCE" in result["msg"], result["msg"]
    assert snapshot(root) == before


def test_an_arm64_host_is_not_refused_for_its_architecture(make_host, run_module):
    root = make_host("grace_hopper")
    result = run_module("sriov", {"root": root, "devices": [{"selector": "10de:2342", "num_vfs": 0}]},
                        check_mode=True)
    assert "not supported" not in result.get("msg", ""), result
