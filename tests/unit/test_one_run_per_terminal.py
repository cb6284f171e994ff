"""One posfleet run per terminal: the terminal's lease names the run that holds it (module_utils/pos_guard.py).

The modules run for real on a terminal in tmp_path, each for a run (their `run` option, which the playbooks
give through module_defaults); a second run finds the terminal held and leaves it alone. The control node's
side (the runs directory and pos_run) is at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from ansible_collections.posfleet.fleet.plugins.plugin_utils import posfleet_runs as runs
from conftest import ansible_module_result
from test_update_guard import COMMAND, guard, lease, run_out

RUN_A = {"id": "20261203T010000Z-update-aaaa", "by": "alice", "control_node": "cn-east", "mode": "update",
         "release": "2026.12.0", "started": "2026-12-03T01:00:00Z"}
RUN_B = {"id": "20261203T010002Z-update-bbbb", "by": "bob (AWX job 77)", "control_node": "cn-west",
         "mode": "update", "release": "2026.12.0", "started": "2026-12-03T01:00:02Z"}


def quiesce(run_module, terminal, run, **extra):
    args = {"state": "maintenance", "lease": 600, "release": "2026.12.0", "run": run}
    return run_module("pos_maintenance", dict(args, **extra), terminal.root)


def ready_check(terminal):
    status = terminal.status()
    return {"package_style": "bundle", "release": {"app_version": "9.9.9", "packs": status["packs"]},
            "model_profile": {"battery": False}, "entry": {"storage_mb": 0}}


def test_a_terminal_held_by_one_run_is_left_alone_by_another(make_terminal, run_module):
    terminal = make_terminal(style="bundle")
    first = quiesce(run_module, terminal, RUN_A)
    assert first["changed"] and first["lease"]["run"]["id"] == RUN_A["id"], first

    second = quiesce(run_module, terminal, RUN_B)
    assert second["failed"] and second["held"], second
    assert second["msg"].startswith("held by another posfleet run: " + RUN_A["id"]), second["msg"]
    assert "by alice on cn-east" in second["msg"]
    # Nothing of the first run's was touched: its lease, and the terminal out of service.
    assert lease(terminal)["run"]["id"] == RUN_A["id"]

    put_back = run_module("pos_maintenance", {"state": "selling", "run": RUN_B}, terminal.root)
    assert put_back["failed"] and put_back["held"], put_back
    assert terminal.status()["maintenance"] is True, "the other run's terminal stayed out of service"

    # A module called outside any run may not end a run's lease either.
    manual = run_module("pos_maintenance", {"state": "selling"}, terminal.root)
    assert manual["failed"] and manual["held"]

    # The holder itself goes on and ends it.
    done = run_module("pos_maintenance", {"state": "selling", "run": RUN_A}, terminal.root)
    assert done["changed"] and lease(terminal) is None and terminal.status()["maintenance"] is False


def test_with_the_update_s_ready_check_a_held_terminal_is_a_verdict_not_a_failure(make_terminal, run_module):
    terminal = make_terminal(style="bundle")
    quiesce(run_module, terminal, RUN_A)

    second = quiesce(run_module, terminal, RUN_B, ready_check=ready_check(terminal))

    assert not second.get("failed") and not second["changed"], second
    assert second["verdict"]["status"] == "deferred" and second["verdict"]["by"] == "held", second["verdict"]
    assert RUN_A["id"] in second["verdict"]["reason"]
    # The survey's view of the same terminal: the lease is in pos_terminal.
    seen = second["ansible_facts"]["pos_terminal"]["lease"]
    assert seen["live"] and seen["run"]["id"] == RUN_A["id"]


def test_every_step_of_a_run_refuses_a_terminal_another_run_took_over(make_terminal, run_module):
    terminal = make_terminal(style="bundle")
    quiesce(run_module, terminal, RUN_A)
    # Run B's control node found run A dead (its process gone): B supersedes it and takes the terminal over.
    taken = quiesce(run_module, terminal, dict(RUN_B, supersedes=[RUN_A["id"]]))
    assert taken["changed"] and taken["lease"]["run"]["id"] == RUN_B["id"], taken
    assert taken["earlier_lease"]["run"]["id"] == RUN_A["id"] and taken["earlier_lease"]["phase"] == "quiesced"

    # Run A was alive after all: none of its steps may act any more.
    backup = run_module("pos_backup", {"package_style": "bundle", "run": RUN_A}, terminal.root)
    assert backup["failed"] and RUN_B["id"] in backup["msg"] and backup.get("held"), backup
    status = terminal.status()
    verify = run_module("pos_verify", {"release": {"app_version": status["app_version"], "packs": status["packs"]},
                                       "package_style": "bundle", "leave_maintenance": True, "run": RUN_A},
                        terminal.root)
    assert verify["failed"] and RUN_B["id"] in verify["msg"], verify
    ready = run_module("pos_maintenance", {"state": "ready", "timeout": 5, "run": RUN_A}, terminal.root)
    assert ready["failed"] and ready["held"], ready
    assert lease(terminal)["run"]["id"] == RUN_B["id"]


def test_a_lease_that_ran_out_is_taken_over_and_a_backup_waits_for_a_held_terminal(make_terminal, run_module):
    terminal = make_terminal(style="bundle")
    quiesce(run_module, terminal, RUN_A)

    refused = run_module("pos_backup", {"package_style": "bundle", "run": RUN_B}, terminal.root)
    assert refused["failed"] and refused["msg"].startswith("no backup was taken: held by another posfleet run")
    assert lease(terminal)["run"]["id"] == RUN_A["id"] and lease(terminal)["phase"] == "quiesced"

    run_out(terminal)
    taken = quiesce(run_module, terminal, RUN_B)
    assert taken["changed"] and lease(terminal)["run"]["id"] == RUN_B["id"], taken


def test_a_restore_s_lease_holds_the_terminal_but_the_guard_leaves_it_alone(make_terminal, run_module):
    terminal = make_terminal(style="bundle")
    held = quiesce(run_module, terminal, RUN_A, guard=False)
    assert held["lease"]["phase"] == "holding" and not held["guard_installed"], held
    assert quiesce(run_module, terminal, RUN_B)["held"]

    # Installed by an earlier update: the guard must not act on a restore's lease even once it runs out.
    quiesce(run_module, terminal, RUN_A)
    run_module("pos_maintenance", {"state": "selling", "run": RUN_A}, terminal.root)
    quiesce(run_module, terminal, RUN_A, guard=False)
    assert terminal.path(COMMAND).exists()
    run_out(terminal)
    assert guard(terminal) is None
    assert terminal.status()["maintenance"] is True and lease(terminal)["phase"] == "holding"


def test_the_guard_s_outcome_is_returned_when_the_next_run_takes_the_terminal(make_terminal, run_module):
    terminal = make_terminal(style="bundle")
    quiesce(run_module, terminal, RUN_A)
    run_out(terminal)
    assert guard(terminal)["action"] == "resumed"

    taken = quiesce(run_module, terminal, RUN_B)
    assert taken["earlier_lease"]["phase"] == "resumed", taken
    assert taken["earlier_lease"]["run"]["id"] == RUN_A["id"] and taken["earlier_lease"]["guard"]["at"]


# --- the control node's runs directory -----------------------------------------------------------------


def test_a_run_whose_process_is_gone_is_dead_and_a_live_one_is_going(tmp_path):
    directory = str(tmp_path / "runs")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead = runs.new_run("update", "2026.12.0", user="alice", pid=int(gone.stdout))
    alive = runs.new_run("update", "2026.12.0", user="bob", pid=os.getpid())
    elsewhere = dict(runs.new_run("rollback", None, user="carol", pid=1), control_node="another-node")
    for run in (dead, alive, elsewhere):
        runs.register(directory, run)

    found = {run["id"]: run["alive"] for run in runs.others(directory)}
    assert found == {dead["id"]: False, alive["id"]: True, elsewhere["id"]: None}
    assert "cannot tell" in runs.describe(dict(elsewhere, alive=None))

    assert runs.finish(directory, alive["id"]) and not runs.finish(directory, alive["id"])
    assert alive["id"] not in {run["id"] for run in runs.others(directory)}


def test_a_pid_reused_by_another_process_does_not_keep_a_dead_run_alive(tmp_path):
    run = dict(runs.new_run("update", "2026.12.0", pid=os.getpid()), pid_start="1")
    runs.register(str(tmp_path), run)
    assert [other["alive"] for other in runs.others(str(tmp_path))] == [False]


def write_run(directory, run):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, run["id"] + ".json"), "w", encoding="utf-8") as handle:
        json.dump(run, handle)


def test_pos_run_stops_a_run_while_another_is_going_and_shares_when_told(tmp_path):
    directory = tmp_path / "runs"
    # A run of this control node whose process is alive: this test's own.
    other = runs.new_run("update", "2026.12.0", user="alice", pid=os.getpid())
    write_run(str(directory), other)
    args = {"state": "started", "runs_dir": str(directory), "mode": "update", "release": "2026.12.0"}

    stopped = ansible_module_result(tmp_path, "posfleet.fleet.pos_run", args)
    assert stopped["failed"], stopped
    assert stopped["msg"].startswith("another posfleet run is going, so this one stops before touching any "
                                     f"terminal: run {other['id']}: update of 2026.12.0 by alice"), stopped["msg"]
    assert sorted(os.listdir(directory)) == [other["id"] + ".json"], "a stopped run leaves no file"

    shared = ansible_module_result(tmp_path, "posfleet.fleet.pos_run", dict(args, others="share"))
    assert not shared["changed"] and not shared.get("failed"), shared
    assert any(other["id"] in warning for warning in shared["warnings"])
    mine = shared["ansible_facts"]["posfleet_run"]
    assert mine["id"] == shared["run"]["id"] and shared["runs_file"] == str(directory / f"{mine['id']}.json")
    # The command that ran it has ended: the report callback removed its file, as at the end of any playbook
    # that stops before its settle play; the other run's file stays.
    assert sorted(os.listdir(directory)) == [other["id"] + ".json"]

    write_run(str(directory), dict(mine))
    finished = ansible_module_result(tmp_path, "posfleet.fleet.pos_run",
                                     {"state": "finished", "runs_dir": str(directory), "run": mine})
    assert finished["removed"] and not (directory / f"{mine['id']}.json").exists()


def test_pos_run_supersedes_a_dead_run_and_changes_nothing_in_check_mode(tmp_path):
    directory = tmp_path / "runs"
    dead = dict(runs.new_run("update", "2026.12.0", pid=os.getpid()), pid_start="1")
    write_run(str(directory), dead)
    args = {"state": "started", "runs_dir": str(directory), "mode": "update", "release": "2026.12.0"}

    checked = ansible_module_result(tmp_path, "posfleet.fleet.pos_run", args, check=True)
    assert not checked["changed"] and checked["run"]["supersedes"] == [dead["id"]], checked
    assert sorted(os.listdir(directory)) == [dead["id"] + ".json"]

    started = ansible_module_result(tmp_path, "posfleet.fleet.pos_run", args)
    assert not started.get("failed") and started["run"]["supersedes"] == [dead["id"]], started


@pytest.mark.parametrize("age_h, kept", [(1, True), (30, False)])
def test_a_dead_run_s_file_is_kept_a_day_for_later_runs_then_forgotten(tmp_path, age_h, kept):
    then = time.time() - age_h * 3600
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(then))
    dead = dict(runs.new_run("update", "2026.12.0", pid=os.getpid()), pid_start="1", started=started)
    write_run(str(tmp_path), dead)
    assert bool(runs.others(str(tmp_path))) is kept
    assert (tmp_path / f"{dead['id']}.json").exists() is kept


def test_a_run_s_outcome_tally_is_not_taken_for_a_run_and_goes_with_the_run_s_file(tmp_path):
    directory = str(tmp_path)
    run = runs.new_run("update", "2026.12.0", pid=os.getpid())
    path = runs.register(directory, run)
    tally = runs.outcomes_file(directory, run["id"])
    for name in (tally, tally + ".lock"):
        with open(name, "w", encoding="utf-8") as handle:
            handle.write('{"KST00001": "updated"}\n')
    assert [other["id"] for other in runs.others(directory)] == [run["id"]], "the tally is not read as a run"
    assert runs.forget(path)
    assert os.listdir(directory) == [], "the run's file, its tally and the tally's lock are gone"
