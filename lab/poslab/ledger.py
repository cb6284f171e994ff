"""`poslab ledger`: reconcile every terminal's journal against the acquirer's ledger.

A transaction is *missing* when the terminal believes it was acknowledged but the acquirer has no
record of it, or when the acquirer holds it but the terminal's journal lost it (a restore from an
old backup would do that). It is *duplicated* when two different transactions of one terminal carry
the same batch and STAN, which is what a sequence counter that went backwards produces.
"""

import collections
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

from . import fleet, services
from . import terminal as term

DUMP = ("import json,sqlite3; c=sqlite3.connect('file:/var/lib/pos/journal.db?mode=ro', uri=True); "
        "print(json.dumps(c.execute('SELECT id, batch, stan, uploaded FROM txn').fetchall()))")


def utc_stamp(now):
    """The acquirer's timestamp format, so that the two compare as text."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int((now % 1) * 1000):03d}Z"


def journal(terminal):
    """(rows (id, batch, stan, uploaded), when the read began), or None when it cannot be read."""
    started = utc_stamp(time.time())
    result = term.run_in(terminal, ["python3", "-c", DUMP], timeout=60)
    if result.returncode != 0:
        return None
    return [tuple(row) for row in json.loads(result.stdout)], started


def acquirer_rows():
    path = services.ACQUIRER_DIR / "ledger.db"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = collections.defaultdict(list)
        for txn_id, serial, batch, stan, received in db.execute(
                "SELECT id, serial, batch, stan, received_at FROM txn"):
            rows[serial].append((txn_id, batch, stan, received))
        return rows
    finally:
        db.close()


def duplicates(pairs):
    counts = collections.Counter(pairs)
    return sum(n - 1 for n in counts.values() if n > 1)


def reconcile():
    terminals = fleet.load()
    # Journals first, the acquirer after: the terminals keep selling, and a sale a journal shows as
    # acknowledged must then be in the acquirer's ledger. The other way round, only sales the
    # acquirer received before a journal was read can be expected in that journal.
    with ThreadPoolExecutor(max_workers=16) as pool:
        journals = list(pool.map(journal, terminals))
    acquired = acquirer_rows()
    report = []
    for terminal, read in zip(terminals, journals):
        held = acquired.get(terminal["serial"], [])
        entry = {"serial": terminal["serial"], "model": terminal["model"], "region": terminal["region"],
                 "acquirer": len(held)}
        rows, read_at = read if read is not None else (None, None)
        if rows is None:
            entry.update(readable=False, generated=None, uploaded=None, pending=None, missing=None,
                         duplicated=None)
        else:
            local_ids = {r[0] for r in rows}
            acked = {r[0] for r in rows if r[3]}
            remote_ids = {r[0] for r in held}
            settled = {r[0] for r in held if r[3] < read_at}
            entry.update(
                readable=True, generated=len(rows), uploaded=len(acked), pending=len(rows) - len(acked),
                missing=len(acked - remote_ids) + len(settled - local_ids),
                duplicated=duplicates((r[1], r[2]) for r in rows) + duplicates((r[1], r[2]) for r in held),
            )
        report.append(entry)
    return report


def totals(report):
    keys = ["generated", "uploaded", "pending", "missing", "duplicated", "acquirer"]
    total = {k: sum(e[k] or 0 for e in report) for k in keys}
    total["unreadable"] = sum(1 for e in report if not e["readable"])
    return total
