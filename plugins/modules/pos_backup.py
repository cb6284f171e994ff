#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pos_backup
short_description: Take a consistent snapshot of a POS terminal before it is updated
description:
  - Writes C(snapshot.tar) (an uncompressed tar, members sorted) and C(MANIFEST.json) into O(dest), that is
    everything M(posfleet.fleet.pos_restore) needs to put the terminal back as it was.
  - "The snapshot holds: C(journal.db), a copy of posd's SQLite journal made with SQLite's online backup API
    (consistent even while posd runs); C(etc/pos/terminal.json); the tree of every data pack's C(current)
    version as C(packs/<name>/<version>/...) and C(packs.json) naming the current version of each pack;
    C(app.json) with the app version, package style and O(release); for C(dpkg) models the installed
    version's C(.deb) as C(rollback/posd_<version>_all.deb) when M(posfleet.fleet.pos_package) kept it in
    C(/var/lib/pos/rollback/); and C(MANIFEST.json), the sha256 of every other member."
  - The tar is built in a temporary file in O(dest), read back and checked member by member against
    C(MANIFEST.json), and only then renamed to C(snapshot.tar), so O(dest) always holds one whole snapshot.
  - Take it with the terminal in maintenance and its sales uploaded (M(posfleet.fleet.pos_maintenance),
    M(posfleet.fleet.pos_txn_upload)).
  - A new snapshot is always a change.
  - When the terminal holds an update lease (M(posfleet.fleet.pos_maintenance) with its C(lease) option), the app
    and pack versions just recorded become what the update guard switches back to should the control node go
    silent from here on.
  - When an earlier update of the terminal stopped half-way (its lease still in phase C(changing)), the app and
    packs are first switched back to what the terminal ran before that update (RV(switched_back)), so that the
    snapshot is of one whole release; when that cannot be done the module fails and changes nothing.
  - "A task C(pos_backup) goes through the action plugin of the same name (plugins/action/pos_backup.py), which
    also keeps the snapshot in the control node's backup store, in the same task: it checks O(key) before the
    terminal is contacted, runs this module on the terminal, fetches C(snapshot.tar) into
    C(<store_dir>/.incoming) (mode 0700), encrypts it into C(<store_dir>/<serial>/) with
    M(posfleet.fleet.pos_backup_store)'s code and format (in the controller's process, not as a module process),
    and removes the unencrypted copy whatever happens (RV(stored)). The snapshot stays on the terminal for
    M(posfleet.fleet.pos_restore)."
  - The action's options (O(store_dir), O(key), O(keep), O(serial)) stay on the control node; the key never
    reaches the terminal. A terminal that stops answering fails the task rather than being unreachable, so that
    a play that ignores unreachability does not go on without a backup.
version_added: "0.1.0"
author: posfleet contributors (@posfleet)
options:
  dest:
    description: Directory on the terminal for C(snapshot.tar) and C(MANIFEST.json).
    type: str
    default: /var/lib/pos/backup
  package_style:
    description: How the model installs its payment app (C(pos_model_profile.package_style)).
    type: str
    required: true
    choices: [dpkg, bundle]
  release:
    description:
      - The release the terminal runs now, recorded in C(app.json) as a label.
      - The action names the encrypted backup with it, C(<UTC timestamp>-<release>.tar.enc), so there it is
        required and may hold only letters, digits, C(.), C(_), C(+) and C(-).
    type: str
    default: ""
  os_packages:
    description:
      - The OS packages the update may change (the names of the release's C(os_packages) for the model). Their
        installed versions are recorded with the snapshot (C(app.json)) and in the update's lease, so that the
        update's rollback, rollback.yml and the update guard put them back (from the C(.deb)s
        M(posfleet.fleet.pos_os_packages) keeps); a package not installed is recorded as null.
    type: list
    elements: str
    default: []
  store_dir:
    description:
      - The backup store on the control node (the action's option; the role passes C(pos_backup_store_dir)).
      - Snapshots are staged in C(<store_dir>/.incoming), made mode 0700, only until they are encrypted.
    type: path
    required: true
  key:
    description:
      - The backup store's key from Ansible Vault (the action's option; the role passes C(pos_backup_key)),
        64 hex digits (32 bytes) or a passphrase of 12 characters or more.
      - When it is empty or missing the task fails before the terminal is contacted.
    type: str
    required: true
  keep:
    description: How many backups of the terminal the store keeps, the newest (the action's option).
    type: int
    default: 5
  serial:
    description:
      - The terminal's serial number, the store's folder for its backups (the action's option).
      - Default the host's C(inventory_hostname).
    type: str
extends_documentation_fragment:
  - posfleet.fleet.attributes
  - posfleet.fleet.run
  - posfleet.fleet.attributes.action
attributes:
  action:
    support: full
    details:
      - The action checks O(key) and the store's options before the terminal is contacted, then fetches the snapshot
        and encrypts it into O(store_dir) on the control node. O(store_dir), O(key), O(keep) and O(serial) never
        reach the terminal.
  check_mode:
    support: full
    details:
      - Nothing is written on the terminal or in the store; the result says what would be backed up (RV(size) is an
        estimate, RV(manifest) lists the files with their sizes) and the action fetches and stores nothing.
      - An earlier update that stopped half-way is not switched back; RV(switched_back) is empty.
  diff_mode:
    support: none
  platform:
    platforms: posix
    details:
      - The module runs on the terminal with the Python standard library only (Python 3.9 or newer).
      - The action's encryption needs C(cryptography) on the control node.
requirements:
  - cryptography (on the control node, for the action's encryption)
"""

EXAMPLES = r"""
- name: Take a consistent snapshot and keep it encrypted in the backup store
  posfleet.fleet.pos_backup:
    package_style: "{{ pos_model_profile.package_style }}"
    release: "{{ pos_update_before.app_version }}"
    store_dir: "{{ pos_backup_store_dir }}"
    key: "{{ pos_backup_key }}"
    keep: 5
  register: pos_backup_snapshot
"""

RETURN = r"""
path:
  description: The snapshot on the terminal.
  returned: always
  type: str
  sample: /var/lib/pos/backup/snapshot.tar
sha256:
  description: sha256 of the snapshot tar.
  returned: success, not in check mode
  type: str
  sample: 0d6e4079e36703ebd37c00722f5891d28b0e2811dc114b129215123adcce3605
size:
  description: Bytes of the snapshot tar (an estimate in check mode).
  returned: always
  type: int
  sample: 483328
manifest:
  description:
    - The snapshot's C(MANIFEST.json), {member path, sha256}.
    - In check mode the files that would be backed up, with their sizes.
  returned: always
  type: dict
journal_rows:
  description: Sales in the journal copy.
  returned: always
  type: int
  sample: 118
counters:
  description: The sequence counters in the journal copy.
  returned: always
  type: dict
  sample: {stan: 118, batch: 7, invoice: 118}
switched_back:
  description: What was switched back, before the snapshot, from an earlier update that stopped half-way.
  returned: always
  type: list
  elements: str
  sample: [app 1.0.0, pack params 2026.11.0]
app_version:
  description: The app version recorded.
  returned: always
  type: str
  sample: 1.0.0
os_packages:
  description: The OS package versions recorded (C(null) for one that is not installed); empty without O(os_packages).
  returned: always
  type: dict
  sample: {libssl3: 3.0.20-1~deb12u2, tzdata: 2026b-0+deb12u1}
packs:
  description: The pack versions recorded (C(null) for a pack the terminal does not have).
  returned: always
  type: dict
  sample: {params: 2026.01.0, catalog: 2026.01.0, merchant: null}
stored:
  description:
    - The snapshot's encrypted backup in the store, as M(posfleet.fleet.pos_backup_store) returns it (C(path),
      C(sha256), C(kept), C(removed), C(changed)); C(changed) is false when the newest backup already held this
      snapshot.
  returned: success, not in check mode (the action)
  type: dict
  sample:
    path: /var/lib/posfleet/backups/KST00002/20261124T010203Z-2026.11.1.tar.enc
    sha256: 0d6e4079e36703ebd37c00722f5891d28b0e2811dc114b129215123adcce3605
    kept: [20261124T010203Z-2026.11.1.tar.enc]
    removed: []
    changed: true
"""

import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_os
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_versions as versions
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_app import app, app_version, installed_style
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_archive import (
    ArchiveError,
    digest_tar_stream,
    manifest_problems,
    tree_files,
    verify_files,
)
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_guard import (
    RUN_OPTION,
    LeaseHeld,
    LeaseLost,
    act_as,
    begin_change,
    check_not_held,
    start_step,
    undo_interrupted,
)
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_journal import connect_ro, copy_to, counters, row_count
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal import (
    JOURNAL,
    PACK_NAMES,
    PACKS_DIR,
    TERMINAL_JSON,
    CommandTimeout,
    atomic_write,
    free_bytes,
    read_json,
    sha256_file,
    stamp,
    terminal_path,
)


def pack_sources(module):
    """{snapshot path: terminal file} of every pack's current tree, and {pack: version or None}."""
    sources, found = {}, {}
    for name in PACK_NAMES:
        version = versions.current(terminal_path(os.path.join(PACKS_DIR, name)))
        if version is None:
            found[name] = None
            continue
        base = terminal_path(os.path.join(PACKS_DIR, name, version))
        manifest = read_json(os.path.join(PACKS_DIR, name, version, "PACK.json"), {}) or {}
        if not os.path.isdir(base):
            module.fail_json(msg="pack %s: %s/%s/current points to %s, which does not exist; fix or remove "
                             "the link before backing up" % (name, PACKS_DIR, name, version))
        problems = verify_files(base, manifest.get("files") or {})
        if problems or str(manifest.get("version")) != version:
            module.warn("pack %s %s does not match its PACK.json (%s); it is backed up as it is"
                        % (name, version, "; ".join(problems) or "version differs from the directory name"))
        found[name] = version
        for rel in tree_files(base):
            sources["packs/%s/%s/%s" % (name, version, rel)] = os.path.join(base, rel)
    return sources, found


def tar_info(name, size, mtime):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o600
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def write_tar(path, sources, manifest_bytes, mtime):
    """The snapshot tar: MANIFEST.json and every source, sorted by member name."""
    members = dict(sources)
    members["MANIFEST.json"] = None
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            if members[name] is None:
                data = manifest_bytes
                tar.addfile(tar_info(name, len(data), mtime), io.BytesIO(data))
                continue
            with open(members[name], "rb") as handle:
                tar.addfile(tar_info(name, os.fstat(handle.fileno()).st_size, mtime), handle)
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def main():
    module = AnsibleModule(
        argument_spec=dict(
            run=RUN_OPTION,
            dest=dict(type="str", default="/var/lib/pos/backup"),
            package_style=dict(type="str", required=True, choices=["dpkg", "bundle"]),
            release=dict(type="str", default=""),
            os_packages=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    act_as(module.params["run"])
    style, dest_param = module.params["package_style"], module.params["dest"]
    if not dest_param.startswith("/"):
        module.fail_json(msg="dest must be an absolute path on the terminal, not %r" % dest_param)
    identity = read_json(TERMINAL_JSON)
    if not identity:
        module.fail_json(msg="%s is missing or unreadable: this does not look like a provisioned POS terminal"
                         % TERMINAL_JSON)
    try:
        found_style = installed_style()
    except CommandTimeout as error:
        module.fail_json(msg="no backup was taken: %s" % error)
    if found_style not in (None, style):
        module.fail_json(msg="the terminal has a %s app but package_style is %s; fix the model profile"
                         % (found_style, style))
    # Another run's terminal is left alone (backup.yml meeting an update, say): its update may reboot it
    # or switch its app under this snapshot.
    try:
        check_not_held()
    except LeaseHeld as error:
        module.fail_json(msg="no backup was taken: %s" % error, held=True)
    # A snapshot is of one whole release: what an earlier update left half-way (its control node gone
    # before the update guard's lease ran out) is switched back first.
    switched_back = []
    if not module.check_mode:
        try:
            switched_back = undo_interrupted()
        except LeaseHeld as error:
            module.fail_json(msg="no backup was taken: %s" % error, held=True)
        except OSError as error:
            module.fail_json(msg="an earlier update of this terminal stopped half-way and cannot be switched back "
                             "before the backup: %s" % error)
        try:
            start_step()
        except LeaseHeld as error:
            module.fail_json(msg="no backup was taken: %s" % error, held=True, changed=bool(switched_back))
        except LeaseLost as error:
            module.fail_json(msg="no backup was taken: %s" % error, changed=bool(switched_back))
    try:
        version = app_version(style)
    except CommandTimeout as error:
        module.fail_json(msg="no backup was taken: %s" % error, changed=bool(switched_back))
    if not version:
        module.fail_json(msg="no %s payment app is installed, so there is no app version to back up; "
                         "install posd first" % style)
    journal = terminal_path(JOURNAL)
    if not os.path.isfile(journal):
        module.fail_json(msg="there is no journal at %s: has posd ever run on this terminal?" % JOURNAL)

    try:
        os_packages = pos_os.recorded(sorted(set(module.params["os_packages"])))
    except OSError as error:  # CommandTimeout too
        module.fail_json(msg="no backup was taken: cannot read the OS packages' versions: %s" % error,
                         changed=bool(switched_back))
    sources, packs = pack_sources(module)
    sources["etc/pos/terminal.json"] = terminal_path(TERMINAL_JSON)
    # What the style keeps for its way back (a dpkg terminal's .deb) goes into the snapshot too.
    kept = app(style).snapshot_files(version)
    sources.update(kept)
    deb = next(iter(kept), None)
    record = {"version": version, "style": style, "release": module.params["release"], "deb": deb,
              "os_packages": os_packages,
              "serial": identity.get("serial"), "created": stamp(time.time())}
    dest = terminal_path(dest_param)
    path = os.path.join(dest_param, "snapshot.tar")
    estimate = sum(os.path.getsize(p) for p in sources.values()) + os.path.getsize(journal)
    if os.path.exists(journal + "-wal"):
        estimate += os.path.getsize(journal + "-wal")
    result = dict(path=path, app_version=version, packs=packs, os_packages=os_packages, switched_back=switched_back)

    if module.check_mode:
        try:
            conn = connect_ro(journal)
            try:
                rows, found = row_count(conn), counters(conn)
            finally:
                conn.close()
        except sqlite3.Error as error:
            module.fail_json(msg="cannot read the journal %s: %s" % (JOURNAL, error))
        files = {name: os.path.getsize(p) for name, p in sources.items()}
        files["journal.db"] = os.path.getsize(journal)
        module.exit_json(changed=True, size=estimate, manifest=files, journal_rows=rows, counters=found,
                         **result)

    # Room for the journal copy and the tar that holds everything once more.
    need = 2 * estimate + (1 << 20)
    free = free_bytes(dest_param)
    if free < need:
        module.fail_json(msg="not enough free space for the backup in %s: it needs %d MB, %d MB are free; "
                         "free some space on the terminal"
                         % (dest_param, need // (1 << 20) + 1, free // (1 << 20)))
    os.makedirs(dest, mode=0o700, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".snapshot-", dir=dest)
    tmp_tar = os.path.join(work, "snapshot.tar")
    try:
        try:
            copied = copy_to(journal, os.path.join(work, "journal.db"))
        except sqlite3.Error as error:
            module.fail_json(msg="cannot copy the journal %s: %s; the terminal needs attention before it is "
                             "updated" % (JOURNAL, error))
        sources["journal.db"] = os.path.join(work, "journal.db")
        for name, data in (("app.json", record), ("packs.json", packs)):
            with open(os.path.join(work, name), "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=1, sort_keys=True)
            sources[name] = os.path.join(work, name)
        manifest = {name: sha256_file(source) for name, source in sorted(sources.items())}
        manifest_bytes = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode("utf-8")
        write_tar(tmp_tar, sources, manifest_bytes, int(time.time()))
        # Read back what was written: a snapshot is only as good as the copy on the flash.
        with open(tmp_tar, "rb") as handle:
            embedded, digests = digest_tar_stream(handle, "snapshot")
        problems = manifest_problems(embedded, digests)
        if embedded != manifest:
            problems.append("the MANIFEST.json read back differs from the one written")
        if problems:
            module.fail_json(msg="the snapshot failed its check after writing (a file changed while it was "
                             "copied, or the flash is failing): %s" % "; ".join(problems[:5]))
        digest, size = sha256_file(tmp_tar), os.path.getsize(tmp_tar)
        os.chmod(tmp_tar, 0o600)
        os.rename(tmp_tar, os.path.join(dest, "snapshot.tar"))
        atomic_write(os.path.join(dest, "MANIFEST.json"), manifest_bytes, mode=0o600)
    except (OSError, ArchiveError) as error:
        module.fail_json(msg="cannot write the snapshot in %s: %s" % (dest_param, error))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # From here on the update may change the terminal: should the control node go silent, the update
    # guard switches it back to what was just recorded (see pos_maintenance's lease).
    try:
        begin_change({"package_style": style, "app_version": version, "packs": packs, "os_packages": os_packages})
    except LeaseLost as error:
        module.fail_json(msg="the snapshot was taken, but %s" % error, changed=True)
    except OSError as error:
        module.fail_json(msg="the snapshot was taken, but the update's lease could not be written: %s" % error,
                         changed=True)
    module.exit_json(changed=True, sha256=digest, size=size, manifest=manifest, journal_rows=copied["rows"],
                     counters=copied["counters"], **result)


if __name__ == "__main__":
    main()
