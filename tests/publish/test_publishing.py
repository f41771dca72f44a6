# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The validators Galaxy, Automation Hub and the docsite run on the collection, run here the same way.

galaxy-importer imports the built tarball (ansible-doc and ansible-lint included, no containers) and
must log no warning; antsibull-docs and antsibull-changelog lint the checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def _env(**extra):
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""), ANSIBLE_NOCOLOR="1")
    env.update(extra)
    return env


def _run(argv, cwd=None, env=None):
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env or _env(), check=False)


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    work = tmp_path_factory.mktemp("build")
    done = _run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", REPO, "--output-path", str(work)])
    assert done.returncode == 0, done.stdout + done.stderr
    return work / "gpuvirt-host-0.1.0.tar.gz"


def _members(path):
    with tarfile.open(path) as archive:
        return {member.name for member in archive.getmembers()}


def test_tarball_ships_the_collection_and_nothing_of_the_workshop(tarball):
    names = _members(tarball)
    for wanted in ("LICENSE", "README.md", "meta/runtime.yml", "meta/execution-environment.yml",
                   "requirements.txt", "bindep.txt", "playbooks/gpu_host.yml", "playbooks/topology_report.yml",
                   "playbooks/preflight.yml", "playbooks/rollout.yml", "roles/fleet/README.md",
                   "changelogs/changelog.yaml"):
        assert wanted in names, wanted
    tops = {name.split("/")[0] for name in names}
    for unwanted in ("molecule", "tests", "Makefile", "examples", "requirements-dev.txt", "pyproject.toml",
                     ".ansible-lint", ".ci", ".venv", ".build", ".lab", "execution-environment.yml"):
        assert unwanted not in tops, unwanted
    assert not [name for name in names if name.endswith(".pyc") or "__pycache__" in name]


def test_galaxy_metadata_is_real():
    with open(os.path.join(REPO, "galaxy.yml")) as handle:
        meta = yaml.safe_load(handle)
    for key in ("repository", "documentation", "issues", "homepage"):
        assert meta[key].startswith("https://"), key
        assert "example." not in meta[key] and "invalid" not in meta[key], meta[key]
    assert meta["license"] == ["GPL-3.0-or-later"]
    assert "license_file" not in meta
    with open(os.path.join(REPO, "LICENSE")) as handle:
        assert "GNU GENERAL PUBLIC LICENSE" in handle.read(200)


def test_galaxy_importer_passes_without_warnings(tarball, tmp_path):
    config = tmp_path / "galaxy-importer.cfg"
    config.write_text(
        "[galaxy-importer]\nRUN_ANSIBLE_DOC = True\nRUN_ANSIBLE_LINT = True\nOFFLINE_ANSIBLE_LINT = True\n"
        "RUN_ANSIBLE_TEST = False\nCHECK_CHANGELOG = True\nCHECK_REQUIRED_TAGS = True\n"
    )
    done = _run([sys.executable, "-m", "galaxy_importer.main", str(tarball)], cwd=str(tmp_path),
                env=_env(GALAXY_IMPORTER_CONFIG=str(config), ANSIBLE_HOME=str(tmp_path / "ansible-home")))
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "Importer processing completed successfully" in log, log
    complaints = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    if complaints == ["ERROR: Timeout on call to ansible-lint"]:
        # The importer gives ansible-lint 180 s; on a loaded machine run its exact command without the cap.
        unpacked = tmp_path / "unpacked"
        with tarfile.open(tarball) as archive:
            archive.extractall(unpacked, filter="data")
        lint = _run([os.path.join(BIN, "ansible-lint"), "--profile", "production", "--exclude", "tests/integration/",
                     "--exclude", "tests/unit/", "--format=pep8", "--nocolor", "-x",
                     "yaml,var-naming,avoid-dot-notation,import-task-no-when,single-entry-point,use-loop",
                     "--offline"], cwd=str(unpacked), env=_env(ANSIBLE_HOME=str(tmp_path / "ansible-home")))
        assert lint.returncode == 0 and lint.stdout.strip() == "", lint.stdout + lint.stderr
        complaints = []
    assert complaints == [], log
    result = json.loads((tmp_path / "importer_result.json").read_text())
    contents = [(item["content_type"], item["name"]) for item in result["contents"]]
    assert len(contents) == len(set(contents)), contents
    for wanted in (("playbook", "gpu_host.yml"), ("playbook", "preflight.yml"), ("playbook", "rollout.yml"),
                   ("role", "fleet"), ("filter", "topology_summary"), ("filter", "gpuvirt_fact"),
                   ("filter", "preflight_report"), ("filter", "device_spec")):
        assert wanted in contents, wanted
    assert result["requires_ansible"] == ">=2.18.0"


def test_antsibull_docs_lint_is_clean():
    done = _run([os.path.join(BIN, "antsibull-docs"), "lint-collection-docs", "--plugin-docs", "--skip-rstcheck",
                 "--validate-collection-refs=all", "."],
                cwd=os.path.join(REPO, ".build/collections/ansible_collections/gpuvirt/host"),
                env=_env(ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, ".build/collections")))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "", done.stdout


def test_antsibull_changelog_lint_is_clean():
    done = _run([os.path.join(BIN, "antsibull-changelog"), "lint"], cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "", done.stdout
