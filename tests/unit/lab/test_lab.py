# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tests/lab/lab.py without booting anything: apt sources, recipe hash, QEMU command line, faults.

The fault tests run `up` with a fake QEMU on PATH and a fake cached image, and check that each
failure names its step and leaves no QEMU process behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import stat
import subprocess
import sys
import time

import pytest

LAB_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "lab")


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lab = _load("gpuvirt_lab", os.path.join(LAB_DIR, "lab.py"))
layout_module = _load("gpuvirt_lab_layout", os.path.join(LAB_DIR, "layout.py"))


@pytest.fixture
def apt_root(tmp_path, monkeypatch):
    """Point the sources readers at a fake /etc/apt."""
    real_glob, real_exists, real_open = lab.glob.glob, os.path.exists, open

    def moved(path):
        return str(tmp_path) + path if str(path).startswith("/etc/apt") else path

    monkeypatch.setattr(lab.glob, "glob", lambda pattern: real_glob(moved(pattern)))
    monkeypatch.setattr(lab.os.path, "exists", lambda path: real_exists(moved(path)))
    monkeypatch.setattr(lab, "open", lambda path, *a, **k: real_open(moved(path), *a, **k), raising=False)
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    return tmp_path / "etc/apt"


def test_deb822_sources_give_the_bookworm_suites(apt_root):
    (apt_root / "sources.list.d/debian.sources").write_text(
        "Types: deb deb-src\n"
        "# a comment\n"
        "URIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\n"
        "Components: main contrib\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        "\n"
        "Types: deb\n"
        "URIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\n"
        "Components: main\n"
        "\n"
        "Types: deb\n"
        "Enabled: no\n"
        "URIs: http://disabled.example/debian\n"
        "Suites: bookworm\n"
        "Components: main\n"
    )
    assert lab.mirror_lines() == [
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian bookworm main",
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian "
        "bookworm-updates main",
        "deb http://mirror.example/debian-security bookworm-security main",
    ]


def test_one_line_sources_with_options(apt_root):
    (apt_root / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://mirror.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main non-free\n"
        "deb http://mirror.example/debian bookworm-backports main\n"
    )
    assert lab.mirror_lines() == ["deb [signed-by=/k.gpg] http://mirror.example/debian bookworm main"]


def test_no_bookworm_mirror_is_a_clear_error(apt_root, monkeypatch):
    monkeypatch.delenv("GPUVIRT_LAB_MIRRORS", raising=False)
    (apt_root / "sources.list").write_text("deb http://archive.example/ubuntu noble main\n")
    with pytest.raises(lab.LabError, match="step 'image' failed: .*no Debian 'bookworm' archive"):
        lab.mirror_lines()


def test_recipe_hash_follows_the_recipe_files(tmp_path, monkeypatch):
    recipe = tmp_path / "image"
    (recipe / "rootfs/etc").mkdir(parents=True)
    (recipe / "packages").write_text("python3\n")
    (recipe / "rootfs/etc/hostname").write_text("lab\n")
    monkeypatch.setattr(lab, "RECIPE_DIR", str(recipe))
    first = lab.recipe_hash()
    assert lab.recipe_hash() == first
    (recipe / "rootfs/etc/hostname").write_text("other\n")
    second = lab.recipe_hash()
    assert second != first
    (recipe / "rootfs/etc/hostname").chmod(0o755)
    assert lab.recipe_hash() != second


def test_qemu_command_line_follows_the_layout(tmp_path):
    layout = lab.load_layout()
    inst = lab.Instance("unit")
    argv = lab.qemu_argv(inst, layout, "/cache/img", 2222)
    netdev = argv[argv.index("-netdev") + 1]
    assert netdev == "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22"
    assert argv[argv.index("-kernel") + 1] == "/cache/img/grub.bin"
    assert argv[argv.index("-accel") + 1] == "tcg"
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert devices[0].startswith("intel-iommu")
    wanted = [" ".join(d["qemu"].split()) for d in layout["devices"] if d.get("qemu")]
    assert devices[1:] == wanted
    # every drive a layout device names is given, on one of the instance's disks
    drives = [argv[i + 1].split(",") for i, a in enumerate(argv) if a == "-drive"]
    used = {part[len("drive="):] for device in devices for part in device.split(",") if part.startswith("drive=")}
    assert used == {part[len("id="):] for drive in drives for part in drive if part.startswith("id=")}
    files = [part[len("file="):] for drive in drives for part in drive if part.startswith("file=")]
    assert files == [inst.path(leaf) for leaf in lab.DISKS]
    assert "-nodefaults" in argv and "-vga" not in argv  # no QEMU default VGA next to the layout's


def test_layout_names_resolve_and_every_group_member_is_a_device():
    layout = layout_module.Layout()
    assert layout.address("gpu") == "0000:01:00.0"
    members = {a for group in layout.shared_groups() for a in group}
    assert members <= {d["address"] for d in layout.devices}
    assert not members & set(layout.alone())
    assert {g["name"] for g in layout.gpus() if g["boot_vga"]} == {"boot-vga"}


# ------------------------------------------------------------------------------------ faults

FAKE_QEMU = """#!{python}
import os, sys, time
args = sys.argv[1:]
mode = {mode!r}
if mode == "port-taken":
    print("qemu-system-x86_64: -netdev user: Could not set up host forwarding rule 'tcp:...'", flush=True)
    sys.exit(1)
with open(args[args.index("-pidfile") + 1], "w") as f:
    f.write(str(os.getpid()))
chardev = dict(o.split("=", 1) for o in args[args.index("-chardev") + 1].split(",")[1:])
assert chardev["append"] == "on" and "-no-reboot" in args
starts = os.path.join(os.path.dirname(chardev["path"]), "fake-starts")
with open(starts, "a") as f:
    f.write("start\\n")
with open(chardev["path"], "a") as f:
    f.write("Welcome to GRUB\\n[    0.000000] Linux version 6.1.0-lab\\n")
    if mode == "reboot-twice" and open(starts).read().count("start") <= 2:
        f.write("[   61.148167] reboot: Restarting system\\n")
        sys.exit(0)
    f.write("stuck in the initramfs\\n")
if mode == "power-off":
    sys.exit(0)
time.sleep(600)
"""


@pytest.fixture
def fake_lab(tmp_path, monkeypatch):
    """A cached image, a state folder and a fake qemu-system-x86_64/qemu-img first on PATH."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", "%s:%s" % (bindir, os.environ["PATH"]))
    monkeypatch.setattr(lab, "STATE_ROOT", str(tmp_path / "state"))
    monkeypatch.setattr(lab, "CACHE_ROOT", str(tmp_path / "cache"))
    image = tmp_path / "cache" / lab.recipe_hash()
    image.mkdir(parents=True)
    for leaf in ("base.qcow2", "grub.bin"):
        (image / leaf).write_text("")
    (image / "ssh_host_ed25519_key.pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKey root@lab\n")
    (image / "build.json").write_text(json.dumps({"recipe": lab.recipe_hash(), "kernel": "6.1.0-lab",
                                                  "build_seconds": 60.0}))  # fmt: skip
    img = bindir / "qemu-img"
    # creates the image it is asked for: the last .qcow2 argument (a size or nothing may follow it)
    img.write_text('#!/bin/sh\nfor arg; do case "$arg" in *.qcow2) image=$arg;; esac; done\n: > "$image"\n')
    img.chmod(img.stat().st_mode | stat.S_IEXEC)

    def install_qemu(mode):
        qemu = bindir / "qemu-system-x86_64"
        qemu.write_text(FAKE_QEMU.format(python=sys.executable, mode=mode))
        qemu.chmod(qemu.stat().st_mode | stat.S_IEXEC)

    return install_qemu


def _qemu_processes(marker):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                cmdline = handle.read()
            with open("/proc/%s/stat" % pid) as handle:
                zombie = handle.read().split(") ", 1)[1].startswith("Z")
        except OSError:
            continue
        if b"qemu-system-x86_64" in cmdline and marker.encode() in cmdline and not zombie:
            found.append(int(pid))
    return found


def test_guest_that_never_reaches_ssh_fails_the_boot_step_and_leaves_no_qemu(fake_lab, capsys):
    fake_lab("hang")
    start = time.monotonic()
    rc = lab.main(["up", "--name", "hang", "--boot-timeout", "3", "--boot-attempts", "1"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "step 'boot' failed: the guest did not reach SSH within 3 s" in err
    assert "stuck in the initramfs" in err  # the console tail is shown
    assert time.monotonic() - start < 60
    assert _qemu_processes(lab.STATE_ROOT) == []
    assert lab.Instance("hang").pid() is None
    assert not os.path.exists(os.path.join(lab.STATE_ROOT, "hang", "inventory.yml"))


def test_a_hung_boot_is_tried_once_more_on_fresh_disks_then_fails_with_both_attempts(fake_lab, capsys):
    fake_lab("hang")
    start = time.monotonic()
    rc = lab.main(["up", "--name", "stall", "--boot-timeout", "300", "--boot-stall", "3"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert time.monotonic() - start < 60  # the silent console ended each attempt, not the 300 s limit
    assert "boot attempt 1 failed (boot): booting again on fresh disks" in out
    assert "attempt 1: step 'boot' failed: the guest did not reach SSH and its console printed nothing for" in err
    assert "attempt 2: step 'boot' failed" in err
    inst = lab.Instance("stall")
    with open(inst.path("fake-starts")) as handle:
        assert handle.read().count("start") == 2
    with open(inst.path("console.log")) as handle:
        assert handle.read().count("Linux version") == 2  # both attempts' consoles kept
    assert _qemu_processes(lab.STATE_ROOT) == []
    assert inst.pid() is None


def test_a_second_boot_that_reaches_ssh_brings_the_instance_up(fake_lab, monkeypatch, capsys):
    fake_lab("hang")
    waits = []

    def wait_for_ssh(inst, port, pid, timeout, stall):
        waits.append(port)
        if len(waits) == 1:
            raise lab.LabError("boot", "the guest did not reach SSH within 1 s")
        return 12.5

    monkeypatch.setattr(lab, "wait_for_ssh", wait_for_ssh)
    assert lab.main(["up", "--name", "second"]) == 0
    inst = lab.Instance("second")
    try:
        state = inst.state()
        assert state["timings"]["boot_attempts"] == 2 and state["timings"]["boot_to_ssh_seconds"] == 12.5
        assert state["port"] == waits[1]
        with open(inst.path("known_hosts")) as handle:
            assert handle.read().startswith("[127.0.0.1]:%d " % waits[1])
        with open(inst.path("fake-starts")) as handle:
            assert handle.read().count("start") == 2
        assert len(_qemu_processes(lab.STATE_ROOT)) == 1  # the first attempt's QEMU is gone
    finally:
        lab.main(["down", "--name", "second"])
    assert _qemu_processes(lab.STATE_ROOT) == []


def test_a_guest_reboot_starts_a_new_qemu_on_the_same_disk_and_down_stops_it(fake_lab, capsys):
    fake_lab("reboot-twice")
    assert lab.main(["up", "--name", "cycle", "--boot-timeout", "4", "--boot-attempts", "1"]) == 1  # cycles ran
    inst = lab.Instance("cycle")
    with open(inst.path("fake-starts")) as handle:
        assert handle.read().count("start") == 3
    with open(inst.path("qemu.log")) as handle:
        log = handle.read()
    assert "QEMU started afresh on the same disk (power cycle 2)" in log
    assert "power cycle 3" not in log
    with open(inst.path("console.log")) as handle:
        assert handle.read().count("Linux version") == 3  # every boot's console kept
    assert _qemu_processes(lab.STATE_ROOT) == []
    assert inst.pid() is None


def test_a_guest_power_off_ends_the_instance(fake_lab, tmp_path):
    fake_lab("power-off")
    inst = lab.Instance("off")
    os.makedirs(inst.dir)
    argv = ["qemu-system-x86_64", "-chardev", "file,id=console,path=%s,append=on" % inst.path("console.log"),
            "-pidfile", inst.path("qemu.pid"), "-no-reboot"]  # fmt: skip
    with open(inst.path("qemu.json"), "w") as handle:
        json.dump({"argv": argv, "console": inst.path("console.log")}, handle)
    power = subprocess.run([sys.executable, lab.__file__, "power", inst.path("qemu.json")], timeout=60, check=False)
    assert power.returncode == 0
    with open(inst.path("fake-starts")) as handle:
        assert handle.read().count("start") == 1


def test_port_taken_by_qemu_forward_is_reported_as_such(fake_lab, capsys):
    fake_lab("port-taken")
    assert lab.main(["up", "--name", "taken"]) == 1
    err = capsys.readouterr().err
    # a port the lab chose itself is chosen afresh once
    assert "attempt 1: step 'network' failed: port" in err and "attempt 2: step 'network' failed: port" in err
    assert _qemu_processes(lab.STATE_ROOT) == []


def test_requested_port_in_use_fails_before_starting_anything(fake_lab, capsys):
    fake_lab("hang")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert lab.main(["up", "--name", "busy", "--port", str(port)]) == 1
    assert "step 'network' failed: port %d on 127.0.0.1 is in use" % port in capsys.readouterr().err
    assert _qemu_processes(lab.STATE_ROOT) == []


def test_missing_package_names_the_package_and_make_deps(fake_lab, monkeypatch, capsys):
    monkeypatch.setattr(lab, "TOOLS_RUN", dict(lab.TOOLS_RUN, **{"qemu-nonexistent-tool": "qemu-nothing"}))
    installed = set(lab.TOOLS_RUN) - {"qemu-nonexistent-tool"}  # whatever this machine has
    monkeypatch.setattr(lab.shutil, "which", lambda name: "/usr/bin/" + name if name in installed else None)
    assert lab.main(["up", "--name", "nopkg"]) == 1
    err = capsys.readouterr().err
    assert "step 'check tools' failed: missing qemu-nonexistent-tool (Debian package(s): qemu-nothing)" in err
    assert "make deps" in err


def test_down_and_status_on_a_stopped_lab_are_fine(fake_lab, capsys):
    assert lab.main(["down", "--name", "never-started"]) == 0
    assert "is not running" in capsys.readouterr().out
    assert lab.main(["status", "--name", "never-started", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["running"] is False


def test_bad_instance_name_is_refused(capsys):
    assert lab.main(["down", "--name", "../etc"]) == 1
    assert "use letters, digits" in capsys.readouterr().err


def test_prune_keeps_the_current_recipe_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lab, "CACHE_ROOT", str(tmp_path))
    current = tmp_path / lab.recipe_hash()
    old = tmp_path / "0123456789abcdef"
    for folder in (current, old):
        folder.mkdir()
        (folder / "base.qcow2").write_bytes(b"x" * 2048)
    (tmp_path / "0123456789abcdef.lock").write_text("")
    assert lab.main(["prune"]) == 0
    assert current.is_dir() and not old.exists()
    assert not (tmp_path / "0123456789abcdef.lock").exists()
    assert "removed image 0123456789abcdef" in capsys.readouterr().out
