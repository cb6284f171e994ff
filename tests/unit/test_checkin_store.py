"""The auto update's check-in store (posfleet/checkin.py) on real SQLite files: replays, dedupe, the queue,
backoff and held terminals, lost jobs, and two processes starting jobs at once."""

import datetime
import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from posfleet import checkin, statuses
from posfleet.checkin import CheckinStore, CheckinStoreError

T0 = datetime.datetime(2026, 3, 2, 1, 0, tzinfo=datetime.timezone.utc)


def at(seconds):
    return T0 + datetime.timedelta(seconds=seconds)


def stamp(seconds):
    return at(seconds).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def store(tmp_path):
    return CheckinStore(tmp_path / "state" / "checkin.db", max_running=2, max_failures=3, backoff_s=300,
                        backoff_max_s=1000, job_timeout_s=3600)


def enqueue(store, serial, now=T0, release="2026.03"):
    return store.decide(serial, wants_update=True, may_now=True, now=now, release=release)


def states(store, now=T0):
    return {row["serial"]: row["state"] for row in store.status(now)}


def test_the_store_is_private_and_versioned(tmp_path):
    path = tmp_path / "state" / "checkin.db"
    CheckinStore(path)
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == checkin.SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    CheckinStore(path)  # opening it again migrates nothing and loses nothing


def test_a_store_that_is_not_sqlite_or_is_newer_is_refused_with_its_path(tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all, just text" * 100)
    with pytest.raises(CheckinStoreError, match=rf"{re.escape(str(garbage))}.*move it aside"):
        CheckinStore(garbage)
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute(f"PRAGMA user_version = {checkin.SCHEMA_VERSION + 1}")
    with pytest.raises(CheckinStoreError, match=rf"{re.escape(str(newer))}.*upgrade posfleet"):
        CheckinStore(newer)


def test_a_replayed_nonce_is_refused_and_old_nonces_are_forgotten(store):
    assert store.remember_nonce("T1", "n1", at(0), at(0))
    assert not store.remember_nonce("T1", "n1", at(0), at(5))
    assert store.remember_nonce("T2", "n1", at(0), at(5)), "a nonce is per terminal"
    assert not store.remember_nonce("T2", "n1", stamp(0), at(6)), "sent_at as the protocol's text"
    assert not store.remember_nonce("T1", "n1", at(0), at(599)), "still inside the window"
    # Past the window both the nonce's sent_at and first sighting are old: forgotten (the protocol's skew
    # check refuses such a message before it reaches the store).
    assert store.remember_nonce("T1", "n2", at(700), at(700))
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT serial, nonce FROM nonces ORDER BY serial, nonce").fetchall() == [("T1", "n2")]


def test_a_checkin_is_recorded_for_the_status_view(store):
    message = {"serial": "T1", "app_version": "1.0.0", "packs": {"params": "2026.01.0"}, "boot_id": "b-1"}
    store.record_checkin("T1", message, "10.0.0.7", at(0))
    store.record_checkin("T1", dict(message, boot_id="b-2"), "10.0.0.8", at(60))
    (row,) = store.status(at(60))
    assert row["serial"] == "T1" and row["state"] == checkin.IDLE
    assert row["last_checkin"] == stamp(60) and row["checkins"] == 2
    assert (row["app_version"], row["packs"], row["boot_id"], row["remote"]) == (
        "1.0.0", {"params": "2026.01.0"}, "b-2", "10.0.0.8")


def test_refusals_are_kept_newest_first_and_pruned_by_age(store, monkeypatch):
    store.record_refusal(None, "10.0.0.9", "bad_signature", "signature does not verify", at(0))
    store.record_refusal("T1", "10.0.0.7", "replay", "nonce n1 seen before", at(10))
    assert [(r["serial"], r["reason"]) for r in store.refusals()] == [("T1", "replay"), (None, "bad_signature")]
    store.record_refusal("T2", "10.0.0.8", "skew", "sent_at 1 h off", at(31 * 86400))
    assert [r["serial"] for r in store.refusals()] == ["T2"]
    monkeypatch.setattr(checkin, "REFUSALS_KEEP", 3)
    for number in range(5):
        store.record_refusal(f"S{number}", None, "replay", "", at(31 * 86400 + number))
    assert [r["serial"] for r in store.refusals(limit=10)] == ["S4", "S3", "S2"]


def test_the_decisions_in_their_order(store):
    assert store.decide("T1", False, True, T0, release=None)[0] == checkin.NO_ASSIGNMENT
    assert store.decide("T1", False, True, T0, release="2026.03")[0] == checkin.CURRENT_RELEASE
    decision, detail = store.decide("T1", True, False, T0, release="2026.03", reason="window 01:00-05:00 closed")
    assert (decision, detail) == (checkin.NOT_NOW, "window 01:00-05:00 closed")
    assert enqueue(store, "T1")[0] == checkin.QUEUED
    assert enqueue(store, "T1")[0] == checkin.QUEUED_ALREADY
    # A queued terminal stays queued when its window closes: the run itself defers it if it must.
    assert store.decide("T1", True, False, T0, release="2026.03", reason="closed")[0] == checkin.QUEUED_ALREADY
    store.start_next(T0)
    assert enqueue(store, "T1")[0] == checkin.RUNNING_ALREADY
    assert store.decide("T1", False, True, T0, release="2026.03")[0] == checkin.CURRENT_RELEASE
    assert states(store)["T1"] == checkin.RUNNING, "a check-in never touches a running job"
    assert set(checkin.DECISIONS) == {checkin.CURRENT_RELEASE, checkin.NO_ASSIGNMENT, checkin.HELD, checkin.BACKOFF,
                                      checkin.QUEUED_ALREADY, checkin.RUNNING_ALREADY, checkin.NOT_NOW,
                                      checkin.QUEUED}


def test_a_terminal_that_no_longer_wants_the_update_leaves_the_queue(store):
    enqueue(store, "T1")
    decision, detail = store.decide("T1", False, True, at(10), release="2026.03")
    assert decision == checkin.CURRENT_RELEASE and "dropped" in detail
    assert store.start_next(at(20)) == []
    assert states(store)["T1"] == checkin.IDLE


def test_a_queued_job_takes_the_newly_assigned_release(store):
    enqueue(store, "T1", release="2026.03")
    assert enqueue(store, "T1", release="2026.04")[0] == checkin.QUEUED_ALREADY
    assert [job["release"] for job in store.start_next(T0)] == ["2026.04"]


def test_repeated_checkins_start_one_job(store):
    for second in range(20):
        enqueue(store, "T1", now=at(second))
    started = store.start_next(at(30))
    assert [job["serial"] for job in started] == ["T1"]
    for second in range(20):
        assert enqueue(store, "T1", now=at(40 + second))[0] == checkin.RUNNING_ALREADY
    assert store.start_next(at(100)) == []


def test_at_most_max_running_start_and_the_rest_follow_in_fifo_order(store):
    for number, serial in enumerate(["T1", "T2", "T3", "T4"]):
        enqueue(store, serial, now=at(number))
    first = store.start_next(at(10))
    assert [job["serial"] for job in first] == ["T1", "T2"]
    assert first[0]["enqueued_at"] == stamp(0) and first[0]["release"] == "2026.03"
    assert len({job["job_id"] for job in first}) == 2
    assert store.start_next(at(11)) == [], "no slot is free"
    store.finish("T2", statuses.UPDATED, at(20), job_id=first[1]["job_id"])
    assert [job["serial"] for job in store.start_next(at(21))] == ["T3"]
    store.finish("T1", statuses.UPDATED, at(30), job_id=first[0]["job_id"])
    assert [job["serial"] for job in store.start_next(at(31))] == ["T4"]
    assert store.summary(at(31)) == {"idle": 2, "queued": 0, "running": 2, "held": 0, "backoff": 0}


def test_a_storm_of_checkins_is_served_in_order_never_above_max_running(tmp_path):
    store = CheckinStore(tmp_path / "checkin.db", max_running=4)
    serials = [f"T{number:03d}" for number in range(200)]
    for number, serial in enumerate(serials):
        # Many check-ins share a second: the queue's order is still the order they arrived in.
        assert enqueue(store, serial, now=at(number // 10))[0] == checkin.QUEUED
    served, running, clock = [], [], 100
    while len(served) < len(serials):
        clock += 1
        started = store.start_next(at(clock))
        running += started
        served += [job["serial"] for job in started]
        assert len(running) <= 4
        assert store.summary(at(clock))["running"] == len(running)
        # Finish one or two of the oldest, so that slots free up unevenly.
        for job in running[: 1 + clock % 2]:
            store.finish(job["serial"], statuses.UPDATED, at(clock), run_id=f"run-{clock}", job_id=job["job_id"])
        running = running[1 + clock % 2:]
    assert served == serials


def test_backoff_doubles_and_is_capped(store):
    assert [checkin.backoff_delay(n, 300, 1000) for n in range(5)] == [0, 300, 600, 1000, 1000]
    assert checkin.backoff_delay(10_000, 300, 6 * 3600) == 6 * 3600
    capped = CheckinStore(store.path, max_running=2, max_failures=10, backoff_s=300, backoff_max_s=1000)
    clock = 0
    for failures, delay in ((1, 300), (2, 600), (3, 1000), (4, 1000)):
        enqueue(capped, "T1", now=at(clock))
        (job,) = capped.start_next(at(clock))
        result = capped.finish("T1", statuses.FAILED, at(clock + 5), job_id=job["job_id"])
        assert (result["failures"], result["next_try"]) == (failures, stamp(clock + 5 + delay))
        decision, detail = enqueue(capped, "T1", now=at(clock + 5 + delay - 1))
        assert decision == checkin.BACKOFF and stamp(clock + 5 + delay) in detail
        assert states(capped, at(clock + 5 + delay - 1))["T1"] == checkin.STATE_BACKOFF
        clock += 5 + delay
    assert enqueue(capped, "T1", now=at(clock))[0] == checkin.QUEUED


def test_a_success_resets_the_failures(store):
    for clock, outcome, failures in ((0, statuses.UNREACHABLE, 1), (2000, statuses.ROLLED_BACK, 2),
                                     (4000, statuses.UPDATED, 0)):
        assert enqueue(store, "T1", now=at(clock))[0] == checkin.QUEUED  # each past the previous backoff
        (job,) = store.start_next(at(clock))
        assert store.finish("T1", outcome, at(clock + 1), job_id=job["job_id"])["failures"] == failures
    (row,) = store.status(at(4001))
    assert (row["state"], row["failures"], row["next_try"], row["last_outcome"]) == (
        checkin.IDLE, 0, None, statuses.UPDATED)


def test_held_after_max_failures_until_an_operator_releases_it(store):
    assert not store.release("T1", T0, "ops"), "an unknown terminal is not held"
    clock = 0
    for _ in range(3):
        assert enqueue(store, "T1", now=at(clock))[0] == checkin.QUEUED
        (job,) = store.start_next(at(clock))
        result = store.finish("T1", statuses.FAILED, at(clock + 1), run_id="r", job_id=job["job_id"])
        clock += 2000  # past the longest backoff
    assert result["held"] and result["failures"] == 3 and result["next_try"] is None
    decision, detail = enqueue(store, "T1", now=at(clock + 100_000))
    assert decision == checkin.HELD and "operator" in detail
    assert store.summary(at(clock))["held"] == 1
    assert store.release("T1", at(clock), "ops")
    assert not store.release("T1", at(clock), "ops"), "released once"
    (row,) = store.status(at(clock))
    assert (row["state"], row["failures"], row["next_try"]) == (checkin.IDLE, 0, None)
    assert enqueue(store, "T1", now=at(clock + 1))[0] == checkin.QUEUED


def test_a_lost_job_frees_its_slot_and_counts_as_a_failure(store):
    for serial in ("T1", "T2", "T3"):
        enqueue(store, serial)
    first = store.start_next(T0)
    assert [job["serial"] for job in first] == ["T1", "T2"]
    store.finish("T2", statuses.UPDATED, at(60), job_id=first[1]["job_id"])
    (third,) = store.start_next(at(61))
    assert store.start_next(at(3599)) == [], "T1 is not past job_timeout_s yet"
    enqueue(store, "T4", now=at(3600))
    assert [job["serial"] for job in store.start_next(at(3600))] == ["T4"]
    rows = {row["serial"]: row for row in store.status(at(3600))}
    assert (rows["T1"]["state"], rows["T1"]["last_outcome"], rows["T1"]["failures"]) == (
        checkin.STATE_BACKOFF, checkin.LOST, 1)
    assert rows["T1"]["next_try"] == stamp(3900)
    # The lost job's run reports after all: it is recorded, and neither ends nor counts any job.
    late = store.finish("T1", statuses.UPDATED, at(3700), run_id="late", job_id=first[0]["job_id"])
    assert late["trigger"] == checkin.TRIGGER_EXTERNAL and late["failures"] == 1
    assert third["serial"] == "T3" and states(store, at(3700))["T3"] == checkin.RUNNING


def test_deferred_and_unfit_count_no_failure(store):
    for outcome in (statuses.DEFERRED, statuses.UNFIT, statuses.DEFERRED):
        assert enqueue(store, "T1")[0] == checkin.QUEUED
        (job,) = store.start_next(T0)
        result = store.finish("T1", outcome, at(1), job_id=job["job_id"])
        assert (result["failures"], result["next_try"], result["held"]) == (0, None, False)
    assert states(store, at(1))["T1"] == checkin.IDLE


def test_a_nightly_runs_outcome_is_recorded_but_counts_nothing(store):
    result = store.finish("T9", statuses.FAILED, T0, run_id="nightly-1")
    assert (result["trigger"], result["failures"], result["held"]) == (checkin.TRIGGER_EXTERNAL, 0, False)
    (row,) = store.status(T0)
    assert (row["state"], row["last_outcome"], row["last_run_id"]) == (checkin.IDLE, statuses.FAILED, "nightly-1")


def test_a_nightly_run_that_meets_a_running_job_does_not_end_it(store):
    enqueue(store, "T1")
    (job,) = store.start_next(T0)
    store.finish("T1", statuses.DEFERRED, at(10), run_id="nightly-1")
    assert states(store, at(10))["T1"] == checkin.RUNNING
    assert store.finish("T1", statuses.FAILED, at(20), run_id="r", job_id=job["job_id"])["failures"] == 1
    (row,) = store.status(at(20))
    assert (row["state"], row["last_trigger"], row["last_job_id"]) == (
        checkin.STATE_BACKOFF, checkin.TRIGGER_CHECKIN, job["job_id"])


def test_the_limits_the_event_source_sets_hold_for_every_process(tmp_path):
    path = tmp_path / "checkin.db"
    assert CheckinStore(path).max_failures == checkin.LIMITS["max_failures"]
    CheckinStore(path, max_running=7, max_failures=5, backoff_s=60)
    callback = CheckinStore(path)  # a finishing run opens it without limits
    assert (callback.max_running, callback.max_failures, callback.backoff_s, callback.job_timeout_s) == (
        7, 5, 60, checkin.LIMITS["job_timeout_s"])


def test_every_outcome_has_exactly_one_rule():
    rules = (checkin.SUCCESS, checkin.FAILURE, checkin.NEUTRAL)
    for outcome in checkin.FINISH_OUTCOMES:
        assert sum(outcome in rule for rule in rules) == 1, outcome


def test_wrong_arguments_are_refused(store):
    with pytest.raises(CheckinStoreError, match="'exploded' of T1"):
        store.finish("T1", "exploded", T0)
    with pytest.raises(CheckinStoreError, match="neither an aware datetime"):
        store.decide("T1", True, True, datetime.datetime(2026, 3, 2, 1, 0), release="2026.03")
    with pytest.raises(CheckinStoreError, match="max_running"):
        CheckinStore(store.path, max_running=0)


WORKER = textwrap.dedent("""
    import datetime, json, os, pathlib, sqlite3, sys, time
    from posfleet import statuses
    from posfleet.checkin import CheckinStore

    path, sync, max_running = sys.argv[1], pathlib.Path(sys.argv[2]), int(sys.argv[3])
    store = CheckinStore(path, max_running=max_running)
    now = datetime.datetime(2026, 3, 2, 1, 0, tzinfo=datetime.timezone.utc)
    # Ready, then wait for the test's go: every worker is past its imports before any starts a job.
    (sync / f"ready-{os.getpid()}").touch()
    while not (sync / "go").exists():
        time.sleep(0.001)
    started, most = [], 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        jobs = store.start_next(now)
        with sqlite3.connect(path) as conn:
            most = max(most, conn.execute("SELECT count(*) FROM jobs WHERE state = 'running'").fetchone()[0])
        # A job runs a while, and a poller pauses between polls: without either, the worker the scheduler
        # ran first took every job within its time slice, and the others found none (a test of nothing).
        time.sleep(0.005 if jobs else 0)
        for job in jobs:
            started.append(job["job_id"] + " " + job["serial"])
            store.finish(job["serial"], statuses.UPDATED, now, job_id=job["job_id"])
        if not jobs and store.summary(now)["queued"] == 0:
            break
        time.sleep(0.001)
    print(json.dumps({"started": started, "most": most}))
""")


def test_processes_starting_jobs_at_once_never_share_a_job_or_exceed_max_running(tmp_path):
    path = tmp_path / "checkin.db"
    store = CheckinStore(path, max_running=3)
    serials = [f"T{number:03d}" for number in range(60)]
    for serial in serials:
        enqueue(store, serial)
    sync = tmp_path / "sync"
    sync.mkdir()
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(path), str(sync), "3"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(6)]
    # A start time given in advance was not enough: on a loaded machine (make test runs the unit tests beside
    # the lab's) the workers' imports outlasted it, and one worker took every job before the others came.
    deadline = time.monotonic() + 120
    while len(list(sync.glob("ready-*"))) < len(workers):
        assert time.monotonic() < deadline and all(worker.poll() is None for worker in workers), \
            [worker.communicate()[1] for worker in workers if worker.poll() is not None]
        time.sleep(0.01)
    (sync / "go").touch()
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        results.append(json.loads(out))
    started = [entry for result in results for entry in result["started"]]
    assert sorted(entry.split()[1] for entry in started) == serials, "every job started exactly once"
    assert len(set(started)) == len(started)
    assert max(result["most"] for result in results) <= 3
    assert sum(bool(result["started"]) for result in results) > 1, "the workers really ran at once"
    assert store.summary(T0) == {"idle": 60, "queued": 0, "running": 0, "held": 0, "backoff": 0}
