"""Security properties that hold without the lab: no_log on every secret, the backup key's path, host keys.

* Every option of a module or action plugin whose name says it carries a secret is no_log; every
  task in roles/ and playbooks/ that hands a secret variable to a module hands it to such an option
  (or is no_log itself).
* The backup key stays in the controller's process in the update's backup (the pos_backup action
  encrypts there), and reaches pos_backup_store (rollback.yml's restore) as a no_log parameter through
  pipelining, so it is never in a file, a result or an encrypted backup; the backup files hold neither
  the key nor the AES key derived from it.
* The production inventory checks SSH host keys strictly.
"""

import hashlib
import io
import json
import re
import runpy
import secrets
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from ansible.module_utils import basic
from conftest import tree_state

from posfleet import secretscan

REPO = Path(__file__).resolve().parents[2]


MODULES = sorted((REPO / "plugins" / "modules").glob("pos_*.py"))
ACTIONS = sorted((REPO / "plugins" / "action").glob("pos_*.py"))
# Option names that say "this is a secret": a whole word of the name, e.g. `key`, `vault_password`.
SECRET_WORDS = r"key|password|passwd|passphrase|pass|secret|token|credentials?|auth|pin|private|cookie|session"
SECRET_NAME = re.compile(rf"(^|_)({SECRET_WORDS})(_|$)", re.I)
# Options that match the pattern but carry no secret, and why.
NOT_SECRET = {
    "public_key": "an ed25519 public key (PEM): what every terminal trusts, published with the releases",
}


class _Captured(Exception):
    def __init__(self, spec):
        super().__init__("argument spec captured")
        self.spec = spec


def module_spec(path, monkeypatch):
    """The argument_spec a module's main() hands to AnsibleModule, captured before it runs."""

    def capture(*args, **kwargs):
        raise _Captured(kwargs.get("argument_spec", args[0] if args else {}))

    monkeypatch.setattr(basic, "AnsibleModule", capture)
    try:
        runpy.run_path(str(path), run_name="__main__")
    except _Captured as captured:
        return captured.spec
    raise AssertionError(f"{path.name} did not create an AnsibleModule")


def action_spec(path):
    return runpy.run_path(str(path)).get("ARGUMENT_SPEC")


def secret_options(spec, prefix=""):
    """(option path, option spec) of every option, suboptions included, whose name says secret."""
    for name, option in spec.items():
        path = f"{prefix}{name}"
        if SECRET_NAME.search(name) and name not in NOT_SECRET:
            yield path, option
        for alias in option.get("aliases", []):
            if SECRET_NAME.search(alias) and name not in NOT_SECRET:
                yield f"{path} (alias {alias})", option
        if option.get("options"):
            yield from secret_options(option["options"], f"{path}.")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_every_secret_module_option_is_no_log(path, monkeypatch):
    try:
        spec = module_spec(path, monkeypatch)
    except AssertionError:
        spec = action_spec(REPO / "plugins" / "action" / path.name)  # documentation stub of an action
        assert spec is not None, f"{path.name} has no argument spec to check"
    missing = [name for name, option in secret_options(spec) if option.get("no_log") is not True]
    assert missing == [], f"{path.name}: option(s) {', '.join(missing)} carry a secret but are not no_log=True"


@pytest.mark.parametrize("path", ACTIONS, ids=lambda p: p.stem)
def test_every_secret_action_option_is_no_log(path):
    spec = action_spec(path)
    assert spec is not None, f"{path.name} validates no ARGUMENT_SPEC"
    missing = [name for name, option in secret_options(spec) if option.get("no_log") is not True]
    assert missing == [], f"{path.name}: option(s) {', '.join(missing)} carry a secret but are not no_log=True"


def test_the_walk_finds_the_secret_options_there_are(monkeypatch):
    found = {f"{path.stem}.{name}" for path in MODULES
             for name, _ in secret_options(module_spec_or_action(path, monkeypatch))}
    assert "pos_backup_store.key" in found
    assert list(secret_options({"api_token": {"type": "str"}})) == [("api_token", {"type": "str"})]


def test_the_secret_name_pattern_catches_what_it_should():
    assert all(SECRET_NAME.search(name) for name in ("key", "backup_key", "vault_password", "api_token",
                                                     "pin", "passphrase", "private_key_pem"))
    assert not any(SECRET_NAME.search(name) for name in ("keep", "manifest_sha256", "packs", "dest",
                                                         "passive", "spin"))


# --- secret variables in roles and playbooks -------------------------------------------------------

TASK_KEYWORDS = {
    "name", "when", "register", "loop", "loop_control", "with_items", "delegate_to", "run_once", "tags",
    "block", "rescue", "always", "no_log", "become", "changed_when", "failed_when", "until", "retries",
    "delay", "vars", "environment", "ignore_errors", "check_mode", "notify", "listen", "args",
    "delegate_facts", "any_errors_fatal", "throttle", "timeout", "ignore_unreachable", "diff",
}


def secret_variables():
    """Role variables declared no_log in meta/argument_specs.yml: the secrets the playbooks carry."""
    names = set()
    for spec_file in REPO.glob("roles/*/meta/argument_specs.yml"):
        for entry in yaml.safe_load(spec_file.read_text())["argument_specs"].values():
            names |= {name for name, option in entry.get("options", {}).items() if option.get("no_log")}
    return names


def tasks(node):
    if isinstance(node, list):
        for item in node:
            yield from tasks(item)
    elif isinstance(node, dict):
        if any(key in node for key in ("tasks", "pre_tasks", "post_tasks", "handlers")):
            for key in ("pre_tasks", "tasks", "post_tasks", "handlers"):
                yield from tasks(node.get(key, []))
            return
        for key in ("block", "rescue", "always"):
            if key in node:
                yield from tasks(node[key])
        if not any(key in node for key in ("block", "rescue", "always")):
            yield node


def module_of(task):
    names = [key for key in task if key not in TASK_KEYWORDS]
    return (names[0], task[names[0]]) if len(names) == 1 else (None, None)


def task_files():
    files = sorted(REPO.glob("roles/*/tasks/*.yml")) + sorted(REPO.glob("roles/*/handlers/*.yml"))
    return files + sorted(REPO.glob("playbooks/*.yml"))


def test_the_roles_declare_the_backup_key_secret():
    assert "pos_backup_key" in secret_variables()


def test_secret_variables_reach_modules_only_through_no_log_options(monkeypatch):
    secret_vars = secret_variables()
    specs = {path.stem: module_spec_or_action(path, monkeypatch) for path in MODULES}
    # A module with an action plugin of its name runs through the action: the action's own options (the
    # pos_backup action's key) are checked by its ARGUMENT_SPEC and never reach the module.
    for path in ACTIONS:
        if path.stem in specs:
            specs[path.stem] = {**specs[path.stem], **(action_spec(path) or {})}
    leaks, checked = [], 0
    for path in task_files():
        for task in tasks(yaml.safe_load(path.read_text()) or []):
            module, args = module_of(task)
            if not isinstance(args, dict):
                continue
            for option, value in args.items():
                # a reference in a template; the name in plain text (a message that names it) is no use of it
                used = {name for name in secret_vars if re.search(rf"{{[{{%][^}}]*\b{name}\b", str(value))}
                if not used:
                    continue
                checked += 1
                short = module.rsplit(".", 1)[-1]
                if task.get("no_log") is True:
                    continue
                if short == "assert" and option == "that":
                    continue  # a condition: a failed assert shows the expression, not the value
                if short in specs and specs[short].get(option, {}).get("no_log") is True:
                    continue
                leaks.append(f"{path.relative_to(REPO)}: task {task.get('name')!r} passes "
                             f"{', '.join(sorted(used))} to {module} option {option!r}, which is not no_log")
    assert checked >= 2  # the backup role's pos_backup and rollback.yml's pos_backup_store: the walk found them
    assert leaks == []


def module_spec_or_action(path, monkeypatch):
    try:
        return module_spec(path, monkeypatch)
    except AssertionError:
        return action_spec(REPO / "plugins" / "action" / path.name) or {}


# --- the backup key --------------------------------------------------------------------------------

def test_ansible_cfg_pipelines_so_module_arguments_never_land_in_a_temporary_file():
    """Without pipelining Ansible writes each module with its arguments (the backup key) to a file."""
    text = (REPO / "ansible.cfg").read_text()
    assert re.search(r"^\[ssh_connection\][^\[]*^pipelining\s*=\s*True\s*$", text, re.M | re.S)
    assert not re.search(r"^\s*keep_remote_files\s*=\s*(true|yes|1)", text, re.M | re.I)


def test_the_backup_key_is_never_written_returned_or_derivable_from_the_store(tmp_path, run_module):
    pytest.importorskip("cryptography")
    key = secrets.token_hex(32)
    snapshot_dir = tmp_path / "terminal"
    snapshot_dir.mkdir()
    snapshot = snapshot_dir / "snapshot.tar"
    make_snapshot(snapshot)
    store = tmp_path / "store"
    before = tree_state(tmp_path)

    stored = run_module("pos_backup_store", {"src": str(snapshot), "serial": "KST00001", "release": "1.0.0",
                                             "store_dir": str(store), "key": key})
    restored = run_module("pos_backup_store", {"state": "restored", "serial": "KST00001", "store_dir": str(store),
                                               "key": key, "dest": str(tmp_path / "out" / "snapshot.tar")})
    assert stored["changed"] and restored["changed"] and not stored.get("failed") and not restored.get("failed")
    failed = run_module("pos_backup_store", {"state": "restored", "serial": "KST00001", "store_dir": str(store),
                                             "key": secrets.token_hex(32), "dest": str(tmp_path / "x.tar")})
    assert failed["failed"] and "wrong key" in failed["msg"]

    # what the module returned, as Ansible would print or log it
    for result in (stored, restored, failed):
        text = json.dumps(result)
        assert secretscan.scan_text(text, [key]) == []
        assert result.get("invocation", {}).get("module_args", {}).get("key") in (None,
                                                                               "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER")
    # every file the module wrote: no key in hex or raw bytes, nor the AES key derived from it
    written = [tmp_path / rel for rel, state in tree_state(tmp_path).items()
               if rel not in before and state != "dir" and not rel.startswith("args-")]
    assert any(path.suffix == ".enc" for path in written)
    codec = runpy.run_path(str(REPO / "plugins" / "modules" / "pos_backup_store.py"))
    for path in written:
        data = path.read_bytes()
        assert key.encode() not in data and bytes.fromhex(key) not in data, path
        if path.suffix == ".enc":
            salt = data[len(codec["MAGIC"]):len(codec["MAGIC"]) + codec["SALT_BYTES"]]
            assert codec["derive_key"](key, salt) not in data, path
        assert secretscan.scan_paths([path], [key]) == []
    assert (store / "KST00001").stat().st_mode & 0o077 == 0


def make_snapshot(path):
    """A minimal snapshot tar as pos_backup writes it: journal.db and MANIFEST.json."""
    journal = b"SQLite format 3\x00" + b"\x00" * 100
    manifest = json.dumps({"journal.db": hashlib.sha256(journal).hexdigest()}).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in (("MANIFEST.json", manifest), ("journal.db", journal)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


# --- host keys -------------------------------------------------------------------------------------

def test_ansible_cfg_checks_host_keys():
    text = (REPO / "ansible.cfg").read_text()
    assert re.search(r"^host_key_checking\s*=\s*True\s*$", text, re.M)


DISABLES_HOST_KEYS = re.compile(
    r"StrictHostKeyChecking\s*[= ]\s*(no|off|accept-new)|UserKnownHostsFile\s*[= ]\s*/dev/null"
    r"|host_key_checking\s*[:=]\s*(false|no|0)\b|ANSIBLE_HOST_KEY_CHECKING", re.I)


@pytest.mark.parametrize("inventory", ["production", "lab"])
def test_no_inventory_file_turns_host_key_checking_off(inventory):
    files = [path for path in (REPO / "inventories" / inventory).rglob("*") if path.is_file()]
    offending = [f"{path.relative_to(REPO)}: {match.group()}" for path in files
                 for match in [DISABLES_HOST_KEYS.search(path.read_text(errors="replace"))] if match]
    assert offending == []


def test_production_terminals_get_strict_host_key_checking():
    """What a production run really uses: the inventory's variables for a terminal of the registry."""
    ansible_inventory = Path(sys.executable).with_name("ansible-inventory")
    if not ansible_inventory.exists():
        pytest.skip("ansible-inventory not found next to this Python")
    env = {"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    proc = subprocess.run([str(ansible_inventory), "-i", str(REPO / "inventories" / "production"), "--list"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    hostvars = json.loads(proc.stdout)["_meta"]["hostvars"]
    assert hostvars, "the production example has no terminals"
    for serial, variables in hostvars.items():
        args = " ".join(str(variables.get(name, "")) for name in
                        ("ansible_ssh_common_args", "ansible_ssh_extra_args", "ansible_ssh_args"))
        args = args.replace("{'__ansible_unsafe': '", "")
        assert "StrictHostKeyChecking=yes" in args, serial
        assert not DISABLES_HOST_KEYS.search(args), serial
        assert str(variables.get("ansible_host_key_checking", True)).lower() not in ("false", "no", "0"), serial
