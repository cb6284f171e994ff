# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Delta files for data packs and app bundles: what the publisher computes and what a terminal applies.

A pack ships as a .tar.gz, but deltas are always computed between the *uncompressed* tar streams of two
versions (a compressed stream changes everywhere when one byte of its input does), and the delta itself
is sent compressed. The tar layout is fixed here (`write_pack_tar`): members sorted, regular files only,
mode 0644, mtime 0, owner root 0/0, ustar. The publisher builds pack archives with it and a terminal
rebuilds the tar of the pack version it has installed with it, byte for byte, so the installed
directory is the base and no archive has to be kept on the terminal's flash. An app bundle has its own
fixed layout (`write_bundle_tar`: the top directory `<version>/`, directories, files with their
permission bits, symlinks), which the publisher makes from the bundle archive as `safe_extract` would
leave it on a terminal (`bundle_archive_entries`) and a terminal makes from /opt/pos/app/<version>/
(`bundle_dir_entries`).

A delta file is an lzma stream (.lzma "alone" format, preset 9e: the smallest container; integrity
comes from the sha256s in the manifest, not from the container) of:

    MAGIC
    four varints: base size, target size, number of instructions, number of literal bytes
    the instructions, each three varints: insert length, copy length, copy offset correction (zigzag)
    the literal bytes: the inserted bytes of every instruction, in order

An instruction appends `insert length` literal bytes to the output, then copies `copy length` bytes of
the base from `previous copy end + insert length + correction`. Keeping the controls and the literals
apart, and making an unchanged alignment a correction of 0, is what lets lzma squeeze them.

Nothing here trusts a delta: sizes and offsets are bounded while it is applied, and the result counts
only when its sha256 is the one the (signed) release manifest names.

Standard library only, Python 3.9 or newer; it imports nothing from Ansible, so the control-node
release tooling loads the same file.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

try:
    import lzma
except ImportError:  # a Python built without liblzma: no deltas, but full downloads still work
    lzma = None

MAGIC = b"PFD1"
BLOCK = 16  # bytes of the base indexed per entry: a change costs about this many bytes of search
CANDIDATES = 8  # positions kept per block, for repetitive data (tar padding, equal lines)
PRESET = 9 | (lzma.PRESET_EXTREME if lzma else 0)


class DeltaError(Exception):
    """A delta cannot be made or applied (corrupt, for another base, or a result that does not match)."""


# --- the pack tar layout ---------------------------------------------------------------------------

def _header(name, kind, mode):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _add_file(tar, info, content):
    """Add a regular file whose content is bytes, or the path of a file to read."""
    if isinstance(content, bytes):
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    else:
        info.size = os.path.getsize(content)
        with open(content, "rb") as handle:
            tar.addfile(info, handle)


def write_pack_tar(fileobj, members):
    """Write the tar of a pack to `fileobj`: `members` is {relpath: bytes or a path to read}."""
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for relpath in sorted(members):
            _add_file(tar, _header(relpath, tarfile.REGTYPE, 0o644), members[relpath])


def pack_dir_members(directory, files):
    """{relpath: path} of an installed pack: the files its PACK.json lists, and PACK.json itself."""
    members = {relpath: os.path.join(directory, relpath) for relpath in files}
    members["PACK.json"] = os.path.join(directory, "PACK.json")
    return members


# --- the app bundle tar layout -----------------------------------------------------------------------
# entries: {relpath: ("dir", None) | ("file", (permission bits, bytes or a path)) | ("link", target)}.
# Python's bytecode caches are no part of a bundle (posd writes them beside its sources at run time).

SKIPPED_DIR = "__pycache__"


def write_bundle_tar(fileobj, version, entries):
    """Write the tar of an app bundle: `<version>/`, then every entry sorted; directories 0755."""
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(_header(version, tarfile.DIRTYPE, 0o755))
        for relpath in sorted(entries):
            kind, value = entries[relpath]
            name = "%s/%s" % (version, relpath)
            if kind == "dir":
                tar.addfile(_header(name, tarfile.DIRTYPE, 0o755))
            elif kind == "link":
                info = _header(name, tarfile.SYMTYPE, 0o777)
                info.linkname = value
                tar.addfile(info)
            else:
                _add_file(tar, _header(name, tarfile.REGTYPE, value[0] & 0o777), value[1])


def bundle_dir_entries(directory):
    """The entries of an installed bundle directory (what a terminal rebuilds its base tar from)."""
    entries = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            relpath = os.path.relpath(path, directory).replace(os.sep, "/")
            status = os.lstat(path)
            if os.path.islink(path):
                entries[relpath] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                if name != SKIPPED_DIR:
                    entries[relpath] = ("dir", None)
            elif os.path.isfile(path):
                entries[relpath] = ("file", (status.st_mode & 0o777, path))
            else:
                raise DeltaError("%s is neither a file, a directory nor a link" % path)
        dirnames[:] = [name for name in dirnames if name != SKIPPED_DIR
                       and not os.path.islink(os.path.join(dirpath, name))]
    return entries


def bundle_archive_entries(tar, version):
    """The entries of a bundle archive (an open tarfile) as `safe_extract` leaves them on a terminal.

    Files get the permission bits the terminal writes (the archive's, plus owner read), a hard link
    becomes a copy of its file, and the parents of every member are directories.
    """
    entries = {}
    for member in tar:
        parts = [part for part in member.name.split("/") if part not in ("", ".")]
        if not parts or parts[0] != version:
            raise DeltaError("bundle member %r is not under the top directory %s/" % (member.name, version))
        relpath = "/".join(parts[1:])
        if not relpath or SKIPPED_DIR in parts:
            continue
        for depth in range(2, len(parts)):
            entries.setdefault("/".join(parts[1:depth]), ("dir", None))
        if member.isdir():
            entries[relpath] = ("dir", None)
        elif member.issym():
            entries[relpath] = ("link", member.linkname)
        elif member.isreg():
            entries[relpath] = ("file", ((member.mode & 0o777) | 0o400, tar.extractfile(member).read()))
        elif member.islnk():
            target = "/".join(part for part in member.linkname.split("/") if part not in ("", "."))
            if target.partition("/")[2] not in entries:
                raise DeltaError("bundle hard link %r does not point to an earlier file" % member.name)
            entries[relpath] = entries[target.partition("/")[2]]
        else:
            raise DeltaError("bundle member %r is a device or another special file" % member.name)
    return entries


# --- varints -----------------------------------------------------------------------------------------

def _varint(value, out):
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _read_varint(data, pos):
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise DeltaError("the instruction stream ends inside a number")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


# --- making a delta (the publisher) ------------------------------------------------------------------

def _index(base):
    index = {}
    for start in range(0, len(base) - BLOCK + 1, BLOCK):
        found = index.setdefault(base[start:start + BLOCK], [])
        if len(found) < CANDIDATES:
            found.append(start)
    return index


def _forward(base, bpos, target, tpos):
    """How many bytes base[bpos:] and target[tpos:] share from the start (doubling, then halving steps)."""
    length, step = 0, 64
    limit = min(len(base) - bpos, len(target) - tpos)
    while step:
        take = min(step, limit - length)
        if take > 0 and base[bpos + length:bpos + length + take] == target[tpos + length:tpos + length + take]:
            length += take
            step *= 2
        else:
            step //= 2
    return length


def diff_ops(base, target):
    """[(literal bytes, copy start, copy length)] that rebuild `target` from `base`."""
    index = _index(base)
    ops = []
    literal_start = tpos = 0
    expected = 0  # where a copy would start if the changed bytes replaced as many bytes of the base
    end = len(target) - BLOCK
    while tpos <= end:
        starts = index.get(target[tpos:tpos + BLOCK])
        if not starts:
            tpos += 1
            continue
        best = None
        for start in starts:
            back = 0
            while (tpos - back > literal_start and start - back > 0
                   and base[start - back - 1] == target[tpos - back - 1]):
                back += 1
            length = back + BLOCK + _forward(base, start + BLOCK, target, tpos + BLOCK)
            source = start - back
            gap = tpos - back - literal_start
            key = (length, -abs(source - (expected + gap)))
            if best is None or key > best[0]:
                best = (key, source, tpos - back, length)
        _, source, copy_at, length = best
        ops.append((target[literal_start:copy_at], source, length))
        tpos = literal_start = copy_at + length
        expected = source + length
    if literal_start < len(target):
        ops.append((target[literal_start:], expected, 0))
    return ops


def make_delta(base, target):
    """The compressed delta (bytes) that turns the tar `base` into the tar `target`."""
    controls, literals = bytearray(), bytearray()
    previous_end = 0
    ops = diff_ops(base, target)
    for literal, source, length in ops:
        correction = source - (previous_end + len(literal)) if length else 0
        _varint(len(literal), controls)
        _varint(length, controls)
        _varint((correction << 1) ^ (correction >> 63), controls)  # zigzag: small either way
        literals += literal
        if length:
            previous_end = source + length
    header = bytearray(MAGIC)
    for value in (len(base), len(target), len(ops), len(literals)):
        _varint(value, header)
    return lzma.compress(bytes(header + controls + literals), format=lzma.FORMAT_ALONE, preset=PRESET)


# --- applying a delta (the terminal) -----------------------------------------------------------------

def _payload(delta_path, limit):
    if lzma is None:
        raise DeltaError("this Python has no lzma module (built without liblzma), so it cannot read deltas")
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE)
    out = bytearray()
    try:
        with open(delta_path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 16), b""):
                out += decompressor.decompress(block, max_length=limit + 1 - len(out))
                if len(out) > limit:
                    raise DeltaError("the delta unpacks to more than %d bytes: not a delta for this pack" % limit)
                while decompressor.needs_input is False and not decompressor.eof:
                    out += decompressor.decompress(b"", max_length=limit + 1 - len(out))
                    if len(out) > limit:
                        raise DeltaError("the delta unpacks to more than %d bytes" % limit)
    except lzma.LZMAError as error:
        raise DeltaError("the delta is not a valid lzma stream: %s" % error) from error
    if not decompressor.eof:
        raise DeltaError("the delta is truncated (its lzma stream does not end)")
    return bytes(out)


def read_header(payload):
    """{base_size, target_size, ops, literal_bytes} and the offset of the first instruction."""
    if not payload.startswith(MAGIC):
        raise DeltaError("not a posfleet delta (wrong magic)")
    header, pos = {}, len(MAGIC)
    for key in ("base_size", "target_size", "ops", "literal_bytes"):
        header[key], pos = _read_varint(payload, pos)
    return header, pos


def apply_delta(base_path, delta_path, out_path, target_sha256, target_size):
    """Rebuild the target tar at `out_path` from the base tar and the delta; check its size and sha256.

    Raises DeltaError (and leaves no `out_path`) when the delta is damaged, was made for another base
    or another target, or rebuilds anything but the bytes with `target_sha256`.
    """
    base_size = os.path.getsize(base_path)
    # Literals are at most the target; instructions a few bytes per copied run.
    payload = _payload(delta_path, 4 * target_size + (1 << 16))
    header, pos = read_header(payload)
    if header["target_size"] != target_size:
        raise DeltaError("the delta rebuilds %d bytes, the pack has %d" % (header["target_size"], target_size))
    if header["base_size"] != base_size:
        raise DeltaError("the delta is for a base of %d bytes, the terminal's is %d"
                         % (header["base_size"], base_size))
    literal_pos = len(payload) - header["literal_bytes"]
    if literal_pos < pos:
        raise DeltaError("the delta's literal bytes overlap its instructions")
    digest = hashlib.sha256()
    written = previous_end = 0
    try:
        with open(base_path, "rb") as base, open(out_path, "wb") as out:
            for _ in range(header["ops"]):
                insert, pos = _read_varint(payload, pos)
                length, pos = _read_varint(payload, pos)
                zigzag, pos = _read_varint(payload, pos)
                if pos > literal_pos or literal_pos + insert > len(payload):
                    raise DeltaError("an instruction reads past the end of the delta")
                source = previous_end + insert + ((zigzag >> 1) ^ -(zigzag & 1))
                if written + insert + length > target_size or (length and not 0 <= source <= base_size - length):
                    raise DeltaError("an instruction points outside the base or the target")
                chunk = payload[literal_pos:literal_pos + insert]
                literal_pos += insert
                if length:
                    base.seek(source)
                    copied = base.read(length)
                    if len(copied) != length:
                        raise DeltaError("the base ended early")
                    chunk += copied
                    previous_end = source + length
                out.write(chunk)
                digest.update(chunk)
                written += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if pos != len(payload) - header["literal_bytes"] or literal_pos != len(payload):
            raise DeltaError("the delta has bytes its instructions do not use")
        if written != target_size:
            raise DeltaError("the delta rebuilt %d bytes, the pack has %d" % (written, target_size))
        if digest.hexdigest() != target_sha256:
            raise DeltaError("sha256 mismatch after applying the delta: expected %s, got %s"
                             % (target_sha256, digest.hexdigest()))
    except BaseException:
        if os.path.exists(out_path):
            os.unlink(out_path)
        raise
    return {"ops": header["ops"], "literal_bytes": header["literal_bytes"], "size": written}
