# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""After converge, idempotence and a reboot: the lab GPU and its audio are on vfio-pci because the
boot configuration put them there, the boot VGA and the shared group are untouched, handing back a
device whose VFIO group a process holds fails cleanly, and a hand-back cut short after the unbind is
finished by the next run."""

from __future__ import annotations

import json
import shlex
import time

import pytest
from guest import driver as _driver
from guest import group as _group
from guest import run_module

MODPROBE = "/etc/modprobe.d/gpuvirt-vfio.conf"


def _vfio_pci(host, args):
    return run_module(host, "gpuvirt.host.vfio_pci", args)


@pytest.fixture(scope="module")
def gpu(layout):
    return layout.role("passthrough_gpu")[0]["address"]


@pytest.fixture(scope="module")
def bound(layout):
    return [d["address"] for d in layout.role("passthrough_gpu") + layout.role("gpu_companion")]


def test_the_guest_rebooted_after_the_converges(host, boot_id_before_reboot):
    assert host.file("/proc/sys/kernel/random/boot_id").content_string.strip() != boot_id_before_reboot


def test_the_kernel_runs_with_the_iommu_on(host):
    cmdline = host.file("/proc/cmdline").content_string.split()
    assert "intel_iommu=on" in cmdline and "iommu=pt" in cmdline
    assert "intel_iommu=off" not in cmdline
    assert host.file("/sys/class/iommu/dmar0").exists


def test_the_gpu_and_its_audio_are_on_vfio_pci_from_boot(host, bound):
    for address in bound:
        assert _driver(host, address) == "vfio-pci", address
        # No runtime override survives a reboot: vfio-pci claimed them through the boot configuration.
        assert host.file("/sys/bus/pci/devices/%s/driver_override" % address).content_string.strip() == "(null)"


def test_their_group_has_its_vfio_device(host, bound):
    groups = {_group(host, address) for address in bound}
    assert len(groups) == 1
    assert host.run("test -c /dev/vfio/%s", groups.pop()).rc == 0


def test_the_boot_vga_and_the_shared_group_are_left_alone(host, layout):
    for role in ("boot_vga", "shared_group_display", "shared_group_endpoint"):
        for device in layout.role(role):
            assert _driver(host, device["address"]) != "vfio-pci", device["name"]


def test_the_boot_configuration_and_the_initramfs(host, layout):
    ids = sorted(d["id"] for d in layout.role("passthrough_gpu") + layout.role("gpu_companion"))
    conf = host.file(MODPROBE).content_string
    assert "options vfio-pci ids=%s\n" % ",".join(ids) in conf
    # The GPU's vendor's drivers (1002: AMD), its audio function's vendor's (8086: Intel) and the companions'.
    for driver in ("i915", "xe", "amdgpu", "radeon", "snd_hda_intel", "xhci_hcd"):
        assert "softdep %s pre: vfio-pci\n" % driver in conf
    assert "softdep nvidia" not in conf and "softdep nouveau" not in conf
    assert "vfio-pci" in host.file("/etc/modules-load.d/gpuvirt-vfio.conf").content_string.split()
    listing = host.check_output("lsinitramfs /boot/initrd.img-$(uname -r)").split()
    assert MODPROBE.lstrip("/") in listing
    assert any(path.endswith("/vfio-pci.ko") for path in listing)


def test_vfio_pci_is_chosen_although_its_own_alias_matches_every_device(host, gpu, bound):
    # Kernels since 5.19 list vfio-pci's override-only table in modules.alias; it is not a variant.
    aliases = host.file("/lib/modules/%s/modules.alias" % host.check_output("uname -r")).content_string
    own = [line for line in aliases.splitlines() if line.startswith("alias vfio_pci:") and line.endswith(" vfio_pci")]
    assert own, "the lab kernel lists vfio-pci's own vfio_pci: alias"
    settled = _vfio_pci(host, "devices=%s" % gpu)
    assert "msg" not in settled and settled["changed"] is False, settled
    for address in bound:
        entry = settled["devices"][address]
        assert (entry["driver"], entry["driver_reason"], entry["variant_drivers"]) == ("vfio-pci", "default", [])
    refused = _vfio_pci(host, "devices=%s driver=mlx5_vfio_pci" % gpu)
    assert "driver mlx5_vfio_pci does not match %s" % gpu in refused["msg"], refused
    assert refused["changed"] is False and all(_driver(host, address) == "vfio-pci" for address in bound)


def test_handing_back_a_device_held_open_fails_cleanly(host, gpu, bound):
    group = _group(host, gpu)
    holder = host.check_output(
        "setsid python3 -c \"import os, time; fd = os.open('/dev/vfio/%s', os.O_RDWR); time.sleep(600)\" "
        "</dev/null >/dev/null 2>&1 & echo $!" % group
    )
    try:
        for _attempt in range(50):
            if host.run("ls -l /proc/%s/fd 2>/dev/null | grep -q /dev/vfio/%s" % (holder, group)).rc == 0:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the holder never opened /dev/vfio/%s" % group)
        result = _vfio_pci(host, "devices=%s state=absent" % gpu)
        assert result["msg"].startswith("refusing to change anything"), result
        assert result["changed"] is False
        assert [r["code"] for r in result["refusals"]] == ["in_use"] * len(bound)
        assert "(pid %s) holds /dev/vfio/%s open" % (holder, group) in result["msg"]
        for address in bound:
            assert _driver(host, address) == "vfio-pci"
        assert host.file(MODPROBE).exists
    finally:
        host.run("kill %s", holder)


def test_without_the_holder_the_devices_go_back_and_return(host, gpu, bound, layout):
    # Runtime only (persistent=false): the real kernel's unbind and reprobe, without rebuilding the
    # initramfs twice under TCG; the boot configuration stays as the converge left it.
    audio = layout.role("gpu_companion")[0]["address"]
    released = _vfio_pci(host, "devices=%s state=absent persistent=false" % gpu)
    assert "msg" not in released and released["changed"] is True, released
    assert released["devices"][audio]["driver_after"] == "snd_hda_intel" == _driver(host, audio)
    assert all(_driver(host, address) != "vfio-pci" for address in bound)
    again = _vfio_pci(host, "devices=%s persistent=false" % gpu)
    assert "msg" not in again and again["changed"] is True, again
    assert all(_driver(host, address) == "vfio-pci" for address in bound)
    settled = _vfio_pci(host, "devices=%s" % gpu)
    assert "msg" not in settled and settled["changed"] is False, settled


def test_a_hand_back_cut_short_after_the_unbind_is_finished_by_the_next_run(host, gpu, bound, layout):
    # As a run killed between the unbind and the reprobe leaves a device the boot bound by its ID: noted
    # (the note a run writes, naming the device as it is), on no driver, its ID out of vfio-pci's table, no
    # driver_override; and its host driver's module not loaded, as after such a boot. The next run names
    # another device.
    audio = layout.role("gpu_companion")[0]["address"]
    other = layout.role("boot_vga")[0]["address"]
    sysfs = "/sys/bus/pci/devices/%s/" % audio
    vendor, device = (host.file(sysfs + name).content_string.strip()[2:] for name in ("vendor", "device"))
    note = {audio: {"id": "%s:%s" % (vendor, device), "inode": int(host.check_output("stat -L -c %%i %s" % sysfs)),
                    "boot": host.file("/proc/sys/kernel/random/boot_id").content_string.strip()}}
    host.check_output("echo > %sdriver_override" % sysfs)
    host.check_output("mkdir -p /run/gpuvirt && echo %s > /run/gpuvirt/handbacks.json" % shlex.quote(json.dumps(note)))
    host.check_output("echo %s > /sys/bus/pci/drivers/vfio-pci/unbind" % audio)
    host.run("echo '%s %s' > /sys/bus/pci/drivers/vfio-pci/remove_id" % (vendor, device))  # ENODEV: not there
    # rmmod, not modprobe -r: that would take vfio-pci (a soft dependency of snd_hda_intel) with it.
    host.check_output("rmmod snd_hda_intel")
    assert _driver(host, audio) is None and host.file(sysfs + "driver_override").content_string.strip() == "(null)"
    assert not host.file("/sys/module/snd_hda_intel").exists and _driver(host, gpu) == "vfio-pci"
    args = "devices=%s state=absent persistent=false" % other
    preview = run_module(host, "gpuvirt.host.vfio_pci", args, check=True)
    assert "msg" not in preview and preview["changed"] is True and preview["resumed"] == {audio: None}, preview
    assert _driver(host, audio) is None
    done = _vfio_pci(host, args)
    assert "msg" not in done and done["changed"] is True and done["resumed"] == {audio: "snd_hda_intel"}, done
    assert [argv[1:3] for argv in done["commands"]] == [["-b", host.file(sysfs + "modalias").content_string.strip()]]
    assert _driver(host, audio) == "snd_hda_intel" and not host.file("/run/gpuvirt/handbacks.json").exists
    again = _vfio_pci(host, args)
    assert "msg" not in again and again["changed"] is False and again["resumed"] == {}, again
    rebound = _vfio_pci(host, "devices=%s persistent=false" % gpu)
    assert "msg" not in rebound and all(_driver(host, address) == "vfio-pci" for address in bound), rebound


def test_a_gpu_a_host_process_holds_through_its_drm_card_is_refused(host, layout):
    # The shared display stays on bochs-drm (card1 in the guest): a process holding its DRM card keeps
    # vfio_pci from taking it; once the process is gone, only the shared IOMMU group stands in the way.
    display = layout.role("shared_group_display")[0]["address"]
    card = host.check_output("ls /sys/bus/pci/devices/%s/drm | grep -x 'card[0-9]*'" % display)
    holder = host.check_output(
        "setsid python3 -c \"import os, time; fd = os.open('/dev/dri/%s', os.O_RDONLY); time.sleep(600)\" "
        "</dev/null >/dev/null 2>&1 & echo $!" % card
    )
    try:
        for _attempt in range(50):
            if host.run("ls -l /proc/%s/fd 2>/dev/null | grep -q /dev/dri/%s" % (holder, card)).rc == 0:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the holder never opened /dev/dri/%s" % card)
        result = run_module(host, "gpuvirt.host.vfio_pci", "devices=%s persistent=false" % display, check=True)
        assert result["changed"] is False, result
        held = [r for r in result["refusals"] if r["code"] == "host_users"]
        assert [r["device"] for r in held] == [display], result["refusals"]
        words = "python3 (pid %s) holds /dev/dri/%s open; taking it from bochs-drm" % (holder, card)
        assert words in held[0]["message"], held
        assert _driver(host, display) == "bochs-drm"
    finally:
        host.run("kill %s", holder)
    for _attempt in range(50):
        if not host.file("/proc/%s" % holder).exists:
            break
        time.sleep(0.2)
    result = run_module(host, "gpuvirt.host.vfio_pci", "devices=%s persistent=false" % display, check=True)
    assert [r["code"] for r in result["refusals"]] == ["group_shared"], result["refusals"]


def test_the_timings_were_measured(timings):
    assert {"first", "second", "first_roles", "second_roles", "bare_facts"} <= set(timings)
    print(
        "\npassthrough timings: converge first run %.1f s (roles %.1f s), second run %.1f s (roles %.1f s), "
        "bare fact gathering %.1f s, ratio second/bare %.2f (roles only %.2f)"
        % (timings["first"], timings["first_roles"], timings["second"], timings["second_roles"],
           timings["bare_facts"], timings["second"] / timings["bare_facts"],
           timings["second_roles"] / timings["bare_facts"])
    )
