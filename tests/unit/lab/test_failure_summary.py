# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tests/tools/failure_summary.py on Molecule logs as Molecule writes them (colours, frames)."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "failure_summary.py")
BAR = "\x1b[2m\x1b[31m\u2502\x1b[0m "


def framed(text):
    return BAR + "\x1b[0;31m" + text + "\x1b[0m\n"


CREATE_FAILED = (
    "INFO     rollout \u279c create: Executing\n"
    + framed("TASK [Wait until each instance answers on SSH] ***")
    + framed("[ERROR]: Task failed: Module failed: non-zero return code")
    + framed("Origin: /src/molecule/shared/create.yml:24:7")
    + framed("")
    + framed('failed: [localhost] (item=molecule-rollout-1) => {"ansible_job_id":')
    + framed('  "j1.2", "stderr": "lab: step \'boot\' failed: attempt 1: the guest')
    + "\x1b[31mERROR   \x1b[0m \x1b[32mrollout\x1b[0m \u279c \x1b[33mcreate\x1b[0m: \x1b[31mExecuted: Failed\x1b[0m\n"
    + "\x1b[32mdefault                   \x1b[0m: actions=9  successful=8  failed=0\n"
)

VERIFY_FAILED = (
    "INFO     passthrough \u279c verify: Executing\n"
    "molecule/passthrough/tests/test_passthrough.py::test_bound[ansible://lab] FAILED [ 40%]\n"
    "E       AssertionError: assert 'nvidia' == 'vfio-pci'\n"
    "=========================== short test summary info ============================\n"
    "FAILED molecule/passthrough/tests/test_passthrough.py::test_bound[ansible://lab] - "
    "AssertionError: assert 'nvidia' == 'vfio-pci'\n"
    "fatal: [molecule-rollout-2]: UNREACHABLE! => {\"changed\": false, \"msg\": \"Failed to connect\"}\n"
    "CRITICAL passthrough \u279c verify: Executed: Failed\n"
)

UP_ERROR = (
    "attempt 1: step 'boot' failed: the guest did not reach SSH and its console printed nothing for 181 s "
    "(last stage: initramfs, after 240 s); console tail:\n"
    "    \x1b[H\x1b[J\x1b[1;1H\n"
    "    [    2.101] Run /init as init process\n"
    "    \n"
    "attempt 2: step 'boot' failed: the guest did not reach SSH within 600 s (last stage: systemd, after 601 s); "
    "console tail:\n"
    "    [   31.5] systemd[1]: Started systemd-udevd.service\n"
)


def run(tmp_path, log_text, since="0", *extra):
    log = tmp_path / "molecule.log"
    log.write_text(log_text, encoding="utf-8")
    lab = tmp_path / "lab"
    lab.mkdir(exist_ok=True)
    result = subprocess.run(
        [sys.executable, SCRIPT, "--since", since, *extra, str(log), str(lab)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return result.stdout.splitlines()


def test_a_failed_create_names_the_ansible_error_its_task_file_and_why_each_boot_failed(tmp_path):
    (tmp_path / "lab" / "molecule-rollout-1").mkdir(parents=True)
    (tmp_path / "lab" / "molecule-rollout-1" / "up-error.txt").write_text(UP_ERROR)
    lines = run(tmp_path, CREATE_FAILED)
    assert lines == [
        "What failed (the whole log: %s):" % (tmp_path / "molecule.log"),
        "  Task failed: Module failed: non-zero return code (/src/molecule/shared/create.yml:24:7)",
        "  rollout \u279c create: Executed: Failed",
        "  lab instance molecule-rollout-1: attempt 1: step 'boot' failed: the guest did not reach SSH and its "
        "console printed nothing for 181 s (last stage: initramfs, after 240 s)",
        "    its console's last line: [ 2.101] Run /init as init process",
        "  lab instance molecule-rollout-1: attempt 2: step 'boot' failed: the guest did not reach SSH within 600 s "
        "(last stage: systemd, after 601 s)",
        "    its console's last line: [ 31.5] systemd[1]: Started systemd-udevd.service",
    ]


def test_failed_tests_and_unreachable_hosts_are_named_and_old_lab_errors_left_out(tmp_path):
    (tmp_path / "lab" / "old").mkdir(parents=True)
    (tmp_path / "lab" / "old" / "up-error.txt").write_text(UP_ERROR)
    os.utime(tmp_path / "lab" / "old" / "up-error.txt", (1000, 1000))
    lines = run(tmp_path, VERIFY_FAILED, since="2000")
    assert lines[1:] == [
        "  pytest: FAILED molecule/passthrough/tests/test_passthrough.py::test_bound[ansible://lab] - "
        "AssertionError: assert 'nvidia' == 'vfio-pci'",
        "  fatal: [molecule-rollout-2]: UNREACHABLE!",
        "  passthrough \u279c verify: Executed: Failed",
    ]


def test_long_lines_are_cut_and_only_the_last_findings_kept(tmp_path):
    log = "".join("FAILED tests/test_x.py::test_%d - %s\n" % (n, "x" * 300) for n in range(20))
    lines = run(tmp_path, log, "0", "--limit", "3")
    assert lines[1] == "  ... 17 earlier findings in the log"
    assert [line.split("::")[1].split(" ")[0] for line in lines[2:]] == ["test_17", "test_18", "test_19"]
    assert all(len(line) == 2 + 200 and line.endswith("...") for line in lines[2:])


def test_a_log_with_nothing_known_says_so(tmp_path):
    lines = run(tmp_path, "INFO     default \u279c converge: Executing\n")
    assert lines[1:] == ["  nothing the summary knows; read the log"]
