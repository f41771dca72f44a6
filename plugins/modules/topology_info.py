#!/usr/bin/python
# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: topology_info
short_description: Report the IOMMU, PCI and GPU topology of a host for GPU virtualization
version_added: 0.1.0
author: gpuvirt.host maintainers (@gpuvirt)
description:
  - Reads sysfs and procfs (and C(lib/modules), C(pci.ids)) and reports what a GPU virtualization
    host needs to know, without changing anything - the IOMMU and whether it is on, the kernel and
    CPU virtualization, the IOMMU groups, every PCI device, every GPU with a passthrough verdict, the
    mediated device parents, types and devices, and findings that say what is wrong and what to do.
  - A GPU can be passed through (RV(topology.gpus[].passthrough.viable)) when the IOMMU is on, every
    other endpoint in its IOMMU group is a function of the same slot (HDMI/DP audio, USB-C xHCI, UCSI;
    not the processor's functions beside an APU's GPU) or a PCI bridge, the host does not show its
    console on it (the boot VGA device, the boot display, a framebuffer) nor keeps the firmware's
    framebuffer in its memory, no process holds its VFIO device, and neither it nor a device it must
    be bound with holds storage the host uses (the root filesystem, another mounted filesystem, active
    swap, an imported ZFS pool, an active LVM or RAID device) or a NIC that keeps the host reachable
    (that of a default route, or the one the replies of an established SSH session leave through, by
    the kernel's routes, every next hop of a multipath route or nexthop group, in the main table and
    those policy rules look up (a snapshot's C(/proc/net/route) shows one next hop, main table only);
    the sessions are those to the ports sshd_config gives sshd, 22 by
    default, and to the C(ListenStream) ports of an enabled C(ssh.socket) or C(sshd.socket), whose
    drop-ins socket-activated sshd follows rather than sshd_config), a NIC of a corosync cluster link
    (the route to a node's C(ringN_addr) or the C(bindnetaddr) network in C(/etc/corosync/corosync.conf),
    host names through C(/etc/hosts); a Proxmox VE or Pacemaker node cut off its cluster fences itself),
    or a NIC that carries network
    storage the host uses (the route to the server of a mounted NFS, SMB or CephFS filesystem, from
    the C(addr=) or C(mon_addr=) mount option or an address in the mount's source, or to the peer of an
    established session to an iSCSI (3260), NVMe/TCP (4420), Ceph (3300, 6789, 6800-7300), NBD (10809),
    GlusterFS (24007), NFS (2049) or SMB (445) port, which is how the disks of VMs on network storage
    show, or to the target of an NVMe controller over RDMA or of an iSCSI connection, iSER's included,
    which open no TCP socket), or an adapter that carries storage sessions no socket shows (the HBA port
    an NVMe/FC controller's C(host_traddr) names; every FC host port when it names none of them, every
    Fibre Channel function when no FC host port is found; the HCA or offload HBA of an iSCSI session,
    iSER included; the HCA of an SRP target port).
    An NVMe/FC namespace in use leads to its HBA port. A Fibre Channel SCSI target alone does not make its
    HBA critical, only the disks the host uses do.
  - "The console GPU is read where the kernel marks it: C(boot_vga) (VGA-class functions only; a
    VGA-class function without it, as in a partial snapshot, is doubtful), the C(boot_display) file
    newer kernels put on the DRM card of the display that showed the boot sequence, whatever its
    class (the GPU of an AMD APU is a display controller, class 0380, without C(boot_vga)), and the
    framebuffer the text console draws on (C(/sys/class/graphics/fb0), or those a
    C(fbcon=map:<digits>) argument names; without a map, on an x86 kernel built with
    C(CONFIG_FRAMEBUFFER_CONSOLE_DETECT_PRIMARY), the boot VGA or boot display device's framebuffer,
    where fbcon moves the consoles when it registers after another GPU's C(fb0)) with the device that
    drives it; a second GPU's framebuffer carries no console."
  - "The firmware's framebuffer is read from C(/proc/iomem): sysfb registers it as C(BOOTFB) and the
    driver that draws the boot console on it (simpledrm, efidrm, vesadrm, efifb, vesafb, simplefb)
    claims it, inside the BAR of the GPU it lies in. A native GPU driver removes both as it takes over;
    a GPU left to vfio-pci (or to no driver) at boot keeps them, and vfio-pci then cannot reserve that
    BAR for a VM. Such a GPU gets the code V(firmware_framebuffer), and a warning when it is already on a
    VFIO driver; C(initcall_blacklist=sysfb_init) keeps the kernel from registering the framebuffer.
    Regions are matched by address, or by their nesting when the file is read without privileges
    (every address zero)."
  - Unreadable, truncated or malformed attributes and missing links never fail the module; the
    value is reported as V(null) and a finding names the file and what was expected.
  - Interrupt remapping is read from C(/proc/interrupts) (C(IR-) interrupt chips), the command line
    (C(intremap=off) or C(nointremap), unless a later C(intremap=on) undoes it), and the Intel IOMMU
    C(ecap) IR bit; V(null) when none of them tells.
  - Kernel arguments are read as the kernel reads them, up to C(--) and with its quoting; of a
    repeated parameter the last setting the kernel accepts wins, and a boolean takes any value the
    kernel does (C(1), C(y), C(yes), C(true), C(on)).
extends_documentation_fragment:
  - gpuvirt.host.attributes
  - gpuvirt.host.attributes.linux
  - gpuvirt.host.attributes.info_module
options:
  root:
    description:
      - The host filesystem root to read, C(<root>/sys), C(<root>/proc), C(<root>/dev),
        C(<root>/lib/modules) and C(<root>/usr/share/misc/pci.ids) (or C(hwdata)).
      - Use it on a chroot, an image tree, or a snapshot made by C(tests/fixtures/capture.py).
      - The module fails when this is not a directory holding a Linux tree (one of
        C(sys/bus/pci/devices), C(proc/cmdline), C(etc/os-release) or C(usr/lib/os-release)).
    type: path
    default: /
  kernel_arguments:
    description:
      - Sets of kernel arguments to preview against the host's boot configuration in the same read, each as
        M(gpuvirt.host.kernel_cmdline) would in check mode, and returned in RV(kernel_arguments) (the
        C(gpuvirt.host.iommu_kernel_arguments) filter gives the sets that turn an IOMMU on). A fleet preflight so
        reads a host once; the C(iommu) role's preview uses the set it needs.
      - A set that cannot be previewed (arguments that do not fit the host's architecture, no boot loader found)
        returns its error instead; the topology is read all the same. A warning every previewed set has (about the
        boot configuration itself, such as an assignment in C(/etc/default/grub) that is not evaluated) is the
        module's warning, once.
    type: list
    elements: dict
    default: []
    suboptions:
      present:
        description: The arguments to have on the command line, as for M(gpuvirt.host.kernel_cmdline).
        type: list
        elements: str
        default: []
      absent:
        description: The arguments (or keys) to have off it.
        type: list
        elements: str
        default: []
      bootloader:
        description:
          - The boot loader to edit, as for M(gpuvirt.host.kernel_cmdline) - V(auto), V(grub), V(grubby),
            V(systemd-boot), V(proxmox), V(ostree), V(kernelstub) or V(sdboot-manage). Another value is the set's
            error, not the read's.
        type: str
        default: auto
notes:
  - Run it as root on a live host, with C(CAP_SYS_PTRACE) - without them the open files of other processes
    cannot be read, and a C(/proc) mounted with C(hidepid=invisible) or C(hidepid=ptraceable) does not even
    list the processes the run may not trace (unless, for C(invisible), the run is in the mount's C(gid=)
    group), and a container's C(/proc), in a PID namespace of its own (C(<root>/proc/1/ns/pid) not the initial one),
    lists none of the host's, so RV(topology.devices[].in_use_by) may miss VMs (the V(processes_unreadable) finding
    says how many processes and which, or names the C(hidepid) mount, and the changing modules then refuse to take
    devices away unless forced). The mount's options are read from C(<root>/proc/self/mountinfo) and the run's
    capabilities and groups from C(<root>/proc/self/status); a tree without them (a snapshot) is taken to list every
    process.
  - A device's IDs, class and driver are read from its C(uevent), with C(vendor), C(device),
    C(subsystem_vendor), C(subsystem_device), C(class) and the C(driver) link as the fallback.
  - A mediated device type's C(name), C(description) and C(device_api) are read from the first parent
    of each device model (vendor, device and subsystem IDs) and driver and taken as they are for the
    model's other parents, since the driver derives them from the model and the type;
    C(available_instances) is read for every parent.
seealso:
  - name: Kernel ABI, sysfs-bus-pci
    description: The PCI attributes this module reads.
    link: https://www.kernel.org/doc/Documentation/ABI/testing/sysfs-bus-pci
  - name: Kernel ABI, sysfs-bus-vfio-mdev
    description: Mediated device parents, types and devices.
    link: https://www.kernel.org/doc/Documentation/ABI/testing/sysfs-bus-vfio-mdev
"""

EXAMPLES = r"""
- name: Read the topology of the host
  gpuvirt.host.topology_info:
  register: host

- name: Show the GPUs that can be passed through, with the devices to bind together
  ansible.builtin.debug:
    msg: "{{ item.address }} ({{ item.name }}): bind {{ item.passthrough.devices | join(', ') }}"
  loop: "{{ host.topology.gpus | selectattr('passthrough.viable') }}"
  loop_control:
    label: "{{ item.address }}"

- name: Stop when the host cannot do GPU passthrough at all
  ansible.builtin.assert:
    that:
      - host.topology.iommu.enabled
      - host.topology.cpu.virtualization is not none
    fail_msg: "{{ host.topology.findings | selectattr('severity', 'eq', 'error') | map(attribute='message') | list }}"

- name: Read a snapshot taken on another machine
  gpuvirt.host.topology_info:
    root: /srv/snapshots/gpu-node-07
  delegate_to: localhost
  register: snapshot
"""

RETURN = r"""
topology:
  description: The host topology.
  returned: success
  type: dict
  contains:
    root:
      description: The root that was read.
      returned: success
      type: str
      sample: /
    iommu:
      description: The IOMMU as firmware, kernel command line and sysfs describe it.
      returned: success
      type: dict
      contains:
        enabled:
          description:
            - IOMMU units are registered (C(/sys/class/iommu)) or IOMMU groups exist.
            - V(null) when the tree cannot tell (a snapshot or container without C(/sys/class/iommu),
              C(/sys/kernel/iommu_groups) and C(/sys/kernel)); V(false) only when the tree shows no IOMMU.
          returned: success
          type: bool
          sample: true
        vendor:
          description:
            - V(intel) (DMAR units or table), V(amd) (IVHD units or IVRS table), V(arm) (SMMU units
              C(smmu3.0x...) or the IORT table), or V(null).
          returned: success
          type: str
          sample: intel
        firmware_support:
          description:
            - The ACPI DMAR, IVRS or IORT table is present.
            - V(null) when C(/sys/firmware/acpi/tables) cannot be listed or is missing from a tree without
              C(/sys/firmware) (unknown, not absent).
          returned: success
          type: bool
          sample: true
        passthrough_mode:
          description:
            - The kernel's command line puts the IOMMU in passthrough mode. It is read as the kernel reads it,
              so the last of C(iommu=pt), C(iommu=nopt) (x86 only; on arm64 C(iommu=) reaches init) and
              C(iommu.passthrough=<bool>) wins, and C(iommu.passthrough) takes any boolean the kernel does
              (C(1), C(y), C(yes), C(true), C(on)).
            - V(false) on a kernel built to default to passthrough (C(CONFIG_IOMMU_DEFAULT_PASSTHROUGH)) when the
              command line does not say it.
          returned: success
          type: bool
          sample: false
        interrupt_remapping:
          description:
            - Whether interrupt remapping is on; V(null) when the host does not tell, and on arm64 (where the
              GIC ITS isolates MSIs).
          returned: success
          type: bool
          sample: true
        units:
          description: Names of the IOMMU units in C(/sys/class/iommu).
          returned: success
          type: list
          elements: str
          sample: [dmar0, dmar1]
        unknown:
          description: The directories the tree lacks or cannot list, so that the values above from them are V(null).
          returned: success
          type: list
          elements: str
          sample: []
    kernel:
      description: The running kernel.
      returned: success
      type: dict
      contains:
        release:
          description: C(uname -r); for an image tree, its only C(lib/modules) release. V(null) if unknown.
          returned: success
          type: str
          sample: 6.8.0-45-generic
        cmdline:
          description:
            - The kernel's own arguments, one per item (double quotes kept), up to a bare C(--) (the kernel
              passes what follows to init). V(null) if unreadable.
          returned: success
          type: list
          elements: str
          sample: [BOOT_IMAGE=/vmlinuz, root=/dev/nvme0n1p2, ro, intel_iommu=on]
        init_arguments:
          description: The words of C(/proc/cmdline) after the first bare C(--), for init; V(null) if unreadable.
          returned: success
          type: list
          elements: str
          sample: []
        modules_loaded:
          description: Names of the loaded modules (C(/proc/modules)), sorted. V(null) if unreadable.
          returned: success
          type: list
          elements: str
          sample: [kvm, kvm_intel, nvidia, vfio_pci]
        vfio_builtin:
          description:
            - vfio-pci is built into the kernel (C(modules.builtin)), so C(modprobe.d) options do not apply and
              IDs go on the command line as C(vfio-pci.ids=). V(null) when C(modules.builtin) is unreadable.
          returned: success
          type: bool
          sample: false
        vfio_builtin_modules:
          description: The C(vfio*) modules built into the kernel. V(null) when C(modules.builtin) is unreadable.
          returned: success
          type: list
          elements: str
          sample: [vfio, vfio_iommu_type1]
        secure_boot:
          description:
            - Whether the kernel loads only signed modules, and why. Out-of-tree modules (AMD's C(gim), DKMS
              builds of i915-sriov or xe, an NVIDIA vGPU host driver, the mdev sample drivers) then load only
              when signed with a key the kernel trusts (an enrolled MOK); the V(module_signatures_enforced)
              finding says so.
          returned: success
          type: dict
          contains:
            firmware:
              description:
                - V(uefi) (C(/sys/firmware/efi) exists), V(bios) (C(/sys/firmware) without it, where Secure Boot
                  does not apply), V(null) when the tree has no C(/sys/firmware).
              returned: success
              type: str
              sample: uefi
            enabled:
              description:
                - Secure Boot as the kernel decides it (C(efi_get_secureboot_mode())), on when the C(SecureBoot)
                  EFI variable is 1, C(SetupMode) is not 1 and shim's C(MokSBStateRT) is not 1.
                - V(null) when unknown (efivarfs not mounted on C(/sys/firmware/efi/efivars), a snapshot
                  without it, a garbled variable) or not applicable (BIOS).
              returned: success
              type: bool
              sample: true
            firmware_secure_boot:
              description: The C(SecureBoot) EFI variable (V(false) when the firmware has none); V(null) if unknown.
              returned: success
              type: bool
              sample: true
            setup_mode:
              description: The C(SetupMode) EFI variable (V(true) - no platform key enrolled, nothing is verified).
              returned: success
              type: bool
              sample: false
            shim_validation_disabled:
              description:
                - shim's C(MokSBStateRT) is 1 (C(mokutil --disable-validation)), which turns Secure Boot off for
                  the kernel.
              returned: success
              type: bool
              sample: false
            lockdown:
              description:
                - The kernel lockdown mode (C(/sys/kernel/security/lockdown)) - V(none), V(integrity) or
                  V(confidentiality); both locked-down modes refuse unsigned modules. V(null) when the file is
                  missing (no lockdown LSM, securityfs not mounted) or garbled.
              returned: success
              type: str
              sample: integrity
            sig_enforce:
              description: C(module.sig_enforce) (C(/sys/module/module/parameters/sig_enforce)); V(null) if missing.
              returned: success
              type: bool
              sample: false
            modules_must_be_signed:
              description:
                - V(true) when Secure Boot is on, C(sig_enforce) is Y or the kernel is locked down; V(false) when
                  all three are known to be off; V(null) otherwise.
              returned: success
              type: bool
              sample: true
    cpu:
      description: CPU virtualization.
      returned: success
      type: dict
      contains:
        architecture:
          description:
            - V(x86_64), V(aarch64) or V(ppc64le), from the fields of C(/proc/cpuinfo) each kernel writes;
              V(null) when unknown. Hosts other than x86_64 and aarch64 get the V(architecture_unsupported)
              finding and nothing is changed on them.
          returned: success
          type: str
          sample: x86_64
        vendor:
          description: C(vendor_id) of the first CPU in C(/proc/cpuinfo).
          returned: success
          type: str
          sample: GenuineIntel
        virtualization:
          description:
            - V(vmx) (Intel VT-x), V(svm) (AMD-V), V(el2) (arm64 with C(/dev/kvm); KVM is built in there and
              runs when the kernel starts at EL2), or V(null) when the flags list neither or are unknown.
          returned: success
          type: str
          sample: vmx
        kvm:
          description: C(/dev/kvm) exists.
          returned: success
          type: bool
          sample: true
        virtual_machine:
          description:
            - V(true) when the host is a virtual machine, whose IOMMU and CPU virtualization only its
              hypervisor can give; the advice of the V(iommu_unsupported), V(iommu_off) and
              V(no_cpu_virtualization) findings then names the hypervisor's settings (a virtual IOMMU in caching
              mode, nested virtualization) instead of the firmware setup.
            - The signs, as C(systemd-detect-virt) reads them, are the x86 C(hypervisor) CPU flag; the
              virtual-machine bit of the SMBIOS BIOS information (C(/sys/firmware/dmi/entries/0-0/raw), root only);
              DMI strings in C(/sys/class/dmi/id) that only a hypervisor writes (C(QEMU), C(KVM), C(VMware) and
              others; C(Amazon EC2) only without C(.metal) in the product name); a device-tree C(hypervisor) or
              C(fw-cfg) node; C(/sys/hypervisor/type).
            - V(false) on x86 when the CPU flags are listed and show none of these; V(null) when nothing
              tells, as on an arm64 host without a sign, whose firmware names its maker, not whether it is physical.
          returned: success
          type: bool
          sample: false
        hypervisor:
          description:
            - The hypervisor of a virtual machine when a sign names it (V(QEMU), V(KVM), V(VMware), V(Hyper-V),
              V(Xen), V(Amazon EC2), V(OpenStack (KVM)) and others); V(null) otherwise.
          returned: success
          type: str
          sample: QEMU
    iommu_groups:
      description: IOMMU group number (a string) to the PCI addresses in it, in numeric order.
      returned: success
      type: dict
      sample: {"1": ["0000:00:02.0"], "2": ["0000:00:01.0", "0000:01:00.0", "0000:01:00.1"]}
    devices:
      description: Every PCI device, in address order.
      returned: success
      type: list
      elements: dict
      contains:
        address:
          description: Full PCI address.
          returned: success
          type: str
          sample: "0000:01:00.0"
        vendor_id:
          description: Vendor ID, 4 lowercase hex digits without C(0x).
          returned: success
          type: str
          sample: 10de
        device_id:
          description: Device ID, 4 lowercase hex digits.
          returned: success
          type: str
          sample: 1e04
        subsystem_vendor_id:
          description: Subsystem vendor ID, 4 lowercase hex digits.
          returned: success
          type: str
          sample: "1458"
        subsystem_device_id:
          description: Subsystem device ID, 4 lowercase hex digits.
          returned: success
          type: str
          sample: 37a9
        class:
          description: Class code, 6 lowercase hex digits (base class, subclass, programming interface).
          returned: success
          type: str
          sample: "030000"
        class_name:
          description: The class as C(pci.ids) names it.
          returned: success
          type: str
          sample: VGA compatible controller
        vendor_name:
          description: Vendor name from the host's C(pci.ids), V(null) without one.
          returned: success
          type: str
          sample: NVIDIA Corporation
        device_name:
          description: Device name from the host's C(pci.ids), V(null) without one.
          returned: success
          type: str
          sample: TU102 [GeForce RTX 2080 Ti]
        driver:
          description: The bound driver, V(null) when unbound.
          returned: success
          type: str
          sample: nvidia
        driver_override:
          description: C(driver_override), V(null) when unset.
          returned: success
          type: str
          sample: vfio-pci
        iommu_group:
          description: IOMMU group number, V(null) without one.
          returned: success
          type: str
          sample: "2"
        numa_node:
          description: NUMA node, V(-1) when the device has no affinity, V(null) when not reported.
          returned: success
          type: int
          sample: 0
        boot_vga:
          description:
            - The kernel's C(boot_vga) of a VGA-class function (V(false) for other classes, which do not
              have it); V(null) when it is missing or malformed on a VGA-class function.
          returned: success
          type: bool
          sample: false
        reset_methods:
          description:
            - Reset methods the kernel can use, in its order (C(reset_method)); empty when none.
            - V(null) when unknown, for every device of a host where no device shows C(reset_method) (a kernel
              before Linux 5.15, which lacks the attribute, or a snapshot taken without it), or when it reads garbled.
          returned: success
          type: list
          elements: str
          sample: [flr, bus]
        sriov:
          description: SR-IOV state of a physical function, V(null) for other devices.
          returned: success
          type: dict
          contains:
            total_vfs:
              description: C(sriov_totalvfs).
              returned: success
              type: int
              sample: 20
            num_vfs:
              description: C(sriov_numvfs), the VFs enabled now.
              returned: success
              type: int
              sample: 16
            vfs:
              description: Addresses of the enabled VFs (C(virtfnN) links), in VF order.
              returned: success
              type: list
              elements: str
              sample: ["0000:b1:00.4", "0000:b1:00.5"]
        physfn:
          description: The physical function of a virtual function, V(null) for other devices.
          returned: success
          type: str
          sample: "0000:b1:00.0"
        nvidia_vgpu:
          description: The per-VF NVIDIA vGPU interface (C(nvidia/creatable_vgpu_types)), V(null) without one.
          returned: success
          type: dict
          contains:
            creatable:
              description: vGPU types that can be created on this VF now; empty when it has no room left.
              returned: success
              type: list
              elements: dict
              contains:
                id:
                  description: Type ID to write to C(current_vgpu_type).
                  returned: success
                  type: int
                  sample: 1030
                name:
                  description: Type name.
                  returned: success
                  type: str
                  sample: NVIDIA L40S-1B
            current:
              description: C(current_vgpu_type), V(0) when the VF has no vGPU.
              returned: success
              type: int
              sample: 0
        vgpu:
          description:
            - The vGPU type interface the device's vendor gives it, not the mdev bus (NVIDIA's per-VF
              C(nvidia/current_vgpu_type)), the same for every vendor - the type set on the device, if any, and
              the types it could take; V(null) for a device without one. The exports, the fleet report and the
              gpuvirt fact read this key.
          returned: success
          type: dict
          contains:
            vendor:
              description: The vendor backend whose interface it is.
              returned: success
              type: str
              sample: nvidia
            current:
              description: The vGPU type ID set on the device, V(0) when none, V(null) when unreadable.
              returned: success
              type: int
              sample: 1041
            creatable:
              description:
                - The vGPU types the device could take now, each with its type ID (C(id), an integer) and its
                  name (C(name)); empty when it has no room left, V(null) when unreadable.
              returned: success
              type: list
              elements: dict
              sample: [{"id": 1030, "name": "NVIDIA L40S-1B"}]
        critical:
          description: Why the host needs this device, empty when it does not.
          returned: success
          type: list
          elements: str
          sample: ["holds the root filesystem (/dev/nvme0n1p2)"]
        in_use_by:
          description: Processes holding the device's VFIO group (or iommufd device) open.
          returned: success
          type: list
          elements: dict
          contains:
            pid:
              description: Process ID.
              returned: success
              type: int
              sample: 4242
            comm:
              description: Process name.
              returned: success
              type: str
              sample: qemu-system-x86
    gpus:
      description: Display controllers (class 0x03) and processing accelerators (0x12), in address order.
      returned: success
      type: list
      elements: dict
      contains:
        address:
          description: Full PCI address.
          returned: success
          type: str
          sample: "0000:01:00.0"
        vendor_id:
          description: Vendor ID.
          returned: success
          type: str
          sample: 10de
        device_id:
          description: Device ID.
          returned: success
          type: str
          sample: 1e04
        name:
          description: Vendor and device name from C(pci.ids), else the class name and IDs.
          returned: success
          type: str
          sample: NVIDIA Corporation TU102 [GeForce RTX 2080 Ti]
        class:
          description: Class code.
          returned: success
          type: str
          sample: "030000"
        driver:
          description: The bound driver.
          returned: success
          type: str
          sample: nvidia
        boot_vga:
          description:
            - The kernel's C(boot_vga), as in RV(topology.devices[].boot_vga). A boot display of another
              class shows as the V(boot_display) code of RV(topology.gpus[].passthrough).
          returned: success
          type: bool
          sample: false
        is_vf:
          description: An SR-IOV virtual function.
          returned: success
          type: bool
          sample: false
        physfn:
          description: The physical function of a VF.
          returned: success
          type: str
          sample: null
        iommu_group:
          description: IOMMU group number.
          returned: success
          type: str
          sample: "2"
        mdev_parent:
          description: The GPU offers mediated device types (C(/sys/class/mdev_bus)).
          returned: success
          type: bool
          sample: false
        sriov_total_vfs:
          description: VFs the GPU supports, V(null) when it is not an SR-IOV physical function.
          returned: success
          type: int
          sample: null
        nvidia_vgpu:
          description: The GPU has the per-VF NVIDIA vGPU interface.
          returned: success
          type: bool
          sample: false
        virtualization:
          description:
            - The virtualization modes the GPU can offer on this host (physical functions only; empty for VFs
              and on unsupported architectures) - V(passthrough), then its vendor's - V(gvt-g) and V(sriov)
              (Intel), V(mxgpu) (AMD), V(vgpu) (NVIDIA). The same summary is a V(virtualization_modes) finding.
          returned: success
          type: list
          elements: dict
          contains:
            mode:
              description: The mode.
              returned: success
              type: str
              sample: gvt-g
            ready:
              description: >-
                The GPU offers it now (for V(vgpu) on an SR-IOV GPU, with all its VFs enabled, as
                M(gpuvirt.host.nvidia_vgpu) wants them).
              returned: success
              type: bool
              sample: false
            missing:
              description: What it lacks (a kernel argument, a module, a driver, a reboot), as advice.
              returned: success
              type: list
              elements: str
              sample: ["i915.enable_gvt=1 on the kernel command line and a reboot", "the kvmgt module loaded"]
            unsupported:
              description: Why the GPU cannot offer the mode at all (only then).
              returned: when the mode is impossible on this GPU
              type: str
        passthrough:
          description: Whether the GPU can be handed to a VM now.
          returned: success
          type: dict
          contains:
            viable:
              description:
                - No reason against it. V(null) when the only reasons are what cannot be told, whether the
                  IOMMU is on (V(iommu_unknown)), whether a process holds it (V(in_use_unknown)).
              returned: success
              type: bool
              sample: true
            reasons:
              description: One sentence per reason against it; empty when viable.
              returned: success
              type: list
              elements: str
              sample: ["0000:00:02.0 is the boot VGA device: the host console and firmware framebuffer use it"]
            codes:
              description:
                - Stable codes of the reasons, each once - V(architecture_unsupported), V(iommu_disabled),
                  V(iommu_unknown), V(no_iommu_group), V(behind_vmd) (it sits behind an Intel VMD controller,
                  whose requester ID its DMA carries), V(boot_vga), V(boot_display) (its DRM card is marked
                  as the boot display), V(console_framebuffer) (it drives the framebuffer the text console draws
                  on), V(firmware_framebuffer) (the firmware's framebuffer lies in its memory, see
                  above), V(doubtful_attribute) (a C(boot_vga), C(class), C(iommu_group) or C(driver) that reads
                  malformed, or a C(boot_vga) missing), V(group_shared), V(in_use), V(in_use_unknown) (the open
                  files of some process cannot be read, or C(/proc) does not list every process because of
                  C(hidepid) or a container's PID namespace, and the device is on a VFIO driver; with no other reason
                  the verdict is null, unknown), V(host_critical).
              returned: success
              type: list
              elements: str
              sample: [boot_vga]
            devices:
              description:
                - Addresses to bind to vfio-pci together, the GPU and its companion functions in its IOMMU
                  group (the other functions of its slot, or of its card behind the card's own switch; an
                  APU's GPU leaves the processor's functions beside it to the host). A companion in an IOMMU
                  group of its own (ACS between the functions, C(pcie_acs_override)) is not needed and not
                  listed, unless it is on the GPU's bus and the GPU has no reset but its bus's (no
                  C(reset_method) but C(bus), as on a multifunction GeForce or Radeon without FLR), which VFIO
                  makes only when the VM holds every function on the bus.
              returned: success
              type: list
              elements: str
              sample: ["0000:01:00.0", "0000:01:00.1", "0000:01:00.2", "0000:01:00.3"]
    mdev_parents:
      description: Devices offering mediated device types, by parent name.
      returned: success
      type: list
      elements: dict
      contains:
        parent:
          description: Name under C(/sys/class/mdev_bus), a PCI address or a virtual parent's name.
          returned: success
          type: str
          sample: "0000:b1:00.4"
        types:
          description: Supported types.
          returned: success
          type: list
          elements: dict
          contains:
            id:
              description: Type directory name, what C(mdevctl) and C(gpuvirt.host.mdev) call the type.
              returned: success
              type: str
              sample: nvidia-471
            name:
              description: C(name), V(null) when the driver gives none (GVT-g).
              returned: success
              type: str
              sample: NVIDIA A100-4C
            description:
              description: C(description), V(null) when the driver gives none.
              returned: success
              type: str
              sample: "num_heads=1, frl_config=60, framebuffer=4096M, max_resolution=4096x2160, max_instance=10"
            available_instances:
              description: Instances that can still be created, V(null) when unreadable.
              returned: success
              type: int
              sample: 1
            device_api:
              description: C(device_api).
              returned: success
              type: str
              sample: vfio-pci
    mdevs:
      description: Mediated devices that exist now, by UUID.
      returned: success
      type: list
      elements: dict
      contains:
        uuid:
          description: UUID.
          returned: success
          type: str
          sample: 6c3e1ab4-4a52-4e2c-9a3e-0a4d9c1e2f01
        parent:
          description: Parent name.
          returned: success
          type: str
          sample: "0000:b1:00.4"
        type:
          description: Type ID.
          returned: success
          type: str
          sample: nvidia-471
        iommu_group:
          description: The mdev's IOMMU group.
          returned: success
          type: str
          sample: "49"
        in_use_by:
          description: Processes holding the mdev's VFIO group or its iommufd device (/dev/vfio/devices/vfioN) open.
          returned: success
          type: list
          elements: dict
          contains:
            pid:
              description: Process ID.
              returned: success
              type: int
              sample: 31337
            comm:
              description: Process name.
              returned: success
              type: str
              sample: qemu-system-x86
    findings:
      description: Problems and advice; host-wide ones first, then by device.
      returned: success
      type: list
      elements: dict
      contains:
        severity:
          description: V(error) (GPU virtualization cannot work), V(warning), or V(info).
          returned: success
          type: str
          sample: error
        code:
          description:
            - Stable code, for example V(architecture_unsupported), V(iommu_off), V(iommu_unsupported),
              V(iommu_unknown), V(foreign_kernel_arguments), V(virtualization_modes), V(no_cpu_virtualization),
              V(kvm_unavailable), V(module_signatures_enforced), V(interrupt_remapping_off), V(acs_override),
              V(unsafe_interrupts), V(host_graphics_driver), V(firmware_framebuffer), V(no_iommu_group),
              V(no_bus_reset), V(malformed_attribute), V(unreadable_attribute), V(unreadable_device),
              V(malformed_entry), V(processes_unreadable).
          returned: success
          type: str
          sample: iommu_off
        message:
          description: What is wrong and what to do.
          returned: success
          type: str
          sample: >-
            the firmware describes an Intel IOMMU (ACPI DMAR table) but the kernel did not enable it:
            add intel_iommu=on to the kernel command line and reboot (gpuvirt.host.kernel_cmdline)
        device:
          description: The PCI address the finding is about, V(null) for host-wide ones.
          returned: success
          type: str
          sample: null
gpuvirt:
  description: What the collection keeps about this host beside its devices, below O(root).
  returned: success
  type: dict
  contains:
    state_file:
      description: Whether C(/etc/gpuvirt/host-state.json), the state the boot-time restore replays, exists.
      returned: success
      type: bool
      sample: true
    pending:
      description:
        - The boot tools (V(bootloader), V(initramfs)) a changing module's run was interrupted in; the next run
          of that module runs them again.
      returned: success
      type: list
      elements: str
      sample: []
    drained:
      description:
        - Whether a fleet rollout left the host drained (C(/etc/gpuvirt/drained)); the next rollout verifies and
          undrains it.
      returned: success
      type: bool
      sample: false
kernel_arguments:
  description:
    - One entry per O(kernel_arguments) set, in order - the set (C(present), C(absent), C(bootloader)) and either
      C(preview), what M(gpuvirt.host.kernel_cmdline) would return for it in check mode (C(changed),
      C(bootloader), C(configured), C(running), C(added), C(removed), C(reboot_required), C(regenerate_required),
      C(commands), and its C(warnings)), or C(error), why it cannot be previewed.
  returned: success
  type: list
  elements: dict
  sample:
    - present: [intel_iommu=on]
      absent: [iommu=off]
      bootloader: auto
      preview:
        changed: true
        bootloader: grub
        configured: [quiet, intel_iommu=on]
        running: [BOOT_IMAGE=/vmlinuz, quiet]
        added: [intel_iommu=on]
        removed: []
        reboot_required: true
        regenerate_required: true
        commands: [[update-grub]]
        warnings: []
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.gpuvirt.host.plugins.module_utils.errors import run_module  # noqa: E402
from ansible_collections.gpuvirt.host.plugins.module_utils.hoststate import host_markers  # noqa: E402
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect  # noqa: E402


def previews(module):
    """What kernel_cmdline would do in check mode for each set of ``kernel_arguments``; a warning every previewed
    set has (about the boot configuration itself, not about one set's change) is the module's warning."""
    if not module.params["kernel_arguments"]:
        return []
    # Imported only for previews: a plain read compiles none of the boot loaders' code.
    from ansible_collections.gpuvirt.host.plugins.module_utils.kernel_cmdline_run import preview_arguments

    answers = preview_arguments(module, module.params["root"], module.params["kernel_arguments"])
    previewed = [answer["preview"]["warnings"] for answer in answers if "preview" in answer]
    for warning in previewed[0] if previewed else []:
        if all(warning in warnings for warnings in previewed):
            module.warn(warning)
    return answers


def main():
    module = AnsibleModule(
        argument_spec={
            "root": {"type": "path", "default": "/"},
            "kernel_arguments": {
                "type": "list", "elements": "dict", "default": [],
                "options": {
                    "present": {"type": "list", "elements": "str", "default": []},
                    "absent": {"type": "list", "elements": "str", "default": []},
                    "bootloader": {"type": "str", "default": "auto"},
                },
            },
        },
        supports_check_mode=True,
    )
    root = module.params["root"]
    run_module(module, lambda: dict(changed=False, topology=detect(root), gpuvirt=host_markers(root),
                                    kernel_arguments=previews(module)))


if __name__ == "__main__":
    main()
