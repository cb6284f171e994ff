"""Every custom module documents itself the way `ansible-doc` shows it: DOCUMENTATION, EXAMPLES and RETURN
parse, and each option the module accepts is documented with the same type and default."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

MODULES = sorted((Path(__file__).resolve().parents[2] / "plugins" / "modules").glob("pos_*.py"))


def blocks(path):
    found = {}
    for node in ast.parse(path.read_text()).body:
        if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in ("DOCUMENTATION", "EXAMPLES", "RETURN")):
            found[node.targets[0].id] = node.value.value
    return found


def argument_spec(path):
    """The literal argument_spec=dict(...) of the module's AnsibleModule call, as {option: {key: value}}."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.keyword) and node.arg == "argument_spec" and isinstance(node.value, ast.Call):
            spec = {}
            for option in node.value.keywords:
                if option.arg is None:
                    continue  # **SHARED_OPTIONS: documented by a doc fragment
                if isinstance(option.value, ast.Name):
                    spec[option.arg] = {"shared": option.value.id}   # one option's spec, shared by modules
                    continue
                if not isinstance(option.value, ast.Call):
                    return None
                spec[option.arg] = {k.arg: ast.literal_eval(k.value) for k in option.value.keywords
                                    if k.arg in ("type", "default", "required", "choices")}
            return spec
    return None


@pytest.mark.parametrize("path", MODULES, ids=[p.stem for p in MODULES])
def test_module_documents_every_option_it_accepts(path):
    docs = blocks(path)
    assert set(docs) == {"DOCUMENTATION", "EXAMPLES", "RETURN"}, f"{path.name} lacks {docs.keys()}"
    documentation = yaml.safe_load(docs["DOCUMENTATION"])
    assert documentation["module"] == path.stem
    yaml.safe_load(docs["EXAMPLES"])
    yaml.safe_load(docs["RETURN"])
    spec = argument_spec(path)
    if spec is None:
        # The documentation of an action plugin, which validates its own arguments.
        assert (path.parents[1] / "action" / path.name).exists(), f"{path.name} has no AnsibleModule call"
        return
    # A shared option is documented by its doc fragment (pos_guard's RUN_OPTION by posfleet.fleet.run).
    fragments = {"RUN_OPTION": "posfleet.fleet.run", "SIGNATURE_OPTION": "posfleet.fleet.pos_signature"}
    for name, accepted in list(spec.items()):
        if "shared" in accepted:
            assert fragments[accepted["shared"]] in documentation.get("extends_documentation_fragment", []), \
                f"{path.name}: option {name} needs the doc fragment {fragments[accepted['shared']]}"
            del spec[name]
    options = documentation.get("options") or {}
    assert set(spec) <= set(options), f"{path.name}: undocumented options {set(spec) - set(options)}"
    for name, accepted in spec.items():
        documented = options[name]
        assert documented.get("type", "str") == accepted.get("type", "str"), f"{path.name}: {name} type"
        if "default" in accepted and accepted["default"] is not None:
            assert documented.get("default") == accepted["default"], f"{path.name}: {name} default"
