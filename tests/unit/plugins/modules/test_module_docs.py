"""Each module's DOCUMENTATION, EXAMPLES and RETURN parse as YAML, as ansible-doc reads them."""

import ast
import pathlib

import pytest
import yaml

MODULES = sorted((pathlib.Path(__file__).resolve().parents[4] / "plugins" / "modules").glob("*.py"))
BLOCKS = ("DOCUMENTATION", "EXAMPLES", "RETURN")


def _blocks(path):
    found = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id in BLOCKS:
                    found[target.id] = node.value.value
    return found


@pytest.mark.parametrize("path", [p for p in MODULES if p.name != "__init__.py"], ids=lambda p: p.stem)
def test_doc_blocks_parse(path):
    blocks = _blocks(path)
    assert sorted(blocks) == sorted(BLOCKS)
    parsed = {name: yaml.safe_load(text) for name, text in blocks.items()}
    assert parsed["DOCUMENTATION"]["module"] == path.stem
    assert isinstance(parsed["EXAMPLES"], list) and parsed["EXAMPLES"]
    assert isinstance(parsed["RETURN"], dict)
