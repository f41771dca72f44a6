# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""topology_info inside the lab guest matches tests/lab/layout.yml and the guest's own sysfs."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import sys
import tempfile

from testinfra.modules.ansible import AnsibleException


def _devices(topology):
    return {d["address"]: d for d in topology["devices"]}


def _gpus(topology):
    return {g["address"]: g for g in topology["gpus"]}


def _sysfs_group(host, address):
    return os.path.basename(host.check_output("readlink /sys/bus/pci/devices/%s/iommu_group", address))


def test_iommu_is_on(host, topology):
    assert "intel_iommu=on" in host.file("/proc/cmdline").content_string.split()
    assert host.file("/sys/class/iommu/dmar0").exists
    assert topology["iommu"]["enabled"] is True
    assert topology["iommu"]["vendor"] == "intel"
    assert "iommu_disabled" not in {f["code"] for f in topology["findings"]}


def test_every_layout_device_is_found_with_its_ids(layout, topology):
    devices = _devices(topology)
    for device in layout.devices:
        assert device["address"] in devices, device["name"]
        found = devices[device["address"]]
        if "id" in device:
            assert "%s:%s" % (found["vendor_id"], found["device_id"]) == device["id"], device["name"]


def test_iommu_groups_match_the_layout_and_sysfs(host, layout, topology):
    groups = {group: sorted(members) for group, members in topology["iommu_groups"].items()}
    devices = _devices(topology)
    for expected in layout.shared_groups():
        group = devices[expected[0]]["iommu_group"]
        assert groups[group] == expected
    for address in layout.alone():
        group = devices[address]["iommu_group"]
        assert groups[group] == [address]
    for address in [d["address"] for d in layout.devices]:
        assert devices[address]["iommu_group"] == _sysfs_group(host, address)


def test_only_the_boot_vga_is_flagged(host, layout, topology):
    expected = {g["address"] for g in layout.gpus() if g["boot_vga"]}
    assert {a for a, g in _gpus(topology).items() if g["boot_vga"]} == expected
    for address in expected:
        assert host.file("/sys/bus/pci/devices/%s/boot_vga" % address).content_string.strip() == "1"


def test_the_console_framebuffer_and_boot_displays_are_read_from_the_guest_sysfs(host, topology):
    # The guest's bochs DRM driver gives both QEMU displays an fbdev framebuffer: fb0 for the boot VGA,
    # fb1 for the second display. The text console draws on fb0 (no fbcon=map: here), so the boot VGA
    # carries console_framebuffer and the second display does not. Cards with a boot_display file
    # (kernels that have it) carry boot_display unless they are the boot VGA already.
    assert "fbcon=" not in host.file("/proc/cmdline").content_string
    owners = {}
    for line in host.check_output(
        "for f in /sys/class/graphics/fb[0-9]*; do [ -e \"$f/device\" ] && "
        "echo \"$(basename $f) $(basename \"$(readlink -f $f/device)\")\"; done; true"
    ).splitlines():
        name, address = line.split()
        owners[name] = address
    assert owners.get("fb0") == "0000:00:02.0" and "0000:03:01.0" in owners.values(), owners
    marked = set(host.check_output(
        "for c in /sys/class/drm/card[0-9]*; do [ -e \"$c/boot_display\" ] && basename \"$(readlink -f $c/device)\"; "
        "done; true"
    ).split())
    for address, gpu in _gpus(topology).items():
        codes = gpu["passthrough"]["codes"]
        assert ("console_framebuffer" in codes) is (address == owners["fb0"]), (address, codes, owners)
        assert ("boot_display" in codes) is (address in marked and not gpu["boot_vga"]), (address, codes, marked)


def _display_module():
    """This checkout's ``display`` module (the reader topology_info runs in the guest), imported here."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    base = tempfile.mkdtemp(prefix="gpuvirt-import-")
    os.makedirs(os.path.join(base, "ansible_collections", "gpuvirt"))
    os.symlink(repo, os.path.join(base, "ansible_collections", "gpuvirt", "host"))
    sys.path.insert(0, base)
    from ansible_collections.gpuvirt.host.plugins.module_utils import display

    return display


def _iomem_root(tmp_path, name, text):
    os.makedirs(tmp_path / name / "proc")
    (tmp_path / name / "proc" / "iomem").write_text(text)
    return str(tmp_path / name)


def test_the_firmware_framebuffer_is_read_from_the_guest_iomem(host, topology, tmp_path):
    # SeaBIOS boots the guest's VGA in text mode: the kernel gets no firmware framebuffer (no BOOTFB),
    # bochs-drm claims the boot VGA's BARs, and no GPU carries firmware_framebuffer.
    display = _display_module()
    text = host.file("/proc/iomem").content_string
    lines = text.splitlines()
    assert lines and all(display._REGION.match(line) for line in lines), lines
    assert "BOOTFB" not in text
    assert display.firmware_framebuffer_devices(_iomem_root(tmp_path, "guest", text)) == {}
    assert not [a for a, g in _gpus(topology).items() if "firmware_framebuffer" in g["passthrough"]["codes"]]
    # The kernel's own nesting, with the boot VGA's first claim renamed BOOTFB, names the boot VGA:
    # by the addresses (read as root) and by the indentation alone (read unprivileged, all zeros).
    boot_vga = next(a for a, g in _gpus(topology).items() if g["boot_vga"])
    claim = re.search(r"^( +)[0-9a-f]+-[0-9a-f]+ : %s\n\1  [0-9a-f]+-[0-9a-f]+ : (\S.*)$" % re.escape(boot_vga),
                      text, re.MULTILINE)
    assert claim is not None, text
    renamed = text[: claim.start(2)] + "BOOTFB" + text[claim.end(2):]
    zeroed = re.sub(r"[0-9a-f]+-[0-9a-f]+ :", "00000000-00000000 :", renamed)
    for name, variant in (("renamed", renamed), ("zeroed", zeroed)):
        found = display.firmware_framebuffer_devices(_iomem_root(tmp_path, name, variant))
        assert found == {boot_vga: ["BOOTFB"]}, (name, found)


def test_gpu_verdicts_match_the_layout(layout, topology):
    gpus = _gpus(topology)
    assert sorted(gpus) == sorted(g["address"] for g in layout.gpus())
    for expected in layout.gpus():
        verdict = gpus[expected["address"]]["passthrough"]
        assert verdict["viable"] is expected["viable"], (expected["name"], verdict)
        assert set(expected.get("codes", [])) <= set(verdict["codes"]), (expected["name"], verdict)
        if expected["viable"]:
            assert verdict["codes"] == [] and verdict["reasons"] == []
        if "bind_together" in expected:
            assert sorted(verdict["devices"]) == expected["bind_together"]
        for other in expected.get("shares_group_with", []):
            assert any(other in reason for reason in verdict["reasons"]), (other, verdict["reasons"])


def test_mdev_parents_and_types_match_the_layout_and_sysfs(host, layout, topology):
    parents = {p["parent"]: p for p in topology["mdev_parents"]}
    expected = layout.expect["mdev_parents"]
    assert sorted(parents) == sorted(expected)
    for name, types in expected.items():
        found = {t["id"]: t for t in parents[name]["types"]}
        assert sorted(found) == sorted(types)
        on_disk = host.check_output("ls /sys/class/mdev_bus/%s/mdev_supported_types", name).split()
        assert sorted(on_disk) == sorted(types)
        for type_id, entry in found.items():
            assert entry["available_instances"] > 0, type_id
            assert entry["device_api"] == "vfio-pci", type_id
    assert topology["mdevs"] == []


def test_sriov_capability_matches_the_layout_and_sysfs(host, layout, topology):
    devices = _devices(topology)
    for pf in layout.sriov():
        sriov = devices[pf["address"]]["sriov"]
        assert sriov["total_vfs"] == pf["total_vfs"]
        assert sriov["num_vfs"] == pf["num_vfs"]
        on_disk = host.file("/sys/bus/pci/devices/%s/sriov_totalvfs" % pf["address"]).content_string
        assert int(on_disk) == pf["total_vfs"]


def test_the_disks_of_the_guests_mounted_filesystems_are_host_critical(host, layout, topology):
    # The guest's own view: every mounted block device (findmnt), its PCI function from its sysfs path.
    devices = _devices(topology)
    root_source = host.check_output("findmnt -n -o SOURCE /")
    expected = {}
    seen = set()
    for line in host.check_output("findmnt -rn -o SOURCE,TARGET").splitlines():
        source, target = line.split(" ", 1)
        source = source.split("[", 1)[0]  # a bind mount: /dev/vda[/srv]
        if not source.startswith("/dev/") or source in seen:
            continue
        seen.add(source)
        real = host.check_output("readlink -f /sys/class/block/%s", os.path.basename(source))
        owners = re.findall(r"[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7](?=/)", real)
        if not owners:
            continue  # a loop or other virtual device: no PCI function holds it
        reason = ("holds the root filesystem (%s)" % source if target == "/"
                  else "holds the filesystem mounted on %s (%s)" % (target.replace("\\x20", " "), source))
        expected.setdefault(owners[-1], set()).add(reason)
    disk = layout.address("disk")
    assert devices[disk]["critical"][0] == "holds the root filesystem (%s)" % root_source
    for address, reasons in expected.items():
        assert reasons <= set(devices[address]["critical"]), (address, devices[address]["critical"])
    assert {a for a, d in devices.items() if d["critical"] and "NIC of the default route" not in d["critical"][0]} \
        == set(expected)


def test_the_nic_of_the_ssh_session_stays_critical_without_a_default_route(host, layout):
    # A management network reached by a route of its own: with the default route gone, the guest still
    # answers this SSH session through its on-link route to QEMU's gateway, and that NIC must stay
    # host-critical. The peers are the guest's own view of the established sessions on port 22 (ss).
    nic = layout.address("nic")
    default = json.loads(host.check_output("ip -j route show default"))
    assert len(default) == 1, default
    gateway, interface = default[0]["gateway"], default[0]["dev"]
    assert os.path.basename(host.check_output("readlink -f /sys/class/net/%s/device/..", interface)) == nic
    host.run_expect([0], "ip route del default")
    try:
        assert host.check_output("ip -j route show default") in ("", "[]")
        peers = {line.split()[-1].rsplit(":", 1)[0].strip("[]").replace("::ffff:", "")
                 for line in host.check_output("ss -Htn state established '( sport = :22 )'").splitlines()}
        result = host.ansible("gpuvirt.host.topology_info", check=False)
    finally:
        host.run_expect([0], "ip route add default via %s dev %s" % (gateway, interface))
    assert peers, "ss lists no SSH session"
    peers = sorted(peers, key=lambda peer: (ipaddress.ip_address(peer).version, ipaddress.ip_address(peer)))
    critical = _devices(result["topology"])[nic]["critical"]
    assert critical == ["NIC of the SSH session%s from %s (%s)" % ("s" if len(peers) > 1 else "", ", ".join(peers),
                                                                   interface)]


def test_active_swap_on_a_disk_makes_its_controller_host_critical(host, layout):
    # The spare disk (a virtio-blk function of its own) holds nothing until the test makes it swap.
    spare = layout.address("spare-disk")
    names = host.check_output("ls /sys/bus/pci/devices/%s/virtio*/block", spare).split()
    assert len(names) == 1, names
    disk = "/dev/" + names[0]

    def critical():
        return _devices(host.ansible("gpuvirt.host.topology_info", check=False)["topology"])[spare]["critical"]

    assert critical() == []
    host.run_expect([0], "mkswap %s", disk)
    host.run_expect([0], "swapon %s", disk)
    try:
        assert disk in host.file("/proc/swaps").content_string
        in_use = critical()
        # Binding it to vfio-pci is refused, and nothing changes: the disk stays on virtio-blk.
        try:
            bound = host.ansible("gpuvirt.host.vfio_pci", json.dumps({"devices": [spare]}), check=False)
        except AnsibleException as error:
            bound = error.result
        driver = os.path.basename(host.check_output("readlink /sys/bus/pci/devices/%s/virtio*/driver", spare))
    finally:
        host.run_expect([0], "swapoff %s", disk)
    assert in_use == ["holds active swap (%s)" % disk]
    # (Its ID-based persistence is refused too: the root disk has the same vendor and device IDs.)
    critical_refusals = [refusal for refusal in bound["refusals"] if refusal["code"] == "host_critical"]
    assert [refusal["device"] for refusal in critical_refusals] == [spare], bound
    assert "holds active swap (%s)" % disk in critical_refusals[0]["message"], bound
    assert driver == "virtio_blk"
    assert critical() == []


def test_a_device_mapper_device_on_a_disk_makes_its_controller_host_critical(host, layout):
    # What an LVM volume is to the kernel: a device-mapper target over the disk (dm-N, its slaves and
    # dm/name in sysfs). Active but unused, it still holds the disk; swap on it names the dm device.
    spare = layout.address("spare-disk")
    disk = "/dev/" + host.check_output("ls /sys/bus/pci/devices/%s/virtio*/block", spare).strip()
    name = "gpuvirt-spare"

    def critical():
        return _devices(host.ansible("gpuvirt.host.topology_info", check=False)["topology"])[spare]["critical"]

    sectors = host.check_output("blockdev --getsz %s", disk).strip()
    host.run_expect([0], "dmsetup create %s --table '0 %s linear %s 0'", name, sectors, disk)
    try:
        mapped = "/dev/" + os.path.basename(host.check_output("readlink -f /dev/mapper/%s", name))
        assert host.file("/sys/block/%s/slaves/%s" % (mapped[5:], disk[5:])).exists
        active = critical()
        host.run_expect([0], "mkswap /dev/mapper/%s", name)
        host.run_expect([0], "swapon /dev/mapper/%s", name)
        try:
            swapped = critical()
        finally:
            host.run_expect([0], "swapoff /dev/mapper/%s", name)
    finally:
        # udev's probe of the swap signature may still hold the device open: wait for it, and let dmsetup
        # retry while the device is busy.
        host.run("udevadm settle")
        host.run_expect([0], "dmsetup remove --retry %s", name)
    assert active == ["holds the active device-mapper or RAID device %s" % name]
    # /proc/swaps names the dm device by its kernel name; what swap reaches is not listed again.
    assert swapped == ["holds active swap (%s)" % mapped]


def test_the_guest_is_known_as_a_virtual_machine_and_its_hypervisor_named(host, topology):
    # systemd-detect-virt, the guest's own, also reads the CPUID signature (TCG's under this lab).
    detected = host.run("systemd-detect-virt --vm")
    assert detected.rc == 0, "systemd-detect-virt found no VM: %s" % detected.stdout
    flags = next(line for line in host.file("/proc/cpuinfo").content_string.splitlines() if line.startswith("flags"))
    assert "hypervisor" in flags.split()
    assert topology["cpu"]["virtual_machine"] is True
    assert topology["cpu"]["hypervisor"] == host.file("/sys/class/dmi/id/sys_vendor").content_string.strip()
    assert topology["cpu"]["hypervisor"].lower() == detected.stdout.strip()


def test_a_snapshot_of_the_guest_without_its_iommu_is_told_to_ask_the_hypervisor(host):
    # capture.py's snapshot of this guest (real DMI, CPU flags and ACPI tables) with its virtual IOMMU taken
    # out: a VM without one. The advice must be the hypervisor's settings, not the firmware setup's.
    capture = os.path.join(os.path.dirname(__file__), "..", "..", "..", "tests", "fixtures", "capture.py")
    snapshot = "/tmp/gpuvirt-snapshot"
    host.run_expect([0], "rm -rf %s /tmp/capture.py", snapshot)
    host.ansible("copy", "src=%s dest=/tmp/capture.py mode=0755" % os.path.abspath(capture), check=False)
    host.run_expect([0], "python3 /tmp/capture.py %s", snapshot)
    try:
        assert host.file(snapshot + "/sys/firmware/acpi/tables/DMAR").exists
        host.run_expect([0], "rm -rf %s/sys/class/iommu/* %s/sys/kernel/iommu_groups/* "
                        "%s/sys/firmware/acpi/tables/DMAR", snapshot, snapshot, snapshot)
        topology = host.ansible("gpuvirt.host.topology_info", "root=%s" % snapshot, check=False)["topology"]
    finally:
        host.run_expect([0], "rm -rf %s /tmp/capture.py", snapshot)
    assert topology["iommu"]["enabled"] is False and topology["iommu"]["firmware_support"] is False
    assert topology["cpu"]["virtual_machine"] is True and topology["cpu"]["hypervisor"] == "QEMU"
    message = next(f["message"] for f in topology["findings"] if f["code"] == "iommu_unsupported")
    assert message.startswith("no IOMMU: this virtual machine (QEMU) has no virtual IOMMU"), message
    assert "caching_mode='on'" in message and "VT-d" not in message
