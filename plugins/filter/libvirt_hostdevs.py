# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter ``libvirt_hostdevs``: libvirt ``<hostdev>`` elements for a host's ready GPUs and mdevs."""

from __future__ import annotations

DOCUMENTATION = r"""
name: libvirt_hostdevs
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
short_description: libvirt <hostdev> XML for a host's ready GPUs and mediated devices
description:
  - Takes the topology of M(gpuvirt.host.topology_info) and returns the C(<hostdev>) elements that hand
    the GPUs and mediated devices named in the spec to a libvirt domain (C(virsh edit), C(virsh
    attach-device --config), C(community.libvirt.virt) with a template).
  - A GPU comes with its companion functions in its IOMMU group (HDMI/DP audio, USB-C xHCI, UCSI) as one
    multifunction guest device - function 0 carries C(multifunction='on') and every function sits in the
    same guest slot, as guest drivers expect.
  - "The filter refuses, with every reason, a device that is not ready: the IOMMU off, a group shared with
    other devices, the boot VGA device, a host-critical device in the group, a process holding it, or the
    GPU or a companion function not bound to vfio-pci (or a variant VFIO driver). A virtual function with a
    vGPU type set through its vendor's own interface (the topology's C(vgpu) key; NVIDIA's
    C(nvidia/current_vgpu_type)) is ready as it is."
  - A selector by vendor:device ID or model name exports the matching GPUs that are ready and lists the
    others in RV(_value.skipped) with their reasons; it fails when none is ready. A PCI address that is not
    ready fails.
  - "Who owns the mdevs: the collection. libvirt attaches mediated devices by UUID and never creates
    them, so M(gpuvirt.host.mdev) (the vgpu role) creates them and keeps them across reboots; the
    export names only mdevs that exist and that no process holds."
positional: _input, spec
options:
  _input:
    description: The C(topology) returned by M(gpuvirt.host.topology_info), or the registered result.
    type: dict
    required: true
  spec:
    description: What to export.
    type: dict
    required: true
    suboptions:
      devices:
        description:
          - GPUs to pass through, each a PCI address (V(0000:01:00.0)), a vendor:device ID (V(10de:2236)) or a
            model name (V(GeForce RTX 3090)), the selectors of M(gpuvirt.host.vfio_pci).
        type: list
        elements: str
      mdevs:
        description:
          - Mediated devices, each a UUID, or an mdev type ID or name (V(nvidia-471), V(NVIDIA A100-4C)) for
            every free mdev of that type.
        type: list
        elements: str
      managed:
        description:
          - C(managed='yes') lets libvirt unbind the device from its host driver when the domain starts and
            rebind it when it stops. The default V(false) keeps the collection's vfio-pci binding.
        type: bool
        default: false
      rom_bar:
        description: Write C(<rom bar='on|off'/>) on the GPU function; omitted when not set.
        type: bool
      guest_bus:
        description:
          - Guest PCI bus of the first GPU; the next GPUs take the next buses, each in slot 0 with its
            functions. On a q35 machine each bus is a C(pcie-root-port) controller index. libvirt reserves
            explicit addresses before it places other devices. V(null) writes no guest address (and then
            no multifunction device).
          - Each bus must be free in the domain. Into a new domain the default works. A domain defined before
            usually has a device on bus 1, the first root port, which libvirt gives to the first device it places
            (the network card), so attaching there fails with libvirt's C(Attempted double use of PCI Address).
            Add a C(<controller type='pci' model='pcie-root-port'/>) per GPU and give the index of the first, or
            V(null).
        type: int
        default: 1
      display:
        description: C(display='on') on mdev hostdevs (needs a VNC, SPICE or egl-headless graphics device).
        type: bool
        default: false
      host:
        description: The host's name, used in messages.
        type: str
"""

EXAMPLES = r"""
- name: Detect the topology
  gpuvirt.host.topology_info:
  register: host_topology

- name: Write the hostdevs of the RTX 3090 and the free nvidia-471 vGPUs for the domain template
  ansible.builtin.copy:
    content: >-
      {{ (host_topology.topology
          | gpuvirt.host.libvirt_hostdevs({'devices': ['GeForce RTX 3090'], 'mdevs': ['nvidia-471']})).xml }}
    dest: /etc/libvirt/hostdevs/gpu-guest.xml
    mode: "0644"

- name: Attach the GPU to a defined domain, on its free root port 8 (its bus 1 holds the network card)
  ansible.builtin.command:
    argv: [virsh, attach-device, gpu-guest, /dev/stdin, --config]
    stdin: "{{ item }}"
  loop: >-
    {{ (host_topology.topology
        | gpuvirt.host.libvirt_hostdevs({'devices': ['0000:41:00.0'], 'guest_bus': 8})).hostdevs }}
  changed_when: true
"""

RETURN = r"""
_value:
  description: The hostdevs and what they stand for.
  type: dict
  contains:
    xml:
      description: Every C(<hostdev>) element, one after the other, to paste into C(<devices>).
      type: str
    hostdevs:
      description: The same elements one by one, for C(virsh attach-device).
      type: list
      elements: str
    devices:
      description: Per GPU - C(device), its C(functions) and the C(guest_bus).
      type: list
      elements: dict
    mdevs:
      description: Per mdev - C(uuid), C(parent), C(type).
      type: list
      elements: dict
    skipped:
      description: GPUs a selector matched that are not ready - C(device) and C(reasons).
      type: list
      elements: dict
    mdev_owner:
      description: Always V(gpuvirt.host) - the collection creates the mdevs libvirt attaches.
      type: str
    notes:
      description: Why the mdevs belong to whom, when mdevs are exported.
      type: list
      elements: str
"""

import re  # noqa: E402

from ansible_collections.gpuvirt.host.plugins.module_utils.mdev_info import UUID  # noqa: E402
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import PCI_ADDRESS_PATTERN  # noqa: E402
from ansible_collections.gpuvirt.host.plugins.plugin_utils.exports import (  # noqa: E402
    MDEV_OWNERS,
    ExportError,
    HostView,
    as_bool,
    as_list,
    spec_of,
)

_NAME = "libvirt_hostdevs"
_SPEC = ("devices", "mdevs", "managed", "rom_bar", "guest_bus", "display", "host")
_UUID_CHARS = set("0123456789abcdef-")
_PCI_ADDRESS = re.compile(PCI_ADDRESS_PATTERN + r"\Z", re.IGNORECASE)


def _address_parts(address):
    """The parts of a full PCI address; anything else in the topology is refused, as it would be pasted
    into the XML."""
    if not _PCI_ADDRESS.match(str(address)):
        raise ExportError("%s: %r in the topology is not a PCI address (0000:01:00.0)" % (_NAME, address))
    domain, bus, slot_function = address.split(":")
    slot, function = slot_function.split(".")
    return domain, bus, slot, function


def _uuid(uuid):
    if not UUID.match(str(uuid)):
        raise ExportError("%s: mdev %r in the topology is not a UUID" % (_NAME, uuid))
    return uuid


def _pci_hostdev(address, managed, rom_bar, guest):
    domain, bus, slot, function = _address_parts(address)
    lines = [
        "<hostdev mode='subsystem' type='pci' managed='%s'>" % ("yes" if managed else "no"),
        "  <source>",
        "    <address domain='0x%s' bus='0x%s' slot='0x%s' function='0x%s'/>" % (domain, bus, slot, function),
        "  </source>",
    ]
    if rom_bar is not None:
        lines.append("  <rom bar='%s'/>" % ("on" if rom_bar else "off"))
    if guest is not None:
        guest_bus, guest_function, multifunction = guest
        lines.append(
            "  <address type='pci' domain='0x0000' bus='0x%02x' slot='0x00' function='0x%d'%s/>"
            % (guest_bus, guest_function, " multifunction='on'" if multifunction else "")
        )
    lines.append("</hostdev>")
    return "\n".join(lines)


def _mdev_hostdev(uuid, display):
    return "\n".join(
        [
            "<hostdev mode='subsystem' type='mdev' model='vfio-pci' display='%s'>" % ("on" if display else "off"),
            "  <source>",
            "    <address uuid='%s'/>" % _uuid(uuid),
            "  </source>",
            "</hostdev>",
        ]
    )


def _mdev_refusals(view, uuid):
    mdev = view.mdevs[uuid]
    users = mdev.get("in_use_by") or []
    if users:
        return ["mdev %s is in use by process %s (%s)" % (uuid, users[0].get("pid"), users[0].get("comm"))]
    return []


def _select_mdevs(view, selectors):
    """mdev UUIDs for UUIDs or type IDs/names; a type gives every free mdev of it."""
    chosen, errors = [], []
    for selector in as_list(selectors, "mdevs"):
        text = str(selector).strip().lower()
        if set(text) <= _UUID_CHARS and len(text) == 36:
            if text not in view.mdevs:
                errors.append("mdev %s does not exist%s; create it with gpuvirt.host.mdev" % (text, view.where()))
                continue
            reasons = _mdev_refusals(view, text)
            if reasons:
                errors.append("; ".join(reasons))
            elif text not in chosen:
                chosen.append(text)
            continue
        type_ids = view.type_ids(selector)
        if not type_ids:
            errors.append("mdev type %r is offered by no mdev parent%s" % (selector, view.where()))
            continue
        free = [uuid for type_id in type_ids for uuid in view.free_mdevs(type_id)]
        if not free:
            errors.append(
                "no free mdev of type %s exists%s (%d in use): create one with gpuvirt.host.mdev"
                % (", ".join(type_ids), view.where(), sum(1 for m in view.mdevs.values() if m.get("type") in type_ids))
            )
        chosen.extend(uuid for uuid in free if uuid not in chosen)
    if errors:
        raise ExportError("%s refuses to export: %s" % (_NAME, " | ".join(errors)))
    return chosen


def libvirt_hostdevs(topology, spec=None):
    """``<hostdev>`` XML for the GPUs (with companion functions) and mdevs that ``spec`` names."""
    spec = spec_of(spec, _NAME, _SPEC)
    view = HostView(topology, spec.get("host"), _NAME)
    managed = as_bool(spec.get("managed"), "%s: managed" % _NAME)
    rom_bar = None if spec.get("rom_bar") is None else as_bool(spec["rom_bar"], "%s: rom_bar" % _NAME)
    display = as_bool(spec.get("display"), "%s: display" % _NAME)
    guest_bus = spec.get("guest_bus", 1)
    if guest_bus is not None and (
        not isinstance(guest_bus, int) or isinstance(guest_bus, bool) or not 1 <= guest_bus <= 0xFF
    ):
        raise ExportError("%s: guest_bus must be an integer from 1 to 255 or null, got %r" % (_NAME, guest_bus))
    if not spec.get("devices") and not spec.get("mdevs"):
        raise ExportError("%s: the spec names no devices and no mdevs" % _NAME)

    ready, skipped = view.select_gpus(spec.get("devices"), "device") if spec.get("devices") else ([], [])
    elements, devices = [], []
    for index, address in enumerate(ready):
        # The guest sees the functions in one slot, in host order from function 0, so a GPU and its
        # HDMI audio, USB and UCSI functions stay one multifunction device as the guest driver expects.
        functions = sorted([address] + view.companions(address))
        if guest_bus is not None and guest_bus + index > 0xFF:
            raise ExportError("%s: %d GPUs from guest bus %d run past bus 0xff" % (_NAME, len(ready), guest_bus))
        for guest_function, function_address in enumerate(functions):
            guest = None
            if guest_bus is not None:
                guest = (guest_bus + index, guest_function, len(functions) > 1 and guest_function == 0)
            elements.append(
                _pci_hostdev(function_address, managed, rom_bar if function_address == address else None, guest)
            )
        devices.append(
            {"device": address, "functions": functions, "guest_bus": None if guest_bus is None else guest_bus + index}
        )
    mdevs = _select_mdevs(view, spec.get("mdevs")) if spec.get("mdevs") else []
    for uuid in mdevs:
        elements.append(_mdev_hostdev(uuid, display))
    return {
        "xml": "\n".join(elements) + "\n",
        "hostdevs": elements,
        "devices": devices,
        "mdevs": [dict(uuid=u, parent=view.mdevs[u].get("parent"), type=view.mdevs[u].get("type")) for u in mdevs],
        "skipped": skipped,
        "mdev_owner": "gpuvirt.host",
        "notes": [MDEV_OWNERS["libvirt"]] if mdevs else [],
    }


class FilterModule:
    """gpuvirt.host libvirt export."""

    def filters(self):
        return {"libvirt_hostdevs": libvirt_hostdevs}
