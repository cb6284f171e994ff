#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pos_restore
short_description: Put a POS terminal back to a snapshot taken by pos_backup (the rollback of an update)
description:
  - Checks the snapshot (O(src)) member by member against its C(MANIFEST.json) before using any of it.
  - "App: V(bundle) switches C(/opt/pos/app/current) back to the snapshot's version directory (kept by
    M(posfleet.fleet.pos_package)); V(dpkg) installs C(/var/lib/pos/rollback/posd_<version>_all.deb) (or the copy
    inside the snapshot) with C(dpkg -i). Nothing happens when the installed version already is the snapshot's."
  - "OS packages: the versions the snapshot recorded (the O(posfleet.fleet.pos_backup#module:os_packages) of
    M(posfleet.fleet.pos_backup)) are put back first, with one C(dpkg --install) of the C(.deb)s
    M(posfleet.fleet.pos_os_packages) kept in C(/var/lib/pos/rollback/os/); a package that was not installed is
    removed. A kept C(.deb) that is gone stops the module before anything is restored."
  - "Data packs: each pack's C(current) goes back to the snapshot's version; a version directory that is gone
    or damaged is re-created from the snapshot. All packs are staged and verified before any link is switched.
    A pack the snapshot did not have is left as it is (with a warning)."
  - "Journal: restored only when needed. When the live journal is intact and holds every sale of the snapshot
    unchanged, it is kept (it may hold more: nothing is lost); if only its counters fell behind the
    snapshot's, they are raised in place. When it lacks or changed snapshot sales and has
    none of its own, the snapshot's journal is written into it with SQLite's online backup API: one write
    transaction, taken while posd keeps the journal open, which posd sees at its next read. When the live
    journal is damaged beyond opening, posd is stopped, the file is replaced by one rename and posd is started
    again (see the notes for the race this involves). When both have sales the other lacks, the module fails
    rather than lose sales."
  - The sequence counters never go backwards; see RV(counters_after).
  - posd is restarted when the app changed (O(restart)), otherwise asked to C(reload) when packs changed.
  - Afterwards it verifies the app version, every restored pack against its C(PACK.json), the journal's
    C(integrity_check) and that it holds every snapshot sale.
version_added: "0.1.0"
author: posfleet contributors (@posfleet)
options:
  src:
    description: The snapshot tar on the terminal.
    type: str
    default: /var/lib/pos/backup/snapshot.tar
  package_style:
    description: How the model installs its payment app (C(pos_model_profile.package_style)).
    type: str
    required: true
    choices: [dpkg, bundle]
  restart:
    description: Restart posd after the app was changed back. Set to V(false) when a reboot follows.
    type: bool
    default: true
  timeout:
    description: Seconds to wait for posd to stop or to answer again.
    type: float
    default: 60
extends_documentation_fragment:
  - posfleet.fleet.attributes
  - posfleet.fleet.run
attributes:
  check_mode:
    support: full
    details:
      - The differences are reported (RV(restored), RV(versions_after), RV(journal)) and nothing of the terminal's
        state changes; the snapshot's journal is read from a temporary copy in the system's temporary directory,
        removed again.
  diff_mode:
    support: partial
    details:
      - The app and pack versions before and after, in check mode too.
      - The journal is not in the diff (RV(journal) says what happens to it), nor is a pack directory re-created at the
        version it already had (RV(restored) names it).
  platform:
    platforms: posix
    details:
      - Runs on the terminal with the Python standard library only (Python 3.9 or newer); V(dpkg) models need
        C(dpkg).
notes:
  - "Replacing a damaged journal file races with the terminal's init, which starts posd again about a second
    after it exits: posd may start between the stop and the rename and open the old file. The module therefore
    restarts posd once more after the rename whenever a posd is running. A terminal init with a hold switch
    (for example C(systemctl stop posd)) would remove the race."
"""

EXAMPLES = r"""
- name: Roll the terminal back to its pre-update snapshot
  posfleet.fleet.pos_restore:
    src: /var/lib/pos/backup/snapshot.tar
    package_style: "{{ pos_model_profile.package_style }}"
    restart: false   # a reboot follows
  register: pos_rollback_restore
"""

RETURN = r"""
restored:
  description: What was (or, in check mode, would be) put back, among C(app), C(journal) and C(pack:<name>).
  returned: always
  type: list
  elements: str
  sample: [app, "pack:params"]
versions_before:
  description: App and pack versions before the module ran.
  returned: always
  type: dict
  sample: {app_version: 1.1.0, packs: {params: 2026.11.0, catalog: 2026.11.0, merchant: 5d1c0e2a9f3b}}
versions_after:
  description: App and pack versions afterwards (the snapshot's, in check mode).
  returned: always
  type: dict
journal:
  description:
    - What happened to the journal, V(kept), V(counters) (raised in place), V(restored) or V(replaced), with
      the reason.
    - C(gap) when the restored counters are ahead of the last sale (numbers were issued after the snapshot);
      the jump is recorded in C(/var/lib/pos/sequence_gaps.json), where M(posfleet.fleet.pos_verify) accepts it.
  returned: always
  type: dict
  sample: {action: kept, reason: "the live journal holds all 118 snapshot sales unchanged"}
counters_before:
  description: The highest sequence counters seen before the restore (posd's and the live journal's).
  returned: always
  type: dict
counters_after:
  description: The counters of the restored journal; never below RV(counters_before).
  returned: when the journal was restored
  type: dict
"""

import contextlib
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_os
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_versions as versions
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_app import app, app_version, installed_style
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_archive import (
    ArchiveError,
    digest_tar_stream,
    manifest_problems,
    member_path,
    pack_intact,
)
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_guard import RUN_OPTION, LeaseHeld, act_as, renew
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_journal import (
    COUNTERS,
    connect_ro,
    counters,
    gap_record,
    integrity,
    raise_counters,
    write_into,
)
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal import (
    JOURNAL,
    PACKS_DIR,
    SEQUENCE_GAPS,
    STAGING_DIR,
    CommandTimeout,
    PosdError,
    atomic_write,
    pack_versions,
    posd,
    posd_pid,
    read_json,
    restart_posd,
    stamp,
    stop_posd,
    terminal_path,
    wait_posd_ready,
)

ROW_COLUMNS = "id, stan, batch, invoice, amount_cents, currency, pan, sku, created_at, offline"


def rows(conn):
    """{id: the sale's fields} (its upload state excluded: that may move on after a backup)."""
    return {row[0]: row for row in conn.execute("SELECT %s FROM txn" % ROW_COLUMNS)}


def extract_members(tar, prefix, dest):
    """Write the regular members under `prefix/` into the new directory `dest`; returns their relpaths."""
    os.makedirs(dest, mode=0o755)
    written = []
    for member in tar.getmembers():
        name = member_path(member.name, "snapshot")
        if not name.startswith(prefix + "/") or not member.isreg():
            continue
        rel = name[len(prefix) + 1:]
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        source = tar.extractfile(member)
        with open(target, "wb") as handle:
            shutil.copyfileobj(source, handle, 1 << 20)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(target, 0o644)
        written.append(rel)
    return written


def extract_one(tar, name, dest):
    member = tar.getmember(name)
    with tar.extractfile(member) as source, open(dest, "wb") as handle:
        shutil.copyfileobj(source, handle, 1 << 20)
        handle.flush()
        os.fsync(handle.fileno())


# Room the restore wants beyond the journal and packs it may unpack: SQLite's own scratch and the links.
RESTORE_MARGIN = 1 << 20


class Restore:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.src = terminal_path(self.params["src"])
        self.work = None

    def fail(self, msg, **extra):
        if self.work:
            shutil.rmtree(self.work, ignore_errors=True)
        self.module.fail_json(msg=msg, **extra)

    # --- the snapshot ----------------------------------------------------------------------------

    def load_snapshot(self):
        if not os.path.isfile(self.src):
            self.fail("there is no snapshot at %s: was pos_backup run before the update?"
                      % self.params["src"])
        try:
            with open(self.src, "rb") as handle:
                manifest, digests = digest_tar_stream(handle, "snapshot %s" % self.params["src"])
        except (ArchiveError, OSError) as error:
            self.fail("cannot read the snapshot: %s" % error)
        problems = manifest_problems(manifest, digests)
        if problems:
            self.fail("the snapshot %s is damaged, refusing to restore from it: %s"
                      % (self.params["src"], "; ".join(problems[:5])))
        self.members = set(digests)
        with tarfile.open(self.src, "r:") as tar:
            try:
                self.app = json.loads(tar.extractfile("app.json").read().decode("utf-8"))
                self.packs = json.loads(tar.extractfile("packs.json").read().decode("utf-8"))
            except (KeyError, ValueError, AttributeError) as error:
                self.fail("the snapshot %s lacks a readable app.json or packs.json: %s"
                          % (self.params["src"], error))
        if self.app.get("style") != self.params["package_style"]:
            self.fail("the snapshot is of a %s terminal but package_style is %s"
                      % (self.app.get("style"), self.params["package_style"]))
        for required in ("journal.db", "etc/pos/terminal.json"):
            if required not in self.members:
                self.fail("the snapshot %s has no %s" % (self.params["src"], required))

    def make_room(self, scratch, needed):
        """Free flash for the way back: a full flash, often what failed the update, must not stop the restore.

        Only downloads in the staging directory are removed, largest first, and only while the flash has
        less than `needed` bytes free: they are caches that the next update fetches again.
        """
        def free():
            stat = os.statvfs(scratch)
            return stat.f_bavail * stat.f_frsize
        if free() >= needed:
            return
        staging = terminal_path(STAGING_DIR)
        try:
            names = os.listdir(staging)
        except OSError:
            return
        files = [os.path.join(staging, name) for name in names if os.path.isfile(os.path.join(staging, name))]
        for path in sorted(files, key=lambda item: -os.path.getsize(item)):
            if free() >= needed:
                break
            with contextlib.suppress(OSError):
                os.unlink(path)
                self.module.warn("removed the download %s to make room for the restore" % path)

    # --- planning ----------------------------------------------------------------------------------

    def plan_app(self, installed):
        version, style = self.app.get("version"), self.params["package_style"]
        if installed == version:
            return None
        problem = app(style).kept_problem(version)
        if problem is None:
            return {"kept": True}
        # What the style keeps for its way back may be in the snapshot (a dpkg terminal's .deb).
        inside = self.app.get("deb")
        if inside and inside in self.members:
            return {"from_snapshot": inside}
        self.fail("cannot restore the app to %s: %s; reinstall posd %s with pos_package" % (version, problem, version))
        return None

    def plan_packs(self):
        plan = {}
        for name, version in sorted(self.packs.items()):
            if version is None:
                continue
            base = terminal_path(os.path.join(PACKS_DIR, name, version))
            good = pack_intact(base, name, version)
            if versions.current(terminal_path(os.path.join(PACKS_DIR, name))) == version and good:
                continue
            if not good and not any(m.startswith("packs/%s/%s/" % (name, version)) for m in self.members):
                self.fail("cannot restore pack %s %s: it is not in the snapshot and %s/%s/%s is missing or "
                          "damaged" % (name, version, PACKS_DIR, name, version))
            plan[name] = {"version": version, "rebuild": not good}
        for name, version in sorted(pack_versions().items()):
            if version is not None and self.packs.get(name) is None:
                self.module.warn("pack %s %s was not on the terminal when the snapshot was taken; it is left "
                                 "as it is" % (name, version))
        return plan

    def plan_journal(self, snapshot_db):
        """(action, reason, observed counters) for the journal; fails when restoring would lose sales."""
        observed = {}
        with contextlib.suppress(PosdError):  # posd may be down: the live journal's counters still count
            observed = dict(posd("status").get("counters") or {})
        snap = sqlite3.connect(snapshot_db)
        try:
            snap_rows, snap_counters = rows(snap), counters(snap)
            snap_check = integrity(snap)
        finally:
            snap.close()
        if snap_check != "ok":
            self.fail("the snapshot's journal fails integrity_check (%s); it cannot be restored" % snap_check)
        self.snap_ids = set(snap_rows)
        live_path = terminal_path(JOURNAL)
        try:
            live = connect_ro(live_path)
            try:
                live_check = integrity(live)
                if live_check == "ok":
                    live_rows, live_counters = rows(live), counters(live)
            finally:
                live.close()
        except sqlite3.Error as error:
            return "replace", "the live journal cannot be read: %s" % error, observed, snap_counters
        if live_check != "ok":
            reason = "the live journal fails integrity_check: %s" % live_check
            return "replace", reason, observed, snap_counters
        for name, value in live_counters.items():
            observed[name] = max(int(observed.get(name, 0) or 0), value)
        changed = [txn for txn, row in snap_rows.items() if live_rows.get(txn) != row]
        extra = set(live_rows) - set(snap_rows)
        behind = [name for name in COUNTERS if live_counters.get(name, 0) < snap_counters.get(name, 0)]
        if not changed and behind:
            # Every sale is there but the numbering was reset: the next sale would reuse a number.
            reason = "the live journal holds all %d snapshot sales, but its counters (%s) are behind the " \
                     "snapshot's" % (len(snap_rows), ", ".join(behind))
            return "counters", reason, observed, snap_counters
        if not changed:
            reason = "the live journal holds all %d snapshot sales unchanged" % len(snap_rows)
            return "kept", reason, observed, None
        if extra:
            self.fail("the live journal and the snapshot have diverged: %d snapshot sales are missing or "
                      "changed and %d live sales are not in the snapshot; restoring would lose sales. Upload "
                      "the live sales (pos_txn_upload) and have an operator look at %s"
                      % (len(changed), len(extra), JOURNAL))
        reason = "%d snapshot sales are missing or changed in the live journal" % len(changed)
        return "restore", reason, observed, snap_counters

    # --- doing -------------------------------------------------------------------------------------

    def stage_packs(self, tar, plan):
        staged = {}
        for name, item in plan.items():
            if not item["rebuild"]:
                continue
            version = item["version"]
            target = terminal_path(os.path.join(PACKS_DIR, name, version + ".staging"))
            if os.path.lexists(target):
                shutil.rmtree(target)
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            extract_members(tar, "packs/%s/%s" % (name, version), target)
            if not pack_intact(target, name, version):
                shutil.rmtree(target, ignore_errors=True)
                self.fail("pack %s %s in the snapshot does not match its PACK.json; nothing was switched"
                          % (name, version))
            staged[name] = target
        return staged

    def restore_journal(self, prepared, action):
        live = terminal_path(JOURNAL)
        if action == "restore":
            try:
                write_into(prepared, live)
                return "restored"
            except sqlite3.Error as error:
                self.module.warn("writing into the live journal failed (%s); replacing the file instead"
                                 % error)
        # posd holds the journal open: a file renamed over it would go unseen by the running posd (it keeps
        # the old inode), and a -wal left by the old file would be applied to the new one. So: stop posd,
        # drop the old file's -wal/-shm, rename, and restart posd once more if init already started it again
        # (it polls about once a second, so it may have done so between the stop and the rename).
        timeout = self.params["timeout"]
        try:
            stopped = stop_posd(timeout=min(timeout, 20.0))
            for suffix in ("-wal", "-shm"):
                if os.path.exists(live + suffix):
                    os.unlink(live + suffix)
            os.replace(prepared, live)
            pid = posd_pid()
            if pid is not None and pid != stopped:
                stop_posd(timeout=min(timeout, 20.0))
            if stopped is not None or pid is not None:
                wait_posd_ready(timeout)
        except (PosdError, OSError) as error:
            self.fail("replacing the journal %s failed: %s" % (JOURNAL, error), changed=True)
        return "replaced"

    def install_app(self, tar, plan, version):
        installed = app(self.params["package_style"])
        try:
            if "from_snapshot" in plan:
                installed.restore_from_snapshot(version, lambda dest: extract_one(tar, plan["from_snapshot"], dest))
            installed.switch_back(version)
        except OSError as error:
            self.fail("restoring the app %s failed: %s" % (version, error), changed=True)

    def installed_version(self, changed=False, **result):
        """The installed app version; fails the module when dpkg-query hangs (`changed`: after the restore)."""
        try:
            return app_version(self.params["package_style"])
        except CommandTimeout as error:
            self.fail("cannot read the installed app version: %s" % error, changed=changed, **result)

    def run(self):
        module, style = self.module, self.params["package_style"]
        try:
            found = installed_style()
        except CommandTimeout as error:
            self.fail("nothing was restored: %s" % error)
        if found not in (None, style):
            self.fail("the terminal has a %s app but package_style is %s" % (found, style))
        self.load_snapshot()
        if not module.check_mode:
            # The control node is putting the terminal back itself: keep the update guard out of its way
            # (a restore that the guard has already done is found to have nothing left to do).
            try:
                renew(forward=False)
            except LeaseHeld as error:
                self.fail("nothing was restored: %s" % error)
        version = self.app["version"]
        installed = self.installed_version()
        # The OS packages the snapshot recorded (pos_backup's os_packages): put back from the .debs
        # pos_os_packages kept on the terminal, before anything else (their switch is the one that can fail).
        os_before = self.app.get("os_packages") or {}
        try:
            os_debs, os_removals, os_problems = pos_os.plan_back(os_before)
            os_now = pos_os.versions(sorted(os_before))
        except OSError as error:  # CommandTimeout too
            self.fail("nothing was restored: cannot read the OS packages' versions: %s" % error)
        if os_problems:
            self.fail("cannot restore the OS packages: %s; nothing was restored" % "; ".join(os_problems))
        os_plan = bool(os_debs or os_removals)
        before = {"app_version": installed, "packs": pack_versions(), **_os_state(os_before, os_now)}
        app_plan = self.plan_app(installed)
        pack_plan = self.plan_packs()
        # A scratch directory beside the journal (same filesystem: a rename into place stays atomic); in check
        # mode one outside the terminal's state, removed again.
        scratch = tempfile.gettempdir() if module.check_mode else os.path.dirname(terminal_path(JOURNAL))
        if not module.check_mode:
            with tarfile.open(self.src, "r:") as tar:
                needed = tar.getmember("journal.db").size + sum(
                    member.size for member in tar.getmembers() if member.name.startswith("packs/"))
            self.make_room(scratch, needed + RESTORE_MARGIN)
        self.work = tempfile.mkdtemp(prefix=".pos-restore-", dir=scratch)
        prepared = os.path.join(self.work, "journal.db")
        with tarfile.open(self.src, "r:") as tar:
            extract_one(tar, "journal.db", prepared)
            action, reason, observed, snap_counters = self.plan_journal(prepared)
            restored = (["os"] if os_plan else []) + (["app"] if app_plan else []) + \
                (["journal"] if action != "kept" else []) + ["pack:%s" % name for name in sorted(pack_plan)]
            after = {"app_version": version, "packs": dict(before["packs"], **{n: p["version"]
                                                                               for n, p in pack_plan.items()}),
                     **_os_state(os_before, dict(os_before))}
            result = dict(restored=restored, versions_before=before, counters_before=observed,
                          journal={"action": action, "reason": reason})
            diff = {"before": before, "after": after}
            if module.check_mode or not restored:
                shutil.rmtree(self.work, ignore_errors=True)
                if restored:
                    result["diff"] = diff
                module.exit_json(changed=bool(restored), versions_after=after if restored else before,
                                 **result)
            try:
                staged = self.stage_packs(tar, pack_plan)
                if os_plan:
                    result["os_switched"] = pos_os.switch_back(os_before)
                if app_plan:
                    self.install_app(tar, app_plan, version)
            except (OSError, ArchiveError, KeyError, tarfile.TarError) as error:
                self.fail("restoring from the snapshot failed: %s" % error, changed=True, **result)
        if action != "kept":
            # The counters only guarantee that a STAN/invoice number is never issued twice. Every sale was
            # uploaded before the backup, so the restored journal holds every sale the acquirer knows; but
            # numbers the terminal handed out after the backup (sales lost with a damaged journal) must not be
            # handed out again, so the restored counters start at the highest value seen before the restore.
            floor = {name: max(int(observed.get(name, 0) or 0), int(snap_counters.get(name, 0)))
                     for name in COUNTERS}
            if action == "counters":
                # Only the numbering is wrong: raise it in place (one SQLite transaction, posd may run).
                try:
                    result["counters_after"] = raise_counters(terminal_path(JOURNAL), floor)
                except sqlite3.Error as error:
                    self.fail("cannot raise the journal's counters: %s" % error, changed=True, **result)
                prepared = terminal_path(JOURNAL)
            else:
                result["counters_after"] = raise_counters(prepared, floor)
            gap = gap_record(prepared, "pos_restore from %s: numbers issued after the snapshot are not reused"
                             % self.params["src"], stamp(time.time()))
            if action != "counters":
                result["journal"]["action"] = self.restore_journal(prepared, action)
            if gap:
                # Recorded so that pos_verify accepts this one deliberate jump in the numbering.
                gaps = read_json(SEQUENCE_GAPS, []) or []
                atomic_write(terminal_path(SEQUENCE_GAPS), json.dumps([*gaps, gap], indent=1) + "\n")
                result["journal"]["gap"] = gap
        try:
            for name, target in staged.items():
                versions.place(terminal_path(os.path.join(PACKS_DIR, name)), pack_plan[name]["version"], target)
            for name, item in sorted(pack_plan.items()):
                versions.switch(terminal_path(os.path.join(PACKS_DIR, name)), item["version"])
        except OSError as error:
            self.fail("switching the packs back failed: %s" % error, changed=True, **result)
        shutil.rmtree(self.work, ignore_errors=True)
        self.work = None
        try:
            if (app_plan or os_plan) and self.params["restart"]:
                status = restart_posd(timeout=self.params["timeout"])
                if status.get("app_version") != version:
                    self.fail("posd restarted but runs %s instead of %s"
                              % (status.get("app_version"), version), changed=True, **result)
            elif pack_plan and result["journal"]["action"] != "replaced":
                try:
                    posd("reload", timeout=self.params["timeout"])
                except PosdError as error:
                    module.warn("posd did not reload the restored packs (%s); it reads them when it starts"
                                % error)
        except PosdError as error:
            self.fail("the terminal is restored but posd did not come back: %s" % error, changed=True,
                      **result)
        self.verify(version, pack_plan, os_before, result)
        result["versions_after"] = {"app_version": self.installed_version(True, **result), "packs": pack_versions(),
                                    **_os_state(os_before, pos_os.versions(sorted(os_before)))}
        module.exit_json(changed=True, diff=diff, **result)

    def verify(self, version, pack_plan, os_before, result):
        problems = []
        try:
            os_now = pos_os.versions(sorted(os_before))
        except OSError as error:
            problems.append("the OS packages' versions cannot be read: %s" % error)
            os_now = os_before
        problems += ["OS package %s is %s, not %s" % (name, os_now.get(name), wanted)
                     for name, wanted in sorted(os_before.items()) if os_now.get(name) != wanted]
        installed = self.installed_version(True, **result)
        if installed != version:
            problems.append("app version is %s, not %s" % (installed, version))
        for name, item in pack_plan.items():
            base = terminal_path(os.path.join(PACKS_DIR, name))
            if versions.current(base) != item["version"] or \
                    not pack_intact(os.path.join(base, item["version"]), name, item["version"]):
                problems.append("pack %s is not %s intact" % (name, item["version"]))
        try:
            conn = connect_ro(terminal_path(JOURNAL))
            try:
                check = integrity(conn)
                if check != "ok":
                    problems.append("journal integrity_check: %s" % check)
                else:
                    missing = self.snap_ids - set(rows(conn))
                    if missing:
                        problems.append("the journal lacks %d sales of the snapshot" % len(missing))
            finally:
                conn.close()
        except sqlite3.Error as error:
            problems.append("journal cannot be read: %s" % error)
        if problems:
            self.fail("the restore did not verify: %s" % "; ".join(problems), changed=True, **result)


def _os_state(recorded, versions_of):
    """The os_packages part of a version state: only for a snapshot that recorded some (a release with OS
    packages), so that other states keep their shape."""
    return {"os_packages": versions_of} if recorded else {}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            run=RUN_OPTION,
            src=dict(type="str", default="/var/lib/pos/backup/snapshot.tar"),
            package_style=dict(type="str", required=True, choices=["dpkg", "bundle"]),
            restart=dict(type="bool", default=True),
            timeout=dict(type="float", default=60.0),
        ),
        supports_check_mode=True,
    )
    act_as(module.params["run"])
    Restore(module).run()


if __name__ == "__main__":
    main()
