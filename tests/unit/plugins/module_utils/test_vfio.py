# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Selectors, guards, the bind protocol and the boot-time files of ``module_utils.vfio``."""

from __future__ import annotations

import errno
import json
import os
import re

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import display, vfio, vfio_bind
from ansible_collections.gpuvirt.host.plugins.module_utils.selector import SelectorError, parse_selector
from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim
from ansible_collections.gpuvirt.host.tests.sim.pci_kernel import PciKernel

MODULES = ["kvm_intel", "i915", "nvidia", "snd_hda_intel", "xhci_pci", "e1000e", "nvme", "vfio_pci"]
GPU = "0000:01:00.0"
GPU_FUNCTIONS = ["0000:01:00.0", "0000:01:00.1", "0000:01:00.2", "0000:01:00.3"]


@pytest.fixture
def desktop(make_host):
    """desktop_dgpu with vfio-pci loaded: iGPU boot VGA, RTX 2080 Ti + 3 functions in group 2."""
    return make_host("desktop_dgpu", kernel={"modules": MODULES})


@pytest.fixture
def kernel():
    """``kernel(root, **options)`` -> a PciKernel whose KernelSim is ``.sim``."""

    def make(root, **options):
        return PciKernel(KernelSim(root), **options)

    return make


def driver(root, address):
    return vfio_bind.read_driver(root, address)


# ----------------------------------------------------------------------------------- selectors


@pytest.mark.parametrize(
    "text, kind, value",
    [
        ("0000:01:00.0", "address", "0000:01:00.0"),
        ("01:00.0", "address", "0000:01:00.0"),
        ("00000000:01:00.0", "address", "0000:01:00.0"),
        ("0000:0A:1F.7", "address", "0000:0a:1f.7"),
        ("10de:1E04", "id", "10de:1e04"),
        ("0x10de:0x1e04", "id", "10de:1e04"),
        ("GeForce RTX 2080 Ti", "name", "geforce rtx 2080 ti"),
        ("  TU102   [GeForce RTX 2080 Ti] ", "name", "tu102 [geforce rtx 2080 ti]"),
    ],
)
def test_selector_kinds(text, kind, value):
    selector = parse_selector(text)
    assert (selector.kind, selector.value) == (kind, value)


@pytest.mark.parametrize("text", ["0", "1", " 3 "])
def test_an_index_is_refused(text):
    with pytest.raises(SelectorError, match="looks like an index"):
        parse_selector(text)


def test_an_empty_selector_is_refused():
    with pytest.raises(SelectorError, match="empty"):
        parse_selector("  ")


def host_devices(root):
    return vfio.read_host(root).devices


def test_address_forms_select_one_device(desktop):
    chosen = vfio.resolve_selectors(["01:00.0", "00000000:01:00.0", "0000:01:00.0"], host_devices(desktop))
    assert chosen == {GPU: ["01:00.0", "00000000:01:00.0", "0000:01:00.0"]}


def test_id_selects_every_device_with_it(make_host):
    root = make_host(
        "desktop_dgpu",
        add_devices=[{"address": "05:00.0", "ids": "10de:1e04", "class": "030000", "driver": "nvidia", "group": 9,
                      "device_name": "TU102 [GeForce RTX 2080 Ti]"}],
    )
    assert list(vfio.resolve_selectors(["10de:1e04"], host_devices(root))) == [GPU, "0000:05:00.0"]


@pytest.mark.parametrize(
    "name",
    ["GeForce RTX 2080 Ti", "geforce rtx 2080 ti", "TU102 [GeForce RTX 2080 Ti]",
     "NVIDIA Corporation TU102 [GeForce RTX 2080 Ti]", "RTX 2080"],
)
def test_model_names(desktop, name):
    assert list(vfio.resolve_selectors([name], host_devices(desktop))) == [GPU]


def test_exact_name_wins_over_a_longer_name(make_host):
    root = make_host(
        "desktop_dgpu",
        add_devices=[{"address": "05:00.0", "ids": "10de:2204", "class": "030000", "driver": "nvidia", "group": 9,
                      "device_name": "GA102 [GeForce RTX 3090]"},
                     {"address": "06:00.0", "ids": "10de:2203", "class": "030000", "driver": "nvidia", "group": 10,
                      "device_name": "GA102 [GeForce RTX 3090 Ti]"}],
    )
    assert list(vfio.resolve_selectors(["GeForce RTX 3090"], host_devices(root))) == ["0000:05:00.0"]
    with pytest.raises(vfio.VfioError) as error:
        vfio.resolve_selectors(["RTX 309"], host_devices(root))
    message = str(error.value)
    assert "matches 2 different models" in message
    assert "0000:05:00.0 [10de:2204]" in message and "0000:06:00.0 [10de:2203]" in message


def test_a_name_matching_two_identical_cards_selects_both(make_host):
    root = make_host(
        "desktop_dgpu",
        add_devices=[{"address": "05:00.0", "ids": "10de:1e04", "class": "030000", "driver": "nvidia", "group": 9,
                      "device_name": "TU102 [GeForce RTX 2080 Ti]"}],
    )
    assert list(vfio.resolve_selectors(["GeForce RTX 2080 Ti"], host_devices(root))) == [GPU, "0000:05:00.0"]


def test_bad_selectors_are_all_reported(desktop):
    with pytest.raises(vfio.VfioError) as error:
        vfio.resolve_selectors(["09:00.0", "dead:beef", "Voodoo 5", "1", "01:00.0"], host_devices(desktop))
    message = str(error.value)
    assert "selector '09:00.0': no PCI device 0000:09:00.0 on this host" in message
    assert "selector 'dead:beef' matches no PCI device on this host" in message
    assert "selector 'Voodoo 5' matches no PCI device on this host" in message
    assert "looks like an index" in message
    assert message.endswith("nothing was changed")


def test_names_need_pci_ids(make_host):
    root = make_host("desktop_dgpu", pci_ids=False)
    with pytest.raises(vfio.VfioError, match="no pci.ids database"):
        vfio.resolve_selectors(["GeForce RTX 2080 Ti"], host_devices(root))


# ------------------------------------------------------------------------------- companions


def test_companions_are_the_slot_functions_in_the_group(desktop):
    view = vfio.read_host(desktop)
    members = vfio.expand_members(view, {GPU: ["x"]}, True)
    assert list(members) == GPU_FUNCTIONS
    assert members["0000:01:00.1"].companion_of == GPU and members[GPU].selected_by == ["x"]
    assert list(vfio.expand_members(view, {GPU: ["x"]}, False)) == [GPU]


def test_a_function_in_another_group_is_not_a_companion(make_host):
    # Of a GPU with a reset of its own (FLR): one reset with its bus only takes its bus's functions along.
    split = {"01:00.0": {"reset_methods": ["flr", "bus"]}, "01:00.2": {"group": 12}}
    root = make_host("desktop_dgpu", kernel={"modules": MODULES}, patch_devices=split)
    view = vfio.read_host(root)
    assert list(vfio.expand_members(view, {GPU: []}, True)) == ["0000:01:00.0", "0000:01:00.1", "0000:01:00.3"]
    bus_reset_only = make_host("desktop_dgpu", kernel={"modules": MODULES}, patch_devices={"01:00.2": {"group": 12}})
    assert list(vfio.expand_members(vfio.read_host(bus_reset_only), {GPU: []}, True)) == GPU_FUNCTIONS


def test_with_the_iommu_off_every_slot_function_goes_along(make_host):
    root = make_host("iommu_disabled")
    view = vfio.read_host(root)
    assert not view.iommu_enabled
    assert list(vfio.expand_members(view, {GPU: []}, True)) == GPU_FUNCTIONS


# ------------------------------------------------------------------------------------ guards


def codes(refusals):
    return sorted({r.code for r in refusals})


def test_the_dgpu_group_is_clean(desktop):
    view = vfio.read_host(desktop)
    members = vfio.expand_members(view, {GPU: []}, True)
    assert vfio.bind_refusals(view, members, list(members)) == []


def test_boot_vga_is_refused(desktop):
    view = vfio.read_host(desktop)
    refusals = vfio.bind_refusals(view, {"0000:00:02.0": None}, ["0000:00:02.0"])
    assert codes(refusals) == ["boot_vga"]
    assert "0000:00:02.0 [8086:a780]" in refusals[0].message and "boot VGA" in refusals[0].message


def test_a_console_framebuffer_is_refused(desktop):
    graphics = os.path.join(desktop, "sys/class/graphics/fb0")
    os.makedirs(graphics)
    os.symlink(os.path.realpath(os.path.join(desktop, "sys/bus/pci/devices", GPU)), os.path.join(graphics, "device"))
    simple = os.path.join(desktop, "sys/class/graphics/fb1")
    os.makedirs(os.path.join(desktop, "sys/devices/platform/simple-framebuffer.0"))
    os.makedirs(simple)
    os.symlink(os.path.join(desktop, "sys/devices/platform/simple-framebuffer.0"), os.path.join(simple, "device"))
    assert display.framebuffer_devices(desktop) == {GPU: ["fb0"]}
    view = vfio.read_host(desktop)
    refusals = vfio.bind_refusals(view, vfio.expand_members(view, {GPU: []}, True), [])
    assert codes(refusals) == ["console_framebuffer"]
    assert "framebuffer fb0" in refusals[0].message


def test_a_shared_group_names_the_other_endpoint(make_host):
    root = make_host("desktop_dgpu_nic", kernel={"modules": MODULES})
    view = vfio.read_host(root)
    members = vfio.expand_members(view, {GPU: []}, True)
    refusals = vfio.bind_refusals(view, members, list(members))
    shared = [r for r in refusals if r.code == "group_shared"]
    assert len(shared) == 1
    assert "IOMMU group 2" in shared[0].message
    assert "0000:03:00.0 [10ec:8125] Realtek Semiconductor Co., Ltd. RTL8125 2.5GbE Controller (driver r8169)" \
        in shared[0].message
    # The NIC carries the default route: binding its group would cut the host off.
    critical = [r for r in refusals if r.code == "host_critical"]
    assert [r.device for r in critical] == ["0000:03:00.0"]
    assert "NIC of the default route (enp3s0)" in critical[0].message


def test_binding_the_shared_endpoint_too_is_not_group_shared(make_host):
    root = make_host("desktop_dgpu_nic", kernel={"modules": MODULES}, network={"default_route": "eno1"})
    view = vfio.read_host(root)
    members = vfio.expand_members(view, {GPU: [], "0000:03:00.0": []}, True)
    assert vfio.bind_refusals(view, members, list(members)) == []


def test_the_root_disk_controller_is_refused(desktop):
    view = vfio.read_host(desktop)
    refusals = vfio.bind_refusals(view, {"0000:02:00.0": None}, ["0000:02:00.0"])
    assert codes(refusals) == ["host_critical"]
    assert "holds the root filesystem (/dev/nvme0n1p2)" in refusals[0].message


def test_a_held_group_is_in_use_only_when_its_driver_changes(make_host):
    root = make_host(
        "desktop_dgpu",
        kernel={"modules": MODULES},
        patch_devices={a: {"driver": "vfio-pci"} for a in GPU_FUNCTIONS},
        processes=[{"pid": 4242, "comm": "qemu-system-x86", "holds": [2]}],
    )
    view = vfio.read_host(root)
    members = vfio.expand_members(view, {GPU: []}, True)
    assert vfio.bind_refusals(view, members, []) == []
    refusals = vfio.in_use_refusals(view, [GPU], "unbinding")
    assert codes(refusals) == ["in_use"]
    assert "qemu-system-x86 (pid 4242) holds /dev/vfio/2" in refusals[0].message


def test_ids_that_would_catch_another_device(make_host):
    root = make_host(
        "desktop_dgpu",
        kernel={"modules": MODULES},
        add_devices=[{"address": "05:00.0", "ids": "10de:1e04", "class": "030000", "driver": "nvidia", "group": 9}],
    )
    view = vfio.read_host(root)
    refusals = vfio.id_refusals(view, {GPU: None}, {"10de:1e04"}, set(), [])
    assert [(r.code, r.device) for r in refusals] == [("id_shared", "0000:05:00.0")]
    assert "persistence: driverctl" in refusals[0].message


# ---------------------------------------------------------------------------- bind protocol


def test_bind_follows_the_kernel_protocol_and_reads_back(desktop, kernel):
    pci = kernel(desktop)
    with pci.sim.active():
        assert vfio_bind.bind_device(desktop, GPU) == "vfio-pci"
    assert pci.sim.writes == [
        ("sys/bus/pci/devices/0000:01:00.0/driver_override", "vfio-pci"),
        ("sys/bus/pci/drivers/nvidia/unbind", "0000:01:00.0"),
        ("sys/bus/pci/drivers_probe", "0000:01:00.0"),
    ]
    assert driver(desktop, GPU) == "vfio-pci"
    assert vfio_bind.read_override(desktop, GPU) == "vfio-pci"
    assert os.path.exists(os.path.join(desktop, "dev/vfio/2"))


def test_binding_a_bound_device_writes_nothing(desktop, kernel):
    pci = kernel(desktop)
    with pci.sim.active():
        vfio_bind.bind_device(desktop, GPU)
        del pci.sim.writes[:]
        assert vfio_bind.bind_device(desktop, GPU) == "vfio-pci"
    assert pci.sim.writes == []


def test_an_unbound_device_is_probed_without_unbind(make_host, kernel):
    root = make_host("desktop_dgpu", kernel={"modules": MODULES}, patch_devices={"01:00.1": {"driver": None}})
    pci = kernel(root)
    with pci.sim.active():
        vfio_bind.bind_device(root, "0000:01:00.1")
    assert [path for path, _value in pci.sim.writes] == [
        "sys/bus/pci/devices/0000:01:00.1/driver_override",
        "sys/bus/pci/drivers_probe",
    ]


def test_a_bind_without_effect_is_rolled_back(desktop, kernel):
    pci = kernel(desktop, failing_probe=[GPU])
    with pci.sim.active(), pytest.raises(vfio.VfioError) as error:
        vfio_bind.bind_device(desktop, GPU, attempts=1, delay=0)
    message = str(error.value)
    assert "accepted by the kernel but did not take effect" in message
    assert "driver link reads nothing (unbound)" in message
    assert "now bound to nvidia" in message
    assert driver(desktop, GPU) == "nvidia"
    assert vfio_bind.read_override(desktop, GPU) is None


def test_a_refused_write_is_reported_and_rolled_back(desktop, kernel):
    pci = kernel(desktop)

    def refuse(_match, _value):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    pci.sim.handlers.insert(0, (re.compile(r"sys/bus/pci/drivers/nvidia/unbind\Z"), refuse))
    with pci.sim.active(), pytest.raises(vfio.VfioError) as error:
        vfio_bind.bind_device(desktop, GPU)
    message = str(error.value)
    assert "writing '0000:01:00.0' to %s/sys/bus/pci/drivers/nvidia/unbind failed: Input/output error" % desktop \
        in message
    assert "the override was undone and the device is now bound to nvidia" in message
    assert vfio_bind.read_override(desktop, GPU) is None
    assert driver(desktop, GPU) == "nvidia"


def test_release_returns_the_device_to_its_host_driver(desktop, kernel):
    pci = kernel(desktop)
    with pci.sim.active():
        vfio_bind.bind_device(desktop, GPU)
        del pci.sim.writes[:]
        assert vfio_bind.release_device(desktop, GPU) == "nvidia"
    # The override goes just before the reprobe: a run killed while the unbind blocks leaves it naming
    # vfio-pci, which tells the next run the device is still to be handed back.
    assert pci.sim.writes == [
        ("sys/bus/pci/drivers/vfio-pci/unbind", "0000:01:00.0"),
        ("sys/bus/pci/drivers/vfio-pci/remove_id", "10de 1e04"),  # not in the table: ENODEV, ignored
        ("sys/bus/pci/devices/0000:01:00.0/driver_override", "\n"),
        ("sys/bus/pci/drivers_probe", "0000:01:00.0"),
    ]
    assert vfio_bind.read_override(desktop, GPU) is None
    assert not os.path.exists(os.path.join(desktop, "dev/vfio/2"))


def test_return_device_puts_back_the_driver_and_the_override_it_had(desktop, kernel):
    """A device bound by ID (no override) that a run moved off vfio-pci goes back to vfio-pci with its
    override unset again; one a run moved to vfio-pci goes back to its host driver."""
    pci = kernel(desktop)
    with pci.sim.active():
        vfio_bind.bind_device(desktop, GPU)
        vfio_bind.write_text(vfio_bind.device_path(desktop, GPU, "driver_override"), "\n")
        vfio_bind.release_device(desktop, GPU)
        assert vfio_bind.return_device(desktop, GPU, "vfio-pci", None) == "vfio-pci"
        assert vfio_bind.read_override(desktop, GPU) is None
        assert vfio_bind.return_device(desktop, GPU, "nvidia", None) == "nvidia"
    assert driver(desktop, GPU) == "nvidia" and vfio_bind.read_override(desktop, GPU) is None


def test_return_device_reports_a_device_that_will_not_leave_vfio(desktop, kernel):
    pci = kernel(desktop, busy_unbind=[GPU])
    with pci.sim.active():
        vfio_bind.bind_device(desktop, GPU)
        with pytest.raises(vfio.VfioError) as error:
            vfio_bind.return_device(desktop, GPU, "nvidia", None)
    assert "handing 0000:01:00.0 back to its host driver failed" in str(error.value)
    assert "Device or resource busy" in str(error.value)
    assert driver(desktop, GPU) == "vfio-pci"


def test_release_of_a_device_claimed_by_ids_removes_the_dynamic_id(make_host, kernel):
    # As after a boot with "options vfio-pci ids=10de:1e04": no override, vfio-pci's ID table has the
    # ID, and a plain reprobe would hand the device straight back to vfio-pci.
    root = make_host(
        "desktop_dgpu",
        kernel={"modules": MODULES},
        patch_devices={"01:00.0": {"driver": "vfio-pci"}},
        # nvidia is loaded, only bound to nothing: give it its driver directory.
        add_devices=[{"address": "06:00.0", "ids": "10de:1eb8", "class": "030200", "driver": "nvidia", "group": 11}],
    )
    pci = kernel(root, host_drivers={GPU: "nvidia"}, vfio_ids=["10de:1e04"])
    with pci.sim.active():
        assert vfio_bind.release_device(root, GPU) == "nvidia"
    assert pci.sim.writes == [
        ("sys/bus/pci/drivers/vfio-pci/unbind", "0000:01:00.0"),
        ("sys/bus/pci/drivers/vfio-pci/remove_id", "10de 1e04"),
        ("sys/bus/pci/drivers_probe", "0000:01:00.0"),
    ]


def test_release_without_a_host_driver_leaves_it_unbound(make_host, kernel):
    root = make_host("desktop_dgpu", kernel={"modules": MODULES}, patch_devices={"01:00.0": {"driver": "vfio-pci"}})
    pci = kernel(root)
    with pci.sim.active():
        assert vfio_bind.release_device(root, GPU) is None


def noted(root):
    path = os.path.join(root, vfio_bind.HANDBACKS)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def test_a_hand_back_is_noted_until_the_reprobe_and_no_longer(desktop, kernel):
    pci = kernel(desktop)
    seen = []
    pattern, probe = next((p, h) for p, h in pci.sim.handlers if p.match("sys/bus/pci/drivers_probe"))

    def noting_probe(_match, value):
        seen.append(noted(desktop))
        return probe(pattern.match("sys/bus/pci/drivers_probe"), value)

    pci.sim.handlers.insert(0, (pattern, noting_probe))
    with pci.sim.active():
        vfio_bind.bind_device(desktop, GPU)
        assert noted(desktop) is None  # a bind leaves the device on a driver whatever happens
        vfio_bind.release_device(desktop, GPU)
    # The device as it is: IDs, its directory's inode, the boot (none in this tree).
    inode = os.stat(os.path.join(desktop, "sys/bus/pci/devices", GPU)).st_ino
    assert seen[0] is None and json.loads(seen[1]) == {GPU: {"id": "10de:1e04", "inode": inode, "boot": None}}
    assert noted(desktop) is None and driver(desktop, GPU) == "nvidia"


def test_a_refused_unbind_leaves_no_note(desktop, kernel):
    pci = kernel(desktop, busy_unbind=[GPU])
    with pci.sim.active():
        vfio_bind.bind_device(desktop, GPU)
        with pytest.raises(vfio.VfioError, match="Device or resource busy"):
            vfio_bind.release_device(desktop, GPU)
    assert noted(desktop) is None and driver(desktop, GPU) == "vfio-pci"


def test_only_noted_devices_on_no_driver_are_interrupted_hand_backs(desktop):
    """A note whose device is on a driver, is gone, or is not an address names nothing to finish, and is
    dropped; an unreadable note names nothing."""
    identity = vfio_bind._identity(desktop, GPU)
    os.makedirs(os.path.join(desktop, "run/gpuvirt"))
    path = os.path.join(desktop, vfio_bind.HANDBACKS)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"0000:01:00.1": vfio_bind._identity(desktop, "0000:01:00.1"), "0000:09:00.0": identity,
                   "../../etc": identity, "0000:01:00.2": 7, GPU: identity}, handle)
    os.unlink(os.path.join(desktop, "sys/bus/pci/devices", GPU, "driver"))
    assert vfio_bind.interrupted_handbacks(desktop) == [GPU]
    assert vfio_bind.forget_finished_handbacks(desktop) is True
    assert json.loads(noted(desktop)) == {GPU: identity}
    for garbled in ("not json", '["%s"]' % GPU, "\xff"):
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(garbled)
        assert vfio_bind.interrupted_handbacks(desktop) == []


# ---------------------------------------------------------------------------------- files


def test_modprobe_conf_round_trip():
    text = vfio.render_modprobe_conf(["10de:1e04", "10de:10f7", "10de:1e04"])
    assert "options vfio-pci ids=10de:10f7,10de:1e04\n" in text
    # NVIDIA's GPU drivers and the companions', not the other vendors'.
    for name in ("nvidia", "nouveau", "snd_hda_intel", "xhci_hcd"):
        assert "softdep %s pre: vfio-pci\n" % name in text
    assert not any("softdep %s " % name in text for name in ("i915", "xe", "amdgpu", "radeon"))
    mixed = vfio.render_modprobe_conf(["1002:73bf", "8086:56a0"])
    assert [line.split()[1] for line in mixed.splitlines() if line.startswith("softdep")] == [
        "i915", "xe", "amdgpu", "radeon", "snd_hda_intel", "xhci_hcd"]
    assert vfio.modprobe_ids(text) == ["10de:10f7", "10de:1e04"]
    assert vfio.render_modprobe_conf([]) is None
    assert vfio.modprobe_ids("options vfio_pci disable_vga=1 ids=1002:73bf\n# options vfio-pci ids=dead:beef") == [
        "1002:73bf"
    ]


def test_cmdline_ids_takes_the_last_value():
    assert vfio.cmdline_ids(["quiet", "vfio-pci.ids=10de:1e04", "vfio_pci.ids=1002:73bf,1002:ab28"]) == [
        "1002:73bf",
        "1002:ab28",
    ]
    assert vfio.cmdline_ids(["quiet"]) == []


@pytest.mark.parametrize(
    "tool, expected",
    [
        ("update-initramfs", "vfio\nvfio_iommu_type1\nvfio_pci\n"),
        (
            "dracut",
            'add_drivers+=" vfio vfio_iommu_type1 vfio_pci "\ninstall_items+=" /etc/modprobe.d/gpuvirt-vfio.conf "\n',
        ),
        ("mkinitcpio", "MODULES+=(vfio vfio_iommu_type1 vfio_pci)\nFILES+=(/etc/modprobe.d/gpuvirt-vfio.conf)\n"),
    ],
)
def test_initramfs_configuration(tool, expected):
    text = vfio.render_initramfs_config(tool, ["vfio", "vfio_iommu_type1", "vfio_pci"])
    assert text == vfio.MANAGED_HEADER + expected


def test_foreign_ids_are_found(tmp_path):
    directory = tmp_path / "etc/modprobe.d"
    directory.mkdir(parents=True)
    (directory / "vfio.conf").write_text("options vfio-pci ids=10de:1e04\n")
    (directory / "gpuvirt-vfio.conf").write_text("options vfio-pci ids=1002:73bf\n")
    (directory / "other.conf").write_text("blacklist nouveau\n")
    assert vfio.foreign_vfio_ids(str(tmp_path)) == {"/etc/modprobe.d/vfio.conf": ["10de:1e04"]}
