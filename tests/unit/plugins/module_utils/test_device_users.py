# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``module_utils.device_users``: when ``/proc`` leaves processes out of its listing (``hidepid``).

Each tree holds what the kernel shows the reader: the proc mount's super options in
``proc/self/mountinfo`` (names since 5.8, numbers before) and the reader's ``proc/self/status``."""

from __future__ import annotations

import errno
import os
import sys

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import device_users

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures"))
import hostgen  # noqa: E402

# CapEff: all capabilities of a 6.x kernel; Docker's default set (no CAP_SYS_PTRACE); CAP_SYS_PTRACE alone.
ALL = "000001ffffffffff"
DOCKER = "00000000a80425fb"
PTRACE = "0000000000080000"
ROOT_LINE = "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw\n"


def tree(path, options="rw", reader=None, mount_point="/proc"):
    """A tree whose ``/proc`` mount has the super ``options`` and is read by ``reader``'s status."""
    os.makedirs(os.path.join(path, "proc/self"), exist_ok=True)
    with open(os.path.join(path, "proc/self/mountinfo"), "w", encoding="utf-8") as handle:
        handle.write(ROOT_LINE + "23 22 0:22 / %s rw,nosuid,nodev,noexec,relatime shared:2 - proc proc %s\n"
                     % (mount_point, options))
    if reader is not None:
        with open(os.path.join(path, "proc/self/status"), "w", encoding="utf-8") as handle:
            handle.write(hostgen.reader_status(reader))
    return str(path)


@pytest.mark.parametrize("options", ["rw,relatime,hidepid=invisible", "rw,hidepid=2", "rw,gid=27,hidepid=invisible"])
def test_invisible_without_cap_sys_ptrace_hides(tmp_path, options):
    """hidepid=invisible (hidepid=2 as kernels before 5.8 show it) lists only what the reader may trace."""
    root = tree(tmp_path, options, {"cap_eff": DOCKER, "gid": 1000, "groups": [1000, 24]})
    hidden = device_users.hidden_processes(root)
    shown = "hidepid=2" if "hidepid=2" in options else "hidepid=invisible"
    assert hidden.startswith("/proc is mounted with %s and this run lacks CAP_SYS_PTRACE and is not in " % shown)
    assert "processes it may not trace are not listed there at all" in hidden
    assert "run the module as root with CAP_SYS_PTRACE" in hidden and "remount /proc without hidepid" in hidden
    if "gid=27" in options:
        assert "the mount's group (gid=27)" in hidden
    else:
        assert "root's group (gid 0, the mount sets no gid=)" in hidden


@pytest.mark.parametrize("options", ["rw,hidepid=ptraceable", "rw,hidepid=4", "rw,gid=27,hidepid=ptraceable"])
def test_ptraceable_hides_whatever_the_groups(tmp_path, options):
    """hidepid=ptraceable checks ptrace alone: the gid= group (or root's) does not lift it."""
    root = tree(tmp_path, options, {"cap_eff": DOCKER, "gid": 0, "groups": [0, 27]})
    hidden = device_users.hidden_processes(root)
    assert hidden.startswith("/proc is mounted with hidepid=%s and this run lacks CAP_SYS_PTRACE: "
                             % options.rpartition("=")[2])
    assert "no group lifts that mode" in hidden


@pytest.mark.parametrize(
    "options, reader",
    [
        ("rw,hidepid=invisible", {"cap_eff": ALL, "gid": 0, "groups": [0]}),  # root on the host
        ("rw,hidepid=2", {"cap_eff": PTRACE, "gid": 1000, "groups": [1000]}),
        ("rw,hidepid=ptraceable", {"cap_eff": PTRACE, "gid": 1000, "groups": []}),
        ("rw,gid=27,hidepid=invisible", {"cap_eff": DOCKER, "gid": 1000, "groups": [1000, 27]}),
        ("rw,gid=27,hidepid=invisible", {"cap_eff": DOCKER, "gid": 27, "groups": []}),  # the fs group counts
        ("rw,hidepid=invisible", {"cap_eff": DOCKER, "gid": 0, "groups": [0]}),  # root's group, the default gid=
        ("rw,hidepid=noaccess", {"cap_eff": DOCKER, "gid": 1000, "groups": [1000]}),  # listed, unreadable
        ("rw,hidepid=1", {"cap_eff": DOCKER, "gid": 1000, "groups": [1000]}),
        ("rw,hidepid=off", {"cap_eff": DOCKER, "gid": 1000, "groups": [1000]}),
        ("rw,subset=pid", {"cap_eff": DOCKER, "gid": 1000, "groups": [1000]}),
        ("rw", {"cap_eff": DOCKER, "gid": 1000, "groups": [1000]}),
    ],
)
def test_every_process_is_listed(tmp_path, options, reader):
    """CAP_SYS_PTRACE, or with invisible the mount's group, shows every process; noaccess lists them all
    (their descriptors are refused: unreadable), subset=pid hides no process."""
    assert device_users.hidden_processes(tree(tmp_path, options, reader)) is None


def test_a_tree_without_the_readers_status_or_the_mount_hides_nothing(tmp_path):
    """Snapshots and fixture trees lack them: the listing is taken as complete, as before the check."""
    assert device_users.hidden_processes(tree(tmp_path / "status", "rw,hidepid=invisible")) is None
    no_capabilities = tree(tmp_path / "partial", "rw,hidepid=invisible", {"gid": 1000})
    with open(os.path.join(no_capabilities, "proc/self/status"), "w", encoding="utf-8") as handle:
        handle.write("Name:\tpython3\nGid:\t1000\t1000\t1000\t1000\nGroups:\t1000 \n")
    assert device_users.hidden_processes(no_capabilities) is None
    assert device_users.hidden_processes(str(tmp_path / "empty")) is None
    other = tree(tmp_path / "elsewhere", "rw,hidepid=invisible", {"cap_eff": DOCKER}, mount_point="/mnt/proc")
    assert device_users.hidden_processes(other) is None


def test_the_scanned_mount_wins_over_proc(tmp_path):
    """A root other than / scans ``<root>/proc``: its own line in mountinfo, as this run sees it, and
    paths escaped as the kernel writes them (a space is \\040)."""
    root = tmp_path / "host root"
    scanned = os.path.realpath(str(root / "proc")).replace(" ", "\\040")
    tree(root, "rw", {"cap_eff": DOCKER, "gid": 1000, "groups": [1000]})
    with open(os.path.join(str(root), "proc/self/mountinfo"), "a", encoding="utf-8") as handle:
        handle.write("30 22 0:40 / %s rw,relatime shared:9 - proc proc rw,hidepid=invisible\n" % scanned)
    hidden = device_users.hidden_processes(str(root))
    assert hidden.startswith("%s is mounted with hidepid=invisible" % os.path.realpath(str(root / "proc")))
    tree(root, "rw,hidepid=invisible", {"cap_eff": DOCKER, "gid": 1000, "groups": [1000]})
    with open(os.path.join(str(root), "proc/self/mountinfo"), "a", encoding="utf-8") as handle:
        handle.write("30 22 0:40 / %s rw,relatime shared:9 - proc proc rw\n" % scanned)
    assert device_users.hidden_processes(str(root)) is None


def test_a_hidden_scan_is_not_complete_and_says_why(tmp_path):
    root = tree(tmp_path, "rw,hidepid=invisible", {"cap_eff": DOCKER, "gid": 1000, "groups": [1000]})
    os.makedirs(os.path.join(root, "proc/812/fd"))
    with open(os.path.join(root, "proc/812/comm"), "w", encoding="utf-8") as handle:
        handle.write("sshd\n")
    os.symlink("/dev/vfio/2", os.path.join(root, "proc/812/fd/20"))
    users = device_users.open_files(root, lambda target: target)
    assert users == {"/dev/vfio/2": [{"pid": 812, "comm": "sshd"}]}
    assert users.unreadable == [] and users.complete is False
    assert device_users.unknown_users_text(users) == users.hidden
    refused = device_users.Users(unreadable=[{"pid": 4242, "comm": "qemu", "error": "EPERM"}])
    both = device_users.merged([users, refused])
    text = device_users.unknown_users_text(both)
    assert text.startswith("the open files of 1 process could not be read (qemu (pid 4242)): permission denied")
    assert text.endswith("; and " + users.hidden)
    assert device_users.Users().complete and device_users.Users({"x": []}).complete


def test_hidepid_noaccess_refuses_descriptors_it_lists(tmp_path, unreadable_fds):
    """hidepid=noaccess (1): every process is listed and its fd directory refused (EPERM)."""
    root = tree(tmp_path, "rw,hidepid=1", {"cap_eff": DOCKER, "gid": 1000, "groups": [1000]})
    os.makedirs(os.path.join(root, "proc/4242/fd"))
    unreadable_fds(root, {4242: errno.EPERM})
    users = device_users.open_files(root, lambda target: target)
    assert users.hidden is None and users.complete is False
    assert [entry["error"] for entry in users.unreadable] == ["EPERM"]
    text = device_users.unknown_users_text(users)
    assert text.startswith("the open files of 1 process could not be read (? (pid 4242)): permission denied")
    assert "lacks CAP_SYS_PTRACE" not in text


def pid_namespace(root, link):
    """``<root>/proc/1/ns/pid`` as the kernel shows it: a link to ``pid:[<inode>]``."""
    os.makedirs(os.path.join(root, "proc/1/ns"), exist_ok=True)
    os.symlink(link, os.path.join(root, "proc/1/ns/pid"))
    return root


def test_a_container_pid_namespace_hides_the_host_whatever_the_rights(tmp_path):
    """A /proc mounted in a container lists its processes only: root with every capability and no hidepid
    still sees no VM of the host."""
    root = pid_namespace(tree(tmp_path, "rw", {"cap_eff": ALL, "gid": 0, "groups": [0]}), "pid:[4026532299]")
    hidden = device_users.hidden_processes(root)
    assert hidden.startswith("/proc lists the processes of the PID namespace pid:[4026532299] (a container's), "
                             "not the host's: VMs and other processes outside it are not listed there at all")
    assert hidden.endswith("in the host's PID namespace (--pid=host, hostPID: true)")
    assert device_users.open_files(root, lambda target: target).complete is False


def test_the_host_pid_namespace_hides_nothing(tmp_path):
    """Process 1 in the initial namespace (its inode fixed since Linux 3.8): the host's own listing."""
    root = pid_namespace(tree(tmp_path, "rw", {"cap_eff": ALL, "gid": 0, "groups": [0]}), "pid:[4026531836]")
    assert device_users.hidden_processes(root) is None
    hidepid = pid_namespace(tree(tmp_path / "hidepid", "rw,hidepid=2", {"cap_eff": DOCKER, "gid": 1000,
                                                                        "groups": [1000]}), "pid:[4026531836]")
    assert device_users.hidden_processes(hidepid).startswith("/proc is mounted with hidepid=2")
