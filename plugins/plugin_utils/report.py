# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet report: per-host records, the host table and the static HTML page.

Public API:

- :data:`RECORD_FORMAT` -- the ``format`` key of a per-host JSON record written by the ``report``
  playbook: ``{"format", "host", "collected_at", "source", "pending_reboot", "pending_reboot_reasons",
  "topology"}`` (``live``), or ``"fact"`` instead of ``"topology"`` (``cache``: the small ``gpuvirt``
  fact from the fact cache). A host the last run did not reach (unreachable, or a task failed) has
  ``not_reached_at`` (when) beside the record it kept from an earlier run, if any (``source``
  ``not_reached`` without one).
- :func:`load_record` ``(data, name) -> dict | None``: a record from a JSON document; the raw
  topology files of ``topology_report`` are read too (the host named by the file); anything else
  (``preflight.json``...) is None.
- :func:`host_row` ``(record) -> dict``: the host table's cells.
- :func:`group_boxes` ``(topology) -> list``: the IOMMU groups to draw, each device with its verdict.
- :func:`render` ``(records, title, generated_at) -> str``: one self-contained HTML page.
- :func:`not_reached_record` ``(record, host, when) -> dict``: the record of a host a run did not reach.
- :func:`natural_key` ``(name)``: the hosts' sort order.
- :func:`unsafe_host_names` ``(hosts) -> list[str]``: the host names that cannot name a record file.

Verdicts of a device in a picture: ``viable`` (a GPU that can be passed through now or once bound to
vfio-pci), ``companion`` (a function that goes with such a GPU), ``blocked`` (a GPU that cannot, with
the reasons), ``boot-vga`` (the boot VGA device, the boot display the kernel marks on a GPU of
another class, or the GPU whose memory holds the firmware's framebuffer), ``host-critical`` (root
disk, the NIC of a default route or an SSH session), ``bridge``, ``other`` (a device sharing the group).
"""

from __future__ import annotations

import json
import re
from html import escape

from ansible_collections.gpuvirt.host.plugins.module_utils.drivers import is_vfio_driver
from ansible_collections.gpuvirt.host.plugins.module_utils.sysfs import BRIDGE_CLASSES, HOST_BRIDGE_CLASS
from ansible_collections.gpuvirt.host.plugins.module_utils.vendor_plan import device_vgpu

RECORD_FORMAT = "gpuvirt.host/report-host/1"
VERDICTS = ("viable", "companion", "blocked", "boot-vga", "host-critical", "bridge", "other")
SEVERITIES = ("error", "warning", "info")


def _list(value):
    return value if isinstance(value, list) else []


def _dict(value):
    return value if isinstance(value, dict) else {}


def load_record(data, name):
    """A host record from a parsed JSON document, or None when it is not one."""
    if isinstance(data, dict) and data.get("format") == RECORD_FORMAT and data.get("host"):
        return data
    if isinstance(data, dict) and isinstance(data.get("devices"), list) and isinstance(data.get("iommu"), dict):
        return {
            "format": RECORD_FORMAT,
            "host": name,
            "collected_at": None,
            "source": "topology_report",
            "pending_reboot": None,
            "pending_reboot_reasons": [],
            "topology": data,
        }
    return None


def unsafe_host_names(hosts):
    """The names of ``hosts`` that cannot name a record file (``<host>.json``) in the report folder, sorted:
    empty, with a ``/`` (out of the folder, or into a subfolder) or a NUL, or starting with ``.`` (a hidden
    file, which the page does not read)."""
    names = (str(host) for host in hosts or [])
    return sorted(name for name in names if not name or "/" in name or "\0" in name or name.startswith("."))


def not_reached_record(record, host, when):
    """The record of ``host`` after a run that did not reach it at ``when``: the earlier ``record`` (None:
    none) marked ``not_reached_at``, or one that holds only that."""
    if record is None:
        return {"format": RECORD_FORMAT, "host": host, "collected_at": None, "source": "not_reached",
                "pending_reboot": None, "pending_reboot_reasons": [], "not_reached_at": when}
    return dict(record, not_reached_at=when)


def _model(gpu, devices):
    device = devices.get(gpu.get("address"), {})
    name = device.get("device_name") or gpu.get("name")
    return name or "%s:%s" % (gpu.get("vendor_id") or "?", gpu.get("device_id") or "?")


def host_row(record):
    """Cells of the host table: GPU models and counts, readiness, vGPU/mdev use and capacity, reboot, findings."""
    topology = _dict(record.get("topology"))
    fact = _dict(record.get("fact"))
    row = {
        "host": record.get("host"),
        "source": record.get("source"),
        "collected_at": record.get("collected_at"),
        "pending_reboot": record.get("pending_reboot"),
        "pending_reboot_reasons": _list(record.get("pending_reboot_reasons")),
        "not_reached_at": record.get("not_reached_at"),
    }
    if not topology and not fact:  # a host no run has reached: nothing is known of it
        row.update({"models": None, "gpus": 0, "ready": 0, "viable": None, "profiles_in_use": None,
                    "mdevs_in_use": None, "vgpus": None, "free": None,
                    "findings": {"error": None, "warning": None, "info": None}, "iommu": None})
        return row
    if not topology:
        # The fact counts what is in use but not by profile, and holds no free capacity and no warnings or info
        # findings: those are unknown (None), not none.
        row.update(
            {
                "models": {m.get("model"): m.get("count") for m in _list(fact.get("gpu_model_counts"))},
                "gpus": fact.get("gpu_count", 0),
                "ready": fact.get("passthrough_ready_count", 0),
                "viable": None,
                "profiles_in_use": None if fact else {},
                "mdevs_in_use": fact.get("mdevs_in_use", 0),
                "vgpus": fact.get("vgpus", 0),
                "free": None if fact else {},
                "findings": {"error": len(_list(fact.get("blockers"))), "warning": None, "info": None}
                if fact else {"error": 0, "warning": None, "info": None},
                "iommu": fact.get("iommu"),
            }
        )
        if row["pending_reboot"] is None:
            row["pending_reboot"] = fact.get("reboot_pending")
        return row
    devices = {d.get("address"): d for d in _list(topology.get("devices"))}
    physical = [g for g in _list(topology.get("gpus")) if not g.get("is_vf")]
    models = {}
    for gpu in physical:
        model = _model(gpu, devices)
        models[model] = models.get(model, 0) + 1
    viable = [g for g in physical if _dict(g.get("passthrough")).get("viable")]
    ready = [g for g in viable if is_vfio_driver(g.get("driver"))]
    in_use, free = {}, {}
    mdevs = _list(topology.get("mdevs"))
    names = {}
    for parent in _list(topology.get("mdev_parents")):
        for entry in _list(parent.get("types")):
            label = entry.get("name") or entry.get("id")
            names[entry.get("id")] = label
            free[label] = free.get(label, 0) + (entry.get("available_instances") or 0)
    for mdev in mdevs:
        label = names.get(mdev.get("type"), mdev.get("type"))
        in_use[label] = in_use.get(label, 0) + 1
    vgpus = 0
    for device in devices.values():
        vgpu = _dict(device_vgpu(device))
        if vgpu.get("current"):
            vgpus += 1
            label = " ".join(part for part in (vgpu.get("vendor"), "vGPU type %s" % vgpu["current"]) if part)
            in_use[label] = in_use.get(label, 0) + 1
        for entry in _list(vgpu.get("creatable")) if not vgpu.get("current") else []:
            label = entry.get("name") or str(entry.get("id"))
            free[label] = free.get(label, 0) + 1
    findings = {severity: 0 for severity in SEVERITIES}
    for finding in _list(topology.get("findings")):
        if finding.get("severity") in findings:
            findings[finding["severity"]] += 1
    row.update(
        {
            "models": models,
            "gpus": len(physical),
            "ready": len(ready),
            "viable": len(viable),
            "profiles_in_use": in_use,
            "mdevs_in_use": len([m for m in mdevs if m.get("in_use_by")]),
            "vgpus": vgpus,
            "free": {k: v for k, v in free.items() if v},
            "findings": findings,
            "iommu": _dict(topology.get("iommu")).get("enabled"),
        }
    )
    return row


def _device_entry(address, device, name, identity, verdict):
    """A device to draw: ``identity`` (its topology device or GPU entry) gives its IDs and driver, ``verdict``
    its ``(verdict, reasons, codes)``; no VFs, mdevs or types yet."""
    verdict, reasons, codes = verdict
    return {
        "address": address,
        "name": name,
        "vendor": device.get("vendor_name"),
        "ids": "%s:%s" % (identity.get("vendor_id") or "?", identity.get("device_id") or "?"),
        "driver": identity.get("driver"),
        "numa_node": device.get("numa_node"),
        "verdict": verdict,
        "reasons": reasons,
        "codes": codes,
        "vfs": [],
        "mdevs": [],
        "mdev_types": [],
    }


def _verdicts(topology):
    """Verdict, reasons and role of every device that belongs in a GPU's picture."""
    devices = {d.get("address"): d for d in _list(topology.get("devices"))}
    verdicts = {}
    for gpu in _list(topology.get("gpus")):
        address = gpu.get("address")
        passthrough = _dict(gpu.get("passthrough"))
        codes = _list(passthrough.get("codes"))
        if gpu.get("boot_vga") or "boot_display" in codes or "firmware_framebuffer" in codes:
            verdict = "boot-vga"
        elif "host_critical" in codes or _list(devices.get(address, {}).get("critical")):
            verdict = "host-critical"
        elif passthrough.get("viable"):
            verdict = "viable"
        else:
            verdict = "blocked"
        verdicts[address] = (verdict, _list(passthrough.get("reasons")), codes)
        for companion in _list(passthrough.get("devices")):
            if companion != address and companion not in verdicts:
                critical = _list(devices.get(companion, {}).get("critical"))
                verdicts[companion] = ("host-critical" if critical else "companion", critical, [])
    for address, device in devices.items():
        if address not in verdicts and _list(device.get("critical")):
            verdicts[address] = ("host-critical", _list(device.get("critical")), ["host_critical"])
    return verdicts


def group_boxes(topology):
    """The IOMMU groups that hold a GPU (VFs are drawn under their physical function), in number order."""
    devices = {d.get("address"): d for d in _list(topology.get("devices"))}
    gpus = {g.get("address"): g for g in _list(topology.get("gpus"))}
    verdicts = _verdicts(topology)
    groups = _dict(topology.get("iommu_groups"))
    shown_pfs = {g.get("physfn") for g in gpus.values() if g.get("is_vf")}
    mdevs_by_parent = {}
    for mdev in _list(topology.get("mdevs")):
        mdevs_by_parent.setdefault(mdev.get("parent"), []).append(mdev)
    parents = {p.get("parent"): p for p in _list(topology.get("mdev_parents"))}
    boxes = []
    for number in sorted(groups, key=lambda n: (len(str(n)), str(n))):
        members = _list(groups[number])
        if not any(a in gpus and not (gpus[a].get("is_vf") and gpus[a].get("physfn") in shown_pfs) for a in members):
            continue
        box = {"group": str(number), "devices": []}
        for address in members:
            device = devices.get(address, {"address": address})
            # What stays with the host when the group goes to a VM: PCI bridges, and host bridges no
            # driver holds (topology_info's verdicts leave both out of the group's endpoints).
            kind = str(device.get("class") or "")[:4]
            is_bridge = kind in BRIDGE_CLASSES or (kind == HOST_BRIDGE_CLASS and not device.get("driver"))
            verdict, reasons, codes = verdicts.get(address, ("bridge" if is_bridge else "other", [], []))
            entry = _device_entry(
                address, device, device.get("device_name") or _dict(gpus.get(address)).get("name")
                or device.get("class_name"), device, (verdict, reasons, codes),
            )
            for vf in _list(_dict(device.get("sriov")).get("vfs")):
                vf_device = devices.get(vf, {})
                vf_gpu = gpus.get(vf, {})
                vgpu = _dict(device_vgpu(vf_device))
                entry["vfs"].append(
                    {
                        "address": vf,
                        "group": vf_device.get("iommu_group"),
                        "driver": vf_device.get("driver"),
                        "verdict": "viable" if _dict(vf_gpu.get("passthrough")).get("viable") else "blocked",
                        "vgpu_type": vgpu.get("current") or None,
                        "mdevs": [_mdev_entry(m) for m in mdevs_by_parent.get(vf, [])],
                    }
                )
            entry["mdevs"] = [_mdev_entry(m) for m in mdevs_by_parent.get(address, [])]
            entry["mdev_types"] = [
                {"id": t.get("id"), "name": t.get("name"), "free": t.get("available_instances")}
                for t in _list(_dict(parents.get(address)).get("types"))
            ]
            box["devices"].append(entry)
        boxes.append(box)
    return boxes


def _mdev_entry(mdev):
    users = _list(mdev.get("in_use_by"))
    return {
        "uuid": mdev.get("uuid"),
        "type": mdev.get("type"),
        "in_use_by": ["%s (%s)" % (u.get("comm"), u.get("pid")) for u in users],
    }


# ------------------------------------------------------------------------------------------------
# HTML

_CSS = """
:root{--viable:#1b7f3b;--viable-bg:#e3f4e8;--companion:#1f5fa8;--companion-bg:#e4eefa;--blocked:#b3261e;
--blocked-bg:#fbe4e2;--boot-vga:#a15c00;--boot-vga-bg:#fff0d6;--host-critical:#6a1b9a;--host-critical-bg:#f1e3f7;
--bridge:#6b6b6b;--bridge-bg:#f2f2f2;--other:#8a4b45;--other-bg:#f6ecea;font-family:system-ui,sans-serif}
body{margin:1.5rem;color:#1d1d1f;background:#fafafa}h1{font-size:1.4rem}h2{font-size:1.2rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;background:#fff}th,td{border:1px solid #ddd;padding:.35rem .5rem;
text-align:left;vertical-align:top;font-size:.85rem}th{background:#eee;cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
.controls{margin:.5rem 0 1rem;display:flex;gap:1rem;align-items:center}input[type=search]{width:22rem;padding:.3rem}
.sev{display:inline-block;min-width:1.4rem;text-align:center;border-radius:.6rem;padding:0 .35rem;color:#fff}
.sev-error{background:#b3261e}.sev-warning{background:#a15c00}.sev-info{background:#1f5fa8}.sev-0{background:#bbb}
.host{background:#fff;border:1px solid #ddd;border-radius:.4rem;padding:.5rem 1rem;margin:1rem 0}
.groups{display:flex;flex-wrap:wrap;gap:.75rem}.group{border:2px solid #444;border-radius:.4rem;padding:.4rem;
background:#fff;min-width:14rem;max-width:30rem}.group>h4{margin:.1rem 0 .4rem;font-size:.85rem}
.dev{border:2px solid;border-radius:.3rem;padding:.3rem .4rem;margin:.3rem 0;font-size:.78rem}
.dev .addr{font-family:monospace;font-weight:600}.dev .why{margin:.2rem 0 0 1rem;padding:0}
.numa{float:right;font-size:.7rem;border:1px solid #999;border-radius:.5rem;padding:0 .3rem;background:#fff}
.children{display:flex;flex-wrap:wrap;gap:.25rem;margin-top:.3rem}.chip{border:1px solid;border-radius:.25rem;
padding:.05rem .3rem;font-family:monospace;font-size:.7rem;background:#fff}
.legend{display:flex;gap:.5rem;flex-wrap:wrap;margin:.5rem 0}.legend .dev{margin:0}
.findings li{margin:.2rem 0;font-size:.85rem}.muted{color:#666}
"""
for _verdict in VERDICTS:
    _CSS += ".v-%s{border-color:var(--%s);background:var(--%s-bg)}.chip.v-%s{color:var(--%s)}" % (
        _verdict,
        _verdict,
        _verdict,
        _verdict,
        _verdict,
    )

_JS = """
(function(){
var table=document.getElementById('hosts'),body=table.tBodies[0],search=document.getElementById('filter'),
only=document.getElementById('only-problems'),count=document.getElementById('shown');
function cell(row,i){var c=row.cells[i];return c.hasAttribute('data-sort')?c.getAttribute('data-sort'):c.textContent;}
Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){th.addEventListener('click',function(){
var asc=th.getAttribute('aria-sort')!=='ascending';Array.prototype.forEach.call(table.tHead.rows[0].cells,
function(o){o.removeAttribute('aria-sort');});th.setAttribute('aria-sort',asc?'ascending':'descending');
var numeric=th.getAttribute('data-type')==='number',rows=Array.prototype.slice.call(body.rows);
rows.sort(function(a,b){var x=cell(a,i),y=cell(b,i);var r=numeric?(parseFloat(x)||0)-(parseFloat(y)||0):
x.localeCompare(y,undefined,{numeric:true});return asc?r:-r;});rows.forEach(function(r){body.appendChild(r);});});});
function apply(){var words=search.value.toLowerCase().split(/\\s+/).filter(Boolean),shown=0;
Array.prototype.forEach.call(body.rows,function(row){var text=row.textContent.toLowerCase();
var ok=words.every(function(w){return text.indexOf(w)>=0;})&&(!only.checked||row.getAttribute('data-problem')==='1');
row.hidden=!ok;var section=document.getElementById(row.getAttribute('data-section'));if(section){section.hidden=!ok;}
if(ok){shown++;}});count.textContent=shown;}
search.addEventListener('input',apply);only.addEventListener('change',apply);apply();
document.body.setAttribute('data-ready','1');
})();
"""


def _e(value):
    return escape("" if value is None else str(value), quote=True)


def _anchor(host, index):
    """The id of a host's section: its position in the page, then its name as far as ids take it (``gpu.01``
    and ``gpu_01`` are two hosts)."""
    return "host-%d-" % index + "".join(c if c.isalnum() or c in "-_" else "_" for c in str(host))


def _counts(counted):
    return ", ".join("%s \u00d7 %s" % (n, label) for label, n in sorted(counted.items())) or "none"


def _row_html(row, index):
    problem = bool(row["findings"]["error"] or row["pending_reboot"] or not row["iommu"] or row["not_reached_at"])
    if row["models"] is None:
        models = "unknown"
    else:
        models = ", ".join("%s \u00d7 %s" % (count, model) for model, count in sorted(row["models"].items())) or "none"
    if row["vgpus"] is None:
        in_use = "unknown"
    elif row["profiles_in_use"] is None:  # the fact's counts, without the profiles
        in_use = "%d vGPU%s, %d mdev%s in use" % (row["vgpus"], "" if row["vgpus"] == 1 else "s",
                                                  row["mdevs_in_use"], "" if row["mdevs_in_use"] == 1 else "s")
    else:
        in_use = _counts(row["profiles_in_use"])
    free = "unknown" if row["free"] is None else _counts(row["free"])
    reboot = {True: "yes", False: "no", None: "unknown"}[row["pending_reboot"]]
    ready = "%d of %d" % (row["ready"], row["gpus"]) if row["models"] is not None else "unknown"
    if row["viable"] is not None and row["viable"] > row["ready"]:
        ready += " (%d more once bound to vfio-pci)" % (row["viable"] - row["ready"])
    cells = [
        "<td data-sort='%s'><a href='#%s'>%s</a>%s%s</td>"
        % (
            _e(row["host"]),
            _anchor(row["host"], index),
            _e(row["host"]),
            " <span class='muted'>(fact cache)</span>" if row["source"] == "cache" else "",
            " <span class='sev sev-error'>not reached at %s</span>" % _e(row["not_reached_at"])
            if row["not_reached_at"] else "",
        ),
        "<td data-sort='%d'>%s</td>" % (row["gpus"], _e(models)),
        "<td data-sort='%d' class='ready'>%s</td>" % (row["ready"], _e(ready)),
        "<td>%s</td>" % _e(in_use),
        "<td>%s</td>" % _e(free),
        "<td data-sort='%s' title='%s'>%s</td>" % (reboot, _e("; ".join(row["pending_reboot_reasons"])), reboot),
    ]
    for severity in SEVERITIES:
        n = row["findings"][severity]
        if n is None:
            cells.append("<td data-sort=''><span class='sev sev-0' title='unknown'>?</span></td>")
            continue
        cells.append(
            "<td data-sort='%d'><span class='sev %s'>%d</span></td>" % (n, "sev-%s" % severity if n else "sev-0", n)
        )
    return "<tr data-host='%s' data-section='%s' data-problem='%d'>%s</tr>" % (
        _e(row["host"]),
        _anchor(row["host"], index),
        int(problem),
        "".join(cells),
    )


def _device_html(entry):
    title = "%s %s" % (entry["vendor"] or "", entry["name"] or "")
    numa = entry["numa_node"]
    lines = [
        "<div class='dev v-%s' data-verdict='%s' data-address='%s'>"
        % (entry["verdict"], entry["verdict"], _e(entry["address"])),
        "<span class='numa' title='NUMA node'>NUMA %s</span>" % ("?" if numa is None or numa < 0 else _e(numa)),
        "<span class='addr'>%s</span> [%s] %s" % (_e(entry["address"]), _e(entry["ids"]), _e(title.strip())),
        "<div>driver: %s &middot; <strong>%s</strong>%s</div>"
        % (
            _e(entry["driver"] or "none"),
            _e(entry["verdict"]),
            " (%s)" % _e(", ".join(entry["codes"])) if entry["codes"] else "",
        ),
    ]
    if entry["reasons"]:
        lines.append("<ul class='why'>%s</ul>" % "".join("<li>%s</li>" % _e(r) for r in entry["reasons"]))
    if entry["mdev_types"]:
        lines.append(
            "<div class='muted'>mdev types: %s</div>"
            % _e(
                ", ".join(
                    "%s (%s free)" % (t["name"] or t["id"], "?" if t["free"] is None else t["free"])
                    for t in entry["mdev_types"]
                )
            )
        )
    children = []
    for vf in entry["vfs"]:
        label = "VF %s grp %s" % (vf["address"], vf["group"] if vf["group"] is not None else "-")
        if vf["vgpu_type"]:
            label += " vGPU %s" % vf["vgpu_type"]
        if vf["mdevs"]:
            label += " mdev %s" % ", ".join(m["type"] or "?" for m in vf["mdevs"])
        children.append(
            "<span class='chip vf v-%s' data-kind='vf' title='driver %s'>%s</span>"
            % (vf["verdict"], _e(vf["driver"] or "none"), _e(label))
        )
    for mdev in entry["mdevs"]:
        children.append(
            "<span class='chip mdev v-%s' data-kind='mdev' title='%s'>mdev %s %s%s</span>"
            % (
                "blocked" if mdev["in_use_by"] else "viable",
                _e(mdev["uuid"]),
                _e(mdev["uuid"][:8]),
                _e(mdev["type"]),
                " in use by %s" % _e(", ".join(mdev["in_use_by"])) if mdev["in_use_by"] else "",
            )
        )
    if children:
        lines.append("<div class='children'>%s</div>" % "".join(children))
    lines.append("</div>")
    return "".join(lines)


def _host_html(record, row, index):
    topology = _dict(record.get("topology"))
    parts = ["<section class='host' id='%s' data-host='%s'>" % (_anchor(row["host"], index), _e(row["host"]))]
    source = {"live": "detected", "cache": "from the fact cache", "topology_report": "from topology_report"}.get(
        row["source"], row["source"]
    )
    parts.append("<h2>%s</h2>" % _e(row["host"]))
    if row["not_reached_at"]:
        parts.append(
            "<p><span class='sev sev-error'>not reached</span> The run at %s did not reach this host (it was "
            "unreachable, or a task failed on it)%s.</p>"
            % (_e(row["not_reached_at"]), "; what follows is its record from an earlier run"
               if row["source"] != "not_reached" else ", and no earlier run left a record of it")
        )
    if row["source"] != "not_reached":
        parts.append(
            "<p class='muted'>%s%s</p>"
            % (_e(source), " at %s" % _e(row["collected_at"]) if row["collected_at"] else "")
        )
    if row["pending_reboot_reasons"]:
        parts.append("<p><strong>Reboot pending:</strong> %s</p>" % _e("; ".join(row["pending_reboot_reasons"])))
    if not topology:
        fact = _dict(record.get("fact"))
        if fact:
            parts.append(
                "<p class='muted'>Only the gpuvirt fact is cached for this host; run the report against the host "
                "to draw its IOMMU groups.</p>"
            )
        for blocker in _list(fact.get("blockers")):
            parts.append("<p class='sev-line'><span class='sev sev-error'>error</span> %s</p>" % _e(blocker))
        parts.append("</section>")
        return "".join(parts)
    iommu = _dict(topology.get("iommu"))
    kernel = _dict(topology.get("kernel"))
    parts.append(
        "<p>IOMMU: %s &middot; kernel %s</p>"
        % (
            "on (%s)" % _e(iommu.get("vendor") or "?") if iommu.get("enabled") else "<strong>off</strong>",
            _e(kernel.get("release") or "?"),
        )
    )
    boxes = group_boxes(topology)
    gpus = _list(topology.get("gpus"))
    if boxes:
        parts.append("<div class='groups'>")
        for box in boxes:
            parts.append(
                "<div class='group' data-group='%s'><h4>IOMMU group %s</h4>%s</div>"
                % (_e(box["group"]), _e(box["group"]), "".join(_device_html(d) for d in box["devices"]))
            )
        parts.append("</div>")
    elif not gpus:
        parts.append("<p class='muted'>No GPU.</p>")
    else:
        parts.append(
            "<p class='muted'>No GPU is in an IOMMU group%s.</p>"
            % ("" if iommu.get("enabled") else " (the IOMMU is off)")
        )
    unplaced = [g for g in gpus if g.get("iommu_group") is None]
    if unplaced:
        verdicts = _verdicts(topology)
        parts.append("<div class='groups'><div class='group' data-group='none'><h4>No IOMMU group</h4>")
        devices = {d.get("address"): d for d in _list(topology.get("devices"))}
        for gpu in unplaced:
            device = devices.get(gpu.get("address"), {})
            name = device.get("device_name") or gpu.get("name")
            parts.append(_device_html(_device_entry(gpu.get("address"), device, name, gpu,
                                                    verdicts[gpu.get("address")])))
        parts.append("</div></div>")
    findings = _list(topology.get("findings"))
    parts.append("<h3>Findings (%d)</h3>" % len(findings))
    if findings:
        parts.append("<ul class='findings'>")
        for finding in findings:
            severity = finding.get("severity") if finding.get("severity") in SEVERITIES else "info"
            parts.append(
                "<li data-severity='%s'><span class='sev sev-%s'>%s</span> <code>%s</code>%s: %s</li>"
                % (
                    severity,
                    severity,
                    severity,
                    _e(finding.get("code")),
                    " (%s)" % _e(finding.get("device")) if finding.get("device") else "",
                    _e(finding.get("message")),
                )
            )
        parts.append("</ul>")
    parts.append("</section>")
    return "".join(parts)


def natural_key(name):
    """Sort key of a host name as the page's column sort orders it: digits by number, case folded
    (``gpu2`` before ``GPU3`` before ``gpu10``)."""
    return [(0, int(part), "") if part.isascii() and part.isdigit() else (1, 0, part.casefold())
            for part in re.split(r"([0-9]+)", str(name)) if part]


def render(records, title="GPU virtualization fleet report", generated_at=None):
    """The whole page for the host records, hosts in name order (:func:`natural_key`)."""
    records = sorted((r for r in records if r), key=lambda r: natural_key(r.get("host")))
    rows = [host_row(r) for r in records]
    legend = "".join("<div class='dev v-%s' data-legend='%s'>%s</div>" % (v, v, v) for v in VERDICTS)
    headers = [
        ("Host", "text"),
        ("GPUs", "number"),
        ("Passthrough ready", "number"),
        ("vGPU / mdev profiles in use", "text"),
        ("Free capacity", "text"),
        ("Pending reboot", "text"),
        ("Errors", "number"),
        ("Warnings", "number"),
        ("Info", "number"),
    ]
    summary = {"hosts": len(rows), "gpus": sum(r["gpus"] for r in rows), "ready": sum(r["ready"] for r in rows),
               "not_reached": sum(1 for r in rows if r["not_reached_at"])}
    return "".join(
        [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'; "
            "script-src 'unsafe-inline'; img-src data:\">",
            "<title>%s</title><style>%s</style></head><body>" % (_e(title), _CSS),
            "<h1>%s</h1>" % _e(title),
            "<p class='muted'>%d hosts, %d GPUs, %d ready for passthrough%s%s.</p>"
            % (
                summary["hosts"],
                summary["gpus"],
                summary["ready"],
                ", %d not reached in their last run" % summary["not_reached"] if summary["not_reached"] else "",
                " &middot; generated %s" % _e(generated_at) if generated_at else "",
            ),
            "<div class='controls'><label>Filter <input type='search' id='filter' placeholder='host, model, driver...'>"
            "</label><label><input type='checkbox' id='only-problems'> only hosts with errors, no IOMMU or a pending "
            "reboot</label><span><span id='shown'>%d</span> shown</span></div>" % len(rows),
            "<table id='hosts'><thead><tr>%s</tr></thead><tbody>%s</tbody></table>"
            % (
                "".join("<th data-type='%s'>%s</th>" % (kind, _e(name)) for name, kind in headers),
                "".join(_row_html(r, index) for index, r in enumerate(rows)),
            ),
            "<h2>IOMMU groups</h2><div class='legend'>%s</div>" % legend,
            "".join(_host_html(r, row, index) for index, (r, row) in enumerate(zip(records, rows))),
            "<script type='application/json' id='report-data'>%s</script>"
            % json.dumps({"format": RECORD_FORMAT, "hosts": [r["host"] for r in rows]}).replace("<", "\\u003c"),
            "<script>%s</script></body></html>\n" % _JS,
        ]
    )
