# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small helpers to compare a file with the wanted content and replace it atomically.

The temp file is written in the target's own folder, so ``module.atomic_move`` is a rename on
the same file system. Standard library only: the restore unit ships this file to the host.
"""

from __future__ import annotations

import contextlib
import os
import tempfile


def read_text_or_empty(path):
    """The text of ``path`` (UTF-8), or ``""`` when the file does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


def file_diff(path, before, after):
    """An Ansible diff entry for ``path`` going from ``before`` to ``after``."""
    return {"before": before, "after": after, "before_header": path, "after_header": path}


def write_temp(path, content, mode=0o644, prefix=None, newline=None):
    """Write ``content`` to a new temp file next to ``path`` and return the temp file's name.

    Creates the folder when missing (mode 0755). ``prefix`` defaults to ``.<basename>.``.
    On an error the temp file is removed and the ``OSError`` propagates.
    """
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    if prefix is None:
        prefix = ".%s." % os.path.basename(path)
    fd, temp = tempfile.mkstemp(prefix=prefix, dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as handle:
            handle.write(content)
        os.chmod(temp, mode)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return temp


def write_atomic(module, path, content, mode=0o644, prefix=None, newline=None):
    """Replace ``path`` with ``content``: a temp file in the same folder, then ``module.atomic_move``."""
    temp = write_temp(path, content, mode=mode, prefix=prefix, newline=newline)
    module.atomic_move(temp, path)


def update_file(module, path, content, mode=0o644, prefix=None):
    """Write ``content`` to ``path`` when it differs (not in check mode); return ``(changed, diff)``."""
    before = read_text_or_empty(path)
    diff = file_diff(path, before, content)
    if before == content:
        return False, diff
    if not module.check_mode:
        write_atomic(module, path, content, mode=mode, prefix=prefix)
    return True, diff
