"""pos_package's `signature` option: a terminal whose model checks signatures refuses a release it cannot
trust before it downloads a byte of the app, and installs a trusted one as before, in one module run.

The distribution point (conftest.py's `dist`) logs every request, so "nothing downloaded" is what the
terminal asked for; tree_state() shows that nothing on the terminal changed.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_signature
from conftest import TERMINAL_PYTHON, ansible_tool, tree_state
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_pos_modules import package_args, publish_app

REPO = Path(__file__).resolve().parents[2]
MANIFEST = b"schema: 1\nrelease: '2026.12.0'\nmodels: {}\n"
MANIFEST_PATH = "/releases/2026.12.0/manifest.yml"
SIGNATURE_REQUESTS = [MANIFEST_PATH, MANIFEST_PATH + ".sig"]


def public_pem(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture
def release(dist, artifacts):
    """The app 1.1.0 bundle and a release manifest signed by the release key, on the distribution point;
    the pos_package arguments for them, with the signature check."""
    key = Ed25519PrivateKey.generate()
    dist.publish(MANIFEST_PATH, MANIFEST)
    dist.publish(MANIFEST_PATH + ".sig", base64.b64encode(key.sign(MANIFEST)) + b"\n")
    published = publish_app(dist, artifacts, "1.1.0", "bundle")
    signature = {"manifest_url": dist.url + MANIFEST_PATH, "public_key": public_pem(key),
                 "manifest_sha256": hashlib.sha256(MANIFEST).hexdigest()}
    return package_args(published, "1.1.0", "bundle", restart=False, signature=signature)


def requested(dist):
    return [path for path, _range in dist.requests]


def with_signature(args, **changes):
    return dict(args, signature=dict(args["signature"], **changes))


def test_good_signature_installs_the_release_after_checking_it(make_terminal, run_module, dist, release):
    terminal = make_terminal(style="bundle", boot=False)

    result = run_module("pos_package", release, terminal.root)

    assert not result.get("failed"), result["msg"]
    assert result["changed"] and terminal.app_version() == "1.1.0"
    assert result["signature"] == {"verified": True, "manifest_sha256": release["signature"]["manifest_sha256"]}
    # The check came first, then the app, in the same run.
    assert requested(dist)[:2] == SIGNATURE_REQUESTS and len(requested(dist)) == 3
    assert sorted(os.listdir(terminal.path("/opt/pos/app"))) == ["1.0.0", "1.1.0", "current"]


def test_manifest_changed_after_signing_installs_and_downloads_nothing(make_terminal, run_module, dist, release):
    terminal = make_terminal(style="bundle", boot=False)
    dist.publish(MANIFEST_PATH, MANIFEST.replace(b"2026.12.0", b"2026.12.9"))
    before = tree_state(terminal.root)

    result = run_module("pos_package", release, terminal.root)

    assert result["failed"] and not result["changed"]
    assert "signature" in result["msg"] and "nothing is installed" in result["msg"]
    assert result["signature"]["verified"] is False
    assert requested(dist) == SIGNATURE_REQUESTS  # not a byte of the app
    assert tree_state(terminal.root) == before and terminal.app_version() == "1.0.0"


def test_another_release_key_is_refused_before_any_download(make_terminal, run_module, dist, release):
    terminal = make_terminal(style="bundle", boot=False)
    before = tree_state(terminal.root)
    other_key = public_pem(Ed25519PrivateKey.generate())

    result = run_module("pos_package", with_signature(release, public_key=other_key), terminal.root)

    assert result["failed"] and "signature" in result["msg"] and "bad" in result["msg"]
    assert requested(dist) == SIGNATURE_REQUESTS and tree_state(terminal.root) == before


def test_signed_but_different_manifest_is_refused_before_any_download(make_terminal, run_module, dist, release):
    terminal = make_terminal(style="bundle", boot=False)
    before = tree_state(terminal.root)

    result = run_module("pos_package", with_signature(release, manifest_sha256="0" * 64), terminal.root)

    assert result["failed"] and not result["changed"]
    assert "another manifest than the control node verified" in result["msg"]
    assert result["signature"] == {"verified": False, "manifest_sha256": hashlib.sha256(MANIFEST).hexdigest()}
    assert requested(dist) == SIGNATURE_REQUESTS and tree_state(terminal.root) == before


def test_missing_signature_file_is_refused(make_terminal, run_module, dist, release):
    terminal = make_terminal(style="bundle", boot=False)
    dist.server.files.pop(MANIFEST_PATH + ".sig")
    before = tree_state(terminal.root)

    result = run_module("pos_package", release, terminal.root)

    assert result["failed"] and "manifest.yml.sig" in result["msg"]
    assert result["signature"] == {"verified": False, "manifest_sha256": None}
    assert requested(dist) == SIGNATURE_REQUESTS and tree_state(terminal.root) == before


def test_check_mode_checks_the_signature_and_changes_nothing(make_terminal, run_module, dist, release):
    terminal = make_terminal(style="bundle", boot=False)
    before = tree_state(terminal.root)

    checked = run_module("pos_package", release, terminal.root, check=True)

    assert checked["changed"] and checked["signature"]["verified"] is True
    assert requested(dist) == SIGNATURE_REQUESTS and tree_state(terminal.root) == before

    dist.publish(MANIFEST_PATH, MANIFEST + b"# tampered\n")
    refused = run_module("pos_package", release, terminal.root, check=True)

    assert refused["failed"] and "signature" in refused["msg"]
    assert tree_state(terminal.root) == before


def test_the_check_runs_when_the_app_is_current_too(make_terminal, run_module, dist, release):
    """The data packs installed next come from the same manifest: a current app does not skip the check."""
    terminal = make_terminal(style="bundle", version="1.1.0", boot=False)
    dist.publish(MANIFEST_PATH, MANIFEST + b"# tampered\n")

    result = run_module("pos_package", release, terminal.root)

    assert result["failed"] and "signature" in result["msg"]


def test_without_signature_nothing_but_the_app_is_fetched(make_terminal, run_module, dist, release):
    terminal = make_terminal(style="bundle", boot=False)
    args = {key: value for key, value in release.items() if key != "signature"}

    result = run_module("pos_package", args, terminal.root)

    assert result["changed"] and "signature" not in result and terminal.app_version() == "1.1.0"
    assert MANIFEST_PATH not in requested(dist) and len(requested(dist)) == 1


def test_the_signature_doc_fragment_documents_the_options_of_the_shared_check():
    """The `signature` suboptions that pos_package and pos_os_packages document (doc fragment pos_signature) are
    the options module_utils/pos_signature.py accepts, and both modules take the fragment."""
    for module in ("pos_package", "pos_os_packages"):
        text = (REPO / "plugins/modules" / f"{module}.py").read_text()
        assert "  - posfleet.fleet.pos_signature\n" in text, module
        assert "signature=SIGNATURE_OPTION," in text, module
    tree = ast.parse((REPO / "plugins/doc_fragments/pos_signature.py").read_text())
    fragment = next(node for node in tree.body if isinstance(node, ast.ClassDef))
    text = next(node.value.value for node in fragment.body if isinstance(node, ast.Assign)
                and getattr(node.targets[0], "id", None) == "DOCUMENTATION")
    documented = yaml.safe_load(text)["options"]["signature"]
    suboptions = documented["suboptions"]
    assert set(suboptions) == set(pos_signature.SIGNATURE_OPTIONS)
    for name, accepted in pos_signature.SIGNATURE_OPTIONS.items():
        assert suboptions[name]["type"] == accepted["type"] and suboptions[name]["required"] is accepted["required"]
    assert documented["type"] == "dict"


# --- the role: one task per terminal ----------------------------------------------------------------

ROLE_PLAY = """
- name: Install the app the way update.yml's package step does
  hosts: localhost
  gather_facts: false
  environment:
    POS_ROOT: "{{ pos_test_root }}"
  tasks:
    - name: Install the payment app
      ansible.builtin.import_role:
        name: posfleet.fleet.pos_package
        rolespec_validate: false
"""


@pytest.mark.parametrize("verify_signature", [True, False], ids=["checking-model", "non-checking-model"])
def test_role_checks_the_signature_in_its_one_task_only_for_models_that_can(
    make_terminal, dist, release, tmp_path, verify_signature
):
    """A tampered manifest on the distribution point: a model with verify_signature refuses it in the
    install task itself (the reason update.yml records names the task and says "signature"); a model
    without relies on the control node's check and installs without fetching the manifest."""
    terminal = make_terminal(style="bundle", boot=False)
    dist.publish(MANIFEST_PATH, MANIFEST + b"# tampered\n")
    app = {key: release[key] for key in ("sha256", "size")}
    extra_vars = {
        "pos_test_root": str(terminal.root),
        "ansible_python_interpreter": TERMINAL_PYTHON,
        "pos_region_settings": {"distribution_point": dist.url},
        "pos_release": {"release": "2026.12.0"},
        "pos_update_entry": {"app": dict(app, url=release["url"][len(dist.url) + 1:], version="1.1.0")},
        "pos_model_profile": {"package_style": "bundle", "verify_signature": verify_signature},
        "update_release_check": {"manifest_sha256": release["signature"]["manifest_sha256"],
                                 "public_key_pem": release["signature"]["public_key"]},
        "pos_update_reboot": True,
    }
    (tmp_path / "play.yml").write_text(ROLE_PLAY)
    (tmp_path / "vars.json").write_text(json.dumps(extra_vars))
    (tmp_path / "hosts.ini").write_text("localhost ansible_connection=local\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "POSFLEET_"))}
    env.update(ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1")
    proc = subprocess.run([ansible_tool("ansible-playbook"), "-i", "hosts.ini", "play.yml", "-e", "@vars.json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    try:
        tasks = json.loads(proc.stdout)["plays"][0]["tasks"]
    except (ValueError, KeyError, IndexError):
        raise AssertionError(f"unexpected ansible output:\n{proc.stdout}\n{proc.stderr}") from None

    # A release without OS packages for the model: the app's task is the only one that runs.
    ran = [task for task in tasks if not task["hosts"]["localhost"].get("skipped")]
    assert [task["task"]["name"] for task in ran] == [
        "posfleet.fleet.pos_package : Install the payment app of the release"]
    result = ran[0]["hosts"]["localhost"]
    if verify_signature:
        assert result.get("failed") and "signature" in result["msg"] and "nothing is installed" in result["msg"]
        assert requested(dist) == SIGNATURE_REQUESTS and terminal.app_version() == "1.0.0"
    else:
        assert not result.get("failed"), result.get("msg")
        assert result["changed"] and "signature" not in result and terminal.app_version() == "1.1.0"
        assert MANIFEST_PATH not in requested(dist)
