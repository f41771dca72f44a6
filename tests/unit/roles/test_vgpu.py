# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The vgpu role end to end: ansible-playbook on localhost against fixture hosts.

The modules run as Ansible runs them (separate processes); ``tests/sim/site`` on their
``PYTHONPATH`` makes the fixture's sysfs react like the kernel and NVIDIA's driver. A reboot is
simulated (VFs, vGPUs and mdevs gone, no processes), then the restore the role installed into the
tree runs as the unit would and must bring everything back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import hoststate, mdev_info
from ansible_collections.gpuvirt.host.tests.sim.hosts import MACHINE_ID_FILE, mediated_lab, tree_state
from ansible_collections.gpuvirt.host.tests.sim.nvidia_vgpu_sim import attach, fake_sriov_manage
from ansible_collections.gpuvirt.host.tests.sim.sriov_hosts import all_vfs_enabled
from ansible_collections.gpuvirt.host.tests.tools.playbook import run_playbook

TESTS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIM_SITE = os.path.join(TESTS, "sim", "site")
A100 = "0000:b1:00.0"
L40S = "0000:cb:00.0"


@pytest.fixture
def play(tmp_path):
    """``play(root, devices, check=False, **vars) -> (rc, recap, output, exported)``."""

    def run(root, devices, check=False, path_dirs=(), **variables):
        # Every systemd host has it; the fixture trees only hold what detection reads.
        os.makedirs(os.path.join(root, "etc/systemd/system"), exist_ok=True)
        exported = tmp_path / "exported.json"
        role_vars = dict(vgpu_devices=devices, vgpu_root=root, **variables)
        playbook = [
            {
                "name": "vgpu role against a fixture tree",
                "hosts": "localhost",
                "connection": "local",
                "gather_facts": False,
                "environment": {
                    "PYTHONPATH": SIM_SITE,
                    "GPUVIRT_KERNEL_SIM": root,
                    "PATH": os.pathsep.join(list(path_dirs) + [os.environ.get("PATH", "/usr/bin:/bin")]),
                },
                "roles": [{"role": "gpuvirt.host.vgpu", "vars": role_vars}],
                "post_tasks": [
                    {
                        "name": "Export what the role exported",
                        "ansible.builtin.copy": {
                            "content": "{{ {'reboot': vgpu_reboot_required, 'result': vgpu_result} | to_json }}",
                            "dest": str(exported),
                            "mode": "0644",
                        },
                        "check_mode": False,
                    }
                ],
            }
        ]
        done = run_playbook(playbook, tmp_path, ["--check", "--diff"] if check else [], timeout=600)
        output = done.stdout + done.stderr
        match = re.search(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", output)
        recap = dict(zip(("ok", "changed", "unreachable", "failed"), map(int, match.groups()))) if match else None
        result = None
        if exported.exists():
            result = json.loads(exported.read_text())
            exported.unlink()
            recap["changed"] -= 1  # the export itself, not the role
        return done.returncode, recap, output, result

    return run


def mdev_set(root):
    return {(m["uuid"], m["parent"], m["type"]) for m in mdev_info.mdevs(root)}


def num_vfs(root, pf):
    with open(os.path.join(root, "sys/bus/pci/devices", pf, "sriov_numvfs")) as handle:
        return int(handle.read())


def current_types(root, pf):
    types = {}
    base = os.path.join(root, "sys/bus/pci/devices", pf)
    for name in sorted(os.listdir(base)):
        if name.startswith("virtfn"):
            vf = os.path.basename(os.readlink(os.path.join(base, name)))
            with open(os.path.join(base, name, "nvidia/current_vgpu_type")) as handle:
                value = int(handle.read())
            if value:
                types[vf] = value
    return types


def reboot(root, pfs=(), uptime=23.5):
    """What a reboot leaves: no processes, no mdevs, no VFs (so no vGPU types), a new uptime."""
    shutil.rmtree(os.path.join(root, "proc"), ignore_errors=True)
    os.makedirs(os.path.join(root, "proc"))
    with open(os.path.join(root, "proc/uptime"), "w") as handle:
        handle.write("%.2f 40.00\n" % uptime)
    sim = attach(root)[0]
    with sim.active():
        for value in sorted(m["uuid"] for m in mdev_info.mdevs(root)):
            fd = os.open(os.path.join(root, "sys/bus/mdev/devices", value, "remove"), os.O_WRONLY)
            os.write(fd, b"1")
            os.close(fd)
        for pf in pfs:
            base = os.path.join(root, "sys/bus/pci/devices", pf)
            for name in os.listdir(base):
                if name.startswith("virtfn"):
                    path = os.path.join(base, name, "nvidia/current_vgpu_type")
                    if os.path.exists(path):
                        fd = os.open(path, os.O_WRONLY)
                        os.write(fd, b"0")
                        os.close(fd)
            fd = os.open(os.path.join(base, "sriov_numvfs"), os.O_WRONLY)
            os.write(fd, b"0")
            os.close(fd)
    assert mdev_info.mdevs(root) == []


def run_installed_restore(root, path_dirs=()):
    """The unit's ExecStart, from the copy the role installed into the tree."""
    unit = os.path.join(root, "etc/systemd/system/gpuvirt-restore.service")
    with open(unit) as handle:
        text = handle.read()
    prefix = re.search(r"^Environment=PYTHONPATH=(\S+)$", text, re.M).group(1)
    exec_start = re.search(r"^ExecStart=(.+)$", text, re.M).group(1).split()
    assert exec_start[1:3] == ["-m", "ansible_collections.gpuvirt.host.plugins.module_utils.restore"]
    env = {
        "PATH": os.pathsep.join(list(path_dirs) + ["/usr/bin", "/bin"]),
        "PYTHONPATH": os.pathsep.join([root + prefix, SIM_SITE]),
        "GPUVIRT_KERNEL_SIM": root,
    }
    command = [sys.executable] + exec_start[1:] + ["--root", root]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    return done.returncode, done.stdout + done.stderr


def test_mediated_lab_role_idempotent_and_restored(make_host, play):
    root = make_host(mediated_lab())
    devices = [
        {"selector": "mbochs", "mdev": [{"type": "mbochs-medium", "count": 2}], "exclusive": True},
        {"selector": "mdpy", "mdev": [{"type": "mdpy-hd", "count": 1}]},
        {"selector": "0000:04:00.0", "sriov": {"num_vfs": 2}},
    ]
    rc, recap, output, _exported = play(root, devices, check=True)
    assert rc == 0 and recap["failed"] == 0, output
    predicted = recap["changed"]
    assert mdev_info.mdevs(root) == [] and num_vfs(root, "0000:04:00.0") == 0

    rc, recap, output, exported = play(root, devices)
    assert rc == 0 and recap["failed"] == 0, output
    assert recap["changed"] == predicted, output
    assert num_vfs(root, "0000:04:00.0") == 2
    wanted = mdev_set(root)
    assert sorted((parent, type_id) for _u, parent, type_id in wanted) == [
        ("mbochs", "mbochs-medium"),
        ("mbochs", "mbochs-medium"),
        ("mdpy", "mdpy-hd"),
    ]
    assert exported["reboot"] is False and len(exported["result"]["mdevs"]) == 3
    unit = (make_root := root) + "/etc/systemd/system/gpuvirt-restore.service"
    with open(unit) as handle:
        text = handle.read()
    for line in (
        "Type=oneshot",
        "Before=libvirtd.service virtqemud.service",
        "After=systemd-modules-load.service",
        "WantedBy=multi-user.target",
    ):
        assert line in text
    assert os.path.islink(make_root + "/etc/systemd/system/multi-user.target.wants/gpuvirt-restore.service")
    state = hoststate.load_state(root)
    assert state["sriov"] == {"0000:04:00.0": {"num_vfs": 2}} and len(state["mdevs"]) == 3

    rc, recap, output, _exported = play(root, devices)
    assert rc == 0 and recap["changed"] == 0, output

    reboot(root, pfs=["0000:04:00.0"])
    assert num_vfs(root, "0000:04:00.0") == 0
    rc, log = run_installed_restore(root)
    assert rc == 0, log
    assert "boot to restored: 23.500 s" in log
    assert num_vfs(root, "0000:04:00.0") == 2 and mdev_set(root) == wanted
    rc, recap, output, _exported = play(root, devices)
    assert rc == 0 and recap["changed"] == 0, output


def test_over_capacity_changes_nothing(make_host, play):
    root = make_host(mediated_lab())
    devices = [
        {"selector": "0000:04:00.0", "sriov": {"num_vfs": 2}},
        {"selector": "mbochs", "mdev": [{"type": "mbochs-medium", "count": 2}, {"type": "mbochs-large", "count": 4}]},
    ]
    rc, recap, output, _exported = play(root, devices, vgpu_restore_install=False)
    assert rc != 0 and recap["failed"] == 1
    assert "mbochs-large: 4 declared, 0 present, 4 to create, available_instances 4" in output
    assert mdev_info.mdevs(root) == []


def test_a100_legacy_layout_end_to_end(make_host, play, tmp_path):
    root = make_host(all_vfs_enabled("datacenter_a100"), files=MACHINE_ID_FILE)
    bin_dir = str(tmp_path / "bin")
    fake_sriov_manage(bin_dir, root)
    devices = [{"selector": "A100", "nvidia_vgpu": {"profiles": [{"profile": "A100-4C", "count": 3}]}}]
    before = mdev_set(root)
    rc, recap, output, exported = play(root, devices, path_dirs=[bin_dir])
    assert rc == 0 and recap["failed"] == 0, output
    after = mdev_set(root)
    assert before < after and len(after) == 3
    assert {type_id for _u, _p, type_id in after} == {"nvidia-471"}
    assert exported["result"]["mdev_parents"]["0000:b1:00.5"]["created"]
    state = hoststate.load_state(root)
    assert state["sriov"][A100]["method"] == "sriov_manage"
    assert set(state["mdevs"]) == {u for u, _p, _t in after}

    rc, recap, output, _exported = play(root, devices, path_dirs=[bin_dir])
    assert rc == 0 and recap["changed"] == 0, output

    reboot(root, pfs=[A100], uptime=41.0)
    assert num_vfs(root, A100) == 0
    rc, log = run_installed_restore(root, path_dirs=[bin_dir])
    assert rc == 0, log
    assert num_vfs(root, A100) > 0 and mdev_set(root) == after
    assert log.index("] sriov %s" % A100) < log.index("] mdevs ")


def test_per_vf_layout_end_to_end(make_host, play, tmp_path):
    root = make_host(all_vfs_enabled("l40s_vgpu"))
    bin_dir = str(tmp_path / "bin")
    fake_sriov_manage(bin_dir, root)
    devices = [{"selector": "L40S", "nvidia_vgpu": {"profiles": [{"profile": "L40S-8Q", "count": 3}]}}]
    rc, recap, output, _exported = play(root, devices, check=True, path_dirs=[bin_dir])
    assert rc == 0 and recap["failed"] == 0, output
    predicted = recap["changed"]
    assert len(current_types(root, L40S)) == 1

    rc, recap, output, _exported = play(root, devices, path_dirs=[bin_dir])
    assert rc == 0 and recap["changed"] == predicted, output
    assigned = current_types(root, L40S)
    assert sorted(assigned.values()) == [1041, 1041, 1041]
    state = hoststate.load_state(root)
    assert {vf: e["type_id"] for vf, e in state["nvidia_vgpu"].items()} == assigned

    rc, recap, output, _exported = play(root, devices, path_dirs=[bin_dir])
    assert rc == 0 and recap["changed"] == 0, output

    reboot(root, pfs=[L40S], uptime=37.25)
    rc, log = run_installed_restore(root, path_dirs=[bin_dir])
    assert rc == 0, log
    assert current_types(root, L40S) == assigned
    assert log.index("] sriov %s" % L40S) < log.index("] nvidia_vgpu ")
    assert "boot to restored: 37.250 s" in log


def gvt_g_laptop(make_host):
    root = make_host("gvtg_laptop")
    boot = os.path.join(TESTS, "fixtures", "boot", "debian-grub")
    for relative in ("etc/default/grub", "usr/sbin/update-grub", "usr/sbin/grub-mkconfig"):
        os.makedirs(os.path.dirname(os.path.join(root, relative)), exist_ok=True)
        shutil.copy2(os.path.join(boot, relative), os.path.join(root, relative))
    return root


@pytest.mark.parametrize("devices", [
    [{"selector": "0000:00:02.0", "mode": {"name": "gvt-g"}, "mdev": [{"type": "i915-GVTg_V5_4", "count": 1}]}],
    # The mode and the mdevs in two entries, the device spelt two ways: the mdevs wait all the same.
    [{"selector": "0000:00:02.0", "mode": {"name": "gvt-g"}},
     {"selector": "00:02.0", "mdev": [{"type": "i915-GVTg_V5_4", "count": 1}]}],
], ids=["one-entry", "two-entries-two-spellings"])
def test_a_gvt_g_mode_waits_for_the_reboot_then_the_mdevs_follow(make_host, play, devices):
    from ansible_collections.gpuvirt.host.tests.sim import gvt_g

    root = gvt_g_laptop(make_host)

    rc, recap, output, exported = play(root, devices, vgpu_host_id="laptop-1")
    assert rc == 0, output
    assert exported["reboot"] is True and exported["result"]["waiting_for_reboot"] == ["0000:00:02.0"]
    assert exported["result"]["modes"][0]["mode"] == "gvt-g" and exported["result"]["mdevs"] == []
    with open(os.path.join(root, "etc/default/grub")) as handle:
        assert "i915.enable_gvt=1" in handle.read()

    assert gvt_g.boot(root) is True
    rc, recap, output, exported = play(root, devices, vgpu_host_id="laptop-1")
    assert rc == 0, output
    assert exported["reboot"] is False and exported["result"]["modes"][0]["verification"]["ready"] is True
    assert [(parent, kind) for _uuid, parent, kind in mdev_set(root)] == [("0000:00:02.0", "i915-GVTg_V5_4")]
    rc, recap, output, exported = play(root, devices, vgpu_host_id="laptop-1")
    assert rc == 0 and recap["changed"] == 0, output


def test_a_gvt_g_mode_set_absent_goes_after_its_mdevs_in_one_run(make_host, play):
    from ansible_collections.gpuvirt.host.tests.sim import gvt_g

    root = gvt_g_laptop(make_host)
    carved = [{"selector": "0000:00:02.0", "mode": {"name": "gvt-g"}, "mdev": [{"type": "i915-GVTg_V5_4", "count": 1}]}]
    assert play(root, carved, vgpu_host_id="laptop-1")[0] == 0
    assert gvt_g.boot(root) is True
    assert play(root, carved, vgpu_host_id="laptop-1")[0] == 0 and len(mdev_set(root)) == 1

    off = [{"selector": "0000:00:02.0", "mode": {"name": "gvt-g", "state": "absent"}, "mdev": [], "exclusive": True}]
    # Check mode removes no mdev, so the boot restore still records it: the mode is planned in a real run.
    before = tree_state(root)
    rc, recap, output, exported = play(root, off, check=True, vgpu_host_id="laptop-1")
    assert rc == 0 and exported["result"]["modes_off_deferred"] == ["0000:00:02.0"], output
    assert exported["result"]["modes"] == [] and tree_state(root) == before
    rc, recap, output, exported = play(root, off, vgpu_host_id="laptop-1")
    assert rc == 0, output
    assert not mdev_set(root) and not os.path.exists(os.path.join(root, "etc/modules-load.d/gpuvirt-gvt-g.conf"))
    with open(os.path.join(root, "etc/default/grub")) as handle:
        grub = handle.read()
    assert "i915.enable_gvt=0" in grub and "i915.enable_gvt=1" not in grub
    assert exported["reboot"] is True and exported["result"]["changed"] is True
    assert [(m["mode"], m["state"], m["changed"]) for m in exported["result"]["modes"]] == [("gvt-g", "absent", True)]
    rc, recap, output, exported = play(root, off, vgpu_host_id="laptop-1")
    assert rc == 0 and recap["changed"] == 0 and exported["reboot"] is True, output  # until the reboot

    assert gvt_g.boot(root) is False
    rc, recap, output, exported = play(root, off, vgpu_host_id="laptop-1")
    assert rc == 0 and recap["changed"] == 0 and exported["reboot"] is False, output
    # With nothing left to remove, check mode plans the mode too.
    rc, recap, output, exported = play(root, off, check=True, vgpu_host_id="laptop-1")
    assert rc == 0 and exported["result"]["modes_off_deferred"] == [], output
    assert [(m["mode"], m["state"], m["changed"]) for m in exported["result"]["modes"]] == [("gvt-g", "absent", False)]


@pytest.mark.parametrize("devices, variables, message", [
    ([{"selector": "0000:00:02.0", "mode": {"name": "gvt-g"}},
      {"selector": "00:02.0", "mode": {"name": "gvt-g", "state": "absent"}}], {},
     "gvt-g (on for 0000:00:02.0, off for 00:02.0): one entry turns the mode on and another off"),
    # max_vfs is the driver's: on for one GPU and off for another would flip it at every run.
    ([{"selector": "0000:4e:00.0", "mode": {"name": "sriov", "max_vfs": 7}},
      {"selector": "0000:8c:00.0", "mode": {"name": "sriov", "state": "absent"}}], {},
     "sriov (on for 0000:4e:00.0, off for 0000:8c:00.0): one entry turns the mode on and another off"),
    ([{"selector": "0000:00:02.0", "mode": {"name": "gvt-g", "state": "absent", "options": {"x": 1}}},
      {"selector": "0000:4e:00.0", "mode": {"name": "sriov", "state": "absent", "max_vfs": None}}], {},
     "0000:00:02.0: a mode turned off (state absent) takes no max_vfs or options"),
    ([{"selector": "0000:00:02.0", "mode": {"name": "gvt-g", "state": "absent"}, "mdev": [], "exclusive": True}],
     {"vgpu_persistent": False}, "A mode turned off (state absent) needs vgpu_persistent true"),
], ids=["on-and-off", "driver-wide", "options", "not-persistent"])
def test_a_mode_set_absent_that_cannot_work_fails_before_any_change(make_host, play, devices, variables, message):
    root = gvt_g_laptop(make_host)
    before = tree_state(root)
    rc, recap, output, exported = play(root, devices, vgpu_host_id="laptop-1", **variables)
    assert rc != 0 and recap["changed"] == 0 and message in " ".join(output.split()), output
    assert tree_state(root) == before


# -- Intel SR-IOV: VFs handed to vfio-pci, at run time and at every boot ------------------------------

FLEX = "0000:4e:00.0"


def vf_driver_map(root, pf):
    base = os.path.join(root, "sys/bus/pci/devices", pf)
    links = [os.path.join(base, name) for name in os.listdir(base) if name.startswith("virtfn")]
    vfs = sorted(os.path.basename(os.readlink(link)) for link in links)
    drivers = {}
    for vf in vfs:
        link = os.path.join(root, "sys/bus/pci/devices", vf, "driver")
        drivers[vf] = os.path.basename(os.readlink(link)) if os.path.islink(link) else None
    return drivers


def hold_vfio_group(root, address, pid=4242):
    """A VM (qemu) holding the VFIO group of ``address`` open."""
    group = os.path.basename(os.readlink(os.path.join(root, "sys/bus/pci/devices", address, "iommu_group")))
    os.makedirs(os.path.join(root, "proc", str(pid), "fd"))
    with open(os.path.join(root, "proc", str(pid), "comm"), "w") as handle:
        handle.write("qemu-system-x86\n")
    os.symlink("/dev/vfio/" + group, os.path.join(root, "proc", str(pid), "fd", "21"))
    return group


@pytest.mark.parametrize("driver", ["i915", "xe"])
def test_intel_sriov_vfs_to_vfio_pci_enabled_carved_bound_restored_handed_back(make_host, play, driver):
    from ansible_collections.gpuvirt.host.tests.sim import boot
    from ansible_collections.gpuvirt.host.tests.unit.plugins.modules.test_vendor_lifecycle import flex_host

    root = flex_host(make_host, driver)
    # The VF limit as the mode's own parameter, or among its vendor's options: the same setting.
    mode = {"name": "sriov", "max_vfs": 7} if driver == "i915" else {"name": "sriov", "options": {"max_vfs": 7}}
    devices = [{"selector": FLEX, "mode": mode, "sriov": {"num_vfs": 4, "drivers_autoprobe": False, "vfio": True}}]

    # Out of PF mode: the role sets max_vfs, and the VFs wait for the reboot.
    rc, recap, output, exported = play(root, devices)
    assert rc == 0, output
    assert exported["reboot"] is True and exported["result"]["waiting_for_reboot"] == [FLEX]
    assert exported["result"]["sriov"] == [] and vf_driver_map(root, FLEX) == {}

    assert boot.reboot(root)[driver][FLEX] == 7
    rc, recap, output, predicted = play(root, devices, check=True)
    assert rc == 0 and recap["failed"] == 0, output
    assert vf_driver_map(root, FLEX) == {} and not os.path.exists(hoststate.state_path(root))
    changes = recap["changed"]
    rc, recap, output, exported = play(root, devices)
    assert rc == 0 and recap["failed"] == 0, output
    assert recap["changed"] == changes and changes > 0, output  # check mode predicted the run
    vfs = ["0000:4e:00.%d" % n for n in range(1, 5)]
    assert vf_driver_map(root, FLEX) == dict.fromkeys(vfs, "vfio-pci")
    assert predicted["result"]["sriov"][0]["after"] == exported["result"]["sriov"][0]["after"]
    assert exported["result"]["sriov"][0]["after"]["vf_drivers"] == dict.fromkeys(vfs, "vfio-pci")
    for vf in vfs:  # bound by address, never by ID: the PF shares 8086:56c0 with its VFs
        with open(os.path.join(root, "sys/bus/pci/devices", vf, "driver_override")) as handle:
            assert handle.read().strip() == "vfio-pci"
    assert os.readlink(os.path.join(root, "sys/bus/pci/devices", FLEX, "driver")).endswith("/" + driver)
    assert not os.path.exists(os.path.join(root, "etc/modprobe.d/gpuvirt-vfio.conf"))
    assert hoststate.load_state(root)["sriov"] == {FLEX: {"num_vfs": 4, "drivers_autoprobe": False, "vfio": True}}
    rc, recap, output, _exported = play(root, devices)
    assert rc == 0 and recap["changed"] == 0, output

    # The next boot: no VFs until the restore creates them, and no driver for them but the one it binds.
    boot.reboot(root, uptime=31.0)
    assert vf_driver_map(root, FLEX) == {}
    rc, log = run_installed_restore(root)
    assert rc == 0, log
    assert vf_driver_map(root, FLEX) == dict.fromkeys(vfs, "vfio-pci")
    assert log.index("] intel_sriov %s" % FLEX) < log.index("] sriov %s" % FLEX) < log.index("] vfio %s" % FLEX)
    assert "vfio %s: 4 VF(s) on vfio-pci (%s), read back: 4 bound, 0 already" % (FLEX, ", ".join(vfs)) in log
    rc, recap, output, _exported = play(root, devices)
    assert rc == 0 and recap["changed"] == 0, output

    # A VM holds a VF: neither handing the VFs back nor a new count goes ahead, and nothing changes.
    hold_vfio_group(root, vfs[1])
    for sriov in ({"num_vfs": 4, "vfio": False}, {"num_vfs": 2, "vfio": True}):
        refused = [dict(devices[0], sriov=dict(sriov, drivers_autoprobe=False))]
        rc, recap, output, _exported = play(root, refused, vgpu_restore_install=False)
        assert rc != 0 and recap["failed"] == 1, output
        assert "%s: process 4242 (qemu-system-x86) holds its VFIO device" % vfs[1] in output
        assert vf_driver_map(root, FLEX) == dict.fromkeys(vfs, "vfio-pci")
        assert hoststate.load_state(root)["sriov"][FLEX]["vfio"] is True

    # The VM gone, vfio: false hands the VFs back: off vfio-pci, no override left, none at the next boot.
    shutil.rmtree(os.path.join(root, "proc", "4242"))
    back = [dict(devices[0], sriov={"num_vfs": 4, "drivers_autoprobe": False, "vfio": False})]
    rc, recap, output, predicted = play(root, back, check=True)
    assert rc == 0 and vf_driver_map(root, FLEX) == dict.fromkeys(vfs, "vfio-pci"), output
    rc, recap, output, exported = play(root, back)
    assert rc == 0 and recap["changed"] > 0, output
    assert predicted["result"]["sriov"][0]["after"] == exported["result"]["sriov"][0]["after"]
    assert vf_driver_map(root, FLEX) == dict.fromkeys(vfs)  # autoprobe off: no host driver takes them
    for vf in vfs:
        with open(os.path.join(root, "sys/bus/pci/devices", vf, "driver_override")) as handle:
            assert handle.read().strip() in ("", "(null)")
    assert hoststate.load_state(root)["sriov"] == {FLEX: {"num_vfs": 4, "drivers_autoprobe": False}}
    rc, recap, output, _exported = play(root, back)
    assert rc == 0 and recap["changed"] == 0, output
    boot.reboot(root, uptime=32.0)
    rc, log = run_installed_restore(root)
    assert rc == 0, log
    assert vf_driver_map(root, FLEX) == dict.fromkeys(vfs) and "] vfio %s" % FLEX not in log
