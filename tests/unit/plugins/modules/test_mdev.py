# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``gpuvirt.host.mdev`` run in-process against fixture trees whose kernel side is simulated."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
from ansible.module_utils import _internal as ansible_internal

from ansible_collections.gpuvirt.host.plugins.module_utils.mdev import deterministic_uuid
from ansible_collections.gpuvirt.host.plugins.module_utils.mdev_info import mdevs
from ansible_collections.gpuvirt.host.tests.sim.hosts import (
    MACHINE_ID,
    MACHINE_ID_FILE,
    hold,
    hold_cdev,
    hold_vfio_group,
    mediated_lab,
    tree_state,
)
from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim

A100_MDEV = "6c3e1ab4-4a52-4e2c-9a3e-0a4d9c1e2f01"
LAB_DECLARATION = [
    {"selector": "mbochs", "mdevs": [{"type": "mbochs-medium", "count": 2}], "exclusive": True},
    {"selector": "mdpy", "mdevs": [{"type": "mdpy-hd", "count": 1}]},
]


@pytest.fixture
def lab(make_host):
    return make_host(mediated_lab())


@pytest.fixture
def mdev_module(run_module, monkeypatch):
    """Run the module with the simulated kernel active for ``root``."""
    # Once a controller-side module (ansible.errors) is imported in this process, module warnings
    # go to the controller's display instead of the result; a module on a target never sees that.
    monkeypatch.setattr(ansible_internal, "is_controller", False)

    def run(root, check_mode=False, diff=False, sim=None, **args):
        args.setdefault("root", root)
        with (sim or KernelSim(root)).active():
            return run_module("mdev", args, check_mode=check_mode, diff=diff)

    return run


def state_file(root):
    with open(os.path.join(root, "etc/gpuvirt/host-state.json")) as handle:
        return json.load(handle)


def warnings(result):
    """Warning texts (ansible-core 2.19 reports each as a summary dict)."""
    return [w["event"]["msg"] if isinstance(w, dict) else w for w in result.get("warnings", [])]


def install_mdevctl(root):
    os.makedirs(os.path.join(root, "usr/bin"), exist_ok=True)
    open(os.path.join(root, "usr/bin/mdevctl"), "w").close()


def test_creates_records_and_is_idempotent(lab, mdev_module):
    result = mdev_module(lab, parents=LAB_DECLARATION)
    assert result["rc"] == 0 and result["changed"] is True, result
    mediums = [deterministic_uuid(MACHINE_ID, "mbochs", "mbochs-medium", i) for i in range(2)]
    hd = deterministic_uuid(MACHINE_ID, "mdpy", "mdpy-hd", 0)
    assert sorted(result["created"]) == sorted(mediums + [hd])
    assert result["parents"]["mbochs"]["after"] == [{"uuid": u, "type": "mbochs-medium"} for u in sorted(mediums)]
    assert result["parents"]["mdpy"]["created"] == [hd]
    assert result["reboot_required"] is False
    on_disk = sorted(os.listdir(os.path.join(lab, "sys/bus/mdev/devices")))
    assert on_disk == sorted(mediums + [hd])
    assert state_file(lab)["mdevs"] == {
        mediums[0]: {"parent": "mbochs", "type": "mbochs-medium"},
        mediums[1]: {"parent": "mbochs", "type": "mbochs-medium"},
        hd: {"parent": "mdpy", "type": "mdpy-hd"},
    }
    assert result["persistence"]["mdevctl"] is False

    again = mdev_module(lab, parents=LAB_DECLARATION)
    assert again["changed"] is False and again["created"] == [] and again["removed"] == []
    assert again["parents"]["mbochs"]["before"] == again["parents"]["mbochs"]["after"]


def test_check_mode_predicts_the_real_run(lab, mdev_module):
    untouched = tree_state(lab)
    predicted = mdev_module(lab, check_mode=True, diff=True, parents=LAB_DECLARATION)
    assert tree_state(lab) == untouched
    real = mdev_module(lab, diff=True, parents=LAB_DECLARATION)
    for key in ("changed", "created", "removed", "parents", "mdevs", "persistence"):
        assert predicted[key] == real[key], key
    assert predicted["diff"] == real["diff"]
    assert "mbochs %s mbochs-medium" % real["created"][0] in predicted["diff"][0]["after"]
    second = mdev_module(lab, check_mode=True, parents=LAB_DECLARATION)
    assert second["changed"] is False


def test_over_capacity_fails_with_numbers_and_changes_nothing(lab, mdev_module):
    untouched = tree_state(lab)
    result = mdev_module(
        lab,
        parents=[
            {"selector": "mdpy", "mdevs": [{"type": "mdpy-hd", "count": 1}]},
            {
                "selector": "mbochs",
                "mdevs": [{"type": "mbochs-medium", "count": 2}, {"type": "mbochs-large", "count": 4}],
            },
        ],
    )
    assert result["rc"] == 1 and result["changed"] is False
    assert "mbochs-large: 4 declared, 0 present, 4 to create, available_instances 4" in result["msg"]
    assert tree_state(lab) == untouched


def test_kernel_refusal_midway_rolls_back(lab, mdev_module):
    sim = KernelSim(lab)
    sim.refuse_after("mbochs", 1)
    untouched = tree_state(lab)
    result = mdev_module(lab, sim=sim, parents=LAB_DECLARATION)
    assert result["rc"] == 1 and result["changed"] is False
    assert "failed after 1 of the 2 planned on that parent" in result["msg"]
    assert "available_instances at the refusal: mbochs-large=3, mbochs-medium=15, mbochs-small=60" in result["msg"]
    assert "Rolled back the 1 change(s)" in result["msg"]
    assert tree_state(lab) == untouched


@pytest.mark.parametrize("holder", [hold, hold_cdev], ids=["vfio-group", "iommufd-cdev"])
def test_exclusive_never_removes_an_mdev_in_use(lab, mdev_module, holder):
    first = mdev_module(lab, parents=[{"selector": "mbochs", "mdevs": [{"type": "mbochs-medium", "count": 2}]}])
    held, free = first["created"]
    holder(lab, held)
    result = mdev_module(lab, parents=[{"selector": "mbochs", "mdevs": [], "exclusive": True}])
    assert result["changed"] is True and result["removed"] == [free]
    assert result["parents"]["mbochs"]["kept_in_use"] == [held]
    assert any(held in warning and "in use by qemu-system-x86" in warning for warning in warnings(result))
    assert os.path.lexists(os.path.join(lab, "sys/bus/mdev/devices", held))
    # The kept mdev stays recorded so that it also survives a reboot.
    assert list(state_file(lab)["mdevs"]) == [held]

    again = mdev_module(lab, parents=[{"selector": "mbochs", "mdevs": [], "exclusive": True}])
    assert again["changed"] is False


def test_force_removes_what_is_free_of_the_kernel_lock(lab, mdev_module):
    created = mdev_module(lab, parents=[{"selector": "mdpy", "mdevs": [{"type": "mdpy-hd", "count": 1}]}])["created"]
    hold(lab, created[0])
    # The simulated kernel refuses to remove a held device (EBUSY): force tries, fails cleanly.
    result = mdev_module(lab, force=True, parents=[{"selector": "mdpy", "mdevs": [], "exclusive": True}])
    assert result["rc"] == 1 and "busy" in result["msg"].lower()
    assert os.path.lexists(os.path.join(lab, "sys/bus/mdev/devices", created[0]))


def test_mdevctl_definitions_written_and_pruned(lab, mdev_module):
    install_mdevctl(lab)
    stray = "0b9c6e45-1a8e-4e43-a9d7-3b6c1b0e0a11"
    stray_path = os.path.join(lab, "etc/mdevctl.d/mbochs", stray)
    os.makedirs(os.path.dirname(stray_path))
    with open(stray_path, "w") as handle:
        handle.write('{"mdev_type": "mbochs-small", "start": "auto", "attrs": []}')
    result = mdev_module(lab, diff=True, parents=LAB_DECLARATION)
    assert result["persistence"]["mdevctl"] is True and result["persistence"]["mdevctl_autostart"] is False
    assert any("mdevctl will not start the defined mdevs at boot" in w for w in warnings(result))
    for value in result["created"]:
        parent = "mdpy" if value == deterministic_uuid(MACHINE_ID, "mdpy", "mdpy-hd", 0) else "mbochs"
        with open(os.path.join(lab, "etc/mdevctl.d", parent, value)) as handle:
            data = json.load(handle)
        assert data == {"mdev_type": "mdpy-hd" if parent == "mdpy" else "mbochs-medium", "start": "auto", "attrs": []}
    # mbochs is exclusive: a definition for an undeclared UUID would bring it back at boot.
    assert not os.path.exists(stray_path)
    assert stray_path in result["persistence"]["files_changed"]
    shown = "/" + os.path.relpath(stray_path, lab)
    assert any(d["before_header"] == shown and d["after_header"] == shown + " (removed)" for d in result["diff"])
    assert mdev_module(lab, parents=LAB_DECLARATION)["changed"] is False


def test_mdevctl_manual_definition_becomes_auto(lab, mdev_module):
    install_mdevctl(lab)
    rule = os.path.join(lab, "usr/lib/udev/rules.d/60-mdevctl.rules")
    os.makedirs(os.path.dirname(rule))
    with open(rule, "w") as handle:
        handle.write('ACTION=="add", RUN+="/usr/bin/mdevctl start-parent-mdevs %k"\n')
    value = "4b20d080-1b54-4048-85b3-a6a62d165c01"
    path = os.path.join(lab, "etc/mdevctl.d/mdpy", value)
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as handle:
        handle.write('{"mdev_type": "mdpy-hd", "start": "manual", "attrs": [{"x": "1"}]}')
    result = mdev_module(lab, parents=[{"selector": "mdpy", "mdevs": [{"type": "mdpy-hd", "uuids": [value]}]}])
    assert result["changed"] is True and result["created"] == [value]
    assert result["persistence"]["mdevctl_autostart"] is True and warnings(result) == []
    with open(path) as handle:
        assert json.load(handle) == {"mdev_type": "mdpy-hd", "start": "auto", "attrs": [{"x": "1"}]}


def test_not_persistent_leaves_records_alone(lab, mdev_module):
    result = mdev_module(lab, persistent=False, parents=LAB_DECLARATION)
    assert result["changed"] is True and result["persistence"]["files_changed"] == []
    assert not os.path.exists(os.path.join(lab, "etc/gpuvirt/host-state.json"))


@pytest.mark.parametrize(
    "parents, message",
    [
        ([{"selector": "mbochs", "mdevs": [{"type": "mbochs-huge", "count": 1}]}], "does not exist on mbochs"),
        ([{"selector": "mbochs", "mdevs": [{"type": "mbochs-small", "uuids": ["1234"]}]}], "not a UUID"),
        ([{"selector": "nothing-like-this", "mdevs": []}], "matches no card on this host"),
        ([{"selector": "mbochs", "mdevs": [{"type": "mbochs-small", "count": -1}]}], "count: -1 is out of range"),
        ([{"selector": "mbochs", "mdevs": [{"type": "mbochs-small", "count": 10**12}]}], "can hold at most 256"),
        ([{"selector": "mbochs", "mdevs": [{"type": "mbochs-small", "count": 1, "uuids": []}]}], "mutually exclusive"),
        ([{"selector": "mbochs"}, {"selector": "mbochs"}], "selected twice"),
    ],
)
def test_bad_input_changes_nothing(lab, mdev_module, parents, message):
    untouched = tree_state(lab)
    result = mdev_module(lab, parents=parents)
    assert result["rc"] == 1 and message in result["msg"]
    assert tree_state(lab) == untouched


def test_exclusive_switch_of_profile_needs_the_removal_first(lab, mdev_module):
    """Four larges fill the pool; switching to mediums only fits once they are gone."""
    mdev_module(lab, parents=[{"selector": "mbochs", "mdevs": [{"type": "mbochs-large", "count": 4}]}])
    wanted = [{"selector": "mbochs", "mdevs": [{"type": "mbochs-medium", "count": 3}], "exclusive": True}]
    predicted = mdev_module(lab, check_mode=True, diff=True, parents=wanted)
    assert predicted["changed"] is True and len(predicted["removed"]) == 4
    warned = [w for w in warnings(predicted) if "only be confirmed after removing" in w]
    assert warned and "Nothing was changed" not in warned[0], warned
    result = mdev_module(lab, diff=True, parents=wanted)
    assert result["changed"] is True and len(result["removed"]) == 4 and len(result["created"]) == 3
    assert {m["type"] for m in result["mdevs"]} == {"mbochs-medium"}
    # Check mode predicted the whole switch: the mdevs the removals make room for, the records, the diff.
    for key in ("created", "removed", "mdevs", "parents", "diff"):
        assert predicted[key] == result[key], key


def test_exclusive_switch_that_still_does_not_fit_restores_the_removed(lab, mdev_module):
    first = mdev_module(lab, parents=[{"selector": "mbochs", "mdevs": [{"type": "mbochs-large", "count": 4}]}])
    state_before = state_file(lab)
    wanted = [{"selector": "mbochs", "mdevs": [{"type": "mbochs-medium", "count": 17}], "exclusive": True}]
    result = mdev_module(lab, parents=wanted)
    assert result["rc"] == 1 and "17 declared" in result["msg"] and "Rolled back the 4 change(s)" in result["msg"]
    assert sorted(os.listdir(os.path.join(lab, "sys/bus/mdev/devices"))) == sorted(first["created"])
    assert {m["uuid"]: m["type"] for m in mdevs(lab)} == dict.fromkeys(first["created"], "mbochs-large")
    assert state_file(lab) == state_before


def test_a100_legacy_vgpus_spread_over_vfs(make_host, mdev_module):
    root = make_host("datacenter_a100", files=MACHINE_ID_FILE)
    wanted = [{"selector": "10de:20f1", "mdevs": [{"type": "A100-4C", "count": 4}], "exclusive": True}]
    result = mdev_module(root, parents=wanted)
    assert result["rc"] == 0 and len(result["created"]) == 3, result
    hosts = {m["parent"] for m in result["mdevs"] if m["type"] == "nvidia-471"}
    assert hosts == {"0000:b1:00.4", "0000:b1:00.5", "0000:b1:00.6", "0000:b1:00.7"}
    assert A100_MDEV in state_file(root)["mdevs"]  # the existing vGPU is declared too
    assert mdev_module(root, parents=wanted)["changed"] is False
    too_many = [{"selector": "10de:20f1", "mdevs": [{"type": "A100-4C", "count": 17}]}]
    failed = mdev_module(root, parents=too_many)
    assert failed["rc"] == 1 and "available_instances 12 in total over 16 parents" in failed["msg"]


def test_removing_is_refused_while_the_users_cannot_be_told(lab, mdev_module, unreadable_fds):
    """A process whose open files cannot be read may hold any mdev: removing one is refused (check mode
    too) and changes nothing unless forced; creating more where nothing is removed goes ahead."""
    created = mdev_module(lab, parents=[{"selector": "mbochs", "mdevs": [{"type": "mbochs-medium", "count": 2}]}])
    held, free = created["created"]
    hold(lab, held)
    os.unlink(os.path.join(lab, "proc/4242/fd/20"))  # QEMU let go, but the scan cannot tell
    unreadable_fds(lab, {4242: errno.EACCES})
    untouched = tree_state(lab)
    exclusive = [{"selector": "mbochs", "mdevs": [], "exclusive": True}]
    for check_mode in (True, False):
        result = mdev_module(lab, check_mode=check_mode, parents=exclusive)
        assert result["rc"] == 1 and result["changed"] is False, result
        assert "refusing to remove mdev %s" % ", ".join(sorted([held, free])) in result["msg"]
        assert "the open files of 1 process could not be read (qemu-system-x86 (pid 4242))" in result["msg"]
        assert "CAP_SYS_PTRACE" in result["msg"] and "Nothing was changed" in result["msg"]
    assert tree_state(lab) == untouched

    more = mdev_module(lab, parents=[{"selector": "mbochs", "mdevs": [{"type": "mbochs-medium", "count": 3}]}])
    assert more["rc"] == 0 and more["changed"] is True and len(more["created"]) == 1 and more["removed"] == []

    forced = mdev_module(lab, force=True, parents=exclusive)
    assert forced["rc"] == 0 and sorted(forced["removed"]) == sorted([held, free] + more["created"]), forced
    assert any(w.startswith("force: true: removing mdev") for w in warnings(forced))


def test_removing_is_refused_while_proc_hides_processes(lab, mdev_module, hidepid):
    """/proc mounted with hidepid=invisible and read without CAP_SYS_PTRACE leaves out of its listing the
    processes this run may not trace: a VM among them may hold any mdev, as an unreadable process may."""
    created = mdev_module(lab, parents=[{"selector": "mbochs", "mdevs": [{"type": "mbochs-medium", "count": 1}]}])
    hold(lab, created["created"][0])
    hidepid(lab, hidden=(4242,))
    untouched = tree_state(lab)
    exclusive = [{"selector": "mbochs", "mdevs": [], "exclusive": True}]
    result = mdev_module(lab, parents=exclusive)
    assert result["rc"] == 1 and result["changed"] is False, result
    assert "refusing to remove mdev %s" % created["created"][0] in result["msg"]
    assert "/proc is mounted with hidepid=invisible and this run lacks CAP_SYS_PTRACE" in result["msg"]
    assert tree_state(lab) == untouched
    forced = mdev_module(lab, force=True, parents=exclusive)
    assert forced["rc"] == 0 and forced["removed"] == created["created"], forced
    assert any("hidepid=invisible" in w for w in warnings(forced))


def test_a_process_that_exited_does_not_block_removing(lab, mdev_module, unreadable_fds):
    created = mdev_module(lab, parents=[{"selector": "mbochs", "mdevs": [{"type": "mbochs-medium", "count": 1}]}])
    hold(lab, created["created"][0])
    hold_vfio_group(lab, "999", pid=4300)
    os.unlink(os.path.join(lab, "proc/4242/fd/20"))
    shutil.rmtree(os.path.join(lab, "proc/4300/fd"))  # exited after proc was listed: ENOENT
    unreadable_fds(lab, {4242: errno.EACCES})
    exclusive = [{"selector": "mbochs", "mdevs": [], "exclusive": True}]
    result = mdev_module(lab, parents=exclusive)
    assert result["rc"] == 1 and "the open files of 1 process could not be read" in result["msg"], result
    unreadable_fds(lab, {4242: errno.ENOENT})  # and now 4242 too
    result = mdev_module(lab, parents=exclusive)
    assert result["rc"] == 0 and result["removed"] == created["created"], result
    assert "warnings" not in result


def test_the_records_of_a_parent_no_longer_on_the_host_can_be_removed(lab, mdev_module):
    # A card taken out of the host (or VFs no longer enabled) leaves records the boot restore would wait
    # for at every boot; "exclusive, no mdevs" on its address removes them, as on a parent that is there.
    assert mdev_module(lab, parents=LAB_DECLARATION)["rc"] == 0
    gone = "0000:65:00.4"
    recorded = state_file(lab)
    recorded["mdevs"][A100_MDEV] = {"parent": gone, "type": "nvidia-471"}
    with open(os.path.join(lab, "etc/gpuvirt/host-state.json"), "w") as handle:
        json.dump(recorded, handle)
    declaration = [{"selector": gone, "mdevs": [], "exclusive": True}]
    predicted = mdev_module(lab, check_mode=True, diff=True, parents=declaration)
    result = mdev_module(lab, diff=True, parents=declaration)
    assert result["rc"] == 0 and result["changed"] is True, result
    assert A100_MDEV not in state_file(lab)["mdevs"] and len(state_file(lab)["mdevs"]) == 3
    assert any("0000:65:00.4 is not on this host" in w for w in warnings(result))
    for key in ("changed", "created", "removed", "parents", "diff"):
        assert predicted[key] == result[key], key
    assert mdev_module(lab, parents=declaration)["changed"] is False
    # Asking for mdevs on it still fails: there is nothing to put them on.
    wanted = mdev_module(lab, parents=[{"selector": gone, "mdevs": [{"type": "nvidia-471", "count": 1}]}])
    assert wanted["rc"] == 1 and "0000:65:00.4" in wanted["msg"]


def test_an_empty_exclusive_declaration_holds_on_a_device_with_no_types_but_not_on_a_pf(make_host, mdev_module):
    root = make_host("datacenter_a100", files=MACHINE_ID_FILE)
    # A device that offers no mdev types (a NIC here; an iGPU once GVT-g is off) holds none: a declaration of
    # none holds, with a warning that says so.
    nic = mdev_module(root, parents=[{"selector": "0000:04:00.0", "mdevs": [], "exclusive": True}])
    assert nic["rc"] == 0 and nic["changed"] is False, nic
    assert any("0000:04:00.0 offers no mediated device types now, so it holds none" in w for w in warnings(nic))
    # A physical function with SR-IOV keeps its mdevs on its VFs, recorded under theirs: with the VFs not
    # enabled, there is nothing it could say of them.
    pf = "0000:b1:00.0"
    for vf in [name for name in os.listdir(os.path.join(root, "sys/bus/pci/devices", pf)) if name.startswith("virtfn")]:
        os.unlink(os.path.join(root, "sys/bus/pci/devices", pf, vf))
    with open(os.path.join(root, "sys/bus/pci/devices", pf, "sriov_numvfs"), "w") as handle:
        handle.write("0\n")
    refused = mdev_module(root, parents=[{"selector": pf, "mdevs": [], "exclusive": True}])
    assert refused["rc"] == 1 and "its virtual functions are not enabled" in refused["msg"], refused
