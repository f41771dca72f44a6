# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The execution environment: what ansible-builder puts in it, and proof that this is enough.

No container runtime runs here, so the proof is the closest thing: the collection installed from
its built tarball into a clean virtual environment holding exactly the dependency set that
ansible-builder introspects from it (plus the ansible-core the EE brings) runs gpuvirt.host.preflight.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
sys.path.insert(0, os.path.join(REPO, "tests", "fixtures"))
import hostgen  # noqa: E402

DEV_ONLY = ("pytest", "molecule", "ruff", "hypothesis", "testinfra", "ansible-lint", "galaxy-importer",
            "antsibull", "ansible-builder", "ansible-runner")


def _run(argv, **kwargs):
    done = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    assert done.returncode == 0, "%s\n%s\n%s" % (" ".join(map(str, argv)), done.stdout, done.stderr)
    return done.stdout


def _requirement_names(lines):
    names = set()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.split(r"[<>=!~\[ ;]", line, maxsplit=1)[0].lower())
    return names


def _file_lines(path):
    with open(path) as handle:
        return [line for line in handle.read().splitlines() if line.split("#", 1)[0].strip()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("ee")
    _run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", REPO, "--output-path", str(work)])
    tarball = work / "gpuvirt-host-0.1.0.tar.gz"
    _run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "--offline", "--force", str(tarball),
          "-p", str(work / "collections")], env=dict(os.environ, ANSIBLE_HOME=str(work / "home")))
    return work, tarball


def test_builder_context_installs_the_collection_and_nothing_of_the_development_set(tmp_path):
    _run([os.path.join(BIN, "ansible-builder"), "create", "-f", os.path.join(REPO, "execution-environment.yml"),
          "-c", str(tmp_path / "context"), "--output-filename", "Containerfile"])
    containerfile = (tmp_path / "context" / "Containerfile").read_text()
    assert re.search(r"^FROM \$EE_BASE_IMAGE as base$", containerfile, re.M | re.I)
    assert 'ARG EE_BASE_IMAGE="ubi9/ubi-minimal:latest"' in containerfile
    assert "LABEL ansible-execution-environment=true" in containerfile
    build = tmp_path / "context" / "_build"
    requirements = yaml.safe_load((build / "requirements.yml").read_text())
    assert [item["name"] for item in requirements["collections"]] == ["gpuvirt.host"]
    # The EE's own Python and system lists would be _build/requirements.txt and _build/bindep.txt: the
    # definition has none, so the collection's (introspected at build time) are all that is added.
    assert not (build / "requirements.txt").exists() and not (build / "bindep.txt").exists()
    lowered = containerfile.lower()
    assert not [name for name in DEV_ONLY if name in lowered and name != "ansible-runner"]


def test_introspection_finds_exactly_the_runtime_dependencies(installed):
    work, _tarball = installed
    out = _run([os.path.join(BIN, "ansible-builder"), "introspect", "--sanitize", str(work / "collections")])
    data = yaml.safe_load(out)
    python = _requirement_names(data["python"])
    runtime = _requirement_names(_file_lines(os.path.join(REPO, "requirements.txt")))
    # ansible-core is the EE's own (dependencies.ansible_core); introspection leaves it out.
    assert python == runtime - {"ansible-core"}
    assert not python & set(DEV_ONLY)
    system = [line.split("#", 1)[0].strip() for line in data["system"]]
    assert system == _file_lines(os.path.join(REPO, "bindep.txt"))
    assert {"pciutils [platform:rpm]", "kmod [platform:rpm]", "driverctl [platform:rpm]"} <= set(system)


def test_the_tarball_in_a_clean_venv_with_exactly_that_set_runs_preflight(installed, tmp_path):
    work, tarball = installed
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    dev_pins = _file_lines(os.path.join(REPO, "requirements-dev.txt"))
    core = [line for line in dev_pins if line.startswith("ansible-core==")]
    # The runtime set, with the ansible-core the development pins test (the EE installs its own).
    _run([python, "-m", "pip", "install", "--quiet", "-r", os.path.join(REPO, "requirements.txt")] + core)
    installed_names = {line.split("==")[0].lower() for line in _run([python, "-m", "pip", "freeze"]).splitlines()}
    assert not installed_names & set(DEV_ONLY), installed_names & set(DEV_ONLY)
    collections = tmp_path / "collections"
    env = dict(
        {key: value for key, value in os.environ.items() if not key.startswith(("ANSIBLE_", "PYTHON", "VIRTUAL_ENV"))},
        PATH=str(venv / "bin") + os.pathsep + "/usr/bin:/bin", ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_HOME=str(tmp_path / "home"), ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0",
    )
    _run([str(venv / "bin" / "ansible-galaxy"), "collection", "install", "--offline", str(tarball), "-p",
          str(collections)], env=env)

    ready = hostgen.build_host("amd_host", str(tmp_path / "ready"))
    blocked = hostgen.build_host("desktop_dgpu", str(tmp_path / "blocked"))
    for root in (ready, blocked):
        with open(os.path.join(root, "proc/cmdline")) as handle:
            cmdline = [a for a in handle.read().split() if not a.startswith(("BOOT_IMAGE=", "root=")) and a != "ro"]
        os.makedirs(os.path.join(root, "etc/default"), exist_ok=True)
        with open(os.path.join(root, "etc/default/grub"), "w") as handle:
            handle.write('GRUB_CMDLINE_LINUX_DEFAULT="%s"\n' % " ".join(cmdline))
    inventory = tmp_path / "inventory.yml"
    host = {"ansible_connection": "local", "ansible_python_interpreter": python}
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {
        "ready": dict(host, gpuvirt_root=ready),
        "blocked": dict(host, gpuvirt_root=blocked, vfio_devices=["0000:00:02.0"]),
    }}}))
    reports = tmp_path / "reports"
    done = subprocess.run(
        [str(venv / "bin" / "ansible-playbook"), "-i", str(inventory), "gpuvirt.host.preflight",
         "-e", "gpuvirt_report_dir=%s" % reports], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    result = json.loads((reports / "preflight.json").read_text())
    assert {item["host"]: item["status"] for item in result["hosts"]} == {"ready": "ready", "blocked": "blocked"}
    done = subprocess.run(
        [str(venv / "bin" / "ansible-playbook"), "-i", str(inventory), "gpuvirt.host.preflight", "--limit", "ready"],
        env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
