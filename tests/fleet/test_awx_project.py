# Copyright (c) gpuvirt.host contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""examples/awx-project: what AWX offers as playbooks, and the awx.awx configuration checked offline.

awx.awx is unpacked by ``make fleet`` (requirements-awx.txt) into .build/awx-collections and named
by GPUVIRT_AWX_COLLECTIONS; module options are checked against ``ansible-doc`` and survey specs
against the rules of AWX's survey validation (awx/api/views ``_validate_spec_data``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from ansible.utils.vars import isidentifier
from ansible.vars.reserved import is_reserved_name
from conftest import COLLECTIONS_BASE, REPO

PROJECT = os.path.join(REPO, "examples", "awx-project")
BIN = os.path.dirname(sys.executable)
SURVEY_TYPES = {"text", "textarea", "password", "integer", "float", "multiplechoice", "multiselect"}


@pytest.fixture(scope="module")
def awx_collections():
    path = os.environ.get("GPUVIRT_AWX_COLLECTIONS", os.path.join(REPO, ".build", "awx-collections"))
    assert os.path.isdir(os.path.join(path, "ansible_collections", "awx", "awx")), (
        "awx.awx is not unpacked below %s: run the tests through `make fleet`" % path
    )
    return path


def _env(*paths):
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.pathsep.join(paths), ANSIBLE_NOCOLOR="1",
                ANSIBLE_HOME=os.path.join(REPO, ".build", "ansible-home"))


def awx_playbooks(project):
    """The files AWX offers as playbooks (awx/main/utils/ansible.py: a `hosts:` or import line)."""
    found = []
    for base, dirs, files in os.walk(project):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("roles", "tasks", "group_vars", "host_vars")]
        for name in files:
            if name.endswith((".yml", ".yaml")):
                with open(os.path.join(base, name)) as handle:
                    text = handle.read()
                if re.search(r"^\s*-?\s*(hosts|include|(ansible\.builtin\.)?import_playbook):", text, re.M):
                    found.append(os.path.relpath(os.path.join(base, name), project))
    return sorted(found)


def test_awx_offers_the_wrapper_playbooks():
    assert awx_playbooks(PROJECT) == ["controller/configure.yml", "preflight.yml", "report.yml", "rollout.yml"]
    with open(os.path.join(PROJECT, "collections", "requirements.yml")) as handle:
        requirements = yaml.safe_load(handle)
    assert [item["name"] for item in requirements["collections"]] == ["gpuvirt.host"]


@pytest.mark.parametrize("playbook", ["preflight.yml", "rollout.yml", "report.yml", "controller/configure.yml"])
def test_project_playbooks_pass_syntax_check(playbook, awx_collections):
    done = subprocess.run([os.path.join(BIN, "ansible-playbook"), "--syntax-check", "-i", "localhost,", playbook],
                          cwd=PROJECT, env=_env(COLLECTIONS_BASE, awx_collections), capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def _module_options(module, collections):
    done = subprocess.run([os.path.join(BIN, "ansible-doc"), "-j", module], env=_env(collections),
                          capture_output=True, text=True, check=True)
    options = json.loads(done.stdout)[module]["doc"]["options"]
    names = set(options)
    for option in options.values():
        names.update(option.get("aliases") or [])
    return names


def test_every_awx_task_uses_options_the_module_has(awx_collections):
    with open(os.path.join(PROJECT, "controller", "configure.yml")) as handle:
        play = yaml.safe_load(handle)[0]
    used = {}
    for task in play["tasks"]:
        for key, args in task.items():
            if key.startswith("awx.awx."):
                used.setdefault(key, set()).update(args)
    assert set(used) >= {"awx.awx.credential", "awx.awx.project", "awx.awx.inventory", "awx.awx.job_template",
                         "awx.awx.execution_environment", "awx.awx.workflow_job_template"}
    for module, arguments in used.items():
        unknown = arguments - _module_options(module, awx_collections)
        assert not unknown, "%s has no option(s) %s" % (module, sorted(unknown))


def test_configuration_reaches_the_controller_api_with_valid_arguments(awx_collections):
    # No controller listens there: a task whose arguments are valid fails on the connection, one with
    # an unknown argument would fail on "Unsupported parameters" first.
    done = subprocess.run(
        [os.path.join(BIN, "ansible-playbook"), "-i", "localhost,", "controller/configure.yml",
         "-e", "awx_project_url=https://git.invalid/gpu-project.git"],
        cwd=PROJECT, capture_output=True, text=True, check=False,
        env=dict(_env(COLLECTIONS_BASE, awx_collections), ANSIBLE_PYTHON_INTERPRETER=sys.executable,
                 CONTROLLER_HOST="https://127.0.0.1:9",
                 CONTROLLER_USERNAME="admin", CONTROLLER_PASSWORD="x", CONTROLLER_VERIFY_SSL="false"),
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Placeholder credential for the GPU hosts" in output
    assert "Unsupported parameters" not in output
    assert re.search(r"(Connection refused|Failed to connect|Errno 111)", output), output


def _within(value, item):
    """AWX's launch-time bounds: ``min``/``max`` apply when set (not "" or None); a string's length."""
    size = len(value) if isinstance(value, str) else value
    return all(item.get(bound) in ("", None) or check(size, int(item[bound]))
               for bound, check in (("min", lambda a, b: a >= b), ("max", lambda a, b: a <= b)))


def _check_survey(survey):
    """AWX's rules for a survey spec: the API's (awx/api/views JobTemplateSurveySpec._validate_spec_data),
    the launch's for the defaults (awx/main/models/mixins.py _survey_element_validation: a default
    outside its bounds is dropped), and the UI's (no white space in a variable name, which must also be
    one Ansible can use as a variable)."""
    assert isinstance(survey["name"], str) and isinstance(survey["description"], str)
    assert isinstance(survey["spec"], list) and survey["spec"]
    variables = [item["variable"] for item in survey["spec"]]
    assert len(variables) == len(set(variables)), variables
    for item in survey["spec"]:
        for key in ("type", "question_name", "variable"):
            assert isinstance(item[key], str), (item, key)
        assert isidentifier(item["variable"]) and not is_reserved_name(item["variable"]), item
        assert isinstance(item["required"], bool), item
        assert item["type"] in SURVEY_TYPES, item
        for bound in ("min", "max"):
            assert item.get(bound) is None or isinstance(item[bound], int), item
        default = item.get("default")
        if item["type"] in ("text", "textarea", "password"):
            assert isinstance(default, str) and _within(default, item), item
        elif item["type"] == "integer":
            assert isinstance(default, int) and not isinstance(default, bool) and _within(default, item), item
        elif item["type"] in ("multiplechoice", "multiselect"):
            choices = item["choices"] if isinstance(item["choices"], list) else item["choices"].split("\n")
            assert default in choices, item


def test_surveys_follow_awx_rules_and_the_collection_variables():
    with open(os.path.join(PROJECT, "controller", "surveys.yml")) as handle:
        surveys = yaml.safe_load(handle)
    preflight, rollout = surveys["gpuvirt_preflight_survey"], surveys["gpuvirt_rollout_survey"]
    for survey in (preflight, rollout, surveys["gpuvirt_report_survey"]):
        _check_survey(survey)
    variables = {item["variable"]: item for item in rollout["spec"]}
    assert variables["vgpu_devices_text"]["type"] == "textarea"
    assert variables["gpuvirt_reboot"]["choices"] == ["never", "if_needed", "always"]
    assert {"target", "gpuvirt_rollout_canary", "gpuvirt_rollout_batch", "gpuvirt_rollout_max_fail_percentage",
            "drain_hook", "undrain_hook"} <= set(variables)
    for hook in ("drain_hook", "undrain_hook"):
        assert os.path.isfile(os.path.join(PROJECT, variables[hook]["default"])), hook
