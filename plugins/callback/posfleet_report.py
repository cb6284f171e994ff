# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""posfleet_report: a live progress line and reports/<run-id>/ for every rollout.

It watches the pipeline's own facts (pos_update_* per terminal, update_* for the run) as set_fact
results arrive, so it needs nothing from the playbooks beyond what they already record, and it
writes its report even when the run stops half-way (a halted rollout, a broken batch, Ctrl-C).
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
  - Writes C(reports/<run-id>/) with C(report.json), C(report.csv), C(report.html) and C(retry.limit),
    points C(reports/latest) at it, and appends one JSON line per change to C(reports/audit.jsonl).
    See C(docs/reports.md).
  - Other playbooks (facts, verify, publish) write no report.
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
import getpass
import os
import secrets
import time

from ansible.plugins.callback import CallbackBase

from posfleet import report as posreport
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
RUN_FACTS = ("update_settings", "update_plan", "update_halt", "update_targets")


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
        self.finished = set()
        self.last_progress = 0.0
        self.inventory = None

    # --- collecting ------------------------------------------------------------------------------

    def v2_playbook_on_start(self, playbook):
        self.playbook = os.path.basename(playbook._file_name)

    def v2_playbook_on_play_start(self, play):
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

    def v2_runner_on_failed(self, result, ignore_errors=False):
        serial = self._timed(result)
        if not ignore_errors:
            self.failures[serial] = f"{result._task.get_name()}: {result._result.get('msg') or 'failed'}"

    def v2_runner_on_skipped(self, result):
        self.task_started.pop((result._host.get_name(), result._task._uuid), None)

    def v2_runner_on_unreachable(self, result):
        serial = self._timed(result)
        self.unreachable[serial] = str(result._result.get("msg") or "unreachable")
        self._progress(serial)

    def _facts(self, serial, facts, delegated):
        for key in RUN_FACTS:
            if key in facts:
                self.run[key] = facts[key]
        if delegated:
            return
        mine = {key: facts[key] for key in HOST_FACTS if key in facts}
        if not mine:
            return
        state = self.hosts.setdefault(serial, {})
        state.update(mine)
        wave = self._wave(serial)
        if mine.get("pos_update_started") and isinstance(wave, int):
            self.waves_seen.setdefault(wave, [_now(), None])
        if state.get("pos_update_started") and state.get("pos_update_status") in vocabulary.RECORDED:
            if isinstance(wave, int):
                self.waves_seen.setdefault(wave, [_now(), None])[1] = _now()
            self._progress(serial)

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
        self.finished.add(serial)
        total, done = len(wave_of), len(self.finished)
        now = time.monotonic()
        if not self.get_option("progress") or (now - self.last_progress < 1.0 and done < total):
            return
        self.last_progress = now
        outcomes = [self._status(name)[0] for name in self.finished]
        bad = sum(status in vocabulary.SPENDING for status in outcomes)
        lost = sum(status == vocabulary.UNREACHABLE for status in outcomes)
        elapsed = (_now() - self.started).total_seconds()
        left = "" if done == total else f" · about {_duration(elapsed / done * (total - done))} left"
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
            "run_id": f"{self.started:%Y%m%dT%H%M%SZ}-{mode}-{secrets.token_hex(2)}",
            "playbook": self.playbook, "mode": mode,
            "release": self.release or self.extra.get("update_release") or self.extra.get("rollback_release"),
            "started_at": _iso(self.started), "finished_at": _iso(finished),
            "user": str(self.extra.get("awx_user_name") or self.extra.get("tower_user_name") or _user()),
            "awx_job_id": _text(self.extra.get("awx_job_id") or self.extra.get("tower_job_id")),
            "settings": _settings(settings),
            "waves": waves,
            "budget": self.budget if mode not in ("plan",) else None,
            "halted": halt is not None, "halt_reason": halt,
            "totals": posreport.totals(rows),
            "terminals": rows,
        }
        report_dir = self.get_option("report_dir") or os.path.abspath("reports")
        try:
            run_dir = posreport.write_run(report_dir, doc)
            if mode in ("update", "rollback"):
                posreport.append_audit(os.path.join(report_dir, "audit.jsonl"),
                                       posreport.audit_entries(doc, doc["user"], doc["finished_at"]))
        except (OSError, posreport.ReportError) as exc:
            self._display.error(f"posfleet_report: could not write the report under {report_dir}: {exc}")
            return
        self._summary(doc, run_dir)

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
        for row in doc["terminals"]:
            if row["status"] not in vocabulary.AT_RELEASE:
                display(f"  {row['serial']} {row['status']}: {row['reason']}")
        display(f"posfleet: report {os.path.join(run_dir, 'report.html')}")
        retry = [row for row in doc["terminals"]
                 if row["status"] in vocabulary.RETRY]
        if retry and doc["mode"] in ("update", "rollback"):
            display(f"posfleet: {len(retry)} terminals to retry: --limit @{os.path.join(run_dir, 'retry.limit')}")


def _versions(state):
    if not isinstance(state, dict):
        return None
    packs = state.get("packs") or {}
    return {"app_version": _text(state.get("app_version")),
            "packs": {str(name): _text(version) for name, version in sorted(packs.items())}}


def _text(value):
    return None if value is None else str(value)


def _settings(settings):
    keys = ("canary_per_model", "waves", "order", "seed", "batch_size", "max_failed", "max_failed_pct",
            "count_unreachable", "ignore_windows", "clock_utc")
    return {key: settings.get(key) for key in keys}


def _user():
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _duration(seconds):
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
