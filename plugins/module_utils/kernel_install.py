# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What systemd's kernel-install reads below a host root: its configuration and the entry token.

kernel-install names the boot entries it writes ``<entry token>-<release>.conf`` and puts each
kernel's files in ``<boot root>/<entry token>/<release>/``; the boot configuration and the initramfs
readers both need that token.

Public API:

- :func:`entry_token` ``(root) -> str | None``: the token, worked out as kernel-install does.
- :func:`install_conf_value` ``(root, key) -> str | None``: a setting of ``install.conf``.
- :func:`env_value` ``(text, key) -> str | None``: a value of an environment-style file.
"""

from __future__ import annotations

import re

from ansible_collections.gpuvirt.host.plugins.module_utils.files import read_file
from ansible_collections.gpuvirt.host.plugins.module_utils.host import inside

_ENTRY_TOKEN = re.compile(r"[A-Za-z0-9._~-]+\Z")  # systemd's boot_entry_token_valid()
_MACHINE_ID = re.compile(r"[0-9a-f]{32}\Z")
INSTALL_CONF = ("etc/kernel/install.conf", "usr/lib/kernel/install.conf")


def _read(root, path):
    return read_file(inside(root, path))


def env_value(text, key):
    """The value of ``key`` in ``text``, an environment-style file (``KEY=value`` lines, the value
    optionally quoted; the last assignment wins), or None."""
    value = None
    for line in (text or "").splitlines():
        name, sep, raw = line.strip().partition("=")
        if sep and name.strip() == key:
            raw = raw.strip()
            if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
                raw = raw[1:-1]
            value = raw
    return value


def install_conf_value(root, key):
    """``key`` in the first of ``/etc/kernel/install.conf`` and ``/usr/lib/kernel/install.conf`` found,
    as kernel-install reads them."""
    for path in INSTALL_CONF:
        text = _read(root, path)
        if text is not None:
            return env_value(text, key)
    return None


def _machine_id(text):
    """A machine ID as systemd formats it (32 lowercase hex digits), or None for anything else (empty,
    ``uninitialized``, all zeros)."""
    text = (text or "").strip().lower().replace("-", "")
    return text if _MACHINE_ID.match(text) and text.strip("0") else None


def entry_token(root):
    """The token kernel-install names its entries and folders with, worked out as it does:
    ``/etc/kernel/entry-token`` (then ``/usr/lib/kernel/entry-token``); else the machine ID it uses
    (``MACHINE_ID=`` in ``install.conf``, ``KERNEL_INSTALL_MACHINE_ID=`` in ``/etc/machine-info``,
    ``/etc/machine-id``); else, with no machine ID, ``IMAGE_ID=`` and then ``ID=`` of os-release.
    None when none of them is set."""
    for path in ("etc/kernel/entry-token", "usr/lib/kernel/entry-token"):
        lines = (_read(root, path) or "").splitlines()
        token = lines[0].strip() if lines else ""
        if token and _ENTRY_TOKEN.match(token):
            return token
    candidates = (
        install_conf_value(root, "MACHINE_ID"),
        env_value(_read(root, "etc/machine-info"), "KERNEL_INSTALL_MACHINE_ID"),
        _read(root, "etc/machine-id"),
    )
    for candidate in candidates:
        machine_id = _machine_id(candidate)
        if machine_id:
            return machine_id
    release = _read(root, "etc/os-release")
    if release is None:
        release = _read(root, "usr/lib/os-release")
    for key in ("IMAGE_ID", "ID"):
        value = env_value(release, key)
        if value and _ENTRY_TOKEN.match(value):
            return value
    return None
