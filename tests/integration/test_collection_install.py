"""posfleet.fleet as an AWX project uses it: the built collection installed into a project that holds only
an inventory and its collections/requirements.yml, then facts.yml and plan.yml run from the installed
collection (by their full names) against the lab, over real SSH."""

import json
import os
import shutil
import subprocess
import tarfile

import yaml
from conftest import ROOT, run
from test_update import publish

BASELINE = "2026.11.0"


def build(tmp_path):
    """The collection's tarball, as `ansible-galaxy collection build` makes it from the checkout."""
    out = tmp_path / "dist"
    run(["ansible-galaxy", "collection", "build", "--output-path", out, str(ROOT)])
    (tarball,) = out.glob("posfleet-fleet-*.tar.gz")
    return tarball


def project(tmp_path, tarball):
    """A project directory with the lab's inventory, the collection installed from its requirements file."""
    work = tmp_path / "project"
    shutil.copytree(ROOT / "inventories" / "lab", work / "inventories" / "lab")
    shutil.copytree(ROOT / "inventories" / "shared", work / "inventories" / "shared")
    (work / "collections").mkdir()
    (work / "collections" / "requirements.yml").write_text(yaml.safe_dump(
        {"collections": [{"name": str(tarball), "type": "file"}]}))
    # What the project's own ansible.cfg needs: where the collection goes, the inventory, the report.
    (work / "ansible.cfg").write_text(
        "[defaults]\n"
        "inventory = inventories/lab\n"
        "collections_path = collections\n"
        "callbacks_enabled = posfleet.fleet.posfleet_report\n"
        "gathering = explicit\n"
        "interpreter_python = auto_silent\n"
        "[inventory]\n"
        "enable_plugins = posfleet.fleet.posfleet_registry, ansible.builtin.yaml, ansible.builtin.ini\n"
        "ignore_patterns = \\.csv$, \\.json$\n"
        "any_unparsed_is_failed = True\n"
        "[posfleet_report]\n"
        "report_dir = reports\n")
    # Offline: the collection's dependencies are the ones the `ansible` package already holds.
    subprocess.run(["ansible-galaxy", "collection", "install", "-r", "collections/requirements.yml",
                    "-p", "collections", "--offline"], cwd=work, check=True, capture_output=True, text=True,
                   env=_env(work))
    return work


def _env(work):
    """The project's own configuration, not the checkout's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "POSFLEET_"))}
    return dict(env, ANSIBLE_CONFIG=str(work / "ansible.cfg"), ANSIBLE_NOCOLOR="1")


def playbook(work, name, *args):
    proc = subprocess.run(["ansible-playbook", f"posfleet.fleet.{name}", *args], cwd=work, env=_env(work),
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_the_built_collection_installs_and_runs_facts_and_plan_against_the_lab(lab, tmp_path):
    publish("baseline")
    tarball = build(tmp_path)
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    # The artifact is the collection, not the checkout: no lab, tests or benchmarks in it.
    assert {"MANIFEST.json", "meta/runtime.yml", "playbooks/update.yml", "plugins/modules/pos_package.py",
            "roles/pos_backup/tasks/main.yml"} <= names
    assert not [name for name in names if name.startswith(("lab/", "bench/", "tests/unit", "inventories/"))]

    work = project(tmp_path, tarball)
    installed = work / "collections" / "ansible_collections" / "posfleet" / "fleet"
    assert json.loads((installed / "MANIFEST.json").read_text())["collection_info"]["name"] == "fleet"
    assert not installed.is_symlink() and not (installed / "lab").exists()

    facts = playbook(work, "facts")
    for serial in lab:
        assert serial in facts, f"{serial} missing from the fleet facts of the installed collection"

    playbook(work, "plan", "-e", f"update_release={BASELINE}")
    report = json.loads((work / "reports" / "latest" / "report.json").read_text())
    assert report["mode"] == "plan" and report["release"] == BASELINE
    assert {row["serial"]: row["status"] in ("would_update", "current") for row in report["terminals"]} == {
        serial: True for serial in lab}
