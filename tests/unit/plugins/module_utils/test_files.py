# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import files


class Module:
    """What the helpers use of AnsibleModule: check_mode and atomic_move."""

    def __init__(self, check_mode=False):
        self.check_mode = check_mode
        self.moves = []

    def atomic_move(self, src, dest):
        self.moves.append((src, dest))
        os.replace(src, dest)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_update_file_writes_a_new_file_and_its_folder(tmp_path):
    path = str(tmp_path / "etc" / "gpuvirt" / "state.json")
    module = Module()
    changed, diff = files.update_file(module, path, "one\n")
    assert changed
    assert diff == {"before": "", "after": "one\n", "before_header": path, "after_header": path}
    with open(path, encoding="utf-8") as handle:
        assert handle.read() == "one\n"
    assert _mode(path) == 0o644
    assert _mode(os.path.dirname(path)) & 0o777 == 0o755 & ~_umask()
    assert os.listdir(os.path.dirname(path)) == ["state.json"]


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_update_file_same_content_is_no_change(tmp_path):
    path = tmp_path / "cache.json"
    path.write_text("same\n", encoding="utf-8")
    module = Module()
    changed, diff = files.update_file(module, str(path), "same\n")
    assert not changed
    assert diff["before"] == diff["after"] == "same\n"
    assert module.moves == []


def test_update_file_replaces_and_reports_the_old_content(tmp_path):
    path = tmp_path / "cache.json"
    path.write_text("old\n", encoding="utf-8")
    changed, diff = files.update_file(Module(), str(path), "new\n", mode=0o600)
    assert changed
    assert (diff["before"], diff["after"]) == ("old\n", "new\n")
    assert path.read_text(encoding="utf-8") == "new\n"
    assert _mode(path) == 0o600


def test_check_mode_writes_nothing(tmp_path):
    path = tmp_path / "new" / "state.json"
    module = Module(check_mode=True)
    changed, diff = files.update_file(module, str(path), "content\n")
    assert changed
    assert diff["after"] == "content\n"
    assert module.moves == []
    assert not (tmp_path / "new").exists()


def test_file_diff_headers():
    assert files.file_diff("/etc/x.conf", "a", "b") == {
        "before": "a",
        "after": "b",
        "before_header": "/etc/x.conf",
        "after_header": "/etc/x.conf",
    }


def test_read_text_or_empty(tmp_path):
    assert files.read_text_or_empty(str(tmp_path / "missing")) == ""
    (tmp_path / "present").write_text("text", encoding="utf-8")
    assert files.read_text_or_empty(str(tmp_path / "present")) == "text"


def test_write_atomic_mode_prefix_and_newline(tmp_path):
    path = str(tmp_path / "grub")
    module = Module()
    files.write_atomic(module, path, "a\r\nb\n", mode=0o640, prefix=".gpuvirt.", newline="")
    ((src, dest),) = module.moves
    assert dest == path
    assert os.path.dirname(src) == str(tmp_path)
    assert os.path.basename(src).startswith(".gpuvirt.")
    assert _mode(path) == 0o640
    with open(path, "rb") as handle:
        assert handle.read() == b"a\r\nb\n"


def test_write_temp_default_prefix_is_the_basename(tmp_path):
    temp = files.write_temp(str(tmp_path / "vfio.conf"), "x")
    assert os.path.basename(temp).startswith(".vfio.conf.")
    assert os.path.dirname(temp) == str(tmp_path)


def test_write_temp_removes_the_temp_file_on_error(tmp_path, monkeypatch):
    def refuse(path, mode):
        raise PermissionError("chmod refused")

    monkeypatch.setattr(files.os, "chmod", refuse)
    with pytest.raises(PermissionError):
        files.write_temp(str(tmp_path / "file"), "x")
    assert os.listdir(tmp_path) == []
