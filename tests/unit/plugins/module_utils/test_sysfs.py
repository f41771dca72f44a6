# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""sysfs helpers that replace a standard-library call must give what it gives."""

from __future__ import annotations

import os

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import close_descriptors, resolve


@pytest.fixture
def linked_tree(tmp_path):
    """A sysfs-like tree: class links into devices, a chain of links, an absolute link, a dangling one."""
    devices = tmp_path / "sys" / "devices" / "pci0000:00" / "0000:00:1d.0" / "0000:3d:00.0" / "nvme" / "nvme0"
    (devices / "nvme0n1" / "nvme0n1p2").mkdir(parents=True)
    block = tmp_path / "sys" / "class" / "block"
    block.mkdir(parents=True)
    os.symlink("../../devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/nvme0n1/nvme0n1p2", block / "nvme0n1p2")
    dev_block = tmp_path / "sys" / "dev" / "block"
    dev_block.mkdir(parents=True)
    os.symlink("../../class/block/nvme0n1p2", dev_block / "259:2")
    os.symlink(str(devices), tmp_path / "absolute")
    os.symlink("nowhere/at/all", tmp_path / "dangling")
    os.symlink(str(tmp_path / "sys"), tmp_path / "root-link")
    return tmp_path


@pytest.mark.parametrize(
    "relative",
    [
        "sys/dev/block/259:2",
        "sys/dev/block/259:2/..",
        "sys/class/block/nvme0n1p2/../nvme0n1p2",
        "absolute/nvme0n1",
        "root-link/dev/block/259:2",
        "dangling",
        "sys/dev/block/259:9",
        "sys/dev/block/259:2/missing/child",
        "sys/devices/",
    ],
)
def test_resolve_gives_what_realpath_gives(linked_tree, relative):
    path = os.path.join(str(linked_tree), relative)

    assert resolve(path) == os.path.realpath(path)


def test_resolve_of_a_link_to_a_device_names_the_device(linked_tree):
    real = resolve(os.path.join(str(linked_tree), "sys/dev/block/259:2"))

    assert real.endswith("/0000:3d:00.0/nvme/nvme0/nvme0n1/nvme0n1p2")
    assert os.path.islink(os.path.join(str(linked_tree), "sys/dev/block/259:2"))


def is_open(descriptor):
    try:
        os.fstat(descriptor)
    except OSError:
        return False
    return True


def test_close_descriptors_closes_a_run_of_consecutive_descriptors(tmp_path):
    path = tmp_path / "attribute"
    path.write_text("1\n")
    held = [os.open(path, os.O_RDONLY) for _attempt in range(4)]
    if max(held) - min(held) != 3:
        pytest.fail("this process has holes among its descriptors: %s" % held)

    close_descriptors(held)

    assert not any(is_open(descriptor) for descriptor in held)


def test_close_descriptors_leaves_descriptors_between_those_it_holds_open(tmp_path):
    # Held: the first and the third of three; the one between belongs to someone else and stays open.
    path = tmp_path / "attribute"
    path.write_text("1\n")
    first, other, third = (os.open(path, os.O_RDONLY) for _attempt in range(3))
    try:
        close_descriptors([first, third])

        assert not is_open(first) and not is_open(third)
        assert is_open(other)
    finally:
        os.close(other)


def test_close_descriptors_of_an_out_of_order_set_closes_only_those(tmp_path):
    path = tmp_path / "attribute"
    path.write_text("1\n")
    low, middle, high, last = (os.open(path, os.O_RDONLY) for _attempt in range(4))
    try:
        # As many as the span from the first to the last named, but not that span: each run (low and middle,
        # then last) alone, and high, which is not named, left open.
        close_descriptors([middle, low, last])

        assert not any(is_open(descriptor) for descriptor in (low, middle, last))
        assert is_open(high)
    finally:
        os.close(high)


def test_close_descriptors_closes_each_run_with_one_call_and_leaves_others_open(tmp_path, monkeypatch):
    # Held: two runs with a descriptor held elsewhere between them, and one alone after a gap.
    path = tmp_path / "attribute"
    path.write_text("1\n")
    opened = [os.open(path, os.O_RDONLY) for _attempt in range(7)]
    if max(opened) - min(opened) != 6:
        pytest.fail("this process has holes among its descriptors: %s" % opened)
    first, second, other, fourth, fifth, gap, last = opened
    calls = []
    close = os.close
    monkeypatch.setattr(os, "closerange", lambda low, high: calls.append(("closerange", low, high)) or
                        [close(number) for number in range(low, high)])
    monkeypatch.setattr(os, "close", lambda number: calls.append(("close", number)) or close(number))
    try:
        close_descriptors([fourth, first, last, fifth, second])
    finally:
        monkeypatch.undo()
    try:
        assert not any(is_open(descriptor) for descriptor in (first, second, fourth, fifth, last))
        assert is_open(other) and is_open(gap)
        assert calls == [("closerange", first, second + 1), ("closerange", fourth, fifth + 1), ("close", last)]
    finally:
        os.close(other)
        os.close(gap)
