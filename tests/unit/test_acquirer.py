"""The acquirer host simulator (lab/acquirer.py), driven over HTTP the way terminals and the lab drive it.

Each test starts the real server on 127.0.0.1 with a free port and a ledger in tmp_path, then looks at
what a terminal or an operator would see: the HTTP answers, the ledger rows and the log.
"""

import json
import re
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ACQUIRER = REPO / "lab" / "acquirer.py"
# A synthetic, Luhn-valid test PAN from the 999999 range, which no card scheme issues.
PAN = "9999990000000014"


def txn(txn_id, stan, pan=PAN):
    return {"id": txn_id, "stan": stan, "batch": 3, "invoice": stan, "amount_cents": 250, "currency": "EUR",
            "pan": pan, "sku": "SKU-1", "created_at": "2026-01-01T00:00:00.000Z"}


class Acquirer:
    """A running acquirer process and small HTTP helpers around it."""

    def __init__(self, tmp_path):
        self.db = tmp_path / "ledger.db"
        self.log = tmp_path / "acquirer.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, str(ACQUIRER), "--listen", "127.0.0.1:0",
                                          "--db", str(self.db)], stderr=log)
        self.url = self._wait_for_address()

    def _wait_for_address(self):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = re.search(r"listening on (http://[0-9.]+:\d+)", self.log.read_text())
            if found:
                return found.group(1)
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.02)
        raise AssertionError("acquirer did not start: " + self.log.read_text())

    def request(self, method, path, body=None, raw=None):
        """(status, JSON answer) of one request; HTTP errors are answers too."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def upload(self, serial, txns):
        return self.request("POST", "/v1/transactions", {"serial": serial, "transactions": txns})

    def ledger(self, serial=None):
        return self.request("GET", "/v1/ledger" + (f"?serial={serial}" if serial else ""))[1]

    def stop(self):
        self.proc.terminate()
        return self.proc.wait(10)


@pytest.fixture
def acquirer(tmp_path):
    """A fresh acquirer and ledger per test; shadows conftest's session-wide one."""
    server = Acquirer(tmp_path)
    yield server
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()


def test_upload_is_acknowledged_and_stored_once_with_masked_pan(acquirer):
    status, answer = acquirer.upload("KST0001", [txn("a", 1), txn("b", 2)])

    assert status == 200
    assert answer == {"accepted": ["a", "b"]}
    ledger = acquirer.ledger("KST0001")
    assert ledger["count"] == 2
    assert [(t["id"], t["stan"], t["batch"], t["invoice"]) for t in ledger["transactions"]] == [
        ("a", 1, 3, 1), ("b", 2, 3, 2)]
    db = sqlite3.connect(acquirer.db)
    assert {row[0] for row in db.execute("SELECT pan_masked FROM txn")} == {"999999******0014"}
    db.close()


def test_resent_transactions_are_acknowledged_again_but_stored_once(acquirer):
    acquirer.upload("KST0001", [txn("a", 1)])

    status, answer = acquirer.upload("KST0001", [txn("a", 1), txn("b", 2)])

    assert status == 200
    assert answer["accepted"] == ["a", "b"]
    ledger = acquirer.ledger("KST0001")
    assert ledger["count"] == 2
    assert ledger["receipts"] == 3  # a, a again, b: every receive is visible


def test_ledger_is_kept_per_terminal(acquirer):
    acquirer.upload("KST0001", [txn("a", 1)])
    acquirer.upload("HRN0002", [txn("b", 1), txn("c", 2)])

    assert acquirer.ledger("KST0001")["count"] == 1
    assert acquirer.ledger("HRN0002")["count"] == 2
    assert acquirer.ledger()["count"] == 3


@pytest.mark.parametrize(("raw", "message"), [
    (b"{not json", "not valid JSON"),
    (json.dumps({"transactions": []}).encode(), "serial"),
    (json.dumps({"serial": "KST0001", "transactions": [dict(txn("a", 1), stan="1")]}).encode(),
     "transactions[0].stan"),
    (json.dumps({"serial": "KST0001", "transactions": [txn("a", 1, pan="4000-0000")]}).encode(),
     "transactions[0].pan"),
])
def test_malformed_upload_is_refused_with_a_message_and_stores_nothing(acquirer, raw, message):
    status, answer = acquirer.request("POST", "/v1/transactions", raw=raw)

    assert status == 400
    assert message in answer["error"]
    assert acquirer.ledger()["count"] == 0


def test_down_mode_refuses_uploads_until_up_again(acquirer):
    assert acquirer.request("POST", "/v1/admin/mode", {"mode": "down"}) == (
        200, {"ok": True, "mode": "down", "delay_s": 5.0})

    status, answer = acquirer.upload("KST0001", [txn("a", 1)])
    assert status == 503
    assert "down" in answer["error"]
    assert acquirer.ledger()["count"] == 0

    acquirer.request("POST", "/v1/admin/mode", {"mode": "up"})
    assert acquirer.upload("KST0001", [txn("a", 1)])[0] == 200
    assert acquirer.ledger()["count"] == 1


def test_slow_mode_delays_uploads(acquirer):
    acquirer.request("POST", "/v1/admin/mode", {"mode": "slow", "delay_s": 0.5})

    started = time.monotonic()
    status, _ = acquirer.upload("KST0001", [txn("a", 1)])

    assert status == 200
    assert time.monotonic() - started >= 0.5


def test_unknown_mode_and_path_are_refused(acquirer):
    status, answer = acquirer.request("POST", "/v1/admin/mode", {"mode": "sideways"})
    assert status == 400
    assert "up, down, slow" in answer["error"]
    assert acquirer.request("GET", "/v1/nothing")[0] == 404
    assert acquirer.request("GET", "/v1/health") == (200, {"ok": True, "mode": "up"})


def test_log_has_one_line_per_request_and_no_pan(acquirer):
    acquirer.upload("KST0001", [txn("a", 1)])
    acquirer.request("GET", "/v1/health")

    assert acquirer.stop() == 0
    log = acquirer.log.read_text()
    assert PAN not in log
    requests = [line for line in log.splitlines() if "127.0.0.1 " in line]
    assert len(requests) == 2
    # One line each; the server writes a request's line once it has answered, so the two may be in either order.
    assert sum("POST /v1/transactions 200 serial=KST0001 received=1 new=1" in line for line in requests) == 1
    assert sum("GET /v1/health 200" in line for line in requests) == 1
