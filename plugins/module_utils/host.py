# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host a module reads and changes: its root, its paths, its programs and its lock.

``Host(root)`` is the one place that knows ``root`` (``/`` on a live host; a chroot, an image or a
test tree otherwise):

- :attr:`Host.live`: ``root`` is this machine's ``/``; only then do commands act on what is edited,
  and only then are programs looked up on ``PATH``.
- :meth:`Host.path`: ``root`` joined with a path, symlinks resolved as the tree's own system sees
  them (an absolute target is below ``root``), refused with :class:`OutsideRootError` when a
  ``..`` leads out of ``root``.
- :meth:`Host.which`: a program's path; on a live host through ``module.get_bin_path`` (``PATH``
  plus the sbin directories), in a tree the usual bin directories below ``root``.
- :func:`ostree_booted`: ``root`` booted an OSTree deployment (rpm-ostree owns its boot).
- :attr:`Host.state_dir`: ``etc/gpuvirt`` below ``root``, where the modules record the declared
  state (:mod:`hoststate`) and where the lock lives.
- :meth:`Host.lock`: one ``flock`` on ``<state_dir>/.lock`` held by every changing module for its
  whole read, plan and apply, so two runs on one host never interleave. The lock file (and the
  directories the run had to create for it, when still empty) are removed on release, so a run that
  changes nothing leaves the tree exactly as it found it.

The ``root`` option is checked once, here: it must exist and be a directory, and is never created.
:func:`run_locked` is how a changing module runs: root checked, lock held, errors reported by
:func:`errors.run_module`.

Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time

from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError, run_module

STATE_DIR = "etc/gpuvirt"
LOCK_NAME = ".lock"
LOCK_WAIT = 300.0  # seconds a run waits for another run on the same host
BIN_DIRS = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")
# ostree-prepare-root creates this file when the system boots an OSTree deployment (Fedora CoreOS,
# RHEL CoreOS, Silverblue and the other Atomic desktops, RHEL for Edge, bootc image mode): its boot
# entries and initramfs belong to the deployments, which rpm-ostree makes.
OSTREE_BOOTED = "run/ostree-booted"


class HostRootError(GpuvirtError):
    """``root`` does not exist or is not a directory."""


class OutsideRootError(GpuvirtError):
    """A path below ``root`` resolves (through a symbolic link or ``..``) to a place outside it."""


class LockError(GpuvirtError):
    """The host lock could not be taken: another run holds it, or its file cannot be created."""


def is_live_root(root):
    """True when ``root`` is this machine's ``/``."""
    try:
        return os.path.samefile(root, "/")
    except (OSError, TypeError, ValueError):
        return False


def ostree_booted(root):
    """True when ``root`` booted an OSTree deployment (:data:`OSTREE_BOOTED`)."""
    return os.path.exists(_join(root, [OSTREE_BOOTED]))


def check_root(root):
    """Return ``root`` when it is an existing directory; raise :class:`HostRootError` otherwise."""
    if not isinstance(root, str) or not root or "\0" in root:
        raise HostRootError("root must be a directory path, not %r" % (root,))
    if not os.path.isdir(root):
        what = "does not exist" if not os.path.lexists(root) else "is not a directory"
        raise HostRootError(
            "root %s %s; give the host's file system root (/ for this host, or an existing image or chroot "
            "directory); it is never created" % (root, what)
        )
    return root


def find_in_tree(root, name):
    """The path of executable ``name`` in the usual bin directories below ``root``, or None."""
    for directory in BIN_DIRS:
        try:
            path = inside(root, directory, name)
        except OutsideRootError:
            continue
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _join(root, parts):
    return os.path.join(root, *(str(p).lstrip("/") for p in parts))


def inside(root, *parts):
    """``root`` joined with ``parts``, symbolic links resolved as the tree's own system would see them.

    An absolute link target is taken below ``root`` (``/etc/x`` is ``<root>/etc/x``), as in a chroot;
    a ``..`` (in ``parts`` or in a link) that climbs above ``root`` raises :class:`OutsideRootError`,
    and so does a loop of links. The path need not exist. On a live host this is the plain join.
    """
    joined = _join(root, parts)
    if is_live_root(root):
        return joined
    pending = [p for p in os.path.relpath(joined, root).split("/") if p not in ("", ".")]
    done = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if not done:
                raise OutsideRootError(
                    "%s leads out of root %s (through '..' or a symbolic link); nothing is read or written "
                    "outside root: replace the link with a directory or file inside root" % (joined, root)
                )
            done.pop()
            continue
        candidate = os.path.join(root, *done, part)
        if not os.path.islink(candidate):
            done.append(part)
            continue
        hops += 1
        if hops > 40:
            raise OutsideRootError("%s: too many levels of symbolic links below root %s" % (joined, root))
        target = os.readlink(candidate)
        if target.startswith("/"):
            done = []
        pending[:0] = [p for p in target.split("/") if p not in ("", ".")]
    return os.path.join(root, *done) if done else root


class Host:
    """One host root. ``module`` (optional) gives ``get_bin_path`` for a live host's programs."""

    def __init__(self, root="/", module=None):
        self.root = check_root(root)
        self.module = module
        self.live = is_live_root(root)

    def path(self, *parts):
        """``root``/``parts`` resolved inside ``root`` (see :func:`inside`)."""
        return inside(self.root, *parts)

    def join(self, *parts):
        """``root``/``parts`` as given, without resolving links (for reads of sysfs and procfs)."""
        return _join(self.root, parts)

    def display(self, path):
        """``path`` as the host sees it (``/etc/...``), for messages and results."""
        relative = os.path.relpath(path, self.root)
        return "/" + ("" if relative == "." else relative)

    @property
    def state_dir(self):
        return self.path(STATE_DIR)

    def which(self, name):
        """The full path of program ``name``, or None.

        Live host: ``module.get_bin_path(name)`` (``PATH`` and the sbin directories). A tree: the
        first executable ``BIN_DIRS/name`` below ``root``, as its path inside the tree.
        """
        if self.live and self.module is not None:
            return self.module.get_bin_path(name)
        return find_in_tree(self.root, name)

    @contextlib.contextmanager
    def lock(self, wait=LOCK_WAIT, check_mode=False):
        """Hold the host lock (``flock`` on ``<state_dir>/.lock``) for the ``with`` block.

        Waits up to ``wait`` seconds for another run, then raises :class:`LockError` naming the
        holder. In check mode, a root that cannot be written (a read-only image) is read unlocked.
        """
        try:
            held = _acquire(self.state_dir, wait)
        except LockError as error:
            if check_mode and error.details.get("errno") in (errno.EROFS, errno.EACCES, errno.EPERM):
                held = None
            else:
                raise
        try:
            yield self
        finally:
            if held is not None:
                _release(*held)


def _acquire(directory, wait):
    path = os.path.join(directory, LOCK_NAME)
    deadline = time.monotonic() + wait
    while True:
        created = _missing_directories(directory)
        try:
            for missing in created:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(missing, 0o755)
                os.chmod(missing, 0o755)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
        except FileNotFoundError:
            continue  # another run removed the directory it had created: try again
        except OSError as error:
            raise LockError(
                "cannot create the lock file %s: %s" % (path, os.strerror(error.errno)), errno=error.errno
            ) from error
        try:
            if _locked(fd, deadline):
                same = os.fstat(fd)
                try:
                    now = os.stat(path, follow_symlinks=False)
                except FileNotFoundError:
                    now = None
                if now is not None and (now.st_dev, now.st_ino) == (same.st_dev, same.st_ino):
                    os.ftruncate(fd, 0)
                    os.write(fd, b"%d\n" % os.getpid())
                    return fd, path, created
                os.close(fd)  # the holder removed this file on release: lock the new one
                continue
            holder = _holder(fd)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        raise LockError(
            "another gpuvirt.host run%s holds %s and did not finish within %g s; wait for it and run again"
            % (" (pid %s)" % holder if holder else "", path, wait)
        )


def _locked(fd, deadline):
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _holder(fd):
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip())
    return None


def _missing_directories(directory):
    """``directory`` and its missing parents, the outermost first."""
    missing = []
    while directory and not os.path.isdir(directory):
        missing.insert(0, directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    return missing


def _release(fd, path, created):
    try:
        with contextlib.suppress(OSError):
            os.unlink(path)
        for directory in reversed(created):
            try:
                os.rmdir(directory)  # only when nothing else was written there
            except OSError:
                break
    finally:
        os.close(fd)


def run_locked(module, work, partial=None, root_option="root"):
    """Run a changing module: check ``root``, hold the host lock, and report through ``run_module``.

    ``work(host)`` gets the :class:`Host` and returns the result dict. Failures, including a bad
    ``root`` or a lock that cannot be taken, become ``fail_json`` with ``changed`` as it is.
    """

    def locked():
        host = Host(module.params[root_option], module=module)
        with host.lock(check_mode=module.check_mode):
            return work(host)

    run_module(module, locked, partial)
