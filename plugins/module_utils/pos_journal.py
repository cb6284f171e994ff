# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""posd's SQLite journal as backup, restore and verify see it.

The journal is in WAL mode and posd keeps it open. Copies are made with SQLite's online backup API,
never by copying the file, so that a copy is one consistent state even while posd runs; a restore
writes into the live database through the same API, which SQLite applies as one write transaction
that posd's own connection sees at its next read.

Runs on terminals: standard library only, Python 3.9 or newer.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from urllib.parse import quote

from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal import STAN_MAX

COUNTERS = ("stan", "batch", "invoice")


def connect_ro(path):
    """A read-only connection that leaves nothing behind.

    A read-only open of a WAL database creates -wal and -shm files when they are missing (posd
    stopped cleanly removes them) and cannot remove them again; with neither present there is no WAL
    content to miss, so the file is opened immutable instead.
    """
    if not os.path.isfile(path):
        raise sqlite3.OperationalError("%s does not exist" % path)
    quiet = not os.path.exists(path + "-wal") and not os.path.exists(path + "-shm")
    uri = "file:%s?mode=ro%s" % (quote(os.path.abspath(path)), "&immutable=1" if quiet else "")
    return sqlite3.connect(uri, uri=True, timeout=10)


def integrity(conn):
    """'ok', or what PRAGMA integrity_check found."""
    return ", ".join(str(row[0]) for row in conn.execute("PRAGMA integrity_check").fetchall()[:10])


def counters(conn):
    return {name: int(value) for name, value in conn.execute("SELECT name, value FROM counters")}


def row_count(conn):
    return int(conn.execute("SELECT COUNT(*) FROM txn").fetchone()[0])


def txn_ids(conn):
    return {row[0] for row in conn.execute("SELECT id FROM txn")}


def summary(path):
    """{rows, counters, integrity} of the journal at `path` (read-only)."""
    conn = connect_ro(path)
    try:
        return {"rows": row_count(conn), "counters": counters(conn), "integrity": integrity(conn)}
    finally:
        conn.close()


def sequence_problems(conn, gaps=(), limit=5):
    """Breaks in the sale numbering, in created order, as human lines; [] when continuous.

    Each sale takes the next invoice and the next STAN (which wraps from 999999 to 1); a batch never
    goes down. The counters must be at least the highest numbers in the journal, or the next sale would
    reuse one. `gaps` are the jumps a restore made on purpose (gap_record), which are accepted.
    """
    allowed = set()
    for gap in gaps:
        if isinstance(gap, dict):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                allowed.add(("invoice", int(gap["after_invoice"]), int(gap["invoice"]) + 1))
                allowed.add(("stan", int(gap["after_stan"]), int(gap["stan"]) % STAN_MAX + 1))
    problems = []
    prev = None
    last = None
    highest = {"invoice": 0, "batch": 0}
    ordered = conn.execute("SELECT stan, invoice, batch FROM txn ORDER BY created_at, invoice")
    for stan, invoice, batch in ordered:
        if prev is not None:
            if invoice != prev[1] + 1 and ("invoice", prev[1], invoice) not in allowed:
                problems.append("invoice jumps from %d to %d" % (prev[1], invoice))
            if stan != prev[0] % STAN_MAX + 1 and ("stan", prev[0], stan) not in allowed:
                problems.append("STAN jumps from %d to %d at invoice %d" % (prev[0], stan, invoice))
            if batch < prev[2]:
                problems.append("batch goes back from %d to %d at invoice %d" % (prev[2], batch, invoice))
        prev = last = (stan, invoice, batch)
        highest["invoice"] = max(highest["invoice"], invoice)
        highest["batch"] = max(highest["batch"], batch)
    found = counters(conn)
    for name in ("invoice", "batch"):
        if found.get(name, 0) < highest[name]:
            problems.append("counter %s is %d, below %d in the journal"
                            % (name, found.get(name, 0), highest[name]))
    if last is not None and found.get("invoice") == last[1] and found.get("stan") != last[0]:
        problems.append("counter stan is %s, but the last sale has STAN %d" % (found.get("stan"), last[0]))
    if len(problems) > limit:
        problems = [*problems[:limit], "and %d more" % (len(problems) - limit)]
    return problems


def copy_to(src_path, dest_path):
    """Copy the journal at `src_path` into the new file `dest_path` with the online backup API.

    Returns the summary of the copy; raises sqlite3.Error when it cannot be read or is not intact.
    """
    src = connect_ro(src_path)
    try:
        dest = sqlite3.connect(dest_path)
        try:
            src.backup(dest)
            found = {"rows": row_count(dest), "counters": counters(dest), "integrity": integrity(dest)}
        finally:
            dest.close()
    finally:
        src.close()
    for suffix in ("-wal", "-shm"):
        if os.path.exists(dest_path + suffix):
            os.unlink(dest_path + suffix)
    if found["integrity"] != "ok":
        raise sqlite3.DatabaseError("the copy of %s fails integrity_check: %s"
                                    % (src_path, found["integrity"]))
    return found


def gap_record(path, reason, when):
    """When the counters of the journal file `path` are ahead of its last sale, the jump the next sale
    will make, as a record for SEQUENCE_GAPS; None when the next sale simply continues."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        found = counters(conn)
        last = conn.execute("SELECT stan, invoice FROM txn ORDER BY invoice DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    last_stan, last_invoice = last if last else (0, 0)
    if found.get("invoice", 0) <= last_invoice:
        return None
    return {"after_invoice": last_invoice, "invoice": found["invoice"], "after_stan": last_stan,
            "stan": found.get("stan", 0), "reason": reason, "at": when}


def raise_counters(path, floor):
    """Raise the counters of the journal file `path` to at least `floor` ({name: value}); one transaction."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        with conn:
            for name in COUNTERS:
                if name in floor:
                    conn.execute("UPDATE counters SET value = MAX(value, ?) WHERE name = ?",
                                 (int(floor[name]), name))
        return counters(conn)
    finally:
        conn.close()


def write_into(src_path, live_path):
    """Replace the content of the live journal by that of `src_path`, in one SQLite write transaction.

    posd may keep the live journal open: SQLite locks it for the write and posd's connection reads
    the new content afterwards. Raises sqlite3.Error when the live file is not a usable database (then
    the caller has to replace the file with posd stopped).
    """
    src = sqlite3.connect(src_path)
    try:
        live = sqlite3.connect(live_path, timeout=30)
        try:
            live.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            src.backup(live)
            result = integrity(live)
        finally:
            live.close()
    finally:
        src.close()
    if result != "ok":
        raise sqlite3.DatabaseError("%s fails integrity_check after the restore: %s" % (live_path, result))
