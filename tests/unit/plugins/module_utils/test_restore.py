# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import types

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import hoststate, mdev, nvidia_vgpu, restore, sriov
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import read_int
from ansible_collections.gpuvirt.host.tests.fixtures.hostgen import load_description
from ansible_collections.gpuvirt.host.tests.sim.hosts import MACHINE_ID, mediated_lab
from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim
from ansible_collections.gpuvirt.host.tests.sim.nvidia_vgpu_sim import attach, fake_sriov_manage

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
MEDIUM = [mdev.deterministic_uuid(MACHINE_ID, "mbochs", "mbochs-medium", i) for i in range(2)]
HD = mdev.deterministic_uuid(MACHINE_ID, "mdpy", "mdpy-hd", 0)
NVME = "0000:04:00.0"
A100 = "0000:b1:00.0"


@pytest.fixture
def lab(make_host):
    root = make_host(mediated_lab())
    set_uptime(root, 14.25)
    return root


def set_uptime(root, seconds):
    with open(os.path.join(root, "proc/uptime"), "w") as handle:
        handle.write("%.2f 20.00\n" % seconds)


def record(root, mdevs=None, sriov=None):
    state = hoststate.empty_state()
    state["mdevs"] = mdevs or {}
    state["sriov"] = sriov or {}
    path = hoststate.state_path(root)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(hoststate.render_state(state))


def lab_state():
    entries = {value: {"parent": "mbochs", "type": "mbochs-medium"} for value in MEDIUM}
    entries[HD] = {"parent": "mdpy", "type": "mdpy-hd"}
    return entries


def run(root, **kwargs):
    out = io.StringIO()
    kwargs.setdefault("timeout", 0.3)
    kwargs.setdefault("interval", 0.01)
    status = restore.Restore(root=root, out=out, **kwargs).run()
    return status, out.getvalue()


def test_restores_every_recorded_mdev_and_times_it(lab):
    record(lab, lab_state())
    with KernelSim(lab).active():
        status, log = run(lab)
    assert status["ok"] is True and status["failed"] == 0
    for value, entry in lab_state().items():
        assert mdev.read_mdev(lab, value) == (entry["parent"], entry["type"])
    done = [r for r in status["results"] if r["step"] == "mdevs"]
    assert [r["item"] for r in done] == sorted(lab_state(), key=lambda v: (str(lab_state()[v]), v))
    assert all(r["message"].startswith("created on") and r["message"].endswith("read back") for r in done)
    # Virtual parents are waited for in the driver step, before anything is created.
    assert [r["item"] for r in status["results"] if r["step"] == "driver"] == ["mbochs", "mdpy"]
    assert status["boot_to_restored_s"] == 14.25
    assert "[   14.250 s since boot] mdevs %s: created on mbochs (mbochs-medium), read back" % MEDIUM[0] in log
    assert log.rstrip().endswith("restored: 5 item(s), 0 failed, 0.000 s; boot to restored: 14.250 s")


def test_mdev_already_started_by_mdevctl_is_verified_not_recreated(lab):
    record(lab, lab_state())
    sim = KernelSim(lab)
    with sim.active():
        mdev.create_mdev(lab, "mdpy", "mdpy-hd", HD)
        sim.writes.clear()
        status, _log = run(lab)
    assert status["ok"] is True
    assert [r["message"] for r in status["results"] if r["item"] == HD] == [
        "already present on mdpy (mdpy-hd), verified"
    ]
    assert not any(HD in value for _path, value in sim.writes)


def install_mdevctl(root, binary="usr/sbin/mdevctl", rule_calls="/usr/sbin/mdevctl"):
    for relative, text in (
        (binary, ""),
        ("usr/lib/udev/rules.d/60-mdevctl.rules", 'ACTION=="add", RUN+="%s start-parent-mdevs %%k"\n' % rule_calls),
    ):
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(text)


def test_mdevctl_gets_the_first_go_at_the_mdevs_it_defines(lab):
    record(lab, lab_state())
    install_mdevctl(lab)
    for value, entry in lab_state().items():
        path = mdev.mdevctl_path(lab, entry["parent"], value)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(mdev.render_mdevctl_definition(entry["type"]))
    sim = KernelSim(lab)
    with sim.active():
        mdev.create_mdev(lab, "mdpy", "mdpy-hd", HD)  # as mdevctl's udev rule would
        started = time.monotonic()
        status, log = run(lab, mdevctl_grace=0.5)
        took = time.monotonic() - started
    assert status["ok"] is True, log
    messages = {r["item"]: r["message"] for r in status["results"] if r["step"] == "mdevs"}
    assert 0.5 <= took < 1.0  # one grace period for the two mdevctl did not start, not one each
    assert messages[HD] == "started by mdevctl on mdpy (mdpy-hd), verified"
    assert messages[MEDIUM[0]] == (
        "created on mbochs (mbochs-medium), read back (mdevctl had not started it within 0.5 s)"
    )


@pytest.mark.parametrize("defined", [True, False])
def test_an_mdev_another_creator_is_still_making_is_waited_for(lab, defined):
    # The kernel shows /sys/bus/mdev/devices/<uuid> (device_add()) before the parent driver's probe, and links
    # mdev_type only after it (mdev_device_create()): mdevctl's udev rule, or another tool, is at work.
    record(lab, {HD: {"parent": "mdpy", "type": "mdpy-hd"}})
    if defined:
        install_mdevctl(lab)
        path = mdev.mdevctl_path(lab, "mdpy", HD)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(mdev.render_mdevctl_definition("mdpy-hd"))
    sim = KernelSim(lab)
    with sim.active():
        mdev.create_mdev(lab, "mdpy", "mdpy-hd", HD)
        device = os.path.realpath(os.path.join(lab, "sys/bus/mdev/devices", HD))
        target = os.readlink(os.path.join(device, "mdev_type"))
        os.unlink(os.path.join(device, "mdev_type"))
        assert mdev.read_mdev(lab, HD) == ("mdpy", None) and mdev.read_complete_mdev(lab, HD) is None
        probe = threading.Timer(0.2, os.symlink, (target, os.path.join(device, "mdev_type")))
        probe.start()
        status, log = run(lab, timeout=2.0, mdevctl_grace=2.0)
        probe.join()
    assert status["ok"] is True, log
    (message,) = [r["message"] for r in status["results"] if r["step"] == "mdevs"]
    assert message == ("started by mdevctl" if defined else "already present") + " on mdpy (mdpy-hd), verified"


def test_no_grace_when_mdevctl_cannot_start_them(lab):
    """Debian bookworm: the rule calls /usr/sbin/mdevctl, the package installs /usr/bin/mdevctl."""
    record(lab, lab_state())
    install_mdevctl(lab, binary="usr/bin/mdevctl")
    for value, entry in lab_state().items():
        path = mdev.mdevctl_path(lab, entry["parent"], value)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(mdev.render_mdevctl_definition(entry["type"]))
    with KernelSim(lab).active():
        started = time.monotonic()
        status, log = run(lab, mdevctl_grace=5.0)
        took = time.monotonic() - started
    assert status["ok"] is True and took < 2.0, log
    assert "mdevctl will not start them (mdevctl's udev rule" in log
    assert all(r["message"].endswith("read back") for r in status["results"] if r["step"] == "mdevs")


def test_a_missing_parent_fails_its_items_only(lab):
    entries = lab_state()
    entries["0b9c6e45-1a8e-4e43-a9d7-3b6c1b0e0a11"] = {"parent": "mgone", "type": "mgone-1"}
    record(lab, entries)
    with KernelSim(lab).active():
        status, log = run(lab)
    assert status["ok"] is False and status["failed"] == 2  # the parent in step 1, its mdev in step 4
    assert "mdev parent mgone registering did not happen within 0.3 s" in log
    assert all(mdev.read_mdev(lab, value) is not None for value in lab_state())
    assert "restore INCOMPLETE: 7 item(s), 2 failed" in log


def test_a_refused_create_is_retried_then_reported(lab):
    record(lab, {MEDIUM[0]: {"parent": "mbochs", "type": "mbochs-medium"}})
    sim = KernelSim(lab)
    sim.refuse_after("mbochs", 0)
    with sim.active():
        status, log = run(lab, attempts=3)
    assert status["ok"] is False
    assert len([w for w in sim.writes if w[0].endswith("/create")]) == 3
    assert "(after 3 attempts)" in log


def test_an_mdev_with_another_type_is_not_touched(lab):
    record(lab, {HD: {"parent": "mdpy", "type": "mdpy-hd"}})
    with KernelSim(lab).active():
        mdev.create_mdev(lab, "mdpy", "mdpy-vga", HD)
        status, log = run(lab)
    assert status["ok"] is False and "exists on mdpy with type mdpy-vga instead of mdpy-hd" in log
    assert mdev.read_mdev(lab, HD) == ("mdpy", "mdpy-vga")


def test_unusable_state_file_is_reported(lab):
    path = hoststate.state_path(lab)
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as handle:
        handle.write("{not json")
    status, log = run(lab)
    assert status["ok"] is False and "cannot read the state file" in log


def test_no_state_file_is_nothing_to_do(lab):
    status, log = run(lab)
    assert status["ok"] is True and status["items"] == 0 and "restored: 0 item(s)" in log


def test_vfs_come_back_before_the_mdevs(lab):
    record(lab, lab_state(), sriov={NVME: {"num_vfs": 2}})
    sim, _sriov, _nvidia = attach(lab)
    with sim.active():
        status, log = run(lab)
    assert status["ok"] is True, log
    assert read_int(os.path.join(lab, "sys/bus/pci/devices", NVME, "sriov_numvfs")) == 2
    assert os.path.islink(os.path.join(lab, "sys/bus/pci/devices", NVME, "virtfn1"))
    steps = [r["step"] for r in status["results"]]
    assert steps == ["driver", "driver", "driver", "sriov", "mdevs", "mdevs", "mdevs"]
    assert status["results"][0]["message"] == "present, driver nvme"
    assert status["results"][3]["message"] == "num_vfs 2 (was 0), read back"


def test_legacy_vgpu_mdevs_wait_for_their_vfs(make_host):
    """An A100 after a reboot: no VFs, so no parents, until the restore enables them."""
    description = load_description("datacenter_a100")
    for device in description["devices"]:
        if device["address"] == "b1:00.0":
            legacy_types = device["sriov"]["vf"]["mdev_types"]
            device["sriov"]["num_vfs"] = 0
    for key in ("patch_devices", "mdevs", "processes"):
        description.pop(key)
    root = make_host(description)
    set_uptime(root, 31.5)
    sim, _sriov, nvidia = attach(root)
    nvidia.configure_gpu(A100, legacy_types=legacy_types)
    value = mdev.deterministic_uuid(MACHINE_ID, "0000:b1:00.5", "nvidia-471", 0)
    record(root, {value: {"parent": "0000:b1:00.5", "type": "nvidia-471"}}, sriov={A100: {"num_vfs": 4}})
    with sim.active():
        status, log = run(root)
    assert status["ok"] is True, log
    # The parent is a VF-to-be: not waited for before the VFs exist.
    assert [(r["step"], r["item"]) for r in status["results"]] == [
        ("driver", A100),
        ("sriov", A100),
        ("mdevs", value),
    ]
    assert mdev.read_mdev(root, value) == ("0000:b1:00.5", "nvidia-471")


def test_runs_on_a_target_without_ansible(lab, tmp_path):
    """The unit's command line, with only module_utils copied and Ansible made unimportable."""
    target = tmp_path / "lib"
    utils = target / "ansible_collections/gpuvirt/host/plugins/module_utils"
    shutil.copytree(os.path.join(REPO, "plugins/module_utils"), str(utils))
    blocker = tmp_path / "blocker/ansible"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('the restore must not need Ansible')\n")
    record(lab, lab_state())
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "blocker"), str(target), os.path.join(REPO, "tests/sim/site")]),
        "GPUVIRT_KERNEL_SIM": lab,
    }
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    command = [python, "-m", "ansible_collections.gpuvirt.host.plugins.module_utils.restore", "--root", lab]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "boot to restored: 14.250 s" in done.stdout
    with open(os.path.join(lab, restore.STATUS_PATH)) as handle:
        status = json.load(handle)
    assert status["ok"] is True and status["items"] == 5
    assert all(mdev.read_mdev(lab, value) is not None for value in lab_state())


def test_an_unusable_entry_fails_its_item_and_the_later_steps_still_run(lab):
    """A vGPU error or a malformed entry is reported as that item's failure, never a crash."""
    record(lab, lab_state(), sriov={NVME: {"num_vfs": "four"}})
    path = hoststate.state_path(lab)
    with open(path) as handle:
        state = json.load(handle)
    state["nvidia_vgpu"] = {"0000:04:00.1": {"type_id": "not-a-number"}}
    with open(path, "w") as handle:
        json.dump(state, handle)
    with KernelSim(lab).active():
        status, log = run(lab)
    assert status["ok"] is False
    failed = [r for r in status["results"] if not r["ok"]]
    assert {r["step"] for r in failed} <= {"driver", "sriov", "nvidia_vgpu"} and failed
    assert all("Traceback" not in r["message"] for r in failed)
    assert any(r["step"] == "sriov" and "ValueError" in r["message"] for r in failed)
    done = [r for r in status["results"] if r["step"] == "mdevs"]
    assert len(done) == 3 and all(r["ok"] for r in done)
    assert "restore INCOMPLETE" in log


def test_a_vgpu_error_is_caught_by_the_restore(lab, monkeypatch):
    def refuse(root, vf, type_id, retries=10, delay=0.1):
        raise nvidia_vgpu.VgpuError("%s: current_vgpu_type reads 'garbage'" % vf)

    vf = "0000:04:00.1"
    attribute = os.path.join(lab, "sys/bus/pci/devices", vf, "nvidia")
    os.makedirs(attribute, exist_ok=True)
    with open(os.path.join(attribute, "current_vgpu_type"), "w") as handle:
        handle.write("garbage\n")
    monkeypatch.setattr(nvidia_vgpu, "restore_vf", refuse)
    state = hoststate.empty_state()
    state["nvidia_vgpu"] = {vf: {"type_id": 1030, "type_name": "NVIDIA L40S-1B"}}
    status, log = run(lab, state=state)
    assert status["ok"] is False
    assert [(r["step"], r["ok"]) for r in status["results"]] == [("nvidia_vgpu", False)]
    assert "current_vgpu_type reads 'garbage'" in status["results"][0]["message"]


def test_the_unit_sets_up_the_vfs_before_the_vendors_services_start():
    """nvidia-mig-manager creates the GPU instances of MIG-backed vGPUs, after SR-IOV is set up
    (the reference's sriov unit orders itself Before= it)."""
    unit = restore.render_unit("/usr/local/lib/gpuvirt", "/usr/bin/python3", 60, 10)
    section = unit.split("[Unit]\n", 1)[1].split("\n[", 1)[0].splitlines()
    assert "Before=nvidia-mig-manager.service" in section
    assert "Before=libvirtd.service virtqemud.service" in section
    assert section.index("After=systemd-modules-load.service") < section.index("Before=nvidia-mig-manager.service")


# -- MIG-backed vGPU types: the late restore, after nvidia-mig-manager ------------------------------

A100_TYPES = {
    700: "NVIDIA A100-1-5C", 701: "NVIDIA A100-2-10C", 702: "NVIDIA A100-3-20C", 703: "NVIDIA A100-7-40C",
    710: "NVIDIA A100-4C", 711: "NVIDIA A100-40C",
}  # fmt: skip
A100_VF0, A100_VF1 = "0000:b1:00.4", "0000:b1:00.5"


def a100_after_reboot(make_host, **types):
    """The A100 host after a reboot, in MIG mode (which persists) with no GPU instance and no VF."""
    description = load_description("datacenter_a100")
    for device in description["devices"]:
        if device["address"] == "b1:00.0":
            device["sriov"]["num_vfs"] = 0
    for key in ("patch_devices", "mdevs", "processes"):
        description.pop(key)
    root = make_host(description)
    sim, _sriov, nvidia = attach(root)
    nvidia.configure_gpu(A100, **types)
    nvidia.set_mig_mode(A100, True)
    return root, sim, nvidia


@pytest.fixture
def a100_mig(make_host):
    """The A100 host after a reboot, in MIG mode (which persists) with no GPU instance and no VF; the
    state file records the VFs and two MIG-backed vGPUs."""
    root, sim, nvidia = a100_after_reboot(make_host, types=A100_TYPES)
    state = hoststate.empty_state()
    state["sriov"] = {A100: {"num_vfs": 4}}
    state["nvidia_vgpu"] = {
        A100_VF0: {"type_id": 700, "type_name": "NVIDIA A100-1-5C"},
        A100_VF1: {"type_id": 701, "type_name": "NVIDIA A100-2-10C"},
    }
    path = hoststate.state_path(root)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(hoststate.render_state(state))
    return root, sim, nvidia


def current_type(root, vf):
    return read_int(os.path.join(root, "sys/bus/pci/devices", vf, "nvidia/current_vgpu_type"))


def test_mig_backed_types_are_left_to_the_late_restore(a100_mig):
    """Before nvidia-mig-manager no GPU instance exists: the first unit sets up the VFs and leaves the
    MIG-backed types, as done, to the late unit (not a failure, no write, no wait)."""
    root, sim, _nvidia = a100_mig
    with sim.active():
        status, log = run(root)
    assert status["ok"] is True, log
    assert [(r["step"], r["item"]) for r in status["results"]] == [
        ("driver", A100), ("sriov", A100), ("nvidia_vgpu", A100_VF0), ("nvidia_vgpu", A100_VF1),
    ]
    assert "is MIG-backed: gpuvirt-restore-late.service writes it" in status["results"][2]["message"]
    assert current_type(root, A100_VF0) == 0 and current_type(root, A100_VF1) == 0


def test_the_late_restore_writes_them_once_the_gpu_instances_exist(a100_mig):
    root, sim, nvidia = a100_mig
    with sim.active():
        run(root)
        nvidia.create_gpu_instances(A100, [1, 2])  # what nvidia-mig-manager does from its configuration
        status, log = run(root, late=True)
    assert status["ok"] is True, log
    assert [(r["step"], r["item"]) for r in status["results"]] == [
        ("nvidia_vgpu", A100_VF0), ("nvidia_vgpu", A100_VF1),
    ]
    assert status["results"][0]["message"] == "type 700 (NVIDIA A100-1-5C), read back"
    assert current_type(root, A100_VF0) == 700 and current_type(root, A100_VF1) == 701
    assert "the items that need the vendors' services" in log
    # Again (a restart of the unit): nothing to write.
    with sim.active():
        again, _log = run(root, late=True)
    assert [r["message"] for r in again["results"]] == ["type 700 already", "type 701 already"]


def test_the_late_restore_names_the_missing_gpu_instance(a100_mig):
    """No nvidia-mig-manager (or a configuration without that instance): each item fails with what it
    needs, nothing is written, the others are still restored."""
    root, sim, nvidia = a100_mig
    with sim.active():
        run(root)
        nvidia.create_gpu_instances(A100, [1])
        status, log = run(root, late=True)
    assert status["ok"] is False
    assert [(r["item"], r["ok"]) for r in status["results"]] == [(A100_VF0, True), (A100_VF1, False)]
    message = status["results"][1]["message"]
    assert "does not offer type 701 (NVIDIA A100-2-10C)" in message
    assert "MIG mode must be on and a GPU instance of its size must exist" in message
    assert current_type(root, A100_VF0) == 700 and current_type(root, A100_VF1) == 0


def test_only_mig_backed_entries_wait_for_the_late_restore():
    state = {"nvidia_vgpu": {
        "0000:cb:00.4": {"type_id": 1041, "type_name": "NVIDIA L40S-8Q"},
        "0000:cb:00.5": {"type_id": 700, "type_name": "NVIDIA A100-1-5C"},
        "0000:cb:00.6": {"type_id": 701},  # no name recorded: restored at once, as before
    }}
    (step,) = [s for s in restore.steps() if not isinstance(s, str) and s.name == "nvidia_vgpu"]
    assert [item for item, _action in step.late_items(state, "/")] == ["0000:cb:00.5"]
    early = dict(step.items(state, "/"))
    assert sorted(early) == ["0000:cb:00.4", "0000:cb:00.5", "0000:cb:00.6"]
    assert "MIG-backed" in early["0000:cb:00.5"](None)
    assert restore.steps(late=True) == [step]


def test_the_late_run_writes_its_own_status_file(a100_mig):
    root, sim, nvidia = a100_mig
    with sim.active():
        assert restore.main(["--root", root, "--timeout", "0.3"]) == 0
        nvidia.create_gpu_instances(A100, [1, 2])
        assert restore.main(["--root", root, "--late", "--timeout", "0.3"]) == 0
    with open(os.path.join(root, restore.STATUS_PATH)) as handle:
        first = json.load(handle)
    with open(os.path.join(root, restore.LATE_STATUS_PATH)) as handle:
        late = json.load(handle)
    assert first["items"] == 4 and late["items"] == 2 and late["ok"] is True


A100_LEGACY_TYPES = [
    {"id": "nvidia-699", "name": "NVIDIA A100-1-5C", "description": "framebuffer=5120M"},
    {"id": "nvidia-471", "name": "NVIDIA A100-4C", "description": "framebuffer=4096M"},
]
LEGACY_MIG = "6c3e1ab4-4a52-4e2c-9a3e-0a4d9c1e2f01"


def test_a_mig_backed_mdev_of_the_older_vgpu_manager_waits_for_the_late_restore(make_host):
    # vGPU 16 and older on an A100: the vGPU types are mdev types of the VFs, recorded by gpuvirt.host.mdev.
    # A MIG-backed one needs the GPU instances nvidia-mig-manager creates, which it does after this unit.
    root, sim, nvidia = a100_after_reboot(make_host, legacy_types=A100_LEGACY_TYPES)
    record(root, mdevs={LEGACY_MIG: {"parent": A100_VF0, "type": "nvidia-699"}}, sriov={A100: {"num_vfs": 4}})
    with sim.active():
        first, log = run(root)
        assert first["ok"] is True, log
        assert mdev.read_mdev(root, LEGACY_MIG) is None
        (message,) = [r["message"] for r in first["results"] if r["step"] == "mdevs"]
        assert message.startswith("type nvidia-699 (NVIDIA A100-1-5C) is MIG-backed: gpuvirt-restore-late.service")
        nvidia.create_gpu_instances(A100, [1])  # nvidia-mig-manager.service
        late, log = run(root, late=True)
    assert late["ok"] is True, log
    assert [(r["step"], r["item"]) for r in late["results"]] == [("nvidia_vgpu", LEGACY_MIG)]
    assert mdev.read_mdev(root, LEGACY_MIG) == (A100_VF0, "nvidia-699")


# -- a vendor tool that enables fewer VFs than recorded ------------------------------------------------

L40S = "0000:cb:00.0"


@pytest.fixture
def l40s_after_reboot(make_host):
    """The L40S host after a reboot: no VFs; the state file records all 32, enabled by sriov-manage."""
    root = make_host("l40s_vgpu", patch_devices={"cb:00.4": {"nvidia_vgpu": {"creatable": {}, "current": 0}}})
    sim, _kernel, _nvidia = attach(root)
    with sim.active():
        sriov.set_num_vfs(root, L40S, 0, delay=0)
    state = hoststate.empty_state()
    state["sriov"] = {L40S: {"num_vfs": 32, "method": "sriov_manage"}}
    path = hoststate.state_path(root)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(hoststate.render_state(state))
    return root, sim


def with_tool(command):
    runner = restore.CommandRunner()
    runner.get_bin_path = lambda name, opt_dirs=None: command if name == "sriov-manage" else "/usr/bin/" + name
    return runner


def test_sriov_manage_enabling_fewer_vfs_than_recorded_fails_the_item(l40s_after_reboot, tmp_path):
    root, sim = l40s_after_reboot
    command = fake_sriov_manage(str(tmp_path / "bin"), root, partial_first=1000, partial_vfs=4)
    out = io.StringIO()
    restorer = restore.Restore(root=root, out=out, timeout=0.3, interval=0.01, attempts=1)
    restorer.runner = with_tool(command)
    with sim.active():
        status = restorer.run()
    (item,) = [r for r in status["results"] if r["step"] == "sriov"]
    assert item["ok"] is False, out.getvalue()
    assert "enabled only 4 of the 32 VFs (recorded) of %s" % L40S in item["message"]
    assert read_int(os.path.join(root, "sys/bus/pci/devices", L40S, "sriov_numvfs")) == 0


# -- the time budget: items on a failed GPU, the run's deadline, SIGTERM ---------------------------------


def test_items_on_a_gpu_whose_driver_never_comes_fail_at_once(l40s_after_reboot, tmp_path):
    """The GPU's driver is not built for the new kernel: its driver item waits once; its sriov and vfio
    items, the vendor items on its VFs and the mdevs on its VFs fail at once, naming that cause."""
    root, sim = l40s_after_reboot
    os.unlink(os.path.join(root, "sys/bus/pci/devices", L40S, "driver"))
    vfs = sriov.vf_addresses(root, L40S, 16)
    state = hoststate.load_state(root)
    state["sriov"][L40S]["vfio"] = True
    state["nvidia_vgpu"] = {vf: {"type_id": 1030, "type_name": "NVIDIA L40S-1B"} for vf in vfs}
    on_vf = "0b9c6e45-1a8e-4e43-a9d7-3b6c1b0e0a11"
    state["mdevs"] = {on_vf: {"parent": vfs[1], "type": "nvidia-1030"}}
    with sim.active():
        status, log = run(root, state=state, timeout=0.3, mdevctl_grace=0)
    results = status["results"]
    assert [(r["step"], r["item"]) for r in results][:3] == [("driver", L40S), ("sriov", L40S), ("vfio", L40S)]
    assert "a driver binding to %s did not happen within 0.3 s" % L40S in results[0]["message"]
    cause = "%s failed its driver step (a driver binding to %s did not happen within 0.3 s)" % (L40S, L40S)
    assert results[1]["message"] == results[2]["message"] == "not tried: " + cause
    later = results[3:]
    assert [r["step"] for r in later] == ["nvidia_vgpu"] * 16 + ["mdevs"]
    for vf, result in zip(vfs, later):
        assert result["message"] == "not tried: %s is a VF of %s, which %s" % (vf, L40S, cause[len(L40S) + 1:])
    assert later[-1]["message"] == "not tried: %s is a VF of %s, which %s" % (vfs[1], L40S, cause[len(L40S) + 1:])
    assert all(not r["ok"] and r["action"] == "not tried" for r in results[1:])
    assert status["duration_s"] < restore.run_deadline(0.3, 0)


def test_the_driver_waits_count_from_the_steps_start(lab):
    """Four mdev parents that never register cost one timeout together, not one each."""
    entries = {
        mdev.deterministic_uuid(MACHINE_ID, "gone%d" % i, "t", 0): {"parent": "gone%d" % i, "type": "gone-t"}
        for i in range(4)
    }
    record(lab, entries)
    with KernelSim(lab).active():
        status, log = run(lab, timeout=1.0)
    driver = [r for r in status["results"] if r["step"] == "driver"]
    assert len(driver) == 4 and all("registering did not happen within 1 s" in r["message"] for r in driver)
    assert all(r["message"].startswith("not tried: gone") for r in status["results"] if r["step"] == "mdevs")
    assert status["duration_s"] < 3.0, log  # 4 s or more if each waited its own


def test_the_run_ends_by_its_deadline_and_writes_its_status(lab):
    """Twelve mdevs whose type never appears would wait 0.5 s each; the deadline (1 s) ends the run."""
    entries = {
        mdev.deterministic_uuid(MACHINE_ID, "mbochs", "gone-%d" % i, 0): {"parent": "mbochs", "type": "gone-%d" % i}
        for i in range(12)
    }
    record(lab, entries)
    with KernelSim(lab).active():
        code = restore.main(["--root", lab, "--timeout", "0.5", "--mdevctl-grace", "0", "--deadline", "1"])
    assert code == 1
    with open(os.path.join(lab, restore.STATUS_PATH)) as handle:
        status = json.load(handle)
    assert status["deadline_s"] == 1.0 and status["items"] == 13  # the parent's driver item and the 12 mdevs
    mdevs = [r for r in status["results"] if r["step"] == "mdevs"]
    assert not any(r["ok"] for r in mdevs)
    untried = [r for r in mdevs if r["action"] == "not tried"]
    assert len(untried) >= 8
    assert untried[0]["message"] == "not tried: the restore's deadline (1 s after it started) has passed"
    assert status["duration_s"] < 4.0  # 6 s or more without the deadline


@pytest.mark.parametrize("timeout, grace", [(60, 10), (5, 0), (120, 30)])
def test_the_units_give_the_run_a_margin_over_its_deadline(timeout, grace):
    def deadline_and_start_timeout(unit):
        command = [line for line in unit.splitlines() if line.startswith("ExecStart=")][0].split()
        (start,) = [line for line in unit.splitlines() if line.startswith("TimeoutStartSec=")]
        return float(command[command.index("--deadline") + 1]), int(start.split("=", 1)[1])

    prefix, python = "/usr/local/lib/gpuvirt", "/usr/bin/python3"
    first = deadline_and_start_timeout(restore.render_unit(prefix, python, timeout, grace))
    late = deadline_and_start_timeout(restore.render_late_unit(prefix, python, timeout))
    assert first[0] == restore.run_deadline(timeout, grace) and late[0] == restore.run_deadline(timeout)
    for deadline, start in (first, late):
        assert deadline >= 4 * timeout and start >= deadline + restore.STOP_MARGIN


def test_sigterm_writes_the_status_of_what_was_done(lab, monkeypatch):
    """systemd stops the unit while an item waits: the status file still says what was done and where it
    stopped, and the items after it are not tried."""
    entries = lab_state()
    entries["0b9c6e45-1a8e-4e43-a9d7-3b6c1b0e0a11"] = {"parent": "mgone", "type": "mgone-1"}
    record(lab, entries)
    real_sleep = time.sleep

    def sleep(seconds):
        os.kill(os.getpid(), signal.SIGTERM)  # as systemd does once TimeoutStartSec has passed
        real_sleep(0.05)

    class Unhandled(Exception):
        pass

    def unhandled(signum, frame):  # what the test gets if the restore does not handle SIGTERM itself
        raise Unhandled()

    monkeypatch.setattr(restore, "time", types.SimpleNamespace(monotonic=time.monotonic, sleep=sleep))
    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        with KernelSim(lab).active():
            code = restore.main(["--root", lab, "--timeout", "30"])
        assert code == 1 and signal.getsignal(signal.SIGTERM) == unhandled
    finally:
        signal.signal(signal.SIGTERM, before)
    with open(os.path.join(lab, restore.STATUS_PATH)) as handle:
        status = json.load(handle)
    assert status["ok"] is False
    assert [(r["step"], r["item"], r["ok"]) for r in status["results"]] == [
        ("driver", "mbochs", True), ("driver", "mdpy", True), ("restore", "*", False),
    ]
    assert status["results"][-1]["message"] == (
        "stopped by SIGTERM (systemd stopping the unit, or its TimeoutStartSec passing) during driver mgone; "
        "the items after it were not tried"
    )
