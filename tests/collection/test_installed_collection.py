# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build the collection tarball, install it into an empty path and use it as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "fixtures"))

import hostgen  # noqa: E402

BIN = os.path.dirname(sys.executable)
TOPOLOGY_KEYS = {"iommu", "kernel", "cpu", "iommu_groups", "devices", "gpus", "mdev_parents", "mdevs", "findings"}


def _run(argv, env=None, cwd=None):
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    assert result.returncode == 0, "%s failed:\n%s\n%s" % (" ".join(argv), result.stdout, result.stderr)
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("galaxy")
    _run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", REPO, "--output-path", str(work)])
    tarballs = [name for name in os.listdir(work) if name.endswith(".tar.gz")]
    assert tarballs == ["gpuvirt-host-0.1.0.tar.gz"]
    target = work / "collections"
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(target), ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    _run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "--offline", "--force",
          str(work / tarballs[0]), "-p", str(target)], env=env)
    return target, env


def test_tarball_holds_no_development_files(installed):
    target, _env = installed
    installed_root = target / "ansible_collections" / "gpuvirt" / "host"
    assert (installed_root / "plugins" / "modules" / "topology_info.py").is_file()
    for unwanted in (".venv", ".build", ".lab", ".git"):
        assert not (installed_root / unwanted).exists(), unwanted


def test_installed_module_reports_a_fixture_host(installed, tmp_path):
    _target, env = installed
    root = hostgen.build_host(hostgen.load_description("desktop_dgpu"), str(tmp_path / "root"))
    out = _run([os.path.join(BIN, "ansible"), "localhost", "-m", "gpuvirt.host.topology_info",
                "-a", "root=%s" % root], env=env)
    status, _sep, payload = out.partition(" => ")
    assert status.strip() == "localhost | SUCCESS"
    result = json.loads(payload)
    assert result["changed"] is False
    assert set(result["topology"]) >= TOPOLOGY_KEYS
    gpus = {gpu["address"]: gpu for gpu in result["topology"]["gpus"]}
    assert gpus["0000:00:02.0"]["boot_vga"] is True
    assert gpus["0000:00:02.0"]["passthrough"]["viable"] is False
    assert "boot_vga" in gpus["0000:00:02.0"]["passthrough"]["codes"]


def test_installed_docs_render(installed):
    _target, env = installed
    out = _run([os.path.join(BIN, "ansible-doc"), "--json", "gpuvirt.host.topology_info"], env=env)
    doc = json.loads(out)["gpuvirt.host.topology_info"]
    assert "root" in doc["doc"]["options"]
    assert "topology" in doc["return"]
