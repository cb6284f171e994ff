"""posd, posctl and build.py, exercised the way an update and the lab use them.

Each test runs a real posd with POS_ROOT pointing at a terminal tree in tmp_path (terminal.json,
posd.conf, data packs) and a real acquirer simulator on 127.0.0.1, then talks to posd over its
control socket and looks at what a user would notice: the journal, the acquirer's ledger, the
answers of the control API, exit codes and log lines.
"""

import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
POSD = REPO / "lab" / "posd" / "posd.py"
POSCTL = REPO / "lab" / "posd" / "posctl"
BUILD = REPO / "lab" / "posd" / "build.py"
ACQUIRER = REPO / "lab" / "acquirer.py"
# A synthetic BIN: no card scheme issues 999999, so the PANs posd makes from it are test numbers only.
SYNTHETIC_BIN = "999999"
TERMINAL = {"serial": "KST9001", "model": "kestrel_k200", "region": "eu_west", "merchant_id": "M-TEST-1",
            "terminal_id": "T-TEST-1", "merchant_name": "Test Cafe", "store": "Test Street 1"}
FAST = {"sale_interval_s": 0.05, "sale_duration_s": 0.01, "offline_ratio": 1.0}
BATCH_FLOOR = 7
# posd and posctl run on terminals (Python 3.9 and newer): POSFLEET_TERMINAL_PYTHON, as in conftest.py,
# runs them under another interpreter than this one, e.g. `POSFLEET_TERMINAL_PYTHON=python3.9 pytest`.
TERMINAL_PYTHON = os.environ.get("POSFLEET_TERMINAL_PYTHON") or sys.executable
needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed")


def luhn_valid(pan):
    digits = [int(d) for d in reversed(pan)]
    total = sum(digits[0::2]) + sum(sum(divmod(2 * d, 10)) for d in digits[1::2])
    return total % 10 == 0


# --- the acquirer -------------------------------------------------------------------------------


class Acquirer:
    def __init__(self, tmp_path):
        self.log = tmp_path / "acquirer.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, str(ACQUIRER), "--listen", "127.0.0.1:0",
                                          "--db", str(tmp_path / "ledger.db")], stderr=log)
        found = wait_for(lambda: re.search(r"listening on (http://[0-9.]+:\d+)", self.log.read_text()),
                         what="the acquirer to listen")
        self.url = found.group(1)

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def set_mode(self, mode):
        self.call("POST", "/v1/admin/mode", {"mode": mode})

    def ledger(self):
        return self.call("GET", "/v1/ledger?serial=" + TERMINAL["serial"])


@pytest.fixture
def acquirer(tmp_path):
    """A fresh acquirer per test (these tests count ledger rows); shadows conftest's session-wide one."""
    server = Acquirer(tmp_path)
    yield server
    server.proc.kill()
    server.proc.wait()


# --- a terminal ---------------------------------------------------------------------------------


def write_pack(root, name, version, files):
    """Write a pack version with its PACK.json and switch `current` to it with one rename."""
    packs = root / "var" / "lib" / "pos" / "packs" / name
    (packs / version).mkdir(parents=True)
    sums = {}
    for rel, text in files.items():
        (packs / version / rel).write_text(text)
        sums[rel] = hashlib.sha256(text.encode()).hexdigest()
    (packs / version / "PACK.json").write_text(json.dumps({"name": name, "version": version, "files": sums}))
    (packs / ".current.new").symlink_to(version)
    os.replace(packs / ".current.new", packs / "current")


def write_packs(root, acquirer_url):
    write_pack(root, "params", "2026.01.0", {
        "endpoints.json": json.dumps({"acquirer_url": acquirer_url}),
        "fees.json": json.dumps({"card_present_bps": 150}),
        "bins.json": json.dumps({"ranges": [{"bin": SYNTHETIC_BIN, "length": 16}]}),
        "counters.json": json.dumps({"batch_floor": BATCH_FLOOR}),
    })
    write_pack(root, "catalog", "2026.01.1",
               {"catalog.csv": "sku,name,price_cents\nSKU1,Coffee,250\nSKU2,Bagel,325\n"})
    write_pack(root, "merchant", "2026.01.2", {"profile.json": json.dumps(
        {"merchant_id": "M-TEST-1", "terminal_id": "T-TEST-1", "name": "Test Cafe", "store": "Test Street 1",
         "currency": "EUR", "receipt_header": "Test Cafe"})})


class Terminal:
    """A terminal tree under `root` and the posd process serving it."""

    def __init__(self, root, conf):
        self.root = root
        self.proc = None
        self.log = root / "posd.log"
        (root / "etc" / "pos").mkdir(parents=True)
        (root / "etc" / "pos" / "terminal.json").write_text(json.dumps(TERMINAL))
        (root / "etc" / "pos" / "posd.conf").write_text(json.dumps(conf))

    @property
    def socket_path(self):
        return str(self.root / "run" / "pos" / "posd.sock")

    def start(self, argv=None, env=None):
        """Start posd and wait until its control socket answers."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv or [TERMINAL_PYTHON, str(POSD)], stderr=log,
                                         env=dict(os.environ, POS_ROOT=str(self.root), **(env or {})))
        wait_for(self._answers, what="posd's control socket")
        return self

    def _answers(self):
        assert self.proc.poll() is None, self.log.read_text()
        try:
            return self.ctl("status")["ok"]
        except OSError:
            return False

    def ctl(self, op, **args):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(self.socket_path)
            sock.sendall((json.dumps(dict(args, op=op)) + "\n").encode())
            with sock.makefile("rb") as reader:
                return json.loads(reader.readline())

    def counters(self):
        return self.ctl("status")["counters"]

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        return self.proc.wait(10)

    def journal(self):
        """Every journal row as a dict, in invoice order (readable while posd runs: WAL)."""
        db = sqlite3.connect(self.root / "var" / "lib" / "pos" / "journal.db")
        db.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in db.execute("SELECT * FROM txn ORDER BY invoice")]
        finally:
            db.close()

    def posctl(self, *args):
        return subprocess.run([TERMINAL_PYTHON, str(POSCTL), *args], capture_output=True, text=True,
                              env=dict(os.environ, POS_ROOT=str(self.root)), timeout=30, check=False)


@pytest.fixture
def make_terminal(tmp_path, acquirer):
    """Factory: a terminal with FAST settings (overridable) and, unless packs=False, its data packs.

    Unlike conftest's make_terminal, which installs built artifacts, this runs lab/posd/posd.py from
    the working tree, so that a change to posd is tested without a build."""
    started = []

    def make(packs=True, name="t", **conf):
        terminal = Terminal(tmp_path / name, dict(FAST, acquirer_url=acquirer.url, **conf))
        if packs:
            write_packs(terminal.root, acquirer.url)
        started.append(terminal)
        return terminal

    yield make
    for terminal in started:
        if terminal.proc and terminal.proc.poll() is None:
            terminal.proc.kill()
            terminal.proc.wait()


def assert_continuous(rows):
    """Invoices and STANs run 1, 2, 3 ... with no gap and no repeat, and no id is stored twice."""
    assert [row["invoice"] for row in rows] == list(range(1, len(rows) + 1))
    assert [row["stan"] for row in rows] == list(range(1, len(rows) + 1))
    assert len({row["id"] for row in rows}) == len(rows)


# --- selling and the journal --------------------------------------------------------------------


def test_sales_are_journaled_with_continuous_numbers_and_synthetic_pans(make_terminal):
    terminal = make_terminal(offline_ratio=0.5).start()
    wait_for(lambda: terminal.counters()["invoice"] >= 12, what="12 sales")

    assert terminal.stop() == 0
    rows = terminal.journal()
    assert_continuous(rows)
    assert {row["batch"] for row in rows} == {BATCH_FLOOR}
    assert {(row["sku"], row["amount_cents"]) for row in rows} <= {("SKU1", 250), ("SKU2", 325)}
    assert all(row["pan"].startswith(SYNTHETIC_BIN) and len(row["pan"]) == 16 and luhn_valid(row["pan"])
               for row in rows)
    log = terminal.log.read_text()
    assert not any(row["pan"] in log for row in rows)
    assert f"pan={rows[0]['pan'][:6]}******{rows[0]['pan'][-4:]}" in log


def test_status_reports_the_contract_fields(make_terminal):
    terminal = make_terminal(sale_interval_s=60)
    (terminal.root / "run" / "pos").mkdir(parents=True)
    (terminal.root / "run" / "pos" / "boot_id").write_text("boot-1\n")
    terminal.start().ctl("make_pending", count=2)

    status = terminal.ctl("status")

    assert status["ok"] is True
    assert status["state"] == "idle"
    assert status["app_version"] == "0.0.0+dev"
    assert status["packs"] == {"params": "2026.01.0", "catalog": "2026.01.1", "merchant": "2026.01.2"}
    assert (status["healthy"], status["health_detail"]) == (True, "ok")
    assert set(status["counters"]) == {"stan", "batch", "invoice"}
    assert (status["serial"], status["model"], status["boot_id"]) == ("KST9001", "kestrel_k200", "boot-1")
    assert status["maintenance"] is False
    assert status["counters"] == {"stan": 2, "batch": BATCH_FLOOR, "invoice": 2}
    assert status["pending"] == status["generated"] == 2


def test_stan_wraps_from_999999_to_1_and_invoice_keeps_counting(make_terminal):
    terminal = make_terminal(sale_interval_s=60).start()
    terminal.ctl("make_pending", count=1)
    terminal.stop()
    db = sqlite3.connect(terminal.root / "var" / "lib" / "pos" / "journal.db")
    with db:
        db.execute("UPDATE counters SET value = 999998 WHERE name = 'stan'")
    db.close()

    terminal.start().ctl("make_pending", count=3)

    assert [(row["stan"], row["invoice"]) for row in terminal.journal()] == [
        (1, 1), (999999, 2), (1, 3), (2, 4)]


# --- uploading ----------------------------------------------------------------------------------


def test_offline_sales_stay_pending_until_upload_and_reach_the_ledger_once(make_terminal, acquirer):
    terminal = make_terminal(offline_ratio=1.0).start()
    wait_for(lambda: terminal.ctl("status")["pending"] >= 5, what="5 pending sales")
    assert acquirer.ledger()["count"] == 0
    assert terminal.ctl("maintenance_enter", timeout=5)["ok"]
    pending = terminal.ctl("status")["pending"]

    answer = terminal.ctl("upload", timeout=10)

    assert answer == {"ok": True, "uploaded": pending, "pending": 0}
    ledger = acquirer.ledger()
    assert {t["id"] for t in ledger["transactions"]} == {row["id"] for row in terminal.journal()}
    assert all(row["uploaded"] == 1 and row["uploaded_at"] for row in terminal.journal())

    assert terminal.ctl("upload", timeout=10) == {"ok": True, "uploaded": 0, "pending": 0}
    assert acquirer.ledger()["count"] == ledger["count"]
    assert acquirer.ledger()["receipts"] == ledger["receipts"]


def test_online_sales_are_uploaded_right_away(make_terminal, acquirer):
    terminal = make_terminal(offline_ratio=0.0).start()
    wait_for(lambda: acquirer.ledger()["count"] >= 5, what="5 sales at the acquirer")
    terminal.ctl("maintenance_enter", timeout=5)

    wait_for(lambda: terminal.ctl("status")["pending"] == 0, timeout=5, what="no pending sale")
    assert {t["id"] for t in acquirer.ledger()["transactions"]} == {row["id"] for row in terminal.journal()}


def test_offline_sales_older_than_flush_age_are_sent_in_the_background(make_terminal, acquirer):
    terminal = make_terminal(sale_interval_s=60, offline_flush_s=1).start()
    terminal.ctl("make_pending", count=3)

    wait_for(lambda: acquirer.ledger()["count"] == 3, timeout=8, what="the offline flush")
    assert terminal.ctl("status")["pending"] == 0


def test_upload_while_acquirer_is_down_fails_clearly_and_keeps_sales_pending(make_terminal, acquirer):
    terminal = make_terminal(sale_interval_s=60).start()
    terminal.ctl("make_pending", count=3)
    acquirer.set_mode("down")

    answer = terminal.ctl("upload", timeout=5)

    assert answer["ok"] is False
    assert "503" in answer["error"]
    assert answer["pending"] == 3
    assert not any(row["uploaded"] for row in terminal.journal())
    acquirer.set_mode("up")
    assert terminal.ctl("upload", timeout=5) == {"ok": True, "uploaded": 3, "pending": 0}


def test_upload_that_times_out_is_sent_again_and_stored_once(make_terminal, acquirer):
    terminal = make_terminal(sale_interval_s=60).start()
    terminal.ctl("make_pending", count=3)
    acquirer.call("POST", "/v1/admin/mode", {"mode": "slow", "delay_s": 1.0})

    answer = terminal.ctl("upload", timeout=0.3)

    assert answer["ok"] is False
    assert "did not answer within 0.3s" in answer["error"]
    assert answer["pending"] == 3
    wait_for(lambda: acquirer.ledger()["count"] == 3, what="the slow acquirer to store the sales")
    acquirer.set_mode("up")
    assert terminal.ctl("upload", timeout=5) == {"ok": True, "uploaded": 3, "pending": 0}
    ledger = acquirer.ledger()
    assert (ledger["count"], ledger["receipts"]) == (3, 6)  # sent twice, stored once


def test_upload_to_an_unreachable_acquirer_names_it(make_terminal):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    terminal = make_terminal(packs=False, sale_interval_s=60)
    write_packs(terminal.root, dead_url)
    terminal.start().ctl("make_pending", count=2)

    answer = terminal.ctl("upload", timeout=5)

    assert answer["ok"] is False
    assert f"acquirer {dead_url}/v1/transactions unreachable" in answer["error"]
    assert answer["pending"] == 2


# --- maintenance --------------------------------------------------------------------------------


def test_maintenance_waits_for_the_sale_in_flight_then_stops_selling(make_terminal):
    terminal = make_terminal().start()
    held_at = time.monotonic()
    assert terminal.ctl("hold_sale", seconds=0.6)["ok"]
    before = terminal.ctl("status")
    assert before["state"] == "in-transaction"

    answer = terminal.ctl("maintenance_enter", timeout=5)

    assert answer == {"ok": True, "state": "maintenance"}
    assert time.monotonic() - held_at >= 0.6  # it waited for the held sale
    frozen = terminal.counters()
    assert frozen["invoice"] == before["counters"]["invoice"] + 1  # the held sale completed, nothing after
    time.sleep(0.5)  # ten sale intervals
    assert terminal.counters() == frozen
    assert "maintenance" in terminal.ctl("hold_sale", seconds=1)["error"]


def test_maintenance_survives_a_restart_until_left(make_terminal):
    terminal = make_terminal().start()
    terminal.ctl("maintenance_enter", timeout=5)
    assert terminal.stop() == 0

    terminal.start()
    frozen = terminal.ctl("status")
    assert (frozen["state"], frozen["maintenance"]) == ("maintenance", True)
    time.sleep(0.3)
    assert terminal.counters() == frozen["counters"]

    assert terminal.ctl("maintenance_leave") == {"ok": True, "state": "idle"}
    wait_for(lambda: terminal.counters()["invoice"] > frozen["counters"]["invoice"], what="sales to resume")


def test_maintenance_enter_times_out_while_a_sale_never_finishes(make_terminal):
    terminal = make_terminal().start()
    terminal.ctl("hold_sale", seconds=0)

    answer = terminal.ctl("maintenance_enter", timeout=0.3)

    assert answer["ok"] is False
    assert answer["error"] == "in-transaction: sale still in progress after 0.3s"
    status = terminal.ctl("status")
    assert (status["state"], status["maintenance"]) == ("in-transaction", False)
    invoice = status["counters"]["invoice"]
    assert terminal.ctl("release_sale") == {"ok": True}
    assert terminal.ctl("maintenance_enter", timeout=5)["ok"]
    assert terminal.counters()["invoice"] == invoice + 1


def test_sigterm_aborts_a_held_sale_without_a_half_row(make_terminal):
    terminal = make_terminal().start()
    wait_for(lambda: terminal.counters()["invoice"] >= 3, what="3 sales")
    terminal.ctl("hold_sale", seconds=0)
    recorded = terminal.counters()

    assert terminal.stop() == 0
    rows = terminal.journal()
    assert len(rows) == recorded["invoice"]
    assert_continuous(rows)
    assert not os.path.exists(terminal.socket_path)


def record_until_killed(terminal, acknowledged):
    """Record offline sales through the control API until posd dies; collect the acknowledged ids."""
    while True:
        try:
            answer = terminal.ctl("make_pending", count=5)
        except (OSError, ValueError):
            return  # posd died under us: that request was never acknowledged
        acknowledged.extend(answer["ids"])


def test_kill_9_at_any_moment_loses_no_acknowledged_sale(make_terminal, acquirer):
    """Crash posd repeatedly while sales are written and uploaded; the journal must stay whole."""
    terminal = make_terminal(sale_interval_s=0.01, sale_duration_s=0.002, offline_ratio=0.5)
    acknowledged = []
    rng = random.Random(7)
    highest = 0
    for _ in range(4):
        terminal.start()
        counters = terminal.counters()
        assert counters["invoice"] >= highest and counters["batch"] >= BATCH_FLOOR  # never backwards
        writer = threading.Thread(target=record_until_killed, args=(terminal, acknowledged))
        writer.start()
        time.sleep(rng.uniform(0.2, 0.4))
        highest = terminal.counters()["invoice"]
        terminal.stop(signal.SIGKILL)
        writer.join()

    terminal.start()
    assert terminal.stop() == 0
    rows = terminal.journal()
    assert_continuous(rows)
    assert len(rows) >= highest
    assert set(acknowledged) <= {row["id"] for row in rows}
    uploaded = {row["id"] for row in rows if row["uploaded"]}
    assert uploaded <= {t["id"] for t in acquirer.ledger()["transactions"]}


# --- packs and health ---------------------------------------------------------------------------


def test_without_packs_posd_is_unhealthy_and_does_not_sell_until_reload(make_terminal, acquirer):
    terminal = make_terminal(packs=False).start()
    health = terminal.ctl("health")
    assert health["healthy"] is False
    assert "pack params missing" in health["health_detail"]
    assert terminal.ctl("make_pending", count=1)["error"].startswith("packs not loaded: pack params missing")
    time.sleep(0.3)
    assert terminal.counters()["invoice"] == 0

    write_packs(terminal.root, acquirer.url)
    answer = terminal.ctl("reload")

    assert (answer["healthy"], answer["packs"]["catalog"]) == (True, "2026.01.1")
    wait_for(lambda: terminal.counters()["invoice"] > 0, what="sales after reload")


def test_tampered_pack_file_makes_the_terminal_unhealthy(make_terminal):
    terminal = make_terminal().start()
    assert terminal.posctl("health").returncode == 0
    csv = terminal.root / "var" / "lib" / "pos" / "packs" / "catalog" / "current" / "catalog.csv"

    csv.write_text(csv.read_text().replace("250", "1"))
    result = terminal.posctl("health")

    assert result.returncode == 1
    assert json.loads(result.stdout)["health_detail"] == (
        "pack catalog: catalog.csv does not match its sha256 in PACK.json")
    assert terminal.posctl("status").returncode == 0  # status itself succeeds; it is health that fails


def test_reload_refuses_a_pack_that_does_not_match_its_manifest(make_terminal):
    terminal = make_terminal().start()
    profile = terminal.root / "var" / "lib" / "pos" / "packs" / "merchant" / "current" / "profile.json"
    profile.write_text("{}")

    answer = terminal.ctl("reload")

    assert answer["packs"]["merchant"] is None
    assert "pack merchant: profile.json does not match" in answer["health_detail"]
    invoice = terminal.counters()["invoice"]
    time.sleep(0.3)
    assert terminal.counters()["invoice"] == invoice


# --- the control API and posctl -----------------------------------------------------------------


def test_bad_requests_get_an_error_and_the_connection_keeps_working(make_terminal):
    terminal = make_terminal().start()
    requests = [b"not json", b"[]", b'{"op": "frobnicate"}',
                b'{"op": "maintenance_enter", "timeout": "soon"}',
                b'{"op": "make_pending", "count": 0}', b'{"op": "release_sale"}', b'{"op": "status"}']
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(terminal.socket_path)
        sock.sendall(b"\n".join(requests) + b"\n")
        with sock.makefile("rb") as reader:
            answers = [json.loads(reader.readline()) for _ in requests]

    assert [answer["ok"] for answer in answers] == [False] * 6 + [True]
    assert "not JSON" in answers[0]["error"]
    assert "'op'" in answers[1]["error"]
    assert answers[2]["error"].startswith("unknown op 'frobnicate'; valid ops: health, hold_sale,")
    assert "status" in answers[2]["error"] and "upload" in answers[2]["error"]
    assert answers[3]["error"].startswith("maintenance_enter: timeout must be a number")
    assert "count must be an integer" in answers[4]["error"]
    assert answers[5]["error"] == "no sale in progress"


def test_posctl_sends_key_values_and_sets_its_exit_status(make_terminal):
    terminal = make_terminal().start()

    entered = terminal.posctl("maintenance_enter", "timeout=2")
    assert entered.returncode == 0
    assert json.loads(entered.stdout)["state"] == "maintenance"
    assert terminal.posctl("frobnicate").returncode == 1
    assert terminal.posctl("upload", "timeout").returncode == 2
    terminal.stop()
    down = terminal.posctl("status")
    assert down.returncode == 1
    assert "cannot talk to posd" in json.loads(down.stdout)["error"]


def test_second_posd_refuses_to_steal_a_live_socket(make_terminal):
    terminal = make_terminal().start()

    second = subprocess.run([TERMINAL_PYTHON, str(POSD)], env=dict(os.environ, POS_ROOT=str(terminal.root)),
                            capture_output=True, text=True, timeout=10, check=False)

    assert second.returncode == 1
    assert "another posd is already serving" in second.stderr
    assert terminal.ctl("status")["ok"]


# --- build.py -----------------------------------------------------------------------------------


def build(out, version="1.2.0", *extra):
    result = subprocess.run([sys.executable, str(BUILD), "--version", version, "--out", str(out), *extra],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def dpkg_deb(*args):
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True).stdout


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@needs_dpkg
def test_build_writes_a_deb_and_a_bundle_with_matching_checksums(tmp_path):
    summary = build(tmp_path)

    deb, bundle = summary["artifacts"]["deb"], summary["artifacts"]["bundle"]
    assert Path(deb["path"]).name == "posd_1.2.0_all.deb" and sha256(deb["path"]) == deb["sha256"]
    assert Path(bundle["path"]).name == "posd-1.2.0.tar.gz" and sha256(bundle["path"]) == bundle["sha256"]
    listing = dpkg_deb("-c", deb["path"])
    for path in ("./usr/sbin/posd", "./usr/bin/posctl", "./usr/lib/posd/posd.py", "./usr/share/posd/VERSION"):
        assert path in listing
    fields = dpkg_deb("-f", deb["path"])
    assert "Package: posd\n" in fields and "Version: 1.2.0\n" in fields and "Depends" not in fields
    with tarfile.open(bundle["path"]) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("1.2.0/MANIFEST.json").read())
        assert all(name == "1.2.0" or name.startswith("1.2.0/") for name in names)
        assert {"bin/posd", "bin/posctl", "lib/posd.py", "VERSION"} <= set(manifest["files"])
        for rel, digest in manifest["files"].items():
            assert hashlib.sha256(tar.extractfile(f"1.2.0/{rel}").read()).hexdigest() == digest
        assert b"APP_VERSION = '1.2.0'" in tar.extractfile("1.2.0/lib/posd.py").read()


@needs_dpkg
def test_building_twice_gives_identical_artifacts(tmp_path):
    first = build(tmp_path / "a")["artifacts"]
    second = build(tmp_path / "b")["artifacts"]
    broken = build(tmp_path / "c", "1.2.0", "--broken")["artifacts"]

    for kind in ("deb", "bundle"):
        assert first[kind]["sha256"] == second[kind]["sha256"]
    assert broken["bundle"]["sha256"] != first["bundle"]["sha256"]


def test_build_refuses_a_version_that_is_not_a_debian_version(tmp_path):
    result = subprocess.run([sys.executable, str(BUILD), "--version", "1.2 beta", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert "not a plain Debian version" in result.stderr
    assert list(tmp_path.iterdir()) == []


@needs_dpkg
@pytest.mark.parametrize(("extra", "healthy", "detail"), [
    ((), True, "ok"),
    (("--broken",), False, "self-test failed: release 9.9.9 is built broken (rollback drill)"),
])
def test_bundle_launcher_runs_the_built_release(tmp_path, make_terminal, extra, healthy, detail):
    """bin/posd of an unpacked bundle starts the baked posd with the Python named in /etc/pos/python."""
    bundle = build(tmp_path / "out", "9.9.9", *extra)["artifacts"]["bundle"]["path"]
    app = tmp_path / "app"
    with tarfile.open(bundle) as tar:
        tar.extractall(app, filter="data")
    terminal = make_terminal()
    (terminal.root / "etc" / "pos" / "python").write_text(TERMINAL_PYTHON + "\n")

    terminal.start([str(app / "9.9.9" / "bin" / "posd")])
    status = terminal.ctl("status")

    assert (status["app_version"], status["healthy"], status["health_detail"]) == ("9.9.9", healthy, detail)
    assert terminal.stop() == 0
