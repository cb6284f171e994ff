"""Fixtures that run posfleet's terminal modules for real against a terminal laid out in tmp_path.

* `run_module(name, args, root, check=False, diff=True)` runs plugins/modules/<name>.py the way
  Ansible runs a module on a host: a separate Python process reading {"ANSIBLE_MODULE_ARGS": ...}
  from a file, with POS_ROOT set to the terminal's root. The collection (collections/, linked by `make`)
  is on the module's path, so its imports of ansible_collections.posfleet.fleet resolve as in a play.
  Terminal-side modules run under Python 3.9 when one is found (the oldest Python a terminal has);
  the control-node module pos_backup_store runs under this interpreter.
* `make_terminal(style=..., version=...)` builds a terminal tree (terminal.json, posd.conf, factory
  packs, the app installed the model's way: dpkg --root, or an unpacked bundle with `current`) and
  `terminal.boot()` starts a tiny init that keeps the real posd running from the installed app and
  writes /run/pos/posd.pid, like lab/terminal/sbin/posinit.
* `artifacts`: posd 1.0.0 and 1.1.0 built once per session by lab/posd/build.py.
* `dist`: a distribution point on 127.0.0.1 that honours Range requests and can drop a connection
  half-way through a body, to prove that downloads resume.
* `acquirer`: the lab's acquirer simulator, shared by the session.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import os
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import ansible
import pytest

REPO = Path(__file__).resolve().parents[2]
MODULES = REPO / "plugins" / "modules"
MODULE_UTILS = REPO / "plugins" / "module_utils"
POSD_DIR = REPO / "lab" / "posd"
ACQUIRER = REPO / "lab" / "acquirer.py"
ANSIBLE_SITE = str(Path(ansible.__file__).resolve().parents[1])
CONTROL_NODE_MODULES = {"pos_backup_store"}
TERMINAL = {
    "serial": "KST9101",
    "model": "kestrel_k200",
    "region": "eu_west",
    "merchant_id": "M-UNIT-1",
    "terminal_id": "T-UNIT-1",
    "merchant_name": "Unit Cafe",
    "store": "Unit Street 1",
}
FACTORY_PACKS = {"params": "2026.01.0", "catalog": "2026.01.0"}
# Sales only when a test asks for them (make_pending), so that journals are predictable.
POSD_CONF = {"sale_interval_s": 3600, "sale_duration_s": 0.01, "offline_ratio": 1.0}

# Runs a module file as __main__.
RUNNER = "import sys, runpy\nrunpy.run_path(sys.argv.pop(1), run_name='__main__')\n"
# The link `make` creates to this checkout as ansible_collections/posfleet/fleet.
COLLECTIONS = REPO / "collections"


def terminal_python():
    """Python 3.9 if this machine has one (POSFLEET_TERMINAL_PYTHON overrides), else this Python.

    Each candidate is run once: a pyenv shim answers `which` for versions that are not active.
    """
    candidates = [
        os.environ.get("POSFLEET_TERMINAL_PYTHON"),
        *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9"))),
        shutil.which("python3.9"),
    ]
    for candidate in candidates:
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sqlite3, sys; print(sys.version_info[:2] >= (3, 9))"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return candidate
    return sys.executable


TERMINAL_PYTHON = terminal_python()


def ansible_tool(name):
    """The path of an Ansible command (ansible, ansible-playbook, ...) of this Python, else on PATH."""
    beside_python = Path(sys.executable).with_name(name)
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} not found next to this Python or on PATH")
    return found


def ansible_module_result(tmp_path, module, args, check=False,
                         host="localhost ansible_connection=local"):
    """Run `ansible localhost -m MODULE -a ARGS` with the repository's ansible.cfg (its action plugins
    and modules); the task's result. `host` is the inventory line of localhost."""
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(host + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "POSFLEET_"))}
    env.update(ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1")
    argv = [ansible_tool("ansible"), "localhost", "-i", str(inventory), "-m", module, "-a", json.dumps(args)]
    proc = subprocess.run(argv + (["--check"] if check else []), cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    try:
        return json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError):
        raise AssertionError(f"unexpected ansible output:\n{proc.stdout}\n{proc.stderr}") from None


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# --- running a module ------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="session")
def _report_dir(tmp_path_factory):
    """Reports and audit lines of the tools the tests run go to a temporary directory, never to the
    checkout's reports/ (the lab's live audit trail)."""
    directory = tmp_path_factory.mktemp("reports")
    before = os.environ.get("POSFLEET_REPORT_DIR")
    os.environ["POSFLEET_REPORT_DIR"] = str(directory)
    yield directory
    if before is None:
        os.environ.pop("POSFLEET_REPORT_DIR", None)
    else:
        os.environ["POSFLEET_REPORT_DIR"] = before


@pytest.fixture
def run_module(tmp_path):
    """run_module(name, args, root, check=False, diff=True) -> the module's JSON result (a dict)."""
    counter = iter(range(1, 10000))

    def run(name, args, root=None, check=False, diff=True, timeout=120):
        argfile = tmp_path / f"args-{name}-{next(counter)}.json"
        argfile.write_text(
            json.dumps({"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check, _ansible_diff=diff)})
        )
        python = sys.executable if name in CONTROL_NODE_MODULES else TERMINAL_PYTHON
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        env["PYTHONPATH"] = os.pathsep.join((str(COLLECTIONS), ANSIBLE_SITE))
        if root is not None:
            env["POS_ROOT"] = str(root)
        proc = subprocess.run(
            [python, "-c", RUNNER, str(MODULES / f"{name}.py"), str(argfile)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
        try:
            result = json.loads(proc.stdout)
        except ValueError:
            raise AssertionError(
                f"{name} printed no JSON result (exit {proc.returncode}):\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            ) from None
        assert "Traceback" not in proc.stderr, proc.stderr
        assert "exception" not in result or result.get("failed"), result
        return result

    return run


def tree_state(root, skip=("run", "posd.log", "journal.db-shm", "journal.db-wal")):
    """{relpath: sha256 or link target} of everything under root, for 'check mode changed nothing'."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if os.path.relpath(os.path.join(dirpath, d), root) not in skip
        )
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if name in skip or rel in skip:
                continue
            if os.path.islink(path):
                state[rel] = "-> " + os.readlink(path)
            elif os.path.isfile(path):
                state[rel] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            else:
                state[rel] = "dir"
    return state


# --- artifacts -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    """{version: {"deb": {path, sha256, size}, "bundle": {...}}} for posd 1.0.0 and 1.1.0."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")
    out = tmp_path_factory.mktemp("artifacts")
    built = {}
    for version in ("1.0.0", "1.1.0"):
        proc = subprocess.run(
            [sys.executable, str(POSD_DIR / "build.py"), "--version", version, "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        built[version] = json.loads(proc.stdout)["artifacts"]
    return built


def pack_files(name, version, acquirer_url="http://127.0.0.1:9", batch_floor=1):
    if name == "params":
        return {
            "endpoints.json": json.dumps({"acquirer_url": acquirer_url}),
            "fees.json": json.dumps({"version": version, "card_present_bps": 150}),
            "bins.json": json.dumps({"ranges": [{"bin": "999999", "length": 16}]}),
            "counters.json": json.dumps({"batch_floor": batch_floor}),
        }
    if name == "catalog":
        return {
            "catalog.csv": "sku,name,price_cents\nSKU1,Coffee,250\nSKU2,Bagel,%d\n" % (300 + len(version))
        }
    if name == "merchant":
        return {"profile.json": json.dumps({"merchant_id": "M-UNIT-1", "currency": "EUR"})}
    raise ValueError(name)


def pack_contents(name, version, files):
    contents = {rel: text.encode() if isinstance(text, str) else text for rel, text in files.items()}
    sums = {rel: hashlib.sha256(data).hexdigest() for rel, data in contents.items()}
    contents["PACK.json"] = json.dumps({"name": name, "version": version, "files": sums}, indent=1).encode()
    return contents


def write_pack(root, name, version, files, current=True):
    base = Path(root) / "var" / "lib" / "pos" / "packs" / name
    (base / version).mkdir(parents=True)
    for rel, data in pack_contents(name, version, files).items():
        (base / version / rel).write_bytes(data)
    if current:
        tmp = base / ".current.new"
        tmp.symlink_to(version)
        os.replace(tmp, base / "current")
    return base / version


def tar_gz(members):
    """A .tar.gz from [(TarInfo fields dict, bytes or None)], in the given order."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for fields, data in members:
            info = tarfile.TarInfo(fields["name"])
            for key, value in fields.items():
                setattr(info, key, value)
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def pack_archive(name, version, files):
    """A release pack archive as docs/update-pipeline.md describes it (top-level files and PACK.json)."""
    return tar_gz(
        [
            ({"name": rel, "mode": 0o644}, data)
            for rel, data in sorted(pack_contents(name, version, files).items())
        ]
    )


# --- the distribution point ------------------------------------------------------------------------


class DistHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        server = self.server
        path = self.path.split("?")[0]
        server.requests.append((path, self.headers.get("Range")))
        data = server.files.get(path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        match = re.match(r"^bytes=(\d+)-$", self.headers.get("Range") or "")
        if match and path not in server.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if server.drops.get(path, 0) > 0:
            server.drops[path] -= 1
            # Half the body, then the link "drops": the client sees a short read.
            self.wfile.write(body[: max(len(body) // 2, 1)])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


class Dist:
    def __init__(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), DistHandler)
        self.server.daemon_threads = True
        self.server.files, self.server.requests, self.server.drops, self.server.ignore_range = (
            {},
            [],
            {},
            set(),
        )
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]

    def publish(self, path, data):
        """Serve `data` at `path`; returns the artifact's {url, sha256, size}."""
        self.server.files[path] = data
        return {"url": self.url + path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    @property
    def requests(self):
        return self.server.requests

    def drop(self, path, times):
        self.server.drops[path] = times


@pytest.fixture(scope="session")
def dist_server():
    server = Dist()
    yield server
    server.server.shutdown()


@pytest.fixture
def dist(dist_server):
    dist_server.server.files.clear()
    dist_server.server.requests.clear()
    dist_server.server.drops.clear()
    dist_server.server.ignore_range.clear()
    return dist_server


# --- the acquirer ----------------------------------------------------------------------------------


class Acquirer:
    def __init__(self, workdir):
        self.log = workdir / "acquirer.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(ACQUIRER),
                    "--listen",
                    "127.0.0.1:0",
                    "--db",
                    str(workdir / "ledger.db"),
                ],
                stderr=log,
            )
        found = wait_for(
            lambda: re.search(r"listening on (http://[0-9.]+:\d+)", self.log.read_text()),
            what="the acquirer to listen",
        )
        self.url = found.group(1)

    def set_mode(self, mode):
        request = urllib.request.Request(
            self.url + "/v1/admin/mode", data=json.dumps({"mode": mode}).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()


@pytest.fixture(scope="session")
def acquirer(tmp_path_factory):
    server = Acquirer(tmp_path_factory.mktemp("acquirer"))
    yield server
    server.proc.kill()
    server.proc.wait()


# --- a terminal ------------------------------------------------------------------------------------


def give_shell(root, programs=("/bin/sh", "/bin/rm")):
    """Copy /bin/sh and rm with their libraries into `root`.

    `dpkg --root` runs a package's maintainer scripts (posd's prerm) chrooted into the terminal's root,
    as it does on a real terminal, so the tree needs a shell.
    """
    needed = set(programs)
    for program in programs:
        ldd = subprocess.run(["ldd", program], capture_output=True, text=True, check=False).stdout
        needed.update(re.findall(r"(/\S+\.so[.\d]*)", ldd))
    for path in needed:
        target = Path(root) / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(path), target)


class Terminal:
    """A terminal tree under `root`, its installed app and (after boot()) an init keeping posd running."""

    def __init__(self, root, style, acquirer_url):
        self.root = Path(root)
        self.style = style
        self.acquirer_url = acquirer_url
        self.log = self.root / "posd.log"
        self.proc = None
        self._stop = threading.Event()
        self._init = None
        self.starts = 0

    def path(self, terminal_path):
        return self.root / terminal_path.lstrip("/")

    # provisioning

    def provision(self, artifacts, version, packs=True):
        (self.root / "etc" / "pos").mkdir(parents=True)
        (self.root / "etc" / "pos" / "terminal.json").write_text(json.dumps(TERMINAL))
        (self.root / "etc" / "pos" / "posd.conf").write_text(
            json.dumps(dict(POSD_CONF, acquirer_url=self.acquirer_url))
        )
        (self.root / "run" / "pos").mkdir(parents=True)
        (self.root / "var" / "lib" / "pos").mkdir(parents=True)
        self.install_app(artifacts[version], version)
        if packs:
            for name, pack_version in FACTORY_PACKS.items():
                write_pack(self.root, name, pack_version, pack_files(name, pack_version, self.acquirer_url))
            write_pack(self.root, "merchant", "m1", pack_files("merchant", "m1"))

    def install_app(self, built, version):
        if self.style == "bundle":
            app = self.root / "opt" / "pos" / "app"
            app.mkdir(parents=True, exist_ok=True)
            with tarfile.open(built["bundle"]["path"]) as tar:
                for member in tar.getmembers():
                    tar.extract(member, app, filter="data")
            link = app / "current"
            if link.is_symlink():
                link.unlink()
            link.symlink_to(version)
        else:
            give_shell(self.root)
            admin = self.root / "var" / "lib" / "dpkg"
            (admin / "info").mkdir(parents=True, exist_ok=True)
            (admin / "updates").mkdir(exist_ok=True)
            (admin / "status").touch()
            subprocess.run(
                ["dpkg", f"--root={self.root}", "-i", built["deb"]["path"]],
                check=True,
                capture_output=True,
                timeout=60,
            )

    def posd_script(self):
        if self.style == "bundle":
            return os.path.join(
                os.path.realpath(self.root / "opt" / "pos" / "app" / "current"), "lib", "posd.py"
            )
        return str(self.root / "usr" / "lib" / "posd" / "posd.py")

    # the init

    def boot(self, wait=True):
        """Start the init loop and (unless wait=False) wait until posd answers."""
        self._stop.clear()
        self._init = threading.Thread(target=self._supervise, daemon=True)
        self._init.start()
        if wait:
            wait_for(self.answers, what="posd to answer")
        return self

    def _supervise(self):
        while not self._stop.is_set():
            if self.proc is None or self.proc.poll() is not None:
                with open(self.log, "ab") as log:
                    self.proc = subprocess.Popen(
                        [TERMINAL_PYTHON, self.posd_script()],
                        stderr=log,
                        env=dict(os.environ, POS_ROOT=str(self.root)),
                    )
                self.starts += 1
                (self.root / "run" / "pos" / "posd.pid").write_text(f"{self.proc.pid}\n")
            self._stop.wait(0.05)

    def halt(self):
        """Stop the init and posd (a powered-off terminal)."""
        self._stop.set()
        if self._init:
            self._init.join(5)
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def answers(self):
        try:
            return self.ctl("status")["ok"]
        except (OSError, ValueError):
            return False

    def ctl(self, op, **args):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(self.root / "run" / "pos" / "posd.sock"))
            sock.sendall((json.dumps(dict(args, op=op)) + "\n").encode())
            with sock.makefile("rb") as reader:
                return json.loads(reader.readline())

    def status(self):
        return self.ctl("status")

    def journal_rows(self):
        db = sqlite3.connect(self.root / "var" / "lib" / "pos" / "journal.db")
        try:
            return db.execute("SELECT id, stan, invoice, uploaded FROM txn ORDER BY invoice").fetchall()
        finally:
            db.close()

    def app_version(self):
        if self.style == "bundle":
            return os.readlink(self.root / "opt" / "pos" / "app" / "current")
        return (self.root / "usr" / "share" / "posd" / "VERSION").read_text().strip()

    def pack_current(self, name):
        return os.readlink(self.root / "var" / "lib" / "pos" / "packs" / name / "current")


@pytest.fixture
def make_terminal(tmp_path, artifacts, acquirer):
    """make_terminal(style="bundle", version="1.0.0", packs=True, boot=True) -> Terminal."""
    made = []

    def make(style="bundle", version="1.0.0", packs=True, boot=True, name="t"):
        terminal = Terminal(tmp_path / name, style, acquirer.url)
        terminal.provision(artifacts, version, packs=packs)
        made.append(terminal)
        if boot:
            terminal.boot()
        return terminal

    yield make
    for terminal in made:
        terminal.halt()
