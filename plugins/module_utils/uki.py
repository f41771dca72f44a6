# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unified kernel images: the sections of the PE file systemd-stub starts.

A unified kernel image is an EFI (PE/COFF) executable that carries the kernel (``.linux``), its
initramfs (``.initrd``), its command line (``.cmdline``) and more as sections of its own. This reads
them with the standard library, as ``objcopy -O binary --only-section=<name>`` would.

Public API:

- :func:`section` ``(path, name) -> bytes | None``: a section's data, None when the image lacks it.
- :class:`UkiError`: the file is no PE image, or is cut short.
"""

from __future__ import annotations

import struct

from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError

_PE_OFFSET = 0x3C  # e_lfanew in the DOS header
_SECTION_HEADER = 40
_SECTION = struct.Struct("<8sIIII")  # name, virtual size, virtual address, raw size, raw offset


class UkiError(GpuvirtError):
    """A file that should be a unified kernel image cannot be read as one."""


def _sections(handle, path):
    """``{name: (offset, size)}`` of the sections of the PE image open as ``handle``."""
    header = handle.read(64)
    if len(header) < 64 or header[:2] != b"MZ":
        raise UkiError("%s is not an EFI executable (no MZ header)" % path)
    (pe,) = struct.unpack_from("<I", header, _PE_OFFSET)
    handle.seek(pe)
    coff = handle.read(24)
    if len(coff) < 24 or coff[:4] != b"PE\0\0":
        raise UkiError("%s is not an EFI executable (no PE header at offset %d)" % (path, pe))
    count, optional = struct.unpack_from("<H", coff, 6)[0], struct.unpack_from("<H", coff, 20)[0]
    handle.seek(pe + 24 + optional)
    table = handle.read(count * _SECTION_HEADER)
    if len(table) < count * _SECTION_HEADER:
        raise UkiError("%s is cut short: its section table is incomplete" % path)
    sections = {}
    for index in range(count):
        name, virtual_size, _address, raw_size, raw_offset = _SECTION.unpack_from(table, index * _SECTION_HEADER)
        # The data is VirtualSize bytes (the raw size is rounded up to the file alignment).
        size = min(virtual_size, raw_size) if virtual_size else raw_size
        sections.setdefault(name.rstrip(b"\0").decode("ascii", "replace"), (raw_offset, size))
    return sections


def section(path, name):
    """The data of section ``name`` (``.initrd``, ``.cmdline``) of the image at ``path``, or None when it
    has no such section. Raises :class:`UkiError` when the file is no PE image or is cut short, and
    ``OSError`` when it cannot be read."""
    with open(path, "rb") as handle:
        where = _sections(handle, path).get(name)
        if where is None:
            return None
        offset, size = where
        handle.seek(offset)
        data = handle.read(size)
    if len(data) < size:
        raise UkiError("%s is cut short: its %s section ends past the end of the file" % (path, name))
    return data
