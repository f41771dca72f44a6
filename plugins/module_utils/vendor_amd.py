# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The AMD backend: MxGPU (SR-IOV through AMD's GIM host driver) on Instinct and Radeon PRO V GPUs.

Interface notes (github.com/amd/MxGPU-Virtualization: gim_shim, gim_drv.c, release notes):

- The host driver is ``gim`` (DKMS package ``gim``), not ``amdgpu`` (blacklist it): GIM binds the
  PFs through dynamic IDs and calls ``pci_enable_sriov`` itself at probe, with ``vf_num=N0,N1,...``
  (per GPU, 1-31) or ``/etc/gim_config``. It has no ``sriov_configure``: writing ``sriov_numvfs``
  fails with ENOENT, so the VF count is a driver parameter and a reload.
- Nothing loads ``gim`` by itself: its ``pci_driver`` has no ``id_table`` (``gim_drv.c``; the IDs are
  added with ``pci_add_dynid()`` once it is loaded), so it has no ``modules.alias`` entry for udev to
  load it by, and AMD's packages install no ``modules-load.d`` file (its guides run ``modprobe gim``).
  The plan names it in :data:`GIM_MODULES_LOAD`, which systemd-modules-load reads at every boot.
- ``vf_num`` is indexed by GIM's GPU number: the order GIM probes the SR-IOV capable GPUs it drives
  (taken here as PCI address order), and a GPU past the end of the list gets its last value
  (``gim_handle_array_token``/``set_array_value`` in gim_config.c repeat it), so ``vf_num=8`` means 8
  VFs on every GPU. The list written keeps the other GPUs' counts and sets the selected GPU's entry.
- Signs of a running GIM: the PF's ``driver`` is ``gim``; ``/sys/bus/pci/drivers/gim/`` holds
  ``guard_status``, ``guard_threshold``, ``self_switch``, ``force_hot_reset``, ``live_update``.
- Supported GPUs (GIM 8.x-9.x, libgv/core/amdgv_marketing_name.c): MI300X 1002:74a1 (VF 74b5), MI325X
  74a5, MI308X 74a2/74a8, 74a9; later releases add MI350X 75a0 / MI355X 75a3 (VFs 75b0/75b3), MI210 740f
  and Radeon PRO V710 7460 (VF 7461). The MI350P of the release notes has no entry in that table (no
  device ID to match): it is recognised by its ``gim`` driver binding only.
- VF counts AMD states per model: 1 (SPX/NPS1) on every model; the MI300X also 8 (CPX/NPS4), the
  MI350X/MI355X also 2 or 8. Other models take any count GIM accepts (1-31).

On an APU the GPU and its HDMI/DP audio (``1002``) share their slot with the processor's own functions
(``1022``: the CCP/PSP, USB and HD audio controllers; Strix Halo ``c5:00.0`` GPU, ``.1`` its audio, ``.2``
CCP, ``.4`` xHCI, ``.6`` HD audio, each in an IOMMU group of its own): ``host_slot_vendors`` keeps those
out of the GPU's companions.

So the VF count of a GIM GPU is never written (:meth:`AmdBackend.vf_count_set_by` refuses it with how to
set it), and its restore step, ``mxgpu`` (before the VF counts are written), waits for GIM to bind each
recorded GPU and enable its VFs, and checks the count against the recorded one.
"""

from __future__ import annotations

import os
import re

from ansible_collections.gpuvirt.host.plugins.module_utils.errors import GpuvirtError
from ansible_collections.gpuvirt.host.plugins.module_utils.kernel import module_parameter
from ansible_collections.gpuvirt.host.plugins.module_utils.secureboot import module_refused_at_boot
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import (
    PCI_DEVICES,
    host_path,
    link_name,
    read_int,
    read_text,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.vendor_plan import (
    MANAGED_HEADER,
    EnableError,
    EnablePlan,
    RestoreStep,
    VendorBackend,
    VendorRestoreError,
)

VENDOR_ID = "1002"
# The vendor ID of AMD processors' own PCI functions (host bridges, CCP/PSP, USB, audio).
PROCESSOR_VENDOR_ID = "1022"
HOST_DRIVER = "gim"
# The PF device IDs of GIM's GPUs (libgv/core/amdgv_marketing_name.c), with their names there.
GIM_MODELS = {
    "74a1": "AMD Instinct MI300X",
    "74a2": "AMD Instinct MI308X",
    "74a5": "AMD Instinct MI325X",
    "74a8": "AMD Instinct MI308X",
    "74a9": "AMD Instinct MI300X HF",
    "75a0": "AMD Instinct MI350X",
    "75a3": "AMD Instinct MI355X",
    "740f": "AMD Instinct MI210",
    "7460": "AMD Radeon PRO V710",
}
GIM_IDS = frozenset(GIM_MODELS)
# The VF counts a model supports where AMD states them: 1 (SPX/NPS1) on all, 8 (CPX/NPS4) on the
# MI300X, 2 or 8 on the MI350X/MI355X. Models not listed take GIM's whole range.
SUPPORTED_VF_COUNTS = {"74a1": (1, 8), "75a0": (1, 2, 8), "75a3": (1, 2, 8)}
VF_NUM_RANGE = (1, 31)
# GIM's count for a GPU that neither vf_num nor /etc/gim_config names (VF_NUMBER__DEFAULT, gim_config.h).
DEFAULT_VF_NUM = 1
GIM_CONF = "etc/modprobe.d/gpuvirt-gim.conf"
GIM_MODULES_LOAD = "etc/modules-load.d/gpuvirt-gim.conf"
_VF_NUM_OPTION = re.compile(r"^\s*options\s+gim\s+(?:.*\s)?vf_num=([0-9,]+)(?:\s|$)", re.MULTILINE)
GIM_DRIVER_FILES = ("guard_status", "guard_threshold", "self_switch", "force_hot_reset", "live_update")


def gim_present(root):
    """The GIM driver is registered (``sys/bus/pci/drivers/gim`` with its attributes)."""
    base = os.path.join(root, "sys/bus/pci/drivers", HOST_DRIVER)
    return os.path.isdir(base) and any(os.path.exists(os.path.join(base, name)) for name in GIM_DRIVER_FILES)


def parse_vf_num(text):
    """GIM's ``vf_num`` (``N0,N1,...``) as a list of counts; None when unset (or not such a list)."""
    values = (text or "").strip().split(",")
    if not all(value.isascii() and value.isdigit() for value in values):
        return None
    return [int(value) for value in values]


def vf_num_of(values, index):
    """The VF count ``vf_num`` ``values`` give GIM's GPU ``index``: its entry, else the last one (GIM
    repeats the last value to every later GPU); None without values."""
    if not values:
        return None
    return values[index] if index < len(values) else values[-1]


def render_vf_num(values):
    """``vf_num`` for per-GPU ``values``, without the trailing repeats GIM fills in itself."""
    end = len(values)
    while end > 1 and values[end - 1] == values[end - 2]:
        end -= 1
    return ",".join(str(value) for value in values[:end])


def configured_vf_num(root):
    """``vf_num`` as this collection's modprobe.d file sets it for GIM's next load, or None."""
    match = _VF_NUM_OPTION.search(read_text(host_path(root, GIM_CONF)) or "")
    return parse_vf_num(match.group(1)) if match else None


def gim_gpus(devices):
    """The addresses of the GPUs GIM numbers, in its order: the physical functions it drives that have
    SR-IOV (it gives a GPU without SR-IOV no number), by PCI address, the order the PCI core offers them."""
    found = [
        device.address
        for device in devices.values()
        if device.driver == HOST_DRIVER and not device.is_vf and device.sriov is not None
    ]
    return sorted(found, key=_address_key)


def _address_key(address):
    return tuple(int(part, 16) for part in re.split(r"[:.]", address))


def _device_file(root, address, name):
    return host_path(root, PCI_DEVICES, address, name)


def restore_gim_vfs(context, pf, entry):
    """Wait for GIM to drive ``pf`` and enable its VFs at load; check their count against the recorded one."""
    root = context.root
    wanted = int(entry.get("num_vfs", 0))
    try:
        driver = context.wait_for(lambda: link_name(_device_file(root, pf, "driver")), "a driver binding to %s" % pf)
    except GpuvirtError as error:
        refused = _gim_refused(root, pf)
        if refused:
            raise VendorRestoreError("%s: %s" % (error, refused)) from error
        raise
    if driver != HOST_DRIVER:
        refused = module_refused_at_boot(root, HOST_DRIVER)
        raise VendorRestoreError(
            "%s is driven by %s, not AMD's GIM host driver, so it has no MxGPU VFs: blacklist amdgpu "
            "(modprobe.blacklist=amdgpu) and install gim for this kernel, then reboot%s"
            % (pf, driver, ". Also: " + refused if refused else "")
        )
    numvfs = _device_file(root, pf, "sriov_numvfs")
    count = context.wait_for(lambda: read_int(numvfs), "gim enabling the VFs of %s" % pf)
    vf_num = module_parameter(root, HOST_DRIVER, "vf_num")
    if count != wanted:
        raise VendorRestoreError(
            "gim enabled %d VFs on %s (its vf_num is %s), %d are recorded: gim sets the count when it loads; set "
            "it with gpuvirt.host.virtualization_mode (mode mxgpu, max_vfs %d) and reboot"
            % (count, pf, vf_num or "not set", wanted, wanted)
        )
    return "gim enabled %d VFs (vf_num %s)" % (count, vf_num or "not set")


def _gim_device(device):
    """Whether ``device`` (a :class:`pci.PciDevice`) is a GPU of GIM's: a model GIM supports, or driven by gim."""
    return (device.device_id or "") in GIM_IDS or device.driver == HOST_DRIVER


def _is_gim_gpu(root, pf):
    device_id = (read_text(_device_file(root, pf, "device")) or "")[2:]
    return read_text(_device_file(root, pf, "vendor")) == "0x" + VENDOR_ID and (
        device_id in GIM_IDS or link_name(_device_file(root, pf, "driver")) == HOST_DRIVER
    )


def _gim_refused(root, pf):
    """Why gim does not drive the GIM GPU ``pf``, when the kernel refused it: a gim that DKMS rebuilt for a
    new kernel is unsigned unless DKMS's key is enrolled."""
    return module_refused_at_boot(root, HOST_DRIVER) if _is_gim_gpu(root, pf) else None


def _restore_items(state, root):
    entries = state.get("sriov") or {}
    return [
        (pf, lambda context, pf=pf, entry=entry: restore_gim_vfs(context, pf, entry))
        for pf, entry in sorted(entries.items())
        if isinstance(entry, dict) and entry.get("num_vfs") and _is_gim_gpu(root, pf)
    ]


class AmdBackend(VendorBackend):
    """AMD GPUs: the ``mxgpu`` virtualization mode."""

    name = "amd"
    vendor_id = VENDOR_ID
    resource_domain = "amd.com"
    host_drivers = ("amdgpu", "radeon")
    softdep_drivers = host_drivers
    # An APU's GPU (1002) shares its slot with the processor's own functions (1022: the CCP/PSP security
    # processor, USB controllers, the HD audio controller and audio coprocessor); its HDMI/DP audio is 1002.
    host_slot_vendors = frozenset({PROCESSOR_VENDOR_ID})
    enable_modes = ("mxgpu",)
    enable_options = {"mxgpu": {"max_vfs": "int"}}
    restore_steps = (RestoreStep(name="mxgpu", before="sriov", items=_restore_items),)

    def no_driver_advice(self, root, address):
        return _gim_refused(root, address)

    def vf_count_set_by(self, device):
        if device.driver != HOST_DRIVER:
            return None
        return (
            "gim enables the VFs itself when it loads, from its vf_num parameter, and sriov_numvfs cannot be "
            "written; set the count with gpuvirt.host.virtualization_mode (mode mxgpu, max_vfs) and reboot"
        )

    def enable_plan(self, device, host, mode, options):
        """MxGPU: refuse with advice while GIM is missing; with GIM, ``options gim vf_num=N0,N1,...`` with
        the selected GPU's entry set (GIM enables the VFs itself when it loads, so a reload or reboot),
        and ``gim`` loaded at boot (:data:`GIM_MODULES_LOAD`)."""

        if device.driver != HOST_DRIVER or not gim_present(host.root):
            refused = module_refused_at_boot(host.root, HOST_DRIVER)
            raise EnableError(
                "MxGPU on %s needs AMD's GIM host driver, which is not driving it (driver: %s): %sinstall the gim "
                "package from AMD's MxGPU-Virtualization releases for this GPU, blacklist amdgpu "
                "(modprobe.blacklist=amdgpu), reboot and run again; nothing changed"
                % (device.address, device.driver or "none",
                   "%s. If gim is installed, that is the cause; otherwise " % refused if refused else "")
            )
        count = options.get("max_vfs")
        low, high = VF_NUM_RANGE
        if not count or not low <= count <= high:
            raise EnableError("max_vfs (GIM's vf_num) must be between %d and %d; nothing changed" % (low, high))
        allowed = SUPPORTED_VF_COUNTS.get(device.device_id or "")
        if allowed and count not in allowed:
            raise EnableError(
                "max_vfs %d is not a VF count the %s on %s supports: it runs %s VFs per GPU (1 in SPX/NPS1 "
                "mode); choose one of these; nothing changed"
                % (count, GIM_MODELS[device.device_id], device.address, " or ".join(str(n) for n in allowed))
            )
        gpus = gim_gpus(host.devices)
        if device.address not in gpus:
            raise EnableError(
                "%s is driven by gim but shows no SR-IOV capability (no sriov_totalvfs), so GIM gives it no VFs: "
                "enable SR-IOV in the firmware setup and reboot; nothing changed" % device.address
            )
        index = gpus.index(device.address)
        live = parse_vf_num(host.module_parameter(HOST_DRIVER, "vf_num"))
        known = configured_vf_num(host.root)
        if known is None:
            known = live
        if known is not None:
            values = [vf_num_of(known, number) for number in range(len(gpus))]
        else:  # neither set: each GPU keeps what GIM gave it (its default or /etc/gim_config)
            values = [host.devices[gpu].sriov.num_vfs or DEFAULT_VF_NUM for gpu in gpus]
        values[index] = count
        text = render_vf_num(values)
        return EnablePlan(
            mode=mode,
            address=device.address,
            files=((GIM_CONF, MANAGED_HEADER + "options gim vf_num=%s\n" % text),
                   (GIM_MODULES_LOAD, MANAGED_HEADER + HOST_DRIVER + "\n")),
            running_needs=(
                ("gim loaded with vf_num=%s (GPU %d, %s: %d VFs)" % (text, index, device.address, count),
                 vf_num_of(live, index) == count),
            ),
            vf_limits=tuple(zip(gpus, values)),
        )

    def disable_plan(self, device, host, mode, recorded):
        """MxGPU off: GIM is one driver for every GPU it drives, and its ``vf_num`` takes no 0 (1 to 31): both
        files this collection writes for it go, so that it no longer loads gim at boot, for every GPU gim drives.
        The VFs of a GIM GPU come from gim alone (the sriov module cannot set their count), so the state file's
        entries of the GIM GPUs go with it, whatever drives them now: the restore would wait for gim's VFs, or
        for a driver, on them at every boot. Refused for a GPU that is not one of GIM's. The VFs and gim stay
        until the reboot."""
        if not _gim_device(device):
            raise EnableError("%s is not a GPU of AMD's GIM driver (driver: %s): it has no MxGPU to turn off; "
                              "nothing changed" % (device.address, device.driver or "none"))
        entries = sorted(
            (pf, entry) for pf, entry in (recorded.get("sriov") or {}).items()
            if isinstance(entry, dict) and _is_gim_gpu(host.root, pf)
        )
        gpus = gim_gpus(host.devices)
        notes = ["this collection no longer loads gim at boot (another modules-load.d entry for gim would): the GPUs "
                 "it drives (%s) come up without it after the reboot, on amdgpu where amdgpu is not blacklisted "
                 "(modprobe.blacklist=amdgpu stays as it is; remove it with gpuvirt.host.kernel_cmdline to give them "
                 "back to amdgpu)" % (", ".join(gpus) or "none now")]
        if entries:
            notes.append("the boot restore's records of gim's VFs go with it: %s" % "; ".join(
                "%s (%s VFs%s)" % (pf, entry.get("num_vfs", 0), ", to vfio-pci" if entry.get("vfio") else "")
                for pf, entry in entries))
        if host.module_loaded(HOST_DRIVER):
            notes.append("gim and the VFs it enabled stay until the reboot")
        return EnablePlan(
            mode=mode,
            address=device.address,
            files=((GIM_CONF, None), (GIM_MODULES_LOAD, None)),
            running_needs=(("gim not loaded", not host.module_loaded(HOST_DRIVER)),),
            notes=tuple(notes),
            records=tuple(("sriov", pf, None) for pf, _entry in entries),
        )

    def modes(self, device, host):
        if not _gim_device(device):
            return []
        sriov = device.sriov
        if device.driver == HOST_DRIVER and sriov is not None and sriov.num_vfs:
            return [{"mode": "mxgpu", "ready": True, "missing": []}]
        missing = []
        if device.driver != HOST_DRIVER:
            missing.append(
                "AMD's GIM host driver (gim, AMD's MxGPU-Virtualization package) bound to it instead of %s; "
                "blacklist amdgpu" % (device.driver or "no driver")
            )
        elif not gim_present(host.root):
            missing.append("the gim driver's attributes under /sys/bus/pci/drivers/gim (is gim loaded?)")
        if sriov is None or not sriov.num_vfs:
            missing.append(
                "VFs: gim enables them itself at load (vf_num=<N> or /etc/gim_config), not through sriov_numvfs"
            )
        return [{"mode": "mxgpu", "ready": False, "missing": missing}]


BACKEND = AmdBackend()
