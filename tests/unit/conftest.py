# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run real modules in-process, the way community.general's unit tests do."""

from __future__ import annotations

import importlib
import json

import pytest
from ansible.module_utils.testing import patch_module_args


class ModuleResult(dict):
    """The JSON a module printed, plus ``rc`` (0 for exit_json, 1 for fail_json)."""

    @property
    def failed(self):
        return bool(self.get("failed"))


def _run(name, args, capsys, check_mode=False, diff=False):
    module = importlib.import_module("ansible_collections.gpuvirt.host.plugins.modules." + name)
    module_args = dict(args)
    module_args["_ansible_check_mode"] = check_mode
    module_args["_ansible_diff"] = diff
    capsys.readouterr()
    with patch_module_args(module_args), pytest.raises(SystemExit) as exit_info:
        module.main()
    result = ModuleResult(json.loads(capsys.readouterr().out))
    result["rc"] = exit_info.value.code
    return result


@pytest.fixture
def run_module(capsys):
    """``run_module('topology_info', {'root': tree}, check_mode=False, diff=False)``."""

    def runner(name, args, check_mode=False, diff=False):
        return _run(name, args, capsys, check_mode=check_mode, diff=diff)

    return runner
