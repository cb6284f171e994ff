# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Getting an artifact onto a terminal by delta, falling back to its full download.

Shared by pos_data_sync (data packs) and pos_package (app bundles). The caller says which installed
versions can serve as a base (`find`) and how to write the tar of one (`write_base`); this module
rebuilds that tar in staging, checks it against the delta's `from_tar_sha256`, downloads the delta
(resuming like any download), applies it and checks the result against the entry's `tar_sha256` and
`tar_size` from the signed manifest. Anything that goes wrong falls back to the full artifact, and the
transfer record says why. The delta format is pos_delta's.

Runs on terminals: standard library only, Python 3.9 or newer.
"""

from __future__ import annotations

import os

from ansible_collections.posfleet.fleet.plugins.module_utils.pos_archive import ArchiveError
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_delta import DeltaError, apply_delta
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_download import SHA256_RE, DownloadError, fetch
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal import sha256_file

DELTA_KEYS = ("from_version", "from_tar_sha256", "url", "sha256", "size")


def check_delta_fields(spec, where):
    """Check and normalise an entry's tar_sha256, tar_size and deltas in place; an error message or None."""
    deltas = spec.get("deltas") or []
    if not deltas:
        return None
    if not isinstance(deltas, list) or not all(isinstance(delta, dict) for delta in deltas):
        return "%s.deltas must be a list of dicts; check the release manifest" % where
    try:
        spec["tar_size"] = int(spec.get("tar_size"))
    except (TypeError, ValueError):
        return "%s has deltas but no tar_size (bytes of its tar); check the release manifest" % where
    for index, delta in enumerate([spec, *deltas]):
        label = where if index == 0 else "%s.deltas.%d" % (where, index - 1)
        keys = ("tar_sha256",) if index == 0 else DELTA_KEYS
        missing = [key for key in keys if delta.get(key) in (None, "")]
        if missing:
            return "%s lacks %s; check the release manifest" % (label, ", ".join(missing))
        for key in ("tar_sha256", "from_tar_sha256", "sha256"):
            if key in keys and not SHA256_RE.match(str(delta[key]).lower()):
                return "%s.%s is not 64 hex digits; check the release manifest" % (label, key)
        if index:
            delta["from_version"] = str(delta["from_version"])
            delta["from_tar_sha256"] = str(delta["from_tar_sha256"]).lower()
            try:
                delta["size"] = int(delta["size"])
            except (TypeError, ValueError):
                return "%s.size must be a number of bytes, not %r" % (label, delta["size"])
    spec["tar_sha256"] = str(spec["tar_sha256"]).lower()
    return None


def delta_url(artifact_url, url):
    """A delta's full URL: the manifest's pool/... path against the root the artifact's own URL was made from."""
    if url.startswith(("http://", "https://")):
        return url
    cut = artifact_url.rfind("/pool/")
    if cut < 0:
        cut = artifact_url.find("/", artifact_url.find("//") + 2)
    return artifact_url[:cut + 1] + url.lstrip("/")


def candidates(deltas, holds, current, what):
    """(the deltas whose base version `holds(version)` says is intact, `current` first; why none if so)."""
    if not deltas:
        return [], "the release has no delta for this %s" % what
    held = [delta for delta in deltas if holds(delta["from_version"])]
    held.sort(key=lambda delta: delta["from_version"] != current)
    if not held:
        return [], ("no usable base: the release has deltas from %s, the terminal holds none of them intact"
                    % ", ".join(delta["from_version"] for delta in deltas))
    return held, None


def refusal(enabled, free, need, what):
    """Why no delta may be tried at all (None: try one)."""
    if not enabled:
        return "deltas are turned off (delta: false)"
    if free < need:
        return ("not enough free space to rebuild %s from a delta (%d MB needed, %d MB free)"
                % (what, need // (1 << 20) + 1, free // (1 << 20)))
    return None


def planned(found, reason, no_delta):
    """The transfer record check mode reports: a delta when one from an installed version exists."""
    usable = bool(found) and no_delta is None
    return {"transfer": "delta" if usable else "full", "bytes_downloaded": 0,
            "from_version": found[0]["from_version"] if usable else None,
            "fallback_reason": None if usable else (no_delta or reason)}


def _rebuild_base(label, delta, write_base, staging):
    path = os.path.join(staging, "%s-%s.base.tar" % (label, delta["from_version"]))
    try:
        with open(path, "wb") as handle:
            write_base(delta["from_version"], handle)
        same = sha256_file(path) == delta["from_tar_sha256"]
    except BaseException:
        if os.path.exists(path):
            os.unlink(path)
        raise
    if not same:
        os.unlink(path)
        raise DeltaError("the installed %s %s does not rebuild, byte for byte, the tar the delta was made from"
                         % (label, delta["from_version"]))
    return path


def _by_delta(spec, found, label, write_base, staging, count, options):
    os.makedirs(staging, mode=0o755, exist_ok=True)
    rebuilt = os.path.join(staging, spec["tar_sha256"] + ".tar")
    delta = found[0]
    if os.path.isfile(rebuilt) and sha256_file(rebuilt) == spec["tar_sha256"]:
        return rebuilt, delta["from_version"]  # rebuilt by an interrupted run, and still the right bytes
    base = _rebuild_base(label, delta, write_base, staging)
    try:
        download = fetch(delta_url(spec["url"], delta["url"]), staging, delta["sha256"], delta["size"], **options)
        count(download)
        try:
            apply_delta(base, download["path"], rebuilt, spec["tar_sha256"], spec["tar_size"])
        finally:
            os.unlink(download["path"])
    finally:
        os.unlink(base)
    return rebuilt, delta["from_version"]


def fetch_cheapest(spec, staging, result, transfer, found, label, write_base, options):
    """The path of the verified artifact: the tar rebuilt from a delta when that works, else the full download.

    transfer: the record to fill ({"transfer": "full", ..., "fallback_reason": why no delta may be
    tried, or None}); its bytes and result["bytes_downloaded"] count a delta that did not work out too.
    found: the usable deltas (`candidates`); write_base(version, handle) writes the tar of an installed
    version. options: timeout, retries and retry_delay for fetch(). Raises DownloadError or OSError
    only when the full download fails.
    """
    def count(download):
        transfer["bytes_downloaded"] += download["bytes_downloaded"]
        result["bytes_downloaded"] += download["bytes_downloaded"]
        result["resumed"] = result["resumed"] or download["resumed"]

    if transfer["fallback_reason"] is None and found:
        try:
            path, transfer["from_version"] = _by_delta(spec, found, label, write_base, staging, count, options)
            transfer["transfer"] = "delta"
            return path
        except (DeltaError, DownloadError, ArchiveError, OSError) as error:
            transfer["fallback_reason"] = str(error)
    download = fetch(spec["url"], staging, spec["sha256"], spec["size"], **options)
    count(download)
    return download["path"]


def new_transfer(no_delta):
    return {"transfer": "full", "bytes_downloaded": 0, "from_version": None, "fallback_reason": no_delta}
