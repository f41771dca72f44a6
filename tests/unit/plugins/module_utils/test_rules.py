# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every input rule: what it accepts, what it refuses, and that the message names the value."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import rules
from ansible_collections.gpuvirt.host.plugins.module_utils.rules import InputError

# -- kernel arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "intel_iommu=on",
        "vfio-pci.ids=10de:2236,10de:1aef",
        "console=ttyS0,115200n8",
        "root=UUID=4f6c0e1a-1b2c-4d5e-8f90-123456789abc",
        "acpi_osi=!Windows",
        "mem=4G@1G",
        "isolcpus=1-3,5",
        "video=efifb:off",
        "rd.driver.pre=vfio-pci",
        "a" * rules.ARGUMENT_MAX,
    ],
)
def test_kernel_argument_accepts_real_arguments(text):
    assert rules.kernel_argument(text, "present") == text


@pytest.mark.parametrize(
    "text, named",
    [
        ("#comment", "'#'"),
        ("quiet#x", "'#'"),
        ("a b", "' '"),
        ("a\nb", "'\\n'"),
        ("a\tb", "'\\t'"),
        ("a\x00b", "'\\x00'"),
        ("a\x7fb", "'\\x7f'"),
        ('a="b c"', "'\"'"),
        ("a='b'", '"\'"'),
        ("a=$(reboot)", "'$'"),
        ("a=`x`", "'`'"),
        ("a=b;c", "';'"),
        ("a=b|c", "'|'"),
        ("a=b&c", "'&'"),
        ("a=<b>", "'<'"),
        ("a=b\\c", "'\\\\'"),
        ("a=é", "'é'"),
        ("a=b\u2028c", "'\\u2028'"),
    ],
)
def test_kernel_argument_refuses_characters_grub_or_the_kernel_would_misread(text, named):
    with pytest.raises(InputError) as caught:
        rules.kernel_argument(text, "present")
    message = str(caught.value)
    assert message.startswith("present: argument ") and named in message and "letters, digits" in message


@pytest.mark.parametrize(
    "value, words",
    [
        ("", "empty"),
        ("=x", "empty key"),
        (5, "not a string"),
        (None, "not a string"),
        ("x" * (rules.ARGUMENT_MAX + 1), "at most %d" % rules.ARGUMENT_MAX),
        ("x=" + "y" * 4096, "4098 characters long"),
    ],
)
def test_kernel_argument_refuses_empty_odd_and_overlong(value, words):
    with pytest.raises(InputError, match=words):
        rules.kernel_argument(value, "absent")


@pytest.mark.parametrize(
    "present, absent, words",
    [
        ([], ["root"], "absent: 'root' would remove root="),
        ([], ["root=/dev/sda1"], "would remove root="),
        ([], ["rd.lvm.lv"], "would remove rd.lvm.lv="),
        ([], ["rd.luks.uuid=4f6c"], "would remove rd.luks.uuid="),
        ([], ["rootflags=subvol=@"], "would remove rootflags="),
        ([], ["boot"], "would remove boot="),
        (["root="], [], "present: 'root=' leaves root= without a value"),
        (["root"], [], "leaves root= without a value"),
        (["cryptdevice="], [], "leaves cryptdevice= without a value"),
    ],
)
def test_boot_arguments_refuse_removing_or_emptying_what_the_host_boots_from(present, absent, words):
    with pytest.raises(InputError, match=words.replace("(", r"\(")):
        rules.boot_arguments(present, absent)


def test_boot_arguments_allow_replacing_and_everything_else():
    rules.boot_arguments(["root=/dev/mapper/vg-new", "intel_iommu=on"], ["quiet", "rootwait", "init"])
    assert "root" in rules.BOOT_CRITICAL_KEYS and "rd.luks.uuid" in rules.BOOT_CRITICAL_KEYS


def test_command_line_length():
    short = ["root=/dev/sda1", "ro"]
    rules.command_line_length(short + ["x" * 1000], short)
    long_line = ["a%d=%s" % (i, "v" * 100) for i in range(25)]
    with pytest.raises(InputError, match=r"would be \d+ characters long; the kernel reads at most 2048"):
        rules.command_line_length(long_line, short, where="/boot/loader/entries/a.conf")
    # A line already that long is not the run's doing: shrinking or keeping it is allowed.
    rules.command_line_length(long_line[:-1], long_line)


# -- kernel arguments per architecture ------------------------------------------------------------

X86_IOMMU = ["intel_iommu=on", "intel_iommu=on,sm_on", "amd_iommu=off", "amd_iommu=force_isolation", "iommu=pt",
             "iommu=off", "intremap=off", "nointremap", "amd_iommu_intr=legacy", "ivrs_ioapic[32]=00:14.0",
             "kvm_intel.nested=1", "kvm-amd.avic=1"]
ARM64_ONLY = ["arm-smmu-v3.disable_msipolling=1", "arm_smmu_v3.disable_msipolling=1", "arm-smmu.disable_bypass=0",
              "kvm-arm.mode=nvhe", "arm64.nomte"]
# The IOMMU core's parameters ([ARM64,X86] in kernel-parameters.txt) and everything no architecture owns.
EVERYWHERE = ["iommu.passthrough=1", "iommu.strict=0", "iommu.forcedac=1", "root=/dev/sda1", "quiet",
              "vfio-pci.ids=10de:2204", "pcie_acs_override=downstream", "console=ttyS0,115200"]


@pytest.mark.parametrize("argument", X86_IOMMU + EVERYWHERE)
def test_x86_takes_its_own_and_the_common_arguments(argument):
    rules.architecture_arguments([argument], "x86_64", "/proc/cpuinfo in the tree")
    rules.architecture_arguments([argument], "i686")


@pytest.mark.parametrize("argument", ARM64_ONLY + EVERYWHERE)
def test_arm64_takes_its_own_and_the_common_arguments(argument):
    rules.architecture_arguments([argument], "aarch64", "the running kernel (uname -m)")


@pytest.mark.parametrize("argument", X86_IOMMU + ["INTEL_IOMMU=on", "Intel-Iommu=on", "intel_iommu", "iommu=nobypass"])
def test_arm64_refuses_x86_arguments_naming_them_the_host_and_what_to_use(argument):
    with pytest.raises(InputError) as refused:
        rules.architecture_arguments(["quiet", argument], "aarch64", "/proc/cpuinfo in the tree")
    message = str(refused.value)
    assert message.startswith("present: %r" % argument), message
    assert "this host is aarch64 (from /proc/cpuinfo in the tree)" in message
    assert "Instead, " in message and "iommu.passthrough=1" in message and "Nothing was changed" in message


@pytest.mark.parametrize(
    ("argument", "instead"),
    [("iommu=pt", "Instead, use iommu.passthrough=1;"), ("iommu=nopt", "Instead, use iommu.passthrough=0;"),
     ("iommu=off", "no argument turns an arm64 SMMU off")],
)
def test_arm64_names_the_equivalent_of_an_iommu_value(argument, instead):
    with pytest.raises(InputError, match=instead):
        rules.architecture_arguments([argument], "aarch64")


@pytest.mark.parametrize("argument", ARM64_ONLY + ["ARM-SMMU-V3.disable_msipolling=1", "iommu=nobypass"])
def test_x86_refuses_arm64_and_power_arguments(argument):
    with pytest.raises(InputError) as refused:
        rules.architecture_arguments([argument], "x86_64", "the running kernel (uname -m)")
    message = str(refused.value)
    assert "%r" % argument in message and "this host is x86_64 (from the running kernel (uname -m))" in message
    assert "intel_iommu=on" in message, "says what x86 uses instead"


def test_a_module_parameter_of_another_architecture_names_the_missing_module():
    with pytest.raises(InputError, match="its kernel has no arm_smmu_v3 module"):
        rules.architecture_arguments(["arm-smmu-v3.disable_msipolling=1"], "x86_64")
    with pytest.raises(InputError, match="a name without a dot reaches init"):
        rules.architecture_arguments(["amd_iommu=off"], "aarch64")


@pytest.mark.parametrize("argument", X86_IOMMU[:4] + ARM64_ONLY + ["iommu=pt", "iommu"])
def test_power_refuses_x86_and_arm64_arguments_and_keeps_nobypass(argument):
    rules.architecture_arguments(["iommu=nobypass", "iommu.passthrough=1", "quiet"], "ppc64le")
    with pytest.raises(InputError) as refused:
        rules.architecture_arguments([argument], "ppc64le", "/proc/cpuinfo in the tree")
    assert "this host is ppc64le" in str(refused.value) and "sPAPR TCE" in str(refused.value)


@pytest.mark.parametrize("argument", ["iommu=novmerge", "iommu=vmerge"])
def test_power_keeps_the_iommu_values_of_its_own_kernel(argument):
    # arch/powerpc/kernel/iommu.c: __setup("iommu=", setup_iommu) takes novmerge and vmerge.
    rules.architecture_arguments([argument], "ppc64le")


def test_an_unknown_architecture_refuses_nothing():
    rules.architecture_arguments(X86_IOMMU + ARM64_ONLY + EVERYWHERE, None)
    assert rules.foreign_arguments(X86_IOMMU + ARM64_ONLY, None) == []


def test_other_architectures_refuse_what_belongs_to_x86_or_arm64():
    assert [text for text, _why in rules.foreign_arguments(["intel_iommu=on", "kvm-arm.mode=nvhe", "quiet"],
                                                           "s390x")] == ["intel_iommu=on", "kvm-arm.mode=nvhe"]


def test_foreign_arguments_lists_every_one_in_order():
    found = rules.foreign_arguments(["quiet", "intel_iommu=on", "iommu.passthrough=1", "iommu=pt"], "aarch64", "x")
    assert [text for text, _why in found] == ["intel_iommu=on", "iommu=pt"]


# -- systemd unit values, paths and roots ---------------------------------------------------------


@pytest.mark.parametrize("value", ["/usr/bin/python3", "/opt/py-3.11/bin/python", "/usr/local/lib/gpuvirt"])
def test_unit_value_accepts_plain_words(value):
    assert rules.unit_value(value, "python") == value


@pytest.mark.parametrize(
    "value, named",
    [
        ("/usr/bin/python3\nExecStartPre=/bin/sh", "'\\n'"),
        ("/opt/my python/bin/python3", "' '"),
        ("/usr/bin/python3;rm", "';'"),
        ("/usr/%h/python", "'%'"),
        ("/usr/bin/$PY", "'$'"),
        ('/usr/bin/"py"', "'\"'"),
        ("/usr/bin/py\\x", "'\\\\'"),
        ("/usr/bin/py\x85", "'\\x85'"),
        ("", "non-empty"),
        (None, "non-empty"),
    ],
)
def test_unit_value_refuses_unit_syntax(value, named):
    with pytest.raises(InputError) as caught:
        rules.unit_value(value, "python")
    assert str(caught.value).startswith("python: ") and named in str(caught.value)


def test_absolute_path():
    assert rules.absolute_path("/usr//local/./lib/", "prefix") == "/usr/local/lib"
    for bad, words in (
        ("/../escape", "contains '..'"),
        ("/usr/../../etc", "contains '..'"),
        ("usr/lib", "not an absolute path"),
        ("", "not an absolute path"),
        ("/usr/lib\x00x", "control character"),
    ):
        with pytest.raises(InputError, match=words):
            rules.absolute_path(bad, "prefix")


def test_existing_root_is_never_created(tmp_path):
    assert rules.existing_root(str(tmp_path)) == str(tmp_path)
    missing = str(tmp_path / "typo")
    with pytest.raises(InputError, match="does not exist.*never created"):
        rules.existing_root(missing)
    assert not os.path.exists(missing)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is not a directory"):
        rules.existing_root(str(tmp_path / "file"))


def test_inside_root_follows_links_as_the_tree_would(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    target = str(root / "etc" / "gpuvirt" / "x.json")
    assert rules.inside_root(str(root), target, "the state file") == target
    os.symlink("../../outside", str(root / "etc" / "gpuvirt"))
    with pytest.raises(InputError, match="the state file: .*leads out of root"):
        rules.inside_root(str(root), target, "the state file")
    # An absolute link is the tree's own path, as in a chroot: it stays inside.
    os.symlink("/var/lib", str(root / "etc" / "abs"))
    assert rules.inside_root(str(root), str(root / "etc" / "abs" / "x"), "prefix") == str(root / "var" / "lib" / "x")
    os.symlink("loop", str(root / "etc" / "loop"))
    with pytest.raises(InputError, match="prefix: "):
        rules.inside_root(str(root), str(root / "etc" / "loop" / "x"), "prefix")


# -- numbers and counts --------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-5, 0, float("nan"), float("inf"), float("-inf"), 3601, "abc", None, 1e309])
def test_number_refuses_non_finite_and_out_of_range(value):
    with pytest.raises(InputError) as caught:
        rules.number(value, "timeout", maximum=3600)
    assert str(caught.value).startswith("timeout: ") and repr(value)[:10] in str(caught.value)


def test_number_bounds():
    assert rules.number("2.5", "delay") == 2.5
    assert rules.number(0, "delay", minimum_allowed=True) == 0.0
    assert rules.number(3600, "timeout", maximum=3600) == 3600.0
    with pytest.raises(InputError, match="a finite number > 0 and <= 3600"):
        rules.number(-1, "timeout", maximum=3600)


def test_integer_and_count():
    assert rules.integer(5, "retries", 0, 100) == 5
    for bad in (-1, 101, True, 2.5, "3"):
        with pytest.raises(InputError, match="retries: "):
            rules.integer(bad, "retries", 0, 100)
    assert rules.count(8, 8, "count", "the GPU") == 8
    with pytest.raises(InputError, match=r"count: 1000000000000 is out of range; the GPU can hold at most 8"):
        rules.count(10**12, 8, "count", "the GPU")
    with pytest.raises(InputError, match="count: -1 is out of range"):
        rules.count(-1, 8, "count", "the GPU")
    with pytest.raises(InputError, match="not a whole number"):
        rules.count(False, 8, "count", "the GPU")


def test_rules_raise_the_callers_error_class():
    class MdevError(Exception):
        pass

    with pytest.raises(MdevError):
        rules.count(10**12, 8, "count", "the parent", error=MdevError)


# -- state files and caches -----------------------------------------------------------------------


def test_versioned_json(tmp_path):
    path = str(tmp_path / "state.json")
    fix = "move it aside"
    assert rules.load_versioned_json(path, 1, "the state file", fix) is None
    with open(path, "w") as handle:
        json.dump({"version": 1, "a": {}}, handle)
    assert rules.load_versioned_json(path, 1, "the state file", fix) == {"version": 1, "a": {}}
    cases = [
        ('{"version": 2}', "has version 2, newer than the 1 this gpuvirt.host reads"),
        ('{"version": 0}', "corrupt"),
        ('{"version": true}', "corrupt"),
        ('{"a": 1}', "corrupt"),
        ("[1, 2]", "corrupt"),
        ("{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ("", "not valid JSON"),
    ]
    for content, words in cases:
        mode = "wb" if isinstance(content, bytes) else "w"
        with open(path, mode) as handle:
            handle.write(content)
        with pytest.raises(InputError) as caught:
            rules.load_versioned_json(path, 1, "the state file", fix)
        assert words in str(caught.value) and path in str(caught.value)
        with open(path, "rb") as handle:
            after = handle.read()
        assert after == (content if isinstance(content, bytes) else content.encode())  # never rewritten
        if "newer" not in words:
            assert fix in str(caught.value)


# -- sysfs attributes the guards depend on --------------------------------------------------------


def test_boot_vga_flag():
    assert rules.boot_vga_flag("1") == (True, None)
    assert rules.boot_vga_flag("0") == (False, None)
    for text in ("", "2", "yes", "01", "1 ", "true"):
        flag, doubt = rules.boot_vga_flag(text)
        assert flag is None and "expected 0 or 1" in doubt and repr(text) in doubt


def test_class_code():
    assert rules.class_code("0x030000") == ("030000", None)
    assert rules.class_code("0x0C0330") == ("0c0330", None)
    for text in ("0x0300", "0x03", "030000", "", None, "0x03000g"):
        code, doubt = rules.class_code(text)
        assert code is None and "expected 0x followed by 6 hex digits" in doubt


def _device(tmp_path, link_target=None, driver_target=None):
    groups = tmp_path / "sys/kernel/iommu_groups"
    (groups / "5/devices").mkdir(parents=True)
    device = tmp_path / "sys/devices/pci0000:00/0000:00:01.0"
    device.mkdir(parents=True)
    if link_target is not None:
        os.symlink(link_target, str(device / "iommu_group"))
    if driver_target is not None:
        os.symlink(driver_target, str(device / "driver"))
    return str(device)


def test_iommu_group_of(tmp_path):
    good = _device(tmp_path / "a", "../../../kernel/iommu_groups/5")
    assert rules.iommu_group_of(good) == ("5", None)
    assert rules.iommu_group_of(_device(tmp_path / "b")) == (None, None)
    dangling = _device(tmp_path / "c", "../../../kernel/iommu_groups/9")
    group, doubt = rules.iommu_group_of(dangling)
    assert group is None and "does not exist or loops" in doubt
    looping = _device(tmp_path / "d", "iommu_group")
    group, doubt = rules.iommu_group_of(looping)
    assert group is None and "not to iommu_groups/<number>" in doubt
    loop_dir = tmp_path / "e/sys/kernel/iommu_groups"
    device = _device(tmp_path / "e", "../../../kernel/iommu_groups/7")
    os.symlink("7", str(loop_dir / "7"))
    group, doubt = rules.iommu_group_of(device)
    assert group is None and "does not exist or loops" in doubt
    odd = _device(tmp_path / "f", "../../../kernel/iommu_groups/two")
    assert rules.iommu_group_of(odd)[0] is None
    for n, target in enumerate(("/", "//", "5", "iommu_groups/")):  # corrupt captures
        group, doubt = rules.iommu_group_of(_device(tmp_path / ("g%d" % n), target))
        assert group is None and "not to iommu_groups/<number>" in doubt, target


def test_driver_of(tmp_path):
    bound = _device(tmp_path / "a", driver_target="../../../bus/pci/drivers/nvidia")
    assert rules.driver_of(bound) == ("nvidia", None)
    assert rules.driver_of(_device(tmp_path / "b")) == (None, None)
    for target in ("../../../bus/pci/devices/x", "nvidia", "../../drivers/bad name"):
        driver, doubt = rules.driver_of(_device(tmp_path / ("c" + str(abs(hash(target)))), driver_target=target))
        assert driver is None and "not to drivers/<name>" in doubt
