# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every posfleet module needs on a terminal: its paths, posd's control socket, versions.

Runs on terminals: standard library only, Python 3.9 or newer. Every absolute terminal path goes
through `terminal_path`, which honours POS_ROOT (as posd does) so that unit tests can run a module
against a terminal laid out in a temporary directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time

JOURNAL = "/var/lib/pos/journal.db"
PACKS_DIR = "/var/lib/pos/packs"
APP_DIR = "/opt/pos/app"
TERMINAL_JSON = "/etc/pos/terminal.json"
POSD_SOCKET = "/run/pos/posd.sock"
BOOT_ID = "/run/pos/boot_id"
SIM_DIR = "/var/lib/possim"
PACK_NAMES = ("params", "catalog", "merchant")
STAGING_DIR = "/var/lib/pos/staging"
ROLLBACK_DIR = "/var/lib/pos/rollback"
BACKUP_DIR = "/var/lib/pos/backup"
POSD_PID = "/run/pos/posd.pid"
# Jumps in the sale numbering that a restore made on purpose (see pos_restore); pos_verify accepts them.
SEQUENCE_GAPS = "/var/lib/pos/sequence_gaps.json"
STAN_MAX = 999999  # posd's STAN wraps to 1 after this (ISO 8583 field 11 has six digits)


class PosdError(Exception):
    """posd did not answer, or answered ok: false; the message says which and why.

    `answer` is posd's whole answer when it refused (ok: false), so that a caller can read fields
    such as `pending` that come with the refusal; it is {} when posd did not answer at all.
    """

    def __init__(self, message, answer=None):
        super().__init__(message)
        self.answer = answer or {}


def terminal_path(path):
    """The terminal path `path` (absolute), under POS_ROOT when a test sets it."""
    return os.path.join(os.environ.get("POS_ROOT") or "/", path.lstrip("/"))


def read_json(path, default=None):
    try:
        with open(terminal_path(path), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return default


def read_text(path, default=None):
    try:
        with open(terminal_path(path), encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return default


def sha256_file(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path, data, mode=0o644):
    """Write bytes or text to `path` through a temp file in the same directory and one rename."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_symlink(target, link):
    """Point `link` at `target` with one rename: readers see the old or the new target, never none."""
    tmp = "%s.tmp-%d" % (link, os.getpid())
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.rename(tmp, link)


def posd(op, timeout=10.0, **args):
    """Send one request to posd's control socket and return its answer (a dict with ok true)."""
    # The socket read waits for posd's own bounded wait (a sale finishing, an upload) plus margin.
    return _posd_exchange(op, dict(args, op=op), float(args.get("timeout", 0)) + timeout)


def posd_wait(op, wait, slack=10.0, **args):
    """Like posd() for the ops that take a `timeout` argument (maintenance_enter, upload).

    posd() cannot send one: its own `timeout` keyword is the client's socket timeout. Here `wait` is
    sent as the request's `timeout` and the socket waits `wait` + `slack` seconds for the answer.
    """
    return _posd_exchange(op, dict(args, op=op, timeout=wait), float(wait) + slack)


def _posd_exchange(op, request, socket_timeout):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(socket_timeout)
    try:
        sock.connect(terminal_path(POSD_SOCKET))
        sock.sendall(json.dumps(request).encode("utf-8") + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            block = sock.recv(65536)
            if not block:
                break
            data += block
    except OSError as error:
        raise PosdError("cannot talk to posd at %s: %s (is posd running?)" % (POSD_SOCKET, error)) from error
    finally:
        sock.close()
    try:
        answer = json.loads(data.decode("utf-8"))
    except ValueError:
        raise PosdError("posd answered %s with something that is not JSON: %r" % (op, data[:200])) from None
    if not answer.get("ok"):
        raise PosdError("posd refused %s: %s" % (op, answer.get("error", "no reason given")), answer)
    return answer


def wait_posd_ready(timeout=60.0, interval=0.5):
    """Wait until posd answers `status` (after a restart or a reboot); return its status."""
    deadline = time.time() + timeout
    while True:
        try:
            return posd("status", timeout=5.0)
        except PosdError as error:
            if time.time() > deadline:
                raise PosdError("posd did not come up in %ds: %s" % (timeout, error)) from error
            time.sleep(interval)


def pack_versions():
    """{pack name: version of its `current`} for every pack the terminal holds (None if missing)."""
    versions = {}
    for name in PACK_NAMES:
        manifest = read_json(os.path.join(PACKS_DIR, name, "current", "PACK.json"), {})
        versions[name] = manifest.get("version")
    return versions


def storage_free_mb(path="/"):
    stats = os.statvfs(terminal_path(path))
    return stats.f_bavail * stats.f_frsize // (1024 * 1024)


def battery():
    """(percent, charging) from the terminal's power supply; (None, None) on mains-only models."""
    pct = read_text(os.path.join(SIM_DIR, "battery"))
    charging = read_text(os.path.join(SIM_DIR, "charging"))
    try:
        return int(pct), charging == "1"
    except (TypeError, ValueError):
        return None, None


def free_bytes(path):
    """Bytes free for an unprivileged writer on the filesystem that holds (or will hold) `path`."""
    probe = terminal_path(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    stats = os.statvfs(probe)
    return stats.f_bavail * stats.f_frsize


def dpkg_argv(command, *args):
    """argv for dpkg or dpkg-query acting on the terminal's package database (under POS_ROOT in tests)."""
    root = os.environ.get("POS_ROOT")
    return [command] + (["--root=%s" % root] if root and root != "/" else []) + list(args)


class CommandTimeout(OSError):
    """A command did not finish within its timeout and was stopped, with every process it started.

    An OSError, so that the callers that already turn a failed command into fail_json report this one
    the same way. The message names the command, the timeout and the state the command leaves.
    """


# A stopped command gets this long to exit on SIGTERM (a maintainer script may still clean up) before
# SIGKILL, and this long again to be reaped after SIGKILL.
STOP_GRACE = 5.0


# The UTC time every record and message of posfleet's is written in (2026-12-03T01:02:03Z): on terminals (leases,
# check-ins) and on the control node (runs, the check-in store, release manifests), which import it from here.
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def stamp(epoch):
    """`epoch` as the UTC time every terminal-side message and record uses (TIME_FORMAT)."""
    return time.strftime(TIME_FORMAT, time.gmtime(epoch))


# The update's deadline (epoch seconds on this terminal's clock) that bounds every command this process
# runs, or None. pos_guard sets it from the update's lease when a step goes forward with the update
# (pos_guard.start_step); the steps that put a terminal back (pos_restore) never set it.
_DEADLINE = [None]


def bound_by_deadline(deadline):
    """Bound every later run_bounded() of this process by `deadline` (epoch seconds; None: no deadline)."""
    _DEADLINE[0] = deadline


def deadline_passed(now=None):
    """Whether this process runs under an update deadline that has passed."""
    now = time.time() if now is None else now
    return _DEADLINE[0] is not None and now >= _DEADLINE[0]


def within_deadline(seconds):
    """`seconds`, or what is left of the update's deadline when that is less (never below one second)."""
    if _DEADLINE[0] is None:
        return seconds
    return max(1.0, min(seconds, _DEADLINE[0] - time.time()))


def run_bounded(argv, timeout, leaves, what=None, merge_output=False):
    """Run `argv` (a list, no shell) for at most `timeout` seconds; (rc, stdout, stderr) as text.

    Every subprocess on a terminal goes through here (subprocess.run's timeout kills only the direct
    child). The command runs in a session of its own, so that a timeout stops it with everything it
    started (dpkg's maintainer scripts and their children) and raises CommandTimeout naming `what` (the
    command line by default), the timeout and `leaves`: the state the stopped command leaves behind.
    Under an update deadline (bound_by_deadline) the command gets no more than what is left of it, and
    none once it has passed. With `merge_output`, stderr is interleaved into stdout and the returned
    stderr is "". OSError when the command cannot be started.
    """
    what = what or " ".join(argv)
    limit = "within %g s" % timeout
    if _DEADLINE[0] is not None:
        left = _DEADLINE[0] - time.time()
        if left <= 0:
            raise CommandTimeout("%s was not started: the update's deadline passed at %s; nothing was run"
                                 % (what, stamp(_DEADLINE[0])))
        if left < timeout:
            timeout, limit = left, "before the update's deadline (%s)" % stamp(_DEADLINE[0])
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT if merge_output else subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        stopped = _stop_session(proc)
        tail = " ".join(_text(expired.output).split())[-200:]
        raise CommandTimeout("%s did not finish %s and %s%s; %s"
                             % (what, limit, "was stopped" if stopped else "could not be stopped even by SIGKILL",
                                " (its last output: %s)" % tail if tail else "", leaves)) from None
    except BaseException:
        _stop_session(proc)
        raise
    return proc.returncode, _text(out), _text(err)


def _stop_session(proc):
    """SIGTERM the process group of `proc` (started with a session of its own), then SIGKILL what is left of it.

    True once `proc` has exited (and is reaped); False when it survives even SIGKILL (stuck in the kernel).
    """
    exited = False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        # Its pid is the group's id. It is reaped only after the SIGKILL, so that the id cannot have been
        # reused by then: what is left of the group is what the command started (OSError: nothing is left).
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + STOP_GRACE
        while not exited and time.monotonic() < deadline:
            exited = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
            if not exited:
                time.sleep(0.05)
    if exited:
        proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()
    return exited


def _text(data):
    return data.decode("utf-8", "replace") if data else ""


def posd_pid():
    """The pid the terminal's init wrote for posd, or None."""
    try:
        return int(read_text(POSD_PID, ""))
    except ValueError:
        return None


def _process_alive(pid):
    """True while `pid` runs; a zombie (exited, not yet reaped by init) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _is_posd(pid):
    """Whether `pid` is a posd process (a stale pid file may name a process that reused the pid)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return b"posd" in handle.read()
    except OSError:
        return not os.path.isdir("/proc")  # no procfs: trust the pid file


def stop_posd(timeout=20.0):
    """SIGTERM posd (pid from the pid file) and wait until it has exited; SIGKILL after `timeout`.

    The terminal's init starts posd again on its own (it polls about once a second). Returns the pid
    that was stopped, or None when no posd was running.
    """
    pid = posd_pid()
    if pid is None or not _process_alive(pid):
        return None
    if not _is_posd(pid):
        if not _process_alive(pid):
            return None  # it ended between the two looks: a posd that exits at start (a damaged journal)
        raise PosdError("%s names pid %d, which is not posd: the pid file is stale; is init running posd?"
                        % (POSD_PID, pid))
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return pid
        deadline = time.time() + wait
        while _process_alive(pid):
            if time.time() > deadline:
                break
            time.sleep(0.05)
        else:
            return pid
    raise PosdError("posd (pid %d) did not exit even after SIGKILL" % pid)


def restart_posd(timeout=60.0):
    """Restart posd so that it runs the installed app, and return its first status.

    posd is supervised by the terminal's init, which starts it again when it exits: stopping it is
    enough. Raises PosdError when there is no pid file or posd does not come back within `timeout`.
    """
    if posd_pid() is None:
        raise PosdError("cannot restart posd: %s is missing; is the terminal's init running posd?" % POSD_PID)
    started = time.time()
    stop_posd(timeout=min(20.0, timeout))
    return wait_posd_ready(max(timeout - (time.time() - started), 1.0))
