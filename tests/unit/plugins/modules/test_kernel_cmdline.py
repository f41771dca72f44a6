# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpuvirt.host.kernel_cmdline run for real against boot configuration fixture trees."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from ansible.module_utils import _internal as ansible_internal
from ansible.module_utils.common import warnings as ansible_warnings

from ansible_collections.gpuvirt.host.plugins.module_utils import bootloader as b
from ansible_collections.gpuvirt.host.plugins.module_utils import host as host_model
from ansible_collections.gpuvirt.host.plugins.module_utils import uki

IOMMU = ["intel_iommu=on", "iommu=pt"]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """module.warn() collects into a process-wide list, so in-process runs would see earlier warnings;
    and once any test imports controller code, warn() goes to the display instead of the result."""
    monkeypatch.setattr(ansible_internal, "is_controller", False)
    ansible_warnings._global_warnings.clear()


def warning_messages(result):
    return [w["event"]["msg"] if isinstance(w, dict) else w for w in result.get("warnings", [])]


@pytest.fixture
def as_host(monkeypatch):
    """Commands only run when root is this host's /; let the fixture tree stand in for it."""
    monkeypatch.setattr(host_model, "is_live_root", lambda root: True)


def snapshot(root):
    files = {}
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                files[os.path.relpath(path, root)] = (handle.read(), os.stat(path).st_mode)
    return files


def read(root, path):
    with open(os.path.join(root, path)) as handle:
        return handle.read()


def names(calls):
    return [[os.path.basename(call[0])] + call[1:] for call in calls]


# ------------------------------------------------------------------------------ GRUB


def test_grub_image_tree_is_edited_and_regeneration_left_pending(run_module, boot_tree, fake_commands):
    root = boot_tree("debian-grub")
    fake_commands.install("update-grub")
    result = run_module("kernel_cmdline", {"root": root, "present": IOMMU}, diff=True)
    assert result["rc"] == 0, result
    assert result["changed"] is True
    assert result["bootloader"] == "grub"
    assert result["configured"] == ["quiet", "intel_iommu=on", "iommu=pt"]
    assert result["added"] == ["intel_iommu=on", "iommu=pt"]
    assert result["removed"] == ["intel_iommu=off"]
    assert result["running"][-2:] == ["quiet", "intel_iommu=off"]
    assert result["reboot_required"] is True
    assert result["regenerate_required"] is True
    assert result["commands"] == [["update-grub"]]
    assert fake_commands.calls() == []
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="quiet intel_iommu=on iommu=pt"\n' in read(root, "etc/default/grub")
    (diff,) = result["diff"]
    assert diff["before_header"] == diff["after_header"] == "/etc/default/grub"
    assert diff["after"] == read(root, "etc/default/grub")

    again = run_module("kernel_cmdline", {"root": root, "present": IOMMU})
    assert again["changed"] is False
    assert again["regenerate_required"] is False
    assert again["commands"] == []
    assert again["added"] == again["removed"] == []
    assert again["configured"] == result["configured"]


def test_check_mode_predicts_the_real_run_exactly(run_module, boot_tree, fake_commands, as_host):
    root = boot_tree("grub-quoting")
    fake_commands.install("update-grub")
    args = {"root": root, "present": ["amd_iommu=on", "iommu=pt"], "absent": ["nomodeset", "quiet"]}
    before = snapshot(root)
    predicted = run_module("kernel_cmdline", args, check_mode=True, diff=True)
    assert snapshot(root) == before
    assert fake_commands.calls() == []
    real = run_module("kernel_cmdline", args, diff=True)
    assert predicted["changed"] is real["changed"] is True
    for key in ("configured", "added", "removed", "diff", "reboot_required", "regenerate_required", "commands"):
        assert predicted[key] == real[key], key
    assert [d["before_header"] for d in real["diff"]] == ["/etc/default/grub", "/etc/default/grub.d/20-iommu.cfg"]
    for diff in real["diff"]:
        assert read(root, diff["before_header"].lstrip("/")) == diff["after"]
    assert names(fake_commands.calls()) == [["update-grub"]]


def test_grub_host_runs_update_grub_once(run_module, boot_tree, fake_commands, as_host):
    root = boot_tree("debian-grub")
    update_grub = fake_commands.install("update-grub")
    result = run_module("kernel_cmdline", {"root": root, "present": IOMMU})
    assert result["changed"] is True
    assert result["regenerate_required"] is False
    assert result["commands"] == [[update_grub]]
    assert fake_commands.calls() == [["update-grub"]]
    again = run_module("kernel_cmdline", {"root": root, "present": IOMMU})
    assert again["changed"] is False
    assert fake_commands.calls() == [["update-grub"]]


def test_grub_mkconfig_when_update_grub_is_missing(run_module, boot_tree, fake_commands, as_host):
    root = boot_tree("debian-grub")
    fake_commands.install("grub-mkconfig")
    result = run_module("kernel_cmdline", {"root": root, "present": ["iommu=pt"]})
    assert result["changed"] is True
    assert names(fake_commands.calls()) == [["grub-mkconfig", "-o", "/boot/grub/grub.cfg"]]


def test_grub_mkconfig_writes_the_grub_cfg_grub_reads(run_module, boot_tree, fake_commands, put_file, as_host):
    # grub-install --boot-directory=/efi (Arch with an encrypted /boot): GRUB reads /efi/grub/grub.cfg, and
    # a grub.cfg written to /boot/grub would never boot.
    root = boot_tree("debian-grub")
    put_file(root, "efi/grub/grub.cfg", "# generated by grub-mkconfig\n")
    fake_commands.install("grub-mkconfig")
    result = run_module("kernel_cmdline", {"root": root, "present": ["iommu=pt"]})
    assert names([result["commands"][0]]) == [["grub-mkconfig", "-o", "/efi/grub/grub.cfg"]]
    assert names(fake_commands.calls()) == [["grub-mkconfig", "-o", "/efi/grub/grub.cfg"]]
    # openSUSE and others with grub2-mkconfig: /boot/grub2/grub.cfg, its usual place, wins over the ESP.
    put_file(root, "boot/grub2/grub.cfg", "")
    assert b.grub_config(root, "grub2-mkconfig") == "/boot/grub2/grub.cfg"
    assert b.grub_config(root, "grub-mkconfig") == "/efi/grub/grub.cfg"


def test_failed_regeneration_puts_the_files_back(run_module, boot_tree, fake_commands, as_host):
    root = boot_tree("debian-grub")
    fake_commands.install("update-grub", stderr="grub-probe: error: failed to get canonical path of `overlay'.\n", rc=1)
    before = snapshot(root)
    result = run_module("kernel_cmdline", {"root": root, "present": IOMMU})
    assert result["failed"] is True
    assert "update-grub failed (rc 1): grub-probe: error: failed to get canonical path" in result["msg"]
    assert "/etc/default/grub" in result["msg"]
    assert snapshot(root) == before
    fake_commands.install("update-grub")
    retry = run_module("kernel_cmdline", {"root": root, "present": IOMMU})
    assert retry["changed"] is True
    assert names(fake_commands.calls()) == [["update-grub"], ["update-grub"]]


def test_ubuntu_cloud_dropin_is_edited_because_it_wins(run_module, boot_tree, fake_commands, as_host):
    root = boot_tree("ubuntu-cloud-grub")
    fake_commands.install("update-grub")
    main_file = read(root, "etc/default/grub")
    result = run_module("kernel_cmdline", {"root": root, "present": ["amd_iommu=on"], "absent": ["splash"]})
    assert result["configured"] == ["console=tty1", "console=ttyS0", "amd_iommu=on"]
    assert result["removed"] == []
    assert read(root, "etc/default/grub") == main_file
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="console=tty1 console=ttyS0 amd_iommu=on"\n' in read(
        root, "etc/default/grub.d/50-cloudimg-settings.cfg"
    )
    assert any("init-select.cfg line 3" in w and "conditional block" in w for w in warning_messages(result)), result


def test_an_assignment_after_and_or_or_is_not_taken_for_the_command_line(
    run_module, boot_tree, fake_commands, as_host, put_file
):
    # grub-mkconfig sources the file with sh: the assignment after && runs only when the test succeeds.
    root = boot_tree("debian-grub")
    conditional = '[ -e /etc/gpu-lab ] && GRUB_CMDLINE_LINUX_DEFAULT="quiet splash"\n'
    put_file(root, "etc/default/grub.d/60-lab.cfg", conditional + "true &&\n  GRUB_CMDLINE_LINUX=nomodeset\n")
    fake_commands.install("update-grub")
    result = run_module("kernel_cmdline", {"root": root, "present": ["iommu=pt"]})
    assert result["configured"] == ["quiet", "intel_iommu=off", "iommu=pt"]
    assert read(root, "etc/default/grub.d/60-lab.cfg").startswith(conditional)
    messages = [w for w in warning_messages(result) if "60-lab.cfg" in w]
    assert [m.split(";")[0] for m in messages] == [
        "/etc/default/grub.d/60-lab.cfg line 1 sets GRUB_CMDLINE_LINUX_DEFAULT after &&, || or | (it runs only "
        "as the command before it says)",
        "/etc/default/grub.d/60-lab.cfg line 3 sets GRUB_CMDLINE_LINUX after &&, || or | (it runs only as the "
        "command before it says)"]


def test_backup_keeps_the_original_and_mode_is_preserved(run_module, boot_tree, fake_commands):
    root = boot_tree("debian-grub")
    path = os.path.join(root, "etc/default/grub")
    os.chmod(path, 0o600)
    original = read(root, "etc/default/grub")
    result = run_module("kernel_cmdline", {"root": root, "present": IOMMU, "backup": True})
    assert result["backup_file"] == result["backup_files"]["/etc/default/grub"]
    assert result["backup_file"].startswith(path + ".")
    with open(result["backup_file"]) as handle:
        assert handle.read() == original
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_equivalent_spelling_already_present_is_no_change(run_module, boot_tree):
    root = boot_tree("debian-grub")
    run_module("kernel_cmdline", {"root": root, "present": ["vfio-pci.ids=10de:2236"]})
    result = run_module("kernel_cmdline", {"root": root, "present": ["vfio_pci.ids=10de:2236"]})
    assert result["changed"] is False
    assert "vfio-pci.ids=10de:2236" in result["configured"]


def test_reboot_required_until_the_kernel_runs_with_the_arguments(run_module, boot_tree):
    root = boot_tree("debian-grub")
    first = run_module("kernel_cmdline", {"root": root, "present": IOMMU})
    assert first["reboot_required"] is True
    with open(os.path.join(root, "proc/cmdline"), "w") as handle:
        handle.write("BOOT_IMAGE=/boot/vmlinuz-6.1.0-18-amd64 root=UUID=x ro quiet intel_iommu=on iommu=pt\n")
    after_reboot = run_module("kernel_cmdline", {"root": root, "present": IOMMU})
    assert after_reboot["changed"] is False
    assert after_reboot["reboot_required"] is False
    removal = run_module("kernel_cmdline", {"root": root, "absent": ["iommu"]}, check_mode=True)
    assert removal["changed"] is True
    assert removal["reboot_required"] is True


def test_arguments_passed_to_init_do_not_count_as_running(run_module, boot_tree):
    root = boot_tree("debian-grub")
    run_module("kernel_cmdline", {"root": root, "present": IOMMU})
    with open(os.path.join(root, "proc/cmdline"), "w") as handle:
        handle.write("BOOT_IMAGE=/boot/vmlinuz-6.1.0-18-amd64 root=UUID=x ro -- intel_iommu=on iommu=pt\n")
    result = run_module("kernel_cmdline", {"root": root, "present": IOMMU})
    assert result["changed"] is False and result["reboot_required"] is True
    assert result["running"] == ["BOOT_IMAGE=/boot/vmlinuz-6.1.0-18-amd64", "root=UUID=x", "ro"]


# ------------------------------------------------------------------------------ grubby / BLS


def test_grubby_host_updates_entries_with_grubby_and_defaults_for_new_kernels(
    run_module, boot_tree, fake_commands, as_host
):
    root = boot_tree("rocky9-grubby")
    fake_commands.install_grubby(root)
    args = {"root": root, "present": IOMMU + ["vfio-pci.ids=10de:2236"], "absent": ["rhgb"]}
    predicted = run_module("kernel_cmdline", args, check_mode=True, diff=True)
    assert fake_commands.calls() == []
    result = run_module("kernel_cmdline", args, diff=True)
    assert result["rc"] == 0, result
    assert result["bootloader"] == "grubby"
    assert names(fake_commands.calls()) == [
        ["grubby", "--update-kernel=ALL", "--args=intel_iommu=on iommu=pt vfio-pci.ids=10de:2236", "--remove-args=rhgb"]
    ]
    assert result["configured"] == [
        "root=/dev/mapper/rl-root",
        "ro",
        "crashkernel=1G-4G:192M,4G-64G:256M,64G-:512M",
        "resume=/dev/mapper/rl-swap",
        "rd.lvm.lv=rl/root",
        "rd.lvm.lv=rl/swap",
        "quiet",
        "intel_iommu=on",
        "iommu=pt",
        "vfio-pci.ids=10de:2236",
    ]
    assert 'GRUB_CMDLINE_LINUX="crashkernel=1G-4G:192M,4G-64G:256M,64G-:512M resume=/dev/mapper/rl-swap ' in read(
        root, "etc/default/grub"
    )
    assert 'rd.lvm.lv=rl/swap quiet intel_iommu=on iommu=pt vfio-pci.ids=10de:2236"\n' in read(root, "etc/default/grub")
    headers = [d["after_header"] for d in result["diff"]]
    assert headers[0] == "/etc/default/grub"
    assert sorted(headers[1:]) == sorted(
        "/boot/loader/entries/%s (as grubby will write it)" % name
        for name in os.listdir(os.path.join(root, "boot/loader/entries"))
    )
    for diff in result["diff"]:
        path = diff["before_header"].lstrip("/")
        assert read(root, path) == diff["after"], path
    assert predicted["diff"] == result["diff"]
    assert warning_messages(result) == []

    again = run_module("kernel_cmdline", args)
    assert again["changed"] is False
    assert len(fake_commands.calls()) == 1


def test_grubby_update_false_edits_only_the_defaults(run_module, boot_tree, fake_commands, as_host):
    root = boot_tree("rocky9-grubby")
    fake_commands.install_grubby(root)
    entries = snapshot(os.path.join(root, "boot"))
    result = run_module("kernel_cmdline", {"root": root, "present": ["iommu=pt"], "update": False})
    assert result["changed"] is True
    assert result["regenerate_required"] is True
    assert names(result["commands"]) == [["grubby", "--update-kernel=ALL", "--args=iommu=pt"]]
    assert "iommu=pt" not in result["configured"]
    assert fake_commands.calls() == []
    assert snapshot(os.path.join(root, "boot")) == entries


def test_grubby_image_tree_edits_the_entries_directly(run_module, boot_tree, fake_commands):
    root = boot_tree("rocky9-grubby")
    fake_commands.install_grubby(root)
    result = run_module("kernel_cmdline", {"root": root, "present": ["intel_iommu=on"]}, diff=True)
    assert result["changed"] is True
    assert result["regenerate_required"] is False
    assert result["commands"] == []
    assert fake_commands.calls() == []
    for name in os.listdir(os.path.join(root, "boot/loader/entries")):
        assert "rhgb quiet" in read(root, "boot/loader/entries/" + name)
        assert read(root, "boot/loader/entries/" + name).count("intel_iommu=on") == 1
    assert all("as grubby" not in d["after_header"] for d in result["diff"])
    assert run_module("kernel_cmdline", {"root": root, "present": ["intel_iommu=on"]})["changed"] is False


def test_rhel8_kernelopts_in_grubenv(run_module, boot_tree):
    root = boot_tree("rhel8-kernelopts")
    entry_dir = os.path.join(root, "boot/loader/entries")
    entry = snapshot(entry_dir)
    result = run_module("kernel_cmdline", {"root": root, "present": ["intel_iommu=on"]}, diff=True)
    assert result["changed"] is True
    assert snapshot(entry_dir) == entry
    grubenv = read(root, "boot/grub2/grubenv")
    assert len(grubenv.encode()) == 1024
    assert "kernelopts=root=/dev/mapper/rhel-root ro crashkernel=auto" in grubenv
    assert "rhgb quiet intel_iommu=on\n" in grubenv
    assert result["configured"][-1] == "intel_iommu=on"
    assert run_module("kernel_cmdline", {"root": root, "present": ["intel_iommu=on"]})["changed"] is False


# ------------------------------------------------------------------------------ systemd-boot


def test_systemd_boot_edits_kernel_cmdline_and_reinstalls_each_kernel(run_module, boot_tree, fake_commands, as_host):
    root = boot_tree("systemd-boot")
    fake_commands.install("kernel-install")
    result = run_module("kernel_cmdline", {"root": root, "present": ["amd_iommu=on"], "absent": ["splash"]})
    assert result["bootloader"] == "systemd-boot"
    assert read(root, "etc/kernel/cmdline") == "root=UUID=1b2c3d4e-5f60-4718-92a3-b4c5d6e7f809 rw quiet amd_iommu=on\n"
    assert names(fake_commands.calls()) == [
        ["kernel-install", "add", "6.8.9-300.fc40.x86_64", "/lib/modules/6.8.9-300.fc40.x86_64/vmlinuz"],
        ["kernel-install", "add", "6.9.7-200.fc40.x86_64", "/lib/modules/6.9.7-200.fc40.x86_64/vmlinuz"],
    ]
    assert (
        run_module("kernel_cmdline", {"root": root, "present": ["amd_iommu=on"], "absent": ["splash"]})["changed"]
        is False
    )
    assert len(fake_commands.calls()) == 2


def test_systemd_boot_creates_kernel_cmdline_from_the_running_one(run_module, boot_tree, fake_commands, as_host):
    root = boot_tree("debian-systemd-boot")
    fake_commands.install("kernel-install")
    result = run_module("kernel_cmdline", {"root": root, "present": ["intel_iommu=on"]}, diff=True)
    assert (
        read(root, "etc/kernel/cmdline") == "root=UUID=0a1b2c3d-4e5f-4061-8273-94a5b6c7d8e9 ro quiet intel_iommu=on\n"
    )
    assert result["diff"][0]["before_header"] == "/etc/kernel/cmdline (absent)"
    assert names(fake_commands.calls()) == [
        ["kernel-install", "add", "6.1.0-18-amd64", "/boot/vmlinuz-6.1.0-18-amd64", "/boot/initrd.img-6.1.0-18-amd64"]
    ]


# ------------------------------------------------------------------------------ Proxmox


def test_proxmox_uefi_esps_use_kernel_cmdline_and_refresh(run_module, boot_tree, fake_commands, as_host):
    root = boot_tree("proxmox-zfs-uefi")
    fake_commands.install("proxmox-boot-tool")
    grub = read(root, "etc/default/grub")
    result = run_module("kernel_cmdline", {"root": root, "present": IOMMU})
    assert result["bootloader"] == "proxmox"
    assert result["configured"] == ["root=ZFS=rpool/ROOT/pve-1", "boot=zfs", "intel_iommu=on", "iommu=pt"]
    assert read(root, "etc/kernel/cmdline") == "root=ZFS=rpool/ROOT/pve-1 boot=zfs intel_iommu=on iommu=pt\n"
    assert read(root, "etc/default/grub") == grub
    assert names(fake_commands.calls()) == [["proxmox-boot-tool", "refresh"]]


def test_proxmox_bios_esps_use_grub_defaults_and_refresh(run_module, boot_tree, fake_commands, as_host):
    root = boot_tree("proxmox-zfs-bios")
    fake_commands.install("proxmox-boot-tool")
    fake_commands.install("update-grub")
    result = run_module("kernel_cmdline", {"root": root, "present": ["amd_iommu=on"]})
    assert result["bootloader"] == "proxmox"
    assert result["configured"] == ["root=ZFS=rpool/ROOT/pve-1", "boot=zfs", "quiet", "amd_iommu=on"]
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="quiet amd_iommu=on"\n' in read(root, "etc/default/grub")
    assert names(fake_commands.calls()) == [["proxmox-boot-tool", "refresh"]]


@pytest.mark.parametrize("requested, reported", [("auto", "grub"), ("proxmox", "proxmox")])
def test_proxmox_without_managed_esps_is_plain_grub(run_module, boot_tree, fake_commands, as_host, requested, reported):
    root = boot_tree("proxmox-lvm-grub")
    fake_commands.install("proxmox-boot-tool")
    fake_commands.install("update-grub")
    result = run_module("kernel_cmdline", {"root": root, "present": ["iommu=pt"], "bootloader": requested})
    assert result["bootloader"] == reported
    assert names(fake_commands.calls()) == [["update-grub"]]


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "args, message",
    [
        ({"present": ["intel_iommu=on iommu=pt"]}, "contains ' '"),
        ({"present": ['acpi_osi="Linux"']}, "contains '\"'"),
        ({"present": ["=on"]}, "empty key"),
        ({"present": [""]}, "an argument is empty"),
        ({"present": ["intel_iommu=on"], "absent": ["intel_iommu"]}, "cannot be both"),
        ({"present": ["iommu=pt", "iommu=nopt"]}, "takes one value"),
        ({"bootloader": "grubby"}, "no /boot/loader/entries/*.conf"),
        ({"bootloader": "lilo"}, "value of bootloader must be one of"),
    ],
)
def test_bad_input_fails_and_changes_nothing(run_module, boot_tree, fake_commands, as_host, args, message):
    root = boot_tree("debian-grub")
    fake_commands.install("update-grub")
    before = snapshot(root)
    result = run_module("kernel_cmdline", dict({"root": root, "present": ["iommu=pt"]}, **args))
    assert result["failed"] is True
    assert message in result["msg"]
    assert snapshot(root) == before
    assert fake_commands.calls() == []


# ------------------------------------------------------------------------------ architecture

GRUB_WITH = 'GRUB_CMDLINE_LINUX_DEFAULT="quiet %s"\nGRUB_CMDLINE_LINUX=""\n'


def grub_host(make_host, name, line="splash", files=None):
    """A fixture host (its sysfs, procfs and cpuinfo) whose /etc/default/grub holds ``line``."""
    return make_host(name, files=dict(files or {}, **{"etc/default/grub": GRUB_WITH % line}))


@pytest.mark.parametrize(
    ("host", "changes", "present", "words"),
    [
        ("grace_hopper", {}, ["intel_iommu=on"], ["'intel_iommu=on'", "x86 only", "this host is aarch64 (from "
                                                  "/proc/cpuinfo in the tree)", "iommu.passthrough=1"]),
        ("grace_hopper", {}, ["iommu.passthrough=1", "INTEL-IOMMU=on,sm_on"], ["'INTEL-IOMMU=on,sm_on'", "aarch64"]),
        ("grace_hopper", {}, ["iommu=pt"], ["'iommu=pt'", "use iommu.passthrough=1"]),
        ("grace_hopper", {"files": {"proc/cpuinfo": None}}, ["amd_iommu=on"],
         ["'amd_iommu=on'", "this host is aarch64 (from the IOMMU units in /sys/class/iommu"]),
        ("desktop_dgpu", {}, ["arm-smmu-v3.disable_msipolling=1"],
         ["'arm-smmu-v3.disable_msipolling=1'", "arm64 only", "this host is x86_64", "no arm_smmu_v3 module",
          "intel_iommu=on"]),
        ("power9_host", {}, ["intel_iommu=on"], ["'intel_iommu=on'", "this host is ppc64le", "sPAPR TCE"]),
    ],
)
def test_an_argument_of_another_architecture_is_refused_and_nothing_changes(
    run_module, make_host, host, changes, present, words
):
    root = grub_host(make_host, host, **changes)
    before = snapshot(root)

    for check_mode in (True, False):
        result = run_module("kernel_cmdline", {"root": root, "present": present}, check_mode=check_mode)
        assert result["failed"] is True and result["changed"] is False
        for word in words:
            assert word in result["msg"], (word, result["msg"])
        assert "Nothing was changed" in result["msg"]
        assert snapshot(root) == before


@pytest.mark.parametrize(
    ("host", "present", "absent", "configured"),
    [
        ("desktop_dgpu", ["intel_iommu=on,sm_on", "iommu=pt", "iommu.strict=1"], [],
         ["quiet", "splash", "intel_iommu=on,sm_on", "iommu=pt", "iommu.strict=1"]),
        # Taking x86 words off an arm64 host is the way to repair it.
        ("grace_hopper", ["iommu.passthrough=1"], ["intel_iommu", "iommu"], ["quiet", "splash", "iommu.passthrough=1"]),
        ("power9_host", ["iommu=nobypass"], ["intel_iommu"], ["quiet", "splash", "iommu=nobypass"]),
    ],
)
def test_the_host_architectures_own_arguments_are_set(run_module, make_host, host, present, absent, configured):
    root = grub_host(make_host, host, line="splash intel_iommu=on iommu=pt" if host != "desktop_dgpu" else "splash")

    result = run_module("kernel_cmdline", {"root": root, "present": present, "absent": absent})

    assert result.get("failed") is not True, result
    assert result["changed"] is True and result["configured"] == configured
    assert run_module("kernel_cmdline", {"root": root, "present": present, "absent": absent})["changed"] is False


def test_the_live_host_is_judged_by_the_running_kernel(run_module, make_host, fake_commands, as_host):
    # The tree's cpuinfo says aarch64, but root stands for this machine's /: its kernel counts.
    root = grub_host(make_host, "grace_hopper")
    fake_commands.install("update-grub")
    machine = os.uname().machine
    foreign = "arm-smmu-v3.disable_msipolling=1" if machine in ("x86_64", "i686") else "intel_iommu=on"
    before = snapshot(root)
    result = run_module("kernel_cmdline", {"root": root, "present": [foreign]})
    assert result["failed"] is True and "from the running kernel (uname -m)" in result["msg"]
    assert snapshot(root) == before and fake_commands.calls() == []


def test_a_tree_that_does_not_tell_its_architecture_takes_any_argument(run_module, boot_tree):
    # An image tree with no programs, cpuinfo or IOMMU to read: nothing to judge by.
    root = boot_tree("debian-grub")
    result = run_module("kernel_cmdline", {"root": root, "present": ["intel_iommu=on", "arm-smmu-v3.x=1"]})
    assert result["changed"] is True and result["configured"][-2:] == ["intel_iommu=on", "arm-smmu-v3.x=1"]


def test_undetected_bootloader_fails_clearly(run_module, boot_tree):
    root = boot_tree("unknown")
    result = run_module("kernel_cmdline", {"root": root, "present": ["iommu=pt"]})
    assert result["failed"] is True
    assert "no bootloader configuration recognised" in result["msg"]
    assert "set bootloader explicitly" in result["msg"]


def test_unsupported_grub_assignment_fails_before_any_change(run_module, boot_tree):
    root = boot_tree("debian-grub")
    os.makedirs(os.path.join(root, "etc/default/grub.d"))
    with open(os.path.join(root, "etc/default/grub.d/99-extra.cfg"), "w") as handle:
        handle.write('GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT $EXTRA_ARGS"\n')
    before = snapshot(root)
    result = run_module("kernel_cmdline", {"root": root, "present": ["iommu=pt"]})
    assert result["failed"] is True
    assert "/etc/default/grub.d/99-extra.cfg line 1" in result["msg"]
    assert "$EXTRA_ARGS" in result["msg"]
    assert snapshot(root) == before


# ------------------------------------------------------------------------------ systemd-boot entries of its own

ARCH_ROOT = "root=UUID=7e1f0c3a-52b8-4d6e-9a41-c8b2f0e6d193 rw"


def test_systemd_boot_entries_kernel_install_did_not_write_are_edited_in_place(
    run_module, boot_tree, fake_commands, as_host
):
    # Arch: arch.conf and arch-fallback.conf written by hand; kernel-install is there (systemd) and the
    # kernel ships /usr/lib/modules/<release>/vmlinuz, but it made none of the entries that boot.
    root = boot_tree("arch-systemd-boot")
    fake_commands.install("kernel-install")
    args = {"root": root, "present": IOMMU, "absent": ["splash"]}
    predicted = run_module("kernel_cmdline", args, check_mode=True, diff=True)
    result = run_module("kernel_cmdline", args, diff=True)
    assert result["rc"] == 0, result
    assert result["bootloader"] == "systemd-boot"
    assert fake_commands.calls() == [] and result["commands"] == []
    # arch.conf, the entry loader.conf boots by default (arch-fallback.conf, without quiet, sorts first).
    assert result["configured"] == ARCH_ROOT.split() + ["quiet"] + IOMMU
    assert "options %s quiet intel_iommu=on iommu=pt\n" % ARCH_ROOT in read(root, "boot/loader/entries/arch.conf")
    assert "options %s intel_iommu=on iommu=pt\n" % ARCH_ROOT in read(root, "boot/loader/entries/arch-fallback.conf")
    assert "initrd  /intel-ucode.img\ninitrd  /initramfs-linux.img\n" in read(root, "boot/loader/entries/arch.conf")
    assert not os.path.exists(os.path.join(root, "etc/kernel/cmdline"))
    assert sorted(d["before_header"] for d in result["diff"]) == [
        "/boot/loader/entries/arch-fallback.conf", "/boot/loader/entries/arch.conf"]
    assert result["regenerate_required"] is False and warning_messages(result) == []
    for key in ("changed", "configured", "added", "removed", "commands", "diff"):
        assert predicted[key] == result[key], key
    assert run_module("kernel_cmdline", args)["changed"] is False


def test_systemd_boot_entries_of_both_kinds_each_get_the_arguments(run_module, boot_tree, fake_commands, as_host):
    root = boot_tree("arch-systemd-boot")
    entries = os.path.join(root, "boot/loader/entries")
    with open(os.path.join(entries, "3f2a9c1e6b7d48e0a5c4b3d2e1f0a9b8-6.12.4-arch1-1.conf"), "w") as handle:
        handle.write("title Arch Linux\nversion 6.12.4-arch1-1\noptions %s quiet\nlinux /vmlinuz\n" % ARCH_ROOT)
    fake_commands.install("kernel-install")
    result = run_module("kernel_cmdline", {"root": root, "present": ["iommu=pt"]})
    assert result["rc"] == 0, result
    assert "iommu=pt" in read(root, "boot/loader/entries/arch.conf")
    # Started from the running command line without the initrd= words the loader added.
    assert read(root, "etc/kernel/cmdline") == "%s quiet iommu=pt\n" % ARCH_ROOT
    release = "6.12.4-arch1-1"
    assert names(fake_commands.calls()) == [["kernel-install", "add", release, "/lib/modules/%s/vmlinuz" % release]]


def test_systemd_boot_entries_named_after_kernel_installs_own_machine_id_come_from_etc_kernel_cmdline(
    run_module, boot_tree, fake_commands, as_host
):
    # /etc/machine-info gives kernel-install the machine ID it names its entries after: they are its
    # own, rewritten from /etc/kernel/cmdline, not entries to edit in place.
    root = boot_tree("arch-systemd-boot")
    entries = os.path.join(root, "boot/loader/entries")
    for name in os.listdir(entries):
        os.remove(os.path.join(entries, name))
    release = "6.12.4-arch1-1"
    entry = os.path.join(entries, "0a1b2c3d4e5f60718293a4b5c6d7e8f9-%s.conf" % release)
    text = "title Arch Linux\nversion %s\noptions %s quiet\nlinux /vmlinuz\n" % (release, ARCH_ROOT)
    with open(entry, "w") as handle:
        handle.write(text)
    with open(os.path.join(root, "etc/machine-info"), "w") as handle:
        handle.write("KERNEL_INSTALL_MACHINE_ID=0a1b2c3d4e5f60718293a4b5c6d7e8f9\n")
    fake_commands.install("kernel-install")
    result = run_module("kernel_cmdline", {"root": root, "present": ["iommu=pt"]})
    assert result["rc"] == 0, result
    assert read(root, "etc/kernel/cmdline") == "%s quiet iommu=pt\n" % ARCH_ROOT
    assert names(fake_commands.calls()) == [["kernel-install", "add", release, "/lib/modules/%s/vmlinuz" % release]]
    with open(entry) as handle:
        assert handle.read() == text


# ------------------------------------------------------------------------------ sdboot-manage (CachyOS)

CACHYOS_ROOT = "root=UUID=2b9c4e71-8d3a-4f6b-a1e5-0c7d9f3b6a28 rw rootflags=subvol=/@"
CACHYOS_OPTIONS = "zswap.enabled=0 nowatchdog quiet splash"


def test_sdboot_manage_options_are_edited_and_its_entries_written_again(run_module, boot_tree, fake_commands, as_host):
    # CachyOS: sdboot-manage writes every entry again from LINUX_OPTIONS at each kernel install, so an
    # entry edited in place would lose the arguments at the next kernel update.
    root = boot_tree("cachyos-sdboot-manage")
    fake_commands.install_sdboot_manage(root, CACHYOS_ROOT)
    fake_commands.install("kernel-install")
    args = {"root": root, "present": ["amd_iommu=on", "iommu=pt"], "absent": ["splash"]}
    predicted = run_module("kernel_cmdline", args, check_mode=True, diff=True)
    assert fake_commands.calls() == []
    result = run_module("kernel_cmdline", args, diff=True)
    assert result["rc"] == 0 and result["changed"] is True, result
    assert result["bootloader"] == "sdboot-manage"
    assert names(fake_commands.calls()) == [["sdboot-manage", "gen"]]
    config = read(root, "etc/sdboot-manage.conf")
    assert 'LINUX_OPTIONS="zswap.enabled=0 nowatchdog quiet amd_iommu=on iommu=pt"\n' in config
    assert result["configured"] == ["zswap.enabled=0", "nowatchdog", "quiet", "amd_iommu=on", "iommu=pt"]
    assert [d["before_header"] for d in result["diff"]] == ["/etc/sdboot-manage.conf"]
    for key in ("changed", "configured", "added", "removed", "commands", "diff"):
        assert predicted[key] == result[key], key
    # The entries sdboot-manage wrote carry them; the fallback entry keeps LINUX_FALLBACK_OPTIONS.
    entry = read(root, "boot/loader/entries/linux-cachyos.conf")
    assert "options\t%s zswap.enabled=0 nowatchdog quiet amd_iommu=on iommu=pt\n" % CACHYOS_ROOT in entry
    assert "iommu" not in read(root, "boot/loader/entries/linux-cachyos-fallback.conf")
    assert run_module("kernel_cmdline", args)["changed"] is False
    assert names(fake_commands.calls()) == [["sdboot-manage", "gen"]]


def test_sdboot_manage_without_linux_options_gets_the_variable(run_module, boot_tree, fake_commands, as_host):
    root = boot_tree("cachyos-sdboot-manage")
    path = os.path.join(root, "etc/sdboot-manage.conf")
    with open(path) as handle:
        text = handle.read().replace('LINUX_OPTIONS="%s"' % CACHYOS_OPTIONS, '#LINUX_OPTIONS=""')
    with open(path, "w") as handle:
        handle.write(text)
    fake_commands.install_sdboot_manage(root, CACHYOS_ROOT)
    result = run_module("kernel_cmdline", {"root": root, "present": ["iommu=pt"]})
    assert result["rc"] == 0, result
    assert read(root, "etc/sdboot-manage.conf") == text + 'LINUX_OPTIONS="iommu=pt"\n'
    assert "options\t%s iommu=pt\n" % CACHYOS_ROOT in read(root, "boot/loader/entries/linux-cachyos.conf")


def test_a_failing_sdboot_manage_puts_its_configuration_back(run_module, boot_tree, fake_commands, as_host):
    root = boot_tree("cachyos-sdboot-manage")
    fake_commands.install("sdboot-manage", stdout="Error: /boot/loader/entries does not exist\n", rc=1)
    before = snapshot(root)
    result = run_module("kernel_cmdline", {"root": root, "present": ["iommu=pt"]})
    assert result["failed"] is True
    assert "sdboot-manage gen failed (rc 1): Error: /boot/loader/entries does not exist" in result["msg"]
    assert snapshot(root) == before


# ------------------------------------------------------------------------------ unified kernel images

UKI_CMDLINE = ARCH_ROOT + " quiet"


def test_unified_kernel_images_from_mkinitcpio_are_rebuilt_from_etc_kernel_cmdline(
    run_module, boot_tree, fake_commands, as_host
):
    # Arch booting the UKIs its mkinitcpio presets build (default_uki=): the command line is built into
    # them, from /etc/kernel/cmdline; loader entries and kernel-install play no part.
    root = boot_tree("arch-uki")
    fake_commands.install_mkinitcpio(root)
    fake_commands.install("kernel-install")
    args = {"root": root, "present": IOMMU}
    predicted = run_module("kernel_cmdline", args, check_mode=True, diff=True)
    assert fake_commands.calls() == []
    result = run_module("kernel_cmdline", args, diff=True)
    assert result["rc"] == 0 and result["changed"] is True, result
    assert result["bootloader"] == "systemd-boot"
    assert read(root, "etc/kernel/cmdline") == UKI_CMDLINE + " intel_iommu=on iommu=pt\n"
    assert names(fake_commands.calls()) == [["mkinitcpio", "-P"]]
    assert result["configured"] == UKI_CMDLINE.split() + IOMMU
    assert [d["before_header"] for d in result["diff"]] == ["/etc/kernel/cmdline"]
    for key in ("changed", "configured", "added", "removed", "commands", "diff"):
        assert predicted[key] == result[key], key
    assert not os.path.exists(os.path.join(root, "efi/loader/entries"))
    # The images were rebuilt with the arguments, and read back: no warning.
    for image in ("arch-linux.efi", "arch-linux-fallback.efi"):
        path = os.path.join(root, "efi/EFI/Linux", image)
        assert uki.section(path, ".cmdline").decode().split() == UKI_CMDLINE.split() + IOMMU
    assert warning_messages(result) == []
    second = run_module("kernel_cmdline", args)
    assert second["changed"] is False and names(fake_commands.calls()) == [["mkinitcpio", "-P"]]


def test_comment_lines_of_etc_kernel_cmdline_stay_comments(run_module, boot_tree, fake_commands, as_host, put_file):
    # mkinitcpio builds an image's command line from the lines that do not start with '#' (build_uefi:
    # grep '^[^#]'); the file may also spread the arguments over several lines.
    root = boot_tree("arch-uki")
    put_file(root, "etc/kernel/cmdline", "# written by the installer\n%s\n# console\nquiet\n" % ARCH_ROOT)
    fake_commands.install_mkinitcpio(root)
    unchanged = run_module("kernel_cmdline", {"root": root, "present": ["quiet"]})
    assert unchanged["changed"] is False and unchanged["configured"] == UKI_CMDLINE.split()
    result = run_module("kernel_cmdline", {"root": root, "present": ["iommu=pt"]})
    assert result["rc"] == 0 and result["changed"] is True, result
    assert result["configured"] == UKI_CMDLINE.split() + ["iommu=pt"]
    assert read(root, "etc/kernel/cmdline") == "# written by the installer\n# console\n%s iommu=pt\n" % UKI_CMDLINE
    for image in ("arch-linux.efi", "arch-linux-fallback.efi"):
        path = os.path.join(root, "efi/EFI/Linux", image)
        assert uki.section(path, ".cmdline").decode().split() == UKI_CMDLINE.split() + ["iommu=pt"]
    assert warning_messages(result) == []


def test_unified_kernel_images_that_the_rebuild_left_as_they_were_are_reported(
    run_module, boot_tree, fake_commands, as_host
):
    # The images carry the command line of their last build; a rebuild that did not take the new
    # /etc/kernel/cmdline (a generator reading another source) leaves them so: the read-back says so.
    root = boot_tree("arch-uki")
    fake_commands.install_mkinitcpio(root)
    subprocess.run([os.path.join(fake_commands.bin, "mkinitcpio"), "-P"], check=True)
    fake_commands.install("mkinitcpio")  # a rebuild that changes nothing
    result = run_module("kernel_cmdline", {"root": root, "present": ["iommu=pt"]})
    assert result["rc"] == 0 and result["changed"] is True, result
    messages = warning_messages(result)
    assert len(messages) == 2, messages
    assert ("after mkinitcpio -P, the unified kernel image /efi/EFI/Linux/arch-linux-fallback.efi carries %r, "
            "expected %r" % (UKI_CMDLINE.split(), UKI_CMDLINE.split() + ["iommu=pt"])) in messages[0]


def test_unified_kernel_images_from_kernel_install_and_ukify(
    run_module, boot_tree, fake_commands, as_host, put_file
):
    root = boot_tree("arch-uki")
    os.remove(os.path.join(root, "etc/mkinitcpio.d/linux.preset"))
    put_file(root, "etc/kernel/install.conf", "layout=uki\nuki_generator=ukify\n")
    fake_commands.install("kernel-install")
    result = run_module("kernel_cmdline", {"root": root, "present": ["iommu=pt"]})
    assert result["rc"] == 0, result
    assert read(root, "etc/kernel/cmdline") == UKI_CMDLINE + " iommu=pt\n"
    release = "6.12.4-arch1-1"
    assert names(fake_commands.calls()) == [["kernel-install", "add", release, "/lib/modules/%s/vmlinuz" % release]]


@pytest.mark.parametrize(
    "change, message",
    [
        # mkinitcpio reads the drop-ins: an edit of /etc/kernel/cmdline would not reach the images.
        ({"etc/cmdline.d/root.conf": "root=UUID=7e1f0c3a rw\n"}, "from the drop-ins in /etc/cmdline.d (root.conf)"),
        ({"etc/mkinitcpio.d/linux-lts.preset": 'PRESETS=(default)\ndefault_uki="/efi/EFI/Linux/lts.efi"\n'
          'default_options="--cmdline /etc/kernel/cmdline-lts"\n'},
         "linux-lts.preset builds them with --cmdline /etc/kernel/cmdline-lts"),
        ({"etc/kernel/install.conf": "layout=uki\n", "etc/kernel/uki.conf": "[UKI]\nCmdline=rw quiet\n"},
         "/etc/kernel/uki.conf sets Cmdline="),
        ({"etc/mkinitcpio.d/linux.preset": None, "etc/dracut.conf.d/uki.conf": 'uefi="yes"\n'},
         "by dracut (uefi=yes)"),
        ({"etc/mkinitcpio.d/linux.preset": None}, "no generator that builds them from /etc/kernel/cmdline"),
    ],
)
def test_unified_kernel_images_built_from_elsewhere_are_refused_with_nothing_changed(
    run_module, boot_tree, fake_commands, as_host, put_file, change, message
):
    root = boot_tree("arch-uki")
    for path, text in change.items():
        if text is None:
            os.remove(os.path.join(root, path))
        else:
            put_file(root, path, text)
    fake_commands.install("mkinitcpio")
    fake_commands.install("kernel-install")
    before = snapshot(root)
    result = run_module("kernel_cmdline", {"root": root, "present": IOMMU})
    assert result["failed"] is True, result
    assert "boots unified kernel images (/efi/EFI/Linux/arch-linux-fallback.efi, /efi/EFI/Linux/arch-linux.efi)" \
        in result["msg"]
    assert message in result["msg"]
    assert snapshot(root) == before and fake_commands.calls() == []


# ------------------------------------------------------------------------------ OSTree (rpm-ostree kargs)

COREOS_KARGS = [
    "mitigations=auto,nosmt",
    "ignition.platform.id=metal",
    "$ignition_firstboot",
    "root=UUID=5b6e1a8c-7f2d-4c3b-9a1e-0d8f7c6b5a49",
    "rw",
    "rootflags=prjquota",
    "boot=UUID=8e4d2c1b-3a5f-4e6d-9c8b-7a6f5e4d3c2b",
]


def staged(fake_commands):
    with open(fake_commands.staged_kargs) as handle:
        return handle.read().split()


def test_ostree_host_stages_the_arguments_with_rpm_ostree_kargs(run_module, boot_tree, fake_commands, as_host):
    root = boot_tree("fedora-coreos")
    fake_commands.install_rpm_ostree(root)
    before = snapshot(root)
    args = {"root": root, "present": IOMMU + ["vfio-pci.ids=10de:2236"]}
    predicted = run_module("kernel_cmdline", args, check_mode=True, diff=True)
    assert names(fake_commands.calls()) == [["rpm-ostree", "kargs"]]
    assert not os.path.exists(fake_commands.staged_kargs)

    result = run_module("kernel_cmdline", args, diff=True)
    assert result["rc"] == 0, result
    assert result["bootloader"] == "ostree"
    command = ["rpm-ostree", "kargs", "--append=intel_iommu=on", "--append=iommu=pt", "--append=vfio-pci.ids=10de:2236"]
    assert names(fake_commands.calls()[1:]) == [["rpm-ostree", "kargs"], command, ["rpm-ostree", "kargs"]]
    assert names(result["commands"]) == [command]
    # The deployment's own ostree= argument is neither reported nor touched.
    assert result["configured"] == COREOS_KARGS + ["intel_iommu=on", "iommu=pt", "vfio-pci.ids=10de:2236"]
    assert [word for word in staged(fake_commands) if not word.startswith("ostree=")] == result["configured"]
    assert result["added"] == ["intel_iommu=on", "iommu=pt", "vfio-pci.ids=10de:2236"] and result["removed"] == []
    assert result["reboot_required"] is True and result["regenerate_required"] is False
    assert result["diff"] == [{
        "before": " ".join(COREOS_KARGS) + "\n",
        "after": " ".join(result["configured"]) + "\n",
        "before_header": "rpm-ostree kargs (the next boot's deployment)",
        "after_header": "rpm-ostree kargs (the next boot's deployment) (as rpm-ostree will stage it)",
    }]
    assert warning_messages(result) == []
    for key in ("changed", "configured", "added", "removed", "commands", "diff", "reboot_required"):
        assert predicted[key] == result[key], key
    assert snapshot(root) == before  # no boot file is edited: the new deployment is rpm-ostree's

    # The next run reads the staged deployment and has nothing to do.
    again = run_module("kernel_cmdline", args)
    assert again["changed"] is False and again["commands"] == []
    assert again["configured"] == result["configured"] and again["reboot_required"] is True
    assert names(fake_commands.calls()[4:]) == [["rpm-ostree", "kargs"]]


def test_ostree_replaced_and_removed_arguments_are_deleted_by_their_text(
    run_module, boot_tree, fake_commands, as_host
):
    root = boot_tree("fedora-coreos")
    entry = os.path.join(root, "boot/loader/entries/ostree-2-fedora-coreos.conf")
    text = read(root, "boot/loader/entries/ostree-2-fedora-coreos.conf")
    with open(entry, "w") as handle:
        handle.write(text.replace("ignition.platform.id=metal", "intel_iommu=off nomodeset ignition.platform.id=metal"))
    fake_commands.install_rpm_ostree(root)
    result = run_module("kernel_cmdline", {"root": root, "present": ["intel_iommu=on"], "absent": ["nomodeset"]})
    assert result["changed"] is True, result
    assert names(result["commands"]) == [
        ["rpm-ostree", "kargs", "--delete=intel_iommu=off", "--delete=nomodeset", "--append=intel_iommu=on"]
    ]
    assert result["removed"] == ["intel_iommu=off", "nomodeset"] and result["added"] == ["intel_iommu=on"]
    kargs = staged(fake_commands)
    assert "intel_iommu=off" not in kargs and "nomodeset" not in kargs and kargs[-1] == "intel_iommu=on"
    assert result["configured"] == [word for word in kargs if not word.startswith("ostree=")]
    assert warning_messages(result) == []


def test_ostree_wins_over_the_grub_files_an_atomic_desktop_also_carries(run_module, boot_tree, fake_commands, as_host):
    # Silverblue and RHEL for Edge also ship /etc/default/grub, grub2-mkconfig and grubby; editing
    # them would report a change that no deployment ever boots with.
    root = boot_tree("fedora-coreos")
    os.makedirs(os.path.join(root, "etc/default"))
    with open(os.path.join(root, "etc/default/grub"), "w") as handle:
        handle.write('GRUB_CMDLINE_LINUX="rhgb quiet"\n')
    fake_commands.install_grubby(root)
    fake_commands.install("grub2-mkconfig")
    fake_commands.install_rpm_ostree(root)
    result = run_module("kernel_cmdline", {"root": root, "present": ["amd_iommu=on"]})
    assert result["bootloader"] == "ostree"
    assert read(root, "etc/default/grub") == 'GRUB_CMDLINE_LINUX="rhgb quiet"\n'
    assert [call[0] for call in names(fake_commands.calls())] == ["rpm-ostree"] * 3
    assert staged(fake_commands)[-1] == "amd_iommu=on"


def test_ostree_update_false_leaves_the_change_to_run(run_module, boot_tree, fake_commands, as_host):
    root = boot_tree("fedora-coreos")
    fake_commands.install_rpm_ostree(root)
    result = run_module("kernel_cmdline", {"root": root, "present": ["iommu=pt"], "update": False})
    assert result["changed"] is False and result["regenerate_required"] is True
    assert names(result["commands"]) == [["rpm-ostree", "kargs", "--append=iommu=pt"]]
    assert result["configured"] == COREOS_KARGS and result["added"] == []
    assert names(fake_commands.calls()) == [["rpm-ostree", "kargs"]]


@pytest.mark.parametrize(
    "setup, args, message",
    [
        ("tree", {"present": ["iommu=pt"]}, "are changed with rpm-ostree kargs on the booted host"),
        ("no rpm-ostree", {"present": ["iommu=pt"]}, "rpm-ostree was not found"),
        ("busy", {"present": ["iommu=pt"]}, "rpm-ostree kargs failed (rc 1): error: Transaction in progress"),
        ("host", {"present": ["ostree=/ostree/boot.0/x"]}, "ostree= names the deployment to boot"),
        ("host", {"absent": ["ostree"]}, "ostree= names the deployment to boot"),
    ],
)
def test_ostree_refusals_change_nothing(run_module, boot_tree, fake_commands, monkeypatch, setup, args, message):
    root = boot_tree("fedora-coreos")
    if setup != "tree":
        monkeypatch.setattr(host_model, "is_live_root", lambda root: True)
    if setup == "busy":
        fake_commands.install_rpm_ostree(root, rc=1, stderr="error: Transaction in progress: upgrade\n")
    elif setup != "no rpm-ostree":
        fake_commands.install_rpm_ostree(root)
    before = snapshot(root)
    result = run_module("kernel_cmdline", dict(args, root=root))
    assert result["failed"] is True
    assert message in result["msg"]
    assert snapshot(root) == before and not os.path.exists(fake_commands.staged_kargs)
    assert all(call == ["rpm-ostree", "kargs"] for call in names(fake_commands.calls()))


# ------------------------------------------------------------------------------ kernelstub (Pop!_OS)

POP_ENTRY = "boot/efi/loader/entries/Pop_OS-current.conf"
POP_ROOT = "root=UUID=0c4a8e62-93d1-4f5b-a7e2-6d19b3c5f480 ro"


def kernel_options(root):
    return json.loads(read(root, "etc/kernelstub/configuration"))["user"]["kernel_options"]


def test_kernelstub_options_are_edited_and_kernelstub_writes_the_entries(run_module, boot_tree, fake_commands, as_host):
    # The host booted systemd-boot and has kernel-install, but its entries are kernelstub's.
    root = boot_tree("pop-os-kernelstub")
    fake_commands.install_kernelstub(root)
    fake_commands.install("kernel-install")
    args = {"root": root, "present": IOMMU, "absent": ["splash"]}
    predicted = run_module("kernel_cmdline", args, check_mode=True, diff=True)
    assert fake_commands.calls() == []
    result = run_module("kernel_cmdline", args, diff=True)
    assert result["rc"] == 0, result
    assert result["bootloader"] == "kernelstub"
    assert names(fake_commands.calls()) == [["kernelstub"]]
    wanted = ["quiet", "loglevel=0", "systemd.show_status=false", "intel_iommu=on", "iommu=pt"]
    assert result["configured"] == wanted == kernel_options(root)
    assert "options %s %s\n" % (POP_ROOT, " ".join(wanted)) in read(root, POP_ENTRY)
    assert not os.path.exists(os.path.join(root, "etc/kernel/cmdline"))
    assert [d["before_header"] for d in result["diff"]] == ["/etc/kernelstub/configuration"]
    for key in ("changed", "configured", "added", "removed", "commands", "diff"):
        assert predicted[key] == result[key], key
    assert result["reboot_required"] is True

    again = run_module("kernel_cmdline", args)
    assert again["changed"] is False and len(fake_commands.calls()) == 1


def test_kernelstub_replaces_a_value_where_it_stands(run_module, boot_tree, fake_commands, as_host):
    root = boot_tree("pop-os-kernelstub")
    path = os.path.join(root, "etc/kernelstub/configuration")
    config = json.loads(read(root, "etc/kernelstub/configuration"))
    config["user"]["kernel_options"].insert(1, "amd_iommu=off")
    with open(path, "w") as handle:
        json.dump(config, handle, indent=2)
    fake_commands.install_kernelstub(root)
    result = run_module("kernel_cmdline", {"root": root, "present": ["amd_iommu=on"]})
    assert result["changed"] is True and result["removed"] == ["amd_iommu=off"]
    assert kernel_options(root) == ["quiet", "amd_iommu=on", "loglevel=0", "systemd.show_status=false", "splash"]


def test_kernelstub_failure_puts_its_configuration_back(run_module, boot_tree, fake_commands, as_host):
    root = boot_tree("pop-os-kernelstub")
    fake_commands.install("kernelstub", stderr="kernelstub.Installer : ERROR Couldn't copy the kernel onto the ESP!\n",
                          rc=170)
    before = snapshot(root)
    result = run_module("kernel_cmdline", {"root": root, "present": ["iommu=pt"]})
    assert result["failed"] is True
    assert "kernelstub failed (rc 170)" in result["msg"] and "put back" in result["msg"]
    assert snapshot(root) == before


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"user": {"kernel_options": ["quiet",]}}', "is not JSON"),
        ('{"user": {"esp_path": "/boot/efi"}}', "has no list of kernel_options"),
    ],
)
def test_a_kernelstub_configuration_it_cannot_read_is_refused(
    run_module, boot_tree, fake_commands, as_host, text, message
):
    root = boot_tree("pop-os-kernelstub")
    with open(os.path.join(root, "etc/kernelstub/configuration"), "w") as handle:
        handle.write(text)
    fake_commands.install_kernelstub(root)
    before = snapshot(root)
    result = run_module("kernel_cmdline", {"root": root, "present": ["iommu=pt"]})
    assert result["failed"] is True and message in result["msg"]
    assert snapshot(root) == before and fake_commands.calls() == []


def test_kernelstub_options_given_as_one_string_are_split_as_kernelstub_does(run_module, boot_tree):
    root = boot_tree("pop-os-kernelstub")
    config = json.loads(read(root, "etc/kernelstub/configuration"))
    del config["user"]
    config["default"]["kernel_options"] = "quiet splash"
    with open(os.path.join(root, "etc/kernelstub/configuration"), "w") as handle:
        json.dump(config, handle, indent=2)
    result = run_module("kernel_cmdline", {"root": root, "present": ["iommu=pt"]})
    assert result["configured"] == ["quiet", "splash", "iommu=pt"] == kernel_options(root)
    assert json.loads(read(root, "etc/kernelstub/configuration"))["default"]["kernel_options"] == "quiet splash"


def test_grubby_host_keeps_every_console_by_editing_the_entries(run_module, boot_tree, fake_commands, as_host):
    # grubby replaces a key's value when it adds one: a second console= is written into the entries directly,
    # as the plan predicts, and the run settles.
    root = boot_tree("rocky9-grubby")
    fake_commands.install_grubby(root)
    first = run_module("kernel_cmdline", {"root": root, "present": ["console=ttyS0,115200"]})
    assert first["rc"] == 0 and len(fake_commands.calls()) == 1, first

    args = {"root": root, "present": ["console=tty0"]}
    predicted = run_module("kernel_cmdline", args, check_mode=True, diff=True)
    result = run_module("kernel_cmdline", args, diff=True)

    assert result["rc"] == 0 and result["changed"], result
    assert len(fake_commands.calls()) == 1, "no grubby run for the second console"
    assert result["commands"] == [] and predicted["diff"] == result["diff"]
    assert result["configured"][-2:] == ["console=ttyS0,115200", "console=tty0"]
    for name in os.listdir(os.path.join(root, "boot/loader/entries")):
        options = read(root, "boot/loader/entries/" + name)
        assert "console=ttyS0,115200 console=tty0" in options, options
    assert any("edited directly" in message for message in warning_messages(result)), result
    assert run_module("kernel_cmdline", args)["changed"] is False


def test_grubby_host_adds_two_consoles_at_once_and_settles(run_module, boot_tree, fake_commands, as_host):
    root = boot_tree("rocky9-grubby")
    fake_commands.install_grubby(root)
    args = {"root": root, "present": ["console=tty0", "console=ttyS0,115200"]}
    result = run_module("kernel_cmdline", args)
    assert result["rc"] == 0 and result["configured"][-2:] == ["console=tty0", "console=ttyS0,115200"], result
    assert run_module("kernel_cmdline", args)["changed"] is False
