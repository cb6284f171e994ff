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
version_added: "0.1.0"
author: posfleet contributors
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
    no_log: true
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
requirements:
  - cryptography (on the control node)
notes:
  - Supports check mode; in check mode nothing is written or removed.
"""

EXAMPLES = r"""
- name: Store the terminal's snapshot encrypted
  pos_backup_store:
    src: "{{ pos_backup_store_dir }}/.incoming/{{ inventory_hostname }}.tar"
    serial: "{{ inventory_hostname }}"
    release: "{{ pos_update_before.app_version }}"
    store_dir: "{{ pos_backup_store_dir }}"
    key: "{{ pos_backup_key }}"
    keep: 5
  delegate_to: localhost

- name: Get the newest snapshot back for a rollback
  pos_backup_store:
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

import hashlib
import os
import re
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.pos_archive import ArchiveError, digest_tar_stream, manifest_problems

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_ERROR = None
except ImportError as import_error:
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_ERROR = import_error

MAGIC = b"POSFLEETBK1"
SALT_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = len(MAGIC) + SALT_BYTES + NONCE_BYTES
CHUNK = 1 << 20
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
BACKUP_RE = re.compile(r"^\d{8}T\d{6}Z-[A-Za-z0-9._+-]+\.tar\.enc$")
HKDF_INFO = b"posfleet backup v1"


class BackupError(Exception):
    """A backup cannot be written or read; the message says which file and why (never the key)."""


def derive_key(secret, salt):
    if re.match(r"^[0-9a-fA-F]{64}$", secret):
        kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=HKDF_INFO)
        return kdf.derive(bytes.fromhex(secret))
    return Scrypt(salt=salt, length=32, n=2 ** 15, r=8, p=1).derive(secret.encode("utf-8"))


def encrypt(src, dest, secret):
    """Encrypt the file `src` into the new file `dest`; returns the plaintext's sha256."""
    salt, nonce = os.urandom(SALT_BYTES), os.urandom(NONCE_BYTES)
    header = MAGIC + salt + nonce
    encryptor = Cipher(algorithms.AES(derive_key(secret, salt)), modes.GCM(nonce)).encryptor()
    encryptor.authenticate_additional_data(header)
    digest = hashlib.sha256()
    with open(src, "rb") as plain, open(dest, "wb") as out:
        out.write(header)
        for block in iter(lambda: plain.read(CHUNK), b""):
            digest.update(block)
            out.write(encryptor.update(block))
        out.write(encryptor.finalize())
        out.write(encryptor.tag)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


class DecryptingReader:
    """A read-only stream of the plaintext of an encrypted backup; `finish()` checks the GCM tag.

    Plaintext handed out before finish() is not yet authenticated: callers only keep it (write it to
    `dest`) after finish() returned.
    """

    def __init__(self, path, secret):
        self.path = path
        self.handle = open(path, "rb")  # noqa: SIM115 - a stream: finish() or close() closes it
        size = os.fstat(self.handle.fileno()).st_size
        header = self.handle.read(HEADER_BYTES)
        if size < HEADER_BYTES + TAG_BYTES or not header.startswith(MAGIC):
            self.handle.close()
            raise BackupError("%s is not a posfleet backup (no %s header)" % (path, MAGIC.decode()))
        salt = header[len(MAGIC):len(MAGIC) + SALT_BYTES]
        nonce = header[len(MAGIC) + SALT_BYTES:]
        self.handle.seek(size - TAG_BYTES)
        tag = self.handle.read(TAG_BYTES)
        self.handle.seek(HEADER_BYTES)
        self.left = size - HEADER_BYTES - TAG_BYTES
        self.decryptor = Cipher(algorithms.AES(derive_key(secret, salt)), modes.GCM(nonce, tag)).decryptor()
        self.decryptor.authenticate_additional_data(header)
        self.digest = hashlib.sha256()
        self.buffer = b""

    def read(self, size=-1):
        if size is None or size < 0:
            size = self.left + len(self.buffer)
        while len(self.buffer) < size and self.left > 0:
            block = self.handle.read(min(CHUNK, self.left))
            if not block:
                raise BackupError("%s is truncated" % self.path)
            self.left -= len(block)
            self.buffer += self.decryptor.update(block)
        out, self.buffer = self.buffer[:size], self.buffer[size:]
        self.digest.update(out)
        return out

    def finish(self):
        """Read what is left, check the tag; returns the plaintext's sha256."""
        while self.read(CHUNK):
            pass
        try:
            self.decryptor.finalize()
        except InvalidTag:
            raise BackupError("cannot decrypt %s: wrong key, or the file is damaged" % self.path) from None
        finally:
            self.handle.close()
        return self.digest.hexdigest()

    def close(self):
        self.handle.close()


def check_stream(reader, label, sink=None):
    """Hash and manifest-check the plaintext of `reader` (teeing it into `sink`); returns its sha256."""
    source = _Tee(reader, sink) if sink is not None else reader
    try:
        try:
            manifest, digests = digest_tar_stream(source, label)
        except ArchiveError:
            if isinstance(reader, DecryptingReader):
                reader.finish()  # a wrong key makes garbage that is no tar: say so rather than "bad tar"
            raise
        if sink is not None:
            while source.read(CHUNK):
                pass
        sha256 = reader.finish() if isinstance(reader, DecryptingReader) else None
    finally:
        reader.close()
    problems = manifest_problems(manifest, digests)
    if problems:
        raise BackupError("%s does not match its MANIFEST.json: %s" % (label, "; ".join(problems[:5])))
    return sha256


class _Tee:
    def __init__(self, reader, sink):
        self.reader, self.sink = reader, sink

    def read(self, size=-1):
        data = self.reader.read(size)
        self.sink.write(data)
        return data


class _PlainReader:
    def __init__(self, path):
        self.handle = open(path, "rb")  # noqa: SIM115 - a stream: close() closes it
        self.digest = hashlib.sha256()

    def read(self, size=-1):
        data = self.handle.read(size)
        self.digest.update(data)
        return data

    def close(self):
        self.handle.close()


def check_plain(path, label):
    """Manifest-check the snapshot tar at `path`; returns its sha256."""
    reader = _PlainReader(path)
    try:
        manifest, digests = digest_tar_stream(reader, label)
        while reader.read(CHUNK):
            pass
    finally:
        reader.close()
    problems = manifest_problems(manifest, digests)
    if problems:
        raise BackupError("%s does not match its MANIFEST.json: %s" % (label, "; ".join(problems[:5])))
    return reader.digest.hexdigest()


def decrypted_sha256(path, secret):
    reader = DecryptingReader(path, secret)
    try:
        return reader.finish()
    finally:
        reader.close()


def backups(directory):
    try:
        return sorted(name for name in os.listdir(directory) if BACKUP_RE.match(name))
    except FileNotFoundError:
        return []


def store(module, params):
    serial_dir = os.path.join(params["store_dir"], params["serial"])
    src = params["src"]
    if not os.path.isfile(src):
        raise BackupError("the snapshot %s does not exist: was it fetched from the terminal?" % src)
    sha256 = check_plain(src, "snapshot %s" % src)
    existing = backups(serial_dir)
    if existing:
        newest = os.path.join(serial_dir, existing[-1])
        try:
            same = decrypted_sha256(newest, params["key"]) == sha256
        except BackupError as error:
            module.warn("the newest backup %s cannot be read with this key (%s); writing a new one"
                        % (newest, error))
            same = False
        if same:
            return dict(changed=False, path=newest, sha256=sha256, kept=existing, removed=[])
    while True:
        # A name is unique by its second; a second backup within the same second waits for the next one
        # rather than take a suffix that would sort it before the first.
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        if not any(other.startswith(stamp) for other in existing):
            break
        time.sleep(0.25)
    name = "%s-%s.tar.enc" % (stamp, params["release"])
    after = sorted([*existing, name])
    removed = after[:-params["keep"]] if len(after) > params["keep"] else []
    kept = [n for n in after if n not in removed]
    path = os.path.join(serial_dir, name)
    if module.check_mode:
        return dict(changed=True, path=path, sha256=sha256, kept=kept, removed=removed)
    os.makedirs(serial_dir, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".tar.enc", dir=serial_dir)
    os.close(fd)
    try:
        if encrypt(src, tmp, params["key"]) != sha256:
            raise BackupError("the snapshot %s changed while it was being encrypted" % src)
        # Read back what is on the disk before calling it a backup.
        if check_stream(DecryptingReader(tmp, params["key"]), "encrypted backup of %s" % src) != sha256:
            raise BackupError("the encrypted backup does not decrypt to the snapshot %s" % src)
        os.chmod(tmp, 0o600)
        os.rename(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for old in removed:
        os.unlink(os.path.join(serial_dir, old))
    return dict(changed=True, path=path, sha256=sha256, kept=kept, removed=removed)


def restore(module, params):
    serial_dir = os.path.join(params["store_dir"], params["serial"])
    existing = backups(serial_dir)
    if params["backup"]:
        if params["backup"] not in existing:
            raise BackupError("there is no backup %s for %s in %s (there are: %s)" % (
                params["backup"], params["serial"], serial_dir, ", ".join(existing) or "none"))
        name = params["backup"]
    elif existing:
        name = existing[-1]
    else:
        raise BackupError("there is no backup of %s in %s" % (params["serial"], serial_dir))
    path, dest = os.path.join(serial_dir, name), params["dest"]
    label = "backup %s" % path
    if module.check_mode:
        sha256 = check_stream(DecryptingReader(path, params["key"]), label)
        same = os.path.isfile(dest) and _sha256_file(dest) == sha256
        return dict(changed=not same, path=path, sha256=sha256, dest=dest)
    directory = os.path.dirname(os.path.abspath(dest))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".tar", dir=directory)
    try:
        with os.fdopen(fd, "wb") as sink:
            sha256 = check_stream(DecryptingReader(path, params["key"]), label, sink=sink)
            sink.flush()
            os.fsync(sink.fileno())
        if os.path.isfile(dest) and _sha256_file(dest) == sha256:
            return dict(changed=False, path=path, sha256=sha256, dest=dest)
        os.chmod(tmp, 0o600)
        os.rename(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dict(changed=True, path=path, sha256=sha256, dest=dest)


def _sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


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
    for option in ("serial", "release"):
        if params[option] is not None and not NAME_RE.match(params[option]):
            module.fail_json(msg="%s %r may hold only letters, digits, '.', '_', '+' and '-'"
                             % (option, params[option]))
    if params["keep"] < 1:
        module.fail_json(msg="keep must be 1 or more, not %d" % params["keep"])
    key = params["key"]
    if not re.match(r"^[0-9a-fA-F]{64}$", key) and len(key) < 12:
        module.fail_json(msg="key must be 64 hex digits or a passphrase of at least 12 characters")
    try:
        result = store(module, params) if params["state"] == "present" else restore(module, params)
    except (BackupError, ArchiveError) as error:
        module.fail_json(msg=str(error))
    except OSError as error:
        module.fail_json(msg="backup store %s: %s" % (params["store_dir"], error))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
