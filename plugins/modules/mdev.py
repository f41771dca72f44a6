#!/usr/bin/python
# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: mdev
short_description: Create, keep and persist mediated devices (vGPU profiles) per parent device
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
description:
  - Makes each selected mediated-device parent hold the declared mediated devices (mdevs), given as
    a number of instances of a type or as explicit UUIDs.
  - "Types may be named by their id (C(nvidia-471), C(mbochs-2)), by their C(name) file
    (C(NVIDIA A100-4C), C(mbochs-medium)) or by the last word of it (C(A100-4C))."
  - UUIDs not given are derived from the host identity (C(/etc/machine-id)), the parent, the type
    and an index, so the same declaration yields the same UUIDs on every run of the same host.
  - Capacity is checked against C(available_instances) before anything is created. Types of one
    parent may share a pool (a GPU's framebuffer, mbochs memory), so on each parent the new instances
    of each type, divided by that type's C(available_instances), must add up to 1 at most. A request
    that does not fit fails with the numbers and changes nothing; if the kernel still refuses a creation midway,
    everything this run created or removed is rolled back before the module fails.
  - A card that is not itself a parent but whose SR-IOV virtual functions are (NVIDIA's legacy vGPU on
    SR-IOV GPUs such as the A100) gets its instances spread over its virtual functions.
  - With O(parents[].exclusive=true) mdevs that are not declared are removed from that parent, except
    those a process holds open (a running VM); O(force=true) removes those too.
  - Every write is read back. Declared mdevs persist across reboots through mdevctl's definition
    files (C(/etc/mdevctl.d/<parent>/<uuid>), started by mdevctl's udev rule when the parent
    appears) when mdevctl is installed, and always through the collection's state file
    C(/etc/gpuvirt/host-state.json), which C(gpuvirt-restore.service) (installed by the role
    C(gpuvirt.host.vgpu)) replays at boot after the virtual functions and vGPU types it depends on.
extends_documentation_fragment:
  - gpuvirt.host.attributes
  - gpuvirt.host.attributes.linux
attributes:
  check_mode:
    support: full
    details:
      - Predicts the created UUIDs exactly. When only the removal of undeclared mdevs would make room
        for the new ones (types that share a pool), the capacity can only be confirmed after removing; check
        mode then predicts the whole declaration as if the removals made the room, and warns. The run plans
        again once the removals are done, and rolls everything back if the new ones do not fit.
  diff_mode:
    support: full
options:
  parents:
    description:
      - The parents to manage and what each must hold. A parent not listed is left alone.
    type: list
    elements: dict
    required: true
    suboptions:
      selector:
        description:
          - The parent, as its PCI address (C(0000:41:00.0), 4- or 8-digit domain, or short C(41:00.0)),
            the name of a virtual parent under C(/sys/class/mdev_bus) (C(mbochs), C(mdpy), C(mtty)),
            a C(vendor:device) ID pair, or a model name matched against the C(pci.ids) device name.
          - An ID pair or model name selects every card of that model; each card gets the whole list.
            A model name matching two different models fails.
          - "Model names are matched the same way in every module of this collection: case and repeated
            blanks do not matter; the whole C(pci.ids) name (C(GA100 [A100 PCIe 80GB])), its bracketed
            marketing name, vendor and device name together, or any part of them match; a device whose
            name is exactly the selector wins over devices whose names only contain it. A plain number
            is refused: indexes change between boots."
        type: str
        required: true
      mdevs:
        description:
          - The mdevs this parent must hold. An empty list with O(parents[].exclusive=true) removes
            every mdev of the parent that is not in use.
        type: list
        elements: dict
        default: []
        suboptions:
          type:
            description:
              - The type, by id, C(name) file or last word of the C(name) file.
            type: str
            required: true
          count:
            description:
              - How many mdevs of this type the parent (or the card, over its virtual functions) must
                hold. Existing mdevs of the type count, whatever their UUIDs.
            type: int
          uuids:
            description:
              - Explicit UUIDs of the mdevs of this type. An existing mdev with one of these UUIDs but
                another type or parent is an error.
            type: list
            elements: str
      exclusive:
        description:
          - Remove the mdevs of this parent that are not declared, and their persistent definitions.
          - An mdev held open by a process is never removed unless O(force=true).
          - With no O(parents[].mdevs), a PCI address that is no longer on the host (a card taken out, VFs
            no longer enabled) is accepted, and the records of mdevs on it (the state file, mdevctl's
            definitions) are removed, so that the boot-time restore no longer waits for it.
        type: bool
        default: false
  force:
    description:
      - Remove undeclared mdevs of an exclusive parent even when a process holds them.
      - Also needed to remove any mdev while whether a VM uses it cannot be told - when a VFIO device file
        exists and the open files of some process cannot be read (permission denied, as when the module runs without
        root or without C(CAP_SYS_PTRACE), as in a restricted container, or C(/proc) is mounted with
        C(hidepid)), or C(/proc) does not even list the processes the run may not trace (mounted with
        C(hidepid=invisible) or C(hidepid=ptraceable), read without C(CAP_SYS_PTRACE) and, for C(invisible),
        outside the mount's C(gid=) group; or a container's, in a PID namespace of its own, that lists none of the
        host's). Without it such a run fails naming how many processes and a few of them, or the C(hidepid) mount, and
        changes nothing; with it the run goes ahead with a warning. A run that only creates mdevs is not held up, and
        a process that exits during the scan is not counted.
    type: bool
    default: false
  persistent:
    description:
      - Record the declared mdevs so that they are recreated at boot (mdevctl definitions when
        mdevctl is installed, and the collection's state file).
      - With V(false) the mdevs exist until the next reboot only; existing records are left as they are.
    type: bool
    default: true
  host_id:
    description:
      - The host identity that generated UUIDs derive from. Defaults to the content of
        C(/etc/machine-id) below O(root). Set it to keep the same UUIDs across reinstalls.
    type: str
  root:
    description:
      - The host filesystem root to work on (C(<root>/sys), C(<root>/etc)), for image trees and tests.
      - mdevctl itself is only run when this is V(/).
    type: path
    default: /
notes:
  - Requires the parent's driver to be loaded (for example C(nvidia), C(i915) with GVT-g, or the
    kernel's C(mbochs) sample driver) and, for NVIDIA SR-IOV GPUs, the virtual functions enabled
    first (M(gpuvirt.host.sriov), M(gpuvirt.host.nvidia_vgpu)).
seealso:
  - module: gpuvirt.host.topology_info
  - module: gpuvirt.host.nvidia_vgpu
  - module: gpuvirt.host.sriov
"""

EXAMPLES = r"""
- name: Two mbochs-medium and one mdpy-hd, nothing else on those parents
  gpuvirt.host.mdev:
    parents:
      - selector: mbochs
        mdevs:
          - type: mbochs-medium
            count: 2
        exclusive: true
      - selector: mdpy
        mdevs:
          - type: mdpy-hd
            count: 1

- name: Four A100-4C vGPUs on every A100, spread over its virtual functions
  gpuvirt.host.mdev:
    parents:
      - selector: "10de:20b5"
        mdevs:
          - type: A100-4C
            count: 4

- name: A GVT-g slice with a UUID the VM definition already uses
  gpuvirt.host.mdev:
    parents:
      - selector: "0000:00:02.0"
        mdevs:
          - type: i915-GVTg_V5_4
            uuids:
              - 4b20d080-1b54-4048-85b3-a6a62d165c01
"""

RETURN = r"""
parents:
  description: Per parent (its name under C(/sys/class/mdev_bus)), what it held before and after.
  returned: always
  type: dict
  sample:
    mbochs:
      selector: mbochs
      exclusive: true
      before: []
      after:
        - uuid: 4d4b6c2e-3a8c-5d4f-9b1e-0f6a7c2d9e11
          type: mbochs-2
      created: [4d4b6c2e-3a8c-5d4f-9b1e-0f6a7c2d9e11]
      removed: []
      kept_in_use: []
  contains:
    selector:
      description: The selector that chose this parent.
      type: str
    exclusive:
      description: Whether undeclared mdevs were removed.
      type: bool
    before:
      description: The mdevs of the parent before the run, each C(uuid) and C(type).
      type: list
      elements: dict
    after:
      description: The mdevs of the parent after the run (predicted in check mode).
      type: list
      elements: dict
    created:
      description: UUIDs created on this parent (to be created, in check mode).
      type: list
      elements: str
    removed:
      description: UUIDs removed from this parent.
      type: list
      elements: str
    kept_in_use:
      description: Undeclared mdevs of an exclusive parent kept because a process holds them.
      type: list
      elements: str
created:
  description: Every UUID created.
  returned: always
  type: list
  elements: str
removed:
  description: Every UUID removed.
  returned: always
  type: list
  elements: str
mdevs:
  description: Every mdev of the host after the run (predicted in check mode).
  returned: always
  type: list
  elements: dict
  contains:
    uuid:
      description: The mdev's UUID.
      type: str
    parent:
      description: Its parent.
      type: str
    type:
      description: Its type id.
      type: str
    in_use:
      description: Whether a process holds its VFIO group open.
      type: bool
persistence:
  description: How the declared mdevs are kept across reboots.
  returned: always
  type: dict
  contains:
    mdevctl:
      description: Whether mdevctl definitions are written (mdevctl is installed).
      type: bool
    mdevctl_autostart:
      description:
        - Whether mdevctl's udev rule can start the definitions at boot. When it cannot (Debian
          bookworm's rule calls C(/usr/sbin/mdevctl), the package installs C(/usr/bin/mdevctl)) the
          module warns and the mdevs come back through C(gpuvirt-restore.service) alone.
      type: bool
    state_file:
      description: The collection's state file replayed by C(gpuvirt-restore.service).
      type: str
    files_changed:
      description: Files written or removed (to be, in check mode).
      type: list
      elements: str
reboot_required:
  description: Always V(false); mediated devices are created and removed at run time.
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.gpuvirt.host.plugins.module_utils import modrun  # noqa: E402
from ansible_collections.gpuvirt.host.plugins.module_utils.mdev_run import MdevRun  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=dict(
            parents=dict(
                type="list",
                elements="dict",
                required=True,
                options=dict(
                    selector=dict(type="str", required=True),
                    mdevs=dict(
                        type="list",
                        elements="dict",
                        default=[],
                        options=dict(
                            type=dict(type="str", required=True),
                            count=dict(type="int"),
                            uuids=dict(type="list", elements="str"),
                        ),
                        mutually_exclusive=[("count", "uuids")],
                        required_one_of=[("count", "uuids")],
                    ),
                    exclusive=dict(type="bool", default=False),
                ),
            ),
            force=dict(type="bool", default=False),
            persistent=dict(type="bool", default=True),
            host_id=dict(type="str"),
            root=dict(type="path", default="/"),
        ),
        supports_check_mode=True,
    )
    modrun.run(module, MdevRun)


if __name__ == "__main__":
    main()
