# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpuvirt.host.rollout over the two lab guests, run as a CI job runs it, in batches of one with the
first guest as canary. Each test is one rollout, and they build on each other (the verifier stops
at the first failure):

1. no drain hook: the canary's reboot is refused while its VM runs; the rollout stops there;
2. a drain hook and a reboot hook that does not reboot: the VM goes, the verification finds the old
   kernel and stops the rollout;
3. the VM back, the drain and undrain hooks, real reboots: the canary is drained, rebooted and
   verified; the second batch's preflight, change (an mdev) and verification follow, without a
   reboot;
4. again, with a device the second guest cannot pass through: the canary changes nothing, the
   second batch's preflight stops it before any change.

The second guest stays exactly as it was through the first two.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import testinfra

SCENARIO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(SCENARIO))
sys.path.insert(0, os.path.join(REPO, "tests", "lab"))
from layout import Layout  # noqa: E402

CANARY, SECOND = "molecule-rollout-1", "molecule-rollout-2"
HOOKS = os.path.join(SCENARIO, "hooks")
# Where each rollout's time goes (printed with its output).
TASK_TIMES = os.path.join(REPO, "tests", "bench", "callback_plugins")
INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
HOOK_LOG = "/var/lib/rollout-hooks.log"
BATCH_PLAY = "PLAY [Roll GPU virtualization out in batches]"
COMMON = {
    "target": "gpu_hosts",
    "gpuvirt_rollout_canary": 1,
    "gpuvirt_rollout_batch": 1,
    "gpuvirt_reboot": "if_needed",
}


@pytest.fixture(scope="module")
def guests():
    return {name: testinfra.get_host("ansible://" + name, ansible_inventory=INVENTORY) for name in (CANARY, SECOND)}


@pytest.fixture(scope="module")
def vm(guests):
    return guests[CANARY].ansible.get_variables()["rollout_vm"]


@pytest.fixture(scope="module")
def journal():
    """What the guests looked like before the first rollout, and what each rollout left."""
    return {}


def state(host):
    """What a rollout may change on a guest: its boot, kernel command lines, mdevs, hooks run."""
    grub = host.file("/etc/default/grub").content_string
    log = host.file(HOOK_LOG)
    return {
        "boot_id": host.file("/proc/sys/kernel/random/boot_id").content_string.strip(),
        "cmdline": host.file("/proc/cmdline").content_string.split(),
        "grub": re.search(r'^GRUB_CMDLINE_LINUX_DEFAULT="(.*)"$', grub, re.M).group(1).split(),
        "mdevs": sorted(host.file("/sys/bus/mdev/devices").listdir()),
        "hooks": log.content_string.split() if log.exists else [],
    }


def rollout(tmp_path, extra_vars, *inventories):
    """``ansible-playbook gpuvirt.host.rollout`` on the scenario's inventory: (rc, output, outcomes)."""
    report, times = tmp_path / "report", tmp_path / "task-times.json"
    command = ["ansible-playbook", "-i", INVENTORY]
    for inventory in inventories:
        command += ["-i", str(inventory)]
    command += ["gpuvirt.host.rollout", "-e", json.dumps(dict(COMMON, gpuvirt_report_dir=str(report), **extra_vars))]
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=3600, env=dict(
        os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_CALLBACK_PLUGINS=TASK_TIMES,
        ANSIBLE_CALLBACKS_ENABLED="task_times", GPUVIRT_TASK_TIMES=str(times)))
    output = done.stdout + done.stderr
    print(output)
    print("rollout: %.0f s; the slowest tasks:" % (time.monotonic() - start))
    for task in sorted(json.loads(times.read_text()), key=lambda task: -task["seconds"])[:8]:
        print("  %5.1f s  %s" % (task["seconds"], task["task"]))
    path = report / "rollout.json"
    outcomes = {item["host"]: item for item in json.loads(path.read_text())} if path.exists() else {}
    return done.returncode, output, outcomes


def batches(output):
    """The output of each batch (the play's header is printed again for each), without the recap."""
    return output.split("PLAY RECAP")[0].split(BATCH_PLAY)[1:]


def test_before_the_rollouts(guests, vm, journal):
    canary, second = state(guests[CANARY]), state(guests[SECOND])
    assert "intel_iommu=off" in canary["cmdline"] and canary["mdevs"] == [vm["mdev"]]
    assert guests[CANARY].service(vm["unit"]).is_running
    assert {"intel_iommu=on", "iommu=pt"} <= set(second["cmdline"]) and second["mdevs"] == []
    journal["before"] = {CANARY: canary, SECOND: second}


def test_a_canary_with_a_running_vm_is_not_rebooted_without_a_drain_hook(guests, vm, journal, tmp_path):
    rc, output, outcomes = rollout(tmp_path, {})

    assert rc != 0
    pid = guests[CANARY].service(vm["unit"]).systemd_properties["MainPID"]
    assert ("Refusing to reboot %s: guests are running (lab-vm (pid %s) holds mdev %s)" % (CANARY, pid, vm["mdev"])
            in output), output
    assert "Set gpuvirt_rollout_drain_tasks to a task file" in output
    canary = state(guests[CANARY])
    before = journal["before"][CANARY]
    # The configuration is in place, the reboot is not done, and the VM still runs.
    assert {"intel_iommu=on", "iommu=pt"} <= set(canary["grub"]) and "intel_iommu=off" not in canary["grub"]
    assert canary["boot_id"] == before["boot_id"] and canary["cmdline"] == before["cmdline"]
    assert guests[CANARY].service(vm["unit"]).is_running
    # The rollout stopped at the canary: the second guest was never reached, and its record says so.
    assert len(batches(output)) == 1 and SECOND not in batches(output)[0]
    assert state(guests[SECOND]) == journal["before"][SECOND]
    assert {name: outcome["status"] for name, outcome in outcomes.items()} == {CANARY: "failed", SECOND: "pending"}
    assert "Refusing to reboot" in outcomes[CANARY]["message"]


def test_a_failed_verification_of_the_canary_stops_the_rollout(guests, vm, journal, tmp_path):
    rc, output, outcomes = rollout(tmp_path, {
        "gpuvirt_rollout_drain_tasks": os.path.join(HOOKS, "drain.yml"),
        "gpuvirt_rollout_undrain_tasks": os.path.join(HOOKS, "undrain.yml"),
        "gpuvirt_rollout_reboot_tasks": os.path.join(HOOKS, "reboot_not_done.yml"),
    })

    assert rc != 0
    assert "Verification failed on %s, the rollout stops here" % CANARY in output, output
    assert "the IOMMU is off; a reboot is still required" in output
    canary = state(guests[CANARY])
    # Drained (the VM stopped), not rebooted, not undrained.
    assert canary["hooks"] == ["drain"]
    assert not guests[CANARY].service(vm["unit"]).is_running
    assert canary["boot_id"] == journal["before"][CANARY]["boot_id"]
    assert "intel_iommu=off" in canary["cmdline"]
    assert len(batches(output)) == 1 and SECOND not in batches(output)[0]
    assert state(guests[SECOND]) == journal["before"][SECOND]
    assert {name: outcome["status"] for name, outcome in outcomes.items()} == {CANARY: "failed", SECOND: "pending"}
    # It stays marked drained until a rollout has verified and undrained it.
    assert guests[CANARY].file("/etc/gpuvirt/drained").exists


def test_the_rollout_drains_and_reboots_the_canary_then_changes_the_second_guest_without_a_reboot(
        guests, vm, journal, tmp_path):
    guests[CANARY].run_test("systemctl start %s", vm["unit"])
    assert guests[CANARY].service(vm["unit"]).is_running

    rc, output, outcomes = rollout(tmp_path, {
        "gpuvirt_rollout_drain_tasks": os.path.join(HOOKS, "drain.yml"),
        "gpuvirt_rollout_undrain_tasks": os.path.join(HOOKS, "undrain.yml"),
    })

    assert rc == 0, output
    canary, second = state(guests[CANARY]), state(guests[SECOND])
    before = journal["before"]
    # The canary: drained, rebooted into the IOMMU, verified, undrained.
    assert canary["hooks"] == ["drain", "drain", "undrain"]
    assert not guests[CANARY].file("/etc/gpuvirt/drained").exists
    assert canary["boot_id"] != before[CANARY]["boot_id"]
    assert {"intel_iommu=on", "iommu=pt"} <= set(canary["cmdline"]) and "intel_iommu=off" not in canary["cmdline"]
    assert guests[CANARY].file("/sys/class/iommu/dmar0").exists
    # The second guest: its mdev created, no reboot, no drain (it had nothing to reboot for).
    assert second["boot_id"] == before[SECOND]["boot_id"]
    assert len(second["mdevs"]) == 1
    assert guests[SECOND].file("/sys/bus/mdev/devices/%s/mdev_type" % second["mdevs"][0]).linked_to.endswith(
        "/mdpy-hd")
    assert second["hooks"] == []
    keys = ("changed", "reboot_required", "rebooted", "drained")
    assert {name: tuple(outcome[key] for key in keys) for name, outcome in outcomes.items()} == {
        CANARY: ([], True, True, True),
        SECOND: (["vgpu"], False, False, False),
    }
    # One batch per guest, canary first; each batch previews, changes and verifies its own host only.
    first, then = batches(output)
    for text, host, other in ((first, CANARY, SECOND), (then, SECOND, CANARY)):
        assert host in text and other not in text
        preflight = text.index("TASK [gpuvirt.host.fleet : Detect the IOMMU, PCI and GPU topology]")
        verified = text.index("TASK [gpuvirt.host.fleet : Check the host]")
        assert preflight < verified and "ok: [%s]" % host in text[verified:].split("TASK [")[1]
    rebooting = re.compile(r"^TASK \[gpuvirt\.host\.fleet : Reboot the host\]", re.M)
    assert rebooting.search(first) and not rebooting.search(then)
    journal["rolled_out"] = {CANARY: canary, SECOND: second}


def test_a_second_rollout_changes_nothing_and_the_preflight_stops_a_blocked_batch(guests, journal, tmp_path):
    layout = Layout()
    shared = layout.role("shared_group_display")[0]["address"]
    blocked = tmp_path / "blocked.yml"
    blocked.write_text(json.dumps({"all": {"hosts": {SECOND: {"vfio_devices": [shared]}}}}))

    rc, output, outcomes = rollout(tmp_path, {
        "gpuvirt_rollout_drain_tasks": os.path.join(HOOKS, "drain.yml"),
    }, blocked)

    assert rc != 0
    assert "%s is blocked, nothing was changed on it" % SECOND in output, output
    assert layout.role("shared_group_endpoint")[0]["address"] in output
    assert re.search(r"^%s\s*:\s*ok=\d+\s+changed=0\s+unreachable=0\s+failed=0" % CANARY, output, re.M), output
    assert state(guests[CANARY]) == journal["rolled_out"][CANARY]
    assert state(guests[SECOND]) == journal["rolled_out"][SECOND]
    driver = guests[SECOND].file("/sys/bus/pci/devices/%s/driver" % shared)
    assert not driver.exists or not driver.linked_to.endswith("/vfio-pci")
    assert outcomes[CANARY]["changed"] == [] and not outcomes[CANARY]["rebooted"]
