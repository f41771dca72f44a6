# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The gpuvirt.host QEMU lab: a real Linux kernel with an IOMMU, GPUs, mdev parents and SR-IOV.

    lab.py build   [--force]              build the guest image (cached by a hash of its recipe)
    lab.py up      [--name N] [--port P]  build or reuse the image, boot an instance, wait for SSH
    lab.py down    [--name N]             stop an instance (fine when it is not running)
    lab.py ssh     [--name N] [cmd ...]   a shell or a command in the instance
    lab.py status  [--name N] [--json]    whether it runs, its port, inventory and image
    lab.py prune                          remove cached images of other recipes

The image is built from Debian's packages with mmdebstrap (needs root) and cached under
``${XDG_CACHE_HOME:-~/.cache}/gpuvirt-lab/<recipe-hash>/``. Each instance boots a qcow2 overlay
made fresh by ``up`` and keeps its state (pid, port, key, console log, inventory) in
``.lab/<name>/`` of the checkout. QEMU runs under TCG; the guest's network is user-mode with
``restrict=on`` and one forward from 127.0.0.1 to its SSH port.

A guest reboot is a power cycle: QEMU runs with ``-no-reboot`` under ``lab.py power``, which starts
a new QEMU on the same disk when the guest's kernel said "Restarting system". Under TCG a warm reset
boots far slower than a new process (measured on this lab: 30-71 s from the reset to the kernel's
first line, against 15-18 s), and GRUB still reads the guest's own grub.cfg either way.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
RECIPE_DIR = os.path.join(HERE, "image")
LAYOUT_FILE = os.path.join(HERE, "layout.yml")
STATE_ROOT = os.environ.get("GPUVIRT_LAB_STATE") or os.path.join(REPO, ".lab")
CACHE_ROOT = os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "gpuvirt-lab"
)

SUITE = "bookworm"
COMPONENTS = "main"
DISK_SIZE = 4 * 1024**3
FS_LABEL = "gpuvirt-lab"
# Everything below that shapes the image is part of the recipe hash, with the files in image/.
BUILD_SETTINGS = {
    "suite": SUITE,
    "variant": "minbase",
    "disk_size": DISK_SIZE,
    "label": FS_LABEL,
    # GRUB 2.06 cannot read ext4 with these newer features.
    "mkfs_features": "^metadata_csum_seed,^orphan_file",
    "dpkg_excludes": ["/usr/share/man/*", "/usr/share/doc/*", "/usr/share/info/*", "/usr/share/locale/*"],
    "format": 2,
}
# How long `up` waits for SSH: in all, and with no new console output (a hung boot). Two guests
# booting side by side on two busy cores have needed 60-172 s; the guest's reboots get 900 s.
DEFAULT_BOOT_TIMEOUT = int(os.environ.get("GPUVIRT_LAB_BOOT_TIMEOUT", "600"))
DEFAULT_BOOT_STALL = int(os.environ.get("GPUVIRT_LAB_BOOT_STALL", "180"))

# binary -> Debian package, per step
TOOLS_RUN = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}
TOOLS_BUILD = {"mmdebstrap": "mmdebstrap", "mkfs.ext4": "e2fsprogs", "xz": "xz-utils", "chroot": "coreutils"}

# Console lines that mark how far the guest got, for progress and for failure messages.
BOOT_STAGES = [
    ("GNU GRUB", "GRUB"),
    ("Welcome to GRUB", "GRUB"),
    ("Linux version", "kernel"),
    ("Run /init", "initramfs"),
    ("systemd[1]", "systemd"),
    ("Welcome to Debian", "systemd"),
    ("Reached target", "systemd targets"),
    ("OpenSSH", "sshd"),
    ("login:", "login prompt"),
]


class LabError(Exception):
    """A step failed; the message says which and why."""

    def __init__(self, step, message):
        super().__init__(f"step '{step}' failed: {message}")
        self.step = step


def say(message):
    print(f"lab: {message}", flush=True)


def _on_signal(signum, _frame):
    raise SystemExit(f"lab: interrupted by signal {signum}")


# --------------------------------------------------------------------------------------------- tools


def check_tools(step, tools):
    missing = sorted({pkg for binary, pkg in tools.items() if shutil.which(binary) is None})
    if missing:
        binaries = ", ".join(sorted(b for b, p in tools.items() if p in missing and shutil.which(b) is None))
        raise LabError(
            step,
            f"missing {binaries} (Debian package(s): {' '.join(missing)}); run 'make deps' as root",
        )


def load_layout(path=LAYOUT_FILE):
    import yaml  # only `up` and the tests need the layout; keep `down`/`ssh` dependency-free

    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


# --------------------------------------------------------------------------------------------- image


def recipe_hash():
    digest = hashlib.sha256(json.dumps(BUILD_SETTINGS, sort_keys=True).encode())
    for dirpath, dirnames, filenames in os.walk(RECIPE_DIR):
        dirnames.sort()
        for filename in sorted(filenames):
            path = os.path.join(dirpath, filename)
            rel = os.path.relpath(path, RECIPE_DIR)
            digest.update(rel.encode() + b"\0" + str(os.stat(path).st_mode & 0o111).encode() + b"\0")
            with open(path, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()[:16]


def image_dir(recipe=None):
    return os.path.join(CACHE_ROOT, recipe or recipe_hash())


def image_ready(path):
    return all(
        os.path.exists(os.path.join(path, f))
        for f in ("base.qcow2", "grub.bin", "ssh_host_ed25519_key.pub", "build.json")
    )


def _deb822_paragraphs(text):
    paragraph = {}
    key = None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if paragraph:
                yield paragraph
            paragraph, key = {}, None
        elif line[0] in " \t" and key:
            paragraph[key] += " " + line.strip()
        elif ":" in line:
            key, _sep, value = line.partition(":")
            key = key.strip().lower()
            paragraph[key] = value.strip()
    if paragraph:
        yield paragraph


def host_debian_mirrors():
    """The Debian archive URIs this machine's apt uses, as {suite: uri} for the lab's suites."""
    entries = []  # (type, uri, suite, components, signed_by)
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        with open(path, encoding="utf-8") as handle:
            for para in _deb822_paragraphs(handle.read()):
                if para.get("enabled", "yes").lower() == "no":
                    continue
                for kind in para.get("types", "").split():
                    for uri in para.get("uris", "").split():
                        for suite in para.get("suites", "").split():
                            entries.append((kind, uri, suite, para.get("components", ""), para.get("signed-by")))
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                words = line.split("#", 1)[0].split()
                if len(words) < 3 or words[0] not in ("deb", "deb-src"):
                    continue
                kind, rest = words[0], words[1:]
                signed_by = None
                if rest[0].startswith("["):
                    options = []
                    while rest and not (options and options[-1].endswith("]")):
                        options.append(rest.pop(0))
                    for opt in " ".join(options).strip("[] ").split():
                        if opt.startswith("signed-by="):
                            signed_by = opt.split("=", 1)[1]
                if len(rest) >= 2:
                    entries.append((kind, rest[0], rest[1], " ".join(rest[2:]), signed_by))
    wanted = {SUITE: None, f"{SUITE}-updates": None, f"{SUITE}-security": None}
    for kind, uri, suite, components, signed_by in entries:
        if kind == "deb" and suite in wanted and wanted[suite] is None and "main" in components.split():
            wanted[suite] = (uri, signed_by)
    return {suite: value for suite, value in wanted.items() if value}


def mirror_lines():
    override = os.environ.get("GPUVIRT_LAB_MIRRORS")
    if override:
        return [line.strip() for line in override.split(";") if line.strip()]
    mirrors = host_debian_mirrors()
    if SUITE not in mirrors:
        raise LabError(
            "image",
            f"this machine's apt sources name no Debian '{SUITE}' archive with 'main'; add one, or set "
            "GPUVIRT_LAB_MIRRORS='deb <uri> bookworm main;deb <uri> bookworm-security main'",
        )
    lines = []
    for suite, (uri, signed_by) in mirrors.items():
        option = f"[signed-by={signed_by}] " if signed_by and signed_by.startswith("/") else ""
        lines.append(f"deb {option}{uri} {suite} {COMPONENTS}")
    return lines


def read_packages():
    with open(os.path.join(RECIPE_DIR, "packages"), encoding="utf-8") as handle:
        return [w for line in handle for w in line.split("#", 1)[0].split()]


def _run_logged(step, argv, log, echo=None, start=None):
    """Run argv with its output appended to log; echo lines matching `echo` with the elapsed time."""
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    for raw in proc.stdout:
        line = raw.decode("utf-8", "replace").rstrip()
        log.write(line + "\n")
        if echo and echo(line):
            elapsed = f"{time.monotonic() - start:5.0f} s " if start is not None else ""
            print(f"lab:   {elapsed}{line}", flush=True)
    rc = proc.wait()
    log.flush()
    if rc != 0:
        raise LabError(step, f"{argv[0]} exited with {rc}")


def _remove_stale_builds():
    """Drop the work folders of builds whose process is gone (an interrupted or failed build)."""
    for path in glob.glob(os.path.join(CACHE_ROOT, ".build-*-*")):
        pid = path.rsplit("-", 1)[1]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(path, ignore_errors=True)


def build_image(force=False):
    """Build the guest image unless the cache already holds it; return its folder."""
    recipe = recipe_hash()
    final = image_dir(recipe)
    os.makedirs(CACHE_ROOT, exist_ok=True)
    with open(os.path.join(CACHE_ROOT, f"{recipe}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second `up` waits for the first one's build
        if image_ready(final) and not force:
            return final, False
        if os.geteuid() != 0:
            raise LabError("image", "building the lab image needs root (mmdebstrap --mode=root); run as root")
        check_tools("image", TOOLS_BUILD)
        _remove_stale_builds()
        work = os.path.join(CACHE_ROOT, f".build-{recipe}-{os.getpid()}")
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        rootdir = os.path.join(work, "root")
        log_path = os.path.join(work, "build.log")
        start = time.monotonic()
        say(f"building image {recipe} (Debian {SUITE}, log: {log_path})")
        try:
            with open(log_path, "w", encoding="utf-8") as log:
                packages = read_packages()
                argv = [
                    "mmdebstrap",
                    "--mode=root",
                    f"--variant={BUILD_SETTINGS['variant']}",
                    "--format=directory",
                    "--include=" + ",".join(packages),
                    "--aptopt=APT::Install-Recommends \"false\"",
                    "--aptopt=Acquire::Retries \"3\"",
                    "--aptopt=Acquire::Languages \"none\"",
                    *[f"--dpkgopt=path-exclude={p}" for p in BUILD_SETTINGS["dpkg_excludes"]],
                    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                    f"--customize-hook=sh {RECIPE_DIR}/customize.sh \"$1\" {work}",
                    SUITE,
                    rootdir,
                    *mirror_lines(),
                ]
                _run_logged(
                    "image: mmdebstrap",
                    argv,
                    log,
                    echo=lambda line: line.startswith(("I: ", "E: ", "image: ")),
                    start=start,
                )
                say(f"  {time.monotonic() - start:5.0f} s root tree done; making the disk image")
                raw = os.path.join(work, "base.raw")
                with open(raw, "wb") as handle:
                    handle.truncate(DISK_SIZE)
                _run_logged(
                    "image: mkfs.ext4",
                    ["mkfs.ext4", "-q", "-F", "-L", FS_LABEL, "-O", BUILD_SETTINGS["mkfs_features"], "-d", rootdir,
                     raw],  # fmt: skip
                    log,
                )
                _run_logged(
                    "image: qemu-img",
                    ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, os.path.join(work, "base.qcow2")],
                    log,
                )
                os.unlink(raw)
            with open(os.path.join(work, "kernel-release"), encoding="utf-8") as handle:
                kernel = handle.read().strip()
            seconds = round(time.monotonic() - start, 1)
            with open(os.path.join(work, "build.json"), "w", encoding="utf-8") as handle:
                json.dump(
                    {
                        "recipe": recipe,
                        "kernel": kernel,
                        "packages": packages,
                        "build_seconds": seconds,
                        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    },
                    handle,
                    indent=2,
                )
            shutil.rmtree(rootdir)
            if force:
                shutil.rmtree(final, ignore_errors=True)
            os.rename(work, final)
        except BaseException as err:
            tail = _tail(log_path, 25)
            shutil.rmtree(rootdir, ignore_errors=True)
            if isinstance(err, LabError):
                raise LabError(err.step, f"{err} (build log kept in {log_path}):\n{tail}") from None
            raise
        say(f"image {recipe} built in {seconds:.0f} s (kernel {kernel})")
        return final, True


# ------------------------------------------------------------------------------------------ instance


# `lab.py power`'s (the instance's) and its current QEMU's
PID_FILES = ("power.pid", "qemu.pid")
# The instance's disks: the root disk over the image, and a blank spare disk (its own PCI function) for
# the storage the tests put in use (swap).
DISKS = ("disk.qcow2", "spare.qcow2")
# Why the instance's last `up` failed, for a summary at the end of a long test log.
UP_ERROR = "up-error.txt"
SPARE_DISK_SIZE = "64M"


class Instance:
    def __init__(self, name):
        if not name or not all(c.isalnum() or c in "-_" for c in name):
            raise LabError("arguments", f"instance name {name!r}: use letters, digits, '-' and '_'")
        self.name = name
        self.dir = os.path.join(STATE_ROOT, name)

    def path(self, leaf):
        return os.path.join(self.dir, leaf)

    def state(self):
        try:
            with open(self.path("state.json"), encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return None

    def pid(self):
        """The pid of the instance's ``lab.py power`` process (which runs its QEMU), else None."""
        return self._pid("power.pid", b"lab.py")

    def _pid(self, leaf, program):
        try:
            with open(self.path(leaf), encoding="utf-8") as handle:
                pid = int(handle.read().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except (OSError, ValueError):
            return None
        # the pid must still be ours, not a recycled number
        return pid if program in cmdline and self.dir.encode() in cmdline and _alive(pid) else None

    def ssh_argv(self, port, batch=False):
        argv = [
            "ssh",
            "-F", "/dev/null",
            "-i", self.path("id_ed25519"),
            "-p", str(port),
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.path('known_hosts')}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        if batch:
            argv += ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        return argv + ["root@127.0.0.1"]


def _tail(path, lines):
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    text = text.replace("\r", "")
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def qemu_argv(inst, layout, image, port):
    machine = layout["machine"]
    argv = [
        "qemu-system-x86_64",
        "-name", f"gpuvirt-lab-{inst.name}",
        "-nodefaults",
        "-display", "none",
        "-machine", machine["type"],
        "-accel", machine.get("accel", "tcg"),
        "-cpu", machine["cpu"],
        "-smp", str(machine["cpus"]),
        "-m", str(machine["memory_mb"]),
        # the platform IOMMU is created before the PCI devices it translates for
        "-device", machine["iommu"],
        "-kernel", os.path.join(image, "grub.bin"),
        # the layout's virtio-blk functions name them drive=disk0 (root), drive=disk1 (spare)
        *(argument for index, leaf in enumerate(DISKS) for argument in (
            "-drive", f"if=none,id=disk{index},format=qcow2,file={inst.path(leaf)},cache=unsafe,discard=unmap")),
        "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-fw_cfg", f"name=opt/gpuvirt/authorized_keys,file={inst.path('id_ed25519.pub')}",
        # appended to, so the console of every boot of the instance stays in one log
        "-chardev", f"file,id=console,path={inst.path('console.log')},append=on",
        "-serial", "chardev:console",
        "-pidfile", inst.path("qemu.pid"),
        # a guest reboot ends QEMU; `lab.py power` starts it afresh (see the module's docstring)
        "-no-reboot",
    ]  # fmt: skip
    for device in layout["devices"]:
        if device.get("qemu"):
            argv += ["-device", " ".join(device["qemu"].split())]
    return argv


def console_stage(path):
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    stage = None
    best = -1
    for marker, name in BOOT_STAGES:
        pos = text.rfind(marker)
        if pos > best:
            best, stage = pos, name
    return stage


def ssh_banner(port, timeout=3.0):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def wait_for_ssh(inst, port, pid, timeout, stall):
    start = time.monotonic()
    last_stage, last_print = None, start
    console_size, console_moved = -1, start
    while True:
        now = time.monotonic()
        elapsed = now - start
        if not _alive(pid):
            if _console_size(inst.path("console.log")) == 0:
                raise _start_error(inst, port)
            raise LabError("boot", f"QEMU exited during boot; console:\n{_tail(inst.path('console.log'), 30)}")
        size = _console_size(inst.path("console.log"))
        if size != console_size:
            console_size, console_moved = size, now
        stage = console_stage(inst.path("console.log"))
        if stage != last_stage or now - last_print > 30:
            say(f"  {elapsed:5.0f} s boot: {stage or 'firmware'}")
            last_stage, last_print = stage, now
        if ssh_banner(port):
            probe = subprocess.run(
                [*inst.ssh_argv(port, batch=True), "true"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=60,
                check=False,
            )
            if probe.returncode == 0:
                return time.monotonic() - start
        if elapsed > timeout or now - console_moved > stall:
            why = (
                f"within {timeout} s" if elapsed > timeout
                else f"and its console printed nothing for {now - console_moved:.0f} s"
            )
            raise LabError(
                "boot",
                f"the guest did not reach SSH {why} (last stage: {stage or 'firmware'}, after {elapsed:.0f} s); "
                f"console tail:\n{_tail(inst.path('console.log'), 30)}",
            )
        time.sleep(2)


def _start_error(inst, port, returncode=None):
    """Why QEMU ended before the guest printed anything, from its log."""
    log = _tail(inst.path("qemu.log"), 10)
    if "host forwarding" in log or "Address already in use" in log:
        return LabError("network", f"port {port} on 127.0.0.1 is in use (QEMU could not forward it):\n{log}")
    status = "" if returncode is None else f" with {returncode}"
    return LabError("start QEMU", f"QEMU exited{status}:\n{log}")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
        if handle.read().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def stop_instance(pid, timeout=15):
    """Stop ``lab.py power`` and its QEMU: the process group it leads, SIGTERM first, then SIGKILL."""
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    _signal_group(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, 0)


def _signal_group(pid, signum):
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


# The kernel's last console line before a restart (kernel/reboot.c, printed at KERN_EMERG, so even
# with `quiet`); a power-off says "Power down" and a halt "System halted".
RESTART_MARKER = b"reboot: Restarting system"


def _console_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _restarted_since(path, offset):
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return RESTART_MARKER in handle.read()
    except OSError:
        return False


def cmd_power(args):
    """Run an instance's QEMU; each time the guest reboots, start it afresh on the same disk."""
    with open(args.spec, encoding="utf-8") as handle:
        spec = json.load(handle)
    argv, console = spec["argv"], spec["console"]
    child = None
    stopping = False

    def stop(_signum, _frame):
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.terminate()

    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, stop)
    cycles = 0
    while True:
        offset = _console_size(console)
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        returncode = child.wait()
        if stopping or returncode != 0 or not _restarted_since(console, offset):
            return returncode
        cycles += 1
        say(f"the guest rebooted: QEMU started afresh on the same disk (power cycle {cycles})")


def write_inventory(inst, port):
    key = inst.path("id_ed25519")
    common = (
        f"-o IdentitiesOnly=yes -o UserKnownHostsFile={inst.path('known_hosts')} "
        "-o StrictHostKeyChecking=yes -o ControlMaster=auto -o ControlPersist=60s "
        # a guest reboot leaves the control master on a dead connection: notice it in seconds
        "-o ServerAliveInterval=5 -o ServerAliveCountMax=3"
    )
    text = (
        f"# Ansible inventory of the running lab instance '{inst.name}' (written by tests/lab/lab.py up).\n"
        "all:\n"
        "  children:\n"
        "    gpuvirt_lab:\n"
        "      hosts:\n"
        f"        {inst.name}:\n"
        "          ansible_host: 127.0.0.1\n"
        f"          ansible_port: {port}\n"
        "          ansible_user: root\n"
        f"          ansible_ssh_private_key_file: {json.dumps(key)}\n"
        f"          ansible_ssh_common_args: {json.dumps(common)}\n"
        "          ansible_python_interpreter: /usr/bin/python3\n"
        "          ansible_pipelining: true\n"
    )
    with open(inst.path("inventory.yml"), "w", encoding="utf-8") as handle:
        handle.write(text)


def boot_instance(inst, layout, image, port, args):
    """Boot the instance on fresh overlay disks with SSH forwarded from ``port``; wait for SSH.

    Returns the ``lab.py power`` process and the seconds to start QEMU and to reach SSH. On failure
    nothing of this boot runs any more; the console log keeps what every attempt printed.
    """
    for leaf in (*PID_FILES, "state.json", "inventory.yml", *DISKS):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(inst.path(leaf))
    with open(os.path.join(image, "ssh_host_ed25519_key.pub"), encoding="utf-8") as handle:
        host_key = " ".join(handle.read().split()[:2])
    with open(inst.path("known_hosts"), "w", encoding="utf-8") as handle:
        handle.write(f"[127.0.0.1]:{port} {host_key}\n")

    step_start = time.monotonic()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", os.path.join(image, "base.qcow2"),
         inst.path("disk.qcow2")],
        check=True,
    )  # fmt: skip
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", inst.path("spare.qcow2"), SPARE_DISK_SIZE], check=True)
    argv = qemu_argv(inst, layout, image, port)
    with open(inst.path("qemu.cmdline"), "w", encoding="utf-8") as handle:
        handle.write(" ".join(argv) + "\n")
    with open(inst.path("qemu.json"), "w", encoding="utf-8") as handle:
        json.dump({"argv": argv, "console": inst.path("console.log")}, handle, indent=2)
    qemu_log = open(inst.path("qemu.log"), "w", encoding="utf-8")  # noqa: SIM115 - handed to QEMU
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "power", inst.path("qemu.json")],
        stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    qemu_log.close()
    with open(inst.path("power.pid"), "w", encoding="utf-8") as handle:
        handle.write(f"{proc.pid}\n")
    success = False
    try:
        time.sleep(1.0)
        if proc.poll() is not None:
            raise _start_error(inst, port, proc.returncode)
        start_seconds = time.monotonic() - step_start
        say(
            f"QEMU started (pid {proc.pid}, ssh on 127.0.0.1:{port}); waiting for SSH "
            f"(limit {args.boot_timeout} s, or {args.boot_stall} s without console output)"
        )
        boot_seconds = wait_for_ssh(inst, port, proc.pid, args.boot_timeout, args.boot_stall)
        success = True
    finally:
        if not success:
            stop_instance(proc.pid)
            for leaf in PID_FILES:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(inst.path(leaf))
            say(f"QEMU stopped; console log: {inst.path('console.log')}")
    return proc, start_seconds, boot_seconds


def cmd_up(args):
    inst = Instance(args.name)
    pid = inst.pid()
    if pid:
        state = inst.state() or {}
        say(f"instance '{inst.name}' already runs (pid {pid}, ssh port {state.get('port')}); nothing to do")
        if args.json:
            print(json.dumps(status_of(inst)))
        return 0
    total_start = time.monotonic()
    check_tools("check tools", TOOLS_RUN)
    layout = load_layout()

    if args.port and not port_is_free(args.port):
        raise LabError("network", f"port {args.port} on 127.0.0.1 is in use; pick another or omit --port")

    step_start = time.monotonic()
    image, built = build_image()
    image_seconds = time.monotonic() - step_start
    with open(os.path.join(image, "build.json"), encoding="utf-8") as handle:
        build_info = json.load(handle)
    if not built:
        say(f"image {build_info['recipe']} reused from {image} (cold build took {build_info['build_seconds']:.0f} s)")

    os.makedirs(inst.dir, exist_ok=True)
    for leaf in ("console.log", UP_ERROR):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(inst.path(leaf))
    if not os.path.exists(inst.path("id_ed25519")):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"gpuvirt-lab-{inst.name}",
             "-f", inst.path("id_ed25519")],  # fmt: skip
            check=True,
        )
    # A boot that hangs or stalls under TCG, or a forward port taken between choosing it and QEMU
    # binding it, does not fail the run: the instance boots once more on fresh disks. A second
    # failure is the error, with what the first attempt saw.
    failures = []
    for attempt in range(1, args.boot_attempts + 1):
        port = args.port or free_port()
        try:
            proc, start_seconds, boot_seconds = boot_instance(inst, layout, image, port, args)
            break
        except LabError as err:
            retry = err.step == "boot" or (err.step == "network" and not args.port)
            failures.append(f"attempt {attempt}: {err}")
            if not retry or attempt == args.boot_attempts:
                with open(inst.path(UP_ERROR), "w", encoding="utf-8") as handle:
                    handle.write("\n".join(failures) + "\n")
                if len(failures) > 1:
                    raise LabError(err.step, "\n".join(failures)) from err
                raise
            say(f"boot attempt {attempt} failed ({err.step}): booting again on fresh disks")
            say(str(err))
    write_inventory(inst, port)
    state = {
        "name": inst.name,
        "pid": proc.pid,
        "port": port,
        "image": image,
        "recipe": build_info["recipe"],
        "kernel": build_info["kernel"],
        "inventory": inst.path("inventory.yml"),
        "private_key": inst.path("id_ed25519"),
        "known_hosts": inst.path("known_hosts"),
        "console": inst.path("console.log"),
        "timings": {
            "image_seconds": round(image_seconds, 1),
            "image_built": built,
            "cold_build_seconds": build_info["build_seconds"],
            "boot_attempts": attempt,
            "start_seconds": round(start_seconds, 1),
            "boot_to_ssh_seconds": round(boot_seconds, 1),
            "total_seconds": round(time.monotonic() - total_start, 1),
        },
    }
    with open(inst.path("state.json"), "w", encoding="utf-8") as handle:
        json.dump(state, handle, indent=2)
    t = state["timings"]
    say(f"instance '{inst.name}' is up: ssh with 'tests/lab/lab.py ssh --name {inst.name}'")
    say(f"  inventory     {inst.path('inventory.yml')}")
    say(
        f"  image         {'cold build' if built else 'cached'} {t['image_seconds']:.1f} s "
        f"(cold build of this recipe: {t['cold_build_seconds']:.0f} s)"
    )
    say(f"  QEMU start    {t['start_seconds']:.1f} s")
    say(f"  boot to SSH   {t['boot_to_ssh_seconds']:.1f} s")
    say(f"  total         {t['total_seconds']:.1f} s")
    if args.json:
        print(json.dumps(status_of(inst)))
    return 0


def cmd_down(args):
    inst = Instance(args.name)
    pid = inst.pid()
    if not pid:
        say(f"instance '{inst.name}' is not running")
    else:
        stop_instance(pid)
        say(f"instance '{inst.name}' stopped (pid {pid})")
    for leaf in (*PID_FILES, "state.json", "inventory.yml", *DISKS):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(inst.path(leaf))
    return 0


def status_of(inst):
    pid = inst.pid()
    state = inst.state() if pid else None
    return {"name": inst.name, "running": bool(pid), "pid": pid, **(state or {})}


def cmd_status(args):
    inst = Instance(args.name)
    status = status_of(inst)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    if not status["running"]:
        say(f"instance '{inst.name}' is not running")
        return 3
    say(f"instance '{inst.name}' runs: pid {status['pid']}, ssh 127.0.0.1:{status.get('port')}")
    say(f"  kernel {status.get('kernel')}, image {status.get('image')}")
    say(f"  inventory {status.get('inventory')}")
    return 0


def cmd_ssh(args):
    inst = Instance(args.name)
    state = inst.state() if inst.pid() else None
    if not state:
        raise LabError("ssh", f"instance '{inst.name}' is not running; start it with 'make lab-up'")
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    argv = inst.ssh_argv(state["port"]) + command
    os.execvp(argv[0], argv)


def cmd_build(args):
    check_tools("check tools", {"qemu-img": "qemu-utils"})
    start = time.monotonic()
    path, built = build_image(force=args.force)
    say(f"image {'built' if built else 'already cached'}: {path} ({time.monotonic() - start:.1f} s)")
    return 0


def cmd_prune(_args):
    """Remove cached images of other recipes (running instances keep theirs open until they stop)."""
    keep = recipe_hash()
    _remove_stale_builds()
    freed = 0
    for path in glob.glob(os.path.join(CACHE_ROOT, "*")):
        leaf = os.path.basename(path)
        if leaf.startswith(".") or leaf in (keep, f"{keep}.lock"):
            continue
        if os.path.isdir(path):
            freed += sum(os.path.getsize(os.path.join(d, f)) for d, _dirs, files in os.walk(path) for f in files)
            shutil.rmtree(path, ignore_errors=True)
            say(f"removed image {leaf}")
        elif leaf.endswith(".lock"):
            os.unlink(path)
    say(f"kept image {keep}; freed {freed / 1024**2:.0f} MiB")
    return 0


def cmd_hash(_args):
    print(recipe_hash())
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="lab.py", description=__doc__.split("\n\n", maxsplit=1)[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("up", help="build or reuse the image, boot an instance, wait for SSH")
    p.add_argument("--port", type=int, help="host port for the SSH forward (default: a free one)")
    p.add_argument("--boot-timeout", type=int, default=DEFAULT_BOOT_TIMEOUT, help="seconds to wait for SSH")
    p.add_argument(
        "--boot-stall", type=int, default=DEFAULT_BOOT_STALL,
        help="seconds without console output after which a boot counts as hung",
    )  # fmt: skip
    p.add_argument("--boot-attempts", type=int, default=2, help="boots to try before giving up")
    p.add_argument("--json", action="store_true", help="print the instance's status as JSON at the end")
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("down", help="stop an instance")
    p.set_defaults(func=cmd_down)
    p = sub.add_parser("status", help="whether an instance runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("power", help="run an instance's QEMU, afresh at each guest reboot (`up` starts it)")
    p.add_argument("spec", help="the instance's qemu.json")
    p.set_defaults(func=cmd_power)
    p = sub.add_parser("ssh", help="a shell or command in the instance")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_ssh)
    p = sub.add_parser("build", help="build the image (cached by recipe hash)")
    p.add_argument("--force", action="store_true", help="rebuild even when cached")
    p.set_defaults(func=cmd_build)
    p = sub.add_parser("prune", help="remove cached images of other recipes")
    p.set_defaults(func=cmd_prune)
    p = sub.add_parser("hash", help="print the image recipe hash")
    p.set_defaults(func=cmd_hash)
    for p in sub.choices.values():
        p.add_argument("--name", default=os.environ.get("GPUVIRT_LAB_NAME", "lab"), help="instance name")
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LabError as err:
        print(f"lab: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("lab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # a killed `up` still runs its cleanup (no QEMU left behind)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    sys.exit(main())
