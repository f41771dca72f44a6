# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NVIDIA backend: vGPU readers (the per-VF ``nvidia/`` interface, legacy mdev profile names)
and what an NVIDIA GPU needs before it offers vGPUs.

Interface notes (vgpu-device-manager, go-nvlib, the vgpu-kvm driver packages):

- Host driver: the vGPU manager build of ``nvidia`` (the "vgpu-kvm" package), with the services
  ``nvidia-vgpud`` and ``nvidia-vgpu-mgr`` and the module ``nvidia_vgpu_vfio``. The plain data-center
  driver has neither: it offers no vGPU types at all.
- Up to Ampere (and on kernels before 6.8): mdev types ``nvidia-<n>`` on the GPU or, on SR-IOV GPUs,
  on each VF once ``/usr/lib/nvidia/sriov-manage -e <pf>`` enabled them.
- Ada/Hopper and later with vGPU 17+ on kernel 6.8+: no mdev bus; each VF has
  ``nvidia/creatable_vgpu_types`` and ``nvidia/current_vgpu_type`` (write a type ID, ``0`` to delete).
- The host's users of a GPU on ``nvidia`` hold ``/dev/nvidiaN``, N being the ``Device Minor`` line of
  ``/proc/driver/nvidia/gpus/<address>/information`` (``/dev/nvidiactl`` and ``/dev/nvidia-uvm`` are
  shared by all GPUs). Unbinding the driver while any is held makes it log "Attempting to remove
  device ... with non-zero usage count!" and wait until they let go (``device_nodes``).

Public API:

- :func:`parse_creatable_vgpu_types` ``(text) -> (list[{"id": int, "name": str}], list[str])``:
  the entries of ``nvidia/creatable_vgpu_types`` (``<id> : <name>`` or ``<id> <name>``; lines that do not
  start with a type ID, such as the header, are skipped) and the lines with an ID but no name.
- :func:`read_nvidia_vgpu` ``(device_path, address, findings=None, display=None, directory=None) -> dict | None``:
  ``{"creatable": [...], "current": int}`` for a device with an ``nvidia/`` directory, else None.
- :func:`profile_name` ``(type_name) -> str | None``: ``NVIDIA A100-4C`` -> ``A100-4C``;
  :func:`is_mig_backed` ``(type_name) -> bool``: ``A100-1-5C`` lives in a MIG GPU instance.
- :class:`SriovManage`: NVIDIA's VF enabler, ``/usr/lib/nvidia/sriov-manage -e <pf>``, as a vendor tool
  (recorded as method ``sriov_manage`` in the state file's ``sriov`` section; :func:`sriov.enable_vfs_by_tool`
  runs it and reads the VFs back). It needs ``lspci`` and unbinds ``nvidia`` from the GPU while it works,
  leaving it unbound when it fails part way (a next run then fails too), so the GPU is bound to ``nvidia``
  again before each run (stackhpc/ansible-collection-linux, roles/vgpu: nvidia-sriov.service.j2).

Its state file section, ``nvidia_vgpu``, maps each VF to its vGPU type (``{"0000:41:00.4": {"type_id":
1030, "type_name": "NVIDIA L40S-1B"}}``); its restore step, ``nvidia_vgpu``, writes them back to
``nvidia/current_vgpu_type`` once the VFs exist (after ``sriov``) and before the mdevs.

Kernel 6.8+ with recent vGPU drivers has no mdev bus: each VF carries
``nvidia/creatable_vgpu_types`` (a header ``ID    : vGPU Name`` then ``1030  : NVIDIA L40S-1B``
lines, shrinking to the header alone as capacity is used) and ``nvidia/current_vgpu_type``
(``0`` when none).
"""

from __future__ import annotations

import os
import re

from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import (
    MDEV_BUS,
    MISSING,
    PCI_DEVICES,
    host_path,
    read_attribute,
    read_attribute_at,
    read_text,
)
from ansible_collections.gpuvirt.host.plugins.module_utils.vendor_plan import (
    VGPU_KEY,
    EnableError,
    EnablePlan,
    RestoreStep,
    VendorBackend,
    vgpu_entry,
)

VENDOR_ID = "10de"
STATE_KEY = "nvidia_vgpu"
VGPU_HOST_MODULE = "nvidia_vgpu_vfio"
SRIOV_MANAGE = "/usr/lib/nvidia/sriov-manage"

NVIDIA_PROC_GPUS = "proc/driver/nvidia/gpus"
_DEVICE_MINOR = re.compile(r"^Device Minor:\s*([0-9]+)\s*$", re.MULTILINE)
# ``<id> : <name>`` or ``<id> <name>``, as NVIDIA's vgpu-device-manager reads them (pkg/vgpu/vfio/types.go).
_ENTRY = re.compile(r"\s*([0-9]+)(?:\s*:|\s)\s*(.*?)\s*\Z")
# A line that starts with a type ID; any other line (the header, in whatever form) is skipped.
_NUMERIC = re.compile(r"\s*[0-9]+(?:[\s:]|\Z)")


def parse_creatable_vgpu_types(text):
    """Parse ``nvidia/creatable_vgpu_types``; returns ``(entries, bad_lines)``."""
    parsed = _PARSED.get(text)
    if parsed is None:
        parsed = _parse_creatable(text)
        if len(_PARSED) < _PARSED_MAX:
            _PARSED[text] = parsed
    entries, bad = parsed
    return [dict(entry) for entry in entries], list(bad)


# The VFs of one GPU model list the same types: each distinct text is parsed once per process.
_PARSED = {}
_PARSED_MAX = 256


def _parse_creatable(text):
    # Like vgpu-device-manager: lines that do not start with a numeric type ID (the header) are skipped,
    # whatever their form; a line that does but has no name is reported.
    entries = []
    bad = []
    for line in text.splitlines():
        if not _NUMERIC.match(line):
            continue
        match = _ENTRY.match(line)
        if match is None or not match.group(2):
            bad.append(line)
        else:
            entries.append({"id": int(match.group(1)), "name": match.group(2)})
    return entries, bad


def read_nvidia_vgpu(device_path, address, findings=None, display=None, directory=None):
    """The per-VF vGPU state of one device, or None when it has no ``nvidia/`` interface.

    ``display`` is how findings name the ``nvidia/`` directory (default: its
    ``/sys/bus/pci/devices/<address>/nvidia`` path). ``directory``: a descriptor of the device's
    directory to read relative to (``device_path`` is then only named, not walked again).
    """
    prefix = "nvidia/" if directory is not None else device_path + "/nvidia/"
    text, problem = read_attribute_at(directory, prefix + "creatable_vgpu_types")
    if problem is MISSING:
        return None
    creatable = None
    if text is None:
        _report(findings, display, "creatable_vgpu_types", problem, None, address)
    else:
        creatable, bad = parse_creatable_vgpu_types(text)
        if bad:
            _report(findings, display, "creatable_vgpu_types", None, bad[0], address)
            creatable = None
    current_text, problem = read_attribute_at(directory, prefix + "current_vgpu_type")
    current = None
    if current_text is not None and current_text.isascii() and current_text.isdigit():
        current = int(current_text)
    elif problem is not MISSING:
        _report(findings, display, "current_vgpu_type", problem, current_text, address)
    return {"creatable": creatable, "current": current}


def _report(findings, display, name, problem, value, address):
    if findings is not None:
        path = "%s/%s" % (display or "/sys/bus/pci/devices/%s/nvidia" % address, name)
        expected = "'<id> : <vGPU name>' lines" if name.endswith("types") else "a vGPU type ID (0 for none)"
        findings.bad_attribute(path, problem, expected, address, value)


def profile_name(type_name):
    """The vGPU profile of a legacy mdev type name: its last word (``NVIDIA A100-4C`` -> ``A100-4C``)."""
    if not type_name:
        return None
    words = type_name.split()
    return words[-1] if words else None


# A MIG-backed vGPU profile: <GPU>-<GPU instance slices>-<GB><series and options> (A100-1-5C, H200X-1-18C,
# A100-1-5CME), where a time-sliced one is <GPU>-<GB><series> (A100-4C); vgpu-device-manager
# pkg/types/vgpu_type.go.
_MIG_PROFILE = re.compile(r"[A-Za-z0-9]+-[0-9]+-[0-9]+[A-Z]+\Z")


def is_mig_backed(type_name):
    """Whether a vGPU type name (``NVIDIA A100-1-5C`` or its profile) names a MIG-backed profile, whose vGPU
    lives in a GPU instance: MIG mode and the GPU instances must exist before one can be created."""
    profile = profile_name(type_name)
    return bool(profile) and _MIG_PROFILE.match(profile) is not None


# A time-sliced profile's framebuffer: the GB before its series letters (A100-4C: 4, L40S-2B: 2).
_TIME_SLICED_SIZE = re.compile(r"[A-Za-z0-9]+-([0-9]+)[A-Z]+\Z")


def time_sliced_size(type_name):
    """The framebuffer (GB) of a time-sliced vGPU type (``NVIDIA L40S-2B`` -> 2), or None for a
    MIG-backed type or a name of another form."""
    profile = profile_name(type_name)
    if not profile or is_mig_backed(profile):
        return None
    match = _TIME_SLICED_SIZE.match(profile)
    return int(match.group(1)) if match else None


def vgpu_state(device):
    """The per-VF vGPU state :func:`read_nvidia_vgpu` read for ``device`` (a ``PciDevice``), or None."""
    return device.vendor_state.get(STATE_KEY)


class SriovManage:
    """``sriov-manage -e <pf>`` from the vGPU host driver package: puts an NVIDIA GPU in SR-IOV mode (all its
    VFs at once; its driver has no ``sriov_configure`` for them). ``command``: its path, else
    ``/usr/lib/nvidia/sriov-manage`` or the one on PATH."""

    name = "sriov-manage"
    enables_all = True
    install_advice = "install the NVIDIA vGPU host driver package, or give its path"
    # It unbinds the GPU's driver while it works and may leave it unbound: bound again before each run.
    pf_driver = "nvidia"
    # The programs it runs, with how to install them (it lists the GPU's functions with lspci).
    programs = (("lspci", "install pciutils"),)

    def __init__(self, command=None):
        self.command = command

    def executable(self, runner=None):
        if self.command:
            return self.command
        finder = getattr(runner, "get_bin_path", None)
        if finder is not None:
            found = finder("sriov-manage", opt_dirs=[os.path.dirname(SRIOV_MANAGE)])
            if found:
                return found
        return SRIOV_MANAGE

    def argv(self, executable, pf):
        return [executable, "-e", pf]

    def disable_argv(self, executable, pf):
        return [executable, "-d", pf]

    def failure_advice(self, pf):
        return "check that the nvidia driver is loaded and bound to %s, that SR-IOV is enabled in the firmware, " \
               "and dmesg" % pf


def _restore_items(state, root):
    # nvidia_vgpu builds on the PCI reader, which builds on this backend: imported when the step runs.
    from ansible_collections.gpuvirt.host.plugins.module_utils import nvidia_vgpu

    items = []
    for vf, entry in sorted((state.get(STATE_KEY) or {}).items()):
        if _mig_backed_entry(entry):
            items.append((vf, lambda context, entry=entry: _left_to_late(entry)))
        else:
            items.append((vf, lambda context, vf=vf, entry=entry: nvidia_vgpu.restore_vgpu(context, vf, entry)))
    return items


def _late_restore_items(state, root):
    """The MIG-backed vGPU types: their GPU instances exist once nvidia-mig-manager has run. Those of the
    vGPU manager before 17 are mdev types of the VFs (an A100 with vGPU 16), recorded as mdevs."""
    from ansible_collections.gpuvirt.host.plugins.module_utils import nvidia_vgpu

    return [
        (vf, lambda context, vf=vf, entry=entry: nvidia_vgpu.restore_vgpu(context, vf, entry, offered_first=True))
        for vf, entry in sorted((state.get(STATE_KEY) or {}).items())
        if _mig_backed_entry(entry)
    ] + _late_mdev_items(state, root)


def _late_mdev_items(state, root):
    """The recorded mdevs of MIG-backed types on NVIDIA VFs (the vGPU manager before 17, on the mdev bus),
    created by the generic mdev restore once nvidia-mig-manager has made the GPU instances."""
    items = []
    for value, entry in sorted((state.get("mdevs") or {}).items()):
        if isinstance(entry, dict) and entry.get("parent") and entry.get("type") and _late_mdev_reason(
                root, entry["parent"], entry["type"]):
            items.append((value, lambda context, value=value, entry=entry: context.restore_mdev(value, entry)))
    return items


def _late_mdev_reason(root, parent, type_id):
    device = host_path(root, PCI_DEVICES, parent)
    if read_text(device + "/vendor") != "0x" + VENDOR_ID or not os.path.lexists(device + "/physfn"):
        return None
    name = read_text(host_path(root, MDEV_BUS, parent, "mdev_supported_types", type_id, "name"))
    if not name or not is_mig_backed(name):
        return None
    return "type %s (%s) is MIG-backed: gpuvirt-restore-late.service creates it once nvidia-mig-manager has " \
        "created the GPU instances" % (type_id, name)


def _mig_backed_entry(entry):
    return isinstance(entry, dict) and bool(entry.get("type_id")) and is_mig_backed(entry.get("type_name") or "")


def _left_to_late(entry):
    return "type %s (%s) is MIG-backed: gpuvirt-restore-late.service writes it once nvidia-mig-manager has " \
        "created the GPU instances" % (entry.get("type_id"), entry.get("type_name"))


class NvidiaBackend(VendorBackend):
    """NVIDIA GPUs: the per-VF vGPU state, the ``vgpu`` virtualization mode, ``sriov-manage`` and the vGPU
    types of the state file."""

    name = "nvidia"
    vendor_id = VENDOR_ID
    resource_domain = "nvidia.com"
    proxmox_sets_vgpu_types = True
    vgpu_removal_advice = (
        "remove its vGPU with gpuvirt.host.nvidia_vgpu (its GPU's entry with vfs: [{address: <the VF>, state: "
        "absent}], or a lower profile count with exclusive: true), which sets its type to 0 and takes it out of "
        "the boot restore's record; a type set to 0 by hand, or the GPU taken out of vgpu_devices, leaves the "
        "record, and the boot restore sets the type again"
    )
    host_drivers = ("nvidia", "nouveau")
    softdep_drivers = host_drivers
    device_defaults = {STATE_KEY: None}
    gpu_defaults = {STATE_KEY: False}
    enable_modes = ("vgpu",)
    state_sections = (STATE_KEY,)
    restore_steps = (
        RestoreStep(name=STATE_KEY, before="mdevs", items=_restore_items, late_items=_late_restore_items),
    )
    vf_tools = {"sriov_manage": SriovManage}
    # The boot-time restore unit runs sriov-manage before these start: MIG-backed vGPUs need the GPU
    # instances nvidia-mig-manager creates, and SR-IOV has to be set up before it creates them
    # (stackhpc/ansible-collection-linux, roles/vgpu: nvidia-sriov.service.j2 orders itself
    # Before=nvidia-mig-manager.service). A MIG-backed vGPU type is therefore written by the late
    # restore unit, after nvidia-mig-manager (the step's late_items).
    restore_unit_before = ("nvidia-mig-manager.service",)

    def late_mdev(self, root, parent, type_id):
        return _late_mdev_reason(root, parent, type_id)

    def vf_count_advice(self, device):
        if device.driver != "nvidia":
            return None
        return "an NVIDIA GPU on the nvidia driver: vGPU hosts enable its VFs with sriov-manage; " \
               "gpuvirt.host.nvidia_vgpu does that"

    def in_use_reasons(self, device):
        current = (vgpu_state(device) or {}).get("current")
        return ["NVIDIA vGPU type %d is assigned to it (nvidia/current_vgpu_type)" % current] if current else []

    def device_nodes(self, root, device):
        """``/dev/nvidiaN``: the driver numbers its GPUs (``Device Minor`` in its
        ``/proc/driver/nvidia/gpus/<address>/information``)."""
        if device.driver != "nvidia":
            return []
        text = read_text(host_path(root, NVIDIA_PROC_GPUS, device.address, "information"))
        match = _DEVICE_MINOR.search(text or "")
        return ["/dev/nvidia%s" % match.group(1)] if match else []

    def no_mdev_types_hint(self, device, vfs):
        if vgpu_state(device) is not None or any(vgpu_state(vf) is not None for vf in vfs):
            return "it uses NVIDIA's per-VF vGPU interface: use gpuvirt.host.nvidia_vgpu"
        return None

    def enable_plan(self, device, host, mode, options):
        """vGPU: nothing to write; the vGPU host driver must be installed and its manager running,
        else a refusal. Profiles are then created by gpuvirt.host.nvidia_vgpu."""

        problems = []
        if device.driver != "nvidia":
            problems.append("the nvidia driver is not bound to it (driver: %s)" % (device.driver or "none"))
        if not host.module_loaded(VGPU_HOST_MODULE):
            problems.append("the vGPU host driver is not loaded (no %s module)" % VGPU_HOST_MODULE)
        if not manager_running(host.root):
            problems.append("nvidia-vgpu-mgr is not running")
        if problems:
            raise EnableError(
                "vGPU on %s: %s; install NVIDIA's vGPU host driver (the vgpu-kvm package) and start "
                "nvidia-vgpud and nvidia-vgpu-mgr, then run again; nothing changed"
                % (device.address, "; ".join(problems))
            )
        return EnablePlan(mode=mode, address=device.address,
                          notes=("create vGPU profiles with gpuvirt.host.nvidia_vgpu",))

    def disable_plan(self, device, host, mode, recorded):
        """vGPU: the mode writes nothing to turn it on, so there is nothing here to turn off. Off already (no vGPU
        host driver loaded, no manager running): nothing to do; else a refusal with what turns it off."""
        if not host.module_loaded(VGPU_HOST_MODULE) and not manager_running(host.root):
            return EnablePlan(mode=mode, address=device.address,
                              notes=("no NVIDIA vGPU host driver runs here: vGPU is off",))
        raise EnableError(
            "vGPU on %s comes from NVIDIA's vGPU host driver (%s loaded or nvidia-vgpu-mgr running); this module "
            "installs nothing for it, so it has nothing to turn off: remove the vGPU profiles "
            "(gpuvirt.host.nvidia_vgpu) and uninstall the vgpu-kvm package to turn it off; nothing changed"
            % (device.address, VGPU_HOST_MODULE)
        )

    def read_device(self, path, address, findings, directory=None):
        state = read_nvidia_vgpu(path, address, findings, directory=directory)
        if state is None:
            return {STATE_KEY: None}
        return {STATE_KEY: state, VGPU_KEY: vgpu_entry(self.name, state["current"], state["creatable"])}

    def legacy_vgpu(self, device):
        state = device.get(STATE_KEY)
        return vgpu_entry(self.name, state.get("current"), state.get("creatable")) if isinstance(state, dict) else None

    def gpu_keys(self, device):
        return {STATE_KEY: vgpu_state(device) is not None}

    def modes(self, device, host):
        """``vgpu``: ready when the GPU (or one of its VFs) offers vGPU types now and, in SR-IOV mode, all its
        VFs are enabled (a GPU with only some is enabled anew by gpuvirt.host.nvidia_vgpu). Offered for 3D
        controllers (data-center GPUs) and SR-IOV capable GPUs; a GeForce-class VGA controller without
        either is not a vGPU model as far as sysfs can tell, nor a laptop's GeForce or mobile chip that is a
        3D controller (:func:`consumer_model`), unless it offers vGPU types all the same."""
        vfs = host.vfs_of(device)
        sriov = device.sriov
        # On an SR-IOV GPU the vGPUs live on its VFs: an nvidia/ directory on the physical function (some
        # driver releases show one there too) offers nothing before the VFs exist.
        per_vf = sriov is not None and bool(sriov.total_vfs)
        offered = (
            host.is_mdev_parent(device.address)
            or (vgpu_state(device) is not None and not per_vf)
            or any(host.is_mdev_parent(vf.address) or vgpu_state(vf) is not None for vf in vfs)
        )
        if not offered and device.sriov is None and (
            not (device.class_code or "").startswith("0302") or consumer_model(device)
        ):
            return []
        missing = []
        if not offered:
            if device.driver != "nvidia":
                missing.append("the NVIDIA vGPU host driver bound to it (now: %s)" % (device.driver or "no driver"))
            elif not host.module_loaded(VGPU_HOST_MODULE):
                missing.append(
                    "the vGPU manager build of the nvidia driver (module %s, service nvidia-vgpu-mgr); "
                    "the data-center driver offers no vGPU types" % VGPU_HOST_MODULE
                )
        if sriov is not None and sriov.total_vfs and not sriov.num_vfs and not offered:
            missing.append("its VFs (sriov-manage -e, as gpuvirt.host.nvidia_vgpu runs it)")
        elif sriov is not None and sriov.total_vfs and sriov.num_vfs and sriov.num_vfs < sriov.total_vfs:
            # SR-IOV mode is every VF (sriov-manage -e enables all): gpuvirt.host.nvidia_vgpu enables them anew
            # before it plans vGPUs on such a GPU.
            missing.append(
                "all of its VFs (%d of %d enabled; gpuvirt.host.nvidia_vgpu enables them anew: sriov-manage -d, "
                "then -e)" % (sriov.num_vfs, sriov.total_vfs)
            )
        if not offered and not missing:
            missing.append("vGPU types: none is offered although the vGPU driver is loaded; check nvidia-vgpu-mgr")
        return [{"mode": "vgpu", "ready": not missing, "missing": missing}]


def consumer_model(device):
    """Whether pci.ids names ``device`` a GeForce or a mobile chip (``GK106M``, ``TU117M``, ``GP107GLM``):
    NVIDIA's vGPU software supports neither. A muxless (Optimus) laptop's GeForce is a 3D controller,
    class 0302, as the data-center GPUs are; the name tells them apart (unnamed: not known to be one)."""
    name = device.device_name or ""
    chip = name.split(" ", 1)[0]
    return "GeForce" in name or (len(chip) > 1 and chip[:2].isalpha() and chip.endswith("M"))


def manager_running(root):
    """A process named ``nvidia-vgpu-mgr`` runs below ``root`` (``proc/<pid>/comm``)."""
    proc = os.path.join(root, "proc")
    try:
        pids = [entry for entry in os.listdir(proc) if entry.isdigit()]
    except OSError:
        return False
    for pid in pids:
        text, _problem = read_attribute(os.path.join(proc, pid, "comm"))
        if text == "nvidia-vgpu-mgr":
            return True
    return False


BACKEND = NvidiaBackend()
