# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``gpuvirt.host.vfio_pci`` with variant VFIO drivers (``alias vfio_pci:...`` in modules.alias).

The simulated PCI core gives variant drivers override-only ID tables: they bind a device only
through its ``driver_override`` and refuse (and record) IDs written to their ``new_id``, so a test
fails if the module tried to bind a variant by ID.
"""

from __future__ import annotations

import os

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import vfio, vfio_bind
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import SysfsWriteError
from ansible_collections.gpuvirt.host.tests.sim.mdev_kernel import KernelSim
from ansible_collections.gpuvirt.host.tests.sim.pci_kernel import PciKernel
from ansible_collections.gpuvirt.host.tests.unit.plugins.modules.test_vfio_pci import (
    DRIVERCTL_BODY,
    GPU,
    GPU_FUNCTIONS,
    GPU_IDS,
    MODPROBE,
    MODULES,
    MODULES_LOAD,
    RELEASE,
    assert_second_run_changes_nothing,
    install_driverctl,
    read,
    snapshot,
    warnings,
)

GRACE = "0009:01:00.0"
GRACE_ID = "10de:2342"
GRACE_DRIVER = "nvgrace_gpu_vfio_pci"
GRACE_MODALIAS = "pci:v000010DEd00002342sv000010DEsd000016EBbc03sc02i00"
ALIASES = {
    "v000010DEd00002342sv*sd*bc*sc*i*": GRACE_DRIVER,
    "v000010DEd00002348sv*sd*bc*sc*i*": GRACE_DRIVER,
    "v000015B3d0000101Esv*sd*bc*sc*i*": "mlx5_vfio_pci",
}
GRACE_DEVICE = {"address": GRACE, "ids": GRACE_ID, "subsystem": "10de:16eb", "class": "030200", "driver": "nvidia",
                "group": 20, "vendor_name": "NVIDIA Corporation", "device_name": "GH100 [GH200 120GB / 480GB]"}
DRIVERCTL_GRACE = "etc/driverctl.d/pci-" + GRACE
# modprobe NAME: register the driver NAME (vfio-pci for vfio-pci/vfio_pci), as loading the module does.
MODPROBE_ANY_BODY = """
root = {root!r}
name = sys.argv[1]
driver = "vfio-pci" if name.replace("_", "-") == "vfio-pci" else name
directory = os.path.join(root, "sys/bus/pci/drivers", driver)
os.makedirs(directory, exist_ok=True)
for entry in ("bind", "unbind", "new_id", "remove_id"):
    open(os.path.join(directory, entry), "w").close()
"""


@pytest.fixture
def grace_host(make_host):
    """desktop_dgpu plus a GH200 (own IOMMU group) on nvidia; the variant modules loaded, driverctl installed."""

    def build(modules=(GRACE_DRIVER, "mlx5_vfio_pci"), driverctl=True, add_devices=(), **changes):
        root = make_host(
            "desktop_dgpu",
            kernel={"modules": MODULES + list(modules), "vfio_aliases": ALIASES},
            add_devices=[dict(GRACE_DEVICE)] + list(add_devices),
            **changes,
        )
        if driverctl:
            install_driverctl(root)
        return root

    return build


def test_the_tree_declares_the_modalias_and_the_variant_aliases(grace_host):
    root = grace_host()
    assert read(root, "sys/bus/pci/devices/%s/modalias" % GRACE).strip() == GRACE_MODALIAS
    alias = read(root, "lib/modules/%s/modules.alias" % RELEASE)
    assert "alias vfio_pci:v000010DEd00002342sv*sd*bc*sc*i* nvgrace_gpu_vfio_pci\n" in alias
    assert os.path.isdir(os.path.join(root, "sys/bus/pci/drivers", GRACE_DRIVER))


def test_the_simulated_kernel_never_binds_a_variant_by_id(grace_host):
    root = grace_host()
    kernel = PciKernel(KernelSim(root), vfio_ids=[GRACE_ID])
    with kernel.sim.active():
        with pytest.raises(SysfsWriteError, match="Invalid argument"):
            vfio_bind.write_text(os.path.join(root, "sys/bus/pci/drivers", GRACE_DRIVER, "new_id"), "10de 2342")
        vfio_bind.write_text(os.path.join(root, "sys/bus/pci/drivers/nvidia/unbind"), GRACE)
        vfio_bind.write_text(os.path.join(root, "sys/bus/pci/drivers_probe"), GRACE)
    assert kernel.id_attempts == [(GRACE_DRIVER, GRACE_ID)]
    assert vfio_bind.read_driver(root, GRACE) == "vfio-pci"  # by ID only plain vfio-pci can claim it


def test_auto_binds_the_variant_driver_and_keeps_it_with_driverctl(grace_host, vfio_pci):
    root = grace_host()
    kernel = PciKernel(KernelSim(root))
    result = vfio_pci(root, kernel=kernel, devices=[GRACE], diff=True)
    assert result["rc"] == 0 and result["changed"] is True, result
    assert vfio_bind.read_driver(root, GRACE) == GRACE_DRIVER
    assert vfio_bind.read_override(root, GRACE) == GRACE_DRIVER
    assert kernel.id_attempts == [] and os.path.exists(os.path.join(root, "dev/vfio/20"))
    entry = result["devices"][GRACE]
    assert (entry["driver_before"], entry["driver_after"], entry["driver"]) == ("nvidia", GRACE_DRIVER, GRACE_DRIVER)
    assert entry["driver_reason"] == "modules.alias" and entry["variant_drivers"] == [GRACE_DRIVER]
    assert entry["modalias"] == GRACE_MODALIAS and entry["persistence"] == "driverctl"
    assert result["persistence"] == "driverctl" and result["ids"] == []
    assert read(root, DRIVERCTL_GRACE) == GRACE_DRIVER + "\n"
    assert read(root, MODULES_LOAD) == vfio.MANAGED_HEADER + GRACE_DRIVER + "\n"  # no vfio-pci: nothing uses it
    assert read(root, MODPROBE) is None
    assert result["files_changed"] == ["/" + MODULES_LOAD, "/" + DRIVERCTL_GRACE]
    assert result["diff"] == [
        {"before": "", "after": vfio.MANAGED_HEADER + GRACE_DRIVER + "\n",
         "before_header": "/%s (absent)" % MODULES_LOAD, "after_header": "/" + MODULES_LOAD},
        {"before": "", "after": GRACE_DRIVER + "\n",
         "before_header": "/%s (absent)" % DRIVERCTL_GRACE, "after_header": "/" + DRIVERCTL_GRACE},
    ]


def test_a_second_run_changes_nothing(grace_host, vfio_pci):
    again = assert_second_run_changes_nothing(vfio_pci, grace_host(), devices=[GRACE, GPU])
    assert {d["driver_after"] for d in again["devices"].values()} == {"vfio-pci", GRACE_DRIVER}


def test_check_mode_predicts_the_real_run_exactly(grace_host, vfio_pci):
    root = grace_host()
    kernel = PciKernel(KernelSim(root))
    before = snapshot(root)
    predicted = vfio_pci(root, kernel=kernel, check_mode=True, diff=True, devices=[GRACE, GPU])
    assert predicted["changed"] is True and kernel.sim.writes == [] and snapshot(root) == before
    real = vfio_pci(root, kernel=kernel, diff=True, devices=[GRACE, GPU])
    assert real["rc"] == 0, real
    for key in ("changed", "devices", "files_changed", "diff", "ids", "persistence", "reboot_required", "commands"):
        assert predicted[key] == real[key], key


def test_plain_and_variant_devices_in_one_run(grace_host, vfio_pci):
    root = grace_host()
    result = vfio_pci(root, devices=[GPU, GRACE])
    assert result["rc"] == 0, result
    assert {a: d["driver_after"] for a, d in result["devices"].items()} == dict(
        {a: "vfio-pci" for a in GPU_FUNCTIONS}, **{GRACE: GRACE_DRIVER})
    assert result["persistence"] == "modprobe" and result["ids"] == GPU_IDS  # no 10de:2342: IDs cannot keep it
    assert {a: d["persistence"] for a, d in result["devices"].items()} == dict(
        {a: "modprobe" for a in GPU_FUNCTIONS}, **{GRACE: "driverctl"})
    assert vfio.modprobe_ids(read(root, MODPROBE)) == GPU_IDS
    assert read(root, MODULES_LOAD) == vfio.MANAGED_HEADER + "vfio-pci\n" + GRACE_DRIVER + "\n"
    assert read(root, DRIVERCTL_GRACE) == GRACE_DRIVER + "\n"
    assert not any(os.path.exists(os.path.join(root, "etc/driverctl.d/pci-" + a)) for a in GPU_FUNCTIONS)
    # Handing back the plain card keeps what the variant device needs.
    gone = vfio_pci(root, devices=[GPU], state="absent")
    assert gone["rc"] == 0 and read(root, MODPROBE) is None
    assert read(root, MODULES_LOAD) == vfio.MANAGED_HEADER + GRACE_DRIVER + "\n"
    assert vfio_bind.read_driver(root, GRACE) == GRACE_DRIVER


def test_driver_vfio_pci_forces_plain_vfio_pci(grace_host, vfio_pci):
    root = grace_host()
    result = vfio_pci(root, devices=[GRACE], driver="vfio-pci")
    assert result["rc"] == 0, result
    assert vfio_bind.read_driver(root, GRACE) == "vfio-pci"
    entry = result["devices"][GRACE]
    assert entry["driver"] == "vfio-pci" and entry["driver_reason"] == "option"
    assert entry["variant_drivers"] == [GRACE_DRIVER] and entry["persistence"] == "modprobe"
    assert result["ids"] == [GRACE_ID] and read(root, DRIVERCTL_GRACE) is None
    assert read(root, MODULES_LOAD) == vfio.MANAGED_HEADER + "vfio-pci\n"


def test_a_named_variant_driver_in_either_spelling(grace_host, vfio_pci):
    root = grace_host()
    result = vfio_pci(root, devices=[GRACE], driver="nvgrace-gpu-vfio-pci")
    assert result["rc"] == 0, result
    assert vfio_bind.read_driver(root, GRACE) == GRACE_DRIVER
    assert result["devices"][GRACE]["driver"] == GRACE_DRIVER
    assert result["devices"][GRACE]["driver_reason"] == "option"
    assert read(root, DRIVERCTL_GRACE) == GRACE_DRIVER + "\n"


def test_a_named_variant_driver_leaves_companions_on_auto(grace_host, vfio_pci):
    root = grace_host()
    result = vfio_pci(root, devices=[GPU], driver="vfio_pci", persistent=False)
    assert {d["driver_reason"] for d in result["devices"].values()} == {"option"}
    failed = vfio_pci(root, devices=[GPU], driver=GRACE_DRIVER)
    assert failed["rc"] == 1
    # Only the selected function is checked against the named driver, not its companions.
    assert "does not match 0000:01:00.0" in failed["msg"] and "0000:01:00.1" not in failed["msg"]


@pytest.mark.parametrize(
    "device, driver, fragments",
    [
        (GRACE, "mlx5_vfio_pci", ["driver mlx5_vfio_pci does not match 0009:01:00.0 (modalias %s)" % GRACE_MODALIAS,
                                  "the variant VFIO drivers that match it are nvgrace_gpu_vfio_pci"]),
        (GPU, "acme_vfio_pci", ["driver acme_vfio_pci does not match 0000:01:00.0",
                                "no variant VFIO driver in modules.alias of kernel %s matches it" % RELEASE]),
    ],
)
def test_a_named_driver_that_does_not_match_fails_and_changes_nothing(grace_host, vfio_pci, device, driver,
                                                                      fragments):
    root = grace_host()
    kernel = PciKernel(KernelSim(root))
    before = snapshot(root)
    result = vfio_pci(root, kernel=kernel, devices=[device], driver=driver)
    assert result["rc"] == 1 and result["changed"] is False
    for fragment in fragments + ["nothing was changed"]:
        assert fragment in result["msg"], result["msg"]
    assert kernel.sim.writes == [] and snapshot(root) == before


@pytest.mark.parametrize("persistence", ["modprobe", "cmdline"])
def test_id_based_persistence_of_a_variant_device_is_refused(grace_host, vfio_pci, persistence):
    root = grace_host()
    kernel = PciKernel(KernelSim(root))
    before = snapshot(root)
    result = vfio_pci(root, kernel=kernel, devices=[GRACE], persistence=persistence)
    assert result["rc"] == 1 and result["changed"] is False
    assert "0009:01:00.0 gets the variant VFIO driver nvgrace_gpu_vfio_pci" in result["msg"]
    assert "never by vendor:device ID" in result["msg"]
    assert "use persistence: auto or driverctl" in result["msg"] and "driver: vfio-pci" in result["msg"]
    assert kernel.sim.writes == [] and snapshot(root) == before


def test_keeping_a_variant_device_needs_driverctl(grace_host, vfio_pci):
    root = grace_host(driverctl=False)
    kernel = PciKernel(KernelSim(root))
    before = snapshot(root)
    result = vfio_pci(root, kernel=kernel, devices=[GRACE])
    assert result["rc"] == 1 and result["changed"] is False
    assert "keeping 0009:01:00.0 on nvgrace_gpu_vfio_pci across reboots needs driverctl" in result["msg"]
    assert "install the driverctl package" in result["msg"]
    assert kernel.sim.writes == [] and snapshot(root) == before
    assert vfio_pci(root, kernel=kernel, devices=[GRACE], persistent=False)["changed"] is True


@pytest.fixture
def grace_on_vfio_pci(grace_host):
    """The GH200 on plain vfio-pci through an override and a driverctl file, as driver: vfio-pci left it."""
    return grace_host(
        patch_devices={GRACE: {"driver": "vfio-pci", "driver_override": "vfio-pci"}},
        files={DRIVERCTL_GRACE: "vfio-pci\n"},
    )


def test_auto_moves_a_device_from_vfio_pci_to_its_variant_driver(grace_on_vfio_pci, vfio_pci):
    root = grace_on_vfio_pci
    kernel = PciKernel(KernelSim(root), host_drivers={GRACE: "nvidia"})
    result = vfio_pci(root, kernel=kernel, devices=[GRACE], diff=True)
    assert result["rc"] == 0 and result["changed"] is True, result
    entry = result["devices"][GRACE]
    assert (entry["driver_before"], entry["driver_after"], entry["changed"]) == ("vfio-pci", GRACE_DRIVER, True)
    assert vfio_bind.read_driver(root, GRACE) == GRACE_DRIVER and kernel.id_attempts == []
    assert ("sys/bus/pci/drivers/vfio-pci/unbind", GRACE) in kernel.sim.writes
    assert read(root, DRIVERCTL_GRACE) == GRACE_DRIVER + "\n"
    assert {"before": "vfio-pci\n", "after": GRACE_DRIVER + "\n", "before_header": "/" + DRIVERCTL_GRACE,
            "after_header": "/" + DRIVERCTL_GRACE} in result["diff"]
    assert vfio_pci(root, kernel=kernel, devices=[GRACE])["changed"] is False


def test_moving_a_device_a_vm_uses_to_its_variant_driver_is_refused(grace_host, vfio_pci):
    root = grace_host(
        patch_devices={GRACE: {"driver": "vfio-pci", "driver_override": "vfio-pci"}},
        processes=[{"pid": 4242, "comm": "qemu-system-aarch64", "holds": [20]}],
    )
    kernel = PciKernel(KernelSim(root), host_drivers={GRACE: "nvidia"})
    before = snapshot(root)
    result = vfio_pci(root, kernel=kernel, devices=[GRACE])
    assert result["rc"] == 1 and result["changed"] is False
    assert [r["code"] for r in result["refusals"]] == ["in_use"]
    assert "qemu-system-aarch64 (pid 4242) holds /dev/vfio/20 open" in result["msg"]
    assert kernel.sim.writes == [] and snapshot(root) == before
    # driver: vfio-pci leaves it where it is: nothing to refuse.
    assert vfio_pci(root, kernel=kernel, devices=[GRACE], driver="vfio-pci", persistent=False)["changed"] is False


def test_auto_after_driver_vfio_pci_moves_the_device_and_drops_its_id(grace_host, vfio_pci):
    root = grace_host()
    kernel = PciKernel(KernelSim(root))
    vfio_pci(root, kernel=kernel, devices=[GPU, GRACE], driver="vfio-pci")
    assert vfio.modprobe_ids(read(root, MODPROBE)) == sorted(GPU_IDS + [GRACE_ID])
    result = vfio_pci(root, kernel=kernel, devices=[GRACE], diff=True)
    assert result["rc"] == 0 and result["changed"] is True, result
    assert vfio_bind.read_driver(root, GRACE) == GRACE_DRIVER and read(root, DRIVERCTL_GRACE) == GRACE_DRIVER + "\n"
    assert result["ids"] == GPU_IDS and vfio.modprobe_ids(read(root, MODPROBE)) == GPU_IDS
    assert not any(GRACE_ID in w for w in warnings(result))


def test_an_id_another_device_needs_stays_with_a_warning(grace_host, vfio_pci):
    root = grace_host(add_devices=[dict(GRACE_DEVICE, address="0019:01:00.0", group=21, driver="vfio-pci")],
                      files={MODPROBE: vfio.render_modprobe_conf([GRACE_ID])})
    result = vfio_pci(root, devices=[GRACE])
    assert result["rc"] == 0, result
    assert result["ids"] == [GRACE_ID] and vfio.modprobe_ids(read(root, MODPROBE)) == [GRACE_ID]
    assert any("0009:01:00.0 gets nvgrace_gpu_vfio_pci through a driverctl override, but its ID 10de:2342 stays"
               in w for w in warnings(result)), warnings(result)


def test_a_failed_move_to_the_variant_driver_goes_back_to_vfio_pci(grace_host):
    """The variant driver never registered (no sys/bus/pci/drivers/<name>): the probe binds nothing,
    and the roll-back puts the vfio-pci override back rather than handing the GPU to nvidia."""
    root = grace_host(modules=(), patch_devices={GRACE: {"driver": "vfio-pci", "driver_override": "vfio-pci"}})
    kernel = PciKernel(KernelSim(root), host_drivers={GRACE: "nvidia"})
    with kernel.sim.active(), pytest.raises(vfio.VfioError) as failure:
        vfio_bind.bind_device(root, GRACE, GRACE_DRIVER, attempts=1, delay=0)
    assert "binding 0009:01:00.0 to nvgrace_gpu_vfio_pci was accepted by the kernel but did not take effect" \
        in str(failure.value)
    assert "now bound to vfio-pci" in str(failure.value)
    assert vfio_bind.read_driver(root, GRACE) == "vfio-pci" and vfio_bind.read_override(root, GRACE) == "vfio-pci"


def test_going_back_to_plain_vfio_pci_drops_the_variant_override(grace_host, vfio_pci):
    root = grace_host()
    vfio_pci(root, devices=[GRACE])
    result = vfio_pci(root, devices=[GRACE], driver="vfio-pci", diff=True)
    assert result["rc"] == 0, result
    assert vfio_bind.read_driver(root, GRACE) == "vfio-pci"
    assert read(root, DRIVERCTL_GRACE) is None and result["ids"] == [GRACE_ID]
    assert read(root, MODULES_LOAD) == vfio.MANAGED_HEADER + "vfio-pci\n"


def test_absent_releases_a_device_from_its_variant_driver(grace_host, vfio_pci):
    root = grace_host()
    kernel = PciKernel(KernelSim(root))
    vfio_pci(root, kernel=kernel, devices=[GRACE])
    predicted = vfio_pci(root, kernel=kernel, check_mode=True, diff=True, devices=[GRACE], state="absent")
    result = vfio_pci(root, kernel=kernel, diff=True, devices=[GRACE], state="absent")
    assert result["rc"] == 0 and result["changed"] is True, result
    assert vfio_bind.read_driver(root, GRACE) == "nvidia" and vfio_bind.read_override(root, GRACE) is None
    assert ("sys/bus/pci/drivers/%s/unbind" % GRACE_DRIVER, GRACE) in kernel.sim.writes
    entry = result["devices"][GRACE]
    assert (entry["driver_before"], entry["driver_after"], entry["driver"]) == (GRACE_DRIVER, "nvidia", None)
    assert read(root, DRIVERCTL_GRACE) is None and read(root, MODULES_LOAD) is None
    assert not os.path.exists(os.path.join(root, "dev/vfio/20"))
    for key in ("changed", "files_changed", "diff", "reboot_required"):
        assert predicted[key] == result[key], key
    assert vfio_pci(root, kernel=kernel, devices=[GRACE], state="absent")["changed"] is False


def test_runtime_false_reports_the_variant_driver_for_the_next_boot(grace_host, vfio_pci):
    root = grace_host()
    result = vfio_pci(root, devices=[GRACE], runtime=False)
    assert result["changed"] is True and vfio_bind.read_driver(root, GRACE) == "nvidia"
    assert result["reboot_reasons"] == [
        "0009:01:00.0 gets nvgrace_gpu_vfio_pci at the next boot: the runtime binding was not requested "
        "(runtime: false)"
    ]


def test_the_variant_module_is_loaded_and_driverctl_run_on_the_host(grace_host, vfio_pci, as_host, fake_commands):
    root = grace_host(modules=())
    fake_commands.install("modprobe", body=MODPROBE_ANY_BODY.format(root=root))
    fake_commands.install("driverctl", body=DRIVERCTL_BODY.format(root=root))
    kernel = PciKernel(KernelSim(root))
    predicted = vfio_pci(root, kernel=kernel, check_mode=True, devices=[GRACE], initramfs=False)
    assert fake_commands.calls() == []
    result = vfio_pci(root, kernel=kernel, devices=[GRACE], initramfs=False)
    assert result["rc"] == 0, result
    expected = [["modprobe", GRACE_DRIVER], ["driverctl", "--noprobe", "set-override", GRACE, GRACE_DRIVER]]
    assert fake_commands.calls() == expected
    assert [[c[0].rsplit("/", 1)[-1]] + c[1:] for c in predicted["commands"]] == expected
    assert vfio_bind.read_driver(root, GRACE) == GRACE_DRIVER and kernel.id_attempts == []
    assert read(root, DRIVERCTL_GRACE) == GRACE_DRIVER + "\n"
    assert warnings(result) == []


def test_a_variant_driver_not_loaded_in_a_tree_fails_cleanly(grace_host, vfio_pci):
    root = grace_host(modules=())
    before = snapshot(root)
    result = vfio_pci(root, devices=[GRACE])
    assert result["rc"] == 1 and result["changed"] is False
    assert "nvgrace_gpu_vfio_pci driver is not loaded" in result["msg"]
    assert snapshot(root) == before


def test_a_grace_hopper_host_binds_its_gpu_through_the_variant_driver_end_to_end(make_host, vfio_pci, run_module):
    root = make_host("grace_hopper")
    install_driverctl(root)
    before = run_module("topology_info", {"root": root})["topology"]
    gpu = next(entry for entry in before["gpus"] if entry["address"] == GRACE)
    assert gpu["passthrough"]["viable"] is True and gpu["passthrough"]["devices"] == [GRACE]

    result = vfio_pci(root, devices=["00000009:01:00.0"], diff=True)
    assert result["rc"] == 0 and result["changed"] is True, result
    assert vfio_bind.read_driver(root, GRACE) == GRACE_DRIVER and vfio_bind.read_override(root, GRACE) == GRACE_DRIVER
    assert result["devices"][GRACE]["driver_reason"] == "modules.alias"
    assert read(root, DRIVERCTL_GRACE) == GRACE_DRIVER + "\n"
    assert vfio_pci(root, devices=[GRACE])["changed"] is False
    after = run_module("topology_info", {"root": root})["topology"]
    assert next(d for d in after["devices"] if d["address"] == GRACE)["driver"] == GRACE_DRIVER


def test_a_power_host_is_refused_with_the_reason_and_nothing_changes(make_host, vfio_pci):
    root = make_host("power9_host")
    before = snapshot(root)
    result = vfio_pci(root, devices=["0035:03:00.0"])
    assert result["rc"] == 1 and result["changed"] is False
    assert "ppc64le hosts are not supported" in result["msg"] and "sPAPR TCE" in result["msg"]
    assert snapshot(root) == before
