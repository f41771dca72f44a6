#!/usr/bin/python
# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: kernel_cmdline
short_description: Add and remove kernel command line arguments in the boot configuration
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
description:
  - Makes the kernel command line the host boots with hold the arguments of O(present) and none of
    O(absent), in the configuration of the bootloader in use, then applies it to the boot entries.
  - "GRUB (Debian, Ubuntu): edits C(GRUB_CMDLINE_LINUX_DEFAULT) in C(/etc/default/grub), or in the
    C(/etc/default/grub.d/*.cfg) drop-in whose assignment wins, keeping comments and quoting; an
    argument is removed or replaced where it is set, including in C(GRUB_CMDLINE_LINUX). Then runs
    C(update-grub), or C(grub-mkconfig -o /boot/grub/grub.cfg), or C(grub2-mkconfig -o /boot/grub2/grub.cfg);
    when that grub.cfg is missing and GRUB's folder on the ESP holds one (C(/efi/grub/grub.cfg),
    C(/boot/efi/grub/grub.cfg), as C(grub-install --boot-directory) puts it), that one is written."
  - "grubby with BLS entries (RHEL, Rocky, Fedora): runs C(grubby --update-kernel=ALL --args=...
    --remove-args=...) for the entries in C(/boot/loader/entries), and edits C(GRUB_CMDLINE_LINUX) in
    C(/etc/default/grub) and C(/etc/kernel/cmdline) (when present) so that new kernels inherit the
    arguments. Entries using C($kernelopts) (RHEL 8) are read through C(/boot/grub2/grubenv). grubby holds one
    value per key, so a run that leaves an entry with two values of a repeatable key (C(console=tty0
    console=ttyS0,115200)) edits the entries directly instead, the way grubby edits them, with a warning."
  - "systemd-boot with kernel-install: edits C(/etc/kernel/cmdline) (created from C(/usr/lib/kernel/cmdline)
    or the running command line when missing, as kernel-install does), then runs C(kernel-install add)
    for every kernel below C(/lib/modules) that has an image. Entries on the ESP that kernel-install did not
    write (such as Arch Linux's C(arch.conf)) are booted as they are, so their C(options) lines are edited in
    place; kernel-install only runs when it wrote entries of its own. Its entries are those that carry its
    C(90-loaderentry.install) comment, or are named C(<entry token>-<release>.conf) with that release on their
    C(version) line; the token is worked out as kernel-install does (C(/etc/kernel/entry-token), else the
    machine ID from C(install.conf), C(/etc/machine-info) or C(/etc/machine-id), else the os-release
    C(IMAGE_ID) or C(ID))."
  - "Unified kernel images (systemd-boot's C(EFI/Linux/*.efi) entries, told by systemd-stub's C(StubInfo) EFI
    variable or by an ESP with no loader entry) carry their command line: C(/etc/kernel/cmdline) is edited and
    the images rebuilt by what builds them, C(mkinitcpio -P) for mkinitcpio presets with C(*_uki=), or
    C(kernel-install add) with C(layout=uki) in C(install.conf). Images built from another command line
    (C(/etc/cmdline.d), a preset's C(--cmdline), C(Cmdline=) in C(uki.conf), dracut's C(uefi=yes)) or by an
    unknown tool are refused with nothing changed, naming where the arguments go. Lines of
    C(/etc/kernel/cmdline) that start with C(#) are comments (mkinitcpio leaves them out of the image) and
    are kept; the arguments are written on one line after them."
  - "Proxmox VE: when C(proxmox-boot-tool) manages the ESPs (C(/etc/kernel/proxmox-boot-uuids)), edits
    C(/etc/kernel/cmdline) if the host boots systemd-boot (C(LoaderInfo)), or C(/etc/default/grub) if it boots
    GRUB (and C(/etc/kernel/cmdline) with it, when present), then
    runs C(proxmox-boot-tool refresh); otherwise behaves as GRUB."
  - "Pop!_OS with kernelstub (C(/etc/kernelstub/configuration), a host booted by UEFI): kernelstub writes the
    systemd-boot entries on the ESP from its own configuration, so C(/etc/kernel/cmdline) and C(kernel-install)
    do not reach them. Edits C(user.kernel_options) in that JSON file (the C(default) section's options when
    there is no C(user) section, as kernelstub does), then runs C(kernelstub), which writes the entries."
  - "sdboot-manage (CachyOS, EndeavourOS; C(/etc/sdboot-manage.conf)): it removes the systemd-boot entries and
    writes them again from C(LINUX_OPTIONS) at every kernel install, so an entry edited in place would lose the
    arguments at the next kernel update. Edits C(LINUX_OPTIONS) (added at the end of the file when no line sets
    it), then runs C(sdboot-manage gen). The fallback entries keep C(LINUX_FALLBACK_OPTIONS), as GRUB's recovery
    entries leave C(GRUB_CMDLINE_LINUX_DEFAULT) out."
  - "OSTree systems (Fedora CoreOS, RHEL CoreOS, Silverblue and the other Atomic desktops, RHEL for Edge,
    bootc image mode; C(/run/ostree-booted), or boot entries carrying C(ostree=)): the kernel arguments
    belong to each deployment, and ostree rewrites the boot entries; C(/etc/default/grub) and grubby, which
    some of them also carry, do not reach them. Reads the next boot's deployment with C(rpm-ostree kargs)
    (the staged one when there is one) and runs one C(rpm-ostree kargs --delete=... --append=...), which
    stages a new deployment with the arguments. The deployment's own C(ostree=) argument is left alone and
    not reported. Works on the booted host only (O(root=/)). On OpenShift nodes, whose Machine Config
    Operator owns the kernel arguments, give them in a MachineConfig (C(spec.kernelArguments)) instead."
  - NixOS (C(/etc/NIXOS)) is refused with V(auto), as nixos-rebuild writes its boot entries from the system
    configuration; the arguments belong in C(boot.kernelParams).
  - "Which loader booted the host is read from the Boot Loader Interface's C(LoaderInfo) EFI variable by its
    text, not its presence: GRUB with its C(bli) module names itself there too (C(GRUB 2.12)) and is told by
    its configuration as on any other host. A host that Limine boots (C(LoaderInfo) C(Limine ...), or in a tree
    without EFI variables C(/etc/default/limine), C(/etc/limine-entry-tool.conf) or a C(limine.conf)) is refused
    with V(auto), nothing changed: limine-entry-tool writes its entries from C(KERNEL_CMDLINE) in
    C(/etc/default/limine), which this module does not edit."
  - A O(present) C(key=value) replaces the other values of that key (C(intel_iommu=off) becomes
    C(intel_iommu=on)) except for keys the kernel accepts several times (C(console), C(hugepagesz),
    C(hugepages), C(memmap), C(initcall_blacklist), C(rd.driver.pre) and similar). Dashes and
    underscores in a parameter name are equivalent, as for the kernel (C(vfio-pci.ids) and
    C(vfio_pci.ids) are one parameter). Existing arguments keep their order; new ones are appended.
  - "C(hugepages=) sets the pool of the page size the C(hugepagesz=) before it names (the default size when
    none does), and the kernel ignores a second one for a size: a O(present) C(hugepages=N), after a
    C(hugepagesz=S) in O(present) or alone, replaces that size's pool in place (the ones the kernel ignored
    go), and a new pool goes where it pairs with its size. grubby, which appends what it adds, is refused a
    change it cannot pair that way; O(present) may give one C(hugepages=) per size."
  - Arguments with whitespace, quotes or shell characters (C($), backslash, backquote, C(;), C(&), C(|),
    C(<), C(>)) are refused; edit those by hand.
  - A O(present) argument that the host's architecture has no kernel parameter for is refused with the
    argument, the architecture and what to use instead, and nothing is changed - C(intel_iommu=),
    C(amd_iommu=), C(iommu=pt) and the other x86-only ones on arm64 (which uses C(iommu.passthrough=1)) or
    POWER, C(arm-smmu-v3.*), C(kvm-arm.*) and the other arm64-only ones on x86. C(iommu.passthrough=) and
    C(iommu.strict=) belong to both. The architecture is the running kernel's when O(root) is V(/); in a
    tree, that of its own programs (their ELF header), else of its C(/proc/cpuinfo), else of its IOMMU; a
    tree that tells none of these takes any argument. O(absent) may always name them.
extends_documentation_fragment:
  - gpuvirt.host.attributes
  - gpuvirt.host.attributes.linux
attributes:
  check_mode:
    support: full
    details:
      - Reads everything and predicts the result, the diff and the commands exactly; writes nothing.
  diff_mode:
    support: full
    details:
      - One diff per file edited. For grubby the diff of each boot entry is the edit grubby will make.
options:
  present:
    description:
      - Arguments the command line must hold, each C(key) or C(key=value).
    type: list
    elements: str
    default: []
  absent:
    description:
      - Arguments the command line must not hold. C(key) removes the key with any value;
        C(key=value) removes only that value.
      - A parameter cannot be in both O(present) and O(absent), except a repeatable key with
        different values (keep C(console=ttyS0), remove C(console=tty0)).
    type: list
    elements: str
    default: []
  bootloader:
    description:
      - The bootloader configuration to edit. V(auto) detects it below O(root) and fails, naming what
        it looked for, when it recognises none.
    type: str
    choices: [auto, grub, grubby, systemd-boot, proxmox, ostree, kernelstub, sdboot-manage]
    default: auto
  root:
    description:
      - The host filesystem root to work on, for image trees and tests. The running command line is
        read from C(<root>/proc/cmdline).
      - Commands (C(update-grub), C(grubby), C(kernel-install), C(proxmox-boot-tool), C(rpm-ostree), C(kernelstub),
        C(sdboot-manage), C(mkinitcpio)) are
        only run when this is V(/). For another tree the files are edited and RV(regenerate_required) says that
        the boot entries still have to be regenerated inside it; with grubby the BLS entries of the
        tree are edited directly, the way grubby would edit them.
    type: path
    default: /
  update:
    description:
      - Apply a changed configuration to the boot entries (the regeneration command, grubby, or
        C(rpm-ostree kargs)).
      - With V(false) only the configuration files are edited and RV(regenerate_required) is true.
    type: bool
    default: true
  backup:
    description:
      - Keep a timestamped copy of every file the module edits, next to it.
    type: bool
    default: false
notes:
  - When the regeneration command fails, the files this run edited are put back as they were and the
    module fails with the command's output, so that the next run tries again.
  - A run killed while the regeneration command runs (a lost session, an OOM kill, a power cut) leaves
    C(/etc/gpuvirt/pending/bootloader); the next run of this module, M(gpuvirt.host.vfio_pci) or
    M(gpuvirt.host.virtualization_mode) runs the command again although no file needs an edit, and
    reports a change.
  - The arguments take effect at the next boot; RV(reboot_required) tells whether the running kernel
    already has them.
seealso:
  - module: gpuvirt.host.topology_info
  - module: gpuvirt.host.vfio_pci
"""

EXAMPLES = r"""
- name: Turn the Intel IOMMU on in passthrough mode
  gpuvirt.host.kernel_cmdline:
    present:
      - intel_iommu=on
      - iommu=pt
  register: cmdline

- name: Reboot when the running kernel lacks the arguments
  ansible.builtin.reboot:
  when: cmdline.reboot_required

- name: Hand two device IDs to vfio-pci at boot (vfio-pci built into the kernel)
  gpuvirt.host.kernel_cmdline:
    present:
      - vfio-pci.ids=10de:2236,10de:1aef

- name: Drop the module blacklists from the command line, whatever modules they name
  gpuvirt.host.kernel_cmdline:
    absent:
      - modprobe.blacklist
      - rd.driver.blacklist

- name: Prepare an image tree; regenerate the entries inside it later
  gpuvirt.host.kernel_cmdline:
    root: /mnt/image
    bootloader: grub
    present:
      - intel_iommu=on
"""

RETURN = r"""
bootloader:
  description: The bootloader configuration edited (detected or given).
  returned: always
  type: str
  sample: grub
configured:
  description:
    - The arguments the boot configuration holds after the run (predicted in check mode), in order.
    - "GRUB: C(GRUB_CMDLINE_LINUX) then C(GRUB_CMDLINE_LINUX_DEFAULT); grubby: the default boot entry;
      systemd-boot and Proxmox: C(/etc/kernel/cmdline); kernelstub: its C(kernel_options) (kernelstub puts
      C(root=UUID=... ro) before them); sdboot-manage: its C(LINUX_OPTIONS) (it puts the C(root=) arguments
      before them); OSTree: the next boot's deployment, without its C(ostree=) argument."
  returned: always
  type: list
  elements: str
  sample: [quiet, intel_iommu=on, iommu=pt]
running:
  description: The arguments of the running kernel (C(<root>/proc/cmdline)); null when it cannot be read.
  returned: always
  type: list
  elements: str
  sample: [BOOT_IMAGE=/boot/vmlinuz-6.1.0-18-amd64, root=UUID=4f6c..., ro, quiet]
added:
  description: Arguments added, including new values of replaced keys.
  returned: always
  type: list
  elements: str
  sample: [intel_iommu=on, iommu=pt]
removed:
  description: Arguments removed, including old values of replaced keys.
  returned: always
  type: list
  elements: str
  sample: [intel_iommu=off]
reboot_required:
  description:
    - True while the running kernel lacks a O(present) argument or still has an O(absent) one.
    - False when O(root) has no C(proc/cmdline) (an image tree).
  returned: always
  type: bool
regenerate_required:
  description:
    - True when the configuration changed but the boot entries were not regenerated (O(update=false),
      or O(root) is not V(/)); RV(commands) are what remains to run.
  returned: always
  type: bool
commands:
  description: The commands run to apply the change, or that remain to run when RV(regenerate_required).
  returned: always
  type: list
  elements: list
  sample: [[/usr/sbin/update-grub]]
backup_file:
  description: The backup of the first file edited, when O(backup=true).
  returned: when a file was backed up
  type: str
  sample: /etc/default/grub.12345.2024-05-01@10:00:00~
backup_files:
  description: Every backup made, by the path of the file edited.
  returned: when a file was backed up
  type: dict
  sample: {/etc/default/grub: /etc/default/grub.12345.2024-05-01@10:00:00~}
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.gpuvirt.host.plugins.module_utils import bootloader, modrun  # noqa: E402
from ansible_collections.gpuvirt.host.plugins.module_utils.kernel_cmdline_run import KernelCmdlineRun  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=dict(
            present=dict(type="list", elements="str", default=[]),
            absent=dict(type="list", elements="str", default=[]),
            bootloader=dict(type="str", default="auto", choices=["auto"] + list(bootloader.BOOTLOADERS)),
            root=dict(type="path", default="/"),
            update=dict(type="bool", default=True),
            backup=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    modrun.run(module, KernelCmdlineRun)


if __name__ == "__main__":
    main()
