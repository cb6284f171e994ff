#!/usr/bin/env python3
"""posd: the POS application simulator that runs on every lab terminal.

It behaves like the payment app of a real terminal as far as a fleet update can notice: it sells
(synthetic sales at a steady pace), keeps a journal of every sale in SQLite with continuous
sequence numbers (STAN, batch, invoice), uploads sales to the acquirer, keeps some sales offline
(pending) for a while, and answers a control API on a Unix socket so that an update can drain it
(maintenance), upload pending sales, reload data packs and check health.

The paths are those of docs/architecture.md ("A terminal, from the inside"). Every absolute path
is resolved under the prefix in the environment variable POS_ROOT (default "/"), so that tests run
a terminal in a temporary directory on any machine.

Data packs live in /var/lib/pos/packs/<pack>/current/ and hold PACK.json
{"name", "version", "files": {relpath: sha256}} plus their files:

* params:   endpoints.json {"acquirer_url": "http://..."}; fees.json (a JSON object, carried as
            is); bins.json, the synthetic BIN ranges sales draw card numbers from, either
            {"ranges": [{"bin": "999999", "length": 16}, ...]} or a list of such objects or of BIN
            strings; counters.json, optional, {"batch_floor": N}.
* catalog:  catalog.csv with the header sku,name,price_cents.
* merchant: profile.json {"merchant_id", "terminal_id", "name", "store", "currency",
            "receipt_header"}; only "currency" is required.

Card numbers are synthetic test PANs only: built from the BINs of the params pack (the lab ships
99xxxx ranges, which no card scheme issues) and made Luhn-valid. Even so posd never logs a full
PAN, only its first 6 and last 4 digits.

Threads: the main thread waits for SIGTERM; "sell" runs the sale generator and the offline flush;
"control" accepts connections on the socket and starts one thread per connection; a held sale
(hold_sale) runs in a thread of its own. The Till decides who may sell, the Journal serialises
every write behind one lock.

This file runs on terminals: standard library only, Python 3.9 or newer.
"""

import contextlib
import csv
import importlib
import json
import os
import random
import signal
import socket
import sqlite3
import sys
import threading
import time

# lab/posd/build.py rewrites these two lines when it packages a release; keep their shape.
APP_VERSION = "0.0.0+dev"  # posd-build: version
BROKEN = False  # posd-build: broken

PACK_NAMES = ("params", "catalog", "merchant")
PACK_REQUIRED_FILES = {
    "params": ("endpoints.json", "fees.json", "bins.json"),
    "catalog": ("catalog.csv",),
    "merchant": ("profile.json",),
}
DEFAULT_CONF = {
    "sale_interval_s": 5.0,
    "offline_ratio": 0.3,
    "acquirer_url": None,
    "sale_duration_s": 0.5,
    "offline_flush_s": 600.0,
}
STAN_MAX = 999999  # ISO 8583 field 11 has six digits; the STAN wraps to 1 after this
UPLOAD_CHUNK = 200  # transactions per POST, so that a long offline spell uploads in bounded requests
AUTO_UPLOAD_TIMEOUT_S = 3.0  # an online sale must not stall the till for long on a dead link
MAX_REQUEST_BYTES = 65536
MAX_WAIT_S = 3600.0  # upper bound for any timeout a client asks for
# The lab's hardware simulation (`poslab fault SERIAL selftest-fail VERSION`): the self-test fails
# while this unit runs one of the app versions listed, like a hardware fault that only a new
# release's self-test exercises. A real terminal has no such file.
SIM_SELFTEST_FAIL = "/var/lib/possim/selftest-fail"
# `poslab fault SERIAL slow-reload SECONDS`: each reload asked for takes that much longer, as on a
# terminal starved of CPU or with slow flash.
SIM_SLOW_RELOAD = "/var/lib/possim/slow-reload"


def root_path(path):
    """Return the terminal path `path` (absolute) resolved under POS_ROOT."""
    return os.path.join(os.environ.get("POS_ROOT") or "/", path.lstrip("/"))


def utc_now(ts=None):
    """ISO 8601 UTC time with milliseconds; sorts as text, which the offline flush relies on."""
    ts = time.time() if ts is None else ts
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"


def log(message):
    """One line per event on stderr (the lab's init collects it)."""
    sys.stderr.write(f"{utc_now()} posd: {message}\n")
    sys.stderr.flush()


def mask_pan(pan):
    """First 6 and last 4 digits, the rest starred: the only form of a PAN that may be logged."""
    return pan[:6] + "*" * max(len(pan) - 10, 0) + pan[-4:]


def luhn_check_digit(body):
    """The Luhn check digit that makes `body` + digit a valid card number."""
    total = 0
    for index, char in enumerate(reversed(body)):
        digit = int(char)
        if index % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return str((10 - total % 10) % 10)


def luhn_valid(pan):
    return pan.isdigit() and len(pan) > 1 and luhn_check_digit(pan[:-1]) == pan[-1]


def _sha256_constructor():
    """The interpreter's built-in SHA-256 when there is one: hashlib loads OpenSSL, which alone costs
    about 4 MB of RSS, a quarter of what posd may use on a small terminal."""
    for name in ("_sha2", "_sha256"):  # Python 3.12+, then 3.9-3.11
        try:
            return importlib.import_module(name).sha256
        except (ImportError, AttributeError):
            continue
    import hashlib  # noqa: PLC0415 - only on builds without the built-in module

    return hashlib.sha256


def new_txn_id():
    """A random (version 4) UUID in its usual text form, as uuid.uuid4() makes it; the uuid module
    itself pulls in platform and subprocess on Python 3.9, about 1 MB of RSS for one function."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


SHA256 = _sha256_constructor()


def sha256_file(path):
    digest = SHA256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(65536), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path, text):
    """Write a small file by temp file + rename so that a crash never leaves half of it."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


# --- configuration -------------------------------------------------------------------------------

class ConfigError(Exception):
    """A terminal file is missing or wrong; the message names the file."""


def read_json(terminal_path):
    try:
        with open(root_path(terminal_path)) as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {terminal_path}: {exc}") from exc


def load_terminal():
    """Identity of the terminal, written by provisioning; posd cannot run without a serial."""
    terminal = read_json("/etc/pos/terminal.json")
    serial = terminal.get("serial") if isinstance(terminal, dict) else None
    if not isinstance(serial, str) or not serial:
        raise ConfigError("/etc/pos/terminal.json has no 'serial'")
    return terminal


def load_conf():
    """posd.conf with defaults filled in. A missing file means defaults; a wrong value stops posd."""
    conf = dict(DEFAULT_CONF)
    if os.path.exists(root_path("/etc/pos/posd.conf")):
        given = read_json("/etc/pos/posd.conf")
        if not isinstance(given, dict):
            raise ConfigError("/etc/pos/posd.conf must hold a JSON object")
        conf.update(given)
    for key in ("sale_interval_s", "sale_duration_s", "offline_flush_s", "offline_ratio"):
        value = conf[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"/etc/pos/posd.conf: {key} must be a number >= 0, not {value!r}")
        conf[key] = float(value)
    if conf["offline_ratio"] > 1:
        raise ConfigError("/etc/pos/posd.conf: offline_ratio must be between 0 and 1")
    if conf["sale_interval_s"] <= 0:
        raise ConfigError("/etc/pos/posd.conf: sale_interval_s must be > 0")
    return conf


# --- data packs ----------------------------------------------------------------------------------

class PackError(Exception):
    """A pack is missing or does not match its PACK.json; the message says which and why."""


class Pack:
    """One loaded data pack: where it is, what PACK.json promised, and the parsed content."""

    def __init__(self, name, version, path, files, data):
        self.name = name
        self.version = version
        self.path = path
        self.files = files
        self.data = data


def pack_dir(name):
    return f"/var/lib/pos/packs/{name}/current"


def read_manifest(name, base):
    """PACK.json of the pack in `base`, checked for shape before anything trusts it."""
    try:
        with open(os.path.join(base, "PACK.json")) as handle:
            manifest = json.load(handle)
    except (OSError, ValueError) as exc:
        raise PackError(f"pack {name}: cannot read {pack_dir(name)}/PACK.json: {exc}") from exc
    if not isinstance(manifest, dict):
        manifest = {}
    files = manifest.get("files")
    if manifest.get("name") != name or not isinstance(files, dict) or not manifest.get("version"):
        raise PackError(f"pack {name}: PACK.json needs name {name!r}, a version and files")
    for rel in files:
        if rel.startswith("/") or ".." in rel.split("/"):
            raise PackError(f"pack {name}: PACK.json lists a path outside the pack: {rel!r}")
    for rel in PACK_REQUIRED_FILES[name]:
        if rel not in files:
            raise PackError(f"pack {name}: PACK.json does not list {rel}")
    return manifest


def verify_files(name, base, files):
    """None when every file matches its sha256 in PACK.json, else the first mismatch."""
    for rel in sorted(files):
        try:
            actual = sha256_file(os.path.join(base, rel))
        except OSError:
            return f"pack {name}: {rel} is missing"
        if actual != files[rel]:
            return f"pack {name}: {rel} does not match its sha256 in PACK.json"
    return None


def parse_bins(value):
    """BIN ranges as [(prefix, pan_length)]; accepts the shapes listed in the module docstring."""
    ranges = value.get("ranges") if isinstance(value, dict) else value
    if not isinstance(ranges, list) or not ranges:
        raise PackError("pack params: bins.json has no BIN ranges")
    parsed = []
    for item in ranges:
        entry = {"bin": item} if isinstance(item, str) else item
        prefix = str(entry.get("bin", entry.get("prefix", ""))) if isinstance(entry, dict) else ""
        length = entry.get("length", 16) if isinstance(entry, dict) else 0
        if not prefix.isdigit() or not 6 <= len(prefix) <= 8 or not isinstance(length, int) \
                or not 13 <= length <= 19:
            raise PackError(f"pack params: bins.json has a bad range: {item!r}")
        parsed.append((prefix, length))
    return parsed


def parse_params(base, files):
    data = {}
    optional = ("counters.json",) if "counters.json" in files else ()
    for rel in (*PACK_REQUIRED_FILES["params"], *optional):
        with open(os.path.join(base, rel)) as handle:
            data[rel] = json.load(handle)
    url = data["endpoints.json"].get("acquirer_url") if isinstance(data["endpoints.json"], dict) else None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise PackError("pack params: endpoints.json needs an http(s) acquirer_url")
    if not isinstance(data["fees.json"], dict):
        raise PackError("pack params: fees.json must hold a JSON object")
    floor = data.get("counters.json", {}).get("batch_floor", 1)
    if isinstance(floor, bool) or not isinstance(floor, int) or floor < 1:
        raise PackError("pack params: counters.json batch_floor must be an integer >= 1")
    return {"acquirer_url": url.rstrip("/"), "fees": data["fees.json"],
            "bins": parse_bins(data["bins.json"]), "batch_floor": floor}


def parse_catalog(base, files):
    with open(os.path.join(base, "catalog.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    items = []
    for row in rows:
        try:
            items.append((row["sku"], row["name"], int(row["price_cents"])))
        except (KeyError, TypeError, ValueError):
            raise PackError(f"pack catalog: catalog.csv needs sku,name,price_cents: {row!r}") from None
    if not items or any(price <= 0 for _, _, price in items):
        raise PackError("pack catalog: catalog.csv needs at least one item with a positive price")
    return {"items": items}


def parse_merchant(base, files):
    with open(os.path.join(base, "profile.json")) as handle:
        profile = json.load(handle)
    currency = profile.get("currency") if isinstance(profile, dict) else None
    if not isinstance(currency, str) or len(currency) != 3:
        raise PackError("pack merchant: profile.json needs a three-letter currency")
    return {"profile": profile, "currency": currency.upper()}


PACK_PARSERS = {"params": parse_params, "catalog": parse_catalog, "merchant": parse_merchant}


def load_pack(name):
    """Load and verify one pack; raises PackError saying what an operator has to fix."""
    base = root_path(pack_dir(name))
    if not os.path.isdir(base):
        raise PackError(f"pack {name} missing: no {pack_dir(name)}")
    manifest = read_manifest(name, base)
    problem = verify_files(name, base, manifest["files"])
    if problem:
        raise PackError(problem)
    try:
        data = PACK_PARSERS[name](base, manifest["files"])
    except (OSError, ValueError, AttributeError, TypeError, KeyError, csv.Error) as exc:
        raise PackError(f"pack {name}: unreadable content: {exc}") from exc
    # Remember the version directory, not `current`: after a data switch health keeps checking the
    # files posd actually loaded until `reload` picks up the new version.
    return Pack(name, str(manifest["version"]), os.path.realpath(base), manifest["files"], data)


# --- journal -------------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS txn (
    id TEXT PRIMARY KEY, serial TEXT NOT NULL, stan INTEGER NOT NULL, batch INTEGER NOT NULL,
    invoice INTEGER NOT NULL, amount_cents INTEGER NOT NULL, currency TEXT NOT NULL,
    pan TEXT NOT NULL, sku TEXT NOT NULL, created_at TEXT NOT NULL, offline INTEGER NOT NULL,
    uploaded INTEGER NOT NULL DEFAULT 0, uploaded_at TEXT);
CREATE INDEX IF NOT EXISTS txn_pending ON txn (uploaded, created_at);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters (name, value) VALUES ('stan', 0), ('batch', 1), ('invoice', 0);
"""
UPLOAD_COLUMNS = ("id", "stan", "batch", "invoice", "amount_cents", "currency", "pan", "sku", "created_at")


class Journal:
    """The SQLite journal. One connection shared by all threads behind a lock, because a sale
    (its row and the counters) must be one transaction and SQLite connections are not thread-safe.
    """

    def __init__(self, path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so a transaction is exactly a sale.
        self._db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a sale the till has confirmed must survive a power cut, not only a crash.
        self._db.execute("PRAGMA synchronous=FULL")
        # A small page cache: the journal is read by index, and RSS is scarce on a terminal.
        self._db.execute("PRAGMA cache_size=-512")
        with self.transaction() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    @contextlib.contextmanager
    def transaction(self):
        with self._lock:
            if self._db is None:
                raise sqlite3.ProgrammingError("journal is closed")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql, args=()):
        with self._lock:
            if self._db is None:
                raise sqlite3.ProgrammingError("journal is closed")
            return self._db.execute(sql, args).fetchall()

    def counters(self):
        return dict(self.query("SELECT name, value FROM counters"))

    def raise_batch_floor(self, floor):
        """Batch numbers never go backwards, but a params pack may push them up to a floor."""
        with self.transaction() as db:
            db.execute("UPDATE counters SET value = ? WHERE name = 'batch' AND value < ?", (floor, floor))

    def record_sales(self, sales):
        """Give each sale the next STAN and invoice and store it, all in one transaction.

        Returns the stored rows as dicts. A crash before COMMIT leaves neither rows nor counter
        changes, so sequence numbers stay continuous.
        """
        stored = []
        with self.transaction() as db:
            counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
            for sale in sales:
                counters["stan"] = counters["stan"] % STAN_MAX + 1
                counters["invoice"] += 1
                row = dict(sale, stan=counters["stan"], invoice=counters["invoice"], batch=counters["batch"])
                db.execute(
                    "INSERT INTO txn (id, serial, stan, batch, invoice, amount_cents, currency, pan, sku,"
                    " created_at, offline, uploaded) VALUES (:id, :serial, :stan, :batch, :invoice,"
                    " :amount_cents, :currency, :pan, :sku, :created_at, :offline, 0)", row)
                stored.append(row)
            for name in ("stan", "invoice"):
                db.execute("UPDATE counters SET value = ? WHERE name = ?", (counters[name], name))
        return stored

    def pending(self, offline=None, created_before=None, limit=UPLOAD_CHUNK):
        """Pending (not uploaded) sales, oldest first, as dicts ready to upload."""
        sql = "SELECT {} FROM txn WHERE uploaded = 0".format(", ".join(UPLOAD_COLUMNS))
        args = []
        if offline is not None:
            sql += " AND offline = ?"
            args.append(1 if offline else 0)
        if created_before is not None:
            sql += " AND created_at <= ?"
            args.append(created_before)
        sql += " ORDER BY invoice LIMIT ?"
        args.append(limit)
        return [dict(zip(UPLOAD_COLUMNS, row)) for row in self.query(sql, args)]

    def pending_count(self):
        return self.query("SELECT COUNT(*) FROM txn WHERE uploaded = 0")[0][0]

    def mark_uploaded(self, ids):
        with self.transaction() as db:
            db.executemany("UPDATE txn SET uploaded = 1, uploaded_at = ? WHERE id = ? AND uploaded = 0",
                           [(utc_now(), txn_id) for txn_id in ids])

    def quick_check(self):
        return ", ".join(row[0] for row in self.query("PRAGMA quick_check"))

    def close(self):
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


# --- acquirer client -----------------------------------------------------------------------------

class UploadError(Exception):
    """The acquirer could not take the upload; the message names the acquirer and the reason."""


MAX_ANSWER_BYTES = 1 << 20


def split_http_url(url):
    """(host, port, path) of an http:// URL; ValueError for anything else."""
    if not url.startswith("http://"):
        raise ValueError(f"not an http:// URL: {url}")
    netloc, _, path = url[len("http://"):].partition("/")
    host, port = netloc, "80"
    if netloc.startswith("["):  # an IPv6 literal, [::1]:8080
        host, _, rest = netloc[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else port
    elif ":" in netloc:
        host, _, port = netloc.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"bad host or port in {url}")
    return host, int(port), "/" + path


def answer_end(data):
    """Where the HTTP answer that starts `data` ends: None while its head is incomplete, infinity
    when it has no Content-Length (the server closing the connection ends it)."""
    head, sep, _ = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(head) + len(sep) + int(value.strip())
    return float("inf")


def read_http_answer(sock, deadline):
    """(status, reason, body) of an HTTP/1.x answer, read until its Content-Length or EOF."""
    data, end = b"", None
    while end is None or len(data) < end:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_ANSWER_BYTES:
            raise ValueError("answer too large")
        end = answer_end(data)
    head, sep, body = data.partition(b"\r\n\r\n")
    words = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
    if not sep or len(words) < 2 or not words[0].startswith("HTTP/") or not words[1].isdigit():
        raise ValueError("not an HTTP answer")
    return int(words[1]), words[2] if len(words) > 2 else "", body


def http_post_json(url, payload, timeout):
    """POST a JSON body; returns (status, reason, body). OSError when the host cannot be reached.

    http.client and urllib.request would do this, but importing them (with email, ssl and OpenSSL)
    costs about 8 MB of RSS, half of posd's budget on a small terminal; one HTTP/1.0 request with
    Content-Length is all the acquirer protocol needs. https:// URLs still go through urllib.
    """
    if url.startswith("https://"):
        return urllib_post_json(url, payload, timeout)
    host, port, path = split_http_url(url)
    deadline = time.monotonic() + timeout
    request = (f"POST {path} HTTP/1.0\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode("ascii")
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request + payload)
        return read_http_answer(sock, deadline)


def urllib_post_json(url, payload, timeout):
    # Imported only for https: see http_post_json for what these cost.
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    request = urllib.request.Request(url, data=payload, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.reason, response.read(MAX_ANSWER_BYTES)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.reason, b""
    except urllib.error.URLError as exc:
        raise OSError(exc.reason) from exc


def post_transactions(url, serial, rows, timeout):
    """POST rows to the acquirer and return the set of ids it acknowledged."""
    endpoint = url + "/v1/transactions"
    payload = json.dumps({"serial": serial, "transactions": rows}).encode()
    try:
        status, reason, body = http_post_json(endpoint, payload, max(timeout, 0.1))
    except socket.timeout as exc:
        raise UploadError(f"acquirer {endpoint} did not answer within {max(timeout, 0.1):.1f}s") from exc
    except OSError as exc:
        raise UploadError(f"acquirer {endpoint} unreachable: {exc}") from exc
    except ValueError as exc:
        raise UploadError(f"acquirer {endpoint} gave no usable answer: {exc}") from exc
    if status != 200:
        raise UploadError(f"acquirer {endpoint} answered HTTP {status} {reason}".rstrip())
    try:
        answer = json.loads(body.decode())
    except ValueError as exc:
        raise UploadError(f"acquirer {endpoint} sent an answer that is not JSON: {exc}") from exc
    accepted = answer.get("accepted") if isinstance(answer, dict) else None
    if not isinstance(accepted, list):
        raise UploadError(f"acquirer {endpoint} answered without an 'accepted' list")
    return {str(txn_id) for txn_id in accepted}


# --- the till: who may sell right now ------------------------------------------------------------

class Sale:
    """An in-flight sale. `finish` ends its wait early (release or shutdown)."""

    def __init__(self, duration):
        self.duration = duration  # None: wait until released
        self.finish = threading.Event()
        self.aborted = False


class Till:
    """One sale at a time, none in maintenance.

    Maintenance is a flag file rather than memory so that a reboot in the middle of an update
    keeps the terminal out of service until the update says maintenance_leave.
    """

    def __init__(self, flag_path):
        self._cv = threading.Condition()
        self._flag_path = flag_path
        self._entering = 0
        self.sale = None
        self.maintenance = os.path.exists(flag_path)

    def state(self):
        with self._cv:
            if self.maintenance:
                return "maintenance"
            return "in-transaction" if self.sale is not None else "idle"

    def begin(self, duration, wait=0.0):
        """Start a sale, waiting up to `wait` s for the current one. Returns (sale, None) or
        (None, reason)."""
        deadline = time.monotonic() + wait
        with self._cv:
            while self.sale is not None and not self.maintenance and not self._entering:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cv.wait(remaining)
            if self.maintenance:
                return None, "terminal is in maintenance"
            if self._entering:
                return None, "terminal is entering maintenance"
            if self.sale is not None:
                return None, "a sale is already in progress"
            self.sale = Sale(duration)
            return self.sale, None

    def end(self, sale):
        with self._cv:
            if self.sale is sale:
                self.sale = None
            self._cv.notify_all()

    def release(self):
        with self._cv:
            if self.sale is None:
                return False
            self.sale.finish.set()
            return True

    def abort(self):
        """Make the in-flight sale give up without a row (shutdown)."""
        with self._cv:
            if self.sale is not None:
                self.sale.aborted = True
                self.sale.finish.set()

    def wait_idle(self, timeout):
        deadline = time.monotonic() + timeout
        with self._cv:
            while self.sale is not None and time.monotonic() < deadline:
                self._cv.wait(deadline - time.monotonic())
            return self.sale is None

    def enter_maintenance(self, timeout):
        """Stop new sales at once, wait up to `timeout` s for the in-flight one, then go into
        maintenance. False (and back to selling) if the sale did not finish in time."""
        with self._cv:
            self._entering += 1
            try:
                deadline = time.monotonic() + timeout
                while self.sale is not None and time.monotonic() < deadline:
                    self._cv.wait(deadline - time.monotonic())
                if self.sale is not None:
                    return False
                if not self.maintenance:
                    write_atomic(self._flag_path, json.dumps({"since": utc_now()}) + "\n")
                    self.maintenance = True
                return True
            finally:
                self._entering -= 1
                self._cv.notify_all()

    def leave_maintenance(self):
        with self._cv:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._flag_path)
            self.maintenance = False
            self._cv.notify_all()


# --- the application -----------------------------------------------------------------------------

class Posd:
    """The application: packs, journal, till, sale generator and uploads."""

    def __init__(self, terminal, conf):
        self.terminal = terminal
        self.conf = conf
        self.serial = terminal["serial"]
        # Seeded from the serial so that a terminal's pace and basket are repeatable run to run.
        self.rng = random.Random(self.serial)
        self.journal = Journal(root_path("/var/lib/pos/journal.db"))
        self.till = Till(root_path("/var/lib/pos/maintenance"))
        self.stop = threading.Event()
        self.packs = {}
        self.pack_errors = {}
        self.generated = 0  # sales recorded by this process since it started
        self._generated_lock = threading.Lock()
        self._upload_lock = threading.Lock()
        self._threads = []
        self.reload()

    # packs

    def reload(self):
        """Re-read all packs; a pack that fails keeps posd from selling until it is fixed."""
        packs, errors = {}, {}
        for name in PACK_NAMES:
            try:
                packs[name] = load_pack(name)
            except PackError as exc:
                errors[name] = str(exc)
        self.packs, self.pack_errors = packs, errors
        if "params" in packs:
            self.journal.raise_batch_floor(packs["params"].data["batch_floor"])
        versions = ", ".join(f"{name}={pack.version}" for name, pack in sorted(packs.items()))
        problems = "; " + "; ".join(errors.values()) if errors else ""
        log(f"packs loaded: {versions or 'none'}{problems}")

    def packs_ready(self):
        return len(self.packs) == len(PACK_NAMES)

    def pack_versions(self):
        return {name: (self.packs[name].version if name in self.packs else None) for name in PACK_NAMES}

    def acquirer_url(self):
        params = self.packs.get("params")
        url = params.data["acquirer_url"] if params else self.conf.get("acquirer_url")
        if not url:
            raise UploadError("no acquirer_url: the params pack is not loaded and posd.conf has none")
        return url.rstrip("/")

    # selling

    def synthetic_pan(self, bins):
        """A Luhn-valid test PAN from one of the pack's synthetic BIN ranges."""
        prefix, length = self.rng.choice(bins)
        body = prefix + "".join(str(self.rng.randrange(10)) for _ in range(length - len(prefix) - 1))
        return body + luhn_check_digit(body)

    def new_sale(self, offline):
        packs = self.packs
        sku, _, price = self.rng.choice(packs["catalog"].data["items"])
        return {"id": new_txn_id(), "serial": self.serial, "amount_cents": price,
                "currency": packs["merchant"].data["currency"],
                "pan": self.synthetic_pan(packs["params"].data["bins"]), "sku": sku,
                "created_at": utc_now(), "offline": 1 if offline else 0}

    def record(self, offline_flags):
        """Store one sale per flag; returns the stored rows."""
        rows = self.journal.record_sales([self.new_sale(flag) for flag in offline_flags])
        with self._generated_lock:  # the till and make_pending record from different threads
            self.generated += len(rows)
        for row in rows:
            mode = "offline" if row["offline"] else "online"
            log(f"sale stan={row['stan']} batch={row['batch']} invoice={row['invoice']}"
                f" amount={row['amount_cents']} {row['currency']} pan={mask_pan(row['pan'])} {mode}")
        return rows

    def run_sale(self, sale):
        """Hold the till for the sale's duration, then store the sale (unless aborted)."""
        try:
            sale.finish.wait(sale.duration)
            if sale.aborted or not self.packs_ready():
                log("sale aborted before completion; nothing recorded")
                return None
            offline = self.rng.random() < self.conf["offline_ratio"]
            row = self.record([offline])[0]
        except (sqlite3.Error, OSError) as exc:
            log(f"sale failed, nothing recorded: {exc}")
            return None
        finally:
            self.till.end(sale)
        if not row["offline"]:
            self.upload_quietly(offline=False, timeout=AUTO_UPLOAD_TIMEOUT_S)
        return row

    def start_held_sale(self, seconds):
        """The lab's txn-inflight fault: a sale that stays in-transaction for `seconds` (0: until
        release_sale)."""
        if not self.packs_ready():
            return "packs not loaded: {}".format("; ".join(self.pack_errors.values()))
        sale, reason = self.till.begin(seconds or None, wait=self.conf["sale_duration_s"] + 1)
        if sale is None:
            return reason
        thread = threading.Thread(target=self.run_sale, args=(sale,), name="held-sale", daemon=True)
        thread.start()
        return None

    def sell_loop(self):
        """Sell at the configured pace while idle, packs loaded and not in maintenance; between
        sales, send offline sales that are old enough (on their own clock: a slow sale pace must not
        hold offline sales back)."""
        flush_every = min(max(self.conf["offline_flush_s"] / 4, 0.5), 60.0)
        next_flush = time.monotonic() + flush_every
        next_sale = time.monotonic() + self.next_interval()
        while not self.stop.wait(max(min(next_sale, next_flush) - time.monotonic(), 0)):
            try:
                if time.monotonic() >= next_flush:
                    self.flush_offline()
                    next_flush = time.monotonic() + flush_every
                if time.monotonic() >= next_sale:
                    self.try_sale()
                    next_sale = time.monotonic() + self.next_interval()
            except Exception as exc:  # a bad moment (disk full) must not stop the till
                log(f"sale loop error: {type(exc).__name__}: {exc}")

    def next_interval(self):
        """The pause before the next sale: the configured interval with +-50 % jitter."""
        return self.conf["sale_interval_s"] * self.rng.uniform(0.5, 1.5)

    def try_sale(self):
        if self.packs_ready():
            sale, _ = self.till.begin(self.conf["sale_duration_s"])
            if sale is not None:
                self.run_sale(sale)

    # uploading

    def upload(self, timeout, offline=None, created_before=None):
        """Send matching pending sales to the acquirer; returns (uploaded, pending)."""
        deadline = time.monotonic() + timeout
        if not self._upload_lock.acquire(timeout=max(timeout, 0)):
            raise UploadError(f"another upload is still running after {timeout:g}s")
        try:
            url = self.acquirer_url()
            uploaded = 0
            while True:
                rows = self.journal.pending(offline=offline, created_before=created_before)
                if not rows:
                    break
                accepted = post_transactions(url, self.serial, rows, deadline - time.monotonic())
                ids = [row["id"] for row in rows if row["id"] in accepted]
                self.journal.mark_uploaded(ids)
                uploaded += len(ids)
                if len(ids) < len(rows):
                    break  # the acquirer declined some; retrying them now would loop forever
                if time.monotonic() >= deadline:
                    break  # out of time: the rest waits for the next upload, `pending` says how many
            return uploaded, self.journal.pending_count()
        finally:
            self._upload_lock.release()

    def upload_quietly(self, **kwargs):
        """Best-effort upload: a failure only leaves sales pending and a log line."""
        try:
            uploaded, pending = self.upload(**kwargs)
            if uploaded:
                log(f"uploaded {uploaded} sales, {pending} pending")
        except (UploadError, sqlite3.Error) as exc:
            log(f"upload deferred: {exc}")

    def flush_offline(self):
        """Offline sales are sent once older than offline_flush_s, as a real terminal would."""
        if self.till.maintenance:
            return  # an update owns the terminal; it uploads explicitly
        cutoff = utc_now(time.time() - self.conf["offline_flush_s"])
        self.upload_quietly(offline=True, created_before=cutoff, timeout=AUTO_UPLOAD_TIMEOUT_S * 4)

    # health and status

    def self_check(self):
        """None when the app's own logic works, else what failed."""
        if BROKEN:
            return f"self-test failed: release {APP_VERSION} is built broken (rollback drill)"
        try:
            with open(SIM_SELFTEST_FAIL, encoding="utf-8") as handle:
                if APP_VERSION in handle.read().split():
                    return f"self-test failed: hardware fault under app {APP_VERSION} (lab fault selftest-fail)"
        except OSError:
            pass
        if not luhn_valid("4" + "0" * 14 + luhn_check_digit("4" + "0" * 14)):
            return "self-test failed: Luhn check digit generator"
        return None

    def health(self):
        """(healthy, detail): packs loaded and intact on disk, journal sound, self-test passes."""
        problems = []
        failed = self.self_check()
        if failed:
            problems.append(failed)
        for name in PACK_NAMES:
            pack = self.packs.get(name)
            problem = verify_files(name, pack.path, pack.files) if pack else self.pack_errors.get(name)
            if problem:
                problems.append(problem)
        try:
            check = self.journal.quick_check()
        except sqlite3.Error as exc:
            check = str(exc)
        if check != "ok":
            problems.append(f"journal quick_check: {check}")
        return not problems, "; ".join(problems) or "ok"

    def status(self):
        healthy, detail = self.health()
        return {"ok": True, "state": self.till.state(), "app_version": APP_VERSION,
                "packs": self.pack_versions(), "pending": self.journal.pending_count(),
                "healthy": healthy, "health_detail": detail, "counters": self.journal.counters(),
                "generated": self.generated, "serial": self.serial,
                "model": self.terminal.get("model"), "maintenance": self.till.maintenance,
                "boot_id": read_boot_id()}

    def shutdown(self):
        """Stop selling, abort the in-flight sale (no half row), then close the journal."""
        self.stop.set()
        self.till.abort()
        self.till.wait_idle(5)
        for thread in self._threads:
            thread.join(AUTO_UPLOAD_TIMEOUT_S + 2)
        self.journal.close()


def read_boot_id():
    try:
        with open(root_path("/run/pos/boot_id")) as handle:
            return handle.read().strip()
    except OSError:
        return None


# --- control API ---------------------------------------------------------------------------------

class BadRequest(Exception):
    """The request itself is wrong; the message says how."""


def number_arg(request, name, default, maximum=MAX_WAIT_S):
    value = request.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= maximum:
        raise BadRequest(f"{name} must be a number between 0 and {maximum:g}, not {value!r}")
    return float(value)


# One function per op of the control API (docs/architecture.md, "posd control API"): each takes
# the parsed request and returns the response; hold_sale, release_sale and make_pending are the
# lab's fault hooks.

def op_status(app, request):
    return app.status()


def op_health(app, request):
    healthy, detail = app.health()
    return {"ok": True, "healthy": healthy, "health_detail": detail, "app_version": APP_VERSION}


def op_maintenance_enter(app, request):
    timeout = number_arg(request, "timeout", 30)
    if not app.till.enter_maintenance(timeout):
        return {"ok": False, "error": f"in-transaction: sale still in progress after {timeout:g}s",
                "state": app.till.state()}
    log("maintenance entered")
    return {"ok": True, "state": app.till.state()}


def op_maintenance_leave(app, request):
    app.till.leave_maintenance()
    log("maintenance left")
    return {"ok": True, "state": app.till.state()}


def op_upload(app, request):
    timeout = number_arg(request, "timeout", 30)
    try:
        uploaded, pending = app.upload(timeout=timeout)
    except UploadError as exc:
        log(f"upload failed: {exc}")
        return {"ok": False, "error": str(exc), "uploaded": 0, "pending": app.journal.pending_count()}
    log(f"upload: {uploaded} uploaded, {pending} pending")
    return {"ok": True, "uploaded": uploaded, "pending": pending}


def op_reload(app, request):
    try:
        with open(root_path(SIM_SLOW_RELOAD), encoding="utf-8") as handle:
            time.sleep(min(float(handle.read().strip() or 0), MAX_WAIT_S))
    except (OSError, ValueError):
        pass
    app.reload()
    healthy, detail = app.health()
    return {"ok": True, "packs": app.pack_versions(), "healthy": healthy, "health_detail": detail}


def op_hold_sale(app, request):
    seconds = number_arg(request, "seconds", 0)
    reason = app.start_held_sale(seconds)
    if reason:
        return {"ok": False, "error": f"cannot hold a sale: {reason}"}
    return {"ok": True, "state": app.till.state(), "seconds": seconds}


def op_release_sale(app, request):
    if not app.till.release():
        return {"ok": False, "error": "no sale in progress"}
    return {"ok": True}


def op_make_pending(app, request):
    count = request.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10000:
        raise BadRequest(f"count must be an integer between 1 and 10000, not {count!r}")
    if not app.packs_ready():
        return {"ok": False, "error": "packs not loaded: {}".format("; ".join(app.pack_errors.values()))}
    rows = app.record([True] * count)
    return {"ok": True, "recorded": len(rows), "ids": [row["id"] for row in rows],
            "pending": app.journal.pending_count()}


OPS = {
    "status": op_status,
    "health": op_health,
    "maintenance_enter": op_maintenance_enter,
    "maintenance_leave": op_maintenance_leave,
    "upload": op_upload,
    "reload": op_reload,
    "hold_sale": op_hold_sale,
    "release_sale": op_release_sale,
    "make_pending": op_make_pending,
}


def handle_request(app, line):
    """One request line in, one response dict out; never raises."""
    try:
        request = json.loads(line)
    except ValueError as exc:
        return {"ok": False, "error": f"request is not JSON: {exc}"}
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        return {"ok": False, "error": "request must be a JSON object with a string 'op'"}
    handler = OPS.get(request["op"])
    if handler is None:
        valid = ", ".join(sorted(OPS))
        return {"ok": False, "error": f"unknown op {request['op']!r}; valid ops: {valid}"}
    try:
        return handler(app, request)
    except BadRequest as exc:
        return {"ok": False, "error": "{}: {}".format(request["op"], exc)}
    except Exception as exc:  # one failing op must not take the daemon down
        log("op {} failed: {}: {}".format(request["op"], type(exc).__name__, exc))
        return {"ok": False, "error": "{} failed: {}: {}".format(request["op"], type(exc).__name__, exc)}


class ControlServer:
    """The Unix socket at /run/pos/posd.sock; one thread per connection."""

    def __init__(self, app, path):
        self.app = app
        self.path = path
        self.sock = None

    def bind(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.remove_stale()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o660)
        self.sock.listen(16)
        self.sock.settimeout(0.5)  # lets the accept loop notice shutdown

    def remove_stale(self):
        """Remove a socket left by a dead posd, but never steal one from a live posd."""
        if not os.path.exists(self.path):
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.path)
        except OSError:
            os.unlink(self.path)
            return
        finally:
            probe.close()
        raise ConfigError(f"another posd is already serving {self.path}")

    def serve(self):
        while not self.app.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:  # not TimeoutError: that alias only exists from Python 3.10
                continue
            except OSError:
                if self.app.stop.is_set():
                    return
                raise
            threading.Thread(target=self.converse, args=(conn,), name="ctl", daemon=True).start()

    def converse(self, conn):
        conn.settimeout(600)  # a forgotten client must not keep a thread forever
        try:
            with conn, conn.makefile("rb") as reader:
                while True:
                    line = reader.readline(MAX_REQUEST_BYTES)
                    if not line:
                        return
                    if not line.endswith(b"\n") and len(line) >= MAX_REQUEST_BYTES:
                        response = {"ok": False, "error": f"request longer than {MAX_REQUEST_BYTES} bytes"}
                        conn.sendall((json.dumps(response) + "\n").encode())
                        return
                    if not line.strip():
                        continue
                    response = handle_request(self.app, line.decode("utf-8", "replace"))
                    conn.sendall((json.dumps(response) + "\n").encode())
        except OSError:
            pass  # the client went away; nothing to answer

    def close(self):
        if self.sock is not None:
            self.sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def main(argv=()):
    """Run posd until SIGTERM. It takes no arguments: everything comes from /etc/pos."""
    if argv:
        log(f"cannot start: posd takes no arguments, got {' '.join(argv)}")
        return 2
    try:
        terminal, conf = load_terminal(), load_conf()
        app = Posd(terminal, conf)
    except (ConfigError, sqlite3.Error, OSError) as exc:
        log(f"cannot start: {exc}")
        return 1
    server = ControlServer(app, root_path("/run/pos/posd.sock"))
    try:
        server.bind()
    except (ConfigError, OSError) as exc:
        log(f"cannot start: {exc}")
        app.journal.close()
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: app.stop.set())
    for target, name in ((app.sell_loop, "sell"), (server.serve, "control")):
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        app._threads.append(thread)
    log("started version {} serial {} state {}{}".format(
        APP_VERSION, app.serial, app.till.state(), " (BROKEN build)" if BROKEN else ""))
    while not app.stop.wait(0.5):
        pass
    log("stopping")
    server.close()
    app.shutdown()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
