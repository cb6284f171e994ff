"""The backup step in one task: the pos_backup action (plugins/action/pos_backup.py) takes the snapshot on
the terminal (the real module, on a terminal laid out in tmp_path), fetches it and encrypts it into the
control node's store in the controller's process. What an operator relies on: the store holds an
encrypted backup that pos_backup_store (rollback.yml) decrypts back to the terminal's snapshot; no card
data is left in plain text on the control node, whatever fails; no key, no contact with the terminal;
check mode stores nothing; a terminal that stops answering fails the backup instead of being skipped."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
from types import SimpleNamespace

import pytest
from ansible.errors import AnsibleConnectionFailure
from ansible_collections.posfleet.fleet.plugins.action import pos_backup as backup_action
from conftest import ansible_module_result

KEY = "5f" * 32


class TerminalConnection:
    """Fetches from a terminal laid out under `root`, as the SSH connection fetches from a real one."""

    def __init__(self, root, fetch=None):
        self.root = root
        self.fetch = fetch
        self.fetched = []
        self._shell = SimpleNamespace(tmpdir=None)

    def fetch_file(self, in_path, out_path):
        self.fetched.append(out_path)
        source = self.root / in_path.lstrip("/")
        if self.fetch:
            self.fetch(source, out_path)
        else:
            shutil.copyfile(source, out_path)


def run_action(terminal, run_module, store_dir, check=False, fetch=None, **overrides):
    """The pos_backup task's result on `terminal`; module calls and the connection, for inspection."""
    args = {"package_style": "bundle", "release": "1.0.0", "store_dir": str(store_dir), "key": KEY, "keep": 5}
    args.update(overrides)
    task = SimpleNamespace(args=args, check_mode=check, async_val=0, action="pos_backup")
    connection = TerminalConnection(terminal.root, fetch)
    action = backup_action.ActionModule(task, connection, None, None, None, None)
    calls = []

    def execute(module_name=None, module_args=None, task_vars=None, **_):
        calls.append((module_name, dict(module_args)))
        return run_module(module_name.rsplit(".", 1)[-1], module_args, terminal.root, check=check)

    action._execute_module = execute
    result = action.run(task_vars={"inventory_hostname": "KST9101"})
    return result, calls, connection


def incoming(store_dir):
    path = store_dir / ".incoming"
    return sorted(os.listdir(path)) if path.exists() else []


def test_the_store_gets_an_encrypted_backup_that_restores_to_the_terminals_snapshot(
        tmp_path, make_terminal, run_module):
    terminal = make_terminal()
    store_dir = tmp_path / "store"

    result, calls, connection = run_action(terminal, run_module, store_dir)

    assert not result.get("failed"), result
    snapshot = terminal.path(result["path"]).read_bytes()
    assert result["changed"] is True and "diff" not in result
    assert result["sha256"] == hashlib.sha256(snapshot).hexdigest() == result["stored"]["sha256"]
    # One module call, on the terminal, with the module's options only: the key stays here.
    assert [(name, sorted(args)) for name, args in calls] == [
        ("posfleet.fleet.pos_backup", ["package_style", "release"])]
    assert KEY not in json.dumps(result)
    encrypted = store_dir / "KST9101" / os.path.basename(result["stored"]["path"])
    assert encrypted.name.endswith("-1.0.0.tar.enc") and result["stored"]["kept"] == [encrypted.name]
    raw = encrypted.read_bytes()
    assert raw.startswith(b"POSFLEETBK1") and b"journal" not in raw
    assert stat.S_IMODE(encrypted.stat().st_mode) == 0o600
    # Staged only in the private directory, and gone once encrypted.
    assert os.path.dirname(connection.fetched[0]) == str(store_dir / ".incoming")
    assert stat.S_IMODE((store_dir / ".incoming").stat().st_mode) == 0o700
    assert incoming(store_dir) == []

    dest = tmp_path / "restored.tar"
    restored = run_module("pos_backup_store", {"state": "restored", "serial": "KST9101", "store_dir": str(store_dir),
                                               "key": KEY, "dest": str(dest)})
    assert not restored.get("failed"), restored
    assert dest.read_bytes() == snapshot


def test_a_failed_encryption_leaves_no_plain_text_and_no_backup(tmp_path, make_terminal, run_module, monkeypatch):
    terminal = make_terminal()
    store_dir = tmp_path / "store"

    def disk_full(src, dest, secret):
        with open(dest, "wb") as out:
            out.write(b"POSFLEETBK1 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(backup_action._crypto, "encrypt", disk_full)
    result, _, connection = run_action(terminal, run_module, store_dir)

    assert result["failed"] is True and "No space left on device" in result["msg"]
    assert connection.fetched and incoming(store_dir) == []
    assert os.listdir(store_dir / "KST9101") == []


@pytest.mark.parametrize("how", ["link lost", "damaged"])
def test_a_failed_or_damaged_fetch_leaves_no_plain_text_and_no_backup(tmp_path, make_terminal, run_module, how):
    terminal = make_terminal()
    store_dir = tmp_path / "store"

    def fetch(source, out_path):
        data = source.read_bytes()
        if how == "link lost":
            with open(out_path, "wb") as out:
                out.write(data[:len(data) // 2])
            raise AnsibleConnectionFailure("Connection reset by peer")
        with open(out_path, "wb") as out:
            out.write(data[:-1] + bytes([data[-1] ^ 1]))

    result, _, connection = run_action(terminal, run_module, store_dir, fetch=fetch)

    assert result["failed"] is True and not result.get("unreachable")
    if how == "link lost":
        assert result["msg"].startswith("the terminal did not answer during the backup, so there is no backup")
    else:
        assert "it was damaged on the way" in result["msg"]
    assert connection.fetched and incoming(store_dir) == []
    assert not (store_dir / "KST9101").exists()


@pytest.mark.parametrize("key", [None, ""])
def test_without_a_key_the_terminal_is_not_contacted(tmp_path, make_terminal, run_module, key):
    terminal = make_terminal(boot=False)
    store_dir = tmp_path / "store"

    result, calls, _ = run_action(terminal, run_module, store_dir, key=key)

    assert result["failed"] is True and calls == []
    assert result["msg"].startswith("pos_backup_key is not set")
    assert "/var/lib/poslab/vault/secrets.yml" in result["msg"]
    assert not store_dir.exists()


def test_a_bad_store_option_fails_before_the_terminal_is_contacted(tmp_path, make_terminal, run_module):
    terminal = make_terminal(boot=False)
    result, calls, _ = run_action(terminal, run_module, tmp_path / "store", release="1.0 beta")
    assert result["failed"] is True and calls == []
    assert result["msg"] == "pos_backup: release '1.0 beta' may hold only letters, digits, '.', '_', '+' and '-'"


def test_check_mode_stores_nothing(tmp_path, make_terminal, run_module):
    terminal = make_terminal()
    store_dir = tmp_path / "store"

    result, calls, connection = run_action(terminal, run_module, store_dir, check=True)

    assert not result.get("failed"), result
    assert result["changed"] is True and "stored" not in result and result["journal_rows"] >= 0
    assert len(calls) == 1 and connection.fetched == []
    assert not store_dir.exists()


# --- through Ansible: the task `pos_backup` is this action ------------------------------------------

def unreachable(tmp_path, args):
    """The task's result on a localhost no one can reach over SSH."""
    return ansible_module_result(tmp_path, "posfleet.fleet.pos_backup", args,
                                 host="localhost ansible_connection=ssh ansible_host=127.0.0.1 ansible_port=9")


def test_ansible_runs_the_action_which_checks_the_key_before_contacting_the_terminal(tmp_path):
    result = unreachable(tmp_path, {"package_style": "bundle", "release": "1.0.0", "store_dir": str(tmp_path / "s"),
                                    "key": ""})
    assert result["failed"] is True and not result.get("unreachable")
    assert result["msg"].startswith("pos_backup_key is not set")


def test_a_terminal_that_does_not_answer_fails_the_backup_instead_of_being_unreachable(tmp_path):
    # update.yml runs the backup with ignore_unreachable: an unreachable result would let the change go on.
    result = unreachable(tmp_path, {"package_style": "bundle", "release": "1.0.0", "store_dir": str(tmp_path / "s"),
                                    "key": KEY})
    assert result["failed"] is True and not result.get("unreachable")
    assert result["msg"].startswith("the terminal did not answer during the backup, so there is no backup")
    assert not (tmp_path / "s").exists()
