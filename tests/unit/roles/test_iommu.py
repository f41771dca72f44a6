# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The iommu role's kernel arguments per architecture: ansible-playbook on localhost against fixture
hosts (x86 Intel and AMD, arm64 Grace Hopper, POWER) that boot GRUB.

One playbook runs every case (each an ``include_role`` in a ``block`` whose ``rescue`` keeps the
failure), so that Ansible starts once; the trees are not this machine's ``/``, so the role edits
``etc/default/grub`` and reboots nothing. The preview cases run as on the host the role runs on
(``__iommu_live``) with ``iommu_reboot: always``: the preview must not reboot even so.
"""

from __future__ import annotations

import json
import os

from ansible_collections.gpuvirt.host.tests.tools.playbook import run_playbook

GRUB = 'GRUB_CMDLINE_LINUX_DEFAULT="%s"\nGRUB_CMDLINE_LINUX=""\n'

# (host, GRUB line before, role variables, GRUB line after or None when refused, words of the refusal;
# "!words" must not be in it)
CASES = [
    ("desktop_dgpu", "quiet", {}, "quiet intel_iommu=on", ()),
    ("desktop_dgpu", "quiet iommu=off", {"iommu_passthrough_mode": True}, "quiet iommu=pt intel_iommu=on", ()),
    ("amd_host", "quiet amd_iommu=off iommu=off", {}, "quiet", ()),
    ("grace_hopper", "quiet intel_iommu=on amd_iommu=on iommu=pt", {}, "quiet", ()),
    ("grace_hopper", "quiet iommu=pt", {"iommu_passthrough_mode": True}, "quiet iommu.passthrough=1", ()),
    ("grace_hopper", "quiet", {"iommu_vendor": "intel"}, None, ("iommu_vendor intel", "x86_64", "aarch64")),
    ("desktop_dgpu", "quiet intel_iommu=on", {"iommu_vendor": "arm"}, None, ("iommu_vendor arm", "aarch64",
                                                                             "x86_64")),
    ("power9_host", "quiet", {}, None, ("ppc64le", "sPAPR TCE")),
    # arm64 whose IOMMU is on but is no Arm SMMU (virtio-iommu in a VM: groups, no smmu3.* unit): nothing
    # to add, the x86 words to take off.
    (("grace_hopper", {"iommu": {"vendor": None, "units": False, "firmware": False}}), "quiet intel_iommu=on", {},
     "quiet", ()),
    # arm64 whose kernel registered no SMMU: the advice is the SMMU's, not VT-d's or AMD-Vi's.
    (("grace_hopper", {"iommu": {"enabled": False}}), "quiet", {}, None, (
        "The running kernel did not turn the IOMMU on: check that the SMMU is enabled in the firmware setup",
        "arm-smmu-v3", "!VT-d", "!AMD-Vi")),
    # No IOMMU to turn on: the advice is the host's own, a hypervisor's settings for a VM.
    ("kvm_guest_gpu", "quiet", {}, None, (
        "The role cannot turn the IOMMU on: no IOMMU: this virtual machine (OpenStack) has no virtual IOMMU",
        "caching_mode='on'", "Nothing was changed")),
    (("iommu_disabled", {"iommu": {"vendor": None, "firmware": False, "enabled": False}}), "quiet", {}, None,
     ("the firmware has no DMAR or IVRS ACPI table", "enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware",
      "Nothing was changed")),
]


def _case(index, variables):
    return {
        "name": "case %d" % index,
        "block": [{"name": "iommu role, case %d" % index,
                   "ansible.builtin.include_role": {"name": "gpuvirt.host.iommu"}, "vars": variables}],
        "rescue": [{
            "name": "keep the failure of case %d" % index,
            "ansible.builtin.set_fact": {
                "refusals": "{{ refusals | combine({'%d': ansible_failed_result.msg | default('') | string}) }}" % index
            },
        }],
    }


def _run(blocks, collected, tmp_path):
    """Run ``blocks`` in one playbook on localhost; returns what they collected in the variable
    ``collected`` (a dict, empty at the start)."""
    exported = tmp_path / ("%s.json" % collected)
    playbook = [{
        "name": "iommu role cases",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "vars": {collected: {}},
        "tasks": blocks + [{
            "name": "export",
            "ansible.builtin.copy": {"content": "{{ %s | to_json }}" % collected, "dest": str(exported),
                                     "mode": "0644"},
        }],
    }]
    done = run_playbook(playbook, tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return json.loads(exported.read_text())


def test_the_role_puts_each_architectures_own_arguments(make_host, tmp_path):
    roots, blocks = [], []
    for index, (host, before, variables, _after, _words) in enumerate(CASES):
        host, changes = host if isinstance(host, tuple) else (host, {})
        root = make_host(host, files={"etc/default/grub": GRUB % before}, **changes)
        roots.append(root)
        blocks.append(_case(index, dict(variables, iommu_root=root, iommu_reboot="never")))
    refusals = _run(blocks, "refusals", tmp_path)

    for index, (host, before, variables, after, words) in enumerate(CASES):
        with open(os.path.join(roots[index], "etc/default/grub")) as handle:
            grub = handle.read()
        case = "case %d (%s, %s)" % (index, host, variables)
        if after is None:
            assert str(index) in refusals, case
            message = " ".join(refusals[str(index)].split())
            for word in words:  # "!word": must not be said
                assert (word[1:] not in message) if word.startswith("!") else (word in message), (case, word, message)
            assert grub == GRUB % before, case
        else:
            assert str(index) not in refusals, (case, refusals.get(str(index)))
            assert grub == GRUB % after, (case, grub)


def test_the_preview_shows_the_boot_configurations_diff_when_asked(make_host, tmp_path):
    # With --diff, the preview runs kernel_cmdline in check mode, whose diff Ansible shows: the topology
    # read's preview carries none.
    root = make_host("desktop_dgpu", files={"etc/default/grub": GRUB % "quiet"})
    block = dict(_outcome("preview", {"name": "gpuvirt.host.iommu", "tasks_from": "preview"}),
                 vars={"iommu_root": root, "iommu_reboot": "always", "__iommu_live": True})
    show = {"name": "show", "ansible.builtin.debug": {
        "msg": "ran={{ outcomes.preview.kernel_cmdline_ran }} changed={{ outcomes.preview.result.changed }}"}}
    playbook = [{"name": "preview with diff", "hosts": "localhost", "connection": "local", "gather_facts": False,
                 "vars": {"outcomes": {}}, "tasks": [block, show]}]
    done = run_playbook(playbook, tmp_path, options=("--diff",))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "ran=True changed=True" in done.stdout, done.stdout[-4000:]
    assert '+GRUB_CMDLINE_LINUX_DEFAULT="quiet intel_iommu=on"' in done.stdout, done.stdout[-4000:]
    with open(os.path.join(root, "etc/default/grub")) as handle:
        assert handle.read() == GRUB % "quiet"


def _outcome(key, role):
    """A block running ``role`` (an include_role's arguments) that keeps, under ``key``, the facts it
    exports or its refusal."""
    return {
        "name": "run %s" % key,
        "block": [
            {"name": "iommu role, %s" % key, "ansible.builtin.include_role": role},
            {"name": "keep the outcome of %s" % key, "ansible.builtin.set_fact": {
                "outcomes": "{{ outcomes | combine({'%s': {'result': iommu_result, "
                            "'reboot_required': iommu_reboot_required, 'enabled': iommu_enabled, "
                            "'kernel_cmdline_ran': __iommu_cmdline_run is not skipped}}) }}" % key,
            }},
        ],
        "rescue": [{
            "name": "keep the refusal of %s" % key,
            "ansible.builtin.set_fact": {
                "outcomes": "{{ outcomes | combine({'%s': {'refusal': ansible_failed_result.msg | default('') "
                            "| string}}) }}" % key,
            },
        }],
    }


def test_the_preview_changes_nothing_and_tells_what_the_role_would(make_host, tmp_path):
    # Each case twice, on trees of its own: the main entry point, and the preview run outside check mode
    # with a policy that would reboot, as on the host the role runs on (__iommu_live: the trees are not /).
    roots, blocks = {}, []
    for index, (host, before, variables, _after, _words) in enumerate(CASES):
        host, changes = host if isinstance(host, tuple) else (host, {})
        for entry in ("main", "preview"):
            root = roots[entry, index] = make_host(host, files={"etc/default/grub": GRUB % before}, **changes)
            role = {"name": "gpuvirt.host.iommu"}
            if entry == "preview":
                role["tasks_from"] = "preview"
            blocks.append(dict(_outcome("%s-%d" % (entry, index), role),
                               vars=dict(variables, iommu_root=root, **({"iommu_reboot": "never"} if entry == "main"
                                         else {"iommu_reboot": "always", "__iommu_live": True}))))
    outcomes = _run(blocks, "outcomes", tmp_path)

    changed = 0
    for index, (host, before, variables, after, _words) in enumerate(CASES):
        case = "case %d (%s, %s)" % (index, host, variables)
        main, preview = outcomes["main-%d" % index], outcomes["preview-%d" % index]
        with open(os.path.join(roots["preview", index], "etc/default/grub")) as handle:
            assert handle.read() == GRUB % before, case
        if after is None:
            assert " ".join(preview.get("refusal", "").split()) == " ".join(main["refusal"].split()), case
            continue
        assert "refusal" not in preview, (case, preview)
        assert preview["result"]["changed"] == main["result"]["changed"] == (after != before), case
        for key in ("bootloader", "configured", "added", "removed"):
            assert preview["result"][key] == main["result"][key], (case, key)
        assert preview["result"]["rebooted"] is False, case
        # The preview's topology read previewed the arguments: no kernel_cmdline run of its own.
        assert main["kernel_cmdline_ran"] is True and preview["kernel_cmdline_ran"] is False, case
        assert preview["reboot_required"] == main["reboot_required"], case
        assert preview["enabled"] == main["enabled"], case
        changed += main["result"]["changed"]
    assert changed >= 4, "the cases should change the command line of several hosts"
