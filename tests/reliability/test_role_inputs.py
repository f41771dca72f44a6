# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bad role variables, through ansible-playbook as users run the roles: refused with a message that
names the value and what is allowed, and the fixture tree unchanged.

One playbook runs every case (each an ``include_role`` in a ``block`` whose ``rescue`` keeps the
failure), so that Ansible starts once. The iommu and vfio roles work on this machine's ``/``: they
only get cases their argument specs refuse, and run in check mode besides.
"""

from __future__ import annotations

import json
import os

from ansible_collections.gpuvirt.host.tests.reliability.support import L40S, NVME, changed_paths, digest
from ansible_collections.gpuvirt.host.tests.tools.playbook import run_playbook

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIM_SITE = os.path.join(TESTS, "sim", "site")

VGPU_CASES = [
    (
        {"vgpu_devices": [{"selector": "mbochs", "mdev": [{"type": "mbochs-small", "count": 10**12}]}]},
        ("1000000000000", "count from 0 to"),
    ),
    ({"vgpu_devices": [{"selector": NVME, "sriov": {"num_vfs": 10**12}}]}, ("1000000000000",)),
    (
        {"vgpu_devices": [{"selector": L40S, "nvidia_vgpu": {"profiles": [{"profile": "L40S-8Q", "count": 10**12}]}}]},
        ("1000000000000", "count from 0 to"),
    ),
    (
        {"vgpu_devices": [{"selector": "mbochs", "mdev": [{"type": "mbochs-small", "count": -1}]}]},
        ("-1", "count from 0 to"),
    ),
    ({"vgpu_restore_python": "/usr/bin/python3\nExecStartPre=/bin/sh"}, ("'\\n'", "plain absolute path")),
    ({"vgpu_restore_prefix": "/../escape"}, ("'/../escape'", "parent-folder")),
    ({"vgpu_restore_timeout": -5}, ("timeout: -5", "a finite number > 0")),
    ({"vgpu_passthrough_persistence": "sometimes"}, ("sometimes", "auto")),
    ({"vgpu_devices": "mbochs"}, ("vgpu_devices", "dict")),
    (
        {"vgpu_devices": [{"selector": NVME, "passthrough": True, "sriov": {"num_vfs": 2}}]},
        (NVME, "cannot also"),
    ),
    # One device in two spellings, handed whole to VMs and split at once.
    (
        {"vgpu_devices": [{"selector": "04:00.0", "passthrough": True}, {"selector": NVME, "sriov": {"num_vfs": 2}}]},
        ("04:00.0", "cannot also"),
    ),
    (
        {"vgpu_devices": [{"selector": "00000000:04:00.0", "passthrough": "yes"},
                          {"selector": "0000:04:00.0", "sriov": {"num_vfs": 2}}]},
        ("00000000:04:00.0", "cannot also"),
    ),
    # One device by its ID and by its address: only the host can tell, and vfio_pci refuses it.
    (
        {"vgpu_devices": [{"selector": "1b36:0010", "passthrough": True}, {"selector": NVME, "sriov": {"num_vfs": 2}}]},
        ("(selected by 1b36:0010) is also split by 0000:04:00.0", "cannot also be split"),
    ),
    (
        {"vgpu_devices": [{"selector": "CB:00.0", "passthrough": True},
                          {"selector": L40S, "nvidia_vgpu": {"profiles": [{"profile": "L40S-8Q", "count": 1}]}}]},
        ("CB:00.0", "cannot also"),
    ),
]
HOST_CASES = [
    ("gpuvirt.host.iommu", {"iommu_vendor": "via"}, ("via", "intel")),
    ("gpuvirt.host.iommu", {"iommu_reboot": "maybe"}, ("maybe", "if_needed")),
    ("gpuvirt.host.iommu", {"iommu_reboot_timeout": "soon"}, ("soon", "int")),
    (
        "gpuvirt.host.vfio",
        {"vfio_devices": ["0000:01:00.0"], "vfio_persistence": "sometimes"},
        ("sometimes", "modprobe"),
    ),
    ("gpuvirt.host.vfio", {"vfio_devices": ["0000:01:00.0"], "vfio_state": "gone"}, ("gone", "absent")),
]


def _case_block(index, role, variables, root=None):
    block = {
        "name": "case %d" % index,
        "block": [
            {"name": "case %d: %s" % (index, role), "ansible.builtin.include_role": {"name": role}, "vars": variables}
        ],
        "rescue": [
            {
                "name": "keep case %d" % index,
                "ansible.builtin.set_fact": {
                    "refusals": "{{ refusals | combine({'%d': ansible_failed_result.msg | default('') | string + ' ' + "
                    "(ansible_failed_result.argument_errors | default([]) | join(' '))}) }}" % index
                },
            }
        ],
    }
    if root is not None:
        block["environment"] = {"GPUVIRT_KERNEL_SIM": root}
    return block


def test_bad_role_variables_are_refused(host, tmp_path, tally):
    cases, blocks = [], []
    for variables, words in VGPU_CASES:
        root = host("combined")
        os.makedirs(os.path.join(root, "etc/systemd/system"), exist_ok=True)
        cases.append(("vgpu", variables, words, root, digest(os.path.dirname(root))))
        blocks.append(_case_block(len(cases), "gpuvirt.host.vgpu", dict(variables, vgpu_root=root), root))
    for role, variables, words in HOST_CASES:
        cases.append((role.rsplit(".", 1)[-1], variables, words, None, None))
        blocks.append(_case_block(len(cases), role, variables))
    exported = tmp_path / "refusals.json"
    playbook = [
        {
            "name": "bad role variables",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {"refusals": {}},
            "environment": {"PYTHONPATH": SIM_SITE},
            "tasks": blocks
            + [
                {
                    "name": "export",
                    "ansible.builtin.copy": {
                        "content": "{{ refusals | to_json }}",
                        "dest": str(exported),
                        "mode": "0644",
                    },
                    "check_mode": False,
                }
            ],
        }
    ]
    done = run_playbook(playbook, tmp_path, ["--check"])
    refusals = json.loads(exported.read_text()) if exported.exists() else {}
    for index, (role, variables, words, root, before) in enumerate(cases, 1):
        message = refusals.get(str(index))
        problem = None
        if message is None:
            problem = "accepted (or the playbook stopped: %s)" % (done.stdout + done.stderr)[-300:]
        elif "Traceback" in message:
            problem = "traceback: %s" % message[:200]
        elif [w for w in words if w not in message]:
            problem = "message lacks %s: %s" % ([w for w in words if w not in message], message[:300])
        elif root is not None and changed_paths(before, digest(os.path.dirname(root))):
            problem = "changed %s" % changed_paths(before, digest(os.path.dirname(root)))[:3]
        tally("bad input", "role " + role, problem, json.dumps(variables)[:80])


# Booleans as strings: what extra vars (-e key=value), a job template survey or a quoted YAML value
# pass. The role's argument spec accepts them as booleans, so the role must read them as booleans too.
STRING_FALSE = ["false", "no", "off", "0"]


def test_passthrough_given_as_a_false_string_leaves_the_device_alone(host, tmp_path, tally):
    cases, blocks = [], []
    for index, text in enumerate(STRING_FALSE, 1):
        root = host("combined")
        os.makedirs(os.path.join(root, "etc/systemd/system"), exist_ok=True)
        cases.append((text, root, digest(os.path.dirname(root))))
        variables = {
            "vgpu_root": root,
            "vgpu_restore_install": False,
            "vgpu_devices": [{"selector": NVME, "passthrough": text}],
        }
        blocks.append(
            {
                "name": "case %d" % index,
                "environment": {"GPUVIRT_KERNEL_SIM": root},
                "block": [
                    {"name": "case %d: vgpu" % index, "ansible.builtin.include_role": {"name": "gpuvirt.host.vgpu"},
                     "vars": variables},
                    {
                        "name": "keep case %d" % index,
                        "ansible.builtin.set_fact": {
                            "outcomes": "{{ outcomes | combine({'%d': vgpu_result.passthrough}) }}" % index
                        },
                    },
                ],
                "rescue": [
                    {
                        "name": "keep the failure of case %d" % index,
                        "ansible.builtin.set_fact": {
                            "outcomes": "{{ outcomes | combine({'%d': ansible_failed_result.msg | default('')}) }}"
                            % index
                        },
                    }
                ],
            }
        )
    exported = tmp_path / "outcomes.json"
    playbook = [
        {
            "name": "booleans given as strings",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {"outcomes": {}},
            "environment": {"PYTHONPATH": SIM_SITE},
            "tasks": blocks
            + [
                {
                    "name": "export",
                    "ansible.builtin.copy": {"content": "{{ outcomes | to_json }}", "dest": str(exported),
                                             "mode": "0644"},
                }
            ],
        }
    ]
    done = run_playbook(playbook, tmp_path)
    outcomes = json.loads(exported.read_text()) if exported.exists() else {}
    for index, (text, root, before) in enumerate(cases, 1):
        outcome = outcomes.get(str(index), "the playbook stopped: %s" % (done.stdout + done.stderr)[-300:])
        changed = changed_paths(before, digest(os.path.dirname(root)))
        problem = None
        if outcome not in ({}, []):  # nothing handed to vfio-pci (the task skipped)
            problem = "passthrough: %r handled as true: %s" % (text, str(outcome)[:200])
        elif changed:
            problem = "changed %s" % changed[:3]
        tally("bad input", "role vgpu", problem, "passthrough: %r" % text)
