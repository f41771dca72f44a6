# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Random specs on fixture hosts: check mode predicts the real run exactly (result, diff, success or
the same failure) and writes nothing; a second run changes nothing."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.gpuvirt.host.tests.reliability import faults
from ansible_collections.gpuvirt.host.tests.reliability.support import (
    BOOTLOADER_TREES,
    CACHE,
    DGPU,
    L40S,
    NVME,
    changed_paths,
    digest,
)
from ansible_collections.gpuvirt.host.tests.unit.plugins.conftest import BOOT_FIXTURES

EXAMPLES = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Keys that legitimately differ between check mode and a real run.
UNPREDICTED = {"invocation", "warnings", "deprecations", "rc"}

mdev_specs = st.fixed_dictionaries(
    {
        "parents": st.lists(
            st.sampled_from(
                [
                    ("mbochs", "mbochs-small"),
                    ("mbochs", "mbochs-medium"),
                    ("mbochs", "mbochs-large"),
                    ("mdpy", "mdpy-vga"),
                    ("mdpy", "mdpy-hd"),
                    ("mtty", "mtty-2"),
                ]
            ),
            min_size=1,
            max_size=3,
            unique=True,
        ),
        "counts": st.lists(st.integers(0, 5), min_size=3, max_size=3),
        "exclusive": st.booleans(),
    }
)
sriov_specs = st.fixed_dictionaries({"num_vfs": st.integers(0, 5), "autoprobe": st.sampled_from([None, True, False])})
KERNEL_POOL = [
    "intel_iommu=on",
    "amd_iommu=on",
    "iommu=pt",
    "vfio-pci.ids=10de:1e04",
    "quiet",
    "splash",
    "console=ttyS0,115200",
    "hugepages=16",
    "root=/dev/mapper/vg-new",
]
kernel_specs = st.fixed_dictionaries(
    {
        "present": st.lists(st.sampled_from(KERNEL_POOL), max_size=4, unique=True),
        "absent": st.lists(
            st.sampled_from(["quiet", "splash", "iommu", "intel_iommu", "nomodeset", "console"]),
            max_size=3,
            unique=True,
        ),
        "bootloader": st.sampled_from(sorted(BOOTLOADER_TREES)),
    }
)
vgpu_specs = st.fixed_dictionaries(
    {
        "profile": st.sampled_from(["L40S-8Q", "L40S-4Q", "L40S-1B"]),
        "count": st.integers(0, 4),
        "exclusive": st.booleans(),
    }
)
vfio_specs = st.fixed_dictionaries(
    {
        "devices": st.lists(st.sampled_from([DGPU, "0000:01:00.1", "10de:1e04"]), min_size=1, max_size=2, unique=True),
        "state": st.sampled_from(["present", "absent"]),
        "persistent": st.booleans(),
        "persistence": st.sampled_from(["auto", "modprobe", "driverctl"]),
        "companions": st.booleans(),
    }
)


def _args(module, spec):
    if module == "mdev":
        parents = {}
        for (parent, type_id), count in zip(spec["parents"], spec["counts"]):
            parents.setdefault(parent, []).append({"type": type_id, "count": count})
        return {"parents": [{"selector": p, "mdevs": m, "exclusive": spec["exclusive"]} for p, m in parents.items()]}
    if module == "sriov":
        device = {"selector": NVME, "num_vfs": spec["num_vfs"]}
        if spec["autoprobe"] is not None:
            device["drivers_autoprobe"] = spec["autoprobe"]
        return {"devices": [device]}
    if module == "kernel_cmdline":
        return {"present": spec["present"], "absent": spec["absent"], "bootloader": spec["bootloader"]}
    if module == "nvidia_vgpu":
        return {
            "gpus": [
                {
                    "selector": L40S,
                    "profiles": [{"profile": spec["profile"], "count": spec["count"]}],
                    "exclusive": spec["exclusive"],
                }
            ]
        }
    return dict(spec)


@pytest.fixture
def fresh(_templates, _host_tree_base):
    made = []

    def make(kind):
        base = tempfile.mkdtemp(prefix="spec-", dir=_host_tree_base)
        made.append(base)
        root = os.path.join(base, "root")
        if kind in BOOTLOADER_TREES:
            shutil.copytree(os.path.join(BOOT_FIXTURES, BOOTLOADER_TREES[kind]), root, symlinks=True)
        else:
            shutil.copytree(_templates(kind), root, symlinks=True)
        return root

    yield make
    for base in made:
        shutil.rmtree(base, ignore_errors=True)


def _problem(module, root, args):
    """None when check mode predicts the run exactly and a second run changes nothing."""
    before = digest(root)
    predicted = _with_diff(module, root, args, check_mode=True)
    if changed_paths(before, digest(root)):
        return "check mode wrote %s" % changed_paths(before, digest(root))[:3]
    actual = _with_diff(module, root, args)
    if (predicted["rc"] != 0) != (actual["rc"] != 0):
        return "check mode %s but the run %s: %s" % (
            "failed" if predicted["rc"] else "succeeded",
            "failed" if actual["rc"] else "succeeded",
            str(predicted.get("msg") or actual.get("msg"))[:200],
        )
    if actual["rc"] != 0:
        if predicted.get("msg") != actual.get("msg"):
            return "check mode and the run failed differently: %r / %r" % (predicted.get("msg"), actual.get("msg"))
        if changed_paths(before, digest(root)):
            return "a failed run changed %s" % changed_paths(before, digest(root))[:3]
        return None
    keys = (set(predicted) | set(actual)) - UNPREDICTED
    wrong = sorted(k for k in keys if _comparable(k, predicted.get(k)) != _comparable(k, actual.get(k)))
    if wrong:
        return "check mode mispredicted %s: %r vs %r" % (wrong, predicted.get(wrong[0]), actual.get(wrong[0]))
    if bool(actual.get("changed")) != bool(changed_paths(before, digest(root))):
        return "changed=%s but the tree %s" % (
            actual.get("changed"),
            "changed" if changed_paths(before, digest(root)) else "did not change",
        )
    again = faults.call_module(module, root, args)
    if again["rc"] != 0 or again.get("changed"):
        return "a second run %s" % ("failed: %s" % again.get("msg") if again["rc"] else "changed again")
    return None


def _comparable(key, value):
    """The NVIDIA type cache records what the GPU shows, and a GPU shows its full list of types
    only once its vGPUs are gone: after a run that deletes them it learns more than check mode
    could read. Its diff is compared by path only; every other diff and key exactly."""
    if key != "diff" or not isinstance(value, list):
        return value
    return [
        {"after_header": d.get("after_header")} if str(d.get("after_header", "")).endswith(CACHE) else d for d in value
    ]


def _with_diff(module, root, args, check_mode=False):
    return faults.call_module(module, root, args, check_mode=check_mode, diff=True)


def _run_spec(module, kind, spec, fresh, tally):
    root = fresh(kind if kind != "boot" else spec["bootloader"])
    tally("random spec", module, _problem(module, root, _args(module, spec)), repr(spec))


@EXAMPLES
@given(spec=mdev_specs)
def test_mdev(spec, fresh, tally):
    _run_spec("mdev", "combined", spec, fresh, tally)


@EXAMPLES
@given(spec=sriov_specs)
def test_sriov(spec, fresh, tally):
    _run_spec("sriov", "combined", spec, fresh, tally)


@EXAMPLES
@given(spec=kernel_specs)
def test_kernel_cmdline(spec, fresh, tally):
    _run_spec("kernel_cmdline", "boot", spec, fresh, tally)


@EXAMPLES
@given(spec=vgpu_specs)
def test_nvidia_vgpu(spec, fresh, tally):
    _run_spec("nvidia_vgpu", "combined", spec, fresh, tally)


@EXAMPLES
@given(spec=vfio_specs)
def test_vfio_pci(spec, fresh, tally):
    _run_spec("vfio_pci", "desktop", spec, fresh, tally)
