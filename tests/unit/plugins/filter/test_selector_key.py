# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""selector_key: one key per selector, whatever its spelling."""

from __future__ import annotations

import pytest

from ansible_collections.gpuvirt.host.plugins.filter.selector_key import FilterModule

selector_key = FilterModule().filters()["selector_key"]


@pytest.mark.parametrize("spellings, key", [
    (["01:00.0", "0000:01:00.0", " 0000:01:00.0 ", "00000000:01:00.0", "0000:01:00.0".upper()], "address:0000:01:00.0"),
    (["10000:01:00.0", "00010000:01:00.0"], "address:10000:01:00.0"),
    (["10de:2236", "10DE:2236", "0x10de:0x2236"], "id:10de:2236"),
    (["GeForce RTX 3090", "geforce  rtx 3090", " GeForce RTX 3090"], "name:geforce rtx 3090"),
])
def test_every_spelling_of_a_selector_has_one_key(spellings, key):
    assert {selector_key(spelling) for spelling in spellings} == {key}


def test_kinds_never_meet_and_bad_selectors_are_kept_for_the_module():
    assert selector_key("01:00.0") != selector_key("01:00.1")
    assert selector_key("") == "invalid:"
    assert selector_key("3") == "invalid:3"
    assert selector_key(None) == "invalid:None"
