# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Faults injected into real module runs on fixture hosts, and what the next run makes of them.

- kill at every write point, then run again: the run converges on the tree a clean run gives,
  reports ``changed`` exactly when it changed something, and leaves no temp files; a third run
  changes nothing;
- ENOSPC and EIO on writing and on renaming: a clean failure (no traceback, the error named,
  ``changed`` true exactly when the tree changed, no temp files), then a run that converges;
- two runs of two writers at once on one tree, one paused at its first write while the other
  runs: both succeed and neither update is lost (each run's wish still holds afterwards);
- a guest holding a device: the device is not touched.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from ansible_collections.gpuvirt.host.tests.reliability import faults
from ansible_collections.gpuvirt.host.tests.reliability.support import (
    BOOTLOADER_TREES,
    DGPU,
    L40S,
    NVME,
    changed_paths,
    digest,
    temp_files,
    tree_digest,
)
from ansible_collections.gpuvirt.host.tests.sim.hosts import hold
from ansible_collections.gpuvirt.host.tests.sim.sriov_hosts import hold_group

WRITERS = {
    "kernel_cmdline/grub": ("kernel_cmdline", "grub", {"present": ["intel_iommu=on", "iommu=pt"], "absent": ["quiet"]}),
    "kernel_cmdline/systemd-boot": ("kernel_cmdline", "systemd-boot", {"present": ["amd_iommu=on"]}),
    "restore_unit": ("restore_unit", "empty", {}),
    "sriov": ("sriov", "combined", {"devices": [{"selector": NVME, "num_vfs": 2}]}),
    "mdev": (
        "mdev",
        "combined",
        {
            "parents": [
                {"selector": "mbochs", "mdevs": [{"type": "mbochs-small", "count": 2}]},
                {"selector": "mdpy", "mdevs": [{"type": "mdpy-hd", "count": 1}]},
            ]
        },
    ),
    "nvidia_vgpu": (
        "nvidia_vgpu",
        "combined",
        {"gpus": [{"selector": L40S, "profiles": [{"profile": "L40S-8Q", "count": 2}]}]},
    ),
    "vfio_pci": ("vfio_pci", "desktop", {"devices": [DGPU], "persistence": "modprobe"}),
}


@pytest.fixture
def tree(host, boot_tree, tmp_path):
    """``tree(kind)``: a fresh tree of that kind (a bootloader name, "empty", "combined", "desktop")."""
    count = [0]

    def make(kind):
        if kind in ("combined", "desktop"):
            return host(kind)
        count[0] += 1
        if kind == "empty":
            root = tmp_path / ("empty%d" % count[0]) / "root"
            root.mkdir(parents=True)
            return str(root)
        base = tmp_path / ("boot%d" % count[0])
        base.mkdir()
        copy = boot_tree(BOOTLOADER_TREES[kind])
        return shutil.move(copy, str(base / "root"))

    return make


def _reference(tree, writer):
    module, kind, args = WRITERS[writer]
    root = tree(kind)
    first = faults.call_module(module, root, args)
    assert first["rc"] == 0, "%s does not work on a healthy tree: %s" % (writer, first.get("msg"))
    return tree_digest(root)


def _converges(module, root, args, reference):
    """None when a run on ``root`` reaches ``reference``, reports it exactly and a second run changes
    nothing; else what went wrong."""
    before = tree_digest(root)
    result = faults.call_module(module, root, args)
    if result["rc"] != 0:
        return "the next run failed: %s" % result.get("msg")
    after = tree_digest(root)
    left = temp_files(root)
    if left:
        return "temp files left behind: %s" % left
    wrong = changed_paths(reference, tree_digest(root))
    if wrong:
        return "the next run did not converge: %s differ" % wrong[:4]
    if bool(result.get("changed")) != (before != after):
        return "the next run reported changed=%s but %s" % (
            result.get("changed"),
            "changed %s" % changed_paths(before, after)[:3] if before != after else "changed nothing",
        )
    again = faults.call_module(module, root, args)
    if again["rc"] != 0 or again.get("changed"):
        return "a second run after recovery %s" % ("failed" if again["rc"] else "changed again")
    return None


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_kill_at_every_write_point_then_run_again(writer, tree, tally):
    module, kind, args = WRITERS[writer]
    reference = _reference(tree, writer)
    root = tree(kind)
    points, _result = faults.count_points(module, root, args)
    for kill_at in range(1, len(points) + 1):
        root = tree(kind)
        faults.run_killed(module, root, args, kill_at)
        problem = _converges(module, root, args, reference)
        tally("fault", "kill+rerun/" + writer, problem, "killed at %d (%s)" % (kill_at, points[kill_at - 1]))


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_enospc_and_eio_on_write_and_rename(writer, tree, tally):
    module, kind, args = WRITERS[writer]
    reference = _reference(tree, writer)
    for kinds, label in ((("open", "write"), "write"), (("rename", "replace"), "rename")):
        for code in (faults.ENOSPC, faults.EIO):
            root = tree(kind)
            before = tree_digest(root)
            result = faults.run_failing(module, root, args, kinds, 1, code)
            after = tree_digest(root)
            case = "%s on the first %s" % (os.strerror(code), label)
            if result["rc"] == 0:
                problem = (
                    "the run succeeded although a %s failed" % label
                    if before == after or not result.get("changed")
                    else None
                )
                if problem is None:
                    problem = _converges(module, root, args, reference)
            elif "Traceback" in str(result.get("msg")) or "exception" in result:
                problem = "traceback: %s" % str(result.get("msg"))[:200]
            elif os.strerror(code) not in str(result.get("msg")):
                problem = "the message does not name the error: %s" % str(result.get("msg"))[:200]
            elif bool(result.get("changed")) != (before != after):
                problem = "reported changed=%s but the tree %s" % (
                    result.get("changed"),
                    "changed: %s" % changed_paths(before, after)[:3] if before != after else "is unchanged",
                )
            elif temp_files(root):
                problem = "temp files left behind: %s" % temp_files(root)
            else:
                problem = _converges(module, root, args, reference)
            tally("fault", "ENOSPC/EIO/" + writer, problem, case)


PAIRS = [
    ("sriov", "mdev"),
    ("sriov", "nvidia_vgpu"),
    ("mdev", "nvidia_vgpu"),
    ("mdev", "mdev:mdpy"),
    ("kernel_cmdline/grub", "kernel_cmdline/grub:pt"),
    ("restore_unit", "restore_unit"),
]
VARIANTS = {
    "mdev:mdpy": ("mdev", "combined", {"parents": [{"selector": "mdpy", "mdevs": [{"type": "mdpy-vga", "count": 1}]}]}),
    "kernel_cmdline/grub:pt": ("kernel_cmdline", "grub", {"present": ["vfio-pci.ids=10de:1e04"]}),
}


def _writer(name):
    return VARIANTS.get(name) or WRITERS[name]


@pytest.mark.parametrize("pair", PAIRS, ids="+".join)
def test_two_writers_at_once_lose_no_update(pair, tree, tally, tmp_path):
    for first, second in (pair, pair[::-1]):
        module_a, kind, args_a = _writer(first)
        module_b, _kind, args_b = _writer(second)
        root = tree(kind)
        paused, resume = str(tmp_path / "paused"), str(tmp_path / "resume")
        for flag in (paused, resume):
            if os.path.exists(flag):
                os.unlink(flag)
        child = faults.run_paused(module_a, root, args_a, paused, resume)
        while not os.path.exists(paused):
            time.sleep(0.01)
        result_b = faults.call_module(module_b, root, args_b)
        open(resume, "w").close()
        code_a = faults.wait_child(child)
        problem = None
        if result_b["rc"] != 0 and code_a == 0 and "lock" in str(result_b.get("msg")):
            # Refused while the other run held the lock, saying so: it is the user's to run again.
            result_b = faults.call_module(module_b, root, args_b)
        if code_a != 0 or result_b["rc"] != 0:
            problem = "a run failed (first: exit %s; second: %s)" % (code_a, result_b.get("msg"))
        else:
            for module, args, name in ((module_a, args_a, first), (module_b, args_b, second)):
                check = faults.call_module(module, root, args, check_mode=True)
                if check["rc"] != 0 or check.get("changed"):
                    problem = "the update of %s was lost (a check run would change it again)" % name
                    break
        tally("fault", "concurrent/" + "+".join(sorted(pair)), problem, "%s paused, %s ran" % (first, second))


def test_a_guest_holding_a_device_keeps_it(host, tally):
    from ansible_collections.gpuvirt.host.plugins.module_utils.mdev_info import mdevs

    cases = []
    root = host("desktop")
    hold_group(root, DGPU)
    cases.append(("vfio_pci binds a held GPU", "vfio_pci", root, {"devices": [DGPU]}, ["sys/bus/pci/devices/" + DGPU]))
    root = host("combined")
    faults.call_module("mdev", root, WRITERS["mdev"][2])
    held = next(m["uuid"] for m in mdevs(root) if m["parent"] == "mdpy")
    hold(root, held)
    cases.append(
        (
            "mdev removes a held mdev",
            "mdev",
            root,
            {"parents": [{"selector": "mdpy", "mdevs": [], "exclusive": True}]},
            ["sys/bus/mdev/devices/" + held],
        )
    )
    root = host("combined")
    hold_group(root, "0000:cb:00.4")
    cases.append(
        (
            "nvidia_vgpu deletes a held vGPU",
            "nvidia_vgpu",
            root,
            {"gpus": [{"selector": L40S, "profiles": [], "exclusive": True}]},
            ["sys/bus/pci/devices/0000:cb:00.4/nvidia/current_vgpu_type"],
        )
    )
    root = host("combined")
    faults.call_module("sriov", root, WRITERS["sriov"][2])
    hold_group(root, "0000:04:00.1")
    cases.append(
        (
            "sriov removes a held VF",
            "sriov",
            root,
            {"devices": [{"selector": NVME, "num_vfs": 0}]},
            ["sys/bus/pci/devices/0000:04:00.1"],
        )
    )
    for label, module, root, args, watched in cases:
        before = {
            path: digest(os.path.join(root, path))
            if os.path.isdir(os.path.join(root, path))
            else _read(os.path.join(root, path))
            for path in watched
        }
        result = faults.call_module(module, root, args)
        after = {
            path: digest(os.path.join(root, path))
            if os.path.isdir(os.path.join(root, path))
            else _read(os.path.join(root, path))
            for path in watched
        }
        text = json.dumps({key: result.get(key) for key in ("msg", "warnings", "refusals")})
        problem = None
        if before != after:
            problem = "the held device was changed"
        elif "4242" not in text and "in use" not in text:
            problem = "neither the failure nor a warning names the guest: %s" % text[:200]
        tally("fault", "guest holds a device", problem, label)


def _read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_umask_000_writes_no_world_writable_file(writer, tree, tally):
    module, kind, args = WRITERS[writer]
    root = tree(kind)
    before = digest(root)
    old = os.umask(0)
    try:
        result = faults.call_module(module, root, args)
    finally:
        os.umask(old)
    after = digest(root)
    written = [path for path in changed_paths(before, after) if path in after and after[path][0] != "link"]
    loose = [
        "%s %o" % (path, after[path][1])
        for path in written
        if after[path][1] & 0o022 and not path.startswith(("sys/", "dev/", "proc/"))
    ]
    problem = None
    if result["rc"] != 0:
        problem = "the run failed: %s" % result.get("msg")
    elif loose:
        problem = "group- or world-writable: %s" % loose[:4]
    tally("fault", "umask 000/" + writer, problem, "umask 000")


def test_the_restore_survives_an_unreadable_vgpu_type(host, tally):
    """A VF whose current_vgpu_type cannot be parsed fails that item only: no traceback, the later
    steps run and the status is complete."""
    import io

    from ansible_collections.gpuvirt.host.plugins.module_utils import hoststate, restore

    root = host("combined")
    vf = "0000:cb:00.5"
    with open(os.path.join(root, "sys/bus/pci/devices", vf, "nvidia/current_vgpu_type"), "w") as handle:
        handle.write("garbage\n")
    state = hoststate.empty_state()
    state["nvidia_vgpu"] = {vf: {"type_id": 1041, "type_name": "NVIDIA L40S-8Q"}}
    state["mdevs"] = {"6c3e1ab4-4a52-4e2c-9a3e-0a4d9c1e2f01": {"parent": "mdpy", "type": "mdpy-hd"}}
    out = io.StringIO()
    problem = None
    try:
        with faults.simulated("mdev", root):
            status = restore.Restore(root=root, out=out, state=state, timeout=0.3, interval=0.01).run()
    except Exception as error:  # noqa: BLE001 - the case is lost, not the suite
        problem = "the restore stopped: %s: %s" % (type(error).__name__, error)
    else:
        steps = {(r["step"], r["ok"]) for r in status["results"]}
        if ("mdevs", True) not in steps:
            problem = "the later steps did not run: %s" % sorted(steps)
        elif ("nvidia_vgpu", False) not in steps or "Traceback" in out.getvalue():
            problem = "the unreadable VF was not reported as that item's failure: %s" % sorted(steps)
    tally("fault", "restore: unreadable vGPU type", problem, vf)
