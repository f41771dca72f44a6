# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bad input, from the caller or from the host: refused with a message that names the value and
what is allowed, no traceback, and the tree byte-for-byte as it was."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import pytest

from ansible_collections.gpuvirt.host.tests.reliability.support import (
    BOOTLOADER_TREES,
    CACHE,
    DGPU,
    DGPU_DIR,
    L40S,
    NVME,
    STATE,
    changed_paths,
    digest,
    no_traceback,
    run,
)


@dataclass
class Case:
    module: str
    tree: str  # "combined", "desktop", "empty" or a bootloader name
    args: dict
    words: tuple  # all must be in the message: the bad value, then what is allowed
    files: dict = field(default_factory=dict)  # relative path -> text (None deletes)
    links: dict = field(default_factory=dict)  # relative path -> link target
    subject: str = ""

    @property
    def row(self):
        return self.subject or self.module


def _id(case):
    return "%s-%s-%s" % (case.module, case.tree, json.dumps(case.args, sort_keys=True)[:60])


# -- kernel_cmdline, on each bootloader's fixture tree --------------------------------------------

LONG_LINE = ["opt%02d=%s" % (i, "v" * 100) for i in range(25)]
KERNEL_ARGS = [
    ({"absent": ["root"]}, ("'root'", "cannot be removed")),
    ({"absent": ["root=/dev/sda1"]}, ("'root=/dev/sda1'", "replaces the value instead")),
    ({"absent": ["rd.lvm.lv"]}, ("'rd.lvm.lv'", "cannot be removed")),
    ({"absent": ["rootflags=subvol=@"]}, ("'rootflags=subvol=@'", "cannot be removed")),
    ({"absent": ["boot"]}, ("'boot'", "cannot be removed")),
    ({"present": ["root="]}, ("'root='", "give root=<value>")),
    ({"present": ["root"]}, ("'root'", "give root=<value>")),
    ({"present": ["#quiet"]}, ("'#quiet'", "letters, digits")),
    ({"present": ["quiet#x"]}, ("'quiet#x'", "letters, digits")),
    ({"present": ["a" * 4096]}, ("4096 characters long", "at most 1024")),
    ({"present": ["x=" + "y" * 1100]}, ("1102 characters long", "at most 1024")),
    ({"present": ["a\nb"]}, ("'a\\nb'", "letters, digits")),
    ({"present": ["a b"]}, ("'a b'", "letters, digits")),
    ({"present": ['a="b"']}, ("'a=\"b\"'", "letters, digits")),
    ({"present": ["a=$(reboot)"]}, ("'a=$(reboot)'", "letters, digits")),
    ({"present": ["a=\u00e9"]}, ("'a=\u00e9'", "letters, digits")),
    ({"absent": ["a\x00b"]}, ("'a\\x00b'", "letters, digits")),
    ({"present": [""]}, ("argument is empty", "key or key=value")),
    ({"present": ["=x"]}, ("'=x'", "key or key=value")),
    ({"present": ["--"]}, ("'--'", "cannot be managed")),
    ({"present": LONG_LINE}, ("characters long", "reads at most 2048")),
    ({"present": ["intel_iommu=on"], "absent": ["intel_iommu"]}, ("'intel_iommu'", "cannot be both")),
    ({"bootloader": "lilo"}, ("lilo", "one of")),
]
CASES = [
    Case(
        "kernel_cmdline",
        bootloader,
        dict({"bootloader": bootloader}, **args),
        words,
        subject="kernel_cmdline/" + bootloader,
    )
    for bootloader in BOOTLOADER_TREES
    for args, words in KERNEL_ARGS
]
CASES += [
    Case(
        "kernel_cmdline",
        "grub",
        {"root": "/nonexistent/root", "present": ["quiet"]},
        ("/nonexistent/root", "does not exist"),
        subject="kernel_cmdline/grub",
    ),
]

# Arguments of another architecture, on the desktop host booting GRUB; its cpuinfo says which kernel.
GRUB_DEFAULTS = {"etc/default/grub": 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX=""\n'}
ARM64_CPUINFO = {"proc/cpuinfo": "processor\t: 0\nBogoMIPS\t: 2000.00\nFeatures\t: fp asimd evtstrm\n"
                                 "CPU implementer\t: 0x41\nCPU part\t: 0xd4f\n"}
POWER_CPUINFO = {"proc/cpuinfo": "processor\t: 0\ncpu\t\t: POWER9 (raw), altivec supported\n"
                                 "platform\t: PowerNV\n"}
CASES += [
    Case("kernel_cmdline", "desktop", {"present": [argument]}, words, files=dict(GRUB_DEFAULTS, **cpuinfo),
         subject="kernel_cmdline/architecture")
    for argument, cpuinfo, words in [
        ("intel_iommu=on,sm_on", ARM64_CPUINFO, ("'intel_iommu=on,sm_on'", "aarch64", "iommu.passthrough=1")),
        ("iommu=pt", ARM64_CPUINFO, ("'iommu=pt'", "aarch64", "use iommu.passthrough=1")),
        ("kvm-intel.nested=1", ARM64_CPUINFO, ("'kvm-intel.nested=1'", "aarch64", "kvm-arm.mode=")),
        ("arm-smmu-v3.disable_msipolling=1", {}, ("'arm-smmu-v3.disable_msipolling=1'", "x86_64", "intel_iommu=on")),
        ("kvm-arm.mode=nvhe", {}, ("'kvm-arm.mode=nvhe'", "x86_64", "kvm_intel")),
        ("iommu=pt", POWER_CPUINFO, ("'iommu=pt'", "ppc64le", "nobypass")),
        ("amd_iommu=on", POWER_CPUINFO, ("'amd_iommu=on'", "ppc64le", "sPAPR TCE")),
    ]
]

# -- restore_unit -----------------------------------------------------------------------------------

ALLOWED_WAIT = "a finite number > 0 and <= 3600"
COLLECTION = "usr/share/ansible/collections/ansible_collections/gpuvirt/host/"
INSTALLED_COLLECTION = {
    COLLECTION + "MANIFEST.json": "{}\n",
    COLLECTION + "plugins/modules/vfio_pci.py": "# module\n",
    COLLECTION + "plugins/module_utils/bootloader.py": "# module_utils\n",
    COLLECTION + "plugins/module_utils/errors.py": "# module_utils\n",
}
CASES += [
    Case(
        "restore_unit",
        "empty",
        {"prefix": "/usr/local/lib/gpuvirt\nExecStartPre=/bin/sh"},
        ("'\\n'", "plain absolute path"),
    ),
    Case(
        "restore_unit",
        "empty",
        {"python": "/usr/bin/python3\nExecStartPre=/bin/touch /x"},
        ("'\\n'", "plain absolute path"),
    ),
    Case(
        "restore_unit",
        "empty",
        {"python": "/opt/my python/bin/python3"},
        ("'/opt/my python/bin/python3'", "without whitespace"),
    ),
    Case("restore_unit", "empty", {"python": "/usr/bin/py;rm"}, ("';'", "without whitespace")),
    Case("restore_unit", "empty", {"prefix": "/usr/%h/gpuvirt"}, ("'%'", "without whitespace")),
    Case("restore_unit", "empty", {"python": "python3"}, ("python3", "starts with /")),
    Case("restore_unit", "empty", {"prefix": "/../escape"}, ("'/../escape'", "without parent-folder steps")),
    # The prefix of an installed collection: its module_utils would be rewritten, or deleted.
    Case("restore_unit", "empty", {"prefix": "/usr/share/ansible/collections"},
         ("/usr/share/ansible/collections holds an installed collection", "MANIFEST.json", "plugins/modules"),
         files=INSTALLED_COLLECTION),
    Case("restore_unit", "empty", {"prefix": "/usr/share/ansible/collections", "state": "absent"},
         ("holds an installed collection", "a folder of the restore's own"), files=INSTALLED_COLLECTION),
    Case("restore_unit", "empty", {"prefix": "/../escape", "state": "absent"}, ("'/../escape'", "parent-folder")),
    Case("restore_unit", "empty", {"timeout": -5}, ("timeout: -5", ALLOWED_WAIT)),
    Case("restore_unit", "empty", {"timeout": 0}, ("timeout: 0", ALLOWED_WAIT)),
    Case("restore_unit", "empty", {"timeout": "nan"}, ("timeout: nan", ALLOWED_WAIT)),
    Case("restore_unit", "empty", {"timeout": "inf"}, ("timeout: inf", ALLOWED_WAIT)),
    Case("restore_unit", "empty", {"timeout": "-inf"}, ("timeout: -inf", ALLOWED_WAIT)),
    Case("restore_unit", "empty", {"timeout": 1e9}, ("timeout: 1000000000", ALLOWED_WAIT)),
    Case("restore_unit", "empty", {"timeout": "soon"}, ("timeout", "float")),
    Case("restore_unit", "empty", {"mdevctl_grace": -1}, ("mdevctl_grace: -1", ">= 0 and <= 3600")),
    Case("restore_unit", "empty", {"mdevctl_grace": "nan"}, ("mdevctl_grace: nan", ">= 0 and <= 3600")),
    Case(
        "restore_unit", "empty", {"root": "/nonexistent/gpuvirt-root"}, ("/nonexistent/gpuvirt-root", "never created")
    ),
    Case("restore_unit", "empty", {"root": "@/file"}, ("file", "is not a directory"), files={"file": "x"}),
    Case(
        "restore_unit", "empty", {}, ("leads out of root", "inside root"), links={"usr/local/lib": "../../../outside"}
    ),
    Case("restore_unit", "empty", {}, ("leads out of root", "inside root"), links={"etc/systemd": "../../outside"}),
]

# -- vfio_pci: guard attributes that read malformed, and bad options ------------------------------

NO_UEVENT = {DGPU_DIR + "/uevent": None}
CASES += [
    Case(
        "vfio_pci",
        "desktop",
        {"devices": [DGPU]},
        ("'maybe'", "expected 0 or 1"),
        files={DGPU_DIR + "/boot_vga": "maybe\n"},
    ),
    Case(
        "vfio_pci",
        "desktop",
        {"devices": [DGPU]},
        ("boot_vga reads ''", "expected 0 or 1"),
        files={DGPU_DIR + "/boot_vga": ""},
    ),
    Case(
        "vfio_pci",
        "desktop",
        {"devices": [DGPU]},
        ("iommu_groups/99", "does not exist or loops"),
        links={DGPU_DIR + "/iommu_group": "../../../../kernel/iommu_groups/99"},
    ),
    Case(
        "vfio_pci",
        "desktop",
        {"devices": [DGPU]},
        ("'iommu_group'", "not to iommu_groups/<number>"),
        links={DGPU_DIR + "/iommu_group": "iommu_group"},
    ),
    Case(
        "vfio_pci",
        "desktop",
        {"devices": [DGPU]},
        ("'0x03'", "6 hex digits"),
        files=dict(NO_UEVENT, **{DGPU_DIR + "/class": "0x03\n"}),
    ),
    Case(
        "vfio_pci",
        "desktop",
        {"devices": [DGPU]},
        ("'0x0300'", "6 hex digits"),
        files=dict(NO_UEVENT, **{DGPU_DIR + "/class": "0x0300\n"}),
    ),
    Case(
        "vfio_pci",
        "desktop",
        {"devices": [DGPU]},
        ("'../../../somewhere/nvidia'", "not to drivers/<name>"),
        files=NO_UEVENT,
        links={DGPU_DIR + "/driver": "../../../somewhere/nvidia"},
    ),
    Case("vfio_pci", "desktop", {"devices": ["zz:zz.z"]}, ("zz:zz.z",), subject="vfio_pci"),
    Case("vfio_pci", "desktop", {"devices": [DGPU], "persistence": "sometimes"}, ("sometimes", "one of")),
    # 01:00.0 mistyped: the host bridge (no driver, a group of its own) and the GPU's root port.
    Case("vfio_pci", "desktop", {"devices": ["00:00.0"]}, ("'00:00.0'", "is a host bridge", "select a device")),
    Case("vfio_pci", "desktop", {"devices": ["00:01.0"], "force": True}, ("'00:01.0'", "is a PCI bridge")),
    Case("vfio_pci", "desktop", {"devices": ["8086:a70d"]}, ("'8086:a70d'", "0000:00:01.0", "is a PCI bridge")),
    Case("vfio_pci", "desktop", {"devices": [DGPU, "00:00.0"], "runtime": False}, ("'00:00.0'", "host bridge")),
]

# -- mdev, sriov and nvidia_vgpu on one host; state files and caches ----------------------------

MBOCHS = {"selector": "mbochs", "mdevs": [{"type": "mbochs-small", "count": 1}]}
CORRUPT = {STATE: "{not json"}
NEWER = {STATE: json.dumps({"version": 2, "sriov": {}, "nvidia_vgpu": {}, "mdevs": {}})}
STATE_OUT = {"etc/gpuvirt": "../../outside"}
CACHE_OUT = {"var/lib/gpuvirt": "../../../outside"}
L40S_8Q = [{"selector": L40S, "profiles": [{"profile": "L40S-8Q", "count": 2}]}]
CASES += [
    Case(
        "mdev",
        "combined",
        {"parents": [dict(MBOCHS, mdevs=[{"type": "mbochs-small", "count": 10**12}])]},
        ("1000000000000", "count from 0 to"),
    ),
    Case(
        "mdev",
        "combined",
        {"parents": [dict(MBOCHS, mdevs=[{"type": "mbochs-small", "count": -1}])]},
        ("-1", "count from 0 to"),
    ),
    Case(
        "mdev",
        "combined",
        {"parents": [dict(MBOCHS, mdevs=[{"type": "mbochs-small", "count": "many"}])]},
        ("many", "int"),
    ),
    Case(
        "mdev",
        "combined",
        {"parents": [dict(MBOCHS, mdevs=[{"type": "mbochs-huge", "count": 1}])]},
        ("mbochs-huge", "mbochs-small"),
    ),
    Case(
        "mdev",
        "combined",
        {"parents": [dict(MBOCHS, mdevs=[{"type": "mbochs-small", "uuids": ["not-a-uuid"]}])]},
        ("'not-a-uuid'", "8-4-4-4-12"),
    ),
    Case("mdev", "combined", {"parents": [dict(MBOCHS, selector="nosuch")]}, ("nosuch",)),
    Case("mdev", "combined", {"parents": [MBOCHS]}, ("not valid JSON", "mv "), files=CORRUPT),
    Case("mdev", "combined", {"parents": [MBOCHS]}, ("version 2", "upgrade the collection"), files=NEWER),
    Case("mdev", "combined", {"parents": [MBOCHS]}, ("leads out of root", "inside root"), links=STATE_OUT),
    Case("sriov", "combined", {"devices": [{"selector": NVME, "num_vfs": 5}]}, ("5", "4")),
    Case("sriov", "combined", {"devices": [{"selector": NVME, "num_vfs": -1}]}, ("-1",)),
    Case("sriov", "combined", {"devices": [{"selector": NVME, "num_vfs": 10**12}]}, ("1000000000000",)),
    Case(
        "sriov",
        "combined",
        {"devices": [{"selector": NVME, "num_vfs": 2}], "retries": 10**12},
        ("retries: 1000000000000", "from 0 to 100"),
    ),
    Case(
        "sriov",
        "combined",
        {"devices": [{"selector": NVME, "num_vfs": 2}], "retries": -1},
        ("retries: -1", "from 0 to"),
    ),
    Case("sriov", "combined", {"devices": [{"selector": NVME, "num_vfs": 2}], "delay": "nan"}, ("delay: nan", ">= 0")),
    Case("sriov", "combined", {"devices": [{"selector": NVME, "num_vfs": 2}], "delay": "inf"}, ("delay: inf", ">= 0")),
    Case("sriov", "combined", {"devices": [{"selector": NVME, "num_vfs": 2}], "delay": -1}, ("delay: -1", ">= 0")),
    Case(
        "sriov", "combined", {"devices": [{"selector": NVME, "num_vfs": 2}]}, ("not valid JSON", "mv "), files=CORRUPT
    ),
    Case("sriov", "combined", {"devices": [{"selector": NVME, "num_vfs": 2}]}, ("version 2", "upgrade"), files=NEWER),
    Case(
        "sriov",
        "combined",
        {"devices": [{"selector": NVME, "num_vfs": 2}]},
        ("leads out of root", "inside root"),
        links=STATE_OUT,
    ),
    Case(
        "nvidia_vgpu",
        "combined",
        {"gpus": [{"selector": L40S, "profiles": [{"profile": "L40S-8Q", "count": 10**12}]}]},
        ("1000000000000", "count from 0 to"),
    ),
    Case(
        "nvidia_vgpu",
        "combined",
        {"gpus": [{"selector": L40S, "profiles": [{"profile": "L40S-8Q", "count": -1}]}]},
        ("-1", "count from 0 to"),
    ),
    Case(
        "nvidia_vgpu",
        "combined",
        {"gpus": [{"selector": L40S, "profiles": [{"profile": "L40S-99Q", "count": 1}]}]},
        ("L40S-99Q", "L40S-8Q"),
    ),
    Case(
        "nvidia_vgpu",
        "combined",
        {"gpus": [{"selector": L40S, "vfs": [{"address": "0000:cb:07.7", "profile": "L40S-8Q"}]}]},
        ("0000:cb:07.7", "0000:cb:00.4"),
    ),
    Case("nvidia_vgpu", "combined", {"gpus": L40S_8Q, "retries": 10**12}, ("retries: 1000000000000", "from 0 to 100")),
    Case("nvidia_vgpu", "combined", {"gpus": L40S_8Q, "delay": "inf"}, ("delay: inf", ">= 0")),
    Case("nvidia_vgpu", "combined", {"gpus": L40S_8Q, "delay": "nan"}, ("delay: nan", ">= 0")),
    Case("nvidia_vgpu", "combined", {"gpus": L40S_8Q}, ("not valid JSON", "mv "), files={CACHE: "garbage"}),
    Case(
        "nvidia_vgpu",
        "combined",
        {"gpus": L40S_8Q},
        ("version 2", "upgrade"),
        files={CACHE: json.dumps({"version": 2, "gpus": {}})},
    ),
    Case("nvidia_vgpu", "combined", {"gpus": L40S_8Q}, ("not valid JSON", "mv "), files=CORRUPT),
    Case("nvidia_vgpu", "combined", {"gpus": L40S_8Q}, ("version 2", "upgrade"), files=NEWER),
    Case("nvidia_vgpu", "combined", {"gpus": L40S_8Q}, ("leads out of root", "inside root"), links=STATE_OUT),
    Case("nvidia_vgpu", "combined", {"gpus": L40S_8Q}, ("leads out of root", "inside root"), links=CACHE_OUT),
    Case(
        "topology_info",
        "empty",
        {"root": "/nonexistent/gpuvirt-root"},
        ("/nonexistent/gpuvirt-root", "not a directory"),
    ),
    Case("topology_info", "empty", {}, ("does not look like a Linux", "exists below it")),
    Case("topology_info", "empty", {"root": "@/file"}, ("file", "not a directory"), files={"file": "x"}),
]


def _tree(case, host, boot_tree, tmp_path):
    if case.tree in ("combined", "desktop"):
        return host(case.tree)
    if case.tree == "empty":
        root = tmp_path / "root"
        root.mkdir()
        return str(root)
    return boot_tree(BOOTLOADER_TREES[case.tree])


def _prepare(case, root):
    for relative, text in case.files.items():
        path = os.path.join(root, relative)
        if text is None:
            os.unlink(path)
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(text)
    outside = os.path.join(os.path.dirname(root), "outside")
    os.makedirs(outside, exist_ok=True)
    for relative, target in case.links.items():
        target = outside if target == "@outside" else target
        path = os.path.join(root, relative)
        if os.path.lexists(path):
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path) if not os.listdir(path) else None
            else:
                os.unlink(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.lexists(path):
            os.symlink(target, path)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_bad_input_is_refused_and_changes_nothing(case, host, boot_tree, tmp_path, run_module, row):
    row("bad input", case.row)
    root = _tree(case, host, boot_tree, tmp_path)
    _prepare(case, root)
    args = dict(case.args)
    if str(args.get("root", "")).startswith("@/"):
        args["root"] = os.path.join(root, args["root"][2:])
    watched = os.path.dirname(root)
    before = digest(watched)
    result = run(run_module, case.module, root, args)
    assert result.failed, "accepted: %s" % {k: result.get(k) for k in ("changed", "msg")}
    assert no_traceback(result), result.get("msg")
    message = str(result.get("msg"))
    missing = [w for w in case.words if w not in message]
    assert not missing, "message lacks %s: %s" % (missing, message)
    assert result.get("changed", False) is False, "reported changed: %s" % message
    assert changed_paths(before, digest(watched)) == []
