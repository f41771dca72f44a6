#!/usr/bin/python
# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: nvidia_vgpu
short_description: Assign NVIDIA vGPU profiles to the virtual functions of SR-IOV GPUs
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
description:
  - Makes each selected NVIDIA GPU hold the declared vGPU profiles, given as a number of instances per
    profile (C(L40S-1B) twice) or explicitly per virtual function (VF), and records them so that
    C(gpuvirt-restore.service) (role P(gpuvirt.host.vgpu#role)) recreates them at boot after the VFs.
  - "Detects the vGPU framework of each GPU: the per-VF interface of kernel 6.8+ with vGPU 17+
    (C(nvidia/creatable_vgpu_types) and C(nvidia/current_vgpu_type) on each VF), or legacy mediated
    device types (C(nvidia-471) whose name reads C(NVIDIA A100-4C)) on the VFs or on the GPU itself."
  - "Profiles are named by type ID (C(1030), C(nvidia-471)), by vGPU name (C(NVIDIA L40S-1B)) or by
    profile (C(L40S-1B)), in any case. The creatable list only shows what fits now, so every list read
    is remembered per GPU model in C(/var/lib/gpuvirt/nvidia-vgpu-types.json) and later runs resolve
    names even when the GPU is full. An unknown profile fails with the list of valid ones."
  - A GPU that is not in SR-IOV mode gets its VFs enabled with C(sriov-manage -e <address>); because it
    races the driver's start-up and can report success without having enabled anything, the module
    reads C(sriov_numvfs) back and retries a bounded number of times, whatever it exits with. It refuses
    to do that when the GPU hosts vGPUs created without SR-IOV (mediated devices on the GPU itself) or a
    process holds the GPU, because enabling SR-IOV mode would disturb them; O(force=true) goes ahead.
  - SR-IOV mode means all the VFs the GPU offers, as C(sriov-manage -e) enables them (C(sriov_totalvfs)).
    A GPU with only some enabled (C(sriov-manage) stopped part way, a smaller count written by hand, a restore
    cut short) is not planned on as it is. Its VFs are enabled anew, C(sriov-manage -d) then C(-e), because
    C(sriov-manage -e) leaves a GPU with VFs alone and the kernel changes a VF count only through 0. That
    removes every VF device, so the module refuses, naming them, when a VF holds a vGPU or mdev or a process
    holds a VF or the GPU, unless O(force=true). A short count is never recorded for the boot-time restore.
  - "Per-VF interface: a vGPU is created by writing its type ID to the VF's C(current_vgpu_type) and
    deleted by writing C(0); every write is read back. Existing vGPUs of a declared profile count;
    new ones go to free VFs in VF order. Deletions come first, then creations; before each creation
    the VF's creatable list is read again, and if the GPU has run out of room, every change of the run
    is rolled back and the module fails with the numbers."
  - A vGPU whose VF is in use (a process, a VM, holds its VFIO group or device) is never deleted or
    changed unless O(force=true). An explicit change to it fails, a surplus or undeclared one is kept
    with a warning.
  - "Legacy (mdev) GPUs: the vGPUs are mediated devices, created, persisted and guarded by
    M(gpuvirt.host.mdev). This module enables the VFs, resolves the profiles to type ids and returns
    RV(mdev_parents), which is passed unchanged as the O(gpuvirt.host.mdev#module:parents) of
    M(gpuvirt.host.mdev), so that one module owns every mediated device."
extends_documentation_fragment:
  - gpuvirt.host.attributes
  - gpuvirt.host.attributes.linux
attributes:
  check_mode:
    support: full
    details:
      - Reads everything, writes nothing, and predicts C(changed), the VF assignments and the state file.
      - When deletions must make room for new vGPUs, whether they fit is only known after deleting;
        check mode then warns.
      - Time-sliced vGPUs that would take more framebuffer than the GPU has are refused, in check mode as in
        the run, once a complete list of the model's vGPU types is known (read while no VF held a vGPU, now or
        remembered); its largest profile is the whole framebuffer.
      - When the GPU would host time-sliced vGPUs of more than one framebuffer size, the run and its
        check mode warn; in NVIDIA's default equal-size mode the GPU then offers only the size it hosts,
        and the creations of the other sizes fail, rolled back.
      - For a GPU whose VFs are not enabled yet, the VFs are predicted from C(sriov_offset) and
        C(sriov_stride), and the profiles from the types remembered for the GPU model; without them the
        profiles are resolved only in a real run, and check mode warns.
      - A run that removes the last vGPU of a GPU whose model has no complete list of types remembered reads
        that list from the emptied GPU and records it in the type cache; check mode cannot, so it warns that
        its type cache diff shows only the types known now.
      - For a GPU with only some VFs enabled, the plan is made on all its VFs, free, as C(sriov-manage) will
        leave them, in a real run too, so that bad input fails before the VFs are touched. That needs a
        complete list of the model's types (one read while no VF held a vGPU); without it the profiles are
        resolved once the VFs are back, and check mode warns.
  diff_mode:
    support: full
    details:
      - Shows the vGPU type of each VF, the state file and the type cache before and after.
      - In check mode the type cache's "after" holds the types seen now; a real run that empties the GPU
        also learns the types only an empty GPU offers, and writes those too.
options:
  gpus:
    description:
      - The GPUs to manage. A GPU not selected is left alone.
    type: list
    elements: dict
    required: true
    suboptions:
      selector:
        description:
          - The GPU, as its PCI address (C(0000:ca:00.0), 4- or 8-digit domain, or short C(ca:00.0)), a
            C(vendor:device) ID pair (C(10de:26b9)), or a model name matched against the C(pci.ids) device
            name (C(L40S)). An ID pair or model selects every such GPU; each gets the whole declaration.
          - "Model names are matched the same way in every module of this collection: case and repeated
            blanks do not matter; the whole C(pci.ids) name (C(GA100 [A100 PCIe 80GB])), its bracketed
            marketing name, vendor and device name together, or any part of them match; a device whose
            name is exactly the selector wins over devices whose names only contain it. A plain number
            is refused: indexes change between boots."
        type: str
        required: true
      profiles:
        description:
          - How many vGPUs of each profile the GPU must hold. Existing vGPUs of a profile count; those
            beyond the count are deleted (unless in use).
          - Mutually exclusive with O(gpus[].vfs).
        type: list
        elements: dict
        suboptions:
          profile:
            description:
              - The profile, by type ID, vGPU name or profile name.
            type: str
            required: true
          count:
            description:
              - How many vGPUs of the profile, 0 or more.
            type: int
            required: true
      vfs:
        description:
          - The vGPU of each listed VF, explicitly. Mutually exclusive with O(gpus[].profiles).
        type: list
        elements: dict
        suboptions:
          address:
            description:
              - The VF's PCI address.
            type: str
            required: true
          profile:
            description:
              - The profile the VF must hold. Required when O(gpus[].vfs[].state=present).
            type: str
          state:
            description:
              - V(absent) deletes the VF's vGPU.
            type: str
            choices: [present, absent]
            default: present
      exclusive:
        description:
          - Delete the vGPUs of this GPU that are not declared (never one in use, unless O(force=true)).
        type: bool
        default: false
      enable_sriov:
        description:
          - Enable the VFs with C(sriov-manage) when the GPU is not in SR-IOV mode, none of them enabled or
            only some (then C(sriov-manage -d) first). With V(false) such a GPU fails instead, and nothing is
            changed.
        type: bool
        default: true
  force:
    description:
      - Delete or change vGPUs whose VF is in use, enable SR-IOV mode on a GPU that hosts vGPUs created
        without it, and enable all the VFs anew on a GPU with only some enabled although they hold vGPUs or
        mdevs (lost with the VFs) or are in use. The kernel may still refuse while a running VM holds a VF or
        vGPU.
      - Also needed to delete or change any vGPU while whether a VM uses it cannot be told - when a VFIO device
        file exists and the open files of some process cannot be read (permission denied, as when the module runs
        without root or without C(CAP_SYS_PTRACE), as in a restricted container, or C(/proc) is mounted with
        C(hidepid)), or C(/proc) does not even list the processes the run may not trace (mounted with
        C(hidepid=invisible) or C(hidepid=ptraceable), read without C(CAP_SYS_PTRACE) and, for C(invisible),
        outside the mount's C(gid=) group; or a container's, in a PID namespace of its own, that lists none of the
        host's). Without it such a run fails naming how many processes and a few of them, or the C(hidepid) mount, and
        changes nothing; with it the run goes ahead with a warning. Creating vGPUs on free VFs is not held up, and a
        process that exits during the scan is not counted.
    type: bool
    default: false
  persistent:
    description:
      - Record the declared vGPU types (state file section C(nvidia_vgpu)) and the GPU's VFs (section
        C(sriov), method C(sriov_manage)) in C(/etc/gpuvirt/host-state.json) for the boot-time restore.
    type: bool
    default: true
  sriov_manage:
    description:
      - The C(sriov-manage) command. Defaults to C(/usr/lib/nvidia/sriov-manage), else the one on E(PATH).
    type: path
  retries:
    description:
      - How many more times C(sriov-manage) is run, and the VFs' vGPU interfaces are waited for, until
        they read back as wanted.
    type: int
    default: 5
  delay:
    description:
      - Seconds between two of those attempts.
    type: float
    default: 2.0
  root:
    description:
      - The host filesystem root to work on (C(<root>/sys), C(<root>/etc)), for image trees and tests.
        Commands (C(sriov-manage)) always run on the managed host itself.
    type: path
    default: /
notes:
  - Requires the NVIDIA vGPU host driver (not the datacenter driver) bound to the GPU.
seealso:
  - module: gpuvirt.host.mdev
  - module: gpuvirt.host.sriov
  - module: gpuvirt.host.topology_info
"""

EXAMPLES = r"""
- name: Four L40S-2B vGPUs on every L40S
  gpuvirt.host.nvidia_vgpu:
    gpus:
      - selector: L40S
        profiles:
          - profile: L40S-2B
            count: 4

- name: Explicit types on the VFs of one GPU; delete every other vGPU on it that no VM uses
  gpuvirt.host.nvidia_vgpu:
    gpus:
      - selector: "0000:ca:00.0"
        vfs:
          - address: "0000:ca:00.4"
            profile: NVIDIA L40S-8Q
          - address: "0000:ca:00.5"
            profile: "1041"
        exclusive: true

- name: Resolve A100-4C on a legacy (mdev) A100 and enable its VFs
  gpuvirt.host.nvidia_vgpu:
    gpus:
      - selector: "10de:20f1"
        profiles:
          - profile: A100-4C
            count: 4
  register: a100

- name: Create the mediated devices it asks for
  gpuvirt.host.mdev:
    parents: "{{ a100.mdev_parents }}"
"""

RETURN = r"""
gpus:
  description: Per selected GPU, what it held before and after the run (predicted in check mode).
  returned: always
  type: list
  elements: dict
  sample:
    - address: "0000:cb:00.0"
      selector: L40S
      name: NVIDIA Corporation AD102GL [L40S]
      framework: per_vf
      sriov_enabled: false
      num_vfs: 32
      types: [{id: 1030, name: NVIDIA L40S-1B}]
      vfs:
        - {address: "0000:cb:00.4", before: {type_id: 0, type_name: null}, after: {type_id: 1030,
           type_name: NVIDIA L40S-1B}, in_use: []}
      created: [{vf: "0000:cb:00.4", type_id: 1030, type_name: NVIDIA L40S-1B}]
      deleted: []
      kept_in_use: []
      undeclared: []
  contains:
    address:
      description: The GPU's PCI address.
      type: str
    selector:
      description: The selector that chose it.
      type: str
    name:
      description: Its name from C(pci.ids).
      type: str
    framework:
      description: V(per_vf), V(legacy), or null when not known yet (check mode, VFs not enabled).
      type: str
    sriov_enabled:
      description: Whether this run enabled its VFs with C(sriov-manage), all of them anew when only some were.
      type: bool
    num_vfs:
      description: Its number of VFs after the run.
      type: int
    types:
      description: The vGPU types known for it (live, then remembered), each C(id) and C(name).
      type: list
      elements: dict
    vfs:
      description: Per VF, C(address), C(before) and C(after) (C(type_id), C(type_name)) and C(in_use).
      type: list
      elements: dict
    created:
      description: vGPUs created, each C(vf), C(type_id), C(type_name).
      type: list
      elements: dict
    deleted:
      description: vGPUs deleted, each C(vf), C(type_id), C(type_name).
      type: list
      elements: dict
    kept_in_use:
      description: VFs whose undeclared or surplus vGPU was kept because it is in use.
      type: list
      elements: str
    undeclared:
      description: VFs holding a vGPU that is not declared and was kept (O(gpus[].exclusive=false)).
      type: list
      elements: str
mdev_parents:
  description:
    - For legacy (mdev) GPUs, the O(gpuvirt.host.mdev#module:parents) that make them hold the declaration;
      empty when every GPU uses the per-VF interface.
  returned: always
  type: list
  elements: dict
  sample:
    - selector: "0000:b1:00.0"
      mdevs: [{type: nvidia-471, count: 4}]
      exclusive: false
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
type_cache:
  description: The file remembering the vGPU types read per GPU model, and whether it changed.
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
from ansible_collections.gpuvirt.host.plugins.module_utils.nvidia_vgpu_run import NvidiaVgpuRun  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=dict(
            gpus=dict(
                type="list",
                elements="dict",
                required=True,
                options=dict(
                    selector=dict(type="str", required=True),
                    profiles=dict(
                        type="list",
                        elements="dict",
                        options=dict(
                            profile=dict(type="str", required=True),
                            count=dict(type="int", required=True),
                        ),
                    ),
                    vfs=dict(
                        type="list",
                        elements="dict",
                        options=dict(
                            address=dict(type="str", required=True),
                            profile=dict(type="str"),
                            state=dict(type="str", choices=["present", "absent"], default="present"),
                        ),
                        required_if=[("state", "present", ("profile",))],
                    ),
                    exclusive=dict(type="bool", default=False),
                    enable_sriov=dict(type="bool", default=True),
                ),
                mutually_exclusive=[("profiles", "vfs")],
                required_one_of=[("profiles", "vfs")],
            ),
            force=dict(type="bool", default=False),
            persistent=dict(type="bool", default=True),
            sriov_manage=dict(type="path"),
            retries=dict(type="int", default=5),
            delay=dict(type="float", default=2.0),
            root=dict(type="path", default="/"),
        ),
        supports_check_mode=True,
    )
    modrun.run(module, NvidiaVgpuRun)


if __name__ == "__main__":
    main()
