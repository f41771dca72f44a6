# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What loading the collection's filters costs a task.

To find one filter of a collection, Ansible loads every file of its ``plugins/filter``, and a
collection's code has no bytecode cache: each file, and everything it imports, is compiled from source
in the worker process of every task that uses any of the filters (the rollout's gpuvirt fact, on every
host). Each filter file holds its documentation and imports its work (in plugin_utils) when called.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

FILTERS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "plugins", "filter")
HEAVY = (
    "module_utils.pci",
    "module_utils.vendors",
    "module_utils.vendor_amd",
    "module_utils.vendor_intel",
    "module_utils.vendor_nvidia",
    "module_utils.critical",
    "module_utils.topology",
    "plugin_utils.report",
    "plugin_utils.exports",
    "plugin_utils.kubevirt",
    "plugin_utils.fact",
)
LOAD = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module("ansible_collections.gpuvirt.host.plugins.filter." + name)
prefix = "ansible_collections.gpuvirt.host.plugins."
print(json.dumps(sorted(m[len(prefix):] for m in sys.modules if m.startswith(prefix))))
"""


def _load(names):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path for path in sys.path if path))
    done = subprocess.run([sys.executable, "-c", LOAD] + list(names), env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout)


def _filter_files():
    return sorted(name[:-3] for name in os.listdir(FILTERS) if name.endswith(".py") and name != "__init__.py")


def test_loading_every_filter_imports_no_detection_code():
    names = _filter_files()
    assert "gpuvirt_fact" in names and "kubevirt_host_devices" in names
    loaded = _load(names)
    assert "filter.gpuvirt_fact" in loaded and "filter.kubevirt_host_devices" in loaded
    assert [module for module in HEAVY if module in loaded] == []


def test_the_filters_that_need_detection_code_import_it_when_called():
    # The lazy imports resolve: each filter that needs the vendor backends or the report's rules runs.
    from ansible_collections.gpuvirt.host.plugins.filter.report_folder_problems import report_folder_problems

    assert report_folder_problems("/srv/reports", ["gpu01", "../gpu02"])[0].startswith(
        "the inventory names '../gpu02' cannot name a file")
    from ansible_collections.gpuvirt.host.plugins.plugin_utils.kubevirt import _domain

    assert _domain({}, "10de") == "nvidia.com"
