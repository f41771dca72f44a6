# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Handing devices back (state: absent) leaves none of the collection's boot configuration: the
initramfs configuration names the modprobe.d file (mkinitcpio's FILES+=, a build error once the file is
gone), so it goes with that file, whether the image is rebuilt now or not."""

from __future__ import annotations

import errno
import os
import re
import shutil

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import vfio_bind
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import write_text
from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim
from ansible_collections.gpuvirt.host.tests.sim.pci_kernel import PciKernel

MODULES = ["kvm_intel", "i915", "nvidia", "snd_hda_intel", "xhci_pci", "e1000e", "nvme", "vfio_pci"]
GPU = "0000:01:00.0"
MODPROBE = "etc/modprobe.d/gpuvirt-vfio.conf"
MKINITCPIO_CONF = "etc/mkinitcpio.conf.d/gpuvirt-vfio.conf"


def put(root, relative, text="", mode=0o644):
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, mode)


def bound_on_mkinitcpio(make_host, vfio_pci):
    root = make_host("desktop_dgpu", kernel={"modules": MODULES})
    put(root, "usr/bin/mkinitcpio", "#!/bin/sh\nexit 1\n", 0o755)  # a tree: the module only names the command
    put(root, "boot/initramfs-linux.img")
    kernel = PciKernel(KernelSim(root))
    bound = vfio_pci(root, kernel=kernel, devices=[GPU])
    assert bound["rc"] == 0, bound
    with open(os.path.join(root, MKINITCPIO_CONF), encoding="utf-8") as handle:
        assert "/" + MODPROBE in handle.read()
    return root, kernel


def warnings(result):
    return [w["event"]["msg"] if isinstance(w, dict) else w for w in result.get("warnings", [])]


def exists(root, relative):
    return os.path.exists(os.path.join(root, relative))


def test_absent_without_a_rebuild_removes_the_initramfs_configuration_too(make_host, vfio_pci):
    root, kernel = bound_on_mkinitcpio(make_host, vfio_pci)
    preview = vfio_pci(root, kernel=kernel, check_mode=True, devices=[GPU], state="absent", initramfs=False)
    assert "/" + MKINITCPIO_CONF in preview["files_changed"] and exists(root, MKINITCPIO_CONF)
    done = vfio_pci(root, kernel=kernel, devices=[GPU], state="absent", initramfs=False)
    assert done["rc"] == 0 and done["files_changed"] == preview["files_changed"], done
    assert not exists(root, MODPROBE) and not exists(root, MKINITCPIO_CONF)
    again = vfio_pci(root, kernel=kernel, devices=[GPU], state="absent", initramfs=False)
    assert again["rc"] == 0 and again["changed"] is False, again


def test_a_later_absent_run_removes_what_an_earlier_one_left(make_host, vfio_pci):
    root, kernel = bound_on_mkinitcpio(make_host, vfio_pci)
    os.unlink(os.path.join(root, MODPROBE))  # as an earlier version's absent run with initramfs: false left it
    done = vfio_pci(root, kernel=kernel, devices=[GPU], state="absent")
    assert done["rc"] == 0 and "/" + MKINITCPIO_CONF in done["files_changed"], done
    assert not exists(root, MKINITCPIO_CONF)
    # A tree: the rebuild the removal needs is left to be run inside it.
    assert done["initramfs"]["regenerate_required"] is True


# After a boot that bound the card by its IDs, the host drivers' modules (nvidia, and nvidia-gpu for the
# UCSI function) were never loaded: drivers_probe tries loaded drivers only.
GPU_FUNCTIONS = ("0000:01:00.0", "0000:01:00.1", "0000:01:00.2", "0000:01:00.3")
GPU_IDS = ["10de:1e04", "10de:10f7", "10de:1ad6", "10de:1ad7"]
HOST_DRIVERS = {"0000:01:00.0": "nvidia", "0000:01:00.1": "snd_hda_intel", "0000:01:00.2": "xhci_hcd",
                "0000:01:00.3": "nvidia-gpu"}
NOT_LOADED = ("0000:01:00.0", "0000:01:00.3")

# A module that registers its PCI driver probes the unbound devices it matches: here by their modalias.
MODPROBE_BODY = """
root, alias = {root!r}, sys.argv[-1]
drivers = {drivers!r}
bus = os.path.join(root, "sys/bus/pci/devices")
for address in sorted(os.listdir(bus)):
    device = os.path.realpath(os.path.join(bus, address))
    if open(os.path.join(device, "modalias")).read().strip() != alias or os.path.lexists(device + "/driver"):
        continue
    driver = os.path.join(root, "sys/bus/pci/drivers", drivers[address])
    os.makedirs(driver, exist_ok=True)
    os.symlink(os.path.relpath(driver, device), device + "/driver")
    os.symlink(os.path.relpath(device, driver), os.path.join(driver, address))
"""


def booted_by_id(make_host):
    from ansible_collections.gpuvirt.host.plugins.module_utils import vfio

    root = make_host("desktop_dgpu", kernel={"modules": MODULES},
                     patch_devices={address: {"driver": "vfio-pci"} for address in GPU_FUNCTIONS},
                     files={MODPROBE: vfio.render_modprobe_conf(GPU_IDS)})
    for address in NOT_LOADED:
        assert not os.path.isdir(os.path.join(root, "sys/bus/pci/drivers", HOST_DRIVERS[address]))
    return root, PciKernel(KernelSim(root), host_drivers=HOST_DRIVERS, vfio_ids=GPU_IDS)


def test_a_device_no_driver_takes_back_is_warned_about_in_a_tree(make_host, vfio_pci):
    root, kernel = booted_by_id(make_host)
    result = vfio_pci(root, kernel=kernel, devices=[GPU], state="absent")
    assert result["rc"] == 0, result
    assert [a for a, entry in result["devices"].items() if entry["driver_after"] is None] == list(NOT_LOADED)
    warned = [w for w in warnings(result) if "no driver took it" in w]
    assert [w.split()[0] for w in warned] == list(NOT_LOADED)
    assert "modprobe -b $(cat /sys/bus/pci/devices/0000:01:00.0/modalias)" in warned[0]


def test_on_the_host_the_host_drivers_are_loaded_by_modalias(make_host, vfio_pci, fake_commands, as_host):
    root, kernel = booted_by_id(make_host)
    fake_commands.install("modprobe", body=MODPROBE_BODY.format(root=root, drivers=HOST_DRIVERS))
    result = vfio_pci(root, kernel=kernel, devices=[GPU], state="absent", initramfs=False)
    assert result["rc"] == 0, result
    assert {a: entry["driver_after"] for a, entry in result["devices"].items()} == HOST_DRIVERS
    assert not [w for w in warnings(result) if "no driver took it" in w]
    with open(fake_commands.log, encoding="utf-8") as log:
        calls = [line for line in log.read().splitlines() if '"modprobe"' in line]
    assert len(calls) == 2 and all('"-b", "pci:v000010DE' in call for call in calls)


class Killed(BaseException):
    """The run's process killed at a sysfs write (SIGKILL, an OOM kill, a lost session): nothing after it runs,
    no handler, no clean-up."""


def bound_by_id(make_host):
    """desktop_dgpu after a boot that bound the GPU through vfio-pci's ID table: no driver_override on it,
    nvidia loaded and ready to take it back."""
    root = make_host(
        "desktop_dgpu",
        kernel={"modules": MODULES},
        patch_devices={"01:00.0": {"driver": "vfio-pci"}},
        add_devices=[{"address": "06:00.0", "ids": "10de:1eb8", "class": "030200", "driver": "nvidia", "group": 11}],
    )
    return root, PciKernel(KernelSim(root), host_drivers={GPU: "nvidia"}, vfio_ids=["10de:1e04"])


def kill_at(kernel, pattern):
    def kill(_match, _value):
        kernel.sim.handlers.pop(0)
        raise Killed(pattern)

    kernel.sim.handlers.insert(0, (re.compile(pattern), kill))


def binding(root, address):
    return vfio_bind.read_driver(root, address), vfio_bind.read_override(root, address)


def killed_hand_back(root, kernel, vfio_pci, at=r"sys/bus/pci/drivers_probe\Z", **args):
    kill_at(kernel, at)
    with pytest.raises(Killed):
        vfio_pci(root, kernel=kernel, devices=[GPU], state="absent", persistent=False, **args)


def test_a_hand_back_killed_before_the_reprobe_is_finished_by_the_next_run(make_host, vfio_pci):
    root, kernel = bound_by_id(make_host)
    killed_hand_back(root, kernel, vfio_pci)
    # Unbound, its ID out of vfio-pci's table, and nothing on the device says it is to be handed back.
    assert binding(root, GPU) == (None, None)

    preview = vfio_pci(root, kernel=kernel, devices=[GPU], state="absent", persistent=False, check_mode=True)
    assert preview["rc"] == 0 and preview["changed"] is True and preview["resumed"] == {GPU: None}, preview
    assert preview["devices"][GPU]["changed"] is True
    assert any(w.startswith(GPU + " was on no driver") and w.endswith("this run would hand it back first")
               for w in warnings(preview))
    assert binding(root, GPU) == (None, None)

    done = vfio_pci(root, kernel=kernel, devices=[GPU], state="absent", persistent=False)
    assert done["rc"] == 0 and done["changed"] is True and done["resumed"] == {GPU: "nvidia"}, done
    assert done["devices"][GPU]["changed"] is True
    assert (done["devices"][GPU]["driver_before"], done["devices"][GPU]["driver_after"]) == (None, "nvidia")
    assert binding(root, GPU) == ("nvidia", None)
    assert not exists(root, vfio_bind.HANDBACKS)
    again = vfio_pci(root, kernel=kernel, devices=[GPU], state="absent", persistent=False)
    assert again["rc"] == 0 and again["changed"] is False and again["resumed"] == {}, again


def test_any_run_finishes_an_interrupted_hand_back_whatever_devices_it_names(make_host, vfio_pci):
    """The run that finds the device on no driver need not name it: it binds another device here."""
    root, kernel = bound_by_id(make_host)
    killed_hand_back(root, kernel, vfio_pci)
    preview = vfio_pci(root, kernel=kernel, devices=["0000:06:00.0"], persistent=False, check_mode=True)
    assert preview["rc"] == 0 and preview["resumed"] == {GPU: None}, preview
    assert any(w.startswith(GPU + " was on no driver") and w.endswith("this run would hand it back first")
               for w in warnings(preview))
    done = vfio_pci(root, kernel=kernel, devices=["0000:06:00.0"], persistent=False)
    assert done["rc"] == 0 and done["resumed"] == {GPU: "nvidia"}, done
    assert binding(root, GPU) == ("nvidia", None)
    assert binding(root, "0000:06:00.0")[0] == "vfio-pci"
    assert not exists(root, vfio_bind.HANDBACKS)


def test_the_host_driver_of_a_resumed_device_is_loaded_by_its_modalias(make_host, vfio_pci, fake_commands, as_host):
    """After a boot that bound the card by its IDs nothing loaded nvidia: the run that finishes the
    hand-back loads it, as a hand-back of its own does."""
    root, kernel = booted_by_id(make_host)
    fake_commands.install("modprobe", body=MODPROBE_BODY.format(root=root, drivers=HOST_DRIVERS))
    killed_hand_back(root, kernel, vfio_pci, companions=False, initramfs=False)
    assert binding(root, GPU) == (None, None)
    done = vfio_pci(root, kernel=kernel, devices=["0000:00:02.0"], state="absent", persistent=False)
    assert done["rc"] == 0 and done["resumed"] == {GPU: "nvidia"}, done
    assert len(done["commands"]) == 1, done["commands"]
    assert done["commands"][0][1] == "-b" and done["commands"][0][2].startswith("pci:v000010DEd00001E04")
    assert binding(root, GPU) == ("nvidia", None)


def test_a_failed_run_after_finishing_a_hand_back_says_it_changed_the_host(make_host, vfio_pci):
    root, kernel = bound_by_id(make_host)
    killed_hand_back(root, kernel, vfio_pci)
    failing = PciKernel(kernel.sim, host_drivers={GPU: "nvidia"}, failing_probe=["0000:06:00.0"])
    failed = vfio_pci(root, kernel=failing, devices=["0000:06:00.0"], persistent=False)
    assert failed["rc"] == 1 and failed["changed"] is True, failed
    assert "nothing was changed" not in failed["msg"]
    assert failed["msg"].endswith("the hand-back of %s, which an earlier run left unfinished, was finished first" % GPU)
    assert binding(root, GPU) == ("nvidia", None) and binding(root, "0000:06:00.0")[0] == "nvidia"


def test_a_run_killed_after_the_note_and_before_the_unbind_leaves_nothing_to_finish(make_host, vfio_pci):
    """The device is still on vfio-pci: the next run that changes the host drops the note."""
    root, kernel = bound_by_id(make_host)
    killed_hand_back(root, kernel, vfio_pci, at=r"sys/bus/pci/drivers/vfio-pci/unbind\Z")
    assert binding(root, GPU) == ("vfio-pci", None) and exists(root, vfio_bind.HANDBACKS)
    other = vfio_pci(root, kernel=kernel, devices=["0000:00:02.0"], state="absent", persistent=False)
    assert other["rc"] == 0 and other["resumed"] == {} and other["changed"] is False, other
    assert not exists(root, vfio_bind.HANDBACKS)


def unbind_by_hand(root, address):
    """What ``echo <address> > .../driver/unbind`` leaves: the device on no driver, on purpose."""
    device = os.path.realpath(os.path.join(root, "sys/bus/pci/devices", address))
    driver = os.path.realpath(os.path.join(device, "driver"))
    os.unlink(os.path.join(driver, address))
    os.unlink(os.path.join(device, "driver"))


def test_a_hand_back_that_failed_and_was_put_back_leaves_no_note(make_host, vfio_pci):
    """A write after the unbind refused: the run puts the device back on vfio-pci, and a later unbind by
    hand is not taken for an unfinished hand-back."""
    root, kernel = bound_by_id(make_host)

    def refuse(_match, _value):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    kernel.sim.handlers.insert(0, (re.compile(r"sys/bus/pci/drivers/vfio-pci/remove_id\Z"), refuse))
    failed = vfio_pci(root, kernel=kernel, devices=[GPU], state="absent", persistent=False)
    assert failed["rc"] == 1 and "Input/output error" in failed["msg"], failed
    kernel.sim.handlers.pop(0)
    assert binding(root, GPU)[0] == "vfio-pci" and not exists(root, vfio_bind.HANDBACKS)
    unbind_by_hand(root, GPU)
    other = vfio_pci(root, kernel=kernel, devices=["0000:00:02.0"], state="absent", persistent=False)
    assert other["rc"] == 0 and other["resumed"] == {} and other["changed"] is False, other
    assert binding(root, GPU)[0] is None


def remake(root, address):
    """The device removed and made again at its address (a VF of a PF whose VFs were disabled and enabled
    again): sysfs gives its directory a new inode."""
    device = os.path.realpath(os.path.join(root, "sys/bus/pci/devices", address))
    shutil.copytree(device, device + ".new", symlinks=True)
    shutil.rmtree(device)
    os.rename(device + ".new", device)


@pytest.mark.parametrize("since", ["remade", "parked", "rebooted"])
def test_a_note_of_what_is_no_longer_that_hand_back_finishes_nothing(make_host, vfio_pci, since):
    """Another device at the address, an override set since (none: kept off every driver on purpose), or
    another boot: the note names nothing to finish, and goes."""
    root, kernel = bound_by_id(make_host)
    boot_id = os.path.join(root, vfio_bind.BOOT_ID)
    os.makedirs(os.path.dirname(boot_id), exist_ok=True)
    with open(boot_id, "w", encoding="utf-8") as handle:
        handle.write("0f4e6a3c-0000-4000-8000-000000000001\n")
    killed_hand_back(root, kernel, vfio_pci)
    if since == "remade":
        remake(root, GPU)
    elif since == "parked":
        vfio_bind.write_text(vfio_bind.device_path(root, GPU, "driver_override"), "none")
    else:
        with open(boot_id, "w", encoding="utf-8") as handle:
            handle.write("0f4e6a3c-0000-4000-8000-000000000002\n")
    assert vfio_bind.interrupted_handbacks(root) == []
    other = vfio_pci(root, kernel=kernel, devices=["0000:00:02.0"], state="absent", persistent=False)
    assert other["rc"] == 0 and other["resumed"] == {} and other["changed"] is False, other
    assert vfio_bind.read_driver(root, GPU) is None and not exists(root, vfio_bind.HANDBACKS)


def test_a_resumed_device_gets_its_host_driver_before_the_run_fails_elsewhere(
        make_host, vfio_pci, fake_commands, as_host):
    root, kernel = booted_by_id(make_host)
    fake_commands.install("modprobe", body=MODPROBE_BODY.format(root=root, drivers=HOST_DRIVERS))
    killed_hand_back(root, kernel, vfio_pci, companions=False, initramfs=False)
    failing = PciKernel(kernel.sim, host_drivers=HOST_DRIVERS, failing_probe=["0000:00:02.0"])
    failed = vfio_pci(root, kernel=failing, devices=["0000:00:02.0"], persistent=False, force=True)
    assert failed["rc"] == 1 and failed["changed"] is True, failed
    assert binding(root, GPU) == ("nvidia", None) and not exists(root, vfio_bind.HANDBACKS)


def test_a_named_device_handed_back_first_is_not_put_back_when_a_companion_fails(make_host, vfio_pci):
    """Its hand-back is an earlier run's, finished: outside this run's all or nothing."""
    root, kernel = bound_by_id(make_host)
    killed_hand_back(root, kernel, vfio_pci, companions=False)
    audio = "0000:01:00.1"
    with kernel.sim.active():
        vfio_bind.bind_device(root, audio)
    busy = PciKernel(kernel.sim, host_drivers={GPU: "nvidia"}, busy_unbind=[audio])
    failed = vfio_pci(root, kernel=busy, devices=[GPU], state="absent", persistent=False)
    assert failed["rc"] == 1 and failed["changed"] is True and "Device or resource busy" in failed["msg"], failed
    assert failed["msg"].endswith("the hand-back of %s, which an earlier run left unfinished, was finished first" % GPU)
    assert binding(root, GPU) == ("nvidia", None) and binding(root, audio)[0] == "vfio-pci"


def test_a_note_of_an_earlier_device_at_the_address_is_replaced(make_host, vfio_pci):
    """A stale note (the device made again since) does not hide a new hand-back of the device there now."""
    root, kernel = bound_by_id(make_host)
    killed_hand_back(root, kernel, vfio_pci, at=r"sys/bus/pci/drivers/vfio-pci/unbind\Z")
    remake(root, GPU)
    killed_hand_back(root, kernel, vfio_pci)
    assert vfio_bind.interrupted_handbacks(root) == [GPU]


def hold_group(root, pid, group):
    """A process (QEMU) that has opened /dev/vfio/<group> since, as the tree's /proc shows it."""
    os.makedirs(os.path.join(root, "proc/%d/fd" % pid))
    with open(os.path.join(root, "proc/%d/comm" % pid), "w", encoding="utf-8") as handle:
        handle.write("qemu-system-x86\n")
    put(root, "dev/vfio/%s" % group)
    os.symlink("/dev/vfio/%s" % group, os.path.join(root, "proc/%d/fd/21" % pid))


def test_finishing_a_hand_back_in_a_group_a_vm_holds_is_refused_unless_forced(make_host, vfio_pci):
    root, kernel = bound_by_id(make_host)
    killed_hand_back(root, kernel, vfio_pci)
    hold_group(root, 4242, 2)
    refused = vfio_pci(root, kernel=kernel, devices=["0000:00:02.0"], state="absent", persistent=False)
    assert refused["rc"] == 1 and refused["changed"] is False, refused
    assert [r["code"] for r in refused["refusals"]] == ["in_use"] and "4242" in refused["msg"]
    assert binding(root, GPU) == (None, None)
    forced = vfio_pci(root, kernel=kernel, devices=["0000:00:02.0"], state="absent", persistent=False, force=True)
    assert forced["rc"] == 0 and forced["resumed"] == {GPU: "nvidia"}, forced


def test_a_named_device_whose_override_still_names_vfio_pci_is_handed_back_once(make_host, vfio_pci):
    """Killed after the unbind with its override still vfio-pci's: noted and named, it is handed back
    once, first, and refused once while a VM holds its group."""
    root, kernel = bound_by_id(make_host)
    vfio_bind.write_text(vfio_bind.device_path(root, GPU, "driver_override"), "vfio-pci")
    killed_hand_back(root, kernel, vfio_pci, at=r"sys/bus/pci/drivers/vfio-pci/remove_id\Z", companions=False)
    assert binding(root, GPU) == (None, "vfio-pci")
    hold_group(root, 4242, 2)
    refused = vfio_pci(root, kernel=kernel, devices=[GPU], state="absent", persistent=False, companions=False)
    assert refused["rc"] == 1 and [r["code"] for r in refused["refusals"]] == ["in_use"], refused
    del kernel.sim.writes[:]
    done = vfio_pci(root, kernel=kernel, devices=[GPU], state="absent", persistent=False, companions=False,
                    force=True)
    assert done["rc"] == 0 and done["resumed"] == {GPU: "nvidia"}, done
    assert [path for path, _value in kernel.sim.writes].count("sys/bus/pci/drivers_probe") == 1
    assert binding(root, GPU) == ("nvidia", None)


@pytest.mark.parametrize("damage, problem", [
    (b'{"0000:01:00.0": {"id": "10de:1e04"', "is not the JSON a run writes"),
    (b'["0000:01:00.0"]\n', "holds a JSON list, not the object of notes a run writes"),
    (b'{"0000:01:00.0": "10de:1e04"}\n', "holds entries that are not notes a run writes (0000:01:00.0)"),
])
def test_a_damaged_note_is_warned_about_and_replaced_by_the_next_hand_back(make_host, vfio_pci, damage, problem):
    root, kernel = bound_by_id(make_host)
    # Killed before its ID left vfio-pci's table: a reprobe alone would give it back to vfio-pci.
    killed_hand_back(root, kernel, vfio_pci, at=r"sys/bus/pci/drivers/vfio-pci/remove_id\Z")
    put(root, vfio_bind.HANDBACKS, damage.decode())

    told = vfio_pci(root, kernel=kernel, devices=["0000:06:00.0"], persistent=False, check_mode=True)
    assert told["rc"] == 0 and told["resumed"] == {}, told
    assert any(w.startswith("/%s %s" % (vfio_bind.HANDBACKS, problem)) and "stays so" in w
               for w in warnings(told)), warnings(told)
    assert binding(root, GPU) == (None, None)

    # What the warning says to do hands the device back.
    advice = next(w for w in warnings(told) if w.startswith("/" + vfio_bind.HANDBACKS))
    assert "remove_id" in advice and "driver_override" in advice and "drivers_probe" in advice
    with kernel.sim.active():
        write_text(os.path.join(root, "sys/bus/pci/drivers/vfio-pci/remove_id"), "10de 1e04")
        write_text(os.path.join(root, "sys/bus/pci/devices", GPU, "driver_override"), "\n")
        write_text(os.path.join(root, "sys/bus/pci/drivers_probe"), GPU)
    assert binding(root, GPU) == ("nvidia", None)

    # Without runtime changes, nothing reads the note.
    quiet = vfio_pci(root, kernel=kernel, devices=["0000:06:00.0"], persistent=True, runtime=False, check_mode=True)
    assert not any(vfio_bind.HANDBACKS in w for w in warnings(quiet)), warnings(quiet)

    # The next hand-back notes itself in a new file.
    assert vfio_pci(root, kernel=kernel, devices=["0000:06:00.0"], persistent=False)["rc"] == 0
    kill_at(kernel, r"sys/bus/pci/drivers_probe\Z")
    with pytest.raises(Killed):
        vfio_pci(root, kernel=kernel, devices=["0000:06:00.0"], state="absent", persistent=False)
    assert vfio_bind.handback_notes_problem(root) is None
    assert vfio_bind.interrupted_handbacks(root) == ["0000:06:00.0"]
