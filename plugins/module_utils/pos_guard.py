# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The update guard: a terminal is never left out of service, or half-updated, because its control node went away.

When the control node puts a terminal in maintenance for an update it takes a *lease* on it
(M(pos_maintenance) with `lease`), and every later step renews it. The lease is a file on the
terminal's flash. The guard (`pos-update-guard`, which pos_maintenance installs from this file) is run
by the terminal's init at boot and every few seconds while a lease is on the flash; it acts only once the
lease has run out, that is once the control node has not been heard of for the lease's `ttl` seconds
(killed, cut off, or gave up waiting for a terminal that came back too late):

- nothing was changed yet (phase `quiesced`): the terminal goes back in service;
- the change had begun (phase `changing`, set by pos_backup once the snapshot is taken): the app and
  every data pack are switched back to the versions recorded with the snapshot (pos_package and
  pos_data_sync keep the previous version for exactly this), posd is restarted on them and the terminal
  goes back in service. Everything needed is checked before anything is switched; when something is
  missing nothing is switched, the terminal stays in maintenance and the lease says why (phase `stuck`):
  restoring from the backup is then the control node's job (rollback.yml).

The outcome stays in the lease file (phase `undone`, `resumed` or `stuck`) until the terminal is next put
in service by the control node, so that a control node that comes back does not carry on with an update
the terminal has undone (renew() raises LeaseLost), and so that `pos-update-guard --status` shows what
happened.

The lease is also what keeps two posfleet runs off one terminal: it names the run that holds it (`run`:
its id, who started it, from which control node). While it is live (held and not run out) another run is
refused (LeaseHeld) and leaves the terminal alone; a run that the holder's control node found dead may
take it over at once (its `supersedes`), any other only once the lease has run out. A module acts for
one run (act_as(), from its `run` option); every step checks the lease is still that run's. rollback.yml's
restore holds the terminal with an unguarded lease (phase `holding`): the guard leaves it alone, since
undoing a restore half-way is not what the terminal ran before.

Runs on terminals: standard library only, Python 3.9 or newer.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import importlib
import inspect
import json
import os
import shutil
import sys
import time

from ansible_collections.posfleet.fleet.plugins.module_utils import pos_os
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_versions as versions
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_app import app, app_version
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_archive import pack_intact
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal import (
    PACKS_DIR,
    PosdError,
    atomic_write,
    bound_by_deadline,
    deadline_passed,
    pack_versions,
    posd,
    read_json,
    restart_posd,
    stamp,
    terminal_path,
    wait_posd_ready,
)

LEASE = "/var/lib/pos/update-lease.json"
LEASE_LOCK = "/var/lib/pos/.update-lease.lock"
INSTALL_DIR = "/usr/local/lib/posfleet"
COMMAND = "/usr/local/sbin/pos-update-guard"
# The phases in which the guard watches the lease; the others are its outcomes, and `holding`.
ACTIVE = ("quiesced", "changing")
# The phases in which a run holds the terminal: while the lease has not run out, no other run may take it.
HELD = (*ACTIVE, "holding")
# How often a long step (a download) renews the lease while it runs.
HEARTBEAT_S = 30.0
# The module_utils the guard imports, installed beside it in the same package layout.
GUARD_MODULES = ("pos_terminal", "pos_archive", "pos_versions", "pos_app", "pos_os", "pos_guard")
# The package the guard's modules are installed under, as the modules import each other.
PACKAGE = "ansible_collections.posfleet.fleet.plugins.module_utils"
COMMAND_TEXT = """#!/bin/sh
# posfleet's update guard, installed by the pos_maintenance module (the code is pos_guard.py in %(lib)s).
# The terminal's init runs it at boot and every few seconds while %(lease)s exists;
# `pos-update-guard --status` prints the lease. docs/update-pipeline.md explains it.
PYTHONPATH=%(lib)s
export PYTHONPATH
exec %(python)s -m %(package)s.pos_guard "$@"
"""


class LeaseLost(Exception):
    """The guard has already acted on this terminal's update: the control node must not go on with it."""


class DeadlinePassed(LeaseLost):
    """The update's deadline (pos_maintenance's `deadline`) has passed: no step may go on with the update.

    The control node puts the terminal back (its rollback), or, when it does not answer, its update guard.
    """


class LeaseHeld(LeaseLost):
    """Another posfleet run holds the terminal: this run must leave it alone. `lease` is the other's."""

    def __init__(self, lease):
        self.lease = lease
        super().__init__(held_message(lease))


# The `run` option of every module that takes, renews or ends the lease (the action group
# posfleet.fleet.lease; the doc fragment posfleet.fleet.run documents it): the pos_run action's posfleet_run.
RUN_OPTION = dict(type="dict", options=dict(
    id=dict(type="str", required=True),
    mode=dict(type="str"),
    release=dict(type="str"),
    by=dict(type="str"),
    control_node=dict(type="str"),
    started=dict(type="str"),
    supersedes=dict(type="list", elements="str", default=[]),
))

# The run this module acts for (its `run` option; act_as()). None: a module called on its own, outside a
# run, which may take or end only a lease that names no run either.
_RUN = [None]


def act_as(run):
    """Make every lease operation of this module process check the lease is `run`'s (a dict with `id`)."""
    _RUN[0] = run or None


def _run_id(lease):
    return ((lease or {}).get("run") or {}).get("id")


def live(lease, now=None):
    """Whether `lease` holds the terminal now: a run's phase, and not run out."""
    now = time.time() if now is None else now
    return bool(lease) and lease.get("phase") in HELD and now < float(lease.get("expires", 0))


def ours(lease, run=None):
    """Whether this module's run may act on a terminal under `lease`: its own, or one it supersedes."""
    run = _RUN[0] if run is None else run
    holder = _run_id(lease)
    if not holder:
        return True     # a lease of no run (a manual pos_maintenance) belongs to whoever acts
    if not run:
        return False
    return holder == run.get("id") or holder in (run.get("supersedes") or [])


def held_message(lease):
    holder = (lease or {}).get("run") or {}
    return ("held by another posfleet run: %s (%s of %s by %s on %s, since %s); it is left alone"
            % (holder.get("id") or "?", "restore" if lease.get("phase") == "holding" else "update",
               lease.get("release") or "?", holder.get("by") or "?", holder.get("control_node") or "?",
               stamp(float(lease.get("taken", 0)))))


def summary(lease, now=None):
    """What the survey needs to know of a lease (pos_terminal_state's `lease`), or None without one."""
    if not lease:
        return None
    return {"run": lease.get("run"), "phase": lease.get("phase"), "release": lease.get("release"),
            "since": stamp(float(lease.get("taken", 0))), "expires": stamp(float(lease.get("expires", 0))),
            "live": live(lease, now), "held": held_message(lease)}


@contextlib.contextmanager
def _locked(blocking=True):
    """Hold the lease's lock; yields False (and holds nothing) when not blocking and another holds it."""
    path = terminal_path(LEASE_LOCK)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_lease():
    """The lease on the flash (a dict), or None when the terminal has none."""
    return read_json(LEASE)


def _write(lease):
    atomic_write(terminal_path(LEASE), json.dumps(lease, indent=1, sort_keys=True) + "\n", mode=0o600)


def describe(lease):
    """One sentence on what the guard did to the update the lease was for."""
    guard = lease.get("guard") or {}
    what = {"undone": "switched the terminal back to the versions it ran before the update and put it back in "
                      "service",
            "resumed": "put the terminal back in service (nothing had been changed yet)",
            "stuck": "could not undo the update and left the terminal in maintenance: %s"
                     % guard.get("reason", "no reason recorded")}.get(lease.get("phase"), "acted")
    return ("the terminal's update guard %s at %s, because the control node had not been heard of for %d s "
            "(the lease of the update to %s ran out); re-run update.yml for this terminal"
            % (what, guard.get("at", "?"), int(lease.get("ttl", 0)), lease.get("release") or "?"))


def take(ttl, release, now=None, guarded=True, deadline=0):
    """Start a lease of `ttl` seconds for this module's run (act_as) and `release`; returns it.

    `deadline` (seconds; 0: none) is how long the update's steps may take on this terminal to make its
    change: past it, no step goes on with it (DeadlinePassed) and a command a step runs is stopped (start_step).

    Raises LeaseHeld, changing nothing, when another run's lease is live and not superseded. The new
    lease records the earlier one it replaces (`previous`: the guard's outcome, or the dead run it takes
    over from). Guarded (an update), it starts in phase quiesced; unguarded (a restore), in `holding`.

    A terminal still in the middle of an earlier update's change (an earlier lease in phase `changing`,
    its control node gone, the guard not yet run) keeps that phase and what it ran before that update:
    the way back stays the way to the last whole release, and pos_backup takes it before its snapshot.
    """
    now = time.time() if now is None else now
    lease = {"phase": "quiesced" if guarded else "holding", "release": release, "ttl": float(ttl), "taken": now,
             "renewed": now, "expires": now + float(ttl), "before": None, "guard": None, "run": _RUN[0],
             "previous": None, "deadline_s": float(deadline), "spent": 0.0}
    with _locked():
        earlier = read_lease() or {}
        _refuse_if_held(earlier, now)
        if earlier and _run_id(earlier) != _run_id(lease):
            lease["previous"] = {key: earlier.get(key) for key in ("phase", "release", "run", "guard", "taken")}
        if earlier.get("phase") == "changing" and earlier.get("before"):
            lease.update(phase="changing", before=earlier["before"])
        _write(lease)
    return lease


def renew(forward=True, now=None):
    """Push the lease `ttl` seconds on; a no-op (None) when the terminal has no lease.

    A step that goes on with the update (`forward`) raises LeaseLost when the guard has already acted;
    a step that puts the terminal back (pos_restore) does not, and leaves the guard's outcome alone.
    """
    with _locked():
        return _renewed(read_lease(), forward, now)


def _renewed(lease, forward, now):
    """(Under the lock.) The lease pushed on and written; see renew(). LeaseHeld when another run's."""
    if not lease:
        return None
    if not ours(lease):
        raise LeaseHeld(lease)
    if lease.get("phase") not in HELD:
        if forward:
            raise LeaseLost(describe(lease))
        return lease
    now = time.time() if now is None else now
    if forward and lease.get("phase") in ACTIVE:
        _mind_deadline(lease, now)
    lease["renewed"] = now
    lease["expires"] = lease["renewed"] + float(lease.get("ttl", 0))
    _write(lease)
    return lease


def _mind_deadline(lease, now):
    """DeadlinePassed once the update's steps on this terminal have used up its deadline.

    Within a step (start_step in this process) the step may run until what was left of the deadline when
    it started; outside one, the steps' time so far (`spent`) decides.
    """
    budget = float(lease.get("deadline_s") or 0)
    if budget and (deadline_passed(now) if _step[0] is not None else float(lease.get("spent", 0)) >= budget):
        raise DeadlinePassed("the update's deadline ran out: its steps on this terminal have had their %d s since "
                             "the quiesce at %s (waiting for the other terminals of the batch not counted); the "
                             "update of this terminal is stopped" % (budget, stamp(float(lease.get("taken", 0)))))


# When this process's step started (start_step), or None outside a step.
_step = [None]


def start_step():
    """A step that goes on with the update starts: the lease renewed, and every command the step runs
    bounded by what is left of the update's deadline. Raises LeaseLost (the guard has acted), LeaseHeld
    (another run's) or DeadlinePassed, before the step changes anything. A no-op without a lease.

    The deadline counts the time the update's steps run on this terminal, not the time a terminal spends
    waiting for the others of its batch (a batch moves step by step with its slowest terminal): one hung
    terminal is stopped at its deadline, and the others of its batch go on. The time this step runs is
    added to the lease's `spent` when the module's process ends.
    """
    now = time.time()
    lease = renew(forward=True, now=now)
    budget = float((lease or {}).get("deadline_s") or 0)
    if budget:
        _step[0] = now
        bound_by_deadline(now + max(0.0, budget - float(lease.get("spent", 0))))
        atexit.register(_end_step)
    _last_beat[0] = now
    return lease


def _end_step():
    """(At the module's exit.) Add this step's time to the lease's `spent`; best effort."""
    started, _step[0] = _step[0], None
    if started is None:
        return
    with contextlib.suppress(OSError, ValueError), _locked():
        lease = read_lease()
        if lease and ours(lease) and lease.get("phase") in HELD:
            lease["spent"] = float(lease.get("spent", 0)) + max(0.0, time.time() - started)
            _write(lease)


@contextlib.contextmanager
def switching():
    """Hold the lease while the caller switches the terminal over (links, dpkg).

    The guard cannot act in the middle of a switch (it skips a run while the lock is held), and a switch
    does not begin once the guard has acted: LeaseLost is raised before the caller's block runs.
    """
    with _locked():
        yield _renewed(read_lease(), True, None)


def begin_change(before, now=None):
    """Record, once the snapshot is taken, what the terminal ran before the change (phase changing).

    `before` is {"package_style", "app_version", "packs": {name: version}}. A no-op without a lease.
    """
    with _locked():
        lease = read_lease()
        if lease and lease.get("phase") in ACTIVE and not lease.get("before"):
            lease.update(phase="changing", before=before)
        return _renewed(lease, True, now)


def undo_interrupted(posd_timeout=60.0):
    """Before a snapshot: switch back what an earlier, interrupted update left half-way (see take()).

    Returns what was switched ([] when the terminal runs what it ran before that update). The terminal
    stays in maintenance. Raises OSError, naming what is missing, when it cannot be switched back; then
    nothing was switched.
    """
    with _locked():
        lease = read_lease() or {}
        if not ours(lease):
            raise LeaseHeld(lease)
        if lease.get("phase") != "changing" or not lease.get("before"):
            return []
        return _switch_back(lease["before"], posd_timeout)


def end_lease():
    """The terminal is back in service on the control node's word: the lease ends. True if there was one.

    Raises LeaseHeld, ending nothing, when the lease is another run's and still live.
    """
    with _locked():
        path = terminal_path(LEASE)
        if not os.path.lexists(path):
            return False
        _refuse_if_held(read_lease())
        os.unlink(path)
        return True


def check_not_held():
    """Raise LeaseHeld when another run's live lease holds the terminal; for steps outside a lease (backup.yml)."""
    _refuse_if_held(read_lease())


def _refuse_if_held(lease, now=None):
    if live(lease, now) and not ours(lease):
        raise LeaseHeld(lease)


_last_beat = [0.0]


def heartbeat():
    """Renew the lease at most every HEARTBEAT_S seconds, and stop at the update's deadline; for loops that
    may run long (downloads): LeaseLost, LeaseHeld or DeadlinePassed."""
    now = time.time()
    if now - _last_beat[0] >= HEARTBEAT_S or deadline_passed(now):
        _last_beat[0] = now
        renew(forward=True)


# --- installing the guard ---------------------------------------------------------------------------------


def _source(name):
    module = importlib.import_module(PACKAGE + "." + name)
    loader = getattr(module, "__loader__", None)
    text = loader.get_source(module.__name__) if loader is not None and hasattr(loader, "get_source") else None
    return text if text is not None else inspect.getsource(module)


def install_files(command, text, modules, check=False, **fields):
    """Write a posfleet command and the module_utils it imports (`modules`, by name) under INSTALL_DIR, in
    PACKAGE's layout; the paths that differed (in `check`, that would be written), [] when all were current.

    `text` is the command's /bin/sh wrapper, with %(python)s, %(lib)s and %(package)s filled in here and any
    other %(name)s from `fields`. The update guard and the check-in agent (pos_checkin) share the layout.
    """
    lib = terminal_path(INSTALL_DIR)
    package = os.path.join(lib, *PACKAGE.split("."))
    files = {terminal_path(command): (text % dict(fields, lib=lib, package=PACKAGE), 0o755)}
    for name in modules:
        files[os.path.join(package, name + ".py")] = (_source(name), 0o644)
    differ = []
    for path, (content, mode) in sorted(files.items()):
        try:
            with open(path, encoding="utf-8") as handle:
                if handle.read() == content:
                    continue
        except OSError:
            pass
        differ.append(path)
        if not check:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            atomic_write(path, content, mode=mode)
    return differ


def install(python):
    """Write the guard (this file and the module_utils it imports) and its command; True when a file changed.

    `python` is the interpreter the command runs with: the one running this module on the terminal.
    """
    changed = bool(install_files(COMMAND, COMMAND_TEXT, GUARD_MODULES, python=python, lease=LEASE))
    # The layout before posfleet was a collection (lib/ansible/module_utils): nothing runs it any more.
    earlier = os.path.join(terminal_path(INSTALL_DIR), "ansible")
    if os.path.isdir(earlier):
        shutil.rmtree(earlier)
        changed = True
    return changed


# --- the guard itself -------------------------------------------------------------------------------------


def _plan_undo(before):
    """(switches, problems): the switches back to `before`, each (what, callable), or why it cannot be done."""
    switches, problems = [], []
    # The OS packages go first: their switch is the one most likely to fail half-way (maintainer scripts).
    os_before = before.get("os_packages") or {}
    if os_before:
        debs, removals, missing = pos_os.plan_back(os_before)
        problems += ["the OS packages' previous versions cannot be installed: %s" % why for why in missing]
        if (debs or removals) and not missing:
            switches.append(("OS packages", lambda: pos_os.switch_back(os_before)))
    version = before.get("app_version")
    installed = app(before.get("package_style")) if version else None
    if installed and installed.version() != version:
        problem = installed.kept_problem(version)
        if problem:
            problems.append("the app's previous version %s cannot be used: %s" % (version, problem))
        else:
            switch = ("app %s" % version, lambda: installed.switch_back(version))
            # Switches that can fail half-way (the OS packages', a dpkg app's) go before the packs', so that
            # nothing else is switched if one does.
            switches.append(switch)
    for name, pack_version in sorted((before.get("packs") or {}).items()):
        if not pack_version:
            continue
        base = terminal_path(os.path.join(PACKS_DIR, name))
        if versions.current(base) == pack_version:
            continue
        if pack_intact(os.path.join(base, pack_version), name, pack_version):
            switches.append(("pack %s %s" % (name, pack_version),
                             lambda b=base, v=pack_version: versions.switch(b, v)))
        else:
            problems.append("the %s pack's previous version %s is missing or damaged" % (name, pack_version))
    return switches, problems


def _switch_back(before, posd_timeout):
    """Switch the app and packs back to `before` and restart posd on them; what was switched.

    Raises OSError when something needed is missing (nothing switched) or a switch fails (the message
    says what was switched before it).
    """
    switches, problems = _plan_undo(before)
    if problems:
        raise OSError("; ".join(problems) + "; nothing was switched: restore it with rollback.yml")
    done = []
    try:
        for what, switch in switches:
            switch()
            done.append(what)
        if done:
            restart_posd(posd_timeout)
        else:
            wait_posd_ready(posd_timeout)
    except (OSError, PosdError) as error:
        raise OSError("%s (switched back: %s)" % (error, ", ".join(done) or "nothing")) from error
    return done


def _undo(before, posd_timeout):
    try:
        done = _switch_back(before, posd_timeout)
        posd("maintenance_leave")
    except (OSError, PosdError) as error:
        return "stuck", str(error), []
    wrong = []
    try:
        if before.get("app_version") and app_version(before.get("package_style")) != before["app_version"]:
            wrong.append("app")
    except OSError as error:    # dpkg-query stopped past its timeout: what runs cannot be told
        return "stuck", "switched back, but the app's version cannot be read: %s" % error, done
    try:
        os_now = pos_os.versions(sorted(before.get("os_packages") or {}))
    except OSError as error:
        return "stuck", "switched back, but the OS packages' versions cannot be read: %s" % error, done
    wrong += ["OS package %s" % name for name, version in (before.get("os_packages") or {}).items()
              if os_now.get(name) != version]
    wrong += [name for name, version in pack_versions().items()
              if version and (before.get("packs") or {}).get(name) not in (None, version)]
    if wrong:
        return "stuck", "switched back, but %s still differ from before the update" % ", ".join(wrong), done
    return "undone", "", done


def check(now=None, posd_timeout=60.0):
    """One run of the guard: what it did, as a dict with `action` none, busy, waiting, resumed, undone or stuck."""
    with _locked(blocking=False) as got:
        if not got:
            return {"action": "busy"}
        lease = read_lease()
        if not lease or lease.get("phase") not in ACTIVE:
            return {"action": "none"}
        now = time.time() if now is None else now
        if now < float(lease.get("expires", 0)):
            return {"action": "waiting", "expires": stamp(float(lease["expires"]))}
        if lease["phase"] == "quiesced" or not lease.get("before"):
            try:
                wait_posd_ready(posd_timeout)
                posd("maintenance_leave")
                phase, reason, done = "resumed", "", []
            except PosdError as error:
                phase, reason, done = "stuck", str(error), []
        else:
            phase, reason, done = _undo(lease["before"], posd_timeout)
        lease.update(phase=phase, guard={"at": stamp(time.time()), "reason": reason, "switched": done,
                                         "silent_s": round(now - float(lease.get("renewed", now)))})
        _write(lease)
        return {"action": phase, "release": lease.get("release"), "reason": reason, "switched": done,
                "message": describe(lease)}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="pos-update-guard",
                                     description="End an update whose control node has gone away (posfleet).")
    parser.add_argument("--status", action="store_true", help="print the lease and change nothing")
    args = parser.parse_args(argv)
    # A timer or an init may start it with a bare PATH; dpkg calls ldconfig and friends from the sbin dirs.
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join(path + [d for d in ("/usr/local/sbin", "/usr/sbin", "/sbin") if d not in path])
    if args.status:
        print(json.dumps(read_lease(), indent=1, sort_keys=True))
        return 0
    result = check()
    if result["action"] not in ("none", "busy", "waiting"):
        print(json.dumps(dict(result, at=stamp(time.time())), sort_keys=True), flush=True)
    return 1 if result["action"] == "stuck" else 0


if __name__ == "__main__":
    sys.exit(main())
