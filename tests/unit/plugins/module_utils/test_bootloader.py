# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import os
import re
import shutil
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.gpuvirt.host.plugins.module_utils import bootloader as b
from ansible_collections.gpuvirt.host.plugins.module_utils import kernel_install


def args(present=(), absent=()):
    return b.validate_arguments(list(present), list(absent))


def planned(current, present=(), absent=(), **kwargs):
    wanted, unwanted = args(present, absent)
    return b.plan_arguments(current, wanted, unwanted, **kwargs)


def read(root, path):
    with open(os.path.join(root, path)) as handle:
        return handle.read()


# ------------------------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    "text, key, value",
    [
        ("quiet", "quiet", None),
        ("intel_iommu=on", "intel_iommu", "on"),
        ("vfio-pci.ids=10de:2236,10de:1aef", "vfio-pci.ids", "10de:2236,10de:1aef"),
        ("root=ZFS=rpool/ROOT/pve-1", "root", "ZFS=rpool/ROOT/pve-1"),
        ("modprobe.blacklist=", "modprobe.blacklist", ""),
        ('acpi_osi="Windows 2015"', "acpi_osi", "Windows 2015"),
        ('"dyndbg=file x +p"', "dyndbg", "file x +p"),
    ],
)
def test_parse_argument(text, key, value):
    argument = b.parse_argument(text)
    assert (argument.key, argument.value, argument.text) == (key, value, text)


def test_dashes_and_underscores_name_one_parameter():
    assert b.same_key(b.parse_argument("vfio-pci.ids=1"), b.parse_argument("vfio_pci.ids=2"))
    assert b.same_key(b.parse_argument("log-buf-len=1M"), b.parse_argument("log_buf_len=2M"))
    assert not b.same_key(b.parse_argument("vfio-pci.ids=1"), b.parse_argument("vfio.ids=1"))


@pytest.mark.parametrize(
    "present, absent, message",
    [
        ([""], [], "empty"),
        (["=on"], [], "empty key"),
        (["intel_iommu=on iommu=pt"], [], "contains ' '"),
        (["iommu=pt\n"], [], "contains '\\n'"),
        (['acpi_osi="Linux"'], [], "contains '\"'"),
        (["acpi_osi='Linux'"], [], 'contains "\'"'),
        (["memmap=12M$0x1000000"], [], "contains '$'"),
        (["a=`id`"], [], "contains '`'"),
        (["a=b;reboot"], [], "contains ';'"),
        (["--"], [], "separates init arguments"),
        ([], ["quiet splash"], "absent: argument"),
        (["intel_iommu=on", "intel_iommu=off"], [], "takes one value"),
        (["intel_iommu=on"], ["intel_iommu"], "cannot be both"),
        (["intel_iommu=on"], ["intel-iommu=off"], "cannot be both"),
        (["vfio-pci.ids=10de:2236"], ["vfio_pci.ids=10de:2236"], "cannot be both"),
        (["console=ttyS0"], ["console"], "cannot be both"),
        (["console=ttyS0"], ["console=ttyS0"], "cannot be both"),
    ],
)
def test_bad_arguments_are_refused(present, absent, message):
    with pytest.raises(b.ArgumentError, match=re.escape(message)):
        args(present, absent)


def test_repeatable_key_may_keep_one_value_and_drop_another():
    wanted, unwanted = args(["console=ttyS0,115200"], ["console=tty0"])
    assert [a.text for a in wanted] == ["console=ttyS0,115200"]
    assert [a.text for a in unwanted] == ["console=tty0"]


def test_duplicates_are_merged():
    wanted, unwanted = args(["iommu=pt", "iommu=pt", "console=tty0", "console=ttyS0"], ["quiet", "quiet"])
    assert [a.text for a in wanted] == ["iommu=pt", "console=tty0", "console=ttyS0"]
    assert [a.text for a in unwanted] == ["quiet"]


# ------------------------------------------------------------------------------ list logic


def test_value_replaced_in_place_and_new_arguments_appended():
    plan = planned(["quiet", "intel_iommu=off", "splash"], ["intel_iommu=on", "iommu=pt"])
    assert plan.arguments == ["quiet", "intel_iommu=on", "splash", "iommu=pt"]
    assert plan.added == ["intel_iommu=on", "iommu=pt"]
    assert plan.removed == ["intel_iommu=off"]


def test_grubby_style_replacement_moves_the_new_value_to_the_end():
    plan = planned(["quiet", "intel_iommu=off", "splash"], ["intel_iommu=on"], replace_in_place=False)
    assert plan.arguments == ["quiet", "splash", "intel_iommu=on"]


def test_existing_spelling_of_an_equivalent_key_is_kept():
    plan = planned(["vfio_pci.ids=10de:2236"], ["vfio-pci.ids=10de:2236"])
    assert not plan.changed
    assert plan.arguments == ["vfio_pci.ids=10de:2236"]


def test_later_duplicates_of_a_single_valued_key_are_dropped():
    plan = planned(["intel_iommu=off", "quiet", "intel_iommu=on", "intel_iommu=on"], ["intel_iommu=on"])
    assert plan.arguments == ["quiet", "intel_iommu=on"]
    assert plan.removed == ["intel_iommu=off", "intel_iommu=on"]
    assert plan.added == []


def test_initcall_blacklist_accumulates_as_the_kernel_does():
    # init/main.c adds each occurrence's functions to the list: the advice for a GPU that keeps the
    # firmware framebuffer (initcall_blacklist=sysfb_init) must not drop what the host already skips.
    plan = planned(["quiet", "initcall_blacklist=acpi_cpufreq_init"], ["initcall_blacklist=sysfb_init"])
    assert plan.arguments == ["quiet", "initcall_blacklist=acpi_cpufreq_init", "initcall_blacklist=sysfb_init"]
    assert planned(plan.arguments, ["initcall_blacklist=sysfb_init"]).added == []


def test_repeatable_keys_accumulate():
    plan = planned(
        ["console=tty0", "hugepagesz=2M", "hugepages=512"], ["console=ttyS0", "hugepagesz=1G", "hugepages=16"]
    )
    assert plan.arguments == [
        "console=tty0",
        "hugepagesz=2M",
        "hugepages=512",
        "console=ttyS0",
        "hugepagesz=1G",
        "hugepages=16",
    ]


@pytest.mark.parametrize("current, present, expected", [
    # A new pool size replaces the old one: the kernel ignores a second hugepages= for one page size.
    ("quiet hugepages=1024", ["hugepages=2048"], "quiet hugepages=2048"),
    ("hugepagesz=1G hugepages=16", ["hugepagesz=1G", "hugepages=32"], "hugepagesz=1G hugepages=32"),
    ("hugepagesz=1G hugepages=16 hugepagesz=2M hugepages=512", ["hugepagesz=2M", "hugepages=1024"],
     "hugepagesz=1G hugepages=16 hugepagesz=2M hugepages=1024"),
    # The default size's pool goes before every hugepagesz=; a size's pool right after its hugepagesz=.
    ("hugepagesz=1G hugepages=16", ["hugepages=1024"], "hugepages=1024 hugepagesz=1G hugepages=16"),
    ("hugepagesz=1G quiet", ["hugepagesz=1G", "hugepages=8"], "hugepagesz=1G hugepages=8 quiet"),
    ("quiet", ["hugepagesz=1G", "hugepages=8"], "quiet hugepagesz=1G hugepages=8"),
    # The ones the kernel ignored go.
    ("hugepages=1 quiet hugepages=2", ["hugepages=3"], "hugepages=3 quiet"),
    ("hugepages=1 quiet hugepages=2", ["hugepages=1"], "hugepages=1 quiet hugepages=2"),
])
def test_hugepages_is_one_pool_per_page_size(current, present, expected):
    plan = planned(current.split(), present)
    assert " ".join(plan.arguments) == expected
    assert not planned(plan.arguments, present).changed
    assert not b.reboot_required(plan.arguments, *args(present))
    kept = current == "hugepages=1 quiet hugepages=2" and present == ["hugepages=1"]
    assert b.reboot_required(current.split(), *args(present)) is not kept


def test_hugepages_the_tool_cannot_keep_with_its_size_is_refused():
    # grubby appends what it adds: after a hugepagesz=, a default-size pool would pair with that size.
    assert planned(["quiet", "hugepages=1024"], ["hugepages=2048"], replace_in_place=False).arguments == [
        "quiet", "hugepages=2048"]
    with pytest.raises(b.ArgumentError, match="hugepages=1024 for the default page size: the kernel takes one"):
        planned(["hugepagesz=1G", "hugepages=16"], ["hugepages=1024"], replace_in_place=False)
    with pytest.raises(b.ArgumentError, match="hugepages= is given twice for page size 1G"):
        args(["hugepagesz=1G", "hugepages=8", "hugepagesz=1G", "hugepages=16"])
    # Equal pools of two sizes are two arguments.
    assert [a.text for a in args(["hugepagesz=1G", "hugepages=8", "hugepagesz=2M", "hugepages=8"])[0]] == [
        "hugepagesz=1G", "hugepages=8", "hugepagesz=2M", "hugepages=8"]


def test_absent_key_removes_every_value_and_key_value_only_that_one():
    current = ["quiet", "modprobe.blacklist=nouveau", "splash", "modprobe.blacklist=radeon", "nomodeset"]
    assert planned(current, absent=["modprobe.blacklist"]).arguments == ["quiet", "splash", "nomodeset"]
    assert planned(current, absent=["modprobe.blacklist=nouveau", "nomodeset"]).arguments == [
        "quiet",
        "splash",
        "modprobe.blacklist=radeon",
    ]


def test_bare_key_present_replaces_a_value_of_a_single_valued_key():
    assert planned(["nosmt=force"], ["nosmt"]).arguments == ["nosmt"]


def test_nothing_to_do_is_unchanged():
    plan = planned(["quiet", "intel_iommu=on"], ["intel_iommu=on"], ["splash"])
    assert not plan.changed
    assert plan.result == [(0, "quiet"), (1, "intel_iommu=on")]


ARGUMENT = st.builds(
    lambda key, value: key if value is None else "%s=%s" % (key, value),
    st.sampled_from(
        ["quiet", "intel_iommu", "intel-iommu", "iommu", "console", "vfio-pci.ids", "vfio_pci.ids", "hugepages",
         "hugepagesz"]
    ),
    st.one_of(st.none(), st.sampled_from(["on", "off", "pt", "ttyS0", "10de:2236", "1G", "2M"])),
)


@settings(max_examples=300, deadline=None)
@given(
    current=st.lists(ARGUMENT, max_size=8),
    present=st.lists(ARGUMENT, max_size=4),
    absent=st.lists(ARGUMENT, max_size=3),
)
def test_plan_meets_the_request_and_is_idempotent(current, present, absent):
    try:
        wanted, unwanted = b.validate_arguments(present, absent)
    except b.ArgumentError:
        return
    for in_place in (True, False):
        try:
            plan = b.plan_arguments(current, wanted, unwanted, replace_in_place=in_place)
        except b.ArgumentError as error:
            # Only a tool that appends can be unable to keep a hugepages= with its page size.
            assert not in_place and "hugepages" in str(error)
            continue
        after = plan.arguments
        assert not b.plan_arguments(after, wanted, unwanted, replace_in_place=in_place).changed
        assert not b.reboot_required(after, wanted, unwanted)
        # Existing arguments keep their order.
        indexes = [index for index, _text in plan.result if index is not None]
        assert indexes == sorted(indexes)
        assert plan.changed == (after != current)


def test_reboot_required_follows_the_running_kernel():
    wanted, unwanted = args(["intel_iommu=on", "console=ttyS0"], ["nomodeset"])
    assert b.reboot_required(["intel_iommu=off", "console=ttyS0"], wanted, unwanted)
    assert b.reboot_required(["intel_iommu=on", "console=ttyS0", "nomodeset"], wanted, unwanted)
    assert not b.reboot_required(
        ["intel_iommu=off", "intel-iommu=on", "console=tty0", "console=ttyS0"], wanted, unwanted
    )
    assert b.reboot_required(["intel_iommu=on", "intel_iommu=off", "console=ttyS0"], wanted, unwanted)
    assert not b.reboot_required(None, wanted, unwanted)


def test_words_after_the_init_separator_belong_to_init():
    current = ["ro", "iommu=pt", "--", "iommu=pt", "single"]
    wanted, unwanted = args([], ["iommu"])
    assert b.plan_arguments(current, wanted, unwanted).arguments == ["ro", "--", "iommu=pt", "single"]
    wanted, unwanted = args(["iommu=off"], [])
    plan = b.plan_arguments(current, wanted, unwanted)
    assert plan.arguments == ["ro", "iommu=off", "--", "iommu=pt", "single"] and plan.removed == ["iommu=pt"]
    wanted, unwanted = args(["intel_iommu=on"], [])
    with pytest.raises(b.BootloaderError, match="init arguments after '--'"):
        b.plan_arguments(current, wanted, unwanted)
    # What only init sees does not count as running in the kernel.
    assert b.reboot_required(["ro"], *args(["iommu=pt"], []))


# ------------------------------------------------------------------------------ GRUB defaults


def grub(root, target=b.LINUX_DEFAULT):
    return b.GrubDefaults.read(root, target)


def test_debian_defaults_edited_in_place_keeping_the_rest(boot_tree):
    root = boot_tree("debian-grub")
    defaults = grub(root)
    assert defaults.arguments() == ["quiet", "intel_iommu=off"]
    wanted, unwanted = args(["intel_iommu=on", "iommu=pt"])
    rendered = defaults.render(b.plan_arguments(defaults.arguments(), wanted, unwanted))
    before = read(root, "etc/default/grub")
    assert list(rendered) == ["etc/default/grub"]
    assert rendered["etc/default/grub"] == before.replace(
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet intel_iommu=off"',
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet intel_iommu=on iommu=pt"',
    )


def test_dropin_that_sets_the_variable_wins_and_is_the_one_edited(boot_tree):
    root = boot_tree("ubuntu-cloud-grub")
    defaults = grub(root)
    # /etc/default/grub's "quiet splash" is overridden by the cloud image drop-in.
    assert defaults.arguments() == ["console=tty1", "console=ttyS0"]
    assert any("init-select.cfg line 3" in w and "conditional" in w for w in defaults.warnings)
    wanted, unwanted = args(["amd_iommu=on"], ["console=tty1"])
    rendered = defaults.render(b.plan_arguments(defaults.arguments(), wanted, unwanted))
    assert list(rendered) == ["etc/default/grub.d/50-cloudimg-settings.cfg"]
    assert (
        'GRUB_CMDLINE_LINUX_DEFAULT="console=ttyS0 amd_iommu=on"\n'
        in rendered["etc/default/grub.d/50-cloudimg-settings.cfg"]
    )
    assert "# Set the default commandline\n" in rendered["etc/default/grub.d/50-cloudimg-settings.cfg"]


def test_quoting_variants_and_appending_dropins(boot_tree):
    root = boot_tree("grub-quoting")
    defaults = grub(root)
    assert defaults.arguments() == [
        "rd.lvm.lv=vg/root",
        "nomodeset",
        "quiet",
        "console=ttyS0,115200n8",
        'acpi_osi="Windows 2015"',
        "amd_iommu=off",
    ]
    wanted, unwanted = args(["amd_iommu=on", "iommu=pt"], ["nomodeset", "quiet"])
    rendered = defaults.render(b.plan_arguments(defaults.arguments(), wanted, unwanted))
    assert rendered["etc/default/grub"] == (
        "GRUB_DEFAULT=saved\n"
        "export GRUB_CMDLINE_LINUX='rd.lvm.lv=vg/root'   # single quotes, extra spaces kept until edited\n"
        'GRUB_CMDLINE_LINUX_DEFAULT=""\n'
        'GRUB_GFXMODE="1024x768"; GRUB_TIMEOUT=3\n'
    )
    # the value replaced where it was set; new arguments go to the last assignment, which wins
    assert rendered["etc/default/grub.d/20-iommu.cfg"] == (
        'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT amd_iommu=on iommu=pt" # set by an older playbook\n'
    )
    assert "etc/default/grub.d/10-serial.cfg" not in rendered
    after = b.GrubDefaults(root, dict(defaults.texts, **rendered))
    assert after.arguments() == [
        "rd.lvm.lv=vg/root",
        "console=ttyS0,115200n8",
        'acpi_osi="Windows 2015"',
        "amd_iommu=on",
        "iommu=pt",
    ]


def test_escaped_kernel_quotes_survive_an_edit(boot_tree):
    root = boot_tree("grub-quoting")
    defaults = grub(root)
    wanted, unwanted = args(["iommu=pt"], ["console"])
    rendered = defaults.render(b.plan_arguments(defaults.arguments(), wanted, unwanted))
    assert rendered["etc/default/grub.d/10-serial.cfg"].endswith(
        'GRUB_CMDLINE_LINUX_DEFAULT="${GRUB_CMDLINE_LINUX_DEFAULT} acpi_osi=\\"Windows 2015\\""\n'
    )


def test_missing_variable_is_added_to_etc_default_grub():
    texts = {"etc/default/grub": "GRUB_TIMEOUT=5\n# no command line here"}
    defaults = b.GrubDefaults("/nonexistent", texts)
    wanted, unwanted = args(["intel_iommu=on"])
    rendered = defaults.render(b.plan_arguments(defaults.arguments(), wanted, unwanted))
    assert rendered == {
        "etc/default/grub": 'GRUB_TIMEOUT=5\n# no command line here\nGRUB_CMDLINE_LINUX_DEFAULT="intel_iommu=on"\n'
    }


def test_grubby_hosts_add_to_grub_cmdline_linux(boot_tree):
    root = boot_tree("rocky9-grubby")
    defaults = grub(root, b.LINUX)
    wanted, unwanted = args(["intel_iommu=on"], ["rhgb"])
    rendered = defaults.render(b.plan_arguments(defaults.arguments(), wanted, unwanted))
    assert (
        'GRUB_CMDLINE_LINUX="crashkernel=1G-4G:192M,4G-64G:256M,64G-:512M resume=/dev/mapper/rl-swap '
        'rd.lvm.lv=rl/root rd.lvm.lv=rl/swap quiet intel_iommu=on"\n'
    ) in rendered["etc/default/grub"]
    assert "GRUB_DISTRIBUTOR=\"$(sed 's, release .*$,,g' /etc/system-release)\"\n" in rendered["etc/default/grub"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"'splash'\n", "not a single quoted string"),
        ('GRUB_CMDLINE_LINUX_DEFAULT="quiet $EXTRA"\n', "refers to \\$EXTRA"),
        ('GRUB_CMDLINE_LINUX_DEFAULT="quiet $(cat /x)"\n', "cannot evaluate"),
        ('GRUB_CMDLINE_LINUX_DEFAULT="quiet\n', "unterminated double quote"),
    ],
)
def test_unsupported_assignments_fail_with_the_line(text, message):
    with pytest.raises(b.BootloaderError, match=message) as error:
        b.GrubDefaults("/x", {"etc/default/grub": "GRUB_TIMEOUT=5\n" + text})
    assert "/etc/default/grub line" in str(error.value)


def test_assignments_that_only_prefix_a_command_are_ignored():
    texts = {"etc/default/grub": 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX_DEFAULT="x" true\n'}
    assert b.GrubDefaults("/x", texts).arguments() == ["quiet"]


# ------------------------------------------------------------------------------ BLS and grubenv


def test_bls_entries_in_menu_order_and_default_from_saved_entry(boot_tree):
    root = boot_tree("rocky9-grubby")
    entries, env = b.read_bls_entries(root)
    assert [e.version for e in entries] == ["5.14.0-362.8.1.el9_3.x86_64", "0-rescue-9f2c6f0e1b5d4c3a8e7f6a5b4c3d2e1f"]
    default = b.default_entry(entries, env)
    assert default is entries[0]
    # $tuned_params is unset in grubenv and expands to nothing, as in GRUB
    assert default.arguments()[-2:] == ["rhgb", "quiet"]


def test_bls_entry_render_keeps_other_lines(boot_tree):
    root = boot_tree("rocky9-grubby")
    entries, _env = b.read_bls_entries(root)
    wanted, unwanted = args(["intel_iommu=on"], ["rhgb"])
    files, env_updates = entries[0].render(b.plan_arguments(entries[0].arguments(), wanted, unwanted, False))
    assert env_updates == {}
    ((path, text),) = files.items()
    assert path == entries[0].path
    assert text == entries[0].text.replace("rhgb quiet $tuned_params", "quiet $tuned_params intel_iommu=on")


def test_rhel8_kernelopts_are_edited_in_grubenv(boot_tree):
    root = boot_tree("rhel8-kernelopts")
    entries, env = b.read_bls_entries(root)
    (entry,) = entries
    assert entry.arguments()[:2] == ["root=/dev/mapper/rhel-root", "ro"]
    wanted, unwanted = args(["intel_iommu=on"], ["rhgb"])
    files, env_updates = entry.render(b.plan_arguments(entry.arguments(), wanted, unwanted, False))
    assert files == {}
    assert env_updates == {
        "kernelopts": "root=/dev/mapper/rhel-root ro crashkernel=auto resume=/dev/mapper/rhel-swap "
        "rd.lvm.lv=rhel/root rd.lvm.lv=rhel/swap quiet intel_iommu=on"
    }
    text = env.render(env_updates)
    assert len(text.encode()) == 1024
    assert "\nkernelopts=root=/dev/mapper/rhel-root ro crashkernel=auto" in text
    assert b.GrubEnv(root, text=text).values["boot_success"] == "0"


def test_grubenv_refuses_to_grow_past_its_block():
    text = "# GRUB Environment Block\nkernelopts=ro\n"
    env = b.GrubEnv("/x", text=text + "#" * (1024 - len(text)))
    with pytest.raises(b.BootloaderError, match="do not fit the 1024 bytes"):
        env.render({"kernelopts": "x" * 1100})


# ------------------------------------------------------------------------------ detection


@pytest.mark.parametrize(
    "tree, expected",
    [
        ("debian-grub", "grub"),
        ("ubuntu-cloud-grub", "grub"),
        ("grub-quoting", "grub"),
        ("rocky9-grubby", "grubby"),
        ("rhel8-kernelopts", "grubby"),
        ("systemd-boot", "systemd-boot"),
        ("debian-systemd-boot", "systemd-boot"),
        ("proxmox-zfs-uefi", "proxmox"),
        ("proxmox-zfs-bios", "proxmox"),
        ("proxmox-lvm-grub", "grub"),
        ("fedora-coreos", "ostree"),
        ("pop-os-kernelstub", "kernelstub"),
        ("arch-systemd-boot", "systemd-boot"),
        ("arch-uki", "systemd-boot"),
        ("cachyos-sdboot-manage", "sdboot-manage"),
    ],
)
def test_detect_bootloader(tree, expected):
    assert (
        b.detect_bootloader(os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures", "boot", tree))
        == expected
    )


def test_detection_failure_names_what_was_looked_for(boot_tree):
    with pytest.raises(b.BootloaderError, match="no bootloader configuration recognised.*set bootloader explicitly"):
        b.detect_bootloader(boot_tree("unknown"))


def test_an_ostree_image_tree_is_told_by_its_boot_entries(boot_tree):
    # A deployment's tree (or a disk image) has no /run/ostree-booted: ostree's boot entries carry ostree=.
    root = boot_tree("fedora-coreos")
    os.unlink(os.path.join(root, "run/ostree-booted"))
    assert b.detect_bootloader(root) == "ostree"
    # grubby's BLS entries of a plain Fedora or RHEL host carry no ostree=.
    assert not b.ostree_system(boot_tree("rocky9-grubby"))


def test_nixos_is_refused_with_where_its_kernel_arguments_go(boot_tree):
    # NixOS boots systemd-boot or GRUB, but nixos-rebuild writes every entry from configuration.nix.
    root = boot_tree("systemd-boot")
    open(os.path.join(root, "etc/NIXOS"), "w").close()
    with pytest.raises(b.BootloaderError, match="is NixOS .*boot.kernelParams in configuration.nix"):
        b.detect_bootloader(root)


def test_kernelstub_only_manages_a_host_booted_by_uefi(boot_tree):
    # kernelstub writes EFI boot entries; a live host booted by BIOS boots GRUB, whatever kernelstub
    # left in /etc.
    root = boot_tree("pop-os-kernelstub")
    shutil.rmtree(os.path.join(root, "sys/firmware/efi"))
    os.makedirs(os.path.join(root, "etc/default"))
    with open(os.path.join(root, "etc/default/grub"), "w") as handle:
        handle.write('GRUB_CMDLINE_LINUX_DEFAULT="quiet splash"\n')
    shutil.copy(os.path.join(root, "usr/bin/kernelstub"), os.path.join(root, "usr/bin/update-grub"))
    assert b.detect_bootloader(root) == "grub"
    shutil.rmtree(os.path.join(root, "sys"))  # an image tree: kernelstub's configuration tells
    assert b.detect_bootloader(root) == "kernelstub"


def test_systemd_boot_esp_without_efi_variable_in_an_image_tree(boot_tree):
    root = boot_tree("systemd-boot")
    os.unlink(os.path.join(root, b.LOADER_INFO))
    assert b.detect_bootloader(root) == "systemd-boot"


def _loader_info(root, text):
    """Write LoaderInfo as efivarfs shows it: attributes (boot and runtime access), then UCS-2 with a NUL."""
    path = os.path.join(root, b.LOADER_INFO)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<I", 6) + (text + "\0").encode("utf-16-le"))


def test_loader_info_is_read_as_the_boot_loader_interface_writes_it(boot_tree):
    root = boot_tree("debian-grub")
    assert b.efi_string(root, b.LOADER_INFO) is None and b.booted_loader(root) is None
    for text, loader in [("systemd-boot 257.4-1", "systemd-boot"), ("GRUB 2.12", "grub"),
                         ("Limine 9.3.0", "limine"), ("rEFInd 0.14.2", "other")]:
        _loader_info(root, text)
        assert b.efi_string(root, b.LOADER_INFO) == text and b.booted_loader(root) == loader


def test_grub_naming_itself_in_loader_info_is_not_taken_for_systemd_boot(boot_tree):
    # GRUB's bli module sets LoaderInfo to "GRUB 2.12" (and LoaderDevicePartUUID, which
    # systemd-gpt-auto-generator needs): the host still boots grub.cfg from /etc/default/grub.
    root = boot_tree("debian-grub")
    _loader_info(root, "GRUB 2.12")
    assert b.detect_bootloader(root) == "grub"
    # Proxmox VE booting GRUB from its ESPs (Secure Boot): /etc/default/grub is edited too, as on a
    # host booted by BIOS, not /etc/kernel/cmdline alone.
    root = boot_tree("proxmox-zfs-uefi")
    assert [type(source) for source in b._proxmox_sources(root)] == [b.KernelCmdlineFile]
    _loader_info(root, "GRUB 2.12")
    assert [type(source) for source in b._proxmox_sources(root)] == [b.GrubDefaults, b.KernelCmdlineFile]


def test_a_host_limine_boots_is_refused_with_where_its_arguments_go(boot_tree, put_file):
    # Limine names itself in LoaderInfo; its entries come from limine-entry-tool's KERNEL_CMDLINE, so the
    # GRUB files or /etc/kernel/cmdline left on the host would be edited for nothing.
    for tree in ("debian-grub", "systemd-boot", "arch-uki"):
        root = boot_tree(tree)
        _loader_info(root, "Limine 9.3.0")
        with pytest.raises(b.BootloaderError, match=r"boots Limine \(LoaderInfo: Limine 9.3.0\).*"
                           "KERNEL_CMDLINE in /etc/default/limine.*set bootloader explicitly"):
            b.detect_bootloader(root)
    # An image tree (no EFI variables) with limine-entry-tool's configuration or a limine.conf.
    root = boot_tree("ubuntu-cloud-grub")
    assert b.detect_bootloader(root) == "grub"
    for path in ("etc/default/limine", "boot/limine.conf", "efi/EFI/BOOT/limine.conf"):
        put_file(root, path, 'KERNEL_CMDLINE[default]="root=UUID=0a1b rw"\n')
        with pytest.raises(b.BootloaderError, match=r"boots Limine \(/%s\)" % re.escape(path)):
            b.detect_bootloader(root)
        os.remove(os.path.join(root, path))
    # The loader that booted says otherwise: a Limine configuration left behind is not what boots.
    root = boot_tree("debian-systemd-boot")
    put_file(root, "etc/default/limine", "")
    assert b.detect_bootloader(root) == "systemd-boot"


def test_kernel_cmdline_file_created_from_the_running_command_line(boot_tree):
    source = b.KernelCmdlineFile(boot_tree("debian-systemd-boot"))
    assert source.text is None
    assert source.arguments() == ["root=UUID=0a1b2c3d-4e5f-4061-8273-94a5b6c7d8e9", "ro", "quiet"]


def test_installed_kernels_need_an_image(boot_tree):
    assert b.installed_kernels(boot_tree("systemd-boot")) == [
        ("6.8.9-300.fc40.x86_64", "/lib/modules/6.8.9-300.fc40.x86_64/vmlinuz", None),
        ("6.9.7-200.fc40.x86_64", "/lib/modules/6.9.7-200.fc40.x86_64/vmlinuz", None),
    ]
    assert b.installed_kernels(boot_tree("debian-systemd-boot")) == [
        ("6.1.0-18-amd64", "/boot/vmlinuz-6.1.0-18-amd64", "/boot/initrd.img-6.1.0-18-amd64")
    ]


def test_kernel_cmdline_file_is_not_invented_for_an_image_tree(boot_tree):
    root = boot_tree("debian-systemd-boot")
    os.unlink(os.path.join(root, "proc/cmdline"))
    with pytest.raises(b.BootloaderError, match="no /proc/cmdline to start it from; create it with .*root="):
        b.KernelCmdlineFile(root)


def test_plan_for_an_image_tree_reports_before_after_and_pending_commands(boot_tree):
    root = boot_tree("debian-grub")
    wanted, unwanted = args(["intel_iommu=on"], ["quiet"])
    plan = b.plan(None, root, "auto", wanted, unwanted)
    assert plan.bootloader == "grub"
    assert plan.configured_before == ["quiet", "intel_iommu=off"]
    assert plan.configured == ["intel_iommu=on"]
    assert [edit.display_path for edit in plan.edits] == ["/etc/default/grub"]
    assert plan.commands == [["update-grub"]]
    assert plan.pending and not plan.run_commands
    unchanged = b.plan(None, root, "grub", [], [])
    assert unchanged.configured_before == unchanged.configured == ["quiet", "intel_iommu=off"]
    assert not unchanged.changed and not unchanged.pending and unchanged.commands == []


# ------------------------------------------------------------------------------ kernel-install's entry token

MACHINE_ID = "3f2a9c1e6b7d48e0a5c4b3d2e1f0a9b8"
COMPAT_ID = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"


@pytest.mark.parametrize(
    "files, token",
    [
        ({}, MACHINE_ID),
        ({"etc/kernel/entry-token": "arch\n"}, "arch"),
        ({"usr/lib/kernel/entry-token": "vendor-image\n"}, "vendor-image"),
        ({"etc/kernel/entry-token": "not a token\n"}, MACHINE_ID),  # invalid: ignored, as systemd does
        ({"etc/kernel/install.conf": "layout=bls\nMACHINE_ID=%s\n" % COMPAT_ID}, COMPAT_ID),
        ({"usr/lib/kernel/install.conf": "MACHINE_ID=%s\n" % COMPAT_ID}, COMPAT_ID),
        # Only the first install.conf found is read.
        ({"etc/kernel/install.conf": "layout=bls\n", "usr/lib/kernel/install.conf": "MACHINE_ID=%s\n" % COMPAT_ID},
         MACHINE_ID),
        ({"etc/machine-info": 'PRETTY_HOSTNAME=x\nKERNEL_INSTALL_MACHINE_ID="%s"\n' % COMPAT_ID}, COMPAT_ID),
        ({"etc/machine-info": "KERNEL_INSTALL_MACHINE_ID=0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9\n"}, COMPAT_ID),
        ({"etc/machine-id": "uninitialized\n", "etc/os-release": 'ID=arch\nIMAGE_ID="edge"\n'}, "edge"),
        ({"etc/machine-id": "uninitialized\n", "etc/os-release": "ID=arch\n"}, "arch"),
        ({"etc/machine-id": "", "usr/lib/os-release": "ID=debian\n"}, "debian"),
        ({"etc/machine-id": "00000000000000000000000000000000\n"}, None),
    ],
)
def test_entry_token_as_kernel_install_works_it_out(boot_tree, files, token, put_file):
    root = boot_tree("arch-systemd-boot")
    for path, text in files.items():
        put_file(root, path, text)
    assert kernel_install.entry_token(root) == token


def test_entries_named_after_another_machine_id_are_kernel_installs(boot_tree, put_file):
    # /etc/machine-info gives kernel-install a machine ID of its own (images made before the host had
    # one): its entries are named after that ID, not /etc/machine-id. They come from /etc/kernel/cmdline.
    root = boot_tree("arch-systemd-boot")
    entries = "boot/loader/entries"
    for name in os.listdir(os.path.join(root, entries)):
        os.remove(os.path.join(root, entries, name))
    put_file(root, "etc/machine-info", "KERNEL_INSTALL_MACHINE_ID=%s\n" % COMPAT_ID)
    put_file(root, "%s/%s-6.12.4-arch1-1.conf" % (entries, COMPAT_ID),
             "title Arch Linux\nversion 6.12.4-arch1-1\nmachine-id %s\noptions rw\nlinux /x/linux\n" % COMPAT_ID)
    assert b.loader_entries(root) == ([], True)


def test_entries_are_told_by_their_release_and_kernel_installs_mark(boot_tree, put_file):
    root = boot_tree("arch-systemd-boot")
    entries = "boot/loader/entries"
    # The token is the OS ID (no machine ID): arch-fallback.conf shares its prefix but names no release.
    put_file(root, "etc/machine-id", "uninitialized\n")
    put_file(root, "etc/os-release", "NAME=\"Arch Linux\"\nID=arch\n")
    put_file(root, "%s/arch-6.12.4-arch1-1+3-0.conf" % entries,
             "title Arch Linux\nversion 6.12.4-arch1-1\noptions rw\nlinux /arch/6.12.4-arch1-1/linux\n")
    # Written by kernel-install under an earlier machine ID: its mark tells it.
    put_file(root, "%s/%s-6.11.9-arch1-1.conf" % (entries, COMPAT_ID),
             "# Boot Loader Specification type#1 entry\n"
             "# File created by /usr/lib/kernel/install.d/90-loaderentry.install (systemd 256.7-1-arch)\n"
             "title Arch Linux\nversion 6.11.9-arch1-1\noptions rw\nlinux /x/linux\n")
    own, kernel_install = b.loader_entries(root)
    assert kernel_install is True
    assert own == ["%s/arch.conf" % entries, "%s/arch-fallback.conf" % entries]


# ------------------------------------------------------------------------------ unified kernel images

UKIS = ["efi/EFI/Linux/arch-linux-fallback.efi", "efi/EFI/Linux/arch-linux.efi"]


def test_unified_kernel_images_are_told_by_systemd_stub_or_an_esp_without_loader_entries(boot_tree, put_file):
    root = boot_tree("arch-uki")
    assert b.unified_kernel_images(root) == UKIS and b.uki_generator(root, UKIS) == "mkinitcpio"
    # An image tree (no EFI variables): the ESP's menu holds the images and no loader entry.
    shutil.rmtree(os.path.join(root, "sys/firmware/efi"))
    assert b.unified_kernel_images(root) == UKIS
    # Loader entries beside them: the images are not what boots.
    put_file(root, "efi/loader/entries/%s-6.12.4-arch1-1.conf" % MACHINE_ID, "version 6.12.4-arch1-1\noptions rw\n")
    assert b.unified_kernel_images(root) == []
    # systemd-stub says the host booted one.
    put_file(root, b.STUB_INFO, "")
    assert b.unified_kernel_images(root) == UKIS


def test_a_unified_kernel_image_the_firmware_starts_is_systemd_boots_family(boot_tree):
    # No systemd-boot (the firmware's own boot entry starts the image): systemd-stub's variable tells it.
    root = boot_tree("arch-uki")
    os.remove(os.path.join(root, b.LOADER_INFO))
    shutil.rmtree(os.path.join(root, "efi/loader"))
    assert b.detect_bootloader(root) == "systemd-boot"
