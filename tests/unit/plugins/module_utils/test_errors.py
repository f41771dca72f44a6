# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import (
    bootloader,
    hoststate,
    initramfs,
    mdev,
    nvidia_vgpu,
    restore,
    selector,
    sriov,
    sysfs,
    topology,
    vfio,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError, run_module


class Ended(Exception):
    """What exit_json/fail_json raise here, carrying the result."""

    def __init__(self, how, result):
        super().__init__(how)
        self.how = how
        self.result = result


class FakeModule:
    def exit_json(self, **result):
        raise Ended("exit", result)

    def fail_json(self, **result):
        result["failed"] = True
        raise Ended("fail", result)


def end(work, partial=None):
    with pytest.raises(Ended) as ended:
        run_module(FakeModule(), work, partial=partial)
    return ended.value.how, ended.value.result


@pytest.mark.parametrize(
    "error_class",
    [
        bootloader.ArgumentError,
        bootloader.BootloaderError,
        hoststate.StateFileError,
        initramfs.InitramfsError,
        mdev.MdevError,
        nvidia_vgpu.VgpuError,
        restore.RestoreError,
        selector.SelectorError,
        sriov.SriovError,
        topology.NotALinuxTree,
        vfio.VfioError,
        vfio.GuardError,
    ],
)
def test_every_error_class_is_one_error_type(error_class):
    assert issubclass(error_class, GpuvirtError)


def test_sysfs_write_error_is_one_error_type_with_its_path():
    error = sysfs.SysfsWriteError("/sys/x", "1", OSError(16, "busy"))
    assert isinstance(error, GpuvirtError) and error.changed is False
    assert str(error).startswith("writing '1' to /sys/x failed: Device or resource busy")


def test_success_exits_with_the_result():
    assert end(lambda: {"changed": True, "devices": []}) == ("exit", {"changed": True, "devices": []})


def test_error_fails_with_its_message_changed_and_details():
    def work():
        raise GpuvirtError("0000:01:00.0: busy; stop the VM", changed=True, devices=["0000:01:00.0"])

    how, result = end(work)
    assert how == "fail"
    assert result == {
        "msg": "0000:01:00.0: busy; stop the VM",
        "changed": True,
        "devices": ["0000:01:00.0"],
        "failed": True,
    }


def test_partial_results_are_merged_and_changed_is_true_if_either_says_so():
    def work():
        raise GpuvirtError("the second write failed")

    how, result = end(work, partial=lambda: {"changed": True, "written": ["/etc/a"], "msg": "ignored"})
    assert how == "fail" and result["msg"] == "the second write failed"
    assert result["changed"] is True and result["written"] == ["/etc/a"]

    how, result = end(work, partial=lambda: {"written": []})
    assert result["changed"] is False


def test_unexpected_exception_is_a_clean_failure_without_traceback():
    def work():
        return {}["missing"]

    how, result = end(work, partial=lambda: {"changed": True})
    assert how == "fail" and result["changed"] is True
    assert result["msg"].startswith("internal error in work (test_errors.py line ")
    assert "KeyError: 'missing'" in result["msg"]
    assert "Traceback" not in repr(result) and "exception" not in result


def test_a_failing_partial_still_reports_the_error():
    def work():
        raise GpuvirtError("bad input")

    how, result = end(work, partial=lambda: 1 / 0)
    assert (how, result["msg"], result["changed"]) == ("fail", "bad input", False)
