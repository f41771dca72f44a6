# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel's SR-IOV core, played for fixture trees (``drivers/pci/iov.c``).

Plugs into :class:`mdev_kernel.KernelSim`, which routes the writes of the code under test.
``sriov_numvfs_store()`` in the kernel checks, in this order, and so does :meth:`SriovKernel._numvfs`:

1. the value parses as a 16-bit number (``kstrtou16``), else ``EINVAL``;
2. it is not above ``sriov_totalvfs``, else ``ERANGE``;
3. the same count as now: nothing happens, success;
4. a driver is bound to the PF and implements ``sriov_configure``, else ``ENOENT``;
5. ``0``: the driver disables the VFs. Drivers refuse while a VF is assigned to a VM, and vfio-pci
   blocks the removal until the VM lets go; here a VF whose VFIO group a process holds (directly
   or through an mdev on it) makes the write fail with ``EBUSY``;
6. a different non-zero count while VFs are enabled: ``EBUSY`` ("Disable before enabling");
7. otherwise the VFs appear: ``virtfnN`` links, a device directory next to the PF (as
   ``tests/fixtures/hostgen.py`` lays them out) with ``physfn``, a new IOMMU group, and a driver
   bound when ``sriov_drivers_autoprobe`` is 1 (the VF driver: as configured, else the PF's).

``sriov_drivers_autoprobe`` takes ``kstrtobool`` values (``0``/``1``/``y``/``n``) and reads ``0``
or ``1``. Other simulators add to new VFs through :meth:`SriovKernel.on_vf_created` (NVIDIA's
``nvidia/`` files, legacy mdev types), :meth:`on_vfs_enabled` once all exist, and learn about
removals through :meth:`on_vfs_removed`.
:meth:`SriovKernel.configure` sets per-PF behaviour: ``vf_driver``, ``sriov_configure`` (False:
the driver cannot configure SR-IOV through sysfs) and ``enable_error`` (an errno the driver returns
when enabling, e.g. ``ENOMEM`` for missing bus numbers).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil

try:
    from ansible_collections.gpuvirt.host.tests.fixtures import hostgen
except ImportError:  # run outside pytest (the fake sriov-manage): tests/fixtures is on sys.path
    import hostgen

NUMVFS = re.compile(r"sys/bus/pci/devices/([^/]+)/sriov_numvfs\Z")
AUTOPROBE = re.compile(r"sys/bus/pci/devices/([^/]+)/sriov_drivers_autoprobe\Z")
_TRUE = ("1", "y", "Y", "on", "ON", "On")
_FALSE = ("0", "n", "N", "off", "OFF", "Off")


def _fail(code):
    raise OSError(code, os.strerror(code))


def _text(value):
    return value.decode("ascii", "replace").strip()


class SriovKernel:
    def __init__(self, sim):
        self.sim = sim
        self.root = sim.root
        self.created_hooks = []
        self.enabled_hooks = []
        self.removed_hooks = []
        sim.add_handler(NUMVFS, self._numvfs)
        sim.add_handler(AUTOPROBE, self._autoprobe)

    # -- configuration ---------------------------------------------------------------------------

    def configure(self, pf, **settings):
        """Per-PF behaviour: ``vf_driver``, ``sriov_configure`` (bool), ``enable_error`` (errno)."""
        state = self.sim.load()
        state.setdefault("sriov", {}).setdefault(pf, {}).update(settings)
        self.sim.save(state)

    def settings(self, pf):
        return self.sim.load().get("sriov", {}).get(pf, {})

    def on_vf_created(self, hook):
        """``hook(pf, description)`` may add hostgen description keys to a VF before it is written."""
        self.created_hooks.append(hook)

    def on_vfs_enabled(self, hook):
        """``hook(pf)`` runs after all VFs of ``pf`` exist (to fill in what depends on all of them)."""
        self.enabled_hooks.append(hook)

    def on_vfs_removed(self, hook):
        """``hook(pf)`` runs after the VFs of ``pf`` are gone."""
        self.removed_hooks.append(hook)

    # -- reading the tree --------------------------------------------------------------------------

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def device_dir(self, address):
        return os.path.realpath(self.path("sys/bus/pci/devices", address))

    def read(self, address, name):
        with open(os.path.join(self.device_dir(address), name), encoding="ascii") as handle:
            return handle.read().strip()

    def _write_attribute(self, address, name, value):
        with open(os.path.join(self.device_dir(address), name), "w", encoding="ascii") as handle:
            handle.write("%s\n" % value)

    def driver_of(self, address):
        link = os.path.join(self.device_dir(address), "driver")
        return os.path.basename(os.readlink(link)) if os.path.islink(link) else None

    def group_of(self, address):
        link = os.path.join(self.device_dir(address), "iommu_group")
        return os.path.basename(os.readlink(link)) if os.path.islink(link) else None

    def vfs_of(self, pf):
        base = self.device_dir(pf)
        names = [n for n in os.listdir(base) if n.startswith("virtfn")]
        return [os.path.basename(os.readlink(os.path.join(base, n))) for n in sorted(names, key=lambda n: int(n[6:]))]

    def mdevs_on(self, address):
        """``(uuid, group)`` of the mdevs whose parent is ``address``."""
        found = []
        bus = self.path("sys/bus/mdev/devices")
        for name in sorted(os.listdir(bus)) if os.path.isdir(bus) else []:
            real = os.path.realpath(os.path.join(bus, name))
            if os.path.basename(os.path.dirname(real)) == address:
                group_link = os.path.join(real, "iommu_group")
                group = os.path.basename(os.readlink(group_link)) if os.path.islink(group_link) else None
                found.append((name, group))
        return found

    def in_use(self, address):
        """Whether a process holds the VFIO group of ``address`` or of an mdev on it."""
        groups = [self.group_of(address)] + [group for _uuid, group in self.mdevs_on(address)]
        return any(group is not None and self.sim.holders_of_group(group) for group in groups)

    # -- kernel behaviour ------------------------------------------------------------------------

    def _numvfs(self, match, value):
        pf = match.group(1)
        text = _text(value)
        try:
            wanted = int(text, 0)
        except ValueError:
            _fail(errno.EINVAL)
        if not 0 <= wanted <= 0xFFFF:
            _fail(errno.EINVAL)
        if wanted > int(self.read(pf, "sriov_totalvfs")):
            _fail(errno.ERANGE)
        current = int(self.read(pf, "sriov_numvfs"))
        if wanted == current:
            return
        settings = self.settings(pf)
        if self.driver_of(pf) is None or settings.get("sriov_configure") is False:
            _fail(errno.ENOENT)
        if wanted == 0:
            busy = [vf for vf in self.vfs_of(pf) if self.in_use(vf)]
            if busy:
                _fail(errno.EBUSY)
            self.remove_vfs(pf)
            return
        if current:
            _fail(errno.EBUSY)
        if settings.get("enable_error"):
            _fail(int(settings["enable_error"]))
        self.create_vfs(pf, wanted)

    def _autoprobe(self, match, value):
        text = _text(value)
        if text in _TRUE:
            self._write_attribute(match.group(1), "sriov_drivers_autoprobe", 1)
        elif text in _FALSE:
            self._write_attribute(match.group(1), "sriov_drivers_autoprobe", 0)
        else:
            _fail(errno.EINVAL)

    # -- VFs appearing and going ---------------------------------------------------------------

    def _relative(self, real):
        return os.path.relpath(real, self.root)

    def _next_group(self):
        state = self.sim.load()
        existing = [int(n) for n in os.listdir(self.path("sys/kernel/iommu_groups")) if n.isdigit()]
        group = max([state.get("next_group", 1000)] + [g + 1 for g in existing])
        state["next_group"] = group + 1
        self.sim.save(state)
        return group

    def create_vfs(self, pf, count):
        """Write ``count`` VFs for ``pf`` as the kernel and hostgen lay them out."""
        pf_path = self._relative(self.device_dir(pf))
        base = os.path.dirname(pf_path)
        offset = int(self.read(pf, "sriov_offset"))
        stride = int(self.read(pf, "sriov_stride"))
        domain, rid = hostgen._rid(pf)
        vendor = self.read(pf, "vendor")[2:]
        vf_device = self.read(pf, "sriov_vf_device")
        subsystem = "%s:%s" % (self.read(pf, "subsystem_vendor")[2:], self.read(pf, "subsystem_device")[2:])
        settings = self.settings(pf)
        autoprobe = self.read(pf, "sriov_drivers_autoprobe") == "1"
        driver = settings.get("vf_driver", self.driver_of(pf)) if autoprobe else None
        iommu = {"enabled": os.path.isdir(self.path("sys/kernel/iommu_groups"))}
        tree = hostgen._Tree(self.root)
        for index in range(count):
            address = hostgen._address_of(domain, rid + offset + index * stride)
            description = {
                "address": address,
                "ids": "%s:%s" % (vendor, vf_device),
                "subsystem": subsystem,
                "class": self.read(pf, "class")[2:],
                "physfn": pf,
                "numa_node": int(self.read(pf, "numa_node")),
                "reset_methods": ["flr"],
                "driver": driver,
            }
            for hook in self.created_hooks:
                hook(pf, description)
            if iommu["enabled"]:
                description["_group"] = self._next_group()
            path = "%s/%s" % (base, address)
            paths = {address: path, pf: pf_path}
            slots = {address.rsplit(".", 1)[0]: [description]}
            hostgen._write_device(tree, description, paths, {address: description}, slots, iommu)
            if iommu["enabled"]:
                group = "sys/kernel/iommu_groups/%d" % description["_group"]
                tree.write(group + "/type", "DMA\n")
                tree.link("%s/devices/%s" % (group, address), path)
                if description.get("driver") == "vfio-pci":
                    tree.write("dev/vfio/%d" % description["_group"], "")
            if description.get("mdev_types"):
                tree.mkdir("sys/bus/mdev/devices")
            tree.link("%s/virtfn%d" % (pf_path, index), path)
        self._write_attribute(pf, "sriov_numvfs", count)
        for hook in self.enabled_hooks:
            hook(pf)

    def remove_vfs(self, pf):
        """Remove every VF of ``pf`` with everything that hangs on it (mdevs included)."""
        pf_dir = self.device_dir(pf)
        for index, vf in enumerate(self.vfs_of(pf)):
            vf_dir = self.device_dir(vf)
            for uuid, group in self.mdevs_on(vf):
                self._unlink(self.path("sys/bus/mdev/devices", uuid))
                if group is not None:
                    self._remove_group(group)
            group = self.group_of(vf)
            if group is not None:
                self._remove_group(group)
            driver = self.driver_of(vf)
            if driver is not None:
                self._unlink(self.path("sys/bus/pci/drivers", driver, vf))
            self._unlink(self.path("sys/class/mdev_bus", vf))
            self._unlink(self.path("sys/bus/pci/devices", vf))
            shutil.rmtree(vf_dir)
            self._unlink(os.path.join(pf_dir, "virtfn%d" % index))
        self._write_attribute(pf, "sriov_numvfs", 0)
        for hook in self.removed_hooks:
            hook(pf)

    def _remove_group(self, group):
        self._unlink(self.path("dev/vfio", group))
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.path("sys/kernel/iommu_groups", group))

    @staticmethod
    def _unlink(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
