# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every file the collection writes: one change type, one reader, one atomic writer.

:class:`FileChange` is one file below the host root, as it is (``old``) and as it is wanted
(``new``; None removes it), with the ``mode`` and ``owner`` it must have. :func:`plan_change` reads
it; :func:`apply_change` makes it so; :meth:`FileChange.diff` is the one diff format of every module.

The writer (:func:`write_file`) writes a temp file in the target's own directory, sets the mode
with ``fchmod`` and the owner with ``fchown`` whatever the umask, ``fsync``s it, renames it over
the target and ``fsync``s the directory: a reader sees the old file or the new one, never a part,
and the new one survives a power cut. A file replaced keeps its SELinux label. Temp files are named
``.<name>.gpuvirt-tmp-<random>``; the changing modules hold the host lock (:mod:`host`) while they
write, so a temp file found when the lock is held was left by a run that was killed, and the next
change of that file removes it (and counts it as a change).

A change that spans several files is applied in the order given; each module orders its files so
that a run stopped between two of them leaves a host that the next run, reading the files afresh,
completes (see :func:`apply_changes`).

Standard library only: the restore unit ships this file to the host.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from dataclasses import dataclass, field, replace

from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError
from ansible_collections.gpuvirt.host.plugins.module_utils.host import inside

TEMP_MARK = ".gpuvirt-tmp-"
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
DEFAULT_MODE = 0o644
DIRECTORY_MODE = 0o755


class FileError(GpuvirtError):
    """A file cannot be read, written or removed; ``str()`` says which, why and what to do."""


def _reason(error):
    return os.strerror(error.errno) if getattr(error, "errno", None) else str(error)


def read_file(path):
    """The text of ``path`` exactly as stored (UTF-8, line ends kept), or None when it does not exist.

    Raises :class:`FileError` when it exists but cannot be read or is not UTF-8 text.
    """
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise FileError(
            "cannot read %s: %s; fix its permissions or content, or remove it, and run again"
            % (path, _reason(error) if isinstance(error, OSError) else error)
        ) from error


def leftover_temps(path):
    """Temp files of ``path`` left by a killed run (``.<name>.gpuvirt-tmp-*`` beside it)."""
    directory, name = os.path.split(path)
    start = "." + name + TEMP_MARK
    try:
        return sorted(os.path.join(directory, entry) for entry in os.listdir(directory) if entry.startswith(start))
    except OSError:
        return []


@dataclass(frozen=True)
class FileChange:
    """One file below ``root``: ``old`` (None: absent) and ``new`` (None: to be removed).

    ``path`` is relative to ``root`` (``etc/modprobe.d/vfio.conf``). ``mode``: the permission bits
    the file must have (None: keep the existing file's, 0644 for a new one). ``owner``: ``(uid,
    gid)`` it must have (None: keep the existing file's; a new one belongs to the running user).
    ``written_by``: None when the collection writes the file, else the command that makes the same
    edit (grubby). ``old_mode`` and ``leftovers`` are what :func:`plan_change` found.
    """

    root: str
    path: str
    old: str | None
    new: str | None
    mode: int | None = None
    owner: tuple | None = None
    written_by: str | None = None
    old_mode: int | None = None
    old_owner: tuple | None = None
    leftovers: tuple = field(default=())

    @property
    def full_path(self):
        return inside(self.root, self.path)

    @property
    def display_path(self):
        return "/" + self.path.lstrip("/")

    @property
    def mode_changed(self):
        return self.new is not None and self.old is not None and self.mode is not None and self.old_mode != self.mode

    @property
    def owner_changed(self):
        return self.new is not None and self.old is not None and self.owner is not None and self.old_owner != self.owner

    @property
    def changed(self):
        return self.old != self.new or self.mode_changed or self.owner_changed or bool(self.leftovers)

    def diff(self):
        """The diff entry of this file, the same format in every module."""
        before_header = self.display_path + ("" if self.old is not None else " (absent)")
        if self.new is None:
            after_header = self.display_path + " (removed)"
        elif self.written_by is not None:
            after_header = self.display_path + " (as %s will write it)" % self.written_by
        else:
            after_header = self.display_path
        if self.mode_changed:
            before_header += " (mode %04o)" % self.old_mode
            after_header += " (mode %04o)" % self.mode
        return {
            "before": self.old or "",
            "after": self.new or "",
            "before_header": before_header,
            "after_header": after_header,
        }

    def reverse(self):
        """The change that puts the file back as it was (for a roll-back)."""
        return replace(self, old=self.new, new=self.old, mode=self.old_mode, leftovers=())


def plan_change(root, path, new, mode=DEFAULT_MODE, owner=None, written_by=None):
    """Read ``root/path`` and return the :class:`FileChange` to ``new`` (None: remove it)."""
    full = inside(root, path)
    old = read_file(full)
    old_mode = old_owner = None
    if old is not None:
        info = os.stat(full)
        old_mode, old_owner = stat.S_IMODE(info.st_mode), (info.st_uid, info.st_gid)
    return FileChange(
        root, path.lstrip("/"), old, new, mode=mode, owner=owner, written_by=written_by,
        old_mode=old_mode, old_owner=old_owner, leftovers=tuple(leftover_temps(full)),
    )


def _fsync_directory(directory):
    with contextlib.suppress(OSError):  # some file systems cannot sync a directory
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _make_directories(directory):
    missing = []
    while directory and not os.path.isdir(directory):
        missing.insert(0, directory)
        directory = os.path.dirname(directory)
    for path in missing:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, DIRECTORY_MODE)
        os.chmod(path, DIRECTORY_MODE)


def write_file(path, content, mode=DEFAULT_MODE, owner=None):
    """Replace ``path`` with ``content`` atomically and durably; the missing directories are made 0755.

    ``mode`` and ``owner`` (``(uid, gid)`` or None) are set explicitly, whatever the umask. Raises
    :class:`FileError`; the temp file is removed on any failure, and temp files of ``path`` that a
    killed run left behind are removed first.
    """
    directory, name = os.path.split(path)
    temp = None
    try:
        _make_directories(directory)
        # A run killed between creating its temp file and the rename leaves it behind; the host lock
        # keeps other writers of this root away, so none of these is in use.
        for leftover in leftover_temps(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        for _attempt in range(16):
            temp = os.path.join(directory, "." + name + TEMP_MARK + secrets.token_hex(4))
            try:
                fd = os.open(temp, _CREATE_FLAGS, 0o600)
                break
            except FileExistsError:
                continue
        else:
            raise OSError(errno.EEXIST, "no free temp file name")
        try:
            data = content.encode("utf-8")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if owner is not None:
                os.fchown(fd, owner[0], owner[1])
            os.fchmod(fd, mode)
            _keep_security_label(path, fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
        temp = None
        _fsync_directory(directory)
    except OSError as error:
        raise FileError(
            "cannot write %s: %s%s" % (path, _reason(error), _ADVICE.get(getattr(error, "errno", None), ""))
        ) from error
    finally:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)


# The SELinux label of a file is the extended attribute security.selinux. A file made anew takes the
# label of its directory, not the one the policy gives the file it replaces (/etc/default/grub is
# bootloader_etc_t in /etc/default's etc_t), and programs confined to the file's label are then denied
# it; ansible.builtin.copy keeps it for the same reason (atomic_move).
SECURITY_LABEL = "security.selinux"


def _keep_security_label(path, fd):
    """Give the temp file ``fd`` the SELinux label of the ``path`` it replaces, when that has one (a
    new file, or a system without SELinux, has none) and its file system labels each file. Raises
    :class:`OSError` when the label cannot be set: the file is then left as it was."""
    try:
        label = os.getxattr(path, SECURITY_LABEL)
    except OSError:
        return  # no file, no label, or a file system without extended attributes
    try:
        os.setxattr(fd, SECURITY_LABEL, label)
    except OSError as error:
        # A mount labelled as a whole (the vfat ESP, NFS, context=) shows its label on every file and
        # refuses to set one (selinux_inode_setxattr()): the new file has that label already.
        if error.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP):
            raise


_ADVICE = {
    errno.ENOSPC: "; free space on that file system and run again",
    errno.EDQUOT: "; free space on that file system and run again",
    errno.EROFS: "; the file system is mounted read-only",
    errno.EACCES: "; run with become: true",
    errno.EPERM: "; run with become: true",
    errno.EIO: "; the disk reported an I/O error, check the kernel log",
}


def remove_file(path):
    """Remove ``path`` (already gone is fine) and sync its directory; raises :class:`FileError`."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as error:
        raise FileError("cannot remove %s: %s" % (path, _reason(error))) from error
    _fsync_directory(os.path.dirname(path))


def apply_change(change):
    """Make ``change`` so on disk (a no-op when unchanged); leftover temp files are removed first."""
    for temp in change.leftovers:
        with contextlib.suppress(FileNotFoundError):
            remove_file(temp)
    if change.old == change.new and not change.mode_changed and not change.owner_changed:
        return
    full = change.full_path
    if change.new is None:
        remove_file(full)
        return
    mode, owner = change.mode, change.owner
    if mode is None or owner is None:
        try:
            info = os.stat(full)
            kept = stat.S_IMODE(info.st_mode), (info.st_uid, info.st_gid)
        except OSError:
            kept = DEFAULT_MODE, None
        mode = kept[0] if mode is None else mode
        owner = kept[1] if owner is None else owner
    write_file(full, change.new, mode=mode, owner=owner)


def apply_changes(changes):
    """Apply ``changes`` in order. On a failure raise :class:`FileError` with ``changed`` true when an
    earlier file was already written, and ``files_changed`` listing those files."""
    done = []
    for change in changes:
        if not change.changed:
            continue
        try:
            apply_change(change)
        except FileError as error:
            raise FileError(
                "%s%s" % (error, "; already written: %s" % ", ".join(done) if done else ""),
                changed=bool(done),
                files_changed=done,
            ) from error
        done.append(change.display_path)
    return done
