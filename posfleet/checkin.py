"""Auto update on the control node: the check-in store and its admission rules (issue 15).

A terminal that comes online sends a signed check-in to the ansible-rulebook event source. Once the
signature holds, the source asks this store what to do (`decide`), starts the jobs the store lets start
(`start_next`), and each run's report callback hands back the terminal's outcome (`finish`). The store is
one SQLite file shared by the event source and every finishing run, so every write is one
`BEGIN IMMEDIATE` transaction: the read that decides and the write that follows cannot interleave with
another process's.

The caller owns two rules this store does not: whether the terminal wants an update (its assigned
release against what it reports) and whether it may be updated now (its maintenance window). It passes
both in. The clock is passed in too, never read, so that tests choose the time.

Times go in as aware datetimes (or "YYYY-MM-DDTHH:MM:SSZ" text, the check-in protocol's sent_at) and are
stored as such text, which sorts as time, to the second. Standard library only.
"""

import contextlib
import datetime
import json
import os
import sqlite3
import uuid

from posfleet import collection, report, statuses

UTC = datetime.timezone.utc
TIME_FORMAT = collection.module_utils("pos_terminal").TIME_FORMAT

# --- what decide() answers --------------------------------------------------------------------------

CURRENT_RELEASE = "current"          # runs its assigned release: nothing to do
NO_ASSIGNMENT = "unassigned"         # no release is assigned to it: nothing to do
HELD = "held"                        # failed max_failures times in a row: waits for an operator (release())
BACKOFF = "backoff"                  # failed recently: the detail says when the next try may start
QUEUED_ALREADY = "already_queued"    # a job for it waits in the queue: this check-in adds nothing
RUNNING_ALREADY = "already_running"  # its update runs now: this check-in starts nothing
NOT_NOW = "not_now"                  # outside the hours it may be updated: the detail is the caller's reason
QUEUED = "queued"                    # a job for it joined the queue

DECISIONS = (CURRENT_RELEASE, NO_ASSIGNMENT, HELD, BACKOFF, QUEUED_ALREADY, RUNNING_ALREADY, NOT_NOW, QUEUED)

# What the dispatcher (posfleet.autoupdate) answers before these rules apply; note() records them.
IN_RUN = "in_run"                    # a posfleet run holds the terminal (its lease): this check-in starts nothing
NOT_IN_INVENTORY = "not_in_inventory"  # a key but no inventory entry (retired): nothing to do
UNDECIDED = "error"                  # the inventory or the release could not be read: the detail says why
NOTED = (IN_RUN, NOT_IN_INVENTORY, UNDECIDED)

# --- a terminal's state in status() -------------------------------------------------------------------

IDLE, STATE_QUEUED, RUNNING, STATE_HELD, STATE_BACKOFF = "idle", "queued", "running", "held", "backoff"
STATES = (IDLE, STATE_QUEUED, RUNNING, STATE_HELD, STATE_BACKOFF)

# --- what finish() does with an outcome ---------------------------------------------------------------

# A job that ran longer than job_timeout_s: its run died without reporting, or never reported this terminal.
LOST = "lost"
SUCCESS = statuses.AT_RELEASE
FAILURE = (*statuses.SPENDING, statuses.UNREACHABLE, LOST)
# Left untouched on purpose (window, readiness, budget, flash): the next check-in decides again.
NEUTRAL = (statuses.DEFERRED, statuses.UNFIT)
FINISH_OUTCOMES = (*statuses.OUTCOMES, LOST)

# Where a recorded outcome came from: a job this store started, or any other run (the nightly one).
TRIGGER_CHECKIN = report.TRIGGER_CHECKIN   # the report's word for a run a check-in started
TRIGGER_EXTERNAL = "external"

# --- the file ----------------------------------------------------------------------------------------

SCHEMA_VERSION = 1
# The admission limits and their defaults. The event source sets them; every other process (a finishing
# run's callback) opens the store without them and uses the ones stored, so all apply the same rules.
LIMITS = {"max_running": 4, "max_failures": 3, "backoff_s": 300, "backoff_max_s": 6 * 3600, "job_timeout_s": 3600}
BUSY_TIMEOUT_MS = 10_000
NONCE_WINDOW_S = 600          # 2 * MAX_SKEW of the check-in protocol
REFUSALS_KEEP = 10_000
REFUSALS_DAYS = 30

# MIGRATIONS[v] takes a file at user_version v to v + 1; a later schema adds an entry, never edits one.
MIGRATIONS = {
    0: """
CREATE TABLE terminals (
    serial TEXT PRIMARY KEY,
    first_checkin TEXT,
    last_checkin TEXT,
    checkins INTEGER NOT NULL DEFAULT 0,
    app_version TEXT,
    packs TEXT,
    boot_id TEXT,
    remote TEXT,
    failures INTEGER NOT NULL DEFAULT 0,
    next_try TEXT,
    held INTEGER NOT NULL DEFAULT 0,
    held_at TEXT,
    released_at TEXT,
    released_by TEXT,
    last_decision TEXT,
    last_decision_detail TEXT,
    last_decision_at TEXT,
    last_outcome TEXT,
    last_outcome_at TEXT,
    last_run_id TEXT,
    last_trigger TEXT,
    last_job_id TEXT
);
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    serial TEXT NOT NULL UNIQUE REFERENCES terminals(serial),
    release TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running')),
    enqueued_at TEXT NOT NULL,
    job_id TEXT UNIQUE,
    started_at TEXT
);
CREATE INDEX jobs_fifo ON jobs (state, enqueued_at, seq);
CREATE TABLE nonces (
    serial TEXT NOT NULL,
    nonce TEXT NOT NULL,
    sent_at TEXT NOT NULL,
    seen_at TEXT NOT NULL,
    PRIMARY KEY (serial, nonce)
);
CREATE INDEX nonces_age ON nonces (seen_at);
CREATE TABLE refusals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    serial TEXT,
    remote TEXT,
    reason TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX refusals_at ON refusals (at);
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
""",
}


class CheckinStoreError(Exception):
    """The check-in store cannot be opened or used, or was given a wrong argument; the message says what to do."""


def _moment(value, what="time"):
    """An aware UTC datetime from an aware datetime or a "YYYY-MM-DDTHH:MM:SSZ" string (the protocol's sent_at)."""
    if isinstance(value, str):
        try:
            return datetime.datetime.strptime(value, TIME_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            pass
    elif isinstance(value, datetime.datetime) and value.tzinfo is not None and value.utcoffset() is not None:
        return value.astimezone(UTC)
    raise CheckinStoreError(f"{what} {value!r} is neither an aware datetime nor UTC text like '2026-03-02T01:00:00Z'; "
                            f"pass datetime.now(timezone.utc)")


def _stamp(value, what="time"):
    """The stored form of a time."""
    return _moment(value, what).strftime(TIME_FORMAT)


def _later(value, seconds):
    return _stamp(_moment(value) + datetime.timedelta(seconds=seconds))


def _serial(serial):
    if not isinstance(serial, str) or not serial:
        raise CheckinStoreError(f"terminal serial {serial!r} is not a non-empty string")
    return serial


def backoff_delay(failures, backoff_s, backoff_max_s):
    """Seconds before the next try after `failures` failures in a row: backoff_s doubled per failure, capped."""
    if failures < 1:
        return 0
    # The exponent is capped so a long run of failures never builds a huge integer.
    return min(backoff_s * 2 ** min(failures - 1, 62), backoff_max_s)


class CheckinStore:
    """The check-in store at `path`: check-ins, nonces, refusals, the update queue and each terminal's failures.

    max_running jobs run at once at most; max_failures check-in jobs failed in a row hold a terminal until
    an operator releases it; after a failure the next try waits backoff_delay(); a job running longer than
    job_timeout_s is lost (a failure) and frees its slot. A limit given here is stored for every process
    that opens the store; one left out (None) is the stored one, or its LIMITS default.
    """

    def __init__(self, path, max_running=None, max_failures=None, backoff_s=None, backoff_max_s=None,
                 job_timeout_s=None):
        given = {"max_running": max_running, "max_failures": max_failures, "backoff_s": backoff_s,
                 "backoff_max_s": backoff_max_s, "job_timeout_s": job_timeout_s}
        for name, value in given.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise CheckinStoreError(f"{name} {value!r} is not a whole number of at least 1")
        self.path = os.path.abspath(os.fspath(path))
        self._create()
        self._migrate()
        with self._transaction() as conn:
            for name, value in given.items():
                if value is not None:
                    conn.execute("INSERT OR REPLACE INTO settings (name, value) VALUES (?, ?)", (name, value))
            limits = dict(LIMITS, **dict(conn.execute("SELECT name, value FROM settings").fetchall()))
        self.max_running = limits["max_running"]
        self.max_failures = limits["max_failures"]
        self.backoff_s = limits["backoff_s"]
        self.backoff_max_s = limits["backoff_max_s"]
        self.job_timeout_s = limits["job_timeout_s"]

    # --- the file ------------------------------------------------------------------------------------

    def _create(self):
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            # Created here rather than by sqlite3 so that it is 0600 from its first byte; SQLite gives its
            # -wal and -shm files the same mode.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise CheckinStoreError(
                f"check-in store {self.path} cannot be created ({exc.strerror}): create {directory} for the user "
                f"that runs ansible-rulebook, or point the event source at a directory that user owns") from None

    def _connect(self):
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except sqlite3.Error as exc:
            raise CheckinStoreError(f"check-in store {self.path} cannot be opened ({exc}): check that the file "
                                    f"and its directory are readable and writable by this user") from None
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return conn

    @contextlib.contextmanager
    def _transaction(self, write=True):
        """A connection inside one transaction, committed on success and rolled back on any error.

        A connection per transaction: the store is used from the event source's threads and from forked
        runs, and a sqlite3 connection must not cross either.
        """
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise CheckinStoreError(
                f"check-in store {self.path} failed: {exc}. If it is locked, another process held it longer than "
                f"{BUSY_TIMEOUT_MS // 1000} s; if it is damaged, move it aside and restart the event source, which "
                f"creates a new one (queued jobs and failure counts are lost)") from None
        finally:
            conn.close()

    def _migrate(self):
        conn = self._connect()
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise CheckinStoreError(f"check-in store {self.path} cannot use SQLite's WAL journal (got {mode!r}): "
                                        f"keep it on a local file system")
        except sqlite3.DatabaseError as exc:
            raise CheckinStoreError(f"check-in store {self.path} is not a usable SQLite database ({exc}): move it "
                                    f"aside and restart the event source, which creates a new one") from None
        finally:
            conn.close()
        with self._transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise CheckinStoreError(f"check-in store {self.path} has schema version {version}, newer than this "
                                        f"posfleet's {SCHEMA_VERSION}: upgrade posfleet on the control node")
            while version < SCHEMA_VERSION:
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")

    # --- check-ins -----------------------------------------------------------------------------------

    def remember_nonce(self, serial, nonce, sent_at, now, window_s=NONCE_WINDOW_S):
        """False when this serial's nonce was seen before (a replay); else remember it and return True.

        Nonces whose sent_at and first sighting are both older than window_s (2 * MAX_SKEW) are forgotten:
        the caller refuses a check-in whose sent_at is more than MAX_SKEW from now, so a replay of a
        forgotten nonce is refused before it gets here.
        """
        serial = _serial(serial)
        if not isinstance(nonce, str) or not nonce:
            raise CheckinStoreError(f"nonce {nonce!r} of {serial} is not a non-empty string")
        sent, seen = _stamp(sent_at, "sent_at"), _stamp(now, "now")
        cutoff = _later(now, -window_s)
        with self._transaction() as conn:
            conn.execute("DELETE FROM nonces WHERE seen_at < ? AND sent_at < ?", (cutoff, cutoff))
            added = conn.execute("INSERT OR IGNORE INTO nonces (serial, nonce, sent_at, seen_at) VALUES (?, ?, ?, ?)",
                                 (serial, nonce, sent, seen)).rowcount
        return added == 1

    def record_checkin(self, serial, message, remote, now):
        """Record a verified check-in: when, the app_version, packs and boot_id it reports, and where from."""
        serial = _serial(serial)
        at = _stamp(now, "now")
        packs = message.get("packs")
        with self._transaction() as conn:
            self._ensure(conn, serial)
            conn.execute(
                "UPDATE terminals SET first_checkin = coalesce(first_checkin, ?), last_checkin = ?, "
                "checkins = checkins + 1, app_version = ?, packs = ?, boot_id = ?, remote = ? WHERE serial = ?",
                (at, at, message.get("app_version"), None if packs is None else json.dumps(packs, sort_keys=True),
                 message.get("boot_id"), remote, serial))

    def record_refusal(self, serial, remote, reason, detail, now):
        """Record a refused check-in (serial None when it was not known); the last 10,000 of 30 days are kept."""
        at = _stamp(now, "now")
        with self._transaction() as conn:
            conn.execute("INSERT INTO refusals (at, serial, remote, reason, detail) VALUES (?, ?, ?, ?, ?)",
                         (at, serial, remote, reason, detail))
            conn.execute("DELETE FROM refusals WHERE at < ? OR id <= "
                         "(SELECT id FROM refusals ORDER BY id DESC LIMIT 1 OFFSET ?)",
                         (_later(now, -REFUSALS_DAYS * 86400), REFUSALS_KEEP))

    # --- admission -----------------------------------------------------------------------------------

    def decide(self, serial, wants_update, may_now, now, release=None, reason=""):
        """(decision, detail) for a terminal that checked in; QUEUED puts a job for `release` in the queue.

        `release` is the terminal's assigned release, None when it has none. The rules, first match wins:
        no release -> NO_ASSIGNMENT; not wants_update -> CURRENT_RELEASE (both drop a job still queued, and
        leave a running one alone); held -> HELD; next try in the future -> BACKOFF; queued -> QUEUED_ALREADY
        (the queued job takes `release` if the assignment changed); running -> RUNNING_ALREADY; not may_now
        -> NOT_NOW with `reason`; else QUEUED, behind the jobs queued before it.
        """
        serial = _serial(serial)
        at = _stamp(now, "now")
        with self._transaction() as conn:
            self._ensure(conn, serial)
            terminal = conn.execute("SELECT * FROM terminals WHERE serial = ?", (serial,)).fetchone()
            job = conn.execute("SELECT * FROM jobs WHERE serial = ?", (serial,)).fetchone()
            decision, detail = self._decide(conn, terminal, job, wants_update, may_now, at, release, reason)
            conn.execute("UPDATE terminals SET last_decision = ?, last_decision_detail = ?, last_decision_at = ? "
                         "WHERE serial = ?", (decision, detail, at, serial))
        return decision, detail

    def note(self, serial, decision, detail, now):
        """Record a decision made before the store's rules (one of NOTED) as the terminal's last, for status()."""
        if decision not in NOTED:
            raise CheckinStoreError(f"note() records {', '.join(NOTED)}, not {decision!r}")
        serial = _serial(serial)
        at = _stamp(now, "now")
        with self._transaction() as conn:
            self._ensure(conn, serial)
            conn.execute("UPDATE terminals SET last_decision = ?, last_decision_detail = ?, last_decision_at = ? "
                         "WHERE serial = ?", (decision, detail, at, serial))
        return decision, detail

    @staticmethod
    def _decide(conn, terminal, job, wants_update, may_now, at, release, reason):
        serial = terminal["serial"]
        if release is None or not wants_update:
            dropped = ""
            if job is not None and job["state"] == STATE_QUEUED:
                conn.execute("DELETE FROM jobs WHERE seq = ?", (job["seq"],))
                dropped = f"; its queued job for {job['release']} was dropped"
            if release is None:
                return NO_ASSIGNMENT, f"no release is assigned to {serial}{dropped}"
            return CURRENT_RELEASE, f"{serial} runs its assigned release {release}{dropped}"
        if terminal["held"]:
            return HELD, (f"{serial} failed {terminal['failures']} times in a row (last: {terminal['last_outcome']} "
                          f"at {terminal['last_outcome_at']}); an operator must release it")
        if terminal["next_try"] is not None and terminal["next_try"] > at:
            return BACKOFF, (f"{serial} failed {terminal['failures']} time(s) in a row (last: "
                             f"{terminal['last_outcome']}); next try at {terminal['next_try']}")
        if job is not None and job["state"] == STATE_QUEUED:
            if job["release"] != release:
                conn.execute("UPDATE jobs SET release = ? WHERE seq = ?", (release, job["seq"]))
                return QUEUED_ALREADY, (f"{serial} is queued since {job['enqueued_at']}; its job now installs "
                                        f"{release} (was {job['release']})")
            return QUEUED_ALREADY, f"{serial} is queued since {job['enqueued_at']} for {release}"
        if job is not None:
            return RUNNING_ALREADY, (f"{serial} is updating to {job['release']} since {job['started_at']} "
                                     f"(job {job['job_id']})")
        if not may_now:
            return NOT_NOW, reason or f"{serial} may not be updated now"
        ahead = conn.execute("SELECT count(*) FROM jobs WHERE state = ?", (STATE_QUEUED,)).fetchone()[0]
        conn.execute("INSERT INTO jobs (serial, release, state, enqueued_at) VALUES (?, ?, ?, ?)",
                     (serial, release, STATE_QUEUED, at))
        return QUEUED, f"{serial} queued for {release} behind {ahead} other job(s)"

    def start_next(self, now):
        """Start the queued jobs that may start now, oldest first, up to max_running running at once.

        Jobs running longer than job_timeout_s are first finished as LOST (a failure). Returns
        [{"serial", "release", "job_id", "enqueued_at"}] for the jobs started; the caller runs each.
        """
        at = _stamp(now, "now")
        started = []
        with self._transaction() as conn:
            expired = conn.execute("SELECT serial, job_id FROM jobs WHERE state = ? AND started_at <= ?",
                                   (RUNNING, _later(now, -self.job_timeout_s))).fetchall()
            for row in expired:
                self._finish(conn, row["serial"], LOST, now, None, row["job_id"])
            running = conn.execute("SELECT count(*) FROM jobs WHERE state = ?", (RUNNING,)).fetchone()[0]
            free = self.max_running - running
            if free <= 0:
                return started
            queued = conn.execute("SELECT seq, serial, release, enqueued_at FROM jobs WHERE state = ? "
                                  "ORDER BY enqueued_at, seq LIMIT ?", (STATE_QUEUED, free)).fetchall()
            for job in queued:
                job_id = str(uuid.uuid4())
                conn.execute("UPDATE jobs SET state = ?, job_id = ?, started_at = ? WHERE seq = ?",
                             (RUNNING, job_id, at, job["seq"]))
                conn.execute("UPDATE terminals SET last_job_id = ? WHERE serial = ?", (job_id, job["serial"]))
                started.append({"serial": job["serial"], "release": job["release"], "job_id": job_id,
                                "enqueued_at": job["enqueued_at"]})
        return started

    def finish(self, serial, outcome, now, run_id=None, job_id=None):
        """Record a run's outcome for a terminal; end its running job if the outcome is that job's.

        The outcome ends the terminal's running job only when job_id is the one start_next gave that job,
        so that another run's outcome (a nightly run's that met the job's lease) never ends it. Only an
        outcome that ends a job counts toward backoff and held: SUCCESS resets the failures, FAILURE adds
        one (next try after backoff_delay(), held at max_failures), NEUTRAL changes neither. Any other
        outcome (a nightly run's, or a job's that came after the job was lost) is recorded as the
        terminal's last outcome only, with trigger TRIGGER_EXTERNAL. A run started for a job that does not
        pass its job_id leaves the job running until job_timeout_s makes it LOST.

        Returns {"serial", "outcome", "trigger", "failures", "next_try", "held"}.
        """
        serial = _serial(serial)
        if outcome not in FINISH_OUTCOMES:
            raise CheckinStoreError(f"outcome {outcome!r} of {serial} is not one of {', '.join(FINISH_OUTCOMES)}")
        _stamp(now, "now")
        with self._transaction() as conn:
            self._ensure(conn, serial)
            return self._finish(conn, serial, outcome, now, run_id, job_id)

    def _finish(self, conn, serial, outcome, now, run_id, job_id):
        at = _stamp(now)
        job = conn.execute("SELECT * FROM jobs WHERE serial = ? AND state = ?", (serial, RUNNING)).fetchone()
        ends_job = job is not None and job_id is not None and job_id == job["job_id"]
        terminal = conn.execute("SELECT failures, next_try, held FROM terminals WHERE serial = ?",
                                (serial,)).fetchone()
        failures, next_try, held = terminal["failures"], terminal["next_try"], terminal["held"]
        if ends_job:
            conn.execute("DELETE FROM jobs WHERE seq = ?", (job["seq"],))
            if outcome in SUCCESS:
                failures, next_try = 0, None
            elif outcome in FAILURE:
                failures += 1
                held = int(failures >= self.max_failures)
                # A held terminal waits for an operator, not for a time.
                next_try = None if held else _later(now, backoff_delay(failures, self.backoff_s, self.backoff_max_s))
        trigger = TRIGGER_CHECKIN if ends_job else TRIGGER_EXTERNAL
        conn.execute(
            "UPDATE terminals SET failures = ?, next_try = ?, held = ?, held_at = CASE WHEN ? AND NOT held THEN ? "
            "ELSE held_at END, last_outcome = ?, last_outcome_at = ?, last_run_id = ?, last_trigger = ?, "
            "last_job_id = coalesce(?, last_job_id) WHERE serial = ?",
            (failures, next_try, held, held, at, outcome, at, run_id, trigger, job_id if ends_job else None, serial))
        return {"serial": serial, "outcome": outcome, "trigger": trigger, "failures": failures,
                "next_try": next_try, "held": bool(held)}

    def release(self, serial, now, by):
        """Let a held terminal try again at its next check-in (failures and next try cleared); False if not held."""
        serial = _serial(serial)
        at = _stamp(now, "now")
        with self._transaction() as conn:
            return conn.execute(
                "UPDATE terminals SET held = 0, failures = 0, next_try = NULL, released_at = ?, released_by = ? "
                "WHERE serial = ? AND held", (at, by, serial)).rowcount == 1

    @staticmethod
    def _ensure(conn, serial):
        conn.execute("INSERT OR IGNORE INTO terminals (serial) VALUES (?)", (serial,))

    # --- what an operator sees -----------------------------------------------------------------------

    def status(self, now):
        """One dict per terminal the store knows, by serial, with its state (one of STATES) at `now`."""
        at = _stamp(now, "now")
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                "SELECT t.*, j.state AS job_state, j.release, j.enqueued_at, j.started_at, j.job_id "
                "FROM terminals t LEFT JOIN jobs j ON j.serial = t.serial ORDER BY t.serial").fetchall()
        terminals = []
        for row in rows:
            if row["job_state"] is not None:
                state = row["job_state"]
            elif row["held"]:
                state = STATE_HELD
            elif row["next_try"] is not None and row["next_try"] > at:
                state = STATE_BACKOFF
            else:
                state = IDLE
            terminals.append({
                "serial": row["serial"], "state": state, "last_checkin": row["last_checkin"],
                "checkins": row["checkins"], "app_version": row["app_version"],
                "packs": None if row["packs"] is None else json.loads(row["packs"]), "boot_id": row["boot_id"],
                "remote": row["remote"], "failures": row["failures"], "next_try": row["next_try"],
                "held_at": row["held_at"] if row["held"] else None,
                "release": row["release"], "enqueued_at": row["enqueued_at"], "started_at": row["started_at"],
                "last_decision": row["last_decision"], "last_decision_detail": row["last_decision_detail"],
                "last_decision_at": row["last_decision_at"], "last_outcome": row["last_outcome"],
                "last_outcome_at": row["last_outcome_at"], "last_run_id": row["last_run_id"],
                "last_trigger": row["last_trigger"], "last_job_id": row["last_job_id"],
            })
        return terminals

    def summary(self, now):
        """{state: number of terminals} for every state in STATES."""
        counts = dict.fromkeys(STATES, 0)
        for terminal in self.status(now):
            counts[terminal["state"]] += 1
        return counts

    def refusals(self, limit=100):
        """The newest refused check-ins first: [{"at", "serial", "remote", "reason", "detail"}]."""
        with self._transaction(write=False) as conn:
            rows = conn.execute("SELECT at, serial, remote, reason, detail FROM refusals ORDER BY id DESC LIMIT ?",
                                (limit,)).fetchall()
        return [dict(row) for row in rows]
