"""`poslab ledger`: reconcile every terminal's journal against the acquirer's ledger.

A transaction is *missing* when the terminal believes it was acknowledged but the acquirer has no
record of it, or when the acquirer holds it but the terminal's journal lost it (a restore from an
old backup would do that). It is *duplicated* when two different transactions of one terminal carry
the same batch and STAN, which is what a sequence counter that went backwards produces.
"""

import collections
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor

from . import fleet, services
from . import terminal as term

DUMP = ("import json,sqlite3; c=sqlite3.connect('file:/var/lib/pos/journal.db?mode=ro', uri=True); "
        "print(json.dumps(c.execute('SELECT id, batch, stan, uploaded FROM txn').fetchall()))")


def journal(terminal):
    """Rows (id, batch, stan, uploaded) of the terminal's journal, or None when it cannot be read."""
    result = term.run_in(terminal, ["python3", "-c", DUMP], timeout=60)
    if result.returncode != 0:
        return None
    return [tuple(row) for row in json.loads(result.stdout)]


def acquirer_rows():
    path = services.ACQUIRER_DIR / "ledger.db"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = collections.defaultdict(list)
        for txn_id, serial, batch, stan in db.execute("SELECT id, serial, batch, stan FROM txn"):
            rows[serial].append((txn_id, batch, stan))
        return rows
    finally:
        db.close()


def duplicates(pairs):
    counts = collections.Counter(pairs)
    return sum(n - 1 for n in counts.values() if n > 1)


def reconcile():
    terminals = fleet.load()
    acquired = acquirer_rows()
    with ThreadPoolExecutor(max_workers=16) as pool:
        journals = list(pool.map(journal, terminals))
    report = []
    for terminal, rows in zip(terminals, journals):
        held = acquired.get(terminal["serial"], [])
        entry = {"serial": terminal["serial"], "model": terminal["model"], "region": terminal["region"],
                 "acquirer": len(held)}
        if rows is None:
            entry.update(readable=False, generated=None, uploaded=None, pending=None, missing=None,
                         duplicated=None)
        else:
            local_ids = {r[0] for r in rows}
            acked = {r[0] for r in rows if r[3]}
            remote_ids = {r[0] for r in held}
            entry.update(
                readable=True, generated=len(rows), uploaded=len(acked), pending=len(rows) - len(acked),
                missing=len(acked - remote_ids) + len(remote_ids - local_ids),
                duplicated=duplicates((r[1], r[2]) for r in rows) + duplicates((r[1], r[2]) for r in held),
            )
        report.append(entry)
    return report


def totals(report):
    keys = ["generated", "uploaded", "pending", "missing", "duplicated", "acquirer"]
    total = {k: sum(e[k] or 0 for e in report) for k in keys}
    total["unreadable"] = sum(1 for e in report if not e["readable"])
    return total
