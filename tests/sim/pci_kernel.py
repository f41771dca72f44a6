# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The PCI core's driver binding, played for fixture trees (``Documentation/ABI/testing/sysfs-bus-pci``).

Plugs into :class:`sim.mdev_kernel.KernelSim`, which routes the writes of the code under test:

- ``sys/bus/pci/devices/<addr>/driver_override``: stores the driver name; a lone newline (or an
  empty write) clears it, and the file reads ``(null)`` again.
- ``sys/bus/pci/drivers/<drv>/unbind`` with an address: releases the device if ``<drv>`` is bound
  to it (the ``driver`` link and the driver's ``<addr>`` link go), else ``ENODEV``. Unbinding
  vfio-pci from a device whose ``/dev/vfio/<group>`` a process holds blocks in the real kernel
  until the process lets go; here it fails with ``EBUSY`` and is recorded in :attr:`blocked`. So
  does unbinding a VFIO driver from the addresses in ``busy_unbind`` (a VM that opened the group
  while the code under test was still working on it).
- ``sys/bus/pci/drivers/<drv>/bind``: binds an unbound device the driver matches, else
  ``ENODEV`` (bound: ``EBUSY``).
- Variant VFIO drivers (every ``alias vfio_pci:<pattern> <driver>`` of the tree's
  ``lib/modules/*/modules.alias``) have override-only ID tables: they bind a device only through its
  ``driver_override``, never by ID. Writing an ID to such a driver's ``new_id`` is refused
  (``EINVAL``) and recorded in :attr:`id_attempts`: nothing could keep such a binding across a
  reboot, so the code under test must never try it. Otherwise they behave like vfio-pci (probe needs
  an IOMMU group, ``dev/vfio/<group>``, unbinding a held group blocks).
- ``sys/bus/pci/drivers_probe`` with an address: a bound device is left alone; an unbound one is
  offered to the driver named in ``driver_override`` only, or else to vfio-pci when its ID is in
  vfio-pci's dynamic ID table (``vfio_ids``: what ``options vfio-pci ids=`` or ``new_id`` put there;
  vfio-pci registered first, as its softdeps arrange at boot), or else to its host driver (the
  one it had when the simulator started, or as given). A driver that is not loaded (no directory
  under ``sys/bus/pci/drivers``) binds nothing. A VF (a ``physfn`` link) whose PF's
  ``sriov_drivers_autoprobe`` reads ``0`` is offered to no driver but one its ``driver_override``
  names (``pci_device_can_probe()``). vfio-pci's probe fails without an ``iommu_group`` link
  (IOMMU off), and for the addresses in ``failing_probe`` (a framebuffer holding the BAR): the
  write succeeds and the device stays unbound, exactly the "accepted but not effective" case.
- ``sys/bus/pci/drivers/vfio-pci/new_id`` / ``remove_id`` with ``vendor device``: add the ID (and
  bind the unbound devices it matches) / remove it (``ENODEV`` when it is not in the table).
- Binding vfio-pci creates ``dev/vfio/<group>``; it goes when the group's last device leaves vfio-pci.
- The device's ``uevent`` carries ``DRIVER=<name>`` while a driver is bound, as the kernel generates it.
- Releasing a device from its driver takes away what the driver registered below it: its DRM cards
  (``drm/cardN``, ``drm/renderDN``, linked from ``sys/class/drm``) and framebuffers (``graphics/fbN``,
  linked from ``sys/class/graphics``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil

VFIO = "vfio-pci"


def _fail(code):
    raise OSError(code, os.strerror(code))


def _id(text):
    """``10de:1e04`` or ``10de 1e04 ...`` -> ``10de:1e04``."""
    parts = text.replace(":", " ").split()
    if len(parts) < 2:
        _fail(errno.EINVAL)
    return "%04x:%04x" % (int(parts[0], 16), int(parts[1], 16))


def _text(value):
    text = value.decode("ascii", "replace")
    return text[:-1] if text.endswith("\n") else text


class PciKernel:
    def __init__(self, sim, host_drivers=None, failing_probe=(), vfio_ids=(), busy_unbind=()):
        self.sim = sim
        self.root = sim.root
        self.variants = self._variant_drivers()
        state = sim.load()
        pci = state.setdefault("pci", {})
        if "host_drivers" not in pci:
            drivers = {}
            for address in self._addresses():
                driver = self.driver_of(address)
                drivers[address] = None if self.is_vfio(driver) else driver
            pci["host_drivers"] = drivers
        pci["host_drivers"].update(host_drivers or {})
        pci.setdefault("id_attempts", [])
        pci["failing_probe"] = sorted(set(pci.get("failing_probe", [])) | set(failing_probe))
        pci.setdefault("blocked", [])
        pci["busy_unbind"] = sorted(set(pci.get("busy_unbind", [])) | set(busy_unbind))
        pci["vfio_ids"] = sorted(set(pci.get("vfio_ids", [])) | {_id(i) for i in vfio_ids})
        sim.save(state)
        sim.add_handler(r"sys/bus/pci/devices/([^/]+)/driver_override\Z", self._override)
        sim.add_handler(r"sys/bus/pci/drivers/vfio-pci/(new_id|remove_id)\Z", self._dynamic_id)
        if self.variants:
            pattern = "|".join(re.escape(name) for name in sorted(self.variants))
            sim.add_handler(r"sys/bus/pci/drivers/(%s)/new_id\Z" % pattern, self._variant_new_id)
        sim.add_handler(r"sys/bus/pci/drivers/([^/]+)/unbind\Z", self._unbind)
        sim.add_handler(r"sys/bus/pci/drivers/([^/]+)/bind\Z", self._bind)
        sim.add_handler(r"sys/bus/pci/drivers_probe\Z", self._probe)

    # -- reading the tree ----------------------------------------------------------------------

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def _addresses(self):
        bus = self.path("sys/bus/pci/devices")
        return sorted(os.listdir(bus)) if os.path.isdir(bus) else []

    def _variant_drivers(self):
        found = set()
        base = self.path("lib/modules")
        for release in os.listdir(base) if os.path.isdir(base) else []:
            path = os.path.join(base, release, "modules.alias")
            with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as handle:
                found.update(line.split()[2] for line in handle
                             if line.startswith("alias vfio_pci:") and len(line.split()) == 3)
        return found

    def is_vfio(self, driver):
        """vfio-pci or a variant VFIO driver."""
        return driver == VFIO or driver in self.variants

    def device_dir(self, address):
        return os.path.realpath(self.path("sys/bus/pci/devices", address))

    def driver_of(self, address):
        link = self.path("sys/bus/pci/devices", address, "driver")
        return os.path.basename(os.readlink(link)) if os.path.islink(link) else None

    def override_of(self, address):
        with open(self.path("sys/bus/pci/devices", address, "driver_override"), encoding="utf-8") as handle:
            text = handle.read().strip()
        return None if text in ("", "(null)") else text

    def id_of(self, address):
        values = []
        for name in ("vendor", "device"):
            with open(self.path("sys/bus/pci/devices", address, name), encoding="utf-8") as handle:
                values.append(handle.read().strip())
        return _id(" ".join(values))

    def group_of(self, address):
        link = self.path("sys/bus/pci/devices", address, "iommu_group")
        return os.path.basename(os.readlink(link)) if os.path.islink(link) else None

    @property
    def blocked(self):
        return self.sim.load()["pci"]["blocked"]

    @property
    def id_attempts(self):
        """``[(driver, "vendor:device")]`` written to a variant driver's ``new_id``."""
        return [tuple(entry) for entry in self.sim.load()["pci"]["id_attempts"]]

    # -- kernel behaviour ------------------------------------------------------------------------

    def _exists(self, address):
        return os.path.lexists(self.path("sys/bus/pci/devices", address))

    def _override(self, match, value):
        address = match.group(1)
        text = _text(value)
        with open(self.path("sys/bus/pci/devices", address, "driver_override"), "w", encoding="utf-8") as handle:
            handle.write((text or "(null)") + "\n")

    def _unbind(self, match, value):
        driver, address = match.group(1), _text(value).strip()
        if not self._exists(address) or self.driver_of(address) != driver:
            _fail(errno.ENODEV)
        if self.is_vfio(driver):
            group = self.group_of(address)
            held = group is not None and self.sim.holders_of_group(group)
            if held or address in self.sim.load()["pci"]["busy_unbind"]:
                state = self.sim.load()
                state["pci"]["blocked"].append(address)
                self.sim.save(state)
                _fail(errno.EBUSY)
        self._release(address, driver)

    def _bind(self, match, value):
        driver, address = match.group(1), _text(value).strip()
        if not self._exists(address):
            _fail(errno.ENODEV)
        if self.driver_of(address) is not None:
            _fail(errno.EBUSY)
        if self._candidate(address) != driver or not self._probe_succeeds(address, driver):
            _fail(errno.ENODEV)
        self._attach(address, driver)

    def _candidate(self, address):
        """The driver that matches an unbound device first."""
        override = self.override_of(address)
        if override is not None:
            return override
        physfn = os.path.join(self.device_dir(address), "physfn")
        if os.path.islink(physfn):
            try:
                with open(os.path.join(physfn, "sriov_drivers_autoprobe"), encoding="ascii") as handle:
                    if handle.read().strip() == "0":
                        return None
            except OSError:
                pass
        pci = self.sim.load()["pci"]
        if self.id_of(address) in pci["vfio_ids"] and os.path.isdir(self.path("sys/bus/pci/drivers", VFIO)):
            return VFIO
        return pci["host_drivers"].get(address)

    def _dynamic_id(self, match, value):
        identifier = _id(_text(value))
        state = self.sim.load()
        ids = state["pci"]["vfio_ids"]
        if match.group(1) == "remove_id":
            if identifier not in ids:
                _fail(errno.ENODEV)
            ids.remove(identifier)
            self.sim.save(state)
            return
        if identifier in ids:
            _fail(errno.EEXIST)
        ids.append(identifier)
        self.sim.save(state)
        for address in self._addresses():
            if self.driver_of(address) is None and self.id_of(address) == identifier \
                    and self.override_of(address) in (None, VFIO) and self._probe_succeeds(address, VFIO):
                self._attach(address, VFIO)

    def _variant_new_id(self, match, value):
        state = self.sim.load()
        state["pci"]["id_attempts"].append([match.group(1), _id(_text(value))])
        self.sim.save(state)
        _fail(errno.EINVAL)

    def _probe(self, match, value):
        address = _text(value).strip()
        if not self._exists(address):
            _fail(errno.ENODEV)
        if self.driver_of(address) is not None:
            return
        driver = self._candidate(address)
        if driver is None or not os.path.isdir(self.path("sys/bus/pci/drivers", driver)):
            return
        if self._probe_succeeds(address, driver):
            self._attach(address, driver)

    def _probe_succeeds(self, address, driver):
        if not self.is_vfio(driver):
            return True
        failing = self.sim.load()["pci"]["failing_probe"]
        return self.group_of(address) is not None and address not in failing

    def _attach(self, address, driver):
        device = self.device_dir(address)
        driver_dir = self.path("sys/bus/pci/drivers", driver)
        os.symlink(os.path.relpath(driver_dir, device), os.path.join(device, "driver"))
        os.symlink(os.path.relpath(device, driver_dir), os.path.join(driver_dir, address))
        self._uevent(device, driver)
        if self.is_vfio(driver):
            os.makedirs(self.path("dev/vfio"), exist_ok=True)
            node = self.path("dev/vfio", self.group_of(address))
            if not os.path.exists(node):
                with open(node, "w", encoding="utf-8"):
                    pass

    def _release(self, address, driver):
        device = self.device_dir(address)
        os.unlink(os.path.join(device, "driver"))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path("sys/bus/pci/drivers", driver, address))
        self._uevent(device, None)
        self._unregister_displays(device)
        if self.is_vfio(driver):
            group = self.group_of(address)
            members = os.listdir(self.path("sys/kernel/iommu_groups", group, "devices"))
            if not any(self.is_vfio(self.driver_of(member)) for member in members):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path("dev/vfio", group))

    def _unregister_displays(self, device):
        for subsystem, klass in (("drm", "sys/class/drm"), ("graphics", "sys/class/graphics")):
            directory = os.path.join(device, subsystem)
            if not os.path.isdir(directory):
                continue
            for name in os.listdir(directory):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path(klass, name))
            shutil.rmtree(directory)

    @staticmethod
    def _uevent(device, driver):
        path = os.path.join(device, "uevent")
        with open(path, encoding="utf-8") as handle:
            lines = [line for line in handle.read().splitlines() if not line.startswith("DRIVER=")]
        if driver is not None:
            lines.insert(0, "DRIVER=%s" % driver)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
