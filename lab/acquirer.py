#!/usr/bin/env python3
"""Acquirer host simulator for the posfleet lab: the bank side that terminals upload sales to.

    python3 lab/acquirer.py --listen HOST:PORT --db PATH

HTTP API (JSON in and out):

* POST /v1/transactions {"serial", "transactions": [{id, stan, batch, invoice, amount_cents,
  currency, pan, sku, created_at}]} -> {"accepted": [every id received]}. Storing is idempotent:
  a re-sent id is acknowledged again but kept once in the ledger (table `txn`); every receive is
  also appended to table `receipt` so that tests can see re-sends. Only the masked PAN is stored.
* GET /v1/health -> {"ok": true, "mode": ...}
* GET /v1/ledger[?serial=X] -> counts and the ids, STANs, batches and invoices for reconciliation.
* POST /v1/admin/mode {"mode": "up" | "down" | "slow", "delay_s": N} -> fault modes: "down" answers
  503 to uploads (acquirer outage), "slow" delays each upload by delay_s (default 5 s).

With port 0 the system picks a free port; the first log line names the address actually bound.
One log line per request on stderr, never with a PAN.
"""

import argparse
import json
import signal
import sqlite3
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_BODY_BYTES = 16 << 20
MODES = ("up", "down", "slow")
DEFAULT_SLOW_S = 5.0
TXN_FIELDS = (("id", str), ("stan", int), ("batch", int), ("invoice", int), ("amount_cents", int),
              ("currency", str), ("pan", str), ("sku", str), ("created_at", str))
SCHEMA = """
CREATE TABLE IF NOT EXISTS txn (
    id TEXT PRIMARY KEY, serial TEXT NOT NULL, stan INTEGER NOT NULL, batch INTEGER NOT NULL,
    invoice INTEGER NOT NULL, amount_cents INTEGER NOT NULL, currency TEXT NOT NULL,
    pan_masked TEXT NOT NULL, sku TEXT NOT NULL, created_at TEXT NOT NULL, received_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS txn_serial ON txn (serial);
CREATE TABLE IF NOT EXISTS receipt (id TEXT NOT NULL, serial TEXT NOT NULL, received_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS receipt_serial ON receipt (serial);
"""


def utc_now():
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int((now % 1) * 1000):03d}Z"


def log(message):
    sys.stderr.write(f"{utc_now()} acquirer: {message}\n")
    sys.stderr.flush()


def mask_pan(pan):
    """First 6 and last 4 digits: all an acquirer log or ledger may keep of a card number."""
    return pan[:6] + "*" * max(len(pan) - 10, 0) + pan[-4:]


class BadRequest(Exception):
    """Malformed input; answered with 400 and this message."""


def validate_upload(body):
    """(serial, transactions) from an upload body, or BadRequest naming the first bad field."""
    if not isinstance(body, dict) or not isinstance(body.get("serial"), str) or not body["serial"]:
        raise BadRequest("body must be an object with a non-empty string 'serial'")
    txns = body.get("transactions")
    if not isinstance(txns, list):
        raise BadRequest("'transactions' must be a list")
    for index, txn in enumerate(txns):
        if not isinstance(txn, dict):
            raise BadRequest(f"transactions[{index}] must be an object")
        for field, kind in TXN_FIELDS:
            value = txn.get(field)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise BadRequest(f"transactions[{index}].{field} must be {kind.__name__}")
        if not txn["pan"].isdigit() or not 12 <= len(txn["pan"]) <= 19:
            raise BadRequest(f"transactions[{index}].pan must be 12 to 19 digits")
    return body["serial"], txns


class Ledger:
    """The acquirer's SQLite ledger, shared by the request threads behind a lock."""

    def __init__(self, path):
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def store(self, serial, txns):
        """Store a batch in one transaction; returns how many ids were new."""
        now = utc_now()
        with self._lock:
            before = self._db.total_changes
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for txn in txns:
                    self._db.execute(
                        "INSERT OR IGNORE INTO txn (id, serial, stan, batch, invoice, amount_cents, currency,"
                        " pan_masked, sku, created_at, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (txn["id"], serial, txn["stan"], txn["batch"], txn["invoice"], txn["amount_cents"],
                         txn["currency"], mask_pan(txn["pan"]), txn["sku"], txn["created_at"], now))
                new = self._db.total_changes - before
                self._db.executemany("INSERT INTO receipt (id, serial, received_at) VALUES (?, ?, ?)",
                                     [(txn["id"], serial, now) for txn in txns])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return new

    def report(self, serial=None):
        where, args = ("WHERE serial = ?", (serial,)) if serial else ("", ())
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, serial, stan, batch, invoice, amount_cents FROM txn {where}"
                " ORDER BY serial, batch, invoice", args).fetchall()
            receipts = self._db.execute(f"SELECT COUNT(*) FROM receipt {where}", args).fetchone()[0]
        keys = ("id", "serial", "stan", "batch", "invoice", "amount_cents")
        return {"ok": True, "serial": serial, "count": len(rows), "receipts": receipts,
                "transactions": [dict(zip(keys, row)) for row in rows]}

    def close(self):
        with self._lock:
            self._db.close()


class Acquirer(ThreadingHTTPServer):
    """The HTTP server plus the state its handlers share: ledger and fault mode."""

    daemon_threads = True

    def __init__(self, address, ledger):
        super().__init__(address, Handler)
        self.ledger = ledger
        self.mode = "up"
        self.delay_s = DEFAULT_SLOW_S


class Handler(BaseHTTPRequestHandler):
    server_version = "poslab-acquirer/1"

    def log_request(self, code="-", size="-"):
        """Replaced by respond(), which logs one line with what the request did."""

    def log_message(self, fmt, *args):
        log(f"{self.client_address[0]} {fmt % args}")

    def respond(self, status, body, note=""):
        data = (json.dumps(body) + "\n").encode()
        suffix = " " + note if note else ""
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # A terminal that gave up waiting (slow mode) re-sends later; what was stored stays.
            suffix += " (client gone before the answer)"
        log(f"{self.client_address[0]} {self.command} {self.path} {status}{suffix}")

    def read_json(self):
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise BadRequest("Content-Length header required") from None
        if not 0 <= length <= MAX_BODY_BYTES:
            raise BadRequest(f"body must be at most {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(self.rfile.read(length).decode("utf-8"))
        except ValueError as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from exc

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/v1/health":
            self.respond(200, {"ok": True, "mode": self.server.mode})
        elif url.path == "/v1/ledger":
            serial = parse_qs(url.query).get("serial", [None])[0]
            report = self.server.ledger.report(serial)
            self.respond(200, report, f"count={report['count']}")
        else:
            self.respond(404, {"ok": False, "error": f"no such resource: {url.path}"})

    def do_POST(self):
        path = urlsplit(self.path).path
        handlers = {"/v1/transactions": self.post_transactions, "/v1/admin/mode": self.post_mode}
        if path not in handlers:
            self.respond(404, {"ok": False, "error": f"no such resource: {path}"})
            return
        try:
            handlers[path]()
        except BadRequest as exc:
            self.respond(400, {"ok": False, "error": str(exc)})
        except sqlite3.Error as exc:
            self.respond(500, {"ok": False, "error": f"ledger error: {exc}"})

    def post_transactions(self):
        if self.server.mode == "down":
            self.respond(503, {"ok": False, "error": "acquirer down (lab fault mode)"})
            return
        if self.server.mode == "slow":
            time.sleep(self.server.delay_s)
        serial, txns = validate_upload(self.read_json())
        new = self.server.ledger.store(serial, txns)
        self.respond(200, {"accepted": [txn["id"] for txn in txns]},
                     f"serial={serial} received={len(txns)} new={new}")

    def post_mode(self):
        body = self.read_json()
        mode = body.get("mode") if isinstance(body, dict) else None
        if mode not in MODES:
            raise BadRequest("mode must be one of {}".format(", ".join(MODES)))
        delay = body.get("delay_s", DEFAULT_SLOW_S)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= 600:
            raise BadRequest("delay_s must be a number of seconds between 0 and 600")
        self.server.mode, self.server.delay_s = mode, float(delay)
        self.respond(200, {"ok": True, "mode": mode, "delay_s": float(delay)}, f"mode={mode}")


def parse_listen(text):
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Acquirer host simulator for the posfleet lab.")
    parser.add_argument("--listen", type=parse_listen, required=True,
                        help="HOST:PORT (port 0: any free port)")
    parser.add_argument("--db", required=True, help="SQLite ledger file (created if missing)")
    args = parser.parse_args(argv)
    try:
        ledger = Ledger(args.db)
        server = Acquirer(args.listen, ledger)
    except (OSError, sqlite3.Error) as exc:
        log(f"cannot start: {exc}")
        return 1
    def stop(*_):
        # shutdown() blocks until serve_forever() returns, so it cannot run in the handler's thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    log(f"listening on http://{host}:{port} ledger {args.db}")
    server.serve_forever()
    server.server_close()
    ledger.close()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
