# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A reboot of a fixture host, and ``modprobe``, as the kernel and the GPU vendors' drivers behave.

:func:`reboot` plays what a reboot does to the tree:

1. Runtime state goes: processes (``proc/<pid>``), mediated devices, every VF (with what hangs on it:
   NVIDIA vGPU types, mdevs on VFs, IOMMU groups), the mdev core's pools; ``sriov_drivers_autoprobe``
   is 1 again.
2. The next kernel's command line comes from the boot configuration (``GRUB_CMDLINE_LINUX`` and
   ``GRUB_CMDLINE_LINUX_DEFAULT`` of ``/etc/default/grub``, after the image and root words).
3. Modules: the ones loaded before except those loaded only by name (``/etc/modules-load.d`` or
   ``modprobe`` in the last boot: udev loads the same hardware drivers again, nothing loads the others)
   and the drivers udev cannot load (:data:`NO_ALIASES`: no device table),
   and those of ``/etc/modules-load.d`` now. A module's parameters: ``<module>.<param>=`` on the command line, else
   ``options <module> <param>=`` in ``/etc/modprobe.d``, else its default (:data:`DEFAULTS`; a
   parameter the simulator does not know keeps what the fixture says). kmod reads the command line
   after modprobe.d, so the command line wins (reference: vendors-and-platforms.md section 8).
4. The drivers probe, each as its vendor documents it: :mod:`intel_sriov` (i915/xe PF mode from
   ``max_vfs``), :mod:`gvt_g` (``kvmgt`` and GVT-g types), :mod:`gim` (AMD's GIM enables its VFs from
   ``vf_num``), NVIDIA's vGPU host driver starts ``nvidia-vgpu-mgr`` and leaves SR-IOV off until
   ``sriov-manage`` (:mod:`nvidia_vgpu_sim`).

``fake_modprobe(bin_dir, root)`` writes a ``modprobe`` executable that loads a module into the tree the
same way (parameters as above) and lets its driver probe; ``modprobe kvmgt`` on an iGPU without GVT-g
fails "No such device", as the real one does.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import stat
import sys

try:
    from ansible_collections.gpuvirt.host.tests.sim import gim, gvt_g, intel_sriov
    from ansible_collections.gpuvirt.host.tests.sim.nvidia_vgpu_sim import attach
except ImportError:  # run as the fake modprobe: tests/sim is on sys.path
    import gim
    import gvt_g
    import intel_sriov
    from nvidia_vgpu_sim import attach

# Parameters the drivers' probes depend on, with the value a module has when nothing sets it, and how
# the kernel prints it (bool: Y/N).
DEFAULTS = {
    ("i915", "enable_gvt"): ("N", "bool"),
    ("i915", "enable_guc"): ("-1", "int"),
    ("i915", "max_vfs"): ("0", "int"),
    ("xe", "max_vfs"): ("0", "int"),
    ("gim", "vf_num"): ("", "array"),
}
VGPU_MANAGER_PID = 2101


def read(root, relative):
    try:
        with open(os.path.join(root, relative), encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def write(root, relative, text):
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def cmdline(root):
    return (read(root, "proc/cmdline") or "").split()


def loaded_modules(root):
    return [line.split()[0] for line in (read(root, "proc/modules") or "").splitlines() if line.strip()]


def modprobe_options(root):
    """``{(module, parameter): value}`` of every ``options`` line in ``etc/modprobe.d/*.conf``."""
    options = {}
    for path in sorted(glob.glob(os.path.join(root, "etc/modprobe.d/*.conf"))):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                words = line.split("#", 1)[0].split()
                if len(words) >= 3 and words[0] == "options":
                    for word in words[2:]:
                        name, _sep, value = word.partition("=")
                        options[(words[1].replace("-", "_"), name)] = value
    return options


def parameter_value(root, module, name, words=None, options=None):
    """What ``module``'s parameter ``name`` is set to when it loads now, or None when nothing sets it."""
    words = cmdline(root) if words is None else words
    for word in reversed(words):
        key, _sep, value = word.partition("=")
        if key.replace("-", "_") == "%s.%s" % (module, name):
            return value
    options = modprobe_options(root) if options is None else options
    return options.get((module, name))


def _shown(value, kind):
    if kind == "bool":
        return "Y" if value in ("1", "y", "Y", "on") else "N"
    return value


def load_module(root, module, words=None, options=None):
    """Load ``module``: ``proc/modules``, ``sys/module/<module>`` and its parameters."""
    module = module.replace("-", "_")
    modules = loaded_modules(root)
    if module not in modules:
        modules.append(module)
        write(root, "proc/modules", "".join("%s 16384 0 - Live 0x0000000000000000\n" % name for name in modules))
    os.makedirs(os.path.join(root, "sys/module", module), exist_ok=True)
    for (owner, name), (default, kind) in DEFAULTS.items():
        if owner != module:
            continue
        value = parameter_value(root, module, name, words, options)
        shown = _shown(default if value is None else value, kind)
        write(root, "sys/module/%s/parameters/%s" % (module, name), shown + "\n")
    options = modprobe_options(root) if options is None else options
    for (owner, name), value in options.items():
        if owner == module and (owner, name) not in DEFAULTS:
            write(root, "sys/module/%s/parameters/%s" % (module, name), value + "\n")


def unload_module(root, module):
    write(root, "proc/modules", "".join(
        "%s 16384 0 - Live 0x0000000000000000\n" % name for name in loaded_modules(root) if name != module))
    shutil.rmtree(os.path.join(root, "sys/module", module), ignore_errors=True)


def next_cmdline(root):
    """The command line the next boot gets from ``/etc/default/grub``."""
    grub = read(root, "etc/default/grub") or ""
    values = dict(re.findall(r'^(GRUB_CMDLINE_LINUX(?:_DEFAULT)?)="([^"]*)"', grub, re.M))
    image = [word for word in cmdline(root) if word.startswith(("BOOT_IMAGE=", "root=")) or word == "ro"]
    return image + shlex.split(values.get("GRUB_CMDLINE_LINUX", "")) + shlex.split(
        values.get("GRUB_CMDLINE_LINUX_DEFAULT", ""))


def _modules_load(root):
    names = []
    for path in sorted(glob.glob(os.path.join(root, "etc/modules-load.d/*.conf"))):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                name = line.split("#", 1)[0].strip()
                if name:
                    names.append(name.replace("-", "_"))
    return names


def _loaded_by_name(root, add=()):
    """The modules loaded by name (modules-load.d, modprobe) in this boot, recorded in the simulator state."""
    sim = attach(root)[0]
    state = sim.load()
    names = state.setdefault("loaded_by_name", [])
    names.extend(name for name in add if name not in names)
    sim.save(state)
    return list(names)


def _tear_down(root):
    """Everything a power cycle takes: processes, mdevs, VFs, the mdev pools."""
    sim, sriov, _nvidia = attach(root)  # learns what each NVIDIA GPU's VFs offer before they go
    for pid in os.listdir(os.path.join(root, "proc")):
        if pid.isdigit():
            shutil.rmtree(os.path.join(root, "proc", pid))
    with sim.active():
        bus = os.path.join(root, "sys/bus/mdev/devices")
        for uuid in sorted(os.listdir(bus)) if os.path.isdir(bus) else []:
            fd = os.open(os.path.join(bus, uuid, "remove"), os.O_WRONLY)
            try:
                os.write(fd, b"1")
            finally:
                os.close(fd)
    for pf in sriov_pfs(root):
        if sriov.vfs_of(pf):
            sriov.remove_vfs(pf)
        write(root, "sys/bus/pci/devices/%s/sriov_drivers_autoprobe" % pf, "1\n")
    state = sim.load()
    state["pools"] = {}
    sim.save(state)


def _unbind_driver(root, module):
    """A driver that does not load in this boot drives nothing: its devices come up on no driver."""
    bus = os.path.join(root, "sys/bus/pci/devices")
    for address in sorted(os.listdir(bus)):
        driver = driver_of(root, address)
        if driver is None or driver.replace("-", "_") != module:
            continue
        os.unlink(os.path.join(bus, address, "driver"))
        link = os.path.join(root, "sys/bus/pci/drivers", driver, address)
        if os.path.lexists(link):
            os.unlink(link)
        with open(os.path.join(bus, address, "uevent"), encoding="utf-8") as handle:
            lines = [line for line in handle.read().splitlines() if not line.startswith("DRIVER=")]
        write(root, "sys/bus/pci/devices/%s/uevent" % address, "\n".join(lines) + "\n")


def sriov_pfs(root):
    bus = os.path.join(root, "sys/bus/pci/devices")
    return [a for a in sorted(os.listdir(bus)) if os.path.exists(os.path.join(bus, a, "sriov_totalvfs"))]


def driver_of(root, address):
    link = os.path.join(root, "sys/bus/pci/devices", address, "driver")
    return os.path.basename(os.readlink(link)) if os.path.islink(link) else None


def probe(root, module):
    """Let the driver ``module`` probe its devices as it does when it loads; returns what it did."""
    if module in ("i915", "xe"):
        return intel_sriov.probe(root, module)
    if module == gvt_g.MODULE:
        return gvt_g.probe(root)
    if module == gim.MODULE:
        return gim.probe(root)
    if module == "nvidia_vgpu_vfio" and not any(
            (read(root, "proc/%s/comm" % p) or "").strip() == "nvidia-vgpu-mgr"
            for p in os.listdir(os.path.join(root, "proc")) if p.isdigit()):
        write(root, "proc/%d/comm" % VGPU_MANAGER_PID, "nvidia-vgpu-mgr\n")  # its unit starts with the driver
        return True
    return None


# Drivers with no device table, which udev cannot load by a device's modalias: only a name loads them.
# AMD's GIM (gim_drv.c: id_table NULL, its IDs added with pci_add_dynid() once loaded).
NO_ALIASES = frozenset((gim.MODULE,))


def reboot(root, uptime=20.0):
    """Reboot the tree; returns ``{module: what its probe did}`` for the drivers that probed."""
    _tear_down(root)
    words = next_cmdline(root)
    write(root, "proc/cmdline", " ".join(words) + "\n")
    write(root, "proc/uptime", "%.2f 40.00\n" % uptime)
    before = loaded_modules(root)
    by_name = _loaded_by_name(root)
    modules = [name for name in before if name not in by_name and name not in NO_ALIASES]
    hardware = list(modules)
    modules += [name for name in _modules_load(root) if name not in modules]
    sim = attach(root)[0]
    state = sim.load()
    state["loaded_by_name"] = [name for name in modules if name not in hardware]
    sim.save(state)
    for name in before:
        if name not in modules:
            shutil.rmtree(os.path.join(root, "sys/module", name), ignore_errors=True)
            _unbind_driver(root, name)
    write(root, "proc/modules", "")
    options = modprobe_options(root)
    gvt_g.remove_types(root)
    probed = {}
    for module in modules:
        load_module(root, module, words, options)
    for module in modules:
        done = probe(root, module)
        if done is False and module == gvt_g.MODULE:
            unload_module(root, module)  # modprobe kvmgt: No such device
        if done is not None:
            probed[module] = done
    return probed


# ---------------------------------------------------------------------------------------------
# The fake modprobe

_SCRIPT = """#!{python}
import sys
sys.path[:0] = [{sim_dir!r}, {fixtures_dir!r}]
from boot import modprobe_main
sys.exit(modprobe_main(sys.argv[1:], {root!r}))
"""


def fake_modprobe(bin_dir, root):
    """Write ``<bin_dir>/modprobe`` acting on ``root``; returns its path. Calls are logged in the tree."""
    here = os.path.dirname(os.path.abspath(__file__))
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, "modprobe")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(_SCRIPT.format(python=sys.executable, sim_dir=here,
                                    fixtures_dir=os.path.join(os.path.dirname(here), "fixtures"), root=root))
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def modprobe_calls(root):
    return [line.split() for line in (read(root, ".modprobe-calls") or "").splitlines()]


def modprobe_main(argv, root):
    names = [word for word in argv if not word.startswith("-")]
    with open(os.path.join(root, ".modprobe-calls"), "a", encoding="utf-8") as handle:
        handle.write(" ".join(argv) + "\n")
    if len(names) != 1:
        sys.stderr.write("modprobe: this simulator loads one module at a time\n")
        return 1
    module = names[0].replace("-", "_")
    if module in loaded_modules(root):
        return 0
    load_module(root, module)
    _loaded_by_name(root, [module])
    if probe(root, module) is False:
        unload_module(root, module)
        sys.stderr.write("modprobe: ERROR: could not insert '%s': No such device\n" % module)
        return 1
    return 0
