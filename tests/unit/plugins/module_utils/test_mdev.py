# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import errno
import os

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import mdev
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import SysfsWriteError
from ansible_collections.gpuvirt.host.tests.sim.hosts import MACHINE_ID, MACHINE_ID_FILE, hold, mediated_lab
from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim

A100_PF = "0000:b1:00.0"
A100_MDEV = "6c3e1ab4-4a52-4e2c-9a3e-0a4d9c1e2f01"


@pytest.fixture
def lab(make_host):
    return make_host(mediated_lab())


def available(root, parent, type_id):
    path = os.path.join(root, "sys/class/mdev_bus", parent, "mdev_supported_types", type_id, "available_instances")
    with open(path) as handle:
        return int(handle.read())


def declare(selector, *entries, exclusive=False):
    return {"selector": selector, "mdevs": list(entries), "exclusive": exclusive}


# -- names -----------------------------------------------------------------------------------------


def test_deterministic_uuid_depends_on_every_input():
    base = mdev.deterministic_uuid(MACHINE_ID, "mbochs", "mbochs-medium", 0)
    assert base == mdev.deterministic_uuid(MACHINE_ID, "mbochs", "mbochs-medium", 0)
    assert mdev.normalize_uuid(base) == base
    others = {
        mdev.deterministic_uuid("another-host", "mbochs", "mbochs-medium", 0),
        mdev.deterministic_uuid(MACHINE_ID, "mdpy", "mbochs-medium", 0),
        mdev.deterministic_uuid(MACHINE_ID, "mbochs", "mbochs-large", 0),
        mdev.deterministic_uuid(MACHINE_ID, "mbochs", "mbochs-medium", 1),
    }
    assert base not in others and len(others) == 4


@pytest.mark.parametrize(
    "query, expected",
    [
        ("nvidia-471", "nvidia-471"),
        ("NVIDIA A100-4C", "nvidia-471"),
        ("A100-4C", "nvidia-471"),
        ("a100-10c", "nvidia-474"),
        ("  A100-40C ", "nvidia-476"),
    ],
)
def test_type_by_id_name_or_profile(make_host, query, expected):
    root = make_host("datacenter_a100")
    types = mdev.read_snapshot(root).parents["0000:b1:00.5"]
    assert mdev.resolve_type(types, query, "0000:b1:00.5") == expected


def test_unknown_type_lists_what_exists(lab):
    types = mdev.read_snapshot(lab).parents["mbochs"]
    with pytest.raises(mdev.MdevError) as error:
        mdev.resolve_type(types, "mbochs-huge", "mbochs")
    assert "mbochs-medium" in str(error.value) and "mbochs-huge" in str(error.value)


def test_ambiguous_type_is_refused():
    types = {
        "a-1": mdev.MdevType(id="a-1", name="Vendor X-1"),
        "b-1": mdev.MdevType(id="b-1", name="Other X-1"),
    }
    with pytest.raises(mdev.MdevError, match="ambiguous"):
        mdev.resolve_type(types, "X-1", "p")
    assert mdev.resolve_type(types, "Other X-1", "p") == "b-1"


# -- selectors -------------------------------------------------------------------------------------


def test_selectors_virtual_address_id_model(make_host):
    root = make_host("datacenter_a100")
    snapshot = mdev.read_snapshot(root)
    vfs = ["0000:b1:00.%d" % n for n in range(4, 8)] + ["0000:b1:01.%d" % n for n in range(8)]
    vfs += ["0000:b1:02.%d" % n for n in range(4)]
    for selector in ("b1:00.0", "0000:b1:00.0", "00000000:b1:00.0", "10de:20f1", "A100 PCIe", "a100"):
        targets = mdev.resolve_selector(snapshot, selector)
        assert [t.label for t in targets] == [A100_PF], selector
        assert targets[0].parents == vfs
    assert [t.parents for t in mdev.resolve_selector(snapshot, "b1:00.6")] == [["0000:b1:00.6"]]


@pytest.mark.parametrize(
    "selector, message",
    [
        ("0000:99:00.0", "no PCI device 0000:99:00.0"),
        ("ffff:ffff", "matches no card on this host"),
        ("Radeon", "matches no card on this host"),
        ("", "empty selector"),
        ("0000:04:00.0", "offers no mediated device types"),
    ],
)
def test_bad_selectors(make_host, selector, message):
    snapshot = mdev.read_snapshot(make_host("datacenter_a100"))
    with pytest.raises(mdev.MdevError, match=message):
        mdev.resolve_selector(snapshot, selector)


def test_per_vf_vgpu_card_points_to_nvidia_vgpu(make_host):
    snapshot = mdev.read_snapshot(make_host("l40s_vgpu"))
    with pytest.raises(mdev.MdevError, match="gpuvirt.host.nvidia_vgpu"):
        mdev.resolve_selector(snapshot, "L40S")


def test_sriov_card_without_vfs_says_so(lab):
    snapshot = mdev.read_snapshot(lab)
    with pytest.raises(mdev.MdevError, match="virtual functions are not enabled"):
        mdev.resolve_selector(snapshot, "04:00.0")


# -- planning --------------------------------------------------------------------------------------


def test_plan_counts_existing_and_generates_the_rest(make_host):
    root = make_host("datacenter_a100", files=MACHINE_ID_FILE)
    snapshot = mdev.read_snapshot(root)
    planned = mdev.plan(snapshot, [declare("A100", {"type": "A100-4C", "count": 3})])
    creations = planned.creations
    # The existing A100-4C counts; its VF is full, so the two new ones go to the next VFs.
    assert [(p, t) for p, _u, t in creations] == [("0000:b1:00.5", "nvidia-471"), ("0000:b1:00.6", "nvidia-471")]
    assert [u for _p, u, _t in creations] == [
        mdev.deterministic_uuid(MACHINE_ID, "0000:b1:00.5", "nvidia-471", 0),
        mdev.deterministic_uuid(MACHINE_ID, "0000:b1:00.6", "nvidia-471", 0),
    ]
    assert planned.parents["0000:b1:00.4"].declared == [(A100_MDEV, "nvidia-471")]
    assert not planned.removals


def test_plan_shared_pool_sum_of_fractions(lab):
    snapshot = mdev.read_snapshot(lab)
    fits = mdev.plan(
        snapshot, [declare("mbochs", {"type": "mbochs-medium", "count": 4}, {"type": "mbochs-large", "count": 3})]
    )
    assert len(fits.creations) == 7  # 4 x 16 MB + 3 x 64 MB = 256 MB: exactly the pool
    with pytest.raises(mdev.MdevError) as error:
        mdev.plan(
            snapshot, [declare("mbochs", {"type": "mbochs-medium", "count": 5}, {"type": "mbochs-large", "count": 3})]
        )
    text = str(error.value)
    assert "mbochs-large: 3 declared, 0 present, 3 to create, available_instances 4" in text
    assert "sum(to create / available_instances) <= 1" in text


def test_plan_over_capacity_single_type(lab):
    with pytest.raises(mdev.MdevError, match=r"5 declared, 0 present, 5 to create, available_instances 4, 1 cannot"):
        mdev.plan(mdev.read_snapshot(lab), [declare("mbochs", {"type": "mbochs-large", "count": 5})])


def test_plan_explicit_uuids(lab):
    snapshot = mdev.read_snapshot(lab)
    value = "4B20D080-1B54-4048-85B3-A6A62D165C01"
    planned = mdev.plan(snapshot, [declare("mdpy", {"type": "mdpy-hd", "uuids": [value]})])
    assert planned.creations == [("mdpy", value.lower(), "mdpy-hd")]
    with pytest.raises(mdev.MdevError, match="not a UUID"):
        mdev.plan(snapshot, [declare("mdpy", {"type": "mdpy-hd", "uuids": ["nope"]})])
    with pytest.raises(mdev.MdevError, match="declared twice"):
        mdev.plan(
            snapshot,
            [
                declare("mdpy", {"type": "mdpy-hd", "uuids": [value]}),
                declare("mbochs", {"type": "mbochs-small", "uuids": [value]}),
            ],
        )


def test_plan_uuid_with_another_type_is_refused(make_host):
    snapshot = mdev.read_snapshot(make_host("datacenter_a100"))
    with pytest.raises(mdev.MdevError, match="exists with type nvidia-471, not nvidia-472"):
        mdev.plan(snapshot, [declare("A100", {"type": "A100-5C", "uuids": [A100_MDEV]})])
    with pytest.raises(mdev.MdevError, match="cannot move between parents"):
        mdev.plan(snapshot, [declare("b1:00.5", {"type": "A100-4C", "uuids": [A100_MDEV]})])


def test_plan_parent_selected_twice(make_host):
    snapshot = mdev.read_snapshot(make_host("datacenter_a100"))
    with pytest.raises(mdev.MdevError, match="selected twice"):
        mdev.plan(snapshot, [declare("A100"), declare("b1:00.6")])


def test_plan_exclusive_keeps_what_a_process_holds(make_host):
    snapshot = mdev.read_snapshot(make_host("datacenter_a100"))
    assert snapshot.mdevs[A100_MDEV].in_use
    planned = mdev.plan(snapshot, [declare("A100", exclusive=True)])
    assert planned.removals == [] and planned.parents["0000:b1:00.4"].kept_in_use == [A100_MDEV]
    assert "in use by qemu-system-x86 (pid 31337)" in planned.warnings[0]
    forced = mdev.plan(snapshot, [declare("A100", exclusive=True)], force=True)
    assert forced.removals == [("0000:b1:00.4", A100_MDEV)]


def test_plan_needs_a_host_identity_for_generated_uuids(lab):
    os.unlink(os.path.join(lab, "etc/machine-id"))
    snapshot = mdev.read_snapshot(lab)
    with pytest.raises(mdev.MdevError, match="machine-id"):
        mdev.plan(snapshot, [declare("mbochs", {"type": "mbochs-medium", "count": 1})])
    given = mdev.read_snapshot(lab, host_id="fleet-node-7")
    value = mdev.plan(given, [declare("mbochs", {"type": "mbochs-medium", "count": 1})]).creations[0][1]
    assert value == mdev.deterministic_uuid("fleet-node-7", "mbochs", "mbochs-medium", 0)


def test_plan_recheck_when_only_removals_make_room(lab):
    sim = KernelSim(lab)
    with sim.active():
        for index in range(4):
            mdev.create_mdev(
                lab, "mbochs", "mbochs-large", mdev.deterministic_uuid("x", "mbochs", "mbochs-large", index)
            )
    snapshot = mdev.read_snapshot(lab)
    assert available(lab, "mbochs", "mbochs-medium") == 0
    planned = mdev.plan(snapshot, [declare("mbochs", {"type": "mbochs-medium", "count": 2}, exclusive=True)])
    # The two are planned where the removals free room (the whole declaration, for check mode to show);
    # the run plans again once the removals are done.
    assert len(planned.removals) == 4 and planned.recheck
    assert [(parent, type_id) for parent, _value, type_id in planned.creations] == [("mbochs", "mbochs-medium")] * 2
    # Removing one large frees at least one large, which is all that can be known beforehand.
    same = mdev.plan(snapshot, [declare("mbochs", {"type": "mbochs-large", "count": 2}, exclusive=True)])
    assert len(same.removals) == 2 and same.recheck == []


# -- applying --------------------------------------------------------------------------------------


def test_create_and_remove_read_back(lab):
    value = mdev.deterministic_uuid(MACHINE_ID, "mbochs", "mbochs-medium", 0)
    with KernelSim(lab).active():
        mdev.create_mdev(lab, "mbochs", "mbochs-medium", value)
        assert mdev.read_mdev(lab, value) == ("mbochs", "mbochs-medium")
        assert available(lab, "mbochs", "mbochs-large") == 3  # the pool is shared
        mdev.remove_mdev(lab, value)
    assert mdev.read_mdev(lab, value) is None
    assert available(lab, "mbochs", "mbochs-large") == 4


def test_create_that_the_kernel_ignores_is_an_error(lab):
    # No simulator: the write lands in a plain file and no device appears.
    with pytest.raises(mdev.MdevError, match="the kernel shows no such mdev"):
        mdev.create_mdev(
            lab, "mbochs", "mbochs-medium", mdev.deterministic_uuid("h", "mbochs", "mbochs-medium", 0), timeout=0.1
        )


def test_remove_of_a_held_mdev_is_refused_by_the_kernel(lab):
    value = mdev.deterministic_uuid(MACHINE_ID, "mdpy", "mdpy-hd", 0)
    with KernelSim(lab).active():
        mdev.create_mdev(lab, "mdpy", "mdpy-hd", value)
        hold(lab, value)
        assert mdev.read_snapshot(lab).mdevs[value].in_use
        with pytest.raises(SysfsWriteError) as error:
            mdev.remove_mdev(lab, value)
    assert error.value.errno == errno.EBUSY


def test_executor_rolls_back_creations_and_removals(lab):
    sim = KernelSim(lab)
    old = mdev.deterministic_uuid("old", "mbochs", "mbochs-small", 0)
    with sim.active():
        mdev.create_mdev(lab, "mbochs", "mbochs-small", old)
        sim.refuse_after("mbochs", 1)
        executor = mdev.Executor(lab)
        executor.remove("mbochs", old, "mbochs-small")
        executor.create("mbochs", mdev.deterministic_uuid("new", "mbochs", "mbochs-medium", 0), "mbochs-medium")
        with pytest.raises(SysfsWriteError):
            executor.create("mbochs", mdev.deterministic_uuid("new", "mbochs", "mbochs-medium", 1), "mbochs-medium")
        sim.refuse_after("mbochs", 10)
        assert executor.rollback() == []
    assert list(mdev.read_snapshot(lab).mdevs) == [old]
    assert available(lab, "mbochs", "mbochs-small") == 63


# -- mdevctl ---------------------------------------------------------------------------------------


def test_mdevctl_definitions_round_trip(lab):
    assert not mdev.mdevctl_present(lab)
    os.makedirs(os.path.join(lab, "usr/sbin"))
    open(os.path.join(lab, "usr/sbin/mdevctl"), "w").close()
    assert mdev.mdevctl_present(lab) and mdev.mdevctl_binary(lab) == "/usr/sbin/mdevctl"
    value = mdev.deterministic_uuid(MACHINE_ID, "mbochs", "mbochs-medium", 0)
    path = mdev.mdevctl_path(lab, "mbochs", value)
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as handle:
        handle.write(mdev.render_mdevctl_definition("mbochs-medium"))
    definitions = mdev.read_mdevctl_definitions(lab)
    assert definitions[value]["data"] == {"mdev_type": "mbochs-medium", "start": "auto", "attrs": []}
    assert mdev.definition_matches(definitions[value], "mbochs", "mbochs-medium")
    assert not mdev.definition_matches(definitions[value], "mbochs", "mbochs-large")


def test_defined_uuids_from_mdevctl_dumpjson():
    output = """[
      {"mbochs": [{"0b9c6e45-1a8e-4e43-a9d7-3b6c1b0e0a11": {"mdev_type": "mbochs-medium", "start": "auto"}}]},
      {"mdpy": [{"7F5B3A3C-6F1E-4E9B-8F3E-1D2C3B4A5F60": {"mdev_type": "mdpy-hd", "start": "auto"}}]}
    ]"""
    assert mdev.defined_uuids_from_mdevctl(output) == {
        "0b9c6e45-1a8e-4e43-a9d7-3b6c1b0e0a11",
        "7f5b3a3c-6f1e-4e9b-8f3e-1d2c3b4a5f60",
    }
    assert mdev.defined_uuids_from_mdevctl("") == set()


DEBIAN_RULE = (
    'ACTION=="add", TEST=="/etc/mdevctl.d/$kernel", RUN+="/bin/sh -c \'{ /usr/sbin/mdevctl start-parent-mdevs %k '
    "2>&3 | logger -t mdevctl; } 3>&1 1>&2 | logger -t mdevctl -p 2'\"\n"
)


def write(root, relative, text=""):
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)


def test_mdevctl_autostart_follows_the_udev_rule(lab):
    assert mdev.mdevctl_autostart(lab) == (False, "no udev rule starts mdevctl's definitions when a parent appears")
    write(lab, "usr/bin/mdevctl")
    write(lab, "usr/lib/udev/rules.d/60-mdevctl.rules", DEBIAN_RULE)
    works, reason = mdev.mdevctl_autostart(lab)
    assert works is False
    assert reason == (
        "mdevctl's udev rule /usr/lib/udev/rules.d/60-mdevctl.rules runs /usr/sbin/mdevctl, which does not exist"
    )
    # A local rule of the same name wins over the packaged one.
    write(lab, "etc/udev/rules.d/60-mdevctl.rules", DEBIAN_RULE.replace("/usr/sbin/", "/usr/bin/"))
    assert mdev.mdevctl_autostart(lab) == (True, "/etc/udev/rules.d/60-mdevctl.rules runs /usr/bin/mdevctl")
