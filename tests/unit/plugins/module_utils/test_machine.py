# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""machine.read_machine(): whether the host is a virtual machine, from the signs the kernel shows."""

from __future__ import annotations

import os
import sys

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils.machine import read_machine

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures"))
from hostgen import smbios_bios_information as smbios_bios  # noqa: E402

X86_FLAGS = {"fpu", "vme", "sse2", "vmx", "x2apic"}


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    root.mkdir()

    def write(files):
        for relative, content in files.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if content is None:
                path.mkdir()
            else:
                path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(root)

    return write


def dmi(**fields):
    return {"sys/class/dmi/id/" + name: text + "\n" for name, text in fields.items()}


def test_the_x86_hypervisor_flag_makes_a_vm_and_dmi_names_it(tree):
    root = tree(dmi(sys_vendor="QEMU", product_name="Standard PC (Q35 + ICH9, 2009)", bios_vendor="SeaBIOS"))

    assert read_machine(root, X86_FLAGS | {"hypervisor"}) == (True, "QEMU")


def test_the_product_name_is_read_before_the_vendor(tree):
    # Older QEMU/KVM wrote product_name KVM with sys_vendor QEMU: KVM is the more precise name.
    root = tree(dmi(sys_vendor="QEMU", product_name="KVM"))

    assert read_machine(root, X86_FLAGS | {"hypervisor"}) == (True, "KVM")


def test_x86_flags_without_a_sign_are_bare_metal(tree):
    root = tree(dmi(sys_vendor="Dell Inc.", product_name="PowerEdge R760xa"))

    assert read_machine(root, X86_FLAGS) == (False, None)


def test_a_hidden_hypervisor_flag_is_still_a_vm_when_dmi_says_so(tree):
    # GPU passthrough guides hide the flag from old guest drivers (<feature policy='disable' name='hypervisor'/>).
    root = tree(dmi(sys_vendor="QEMU", product_name="Standard PC (i440FX + PIIX, 1996)"))

    assert read_machine(root, X86_FLAGS) == (True, "QEMU")


def test_an_arm64_host_without_signs_is_unknown(tree):
    root = tree(dmi(sys_vendor="Ampere(R)", product_name="Mt.Jade"))

    assert read_machine(root, None) == (None, None)


@pytest.mark.parametrize("flags, expected", [(None, (True, None)), (X86_FLAGS, (True, None))])
def test_the_smbios_virtual_machine_bit_makes_a_vm(tree, flags, expected):
    root = tree({"sys/firmware/dmi/entries/0-0/raw": smbios_bios(True)})

    assert read_machine(root, flags) == expected


def test_a_clear_smbios_bit_says_nothing(tree):
    root = tree({"sys/firmware/dmi/entries/0-0/raw": smbios_bios(False)})

    assert read_machine(root, None) == (None, None)
    assert read_machine(root, X86_FLAGS) == (False, None)


@pytest.mark.parametrize("raw", [
    smbios_bios(True, length=0x13),  # an SMBIOS 2.3 structure: one extension byte, no byte 2
    smbios_bios(True)[:0x13],  # cut short
    b"\x01" + smbios_bios(True)[1:],  # not a BIOS Information structure
    b"",
])
def test_a_structure_without_the_byte_says_nothing(tree, raw):
    root = tree({"sys/firmware/dmi/entries/0-0/raw": raw})

    assert read_machine(root, None) == (None, None)


@pytest.mark.parametrize("product, raw, expected", [
    ("m7g.large", None, (True, "Amazon EC2")),
    ("c7g.metal", None, (False, None)),
    ("c6i.metal-24xl", None, (False, None)),
    ("g5g.metalhead", None, (True, "Amazon EC2")),  # not a .metal instance type
    ("m7g.large", smbios_bios(False), (False, None)),  # the firmware's bit decides where root reads it
    ("c7g.metal", smbios_bios(True), (True, "Amazon EC2")),
])
def test_amazon_ec2_is_a_vm_unless_bare_metal(tree, product, raw, expected):
    files = dmi(sys_vendor="Amazon EC2", product_name=product)
    if raw is not None:
        files["sys/firmware/dmi/entries/0-0/raw"] = raw
    root = tree(files)

    assert read_machine(root, None) == expected


def test_an_oracle_server_is_not_taken_for_virtualbox(tree):
    root = tree(dmi(sys_vendor="Oracle Corporation", product_name="ORACLE SERVER X9-2"))

    assert read_machine(root, X86_FLAGS) == (False, None)
    assert read_machine(root, None) == (None, None)
    assert read_machine(root, X86_FLAGS | {"hypervisor"}) == (True, "VirtualBox")


@pytest.mark.parametrize("product, expected", [("Virtual Machine", (True, "Hyper-V")), ("Surface Pro 9", (None, None))])
def test_microsoft_virtual_machine_is_hyper_v(tree, product, expected):
    root = tree(dmi(sys_vendor="Microsoft Corporation", product_name=product))

    assert read_machine(root, None) == expected


@pytest.mark.parametrize("compatible, name", [
    (b"linux,kvm\x00", "KVM"),
    (b"xen,xen-4.17\x00xen,xen\x00", "Xen"),
    (b"vmware\x00", "VMware"),
    (b"acme,hv\x00", None),
])
def test_a_device_tree_hypervisor_node(tree, compatible, name):
    root = tree({"sys/firmware/devicetree/base/hypervisor/compatible": compatible})

    assert read_machine(root, None) == (True, name)


def test_qemus_fw_cfg_node_in_the_device_tree(tree):
    root = tree({"sys/firmware/devicetree/base/fw-cfg@9020000": None,
                 "sys/firmware/devicetree/base/compatible": b"linux,dummy-virt\x00"})

    assert read_machine(root, None) == (True, "QEMU")


def test_sys_hypervisor_type(tree):
    root = tree({"sys/hypervisor/type": "xen\n"})

    assert read_machine(root, None) == (True, "Xen")


def test_nothing_to_read_is_unknown_or_bare_metal(tmp_path):
    assert read_machine(str(tmp_path), None) == (None, None)
    assert read_machine(str(tmp_path), X86_FLAGS) == (False, None)
    assert not os.listdir(tmp_path)
