# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``gpuvirt.host.vfio_pci`` and topology's verdict when ``/proc`` does not list every process
(``hidepid``): a VM this run may not trace is left out of the listing, so "nothing holds it" is not
known. That is treated as a process whose open files cannot be read: ``in_use_unknown``, refused
unless ``force: true``, and ``viable: null``.

``desktop_dgpu``: the RTX 2080 Ti (``01:00.0``) and its three functions share IOMMU group 2, on
vfio-pci here, and QEMU (pid 4242) holds ``/dev/vfio/2``. ``hidepid`` (tests/unit/conftest.py) mounts
the tree's ``/proc`` with the given options, read by a process without CAP_SYS_PTRACE unless told."""

from __future__ import annotations

import errno
import os

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import vfio_bind
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect
from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim
from ansible_collections.gpuvirt.host.tests.sim.pci_kernel import PciKernel
from ansible_collections.gpuvirt.host.tests.unit.plugins.modules import test_vfio_pci_users_unknown as users_unknown
from ansible_collections.gpuvirt.host.tests.unit.plugins.modules.test_vfio_pci_users_unknown import (
    GPU,
    GPU_FUNCTIONS,
    HOST_DRIVERS,
    QEMU,
    unknown,
    warnings,
)

HIDDEN = "/proc is mounted with hidepid=%s and this run lacks CAP_SYS_PTRACE"
# Readers that see every process: root with CAP_SYS_PTRACE, a member of the mount's gid= group.
ROOT = {"cap_eff": "000001ffffffffff", "gid": 0, "groups": [0]}
IN_GROUP = {"cap_eff": "0000000000000000", "gid": 1000, "groups": [1000, 27]}


def passed_through(make_host, processes=(QEMU,)):
    """The GPU's functions on vfio-pci, its group file open by ``processes``."""
    return users_unknown.passed_through(make_host, list(processes))


def kernel(root):
    return PciKernel(KernelSim(root), host_drivers=HOST_DRIVERS)


def hand_back(vfio_pci, root, sim, **args):
    return vfio_pci(root, kernel=sim, devices=[GPU], state="absent", persistent=False, **args)


def verdict(root):
    return next(g for g in detect(root)["gpus"] if g["address"] == GPU)["passthrough"]


@pytest.mark.parametrize("value", ["invisible", "2"])
def test_handing_back_is_refused_when_proc_hides_the_vm(make_host, vfio_pci, hidepid, value):
    """hidepid=invisible (hidepid=2 on kernels before 5.8) leaves QEMU out of the listing: no process
    is seen holding group 2, and none is unreadable, yet a VM may hold it."""
    root = passed_through(make_host)
    hidepid(root, options="rw,nosuid,hidepid=%s" % value)
    for check_mode in (True, False):
        sim = kernel(root)
        result = hand_back(vfio_pci, root, sim, check_mode=check_mode)
        assert result["rc"] == 1 and result["changed"] is False, result
        assert result["msg"].startswith("refusing to change anything")
        [refusal] = unknown(result)
        assert refusal["device"] == GPU
        assert HIDDEN % value in refusal["message"]
        assert "processes it may not trace are not listed there at all" in refusal["message"]
        assert "could not be read" not in refusal["message"] and "unbinding them now" in refusal["message"]
        assert sim.sim.writes == [] and sim.blocked == []
        assert {a: vfio_bind.read_driver(root, a) for a in GPU_FUNCTIONS} == {a: "vfio-pci" for a in GPU_FUNCTIONS}


def test_force_hands_back_with_a_warning(make_host, vfio_pci, hidepid):
    root = passed_through(make_host, [{"pid": 812, "comm": "sshd"}])
    hidepid(root, hidden=())
    result = hand_back(vfio_pci, root, kernel(root), force=True)
    assert result["rc"] == 0 and result["changed"] is True, result
    assert [r["code"] for r in result["refusals"]] == ["in_use_unknown"]
    assert any(w.startswith("force: true: going ahead although whether a running VM") and HIDDEN % "invisible" in w
               for w in warnings(result))
    assert vfio_bind.read_driver(root, GPU) != "vfio-pci"


def test_the_verdict_is_unknown_when_proc_hides_the_vm(make_host, hidepid):
    root = passed_through(make_host)
    hidepid(root, options="rw,hidepid=ptraceable")
    topology = detect(root)
    found = next(g for g in topology["gpus"] if g["address"] == GPU)["passthrough"]
    assert found["codes"] == ["in_use_unknown"] and found["viable"] is None
    assert HIDDEN % "ptraceable" in found["reasons"][0]
    [finding] = [f for f in topology["findings"] if f["code"] == "processes_unreadable"]
    assert finding["severity"] == "info" and finding["message"].startswith(HIDDEN % "ptraceable")


@pytest.mark.parametrize("reader, options", [(ROOT, "rw,hidepid=invisible"), (IN_GROUP, "rw,gid=27,hidepid=2")])
def test_a_reader_that_sees_every_process_is_not_held_up(make_host, vfio_pci, hidepid, reader, options):
    """With CAP_SYS_PTRACE, or in the mount's gid= group (invisible), the listing is complete: nothing
    running holds the GPU, so it is viable and handed back; a listed VM is in_use, as without hidepid."""
    root = passed_through(make_host, [])
    hidepid(root, hidden=(), options=options, reader=reader)
    assert verdict(root) == {"viable": True, "reasons": [], "codes": [], "devices": list(GPU_FUNCTIONS)}
    result = hand_back(vfio_pci, root, kernel(root))
    assert result["rc"] == 0 and result["changed"] is True and result["refusals"] == [], result
    assert vfio_bind.read_driver(root, GPU) != "vfio-pci"

    root = passed_through(make_host)
    hidepid(root, hidden=(), options=options, reader=reader)
    assert verdict(root)["codes"] == ["in_use"]
    result = hand_back(vfio_pci, root, kernel(root))
    assert {r["code"] for r in result["refusals"]} == {"in_use"} and result["changed"] is False


def test_hidepid_noaccess_lists_the_vm_and_refuses_its_files(make_host, vfio_pci, hidepid, unreadable_fds):
    """hidepid=noaccess (1) hides no process: QEMU is listed, its descriptors refused (EPERM), and the
    refusal says so, as before."""
    root = passed_through(make_host)
    hidepid(root, hidden=(), options="rw,hidepid=1")
    unreadable_fds(root, {4242: errno.EPERM})
    result = hand_back(vfio_pci, root, kernel(root))
    assert result["rc"] == 1 and result["changed"] is False, result
    [refusal] = unknown(result)
    assert "the open files of 1 process could not be read (qemu-system-x86 (pid 4242))" in refusal["message"]
    assert "lacks CAP_SYS_PTRACE" not in refusal["message"]
    assert verdict(root)["codes"] == ["in_use_unknown"]


def test_handing_back_is_refused_from_a_container_pid_namespace(make_host, vfio_pci):
    """Run in a container with a PID namespace of its own, the module sees none of the host's processes:
    no VM seen is not no VM, so the GPU stays on vfio-pci and the verdict is unknown."""
    root = passed_through(make_host, [])
    os.makedirs(os.path.join(root, "proc/1/ns"))
    os.symlink("pid:[4026532299]", os.path.join(root, "proc/1/ns/pid"))
    assert verdict(root)["codes"] == ["in_use_unknown"] and verdict(root)["viable"] is None
    sim = kernel(root)
    result = hand_back(vfio_pci, root, sim)
    assert result["rc"] == 1 and result["changed"] is False, result
    [refusal] = unknown(result)
    assert "/proc lists the processes of the PID namespace pid:[4026532299] (a container's)" in refusal["message"]
    assert sim.sim.writes == []
    assert vfio_bind.read_driver(root, GPU) == "vfio-pci"
