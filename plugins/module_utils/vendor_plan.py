# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a vendor backend returns to turn a mode on (:class:`EnablePlan`) or raises when it cannot
(:class:`EnableError`); :mod:`enablement` applies it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError

MANAGED_HEADER = "# Managed by gpuvirt.host (virtualization_mode); changes here are overwritten.\n"


class EnableError(GpuvirtError):
    """The mode cannot be enabled on this GPU; says why and what to do. Nothing was changed."""


@dataclass(frozen=True)
class EnablePlan:
    """Declarations only: kernel arguments to add, files to write (``((relative path, content), ...)``),
    modules to load now, and ``running_needs`` (``(description, satisfied now)``: what the running
    kernel must show for the mode to work without a reboot)."""

    mode: str
    address: str
    kernel_arguments: tuple = ()
    files: tuple = ()
    load_modules: tuple = ()
    running_needs: tuple = ()
    notes: tuple = field(default=())
