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


def libvirt_hostdevs(topology, spec=None):
    """``<hostdev>`` XML for the GPUs (with companion functions) and mdevs that ``spec`` names."""
    # Imported when called: to find any of the collection's filters, Ansible loads every file of
    # plugins/filter, compiled from source, in the worker process of each task that uses one.
    from ansible_collections.gpuvirt.host.plugins.plugin_utils import libvirt

    return libvirt.libvirt_hostdevs(topology, spec)


class FilterModule:
    """gpuvirt.host libvirt export."""

    def filters(self):
        return {"libvirt_hostdevs": libvirt_hostdevs}
