#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pos_data_sync
short_description: Bring a POS terminal's data packs (params, catalog, merchant) to a release's versions
description:
  - For every pack that is not already current at the wanted version, downloads its archive (resuming an
    interrupted download with HTTP C(Range), like M(posfleet.fleet.pos_package)), checks its C(size) and C(sha256),
    unpacks it safely into C(/var/lib/pos/packs/<name>/<version>.staging) and checks every file against the
    pack's C(PACK.json) before renaming the directory to C(<version>).
  - "An archive is refused when a member has an absolute path or C(..), is a link, a directory or a device,
    is not listed in its C(PACK.json), or when the members add up to more than four times the archive's size."
  - "The C(merchant) pack is built here from O(merchant), the merchant profile rendered on the control node:
    C(profile.json) holds its canonical JSON (keys sorted, no spaces) and the pack's version is the first 12
    hex digits of that JSON's sha256."
  - Only when every pack is staged and verified are the C(current) links switched, one rename each, so a
    failure half-way switches nothing. Then posd is asked to C(reload) (O(reload)) and the module checks that
    posd loaded the new versions and that its sequence counters did not go backwards. posd itself applies a
    params pack's C(counters.json) C(batch_floor); this module never writes counters.
  - The previous version of each pack is kept for a rollback; older versions are removed.
  - "Delta sync: when the release lists C(deltas) for a pack and the terminal holds one of their C(from_version)s
    intact (current or previous), the module rebuilds that version's uncompressed tar from the installed files,
    checks it against the delta's C(from_tar_sha256), downloads only the delta (resuming like any download),
    applies it and checks the rebuilt tar's C(tar_sha256) and C(tar_size) from the release manifest before it is
    unpacked exactly as a full download would be. Any problem (no installed base, a base that does not rebuild
    byte for byte, a missing or damaged delta, a result with another sha256, too little free space) falls back
    to the full archive; RV(transfers) says which way each pack came and why."
version_added: "0.1.0"
author: posfleet contributors (@posfleet)
options:
  packs:
    description:
      - The release's packs for this model, C(name) to a dict with C(version), C(url) (full URL), C(sha256)
        and C(size), and optionally C(tar_sha256), C(tar_size) and C(deltas) (a list of dicts with
        C(from_version), C(from_tar_sha256), C(url), C(sha256) and C(size)), as in the release manifest.
      - A delta C(url) may be relative to the distribution point root (C(pool/...)), as in the manifest; it is
        resolved against the root of the pack's C(url).
      - Known names are C(params) and C(catalog); C(merchant) comes from O(merchant).
    type: dict
    default: {}
  merchant:
    description: The merchant profile (the content of C(profile.json)) rendered for this terminal.
    type: dict
  timeout:
    description: Seconds a download request may wait for data.
    type: float
    default: 60
  reload:
    description: Ask posd to reload its packs after the switch.
    type: bool
    default: true
  reload_timeout:
    description:
      - Seconds to wait for posd to answer the reload (reading and checking every pack). The update's deadline
        bounds the wait too.
      - A terminal short of CPU can take well over a sale's time to reload; giving up early rolls back a terminal
        that was about to be updated.
    type: float
    default: 120
  delta:
    description: Use a pack's deltas when the terminal has a base for one; C(false) always downloads the full archive.
    type: bool
    default: true
extends_documentation_fragment:
  - posfleet.fleet.pos_download
  - posfleet.fleet.attributes
  - posfleet.fleet.run
attributes:
  check_mode:
    support: full
    details:
      - Nothing is downloaded, unpacked or switched and posd is not reloaded; RV(switched) and RV(versions_after) say
        what a real run would do, RV(transfers) how each pack would come.
  diff_mode:
    support: partial
    details:
      - The pack versions before and after (C(packs)), in check mode too.
      - A pack put back at the version it already had, because its files were damaged, shows no difference in the
        diff; RV(switched) names it.
  platform:
    platforms: posix
    details:
      - Runs on the terminal with the Python standard library only (Python 3.9 or newer).
"""

EXAMPLES = r"""
- name: Sync the release's data packs
  posfleet.fleet.pos_data_sync:
    packs: "{{ pos_update_entry.packs | posfleet.fleet.pos_pack_urls(pos_region_settings.distribution_point) }}"
    merchant: "{{ pos_update_merchant_profile }}"
  register: pos_data_sync_result
"""

RETURN = r"""
switched:
  description: The packs whose C(current) link was switched (would be, in check mode).
  returned: always
  type: list
  elements: str
  sample: [params, merchant]
versions_before:
  description: Pack versions before the module ran.
  returned: always
  type: dict
  sample: {params: 2026.01.0, catalog: 2026.01.0, merchant: null}
versions_after:
  description: Pack versions afterwards (wanted, in check mode).
  returned: always
  type: dict
  sample: {params: 2026.11.0, catalog: 2026.01.0, merchant: 5d1c0e2a9f3b}
bytes_downloaded:
  description: Bytes received in this run (deltas and full archives).
  returned: always
  type: int
  sample: 47112
transfers:
  description:
    - "How each downloaded pack came (would come, in check mode): C(transfer) is C(delta) or C(full),
      C(bytes_downloaded) what it took (a failed delta counts too), C(from_version) the base of a delta, and
      C(fallback_reason) why a full download was used (C(null) for a delta)."
    - In check mode C(delta) means a delta from an installed version exists; the base is only rebuilt and
      checked for real.
  returned: always
  type: dict
  sample: {catalog: {transfer: delta, bytes_downloaded: 918, from_version: 2026.11.0, fallback_reason: null}}
resumed:
  description: Whether any download continued a partial one.
  returned: always
  type: bool
counters_before:
  description: posd's sequence counters before the switch (C(null) when posd did not answer).
  returned: changed
  type: dict
  sample: {stan: 118, batch: 1, invoice: 118}
counters_after:
  description: posd's sequence counters after the reload.
  returned: changed and reload
  type: dict
  sample: {stan: 118, batch: 7, invoice: 118}
merchant_version:
  description: The version of the merchant pack built from O(merchant).
  returned: when merchant is given
  type: str
  sample: 5d1c0e2a9f3b
"""

import hashlib
import json
import os
import shutil

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_merchant as merchant_pack
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_versions as versions
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_archive import (
    ArchiveError,
    check_pack_manifest,
    pack_intact,
    read_member_json,
    read_pack_manifest,
    safe_extract,
    verify_files,
)
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_delta import pack_dir_members, write_pack_tar
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_delta_fetch import (
    candidates,
    check_delta_fields,
    fetch_cheapest,
    new_transfer,
    planned,
    refusal,
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
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal import (
    PACK_NAMES,
    PACKS_DIR,
    PosdError,
    free_bytes,
    pack_versions,
    posd,
    terminal_path,
    within_deadline,
)

RELEASE_PACKS = ("params", "catalog")
VERSION_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.+~_-")


def pack_base(name):
    return terminal_path(os.path.join(PACKS_DIR, name))


def intact(name, version):
    """Whether packs/<name>/<version> is there and matches its PACK.json."""
    return pack_intact(os.path.join(pack_base(name), version), name, version)


def current_target(name):
    return versions.current(pack_base(name))


def check_specs(module, packs):
    for name, spec in packs.items():
        if name not in RELEASE_PACKS:
            hint = " (the merchant pack is built from the merchant option)" if name == "merchant" else ""
            module.fail_json(msg="unknown pack %r in packs: a release ships %s%s"
                             % (name, ", ".join(RELEASE_PACKS), hint))
        if not isinstance(spec, dict):
            module.fail_json(msg="packs.%s must be a dict with version, url, sha256 and size" % name)
        missing = [key for key in ("version", "url", "sha256", "size") if spec.get(key) in (None, "")]
        if missing:
            module.fail_json(msg="packs.%s lacks %s; check the release manifest" % (name, ", ".join(missing)))
        version = str(spec["version"])
        if not set(version) <= VERSION_CHARS or version.startswith("."):
            module.fail_json(msg="packs.%s.version %r is not a plain version" % (name, version))
        try:
            spec["size"] = int(spec["size"])
        except (TypeError, ValueError):
            module.fail_json(msg="packs.%s.size must be a number of bytes, not %r" % (name, spec["size"]))
        spec["version"] = version
        check_deltas(module, name, spec)


def check_deltas(module, name, spec):
    error = check_delta_fields(spec, "packs.%s" % name)
    if error:
        module.fail_json(msg=error)


def delta_candidates(name, spec):
    """(the deltas whose base version the terminal holds intact, current version first; why none if so)."""
    return candidates(spec.get("deltas") or [], lambda version: intact(name, version), current_target(name),
                      "pack")


def write_base(name):
    """write(version, handle): the tar of an installed version of the pack, in the release's layout."""
    def write(version, handle):
        directory = os.path.join(pack_base(name), version)
        manifest = read_pack_manifest(directory, name)
        write_pack_tar(handle, pack_dir_members(directory, manifest["files"]))
    return write


def fetch_pack(module, name, spec, staging, result, no_delta):
    """Download one pack the cheapest way that works; the path of its verified archive (or tar).

    `no_delta` is why a delta must not be tried (None: try one). result["transfers"][name] says how it
    came, and counts the bytes of a delta that did not work out too.
    """
    found, reason = delta_candidates(name, spec)
    transfer = result["transfers"][name] = new_transfer(no_delta or reason)
    return fetch_cheapest(spec, staging, result, transfer, found, name, write_base(name),
                          {key: module.params[key] for key in ("timeout", "retries", "retry_delay")})


def stage_download(module, name, spec, staging, result, no_delta):
    """Download, unpack and verify one release pack into packs/<name>/<version>.staging; return that path."""
    version = spec["version"]
    label = "pack %s %s (%s)" % (name, version, spec["url"])
    path = fetch_pack(module, name, spec, staging, result, no_delta)
    manifest = check_pack_manifest(read_member_json(path, "PACK.json", label), name,
                                   label + " PACK.json", version=version)
    target = os.path.join(pack_base(name), version + ".staging")
    if os.path.lexists(target):
        shutil.rmtree(target)  # left by an interrupted run; never in use
    safe_extract(path, target, label, allow_dirs=False, allow_links=False,
                 allowed=set(manifest["files"]) | {"PACK.json"}, max_bytes=4 * spec["size"])
    problems = verify_files(target, manifest["files"])
    if problems:
        raise ArchiveError("%s does not match its PACK.json: %s" % (label, "; ".join(problems[:3])))
    return target, path


def stage_merchant(profile_bytes, version):
    target = os.path.join(pack_base("merchant"), version + ".staging")
    if os.path.lexists(target):
        shutil.rmtree(target)
    os.makedirs(target, mode=0o755)
    with open(os.path.join(target, "profile.json"), "wb") as handle:
        handle.write(profile_bytes)
    manifest = {"name": "merchant", "version": version,
                "files": {"profile.json": hashlib.sha256(profile_bytes).hexdigest()}}
    with open(os.path.join(target, "PACK.json"), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
    return target


def counters_now():
    try:
        return posd("status").get("counters")
    except PosdError:
        return None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            run=RUN_OPTION,
            packs=dict(type="dict", default={}),
            merchant=dict(type="dict"),
            timeout=dict(type="float", default=60.0),
            **DOWNLOAD_OPTIONS,
            reload=dict(type="bool", default=True),
            reload_timeout=dict(type="float", default=120.0),
            delta=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    act_as(module.params["run"])
    packs = {name: dict(spec) if isinstance(spec, dict) else spec
             for name, spec in module.params["packs"].items()}
    check_specs(module, packs)
    wanted = {name: spec["version"] for name, spec in packs.items()}
    result = dict(bytes_downloaded=0, resumed=False, transfers={})
    profile_bytes = None
    if module.params["merchant"] is not None:
        if not isinstance(module.params["merchant"].get("currency"), str):
            module.fail_json(msg="merchant profile has no currency; posd refuses a merchant pack without one")
        profile_bytes = merchant_pack.canonical(module.params["merchant"])
        wanted["merchant"] = merchant_pack.version(module.params["merchant"])
        result["merchant_version"] = wanted["merchant"]

    before = pack_versions()
    targets_before = {name: current_target(name) for name in PACK_NAMES}
    todo = [name for name in PACK_NAMES
            if name in wanted and not (current_target(name) == wanted[name] and intact(name, wanted[name]))]
    after = dict(before, **wanted)
    result.update(versions_before=before, switched=todo)
    diff = {"before": {"packs": before}, "after": {"packs": after}}
    if not todo:
        module.exit_json(changed=False, versions_after=before, **result)
    downloads = [name for name in todo if name != "merchant" and not intact(name, wanted[name])]
    staging = terminal_path(module.params["staging_dir"])
    need = sum(5 * packs[name]["size"] - partial_bytes(staging, str(packs[name]["sha256"]).lower())
               for name in downloads)
    free = free_bytes(module.params["staging_dir"])
    if free < need:
        module.fail_json(msg="not enough free space for the data packs %s: they need %d MB, %d MB are free; "
                         "free some space on the terminal"
                         % (", ".join(downloads), need // (1 << 20) + 1, free // (1 << 20)), **result)
    # Applying a delta needs the rebuilt tars of the base and of the new version beside the download.
    delta_need = need + sum(2 * packs[name].get("tar_size", 0) for name in downloads if packs[name].get("deltas"))
    no_delta = refusal(module.params["delta"], free, delta_need, "a pack")
    if module.check_mode:
        for name in downloads:
            result["transfers"][name] = planned(*delta_candidates(name, packs[name]), no_delta)
        module.exit_json(changed=True, versions_after=after, diff=diff, **result)

    try:
        start_step()
    except LeaseLost as error:
        module.fail_json(msg="%s; no pack was switched" % error, **result)
    staged, fetched = {}, []
    try:
        for name in todo:
            if name == "merchant":
                if not intact(name, wanted[name]):
                    os.makedirs(pack_base(name), mode=0o755, exist_ok=True)
                    staged[name] = stage_merchant(profile_bytes, wanted[name])
            elif name in downloads:
                os.makedirs(pack_base(name), mode=0o755, exist_ok=True)
                staged[name], path = stage_download(module, name, packs[name], staging, result, no_delta)
                fetched.append(path)
    except (DownloadError, ArchiveError) as error:
        for path in staged.values():
            shutil.rmtree(path, ignore_errors=True)
        module.fail_json(msg="%s; no pack was switched" % error, **result)
    except OSError as error:
        for path in staged.values():
            shutil.rmtree(path, ignore_errors=True)
        module.fail_json(msg="cannot stage the data packs: %s; no pack was switched" % error, **result)

    counters_before = counters_now()
    try:
        # Under the update's lease: the update guard neither acts in the middle of the switch nor lets it
        # begin once it has put the terminal back (LeaseLost).
        with switching():
            for name, path in staged.items():
                versions.place(pack_base(name), wanted[name], path)
            # Every pack is in place and verified: only now switch, one rename per pack.
            for name in todo:
                versions.switch(pack_base(name), wanted[name])
    except LeaseLost as error:
        for path in staged.values():
            shutil.rmtree(path, ignore_errors=True)
        module.fail_json(msg="%s; no pack was switched" % error, **result)
    except OSError as error:
        module.fail_json(msg="switching the data packs failed: %s" % error, changed=True, **result)
    for name in todo:
        versions.prune(pack_base(name), {wanted[name], targets_before.get(name)})
    for path in fetched:
        if os.path.exists(path):
            os.unlink(path)
    result.update(versions_after=pack_versions(), counters_before=counters_before)

    if module.params["reload"]:
        try:
            answer = posd("reload", timeout=within_deadline(module.params["reload_timeout"]))
        except PosdError as error:
            module.fail_json(msg="the packs are switched but posd did not reload them: %s" % error,
                             changed=True, **result)
        loaded = answer.get("packs") or {}
        wrong = ["%s (posd has %s)" % (name, loaded.get(name))
                 for name in todo if loaded.get(name) != wanted[name]]
        if wrong:
            module.fail_json(msg="posd did not load the new packs: %s: %s" % (", ".join(wrong),
                                                                              answer.get("health_detail")),
                             changed=True, **result)
        counters_after = counters_now()
        result["counters_after"] = counters_after
        if counters_before and counters_after:
            back = ["%s %s -> %s" % (name, counters_before[name], counters_after.get(name))
                    for name in sorted(counters_before)
                    if (counters_after.get(name) or 0) < counters_before[name]]
            if back:
                module.fail_json(msg="posd's sequence counters went backwards after the reload: %s"
                                 % ", ".join(back), changed=True, **result)
    module.exit_json(changed=True, diff=diff, **result)


if __name__ == "__main__":
    main()
