"""What `ansible-doc` shows of the collection: every plugin it ships is listed and documented.

An operator or AWX user reads a plugin's options with `ansible-doc posfleet.fleet.NAME`. The list
(`ansible-doc -l`) shows a plugin without documentation as UNDOCUMENTED and reads only the start of the
documentation; the rest (a doc fragment that is not found, YAML that does not parse) fails only when the
plugin is rendered, so each one is rendered too. The plugins expected are the ones in the checkout
(plugins/<type>/, and every name a filter file's FilterModule exports), so a new plugin without
documentation, or documentation left behind by a removed plugin, fails here.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import subprocess

import pytest
from conftest import REPO, ansible_tool

COLLECTION = "posfleet.fleet"
# The plugin directories whose files are plugins of their own (filters: see filter_names()).
PLUGIN_DIRS = {"module": "modules", "inventory": "inventory", "callback": "callback", "cache": "cache"}
PLUGIN_TYPES = ("module", "filter", "inventory", "callback", "cache")


def filter_names():
    """Every filter the collection's filter files export, imported by full name as Ansible loads them."""
    names = set()
    for path in sorted((REPO / "plugins" / "filter").glob("*.py")):
        if path.stem.startswith("_"):
            continue
        module = importlib.import_module(f"ansible_collections.posfleet.fleet.plugins.filter.{path.stem}")
        names.update(module.FilterModule().filters())
    return sorted(names)


def expected(plugin_type):
    """The short names of the plugins of `plugin_type` in this checkout."""
    if plugin_type == "filter":
        return filter_names()
    directory = REPO / "plugins" / PLUGIN_DIRS[plugin_type]
    return sorted(path.stem for path in directory.glob("*.py") if not path.stem.startswith("_"))


def run_ansible_doc(*args):
    """`ansible-doc ARGS --json` with the repository's ansible.cfg, which finds the collection."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ANSIBLE_", "POSFLEET_"))}
    env.update(ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run([ansible_tool("ansible-doc"), *args, "--json"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def ansible_doc(*args):
    """The JSON of `ansible-doc ARGS --json` and its stderr; a failure or no JSON fails the test."""
    proc = run_ansible_doc(*args)
    assert proc.returncode == 0, f"ansible-doc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    try:
        return json.loads(proc.stdout), proc.stderr
    except ValueError:
        raise AssertionError(f"ansible-doc {' '.join(args)} printed no JSON:\n{proc.stdout}\n{proc.stderr}") from None


@functools.cache
def listed(plugin_type):
    """{full name: short description} that `ansible-doc -t TYPE -l posfleet.fleet` lists, and its stderr."""
    return ansible_doc("-t", plugin_type, "-l", COLLECTION)


@functools.cache
def rendered_together(plugin_type):
    """{full name: documentation} of every expected plugin of the type from one ansible-doc call (one
    second instead of one per plugin), or {} when that call failed: one plugin's error fails it all."""
    names = [f"{COLLECTION}.{name}" for name in expected(plugin_type)]
    proc = run_ansible_doc("-t", plugin_type, *names)
    try:
        return json.loads(proc.stdout) if proc.returncode == 0 else {}
    except ValueError:
        return {}


def rendered(plugin_type, full_name):
    """The documentation ansible-doc renders for one plugin; rendered alone when the shared call failed,
    so that the failure names this plugin's own error."""
    docs = rendered_together(plugin_type)
    if full_name not in docs:
        docs, stderr = ansible_doc("-t", plugin_type, full_name)
        assert full_name in docs, f"ansible-doc -t {plugin_type} {full_name} rendered nothing:\n{stderr}"
    return docs[full_name]


@pytest.mark.parametrize("plugin_type", PLUGIN_TYPES)
def test_ansible_doc_lists_every_plugin_of_the_checkout(plugin_type):
    found, stderr = listed(plugin_type)
    want = [f"{COLLECTION}.{name}" for name in expected(plugin_type)]
    assert want, f"no {plugin_type} plugins found in the checkout"
    # A plugin whose documentation cannot be read at all is left out of the list, with only a warning.
    assert sorted(found) == want, f"ansible-doc lists {sorted(found)}, the checkout has {want}\n{stderr}"


@pytest.mark.parametrize("plugin_type", PLUGIN_TYPES)
def test_no_plugin_is_listed_undocumented(plugin_type):
    found, _ = listed(plugin_type)
    undocumented = sorted(name for name, summary in found.items()
                          if summary in ("UNDOCUMENTED", "INVALID SHORT DESCRIPTION") or not summary.strip())
    assert not undocumented, f"{plugin_type} plugins without documentation: {undocumented}"


@pytest.mark.parametrize(("plugin_type", "name"),
                         [(plugin_type, name) for plugin_type in PLUGIN_TYPES for name in expected(plugin_type)])
def test_ansible_doc_renders_the_plugin(plugin_type, name):
    full_name = f"{COLLECTION}.{name}"
    plugin = rendered(plugin_type, full_name)
    doc = plugin["doc"]
    assert str(doc.get("short_description") or "").strip(), f"{full_name} has no short_description"
    if plugin_type == "module":
        attributes = doc.get("attributes") or {}
        assert "check_mode" in attributes, (
            f"{full_name} documents no attributes.check_mode (support: full, partial or none), "
            f"so ansible-doc cannot say whether --check is safe: {sorted(attributes)}")
        assert attributes["check_mode"].get("support") in ("full", "partial", "none"), attributes["check_mode"]
    if plugin_type == "filter":
        # A filter's input and result: the two things its reader needs first.
        assert "_input" in (doc.get("options") or {}), f"{full_name} does not document its input (_input)"
        assert "_value" in (plugin.get("return") or {}), f"{full_name} does not document its result (_value)"
