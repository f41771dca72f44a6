# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What failed in a Molecule run, in a few lines for the end of a long log.

    failure_summary.py [--since EPOCH] [--limit N] LOG LAB_DIR

Molecule ends a failed run with its scenario recap, which says which action failed but not why;
the why is hundreds of lines above it, in Ansible's wrapped output. This prints the lines that say
why: Molecule's failed actions, Ansible's errors with the task they came from, pytest's failed
tests, unreachable hosts, and why a lab instance did not come up (``.lab/<name>/up-error.txt``,
written by ``tests/lab/lab.py up`` since EPOCH).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys

ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[()][0-9A-Za-z]|[=>])")
# Molecule's framed output puts its box-drawing characters before each line of Ansible's.
FRAME = re.compile(r"^\s*[│└┌├─]+\s?")
WIDTH = 200


def _clean(line):
    return FRAME.sub("", ANSI.sub("", line)).rstrip()


def _short(text):
    text = text[: len(text) - len(text.lstrip())] + " ".join(text.split())
    return text if len(text) <= WIDTH else text[: WIDTH - 3] + "..."


def log_findings(lines):
    """A finding for each line that says what failed, in the log's order."""
    found = []
    for number, line in enumerate(lines):
        if re.match(r"^(ERROR|CRITICAL)\s+\S+ ➜ \S+: Executed: Failed", line):
            found.append(line.split(None, 1)[1])
        elif line.startswith("[ERROR]:"):
            origin = next((n for n in lines[number + 1 : number + 3] if n.startswith("Origin:")), None)
            where = f" ({origin.split(None, 1)[1]})" if origin else ""
            found.append(line[len("[ERROR]:") :].strip() + where)
        elif re.match(r"^(FAILED|ERROR) \S+::\S+", line):
            found.append("pytest: " + line)
        elif re.match(r"^fatal: \[[^\]]+\]: UNREACHABLE!", line):
            found.append(line.split("=>", 1)[0].strip())
    return found


def lab_findings(lab_dir, since):
    found = []
    for path in sorted(glob.glob(os.path.join(lab_dir, "*", "up-error.txt"))):
        if os.path.getmtime(path) < since:
            continue
        name = os.path.basename(os.path.dirname(path))
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        for attempt in re.split(r"\n(?=attempt \d+: )", text.strip()):
            head, sep, tail = attempt.partition("; console tail:")
            found.append(f"lab instance {name}: {head}")
            last = [_clean(line).strip() for line in tail.splitlines()] if sep else []
            last = [line for line in last if line.isprintable() and line]
            if last:
                found.append(f"  its console's last line: {last[-1]}")
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("log")
    parser.add_argument("lab_dir")
    parser.add_argument("--since", type=float, default=0.0, help="lab failures written since (epoch seconds)")
    parser.add_argument("--limit", type=int, default=12, help="lines of findings at most")
    args = parser.parse_args(argv)
    try:
        with open(args.log, encoding="utf-8", errors="replace") as handle:
            lines = [_clean(line) for line in handle]
    except OSError as err:
        lines = []
        print(f"failure summary: cannot read {args.log}: {err.strerror}")
    findings = log_findings(lines) + lab_findings(args.lab_dir, args.since)
    print(f"What failed (the whole log: {args.log}):")
    if not findings:
        print("  nothing the summary knows; read the log")
        return 0
    shown = findings[-args.limit :]
    if len(shown) < len(findings):
        print(f"  ... {len(findings) - len(shown)} earlier findings in the log")
    for text in shown:
        print("  " + _short(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
