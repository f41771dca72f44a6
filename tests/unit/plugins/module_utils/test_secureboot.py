# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Secure Boot, lockdown and module signature enforcement: the readers, the topology, and what a module
load the kernel refused for its signature says."""

from __future__ import annotations

import io
import os

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import hoststate, restore
from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError
from ansible_collections.gpuvirt.host.plugins.module_utils.findings import Findings
from ansible_collections.gpuvirt.host.plugins.module_utils.modrun import ModuleRun
from ansible_collections.gpuvirt.host.plugins.module_utils.secureboot import (
    read_secure_boot,
    signature_advice,
    signature_rejected,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect

EFIVARS = "sys/firmware/efi/efivars/"
SECURE_BOOT = EFIVARS + "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
SETUP_MODE = EFIVARS + "SetupMode-8be4df61-93ca-11d2-aa0d-00e098032b8c"
LOCKDOWN = "sys/kernel/security/lockdown"
SIG_ENFORCE = "sys/module/module/parameters/sig_enforce"
MI300X = "0000:06:00.0"
# What modprobe prints when the kernel refuses a module's signature (EKEYREJECTED, or ENOKEY before 4.18).
REJECTED = {
    "EKEYREJECTED": "modprobe: ERROR: could not insert '%s': Key was rejected by service\n",
    "ENOKEY": "modprobe: ERROR: could not insert '%s': Required key not available\n",
}


def write(root, relative, data):
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data if isinstance(data, bytes) else data.encode())


def state_of(make_host, boot, **changes):
    findings = Findings()
    return read_secure_boot(make_host("desktop_dgpu", boot=boot, **changes), findings), findings.as_list()


# -- readers -----------------------------------------------------------------------------------------


def test_secure_boot_on_reads_enabled_and_enforced(make_host):
    state, findings = state_of(make_host, {"secure_boot": True, "lockdown": "none", "sig_enforce": False})
    assert state == {"firmware": "uefi", "enabled": True, "firmware_secure_boot": True, "setup_mode": False,
                     "shim_validation_disabled": False, "lockdown": "none", "sig_enforce": False,
                     "modules_must_be_signed": True}
    assert [f["code"] for f in findings] == ["module_signatures_enforced"]


def test_the_efivars_file_is_four_attribute_bytes_then_the_value(make_host):
    root = make_host("desktop_dgpu", boot={"secure_boot": True})
    with open(os.path.join(root, SECURE_BOOT), "rb") as handle:
        assert handle.read() == b"\x06\x00\x00\x00\x01"
    write(root, SECURE_BOOT, b"\x06\x00\x00\x00\x00")
    assert read_secure_boot(root)["enabled"] is False


def test_secure_boot_off_with_nothing_enforced_reads_off(make_host):
    state, findings = state_of(make_host, {"secure_boot": False, "lockdown": "none", "sig_enforce": False})
    assert (state["enabled"], state["firmware_secure_boot"], state["modules_must_be_signed"]) == (False, False, False)
    assert findings == []


def test_setup_mode_turns_secure_boot_off_as_the_kernel_does(make_host):
    state, _findings = state_of(make_host, {"secure_boot": True, "setup_mode": True, "lockdown": "none",
                                            "sig_enforce": False})
    assert (state["firmware_secure_boot"], state["setup_mode"], state["enabled"]) == (True, True, False)
    assert state["modules_must_be_signed"] is False


def test_shim_validation_disabled_turns_secure_boot_off(make_host):
    state, _findings = state_of(make_host, {"secure_boot": True, "shim_validation_disabled": True})
    assert (state["firmware_secure_boot"], state["shim_validation_disabled"], state["enabled"]) == (True, True, False)


def test_firmware_without_a_secure_boot_variable_reads_off(make_host):
    state, _findings = state_of(make_host, {"firmware": "uefi"})
    assert (state["firmware"], state["enabled"], state["firmware_secure_boot"]) == ("uefi", False, False)


def test_efivarfs_not_mounted_is_unknown_not_off(make_host):
    state, findings = state_of(make_host, {"secure_boot": None})
    assert os.listdir(os.path.join(make_host("desktop_dgpu", boot={"secure_boot": None}), EFIVARS)) == []
    assert (state["firmware"], state["enabled"], state["modules_must_be_signed"]) == ("uefi", None, None)
    assert findings == []


def test_a_bios_boot_has_no_secure_boot(make_host):
    state, findings = state_of(make_host, {"firmware": "bios", "lockdown": "none", "sig_enforce": False})
    assert (state["firmware"], state["enabled"], state["modules_must_be_signed"]) == ("bios", None, False)
    assert findings == []


def test_a_tree_without_sys_firmware_is_unknown(tmp_path):
    state = read_secure_boot(str(tmp_path))
    assert state["firmware"] is None and state["enabled"] is None and state["modules_must_be_signed"] is None


@pytest.mark.parametrize("mode", ["integrity", "confidentiality"])
def test_lockdown_alone_enforces_signatures(make_host, mode):
    state, findings = state_of(make_host, {"firmware": "bios", "lockdown": mode, "sig_enforce": False})
    assert state["lockdown"] == mode and state["modules_must_be_signed"] is True
    assert "the kernel is locked down (%s)" % mode in findings[0]["message"]


def test_lockdown_reads_the_bracketed_mode(make_host):
    root = make_host("desktop_dgpu", boot={"firmware": "bios"})
    for text, mode in (("[none] integrity confidentiality\n", "none"),
                       ("none integrity [confidentiality]\n", "confidentiality"),
                       ("none [integrity] confidentiality\n", "integrity")):
        write(root, LOCKDOWN, text)
        assert read_secure_boot(root)["lockdown"] == mode


def test_sig_enforce_y_enforces_signatures(make_host):
    state, findings = state_of(make_host, {"firmware": "bios", "lockdown": "none", "sig_enforce": True})
    assert state["sig_enforce"] is True and state["modules_must_be_signed"] is True
    assert "module.sig_enforce is Y" in findings[0]["message"] and "MOK" in findings[0]["message"]


@pytest.mark.parametrize("relative, data", [
    (SECURE_BOOT, b"\x06\x00\x00\x00\x02"),          # not a boolean
    (SECURE_BOOT, b"\x06\x00\x00"),                  # shorter than the attribute bytes
    (SECURE_BOOT, b"\x06\x00\x00\x00\x01\x00"),      # more than one data byte
    (LOCKDOWN, "none integrity confidentiality\n"),  # no current mode
    (LOCKDOWN, "[none] [integrity] confidentiality\n"),
    (LOCKDOWN, "[lockdown]\n"),
    (SIG_ENFORCE, "1\n"),
])
def test_garbled_values_are_unknown_with_a_finding(make_host, relative, data):
    root = make_host("desktop_dgpu", boot={"secure_boot": False, "lockdown": "none", "sig_enforce": False})
    write(root, relative, data)
    findings = Findings()
    state = read_secure_boot(root, findings)
    findings = findings.as_list()
    key = {SECURE_BOOT: "enabled", LOCKDOWN: "lockdown", SIG_ENFORCE: "sig_enforce"}[relative]
    assert state[key] is None and state["modules_must_be_signed"] is None
    assert [f["code"] for f in findings] == ["malformed_attribute"] and "/" + relative in findings[0]["message"]


def test_a_garbled_setup_mode_keeps_secure_boot_on(make_host):
    root = make_host("desktop_dgpu", boot={"secure_boot": True})
    write(root, SETUP_MODE, b"junk")
    state = read_secure_boot(root)
    assert state["setup_mode"] is None and state["enabled"] is True


# -- topology ----------------------------------------------------------------------------------------


def test_topology_reports_secure_boot_and_what_it_means_for_modules(make_host):
    topology = detect(make_host("amd_mxgpu_secure_boot"))
    assert topology["kernel"]["secure_boot"] == {
        "firmware": "uefi", "enabled": True, "firmware_secure_boot": True, "setup_mode": False,
        "shim_validation_disabled": False, "lockdown": "integrity", "sig_enforce": False,
        "modules_must_be_signed": True}
    finding = next(f for f in topology["findings"] if f["code"] == "module_signatures_enforced")
    assert finding["severity"] == "info" and finding["device"] is None
    assert finding["message"].startswith("Secure Boot is on and the kernel is locked down (integrity): ")
    assert "must be signed with an enrolled key (a Machine Owner Key, MOK)" in finding["message"]
    assert "mokutil --import" in finding["message"]


def test_topology_of_a_host_without_secure_boot_has_no_such_finding(make_host):
    topology = detect(make_host("amd_mxgpu"))
    assert topology["kernel"]["secure_boot"]["firmware"] == "bios"
    assert not [f for f in topology["findings"] if f["code"] == "module_signatures_enforced"]


# -- failed module loads -----------------------------------------------------------------------------


@pytest.mark.parametrize("errno", sorted(REJECTED))
def test_signature_advice_recognises_both_errors(errno):
    output = REJECTED[errno] % "gim"
    assert signature_rejected(output)
    advice = signature_advice(output)
    assert advice.startswith("gim is not signed with a key the kernel trusts, and Secure Boot, lockdown or module "
                             "signature enforcement is on, so the kernel refused it; nothing else is wrong with it. "
                             "Sign gim")
    assert "mokutil --import" in advice


def test_other_failures_get_no_signature_advice():
    output = "modprobe: FATAL: Module gim not found in directory /lib/modules/6.8.0-45-generic\n"
    assert not signature_rejected(output) and signature_advice(output) == ""


class _Module:
    check_mode = False
    params = {}

    def __init__(self, rc, out, err):
        self.answer = (rc, out, err)

    def run_command(self, argv, **kwargs):
        return self.answer


class _Host:
    root = "/"


class _Run(ModuleRun):
    def plan(self):
        return None

    def apply(self, plan):
        return None

    def result(self, plan):
        return {}


@pytest.mark.parametrize("errno", sorted(REJECTED))
def test_a_modules_modprobe_refused_for_its_signature_says_to_sign_it(errno):
    run = _Run(_Module(1, "", REJECTED[errno] % "vfio_pci"), _Host())
    with pytest.raises(GpuvirtError) as raised:
        run.command(["/usr/sbin/modprobe", "vfio-pci"], "loading vfio-pci")
    message = str(raised.value)
    assert message.startswith("loading vfio-pci failed (rc 1): modprobe: ERROR: could not insert 'vfio_pci': ")
    assert "; vfio_pci is not signed with a key the kernel trusts" in message
    assert "nothing else is wrong with it" in message and "mokutil --import" in message


def test_a_modules_other_command_failure_is_unchanged():
    run = _Run(_Module(2, "", "update-grub: permission denied\n"), _Host())
    with pytest.raises(GpuvirtError) as raised:
        run.command(["update-grub"], "regenerating grub.cfg")
    assert str(raised.value) == "regenerating grub.cfg failed (rc 2): update-grub: permission denied"


class _Runner:
    def __init__(self, err):
        self.err = err
        self.calls = []

    def get_bin_path(self, name, opt_dirs=None):
        return "/usr/sbin/" + name

    def run_command(self, argv):
        self.calls.append(argv)
        return 1, "", self.err


@pytest.mark.parametrize("errno", sorted(REJECTED))
def test_the_restores_modprobe_refused_for_its_signature_says_to_sign_it(make_host, errno):
    pf = "0000:4e:00.0"
    root = make_host({"devices": [{"address": "4e:00.0", "ids": "8086:56c0", "class": "038000", "driver": "i915",
                                   "sriov": {"total_vfs": 4, "num_vfs": 2}}]})
    job = restore.Restore(root=root, out=io.StringIO(), timeout=0.2, interval=0.01, attempts=1, state={})
    job.runner = _Runner(REJECTED[errno] % "vfio_pci")
    with pytest.raises(restore.RestoreError) as raised:
        job._vfs_to_vfio(pf, {"num_vfs": 2, "vfio": True})
    message = str(raised.value)
    assert job.runner.calls == [["/usr/sbin/modprobe", "vfio-pci"]]
    assert message.startswith("/usr/sbin/modprobe vfio-pci failed (exit 1: modprobe: ERROR: could not insert")
    assert "the VFs of %s stay without vfio-pci. vfio_pci is not signed with a key the kernel trusts" % pf in message
    assert "nothing else is wrong with it" in message and "mokutil --import" in message


def test_gim_missing_after_boot_on_a_secure_boot_host_points_to_signing(make_host):
    # DKMS rebuilt gim for a new kernel without an enrolled key: the kernel refused it, nothing drives the GPU.
    root = make_host("amd_mxgpu_secure_boot", patch_devices={"06:00.0": {"driver": None}},
                     kernel={"modules": ["kvm_amd", "kvm", "vfio_pci", "vfio", "nvme", "ast"], "parameters": {}})
    state = hoststate.empty_state()
    state["sriov"] = {MI300X: {"num_vfs": 1}}
    status = restore.Restore(root=root, out=io.StringIO(), timeout=0.2, interval=0.01, attempts=1, state=state).run()
    # The driver step says why; the MxGPU step, not tried, carries the same cause.
    message = next(r["message"] for r in status["results"] if r["step"] == "driver")
    assert message.startswith("a driver binding to %s did not happen within 0.2 s: gim is not loaded and Secure Boot "
                              "is on and the kernel is locked down (integrity)" % MI300X), message
    assert "mokutil --import" in message and "blacklist amdgpu" not in message
    skipped = next(r["message"] for r in status["results"] if r["step"] == "mxgpu")
    assert skipped.startswith("not tried: %s failed its driver step" % MI300X) and "gim is not loaded" in skipped


def test_gim_missing_without_signature_enforcement_keeps_the_old_message(make_host):
    root = make_host("amd_mxgpu", patch_devices={"06:00.0": {"driver": None}},
                     kernel={"modules": ["kvm_amd", "kvm", "vfio_pci", "vfio", "nvme", "ast"], "parameters": {}})
    state = hoststate.empty_state()
    state["sriov"] = {MI300X: {"num_vfs": 1}}
    status = restore.Restore(root=root, out=io.StringIO(), timeout=0.2, interval=0.01, attempts=1, state=state).run()
    message = next(r["message"] for r in status["results"] if r["step"] == "driver")
    assert message == "a driver binding to %s did not happen within 0.2 s" % MI300X


@pytest.mark.parametrize(("lockdown", "advised"), [
    ("none integrity [confidentiality]\n", True),
    ("none [integrity] confidentiality\n", True),
    ("[none] integrity confidentiality\n", False),
    (None, False),  # no lockdown LSM: an EPERM is something else
])
def test_lockdown_refuses_an_unsigned_module_with_eperm(tmp_path, lockdown, advised):
    """With module.sig_enforce off, a locked-down kernel refuses an unsigned module with EPERM."""
    host = _Host()
    host.root = str(tmp_path)
    if lockdown is not None:
        write(host.root, LOCKDOWN, lockdown)
    output = "modprobe: ERROR: could not insert 'gim': Operation not permitted\n"
    run = _Run(_Module(1, "", output), host)
    with pytest.raises(GpuvirtError) as raised:
        run.command(["/usr/sbin/modprobe", "gim"], "loading gim")
    assert ("gim is not signed with a key the kernel trusts" in str(raised.value)) is advised
    # Without the host's state an EPERM says nothing about signatures.
    assert signature_advice(output) == ""
