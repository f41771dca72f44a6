# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Secure Boot, kernel lockdown and module signature enforcement, as the kernel shows them.

Out-of-tree modules (AMD's ``gim``, the DKMS i915-sriov or xe builds, an NVIDIA vGPU host driver, the
kernel's mdev sample drivers) load only when they are signed with a key the kernel trusts once any of
these is on. The readers take the host ``root``:

- :func:`read_secure_boot` ``(root, findings=None) -> dict``: ``firmware`` (``uefi``, ``bios`` or None
  when the tree does not show ``/sys/firmware``), ``enabled`` (Secure Boot as the kernel decides it;
  None when unknown or on BIOS), ``firmware_secure_boot``, ``setup_mode``, ``shim_validation_disabled``
  (the EFI variables it is decided from), ``lockdown`` (``none``, ``integrity``, ``confidentiality`` or
  None), ``sig_enforce`` (bool or None) and ``modules_must_be_signed`` (bool or None). With
  ``findings``, adds ``module_signatures_enforced`` (info) when modules must be signed, and
  ``malformed_attribute`` for a value the kernel never writes.
- :func:`signature_rejected` ``(output) -> bool``: a module load's output says the kernel refused the
  module's signature; :func:`signature_advice` ``(output, module=None) -> str``: what to tell the
  user then ("" otherwise). Every module load the collection runs explains its failure through these.
- :func:`module_refused_at_boot` ``(root, module) -> str``: why a module that should have loaded at
  boot may be missing on a host that enforces signatures ("" when signatures are not enforced).

Standard library only (the boot-time restore imports this file).
"""

from __future__ import annotations

import os
import re

from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import host_path, list_dir, read_text

# The EFI global variable GUID (UEFI specification, EFI_GLOBAL_VARIABLE) and shim's (SHIM_LOCK_GUID).
EFI_GLOBAL_VARIABLE_GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
SHIM_LOCK_GUID = "605dab50-e046-4300-abb6-3dd810dd8b23"
EFI_DIR = "sys/firmware/efi"
EFIVARS_DIR = "sys/firmware/efi/efivars"
SECURE_BOOT_VARIABLE = "SecureBoot-" + EFI_GLOBAL_VARIABLE_GUID
SETUP_MODE_VARIABLE = "SetupMode-" + EFI_GLOBAL_VARIABLE_GUID
# shim's copy of its own state for the running system: 1 after ``mokutil --disable-validation``.
MOK_SB_STATE_VARIABLE = "MokSBStateRT-" + SHIM_LOCK_GUID
LOCKDOWN_PATH = "sys/kernel/security/lockdown"
LOCKDOWN_MODES = ("none", "integrity", "confidentiality")
SIG_ENFORCE_PATH = "sys/module/module/parameters/sig_enforce"

# strerror() of EKEYREJECTED (a module load refused while signatures are enforced, kernel/module/signing.c
# module_sig_check()) and of ENOKEY (what kernels before 4.18 returned for a module signed with a key
# they do not hold); modprobe and insmod print them after "could not insert '<module>'".
SIGNATURE_ERRORS = ("Key was rejected by service", "Required key not available")
_LOCKDOWN_ERROR = "operation not permitted"

_BRACKETED = re.compile(r"\[([^\]]*)\]")


def _read_bytes(path):
    try:
        with open(path, "rb") as handle:
            return handle.read(64)
    except OSError:
        return None


def _efi_flag(root, variable, findings):
    """``(present, value)`` of a one-byte boolean EFI variable: ``(False, None)`` when the variable does
    not exist, ``(True, None)`` when unreadable or not 0/1, else ``(True, bool)``.

    efivarfs shows each variable as 4 little-endian attribute bytes followed by its data
    (Documentation/filesystems/efivarfs.rst), so SecureBoot with Secure Boot on reads
    ``06 00 00 00 01``.
    """
    path = host_path(root, EFIVARS_DIR, variable)
    if not os.path.lexists(path):
        return False, None
    data = _read_bytes(path)
    if data is None:
        if findings is not None:
            findings.bad_attribute("/" + EFIVARS_DIR + "/" + variable, "unreadable", "4 attribute bytes and 0 or 1")
        return True, None
    if len(data) != 5 or data[4] not in (0, 1):
        if findings is not None:
            findings.bad_attribute("/" + EFIVARS_DIR + "/" + variable, "malformed", "4 attribute bytes and 0 or 1",
                                   value=data.hex(" "))
        return True, None
    return True, data[4] == 1


def read_lockdown(root, findings=None):
    """The current lockdown mode from ``sys/kernel/security/lockdown``, or None.

    The lockdown LSM lists every mode it offers with the current one in brackets, as
    ``none [integrity] confidentiality`` (security/lockdown/lockdown.c, ``lockdown_read()``). The file
    is missing when the kernel has no lockdown LSM or securityfs is not mounted (or a snapshot left it
    out): None then, as for a text without one bracketed mode it knows.
    """
    text = read_text(host_path(root, LOCKDOWN_PATH))
    if text is None:
        return None
    modes = _BRACKETED.findall(text)
    if len(modes) == 1 and modes[0] in LOCKDOWN_MODES:
        return modes[0]
    if findings is not None:
        findings.bad_attribute("/" + LOCKDOWN_PATH, "malformed", "the modes with the current one in brackets",
                               value=text)
    return None


def read_sig_enforce(root, findings=None):
    """``module.sig_enforce`` from ``sys/module/module/parameters/sig_enforce``: True, False or None.

    A ``bool_enable_only`` parameter of the kernel's module loader, shown as ``Y`` or ``N``; it reads
    ``Y`` when the kernel was built with CONFIG_MODULE_SIG_FORCE or booted with
    ``module.sig_enforce=1``, and exists only with CONFIG_MODULE_SIG (kernel/module/signing.c).
    """
    text = read_text(host_path(root, SIG_ENFORCE_PATH))
    if text is None:
        return None
    if text in ("Y", "N"):
        return text == "Y"
    if findings is not None:
        findings.bad_attribute("/" + SIG_ENFORCE_PATH, "malformed", "Y or N", value=text)
    return None


def read_secure_boot(root, findings=None):
    """The Secure Boot, lockdown and module signature state of the host at ``root`` (see the module doc).

    ``enabled`` follows the kernel's own decision (``efi_get_secureboot_mode()``, include/linux/efi.h,
    and the EFI stub's ``efi_get_secureboot()``): off when the SecureBoot variable does not exist or is
    0, or SetupMode is 1 (no platform key enrolled), or shim's MokSBStateRT is 1 (validation disabled
    with mokutil). It is None when the tree has no ``sys/firmware/efi`` (a BIOS boot: not applicable),
    when efivarfs is not mounted (``efivars`` empty: unknown, not off), or when SecureBoot is garbled.
    """
    state = {
        "firmware": None,
        "enabled": None,
        "firmware_secure_boot": None,
        "setup_mode": None,
        "shim_validation_disabled": None,
        "lockdown": read_lockdown(root, findings),
        "sig_enforce": read_sig_enforce(root, findings),
        "modules_must_be_signed": None,
    }
    if os.path.isdir(host_path(root, EFI_DIR)):
        state["firmware"] = "uefi"
        # The kernel creates efivars as an empty mount point; only a mounted efivarfs lists variables.
        if list_dir(host_path(root, EFIVARS_DIR)):
            _read_efi_state(root, state, findings)
    elif os.path.isdir(host_path(root, "sys/firmware")):
        state["firmware"] = "bios"
    state["modules_must_be_signed"] = signatures_enforced(state)
    if findings is not None and state["modules_must_be_signed"]:
        findings.info("module_signatures_enforced", enforcement_message(state))
    return state


def _read_efi_state(root, state, findings):
    present, secure_boot = _efi_flag(root, SECURE_BOOT_VARIABLE, findings)
    if not present:
        # Firmware without Secure Boot support; the kernel reads a missing SecureBoot as off.
        state["firmware_secure_boot"] = False
        state["enabled"] = False
        return
    state["firmware_secure_boot"] = secure_boot
    _present, state["setup_mode"] = _efi_flag(root, SETUP_MODE_VARIABLE, findings)
    mok_present, mok_disabled = _efi_flag(root, MOK_SB_STATE_VARIABLE, findings)
    state["shim_validation_disabled"] = bool(mok_disabled) if mok_present else False
    if secure_boot is None:
        return
    state["enabled"] = bool(secure_boot) and not state["setup_mode"] and not state["shim_validation_disabled"]


def signatures_enforced(state):
    """Whether the kernel refuses modules not signed with a key it trusts: True when Secure Boot is on
    (distribution kernels then lock down or enforce signatures), ``sig_enforce`` is Y or lockdown is
    integrity or confidentiality; False when all three are known to be off; else None."""
    lockdown = state.get("lockdown")
    if state.get("enabled") or state.get("sig_enforce") or lockdown in ("integrity", "confidentiality"):
        return True
    secure_boot_off = state.get("enabled") is False or state.get("firmware") == "bios"
    if secure_boot_off and state.get("sig_enforce") is False and lockdown == "none":
        return False
    return None


def enforcement_reasons(state):
    """What makes the kernel enforce module signatures, in words (empty when nothing known does)."""
    reasons = []
    if state.get("enabled"):
        reasons.append("Secure Boot is on")
    if state.get("sig_enforce"):
        reasons.append("module.sig_enforce is Y")
    if state.get("lockdown") in ("integrity", "confidentiality"):
        reasons.append("the kernel is locked down (%s)" % state["lockdown"])
    return reasons


def enforcement_message(state):
    """The ``module_signatures_enforced`` finding's message."""
    return (
        "%s: the kernel loads only modules signed with a key it trusts, so out-of-tree modules (a vendor's "
        "host driver installed as a DKMS package, the mdev sample drivers) must be signed with an enrolled key "
        "(a Machine Owner Key, MOK); an unsigned one fails to load with \"Key was rejected by service\". %s"
        % (" and ".join(enforcement_reasons(state)), SIGNING_STEPS)
    )


SIGNING_STEPS = (
    "Sign it with an enrolled key: DKMS signs the modules it builds with its MOK (/var/lib/dkms/mok.pub, on "
    "Ubuntu /var/lib/shim-signed/mok/MOK.der); enrol that key with 'mokutil --import <key>', confirm it in "
    "the MOK manager at the next boot, then rebuild the module (dkms autoinstall) so it is signed; or enrol "
    "the key the vendor signed it with"
)


def signature_rejected(output, root=None):
    """True when a module load's output (modprobe's or insmod's) says the kernel refused its signature.
    With ``root``, also an EPERM ("Operation not permitted") on a host whose kernel is locked down: lockdown
    refuses an unsigned module with EPERM when ``module.sig_enforce`` is off (kernel/module/signing.c,
    ``module_sig_check()`` returns ``security_locked_down(LOCKDOWN_MODULE_SIGNATURE)``)."""
    text = (output or "").lower()
    if any(error.lower() in text for error in SIGNATURE_ERRORS):
        return True
    return root is not None and _LOCKDOWN_ERROR in text and read_lockdown(root) in ("integrity", "confidentiality")


def _module_named(output):
    match = re.search(r"could not insert '([^']+)'", output or "")
    return match.group(1) if match else None


def signature_advice(output, module=None, root=None):
    """What to tell the user about a failed module load whose ``output`` shows a refused signature, or
    "" for any other failure. ``module``: the module's name when the output does not name it; ``root``: the
    host, whose lockdown turns an EPERM into a refused signature (:func:`signature_rejected`)."""
    if not signature_rejected(output, root):
        return ""
    name = _module_named(output) or module or "the module"
    return (
        "%s is not signed with a key the kernel trusts, and Secure Boot, lockdown or module signature enforcement is "
        "on, so the kernel refused it; nothing else is wrong with it. %s"
        % (name, SIGNING_STEPS.replace("Sign it", "Sign %s" % name, 1))
    )


def module_refused_at_boot(root, module):
    """Why ``module``, which should have been loaded at boot, may be missing: "" unless the host at
    ``root`` enforces module signatures and the module is not loaded."""
    if os.path.isdir(host_path(root, "sys/module", module)):
        return ""
    state = read_secure_boot(root)
    if not state["modules_must_be_signed"]:
        return ""
    return (
        "%s is not loaded and %s, so the kernel refuses it unless it is signed with a key the kernel trusts "
        "(a DKMS rebuild after a kernel update is unsigned unless DKMS's key is enrolled; dmesg shows "
        "\"Loading of unsigned module is rejected\" or \"Lockdown: ... unsigned module loading is restricted\"). %s"
        % (module, " and ".join(enforcement_reasons(state)), SIGNING_STEPS.replace("Sign it", "Sign %s" % module, 1))
    )
