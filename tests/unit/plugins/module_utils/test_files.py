# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import errno
import os
import stat

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import files
from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError
from ansible_collections.gpuvirt.host.plugins.module_utils.host import Host
from ansible_collections.gpuvirt.host.plugins.module_utils.modrun import ModuleRun


class Module:
    """What a ModuleRun uses of AnsibleModule here: params and check_mode."""

    def __init__(self, root, check_mode=False):
        self.params = {"root": root}
        self.check_mode = check_mode


class FileRun(ModuleRun):
    """A module run that only writes files."""

    def plan(self):
        return None

    def apply(self, plan):
        pass

    def result(self, plan):
        return {"changed": self.changes_made}


def _update(root, path, content, mode=files.DEFAULT_MODE, check_mode=False):
    """A module's file write: plan the change, then write it through the one writer (ModuleRun.write)."""
    run = FileRun(Module(root, check_mode), Host(root))
    change = run.plan_file(path, content, mode=mode)
    return run.write(change), run.diffs[-1]


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask():
    """Write under umask 000: the writer must not depend on the umask."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_module_write_writes_a_new_file_and_its_folder_whatever_the_umask(tmp_path, open_umask):
    root = str(tmp_path)
    changed, diff = _update(root, "etc/gpuvirt/state.json", "one\n")
    path = os.path.join(root, "etc/gpuvirt/state.json")
    assert changed
    assert diff == {
        "before": "",
        "after": "one\n",
        "before_header": "/etc/gpuvirt/state.json (absent)",
        "after_header": "/etc/gpuvirt/state.json",
    }
    with open(path, encoding="utf-8") as handle:
        assert handle.read() == "one\n"
    assert _mode(path) == 0o644
    assert _mode(os.path.dirname(path)) == 0o755 and _mode(os.path.join(root, "etc")) == 0o755
    assert os.listdir(os.path.dirname(path)) == ["state.json"]


def test_module_write_same_content_is_no_change(tmp_path):
    (tmp_path / "cache.json").write_text("same\n", encoding="utf-8")
    os.chmod(str(tmp_path / "cache.json"), 0o644)
    before = os.stat(str(tmp_path / "cache.json"))
    changed, diff = _update(str(tmp_path), "cache.json", "same\n")
    assert not changed
    assert diff["before"] == diff["after"] == "same\n"
    assert os.stat(str(tmp_path / "cache.json")).st_ino == before.st_ino


def test_module_write_replaces_and_reports_the_old_content(tmp_path):
    path = tmp_path / "cache.json"
    path.write_text("old\n", encoding="utf-8")
    changed, diff = _update(str(tmp_path), "cache.json", "new\n", mode=0o600)
    assert changed
    assert (diff["before"], diff["after"]) == ("old\n", "new\n")
    assert path.read_text(encoding="utf-8") == "new\n"
    assert _mode(path) == 0o600


def test_a_wrong_mode_alone_is_a_change(tmp_path):
    path = tmp_path / "unit.service"
    path.write_text("x\n", encoding="utf-8")
    os.chmod(str(path), 0o666)
    change = files.plan_change(str(tmp_path), "unit.service", "x\n")
    assert change.changed and change.mode_changed
    assert change.diff()["before_header"] == "/unit.service (mode 0666)"
    assert change.diff()["after_header"] == "/unit.service (mode 0644)"
    files.apply_change(change)
    assert _mode(str(path)) == 0o644
    assert not files.plan_change(str(tmp_path), "unit.service", "x\n").changed


def test_check_mode_writes_nothing(tmp_path):
    changed, diff = _update(str(tmp_path), "new/state.json", "content\n", check_mode=True)
    assert changed
    assert diff["after"] == "content\n"
    assert not (tmp_path / "new").exists()


def test_removal_and_its_diff(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/x.conf").write_text("a\n", encoding="utf-8")
    change = files.plan_change(str(tmp_path), "/etc/x.conf", None)
    assert change.changed
    assert change.diff() == {
        "before": "a\n",
        "after": "",
        "before_header": "/etc/x.conf",
        "after_header": "/etc/x.conf (removed)",
    }
    assert files.apply_changes([change]) == ["/etc/x.conf"]
    assert os.listdir(str(tmp_path / "etc")) == []
    assert not files.plan_change(str(tmp_path), "etc/x.conf", None).changed


def test_line_ends_and_owner_are_kept_and_the_reverse_puts_it_back(tmp_path):
    path = tmp_path / "grub"
    path.write_bytes(b"a\r\nb\n")
    os.chmod(str(path), 0o640)
    assert files.read_file(str(path)) == "a\r\nb\n"
    change = files.plan_change(str(tmp_path), "grub", "c\r\n", mode=None)
    files.apply_change(change)
    assert path.read_bytes() == b"c\r\n" and _mode(str(path)) == 0o640
    files.apply_change(change.reverse())
    assert path.read_bytes() == b"a\r\nb\n" and _mode(str(path)) == 0o640


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_the_owner_is_set_explicitly(tmp_path):
    files.write_file(str(tmp_path / "owned"), "x", owner=(65534, 65534))
    info = os.stat(str(tmp_path / "owned"))
    assert (info.st_uid, info.st_gid) == (65534, 65534)


def test_a_killed_runs_temp_files_are_removed_by_the_next_change(tmp_path):
    (tmp_path / "vfio.conf").write_text("same\n", encoding="utf-8")
    os.chmod(str(tmp_path / "vfio.conf"), 0o644)
    left = tmp_path / (".vfio.conf" + files.TEMP_MARK + "0badf00d")
    left.write_text("half", encoding="utf-8")
    (tmp_path / ".other.conf.tmp").write_text("not ours", encoding="utf-8")
    change = files.plan_change(str(tmp_path), "vfio.conf", "same\n")
    assert change.changed and change.leftovers == (str(left),)
    files.apply_change(change)
    assert sorted(os.listdir(str(tmp_path))) == [".other.conf.tmp", "vfio.conf"]
    assert not files.plan_change(str(tmp_path), "vfio.conf", "same\n").changed


@pytest.mark.parametrize(("failing", "code"), [("write", errno.ENOSPC), ("fsync", errno.EIO), ("replace", errno.EIO)])
def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch, failing, code):
    path = tmp_path / "state.json"
    path.write_text("old\n", encoding="utf-8")

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.os, failing, fail)
    with pytest.raises(files.FileError) as caught:
        files.write_file(str(path), "new\n")
    assert isinstance(caught.value, GpuvirtError)
    assert str(caught.value).startswith("cannot write %s: %s" % (path, os.strerror(code)))
    monkeypatch.undo()
    assert path.read_text(encoding="utf-8") == "old\n"
    assert os.listdir(str(tmp_path)) == ["state.json"]


GRUB_LABEL = b"system_u:object_r:bootloader_etc_t:s0\0"


def test_a_replaced_file_keeps_its_selinux_label(tmp_path):
    # Set as SELinux sets it; without an SELinux kernel the attribute is stored as it is.
    path = tmp_path / "grub"
    path.write_text("GRUB_CMDLINE_LINUX=\"\"\n", encoding="utf-8")
    os.setxattr(str(path), files.SECURITY_LABEL, GRUB_LABEL)
    files.write_file(str(path), "GRUB_CMDLINE_LINUX=\"intel_iommu=on\"\n")
    assert os.getxattr(str(path), files.SECURITY_LABEL) == GRUB_LABEL
    assert "intel_iommu=on" in path.read_text(encoding="utf-8")
    # A new file, and one without a label, get none from the writer.
    files.write_file(str(tmp_path / "new.conf"), "x\n")
    with pytest.raises(OSError) as caught:
        os.getxattr(str(tmp_path / "new.conf"), files.SECURITY_LABEL)
    assert caught.value.errno == errno.ENODATA


def test_a_label_that_cannot_be_kept_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "grub"
    path.write_text("old\n", encoding="utf-8")
    os.setxattr(str(path), files.SECURITY_LABEL, GRUB_LABEL)

    def refused(*_args):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(files.os, "setxattr", refused)
    with pytest.raises(files.FileError):
        files.write_file(str(path), "new\n")
    assert path.read_text(encoding="utf-8") == "old\n"
    assert os.listdir(str(tmp_path)) == ["grub"]


def test_a_mount_labelled_as_a_whole_takes_the_file_without_setting_a_label(tmp_path, monkeypatch):
    # The vfat ESP (and NFS, context= mounts) under SELinux: getxattr answers the mount's label for every
    # file, setxattr refuses with EOPNOTSUPP (selinux_inode_setxattr() on a mount without SBLABEL_MNT).
    entry = tmp_path / "arch.conf"
    entry.write_text("options root=/dev/sda2 rw\n", encoding="utf-8")
    calls = []

    def getxattr(path, name):
        return b"system_u:object_r:dosfs_t:s0\0"

    def setxattr(target, name, value):
        calls.append(name)
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(files.os, "getxattr", getxattr)
    monkeypatch.setattr(files.os, "setxattr", setxattr)
    files.write_file(str(entry), "options root=/dev/sda2 rw intel_iommu=on\n")
    assert calls == [files.SECURITY_LABEL]
    assert entry.read_text(encoding="utf-8") == "options root=/dev/sda2 rw intel_iommu=on\n"


def test_a_failure_after_an_earlier_file_reports_changed(tmp_path, monkeypatch):
    root = str(tmp_path)
    first = files.plan_change(root, "a.conf", "a\n")
    second = files.plan_change(root, "b.conf", "b\n")
    real = files.write_file

    def fail_on_b(path, content, mode=0o644, owner=None):
        if path.endswith("b.conf"):
            raise files.FileError("cannot write %s: No space left on device" % path)
        return real(path, content, mode=mode, owner=owner)

    monkeypatch.setattr(files, "write_file", fail_on_b)
    with pytest.raises(files.FileError) as caught:
        files.apply_changes([first, second])
    assert caught.value.changed is True and caught.value.details == {"files_changed": ["/a.conf"]}
    assert "already written: /a.conf" in str(caught.value)


def test_read_file(tmp_path):
    assert files.read_file(str(tmp_path / "missing")) is None
    (tmp_path / "present").write_text("text", encoding="utf-8")
    assert files.read_file(str(tmp_path / "present")) == "text"
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    with pytest.raises(files.FileError, match="cannot read .*binary"):
        files.read_file(str(tmp_path / "binary"))
    with pytest.raises(files.FileError, match="Is a directory"):
        files.read_file(str(tmp_path))
