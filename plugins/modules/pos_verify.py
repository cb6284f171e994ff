#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pos_verify
short_description: Check that a POS terminal runs a release completely and intact, then put it back in service
description:
  - "Runs every check and reports each as C({name, ok, detail}):"
  - "C(app_version): the installed app version is the C(app_version) of O(release)."
  - "C(app_running): the posd process answers with that version (it was restarted or the terminal rebooted)."
  - "C(app_files): every installed app file is as shipped: for V(bundle) the C(MANIFEST.json) of
    C(/opt/pos/app/current); for V(dpkg) C(dpkg --verify posd) prints nothing."
  - "C(pack:<name>): the pack's C(current) is the wanted version (from the C(packs) of O(release), and
    O(merchant_version) for the merchant pack) and every file matches its C(PACK.json)."
  - "C(os:<name>): for each OS package of the C(os_packages) of O(release) (name to version), the fully installed
    version is that one (null: the package is not installed)."
  - "C(os_files): C(dpkg --verify) finds the installed files of those packages as shipped (a conffile changed on
    purpose aside) and C(dpkg --audit) finds the package database consistent."
  - "C(journal): SQLite C(PRAGMA integrity_check) of the journal, opened read-only, is C(ok)."
  - "C(health): posd reports itself healthy."
  - "C(sequence): in created order every sale has the next invoice number and the next STAN (wrapping from
    999999 to 1), batches never go down, and the counters are not below the highest numbers in the journal."
  - When a check fails the module fails with a message listing the failed checks, and returns RV(checks) and
    RV(drift).
  - When every check passes and O(leave_maintenance) is set, the terminal goes back in service and the update's
    lease ends (see M(posfleet.fleet.pos_maintenance)); these are the only changes this module makes.
version_added: "0.1.0"
author: posfleet contributors (@posfleet)
options:
  release:
    description:
      - What the terminal should run, C(app_version) and C(packs) (pack name to version), and C(os_packages)
        (Debian package name to version) for a release that pins OS packages.
    type: dict
    required: true
  package_style:
    description: How the model installs its payment app (C(pos_model_profile.package_style)).
    type: str
    required: true
    choices: [dpkg, bundle]
  merchant_version:
    description: The merchant pack version the terminal should hold (from M(posfleet.fleet.pos_data_sync)).
    type: str
  leave_maintenance:
    description: When everything checks out, leave maintenance so that the terminal sells again.
    type: bool
    default: false
  ready_timeout:
    description:
      - Seconds to wait for posd to answer before the checks, for a payment app still starting after a
        restart or a reboot. V(0) does not wait; posd not answering is then a failed check at once.
    type: float
    default: 0
  record_status:
    description:
      - Make the task the update's verdict (handled by the action plugin on the control node, never sent
        to the terminal). A verification that passed records the terminal as C(updated) in the pipeline
        facts (C(pos_update_status)); a terminal that stopped answering fails the task with the reason
        instead of being unreachable, so that the update's rescue rolls it back; in check mode nothing
        is verified and the terminal is recorded as C(would_update).
    type: bool
    default: false
extends_documentation_fragment:
  - posfleet.fleet.attributes
  - posfleet.fleet.run
  - posfleet.fleet.attributes.action
attributes:
  action:
    support: full
    details:
      - O(record_status) is handled by the action on the control node, which records the verdict as the pipeline's
        facts; every other option goes to the module on the terminal.
  check_mode:
    support: partial
    details:
      - Nothing on the terminal changes. The checks run; the terminal does not leave maintenance and its lease is
        not ended. The change reported is whether O(leave_maintenance) would take the terminal out of maintenance;
        a lease that a real run would only end is not predicted.
      - With O(record_status) the checks do not run at all (a check-mode update installed nothing) and the terminal
        is recorded as C(would_update).
  diff_mode:
    support: none
  platform:
    platforms: posix
    details:
      - The module runs on the terminal with the Python standard library only (Python 3.9 or newer).
"""

EXAMPLES = r"""
- name: Verify the update and put the terminal back in service
  posfleet.fleet.pos_verify:
    release:
      app_version: "{{ pos_update_entry.app.version }}"
      packs:
        params: "{{ pos_update_entry.packs.params.version }}"
        catalog: "{{ pos_update_entry.packs.catalog.version }}"
    package_style: "{{ pos_model_profile.package_style }}"
    merchant_version: "{{ pos_data_sync_result.merchant_version }}"
    leave_maintenance: true
"""

RETURN = r"""
checks:
  description: Every check with its outcome.
  returned: always
  type: list
  elements: dict
  sample:
    - {name: app_version, ok: true, detail: "1.1.0"}
    - {name: "pack:catalog", ok: false, detail: "current is 2026.01.0, wanted 2026.11.0"}
drift:
  description: One line per failed check, for a report.
  returned: always
  type: list
  elements: str
  sample: ["pack:catalog: current is 2026.01.0, wanted 2026.11.0"]
os_packages:
  description: The installed version of each OS package of the C(os_packages) of O(release) (null when not installed);
    empty when the release pins none.
  returned: always
  type: dict
  sample: {libssl3: 3.0.20-1~deb12u2, tzdata: 2026f-0+deb12u1}
left_maintenance:
  description: Whether the module put the terminal back in service.
  returned: success
  type: bool
"""

import os
import sqlite3

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_os
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_versions as versions
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_app import app, app_version
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_archive import (
    ArchiveError,
    read_pack_manifest,
    verify_files,
)
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_guard import RUN_OPTION, LeaseHeld, act_as, end_lease
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_journal import connect_ro, integrity, sequence_problems
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal import (
    JOURNAL,
    PACKS_DIR,
    SEQUENCE_GAPS,
    CommandTimeout,
    PosdError,
    posd,
    read_json,
    terminal_path,
    wait_posd_ready,
)


def check_pack(name, version):
    base = terminal_path(os.path.join(PACKS_DIR, name))
    current = versions.current(base)
    if current is None:
        return False, "%s/%s/current is missing, wanted %s" % (PACKS_DIR, name, version)
    if current != version:
        return False, "current is %s, wanted %s" % (current, version)
    try:
        manifest = read_pack_manifest(os.path.join(base, current), name)
    except ArchiveError as error:
        return False, str(error)
    if str(manifest["version"]) != version:
        return False, "PACK.json of %s says version %s" % (current, manifest["version"])
    problems = verify_files(os.path.join(base, current), manifest["files"])
    if problems:
        return False, "; ".join(problems[:3])
    return True, "%s, %d files match PACK.json" % (version, len(manifest["files"]))


def check_journal():
    """(integrity check, sequence check) of the journal."""
    path = terminal_path(JOURNAL)
    try:
        conn = connect_ro(path)
    except sqlite3.Error as error:
        failed = (False, "cannot open %s read-only: %s" % (JOURNAL, error))
        return failed, failed
    try:
        found = integrity(conn)
        journal = (found == "ok", "integrity_check: %s" % found)
        if found != "ok":
            return journal, (False, "not checked: the journal is damaged")
        problems = sequence_problems(conn, read_json(SEQUENCE_GAPS, []) or [])
        rows = conn.execute("SELECT COUNT(*) FROM txn").fetchone()[0]
        return journal, (not problems, "; ".join(problems) or "%d sales, numbers continuous" % rows)
    except sqlite3.Error as error:
        failed = (False, "cannot read %s: %s" % (JOURNAL, error))
        return failed, failed
    finally:
        conn.close()


def check_os(wanted):
    """({name: installed version or None}, [(check name, (ok, detail))]) of the OS packages `wanted`
    ({name: version or None}) and their files."""
    names = sorted(wanted)
    try:
        installed = pos_os.versions(names)
        differences, audit = pos_os.file_differences(names), pos_os.audit()
    except OSError as error:  # CommandTimeout too
        return {}, [("os_files", (False, str(error)))]
    checks = [("os:%s" % name, (installed[name] == wanted[name], "installed %s, wanted %s"
                                % (installed[name] or "nothing", wanted[name] or "nothing"))) for name in names]
    if differences or audit:
        detail = "; ".join(text for text in ("dpkg --verify: %s" % differences[:400] if differences else "",
                                             "dpkg --audit: %s" % audit[:400] if audit else "") if text)
        checks.append(("os_files", (False, detail)))
    else:
        checks.append(("os_files", (True, "dpkg --verify and dpkg --audit found nothing")))
    return installed, checks


def main():
    module = AnsibleModule(
        argument_spec=dict(
            run=RUN_OPTION,
            release=dict(type="dict", required=True),
            package_style=dict(type="str", required=True, choices=["dpkg", "bundle"]),
            merchant_version=dict(type="str"),
            leave_maintenance=dict(type="bool", default=False),
            ready_timeout=dict(type="float", default=0),
        ),
        supports_check_mode=True,
    )
    act_as(module.params["run"])
    release, style = module.params["release"], module.params["package_style"]
    wanted_app = release.get("app_version")
    wanted_packs = dict(release.get("packs") or {})
    if not wanted_app or not isinstance(wanted_packs, dict):
        module.fail_json(msg="release needs app_version and a packs dict (pack name to version)")
    if module.params["merchant_version"]:
        wanted_packs["merchant"] = module.params["merchant_version"]

    checks = []

    def add(name, outcome):
        checks.append({"name": name, "ok": bool(outcome[0]), "detail": outcome[1]})

    try:
        installed = app_version(style)
        add("app_version", (installed == wanted_app, "installed %s, wanted %s" % (installed, wanted_app)))
    except CommandTimeout as error:
        add("app_version", (False, str(error)))
    try:
        # Waiting here rather than in a task of its own saves a round trip per terminal.
        status = wait_posd_ready(module.params["ready_timeout"]) if module.params["ready_timeout"] > 0 \
            else posd("status")
    except PosdError as error:
        status = None
        down = (False, str(error))
    running = status.get("app_version") if status else None
    add("app_running", (running == wanted_app, "posd runs %s, wanted %s" % (running, wanted_app))
        if status else down)
    add("app_files", app(style).check_files())
    for name in sorted(wanted_packs):
        if wanted_packs[name] is not None:  # None: the release does not have this pack (a factory terminal)
            add("pack:%s" % name, check_pack(name, str(wanted_packs[name])))
    wanted_os = release.get("os_packages") or {}
    installed_os = {}
    if wanted_os:
        installed_os, os_checks = check_os(wanted_os)
        for name, outcome in os_checks:
            add(name, outcome)
    journal, sequence = check_journal()
    add("journal", journal)
    add("health", (bool(status.get("healthy")), status.get("health_detail") or "no detail")
        if status else down)
    add("sequence", sequence)

    drift = ["%s: %s" % (check["name"], check["detail"]) for check in checks if not check["ok"]]
    if drift:
        module.fail_json(msg="the terminal does not run the release intact: %s" % "; ".join(drift),
                         checks=checks, drift=drift, os_packages=installed_os)
    left = False
    if module.params["leave_maintenance"] and status.get("maintenance"):
        left = True
        if not module.check_mode:
            try:
                posd("maintenance_leave")
            except PosdError as error:
                module.fail_json(msg="every check passed but the terminal could not leave maintenance: %s"
                                 % error, checks=checks, drift=drift)
    # Verified and selling: the update is over, and with it the update guard's lease.
    try:
        lease_ended = module.params["leave_maintenance"] and not module.check_mode and end_lease()
    except LeaseHeld as error:
        module.fail_json(msg="every check passed, but the terminal's lease is not this run's: %s" % error,
                         checks=checks, drift=drift, changed=left)
    module.exit_json(changed=left or lease_ended, checks=checks, drift=drift, os_packages=installed_os,
                     left_maintenance=left and not module.check_mode)


if __name__ == "__main__":
    main()
