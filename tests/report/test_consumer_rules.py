# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What Nova's own parser refuses, refused by the Nova export first with the reason.

Each case pairs the control (Nova, in its venv, rejects the raw nova.conf) with the export's refusal, and
the edge the export still takes with Nova reading it."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from reporttools import REPO

from ansible_collections.gpuvirt.host.plugins.filter.nova_pci_config import nova_pci_config
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect
from ansible_collections.gpuvirt.host.plugins.plugin_utils.exports import ExportError

A6000_IN_DOMAIN_10000 = {"address": "10000:01:00.0", "ids": "10de:2230", "class": "030000", "driver": "vfio-pci",
                         "group": 30, "device_name": "GA102GL [RTX A6000]", "reset_methods": ["flr"]}


def nova_reads(nova_python, tmp_path, ini):
    conf = tmp_path / "nova.conf"
    conf.write_text(ini)
    return subprocess.run([nova_python, os.path.join(REPO, "tests", "report", "nova_parse.py"), str(conf)],
                          capture_output=True, text=True, check=False, timeout=300)


def alias_ini(name):
    return '[pci]\nalias = {"name": %s, "vendor_id": "10de", "product_id": "1e04"}\n' % json.dumps(name)


@pytest.mark.parametrize("name", ["rtx$gpu", "g" * 257], ids=["dollar", "257-characters"])
def test_an_alias_name_nova_cannot_read_is_refused(make_host, nova_python, tmp_path, name):
    assert nova_reads(nova_python, tmp_path, alias_ini(name)).returncode != 0
    with pytest.raises(ExportError, match="1 to 256 characters without blanks, ':', ',' or '\\$'"):
        nova_pci_config(detect(make_host("desktop_vfio")), {"aliases": [{"name": name, "devices": ["10de:1e04"]}]})


def test_the_longest_alias_name_with_punctuation_is_read_by_nova(make_host, nova_python, tmp_path):
    name = "rtx-2080.ti_a/" + "g" * 242
    ini = nova_pci_config(detect(make_host("desktop_vfio")), {"aliases": [{"name": name, "devices": ["10de:1e04"]}]})
    run = nova_reads(nova_python, tmp_path, ini["ini"])
    assert run.returncode == 0, run.stderr[-2000:]
    assert list(json.loads(run.stdout.strip().splitlines()[-1])["aliases"]) == [name]


def test_a_device_in_a_pci_domain_above_ffff_is_refused(make_host, nova_python, tmp_path):
    raw = '[pci]\ndevice_spec = {"vendor_id": "10de", "product_id": "2230", "address": "10000:01:00.0"}\n'
    assert nova_reads(nova_python, tmp_path, raw).returncode != 0
    topology = detect(make_host("desktop_vfio", add_devices=[A6000_IN_DOMAIN_10000]))
    with pytest.raises(ExportError, match="10000:01:00.0 is in PCI domain 10000, above the ffff"):
        nova_pci_config(topology, {"aliases": [{"name": "a6000", "devices": ["10de:2230"]}]})
