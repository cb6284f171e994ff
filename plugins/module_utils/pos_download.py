# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Download an artifact from a distribution point onto a terminal, resuming over a flaky link.

Terminals sit on cellular links that drop. A download goes to `<staging>/<sha256>.part`; when the
connection breaks, the next attempt (in this run or the next) asks for the rest with
`Range: bytes=<have>-` and appends when the server answers 206 (a 200 means the server ignored the
range: start again from zero). The size from the release manifest is enforced while reading, and the
sha256 is checked before the file is renamed to `<staging>/<sha256>`: nothing unverified is ever
installed, and a mismatching download is deleted so that the next attempt starts clean.

Runs on terminals: standard library only, Python 3.9 or newer.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.request

from ansible_collections.posfleet.fleet.plugins.module_utils.pos_guard import LeaseLost, heartbeat

CHUNK = 64 * 1024
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Errors after which trying again can help: the link dropped, the server was briefly unwell.
RETRYABLE_HTTP = (408, 425, 429, 500, 502, 503, 504)


class DownloadError(Exception):
    """The artifact could not be fetched or is not the one the manifest describes; says which and why."""


# The options every module that downloads with fetch() takes (documented in doc_fragments/pos_download.py).
DOWNLOAD_OPTIONS = {
    "staging_dir": {"type": "str", "default": "/var/lib/pos/staging"},
    "retries": {"type": "int", "default": 3},
    "retry_delay": {"type": "float", "default": 2.0},
}


def sha256_of(path):
    """The sha256 of a file, read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def partial_bytes(staging, sha256):
    """Bytes of this artifact already on the terminal (a complete download or a .part)."""
    done = os.path.join(staging, sha256)
    return _size(done) or _size(done + ".part")


class _Fatal(DownloadError):
    """Not worth retrying: the server or the manifest is wrong."""


def _attempt(url, part, size, timeout, state):
    """One HTTP request that appends to (or restarts) `part`; returns normally when it has `size` bytes."""
    have = _size(part)
    if have > size:
        os.unlink(part)
        have = 0
    headers = {"User-Agent": "posfleet-terminal/1"}
    if have:
        headers["Range"] = "bytes=%d-" % have
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:
            os.unlink(part)  # the server has fewer bytes than we kept: our .part is not its file
            raise DownloadError("%s answered 416 to a resume from byte %d; starting again"
                                % (url, have)) from error
        if error.code in RETRYABLE_HTTP:
            raise DownloadError("%s answered HTTP %d %s" % (url, error.code, error.reason)) from error
        raise _Fatal("%s answered HTTP %d %s; is the release published on this distribution point?"
                     % (url, error.code, error.reason)) from error
    with response:
        status = response.status
        if status == 206 and have:
            content_range = response.headers.get("Content-Range", "")
            match = re.match(r"^bytes (\d+)-(\d+)/(\d+|\*)$", content_range.strip())
            if not match or int(match.group(1)) != have:
                os.unlink(part)
                raise DownloadError("%s answered a range %r that does not continue byte %d; starting again"
                                    % (url, content_range, have))
            if match.group(3) != "*" and int(match.group(3)) != size:
                raise _Fatal("%s is %s bytes, but the release manifest says %d: wrong artifact or manifest"
                             % (url, match.group(3), size))
            mode = "ab"
            state["resumed"] = True
        elif status == 200:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) != size:
                raise _Fatal("%s is %s bytes, but the release manifest says %d: wrong artifact or manifest"
                             % (url, length, size))
            mode, have = "wb", 0
        else:
            raise _Fatal("%s answered HTTP %d where 200 or 206 was expected" % (url, status))
        # read1: what has arrived, up to CHUNK, so that a crawling link still reaches the heartbeat (and
        # the update's deadline) every few seconds, not once per CHUNK.
        read = getattr(response, "read1", response.read)
        with open(part, mode) as handle:
            while True:
                block = read(CHUNK)
                if not block:
                    break
                if have + len(block) > size:
                    handle.close()
                    os.unlink(part)
                    raise _Fatal("%s sent more than the %d bytes the release manifest says; "
                                 "the artifact on the distribution point is not the one in the manifest"
                                 % (url, size))
                handle.write(block)
                have += len(block)
                state["bytes"] += len(block)
                # A download on a slow link can outlast the update's lease: keep it alive while bytes come,
                # and stop at the update's deadline.
                try:
                    heartbeat()
                except LeaseLost as error:
                    raise _Fatal("download of %s stopped: %s" % (url, error)) from error
            handle.flush()
            os.fsync(handle.fileno())
    if have < size:
        raise DownloadError("%s: the connection ended after %d of %d bytes" % (url, have, size))


def fetch(url, staging, sha256, size, *, timeout=60.0, retries=3, retry_delay=2.0):
    """Download `url` into `staging` as `<sha256>` (verified) and describe what it took.

    Returns {"path", "bytes_downloaded", "resumed", "cached", "attempts", "seconds"}. `retries` is how
    many times a failed attempt is tried again (so 1 + retries attempts in all). Raises DownloadError
    with a message an operator can act on.
    """
    sha256 = sha256.lower()
    if not SHA256_RE.match(sha256):
        raise DownloadError("sha256 %r is not 64 hex digits; check the release manifest" % sha256)
    if not url.startswith(("http://", "https://")):
        raise DownloadError("%r is not an http(s) URL" % url)
    if size <= 0:
        raise DownloadError("size %d is not a positive number of bytes; check the release manifest" % size)
    started = time.time()
    os.makedirs(staging, mode=0o755, exist_ok=True)
    done = os.path.join(staging, sha256)
    part = done + ".part"
    state = {"bytes": 0, "resumed": False}
    if _size(done) == size and sha256_of(done) == sha256:
        return {"path": done, "bytes_downloaded": 0, "resumed": False, "cached": True, "attempts": 0,
                "seconds": round(time.time() - started, 3)}
    attempts, last_error = 0, None
    while _size(part) != size:
        if attempts > retries:
            raise DownloadError("download of %s stopped at %d of %d bytes after %d attempts: %s; the partial "
                                "file %s is kept and the next run resumes it"
                                % (url, _size(part), size, attempts, last_error, part))
        if attempts:
            time.sleep(min(retry_delay * attempts, 30.0))
        attempts += 1
        try:
            _attempt(url, part, size, timeout, state)
        except _Fatal:
            raise
        except (DownloadError, urllib.error.URLError, http.client.HTTPException, OSError) as error:
            last_error = getattr(error, "reason", None) or error
    actual = sha256_of(part)
    if actual != sha256:
        os.unlink(part)
        raise DownloadError("sha256 mismatch for %s: expected %s, got %s; the download was deleted. The "
                            "artifact on the distribution point is not the one the release manifest names: "
                            "republish the release or fix the manifest" % (url, sha256, actual))
    os.rename(part, done)
    return {"path": done, "bytes_downloaded": state["bytes"], "resumed": state["resumed"], "cached": False,
            "attempts": attempts, "seconds": round(time.time() - started, 3)}
