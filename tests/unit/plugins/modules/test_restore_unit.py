# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``gpuvirt.host.restore_unit`` run in-process against a fixture tree."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import restore
from ansible_collections.gpuvirt.host.tests.sim.hosts import mediated_lab, tree_state

CODE = "usr/local/lib/gpuvirt/ansible_collections/gpuvirt/host/plugins/module_utils"
UNIT = "etc/systemd/system/gpuvirt-restore.service"
LINK = "etc/systemd/system/multi-user.target.wants/gpuvirt-restore.service"
LATE_UNIT = "etc/systemd/system/gpuvirt-restore-late.service"
LATE_LINK = "etc/systemd/system/multi-user.target.wants/gpuvirt-restore-late.service"


@pytest.fixture
def root(make_host):
    return make_host(mediated_lab())


def read(root, relative):
    with open(os.path.join(root, relative)) as handle:
        return handle.read()


def test_installs_the_code_the_unit_and_enables_it(root, run_module):
    result = run_module("restore_unit", {"root": root})
    assert result["rc"] == 0 and result["changed"] is True, result
    assert result["enabled"] is True and result["reboot_required"] is False
    wanted = restore.code_sources()
    assert result["code_files"] == sorted(wanted)
    # Exactly what the restore imports, no more: the topology report code is not needed at boot.
    assert "restore.py" in wanted and "sriov.py" in wanted and "nvidia_vgpu.py" in wanted
    assert "topology.py" not in wanted
    assert sorted(os.listdir(os.path.join(root, CODE))) == sorted(wanted)
    for name, text in wanted.items():
        assert read(root, os.path.join(CODE, name)) == text
    unit = read(root, UNIT)
    for line in (
        "Type=oneshot",
        "After=systemd-modules-load.service",
        "Before=libvirtd.service virtqemud.service",
        "WantedBy=multi-user.target",
        "Environment=PYTHONPATH=/usr/local/lib/gpuvirt",
        "ExecStart=/usr/bin/python3 -m ansible_collections.gpuvirt.host.plugins.module_utils.restore "
        "--timeout 60 --mdevctl-grace 10 --deadline 280",
        # The run ends by its deadline, with 30 s left to write its status before systemd stops it.
        "TimeoutStartSec=310",
    ):
        assert line + "\n" in unit
    assert os.readlink(os.path.join(root, LINK)) == "/etc/systemd/system/gpuvirt-restore.service"
    # The late unit: after the first and the vendors' services that start after it, before VMs.
    late = read(root, LATE_UNIT)
    assert result["late_unit"] == os.path.join(root, LATE_UNIT)
    for line in (
        "Type=oneshot",
        "After=gpuvirt-restore.service nvidia-mig-manager.service",
        "Before=libvirtd.service virtqemud.service",
        "WantedBy=multi-user.target",
        "ExecStart=/usr/bin/python3 -m ansible_collections.gpuvirt.host.plugins.module_utils.restore --late "
        "--timeout 60 --deadline 270",
        "TimeoutStartSec=300",
    ):
        assert line + "\n" in late
    assert "Before=nvidia-mig-manager.service\n" in unit
    assert os.readlink(os.path.join(root, LATE_LINK)) == "/etc/systemd/system/gpuvirt-restore-late.service"

    again = run_module("restore_unit", {"root": root})
    assert again["changed"] is False and again["files_changed"] == []


def test_check_mode_predicts_and_writes_nothing(root, run_module):
    untouched = tree_state(root)
    predicted = run_module("restore_unit", {"root": root, "timeout": 120}, check_mode=True, diff=True)
    assert tree_state(root) == untouched
    real = run_module("restore_unit", {"root": root, "timeout": 120}, diff=True)
    assert predicted["changed"] is True and predicted["files_changed"] == real["files_changed"]
    assert predicted["diff"] == real["diff"]
    assert "--timeout 120 " in predicted["diff"][0]["after"]
    assert "restore.py" in predicted["diff"][1]["after"]
    assert "--late --timeout 120 --deadline 510\n" in predicted["diff"][2]["after"]
    assert predicted["files_changed"][-2:] == [os.path.join(root, LINK), os.path.join(root, LATE_LINK)]


def test_a_lost_late_unit_link_is_put_back(root, run_module):
    """An installation from before the late unit, or a hand-disabled one: the next run enables it."""
    run_module("restore_unit", {"root": root})
    os.unlink(os.path.join(root, LATE_LINK))
    predicted = run_module("restore_unit", {"root": root}, check_mode=True)
    result = run_module("restore_unit", {"root": root})
    assert predicted["files_changed"] == result["files_changed"] == [os.path.join(root, LATE_LINK)]
    assert os.readlink(os.path.join(root, LATE_LINK)) == "/etc/systemd/system/gpuvirt-restore-late.service"


def test_a_new_setting_rewrites_the_units_only(root, run_module):
    run_module("restore_unit", {"root": root})
    result = run_module("restore_unit", {"root": root, "python": "/usr/local/bin/python3.11"})
    assert result["files_changed"] == [os.path.join(root, UNIT), os.path.join(root, LATE_UNIT)]
    assert "ExecStart=/usr/local/bin/python3.11 -m " in read(root, UNIT)
    assert "ExecStart=/usr/local/bin/python3.11 -m " in read(root, LATE_UNIT)
    # mdevctl's grace concerns the first unit's mdevs step only.
    result = run_module("restore_unit", {"root": root, "python": "/usr/local/bin/python3.11", "mdevctl_grace": 5})
    assert result["files_changed"] == [os.path.join(root, UNIT)]


def test_stale_code_is_removed(root, run_module):
    run_module("restore_unit", {"root": root})
    stale = os.path.join(root, CODE, "renamed_long_ago.py")
    with open(stale, "w") as handle:
        handle.write("x = 1\n")
    with open(os.path.join(root, CODE, "mdev.py"), "a") as handle:
        handle.write("# edited by hand\n")
    result = run_module("restore_unit", {"root": root})
    assert sorted(result["files_changed"]) == sorted([stale, os.path.join(root, CODE, "mdev.py")])
    assert not os.path.exists(stale)


def test_absent_removes_everything(root, run_module):
    run_module("restore_unit", {"root": root})
    os.makedirs(os.path.join(root, CODE, "__pycache__"))
    open(os.path.join(root, CODE, "__pycache__", "mdev.cpython-311.pyc"), "w").close()
    result = run_module("restore_unit", {"root": root, "state": "absent"})
    assert result["changed"] is True and result["enabled"] is False
    for relative in (UNIT, LINK, LATE_UNIT, LATE_LINK, "usr/local/lib/gpuvirt/ansible_collections"):
        assert not os.path.lexists(os.path.join(root, relative))
    assert os.path.isdir(os.path.join(root, "usr/local/lib/gpuvirt"))
    assert run_module("restore_unit", {"root": root, "state": "absent"})["changed"] is False


MOVED = "opt/gpuvirt/ansible_collections/gpuvirt/host/plugins/module_utils"


def test_a_new_prefix_takes_the_code_away_from_the_old_one(root, run_module):
    # The unit names the prefix it runs from: the code there is removed when the code moves, and when the unit
    # goes away under the default prefix; a file the restore does not ship is left where it is.
    run_module("restore_unit", {"root": root})
    mine = os.path.join(root, "usr/local/lib/gpuvirt/notes.txt")
    with open(mine, "w") as handle:
        handle.write("mine\n")
    # A file an older release shipped and this one does not (iommu.py, before the restore stopped importing it).
    with open(os.path.join(root, CODE, "iommu.py"), "w") as handle:
        handle.write("# an older release's\n")
    args = {"root": root, "prefix": "/opt/gpuvirt"}
    predicted = run_module("restore_unit", args, check_mode=True, diff=True)
    moved = run_module("restore_unit", args, diff=True)
    assert moved["changed"] is True and moved["files_changed"] == predicted["files_changed"], moved
    assert moved["diff"] == predicted["diff"]
    assert os.path.join(root, CODE, "restore.py") in moved["files_changed"]
    assert not os.path.lexists(os.path.join(root, "usr/local/lib/gpuvirt/ansible_collections"))
    assert read(root, "usr/local/lib/gpuvirt/notes.txt") == "mine\n"
    assert sorted(os.listdir(os.path.join(root, MOVED))) == sorted(restore.code_sources())
    assert "Environment=PYTHONPATH=/opt/gpuvirt\n" in read(root, UNIT)
    assert run_module("restore_unit", args)["changed"] is False

    gone = run_module("restore_unit", {"root": root, "state": "absent"})
    assert gone["changed"] is True and not os.path.lexists(os.path.join(root, "opt/gpuvirt/ansible_collections"))
    assert not os.path.lexists(os.path.join(root, UNIT))


def test_the_installed_code_runs_alone(root, run_module, tmp_path):
    """Only the installed files and the standard library: the restore starts and reports."""
    run_module("restore_unit", {"root": root})
    blocker = tmp_path / "blocker" / "ansible"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('the restore must not need Ansible')\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "%s:%s" % (tmp_path / "blocker", root + "/usr/local/lib/gpuvirt")}
    done = subprocess.run(
        [sys.executable, "-m", "ansible_collections.gpuvirt.host.plugins.module_utils.restore", "--root", root],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "restored: 0 item(s), 0 failed" in done.stdout


def test_a_missing_root_is_refused_and_not_created(tmp_path, run_module):
    missing = str(tmp_path / "not-there")
    result = run_module("restore_unit", {"root": missing})
    assert result["failed"] and result["changed"] is False
    assert "root %s does not exist" % missing in result["msg"]
    assert not os.path.exists(missing)
