#!/usr/bin/python
# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: sriov
short_description: Set the number of SR-IOV virtual functions per physical function and keep it across reboots
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
description:
  - Makes each selected SR-IOV physical function (PF) have the declared number of virtual functions
    (VFs) and C(sriov_drivers_autoprobe) setting, and records both so that C(gpuvirt-restore.service)
    (role P(gpuvirt.host.vgpu#role)) enables the VFs again at boot.
  - The kernel only changes a non-zero VF count through 0, so a different count is set by writing 0,
    reading back that the VFs are gone, then writing the new count and reading back C(sriov_numvfs)
    and the C(virtfnN) links, with a bounded number of retries. If the new count fails, the previous
    count is enabled again when possible.
  - With O(devices[].vfio=true) the VFs go to vfio-pci, and the boot-time restore binds them again each time it
    has created them.
  - Changing the count removes every VF of the PF. The module refuses, before changing anything, when a
    VF is in use, that is when a process (a VM) holds its VFIO group or device, a mediated device exists
    on it, or an NVIDIA vGPU type is assigned to it; O(force=true) goes ahead anyway.
  - A count above C(sriov_totalvfs), a selector that matches nothing, and a PF without a driver fail
    before anything is changed.
  - "NVIDIA GPUs in vGPU mode enable their VFs with C(sriov-manage): use M(gpuvirt.host.nvidia_vgpu) for them."
extends_documentation_fragment:
  - gpuvirt.host.attributes
  - gpuvirt.host.attributes.linux
attributes:
  check_mode:
    support: full
    details:
      - Reads everything, writes nothing, and predicts C(changed), the VF addresses and the state file exactly.
  diff_mode:
    support: full
    details:
      - Shows the VF counts and the state file C(/etc/gpuvirt/host-state.json) before and after.
options:
  devices:
    description:
      - The physical functions to manage. A PF not selected is left alone.
    type: list
    elements: dict
    required: true
    suboptions:
      selector:
        description:
          - The PF, as its PCI address (C(0000:41:00.0), 4- or 8-digit domain, or short C(41:00.0)), a
            C(vendor:device) ID pair, or a model name matched against the C(pci.ids) device name
            (C(X710), C(NVM Express)). An ID pair or model selects every SR-IOV PF of that model.
          - A model name matching two different models fails; a virtual function or a device without
            SR-IOV capability fails.
          - "Model names are matched the same way in every module of this collection: case and repeated
            blanks do not matter; the whole C(pci.ids) name (C(GA100 [A100 PCIe 80GB])), its bracketed
            marketing name, vendor and device name together, or any part of them match; a device whose
            name is exactly the selector wins over devices whose names only contain it. A plain number
            is refused: indexes change between boots."
        type: str
        required: true
      num_vfs:
        description:
          - How many VFs the PF must have, from 0 to its C(sriov_totalvfs).
          - When omitted the count is left as it is (and recorded as it is).
        type: int
      drivers_autoprobe:
        description:
          - Whether new VFs are bound to a driver as they appear (C(sriov_drivers_autoprobe)). V(false)
            leaves them unbound, for example for O(devices[].vfio=true).
          - Set before the VF count changes, so that it applies to the new VFs. When omitted the setting
            is left as it is.
        type: bool
      vfio:
        description:
          - V(true) hands every VF of the PF to vfio-pci, for VMs, now and at every boot, where
            C(gpuvirt-restore.service) binds them right after it has created them. Each VF is bound by its
            address (C(driver_override), then C(drivers_probe)) and read back, never by C(vendor:device) ID, as
            VFs often share their ID with the PF (Intel SR-IOV GPUs) or exist only once the restore created them,
            so C(vfio-pci.ids=) or C(options vfio-pci ids=) would take the PF or nothing.
          - V(false) hands the VFs now on vfio-pci back (the override cleared, then the kernel probes them) and
            stops binding them at boot. With C(sriov_drivers_autoprobe) off the kernel lets no driver probe a VF
            without an override, so they stay unbound; with it on the PF's driver (or the VF driver) takes them.
            Omitted leaves the VFs' drivers and the recorded choice as they are.
          - Without O(devices[].num_vfs) it moves the VFs there are and keeps their count.
          - Needs the IOMMU on; loads vfio-pci on a live host when it is not loaded. Use with
            O(devices[].drivers_autoprobe=false), so that the PF's driver does not probe the VFs first.
          - A VF that a process (a VM) holds, or that has a mediated device or vGPU type, is not moved without
            O(force=true).
        type: bool
  force:
    description:
      - Change the VF count, or move VFs to or from vfio-pci (O(devices[].vfio)), even when a VF is in use.
        Running VMs lose their device, and mediated devices and vGPU types on the VFs are destroyed with the VFs.
      - Also needed to remove or move existing VFs while whether a VM uses them cannot be told - when a VFIO
        device file exists and the open files of some process cannot be read (permission denied, as when the module
        runs without root or without C(CAP_SYS_PTRACE), as in a restricted container, or C(/proc) is mounted
        with C(hidepid)), or C(/proc) does not even list the processes the run may not trace (mounted with
        C(hidepid=invisible) or C(hidepid=ptraceable), read without C(CAP_SYS_PTRACE) and, for C(invisible),
        outside the mount's C(gid=) group; or a container's, in a PID namespace of its own, that lists none of the
        host's). The refusal names how many processes and a few of them, or the C(hidepid) mount; with O(force=true)
        the run goes ahead with a warning. Also records VFs for a PF that vfio-pci takes at boot (see
        O(persistent)), with a warning. Enabling VFs on a PF that has none, or changing only
        O(devices[].drivers_autoprobe), takes nothing from anyone and is not held up. A process that exits during the
        scan is not counted.
    type: bool
    default: false
  persistent:
    description:
      - Record each selected PF's count and autoprobe setting in C(/etc/gpuvirt/host-state.json), which
        C(gpuvirt-restore.service) replays at boot before vGPU types and mediated devices.
      - A PF declared with V(0) VFs and autoprobe on (the boot default) has its record removed.
      - VFs are not recorded for a PF that vfio-pci takes at boot through the host's configuration - a driverctl
        override naming a VFIO driver, or its C(vendor:device) in C(vfio-pci ids=) of a modprobe.d file or in
        C(vfio-pci.ids=) on the configured kernel command line (as M(gpuvirt.host.vfio_pci) persists a device,
        with O(gpuvirt.host.vfio_pci#module:runtime=false) too). vfio-pci enables no VFs on a PF it holds unless
        its C(enable_sriov) option is on, so the restore would fail on it at every boot. The run fails, nothing
        changed, unless O(force=true).
      - A VF that O(devices[].vfio=false) hands back, or that a lower count removes, and that such a driverctl
        override or ID still gives to vfio-pci at boot, is named in a warning.
    type: bool
    default: true
  retries:
    description:
      - How many more times C(sriov_numvfs) and C(sriov_drivers_autoprobe) are read back after a write
        until they show the written value.
    type: int
    default: 10
  delay:
    description:
      - Seconds between two read-backs.
    type: float
    default: 0.5
  root:
    description:
      - The host filesystem root to work on (C(<root>/sys), C(<root>/etc)), for image trees and tests.
    type: path
    default: /
notes:
  - Requires the PF's driver to be loaded and bound (C(sriov_numvfs) writes go through it), and SR-IOV
    enabled in the firmware setup.
  - Its hand-backs of VFs from vfio-pci are noted as M(gpuvirt.host.vfio_pci)'s are. One cut short by a
    killed run, between the unbind and the reprobe, leaves the VF on no driver. The next run of this module
    that names its PF finishes it, after the PF's other steps, with a warning (unless that run binds the VF,
    or a new count removes it), and so does the next M(gpuvirt.host.vfio_pci) run. It is refused, as any
    hand-back, while a VM holds the VF's IOMMU group (unless O(force)); with the PF's autoprobe off, which
    keeps the kernel from probing its VFs, the VF and its note are left as they are, with a warning. With
    O(devices[].vfio) not given, a PF whose record says C(vfio) true gets the VF back on vfio-pci at the next
    boot from the boot-time restore, which a warning says.
seealso:
  - module: gpuvirt.host.nvidia_vgpu
  - module: gpuvirt.host.mdev
  - module: gpuvirt.host.topology_info
"""

EXAMPLES = r"""
- name: Four VFs on the NVMe controller, one on each X710 port, bound to no driver
  gpuvirt.host.sriov:
    devices:
      - selector: "0000:04:00.0"
        num_vfs: 4
      - selector: "8086:1572"
        num_vfs: 1
        drivers_autoprobe: false

- name: Seven VFs of an Intel Data Center GPU Flex in SR-IOV PF mode, handed to vfio-pci now and at every boot
  gpuvirt.host.sriov:
    devices:
      - selector: "8086:56c0"
        num_vfs: 7
        drivers_autoprobe: false
        vfio: true

- name: Disable the VFs of a card, even if a VM still uses one
  gpuvirt.host.sriov:
    devices:
      - selector: "41:00.0"
        num_vfs: 0
    force: true
"""

RETURN = r"""
devices:
  description: Per selected PF, its state before and after the run (predicted in check mode).
  returned: always
  type: list
  elements: dict
  sample:
    - address: "0000:04:00.0"
      selector: "0000:04:00.0"
      total_vfs: 4
      before: {num_vfs: 0, drivers_autoprobe: true, vfs: [], vf_drivers: {}}
      after: {num_vfs: 2, drivers_autoprobe: false, vfs: ["0000:04:00.1", "0000:04:00.2"],
              vf_drivers: {"0000:04:00.1": vfio-pci, "0000:04:00.2": vfio-pci}}
      vfio: true
      in_use: {}
      changed: true
  contains:
    address:
      description: The PF's PCI address.
      type: str
    selector:
      description: The selector that chose it.
      type: str
    total_vfs:
      description: Its C(sriov_totalvfs).
      type: int
    before:
      description: C(num_vfs), C(drivers_autoprobe), C(vfs) (addresses) and C(vf_drivers) (the driver of each VF,
        null for none) before the run.
      type: dict
    after:
      description: C(num_vfs), C(drivers_autoprobe), C(vfs) and C(vf_drivers) after the run. In check mode the
        drivers are predicted, but two cannot be known before the kernel probes. A VF to be handed back from
        vfio-pci (or one whose hand-back an earlier run left unfinished) shows null, and a new VF with autoprobe
        on shows the PF's driver (a NIC's VFs may get their own, such as C(iavf)).
      type: dict
    vfio:
      description: O(devices[].vfio) as declared (null when omitted).
      type: bool
    in_use:
      description: The VFs that were in use when the count or their driver had to change, each with the reasons.
      type: dict
    changed:
      description: Whether this PF was (or, in check mode, would be) changed.
      type: bool
state_file:
  description: The state file the boot-time restore replays, and whether it changed.
  returned: always
  type: dict
  contains:
    path:
      description: Its path.
      type: str
    changed:
      description: Whether it was (would be) written.
      type: bool
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.gpuvirt.host.plugins.module_utils import modrun  # noqa: E402
from ansible_collections.gpuvirt.host.plugins.module_utils.sriov_run import SriovRun  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=dict(
            devices=dict(
                type="list",
                elements="dict",
                required=True,
                options=dict(
                    selector=dict(type="str", required=True),
                    num_vfs=dict(type="int"),
                    drivers_autoprobe=dict(type="bool"),
                    vfio=dict(type="bool"),
                ),
            ),
            force=dict(type="bool", default=False),
            persistent=dict(type="bool", default=True),
            retries=dict(type="int", default=10),
            delay=dict(type="float", default=0.5),
            root=dict(type="path", default="/"),
        ),
        supports_check_mode=True,
    )
    modrun.run(module, SriovRun)


if __name__ == "__main__":
    main()
