# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``kernel_cmdline`` module's run (:mod:`modrun`): check the arguments for this host's
architecture, plan the boot loader's edits and commands, apply them, report the next boot's and the
running command line."""

from __future__ import annotations

from ansible_collections.gpuvirt.host.plugins.module_utils import bootloader
from ansible_collections.gpuvirt.host.plugins.module_utils.architecture import host_architecture
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
