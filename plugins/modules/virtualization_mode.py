#!/usr/bin/python
# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: virtualization_mode
short_description: Turn a vendor's virtualization mode on a GPU on or off (GVT-g, SR-IOV, MxGPU, vGPU)
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
description:
  - Turns on what a GPU needs before it can be carved up, by its vendor's rules, and says what is still
    missing afterwards. The carving itself is left to M(gpuvirt.host.mdev), M(gpuvirt.host.sriov) and
    M(gpuvirt.host.nvidia_vgpu).
  - "V(gvt-g) (Intel Broadwell to Comet Lake iGPUs): adds C(i915.enable_gvt=1) to the kernel command line
    (through the boot loader, as M(gpuvirt.host.kernel_cmdline) does) and C(kvmgt) to
    C(/etc/modules-load.d/gpuvirt-gvt-g.conf); loads C(kvmgt) at once when the running kernel already has
    GVT-g on. Later iGPUs (Gen11 and newer, which have no GVT-g) are refused with the reason."
  - "V(sriov) (Intel SR-IOV GPUs under C(i915) or C(xe)): adds C(<driver>.max_vfs=<max_vfs>) (and
    C(i915.enable_guc=3) for i915; C(xe.force_probe=<device ID>) where xe needs it; C(module_blacklist=) of
    the other driver when it drives no other device) to the kernel command line; the driver reads them at
    probe. A loaded driver whose C(max_vfs) already covers the count needs no reboot. A mainline i915 (no
    C(max_vfs) parameter: no SR-IOV PF mode) is refused with what to install; Tiger Lake, Alder Lake and
    Meteor Lake iGPUs offer at most 7 VFs."
  - "V(mxgpu) (AMD Instinct and Radeon PRO V GPUs): with AMD's GIM host driver bound, writes
    C(options gim vf_num=N0,N1,...) to C(/etc/modprobe.d/gpuvirt-gim.conf), one count per GPU in GIM's order
    (GIM repeats the last to the GPUs after it), changing only the selected GPU's, and C(gim) to
    C(/etc/modules-load.d/gpuvirt-gim.conf) so that GIM loads at boot; a count the model does not support is
    refused (MI300X: 1 or 8; MI350X and MI355X: 1, 2 or 8; others 1 to 31). Without GIM,
    refuses with what to install."
  - "V(vgpu) (NVIDIA): checks that the vGPU host driver is loaded (C(nvidia_vgpu_vfio)) and
    C(nvidia-vgpu-mgr) runs; refuses with what to install otherwise. Nothing is written."
  - "O(state=absent) turns the mode off again from the next boot. V(gvt-g) (the iGPU) removes the C(kvmgt)
    modules-load file and puts C(i915.enable_gvt=0) on the kernel command line, which outweighs any other setting
    of it, where something turns GVT-g on - the loaded i915, an C(options i915 enable_gvt) line in modprobe.d, the
    boot configuration, or the mode turned on and not booted yet; elsewhere it writes nothing. V(sriov) puts
    C(<driver>.max_vfs=0) on it (0, not the argument removed - xe's default is unlimited since Linux 6.17), for
    every GPU that driver drives, and leaves C(i915.enable_guc), C(xe.force_probe) and C(module_blacklist) as they
    are, since they also decide which driver drives the GPU. V(mxgpu) (a GPU of GIM's) removes both files written
    for GIM, so that this collection no longer loads it at boot, for every GPU it drives, and the state file's
    entries of the GIM GPUs (their VFs come from gim alone, whose count M(gpuvirt.host.sriov) cannot set).
    V(vgpu), for which nothing is written, changes nothing where no vGPU host driver runs, and is refused with
    what turns it off where one does."
  - "O(state=absent) is refused, nothing changed, while the state file has the boot-time restore bring back what
    the mode carries, as that restore selects it - any GVT-g mdev; VFs of an Intel GPU the driver may drive (any
    that the other Intel driver does not drive now). Remove them first with M(gpuvirt.host.mdev) or
    M(gpuvirt.host.sriov). The running kernel keeps the mode until the reboot (RV(reboot_required)), and
    RV(verification) reads it as it is until then."
extends_documentation_fragment:
  - gpuvirt.host.attributes
  - gpuvirt.host.attributes.linux
attributes:
  check_mode:
    support: full
    details:
      - Reads everything, writes nothing, and predicts C(changed), the files and C(reboot_required).
  diff_mode:
    support: full
    details:
      - Shows each file (boot loader configuration, modprobe.d, modules-load.d) before and after.
options:
  selector:
    description:
      - The GPU, as its PCI address (4- to 8-digit domain, or short), a C(vendor:device) ID or a model name;
        it must name exactly one physical function.
    type: str
    required: true
  mode:
    description:
      - The virtualization mode to make available (or to turn off, with O(state=absent)), one its vendor's backend
        offers for the GPU (the C(virtualization)
        of the GPU in M(gpuvirt.host.topology_info) lists them) - V(gvt-g) or V(sriov) (Intel), V(mxgpu) (AMD),
        V(vgpu) (NVIDIA). Another mode is refused with the modes the GPU's vendor offers.
    type: str
    required: true
  max_vfs:
    description:
      - The number of VFs the driver should offer (V(sriov), V(mxgpu); required there with O(state=present)). The
        modes that take no VF count refuse it, as does O(state=absent).
      - For V(sriov), a limit of the driver, so every GPU it drives. A limit below the VFs the boot-time restore
        enables on a GPU (recorded by M(gpuvirt.host.sriov)) is refused; lower those first.
    type: int
  state:
    description:
      - V(present) turns the mode on; V(absent) turns it off again (see the description). V(absent) takes no
        O(max_vfs) or O(options).
    type: str
    default: present
    choices: [present, absent]
  options:
    description:
      - The mode's own options, by name, as its vendor's backend takes them (C(max_vfs) can be given here too).
        An option the mode does not take is refused, nothing changed.
    type: dict
  bootloader:
    description: The boot configuration to edit for kernel arguments, as in M(gpuvirt.host.kernel_cmdline).
    type: str
    default: auto
    choices: [auto, grub, grubby, systemd-boot, proxmox, ostree, kernelstub, sdboot-manage]
  update:
    description: Regenerate the boot loader configuration after editing it (on the host itself).
    type: bool
    default: true
  root:
    description: The host's root; another directory to edit an image tree or a fixture.
    type: path
    default: /
seealso:
  - module: gpuvirt.host.topology_info
  - module: gpuvirt.host.mdev
  - module: gpuvirt.host.sriov
  - module: gpuvirt.host.nvidia_vgpu
"""

EXAMPLES = r"""
- name: Turn GVT-g on for the iGPU
  gpuvirt.host.virtualization_mode:
    selector: "0000:00:02.0"
    mode: gvt-g
  register: gvt

- name: Reboot when the running kernel does not have it yet
  ansible.builtin.reboot:
  when: gvt.reboot_required

- name: Turn GVT-g off again from the next boot (its mdevs removed from the boot restore first)
  gpuvirt.host.virtualization_mode:
    selector: "0000:00:02.0"
    mode: gvt-g
    state: absent

- name: Let each Flex 170 offer 7 VFs (a selector names one GPU; loop over the cards)
  gpuvirt.host.virtualization_mode:
    selector: "{{ item }}"
    mode: sriov
    max_vfs: 7
  loop: ["0000:4e:00.0", "0000:8c:00.0"]
"""

RETURN = r"""
mode:
  description: The mode asked for.
  returned: success
  type: str
  sample: gvt-g
state:
  description: The state asked for, V(present) or V(absent).
  returned: success
  type: str
  sample: present
device:
  description: The GPU's PCI address.
  returned: success
  type: str
  sample: "0000:00:02.0"
files_changed:
  description: The files this run changed (or would change in check mode).
  returned: success
  type: list
  elements: str
  sample: ["/etc/default/grub", "/etc/modules-load.d/gpuvirt-gvt-g.conf"]
kernel_arguments:
  description: The kernel arguments the mode needs on the command line (for V(absent), those that keep it off).
  returned: success
  type: list
  elements: str
  sample: [i915.enable_gvt=1]
modules_loaded:
  description: Modules loaded by this run.
  returned: success
  type: list
  elements: str
  sample: []
reboot_required:
  description: The running kernel or driver lacks what the mode needs (has the mode still, for V(absent)); it works
    after a reboot.
  returned: success
  type: bool
  sample: true
reboot_for:
  description: What the running kernel lacks (for V(absent), what it still has).
  returned: success
  type: list
  elements: str
  sample: ["i915.enable_gvt=1 in the running kernel's command line"]
verification:
  description:
    - The mode read back from the host after the run - V(ready) and what is V(missing); in check mode, the
      state before the run. After O(state=absent) the running kernel still has the mode until the reboot, so it
      reads V(ready) as before until then.
  returned: success
  type: dict
  sample: {"ready": false, "missing": ["i915.enable_gvt=1 on the kernel command line and a reboot"]}
notes:
  description: What to do next.
  returned: success
  type: list
  elements: str
  sample: []
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.gpuvirt.host.plugins.module_utils import bootloader, enablement, modrun  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=dict(
            selector=dict(type="str", required=True),
            mode=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            max_vfs=dict(type="int"),
            options=dict(type="dict"),
            bootloader=dict(type="str", default="auto", choices=["auto"] + list(bootloader.BOOTLOADERS)),
            update=dict(type="bool", default=True),
            root=dict(type="path", default="/"),
        ),
        supports_check_mode=True,
    )
    modrun.run(module, enablement.ModeRun)


if __name__ == "__main__":
    main()
