# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pos_backup: the snapshot on the terminal and its encrypted copy in the control node's store, in one task.

The pos_backup role's whole step (docs/update-pipeline.md, step 4), which took five tasks per terminal,
the most expensive of them a pos_backup_store module process on the control node (docs/performance.md):

1. the action's own options (the store side) are checked, the backup key first, before the terminal
   is contacted;
2. the pos_backup module runs on the terminal (its options pass through unchanged; the key never
   leaves the control node);
3. in check mode that is all: nothing is fetched or stored;
4. the snapshot is fetched into a private staging directory, `<store_dir>/.incoming` (mode 0700), and
   encrypted into the store in the controller's process with pos_backup_store's own code
   (plugins/module_utils/pos_backup_crypto.py); the copy must have the sha256 the terminal reported;
5. the unencrypted copy is removed whatever happened (a failed fetch or encryption included).

The snapshot stays on the terminal: pos_restore rolls back from it. A terminal that stops answering
fails the task instead of being unreachable: the update's steps ignore unreachability, and a backup
that did not happen must send the terminal to update.yml's rescue, not on to the change.

It returns the module's result (path, sha256, size, manifest, journal_rows, counters, app_version,
packs, switched_back) and, not in check mode, `stored`: the encrypted backup (path, sha256, kept,
removed, changed), as pos_backup_store returned it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase
from ansible.utils.vars import merge_hash
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_backup_crypto as _crypto

# The action's own options: the store on the control node. Every other option is the module's and is
# validated by the module on the terminal against its own argument spec (`release` is both: the
# module records it in the snapshot, the store names the backup file with it).
ARGUMENT_SPEC = {
    "store_dir": {"type": "path", "required": True},
    "key": {"type": "str", "no_log": True},
    "keep": {"type": "int", "default": 5},
    "serial": {"type": "str"},
}

KEY_MISSING = ("pos_backup_key is not set: backups hold card data and are stored encrypted; put the key in "
               "Ansible Vault (the lab's is in /var/lib/poslab/vault/secrets.yml)")
LOST = "the terminal did not answer during the backup, so there is no backup"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        module_args = dict(self._task.args)
        own = ArgumentSpecValidator(ARGUMENT_SPEC).validate(
            {name: module_args.pop(name) for name in list(module_args) if name in ARGUMENT_SPEC})
        if own.error_messages:
            return dict(result, failed=True, msg=f"pos_backup: {'; '.join(own.error_messages)}")
        store = dict(own.validated_parameters)
        if not store["key"]:
            return dict(result, failed=True, msg=KEY_MISSING)
        store["serial"] = store["serial"] or task_vars.get("inventory_hostname")
        store["release"] = module_args.get("release") or None
        if store["release"] is None:
            return dict(result, failed=True, msg="pos_backup: release is required: it labels the backup in the store")
        problem = _crypto.check_options(store)
        if problem:
            return dict(result, failed=True, msg=f"pos_backup: {problem}")
        if not _crypto.HAS_CRYPTOGRAPHY:
            return dict(result, failed=True, msg="pos_backup: the Python package cryptography is needed on the "
                        f"control node to encrypt backups ({_crypto.CRYPTOGRAPHY_ERROR})")

        try:
            result = merge_hash(result, self._execute_module(
                module_name="posfleet.fleet.pos_backup", module_args=module_args, task_vars=task_vars))
        except AnsibleConnectionFailure as exc:
            return dict(result, failed=True, msg=f"{LOST}: {exc}")
        self._remove_tmp_path(self._connection._shell.tmpdir)
        if result.get("failed") or self._task.check_mode:
            return result

        warnings = []
        try:
            stored = self._store(result, store, warnings.append)
        except AnsibleConnectionFailure as exc:
            return dict(result, failed=True, msg=f"{LOST} (it stopped while its snapshot was fetched): {exc}")
        except AnsibleError as exc:
            return dict(result, failed=True, msg=f"cannot fetch the snapshot {result['path']}: {exc}")
        except (_crypto.BackupError, _crypto.ArchiveError) as exc:
            return dict(result, failed=True, msg=str(exc))
        except OSError as exc:
            return dict(result, failed=True, msg=f"backup store {store['store_dir']}: {exc}")
        if warnings:
            result["warnings"] = result.get("warnings", []) + warnings
        result["stored"] = stored
        result["changed"] = bool(result.get("changed") or stored["changed"])
        return result

    def _store(self, snapshot, store, warn):
        """Fetch the snapshot into the private staging directory and encrypt it into the store."""
        incoming = os.path.join(store["store_dir"], ".incoming")
        os.makedirs(incoming, mode=0o700, exist_ok=True)
        os.chmod(incoming, 0o700)  # also when it was made earlier with another mode
        fd, staged = tempfile.mkstemp(prefix=f"{store['serial']}.", suffix=".tar", dir=incoming)
        os.close(fd)
        # Card data in plain text: removed whatever happens from here on.
        try:
            self._connection.fetch_file(snapshot["path"], staged)
            return _crypto.store(dict(store, src=staged, sha256=snapshot.get("sha256")), warn=warn)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)
