# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runs registry on the control node: which posfleet runs are going, for the one line at a run's start.

What keeps two runs off one terminal is the terminal's lease (module_utils/pos_guard.py), taken atomically on
the terminal itself: it holds between CLI runs, AWX jobs and job slices and control nodes alike. This
registry only lets a run see, before it touches anything, that another one is going, and recognise one
that died: each run writes one small JSON file in the runs directory when it starts and removes it when it
ends. A run on this control node whose process is gone is dead, and the terminals it still holds may be
taken over at once (the lease's `supersedes`); a run of another control node cannot be checked from here,
so it counts as going until its terminals' leases run out. docs/concurrency.md explains the whole scheme.

The pos_run action is the one user of this module.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile

from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal import TIME_FORMAT

from posfleet import report as posreport

# Shared by every user of one control node (sticky, like /tmp) and kept across its reboots.
DEFAULT_DIR = "/var/tmp/posfleet/runs"
# A run file older than this is ignored and removed: a night's window is over long before.
FORGET_AFTER_S = 7 * 24 * 3600
# A dead run's file is kept this long, so that later runs too may take over the terminals it still holds
# at once; its leases have long run out by then.
DEAD_FORGET_S = 24 * 3600


class RunsError(Exception):
    """The runs directory cannot be used; the message names it and what to do."""


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _iso(instant):
    return instant.strftime(TIME_FORMAT)


def process_start(pid):
    """When process `pid` started (clock ticks since boot), or None when it is gone or cannot be told.

    With the pid, it names one process: a pid reused by another process after a run died does not
    make that run look alive.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields after it follow the last ")".
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def new_run(mode, release, user=None, awx_job_id=None, pid=None, now=None, awx_workflow_job_id=None):
    """This run's identity: the id the terminals' leases, the report and the audit trail all carry.

    The slices of one sliced AWX job are jobs of one workflow job (`awx_workflow_job_id`): siblings, not
    other runs (their terminals are disjoint anyway).
    """
    now = now or _now()
    pid = os.getppid() if pid is None else pid
    awx = str(awx_job_id) if awx_job_id else None
    by = user or posreport.local_user()
    return {
        "awx_workflow_job_id": str(awx_workflow_job_id) if awx_workflow_job_id else None,
        "id": posreport.new_run_id(now, mode),
        "mode": mode,
        "release": release,
        "by": f"{by} (AWX job {awx})" if awx else by,
        "awx_job_id": awx,
        "control_node": posreport.this_control_node(),
        "pid": pid,
        "pid_start": process_start(pid),
        "started": _iso(now),
        "supersedes": [],
    }


def _directory(runs_dir):
    try:
        if not os.path.isdir(runs_dir):
            os.makedirs(runs_dir)
            if runs_dir == DEFAULT_DIR:
                os.chmod(runs_dir, 0o1777)     # every operator's runs see each other's
    except FileExistsError:
        pass
    except OSError as exc:
        raise RunsError(f"the runs directory {runs_dir} cannot be created: {exc.strerror}; set update_runs_dir "
                        "to a directory this user can write") from None
    return runs_dir


def _path(runs_dir, run_id):
    return os.path.join(runs_dir, f"{run_id}.json")


# Beside a run's file: the outcomes of its terminals as each one ends (posfleet_facts.tally), which the error
# budget's check before each terminal reads. Not ".json": others() reads those as runs.
OUTCOMES_SUFFIX = ".outcomes"


def outcomes_file(runs_dir, run_id):
    """The path of run `run_id`'s outcome tally, {serial: status} (posfleet.rollout's budget file format)."""
    return os.path.join(runs_dir, f"{run_id}{OUTCOMES_SUFFIX}")


def is_alive(run):
    """True, False, or None when this control node cannot tell (the run is another control node's)."""
    if run.get("control_node") != posreport.this_control_node():
        return None
    started = process_start(run.get("pid"))
    if started is None:
        return False
    return run.get("pid_start") in (None, started)


def others(runs_dir, mine=None, now=None):
    """The other runs the directory knows, each with `alive` (True, False, None: cannot tell), oldest first.

    Files too old to matter, or unreadable, are skipped (the old ones removed).
    """
    now = now or _now()
    found = []
    try:
        names = sorted(os.listdir(runs_dir))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise RunsError(f"the runs directory {runs_dir} cannot be read: {exc.strerror}") from None
    for name in names:
        if not name.endswith(".json") or (mine and name == f"{mine}.json"):
            continue
        path = os.path.join(runs_dir, name)
        try:
            with open(path, encoding="utf-8") as handle:
                run = json.load(handle)
            started = datetime.datetime.strptime(run["started"], TIME_FORMAT).replace(
                tzinfo=datetime.timezone.utc)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        age, alive = (now - started).total_seconds(), is_alive(run)
        if age > FORGET_AFTER_S or (alive is False and age > DEAD_FORGET_S):
            forget(path)
            continue
        found.append(dict(run, alive=alive))
    return sorted(found, key=lambda run: (run["started"], run["id"]))


def siblings(run, other):
    """Whether `other` is a slice of the same sliced AWX job as `run`."""
    return bool(run.get("awx_workflow_job_id")) and other.get("awx_workflow_job_id") == run["awx_workflow_job_id"]


def describe(run):
    """One line on another run, for the line at this run's start."""
    state = {True: "going", False: "dead (its process is gone)",
             None: "going on another control node, or dead: this one cannot tell"}[run.get("alive")]
    return (f"run {run['id']}: {run.get('mode', 'update')} of {run.get('release') or '?'} by {run.get('by', '?')} "
            f"on {run.get('control_node', '?')}, since {run.get('started', '?')}, {state}")


def register(runs_dir, run):
    """Write this run's file (atomically); returns its path."""
    directory = _directory(runs_dir)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".run-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(run, handle, indent=1, sort_keys=True)
            handle.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, _path(directory, run["id"]))
    except OSError as exc:
        _remove(tmp)
        raise RunsError(f"cannot write this run's file in {runs_dir}: {exc.strerror}") from None
    return _path(directory, run["id"])


def finish(runs_dir, run_id):
    """Remove this run's file; True when it was there."""
    return forget(_path(runs_dir, run_id))


def forget(path):
    """Remove a run's file by its path (pos_run's `runs_file`), and its outcome tally; True when the run's file
    was there. RunsError otherwise."""
    forget_outcomes(path[:-len(".json")] + OUTCOMES_SUFFIX if path.endswith(".json") else None)
    return _remove(path)


def forget_outcomes(path):
    """Remove a run's outcome tally and its lock file (a run in check mode has a tally but no run file)."""
    if path:
        _remove(path)
        _remove(path + ".lock")


def _remove(path):
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise RunsError(f"cannot remove {path}: {exc.strerror}") from None
