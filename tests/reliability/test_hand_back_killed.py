# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A ``vfio_pci state: absent`` run killed after it unbound a function from vfio-pci is completed by the
next run.

The unbind blocks in the kernel while a process still holds the device (``vfio_unregister_group_dev()``
waits for the user to let go, uninterruptibly once signalled), so an Ansible timeout or a SIGKILL lands
there, and the process dies as the unbind completes. The function is then on no driver: the next run
must still know it as one to hand back, which its ``driver_override`` (cleared only just before the
reprobe) tells it."""

from __future__ import annotations

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import vfio_bind
from ansible_collections.gpuvirt.host.tests.reliability import faults
from ansible_collections.gpuvirt.host.tests.reliability.support import DESKTOP, DGPU
from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim
from ansible_collections.gpuvirt.host.tests.sim.pci_kernel import PciKernel

FUNCTIONS = ("0000:01:00.0", "0000:01:00.1", "0000:01:00.2", "0000:01:00.3")
HOST_DRIVERS = {"0000:01:00.0": "nvidia", "0000:01:00.1": "snd_hda_intel", "0000:01:00.2": "xhci_hcd",
                "0000:01:00.3": "nvidia-gpu"}
UNBIND = {"devices": [DGPU], "persistent": False, "state": "absent"}


def bound_desktop(make_host):
    root = make_host(DESKTOP)
    PciKernel(KernelSim(root))  # the simulator notes every device's host driver before anything moves
    done = faults.call_module("vfio_pci", root, {"devices": [DGPU], "persistent": False})
    assert done["rc"] == 0 and all(vfio_bind.read_driver(root, a) == "vfio-pci" for a in FUNCTIONS), done
    return root


def drivers(root):
    return {address: vfio_bind.read_driver(root, address) for address in FUNCTIONS}


@pytest.fixture
def after_unbind(make_host):
    """The write points that come right after a function's unbind, before its reprobe is asked for."""
    points, result = faults.count_points("vfio_pci", bound_desktop(make_host), UNBIND)
    assert result["rc"] == 0, result
    unbinds = [i for i, point in enumerate(points) if point.kind == "write" and point.path.endswith("/unbind")]
    assert len(unbinds) == len(FUNCTIONS)
    return [(i + 2, points[i + 1]) for i in unbinds]  # 1-based: the point after each unbind


def test_a_hand_back_killed_after_an_unbind_is_completed_by_the_next_run(make_host, after_unbind, tally):
    for kill_at, point in after_unbind:
        root = bound_desktop(make_host)
        faults.run_killed("vfio_pci", root, UNBIND, kill_at)
        left = drivers(root)
        again = faults.call_module("vfio_pci", root, UNBIND)
        problem = None
        if again["rc"] != 0:
            problem = "the next run failed: %s" % again.get("msg")
        elif drivers(root) != HOST_DRIVERS:
            problem = "after the kill %s, the next run left %s" % (left, drivers(root))
        elif faults.call_module("vfio_pci", root, UNBIND)["changed"]:
            problem = "a third run changed again"
        tally("fault", "kill+rerun/vfio_pci hand-back", problem, "killed at %d (%s)" % (kill_at, point))
