# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stand-in for the pip bootstrap script that ansible-test downloads for its sanity venvs.

``make sanity`` installs this as ``~/.ansible/test/cache/get_pip_<version>.py`` next to the pip
wheel of that version (fetched with the machine's own pip configuration), so ansible-test can seed
its virtual environments without reaching any host but the package index.
"""

from __future__ import annotations

import glob
import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
GET_PIP_ONLY = ("--no-setuptools", "--no-wheel")


def main():
    wheels = sorted(glob.glob(os.path.join(HERE, "pip-*-py3-none-any.whl")))
    if not wheels:
        sys.exit("pip bootstrap: no pip wheel next to %s; run 'make sanity' again" % __file__)
    sys.path.insert(0, wheels[-1])
    arguments = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
    sys.argv = ["pip", "install", "--upgrade", "--force-reinstall"] + arguments
    runpy.run_module("pip", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
