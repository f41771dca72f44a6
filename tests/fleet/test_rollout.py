# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpuvirt.host.rollout on a simulated fleet, with a stand-in for the reboot (tests/fleet/reboot_sim.py)."""

from __future__ import annotations

import json
import os

import pytest

# A guest (QEMU) holding the VFIO group of the Radeon RX 6600 that amd_host passes through.
GUEST = {"extends": "amd_host", "processes": [{"pid": 4242, "comm": "qemu-system-x86", "holds": ["0c:00.0"]}]}


def grub(fleet, name):
    with open(os.path.join(fleet.hosts[name], "etc/default/grub")) as handle:
        return handle.read()


def outcomes(report):
    return {item["host"]: item for item in json.loads((report / "rollout.json").read_text())}


def test_rollout_in_batches_reboots_only_what_needs_it_and_stops_at_a_blocked_batch(fleet, tmp_path):
    # Batches: [h01] (canary), [h02 h03 h04], [h05 h06 h07], [h08].
    for name in ("h01", "h02", "h04", "h05", "h07", "h08"):
        fleet.add(name, "amd_host")
    fleet.add("h03", "iommu_disabled")
    fleet.add("h06", "desktop_dgpu", vfio_devices=["0000:00:02.0"])  # the boot VGA: blocked
    untouched = grub(fleet, "h08")
    common = {
        "target": "gpu_hosts",
        "gpuvirt_rollout_canary": 1,
        "gpuvirt_rollout_batch": 3,
        "gpuvirt_reboot": "if_needed",
        "gpuvirt_rollout_reboot_tasks": fleet.reboot_tasks(),
    }
    predicted_dir = tmp_path / "check"
    rc, recap, output = fleet.run("gpuvirt.host.rollout", check=True,
                                  extra_vars=dict(common, gpuvirt_report_dir=str(predicted_dir)))
    assert rc != 0, output
    assert all(fleet.reboots(name) == 0 for name in fleet.hosts)
    assert "intel_iommu=on" not in grub(fleet, "h03")
    predicted = outcomes(predicted_dir)

    done_dir = tmp_path / "run"
    rc, recap, output = fleet.run("gpuvirt.host.rollout", extra_vars=dict(common, gpuvirt_report_dir=str(done_dir)))
    assert rc != 0, output
    done = outcomes(done_dir)
    # The blocked host failed its batch (failure budget 0): the batch finished, then the rollout stopped,
    # and h08 never started.
    assert recap["h06"]["failed"] == 1
    assert "h06 is blocked, nothing was changed on it" in output
    assert "h08" not in recap and done["h08"] == {"host": "h08", "status": "pending", "check_mode": False}
    assert grub(fleet, "h08") == untouched
    # Only the host that needed a reboot rebooted, and it verified with the IOMMU on.
    assert {name: fleet.reboots(name) for name in fleet.hosts} == {
        "h01": 0, "h02": 0, "h03": 1, "h04": 0, "h05": 0, "h06": 0, "h07": 0, "h08": 0}
    assert done["h03"]["rebooted"] is True and done["h03"]["changed"] == ["iommu"]
    assert "intel_iommu=on" in grub(fleet, "h03")
    with open(os.path.join(fleet.hosts["h03"], "proc/cmdline")) as handle:
        assert "intel_iommu=on" in handle.read()
    # Check mode predicted exactly what the run then did, host by host.
    keys = ("status", "changed", "reboot_required", "rebooted")
    assert {h: [o.get(k) for k in keys] for h, o in predicted.items()} == {
        h: [o.get(k) for k in keys] for h, o in done.items()}
    # The others of h06's batch finished and were recorded; h06's record says why it failed.
    statuses = dict.fromkeys(done, "done") | {"h06": "failed", "h08": "pending"}
    assert {h: o["status"] for h, o in done.items()} == statuses
    assert "h06 is blocked" in done["h06"]["message"] and done["h06"]["failed_task"]
    assert "The rollout stops after this batch: 1 of 3 host(s) did not finish it (h06)" in " ".join(output.split())

    # A second rollout over the first batches changes nothing and reboots nobody.
    rc, recap, output = fleet.run("gpuvirt.host.rollout", "--limit", "h01,h02,h03,h04", extra_vars=common)
    assert rc == 0, output
    assert all(recap[name]["changed"] == 0 for name in ("h01", "h02", "h03", "h04")), output
    assert fleet.reboots("h03") == 1


def test_a_host_with_running_guests_is_not_rebooted_unless_the_drain_hook_empties_it(fleet, tmp_path):
    fleet.add("guest01", GUEST)
    common = {"target": "gpu_hosts", "gpuvirt_reboot": "always", "gpuvirt_rollout_reboot_tasks": fleet.reboot_tasks()}
    rc, recap, output = fleet.run("gpuvirt.host.rollout", extra_vars=common)
    assert rc != 0
    assert ("Refusing to reboot guest01: guests are running "
            "(qemu-system-x86 (pid 4242) holds 0000:00:03.2, 0000:0c:00.0, 0000:0c:00.1)") in output
    assert "Set gpuvirt_rollout_drain_tasks" in output
    assert fleet.reboots("guest01") == 0

    rc, recap, output = fleet.run("gpuvirt.host.rollout",
                                  extra_vars=dict(common, gpuvirt_rollout_drain_tasks=fleet.drain_tasks(release=False)))
    assert rc != 0
    assert "left them running" in output
    assert fleet.reboots("guest01") == 0

    # The preview (--check) of a rollout with a drain hook: the hook's commands do not run in check mode,
    # so the guests are still there; it notes them and goes on, as the run will.
    drained = dict(common, gpuvirt_rollout_drain_tasks=fleet.drain_tasks())
    rc, recap, output = fleet.run("gpuvirt.host.rollout", check=True, extra_vars=drained)
    assert rc == 0 and recap["guest01"]["failed"] == 0, output
    assert "Check mode: the drain hook" in output and "Refusing to reboot" not in output
    assert fleet.reboots("guest01") == 0
    # Without a hook the preview refuses, as the run does.
    rc, recap, output = fleet.run("gpuvirt.host.rollout", check=True, extra_vars=common)
    assert rc != 0 and "Set gpuvirt_rollout_drain_tasks" in output

    rc, recap, output = fleet.run("gpuvirt.host.rollout", extra_vars=drained)
    assert rc == 0, output
    assert fleet.reboots("guest01") == 1


def test_a_failed_verification_stops_the_rollout(fleet, tmp_path):
    fleet.add("v01", dict(extends="iommu_disabled", sim_iommu_stays_off=True))
    fleet.add("v02", "iommu_disabled")
    rc, recap, output = fleet.run("gpuvirt.host.rollout", extra_vars={
        "target": "gpu_hosts", "gpuvirt_rollout_batch": 1, "gpuvirt_rollout_max_fail_percentage": 100,
        "gpuvirt_reboot": "if_needed", "gpuvirt_rollout_reboot_tasks": fleet.reboot_tasks()})
    assert rc != 0
    assert "Verification failed on v01, the rollout stops here" in output and "the IOMMU is off" in output
    assert "reached no host" not in output  # the stopped run ends before the check that a host was reached
    assert fleet.reboots("v01") == 1
    assert "v02" not in recap and "intel_iommu=on" not in grub(fleet, "v02")


@pytest.mark.parametrize("batch", ["0", "-1", "abc", "150%"])
def test_a_batch_size_ansible_would_read_as_every_host_or_fail_on_is_refused_first(batch, fleet):
    fleet.add("h01", "iommu_disabled")
    fleet.add("h02", "iommu_disabled")
    before = grub(fleet, "h01")
    rc, recap, output = fleet.run(
        "gpuvirt.host.rollout", extra_vars={"target": "gpu_hosts", "gpuvirt_rollout_batch": batch}
    )
    assert rc != 0
    assert "gpuvirt_rollout_batch must be a number of hosts (5) or a percentage from 1% to 100%" in output
    assert "got '%s'" % batch in output and "probably a bug" not in output
    assert "h01" not in recap and "h02" not in recap
    assert grub(fleet, "h01") == before


def test_the_batch_sizes_are_checked_under_a_limit_too(fleet):
    # A --limit leaves a play on localhost alone out; the check must not go with it.
    fleet.add("h01", "iommu_disabled")
    before = grub(fleet, "h01")
    rc, recap, output = fleet.run(
        "gpuvirt.host.rollout", "--limit", "h01", extra_vars={"target": "gpu_hosts", "gpuvirt_rollout_batch": "0"}
    )
    assert rc != 0
    assert "gpuvirt_rollout_batch must be a number of hosts (5) or a percentage from 1% to 100%" in output
    assert grub(fleet, "h01") == before
