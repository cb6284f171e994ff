# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""posfleet_report: a live progress line and reports/<run-id>/ for every rollout.

It watches the pipeline's own facts (pos_update_* per terminal, update_* for the run) as set_fact
results arrive, so it needs nothing from the playbooks beyond what they already record, and it
writes its report even when the run stops half-way (a halted rollout, a broken batch, Ctrl-C).
The audit trail is written as the run goes, not at its end: a line when a change to a terminal
starts and one when it ends, each on the disk before the run goes on, so a run killed with
kill -9 still leaves the terminals it had started and not ended.
Which fields reach a report is decided here and in posfleet.report, field by field: no module
result is ever copied whole, so no secret can ride along.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: posfleet_report
type: notification
short_description: Rollout progress on the CLI and per-run reports (JSON, CSV, HTML, retry limit, audit log)
description:
  - For every run of C(update.yml) or C(plan.yml) (and C(rollback.yml) to a release), prints a progress
    line as terminals finish (wave k of n, done of total, failed, time left) and, at the end, the
    outcome by model and region and why the rollout stopped.
  - Writes C(reports/<run-id>/) with C(report.json), C(report.csv), C(report.html) and C(retry.limit) and
    points C(reports/latest) at it.
  - Appends to the audit trail C(reports/audit.jsonl) as the run goes, each line written and synced at
    once - when a change to a terminal starts (C(update.yml), C(rollback.yml)) and when it ends, a backup
    stored (C(backup.yml)), and the update guard's switch-back found at a terminal's next contact - so a
    killed run leaves C(started) lines with no C(ended) line. See C(docs/reports.md).
  - Other playbooks (facts, verify, publish) write no report; C(bin/posfleet-release publish) logs its
    publications itself.
requirements:
  - enabled in ansible.cfg (C(callbacks_enabled = posfleet.fleet.posfleet_report))
options:
  report_dir:
    description:
      - Where the runs' report folders, C(latest) and C(audit.jsonl) go. Unset, C(reports/) in the
        current directory (an AWX job's is its project's checkout). posfleet's own C(ansible.cfg) sets
        C(reports/) beside it.
    type: path
    env:
      - name: POSFLEET_REPORT_DIR
    ini:
      - section: posfleet_report
        key: report_dir
  checkin_store:
    description:
      - The auto-update check-in store (docs/auto-update.md). When set, every update or rollback run records each
        terminal's outcome there, and a run started by a check-in ends that check-in's job (its slot, its backoff).
    type: path
    env:
      - name: POSFLEET_CHECKIN_STORE
    ini:
      - section: posfleet_report
        key: checkin_store
  console_terminals:
    description:
      - At the end of a run, the console lists at most this many terminals of each status and cause (for example
        deferred by their window) with their reasons, then counts the others; the report files list every one.
    default: 10
    type: int
    env:
      - name: POSFLEET_CONSOLE_TERMINALS
    ini:
      - section: posfleet_report
        key: console_terminals
  progress:
    description: Print the progress line.
    default: true
    type: bool
    env:
      - name: POSFLEET_PROGRESS
    ini:
      - section: posfleet_report
        key: progress
"""

import datetime
import os
import re
import sqlite3
import time

from ansible import context
from ansible.plugins.callback import CallbackBase
from ansible_collections.posfleet.fleet.plugins.plugin_utils import posfleet_runs

from posfleet import checkin as checkin_store
from posfleet import report as posreport
from posfleet import rollout
from posfleet import statuses as vocabulary

# Roles are the pipeline's steps; a report gives each terminal's seconds in each.
STEPS = {"pos_preflight": "preflight", "pos_quiesce": "quiesce", "pos_txn_upload": "txn_upload",
         "pos_backup": "backup", "pos_package": "package", "pos_data_sync": "data_sync",
         "pos_reboot": "reboot", "pos_verify": "verify", "pos_rollback": "rollback"}
# Module results whose bytes_downloaded are what the terminal received.
DOWNLOADERS = ("pos_package", "pos_data_sync")
RUN_ENDED = ("the run ended before its batch started (Ansible stops a play when every terminal of a batch "
             "fails or is unreachable)")
HOST_FACTS = ("pos_update_status", "pos_update_reason", "pos_update_deferred_by", "pos_update_before",
              "pos_update_target", "pos_update_started", "pos_update_window")
RUN_FACTS = ("update_settings", "update_plan", "update_halt", "update_targets", "update_fleet")
# The run's own record (id, by, control_node, started), set early in the run on localhost and on every
# terminal: its id names the report and every audit line.
RUN_FACT = "posfleet_run"
# rollback.yml's fact: the terminal goes on to its restore from a backup (quiesced, sales uploaded).
RESTORE_COMMITTED = "rollback_committed"
# The steps that change a terminal: a change that ended before reaching any left it as it was.
CHANGING_STEPS = ("package", "data_sync", "reboot", "verify", "rollback")
# The modes whose terminals change (not check, not plan): their changes are in the audit trail.
CHANGING_MODES = ("update", "rollback")


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _iso(moment):
    return None if moment is None else moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _short(action):
    """pos_package from pos_package or a collection-qualified name."""
    return (action or "").rsplit(".", 1)[-1]


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "posfleet_report"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.started = _now()
        self.playbook = None
        self.extra = {}
        self.hosts = {}          # serial -> {fact: value}
        self.run = {}            # update_* facts
        self.budget = None
        self.release = None
        self.unreachable = {}    # serial -> message
        self.failures = {}       # serial -> the last task failure Ansible saw
        self.task_started = {}   # (serial, task uuid) -> monotonic start
        self.steps = {}          # serial -> {step: seconds}
        self.bytes = {}          # serial -> bytes received
        self.waves_seen = {}     # wave index -> [first start, last finish]
        self.finished = {}       # serial -> seconds its update took, in the order the terminals finished
        self.models = None       # serial -> model of the planned terminals, once the first one finishes
        self.last_progress = 0.0
        self.inventory = None
        self.run_id = None       # posfleet_run's id, or one made when first needed
        self.changes = {}        # serial -> the change started and not ended yet (action, run_id, ...)
        self.restore_source = {}  # serial -> the backup rollback.yml decrypted for it
        self.control_node = None
        self.audit_failures = 0
        self.run_fact_refused = False
        self.runs_file = None    # this run's file in the runs directory (pos_run), removed at the end
        self.outcomes_file = None  # and its outcome tally, which a run in check mode has too

    # --- collecting ------------------------------------------------------------------------------

    def v2_playbook_on_start(self, playbook):
        self.playbook = os.path.basename(playbook._file_name)

    def v2_playbook_on_play_start(self, play):
        # Called for every batch too. The batch or play before is over: a change still open there ended
        # with no outcome recorded (a failure with no rescue, a terminal Ansible dropped).
        self._end_open()
        manager = play.get_variable_manager()
        if manager is not None:
            self.extra = dict(manager.extra_vars)
            self.inventory = getattr(manager, "_inventory", None)

    def v2_runner_on_start(self, host, task):
        self.task_started[(host.get_name(), task._uuid)] = time.monotonic()

    def _timed(self, result):
        serial = result._host.get_name()
        began = self.task_started.pop((serial, result._task._uuid), None)
        role = result._task._role.get_name(include_role_fqcn=False) if result._task._role else None
        if began is not None and role in STEPS:
            steps = self.steps.setdefault(serial, {})
            steps[STEPS[role]] = steps.get(STEPS[role], 0.0) + time.monotonic() - began
        return serial

    def v2_runner_on_ok(self, result):
        serial = self._timed(result)
        data = result._result
        action = _short(result._task.action)
        facts = data.get("ansible_facts") or {}
        self._run_fact(data)
        if action == "pos_run" and isinstance(data.get("runs_file"), str):
            self.runs_file = data["runs_file"]
        if action == "pos_run" and isinstance(data.get("outcomes_file"), str):
            self.outcomes_file = data["outcomes_file"]
        # Whatever task recorded them: set_fact, or an action that records its own decision with
        # set_fact's precedence (plugins/plugin_utils/posfleet_facts.py). Only the pipeline's facts are read.
        if facts and any(key in facts for key in HOST_FACTS + RUN_FACTS):
            self._facts(serial, facts, delegated=bool(result._task.delegate_facts))
        elif action == "pos_rollout_budget":
            self.budget = {key: data.get(key) for key in ("spent", "attempted", "exhausted", "untouched", "reason")}
            self.budget.update(failed=data.get("failed_terminals"), unreachable=data.get("unreachable_terminals"))
        elif action == "pos_release" and data.get("release_id"):
            self.release = data["release_id"]
        elif action in DOWNLOADERS and isinstance(data.get("bytes_downloaded"), int):
            self.bytes[serial] = self.bytes.get(serial, 0) + data["bytes_downloaded"]
        self._trail(serial, action, data, facts, delegated=bool(result._task.delegate_facts))

    def v2_runner_on_failed(self, result, ignore_errors=False):
        serial = self._timed(result)
        if not ignore_errors:
            self.failures[serial] = f"{result._task.get_name()}: {result._result.get('msg') or 'failed'}"
        lease = result._result.get("earlier_lease")
        if _short(result._task.action) == "pos_maintenance" and isinstance(lease, dict):
            self._guard(serial, lease)

    def v2_runner_on_skipped(self, result):
        self.task_started.pop((result._host.get_name(), result._task._uuid), None)

    def v2_runner_on_unreachable(self, result):
        serial = self._timed(result)
        self.unreachable[serial] = str(result._result.get("msg") or "unreachable")
        # The steps that change a terminal ignore unreachability and go on to check what the cut left
        # (docs/update-pipeline.md): only a terminal Ansible drops from the run ends here.
        if not getattr(result._task, "ignore_unreachable", False):
            self._end(serial, vocabulary.UNREACHABLE, self.unreachable[serial])
        self._progress(serial)

    def _facts(self, serial, facts, delegated):
        for key in RUN_FACTS:
            if key in facts:
                self.run[key] = facts[key]
        if isinstance(facts.get("update_fleet"), dict):
            self._deferred_without_contact(facts["update_fleet"])
        if delegated:
            return
        mine = {key: facts[key] for key in HOST_FACTS if key in facts}
        if not mine:
            return
        state = self.hosts.setdefault(serial, {})
        state.update(mine)
        status = state.get("pos_update_status")
        # The quiesce step's check found the terminal still ready and took it out of service: its change
        # starts. Any outcome recorded after that ends it.
        if (serial not in self.changes and mine.get("pos_update_started") is True and status == vocabulary.GO
                and self.run.get("update_settings") is not None and self._mode() in CHANGING_MODES):
            self._start(serial, self._mode(), "quiesce", self._release(),
                        before=state.get("pos_update_before"), after=state.get("pos_update_target"))
        elif serial in self.changes and status in vocabulary.RECORDED:
            self._end(serial, status, state.get("pos_update_reason"))
        wave = self._wave(serial)
        if mine.get("pos_update_started") and isinstance(wave, int):
            self.waves_seen.setdefault(wave, [_now(), None])
        if state.get("pos_update_started") and state.get("pos_update_status") in vocabulary.RECORDED:
            if isinstance(wave, int):
                self.waves_seen.setdefault(wave, [_now(), None])[1] = _now()
            self._progress(serial)

    def _deferred_without_contact(self, fleet):
        """The terminals pos_fleet_survey deferred by their window: no task ever runs on them."""
        windows = fleet.get("windows") or {}
        for serial, key in (fleet.get("deferred") or {}).items():
            window = windows.get(key) or {}
            self.hosts[str(serial)] = {"pos_update_status": vocabulary.DEFERRED, "pos_update_deferred_by": "window",
                                       "pos_update_reason": window.get("reason"), "pos_update_window": window}

    def _wave(self, serial):
        """The terminal's wave index from the plan's wave_of, or None (not planned into a wave)."""
        wave = ((self.run.get("update_plan") or {}).get("wave_of") or {}).get(serial)
        return wave if isinstance(wave, int) else None

    # --- the progress line -----------------------------------------------------------------------

    def _progress(self, serial):
        plan = self.run.get("update_plan") or {}
        wave_of = plan.get("wave_of") or {}
        if serial not in wave_of or serial in self.finished:
            return
        self.finished[serial] = sum(self.steps.get(serial, {}).values())
        total, done = len(wave_of), len(self.finished)
        now = time.monotonic()
        if not self.get_option("progress") or (now - self.last_progress < 1.0 and done < total):
            return
        self.last_progress = now
        outcomes = [self._status(name)[0] for name in self.finished]
        bad = sum(status in vocabulary.SPENDING for status in outcomes)
        lost = sum(status == vocabulary.UNREACHABLE for status in outcomes)
        left = ""
        if done < total:
            order = plan.get("order") or []
            if self.models is None:
                self.models = {name: variables.get("pos_model") for name, variables in
                               self._inventory_vars(order).items()}
            seconds = rollout.time_left(plan.get("batches") or [], order, self.finished,
                                        context.CLIARGS.get("forks"), self.models)
            if seconds is None:  # nothing finished took time yet: the run's own pace so far
                seconds = (_now() - self.started).total_seconds() / done * (total - done)
            left = f" · about {_duration(seconds)} left"
        self._display.display(
            f"posfleet: wave {wave_of[serial] + 1} of {len(plan.get('waves') or [])} · {done} of {total} done"
            f" · {bad} failed or rolled back · {lost} unreachable{left}", color="cyan")

    # --- the report ------------------------------------------------------------------------------

    def _status(self, serial):
        """(status, deferred_by, reason) of a terminal once the run is over."""
        state = self.hosts.get(serial, {})
        status = state.get("pos_update_status")
        reason = state.get("pos_update_reason") or ""
        if status in vocabulary.RECORDED:
            if status == vocabulary.CURRENT and not reason:
                reason = "already on the release"
            return status, state.get("pos_update_deferred_by") if status == vocabulary.DEFERRED else None, reason
        if serial in self.unreachable:
            return vocabulary.UNREACHABLE, None, self.unreachable[serial]
        if serial in self.failures:
            return vocabulary.FAILED, None, self.failures[serial]
        if state.get("pos_update_started"):
            return vocabulary.UNREACHABLE, None, "stopped answering in the middle of its update"
        if self._wave(serial) is not None:
            halt = self.run.get("update_halt")
            if halt:
                return vocabulary.DEFERRED, "budget", f"not started, the rollout stopped: {halt}"
            return vocabulary.DEFERRED, "stopped", f"not started, {RUN_ENDED}"
        return vocabulary.UNREACHABLE, None, "did not answer the survey"

    def _row(self, serial, hostvars):
        state = self.hosts.get(serial, {})
        status, deferred_by, reason = self._status(serial)
        before = state.get("pos_update_before") or None
        target = state.get("pos_update_target") or None
        after = target if status in (vocabulary.UPDATED, vocabulary.WOULD_UPDATE) else before
        window = state.get("pos_update_window") or {}
        variables = hostvars.get(serial, {})
        steps = {step: round(seconds, 3) for step, seconds in sorted(self.steps.get(serial, {}).items())}
        return {
            "serial": serial,
            "model": str(variables.get("pos_model", "?")),
            "region": str(variables.get("pos_region", "?")),
            "wave": self._wave(serial),
            "status": status, "deferred_by": deferred_by, "reason": str(reason),
            "window_opens_at": window.get("opens_at_utc") if deferred_by == "window" else None,
            "before": _versions(before), "after": _versions(after),
            "bytes_downloaded": self.bytes.get(serial, 0),
            "duration_s": round(sum(steps.values()), 3), "steps": steps,
        }

    def _mode(self):
        """plan, check, rollback or update: what the run recorded (rollout_plan.yml's update_settings)."""
        return (self.run.get("update_settings") or {}).get("mode") or "update"

    def v2_playbook_on_stats(self, stats):
        self._end_open()
        self._forget_run()
        if self.audit_failures > 1:
            self._display.error(f"posfleet_report: {self.audit_failures} writes to the audit trail failed")
        settings = self.run.get("update_settings")
        targets = self.run.get("update_targets")
        if settings is None or targets is None:
            return      # not a rollout: facts, verify, publish, a rollback from backups
        mode = self._mode()
        finished = _now()
        hostvars = self._inventory_vars(targets)
        rows = [self._row(str(serial), hostvars) for serial in sorted(targets)]
        plan = self.run.get("update_plan") or {}
        waves = []
        for index, serials in enumerate(plan.get("waves") or []):
            seen = self.waves_seen.get(index, [None, None])
            waves.append({"index": index, "name": "canary" if index == 0 else f"wave {index}",
                          "serials": list(serials), "started_at": _iso(seen[0]), "finished_at": _iso(seen[1])})
        halt = self.run.get("update_halt")
        if halt is None and mode != "plan" and any(row["deferred_by"] == "stopped" for row in rows):
            halt = RUN_ENDED
        doc = {
            "schema": "posfleet-report/1",
            "run_id": self._run_id(),
            "playbook": self.playbook, "mode": mode,
            "release": self._release(),
            "started_at": _iso(self.started), "finished_at": _iso(finished),
            "user": self._who(),
            "awx_job_id": self._awx_job(),
            "trigger": self._trigger(),
            "settings": _settings(settings),
            "waves": waves,
            "budget": self.budget if mode not in ("plan",) else None,
            "halted": halt is not None, "halt_reason": halt,
            "totals": posreport.totals(rows),
            "terminals": rows,
        }
        report_dir = self._report_dir()
        try:
            run_dir = posreport.write_run(report_dir, doc)
        except (OSError, posreport.ReportError) as exc:
            self._display.error(f"posfleet_report: could not write the report under {report_dir}: {exc}")
            return
        self._summary(doc, run_dir)
        self._record_checkin_outcomes(doc)

    def _record_checkin_outcomes(self, doc):
        """Tell the check-in store how each terminal ended: it frees a check-in's slot and decides its backoff."""
        path = self.get_option("checkin_store")
        if not path or doc["mode"] not in ("update", "rollback"):
            return
        job = doc["trigger"]["checkin_job"]
        try:
            store = checkin_store.CheckinStore(path)
            for row in doc["terminals"]:
                store.finish(row["serial"], row["status"], _now(), run_id=doc["run_id"], job_id=job)
        except (OSError, checkin_store.CheckinStoreError, sqlite3.Error) as exc:
            self._display.error(f"posfleet_report: could not record the outcomes in the check-in store {path}: {exc}")

    # --- the run ----------------------------------------------------------------------------------

    def _forget_run(self):
        """The run is over, however it ended: its file in the runs directory goes (pos_run state=finished
        removes it at the end of a rollout; a run that fails before, at its release check say, would leave
        it, and every later run would warn of it as dead for a day)."""
        try:
            if self.runs_file:
                posfleet_runs.forget(self.runs_file)
            posfleet_runs.forget_outcomes(self.outcomes_file)
        except posfleet_runs.RunsError as exc:
            self._display.warning(f"posfleet_report: {exc}; the next run will report this run as dead")

    def _report_dir(self):
        return self.get_option("report_dir") or os.path.abspath("reports")

    def _release(self):
        return self.release or self.extra.get("update_release") or self.extra.get("rollback_release")

    def _who(self):
        """Who ran it: AWX's user, or the local login; a run a check-in started says so."""
        who = str(self.extra.get("awx_user_name") or self.extra.get("tower_user_name") or posreport.local_user())
        trigger = self._trigger()
        if trigger["by"] == posreport.TRIGGER_CHECKIN:
            who += f" (auto update, check-in job {trigger['checkin_job']})"
        return who

    def _trigger(self):
        by = posreport.TRIGGER_CHECKIN if self.extra.get("update_trigger") == posreport.TRIGGER_CHECKIN \
            else posreport.TRIGGER_OPERATOR
        job = _text(self.extra.get("update_checkin_job")) if by == posreport.TRIGGER_CHECKIN else None
        return {"by": by, "checkin_job": job}

    def _awx_job(self):
        return _text(self.extra.get("awx_job_id") or self.extra.get("tower_job_id"))

    def _run_id(self):
        """The run's id: posfleet_run's once a result carried it, else one made here when first needed
        (start, mode or playbook, 4 hex digits) and kept, so the report and the trail name one run."""
        if self.run_id is None:
            kind = (self._mode() if self.run.get("update_settings") is not None
                    else re.sub(r"[^A-Za-z0-9._-]", "_", os.path.splitext(self.playbook or "run")[0]))
            self.run_id = posreport.new_run_id(self.started, kind)
        return self.run_id

    def _run_fact(self, data):
        """Take the run's id from posfleet_run, on whichever host's result it arrives: in the result's facts,
        the result itself, or a loop's results. A change already started keeps the id of its started line."""
        found = [data, data.get("ansible_facts")]
        found += [item for item in data.get("results") or () if isinstance(item, dict)]
        found += [item.get("ansible_facts") for item in found[2:]]
        for holder in found:
            record = holder.get(RUN_FACT) if isinstance(holder, dict) else None
            if not isinstance(record, dict):
                continue
            if posreport.valid_run_id(record.get("id")):
                self.run_id = record["id"]
            elif not self.run_fact_refused:
                self.run_fact_refused = True
                self._display.warning(f"posfleet_report: {RUN_FACT}.id {record.get('id')!r} cannot name a run "
                                      f"(letters, digits, '.', '_', '-'); the report uses its own id")

    # --- the audit trail ----------------------------------------------------------------------------

    def _common(self, run_id):
        """What every audit line of the run holds: the run, who, and where from."""
        if self.control_node is None:
            self.control_node = posreport.this_control_node()
        return {"run_id": run_id, "who": self._who(), "awx_job_id": self._awx_job(),
                "control_node": self.control_node}

    def _audit(self, entries):
        """Append lines to the trail now. A failure is shown once (and counted at the end), never raised:
        the run goes on, as the terminals' own journals and leases do."""
        path = os.path.join(self._report_dir(), "audit.jsonl")
        try:
            posreport.append_audit(path, entries)
        except (OSError, posreport.ReportError) as exc:
            self.audit_failures += 1
            if self.audit_failures == 1:
                self._display.error(f"posfleet_report: could not append to the audit trail {path}: {exc}")

    def _trail(self, serial, action, data, facts, delegated):
        """The audit lines of a result besides the pipeline's statuses (_facts): the guard's switch-back,
        rollback.yml's restore, a backup stored."""
        if action == "pos_maintenance" and isinstance(data.get("earlier_lease"), dict):
            self._guard(serial, data["earlier_lease"])
        elif action == "pos_backup_store" and data.get("dest") and isinstance(data.get("path"), str):
            self.restore_source[serial] = data["path"]  # the backup rollback.yml is about to restore
        elif action == "pos_restore" and serial in self.changes:
            self.changes[serial].update(restored_from=data.get("versions_before"), restored=data.get("versions_after"))
        elif action == "pos_backup":
            self._backup(serial, data)
        if not delegated and facts.get(RESTORE_COMMITTED) in (True, "True", "true"):
            source = self.restore_source.get(serial)
            self._start(serial, "restore", "rollback", _backup_label(source),
                        reason=f"from the backup {source}" if source else "from its newest backup")

    def _start(self, serial, action, step, release, before=None, after=None, reason=None):
        """The `started` line of a change: the terminal, the step it starts at, the versions it runs and
        those it is going to."""
        if serial in self.changes:
            return
        run_id = self._run_id()
        self.changes[serial] = {"action": action, "run_id": run_id, "step": step, "release": release}
        self._audit([posreport.audit_entry(self._common(run_id), action, posreport.STARTED, terminal=serial,
                                           step=step, release=release, reason=reason, before=before, after=after)])

    def _end(self, serial, status, reason):
        """The `ended` lines of the terminal's open change, if it has one: the outcome, the last step reached,
        the versions it ran before and those it runs now (null when that is not known)."""
        change = self.changes.pop(serial, None)
        if change is None:
            return
        state = self.hosts.get(serial, {})
        step = posreport.last_step(self.steps.get(serial, {})) or change["step"]
        restored = change.get("restored")
        # A restore goes from what the terminal ran when restored; an update from what it ran at its start.
        before = change.get("restored_from") if change["action"] == "restore" else state.get("pos_update_before")
        if status == vocabulary.UPDATED:
            after = state.get("pos_update_target")
        elif restored is not None:
            after = restored
        elif change["action"] != "restore" and (
                status in (vocabulary.CURRENT, vocabulary.DEFERRED) or step not in CHANGING_STEPS):
            after = before
        else:
            after = None
        self._audit(posreport.change_entries(
            self._common(change["run_id"]), change["action"], before=before, after=after, terminal=serial,
            status=status, reason=str(reason or ""), step=step, release=change["release"]))

    def _end_open(self):
        """End every open change with the outcome the run left it in."""
        for serial in list(self.changes):
            if serial in self.unreachable:
                self._end(serial, vocabulary.UNREACHABLE, self.unreachable[serial])
            elif serial in self.failures:
                self._end(serial, vocabulary.FAILED, self.failures[serial])
            else:
                action = self.changes[serial]["action"]
                self._end(serial, vocabulary.UNREACHABLE,
                          f"no outcome was recorded: the run ended or lost the terminal during its {action}")

    def _backup(self, serial, data):
        """A backup stored outside a change (backup.yml): inside one, the change's own lines cover it."""
        stored = data.get("stored")
        if not isinstance(stored, dict) or not stored.get("changed") or serial in self.changes:
            return
        path = str(stored.get("path") or "")
        self._audit([posreport.audit_entry(
            self._common(self._run_id()), "backup", posreport.ENDED, terminal=serial, step="backup",
            status="stored", reason=f"stored as {path}", release=_backup_label(path),
            before={"app_version": data.get("app_version"), "packs": data.get("packs"),
                    **({"os_packages": data["os_packages"]} if data.get("os_packages") else {})})])

    def _guard(self, serial, lease):
        """The update guard's switch-back of an earlier run's change, as pos_maintenance found it in the
        terminal's lease: one line in the name of that run, at the time the guard acted."""
        phase = lease.get("phase")
        if phase not in posreport.AUDIT_EVENTS["guard"]:
            return  # a dead run's lease taken over (quiesced, changing, holding): the guard did nothing
        guard = lease.get("guard") if isinstance(lease.get("guard"), dict) else {}
        earlier = lease.get("run") if isinstance(lease.get("run"), dict) else {}
        try:
            at = posreport.audit_time(guard["at"])
        except (KeyError, AttributeError, TypeError, ValueError):
            at = None  # ReportError is a ValueError: an unreadable time is the time it was found
        run_id = earlier.get("id") if posreport.valid_run_id(earlier.get("id")) else self._run_id()
        switched = _switched(guard.get("switched"))
        reason = "; ".join(text for text in (str(guard.get("reason") or ""),
                                             f"found at its next contact by run {self._run_id()}") if text)
        common = dict(self._common(run_id), who=posreport.GUARD, awx_job_id=_text(earlier.get("awx_job_id")))
        # The object: the components switched back, and the versions they were switched back to.
        self._audit([posreport.audit_entry(common, "guard", phase, what=",".join(switched) or posreport.TERMINAL,
                                           after=switched or None, at=at, terminal=serial, status=phase,
                                           reason=reason, release=_text(lease.get("release")))])

    def _inventory_vars(self, serials):
        """pos_model and pos_region of every target, from the inventory the play ran on."""
        found = {}
        inventory = self.inventory
        for serial in serials:
            host = inventory.get_host(serial) if inventory is not None else None
            if host is not None:
                found[serial] = host.get_vars()
        return found

    def _summary(self, doc, run_dir):
        display = self._display.display
        rows = posreport.matrix(doc["terminals"])
        shown = [status for status in posreport.STATUSES if doc["totals"].get(status)]
        header = ["model", "region", *shown]
        table = [header] + [[model, region, *(str(counts.get(status, 0)) for status in shown)]
                            for (model, region), counts in sorted(rows.items())]
        table.append(["TOTAL", "", *(str(doc["totals"][status]) for status in shown)])
        widths = [max(len(line[column]) for line in table) for column in range(len(header))]
        display("")
        display(f"posfleet: {doc['mode']} of release {doc['release']}, run {doc['run_id']}")
        for line in table:
            display("  " + "  ".join(cell.ljust(width) for cell, width in zip(line, widths)))
        if doc["halted"]:
            display(f"posfleet: the rollout STOPPED: {doc['halt_reason']}", color="red")
        for line in posreport.console_problems(doc["terminals"], self.get_option("console_terminals")):
            display(line)
        display(f"posfleet: report {os.path.join(run_dir, 'report.html')}")
        retry = [row for row in doc["terminals"]
                 if row["status"] in vocabulary.RETRY]
        if retry and doc["mode"] in ("update", "rollback"):
            display(f"posfleet: {len(retry)} terminals to retry: --limit @{os.path.join(run_dir, 'retry.limit')}")


def _versions(state):
    if not isinstance(state, dict):
        return None
    packs = state.get("packs") or {}
    versions = {"app_version": _text(state.get("app_version")),
                "packs": {str(name): _text(version) for name, version in sorted(packs.items())}}
    if isinstance(state.get("os_packages"), dict) and state["os_packages"]:
        versions["os_packages"] = {str(name): _text(version) for name, version in sorted(state["os_packages"].items())}
    return versions


def _text(value):
    return None if value is None else str(value)


def _settings(settings):
    keys = ("canary_per_model", "waves", "order", "seed", "batch_size", "max_failed", "max_failed_pct",
            "count_unreachable", "ignore_windows", "clock_utc")
    return {key: settings.get(key) for key in keys}


def _backup_label(path):
    """The release a stored backup is labelled with: <store>/<serial>/<UTC stamp>-<release>.tar.enc."""
    name = os.path.basename(path or "")
    if not name.endswith(".tar.enc") or "-" not in name:
        return None
    return name[:-len(".tar.enc")].split("-", 1)[1]


def _switched(items):
    """{component: version} of what the guard switched back, from its words (`app 4.1.0`, `pack params
    2026.11.1`, module_utils/pos_guard.py); words of another shape are kept whole, with no version."""
    found = {}
    for item in items if isinstance(items, list) else ():
        words = str(item).split()
        if len(words) == 2 and words[0] == "app":
            found["app"] = words[1]
        elif len(words) == 3 and words[0] == "pack":
            found[f"pack:{words[1]}"] = words[2]
        else:
            found[str(item)] = None
    return found


def _duration(seconds):
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
