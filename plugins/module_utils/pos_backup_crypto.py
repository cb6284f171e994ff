# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The control node's backup store: terminal snapshots encrypted with AES-256-GCM, checked, rotated.

Shared by the module pos_backup_store (rollback.yml decrypts a backup with it, state restored) and the
action plugin pos_backup (plugins/action/pos_backup.py), which encrypts each snapshot in the
controller's process instead of starting a module process per terminal. plugins/modules/
pos_backup_store.py documents the file format.

Control-node code: it needs the Python `cryptography` package, which terminals do not have; no
terminal-side module imports it. Errors are BackupError (or pos_archive's ArchiveError) with a message
that names the file and why, never the key.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time

from ansible_collections.posfleet.fleet.plugins.module_utils.pos_archive import (
    ArchiveError,
    digest_tar_stream,
    manifest_problems,
)

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


def check_options(params):
    """What is wrong with the store's options (serial, release, keep, key), or None.

    Checked before anything is read or written (the backup role: before the terminal is contacted).
    """
    for option in ("serial", "release"):
        if params.get(option) is not None and not NAME_RE.match(params[option]):
            return "%s %r may hold only letters, digits, '.', '_', '+' and '-'" % (option, params[option])
    if params.get("keep") is not None and params["keep"] < 1:
        return "keep must be 1 or more, not %d" % params["keep"]
    key = params["key"]
    if not re.match(r"^[0-9a-fA-F]{64}$", key) and len(key) < 12:
        return "key must be 64 hex digits or a passphrase of at least 12 characters"
    return None


def store(params, check_mode=False, warn=None):
    """Encrypt the snapshot params["src"] into the store; the result as pos_backup_store returns it.

    params: src, store_dir, serial, release, key, keep, and optionally sha256, the snapshot's sha256
    as the terminal reported it (a copy that differs is refused before anything is written).
    `warn(msg)` is told when the newest backup cannot be read with this key.
    """
    serial_dir = os.path.join(params["store_dir"], params["serial"])
    src = params["src"]
    if not os.path.isfile(src):
        raise BackupError("the snapshot %s does not exist: was it fetched from the terminal?" % src)
    sha256 = check_plain(src, "snapshot %s" % src)
    if params.get("sha256") and params["sha256"] != sha256:
        raise BackupError("the snapshot %s has sha256 %s, but the terminal's has %s: it was damaged on the way"
                          % (src, sha256, params["sha256"]))
    existing = backups(serial_dir)
    if existing:
        newest = os.path.join(serial_dir, existing[-1])
        try:
            same = decrypted_sha256(newest, params["key"]) == sha256
        except BackupError as error:
            if warn is not None:
                warn("the newest backup %s cannot be read with this key (%s); writing a new one" % (newest, error))
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
    if check_mode:
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


def restore(params, check_mode=False):
    """Decrypt the newest backup of params["serial"] (or params["backup"]) into params["dest"]."""
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
    if check_mode:
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
