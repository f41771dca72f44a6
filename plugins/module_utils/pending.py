# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Regenerations a run started and has not seen finish: the boot entries and the initramfs images.

A run writes the inputs of a generated file (``/etc/default/grub``, ``/etc/kernel/cmdline``, the
modprobe.d file an initramfs copies) and then runs the tool that generates it (``update-grub``,
``proxmox-boot-tool refresh``, ``kernel-install``, ``update-initramfs``, ``dracut``). The tools write
their output aside and move it into place at their end, so a run killed in between (SIGKILL, an OOM
kill, a lost session, a power cut) leaves the inputs new and the output old; a next run, which plans
from the inputs, would find nothing to do, and every boot would go on with the old output.

So a run writes a marker, ``/etc/gpuvirt/pending/<kind>``, durably before its first input, and
removes it once the tool has run and its output was read back, or once the tool failed and the
inputs were put back as they were. A run that finds the marker runs the tool again, even with
nothing to edit. Markers are written on the live host only, where the tools run.
"""

from __future__ import annotations

import json

from ansible_collections.gpuvirt.host.plugins.module_utils.files import remove_file, write_file
from ansible_collections.gpuvirt.host.plugins.module_utils.host import inside

PENDING_DIR = "etc/gpuvirt/pending"
BOOTLOADER = "bootloader"
INITRAMFS = "initramfs"


def marker_path(root, kind):
    return inside(root, PENDING_DIR, kind)


def read(root, kind):
    """What the marker of ``kind`` records (a mapping; empty when it cannot be read or parsed, which
    still means a regeneration is pending), or None when there is no marker."""
    try:
        with open(marker_path(root, kind), "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def mark(root, kind, **details):
    """Record, durably, that the regeneration of ``kind`` has started (``details``: what it runs)."""
    write_file(marker_path(root, kind), json.dumps(details, sort_keys=True) + "\n", mode=0o644)


def clear(root, kind):
    """Record that the regeneration of ``kind`` has finished."""
    remove_file(marker_path(root, kind))
