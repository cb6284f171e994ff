# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The check-in: a terminal that comes online tells the control side what it runs, so that auto update can
bring it to its assigned release. This file is the one owner of the protocol; both sides import it.

A check-in is one HTTP POST of a small JSON message to the control side's endpoint:

    {"app_version": "1.0.0", "boot_id": "...", "lease": null, "nonce": "<32 hex>",
     "os_packages": {"libssl3": "3.0.20-1~deb12u2", ...},
     "packs": {"catalog": "2026.01.0", ...}, "sent_at": "2026-12-03T01:02:03Z", "serial": "KST00002", "v": 1}

(`lease`: the id of the posfleet run that holds the terminal for an update or a restore, or null.
`os_packages`: the version of each Debian package the control side asked the terminal to watch, null when
it is not fully installed; left out while there is none to watch, on a terminal without dpkg, and by an
agent older than the field. The control side compares them with the release only when the check-in reports
every package the release pins.)

The body is that message as compact JSON with sorted keys (encode()), and exactly those bytes are signed:
the header `X-Posfleet-Signature: v1=<hex HMAC-SHA256 of the body>` under the terminal's own key (32 random
bytes, hex, at KEY; the control side keeps the same key per serial). The receiver's verify() refuses a
check-in with one of REFUSALS: malformed, unknown serial, bad signature, or stale (sent_at further than
MAX_SKEW_S from the receiver's clock), in that order, so that an unsigned body never gets as far as the
clock; a replayed nonce is the control side's store to find. reply() is the control side's answer: 202, or 403
with the reason, which the agent logs. An accepted answer names the OS packages the terminal's assigned
release pins (`os_watch`, a list of names): the agent keeps the list (WATCH) and reports those packages from
then on; when the list names one its check-in did not report, it checks in again at once, so that a release
that pins a new package is compared on the terminal's next breath, with a message that stays small.

The terminal's side is the agent (`pos-checkin`, main()): the terminal's init starts it once CONFIG exists,
and it checks in at start, then every `interval_s` (± `jitter_s`, so that a fleet that boots together does
not check in together) and, after a failure, every `retry_s`: a terminal that comes back online is heard of
within about `retry_s`. Between check-ins it looks every `retry_s` at what the terminal runs (a few small
files): when an update takes it, switches it or ends, it checks in at once, so that the control side's view
is never an interval behind. It reads CONFIG and KEY again before every attempt, so a new endpoint or a rotated
key needs no restart. The pos_checkin_agent module installs it (install()) and writes both files.

Runs on terminals: standard library only, Python 3.9 or newer.
"""

from __future__ import annotations

import argparse
import calendar
import hashlib
import hmac
import json
import os
import random
import re
import secrets
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException

from ansible_collections.posfleet.fleet.plugins.module_utils import pos_app, pos_os
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_guard import (
    GUARD_MODULES,
    INSTALL_DIR,
    PACKAGE,
    install_files,
    live,
    read_lease,
)
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal import (
    BOOT_ID,
    TERMINAL_JSON,
    TIME_FORMAT,
    pack_versions,
    read_json,
    read_text,
    stamp,
    terminal_path,
)

VERSION = 1
KEY = "/var/lib/pos/checkin.key"
CONFIG = "/var/lib/pos/checkin.json"
# The OS packages the control side asked the terminal to report (the last accepted answer's os_watch).
WATCH = "/var/lib/pos/checkin-os-watch.json"
COMMAND = "/usr/local/sbin/pos-checkin"
HEADER = "X-Posfleet-Signature"
# A check-in sent further than this from the receiver's clock is refused (STALE): a recorded check-in
# cannot be played back later, and the control side need keep the nonces it has seen for this long only.
MAX_SKEW_S = 300
# A check-in is a few hundred bytes, and its os_packages about 40 more per installed package (a few hundred on
# a terminal image); the receiver reads no more than this of a body (or of a reply).
MAX_BODY = 65536

MALFORMED = "malformed"
UNKNOWN = "unknown_terminal"
BAD_SIGNATURE = "bad_signature"
STALE = "stale"
REPLAYED = "replayed"
REFUSALS = (MALFORMED, UNKNOWN, BAD_SIGNATURE, STALE, REPLAYED)
# Every field of a message; each must be there (null where the protocol allows it).
FIELDS = ("v", "serial", "app_version", "packs", "boot_id", "lease", "sent_at", "nonce")
# The HTTP status of the control side's answer (reply()).
ACCEPTED = 202
REFUSED = 403

# CONFIG's keys and their defaults; `endpoint` has none.
DEFAULTS = {"interval_s": 900, "jitter_s": 120, "retry_s": 20, "timeout_s": 10}
KEY_BYTES = 32

# The module_utils the agent imports (pos_guard for the shared install), installed beside it like the guard's.
AGENT_MODULES = (*GUARD_MODULES, "pos_checkin")
COMMAND_TEXT = """#!/bin/sh
# posfleet's check-in agent, installed by the pos_checkin_agent module (the code is pos_checkin.py in %(lib)s).
# The terminal's init starts it once %(config)s exists; it checks in at start and then every few minutes.
# `pos-checkin --once` checks in once and exits 0 when the control side accepted it.
PYTHONPATH=%(lib)s
export PYTHONPATH
exec %(python)s -m %(package)s.pos_checkin "$@"
"""


class Refused(Exception):
    """A check-in the receiver does not accept: `reason` is one of REFUSALS, `serial` the one it claims (if any)."""

    def __init__(self, reason, serial=None, detail=""):
        self.reason = reason
        self.serial = serial
        self.detail = detail
        super().__init__("%s: %s" % (reason, detail) if detail else reason)


# --- the protocol -----------------------------------------------------------------------------------------


def new_key():
    """A fresh terminal key (hex), as KEY holds it."""
    return secrets.token_hex(KEY_BYTES)


def valid_key(key_hex):
    """Whether `key_hex` is a key as KEY holds it: 64 hex digits."""
    return isinstance(key_hex, str) and re.fullmatch(r"[0-9a-fA-F]{%d}" % (2 * KEY_BYTES), key_hex) is not None


def fingerprint(key_hex):
    """The first 12 hex digits of the SHA-256 of the key's bytes: names a key in logs and results, reveals nothing."""
    return hashlib.sha256(bytes.fromhex(key_hex)).hexdigest()[:12]


def message(serial, app_version, packs, boot_id, now=None, nonce=None, lease=None, os_packages=None):
    """The check-in message of a terminal that runs `app_version` and `packs` ({name: version}) and, with dpkg,
    the Debian packages `os_packages` ({name: version}), held by the posfleet run `lease` (its id) or by none."""
    msg = {"v": VERSION, "serial": serial, "app_version": app_version, "packs": dict(packs or {}),
           "boot_id": boot_id, "lease": lease, "sent_at": stamp(time.time() if now is None else now),
           "nonce": nonce or secrets.token_hex(16)}
    if os_packages is not None:
        msg["os_packages"] = dict(os_packages)
    return msg


def _versions_map(value):
    return isinstance(value, dict) and all(isinstance(k, str) and (v is None or isinstance(v, str))
                                           for k, v in value.items())


def encode(msg):
    """The bytes that are signed and sent: compact JSON, sorted keys."""
    return json.dumps(msg, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign(body, key_hex):
    """The HEADER value for `body` (bytes) under the terminal's key: v1=<hex HMAC-SHA256>."""
    return "v1=" + hmac.new(bytes.fromhex(key_hex), body, hashlib.sha256).hexdigest()


def _problem(msg):
    """What is wrong with the shape of a parsed message, or "" when nothing is."""
    if not isinstance(msg, dict):
        return "not a JSON object"
    missing = [name for name in FIELDS if name not in msg]
    if missing:
        return "no %s" % ", ".join(missing)
    if msg.get("v") != VERSION or isinstance(msg.get("v"), bool):
        return "protocol version %r, expected %d" % (msg.get("v"), VERSION)
    serial = msg.get("serial")
    if not isinstance(serial, str) or not 0 < len(serial) <= 64:
        return "serial must be a non-empty string"
    for name in ("app_version", "boot_id", "lease"):
        if msg.get(name) is not None and not isinstance(msg.get(name), str):
            return "%s must be a string or null" % name
    if not _versions_map(msg.get("packs")):
        return "packs must map names to versions"
    if "os_packages" in msg and not _versions_map(msg["os_packages"]):
        return "os_packages must map Debian package names to versions"
    if _sent_at(msg.get("sent_at")) is None:
        return "sent_at must be UTC as %s" % TIME_FORMAT
    if not isinstance(msg.get("nonce"), str) or not re.fullmatch(r"[0-9a-f]{32}", msg["nonce"]):
        return "nonce must be 32 hex digits"
    return ""


def _sent_at(text):
    try:
        return calendar.timegm(time.strptime(text, TIME_FORMAT))
    except (TypeError, ValueError):
        return None


def verify(body, header_value, key_for, now=None):
    """The message of a check-in `body` (bytes) signed `header_value`, or Refused.

    `key_for(serial)` is the key (hex) the control side holds for a serial, or None for one it does not know.
    The signature is checked before the clock, so that only the terminal itself can learn its clock is off.
    """
    if not isinstance(body, bytes) or len(body) > MAX_BODY:
        raise Refused(MALFORMED, detail="the body must be at most %d bytes" % MAX_BODY)
    try:
        msg = json.loads(body.decode("utf-8"))
    except ValueError as error:
        raise Refused(MALFORMED, detail="not JSON: %s" % error) from None
    problem = _problem(msg)
    serial = msg.get("serial") if isinstance(msg, dict) and isinstance(msg.get("serial"), str) else None
    if problem:
        raise Refused(MALFORMED, serial, problem)
    key = key_for(serial)
    if not key:
        raise Refused(UNKNOWN, serial, "no key on record for %s" % serial)
    if not valid_key(key):
        raise Refused(UNKNOWN, serial, "the key on record for %s is not %d hex digits" % (serial, 2 * KEY_BYTES))
    given = str(header_value or "").encode("utf-8", "replace")
    if not hmac.compare_digest(sign(body, key).encode("ascii"), given):
        raise Refused(BAD_SIGNATURE, serial, "the %s does not match the body under %s's key (%s)"
                      % (HEADER, serial, fingerprint(key)))
    now = time.time() if now is None else now
    skew = now - _sent_at(msg["sent_at"])
    if abs(skew) > MAX_SKEW_S:
        raise Refused(STALE, serial, "sent_at %s is %d s %s the receiver's clock (at most %d s)"
                      % (msg["sent_at"], abs(skew), "behind" if skew > 0 else "ahead of", MAX_SKEW_S))
    return msg


def reply(refused=None, **extra):
    """(HTTP status, JSON object) of the control side's answer: accepted with `extra` (its decision), or refused
    for the reason `refused` (one of REFUSALS), which the agent logs."""
    if refused is None:
        return ACCEPTED, dict(extra)
    return REFUSED, dict(extra, refused=refused)


# --- the terminal's side ----------------------------------------------------------------------------------


def _package_names(value):
    """`value` as a sorted list of Debian package names, or None when it is not a list of them."""
    if not isinstance(value, list) or not all(isinstance(name, str) and pos_os.PACKAGE_NAME.match(name)
                                              for name in value):
        return None
    return sorted(set(value))


def read_watch():
    """The OS packages to report (WATCH), sorted; none when the file is missing or not a list of Debian names."""
    return _package_names(read_json(WATCH)) or []


def _watch_from(answer):
    """The os_watch list of an accepted answer (bytes), or None when it names none or is not a list of names."""
    try:
        return _package_names(json.loads(answer.decode("utf-8")).get("os_watch"))
    except (ValueError, AttributeError):
        return None


def _write_watch(names):
    path = terminal_path(WATCH)
    part = path + ".part"
    with open(part, "w", encoding="utf-8") as handle:
        json.dump(names, handle)
    os.replace(part, path)


def terminal_message(now=None, os_packages=True):
    """This terminal's check-in message, read as pos_facts reads it; OSError when it cannot be read. Without
    `os_packages`, the watched OS packages are left out (the agent's frequent looks need no dpkg-query)."""
    serial = (read_json(TERMINAL_JSON) or {}).get("serial")
    if not serial:
        raise OSError("%s is missing or names no serial" % TERMINAL_JSON)
    style = pos_app.installed_style()
    lease = read_lease()
    holder = ((lease.get("run") or {}).get("id") or "unnamed") if live(lease) else None
    watch = read_watch() if os_packages else []
    try:
        versions = pos_os.versions(watch) if watch else None
    except OSError:  # no dpkg: a vendor image that posfleet leaves alone
        versions = None
    return message(serial, pos_app.app_version(style) if style else None, pack_versions(), read_text(BOOT_ID),
                   now=now, lease=holder, os_packages=versions)


def settings(endpoint, interval_s, jitter_s, retry_s, timeout_s):
    """CONFIG's content for these settings."""
    return {"endpoint": endpoint, "interval_s": interval_s, "jitter_s": jitter_s, "retry_s": retry_s,
            "timeout_s": timeout_s}


def settings_problem(config):
    """What is wrong with CONFIG's content `config`, or "" when nothing is."""
    if not isinstance(config, dict):
        return "it is not a JSON object"
    url = urllib.parse.urlsplit(str(config.get("endpoint") or ""))
    if url.scheme not in ("http", "https") or not url.hostname:
        return "endpoint %r is not an http:// or https:// URL" % config.get("endpoint")
    for name, default in DEFAULTS.items():
        value, least = config.get(name, default), 0 if name == "jitter_s" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            return "%s must be a whole number of seconds, %d or more, not %r" % (name, least, value)
    if config.get("jitter_s", DEFAULTS["jitter_s"]) >= config.get("interval_s", DEFAULTS["interval_s"]):
        return "jitter_s must be less than interval_s"
    return ""


def read_settings():
    """CONFIG with DEFAULTS filled in; OSError naming what is wrong with it."""
    try:
        with open(terminal_path(CONFIG), encoding="utf-8") as handle:
            config = json.load(handle)
    except FileNotFoundError:
        raise OSError("%s is missing (the pos_checkin_agent module writes it)" % CONFIG) from None
    except ValueError as error:
        raise OSError("%s is not JSON: %s" % (CONFIG, error)) from None
    problem = settings_problem(config)
    if problem:
        raise OSError("%s: %s" % (CONFIG, problem))
    return dict(DEFAULTS, **config)


def read_key():
    """The terminal's key (hex) from KEY; OSError when it is missing or not a key."""
    key = read_text(KEY)
    if key is None:
        raise OSError("%s is missing (the pos_checkin_agent module writes it)" % KEY)
    if not valid_key(key):
        raise OSError("%s does not hold %d hex digits" % (KEY, 2 * KEY_BYTES))
    return key


def check_in():
    """One check-in with CONFIG and KEY as they are now: (accepted, what happened in words, settings or None,
    whether to check in again at once: the answer asked to watch an OS package this check-in did not report)."""
    config = None
    try:
        config = read_settings()
        key = read_key()
        msg = terminal_message()
        body = encode(msg)
    except OSError as error:
        return False, "skipped: %s" % error, config, False
    request = urllib.request.Request(config["endpoint"], data=body, method="POST", headers={
        "Content-Type": "application/json", HEADER: sign(body, key), "User-Agent": "pos-checkin/%d" % VERSION})
    sent = "%d bytes (key %s)" % (len(body), fingerprint(key))
    try:
        with urllib.request.urlopen(request, timeout=config["timeout_s"]) as response:
            status, reason, answer = response.status, response.reason, response.read(MAX_BODY)
    except urllib.error.HTTPError as error:
        status, reason, answer = error.code, error.reason, _read_error(error)
    except (OSError, HTTPException, ValueError) as error:
        return False, "failed: %s to %s, no reply: %s" % (sent, config["endpoint"], error), config, False
    accepted = 200 <= status < 300
    refused = _refusal(answer)
    what = "%s: %s, reply %d %s" % ("ok" if accepted else "failed", sent, status, reason)
    watch = _watch_from(answer) if accepted else None
    again = False
    if watch is not None and watch != read_watch():
        try:
            _write_watch(watch)
        except OSError as error:
            return accepted, what + "; cannot keep the OS packages to watch: %s" % error, config, False
        what += "; now watching %d OS package(s)" % len(watch)
        again = bool(set(watch) - set(msg.get("os_packages") or {}))
    return accepted, what + (" (refused: %s)" % refused if refused else ""), config, again


def _read_error(error):
    try:
        return error.read(MAX_BODY)
    except (OSError, HTTPException):
        return b""


def _refusal(answer):
    try:
        refused = json.loads(answer.decode("utf-8")).get("refused")
    except (ValueError, AttributeError):
        return None
    return refused if isinstance(refused, str) else None


def pause(accepted, config):
    """Seconds until the next check-in: the interval after one that was accepted, the retry after any other."""
    config = dict(DEFAULTS, **(config or {}))
    if accepted:
        base, spread = config["interval_s"], config["jitter_s"]
    else:
        base, spread = config["retry_s"], config["retry_s"] / 4.0
    return max(1.0, base + random.uniform(-spread, spread))


def _runs():
    """What the terminal runs and who holds it, as its check-in says it; None when it cannot be read."""
    try:
        msg = terminal_message(os_packages=False)
    except OSError:
        return None
    return {key: msg[key] for key in ("app_version", "packs", "boot_id", "lease")}


def wait(seconds, look_s, sent):
    """Sleep `seconds`, but end early when what the terminal runs is no longer `sent` (an update began, switched
    the app or ended): the control side then hears of it within `look_s`, not at the next interval."""
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(left, look_s))
        if sent is not None and _runs() != sent:
            return True


def _log(text):
    sys.stdout.write("%s check-in %s\n" % (stamp(time.time()), text))
    sys.stdout.flush()


def _code():
    """The identity of every installed file the agent runs, to notice when posfleet replaces or removes it."""
    found = []
    # Run with -m, this file is __main__, not PACKAGE.pos_checkin.
    for path in [__file__] + [getattr(sys.modules.get(PACKAGE + "." + name), "__file__", "") for name in GUARD_MODULES]:
        try:
            status = os.stat(path)
            found.append((path, status.st_ino, status.st_mtime_ns, status.st_size))
        except OSError:
            found.append((path, None))
    return found


class _Stopped(Exception):
    pass


def _stop(*args):
    raise _Stopped()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="pos-checkin", description="Check this terminal in with posfleet's "
                                     "control side, at start and then every few minutes.")
    parser.add_argument("--once", action="store_true",
                        help="check in once; exit 0 when the control side accepted it, 1 otherwise")
    args = parser.parse_args(argv)
    if args.once:
        accepted, what, _config, again = check_in()
        _log(what)
        if again:
            accepted, what = check_in()[:2]
            _log(what)
        return 0 if accepted else 1
    signal.signal(signal.SIGTERM, _stop)
    started = _code()
    try:
        while True:
            # A running Python keeps the code it started with: after posfleet replaced (or removed) the agent,
            # this one ends and the terminal's init starts the new one.
            if _code() != started:
                _log("stopped: the agent's code was replaced or removed")
                return 0
            accepted, what, config, again = check_in()
            if again:
                _log("%s; checking in again with the OS packages to watch" % what)
                continue
            sent = _runs() if accepted else None
            pause_s = pause(accepted, config)
            _log("%s; next in %d s" % (what, pause_s))
            if wait(pause_s, dict(DEFAULTS, **(config or {}))["retry_s"], sent):
                _log("what the terminal runs changed: checking in now")
    except (_Stopped, KeyboardInterrupt):
        _log("stopped")
        return 0


# --- installing the agent ---------------------------------------------------------------------------------


def install(python, check=False):
    """Write the agent (this file and the module_utils it imports) and its command, in the update guard's
    layout; True when a file changed (in `check`, would change). `python` is the interpreter it runs with."""
    return bool(install_files(COMMAND, COMMAND_TEXT, AGENT_MODULES, check=check, python=python, config=CONFIG))


def installed_code():
    """The agent's own installed module file (the others are the update guard's too)."""
    return os.path.join(terminal_path(INSTALL_DIR), *PACKAGE.split("."), "pos_checkin.py")


if __name__ == "__main__":
    raise SystemExit(main())
