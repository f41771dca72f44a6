#!/usr/bin/python
# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vfio_pci
short_description: Bind PCI devices (GPUs and their companion functions) to a VFIO driver, now and at every boot
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
description:
  - Hands the selected PCI devices to C(vfio-pci) so that they can be assigned to virtual machines,
    or with O(state=absent) hands them back to their host drivers. One call handles any number of devices.
  - "Devices are selected by PCI address (C(0000:01:00.0), short C(01:00.0) or the 8-digit domain
    C(00000000:01:00.0) that C(nvidia-smi) prints), by C(vendor:device) ID (every device with that ID),
    or by model name from the host's C(pci.ids) (C(GeForce RTX 3080), matched exactly first, then as
    a part of the name). Indexes are refused: they change between boots. An address that does not
    exist, an ID that matches nothing, or a name that matches nothing or two different models fails
    and changes nothing."
  - "Variant VFIO drivers (C(nvgrace_gpu_vfio_pci) for NVIDIA Grace Hopper GPUs, C(mlx5_vfio_pci),
    C(hisi_acc_vfio_pci), C(pds_vfio_pci), C(virtio_vfio_pci)...) take the place of vfio-pci for the
    devices they support. With O(driver=auto) each device gets the variant driver whose
    C(alias vfio_pci:<pattern> <driver>) line in C(/lib/modules/<release>/modules.alias) of the running
    kernel matches the device's C(modalias) (the most specific pattern when several do, as libvirt picks
    them), else vfio-pci. A device on vfio-pci that a variant driver matches is moved to it."
  - With O(companions=true) the other functions of the selected card's slot that share its IOMMU group
    (HDMI/DP audio, USB-C xHCI, UCSI) are bound too, as a VM can only get a whole group. The GPU of an
    AMD APU shares its slot with the processor's own functions (the security processor, USB and audio
    controllers, vendor 1022; the GPU and its HDMI audio are 1002), which are not its companions and
    stay with the host. A card with a PCIe switch of its own and one GPU behind it (Intel Arc) has its
    audio controller behind another port of that switch, on a bus of its own; it is a companion too.
    A companion in an IOMMU group of its own (ACS between the functions, C(pcie_acs_override)) is left to
    its driver, as the VM does not need it; select it to bind it too. Not one on the GPU's bus when the
    GPU has no reset but its bus's (no C(reset_method) but C(bus), as on a multifunction GeForce or Radeon
    without FLR), as VFIO resets it with its bus only when the VM holds every function on it.
  - "Runtime binding uses the kernel's protocol: load the driver's module when
    C(/sys/bus/pci/drivers/<driver>) does not exist, write the driver name to C(driver_override), unbind
    the current driver, write the address to C(/sys/bus/pci/drivers_probe), then read the C(driver) link
    back. A bind the kernel accepted but that did not take effect is undone and reported as an error."
  - "The devices of one call move all or nothing, with O(state=present) as with O(state=absent): when one
    of them fails to move (a companion that vfio-pci cannot probe, a device that will not leave vfio-pci),
    the devices this call had already moved are put back on the driver they had, with their
    C(driver_override) as it was, and read back; the boot-time configuration, written only after every
    device has moved, is left as it was. The error names the device that failed and why, and the devices
    put back; it reports C(changed=false) when everything is as before the call (only a module the call
    loaded stays loaded, and then C(changed) is true). A device that cannot be put back is named with its
    driver now and before, C(changed) is true, and the message says so: a reboot, or the task run again
    once the device is free, settles it."
  - "Guards, each a clear error that changes nothing unless O(force=true): the boot VGA device, the boot
    display of another class (the C(boot_display) newer kernels put on its DRM card; an AMD APU's GPU has no
    C(boot_vga)), a VGA-class device whose C(boot_vga) is missing, or a GPU driving the framebuffer the text
    console draws on (C(fb0), or those C(fbcon=map:) names, or the boot GPU's where an x86 kernel with
    C(CONFIG_FRAMEBUFFER_CONSOLE_DETECT_PRIMARY) moves the consoles; a second GPU's framebuffer carries none),
    or a GPU whose memory holds the firmware's framebuffer (C(BOOTFB) and the driver drawing on it in
    C(/proc/iomem): vfio-pci could not reserve that BAR for a VM; boot with
    C(initcall_blacklist=sysfb_init)); a device behind an Intel VMD controller (a PCI domain of 10000 and up
    below a device on the C(vmd) driver: its DMA carries the controller's requester ID, so it cannot be
    assigned alone; turn VMD off in the firmware); an IOMMU group that holds an endpoint which is neither a companion
    nor being bound (a NIC, a disk controller), naming that device; a group holding a device under storage
    the host uses (the root filesystem, another mounted filesystem, active swap, an imported ZFS pool, an
    active LVM or RAID device; a ZFS pool whose disks the udev database does not name makes every storage
    controller such a device) or a NIC that keeps the host reachable (that of a default route, or of the
    route an established SSH session's replies take), links it to its corosync cluster (Proxmox VE,
    Pacemaker; a node cut off its cluster fences itself) or carries network storage it uses (the route to the
    server of a mounted NFS, SMB or CephFS filesystem, or to the peer of an established iSCSI, NVMe/TCP,
    Ceph, NBD, GlusterFS, NFS or SMB session: the disks of its VMs; or to the target of an NVMe controller
    over RDMA or of an iSCSI connection, iSER's included), or an adapter that carries storage
    sessions no socket shows (the HBA port of an NVMe/FC controller, the HCA or offload HBA of an iSCSI
    session, iSER included, the HCA of an SRP target port); a device whose C(/dev/vfio/<group>) a process holds
    open (a running VM) when its driver would change; an SR-IOV physical function with VFs enabled, or the
    parent of mediated devices, when its driver would change (binding it or handing it back: its driver's
    removal disables the VFs or removes the mdevs, whose VMs hold their own groups, not the parent's);
    a device host processes use through its host driver
    (its DRM card, render node or accel node, its framebuffer, or C(/dev/nvidiaN) by the driver's C(Device Minor): a
    desktop compositor, nvidia-persistenced, a CUDA job; or the disks, partitions, NVMe and SCSI generic
    nodes below a storage controller: a VM given a whole disk holds its node) when its driver would change
    now: taking it pulls the device from under them, or leaves the run waiting until they let go; ID-based
    persistence that would also catch a device staying with the host."
  - When the IOMMU is off in the running kernel, nothing is bound now; the boot-time configuration is
    still written and RV(reboot_required) is true with the reason in RV(reboot_reasons).
  - "Boot-time configuration (O(persistence)): V(modprobe) writes C(/etc/modprobe.d/gpuvirt-vfio.conf)
    (C(options vfio-pci ids=...) plus C(softdep) lines so that the GPU drivers of the devices' vendors
    (nvidia and nouveau, i915 and xe, amdgpu and radeon), snd_hda_intel and xhci_hcd, and the module of each
    device's host driver as sysfs links it (C(xhci_pci), C(i2c_nvidia_gpu) of a GPU's USB-C functions), load
    after vfio-pci; the lines the file already has are kept); V(driverctl)
    keeps one override per address in C(/etc/driverctl.d/pci-<address>) through
    C(driverctl --noprobe set-override); V(cmdline) puts
    C(vfio-pci.ids=) on the kernel command line through the bootloader configuration (the only way
    when vfio-pci is built into the kernel, where modprobe.d options are ignored); V(auto) picks
    V(cmdline) when C(modules.builtin) lists vfio-pci and V(modprobe) otherwise. When vfio-pci is a
    module, C(/etc/modules-load.d/gpuvirt-vfio.conf) loads it at boot."
  - "A device whose host driver is built into the kernel (its module in C(modules.builtin)) is taken by
    that driver when the kernel starts, before vfio-pci can claim it by ID: with O(persistence=auto) it is
    kept by a driverctl override (which rebinds it when udev starts; driverctl must be installed), and
    O(persistence=modprobe) or O(persistence=cmdline) fails and changes nothing. With V(auto), a device an
    earlier run kept by an override for vfio-pci stays so."
  - "Variant drivers bind only through C(driver_override), never by vendor:device ID, so IDs on the
    modprobe.d options or the kernel command line cannot keep them. With O(persistence=auto) a device on
    a variant driver is kept by a driverctl override (C(/etc/driverctl.d/pci-<address>) holding the
    driver name, which needs driverctl installed, as for O(persistence=driverctl)) and its module is
    listed in C(/etc/modules-load.d/gpuvirt-vfio.conf), since nothing else loads it at boot; the devices
    on plain vfio-pci keep the method V(auto) resolves to. O(persistence=modprobe) or O(persistence=cmdline)
    with a device on a variant driver fails and changes nothing."
  - The ID lists are merged with what earlier runs configured, so several calls compose.
  - When the modprobe.d file changes the initramfs is regenerated (update-initramfs, dracut or
    mkinitcpio) and the image that will boot is checked for the vfio modules and the options.
  - On an OSTree system (C(/run/ostree-booted)) the initramfs belongs to each deployment, and dracut cannot
    rebuild it in place; the module warns instead, and the modprobe.d file takes effect once vfio-pci loads
    from the root filesystem. To carry it into the initramfs, run
    C(rpm-ostree initramfs-etc --track=/etc/modprobe.d/gpuvirt-vfio.conf) (a new deployment).
extends_documentation_fragment:
  - gpuvirt.host.attributes
  - gpuvirt.host.attributes.linux
attributes:
  check_mode:
    support: full
    details:
      - Reads everything, runs the guards and predicts every binding, file and command; writes nothing.
      - What is read back only after a change is not predicted - RV(initramfs.verified) is null when the images
        would be rebuilt, and RV(devices) give a device handed back no C(driver_after) (the kernel's probe
        picks the driver).
  diff_mode:
    support: full
    details:
      - One diff per file written or removed (modprobe.d, modules-load.d, driverctl, bootloader).
options:
  driver:
    description:
      - The VFIO driver to bind the devices to, with O(state=present).
      - V(auto) gives each device the variant VFIO driver that C(modules.alias) of the running kernel
        matches for it, else vfio-pci.
      - V(vfio-pci) always binds plain vfio-pci (the variant drivers are not considered).
      - Any other value names a variant driver (C(nvgrace_gpu_vfio_pci), C(mlx5-vfio-pci); dashes and
        underscores are the same) for the devices the selectors name, while their companion functions
        keep V(auto). It must match each of them (one of its C(vfio_pci:) aliases matches the device's
        C(modalias)), or the run fails before changing anything, naming the device, the driver and the
        variant drivers that do match.
      - Ignored with O(state=absent), which releases devices from vfio-pci and any variant driver.
    type: str
    default: auto
  devices:
    description:
      - The devices, each a PCI address, a C(vendor:device) ID or a model name. An empty list changes nothing,
        with a warning.
      - With O(state=present) none may be a PCI bridge or a host bridge (they stay with the host, and a
        mistyped address often names one), whatever O(force) says.
    type: list
    elements: str
    required: true
  state:
    description:
      - V(present) binds the devices to their VFIO driver (see O(driver)); V(absent) hands them back to
        their host drivers from vfio-pci or a variant driver (clears C(driver_override), unbinds, takes
        their IDs out of vfio-pci's runtime ID table so
        that the reprobe does not give them straight back, reprobes) and removes them from every
        boot-time configuration this module manages, unless O(persistent=false). A device no loaded driver
        takes (a boot that bound it by its IDs never loaded its host driver's module) gets its module
        loaded by its modalias, as udev loads a new device's (C(modprobe -b)); one still left without a
        driver, or in a tree that is not this host's C(/), is warned about.
    type: str
    choices: [present, absent]
    default: present
  companions:
    description:
      - Also bind (or release) the other functions of each selected device's slot in its IOMMU group
        (not the processor's functions beside an APU's GPU), and those of its card behind the card's own
        switch (an Intel Arc's audio controller).
    type: bool
    default: true
  split:
    description:
      - Selectors (as in O(devices)) of the devices that the rest of the configuration splits into SR-IOV
        VFs, vGPUs or mediated devices; the C(gpuvirt.host.vgpu) role passes its own.
      - With O(state=present), a device to bind (selected, or a companion) that one of them names fails the
        run before anything changes, naming both selectors, whatever O(force) says. Two spellings of one
        device are caught (an ID in O(devices), the same device's address here). A selector here that
        names nothing is left to the step that splits.
    type: list
    elements: str
    default: []
  runtime:
    description:
      - Change the binding of the running system now. With V(false) only the boot-time configuration
        is written and RV(reboot_required) tells whether a reboot is needed for it to take effect.
    type: bool
    default: true
  persistent:
    description:
      - Keep the binding across reboots (the boot-time configuration of O(persistence)), as in every
        module of the collection. V(false) binds until the next reboot only (and with O(state=absent)
        leaves the boot-time configuration alone).
      - Replaces the V(none) choice that O(persistent) took before it was a boolean.
    type: bool
    default: true
  persistence:
    description:
      - How the binding is kept across reboots when O(persistent=true), see the description.
      - Devices on a variant driver are kept by driverctl overrides with V(auto) and V(driverctl); V(modprobe)
        and V(cmdline) cannot keep them and fail.
    type: str
    choices: [auto, modprobe, driverctl, cmdline]
    default: auto
  initramfs:
    description:
      - Regenerate and verify the initramfs when the modprobe.d configuration it includes changed.
      - "With V(false) the image is not rebuilt. When the modprobe.d file goes (O(state=absent)), the
        collection's initramfs configuration, which names that file, still goes with it."
    type: bool
    default: true
  force:
    description:
      - Go ahead although a guard refuses (each refusal is still reported as a warning and in
        RV(refusals)). Binding the console GPU or a device a VM uses can hang or cut off the host.
      - One guard is about what cannot be seen - V(in_use_unknown), when the open files of some process
        cannot be read (permission denied, as when the module runs without root or without C(CAP_SYS_PTRACE), as in
        a restricted container, or C(/proc) is mounted with C(hidepid)), or when C(/proc) does not even list
        the processes the run may not trace (mounted with C(hidepid=invisible) or C(hidepid=ptraceable), read
        without C(CAP_SYS_PTRACE) and, for C(invisible), outside the mount's C(gid=) group; or a container's, in a PID
        namespace of its own, that lists none of the host's), so whether one holds a device whose driver would change
        cannot be told. It concerns a device whose C(/dev/vfio/<group>) or iommufd device exists (a VM could hold it)
        or that has host nodes (a DRM card, a framebuffer, C(/dev/nvidiaN), a disk); its message names how many
        processes and a few of them, or the C(hidepid) mount and what lets the run see every process. A process
        that exits during the scan is not counted.
    type: bool
    default: false
  root:
    description:
      - The host filesystem root to work on (C(<root>/sys), C(<root>/etc)), for tests and chroots with
        the host's C(/sys) mounted. Commands (modprobe, driverctl, initramfs tools, bootloader tools)
        are only run when this is V(/); in another tree the driverctl files are written directly.
    type: path
    default: /
notes:
  - The module refuses nothing that M(gpuvirt.host.topology_info) reports as viable; run it first to
    see the verdicts and their reasons.
  - The C(gpuvirt.host.vfio) role wraps this module with a reboot policy and a verification of the
    drivers, C(/dev/vfio/<group>) and the verdicts; the C(gpuvirt.host.iommu) role turns the IOMMU on first.
  - A run killed while the initramfs or the boot entries are rebuilt (a lost session, an OOM kill, a power
    cut) leaves C(/etc/gpuvirt/pending/initramfs) or C(/etc/gpuvirt/pending/bootloader); the next run
    rebuilds them although no file needs an edit, and reports a change.
  - A run killed while it hands a device back, between the unbind and the reprobe, leaves the device on no
    driver, with nothing on it that says so when it was bound by its ID. Each hand-back (this module's, and
    the M(gpuvirt.host.sriov) module's of VFs) is noted in C(/run/gpuvirt/handbacks.json) before its first
    write, with the device's IDs, the inode of its sysfs directory and the boot, and dropped after the
    reprobe. The next run with O(runtime=true) that is not refused (a VM holding the device's IOMMU group
    refuses it unless O(force)) finishes each noted hand-back whose device it finds on no driver (the same
    device, in the same boot where the tree shows it, with no other driver_override since), whatever devices
    it names and before them; on this host's C(/) it loads the host driver's module by modalias when no
    driver takes the device, as for its own hand-backs. It warns, lists the device in RV(resumed) and
    reports a change. Check mode does not predict those C(modprobe -b) commands. A note file that cannot be
    read (damaged, or edited by hand) is warned about, as its hand-backs cannot be finished; the next
    hand-back replaces it.
seealso:
  - module: gpuvirt.host.topology_info
  - module: gpuvirt.host.kernel_cmdline
"""

EXAMPLES = r"""
- name: Hand the GPU at 01:00.0 and its HDMI audio to vfio-pci, now and at every boot
  gpuvirt.host.vfio_pci:
    devices:
      - "0000:01:00.0"
  register: vfio

- name: Reboot when the binding needs one (IOMMU was off)
  ansible.builtin.reboot:
  when: vfio.reboot_required

- name: Every RTX A4000 of the host, by model name, kept per address with driverctl
  gpuvirt.host.vfio_pci:
    devices:
      - RTX A4000
    persistence: driverctl

- name: Two cards by ID, configured for the next boot only
  gpuvirt.host.vfio_pci:
    devices:
      - "10de:2204"
      - "1002:73bf"
    runtime: false

- name: A Grace Hopper GPU on its variant driver (auto picks nvgrace_gpu_vfio_pci), kept by driverctl
  gpuvirt.host.vfio_pci:
    devices:
      - "0009:01:00.0"
  register: grace

- name: Show the driver chosen and why
  ansible.builtin.debug:
    msg: "{{ grace.devices['0009:01:00.0'].driver }} ({{ grace.devices['0009:01:00.0'].driver_reason }})"

- name: Plain vfio-pci although a variant driver matches
  gpuvirt.host.vfio_pci:
    devices:
      - "0009:01:00.0"
    driver: vfio-pci

- name: Name the variant driver; fails if it does not match the device
  gpuvirt.host.vfio_pci:
    devices:
      - "15b3:101e"
    driver: mlx5_vfio_pci

- name: Give the GPU back to the host
  gpuvirt.host.vfio_pci:
    devices:
      - "0000:01:00.0"
    state: absent
"""

RETURN = r"""
devices:
  description: Per PCI address, every device this run bound or released (selected ones and companions).
  returned: always
  type: dict
  sample:
    "0000:01:00.0":
      id: "10de:2204"
      name: "0000:01:00.0 [10de:2204] NVIDIA Corporation GA102 [GeForce RTX 3090] (driver nouveau)"
      iommu_group: "14"
      selected_by: ["GeForce RTX 3090"]
      companion_of: null
      driver_before: nouveau
      driver_after: vfio-pci
      changed: true
      driver: vfio-pci
      driver_reason: default
      modalias: "pci:v000010DEd00002204sv00001458sd0000403Bbc03sc00i00"
      variant_drivers: []
      persistence: modprobe
    "0000:01:00.1":
      id: "10de:1aef"
      name: "0000:01:00.1 [10de:1aef] NVIDIA Corporation GA102 High Definition Audio Controller (driver snd_hda_intel)"
      iommu_group: "14"
      selected_by: []
      companion_of: "0000:01:00.0"
      driver_before: snd_hda_intel
      driver_after: vfio-pci
      changed: true
      driver: vfio-pci
      driver_reason: default
      modalias: "pci:v000010DEd00001AEFsv00001458sd0000403Bbc04sc03i00"
      variant_drivers: []
      persistence: modprobe
  contains:
    id:
      description: The C(vendor:device) ID.
      type: str
    name:
      description: Address, ID, name and driver before the run, for people.
      type: str
    iommu_group:
      description: The IOMMU group, null while the IOMMU is off.
      type: str
    selected_by:
      description: The selectors that chose this device (empty for a companion).
      type: list
      elements: str
    companion_of:
      description: The selected device whose companion this is, or null.
      type: str
    driver_before:
      description: The driver bound before the run, or null.
      type: str
    driver_after:
      description:
        - The driver bound after the run, or null. In check mode the prediction; for a device handed
          back the kernel picks the driver, so the prediction is null.
      type: str
    changed:
      description: Whether the runtime binding of this device changed (or would, in check mode).
      type: bool
    driver:
      description: The VFIO driver the device is bound to (C(vfio-pci) or a variant driver); null with O(state=absent).
      type: str
    driver_reason:
      description:
        - Why that driver, null with O(state=absent).
        - V(option) - O(driver) named it (V(vfio-pci) or a variant driver).
        - V(modules.alias) - O(driver=auto) and a variant driver's C(vfio_pci:) alias matches the device.
        - V(default) - O(driver=auto) and no variant driver matches, so vfio-pci.
      type: str
    modalias:
      description: The device's C(modalias) attribute, what the C(vfio_pci:) aliases are matched against.
      type: str
    variant_drivers:
      description: The variant VFIO drivers of the running kernel that match the device, the best match first.
      type: list
      elements: str
    persistence:
      description:
        - How the device is kept across reboots by this run (V(modprobe), V(cmdline), V(driverctl) or V(none)).
          Devices on a variant driver always use V(driverctl).
      type: str
state:
  description: The O(state) applied.
  returned: always
  type: str
iommu_enabled:
  description: Whether the IOMMU is on in the running kernel.
  returned: always
  type: bool
persistence:
  description:
    - The boot-time method used for the devices on plain vfio-pci (V(auto) resolved), or V(none);
      V(driverctl) when every device is kept by a driverctl override (all on variant drivers).
      RV(devices) tells the method of each device.
  returned: always
  type: str
  sample: modprobe
ids:
  description: The C(vendor:device) IDs vfio-pci claims at boot after the run (modprobe and cmdline methods).
  returned: always
  type: list
  elements: str
  sample: ["10de:1aef", "10de:2204"]
files_changed:
  description: Files written or removed (to be, in check mode).
  returned: always
  type: list
  elements: str
  sample: [/etc/modprobe.d/gpuvirt-vfio.conf, /etc/modules-load.d/gpuvirt-vfio.conf]
commands:
  description: Commands run (to be run, in check mode).
  returned: always
  type: list
  elements: list
resumed:
  description:
    - Devices an earlier run left on no driver, stopped while it handed them back, that this run handed back
      first (would hand back, in check mode), with the driver that took each (null in check mode, or when
      none did). One this run names is also in RV(devices), changed.
  returned: always
  type: dict
  sample: {"0000:01:00.0": nvidia}
initramfs:
  description: The initramfs configuration, regeneration and verification.
  returned: always
  type: dict
  contains:
    tool:
      description: The initramfs tool in use (C(update-initramfs), C(dracut), C(mkinitcpio)), or null.
      type: str
    releases:
      description: The kernel releases whose images are (or would be) rebuilt.
      type: list
      elements: str
    modules:
      description: The vfio modules put into the image (C(vfio_virqfd) only for kernels that still have it).
      type: list
      elements: str
    regenerated:
      description: Whether the images were rebuilt (would be, in check mode); only when their inputs changed.
      type: bool
    regenerate_required:
      description: Inputs changed but the images could not be rebuilt here (O(root) is not V(/)).
      type: bool
    images:
      description: The images read back after the rebuild (in check mode, the images the rebuild would write).
      type: list
      elements: str
    verified:
      description:
        - Whether the rebuilt images hold the vfio modules and the modprobe.d file.
        - Null in check mode when the images would be rebuilt, since nothing is built to read back.
      type: bool
reboot_required:
  description: Whether the wanted binding only takes effect at the next boot.
  returned: always
  type: bool
reboot_reasons:
  description: Why a reboot is required, in sentences.
  returned: always
  type: list
  elements: str
refusals:
  description:
    - Guards overridden by O(force=true), each C(code), C(device) and C(message). Codes include V(boot_vga),
      V(boot_display), V(console_framebuffer), V(firmware_framebuffer), V(behind_vmd), V(group_shared),
      V(host_critical), V(doubtful_attribute), V(in_use), V(host_users), V(in_use_unknown), V(id_shared),
      V(carved) (a device with VFs, mdevs or a vendor's vGPU, now or recorded for the boot-time restore) and
      V(kept_by_sriov) (handing back a VF that the boot-time restore gives to vfio-pci again).
      A refusal about several devices (V(group_shared), V(in_use_unknown)) names them all in its message
      and the first in C(device).
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.gpuvirt.host.plugins.module_utils import modrun  # noqa: E402
from ansible_collections.gpuvirt.host.plugins.module_utils.vfio import PERSISTENCE_METHODS  # noqa: E402
from ansible_collections.gpuvirt.host.plugins.module_utils.vfio_run import VfioPciRun  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=dict(
            devices=dict(type="list", elements="str", required=True),
            driver=dict(type="str", default="auto"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            companions=dict(type="bool", default=True),
            split=dict(type="list", elements="str", default=[]),
            runtime=dict(type="bool", default=True),
            persistent=dict(type="bool", default=True),
            persistence=dict(type="str", choices=list(PERSISTENCE_METHODS), default="auto"),
            initramfs=dict(type="bool", default=True),
            force=dict(type="bool", default=False),
            root=dict(type="path", default="/"),
        ),
        supports_check_mode=True,
    )
    modrun.run(module, VfioPciRun)


if __name__ == "__main__":
    main()
