# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The vendor backends: the registry, vendor readers limited to their vendor, and per-GPU modes."""

from __future__ import annotations

import ast
import io
import os
import re

import pytest

from ansible_collections.gpuvirt.host.plugins.module_utils import hoststate, restore, sriov, vendor_intel, vendors
from ansible_collections.gpuvirt.host.plugins.module_utils.topology import detect
from ansible_collections.gpuvirt.host.plugins.module_utils.vendor_plan import (
    EnableError,
    EnablePlan,
    RestoreStep,
    VendorBackend,
    VendorRestoreError,
)
from ansible_collections.gpuvirt.host.tests.sim.sriov_hosts import NVME_HOST, all_vfs_enabled


def modes(topology, address):
    gpu = next(entry for entry in topology["gpus"] if entry["address"] == address)
    return {mode["mode"]: mode for mode in gpu["virtualization"]}


def modes_finding(topology, address):
    return next(f for f in topology["findings"] if f["code"] == "virtualization_modes" and f["device"] == address)


def test_the_registry_gives_each_vendor_its_backend_only():
    assert [b.name for b in vendors.backends_for("8086")] == ["intel"]
    assert [b.name for b in vendors.backends_for("10de")] == ["nvidia"]
    assert [b.name for b in vendors.backends_for("1002")] == ["amd"]
    assert vendors.backends_for("15b3") == ()
    assert len(vendors.backends_for(None)) == len(vendors.BACKENDS)


def test_only_backends_that_read_device_state_are_asked_to():
    # NVIDIA reads its nvidia/ directory; Intel and AMD read nothing beyond the generic attributes.
    assert [b.name for b in vendors.readers_for("10de")] == ["nvidia"]
    assert vendors.readers_for("8086") == ()
    assert vendors.readers_for("15b3") == ()
    # A device whose vendor is unknown is read by every backend that reads.
    assert [b.name for b in vendors.readers_for(None)] == ["nvidia"]


def test_a_vendor_reader_never_reads_another_vendors_device(make_host):
    # An Intel iGPU with a stray nvidia/ directory: the NVIDIA reader is not asked.
    root = make_host("gvtg_laptop", files={
        "sys/devices/pci0000:00/0000:00:02.0/nvidia/creatable_vgpu_types": "ID    : vGPU Name\n1 : NVIDIA X-1Q\n",
        "sys/devices/pci0000:00/0000:00:02.0/nvidia/current_vgpu_type": "0\n",
    })
    device = next(d for d in detect(root)["devices"] if d["address"] == "0000:00:02.0")
    assert device["nvidia_vgpu"] is None


def test_gvt_g_before_enablement_names_the_argument_and_the_module(make_host):
    topology = detect(make_host("gvtg_laptop"))
    gvt = modes(topology, "0000:00:02.0")["gvt-g"]
    assert gvt["ready"] is False
    assert gvt["missing"] == ["i915.enable_gvt=1 on the kernel command line and a reboot", "the kvmgt module loaded"]
    assert "can offer now: nothing" in modes_finding(topology, "0000:00:02.0")["message"]


@pytest.mark.parametrize("argument", ["i915.enable_gvt=Y", "i915.enable_gvt=true", "i915.enable_gvt"])
def test_gvt_g_on_the_command_line_in_any_form_the_kernel_takes_is_not_asked_for_again(make_host, argument):
    topology = detect(make_host("gvtg_laptop", kernel={"cmdline": "root=/dev/nvme0n1p2 ro intel_iommu=on " + argument}))

    assert modes(topology, "0000:00:02.0")["gvt-g"]["missing"] == ["the kvmgt module loaded"]


def test_gvt_g_after_enablement_is_ready(make_host):
    topology = detect(make_host("gvtg_laptop_enabled"))
    assert modes(topology, "0000:00:02.0")["gvt-g"] == {"mode": "gvt-g", "ready": True, "missing": []}
    assert "can offer now: gvt-g" in modes_finding(topology, "0000:00:02.0")["message"]


def test_gvt_g_is_refused_on_a_later_generation_with_the_reason(make_host):
    gvt = modes(detect(make_host("desktop_dgpu")), "0000:00:02.0")["gvt-g"]
    assert gvt["ready"] is False and "Broadwell to Comet Lake" in gvt["unsupported"]
    assert vendor_intel.gvt_g_generation("9bc8") and vendor_intel.gvt_g_generation("5917")
    assert not vendor_intel.gvt_g_generation("8a52") and not vendor_intel.gvt_g_generation("a780")


def test_intel_sriov_needs_max_vfs_then_vfs(make_host):
    before = modes(detect(make_host("intel_flex_sriov")), "0000:4e:00.0")["sriov"]
    assert before["ready"] is False
    assert before["missing"][0].startswith("i915.max_vfs=<N> with i915.enable_guc=3")
    assert "VFs reported by the driver (sriov_totalvfs is 0)" in before["missing"]
    pf_mode = {"sriov": {"total_vfs": 31, "num_vfs": 0, "offset": 1, "stride": 1}}  # as i915 reports it then
    after = modes(detect(make_host("intel_flex_sriov", kernel={"parameters": {"i915": {"max_vfs": "31"}}},
                                   patch_devices={"4e:00.0": pf_mode})), "0000:4e:00.0")["sriov"]
    assert after["missing"] == ["VFs enabled (sriov_numvfs, gpuvirt.host.sriov) and handed to vfio-pci"]


def test_amd_mxgpu_is_ready_under_gim_and_asks_for_gim_otherwise(make_host):
    assert modes(detect(make_host("amd_mxgpu")), "0000:06:00.0")["mxgpu"]["ready"] is True
    missing = modes(detect(make_host("amd_mxgpu_no_driver")), "0000:06:00.0")["mxgpu"]["missing"]
    assert "GIM host driver" in missing[0] and "instead of amdgpu" in missing[0]
    assert "not through sriov_numvfs" in missing[1]


def test_nvidia_vgpu_modes(make_host):
    assert modes(detect(make_host(all_vfs_enabled("l40s_vgpu"))), "0000:cb:00.0")["vgpu"]["ready"] is True
    # 8 of its 32 VFs: not SR-IOV mode yet (nvidia_vgpu enables them anew).
    short = modes(detect(make_host("l40s_vgpu")), "0000:cb:00.0")["vgpu"]
    assert short["ready"] is False and short["missing"][0].startswith("all of its VFs (8 of 32 enabled")
    # VFs off, with an nvidia/ directory on the physical function: it offers nothing until the VFs exist.
    pf_only = make_host("l40s_vgpu", patch_devices={"cb:00.0": {
        "sriov": {"total_vfs": 32, "num_vfs": 0, "offset": 4, "stride": 1},
        "nvidia_vgpu": {"creatable": {1041: "NVIDIA L40S-8Q"}, "current": 0}}})
    off = modes(detect(pf_only), "0000:cb:00.0")["vgpu"]
    assert off == {"mode": "vgpu", "ready": False,
                   "missing": ["its VFs (sriov-manage -e, as gpuvirt.host.nvidia_vgpu runs it)"]}
    grace = modes(detect(make_host("grace_hopper")), "0009:01:00.0")["vgpu"]
    assert grace["ready"] is False and "nvidia_vgpu_vfio" in grace["missing"][0]
    # A GeForce-class VGA controller without SR-IOV is not offered vGPU at all.
    assert "vgpu" not in modes(detect(make_host("desktop_dgpu")), "0000:01:00.0")


@pytest.mark.parametrize("name", ["TU117M [GeForce MX450]", "GK106M [GeForce GTX 765M]", "GA107 [GeForce RTX 3050]",
                                  "GP107GLM [Quadro P620]"])
def test_a_laptops_geforce_3d_controller_is_not_offered_vgpu(make_host, name):
    # A muxless (Optimus) laptop's GPU has no display of its own: a 3D controller, as the data-center GPUs
    # (github.com/HikariKnight/ls-iommu/issues/3: "3D controller [0302]: ... TU117M [GeForce MX450]").
    # NVIDIA's vGPU software supports no GeForce and no mobile chip.
    root = make_host("desktop_dgpu", patch_devices={"01:00.0": {"class": "030200", "device_name": name}})
    assert "vgpu" not in modes(detect(root), "0000:01:00.0")
    tesla = make_host("desktop_dgpu",
                      patch_devices={"01:00.0": {"class": "030200", "device_name": "TU104GL [Tesla T4]"}})
    assert modes(detect(tesla), "0000:01:00.0")["vgpu"]["ready"] is False


# -- the seam: generic modules name no vendor, a new vendor is one backend --------------------------

UTILS = os.path.join(os.path.dirname(vendors.__file__))
# The registry, the backend interface and NVIDIA's own vGPU modules.
VENDOR_MODULES = {"vendors.py", "vendor_plan.py", "nvidia_vgpu.py", "nvidia_vgpu_run.py"}
VENDOR_WORDS = re.compile(r"nvidia|sriov.manage|kvmgt|\bgim\b|i915|\bxe\b|amdgpu|nouveau|radeon|mxgpu|gvt", re.I)
VENDOR_IDS = re.compile(r"(0x)?(10de|8086|1002)\Z", re.I)
PACKAGE = "ansible_collections.gpuvirt.host.plugins.module_utils"
VENDOR_MODULE = re.compile(r"(vendor_(?!plan\Z)|nvidia)")


def _docstrings(tree):
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def test_no_generic_module_imports_or_names_a_vendor():
    offences = []
    generic = [n for n in sorted(os.listdir(UTILS)) if n.endswith(".py") and not n.startswith("vendor_")]
    for name in generic:
        if name in VENDOR_MODULES:
            continue
        with open(os.path.join(UTILS, name)) as handle:
            tree = ast.parse(handle.read())
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.module == PACKAGE:
                    imported = [alias.name for alias in node.names]
                else:
                    imported = [(node.module or "").rsplit(".", 1)[-1]]
                offences += ["%s imports %s" % (name, i) for i in imported if VENDOR_MODULE.match(i)]
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                  and (VENDOR_WORDS.search(node.value) or VENDOR_IDS.match(node.value))):
                offences.append("%s: %r" % (name, node.value[:60]))
    assert offences == []
    assert len(generic) > 20  # the scan saw the generic modules


PLUGINS = os.path.dirname(UTILS)
PLUGIN_DOCS = {"DOCUMENTATION", "EXAMPLES", "RETURN"}
# The one list of a device entry's blocks names NVIDIA's own block (its per-VF vGPU profiles, carved through
# NVIDIA's own module); the exports, the report and the facts read the generic vgpu key.
NAMES_NVIDIAS_OWN_BLOCK = {"plugin_utils/device_blocks.py"}


def _documentation(tree):
    """The constants of a plugin's DOCUMENTATION, EXAMPLES and RETURN (text for readers, not code)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id in PLUGIN_DOCS for target in node.targets):
            found.update(id(sub) for sub in ast.walk(node.value))
    return found


def test_no_plugin_outside_module_utils_names_a_vendor_but_nvidias_own_block():
    offences, scanned = [], 0
    for kind in sorted(os.listdir(PLUGINS)):
        if kind == "module_utils" or not os.path.isdir(os.path.join(PLUGINS, kind)):
            continue
        for name in sorted(n for n in os.listdir(os.path.join(PLUGINS, kind)) if n.endswith(".py")):
            with open(os.path.join(PLUGINS, kind, name)) as handle:
                tree = ast.parse(handle.read())
            scanned += 1
            skip = _docstrings(tree) | _documentation(tree)
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skip:
                    continue
                if not (VENDOR_WORDS.search(node.value) or VENDOR_IDS.match(node.value)):
                    continue
                if "%s/%s" % (kind, name) in NAMES_NVIDIAS_OWN_BLOCK and node.value == "nvidia_vgpu":
                    continue
                offences.append("%s/%s: %r" % (kind, name, node.value[:60]))
    assert offences == []
    assert scanned > 15  # the scan saw the modules, filters and plugin_utils


class AcmeTool:
    name = "acme-vf"
    enables_all = False
    install_advice = "install acme-tools"

    def __init__(self, command=None):
        self.command = command

    def executable(self, runner=None):
        return self.command or "/usr/bin/acme-vf"

    def argv(self, executable, pf):
        return [executable, "--enable", pf]

    def failure_advice(self, pf):
        return "check the acme driver on %s" % pf


class AcmeBackend(VendorBackend):
    """A vendor the collection does not have: everything it adds is declared here."""

    name = "acme"
    vendor_id = "1234"
    host_drivers = ("acmegpu",)
    enable_modes = ("acme-split",)
    enable_options = {"acme-split": {"slices": "int", "scheduler": "str"}}
    state_sections = ("acme_slices",)
    vf_tools = {"acme_tool": AcmeTool}

    def enable_plan(self, device, host, mode, options):
        if not options["slices"]:
            raise EnableError("acme-split needs slices; nothing changed")
        return EnablePlan(
            mode=mode, address=device.address,
            files=(("etc/modprobe.d/acme.conf", "options acmegpu split=1 sched=%s\n" % options["scheduler"]),),
            records=(("acme_slices", device.address, {"slices": options["slices"]}),),
        )

    def __init__(self):
        self.restore_steps = (RestoreStep(name="acme_slices", before="mdevs", items=self._items),)

    @staticmethod
    def _items(state, root):
        def restore_slice(context, address, entry):
            if entry.get("slices") == "bad":
                raise VendorRestoreError("%s: the acme driver refused the slices" % address)
            return "%s slices on %s" % (entry["slices"], context.root and address)

        return [
            (address, lambda context, address=address, entry=entry: restore_slice(context, address, entry))
            for address, entry in sorted((state.get("acme_slices") or {}).items())
        ]

    def vf_count_set_by(self, device):
        return "the acme driver sets it" if device.driver == "acmegpu" else None


@pytest.fixture
def nvme_tree(make_host):
    return make_host(NVME_HOST)


@pytest.fixture
def acme(monkeypatch):
    backend = AcmeBackend()
    monkeypatch.setattr(vendors, "BACKENDS", vendors.BACKENDS + (backend,))
    monkeypatch.setattr(vendors, "_BY_VENDOR", dict(vendors._BY_VENDOR, **{"1234": (backend,)}))
    return backend


def test_the_restore_runs_every_vendors_steps_around_the_generic_ones():
    names = [step if isinstance(step, str) else step.name for step in restore.steps()]
    assert names == ["gvt_g", "driver", "intel_sriov", "mxgpu", "sriov", "vfio", "nvidia_vgpu", "mdevs"]
    assert hoststate.sections() == ("sriov", "nvidia_vgpu", "mdevs")


def test_a_new_vendor_is_one_backend(acme, make_host):
    assert hoststate.sections() == ("sriov", "nvidia_vgpu", "acme_slices", "mdevs")
    assert hoststate.empty_state()["acme_slices"] == {}
    assert "acme-split" in vendors.enable_modes() and "acmegpu" in vendors.host_graphics_drivers()
    assert isinstance(vendors.vf_tool("acme_tool", "/opt/acme-vf"), AcmeTool)
    assert vendors.vf_tool("acme_tool", "/opt/acme-vf").command == "/opt/acme-vf"
    assert vendors.vf_tool("nothing") is None
    names = [step if isinstance(step, str) else step.name for step in restore.steps()]
    assert names[-3:] == ["nvidia_vgpu", "acme_slices", "mdevs"]

    state = hoststate.empty_state()
    state["acme_slices"] = {"0000:41:00.0": {"slices": 4}, "0000:42:00.0": {"slices": "bad"}}
    root = make_host("gvtg_laptop")
    status = restore.Restore(root=root, out=io.StringIO(), timeout=0.1, interval=0.01, state=state).run()
    assert [(r["step"], r["item"], r["ok"]) for r in status["results"]] == [
        ("acme_slices", "0000:41:00.0", True),
        ("acme_slices", "0000:42:00.0", False),
    ]
    assert status["results"][0]["message"] == "4 slices on 0000:41:00.0"
    assert "the acme driver refused the slices" in status["results"][1]["message"]


def test_a_vendor_tool_method_is_run_through_the_registry(acme, nvme_tree, tmp_path):
    calls = []

    class Runner:
        def run_command(self, argv):
            calls.append(argv)
            return 1, "", "no acme card"

    tool = tmp_path / "acme-vf"
    tool.write_text("#!/bin/sh\nexit 1\n")
    tool.chmod(0o755)
    acme.vf_tools = {"acme_tool": lambda command=None: AcmeTool(str(tool))}
    with pytest.raises(sriov.SriovError) as error:
        sriov.restore_pf(nvme_tree, "0000:04:00.0", 2, method="acme_tool", runner=Runner(), retries=2, delay=0)
    assert calls == [[str(tool), "--enable", "0000:04:00.0"]] * 2
    assert "in 2 attempts" in str(error.value) and "check the acme driver on 0000:04:00.0" in str(error.value)


ACME_GPU = "0000:41:00.0"


def test_a_new_vendors_mode_takes_its_options_and_records_what_its_restore_needs(acme, make_host, run_module):
    # Through the generic module: the vendor's own options pass through, its plan's records land in its
    # state section (for its restore step), check mode predicts it all, and a second run changes nothing.
    root = make_host("desktop_dgpu", add_devices=[
        {"address": "41:00.0", "ids": "1234:0001", "class": "030000", "driver": "acmegpu", "group": 41}])
    args = {"root": root, "selector": ACME_GPU, "mode": "acme-split", "options": {"slices": 4, "scheduler": "rr"}}

    predicted = run_module("virtualization_mode", args, check_mode=True, diff=True)
    assert predicted["rc"] == 0 and predicted["changed"], predicted
    assert not os.path.exists(os.path.join(root, hoststate.STATE_PATH))
    done = run_module("virtualization_mode", args, diff=True)
    assert done["rc"] == 0 and done["files_changed"] == predicted["files_changed"], done
    assert done["diff"] == predicted["diff"]
    assert hoststate.load_state(root)["acme_slices"] == {ACME_GPU: {"slices": 4}}
    with open(os.path.join(root, "etc/modprobe.d/acme.conf")) as handle:
        assert handle.read() == "options acmegpu split=1 sched=rr\n"
    assert run_module("virtualization_mode", args)["changed"] is False

    status = restore.Restore(root=root, out=io.StringIO(), timeout=0.1, interval=0.01).run()
    acme_results = [r for r in status["results"] if r["step"] == "acme_slices"]
    assert [(r["item"], r["ok"], r["message"]) for r in acme_results] == [(ACME_GPU, True, "4 slices on " + ACME_GPU)]


@pytest.mark.parametrize("options, message", [
    ({"slices": 4, "colour": "red"}, "mode acme-split takes the options slices, scheduler, not colour"),
    ({"scheduler": "rr"}, "acme-split needs slices"),
])
def test_a_new_vendors_mode_refuses_options_it_does_not_take(acme, make_host, run_module, options, message):
    root = make_host("desktop_dgpu", add_devices=[
        {"address": "41:00.0", "ids": "1234:0001", "class": "030000", "driver": "acmegpu", "group": 41}])
    result = run_module("virtualization_mode", {"root": root, "selector": ACME_GPU, "mode": "acme-split",
                                                "options": options})
    assert result.failed and message in result["msg"], result
    assert not os.path.exists(os.path.join(root, "etc/modprobe.d/acme.conf"))


def backend(**attributes):
    made = type("Made", (VendorBackend,), dict({"name": "made", "vendor_id": "1ed5"}, **attributes))()
    return made


@pytest.mark.parametrize("added, message", [
    (backend(vendor_id="1ED5"), "vendor_id '1ED5' is not 4 lowercase hex digits"),
    (backend(name="acme"), "backend name 'acme' is claimed by both"),
    (backend(state_sections=("acme_slices",)), "state section 'acme_slices' is claimed by both the acme and the made"),
    (backend(state_sections=("mdevs",)), "state section 'mdevs' is claimed"),
    (backend(restore_steps=(RestoreStep(name="sriov", before="mdevs", items=list),)), "restore step 'sriov'"),
    (backend(restore_steps=(RestoreStep(name="made", before="boot", items=list),)), "which is no generic step"),
    (backend(vendor_id="1234", enable_modes=("acme-split",)), "mode of vendor 1234 'acme-split' is claimed"),
    (backend(enable_options={"split": {"slices": "int"}}), "options for modes it does not offer: split"),
    (backend(enable_modes=("split",), enable_options={"split": {"slices": "float"}}), "unknown types: float"),
])
def test_the_registry_refuses_backends_it_cannot_tell_apart(added, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        vendors.check_registry(vendors.BACKENDS + (AcmeBackend(), added))


def test_the_shipped_registry_passes_and_a_second_backend_of_a_vendor_is_kept_beside_the_first():
    vendors.check_registry(vendors.BACKENDS)
    second = backend(vendor_id="10de", name="nvidia-npu", enable_modes=("npu-split",))
    vendors.check_registry(vendors.BACKENDS + (second,))
    assert vendors.by_vendor(vendors.BACKENDS + (second,))["10de"] == (vendors.BACKENDS[0], second)


def test_a_new_vendors_vgpu_types_reach_the_exports_the_report_and_the_fact(acme, make_host, monkeypatch):
    # A vendor whose VFs take a vGPU type through its own interface reports it under the generic vgpu key:
    # the controller-side readers count it and take such a VF as ready on its own driver, with no edit.
    from ansible_collections.gpuvirt.host.plugins.filter.gpuvirt_fact import gpuvirt_fact
    from ansible_collections.gpuvirt.host.plugins.filter.proxmox_pci_mapping import proxmox_pci_mapping
    from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import read_attribute_at
    from ansible_collections.gpuvirt.host.plugins.plugin_utils import report
    from ansible_collections.gpuvirt.host.plugins.plugin_utils.exports import ExportError, HostView

    def read_device(path, address, findings, directory=None):
        text, _problem = read_attribute_at(directory, "acme_vgpu" if directory is not None else path + "/acme_vgpu")
        return {"vgpu": None if text is None else {"vendor": "acme", "current": int(text), "creatable": []}}

    monkeypatch.setattr(acme, "read_device", read_device, raising=False)
    monkeypatch.setattr(vendors, "_READERS", dict(vendors._READERS, **{"1234": (acme,)}))
    root = make_host("desktop_dgpu", add_devices=[{
        "address": "41:00.0", "ids": "1234:0001", "class": "030200", "driver": "acmegpu", "group": 41,
        "sriov": {"total_vfs": 2, "num_vfs": 2, "offset": 1, "stride": 1, "vf": {"driver": "acmegpu", "group": "own"}},
    }], files={"sys/bus/pci/devices/0000:41:00.1/acme_vgpu": "7\n",
               "sys/bus/pci/devices/0000:41:00.2/acme_vgpu": "0\n"})
    topology = detect(root)
    devices = {device["address"]: device for device in topology["devices"]}
    assert devices["0000:41:00.1"]["vgpu"] == {"vendor": "acme", "current": 7, "creatable": []}
    assert devices["0000:41:00.2"]["vgpu"]["current"] == 0
    assert devices["0000:41:00.0"]["vgpu"] is None and devices["0000:01:00.0"]["vgpu"] is None

    assert gpuvirt_fact(topology)["vgpus"] == 1
    row = report.host_row(report.load_record(topology, "acme1"))
    assert row["vgpus"] == 1 and row["profiles_in_use"] == {"acme vGPU type 7": 1}
    vfs = {vf["address"]: vf for box in report.group_boxes(topology) for entry in box["devices"] for vf in entry["vfs"]}
    assert vfs["0000:41:00.1"]["vgpu_type"] == 7 and vfs["0000:41:00.2"]["vgpu_type"] is None
    view = HostView(topology)
    assert not any("not to vfio-pci" in reason for reason in view.passthrough_refusals("0000:41:00.1"))
    assert any("bound to acmegpu, not to vfio-pci" in reason for reason in view.passthrough_refusals("0000:41:00.2"))
    # Proxmox VE sets NVIDIA's vGPU types only: no mdev mapping of another vendor's, and no advice to make one.
    with pytest.raises(ExportError) as refused:
        proxmox_pci_mapping(topology, {"node": "pve", "mappings": [
            {"id": "acme", "devices": ["0000:41:00.1", "0000:41:00.2"], "mdev": True}]})
    for vf in ("0000:41:00.1", "0000:41:00.2"):
        assert "%s takes acme vGPU types, which Proxmox VE does not set" % vf in str(refused.value)
    with pytest.raises(ExportError, match="Proxmox VE does not set acme vGPU types: pass it to a VM with libvirt"):
        proxmox_pci_mapping(topology, {"node": "pve", "mappings": [{"id": "acme", "devices": ["0000:41:00.1"]}]})


def test_one_backends_none_does_not_hide_anothers_vgpu(acme, make_host):
    # A device every backend reads (its vendor unknown) or a vendor with two backends: the vGPU one of them
    # found stays, in either order.
    class Other(AcmeBackend):
        name = "other"

        def read_device(self, path, address, findings, directory=None):
            return {"vgpu": None}

    found = {"vgpu": {"vendor": "acme", "current": 7, "creatable": []}}
    acme.read_device = lambda path, address, findings, directory=None: dict(found)
    for order in ((acme, Other()), (Other(), acme)):
        assert vendors.read_vendor_state(order, "/nowhere", "0000:41:00.1", None) == found
