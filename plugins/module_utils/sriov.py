# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SR-IOV virtual functions: read, guard and change ``sriov_numvfs`` with read-back.

Public API (standard library only, so the boot-time restore can use it without Ansible):

- :func:`read_sriov` ``(root, pf) -> dict | None``: ``address``, ``driver``, ``vendor_id``,
  ``device_id``, ``total_vfs``, ``num_vfs``, ``vfs`` (addresses in ``virtfnN`` order),
  ``drivers_autoprobe`` (bool or None), ``offset``, ``stride``; None when ``pf`` has no SR-IOV
  capability (no ``sriov_totalvfs``) or does not exist.
- :func:`vf_addresses` ``(root, pf, count) -> list[str]``: the addresses VF 0..count-1 get
  (``sriov_offset``/``sriov_stride``), also before they exist; ``[]`` when unknown.
- :func:`vf_users` ``(root, vfs, holders=None, mdev_list=None) -> dict[str, list[str]]``: why each
  VF is in use (a process holds its VFIO group or cdev, an mdev exists on it, its vendor's interface
  uses it: :func:`vendors.in_use_reasons`); VFs not in use are left out.
- :func:`vfs_in_use` ``(root, pf) -> dict[str, list[str]]``: the same for every VF of ``pf``.
- :func:`pf_reason` ``(device) -> str | None``: why a device cannot be selected as an SR-IOV
  physical function (for :func:`selector.select_devices`).
- :func:`set_num_vfs` ``(root, pf, num_vfs, retries=10, delay=0.5) -> bool``: 0 first, then N;
  reads ``sriov_numvfs`` and the ``virtfnN`` links back; tries to restore the old count when N fails.
  A physical function whose driver sets the count itself (:func:`vendors.vf_count_set_by`) is refused
  with how to set it instead.
- :func:`set_drivers_autoprobe` ``(root, pf, enabled, retries=10, delay=0.5) -> bool``
- :func:`enable_vfs_by_tool` ``(runner, root, pf, tool, retries=5, delay=2.0, expected=None) -> dict``: runs a
  vendor's VF-enabling tool (:func:`vendors.vf_tool`, e.g. NVIDIA's ``sriov-manage -e <pf>``) until
  ``sriov_numvfs`` reads back ``expected`` VFs or more (by default: ``sriov_totalvfs`` for a tool that enables
  every VF, ``tool.enables_all``; any for another); its exit status is recorded but never trusted. A PF that
  already has fewer VFs than that (a short count) has them disabled first (``tool.disable_argv``). ``runner`` is
  anything with ``run_command(argv)`` returning ``(rc, stdout, stderr)`` (an AnsibleModule; at boot, the
  restore's own runner), and ``get_bin_path(name)`` to check the programs the tool runs (``tool.programs``).
  A tool that unbinds the PF's driver while it works (``tool.pf_driver``) gets the PF bound to that driver
  again before each run when a failed run left it without one.
- :func:`restore_pf` ``(root, pf, num_vfs, drivers_autoprobe=None, method=None, runner=None,
  retries=10, delay=0.5) -> bool``: what the boot-time restore calls for one ``sriov`` entry of the
  state file; ``method`` is the entry's ``method`` (``sysfs``, the default, or a vendor tool's), whose
  tool must enable at least ``num_vfs``.
- :func:`poll` ``(read, accept, retries, delay) -> (value, ok)``: the bounded read-back loop.
- :func:`vf_drivers` ``(root, vfs) -> dict[str, str | None]``: the driver bound to each VF.
- :func:`hand_vfs_to_vfio` ``(root, vfs) -> (bound, already)``: every VF in ``vfs`` to vfio-pci through its
  ``driver_override`` (the address, never the ID: a VF often shares its ``vendor:device`` with the PF),
  read back; tries every VF and raises SriovError naming those that failed.
- :func:`state_entry` ``(num_vfs, drivers_autoprobe=None, method=None, vfio=None) -> dict``: a ``sriov``
  section entry of ``/etc/gpuvirt/host-state.json`` (``vfio``: the restore hands the VFs to vfio-pci
  once it has created them).

Kernel behaviour this follows (``drivers/pci/iov.c``, ``Documentation/ABI/testing/sysfs-bus-pci``):
writing a count to ``sriov_numvfs`` while VFs are enabled fails with ``EBUSY`` unless it is 0 or
the same count, a count above ``sriov_totalvfs`` fails with ``ERANGE``, and a PF without a driver
(or whose driver cannot configure SR-IOV) fails with ``ENOENT``. Every VF disappears when the count
changes, so a VF that a VM or a vGPU uses makes any change destructive.
"""

from __future__ import annotations

import errno
import os
import time

from ansible_collections.gpuvirt.host.plugins.module_utils import sysfs, vendors
from ansible_collections.gpuvirt.host.plugins.module_utils.device_users import users_of, vfio_holders
from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError
from ansible_collections.gpuvirt.host.plugins.module_utils.mdev_info import mdevs as list_mdevs
from ansible_collections.gpuvirt.host.plugins.module_utils.pci import read_pci_device
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import PCI_DEVICES, host_path, normalize_address
from ansible_collections.gpuvirt.host.plugins.module_utils.vfio_bind import (
    VFIO_DRIVER,
    VfioError,
    bind_device,
    read_driver,
)

METHODS = ("sysfs",) + vendors.vf_tool_methods()


_NUMVFS_ADVICE = {
    errno.EBUSY: "VFs are enabled or in use; the count only changes through 0, and not while a VF is assigned",
    errno.ERANGE: "the count is above sriov_totalvfs",
    errno.ENOENT: "no driver is bound to the physical function, or its driver cannot configure SR-IOV "
    "through sysfs",
    errno.ENOMEM: "the kernel could not allocate the VFs; the firmware may not reserve enough bus numbers or "
    "BAR space (enable SR-IOV and Above 4G decoding in the firmware setup, or add pci=realloc)",
    errno.EINVAL: "the kernel rejected the count",
}


class SriovError(GpuvirtError):
    """Bad input, a refused change or a failed read-back; ``str()`` says where, why and what to do."""


def _pf_path(root, pf, *names):
    return host_path(root, PCI_DEVICES, pf, *names)


def read_sriov(root, pf):
    """The SR-IOV state of ``pf``, or None when it is not an SR-IOV physical function."""
    device = read_pci_device(root, pf)
    if device is None or device.sriov is None or device.is_vf:
        return None
    autoprobe = sysfs.read_int(_pf_path(root, device.address, "sriov_drivers_autoprobe"))
    return {
        "address": device.address,
        "driver": device.driver,
        "vendor_id": device.vendor_id,
        "device_id": device.device_id,
        "total_vfs": device.sriov.total_vfs,
        "num_vfs": device.sriov.num_vfs,
        "vfs": list(device.sriov.vfs),
        "drivers_autoprobe": None if autoprobe is None else bool(autoprobe),
        "offset": sysfs.read_int(_pf_path(root, device.address, "sriov_offset")),
        "stride": sysfs.read_int(_pf_path(root, device.address, "sriov_stride")),
    }


def vf_addresses(root, pf, count):
    """The addresses VF 0..count-1 of ``pf`` get, from its routing ID, offset and stride."""
    offset = sysfs.read_int(_pf_path(root, pf, "sriov_offset"))
    stride = sysfs.read_int(_pf_path(root, pf, "sriov_stride"))
    address = normalize_address(pf)
    if offset is None or stride is None or address is None:
        return []
    domain, bus, devfn = address.split(":")
    slot, function = devfn.split(".")
    rid = (int(bus, 16) << 8) | (int(slot, 16) << 3) | int(function)
    result = []
    for index in range(count):
        vf = rid + offset + index * stride
        result.append("%s:%02x:%02x.%d" % (domain, (vf >> 8) & 0xFF, (vf >> 3) & 0x1F, vf & 7))
    return result


def vf_users(root, vfs, holders=None, mdev_list=None):
    """``{vf: [reasons]}`` for the VFs in ``vfs`` that something uses; pass ``holders``
    (:func:`device_users.vfio_holders`) and ``mdev_list`` (:func:`mdev_info.mdevs`) to save re-reading."""
    holders = vfio_holders(root) if holders is None else holders
    mdev_list = list_mdevs(root) if mdev_list is None else mdev_list
    wanted = set(vfs)
    users = {}
    for entry in mdev_list:
        if entry["parent"] in wanted:
            reason = "mdev %s (%s) exists on it" % (entry["uuid"], entry["type"] or "unknown type")
            held = users_of(holders, entry["iommu_group"], entry["uuid"])
            if held:
                reason += " and is open by %s" % _people(held)
            users.setdefault(entry["parent"], []).append(reason)
    for vf in vfs:
        device = read_pci_device(root, vf)
        if device is None:
            continue
        held = users_of(holders, device.iommu_group, vf)
        if held:
            users.setdefault(vf, []).append(
                "%s holds its VFIO device (IOMMU group %s)" % (_people(held), device.iommu_group)
            )
        reasons = vendors.in_use_reasons(device)
        if reasons:
            users.setdefault(vf, []).extend(reasons)
    return users


def _people(held):
    return ", ".join("process %d (%s)" % (user["pid"], user.get("comm") or "?") for user in held)


def vfs_in_use(root, pf):
    """Why each VF of ``pf`` is in use; empty when none is (or ``pf`` has no VFs)."""
    info = read_sriov(root, pf)
    if info is None or not info["vfs"]:
        return {}
    return vf_users(root, info["vfs"])


def pf_reason(device):
    """Why ``device`` cannot be selected as an SR-IOV physical function; None when it can."""
    if device.is_vf:
        return "is a virtual function of %s; select its physical function" % device.physfn
    if device.sriov is None:
        return (
            "has no SR-IOV capability (no sriov_totalvfs); its driver may not support SR-IOV, or SR-IOV is "
            "disabled in the firmware setup"
        )
    if not device.sriov.total_vfs:
        advice = vendors.vf_count_advice(device)
        return "offers no VFs (sriov_totalvfs reads 0): %s" % (
            "it is %s" % advice if advice else "its driver (%s) has not enabled SR-IOV on it; some drivers need a "
            "module parameter and a reload first" % (device.driver or "none bound"))
    return None


def poll(read, accept, retries, delay, sleep=time.sleep):
    """Call ``read()`` until ``accept(value)``, at most ``retries + 1`` times; ``(value, ok)``."""
    value = read()
    for _attempt in range(max(0, retries)):
        if accept(value):
            return value, True
        sleep(delay)
        value = read()
    return value, accept(value)


def _count_links(root, pf):
    return sum(1 for name in sysfs.list_dir(_pf_path(root, pf)) if name.startswith("virtfn"))


def _read_back_num_vfs(root, pf, wanted, retries, delay):
    def read():
        return sysfs.read_int(_pf_path(root, pf, "sriov_numvfs")), _count_links(root, pf)

    value, ok = poll(read, lambda v: v == (wanted, wanted), retries, delay)
    if not ok:
        raise SriovError(
            "%s: sriov_numvfs reads %s with %d virtfn link(s) after writing %d (read back %d times); "
            "check dmesg for the driver's message" % (pf, value[0], value[1], wanted, retries + 1)
        )


def _write_num_vfs(root, pf, value):
    path = _pf_path(root, pf, "sriov_numvfs")
    try:
        sysfs.write_text(path, str(value))
    except sysfs.SysfsWriteError as error:
        advice = _NUMVFS_ADVICE.get(error.errno)
        if error.errno == errno.ENOENT:
            device = read_pci_device(root, pf)
            vendor = vendors.vf_count_advice(device) if device is not None else None
            advice = "%s (%s)" % (advice, vendor) if vendor else advice
        raise SriovError(
            "%s%s" % (error, "" if advice is None or advice in str(error) else " (%s)" % advice)
        ) from error


def set_num_vfs(root, pf, num_vfs, retries=10, delay=0.5):
    """Make ``pf`` have ``num_vfs`` VFs: 0 first when a different count is enabled, then N.

    Returns whether anything was written. Does not check whether a VF is in use: callers do, before
    deciding to change anything (:func:`vfs_in_use`).
    """
    info = read_sriov(root, pf)
    if info is None:
        raise SriovError("%s is not an SR-IOV physical function (no sriov_totalvfs)" % pf)
    previous = info["num_vfs"]
    if previous == num_vfs:
        return False
    set_by = vendors.vf_count_set_by(read_pci_device(root, pf))
    if set_by:
        raise SriovError("%s has %s VFs, not %d: %s; nothing was changed" % (pf, previous, num_vfs, set_by))
    total = info["total_vfs"]
    if total is not None and num_vfs > total:
        raise SriovError("%s: num_vfs %d is above sriov_totalvfs %d" % (pf, num_vfs, total))
    if previous:
        _write_num_vfs(root, pf, 0)
        _read_back_num_vfs(root, pf, 0, retries, delay)
    if num_vfs:
        try:
            _write_num_vfs(root, pf, num_vfs)
            _read_back_num_vfs(root, pf, num_vfs, retries, delay)
        except SriovError as error:
            raise SriovError("%s%s" % (error, _restore_note(root, pf, previous, retries, delay))) from error
    return True


def _restore_note(root, pf, previous, retries, delay):
    """Try to put the old count back after a failed change; say what happened."""
    if not previous:
        return "; %s has no VFs now" % pf
    try:
        if sysfs.read_int(_pf_path(root, pf, "sriov_numvfs")):
            _write_num_vfs(root, pf, 0)
        _write_num_vfs(root, pf, previous)
        _read_back_num_vfs(root, pf, previous, retries, delay)
    except SriovError as error:
        return "; restoring the previous %d VFs failed too (%s), so %s has no VFs now" % (previous, error, pf)
    return "; the previous %d VFs were enabled again (new VF devices: their drivers re-probed)" % previous


def set_drivers_autoprobe(root, pf, enabled, retries=10, delay=0.5):
    """Set ``sriov_drivers_autoprobe`` (whether new VFs bind to a driver); returns whether written."""
    path = _pf_path(root, pf, "sriov_drivers_autoprobe")
    current = sysfs.read_int(path)
    if current is None:
        raise SriovError("%s has no readable sriov_drivers_autoprobe; the kernel may be older than 4.12" % pf)
    if bool(current) == bool(enabled):
        return False
    wanted = 1 if enabled else 0
    try:
        sysfs.write_text(path, str(wanted))
    except sysfs.SysfsWriteError as error:
        raise SriovError(str(error)) from error
    value, ok = poll(lambda: sysfs.read_int(path), lambda v: v == wanted, retries, delay)
    if not ok:
        raise SriovError("%s: sriov_drivers_autoprobe reads %s after writing %d" % (pf, value, wanted))
    return True


def enable_vfs_by_tool(runner, root, pf, tool, retries=5, delay=2.0, sleep=time.sleep, expected=None):
    """Enable the VFs of ``pf`` with a vendor's tool (:func:`vendors.vf_tool`), read back, retry.

    Such a tool (NVIDIA's ``sriov-manage``) races the driver's start-up and can exit 0 without having
    enabled anything, or only some of the VFs (or fail after it did), so success is ``sriov_numvfs``
    reading at least the count wanted with that many ``virtfnN`` links, whatever it exits with. The count
    wanted: ``expected`` when given (the restore passes the recorded count), else ``sriov_totalvfs`` for a
    tool that enables every VF (``tool.enables_all``), else any. VFs already enabled are left alone unless
    fewer than wanted: NVIDIA's tool does nothing on a GPU with VFs (``already has VFs enabled``, exit 0),
    and the kernel enables VFs only from 0, so a tool that can disable them (``tool.disable_argv``) disables
    a short count before each run, and after the last failed run when the PF had none before, so that a
    failure leaves no short count behind. Whether a VF is in use is the caller's to check first. A disable
    that leaves VFs (the kernel refused: a VF in use) counts as a failed attempt. Returns ``{"changed",
    "num_vfs", "attempts": [{"rc", "num_vfs", "output"}], "warnings"}`` (an attempt whose disable failed
    also has ``"disable": True``); raises SriovError after ``retries`` attempts.
    """
    info = read_sriov(root, pf)
    if info is None:
        raise SriovError("%s is not an SR-IOV physical function (no sriov_totalvfs)" % pf)
    if expected is not None:
        wanted, wanted_from = expected, "recorded"
    elif tool.enables_all and info["total_vfs"]:
        wanted, wanted_from = info["total_vfs"], "sriov_totalvfs"
    else:
        wanted, wanted_from = 1, None
    before = info["num_vfs"] or 0
    if before and before >= wanted:
        return {"changed": False, "num_vfs": before, "attempts": [], "warnings": []}
    executable = tool.executable(runner)
    if not os.access(executable, os.X_OK):
        raise SriovError(
            "%s: %s is needed to enable the VFs of this GPU, but %s is not an executable; %s"
            % (pf, tool.name, executable, tool.install_advice)
        )
    _check_programs(runner, pf, tool)
    pf_driver = getattr(tool, "pf_driver", None)
    disable = getattr(tool, "disable_argv", None)
    argv = tool.argv(executable, pf)
    command = " ".join(argv)
    attempts = []
    warnings = []
    for attempt in range(1, max(1, retries) + 1):
        if pf_driver and _bind_pf(root, pf, pf_driver, tool, sleep):
            warnings.append(
                "%s had no driver before attempt %d (%s unbinds %s while it works and a failed run leaves it so); "
                "bound it to %s again" % (pf, attempt, tool.name, pf_driver, pf_driver)
            )
        short = sysfs.read_int(_pf_path(root, pf, "sriov_numvfs")) or 0
        if short and disable is not None:
            rc, out, err = _run_tool(runner, disable(executable, pf))
            left = sysfs.read_int(_pf_path(root, pf, "sriov_numvfs")) or 0
            if left:
                attempts.append({"rc": rc, "num_vfs": left, "output": _output(out, err), "disable": True})
                if attempt < retries:
                    sleep(delay)
                continue
        rc, out, err = _run_tool(runner, argv)
        num_vfs = sysfs.read_int(_pf_path(root, pf, "sriov_numvfs")) or 0
        attempts.append({"rc": rc, "num_vfs": num_vfs, "output": _output(out, err)})
        if num_vfs >= wanted and _count_links(root, pf) == num_vfs:
            if rc != 0:
                warnings.append(
                    "%s exited with %s but the VFs are enabled (sriov_numvfs reads %d)" % (command, rc, num_vfs)
                )
            if attempt > 1:
                warnings.append("%s: VFs enabled on attempt %d of %d" % (pf, attempt, retries))
            return {"changed": True, "num_vfs": num_vfs, "attempts": attempts, "warnings": warnings}
        if attempt < retries:
            sleep(delay)
    summary = "; ".join(
        "attempt %d: %sexit %s, sriov_numvfs %d%s"
        % (i + 1, "disabling " if a.get("disable") else "", a["rc"], a["num_vfs"],
           ", " + a["output"] if a["output"] else "")
        for i, a in enumerate(attempts)
    )
    last = attempts[-1]["num_vfs"]
    if attempts[-1].get("disable"):
        raise SriovError(
            "%s did not disable the %d VFs of %s in %d attempts (%s); the kernel enables VFs only from 0, so the %d "
            "wanted (%s) cannot be enabled. A VF may be in use by a VM: stop it, check dmesg, then run again"
            % (" ".join(disable(executable, pf)), last, pf, len(attempts), summary, wanted, wanted_from)
        )
    if wanted_from and last:
        what = "enabled only %d of the %d VFs (%s) of %s" % (last, wanted, wanted_from, pf)
        undone = _disable_short(runner, root, pf, disable, executable) if not before else ""
    else:
        what = "did not enable the VFs of %s" % pf
        undone = ""
    if before and disable is not None:
        undone += "; %s had %d VFs before, disabled first (the kernel enables VFs only from 0)" % (pf, before)
    raise SriovError(
        "%s %s in %d attempts (%s)%s; %s" % (command, what, len(attempts), summary, undone, tool.failure_advice(pf))
    )


def _output(out, err):
    return " ".join((out or "").split() + (err or "").split())[-300:]


def _run_tool(runner, argv):
    try:
        return runner.run_command(argv)
    except OSError as error:  # the restore's runner may raise where AnsibleModule returns rc
        return 127, "", str(error)


def _disable_short(runner, root, pf, disable, executable):
    """Disable the short count the failed runs left (the PF had none before); say what happened."""
    if disable is None:
        return "; the %s VFs stay enabled" % (sysfs.read_int(_pf_path(root, pf, "sriov_numvfs")) or 0)
    argv = disable(executable, pf)
    rc, out, err = _run_tool(runner, argv)
    left = sysfs.read_int(_pf_path(root, pf, "sriov_numvfs"))
    if left == 0:
        return "; disabled them again (%s), so %s has no VFs, as before" % (" ".join(argv), pf)
    return "; disabling them again (%s) failed (exit %s, sriov_numvfs %s: %s)" % (
        " ".join(argv), rc, left, " ".join(((out or "") + " " + (err or "")).split())[-200:] or "no output")


def _check_programs(runner, pf, tool):
    """Fail before running ``tool`` when a program it runs (``tool.programs``) is not installed."""
    finder = getattr(runner, "get_bin_path", None)
    if finder is None:
        return
    missing = [(program, advice) for program, advice in getattr(tool, "programs", ()) if not finder(program)]
    if missing:
        raise SriovError(
            "%s: %s runs %s to enable the VFs, but %s not found on PATH; %s, then run again; nothing was changed"
            % (
                pf,
                tool.name,
                " and ".join(program for program, _advice in missing),
                "it is" if len(missing) == 1 else "they are",
                "; ".join(advice for _program, advice in missing),
            )
        )


def _bind_pf(root, pf, driver, tool, sleep=time.sleep):
    """Bind ``pf`` to ``driver`` when it has no driver (a failed run of ``tool`` left it unbound); read
    back. Returns whether it bound it; a PF on another driver is left alone."""
    if read_driver(root, pf) is not None:
        return False
    path = host_path(root, sysfs.PCI_DRIVERS, driver, "bind")
    try:
        sysfs.write_text(path, pf)
    except sysfs.SysfsWriteError as error:
        raise SriovError(
            "%s has no driver (%s unbinds %s while it works and a failed run leaves it so), and binding it again "
            "failed: %s; load %s (modprobe %s), check dmesg, then run again"
            % (pf, tool.name, driver, error, driver, driver)
        ) from error
    bound, ok = poll(lambda: read_driver(root, pf), lambda name: name == driver, 10, 0.1, sleep)
    if not ok:
        raise SriovError(
            "%s: writing it to %s did not bind it (driver now: %s); check dmesg for %s's message, then run again"
            % (pf, path, bound or "none", driver)
        )
    return True


def restore_pf(root, pf, num_vfs, drivers_autoprobe=None, method=None, runner=None, retries=10, delay=0.5):
    """Bring one recorded physical function back at boot; returns whether anything was written."""
    changed = False
    if drivers_autoprobe is not None:
        changed = set_drivers_autoprobe(root, pf, drivers_autoprobe, retries, delay) or changed
    tool = vendors.vf_tool(method) if method not in (None, "sysfs") else None
    if tool is not None:
        if not num_vfs:
            return changed
        if runner is None:
            raise SriovError("%s is recorded with method %s; restoring it needs a command runner" % (pf, method))
        result = enable_vfs_by_tool(runner, root, pf, tool, retries=max(1, retries), delay=delay, expected=num_vfs)
        return result["changed"] or changed
    if method not in (None,) + METHODS:
        raise SriovError(
            "%s: unknown method %r in the state file (expected one of %s)" % (pf, method, ", ".join(METHODS))
        )
    return set_num_vfs(root, pf, num_vfs, retries, delay) or changed


def vf_drivers(root, vfs):
    """``{vf: the driver bound to it, or None}``."""
    return {vf: read_driver(root, vf) for vf in vfs}


def hand_vfs_to_vfio(root, vfs, attempts=10, delay=0.1):
    """Bind every VF in ``vfs`` to vfio-pci by its ``driver_override`` and read each back.

    This works with ``sriov_drivers_autoprobe`` 0 too: the PCI core lets a VF probe when its PF's autoprobe
    is on or when the VF has a ``driver_override`` (``pci_device_can_probe()``, drivers/pci/pci-driver.c),
    so the VFs go to vfio-pci without the PF's driver ever probing them.
    Returns ``(bound, already)`` (addresses). Every VF is tried; SriovError names the ones that failed
    and the ones bound before (a failed bind is rolled back to the VF's previous driver).
    """
    bound, already, failed = [], [], []
    for vf in vfs:
        if read_driver(root, vf) == VFIO_DRIVER:
            already.append(vf)
            continue
        try:
            bind_device(root, vf, VFIO_DRIVER, attempts, delay)
        except VfioError as error:
            failed.append(str(error))
        else:
            bound.append(vf)
    if failed:
        raise SriovError(
            "%s%s" % ("; ".join(failed), "; bound to vfio-pci meanwhile: %s" % ", ".join(bound) if bound else "")
        )
    return bound, already


def state_entry(num_vfs, drivers_autoprobe=None, method=None, vfio=None):
    """One entry of the state file's ``sriov`` section."""
    entry = {"num_vfs": int(num_vfs)}
    if drivers_autoprobe is not None:
        entry["drivers_autoprobe"] = bool(drivers_autoprobe)
    if method and method != "sysfs":
        entry["method"] = method
    if vfio:
        entry["vfio"] = True
    return entry
