#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pos_os_packages
short_description: Install the OS packages a release pins on a POS terminal, as one change with a way back
description:
  - Installs the Debian packages of the release's manifest entry for the terminal's model (C(os_packages)), for models
    whose profile takes OS updates with dpkg (C(os.updates=dpkg)).
  - Only the packages whose installed version differs from the release's are downloaded and installed; when every
    package already is at its version nothing is downloaded and nothing changes.
  - Each C(.deb) is downloaded from the region's distribution point to C(<staging_dir>/<sha256>.part), resumed with
    an HTTP C(Range) request after a dropped connection, and its sha256 and size are checked before anything is
    installed. Free space for the downloads and the unpacked packages is checked first. A package whose kept
    C(.deb) (below) is the manifest's very file, as after a rollback of the update that installed it, is not
    downloaded again.
  - "Before anything is installed, the version each package runs now is kept as a C(.deb) in
    C(/var/lib/pos/rollback/os/): the one an earlier update installed, or one rebuilt from the installed files (as
    C(dpkg-repack) would) once C(dpkg --verify) found them as shipped. A package whose way back cannot be kept stops
    the module with nothing installed."
  - "The set is installed with one C(dpkg --install). When dpkg fails (a maintainer script, a full flash), the module
    puts every package back at once from the kept C(.deb)s, checks C(dpkg --audit) and fails saying so; an
    interruption the module cannot handle (power, a killed control node) is undone by the update's rollback or the
    update guard, from the same kept C(.deb)s."
  - The installed C(.deb)s are kept in C(/var/lib/pos/rollback/os/) too (the next update's way back); kept C(.deb)s
    of other versions of these packages are removed.
  - "With O(signature), the terminal first checks the release itself, as M(posfleet.fleet.pos_package) does: the
    manifest's ed25519 signature with its own C(openssl) and that the manifest is the one the control node
    verified; a failed check fails the module with nothing downloaded or changed."
  - With O(restart), posd is restarted afterwards onto the new libraries (the model profile's C(os.restart_after)).
version_added: "0.4.0"
author: posfleet contributors (@posfleet)
options:
  packages:
    description:
      - The release's OS packages for this terminal's model (the manifest entry's C(os_packages)), each a dict with
        C(name), C(version), C(arch), C(url) (relative to O(base_url)), C(sha256) and C(size); C(installed_size_kb)
        counts in the free-space check.
    type: list
    elements: dict
    required: true
  base_url:
    description: The distribution point's root URL, which the packages' C(url)s are relative to.
    type: str
    required: true
  timeout:
    description: Seconds a download request may wait for data; also how long to wait for posd after a restart.
    type: float
    default: 60
  restart:
    description: Restart posd after a change. Set to V(false) when a reboot follows or the app step restarts it.
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
      - Nothing is downloaded, kept or installed; RV(would_download) says how many bytes a real run would download.
      - With O(signature) the release is checked in check mode too (it only reads the manifest and its signature).
  diff_mode:
    support: full
    details:
      - The versions of the release's OS packages before and after (C(os_packages)), in check mode too.
  platform:
    platforms: posix
    details:
      - Runs on the terminal with the Python standard library only (Python 3.9 or newer); needs C(dpkg) and
        C(dpkg-deb).
notes:
  - Maintainer scripts run with C(DEBIAN_FRONTEND=noninteractive), as a terminal has no one to answer debconf.
seealso:
  - module: posfleet.fleet.pos_package
  - module: posfleet.fleet.pos_restore
"""

EXAMPLES = r"""
- name: Install the OS packages of the release
  posfleet.fleet.pos_os_packages:
    packages: "{{ pos_update_entry.os_packages }}"
    base_url: "{{ pos_region_settings.distribution_point }}"
    restart: "{{ not pos_update_reboot and 'posd' in pos_model_profile.os.restart_after | default([]) }}"
  register: pos_os_packages_result
"""

RETURN = r"""
before:
  description: The version of each of the release's OS packages before the module ran (null when not installed).
  returned: always
  type: dict
  sample: {libssl3: 3.0.20-1~deb12u2, openssl: 3.0.20-1~deb12u2, tzdata: 2026b-0+deb12u1}
after:
  description: Their versions afterwards (the ones a real run would install, in check mode).
  returned: always
  type: dict
  sample: {libssl3: 3.0.22-1~deb12u2, openssl: 3.0.22-1~deb12u2, tzdata: 2026f-0+deb12u1}
installed:
  description: The packages the module installed (would install, in check mode), sorted.
  returned: always
  type: list
  elements: str
  sample: [libssl3, openssl, tzdata]
kept:
  description: How the way back to each changed package's previous version was kept, C(kept) or C(repacked).
  returned: changed
  type: dict
  sample: {libssl3: repacked, openssl: kept}
reused:
  description:
    - The packages of C(installed) taken from their kept C(.deb) instead of downloaded, sorted.
    - An update that installed a version keeps its C(.deb) (the manifest's very file, its sha256 checked again),
      so installing that version again after a rollback downloads nothing.
  returned: when the set is not installed already
  type: list
  elements: str
  sample: [libssl3]
bytes_downloaded:
  description: Bytes received in this run (fewer than the packages' sizes when an earlier run left part of them).
  returned: always
  type: int
  sample: 3518204
would_download:
  description: In check mode, the bytes a real run would download.
  returned: check mode
  type: int
  sample: 3518204
reboot_required:
  description: Whether an installed package asked for a reboot itself (Debian's C(/run/reboot-required)).
  returned: always
  type: bool
  sample: false
signature:
  description: The terminal's own check of the release (O(signature)), as M(posfleet.fleet.pos_package) returns it.
  returned: when O(signature) is given
  type: dict
  sample: {verified: true, manifest_sha256: 3f2a9c0e5b7d41c6a8e9f0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1}
seconds:
  description: How long the module took.
  returned: always
  type: float
  sample: 14.2
"""

import os
import re
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_os
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_app import DPKG_READ_TIMEOUT
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_download import (
    DOWNLOAD_OPTIONS,
    DownloadError,
    fetch,
    partial_bytes,
    sha256_of,
)
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_guard import (
    RUN_OPTION,
    LeaseLost,
    act_as,
    start_step,
    switching,
)
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_signature import SIGNATURE_OPTION, check_release
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal import (
    PosdError,
    free_bytes,
    restart_posd,
    run_bounded,
    terminal_path,
)

VERSION_RE = re.compile(r"^(?:[0-9]+:)?[0-9][A-Za-z0-9.+~:-]*$")
REQUIRED_KEYS = ("name", "version", "arch", "url", "sha256", "size")


def check_packages(module):
    """The packages option, checked: each entry complete, names and versions as Debian writes them, each once."""
    packages, seen = [], set()
    for index, given in enumerate(module.params["packages"]):
        missing = [key for key in REQUIRED_KEYS if given.get(key) in (None, "")]
        if missing:
            module.fail_json(msg="packages.%d lacks %s; pass the release manifest entry's os_packages as they are"
                             % (index, ", ".join(missing)))
        entry = dict(given, size=int(given["size"]), sha256=str(given["sha256"]).lower())
        if not pos_os.PACKAGE_NAME.match(entry["name"]) or not VERSION_RE.match(str(entry["version"])):
            module.fail_json(msg="packages.%d: %r %r is not a Debian package name and version"
                             % (index, entry["name"], entry["version"]))
        if entry["name"] in seen:
            module.fail_json(msg="packages: %s is listed twice; the release manifest is wrong" % entry["name"])
        seen.add(entry["name"])
        packages.append(entry)
    if not packages:
        module.fail_json(msg="packages is empty: leave the task out for a release without OS packages")
    return packages


def reusable(todo):
    """{name: path} of the packages of `todo` whose kept .deb (/var/lib/pos/rollback/os) is the manifest's very
    file: an update that installed it and was rolled back kept it, and installing it again needs no download."""
    found = {}
    for entry in todo:
        path = pos_os.find_kept(entry["name"], entry["version"])
        if path and os.path.getsize(path) == entry["size"] and sha256_of(path) == entry["sha256"]:
            found[entry["name"]] = path
    return found


def check_room(module, todo, reused, result):
    """Fail unless the flash has room for what is left to download and for the unpacked packages."""
    staging = module.params["staging_dir"]
    download = sum(max(entry["size"] - partial_bytes(terminal_path(staging), entry["sha256"]), 0) for entry in todo
                   if entry["name"] not in reused)
    unpacked = sum(int(entry.get("installed_size_kb") or 0) * 1024 or entry["size"] for entry in todo)
    need, free = download + unpacked, free_bytes(staging)
    if free < need:
        module.fail_json(msg="not enough free space for the OS packages %s: they need %d MB (%d MB to download and "
                         "%d MB unpacked), %d MB are free in %s; free some space on the terminal"
                         % (", ".join(entry["name"] for entry in todo), need // (1 << 20) + 1, download // (1 << 20),
                            unpacked // (1 << 20), free // (1 << 20), staging), need_bytes=need, free_bytes=free,
                         **result)
    return download


def download(module, todo, reused, result):
    """Download every package of `todo` but the reused (resumed, checked) into staging; {name: path}."""
    base = module.params["base_url"].rstrip("/")
    paths = dict(reused)
    for entry in todo:
        if entry["name"] in reused:
            continue
        try:
            got = fetch("%s/%s" % (base, entry["url"].lstrip("/")), terminal_path(module.params["staging_dir"]),
                        entry["sha256"], entry["size"], timeout=module.params["timeout"],
                        retries=module.params["retries"], retry_delay=module.params["retry_delay"])
        except DownloadError as error:
            module.fail_json(msg="downloading the OS package %s %s failed, nothing was installed: %s"
                             % (entry["name"], entry["version"], error), **result)
        result["bytes_downloaded"] += got["bytes_downloaded"]
        paths[entry["name"]] = got["path"]
    for entry in todo:
        # The sha256 says it is the manifest's file; the control fields say the manifest named it right.
        rc, out = run_bounded(["dpkg-deb", "--field", paths[entry["name"]], "Package", "Version", "Architecture"],
                              DPKG_READ_TIMEOUT, "nothing was installed")[:2]
        fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
        if rc != 0 or (fields.get("Package"), fields.get("Version")) != (entry["name"], entry["version"]):
            module.fail_json(msg="the downloaded %s is %s %s, not %s %s: the release manifest is wrong; nothing was "
                             "installed" % (entry["url"], fields.get("Package"), fields.get("Version"),
                                            entry["name"], entry["version"]), **result)
    return paths


def install(module, todo, paths, before, result):
    """Move the downloads into the kept directory and install them with one dpkg call; put everything back on
    failure. Fails the module (changed) when the set could not be installed."""
    kept_dir = terminal_path(pos_os.KEPT_DIR)
    os.makedirs(kept_dir, mode=0o755, exist_ok=True)
    debs = []
    for entry in todo:
        kept = pos_os.kept_path(entry["name"], entry["version"], entry["arch"])
        os.replace(paths[entry["name"]], kept)
        debs.append(kept)
    try:
        pos_os.install(debs, "the OS packages may be left half-installed: the update's rollback (or the update guard) "
                             "installs the kept .debs of the previous versions")
        problem = pos_os.audit()
        after = pos_os.versions(sorted(before))
        wrong = [entry["name"] for entry in todo if after.get(entry["name"]) != entry["version"]]
        if problem or wrong:
            raise OSError("after dpkg --install, %s" % (
                "dpkg --audit finds: %s" % problem[:400] if problem else "%s are not at the release's version"
                % ", ".join(wrong)))
    except OSError as error:
        try:
            switched = pos_os.switch_back(before)
        except OSError as again:
            module.fail_json(msg="installing the OS packages failed: %s; putting the previous versions back failed "
                             "too: %s; the update's rollback tries again" % (error, again), changed=True, **result)
        module.fail_json(msg="installing the OS packages failed: %s; every package was put back at its previous "
                         "version (%s)" % (error, ", ".join(switched) or "nothing had changed"), changed=True,
                         put_back=switched, **result)
    return after


def main():
    module = AnsibleModule(
        argument_spec=dict(
            run=RUN_OPTION,
            packages=dict(type="list", elements="dict", required=True),
            base_url=dict(type="str", required=True),
            timeout=dict(type="float", default=60.0),
            restart=dict(type="bool", default=True),
            signature=SIGNATURE_OPTION,
            **DOWNLOAD_OPTIONS,
        ),
        supports_check_mode=True,
    )
    act_as(module.params["run"])
    started = time.time()
    packages = check_packages(module)
    verified = check_release(module)
    names = [entry["name"] for entry in packages]
    try:
        found = pos_os.installed(names)
    except OSError as error:  # CommandTimeout too
        module.fail_json(msg="cannot read which OS packages the terminal has: %s" % error)
    # What a way back restores: the installed version whatever its state (a half-installed package goes back
    # from its kept .deb). A package is done only when fully installed at the release's version.
    before = {name: found[name]["version"] if name in found else None for name in names}
    todo = [entry for entry in packages if before[entry["name"]] != entry["version"]
            or not found[entry["name"]]["ok"]]
    wanted = {entry["name"]: entry["version"] for entry in packages}
    result = dict(before=before, after=dict(before), installed=sorted(entry["name"] for entry in todo),
                  bytes_downloaded=0, reboot_required=pos_os.reboot_required(),
                  **({"signature": verified} if verified else {}))
    if not todo:
        module.exit_json(changed=False, seconds=round(time.time() - started, 3), **result)
    diff = {"before": {"os_packages": before}, "after": {"os_packages": wanted}}
    reused = reusable(todo)
    result["reused"] = sorted(reused)
    would = check_room(module, todo, reused, result)
    if module.check_mode:
        result["after"] = wanted
        module.exit_json(changed=True, diff=diff, would_download=would, seconds=round(time.time() - started, 3),
                         **result)

    try:
        start_step()
    except LeaseLost as error:
        module.fail_json(msg="not installing the OS packages: %s" % error, **result)
    paths = download(module, todo, reused, result)
    try:
        result["kept"] = pos_os.keep({name: found[name] for name in result["installed"] if name in found})
    except OSError as error:
        module.fail_json(msg="%s; nothing was installed" % error, **result)
    try:
        # Under the update's lease: the update guard neither acts in the middle of the switch nor lets it
        # begin once it has put the terminal back (LeaseLost).
        with switching():
            result["after"] = install(module, todo, paths, before, result)
    except LeaseLost as error:
        module.fail_json(msg="not installing the OS packages: %s" % error, **result)
    pos_os.prune({name: {before[name], wanted[name]} for name in names})
    result["reboot_required"] = pos_os.reboot_required()
    if module.params["restart"]:
        try:
            restart_posd(timeout=module.params["timeout"])
        except PosdError as error:
            module.fail_json(msg="the OS packages are installed but posd did not come back after the restart: %s"
                             % error, changed=True, **result)
    module.exit_json(changed=True, diff=diff, seconds=round(time.time() - started, 3), **result)


if __name__ == "__main__":
    main()
