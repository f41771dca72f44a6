# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Print two topology summaries (written by playbooks/topology_report.yml) and what changed.

    compare_reports.py BEFORE.txt AFTER.txt
"""

from __future__ import annotations

import difflib
import sys


def _read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read().splitlines()


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    before, after = (_read(path) for path in argv)
    width = min(100, max(len(line) for line in before + after))
    for title, lines in (("BEFORE", before), ("AFTER", after)):
        print("=" * width)
        print(title)
        print("=" * width)
        print("\n".join(lines))
    print("=" * width)
    print("WHAT CHANGED (- before, + after)")
    print("=" * width)
    changes = [
        line
        for line in difflib.unified_diff(before, after, lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    print("\n".join(changes) if changes else "nothing")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
