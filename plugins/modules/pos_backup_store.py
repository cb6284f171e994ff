#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pos_backup_store
short_description: Keep terminal snapshots encrypted on the control node, and get one back
description:
  - Runs on the control node (C(delegate_to localhost)); needs the Python C(cryptography) package there.
  - V(present) encrypts the snapshot O(src) fetched from a terminal into
    C(<store_dir>/<serial>/<UTC timestamp>-<release>.tar.enc) with AES-256-GCM, reads the file back, decrypts
    it and checks its sha256 and every tar member against the snapshot's C(MANIFEST.json) before it is renamed
    into place, then removes all but the newest O(keep) backups of the terminal. When the newest stored backup
    already holds the same snapshot, nothing is written.
  - V(restored) decrypts the newest backup of O(serial) (or the one named O(backup)) into O(dest), checked the
    same way; the plaintext is renamed into place only once the authentication tag and the manifest check out.
  - "File format: the magic C(POSFLEETBK1), a 16-byte random salt, a 12-byte random nonce, the ciphertext and
    the 16-byte GCM tag; the magic, salt and nonce are authenticated as associated data. The AES key is
    derived per file from O(key) and the salt: with HKDF-SHA256 when O(key) is 64 hex digits (a random
    32-byte key), with scrypt (n=2^15, r=8, p=1) when it is a passphrase."
  - The key never reaches a file, a log or the result; plaintext is written only to O(dest) (state
    V(restored)).
  - The backup role does not run this module; its M(posfleet.fleet.pos_backup) task stores each snapshot with the
    same code (C(plugins/module_utils/pos_backup_crypto.py)) in the controller's process. C(rollback.yml) decrypts
    a backup with V(restored).
version_added: "0.1.0"
author: posfleet contributors (@posfleet)
options:
  state:
    description: V(present) to store O(src), V(restored) to decrypt a stored backup into O(dest).
    type: str
    default: present
    choices: [present, restored]
  src:
    description: The snapshot tar fetched from the terminal. Required with V(present).
    type: path
  serial:
    description: The terminal's serial number; its backups live in C(<store_dir>/<serial>/).
    type: str
    required: true
  release:
    description:
      - The release the terminal ran when the snapshot was taken, part of the file name.
      - Required with V(present).
    type: str
  store_dir:
    description: The backup store on the control node.
    type: path
    required: true
  key:
    description:
      - The backup key from Ansible Vault, 64 hex digits (32 bytes) or a passphrase of 12 characters or more.
    type: str
    required: true
  keep:
    description: How many backups of each terminal to keep (the newest).
    type: int
    default: 5
  backup:
    description: With V(restored), the file name of the backup to decrypt (default the newest).
    type: str
  dest:
    description: With V(restored), where to write the decrypted snapshot tar. Required with V(restored).
    type: path
extends_documentation_fragment:
  - posfleet.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - Nothing is written or removed. V(present) returns the backup that would be written and the ones the rotation
        would remove (RV(removed)); V(restored) decrypts and checks the backup without writing it and says whether
        O(dest) would change.
  diff_mode:
    support: none
  platform:
    platforms: posix
    details:
      - "The control node (C(delegate_to: localhost)), which needs the Python C(cryptography) package; not a terminal."
requirements:
  - cryptography (on the control node)
"""

EXAMPLES = r"""
- name: Store the terminal's snapshot encrypted
  posfleet.fleet.pos_backup_store:
    src: "{{ pos_backup_store_dir }}/.incoming/{{ inventory_hostname }}.tar"
    serial: "{{ inventory_hostname }}"
    release: "{{ pos_update_before.app_version }}"
    store_dir: "{{ pos_backup_store_dir }}"
    key: "{{ pos_backup_key }}"
    keep: 5
  delegate_to: localhost

- name: Get the newest snapshot back for a rollback
  posfleet.fleet.pos_backup_store:
    state: restored
    serial: "{{ inventory_hostname }}"
    store_dir: "{{ pos_backup_store_dir }}"
    key: "{{ pos_backup_key }}"
    dest: "/tmp/{{ inventory_hostname }}.snapshot.tar"
  delegate_to: localhost
"""

RETURN = r"""
path:
  description: The encrypted backup written, found to be identical, or decrypted.
  returned: success
  type: str
  sample: /var/lib/posfleet/backups/KST00002/20261124T010203Z-2026.11.1.tar.enc
sha256:
  description: sha256 of the snapshot tar (the plaintext).
  returned: success
  type: str
kept:
  description: File names of the terminal's backups kept, oldest first.
  returned: state is present
  type: list
  elements: str
removed:
  description: File names removed by the rotation (would be, in check mode).
  returned: state is present
  type: list
  elements: str
dest:
  description: Where the decrypted snapshot is.
  returned: state is restored
  type: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_backup_crypto import (  # noqa: F401 - the format (MAGIC, SALT_BYTES, derive_key) stays readable here
    CRYPTOGRAPHY_ERROR,
    HAS_CRYPTOGRAPHY,
    MAGIC,
    SALT_BYTES,
    ArchiveError,
    BackupError,
    check_options,
    derive_key,
    restore,
    store,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", default="present", choices=["present", "restored"]),
            src=dict(type="path"),
            serial=dict(type="str", required=True),
            release=dict(type="str"),
            store_dir=dict(type="path", required=True),
            key=dict(type="str", required=True, no_log=True),
            keep=dict(type="int", default=5),
            backup=dict(type="str"),
            dest=dict(type="path"),
        ),
        required_if=[("state", "present", ["src", "release"]), ("state", "restored", ["dest"])],
        supports_check_mode=True,
    )
    if not HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib("cryptography"), exception=str(CRYPTOGRAPHY_ERROR))
    params = module.params
    problem = check_options(params)
    if problem:
        module.fail_json(msg=problem)
    try:
        if params["state"] == "present":
            result = store(params, check_mode=module.check_mode, warn=module.warn)
        else:
            result = restore(params, check_mode=module.check_mode)
    except (BackupError, ArchiveError) as error:
        module.fail_json(msg=str(error))
    except OSError as error:
        module.fail_json(msg="backup store %s: %s" % (params["store_dir"], error))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
