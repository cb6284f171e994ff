# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Archives a terminal unpacks (app bundles, data packs, snapshots) and the manifests that vouch for them.

An archive comes from the network or from a backup, so nothing in it is trusted: every member name
is checked before anything is written (no absolute path, no `..`, no duplicate), only regular files,
directories and, where the caller allows them, links that stay inside the target are accepted, and
files are written by this code (never tarfile.extract), without owners or setuid bits. Python 3.9's
tarfile has no extraction filters on every patch release, hence the explicit checks.

Runs on terminals: standard library only, Python 3.9 or newer.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import posixpath
import shutil
import tarfile
import zlib

from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal import sha256_file

CHUNK = 1 << 20
# Backstops for archives whose caller sets no tighter limit: far above any real app bundle or pack
# (a terminal has under 100 MiB of flash), far below what would fill a terminal's memory or flash.
MAX_MEMBERS = 10000
MAX_BYTES = 256 << 20
# What a damaged or truncated (compressed) tar raises while it is read.
UNREADABLE = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


class ArchiveError(Exception):
    """The archive or tree is unsafe or does not match its manifest; the message says which member."""


def member_path(name, label):
    """The member name as a clean relative path, or ArchiveError when it could escape the target."""
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError("%s: member %r has an absolute path; refusing the archive" % (label, name))
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveError("%s: member %r climbs out with '..'; refusing the archive" % (label, name))
    if "\\" in name or "\x00" in name:
        raise ArchiveError("%s: member %r has a character a path must not have; refusing the archive"
                           % (label, name))
    return "/".join(parts)


def _inside(base, path):
    base = os.path.realpath(base)
    path = os.path.realpath(path)
    return path == base or path.startswith(base + os.sep)


def members(tar, label, max_members=MAX_MEMBERS):
    """The members of an open tar, read one header at a time; ArchiveError past `max_members`.

    tar.getmembers() would read every header first: an archive of millions of empty members would
    fill the memory before any check ran.
    """
    for count, member in enumerate(tar, start=1):
        if max_members is not None and count > max_members:
            raise ArchiveError("%s: has more than %d members; refusing the archive" % (label, max_members))
        yield member


def plan_members(tar, label, *, strip=None, allow_dirs=True, allow_links=False, allowed=None,
                 max_bytes=MAX_BYTES, max_members=MAX_MEMBERS):
    """Check every member of an open tar and return [(member, relpath, link target relpath)] to extract.

    strip: a top directory every member must be in (it is removed from the paths).
    allowed: the only relative paths a regular file may have (a data pack's PACK.json list).
    max_bytes: the most the regular files may add up to (a zip bomb stops here, not on the flash).
    max_members: the most members the archive may have (None: no limit, as for max_bytes).
    """
    planned, seen, regular, total = [], set(), set(), 0
    for member in members(tar, label, max_members):
        rel = member_path(member.name, label)
        if strip is not None:
            head, _, rest = rel.partition("/")
            if head != strip:
                raise ArchiveError("%s: member %r is not under the top directory %s/; refusing the archive"
                                   % (label, member.name, strip))
            if not rest:
                if not member.isdir():
                    raise ArchiveError("%s: top entry %r is not a directory" % (label, member.name))
                continue
            rel = rest
        if not rel:
            if member.isdir():
                continue
            raise ArchiveError("%s: member %r has an empty path" % (label, member.name))
        if rel in seen:
            raise ArchiveError("%s: member %r appears twice; refusing the archive" % (label, rel))
        seen.add(rel)
        if member.isreg():
            if allowed is not None and rel not in allowed:
                raise ArchiveError("%s: member %r is not listed in the archive's manifest; refusing the "
                                   "archive" % (label, rel))
            total += member.size
            if max_bytes is not None and total > max_bytes:
                raise ArchiveError("%s: unpacks to more than %d bytes; refusing the archive (a decompression "
                                   "bomb?)" % (label, max_bytes))
        elif member.isdir():
            if not allow_dirs:
                raise ArchiveError("%s: member %r is a directory, but this archive must hold only top-level "
                                   "files" % (label, rel))
        elif member.issym() or member.islnk():
            if not allow_links:
                raise ArchiveError("%s: member %r is a link; this archive must hold no links" % (label, rel))
            target = member.linkname
            if member.issym():
                if target.startswith("/"):
                    raise ArchiveError("%s: link %r points to the absolute path %r; refusing the archive"
                                       % (label, rel, target))
                resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
            else:
                resolved = member_path(target, label)
                if strip is not None:
                    resolved = resolved.partition("/")[2]
            if resolved == ".." or resolved.startswith("../") or resolved.startswith("/"):
                raise ArchiveError("%s: link %r points outside the archive (%r); refusing the archive"
                                   % (label, rel, target))
            if member.islnk() and resolved not in regular:
                raise ArchiveError("%s: hard link %r does not point to a file earlier in the archive"
                                   % (label, rel))
            planned.append((member, rel, resolved))
            continue
        else:
            raise ArchiveError("%s: member %r is a device, fifo or other special file; refusing the archive"
                               % (label, rel))
        if member.isreg():
            regular.add(rel)
        planned.append((member, rel, None))
    return planned


def extract(tar, planned, dest, label="archive"):
    """Write the checked members under `dest` (which must not exist yet); return bytes written."""
    os.makedirs(dest, mode=0o755)
    written = 0
    for member, rel, _ in planned:
        target = os.path.join(dest, rel)
        if member.isdir():
            os.makedirs(target, mode=0o755, exist_ok=True)
            continue
        if not member.isreg():
            continue  # links come last: no file is ever written through a link of the archive
        parent = os.path.dirname(target)
        os.makedirs(parent, mode=0o755, exist_ok=True)
        if not _inside(dest, parent):
            raise ArchiveError("%s: member %r would be written outside %s" % (label, rel, dest))
        source = tar.extractfile(member)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(target, flags, 0o600), "wb") as handle:
            while True:
                block = source.read(CHUNK)
                if not block:
                    break
                handle.write(block)
                written += len(block)
            handle.flush()
            os.fsync(handle.fileno())
        # Keep the permission bits only: no setuid, setgid or sticky bit from an archive.
        os.chmod(target, (member.mode & 0o777) | 0o400)
    for member, rel, resolved in planned:
        if resolved is None:
            continue
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        if member.issym():
            os.symlink(member.linkname, target)
            if not _inside(dest, target):
                os.unlink(target)
                raise ArchiveError("%s: link %r resolves outside %s" % (label, rel, dest))
        else:
            os.link(os.path.join(dest, resolved), target)
    # Once every link exists, again: a link checked while a later one was missing may now lead out
    # through it ("a" -> "b/c/..", then "b/c" -> ".." makes "a" the parent of dest).
    for member, rel, _ in planned:
        if member.issym() and not _inside(dest, os.path.join(dest, rel)):
            raise ArchiveError("%s: link %r resolves outside %s through another link of the archive; refusing "
                               "the archive" % (label, rel, dest))
    return written


def safe_extract(archive, dest, label, **checks):
    """Check then unpack `archive` (tar, tar.gz, ...) into the new directory `dest`.

    On any failure `dest` is removed again, so a caller never finds half an archive; a `dest` that
    already exists is refused and left alone. Returns {relpath: size} of the regular files written.
    """
    if os.path.lexists(dest):
        raise ArchiveError("%s: cannot unpack into %s: it already exists" % (label, dest))
    try:
        with tarfile.open(archive, "r:*") as tar:
            planned = plan_members(tar, label, **checks)
            extract(tar, planned, dest, label)
    except BaseException as error:
        shutil.rmtree(dest, ignore_errors=True)
        if isinstance(error, UNREADABLE):
            raise ArchiveError("%s: not a readable tar archive: %s" % (label, error)) from error
        if isinstance(error, OSError):
            raise ArchiveError("%s: cannot unpack into %s: %s" % (label, dest, error)) from error
        raise
    return {rel: member.size for member, rel, _ in planned if member.isreg()}


def _dot_slash_stripped(name):
    while name.startswith("./"):
        name = name[2:]
    return name


def read_member(archive, name, label, limit=1 << 20):
    """The bytes of one regular member (at most `limit`), or ArchiveError naming what is wrong."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            # Match on the clean path, so that "./PACK.json" (tar -C dir .) counts as "PACK.json".
            found = [m for m in members(tar, label) if _dot_slash_stripped(m.name) == name]
            member = found[0] if len(found) == 1 else None
            if member is None or not member.isreg():
                raise ArchiveError("%s: has no %s" % (label, name))
            if member.size > limit:
                raise ArchiveError("%s: %s is larger than %d bytes" % (label, name, limit))
            return tar.extractfile(member).read()
    except UNREADABLE as error:
        raise ArchiveError("%s: not a readable tar archive: %s" % (label, error)) from error
    except OSError as error:
        raise ArchiveError("%s: cannot read it: %s" % (label, error)) from error


def read_member_json(archive, name, label, limit=1 << 20):
    try:
        return json.loads(read_member(archive, name, label, limit).decode("utf-8"))
    except ValueError as error:
        raise ArchiveError("%s: %s is not valid JSON: %s" % (label, name, error)) from error


def verify_files(base, files):
    """Problems (human lines) of the tree `base` against {relpath: sha256}; [] when it matches."""
    problems = []
    for rel in sorted(files):
        path = os.path.join(base, rel)
        if member_path(rel, "manifest") != rel or os.path.islink(path):
            problems.append("%s: listed path %r is not a plain file inside the tree" % (base, rel))
            continue
        try:
            actual = sha256_file(path)
        except OSError:
            problems.append("%s is missing" % path)
            continue
        if actual != files[rel]:
            problems.append("%s does not match its sha256 in the manifest" % path)
    return problems


def tree_files(base):
    """Every regular file under `base` as sorted relative paths (links and specials excluded)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                found.append(os.path.relpath(path, base).replace(os.sep, "/"))
    return sorted(found)


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def read_pack_manifest(base, name):
    """PACK.json of the pack tree `base`, checked for shape; ArchiveError when it is not usable."""
    try:
        with open(os.path.join(base, "PACK.json"), encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError) as error:
        raise ArchiveError("pack %s: cannot read %s/PACK.json: %s" % (name, base, error)) from error
    check_pack_manifest(manifest, name, "%s/PACK.json" % base)
    return manifest


def pack_intact(base, name, version):
    """Whether the pack tree `base` is a real directory holding `version` and matching its PACK.json."""
    if not os.path.isdir(base) or os.path.islink(base):
        return False
    try:
        manifest = read_pack_manifest(base, name)
    except ArchiveError:
        return False
    return str(manifest["version"]) == version and not verify_files(base, manifest["files"])


def check_pack_manifest(manifest, name, label, version=None):
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("name") != name or not manifest.get("version"):
        raise ArchiveError("%s: needs name %r, a version and a files map" % (label, name))
    if version is not None and str(manifest["version"]) != str(version):
        raise ArchiveError("%s: holds version %s, but %s was asked for"
                           % (label, manifest["version"], version))
    for rel, digest in files.items():
        if member_path(rel, label) != rel or "/" in rel or rel == "PACK.json":
            raise ArchiveError("%s: lists %r, which is not a top-level file of the pack" % (label, rel))
        if not isinstance(digest, str) or len(digest) != 64:
            raise ArchiveError("%s: the sha256 of %r is not 64 hex digits" % (label, rel))
    return manifest


def digest_tar_stream(fileobj, label, manifest_name="MANIFEST.json"):
    """Read a tar as a stream (no seeking: it may be decrypted on the fly) and hash every member.

    Returns (manifest, {relpath: sha256}); manifest is the parsed `manifest_name` member or None.
    Refuses members that are not plain files with safe names.
    """
    digests, manifest = {}, None
    try:
        with tarfile.open(fileobj=fileobj, mode="r|") as tar:
            for member in tar:
                rel = member_path(member.name, label)
                if member.isdir():
                    continue
                if not member.isreg():
                    raise ArchiveError("%s: member %r is not a regular file" % (label, member.name))
                if rel in digests:
                    raise ArchiveError("%s: member %r appears twice" % (label, rel))
                source = tar.extractfile(member)
                digest = hashlib.sha256()
                data = b"" if rel == manifest_name else None
                while True:
                    block = source.read(CHUNK)
                    if not block:
                        break
                    digest.update(block)
                    if data is not None:
                        data += block
                digests[rel] = digest.hexdigest()
                if data is not None:
                    try:
                        manifest = json.loads(data.decode("utf-8"))
                    except ValueError as error:
                        raise ArchiveError("%s: %s is not valid JSON: %s"
                                           % (label, manifest_name, error)) from error
    except UNREADABLE as error:
        raise ArchiveError("%s: not a readable tar archive: %s" % (label, error)) from error
    return manifest, digests


def manifest_problems(manifest, digests, manifest_name="MANIFEST.json"):
    """What differs between a snapshot's MANIFEST.json and its members; [] when they agree exactly."""
    if not isinstance(manifest, dict):
        return ["%s is missing or is not a JSON object" % manifest_name]
    problems = []
    members = {rel: digest for rel, digest in digests.items() if rel != manifest_name}
    for rel in sorted(set(manifest) - set(members)):
        problems.append("%s is listed in %s but missing" % (rel, manifest_name))
    for rel in sorted(set(members) - set(manifest)):
        problems.append("%s is in the archive but not listed in %s" % (rel, manifest_name))
    for rel in sorted(set(manifest) & set(members)):
        if manifest[rel] != members[rel]:
            problems.append("%s does not match its sha256 in %s" % (rel, manifest_name))
    return problems


def bundle_problems(base, version):
    """None when the unpacked app bundle in `base` matches its MANIFEST.json, else what is wrong.

    MANIFEST.json is {"name": "posd", "version", "files": {relpath: sha256}} (lab/posd/build.py); a file
    the manifest does not list is a problem too, except Python's bytecode cache, which the interpreter
    derives from the shipped sources at run time.
    """
    try:
        with open(os.path.join(base, "MANIFEST.json"), encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError) as error:
        return "cannot read MANIFEST.json: %s" % error
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("name") != "posd":
        return "MANIFEST.json needs name posd and a files map"
    if str(manifest.get("version")) != version:
        return "MANIFEST.json says version %s, not %s" % (manifest.get("version"), version)
    problems = verify_files(base, files)
    extra = sorted(path for path in set(tree_files(base)) - set(files) - {"MANIFEST.json"}
                   if "__pycache__/" not in path)
    if extra:
        problems.append("files not in MANIFEST.json: %s" % ", ".join(extra[:5]))
    return "; ".join(problems[:5]) or None
