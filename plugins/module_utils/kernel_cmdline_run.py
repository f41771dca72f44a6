# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``kernel_cmdline`` module's run (:mod:`modrun`): check the arguments for this host's
architecture, plan the boot loader's edits and commands, apply them, report the next boot's and the
running command line.

:func:`preview_arguments` ``(module, root, sets)`` runs it in check mode for each set of arguments (and boot
loader) inside another module (``topology_info``'s ``kernel_arguments``): the set with ``preview``, the same
result without the diff and with its own warnings, or with ``error``."""

from __future__ import annotations

from ansible_collections.gpuvirt.host.plugins.module_utils import bootloader
from ansible_collections.gpuvirt.host.plugins.module_utils.architecture import host_architecture
from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError, unexpected_failure
from ansible_collections.gpuvirt.host.plugins.module_utils.host import Host
from ansible_collections.gpuvirt.host.plugins.module_utils.kernel import read_cmdline
from ansible_collections.gpuvirt.host.plugins.module_utils.modrun import ModuleRun


class KernelCmdlineRun(ModuleRun):
    def __init__(self, module, host):
        super().__init__(module, host)
        self.running = None
        self.wanted = ((), ())
        self.backups = {}

    def plan(self):
        params = self.params
        self.wanted = bootloader.validate_arguments(params["present"], params["absent"], host_architecture(self.root))
        self.running = read_cmdline(self.root)
        present, absent = self.wanted
        name, update = params["bootloader"], params["update"]
        return self._with_running(
            lambda: bootloader.plan(self.module, self.root, name, present, absent, update=update)
        )

    def apply(self, plan):
        if plan.changed:
            self.backups = self._with_running(lambda: bootloader.apply(self.module, plan, backup=self.params["backup"]))
            self.changes_made = True

    def result(self, plan):
        for warning in plan.warnings:
            self.warn(warning)
        present, absent = self.wanted
        result = dict(
            changed=plan.changed,
            bootloader=plan.bootloader,
            configured=plan.configured,
            running=self.running,
            added=plan.added,
            removed=plan.removed,
            reboot_required=bootloader.reboot_required(self.running, present, absent),
            regenerate_required=plan.pending,
            commands=plan.commands if plan.run_commands or plan.pending else [],
            diff=[edit.diff() for edit in plan.edits],
        )
        if self.backups:
            result["backup_files"] = self.backups
            result["backup_file"] = next(iter(self.backups.values()))
        return result

    def _with_running(self, step):
        """Run ``step``; a boot loader failure also reports the running command line."""
        try:
            return step()
        except bootloader.BootloaderError as error:
            error.details.setdefault("running", self.running)
            raise


class _Preview(KernelCmdlineRun):
    """One set's check-mode run inside another module: the set's own parameters and warnings."""

    def __init__(self, module, host, params):
        super().__init__(module, host)
        self.params = params
        self.check_mode = True
        self.warnings = []

    def warn(self, message):
        self.warnings.append(message)


def preview_arguments(module, root, sets):
    """For each ``{"present", "absent", "bootloader"}`` of ``sets``: the set with ``preview``, what
    ``kernel_cmdline`` would return for it in check mode (no ``diff``) with its ``warnings``, or with ``error``
    when it cannot be previewed."""
    host = Host(root, module=module)
    previews = []
    for wanted in sets:
        entry = {"present": list(wanted.get("present") or []), "absent": list(wanted.get("absent") or []),
                 "bootloader": "auto" if wanted.get("bootloader") is None else wanted["bootloader"]}
        if entry["bootloader"] not in ("auto",) + bootloader.BOOTLOADERS:
            known = ", ".join(bootloader.BOOTLOADERS)
            entry["error"] = "bootloader must be auto or one of %s, got %r" % (known, entry["bootloader"])
            previews.append(entry)
            continue
        run = _Preview(module, host, dict(entry, update=True, backup=False))
        try:
            result = run.result(run.plan())
        except GpuvirtError as error:
            entry["error"] = error.message
        except Exception as error:  # noqa: BLE001 - one set's defect is its error; the read goes on
            entry["error"] = unexpected_failure(error)
        else:
            result.pop("diff", None)
            entry["preview"] = dict(result, warnings=run.warnings)
        previews.append(entry)
    return previews
