# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``gpuvirt.host.vfio_pci`` run in-process against fixture trees whose PCI core is simulated.

Commands (modprobe, driverctl, update-grub, update-initramfs, lsinitramfs) are recording fakes on
``PATH``; they only run when the module believes the tree is this host's ``/``, which the
``as_host`` fixture arranges. The fake update-initramfs writes the image as the list of paths it
would pack (the vfio modules named in our initramfs configuration and the modprobe.d files present
at that moment), and the fake lsinitramfs prints that list back, so the verification step reads
what the rebuild really put in.
"""

from __future__ import annotations

import os
import shutil

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import vfio, vfio_bind
from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim
from ansible_collections.gpuvirt.host.tests.sim.pci_kernel import PciKernel
from ansible_collections.gpuvirt.host.tests.unit.plugins.modules.test_kernel_cmdline import names

MODULES = ["kvm_intel", "i915", "nvidia", "snd_hda_intel", "xhci_pci", "e1000e", "nvme", "vfio_pci"]
RELEASE = "6.8.0-45-generic"
GPU = "0000:01:00.0"
GPU_FUNCTIONS = ("0000:01:00.0", "0000:01:00.1", "0000:01:00.2", "0000:01:00.3")
GPU_IDS = ["10de:10f7", "10de:1ad6", "10de:1ad7", "10de:1e04"]
HOST_DRIVERS = {"0000:01:00.0": "nvidia", "0000:01:00.1": "snd_hda_intel", "0000:01:00.2": "xhci_hcd",
                "0000:01:00.3": "nvidia-gpu"}
MODPROBE = "etc/modprobe.d/gpuvirt-vfio.conf"
MODULES_LOAD = "etc/modules-load.d/gpuvirt-vfio.conf"
INITRAMFS_CONFIG = "usr/share/initramfs-tools/modules.d/gpuvirt-vfio"
IMAGE = "boot/initrd.img-" + RELEASE

UPDATE_INITRAMFS_BODY = """
root = {root!r}
release = sys.argv[sys.argv.index("-k") + 1]
paths = ["usr/lib/modules/%s/kernel/drivers/nvme/host/nvme.ko" % release]
config = os.path.join(root, {config!r})
if os.path.exists(config):
    for line in open(config):
        if line.strip() and not line.startswith("#"):
            paths.append("usr/lib/modules/%s/kernel/drivers/vfio/%s.ko" % (release, line.strip().replace("_", "-")))
for name in sorted(os.listdir(os.path.join(root, "etc/modprobe.d"))) if os.path.isdir(
        os.path.join(root, "etc/modprobe.d")) else []:
    paths.append("etc/modprobe.d/" + name)
with open(os.path.join(root, "boot/initrd.img-" + release), "w") as image:
    image.write("\\n".join(paths) + "\\n")
"""
LSINITRAMFS_BODY = """
sys.stdout.write(open(sys.argv[1]).read())
"""
MODPROBE_BODY = """
root = {root!r}
if sys.argv[1:] == ["vfio-pci"]:
    driver = os.path.join(root, "sys/bus/pci/drivers/vfio-pci")
    os.makedirs(driver, exist_ok=True)
    for name in ("bind", "unbind", "new_id", "remove_id"):
        open(os.path.join(driver, name), "w").close()
"""
# driverctl --noprobe set-override ADDR DRIVER / unset-override ADDR: save or drop the override file
# and set or clear driver_override, without reprobing.
DRIVERCTL_BODY = """
root = {root!r}
args = [a for a in sys.argv[1:] if a != "--noprobe"]
path = os.path.join(root, "etc/driverctl.d/pci-" + args[1])
override = os.path.join(root, "sys/bus/pci/devices", args[1], "driver_override")
if args[0] == "set-override":
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").write(args[2] + "\\n")
    open(override, "w").write(args[2] + "\\n")
elif args[0] == "unset-override":
    os.unlink(path)
    open(override, "w").write("(null)\\n")
"""


@pytest.fixture
def desktop(make_host):
    """desktop_dgpu with vfio-pci loaded as a module: iGPU boot VGA, RTX 2080 Ti + 3 functions in group 2."""
    return make_host("desktop_dgpu", kernel={"modules": MODULES})


def snapshot(root):
    """Every file's content and every link's target below ``root`` (the simulator's notes aside)."""
    state = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            if relative == ".kernel-sim.json":
                continue
            if os.path.islink(path):
                state[relative] = "-> " + os.readlink(path)
            elif os.path.isfile(path):
                with open(path, "rb") as handle:
                    state[relative] = handle.read()
    return state


def read(root, relative):
    path = os.path.join(root, relative)
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return handle.read()


def drivers(root, addresses=GPU_FUNCTIONS):
    return {address: vfio_bind.read_driver(root, address) for address in addresses}


def warnings(result):
    return [w["event"]["msg"] if isinstance(w, dict) else w for w in result.get("warnings", [])]


def install_initramfs_tools(root, fake_commands, release=RELEASE):
    """A Debian-style initramfs-tools host with an image for the running kernel."""
    for name in ("update-initramfs", "mkinitramfs"):
        path = os.path.join(root, "usr/sbin", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write("#!/bin/sh\nexit 1\n")
        os.chmod(path, 0o755)
    for relative in ("boot/vmlinuz-" + release, "boot/initrd.img-" + release):
        os.makedirs(os.path.join(root, "boot"), exist_ok=True)
        open(os.path.join(root, relative), "w").close()
    fake_commands.install("update-initramfs", body=UPDATE_INITRAMFS_BODY.format(root=root, config=INITRAMFS_CONFIG))
    fake_commands.install("lsinitramfs", body=LSINITRAMFS_BODY)


def calls(fake_commands, name):
    return [call for call in fake_commands.calls() if call[0] == name]


# ------------------------------------------------------------------------------- bind and idempotence


def test_binds_the_gpu_with_its_functions_now_and_at_boot(desktop, vfio_pci):
    result = vfio_pci(desktop, devices=["GeForce RTX 2080 Ti"])
    assert result["rc"] == 0 and result["changed"] is True, result
    assert drivers(desktop) == {address: "vfio-pci" for address in GPU_FUNCTIONS}
    assert os.path.exists(os.path.join(desktop, "dev/vfio/2"))
    devices = result["devices"]
    assert list(devices) == list(GPU_FUNCTIONS)
    assert devices[GPU]["selected_by"] == ["GeForce RTX 2080 Ti"] and devices[GPU]["companion_of"] is None
    assert devices["0000:01:00.1"]["companion_of"] == GPU and devices["0000:01:00.1"]["selected_by"] == []
    assert {a: (d["driver_before"], d["driver_after"]) for a, d in devices.items()} == {
        a: (HOST_DRIVERS[a], "vfio-pci") for a in GPU_FUNCTIONS
    }
    assert all(d["iommu_group"] == "2" for d in devices.values())
    assert result["persistence"] == "modprobe" and result["ids"] == GPU_IDS
    assert result["reboot_required"] is False and result["reboot_reasons"] == []
    conf = read(desktop, MODPROBE)
    assert "options vfio-pci ids=10de:10f7,10de:1ad6,10de:1ad7,10de:1e04\n" in conf
    assert "softdep nvidia pre: vfio-pci\n" in conf and "softdep snd_hda_intel pre: vfio-pci\n" in conf
    assert read(desktop, MODULES_LOAD).endswith("vfio-pci\n")
    assert result["files_changed"] == ["/" + MODPROBE, "/" + MODULES_LOAD]


def test_an_arc_card_goes_with_its_audio_controller_behind_the_cards_switch(make_host, vfio_pci):
    # arc_desktop: the A770 (03:00.0) and its audio controller (04:00.0) sit behind two downstream ports
    # of the card's own switch, in one IOMMU group with the switch and the root port.
    root = make_host("arc_desktop", kernel={"modules": MODULES})
    functions = ("0000:03:00.0", "0000:04:00.0")
    result = vfio_pci(root, devices=["Arc A770"])
    assert result["rc"] == 0 and result["changed"] is True, result
    assert drivers(root, functions) == {address: "vfio-pci" for address in functions}
    assert result["devices"]["0000:04:00.0"]["companion_of"] == "0000:03:00.0"
    assert result["ids"] == ["8086:4f90", "8086:56a0"]
    conf = read(root, MODPROBE)
    assert "options vfio-pci ids=8086:4f90,8086:56a0\n" in conf
    assert "softdep i915 pre: vfio-pci\n" in conf and "softdep snd_hda_intel pre: vfio-pci\n" in conf
    # The switch's ports stay with pcieport.
    ports = ("0000:01:00.0", "0000:02:01.0", "0000:02:04.0")
    assert drivers(root, ports) == dict.fromkeys(ports, "pcieport")
    again = make_host("arc_desktop", kernel={"modules": MODULES})
    assert_second_run_changes_nothing(vfio_pci, again, devices=["Arc A770"])


def assert_second_run_changes_nothing(vfio_pci, root, **args):
    """Run twice; the second run writes nothing, reports nothing and leaves the tree alone."""
    kernel = PciKernel(KernelSim(root))
    assert vfio_pci(root, kernel=kernel, **args)["changed"] is True
    before = snapshot(root)
    del kernel.sim.writes[:]
    again = vfio_pci(root, kernel=kernel, diff=True, **args)
    assert again["rc"] == 0 and again["changed"] is False, again
    assert again["diff"] == [] and again["files_changed"] == [] and again["commands"] == []
    assert kernel.sim.writes == []
    assert snapshot(root) == before
    return again


def test_a_second_run_changes_nothing(desktop, vfio_pci):
    again = assert_second_run_changes_nothing(vfio_pci, desktop, devices=[GPU])
    assert all(d["driver_before"] == d["driver_after"] == "vfio-pci" for d in again["devices"].values())


def test_an_empty_device_list_changes_nothing_and_says_so(desktop, vfio_pci):
    before = snapshot(desktop)
    for state, verb in (("present", "bind"), ("absent", "hand back")):
        kernel = PciKernel(KernelSim(desktop))
        result = vfio_pci(desktop, kernel=kernel, devices=[], state=state)
        assert result["changed"] is False and kernel.sim.writes == [] and snapshot(desktop) == before
        assert any("devices is empty, so there is nothing to %s" % verb in w for w in warnings(result)), result


def test_check_mode_predicts_the_real_run_exactly(desktop, vfio_pci):
    kernel = PciKernel(KernelSim(desktop))
    before = snapshot(desktop)
    predicted = vfio_pci(desktop, kernel=kernel, check_mode=True, diff=True, devices=["10de:1e04"])
    assert predicted["changed"] is True
    assert kernel.sim.writes == [] and snapshot(desktop) == before
    real = vfio_pci(desktop, kernel=kernel, diff=True, devices=["10de:1e04"])
    for key in ("changed", "devices", "files_changed", "diff", "ids", "reboot_required", "commands", "initramfs"):
        assert predicted[key] == real[key], key


def test_one_call_handles_many_devices_and_composes_with_earlier_calls(make_host, vfio_pci):
    root = make_host(
        "desktop_dgpu",
        kernel={"modules": MODULES + ["amdgpu"]},
        add_devices=[
            {"address": "00:01.1", "ids": "8086:a72d", "class": "060400", "driver": "pcieport", "group": 8},
            {"address": "05:00.0", "parent": "00:01.1", "ids": "1002:73bf", "class": "030000", "driver": "amdgpu",
             "group": 8, "vendor_name": "Advanced Micro Devices, Inc. [AMD/ATI]",
             "device_name": "Navi 21 [Radeon RX 6800/6800 XT / 6900 XT]"},
            {"address": "05:00.1", "parent": "00:01.1", "ids": "1002:ab28", "class": "040300",
             "driver": "snd_hda_intel", "group": 8, "device_name": "Navi 21/23 HDMI/DP Audio Controller"},
        ],
    )
    first = vfio_pci(root, devices=["00000000:01:00.0"])
    assert first["ids"] == GPU_IDS
    second = vfio_pci(root, devices=["Radeon RX 6800/6800 XT / 6900 XT"], diff=True)
    assert second["changed"] is True and list(second["devices"]) == ["0000:05:00.0", "0000:05:00.1"]
    assert second["ids"] == sorted(GPU_IDS + ["1002:73bf", "1002:ab28"])
    assert vfio.modprobe_ids(read(root, MODPROBE)) == second["ids"]
    both = vfio_pci(root, devices=["01:00.0", "05:00.0", "10de:1e04"])
    assert both["changed"] is False and len(both["devices"]) == 6
    assert both["devices"][GPU]["selected_by"] == ["01:00.0", "10de:1e04"]


# ----------------------------------------------------------------------------------- bad selectors


@pytest.mark.parametrize(
    "selector, message",
    [
        ("0000:09:00.0", "no PCI device 0000:09:00.0 on this host"),
        ("dead:beef", "'dead:beef' matches no PCI device on this host"),
        ("0", "looks like an index"),
        ("Voodoo", "'Voodoo' matches no PCI device on this host"),
        ("TU102", "matches 4 different models"),
    ],
)
def test_bad_selectors_fail_and_change_nothing(desktop, vfio_pci, selector, message):
    kernel = PciKernel(KernelSim(desktop))
    before = snapshot(desktop)
    result = vfio_pci(desktop, kernel=kernel, devices=[selector, GPU])
    assert result["rc"] == 1 and result["changed"] is False
    assert message in result["msg"] and "nothing was changed" in result["msg"]
    assert kernel.sim.writes == [] and snapshot(desktop) == before


# ------------------------------------------------------------------------------------------ guards


def assert_refused(result, kernel, root, before, code, *fragments):
    assert result["rc"] == 1 and result["changed"] is False, result
    assert code in [r["code"] for r in result["refusals"]]
    assert result["msg"].startswith("refusing to change anything")
    for fragment in fragments:
        assert fragment in result["msg"]
    assert kernel.sim.writes == [] and snapshot(root) == before


def test_the_boot_vga_is_refused(desktop, vfio_pci):
    kernel = PciKernel(KernelSim(desktop))
    before = snapshot(desktop)
    result = vfio_pci(desktop, kernel=kernel, devices=["UHD Graphics 770"])
    assert_refused(result, kernel, desktop, before, "boot_vga", "0000:00:02.0", "boot VGA")


def test_a_gpu_driving_the_console_is_refused(desktop, vfio_pci):
    graphics = os.path.join(desktop, "sys/class/graphics/fb0")
    os.makedirs(graphics)
    os.symlink(os.path.realpath(os.path.join(desktop, "sys/bus/pci/devices", GPU)), os.path.join(graphics, "device"))
    kernel = PciKernel(KernelSim(desktop))
    before = snapshot(desktop)
    result = vfio_pci(desktop, kernel=kernel, devices=[GPU])
    assert_refused(result, kernel, desktop, before, "console_framebuffer", "framebuffer fb0")


def test_a_shared_group_is_refused_naming_the_other_device(make_host, vfio_pci):
    root = make_host("desktop_dgpu_nic", kernel={"modules": MODULES + ["r8169"]}, network={"default_route": "eno1"})
    kernel = PciKernel(KernelSim(root))
    before = snapshot(root)
    result = vfio_pci(root, kernel=kernel, devices=[GPU])
    assert_refused(result, kernel, root, before, "group_shared",
                   "IOMMU group 2 of 0000:01:00.0, 0000:01:00.1, 0000:01:00.2, 0000:01:00.3 also holds "
                   "0000:03:00.0 [10ec:8125] Realtek Semiconductor Co., Ltd. RTL8125 2.5GbE Controller (driver r8169)")
    assert [r["code"] for r in result["refusals"]] == ["group_shared"]


def test_a_group_with_the_default_route_nic_is_refused(make_host, vfio_pci):
    root = make_host("desktop_dgpu_nic", kernel={"modules": MODULES + ["r8169"]})
    kernel = PciKernel(KernelSim(root))
    before = snapshot(root)
    result = vfio_pci(root, kernel=kernel, devices=[GPU, "03:00.0"])
    assert_refused(result, kernel, root, before, "host_critical", "NIC of the default route (enp3s0)")


def test_a_group_with_the_nic_of_an_nfs_mount_is_refused_unless_forced(make_host, vfio_pci):
    # The default route is on eno1; enp3s0, in the GPU's group, reaches the NFS server of /mnt/pve/nas.
    root = make_host("desktop_dgpu_nic", kernel={"modules": MODULES + ["r8169"]}, network={"default_route": "eno1"})
    with open(os.path.join(root, "proc/net/route"), "a", encoding="utf-8") as handle:
        handle.write("enp3s0\t000010AC\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n")  # 172.16.0.0/24
    with open(os.path.join(root, "proc/self/mountinfo"), "a", encoding="utf-8") as handle:
        handle.write("40 1 0:40 / /mnt/pve/nas rw,relatime shared:30 - nfs4 172.16.0.10:/vms "
                     "rw,vers=4.2,hard,proto=tcp,sec=sys,clientaddr=172.16.0.2,local_lock=none,addr=172.16.0.10\n")
    kernel = PciKernel(KernelSim(root))
    before = snapshot(root)
    result = vfio_pci(root, kernel=kernel, devices=[GPU, "03:00.0"])
    assert_refused(result, kernel, root, before, "host_critical",
                   "NIC of network storage in use: the NFS mount on /mnt/pve/nas (172.16.0.10) (enp3s0)")

    forced = vfio_pci(root, devices=[GPU, "03:00.0"], persistent=False, force=True)
    assert forced["changed"] is True and forced["rc"] == 0, forced


def test_the_root_disk_controller_is_refused(desktop, vfio_pci):
    kernel = PciKernel(KernelSim(desktop))
    before = snapshot(desktop)
    result = vfio_pci(desktop, kernel=kernel, devices=["02:00.0"])
    assert_refused(result, kernel, desktop, before, "host_critical", "holds the root filesystem")


def test_a_controller_under_the_zfs_root_pool_is_refused_unless_forced(make_host, vfio_pci):
    # Proxmox's ZFS root mirrored over the NVMe SSD and a SATA disk: the AHCI controller holds half of it.
    root = make_host(
        "desktop_dgpu",
        kernel={"modules": MODULES + ["ahci"]},
        disks={"nvme0n1": {"device": "02:00.0", "partitions": 3}, "sda": {"device": "00:17.0", "partitions": 3}},
        root_fs=None,
        zfs={"root": "rpool/ROOT/pve-1", "pools": {"rpool": ["nvme0n1p3", "sda3"]}},
        patch_devices={"00:17.0": {"group": 11}},
    )
    kernel = PciKernel(KernelSim(root))
    before = snapshot(root)
    result = vfio_pci(root, kernel=kernel, devices=["00:17.0"], persistent=False)
    assert_refused(result, kernel, root, before, "host_critical", "0000:00:17.0 [8086:7ae2]",
                   "holds the root filesystem (rpool/ROOT/pve-1); binding it to vfio-pci would take it from the host")

    forced = vfio_pci(root, devices=["00:17.0"], persistent=False, force=True)
    assert forced["changed"] is True and forced["rc"] == 0, forced
    assert any("holds the root filesystem (rpool/ROOT/pve-1)" in w for w in warnings(forced))


@pytest.fixture
def vm_running(make_host):
    """The GPU and its functions on vfio-pci, group 2 held open by QEMU."""
    return make_host(
        "desktop_dgpu",
        kernel={"modules": MODULES},
        patch_devices={a: {"driver": "vfio-pci", "driver_override": "vfio-pci"} for a in GPU_FUNCTIONS},
        processes=[{"pid": 4242, "comm": "qemu-system-x86", "holds": [2]}],
    )


def test_handing_back_a_device_in_use_is_refused(vm_running, vfio_pci):
    kernel = PciKernel(KernelSim(vm_running), host_drivers=HOST_DRIVERS)
    before = snapshot(vm_running)
    result = vfio_pci(vm_running, kernel=kernel, devices=[GPU], state="absent")
    assert_refused(result, kernel, vm_running, before, "in_use",
                   "qemu-system-x86 (pid 4242) holds /dev/vfio/2 open", "stop the VM first")
    assert kernel.blocked == []


def test_binding_what_a_vm_already_uses_is_a_quiet_no_op(vm_running, vfio_pci):
    result = vfio_pci(vm_running, devices=[GPU], persistent=False)
    assert result["rc"] == 0 and result["changed"] is False and result["refusals"] == []


def test_ids_that_would_catch_a_card_staying_with_the_host_are_refused(make_host, vfio_pci):
    root = make_host(
        "desktop_dgpu",
        kernel={"modules": MODULES},
        add_devices=[{"address": "05:00.0", "ids": "10de:1e04", "class": "030000", "driver": "nvidia", "group": 9}],
    )
    kernel = PciKernel(KernelSim(root))
    before = snapshot(root)
    result = vfio_pci(root, kernel=kernel, devices=[GPU])
    assert_refused(result, kernel, root, before, "id_shared", "0000:05:00.0", "persistence: driverctl")
    assert vfio_pci(root, kernel=kernel, devices=[GPU], persistent=False)["changed"] is True


def test_force_goes_ahead_and_reports_what_it_overrode(desktop, vfio_pci):
    result = vfio_pci(desktop, devices=["00:02.0"], force=True, persistent=False)
    assert result["rc"] == 0 and result["changed"] is True
    assert [r["code"] for r in result["refusals"]] == ["boot_vga"]
    assert any("force: true: going ahead although" in w for w in warnings(result))
    assert vfio_bind.read_driver(desktop, "0000:00:02.0") == "vfio-pci"


# ----------------------------------------------------------------------- IOMMU off, runtime off, failures


def test_with_the_iommu_off_the_boot_configuration_is_written_and_a_reboot_required(make_host, vfio_pci):
    root = make_host("iommu_disabled", kernel={"modules": MODULES})
    kernel = PciKernel(KernelSim(root))
    result = vfio_pci(root, kernel=kernel, devices=[GPU])
    assert result["rc"] == 0 and result["changed"] is True, result
    assert kernel.sim.writes == []
    assert drivers(root) == HOST_DRIVERS
    assert result["iommu_enabled"] is False
    assert result["reboot_required"] is True
    assert "the IOMMU is off in the running kernel" in result["reboot_reasons"][0]
    assert vfio.modprobe_ids(read(root, MODPROBE)) == GPU_IDS
    assert all(d["driver_after"] == d["driver_before"] and d["changed"] is False for d in result["devices"].values())
    assert any("IOMMU groups are not known yet" in w for w in warnings(result))
    again = vfio_pci(root, kernel=kernel, devices=[GPU])
    assert again["changed"] is False and again["reboot_required"] is True


# The second AMD GPU back on its host drivers, to be taken again.
AMD_ON_HOST = {"0c:00.0": {"driver": "amdgpu", "driver_override": None},
               "0c:00.1": {"driver": "snd_hda_intel", "driver_override": None}}


@pytest.mark.parametrize(
    ("host", "device", "patch", "named", "never"),
    [
        ("iommu_disabled", GPU, {}, "intel_iommu=on", ("amd_iommu",)),
        ("amd_host", "0c:00.0", AMD_ON_HOST, "AMD-Vi needs no kernel argument", ("amd_iommu=on", "intel_iommu")),
        ("grace_hopper", "0009:01:00.0", {}, "arm64 kernel turns the SMMU on with no argument",
         ("intel_iommu", "amd_iommu")),
    ],
)
def test_with_the_iommu_off_the_advice_fits_the_host(make_host, vfio_pci, host, device, patch, named, never):
    root = make_host(host, iommu={"enabled": False}, kernel={"modules": MODULES}, patch_devices=patch)
    install_driverctl(root)  # each device kept on its driver by address (the AMD GPUs' audio ID is shared)
    result = vfio_pci(root, devices=[device], persistence="driverctl", check_mode=True)
    assert result["rc"] == 0, result
    reason = result["reboot_reasons"][0]
    assert "the IOMMU is off in the running kernel" in reason and named in reason, reason
    assert not [word for word in never if word in reason], reason


def test_runtime_false_only_configures_the_next_boot(desktop, vfio_pci):
    kernel = PciKernel(KernelSim(desktop))
    result = vfio_pci(desktop, kernel=kernel, devices=[GPU], runtime=False)
    assert result["changed"] is True and kernel.sim.writes == []
    assert result["reboot_required"] is True and "runtime: false" in result["reboot_reasons"][0]
    assert drivers(desktop) == HOST_DRIVERS


def test_a_bind_that_does_not_take_effect_fails_and_is_undone(desktop, vfio_pci):
    kernel = PciKernel(KernelSim(desktop), failing_probe=["0000:01:00.1"])
    result = vfio_pci(desktop, kernel=kernel, devices=[GPU])
    assert result["rc"] == 1
    assert "binding 0000:01:00.1 to vfio-pci was accepted by the kernel but did not take effect" in result["msg"]
    assert "now bound to snd_hda_intel" in result["msg"]
    assert "put back: 0000:01:00.0 to nvidia; nothing was changed" in result["msg"], result["msg"]
    assert result["changed"] is False  # 01:00.0, bound before the audio function failed, is back on nvidia
    assert drivers(desktop) == HOST_DRIVERS
    assert read(desktop, MODPROBE) is None  # nothing persisted for a binding that does not work


def test_a_group_binds_all_or_nothing(desktop, vfio_pci):
    """The xHCI function, third of four, fails to probe under vfio-pci: the GPU and its audio function,
    already moved, go back to their host drivers and the host is as it was."""
    before = snapshot(desktop)
    kernel = PciKernel(KernelSim(desktop), failing_probe=["0000:01:00.2"])
    result = vfio_pci(desktop, kernel=kernel, devices=[GPU])
    assert result["rc"] == 1 and result["changed"] is False, result
    message = result["msg"]
    assert message.startswith("binding 0000:01:00.2 to vfio-pci was accepted by the kernel but did not take effect")
    assert "put back: 0000:01:00.0 to nvidia, 0000:01:00.1 to snd_hda_intel; nothing was changed" in message, message
    assert drivers(desktop) == HOST_DRIVERS
    assert all(vfio_bind.read_override(desktop, a) is None for a in GPU_FUNCTIONS)
    assert not os.path.exists(os.path.join(desktop, "dev/vfio/2"))
    assert snapshot(desktop) == before
    assert {a: (d["driver_after"], d["changed"]) for a, d in result["devices"].items()} == {
        a: (HOST_DRIVERS[a], False) for a in GPU_FUNCTIONS
    }
    assert result["files_changed"] == [] and result["reboot_required"] is False


def test_a_device_that_cannot_be_put_back_is_named_and_the_run_changed(desktop, vfio_pci):
    """The audio function, bound before the xHCI function fails, cannot leave vfio-pci again (a VM opened
    the group meanwhile): it is named with its state, and the run reports the change."""
    kernel = PciKernel(KernelSim(desktop), failing_probe=["0000:01:00.2"], busy_unbind=["0000:01:00.1"])
    result = vfio_pci(desktop, kernel=kernel, devices=[GPU])
    assert result["rc"] == 1 and result["changed"] is True, result
    message = result["msg"]
    assert message.startswith("binding 0000:01:00.2 to vfio-pci")
    assert "put back: 0000:01:00.0 to nvidia;" in message, message
    assert "could not be put back: 0000:01:00.1 (handing 0000:01:00.1 back to its host driver failed" in message
    assert "now on vfio-pci with driver_override vfio-pci; it was on snd_hda_intel)" in message, message
    assert "The host was changed" in message, message
    assert "nothing was changed" not in message
    assert drivers(desktop) == dict(HOST_DRIVERS, **{"0000:01:00.1": "vfio-pci"})
    assert result["devices"]["0000:01:00.1"]["driver_after"] == "vfio-pci"
    assert result["devices"]["0000:01:00.1"]["changed"] is True
    assert read(desktop, MODPROBE) is None


def test_after_a_group_put_back_check_mode_and_the_next_runs_are_as_before(desktop, vfio_pci):
    """A run whose devices were put back leaves nothing behind: check mode predicts the same change as on
    the untouched host, the next run (the failure gone) binds the group, and the one after changes nothing."""
    untouched = vfio_pci(desktop, check_mode=True, diff=True, devices=[GPU])
    failing = PciKernel(KernelSim(desktop), failing_probe=["0000:01:00.2"])
    assert vfio_pci(desktop, kernel=failing, devices=[GPU])["changed"] is False
    predicted = vfio_pci(desktop, check_mode=True, diff=True, devices=[GPU])
    for key in ("changed", "devices", "files_changed", "diff", "ids", "reboot_required", "commands"):
        assert predicted[key] == untouched[key], key
    state = failing.sim.load()
    state["pci"]["failing_probe"] = []  # the cause of the failure is fixed
    failing.sim.save(state)
    again = assert_second_run_changes_nothing(vfio_pci, desktop, devices=[GPU])
    assert drivers(desktop) == {address: "vfio-pci" for address in GPU_FUNCTIONS}
    assert all(d["driver_before"] == d["driver_after"] == "vfio-pci" for d in again["devices"].values())


def test_a_module_loaded_before_a_failed_bind_stays_loaded_and_the_run_changed(
    make_host, vfio_pci, as_host, fake_commands
):
    root = make_host("desktop_dgpu")
    fake_commands.install("modprobe", body=MODPROBE_BODY.format(root=root))
    kernel = PciKernel(KernelSim(root), failing_probe=["0000:01:00.2"])
    result = vfio_pci(root, kernel=kernel, devices=[GPU], persistent=False)
    assert result["rc"] == 1 and result["changed"] is True, result
    assert "0000:01:00.1 to snd_hda_intel; the vfio-pci module loaded by this run stays loaded" in result["msg"]
    assert drivers(root) == HOST_DRIVERS


def test_vfio_pci_not_loaded_in_a_tree_fails_cleanly(make_host, vfio_pci):
    root = make_host("desktop_dgpu")
    before = snapshot(root)
    result = vfio_pci(root, devices=[GPU])
    assert result["rc"] == 1 and result["changed"] is False
    assert "vfio-pci driver is not loaded" in result["msg"]
    assert snapshot(root) == before


def test_vfio_pci_is_loaded_with_modprobe_on_the_host(make_host, vfio_pci, as_host, fake_commands):
    root = make_host("desktop_dgpu")
    fake_commands.install("modprobe", body=MODPROBE_BODY.format(root=root))
    predicted = vfio_pci(root, check_mode=True, devices=[GPU], persistent=False)
    assert names(predicted["commands"]) == [["modprobe", "vfio-pci"]] and fake_commands.calls() == []
    result = vfio_pci(root, devices=[GPU], persistent=False)
    assert result["rc"] == 0, result
    assert result["commands"] == predicted["commands"], "check mode names the program the run runs"
    assert calls(fake_commands, "modprobe") == [["modprobe", "vfio-pci"]]
    assert drivers(root) == {address: "vfio-pci" for address in GPU_FUNCTIONS}


@pytest.mark.parametrize("error", ["Key was rejected by service", "Required key not available"])
def test_vfio_pci_refused_for_its_signature_says_to_sign_it(make_host, vfio_pci, as_host, fake_commands, error):
    root = make_host("desktop_dgpu", boot={"secure_boot": True})
    fake_commands.install("modprobe", stderr="modprobe: ERROR: could not insert 'vfio_pci': %s\n" % error, rc=1)
    before = snapshot(root)
    result = vfio_pci(root, devices=[GPU], persistent=False)
    assert result["rc"] == 1, result
    assert result["msg"].startswith("loading the vfio-pci module failed: ")
    assert (" vfio-pci exited with 1: modprobe: ERROR: could not insert 'vfio_pci': %s; vfio_pci is not signed "
            "with a key the kernel trusts, and Secure Boot, lockdown or module signature enforcement is on, so the "
            "kernel refused it; nothing else is wrong with it. Sign vfio_pci with an enrolled key"
            % error) in result["msg"]
    assert "mokutil --import" in result["msg"]
    assert snapshot(root) == before


# --------------------------------------------------------------------------------------- state: absent


def test_absent_hands_the_devices_back_and_removes_the_boot_configuration(desktop, vfio_pci):
    kernel = PciKernel(KernelSim(desktop))
    vfio_pci(desktop, kernel=kernel, devices=[GPU])
    predicted = vfio_pci(desktop, kernel=kernel, check_mode=True, diff=True, devices=[GPU], state="absent")
    result = vfio_pci(desktop, kernel=kernel, diff=True, devices=[GPU], state="absent")
    assert result["rc"] == 0 and result["changed"] is True, result
    assert drivers(desktop) == HOST_DRIVERS
    assert all(vfio_bind.read_override(desktop, a) is None for a in GPU_FUNCTIONS)
    assert read(desktop, MODPROBE) is None and read(desktop, MODULES_LOAD) is None
    assert result["ids"] == [] and result["reboot_required"] is False
    assert {a: d["driver_after"] for a, d in result["devices"].items()} == HOST_DRIVERS
    for key in ("changed", "files_changed", "diff", "ids", "reboot_required"):
        assert predicted[key] == result[key], key
    again = vfio_pci(desktop, kernel=kernel, devices=[GPU], state="absent")
    assert again["changed"] is False


def test_absent_hands_a_group_back_all_or_nothing(desktop, vfio_pci):
    """The xHCI function cannot leave vfio-pci: the GPU and its audio function, already handed to their
    host drivers, are bound to vfio-pci again, so the group stays whole for a VM and the boot
    configuration still says vfio-pci."""
    vfio_pci(desktop, devices=[GPU])
    before = snapshot(desktop)
    kernel = PciKernel(KernelSim(desktop), busy_unbind=["0000:01:00.2"])
    result = vfio_pci(desktop, kernel=kernel, devices=[GPU], state="absent")
    assert result["rc"] == 1 and result["changed"] is False, result
    message = result["msg"]
    assert message.startswith("handing 0000:01:00.2 back to its host driver failed"), message
    # The xHCI function never left (its unbind failed before its override was touched).
    put_back = ", ".join("%s to vfio-pci" % address for address in GPU_FUNCTIONS[:2])
    assert "put back: %s; nothing was changed" % put_back in message, message
    assert drivers(desktop) == {address: "vfio-pci" for address in GPU_FUNCTIONS}
    assert all(vfio_bind.read_override(desktop, a) == "vfio-pci" for a in GPU_FUNCTIONS)
    assert snapshot(desktop) == before
    assert vfio.modprobe_ids(read(desktop, MODPROBE)) == GPU_IDS


def test_absent_after_a_boot_that_bound_them_by_id(make_host, vfio_pci):
    """After a reboot vfio-pci holds the devices through its ID table, not an override: handing
    them back must take the IDs out of the table, or the reprobe gives them straight back."""
    root = make_host(
        "desktop_dgpu",
        kernel={"modules": MODULES},
        patch_devices={a: {"driver": "vfio-pci"} for a in GPU_FUNCTIONS},
        files={MODPROBE: vfio.render_modprobe_conf(GPU_IDS)},
        # The host drivers are loaded, only bound to nothing of this card: give them their directories.
        add_devices=[
            {"address": "06:00.0", "ids": "10de:1eb8", "class": "030200", "driver": "nvidia", "group": 11},
            {"address": "06:00.3", "ids": "10de:1ad7", "class": "0c8000", "driver": "nvidia-gpu", "group": 11},
        ],
    )
    kernel = PciKernel(KernelSim(root), host_drivers=HOST_DRIVERS, vfio_ids=GPU_IDS)
    runtime_only = vfio_pci(root, kernel=kernel, devices=[GPU], state="absent", persistent=False)
    assert runtime_only["rc"] == 0, runtime_only
    assert drivers(root) == HOST_DRIVERS
    assert vfio.modprobe_ids(read(root, MODPROBE)) == GPU_IDS  # persistent: false leaves the boot alone
    again = vfio_pci(root, kernel=kernel, devices=[GPU], persistent=False)
    assert again["changed"] is True and drivers(root) == {a: "vfio-pci" for a in GPU_FUNCTIONS}


def test_absent_keeps_the_ids_of_other_devices(make_host, vfio_pci):
    root = make_host("desktop_dgpu", kernel={"modules": MODULES},
                     files={MODPROBE: "options vfio-pci ids=10de:1e04,10de:10f7,1002:73bf\n"})
    result = vfio_pci(root, devices=[GPU], state="absent")
    assert result["ids"] == ["1002:73bf"]
    assert vfio.modprobe_ids(read(root, MODPROBE)) == ["1002:73bf"]


def two_cards_by_id(make_host, **files):
    """Two cards of one model, both on vfio-pci through its ID in our modprobe.d file."""
    return make_host(
        "desktop_dgpu",
        kernel={"modules": MODULES},
        patch_devices={"01:00.0": {"driver": "vfio-pci"}},
        add_devices=[{"address": "05:00.0", "ids": "10de:1e04", "class": "030000", "driver": "vfio-pci", "group": 9}],
        files=dict(files, **{MODPROBE: "options vfio-pci ids=10de:1e04\n"}),
    )


def test_handing_back_one_of_two_cards_bound_by_id_is_refused(make_host, vfio_pci):
    root = two_cards_by_id(make_host)
    kernel = PciKernel(KernelSim(root), host_drivers={GPU: "nvidia"})
    before = snapshot(root)
    result = vfio_pci(root, kernel=kernel, devices=[GPU], companions=False, state="absent")
    assert_refused(result, kernel, root, before, "id_shared", "0000:05:00.0", "release them together")


def test_handing_back_one_of_two_cards_by_id_goes_when_the_other_has_its_own_override(make_host, vfio_pci):
    # The card that stays was moved to a per-address driverctl override: the ID no longer keeps it, so the
    # ID can go with the card handed back.
    root = two_cards_by_id(make_host, **{"etc/driverctl.d/pci-0000:05:00.0": "vfio-pci\n"})
    kernel = PciKernel(KernelSim(root), host_drivers={GPU: "nvidia"})
    result = vfio_pci(root, kernel=kernel, devices=[GPU], companions=False, state="absent")
    assert result["rc"] == 0 and result["changed"], result
    assert vfio.modprobe_ids(read(root, MODPROBE)) == []
    assert read(root, "etc/driverctl.d/pci-0000:05:00.0") == "vfio-pci\n"


# ----------------------------------------------------------------------------------------- driverctl


def install_driverctl(root):
    path = os.path.join(root, "usr/sbin/driverctl")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write("#!/bin/sh\nexit 1\n")
    os.chmod(path, 0o755)


def test_driverctl_in_a_tree_writes_one_override_per_address(desktop, vfio_pci):
    install_driverctl(desktop)
    result = vfio_pci(desktop, devices=[GPU], persistence="driverctl", diff=True)
    assert result["rc"] == 0, result
    for address in GPU_FUNCTIONS:
        assert read(desktop, "etc/driverctl.d/pci-" + address) == "vfio-pci\n"
    assert "/etc/driverctl.d/pci-0000:01:00.3" in result["files_changed"]
    assert read(desktop, MODPROBE) is None and result["ids"] == []
    assert vfio_pci(desktop, devices=[GPU], persistence="driverctl")["changed"] is False
    gone = vfio_pci(desktop, devices=[GPU], state="absent")
    assert gone["changed"] is True
    assert not os.path.exists(os.path.join(desktop, "etc/driverctl.d/pci-" + GPU))
    assert read(desktop, MODULES_LOAD) is None


def test_driverctl_on_the_host_runs_set_and_unset_override(desktop, vfio_pci, as_host, fake_commands):
    fake_commands.install("driverctl", body=DRIVERCTL_BODY.format(root=desktop))
    predicted = vfio_pci(desktop, check_mode=True, devices=[GPU], persistence="driverctl", initramfs=False)
    assert fake_commands.calls() == []
    result = vfio_pci(desktop, devices=[GPU], persistence="driverctl", initramfs=False)
    assert result["rc"] == 0, result
    expected = [["driverctl", "--noprobe", "set-override", a, "vfio-pci"] for a in GPU_FUNCTIONS]
    assert calls(fake_commands, "driverctl") == expected
    assert [c[1:] for c in predicted["commands"]] == [c[1:] for c in expected]
    assert read(desktop, "etc/driverctl.d/pci-" + GPU) == "vfio-pci\n"
    assert vfio_pci(desktop, devices=[GPU], persistence="driverctl")["changed"] is False
    vfio_pci(desktop, devices=[GPU], state="absent", initramfs=False)
    assert calls(fake_commands, "driverctl")[4:] == [["driverctl", "--noprobe", "unset-override", a]
                                                     for a in GPU_FUNCTIONS]
    assert drivers(desktop) == HOST_DRIVERS


def test_driverctl_must_be_installed(desktop, vfio_pci):
    before = snapshot(desktop)
    result = vfio_pci(desktop, devices=[GPU], persistence="driverctl")
    assert result["rc"] == 1 and "install the driverctl package" in result["msg"]
    assert snapshot(desktop) == before


# ------------------------------------------------------------------------------------------- cmdline


@pytest.fixture
def builtin_grub(make_host):
    """vfio-pci built into the kernel, GRUB on Debian."""
    root = make_host("desktop_dgpu", kernel={"modules": MODULES[:-1], "builtin": ["vfio", "vfio_iommu_type1",
                                                                                  "vfio_pci"]})
    tree = os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures", "boot", "debian-grub")
    for relative in ("etc/default/grub", "usr/sbin/update-grub", "usr/sbin/grub-mkconfig"):
        os.makedirs(os.path.dirname(os.path.join(root, relative)), exist_ok=True)
        shutil.copy2(os.path.join(tree, relative), os.path.join(root, relative))
    return root


def test_builtin_vfio_pci_puts_the_ids_on_the_kernel_command_line(builtin_grub, vfio_pci, as_host, fake_commands):
    fake_commands.install("update-grub")
    predicted = vfio_pci(builtin_grub, check_mode=True, diff=True, devices=[GPU])
    assert predicted["persistence"] == "cmdline" and fake_commands.calls() == []
    result = vfio_pci(builtin_grub, diff=True, devices=[GPU])
    assert result["rc"] == 0, result
    assert "vfio-pci.ids=10de:10f7,10de:1ad6,10de:1ad7,10de:1e04" in read(builtin_grub, "etc/default/grub")
    assert calls(fake_commands, "update-grub") == [["update-grub"]]
    assert read(builtin_grub, MODPROBE) is None and read(builtin_grub, MODULES_LOAD) is None
    for key in ("changed", "diff", "files_changed", "ids"):
        assert predicted[key] == result[key], key
    assert [c[0].rsplit("/", 1)[-1] for c in predicted["commands"]] == ["update-grub"]
    assert vfio_pci(builtin_grub, devices=[GPU])["changed"] is False
    gone = vfio_pci(builtin_grub, devices=[GPU], state="absent")
    assert gone["changed"] is True and "vfio-pci.ids" not in read(builtin_grub, "etc/default/grub")


def test_modprobe_options_are_refused_for_builtin_vfio_pci(builtin_grub, vfio_pci):
    before = snapshot(builtin_grub)
    result = vfio_pci(builtin_grub, devices=[GPU], persistence="modprobe")
    assert result["rc"] == 1 and "built into kernel" in result["msg"] and "modprobe.d options" in result["msg"]
    assert snapshot(builtin_grub) == before


# ----------------------------------------------------------------------------------------- split


@pytest.mark.parametrize(
    "devices, split, words",
    [
        # One GPU by its ID here and by its address in the split: only the host can tell.
        (["10de:1e04"], ["01:00.0"], "(selected by 10de:1e04) is also split by 01:00.0"),
        # A companion this run would take with the GPU.
        ([GPU], ["0000:01:00.1"], "(selected by a companion of 0000:01:00.0) is also split by 0000:01:00.1"),
    ],
)
def test_a_device_the_configuration_splits_is_refused_whatever_force_says(desktop, vfio_pci, devices, split, words):
    before = snapshot(desktop)
    for check_mode in (True, False):
        result = vfio_pci(desktop, check_mode=check_mode, devices=devices, split=split, force=True)
        assert result["rc"] == 1 and result["changed"] is False, result
        assert words in result["msg"]
        assert "cannot also be split into VFs, vGPUs or mdevs" in result["msg"]
        assert "nothing was changed" in result["msg"]
    assert snapshot(desktop) == before and drivers(desktop) == HOST_DRIVERS


def test_a_split_of_other_devices_or_of_nothing_leaves_the_binding_alone(desktop, vfio_pci):
    # The NVMe drive is split elsewhere, and a selector that names no device is the split step's to report.
    result = vfio_pci(desktop, devices=[GPU], split=["0000:04:00.0", "8086:56c0"], persistent=False)
    assert result["rc"] == 0, result
    assert set(drivers(desktop).values()) == {"vfio-pci"}
    # Handing back is never refused for it.
    back = vfio_pci(desktop, devices=[GPU], split=[GPU], state="absent", persistent=False)
    assert back["rc"] == 0 and drivers(desktop) == HOST_DRIVERS, back


# ------------------------------------------------------------------------------------------ initramfs


def test_the_initramfs_is_rebuilt_once_and_verified(desktop, vfio_pci, as_host, fake_commands):
    install_initramfs_tools(desktop, fake_commands)
    predicted = vfio_pci(desktop, check_mode=True, diff=True, devices=[GPU], persistence="modprobe")
    assert fake_commands.calls() == []
    result = vfio_pci(desktop, diff=True, devices=[GPU])
    assert result["rc"] == 0, result
    assert calls(fake_commands, "update-initramfs") == [["update-initramfs", "-u", "-k", RELEASE]]
    assert calls(fake_commands, "lsinitramfs") == [["lsinitramfs", os.path.join(desktop, IMAGE)]]
    assert result["initramfs"]["verified"] is True and result["initramfs"]["regenerated"] is True
    assert result["initramfs"]["modules"] == ["vfio", "vfio_iommu_type1", "vfio_pci"]
    assert read(desktop, INITRAMFS_CONFIG).endswith("vfio\nvfio_iommu_type1\nvfio_pci\n")
    assert "etc/modprobe.d/gpuvirt-vfio.conf" in read(desktop, IMAGE).split()
    for key in ("changed", "diff", "files_changed"):
        assert predicted[key] == result[key], key
    assert names(predicted["commands"]) == [["update-initramfs", "-u", "-k", RELEASE]]
    assert predicted["commands"] == result["commands"], "check mode names the program the run runs"
    # Check mode names the images the run reads back; whether they hold the options is known once built.
    assert predicted["initramfs"]["images"] == result["initramfs"]["images"] == [os.path.join(desktop, IMAGE)]
    assert predicted["initramfs"]["verified"] is None
    assert {k: v for k, v in predicted["initramfs"].items() if k not in ("verified",)} == {
        k: v for k, v in result["initramfs"].items() if k not in ("verified",)}
    assert vfio_pci(desktop, devices=[GPU])["changed"] is False
    assert len(calls(fake_commands, "update-initramfs")) == 1


def test_every_installed_kernel_with_an_image_is_rebuilt_with_dracut_too(desktop, vfio_pci, as_host):
    # A Fedora-style host: dracut's /boot/initramfs-<release>.img, and a newer kernel installed but not
    # booted yet. Its image must hold vfio-pci too, or its first boot gives the GPU to the host driver.
    newer = "6.9.0-1-generic"
    path = os.path.join(desktop, "usr/bin/dracut")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write("#!/bin/sh\nexit 1\n")
    os.chmod(path, 0o755)
    os.makedirs(os.path.join(desktop, "boot"), exist_ok=True)
    for release in (RELEASE, newer):
        os.makedirs(os.path.join(desktop, "lib/modules", release), exist_ok=True)
        for relative in ("boot/vmlinuz-" + release, "boot/initramfs-%s.img" % release):
            open(os.path.join(desktop, relative), "w").close()
    predicted = vfio_pci(desktop, check_mode=True, devices=[GPU], persistence="modprobe")
    assert predicted["rc"] == 0, predicted
    assert predicted["commands"] == [
        ["dracut", "--force", os.path.join(desktop, "boot/initramfs-%s.img" % release), release]
        for release in (RELEASE, newer)
    ]


def test_old_kernels_get_vfio_virqfd(make_host, vfio_pci, as_host, fake_commands):
    root = make_host("desktop_dgpu", kernel={"modules": MODULES, "release": "5.15.0-119-generic"})
    with open(os.path.join(root, "lib/modules/5.15.0-119-generic/modules.dep"), "w") as handle:
        for name in ("vfio", "vfio_iommu_type1", "vfio-pci", "vfio_virqfd"):
            handle.write("kernel/drivers/vfio/%s.ko:\n" % name)
    install_initramfs_tools(root, fake_commands, release="5.15.0-119-generic")
    result = vfio_pci(root, devices=[GPU])
    assert result["rc"] == 0, result
    assert result["initramfs"]["modules"] == ["vfio", "vfio_iommu_type1", "vfio_pci", "vfio_virqfd"]


def test_a_failed_rebuild_puts_the_inputs_back_so_the_next_run_retries(desktop, vfio_pci, as_host, fake_commands):
    install_initramfs_tools(desktop, fake_commands)
    fake_commands.install("update-initramfs", stderr="E: no space left on /boot\n", rc=1)
    result = vfio_pci(desktop, devices=[GPU])
    assert result["rc"] == 1 and result["changed"] is True
    assert "no space left on /boot" in result["msg"] and "put back as before" in result["msg"]
    assert read(desktop, MODPROBE) is None and read(desktop, INITRAMFS_CONFIG) is None
    install_initramfs_tools(desktop, fake_commands)
    retry = vfio_pci(desktop, devices=[GPU])
    assert retry["rc"] == 0 and retry["initramfs"]["verified"] is True, retry


def test_an_image_without_the_options_fails_verification(desktop, vfio_pci, as_host, fake_commands):
    install_initramfs_tools(desktop, fake_commands)
    fake_commands.install("update-initramfs")  # "succeeds" without writing the image
    result = vfio_pci(desktop, devices=[GPU])
    assert result["rc"] == 1
    assert "lacks vfio_pci, /etc/modprobe.d/gpuvirt-vfio.conf" in result["msg"]  # vfio, type1: built in


def test_an_image_tree_is_left_for_rebuilding_inside_it(desktop, vfio_pci, fake_commands):
    install_initramfs_tools(desktop, fake_commands)
    result = vfio_pci(desktop, devices=[GPU])
    assert result["rc"] == 0 and fake_commands.calls() == []
    assert result["initramfs"]["regenerate_required"] is True
    assert any("rebuild its initramfs inside it (update-initramfs -u -k %s)" % RELEASE in w
               for w in warnings(result))


def test_an_ostree_host_keeps_its_deployments_initramfs(desktop, vfio_pci, as_host, fake_commands):
    # A deployment's initramfs is rpm-ostree's: dracut would write an image no deployment boots (or
    # fail on the read-only /boot of CoreOS). The modprobe.d file still binds the GPU once vfio-pci
    # loads from the root filesystem.
    install_initramfs_tools(desktop, fake_commands)
    os.makedirs(os.path.join(desktop, "run"), exist_ok=True)
    open(os.path.join(desktop, "run/ostree-booted"), "w").close()
    result = vfio_pci(desktop, devices=[GPU])
    assert result["rc"] == 0, result
    assert calls(fake_commands, "update-initramfs") == [] and read(desktop, INITRAMFS_CONFIG) is None
    assert read(desktop, MODPROBE) is not None
    assert any("boots an OSTree deployment" in w and "rpm-ostree initramfs-etc --track=<file>" in w
               for w in warnings(result)), warnings(result)


def test_a_foreign_ids_line_is_warned_about(make_host, vfio_pci):
    root = make_host("desktop_dgpu", kernel={"modules": MODULES},
                     files={"etc/modprobe.d/vfio.conf": "options vfio-pci ids=1002:73bf\n"})
    result = vfio_pci(root, devices=[GPU])
    assert any("/etc/modprobe.d/vfio.conf also sets vfio-pci ids=1002:73bf" in w for w in warnings(result))


@pytest.mark.parametrize(("booted", "warned"), [("10de:1e04", True), (",".join(GPU_IDS), False), ("", False)])
def test_ids_on_the_command_line_that_would_replace_the_modprobe_list_are_warned_about(
        make_host, vfio_pci, booted, warned):
    # modprobe passes vfio-pci.ids= from the command line after modprobe.d's ids=, and the module keeps the last.
    cmdline = "BOOT_IMAGE=/vmlinuz root=/dev/nvme0n1p2 ro intel_iommu=on"
    if booted:
        cmdline += " vfio-pci.ids=" + booted
    root = make_host("desktop_dgpu", kernel={"modules": MODULES, "cmdline": cmdline})
    result = vfio_pci(root, devices=[GPU], persistence="modprobe")
    assert result["rc"] == 0, result
    found = [w for w in warnings(result) if "the kernel command line sets vfio-pci.ids=" in w]
    assert bool(found) is warned, warnings(result)
    if warned:
        assert "not 10de:10f7,10de:1ad6,10de:1ad7" in found[0] and "persistence: cmdline" in found[0], found[0]


def test_the_diff_shows_each_file_as_written(desktop, vfio_pci):
    result = vfio_pci(desktop, devices=[GPU], diff=True)
    assert result["rc"] == 0
    assert [(d["before_header"], d["after_header"]) for d in result["diff"]] == [
        ("/%s (absent)" % MODPROBE, "/" + MODPROBE),
        ("/%s (absent)" % MODULES_LOAD, "/" + MODULES_LOAD),
    ]
    for entry, path in zip(result["diff"], (MODPROBE, MODULES_LOAD)):
        assert entry["before"] == ""
        with open(os.path.join(desktop, path)) as handle:
            assert entry["after"] == handle.read()
    assert "options vfio-pci ids=%s\n" % ",".join(GPU_IDS) in result["diff"][0]["after"]
    assert "softdep nvidia pre: vfio-pci\n" in result["diff"][0]["after"]
    assert result["diff"][1]["after"].endswith("\nvfio-pci\n")


# ------------------------------------------------------------------------------- PCI domains above ffff


def test_devices_behind_vmd_are_named_by_their_five_digit_domain(make_host, vfio_pci):
    root = make_host("vmd_host")
    kernel = PciKernel(KernelSim(root))
    before = snapshot(root)
    result = vfio_pci(root, kernel=kernel, devices=["10000:E2:00.0"])
    # The drive shares the VMD endpoint's group with the root disk: named, refused, nothing changed.
    assert_refused(result, kernel, root, before, "host_critical",
                   "IOMMU group 1 of 10000:e2:00.0 also holds 10000:e1:00.0",
                   "PM9A3/980PRO (driver nvme) holds the root filesystem (/dev/nvme0n1p2)")
    codes = [r["code"] for r in result["refusals"]]
    assert "group_shared" in codes and "behind_vmd" in codes
    vmd = next(r["message"] for r in result["refusals"] if r["code"] == "behind_vmd")
    assert "Intel VMD controller 0000:00:0e.0" in vmd and "turn VMD off in the firmware setup" in vmd, vmd


def test_an_eight_digit_domain_names_a_vmd_device_and_driverctl_keeps_it(make_host, vfio_pci):
    # The drive in a group of its own and not the root disk: only VMD stands in the way, and force overrides it.
    root = make_host("vmd_host", kernel={"modules": MODULES}, patch_devices={"10000:e2:00.0": {"group": 40}})
    install_driverctl(root)
    refused = vfio_pci(root, devices=["00010000:e2:00.0"], persistence="driverctl")
    assert refused["rc"] == 1 and [r["code"] for r in refused["refusals"]] == ["behind_vmd"], refused
    result = vfio_pci(root, devices=["00010000:e2:00.0"], persistence="driverctl", force=True)
    assert result["rc"] == 0, result
    assert vfio_bind.read_driver(root, "10000:e2:00.0") == "vfio-pci"
    assert read(root, "etc/driverctl.d/pci-10000:e2:00.0") == "vfio-pci\n"
    assert "/etc/driverctl.d/pci-10000:e2:00.0" in result["files_changed"]
    assert vfio_pci(root, devices=["10000:e2:00.0"], persistence="driverctl", force=True)["changed"] is False
