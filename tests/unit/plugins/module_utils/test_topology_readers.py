# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The readers under topology: parsers, pci.ids, kernel files, critical devices, bad attributes."""

from __future__ import annotations

import gzip
import os
import random

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils.critical import (
    critical_devices,
    default_route_interfaces,
    interface_devices,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.device_users import users_of, vfio_holders
from ansible_collections.gpuvirt.host.plugins.module_utils.findings import Findings
from ansible_collections.gpuvirt.host.plugins.module_utils.iommu import (
    interrupt_remapping_state,
    passthrough_mode,
    read_iommu,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.kernel import (
    cmdline_flag,
    cmdline_value,
    cmdline_values,
    init_arguments,
    kernel_arguments,
    kernel_bool,
    parse_cmdline,
    read_builtin_modules,
    read_release,
    read_vfio_aliases,
    split_argument,
    vfio_variant_drivers,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.mdev_info import mdevs, read_mdev_types
from ansible_collections.gpuvirt.host.plugins.module_utils.pci import PciIds, class_name, read_pci_devices
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect
from ansible_collections.gpuvirt.host.plugins.module_utils.vendor_nvidia import (
    parse_creatable_vgpu_types,
    profile_name,
    read_nvidia_vgpu,
)

DGPU = "0000:01:00.0"
DGPU_DIR = "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0"


def write(root, relative, content):
    path = os.path.join(root, relative)
    if os.path.islink(path):
        os.unlink(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(content if isinstance(content, bytes) else content.encode())


def findings_for(topology, device, code):
    return [f for f in topology["findings"] if f["device"] == device and f["code"] == code]


def dev(topology, address=DGPU):
    return next(d for d in topology["devices"] if d["address"] == address)


# --- kernel command line and modules -----------------------------------------------------------------


def test_parse_cmdline_keeps_quoted_spaces():
    text = '  BOOT_IMAGE=/vmlinuz root=UUID=1 ro\tquiet dyndbg="file drivers/vfio/* +p" vfio-pci.ids=10de:1e04\n'

    assert parse_cmdline(text) == [
        "BOOT_IMAGE=/vmlinuz",
        "root=UUID=1",
        "ro",
        "quiet",
        'dyndbg="file drivers/vfio/* +p"',
        "vfio-pci.ids=10de:1e04",
    ]
    assert parse_cmdline("") == []


@pytest.mark.parametrize(
    "word, expected",
    [
        ("ro", ("ro", None)),
        ("root=UUID=1", ("root", "UUID=1")),
        ('dyndbg="file x +p"', ("dyndbg", "file x +p")),
        ('"iommu=pt"', ("iommu", "pt")),
        ('"quiet"', ("quiet", None)),
        ('x="', ("x", "")),
        ("empty=", ("empty", "")),
    ],
)
def test_split_argument_reads_a_word_as_next_arg_does(word, expected):
    assert split_argument(word) == expected


def test_the_kernel_stops_at_the_init_separator():
    words = parse_cmdline("ro iommu=pt -- iommu=off -- single")

    assert kernel_arguments(words) == ["ro", "iommu=pt"]
    assert init_arguments(words) == ["iommu=off", "--", "single"]
    assert kernel_arguments(parse_cmdline('ro "--" iommu=pt')) == ["ro"]
    assert cmdline_value(words, "iommu") == "pt"
    assert cmdline_values(["vfio-pci.ids=10de:1", "vfio_pci.ids=10de:2"], "vfio_pci.ids") == ["10de:1", "10de:2"]
    assert kernel_arguments(["ro"]) == ["ro"] and init_arguments(["ro"]) == []


def test_cmdline_value_last_wins_and_drops_quotes():
    args = ["intel_iommu=off", "quiet", "intel_iommu=on", 'x="a b"']

    assert cmdline_value(args, "intel_iommu") == "on"
    assert cmdline_value(args, "x") == "a b"
    assert cmdline_value(args, "iommu") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", True), ("Y", True), ("y", True), ("yes", True), ("true", True), ("T", True), ("on", True), ("ON", True),
        ("0", False), ("N", False), ("no", False), ("false", False), ("F", False), ("off", False), ("Off", False),
        ("", None), ("2", None), ("-1", None), ("enabled", None), ("o", None), ("ok", None), (" 1", None),
    ],
)
def test_kernel_bool_reads_a_value_as_kstrtobool_does(text, expected):
    assert kernel_bool(text) is expected


@pytest.mark.parametrize(
    ("cmdline", "bare", "expected"),
    [
        ("ro", True, None),
        ("ro vfio_iommu_type1.allow_unsafe_interrupts=true", True, True),
        ("ro vfio_iommu_type1.allow_unsafe_interrupts", True, True),
        ("ro vfio_iommu_type1.allow_unsafe_interrupts", False, None),
        ("ro vfio-iommu-type1.allow-unsafe-interrupts=on", True, True),
        ('ro "vfio_iommu_type1.allow_unsafe_interrupts=Y"', True, True),
        # The last value the kernel accepts wins; a refused one changes nothing.
        ("vfio_iommu_type1.allow_unsafe_interrupts=1 vfio_iommu_type1.allow_unsafe_interrupts=0", True, False),
        ("vfio_iommu_type1.allow_unsafe_interrupts=0 vfio_iommu_type1.allow_unsafe_interrupts", True, True),
        ("vfio_iommu_type1.allow_unsafe_interrupts=1 vfio_iommu_type1.allow_unsafe_interrupts=maybe", True, True),
        ("ro -- vfio_iommu_type1.allow_unsafe_interrupts=1", True, None),
        ("ro vfio_iommu_type1.allow_unsafe_interrupts_x=1", True, None),
    ],
)
def test_cmdline_flag_applies_the_arguments_in_order_as_the_kernel_does(cmdline, bare, expected):
    args = kernel_arguments(parse_cmdline(cmdline))
    assert cmdline_flag(args, "vfio_iommu_type1.allow_unsafe_interrupts", bare=bare) is expected


@pytest.mark.parametrize(
    ("cmdline", "x86", "expected"),
    [
        ("ro", True, False),
        ("ro iommu=pt", True, True),
        ("ro iommu=soft,pt", True, True),
        ("ro iommu=pt iommu=nopt", True, False),
        ("ro iommu=nopt iommu=pt", True, True),
        ("ro iommu=pt,nopt", True, False),
        ("ro iommu=off", True, False),
        ("ro iommu.passthrough=1", True, True),
        ("ro iommu.passthrough=yes", True, True),
        ("ro iommu.passthrough=on", True, True),
        ("ro iommu=pt iommu.passthrough=0", True, False),
        ("ro iommu.passthrough=1 iommu=nopt", True, False),
        ("ro iommu=pt iommu.passthrough=maybe", True, True),
        ("ro iommu.passthrough", True, False),
        ("ro -- iommu=pt", True, False),
        # iommu= is an x86 parameter: elsewhere it is not the kernel's and reaches init.
        ("ro iommu=pt", False, False),
        ("ro iommu.passthrough=1 iommu=nopt", False, True),
    ],
)
def test_passthrough_mode_is_the_last_setting_the_kernel_applies(cmdline, x86, expected):
    assert passthrough_mode(kernel_arguments(parse_cmdline(cmdline)), x86=x86) is expected


def test_builtin_modules_and_variant_vfio_drivers(tmp_path):
    modules = tmp_path / "lib" / "modules" / "6.8.0"
    modules.mkdir(parents=True)
    (modules / "modules.builtin").write_text(
        "kernel/drivers/vfio/vfio.ko\nkernel/drivers/vfio/pci/vfio-pci.ko.zst\nkernel/fs/ext4/ext4.ko\n"
    )
    (modules / "modules.alias").write_text(
        "alias pci:v000010DEd*sv*sd*bc03sc*i* nvidia\n"
        "alias vfio_pci:v*d*sv*sd*bc*sc*i* vfio_pci\n"
        "alias vfio_pci:v000010DEd00002342sv*sd*bc*sc*i* nvgrace_gpu_vfio_pci\n"
        "alias vfio_pci:v000015B3d0000101Esv*sd*bc*sc*i* mlx5_vfio_pci\n"
    )

    assert read_builtin_modules(str(tmp_path), "6.8.0") == {"vfio", "vfio_pci", "ext4"}
    assert read_builtin_modules(str(tmp_path), "5.15.0") is None
    aliases = read_vfio_aliases(str(tmp_path), "6.8.0")
    assert [driver for _pattern, driver in aliases] == ["nvgrace_gpu_vfio_pci", "mlx5_vfio_pci"], (
        "vfio-pci's own match-all alias is not a variant driver"
    )
    assert aliases[0] == ("v000010DEd00002342sv*sd*bc*sc*i*", "nvgrace_gpu_vfio_pci")
    grace = "pci:v000010DEd00002342sv000010DEsd000016EBbc03sc02i00"
    assert vfio_variant_drivers(grace, aliases) == ["nvgrace_gpu_vfio_pci"]
    assert vfio_variant_drivers("pci:v000010DEd00001E04sv00001458sd000037A9bc03sc00i00", aliases) == []
    assert vfio_variant_drivers(None, aliases) == []


def test_the_most_specific_variant_alias_wins():
    aliases = [
        ("v000010DEd*sv*sd*bc03sc*i*", "generic_vfio_pci"),
        ("v000010DEd00002342sv000010DEsd000016EBbc*sc*i*", "nvgrace_gpu_vfio_pci"),
        ("v000010DEd00002342sv*sd*bc*sc*i*", "nvgrace_gpu_vfio_pci"),
    ]
    grace = "pci:v000010DEd00002342sv000010DEsd000016EBbc03sc02i00"
    assert vfio_variant_drivers(grace, aliases) == ["nvgrace_gpu_vfio_pci", "generic_vfio_pci"]
    assert vfio_variant_drivers("pci:v000010DEd00001E04sv00001458sd000037A9bc03sc00i00", aliases) == [
        "generic_vfio_pci"
    ]
    assert vfio_variant_drivers("garbage", aliases) == []


def test_release_of_an_image_tree(tmp_path):
    (tmp_path / "lib" / "modules" / "6.1.0-25-amd64").mkdir(parents=True)
    assert read_release(str(tmp_path)) == "6.1.0-25-amd64"
    (tmp_path / "lib" / "modules" / "6.1.0-26-amd64").mkdir()
    assert read_release(str(tmp_path)) is None, "two kernels: no way to tell which one runs"


# --- NVIDIA vGPU ----------------------------------------------------------------------------------------


def test_parse_creatable_vgpu_types():
    text = "ID    : vGPU Name\n1030  : NVIDIA L40S-1B\n1041  : NVIDIA L40S-8Q\n"

    assert parse_creatable_vgpu_types(text) == (
        [{"id": 1030, "name": "NVIDIA L40S-1B"}, {"id": 1041, "name": "NVIDIA L40S-8Q"}],
        [],
    )
    assert parse_creatable_vgpu_types("ID    : vGPU Name\n") == ([], [])
    # As vgpu-device-manager reads it: an ID without the colon is an entry too.
    assert parse_creatable_vgpu_types("ID : vGPU Name\n1030 NVIDIA L40S-1B\n") == (
        [{"id": 1030, "name": "NVIDIA L40S-1B"}], []
    )


def test_malformed_creatable_types_give_null_and_a_finding(tmp_path):
    write(str(tmp_path), "dev/nvidia/creatable_vgpu_types", "ID : vGPU Name\n1030 :\n")
    write(str(tmp_path), "dev/nvidia/current_vgpu_type", "not-a-number\n")
    findings = Findings()

    state = read_nvidia_vgpu(str(tmp_path / "dev"), DGPU, findings)

    assert state == {"creatable": None, "current": None}
    assert [f["code"] for f in findings] == ["malformed_attribute", "malformed_attribute"]
    assert "1030 :" in findings.as_list()[0]["message"]


def test_profile_name():
    assert profile_name("NVIDIA A100-4C") == "A100-4C"
    assert profile_name("") is None and profile_name(None) is None


# --- pci.ids and class names ----------------------------------------------------------------------------

PCI_IDS = b"""#
# comment
10de  NVIDIA Corporation
\t1e04  TU102 [GeForce RTX 2080 Ti]
\t\t1458 37a9  Some Gigabyte card
\t20b5  GA100 [A100 PCIe 80GB]
1234  Other Vendor
\t20b6  Not NVIDIA's
ffff  Illegal Vendor ID

C 03  Display controller
\t00  VGA compatible controller
"""


def test_pci_ids_lookup():
    ids = PciIds(PCI_IDS)

    assert ids.vendor_name("10de") == "NVIDIA Corporation"
    assert ids.device_name("10de", "1e04") == "TU102 [GeForce RTX 2080 Ti]"
    assert ids.device_name("10de", "20b6") is None, "a device of the next vendor is not NVIDIA's"
    assert ids.device_name("1234", "20b6") == "Not NVIDIA's"
    assert ids.device_name("1458", "37a9") is None, "subsystem lines are not devices"
    assert ids.vendor_name("abcd") is None and ids.device_name("abcd", "0001") is None
    assert ids.vendor_name("ffff") == "Illegal Vendor ID"
    assert ids.vendor_name(None) is None


def test_pci_ids_found_in_hwdata_or_gzipped(tmp_path):
    assert PciIds.load(str(tmp_path)) is None
    path = tmp_path / "usr" / "share" / "misc" / "pci.ids.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wb") as handle:
        handle.write(PCI_IDS)
    assert PciIds.load(str(tmp_path)).vendor_name("10de") == "NVIDIA Corporation"


def test_pci_ids_mapped_from_disk_names_a_whole_host_like_single_lookups(tmp_path):
    path = tmp_path / "usr" / "share" / "hwdata" / "pci.ids"
    path.parent.mkdir(parents=True)
    # A vendor on the very first line has no newline before it.
    path.write_bytes(b"1af4  Red Hat, Inc.\n\t1050  Virtio 1.0 GPU\n" + PCI_IDS)
    pairs = {("1af4", "1050"), ("10de", "1e04"), ("10de", "20b6"), ("1234", "20b6"), ("abcd", "0001"), (None, None)}

    names = PciIds.load(str(tmp_path)).names(pairs)

    single = PciIds.load(str(tmp_path))
    assert names == {pair: (single.vendor_name(pair[0]), single.device_name(*pair)) for pair in pairs}
    assert names[("1af4", "1050")] == ("Red Hat, Inc.", "Virtio 1.0 GPU")
    assert names[("10de", "20b6")] == ("NVIDIA Corporation", None)


def test_a_pci_ids_out_of_order_names_a_host_like_single_lookups():
    # Vendors are looked for in ID order from where the one before was found; a file out of that
    # order (a local addition, a vendor listed twice) is read whole for the ones missed.
    data = (b"# local\n1234  Other Vendor\n\t20b6  Not NVIDIA's\n10de  NVIDIA Corporation\n"
            b"\t1e04  TU102 [GeForce RTX 2080 Ti]\n1234  Listed twice\n\t20b6  Second\n0abc  Early\n\t0001  One\n")
    pairs = {("10de", "1e04"), ("1234", "20b6"), ("0abc", "0001"), ("abcd", "0001")}

    names = PciIds(data).names(pairs)

    single = PciIds(data)
    assert names == {pair: (single.vendor_name(pair[0]), single.device_name(*pair)) for pair in pairs}
    assert names[("1234", "20b6")] == ("Other Vendor", "Not NVIDIA's"), "the first line of a vendor wins"
    assert names[("0abc", "0001")] == ("Early", "One")


def _large_pci_ids(rng):
    """A pci.ids in ID order as the database writes it, and ``{vendor: [its devices]}``: vendors
    with blocks of every size (some of thousands of devices, some devices with long runs of
    subsystems), comments in blocks, then the classes."""
    lines = ["#", "#\tList of PCI ID's", "#"]
    listed = {}
    for vendor in sorted(rng.sample(range(0x0001, 0xFFFF), 400)):
        lines.append("%04x  Vendor %04x" % (vendor, vendor))
        count = rng.choice((0, 1, 3, 10, 40, 300)) if vendor % 50 else 3000
        listed[vendor] = sorted(rng.sample(range(0x10000), count))
        for device in listed[vendor]:
            lines.append("\t%04x  Device %04x:%04x" % (device, vendor, device))
            lines.extend("\t\t1043 %04x  A card" % card for card in range(rng.choice((0, 0, 0, 0, 0, 0, 2, 80))))
        if vendor % 11 == 0:
            lines.append("# a comment in a block")
    lines += ["", "# List of known device classes", "C 03  Display controller", "\t00  VGA compatible controller",
              "\t\t00  VGA controller", "C 0c  Serial bus controller", "\t03  USB controller"]
    return ("\n".join(lines) + "\n").encode(), listed


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_large_pci_ids_names_a_host_like_single_lookups(seed):
    # Lines are found by halving ranges of the file: the first and last device of each block, IDs
    # between two listed ones, vendors not listed, and a vendor appended after the classes.
    rng = random.Random(seed)
    data, listed = _large_pci_ids(rng)
    data += b"0001  Appended after the classes\n\t0002  Local device\n"
    pairs = {("0001", "0002"), ("0001", "0003"), ("ffff", "0000"), ("0000", "0000")}
    for vendor, devices in listed.items():
        for device in devices[:1] + devices[-1:] + rng.sample(devices, min(3, len(devices))):
            pairs.add(("%04x" % vendor, "%04x" % device))
            pairs.add(("%04x" % vendor, "%04x" % ((device + 1) % 0x10000)))
        pairs.add(("%04x" % vendor, "%04x" % rng.randrange(0x10000)))
        if vendor + 1 not in listed and rng.random() < 0.05:
            pairs.add(("%04x" % (vendor + 1), "0000"))

    names = PciIds(data).names(pairs)

    single = PciIds(data)
    assert names == {pair: (single.vendor_name(pair[0]), single.device_name(*pair)) for pair in pairs}
    assert names[("0001", "0002")] == ("Appended after the classes", "Local device")
    assert sum(1 for name in names.values() if name[1]) > 1000, "most pairs name a listed device"
    assert len(data) > 1000000, "as long as the database's own file"


def test_an_empty_pci_ids_is_a_database_without_names(tmp_path):
    empty = tmp_path / "usr" / "share" / "hwdata" / "pci.ids"
    empty.parent.mkdir(parents=True)
    empty.write_bytes(b"")
    later = tmp_path / "usr" / "share" / "misc" / "pci.ids"
    later.parent.mkdir(parents=True)
    later.write_bytes(PCI_IDS)

    ids = PciIds.load(str(tmp_path))

    assert ids is not None, "the first pci.ids found is the host's, even when empty"
    assert ids.names({("10de", "1e04")}) == {("10de", "1e04"): (None, None)}


def test_class_names():
    assert class_name("030000") == "VGA compatible controller"
    assert class_name("030200") == "3D controller"
    assert class_name("0c8000") == "Serial bus controller"
    assert class_name("120000") == "Processing accelerators"
    assert class_name("ab0000") is None and class_name(None) is None


def test_devices_without_pci_ids_get_a_class_based_name(make_host):
    root = make_host("desktop_dgpu", pci_ids=False)

    topology = detect(root)

    gpu = next(g for g in topology["gpus"] if g["address"] == DGPU)
    assert gpu["name"] == "VGA compatible controller [10de:1e04]"
    assert dev(topology)["vendor_name"] is None and dev(topology)["device_name"] is None


# --- interrupt remapping, VFIO holders ------------------------------------------------------------------


def test_interrupt_remapping_from_proc_interrupts(tmp_path):
    root = str(tmp_path)
    assert interrupt_remapping_state(root, [], []) is None
    write(root, "proc/interrupts", "  CPU0\n 24: 1 IR-PCI-MSI 512000-edge ahci\n")
    assert interrupt_remapping_state(root, [], []) is True
    assert interrupt_remapping_state(root, ["intremap=off"], []) is False
    write(root, "proc/interrupts", "  CPU0\n 24: 1 PCI-MSI 512000-edge ahci\n")
    assert interrupt_remapping_state(root, [], []) is False


# arm64's GIC ITS (drivers/irqchip/irq-gic-v3-its-msi-parent.c, prefix "ITS-") and PowerNV's MSI chip
# (arch/powerpc/platforms/powernv/pci-ioda.c) end in x86's chip names: not x86's chips.
ITS_INTERRUPTS = (" 47:  120  ITS-PCI-MSIX-0000:01:00.0   0 Edge      nvidia\n"
                  " 48: 0  ITS-PCI-MSI-0004:00:00.0 0 Edge PCIe PME\n")
PNV_INTERRUPTS = " 40:  1203  PNV-PCI-MSI 1048576 Edge      nvme0q0\n"


def test_other_architectures_chips_are_not_x86_interrupt_chips(tmp_path, make_host):
    root = str(tmp_path)
    for text in (ITS_INTERRUPTS, PNV_INTERRUPTS):
        write(root, "proc/interrupts", "  CPU0\n" + text)
        assert interrupt_remapping_state(root, [], []) is None
    write(root, "proc/interrupts", "  CPU0\n 24: 1 IR-PCI-MSIX-0000:00:14.3 0-edge iwlwifi\n")
    assert interrupt_remapping_state(root, [], []) is True
    # Interrupt remapping is x86's question: an arm64 host whose IOMMU is not an SMMU (virtio-iommu, a
    # DART) and a POWER host are not told to turn it on.
    arm = make_host("grace_hopper", files={"proc/interrupts": "  CPU0\n" + ITS_INTERRUPTS})
    assert read_iommu(arm, [], "aarch64").interrupt_remapping is None
    os.rename(os.path.join(arm, "sys/class/iommu"), os.path.join(arm, "sys/class/iommu.gone"))
    os.makedirs(os.path.join(arm, "sys/class/iommu/virtio0"))
    os.remove(os.path.join(arm, "sys/firmware/acpi/tables/IORT"))
    iommu = read_iommu(arm, [], "aarch64")
    assert iommu.vendor is None and iommu.interrupt_remapping is None
    power = make_host("power9_host", files={"proc/interrupts": "  CPU0\n" + PNV_INTERRUPTS})
    topology = detect(power)
    assert topology["iommu"]["interrupt_remapping"] is None
    assert "interrupt_remapping_off" not in [finding["code"] for finding in topology["findings"]]


def test_interrupt_remapping_from_intel_ecap(tmp_path):
    root = str(tmp_path)
    write(root, "sys/class/iommu/dmar0/intel-iommu/ecap", "f020d7\n")  # bit 3 clear
    assert interrupt_remapping_state(root, [], ["dmar0"]) is False
    write(root, "sys/class/iommu/dmar0/intel-iommu/ecap", "f020df\n")
    assert interrupt_remapping_state(root, [], ["dmar0"]) is None, "capable is not the same as on"
    write(root, "sys/class/iommu/dmar0/intel-iommu/ecap", "zz\n")
    assert interrupt_remapping_state(root, [], ["dmar0"]) is None


def test_processes_are_not_scanned_without_vfio_device_files(tmp_path):
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "proc", "99", "fd"))
    os.symlink("/dev/vfio/5", os.path.join(root, "proc", "99", "fd", "3"))
    write(root, "proc/99/comm", "qemu\n")

    assert vfio_holders(root) == {}
    write(root, "dev/vfio/5", "")
    assert vfio_holders(root) == {"5": [{"pid": 99, "comm": "qemu"}]}


def test_a_no_iommu_groups_holder_is_keyed_by_its_group(tmp_path):
    # With vfio's enable_unsafe_noiommu_mode, group 2's file is /dev/vfio/noiommu-2 (vfio_create_group()),
    # while its device's iommu_group link names group 2: a DPDK process holding it holds the device.
    root = str(tmp_path)
    write(root, "dev/vfio/noiommu-2", "")
    os.makedirs(os.path.join(root, "proc", "4242", "fd"))
    os.symlink("/dev/vfio/noiommu-2", os.path.join(root, "proc", "4242", "fd", "20"))
    write(root, "proc/4242/comm", "dpdk-testpmd\n")

    holders = vfio_holders(root)
    assert holders == {"2": [{"pid": 4242, "comm": "dpdk-testpmd"}]}
    assert users_of(holders, "2", "0000:01:00.0") == [{"pid": 4242, "comm": "dpdk-testpmd"}]

# --- critical devices ------------------------------------------------------------------------------------


def test_ipv6_default_route_and_bond_members(make_host):
    root = make_host(
        "desktop_dgpu",
        network={
            "default_route": None,
            "interfaces": {"eno1": "00:1f.6", "enp3s0": "02:00.0", "bond0": {"lower": ["eno1", "enp3s0"]}},
        },
    )
    write(root, "proc/net/ipv6_route", "%s 00 %s 00 %s 00000400 00000001 00000000 00000003     bond0\n" % (
        "0" * 32, "0" * 32, "fe800000000000000000000000000001"))

    assert default_route_interfaces(root) == ["bond0"]
    assert interface_devices(root, "bond0") == ["0000:00:1f.6", "0000:02:00.0"]
    assert critical_devices(root)["0000:00:1f.6"] == ["NIC of the default route (bond0)"]


def test_links_leading_outside_the_root_are_ignored(make_host):
    root = make_host("desktop_dgpu")
    link = os.path.join(root, "sys/devices/pci0000:00/0000:00:1f.6/net/eno1/device")
    os.unlink(link)
    os.symlink("/sys/devices/pci0000:00/0000:00:03.0", link)

    assert "0000:00:1f.6" not in critical_devices(root)
    assert all(address.startswith("0000:0") for address in critical_devices(root))


def test_container_root_filesystem_has_no_device(make_host):
    root = make_host("desktop_dgpu", root_fs=None)

    assert "0000:02:00.0" not in critical_devices(root)


# --- bad attributes: null plus a finding -------------------------------------------------------------------


def test_garbage_vendor_without_uevent(make_host):
    root = make_host("desktop_dgpu", files={DGPU_DIR + "/uevent": None, DGPU_DIR + "/vendor": "0xZZZZ\n"})

    topology = detect(root)

    assert dev(topology)["vendor_id"] is None
    assert dev(topology)["device_id"] == "1e04", "the other attributes are still read"
    (found,) = findings_for(topology, DGPU, "malformed_attribute")
    assert "/sys/bus/pci/devices/0000:01:00.0/vendor" in found["message"] and "0xZZZZ" in found["message"]
    assert dev(topology)["driver"] == "nvidia", "without uevent the driver comes from the link"


def test_truncated_uevent_falls_back_to_the_attributes(make_host):
    root = make_host("desktop_dgpu", files={DGPU_DIR + "/uevent": "DRIVER=nvidia\nPCI_CLASS=30000\nPCI_ID=10D"})

    topology = detect(root)

    entry = dev(topology)
    assert (entry["vendor_id"], entry["device_id"], entry["class"]) == ("10de", "1e04", "030000")
    assert (entry["subsystem_vendor_id"], entry["subsystem_device_id"]) == ("1458", "37a9")
    messages = [f["message"] for f in findings_for(topology, DGPU, "malformed_attribute")]
    assert len(messages) == 1 and "PCI_ID=10D" in messages[0] and "uevent" in messages[0]


def test_binary_uevent(make_host):
    root = make_host("desktop_dgpu", files={DGPU_DIR + "/uevent": b"\xff\xfe\x00garbage"})

    topology = detect(root)

    assert dev(topology)["vendor_id"] == "10de"
    (found,) = findings_for(topology, DGPU, "unreadable_attribute")
    assert "not UTF-8" in found["message"]


@pytest.mark.parametrize(
    ("attribute", "value", "field", "expected"),
    [
        ("numa_node", "one\n", "numa_node", None),
        ("numa_node", "", "numa_node", None),
        ("reset_method", "flr; rm -rf /\n", "reset_methods", None),
        ("driver_override", b"\x80\x81", "driver_override", None),
    ],
)
def test_malformed_attribute_gives_null_and_a_finding(make_host, attribute, value, field, expected):
    root = make_host("desktop_dgpu", files={DGPU_DIR + "/" + attribute: value})

    topology = detect(root)

    assert dev(topology)[field] is expected
    problems = [f for f in topology["findings"] if f["device"] == DGPU and f["code"].endswith("_attribute")]
    assert len(problems) == 1 and attribute in problems[0]["message"]


def test_malformed_boot_vga_and_iommu_group_link(make_host):
    root = make_host(
        "desktop_dgpu",
        files={DGPU_DIR + "/boot_vga": "maybe\n"},
        links={DGPU_DIR + "/iommu_group": "../../../../kernel/iommu_groups/two"},
    )

    topology = detect(root)

    assert dev(topology)["boot_vga"] is None and dev(topology)["iommu_group"] is None
    messages = " ".join(f["message"] for f in findings_for(topology, DGPU, "doubtful_attribute"))
    assert "boot_vga" in messages and "iommu_group" in messages
    assert "no_iommu_group" in [f["code"] for f in topology["findings"]]


def test_dangling_device_link(make_host):
    root = make_host("desktop_dgpu", links={"sys/bus/pci/devices/0000:05:00.0": "../../../devices/pci0000:00/gone"})

    topology = detect(root)

    ghost = dev(topology, "0000:05:00.0")
    assert ghost["vendor_id"] is None and ghost["class"] is None and ghost["reset_methods"] is None
    assert findings_for(topology, "0000:05:00.0", "unreadable_device")


def test_entries_that_are_not_addresses_are_reported(make_host):
    root = make_host("desktop_dgpu", files={"sys/bus/pci/devices/README": "hello"})
    findings = Findings()

    devices = read_pci_devices(root, findings)

    assert "README" not in devices and len(devices) == 15
    assert [f["code"] for f in findings] == ["malformed_entry"]


@pytest.mark.parametrize("name", ["0000:01:00.0\n0000:01:00.1", "0000:01:00.0 ", "0000:01:00.8", "0000:01:00.0.0"])
def test_a_name_that_only_looks_like_addresses_is_reported_not_read(make_host, name):
    root = make_host("desktop_dgpu", files={"sys/bus/pci/devices/" + name: "hello"})
    findings = Findings()

    devices = read_pci_devices(root, findings)

    assert name not in devices and len(devices) == 15
    assert [f["code"] for f in findings] == ["malformed_entry"]


def test_malformed_sriov_and_mdev_values(make_host):
    pf_dir = "sys/devices/pci0000:b0/0000:b0:02.0/0000:b1:00.0"
    vf_types = "sys/devices/pci0000:b0/0000:b0:02.0/0000:b1:00.5/mdev_supported_types/nvidia-471"
    root = make_host(
        "datacenter_a100",
        files={pf_dir + "/sriov_totalvfs": "lots\n", vf_types + "/available_instances": "-1\n"},
    )
    findings = Findings()

    topology = detect(root)
    types = read_mdev_types(root, "0000:b1:00.5", findings)

    pf = dev(topology, "0000:b1:00.0")
    assert pf["sriov"]["total_vfs"] is None and pf["sriov"]["num_vfs"] == 16
    assert types[0].id == "nvidia-471" and types[0].available_instances is None
    assert any("available_instances" in f["message"] for f in findings)
    assert findings_for(topology, "0000:b1:00.0", "malformed_attribute")


def test_mdev_entries_that_are_not_uuids_are_ignored(make_host):
    root = make_host("datacenter_a100", files={"sys/bus/mdev/devices/not-a-uuid": "x"})
    findings = Findings()

    assert [m["uuid"] for m in mdevs(root, findings)] == ["6c3e1ab4-4a52-4e2c-9a3e-0a4d9c1e2f01"]
    assert [f["code"] for f in findings] == ["malformed_entry"]


def test_parsed_creatable_types_are_each_callers_own():
    text = "ID    : vGPU Name\n557   : NVIDIA L40S-1Q\n558   : NVIDIA L40S-2Q\n"
    first, _bad = parse_creatable_vgpu_types(text)
    first[0]["name"] = "changed"
    first.append({"id": 1, "name": "added"})

    again, bad = parse_creatable_vgpu_types(text)

    assert again == [{"id": 557, "name": "NVIDIA L40S-1Q"}, {"id": 558, "name": "NVIDIA L40S-2Q"}] and bad == []


@pytest.mark.parametrize("name", ["desktop_dgpu", "datacenter_a100", "large_synthetic"])
def test_reset_methods_are_unknown_where_no_device_shows_reset_method(make_host, name):
    # Linux before 5.15 has no reset_method attribute: no device of such a host shows it, and an
    # empty list would claim that none can be reset. One function showing it proves the kernel has
    # the attribute, and then a function without it has no reset method.
    root = make_host(name)
    shown = sorted(
        os.path.join(directory, "reset_method")
        for directory, _dirs, files in os.walk(os.path.join(root, "sys/devices"))
        if "reset_method" in files
    )
    assert shown, "the fixture host has functions with reset methods"
    kept, *removed = shown
    for path in removed:
        os.remove(path)
    kept_address = os.path.basename(os.path.dirname(kept))

    methods = {entry["address"]: entry["reset_methods"] for entry in detect(root)["devices"]}

    assert methods.pop(kept_address)
    assert methods and all(found == [] for found in methods.values())

    os.remove(kept)
    methods = {entry["address"]: entry["reset_methods"] for entry in detect(root)["devices"]}
    assert len(methods) > 1 and all(found is None for found in methods.values())
