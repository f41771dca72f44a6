# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""NVIDIA's vGPU host driver and ``sriov-manage``, played for fixture trees.

Plugs into :class:`mdev_kernel.KernelSim` together with :class:`sriov_kernel.SriovKernel`. What it
follows (NVIDIA vGPU software user guide, "Creating an NVIDIA vGPU on a Linux with KVM hypervisor"
for the per-VF interface of vGPU 17+ on kernel 6.8+, and for legacy mdev types; "Virtual GPU
types"; the time-sliced placement rule that a GPU hosts vGPUs of one framebuffer size at a time):

- Per-VF interface: each VF of the GPU has ``nvidia/creatable_vgpu_types`` (a header
  ``ID    : vGPU Name``, then ``1030  : NVIDIA L40S-1B`` lines) and ``nvidia/current_vgpu_type``.
  Writing a listed type ID to ``current_vgpu_type`` of a VF without a vGPU creates one; ``0``
  deletes it. After every change each VF's list is recomputed: a VF with a vGPU lists nothing; a
  free VF lists every type while the GPU hosts no vGPU, else only the types of the size in use that
  still fit (size = the number in the profile name, in GB; the GPU's framebuffer = the largest
  profile's size unless configured). The list shrinks to the header alone when the GPU is full.
- Refusals: ``EBUSY`` when a process holds the VF's VFIO group (a running VM), or when the VF
  already has a vGPU and another type ID is written (delete with ``0`` first); ``EINVAL`` for a
  value that is not a number or a type ID the VF does not list now. NVIDIA documents the refusals,
  not their errno values: these are the ones the driver's sysfs handlers return for the cases.
- MIG-backed types (``NVIDIA A100-1-5C``: ``<GPU>-<GPU instance slices>-<GB><series>``, "Virtual GPU
  types", "Configuring a GPU for MIG-Backed vGPUs"): offered only in MIG mode, and only while a GPU
  instance of their number of slices exists that no vGPU uses yet; in MIG mode time-sliced types are not
  offered. :meth:`NvidiaVgpuSim.create_gpu_instances` plays ``nvidia-smi mig -cgi`` (what
  nvidia-mig-manager does at boot); GPU instances are gone after a reboot, MIG mode is not.
- Legacy mdev types on VFs (A100 with vGPU 13-16): each VF offers ``nvidia-NNN`` types with
  ``available_instances`` 1 or 0 by the same rule (one vGPU per VF, one size per GPU); creation
  and removal go through :class:`mdev_kernel.KernelSim`, and the GPU's VFs are recomputed after.
- New VFs (``sriov_numvfs`` written by ``sriov-manage``) get the interface of their GPU's
  configuration (:meth:`NvidiaVgpuSim.configure_gpu`), or of what was learned from the fixture's
  existing VFs when the simulator started (:meth:`NvidiaVgpuSim.learn`).

``fake_sriov_manage(bin_dir, root, fail_first=0, lie_first=0, exit_code_when_enabled=0, unbind_first=0,
partial_first=0, partial_vfs=4)`` writes a ``sriov-manage`` executable: ``-e <pf>|ALL`` enables
``sriov_totalvfs`` VFs through the simulator and ``-d`` disables them, except that the first ``fail_first``
calls fail (exit 1, nothing changed) and the next ``lie_first`` calls print success and exit 0 without
enabling anything (the race with the driver's start-up); the first ``partial_first`` ``-e`` calls that get
to enable VFs enable only ``partial_vfs`` of them and exit 0 (a GPU left with fewer VFs than it offers);
``exit_code_when_enabled`` makes a successful call exit non-zero anyway. Like NVIDIA's script
(``enable_vfs``/``disable_vfs`` in ``/usr/lib/nvidia/sriov-manage``), ``-e`` on a GPU that has any VFs
enabled, all or only some, prints ``GPU at <pf> already has VFs enabled.`` and exits 0 without writing
(so a partly enabled GPU stays short), and ``-d`` on a GPU without VFs likewise exits 0; only ``-d`` then
``-e`` enables all of them, since the kernel (:class:`sriov_kernel.SriovKernel`) refuses another non-zero
count while VFs are enabled with ``EBUSY``. A ``-d`` that the kernel refuses (a VF in use) fails (exit 1).
Like the real script, which unbinds ``nvidia`` from the GPU to set the VFs up and rebinds it, it fails
(exit 1, nothing changed) on a GPU that ``nvidia`` does not drive; the first ``unbind_first`` calls
unbind ``nvidia`` and fail part way, leaving the GPU without a driver (stackhpc/ansible-collection-linux,
roles/vgpu/templates/nvidia-sriov.service.j2). Every call's argv is recorded in the simulator state
(:func:`sriov_manage_calls`).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import sys

try:
    from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim
    from ansible_collections.gpuvirt.host.tests.sim.pci_kernel import PciKernel
    from ansible_collections.gpuvirt.host.tests.sim.sriov_kernel import SriovKernel
except ImportError:  # run as the fake sriov-manage: tests/sim is on sys.path
    from mdev_kernel import KernelSim
    from pci_kernel import PciKernel
    from sriov_kernel import SriovKernel

CURRENT = re.compile(r"sys/bus/pci/devices/([^/]+)/nvidia/current_vgpu_type\Z")
MDEV_CREATE = re.compile(r"sys/class/mdev_bus/([^/]+)/mdev_supported_types/([^/]+)/create\Z")
MDEV_REMOVE = re.compile(r"sys/bus/mdev/devices/([^/]+)/remove\Z")
HEADER = "ID    : vGPU Name"
NVIDIA_DRIVER = "nvidia"
_SIZE = re.compile(r"-([0-9]+)[A-Za-z]+\s*\Z")
_MIG_SLICES = re.compile(r"-([0-9]+)-[0-9]+[A-Z]+\s*\Z")
_ENTRY = re.compile(r"\s*([0-9]+)\s*:\s*(\S.*?)\s*\Z")


def _fail(code):
    raise OSError(code, os.strerror(code))


def profile_size(name):
    """``NVIDIA L40S-8Q`` -> 8 (GB of framebuffer); None when the name carries no size."""
    match = _SIZE.search(name or "")
    return int(match.group(1)) if match else None


def mig_slices(name):
    """``NVIDIA A100-2-10C`` -> 2 (GPU instance slices); None for a time-sliced type."""
    match = _MIG_SLICES.search(name or "")
    return int(match.group(1)) if match else None


def parse_creatable(text):
    entries = {}
    for line in text.splitlines():
        match = _ENTRY.match(line)
        if match:
            entries[int(match.group(1))] = match.group(2)
    return entries


def render_creatable(entries):
    lines = [HEADER] + ["%-6s: %s" % (type_id, name) for type_id, name in entries]
    return "\n".join(lines) + "\n"


class NvidiaVgpuSim:
    def __init__(self, sim, sriov=None):
        self.sim = sim
        self.root = sim.root
        self.sriov = sriov or SriovKernel(sim)
        sim.add_handler(CURRENT, self._current)
        # Ahead of the mdev core's own handlers, to apply the one-size rule across a GPU's VFs.
        sim.handlers.insert(0, (MDEV_CREATE, self._mdev_create))
        sim.handlers.insert(0, (MDEV_REMOVE, self._mdev_remove))
        self.sriov.on_vf_created(self._decorate_vf)
        self.sriov.on_vfs_enabled(self.settle)
        for pf in self._nvidia_pfs():
            if pf not in self._gpus():
                self.learn(pf)

    # -- configuration ---------------------------------------------------------------------------

    def _gpus(self):
        return self.sim.load().get("nvidia", {})

    def gpu(self, pf):
        return self._gpus().get(pf)

    def configure_gpu(self, pf, types=None, legacy_types=None, framebuffer=None):
        """Declare what the VFs of ``pf`` offer: ``types`` ``{id: name}`` for the per-VF interface, or
        ``legacy_types`` ``[{id, name, description}]`` for mdev types. ``framebuffer`` in GB."""
        if (types is None) == (legacy_types is None):
            raise ValueError("give types (per-VF interface) or legacy_types (mdev types)")
        config = {"framework": "per_vf" if types is not None else "legacy", "framebuffer": framebuffer}
        if types is not None:
            config["types"] = {str(k): v for k, v in types.items()}
        else:
            config["legacy_types"] = [dict(t) for t in legacy_types]
        state = self.sim.load()
        state.setdefault("nvidia", {})[pf] = config
        self.sim.save(state)
        self.settle(pf)

    def set_mig_mode(self, pf, enabled):
        """MIG mode on (no GPU instances yet) or off."""
        state = self.sim.load()
        state["nvidia"][pf]["gpu_instances"] = [] if enabled else None
        self.sim.save(state)
        self.settle(pf)

    def create_gpu_instances(self, pf, slices):
        """``nvidia-smi mig -cgi``: GPU instances of these numbers of slices, on a GPU in MIG mode."""
        state = self.sim.load()
        if state["nvidia"][pf].get("gpu_instances") is None:
            raise ValueError("%s is not in MIG mode" % pf)
        state["nvidia"][pf]["gpu_instances"] += list(slices)
        self.sim.save(state)
        self.settle(pf)

    def learn(self, pf):
        """Configure ``pf`` from what its existing VFs show (the fixture's complete lists)."""
        types = {}
        legacy = {}
        for vf in self.sriov.vfs_of(pf):
            base = self.sriov.device_dir(vf)
            path = os.path.join(base, "nvidia", "creatable_vgpu_types")
            if os.path.exists(path):
                with open(path, encoding="utf-8") as handle:
                    types.update(parse_creatable(handle.read()))
            type_dir = os.path.join(base, "mdev_supported_types")
            for type_id in sorted(os.listdir(type_dir)) if os.path.isdir(type_dir) else []:
                entry = {"id": type_id}
                for name in ("name", "description"):
                    with open(os.path.join(type_dir, type_id, name), encoding="utf-8") as handle:
                        entry[name] = handle.read().strip()
                legacy[type_id] = entry
        if types:
            self.configure_gpu(pf, types=types)
        elif legacy:
            self.configure_gpu(pf, legacy_types=[legacy[k] for k in sorted(legacy)])

    def _nvidia_pfs(self):
        found = []
        bus = os.path.join(self.root, "sys/bus/pci/devices")
        for address in sorted(os.listdir(bus)) if os.path.isdir(bus) else []:
            base = os.path.join(bus, address)
            if os.path.exists(os.path.join(base, "sriov_totalvfs")) and _read(base, "vendor") == "0x10de":
                found.append(address)
        return found

    def _decorate_vf(self, pf, description):
        config = self.gpu(pf)
        if config is None:
            return
        description["driver"] = description.get("driver") and "nvidia"
        if config["framework"] == "per_vf":
            description["nvidia_vgpu"] = {"creatable": {}, "current": 0}
        else:
            description["mdev_types"] = [
                {
                    "id": t["id"],
                    "name": t.get("name"),
                    "description": t.get("description"),
                    "available": 0,
                    "device_api": "vfio-pci",
                }
                for t in config["legacy_types"]
            ]

    # -- the placement rule ------------------------------------------------------------------------

    def _sizes(self, config):
        if config["framework"] == "per_vf":
            names = {int(k): v for k, v in config["types"].items()}
        else:
            names = {t["id"]: t.get("name") for t in config["legacy_types"]}
        sizes = {k: profile_size(v) for k, v in names.items()}
        known = [s for s in sizes.values() if s]
        total = config.get("framebuffer") or (max(known) if known else 1)
        return names, {k: (s or total) for k, s in sizes.items()}, total

    def _placed(self, pf, config):
        """``{vf: type}`` of the vGPUs the GPU hosts now (per-VF IDs or legacy type ids)."""
        placed = {}
        for vf in self.sriov.vfs_of(pf):
            if config["framework"] == "per_vf":
                current = int(_read(self.sriov.device_dir(vf), "nvidia/current_vgpu_type") or 0)
                if current:
                    placed[vf] = current
            else:
                for uuid, _group in self.sriov.mdevs_on(vf):
                    link = os.path.join(self.root, "sys/bus/mdev/devices", uuid, "mdev_type")
                    placed[vf] = os.path.basename(os.readlink(link))
        return placed

    def offers(self, pf, vf):
        """The types ``vf`` can take now, in type order."""
        config = self.gpu(pf)
        names, sizes, total = self._sizes(config)
        placed = self._placed(pf, config)
        if vf in placed:
            return []
        instances = config.get("gpu_instances")
        if instances is not None:
            free = list(instances)
            for type_id in placed.values():
                if mig_slices(names.get(type_id)) in free:
                    free.remove(mig_slices(names.get(type_id)))
            return sorted(t for t in names if mig_slices(names[t]) is not None and mig_slices(names[t]) in free)
        names = {t: name for t, name in names.items() if mig_slices(name) is None}
        if not placed:
            return sorted(names)
        size = sizes.get(next(iter(placed.values())), total)
        used = sum(sizes.get(t, total) for t in placed.values())
        return sorted(t for t in names if sizes[t] == size and used + size <= total)

    def settle(self, pf):
        """Rewrite what every VF of ``pf`` offers after a change."""
        config = self.gpu(pf)
        if config is None:
            return
        names = self._sizes(config)[0]
        for vf in self.sriov.vfs_of(pf):
            base = self.sriov.device_dir(vf)
            offered = self.offers(pf, vf)
            if config["framework"] == "per_vf":
                path = os.path.join(base, "nvidia", "creatable_vgpu_types")
                if os.path.isdir(os.path.dirname(path)):
                    _write(path, render_creatable([(t, names[t]) for t in offered]))
            else:
                type_dir = os.path.join(base, "mdev_supported_types")
                for type_id in os.listdir(type_dir) if os.path.isdir(type_dir) else []:
                    _write(
                        os.path.join(type_dir, type_id, "available_instances"),
                        "%d\n" % (1 if type_id in offered else 0),
                    )

    # -- kernel behaviour ------------------------------------------------------------------------

    def _physfn(self, vf):
        link = os.path.join(self.sriov.device_dir(vf), "physfn")
        return os.path.basename(os.readlink(link)) if os.path.islink(link) else None

    def _current(self, match, value):
        vf = match.group(1)
        pf = self._physfn(vf)
        config = self.gpu(pf) if pf else None
        if config is None or config["framework"] != "per_vf":
            _fail(errno.ENODEV)
        text = value.decode("ascii", "replace").strip()
        if not text.isdigit():
            _fail(errno.EINVAL)
        wanted = int(text)
        base = self.sriov.device_dir(vf)
        current = int(_read(base, "nvidia/current_vgpu_type") or 0)
        if wanted == current:
            return
        if self.sriov.in_use(vf):
            _fail(errno.EBUSY)
        if wanted and current:
            _fail(errno.EBUSY)
        if wanted and wanted not in self.offers(pf, vf):
            _fail(errno.EINVAL)
        _write(os.path.join(base, "nvidia", "current_vgpu_type"), "%d\n" % wanted)
        self.settle(pf)

    def _legacy_pf(self, parent):
        if ":" not in parent or not os.path.lexists(os.path.join(self.root, "sys/bus/pci/devices", parent)):
            return None
        pf = self._physfn(parent)
        config = self.gpu(pf) if pf else None
        return pf if config is not None and config["framework"] == "legacy" else None

    def _mdev_create(self, match, value):
        parent, type_id = match.group(1), match.group(2)
        pf = self._legacy_pf(parent)
        if pf is not None and type_id not in self.offers(pf, parent):
            _fail(errno.ENOSPC)
        self.sim._create(match, value)
        if pf is not None:
            self.settle(pf)

    def _mdev_remove(self, match, value):
        real = os.path.realpath(os.path.join(self.root, "sys/bus/mdev/devices", match.group(1)))
        pf = self._legacy_pf(os.path.basename(os.path.dirname(real)))
        self.sim._remove(match, value)
        if pf is not None:
            self.settle(pf)


def _read(base, name):
    try:
        with open(os.path.join(base, name), encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _write(path, text):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def attach(root):
    """A :class:`KernelSim` for ``root`` with the SR-IOV core and the NVIDIA driver plugged in."""
    sim = KernelSim(root)
    sriov = SriovKernel(sim)
    nvidia = NvidiaVgpuSim(sim, sriov)
    return sim, sriov, nvidia


# ---------------------------------------------------------------------------------------------
# The fake sriov-manage

_SCRIPT = """#!{python}
import sys
sys.path[:0] = [{sim_dir!r}, {fixtures_dir!r}]
from nvidia_vgpu_sim import sriov_manage_main
sys.exit(sriov_manage_main(sys.argv[1:], {root!r}))
"""


def fake_sriov_manage(bin_dir, root, fail_first=0, lie_first=0, exit_code_when_enabled=0, unbind_first=0,
                      partial_first=0, partial_vfs=4):
    """Write ``<bin_dir>/sriov-manage`` acting on ``root``; returns its path."""
    here = os.path.dirname(os.path.abspath(__file__))
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, "sriov-manage")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(
            _SCRIPT.format(
                python=sys.executable,
                sim_dir=here,
                fixtures_dir=os.path.join(os.path.dirname(here), "fixtures"),
                root=root,
            )
        )
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    sim = KernelSim(root)
    state = sim.load()
    state["sriov_manage"] = {
        "fail_first": fail_first,
        "lie_first": lie_first,
        "exit_code_when_enabled": exit_code_when_enabled,
        "unbind_first": unbind_first,
        "partial_first": partial_first,
        "partial_vfs": partial_vfs,
        "calls": [],
    }
    sim.save(state)
    return path


def sriov_manage_calls(root):
    return KernelSim(root).load().get("sriov_manage", {}).get("calls", [])


def sriov_manage_main(argv, root):
    usage = "Usage: sriov-manage <-e|-d> <ssss:bb:dd.f|ALL>\n"
    if len(argv) != 2 or argv[0] not in ("-e", "-d"):
        sys.stderr.write(usage)
        return 2
    sim, sriov, _nvidia = attach(root)
    state = sim.load()
    behaviour = state.setdefault("sriov_manage", {"fail_first": 0, "lie_first": 0, "calls": []})
    behaviour.setdefault("calls", []).append(list(argv))
    call = len(behaviour["calls"])
    sim.save(state)
    action, target = argv
    # ALL: the GPUs nvidia drives.
    pfs = [pf for pf in _nvidia_sriov_pfs(root) if _driver(root, pf) == NVIDIA_DRIVER] if target == "ALL" else [target]
    verb = "Enabling" if action == "-e" else "Disabling"
    unbound = [pf for pf in pfs if _driver(root, pf) != NVIDIA_DRIVER]
    if unbound:
        sys.stderr.write("%s VFs failed: %s is not bound to the nvidia driver\n" % (verb, " ".join(unbound)))
        return 1
    if call <= behaviour.get("unbind_first", 0):
        PciKernel(sim)
        with sim.active():
            for pf in pfs:
                _sysfs_write(os.path.join(root, "sys/bus/pci/drivers", NVIDIA_DRIVER, "unbind"), pf)
        sys.stderr.write("%s VFs on %s failed: could not bind the nvidia driver again\n" % (verb, " ".join(pfs)))
        return 1
    if call <= behaviour.get("fail_first", 0):
        sys.stderr.write("%s VFs on %s failed: the nvidia driver is not ready\n" % (verb, " ".join(pfs)))
        return 1
    for pf in pfs:
        sys.stdout.write("%s VFs on %s\n" % (verb, pf))
    if call <= behaviour.get("fail_first", 0) + behaviour.get("lie_first", 0):
        return 0
    status = 0
    with sim.active():
        for pf in pfs:
            path = os.path.join(root, "sys/bus/pci/devices", pf, "sriov_numvfs")
            if not os.path.exists(path):
                sys.stderr.write("%s is not an SR-IOV capable device\n" % pf)
                status = 1
                continue
            enabled = int(_read(os.path.dirname(path), "sriov_numvfs") or 0)
            if bool(enabled) == (action == "-e"):
                sys.stdout.write("GPU at %s already has VFs %s.\n" % (pf, "enabled" if enabled else "disabled"))
                continue
            count = _read(os.path.dirname(path), "sriov_totalvfs") if action == "-e" else "0"
            if action == "-e" and behaviour.get("partial_done", 0) < behaviour.get("partial_first", 0):
                behaviour["partial_done"] = behaviour.get("partial_done", 0) + 1
                state = sim.load()
                state["sriov_manage"] = behaviour
                sim.save(state)
                count = str(min(int(count), behaviour.get("partial_vfs", 4)))
            try:
                _sysfs_write(path, count)
            except OSError as error:
                sys.stderr.write("%s VFs on %s failed: %s\n" % (verb, pf, error.strerror))
                status = 1
    return status or behaviour.get("exit_code_when_enabled", 0)


def _sysfs_write(path, text):
    """One write(2), as ``echo`` does: the simulator routes it while active."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)


def _driver(root, address):
    link = os.path.join(root, "sys/bus/pci/devices", address, "driver")
    return os.path.basename(os.readlink(link)) if os.path.islink(link) else None


def _nvidia_sriov_pfs(root):
    bus = os.path.join(root, "sys/bus/pci/devices")
    return [
        address
        for address in sorted(os.listdir(bus))
        if _read(os.path.join(bus, address), "vendor") == "0x10de"
        and os.path.exists(os.path.join(bus, address, "sriov_totalvfs"))
    ]
