#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pos_package
short_description: Install a release of the payment app on a POS terminal, keeping what rollback needs
description:
  - Downloads the app artifact of a release from the region's distribution point, verifies it and installs it
    the way the model does (O(style)).
  - "With O(signature), before any of this, the terminal checks the release itself: it downloads the release
    manifest and its signature from its distribution point, checks the ed25519 signature with its own C(openssl)
    against the release public key, and checks that the manifest is byte for byte the one the control node
    verified. Only then does it look at, download or install anything; a failed check fails the module with
    nothing downloaded or changed. The check runs even when O(version) is installed already, as the data packs
    that follow come from the same manifest."
  - The download goes to C(<staging_dir>/<sha256>.part) and is resumed with an HTTP C(Range) request after a
    dropped connection, in this run (O(retries)) or the next one. O(size) is enforced while downloading and
    O(sha256) is checked before anything is installed; a mismatching download is deleted.
  - Free space is checked before the download (O(size) times three for bundles, twice for Debian packages).
  - "V(bundle): the archive (top directory C(<version>/)) is unpacked safely (no absolute paths, no C(..), no
    links leading outside, no devices) into C(/opt/pos/app/<version>.staging), checked against its
    C(MANIFEST.json), renamed to C(/opt/pos/app/<version>) and C(/opt/pos/app/current) is switched to it with
    one rename. The previous version's directory is kept, older ones are removed."
  - "V(dpkg): the C(.deb) of the installed version is kept in C(/var/lib/pos/rollback/) for a rollback. When
    no earlier run of this module left it there (or in O(staging_dir)), it is rebuilt from the installed files
    with C(dpkg-deb) after C(dpkg --verify) found them intact. Then C(dpkg -i) installs the new one, whose
    C(.deb) is kept in C(/var/lib/pos/rollback/) as well, for the next update."
  - "Delta sync (V(bundle) only): when the release lists C(deltas) for the bundle and the terminal holds one of
    their C(from_version)s intact in C(/opt/pos/app/) (the running version first, then the kept previous one), the
    module rebuilds that version's uncompressed tar from the installed directory (the layout of
    C(module_utils/pos_delta.py): directories, files with their permission bits, links; Python's bytecode caches
    left out), checks it against the delta's C(from_tar_sha256), downloads only the delta, applies it and checks the
    result against O(tar_sha256) and O(tar_size) before it is unpacked and checked exactly as a full download would
    be. Any problem (no installed base, a base that does not rebuild byte for byte, a missing or damaged delta, a
    result with another sha256, a rebuilt bundle that is refused, too little free space) falls back to the full
    download in the same run; RV(transfer) says which way the app came and why."
  - V(dpkg) models always download the whole C(.deb).
  - C(/var/lib/pos/rollback/app.json) records the previous version and the style for M(posfleet.fleet.pos_restore).
  - With O(restart), posd is restarted (its pid from C(/run/pos/posd.pid); the terminal's init starts it
    again) and the module waits until it answers with the new version.
  - When the installed version already is O(version), nothing is downloaded and nothing changes.
version_added: "0.1.0"
author: posfleet contributors (@posfleet)
options:
  url:
    description: Full URL of the artifact (the distribution point plus the C(url) of the release manifest).
    type: str
    required: true
  sha256:
    description: sha256 of the artifact, from the release manifest.
    type: str
    required: true
  size:
    description: Size of the artifact in bytes, from the release manifest.
    type: int
    required: true
  version:
    description: The app version the artifact installs.
    type: str
    required: true
  style:
    description:
      - How the model installs its app (C(pos_model_profile.package_style)).
      - The module fails when the terminal has an app installed the other way.
    type: str
    required: true
    choices: [dpkg, bundle]
  timeout:
    description: Seconds a download request may wait for data; also how long to wait for posd after a restart.
    type: float
    default: 60
  restart:
    description: Restart posd after installing. Set to V(false) when a reboot follows.
    type: bool
    default: true
  tar_sha256:
    description:
      - sha256 of the bundle's uncompressed tar in the delta layout (the manifest's C(tar_sha256)).
      - Needed with O(deltas).
    type: str
  tar_size:
    description: Size in bytes of that tar (the manifest's C(tar_size)); needed with O(deltas).
    type: int
  deltas:
    description:
      - The manifest's C(deltas) of the bundle, dicts with C(from_version), C(from_tar_sha256), C(url), C(sha256) and
        C(size). A relative C(url) (C(pool/...)) is resolved against the root of O(url).
      - Ignored for V(dpkg).
    type: list
    elements: dict
    default: []
  delta:
    description: Use a bundle delta when the terminal has a base for one; V(false) always downloads the full bundle.
    type: bool
    default: true
extends_documentation_fragment:
  - posfleet.fleet.pos_download
  - posfleet.fleet.pos_signature
  - posfleet.fleet.attributes
  - posfleet.fleet.run
attributes:
  check_mode:
    support: full
    details:
      - Nothing is downloaded or installed and posd is not restarted; RV(would_download) says how many bytes a real
        run would download, RV(transfer) how the app would come.
      - With O(signature) the release is checked in check mode too (it only reads the manifest and its signature), so
        that check mode fails where a real run would refuse the release.
  diff_mode:
    support: full
    details:
      - The app version before and after (C(app_version)), in check mode too.
  platform:
    platforms: posix
    details:
      - Runs on the terminal with the Python standard library only (Python 3.9 or newer); V(dpkg) models need
        C(dpkg) and C(dpkg-deb), O(signature) needs C(openssl) 3.
"""

EXAMPLES = r"""
- name: Install the release's payment app
  posfleet.fleet.pos_package:
    url: "{{ pos_region_settings.distribution_point }}/{{ pos_update_entry.app.url }}"
    sha256: "{{ pos_update_entry.app.sha256 }}"
    size: "{{ pos_update_entry.app.size }}"
    version: "{{ pos_update_entry.app.version }}"
    style: "{{ pos_model_profile.package_style }}"
    restart: "{{ not pos_update_reboot }}"  # a reboot follows otherwise
  register: pos_package_result

- name: Install it on a model that checks the release signature itself first
  posfleet.fleet.pos_package:
    url: "{{ pos_region_settings.distribution_point }}/{{ pos_update_entry.app.url }}"
    sha256: "{{ pos_update_entry.app.sha256 }}"
    size: "{{ pos_update_entry.app.size }}"
    version: "{{ pos_update_entry.app.version }}"
    style: "{{ pos_model_profile.package_style }}"
    signature:
      manifest_url: "{{ pos_region_settings.distribution_point }}/releases/{{ pos_release.release }}/manifest.yml"
      manifest_sha256: "{{ update_release_check.manifest_sha256 }}"
      public_key: "{{ update_release_check.public_key_pem }}"
"""

RETURN = r"""
previous_version:
  description: The app version before the module ran.
  returned: always
  type: str
  sample: 1.0.0
version:
  description: The app version installed now (the one that would be, in check mode).
  returned: always
  type: str
  sample: 1.1.0
bytes_downloaded:
  description: Bytes received in this run (less than the size when an earlier run left part of the download).
  returned: always
  type: int
  sample: 13432
resumed:
  description: Whether the download continued a partial one with an HTTP Range request.
  returned: always
  type: bool
  sample: false
seconds:
  description: How long the module took.
  returned: always
  type: float
  sample: 2.4
rollback:
  description: What rollback will use, C(/var/lib/pos/rollback/app.json) plus, for dpkg, the previous C(.deb).
  returned: changed
  type: dict
  sample:
    previous_version: 1.0.0
    style: dpkg
    deb: /var/lib/pos/rollback/posd_1.0.0_all.deb
    deb_source: repacked
transfer:
  description:
    - "How the app came (would come, in check mode): C(transfer) is C(delta), C(full) or C(kept) (an earlier run
      left it, nothing downloaded), C(bytes_downloaded) what it took (a delta that did not work out counts too),
      C(from_version) the base of a delta and C(fallback_reason) why the full artifact was used."
    - In check mode C(delta) means a delta from an installed version exists; the base is only rebuilt and checked
      for real.
  returned: when the versions differ
  type: dict
  sample: {transfer: delta, bytes_downloaded: 2108, from_version: 1.0.0, fallback_reason: null}
would_download:
  description: In check mode, the bytes a real run would download (the delta's size when it would use one; less
    when a partial download is kept).
  returned: check mode
  type: int
  sample: 13432
status:
  description: posd's status after the restart.
  returned: when restarted
  type: dict
signature:
  description:
    - The terminal's own check of the release (O(signature)). C(verified) is V(true) when the signature was good and
      the manifest the one the control node verified, V(false) when the module failed on it; C(manifest_sha256) is
      the sha256 of the manifest the terminal downloaded (null when it could not download it).
  returned: when O(signature) is given
  type: dict
  sample: {verified: true, manifest_sha256: 3f2a9c0e5b7d41c6a8e9f0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1}
"""

import json
import os
import re
import shutil
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_delta_fetch as by_delta
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_versions as versions
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_app import (
    DPKG_READ_TIMEOUT,
    app,
    app_version,
    deb_name,
    dpkg_install,
    installed_style,
)
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_archive import (
    ArchiveError,
    bundle_problems,
    safe_extract,
)
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_delta import (
    DeltaError,
    bundle_dir_entries,
    write_bundle_tar,
)
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_download import (
    DOWNLOAD_OPTIONS,
    DownloadError,
    partial_bytes,
)
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_guard import (
    RUN_OPTION,
    LeaseLost,
    act_as,
    start_step,
    switching,
)
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_os import repack
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_signature import SIGNATURE_OPTION, check_release
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal import (
    APP_DIR,
    ROLLBACK_DIR,
    CommandTimeout,
    PosdError,
    atomic_write,
    free_bytes,
    restart_posd,
    run_bounded,
    terminal_path,
)

VERSION_RE = re.compile(r"^[0-9][A-Za-z0-9.+~-]*$")


def install_bundle(version, previous):
    """Switch `current` to the unpacked, verified version; keep the previous one, remove older ones."""
    base = terminal_path(APP_DIR)
    write_rollback_record({"previous_version": previous, "style": "bundle", "version": version})
    versions.switch(base, version)
    versions.prune(base, {version, previous})


def unpack_bundle(artifact, version):
    """Unpack the bundle (a .tar.gz, or the tar rebuilt from a delta) into /opt/pos/app/<version>, verified.

    ArchiveError says what is wrong; nothing but a leftover .staging directory is touched then.
    """
    base = terminal_path(APP_DIR)
    final = os.path.join(base, version)
    staging = final + ".staging"
    os.makedirs(base, mode=0o755, exist_ok=True)
    if os.path.lexists(staging):
        shutil.rmtree(staging)  # a leftover of an interrupted run; never in use
    try:
        safe_extract(artifact, staging, "bundle %s" % version, strip=version, allow_links=True)
    except ArchiveError as error:
        raise ArchiveError("refusing the app bundle: %s" % error) from error
    problem = bundle_problems(staging, version)
    if problem:
        shutil.rmtree(staging, ignore_errors=True)
        raise ArchiveError("the app bundle %s does not match its MANIFEST.json: %s; the release is damaged, "
                           "republish it" % (version, problem))
    versions.place(base, version, staging)


def write_rollback_record(record):
    directory = terminal_path(ROLLBACK_DIR)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    atomic_write(os.path.join(directory, "app.json"), json.dumps(record, indent=1, sort_keys=True) + "\n")


def run(module, argv, what, timeout, leaves, changed=True):
    """Run `argv` for at most `timeout` seconds (`leaves`: the state a stop leaves); fails the module for `what`."""
    try:
        rc, out, err = run_bounded(argv, timeout, leaves)
    except OSError as error:  # CommandTimeout, or a command missing from the firmware
        module.fail_json(msg="%s failed: %s" % (what, error), changed=changed)
    if rc != 0:
        module.fail_json(msg="%s failed (%s, exit %d): %s"
                         % (what, " ".join(argv), rc, (err or out).strip()[-800:]), changed=changed)
    return out


def repack_installed(module, version, dest):
    """Rebuild the installed posd's .deb from its files into `dest` (pos_os.repack: only when they are intact)."""
    try:
        repack("posd", dest)
    except OSError as error:  # CommandTimeout too
        module.fail_json(msg="cannot keep a rollback copy of posd %s: %s; or put %s in %s first"
                         % (version, error, deb_name(version), ROLLBACK_DIR))


def keep_previous_deb(module, previous, staging):
    """Make sure rollback/posd_<previous>_all.deb exists; returns (path, how it got there)."""
    rollback = terminal_path(ROLLBACK_DIR)
    os.makedirs(rollback, mode=0o755, exist_ok=True)
    kept = os.path.join(rollback, deb_name(previous))
    if os.path.isfile(kept):
        return kept, "kept"
    staged = os.path.join(staging, deb_name(previous))
    if os.path.isfile(staged):
        shutil.copy2(staged, kept + ".tmp")
        os.rename(kept + ".tmp", kept)
        return kept, "staging"
    repack_installed(module, previous, kept)
    return kept, "repacked"


def install_deb(module, artifact, version, previous, staging):
    rollback = terminal_path(ROLLBACK_DIR)
    deb_info = {}
    if previous:
        path, source = keep_previous_deb(module, previous, staging)
        deb_info = {"deb": path, "deb_source": source}
    out = run(module, ["dpkg-deb", "--field", artifact, "Package", "Version"], "reading the downloaded package",
              DPKG_READ_TIMEOUT, "nothing is installed yet", changed=deb_info.get("deb_source") not in (None, "kept"))
    fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    if fields.get("Package") != "posd" or fields.get("Version") != version:
        module.fail_json(msg="the downloaded package is %s %s, not posd %s: the release manifest is wrong"
                         % (fields.get("Package"), fields.get("Version"), version))
    # The new .deb is kept too: it is what the next update keeps as its rollback copy.
    new_deb = os.path.join(rollback, deb_name(version))
    os.makedirs(rollback, mode=0o755, exist_ok=True)
    if artifact != new_deb:
        os.replace(artifact, new_deb)
    record = {"previous_version": previous, "style": "dpkg", "version": version}
    if previous:
        record["previous_deb"] = os.path.join(ROLLBACK_DIR, deb_name(previous))
    write_rollback_record(record)
    # A failure or a hang fails the module through main()'s OSError (changed: the new .deb is in place).
    dpkg_install(new_deb, "posd may be left half-installed: the update's rollback reinstalls posd %s" % previous
                 if previous else "posd may be left half-installed: run the update again")
    for name in os.listdir(rollback):
        if name.startswith("posd_") and name.endswith("_all.deb") and name not in (deb_name(version),
                                                                                   deb_name(previous)):
            os.unlink(os.path.join(rollback, name))
    return deb_info


def write_bundle_base(version, handle):
    """The tar of the installed bundle `version`, in the layout its deltas are made on."""
    try:
        write_bundle_tar(handle, version, bundle_dir_entries(terminal_path(os.path.join(APP_DIR, version))))
    except ValueError as error:  # a name or link target the layout (ustar) cannot hold: no base
        raise DeltaError("the installed posd %s cannot be written as a tar: %s" % (version, error)) from error


def fetch_and_unpack_bundle(module, spec, found, transfer, result, staging, options):
    """Download the bundle (by delta when `transfer` allows one) and unpack it; a refused delta result
    falls back to the full bundle. Fails the module when the full bundle is refused too."""
    version = spec["version"]
    path = by_delta.fetch_cheapest(spec, staging, result, transfer, found, "posd", write_bundle_base, options)
    try:
        unpack_bundle(path, version)
    except ArchiveError as error:
        if transfer["transfer"] != "delta":
            module.fail_json(msg=str(error), **result)
        os.unlink(path)
        transfer.update(transfer="full", from_version=None,
                        fallback_reason="the bundle rebuilt from the delta was refused: %s" % error)
        path = by_delta.fetch_cheapest(spec, staging, result, transfer, [], "posd", None, options)
        try:
            unpack_bundle(path, version)
        except ArchiveError as again:
            module.fail_json(msg=str(again), **result)
    os.unlink(path)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            run=RUN_OPTION,
            url=dict(type="str", required=True),
            sha256=dict(type="str", required=True),
            size=dict(type="int", required=True),
            version=dict(type="str", required=True),
            style=dict(type="str", required=True, choices=["dpkg", "bundle"]),
            timeout=dict(type="float", default=60.0),
            **DOWNLOAD_OPTIONS,
            restart=dict(type="bool", default=True),
            tar_sha256=dict(type="str"),
            tar_size=dict(type="int"),
            deltas=dict(type="list", elements="dict", default=[]),
            delta=dict(type="bool", default=True),
            signature=SIGNATURE_OPTION,
        ),
        supports_check_mode=True,
    )
    act_as(module.params["run"])
    started = time.time()
    params = module.params
    version, style, size = params["version"], params["style"], params["size"]
    if not VERSION_RE.match(version):
        module.fail_json(msg="version %r is not a plain package version like 1.2.0" % version)
    if size <= 0:
        module.fail_json(msg="size must be the artifact's size in bytes, not %d" % size)
    verified = check_release(module)
    try:
        found = installed_style()
        if found is not None and found != style:
            module.fail_json(msg="the terminal has a %s app installed but the release ships a %s artifact for "
                             "it; fix the model profile's package_style or the release manifest" % (found, style))
        previous = app_version(style)
    except CommandTimeout as error:
        module.fail_json(msg="cannot read which app version the terminal has: %s" % error)
    result = dict(previous_version=previous, version=version, bytes_downloaded=0, resumed=False)
    if verified:
        result["signature"] = verified
    if previous == version:
        module.exit_json(changed=False, seconds=round(time.time() - started, 3), **result)
    diff = {"before": {"app_version": previous}, "after": {"app_version": version}}

    spec = {key: params[key] for key in ("url", "sha256", "size", "version", "tar_sha256", "tar_size")}
    spec.update(sha256=params["sha256"].lower(), deltas=[dict(delta) for delta in params["deltas"]])
    kind = app(style)
    if not kind.has_deltas:
        spec["deltas"] = []
    error = by_delta.check_delta_fields(spec, "app")
    if error:
        module.fail_json(msg=error, **result)
    staging = terminal_path(params["staging_dir"])
    kept = kind.kept_download(version, spec["sha256"], size)
    factor = kind.disk_factor
    have = size if kept else partial_bytes(staging, spec["sha256"])
    need = 0 if kept else factor * size - have
    free = free_bytes(params["staging_dir"])
    if free < need:
        module.fail_json(msg="not enough free space for posd %s: it needs %d MB (%d x the %d-byte artifact), "
                         "%d MB are free in %s; free some space on the terminal"
                         % (version, need // (1 << 20) + 1, factor, size, free // (1 << 20),
                            params["staging_dir"]), need_bytes=need, free_bytes=free, **result)
    # Applying a delta needs the rebuilt tars of the base and of the new version beside the download.
    found, reason = [], "a dpkg model downloads the whole .deb (packages have no deltas)"
    if kind.has_deltas:
        found, reason = by_delta.candidates(spec["deltas"], kind.intact, previous, "app bundle")
    no_delta = by_delta.refusal(params["delta"], free, need + 2 * (spec["tar_size"] or 0), "the app bundle")
    if kept:
        result["transfer"] = dict(by_delta.new_transfer(None), transfer="kept")
    if module.check_mode:
        would = max(size - have, 0)
        if not kept:
            result["transfer"] = by_delta.planned(found, reason, no_delta)
            if result["transfer"]["transfer"] == "delta":
                would = found[0]["size"]
        module.exit_json(changed=True, diff=diff, would_download=would,
                         seconds=round(time.time() - started, 3), **result)

    try:
        start_step()
    except LeaseLost as error:
        module.fail_json(msg="not installing posd %s: %s" % (version, error), **result)
    options = {key: params[key] for key in ("timeout", "retries", "retry_delay")}
    path = kept["path"] if kept else None
    try:
        if not kept:
            transfer = result["transfer"] = by_delta.new_transfer(no_delta or reason)
            if kind.unpacked:
                fetch_and_unpack_bundle(module, spec, found, transfer, result, staging, options)
            else:
                path = by_delta.fetch_cheapest(spec, staging, result, transfer, [], "posd", None, options)
    except DownloadError as error:
        module.fail_json(msg=str(error), **result)
    except OSError as error:
        module.fail_json(msg="cannot write the download of posd %s into %s or unpack it: %s"
                         % (version, params["staging_dir"], error), **result)

    rollback = {"previous_version": previous, "style": style}
    try:
        # Under the update's lease: the update guard neither acts in the middle of the switch nor lets it
        # begin once it has put the terminal back (LeaseLost).
        with switching():
            if kind.unpacked:
                install_bundle(version, previous)
            else:
                rollback.update(install_deb(module, path, version, previous, staging))
    except LeaseLost as error:
        module.fail_json(msg="not installing posd %s: %s" % (version, error), **result)
    except OSError as error:
        module.fail_json(msg="installing posd %s failed: %s" % (version, error), changed=True, **result)
    try:
        installed = app_version(style)
    except CommandTimeout as error:
        module.fail_json(msg="posd %s is installed but its version cannot be read back: %s" % (version, error),
                         changed=True, **result)
    if installed != version:
        module.fail_json(msg="after installing, the terminal reports app version %s instead of %s"
                         % (installed, version), changed=True, **result)
    extra = {}
    if params["restart"]:
        try:
            status = restart_posd(timeout=params["timeout"])
        except PosdError as error:
            module.fail_json(msg="posd %s is installed but did not come back after the restart: %s"
                             % (version, error), changed=True, rollback=rollback, **result)
        if status.get("app_version") != version:
            module.fail_json(msg="posd restarted but runs version %s instead of %s"
                             % (status.get("app_version"), version), changed=True, rollback=rollback,
                             **result)
        extra["status"] = {k: v for k, v in status.items() if k != "ok"}
    module.exit_json(changed=True, diff=diff, rollback=rollback, seconds=round(time.time() - started, 3),
                     **dict(result, **extra))


if __name__ == "__main__":
    main()
