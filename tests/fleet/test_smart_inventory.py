# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The smart-inventory filters our docs and the AWX project give, read with AWX's host_filter
grammar (tests/fleet/awx_host_filter.py) and applied to the gpuvirt facts a preflight caches."""

from __future__ import annotations

import os
import re

import pytest
import yaml
from awx_host_filter import FilterError, parse, select
from conftest import REPO, Fleet, cached_facts

DOCUMENTED_IN = ("README.md", "roles/fleet/README.md")


def documented_filters():
    """Every host_filter of examples/awx-project and every ansible_facts filter the READMEs show."""
    found = []
    with open(os.path.join(REPO, "examples", "awx-project", "controller", "configure.yml")) as handle:
        for task in yaml.safe_load(handle)[0]["tasks"]:
            if "host_filter" in task.get("awx.awx.inventory", {}):
                found.extend(item["filter"] for item in task["loop"])
    for name in DOCUMENTED_IN:
        with open(os.path.join(REPO, name)) as handle:
            found.extend(re.findall(r"`(ansible_facts__[^`]+)`", handle.read()))
    return found


@pytest.fixture(scope="module")
def fleet_facts(tmp_path_factory):
    """What AWX keeps as each host's ansible_facts after a preflight job with fact caching."""
    base = tmp_path_factory.mktemp("smart")
    fleet = Fleet(str(base / "fleet"))
    fleet.add("ready01", "amd_host")
    fleet.add("reboot01", "iommu_disabled")
    fleet.add("blocked01", "desktop_dgpu", vfio_devices=["0000:00:02.0"])  # the boot VGA
    fleet.add("nvidia01", "desktop_dgpu")
    cache = base / "facts"
    caching = {"ANSIBLE_CACHE_PLUGIN": "jsonfile", "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(cache)}
    rc, _recap, output = fleet.run("gpuvirt.host.preflight", extra_vars={"target": "gpu_hosts"}, env=caching)
    assert rc == 2, output  # blocked01
    return {name: cached_facts(str(cache), name) for name in fleet.hosts}


def test_every_documented_filter_is_valid_and_selects_the_hosts_it_says(fleet_facts):
    filters = documented_filters()
    assert len(filters) >= 3, filters
    model = fleet_facts["nvidia01"]["gpuvirt"]["gpu_models"]
    expected = {
        "ansible_facts__gpuvirt__ready=true": ["nvidia01", "ready01"],
        "ansible_facts__gpuvirt__reboot_pending=true": ["reboot01"],
    }
    for text in filters:
        selected = select(text, fleet_facts)
        if text in expected:
            assert selected == expected[text], text
        else:
            # The README's model example: the hosts with that GPU (reboot01 is desktop_dgpu too), blocked or not.
            assert re.fullmatch(r'ansible_facts__gpuvirt__gpu_models\[\]="[^"]+"', text), text
            assert text.split('"')[1] in model, (text, model)
            assert selected == ["blocked01", "nvidia01", "reboot01"], text


def test_the_grammar_follows_awx(fleet_facts):
    # JSON types count: a quoted "true" is a string, and a list needs [] to be searched.
    assert select('ansible_facts__gpuvirt__ready="true"', fleet_facts) == []
    model = fleet_facts["nvidia01"]["gpuvirt"]["gpu_models"][0]
    assert select('ansible_facts__gpuvirt__gpu_models="%s"' % model, fleet_facts) == []
    assert select("ansible_facts__gpuvirt__gpu_count=2", fleet_facts) == sorted(
        name for name, facts in fleet_facts.items() if facts["gpuvirt"]["gpu_count"] == 2)
    # and binds tighter than or; parentheses regroup.
    both = "ansible_facts__gpuvirt__ready=false and ansible_facts__gpuvirt__reboot_pending=true"
    assert select(both, fleet_facts) == ["reboot01"]
    assert select("ansible_facts__gpuvirt__ready=true or " + both, fleet_facts) == ["nvidia01", "ready01", "reboot01"]
    assert select("(ansible_facts__gpuvirt__ready=true or ansible_facts__gpuvirt__ready=false) and "
                  "ansible_facts__gpuvirt__iommu=false", fleet_facts) == ["reboot01"]
    for bad in ("ansible_facts__gpuvirt__ready", "ansible_facts__gpuvirt__ready=true and", "(ansible_facts__x=1",
                "name=gpu01", 'ansible_facts__gpuvirt__gpu_models[]="unterminated'):
        with pytest.raises(FilterError):
            parse(bad)
