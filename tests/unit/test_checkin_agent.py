"""The check-in (auto update, issue 15), terminal side: the protocol both sides import, the pos_checkin_agent
module that installs the agent on a terminal in tmp_path, and the installed `pos-checkin` command run for real
against a small control side on 127.0.0.1 that verifies what it receives with the protocol's own verify().
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_checkin
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_guard import LEASE
from conftest import TERMINAL, tree_state, wait_for

KEY_A = "a1" * 32
KEY_B = "b2" * 32
FACTORY_PACKS = {"params": "2026.01.0", "catalog": "2026.01.0", "merchant": "m1"}
SENT = 1796256000.0  # 2026-12-03T00:00:00Z


def signed(serial="KST9101", key=KEY_A, now=SENT, **fields):
    msg = dict(pos_checkin.message(serial, "1.0.0", FACTORY_PACKS, "boot-1", now=now), **fields)
    body = pos_checkin.encode(msg)
    return body, pos_checkin.sign(body, key)


def refusal(body, signature, keys=None, now=SENT):
    with pytest.raises(pos_checkin.Refused) as refused:
        pos_checkin.verify(body, signature, (keys or {"KST9101": KEY_A}).get, now=now)
    assert refused.value.reason in pos_checkin.REFUSALS
    return refused.value


# --- the protocol -----------------------------------------------------------------------------------------


def test_a_signed_check_in_verifies_and_gives_back_the_message():
    body, signature = signed()

    msg = pos_checkin.verify(body, signature, {"KST9101": KEY_A}.get, now=SENT + 299)

    assert (msg["serial"], msg["app_version"], msg["packs"], msg["boot_id"]) == ("KST9101", "1.0.0", FACTORY_PACKS,
                                                                                "boot-1")
    assert msg["v"] == 1 and msg["sent_at"] == "2026-12-03T00:00:00Z" and len(msg["nonce"]) == 32
    assert signature.startswith("v1=") and len(signature) == 3 + 64
    assert body == json.dumps(msg, sort_keys=True, separators=(",", ":")).encode(), "compact JSON, sorted keys"
    assert signed()[0] != body, "each check-in carries a fresh nonce"


@pytest.mark.parametrize("body", [
    b"{not json", b"[1, 2]", b"\xff\xfe",
    signed(v=2)[0], signed(serial="")[0], signed(packs=["params"])[0], signed(app_version=100)[0],
    signed(sent_at="yesterday")[0], signed(nonce="short")[0], signed(lease=7)[0],
    signed(os_packages=["libssl3"])[0], signed(os_packages={"libssl3": 3})[0],
    b'{"v":1,"serial":"KST9101"}', b"{" + b" " * pos_checkin.MAX_BODY + b"}",
], ids=["not-json", "not-an-object", "not-utf8", "version", "no-serial", "packs", "app-version", "sent-at",
        "nonce", "lease", "os-packages-list", "os-package-version", "missing-fields", "too-big"])
def test_a_malformed_check_in_is_refused_as_malformed(body):
    assert refusal(body, "v1=" + "0" * 64).reason == pos_checkin.MALFORMED


def test_a_check_in_may_carry_the_os_packages_and_an_older_agents_without_them_still_verifies():
    packages = {"libssl3": "3.0.20-1~deb12u2", "tzdata": "2026b-0+deb12u1"}
    body, signature = signed(os_packages=packages)
    assert pos_checkin.verify(body, signature, {"KST9101": KEY_A}.get, now=SENT)["os_packages"] == packages
    # A terminal image of a few hundred packages fits the body the receiver reads.
    many = {"package-%03d" % n: "1:%d.2.3-4+deb12u5" % n for n in range(600)}
    assert len(signed(os_packages=many)[0]) <= pos_checkin.MAX_BODY
    older = pos_checkin.message("KST9101", "1.0.0", FACTORY_PACKS, "boot-1", now=SENT)
    assert "os_packages" not in older
    body = pos_checkin.encode(older)
    assert "os_packages" not in pos_checkin.verify(body, pos_checkin.sign(body, KEY_A), {"KST9101": KEY_A}.get,
                                                   now=SENT)


def test_an_unknown_serial_is_refused_as_unknown():
    refused = refusal(*signed(serial="KST0000"))
    assert (refused.reason, refused.serial) == (pos_checkin.UNKNOWN, "KST0000")


def test_a_check_in_signed_with_another_terminals_key_or_tampered_with_is_refused_as_bad_signature():
    keys = {"KST9101": KEY_A, "KST9102": KEY_B}
    with_other_key = signed(serial="KST9101", key=KEY_B)
    body, signature = signed()
    tampered = body.replace(b'"app_version":"1.0.0"', b'"app_version":"1.1.0"')

    assert refusal(*with_other_key, keys=keys).reason == pos_checkin.BAD_SIGNATURE
    assert refusal(tampered, signature, keys=keys).reason == pos_checkin.BAD_SIGNATURE
    assert refusal(body, None, keys=keys).reason == pos_checkin.BAD_SIGNATURE


def test_a_check_in_from_too_far_in_the_past_or_future_is_stale_but_only_once_its_signature_holds():
    body, signature = signed()
    late = SENT + pos_checkin.MAX_SKEW_S + 1

    assert refusal(body, signature, now=late).reason == pos_checkin.STALE
    assert refusal(body, signature, now=SENT - pos_checkin.MAX_SKEW_S - 1).reason == pos_checkin.STALE
    assert refusal(body, signed(key=KEY_B)[1], now=late).reason == pos_checkin.BAD_SIGNATURE


def test_the_key_fingerprint_names_the_key_without_showing_it():
    fingerprint = pos_checkin.fingerprint(KEY_A)
    assert len(fingerprint) == 12 and fingerprint not in KEY_A and fingerprint != pos_checkin.fingerprint(KEY_B)
    assert pos_checkin.valid_key(pos_checkin.new_key()) and not pos_checkin.valid_key("a1" * 31)


# --- a control side on 127.0.0.1 --------------------------------------------------------------------------


class ControlSideHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        # What crossed the link: request line, headers, blank line, body.
        size = (len(self.raw_requestline) + sum(len(k) + len(v) + 4 for k, v in self.headers.items()) + 2
                + len(body))
        try:
            pos_checkin.verify(body, self.headers.get(pos_checkin.HEADER), self.server.keys.get)
            status, answer = pos_checkin.reply(decision="current", **self.server.extra)
        except pos_checkin.Refused as refused:
            status, answer = pos_checkin.reply(refused.reason)
        answer = json.dumps(answer).encode()
        self.server.received.append({"path": self.path, "body": body, "size": size, "status": status,
                                     "signature": self.headers.get(pos_checkin.HEADER),
                                     "type": self.headers.get("Content-Type")})
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


@pytest.fixture
def control_side():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ControlSideHandler)
    server.daemon_threads = True
    server.keys, server.received, server.extra = {TERMINAL["serial"]: KEY_A}, [], {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.endpoint = "http://127.0.0.1:%d/checkin" % server.server_address[1]
    yield server
    server.shutdown()
    server.server_close()


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def agent_args(endpoint, key=KEY_A, **extra):
    return dict({"endpoint": endpoint, "key": key}, **extra)


def pos_checkin_command(terminal, *args, timeout=30):
    """The installed command, as an operator runs it on the terminal."""
    return subprocess.run([str(terminal.path(pos_checkin.COMMAND)), *args], capture_output=True, text=True,
                          timeout=timeout, env={"POS_ROOT": str(terminal.root), "PATH": "/usr/bin:/bin"}, check=False)


# --- the module -------------------------------------------------------------------------------------------


def test_the_module_installs_the_agent_its_settings_and_key_and_a_second_run_changes_nothing(
        make_terminal, run_module, control_side):
    terminal = make_terminal(style="bundle", boot=False)

    first = run_module("pos_checkin_agent", agent_args(control_side.endpoint), terminal.root)
    again = run_module("pos_checkin_agent", agent_args(control_side.endpoint), terminal.root)

    assert first["changed"] and not again["changed"], (first, again)
    assert first["agent"] == "/usr/local/sbin/pos-checkin"
    assert first["key_fingerprint"] == pos_checkin.fingerprint(KEY_A)
    assert first["config"] == {"endpoint": control_side.endpoint, "interval_s": 900, "jitter_s": 120, "retry_s": 20,
                               "timeout_s": 10}
    assert json.loads(terminal.path(pos_checkin.CONFIG).read_text()) == first["config"]
    key_file = terminal.path(pos_checkin.KEY)
    assert key_file.read_text().strip() == KEY_A and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert os.access(terminal.path(pos_checkin.COMMAND), os.X_OK)
    assert KEY_A not in json.dumps(first), "the key is never in the result or the diff"
    assert first["diff"]["before"]["agent"] is False and first["diff"]["after"]["key_fingerprint"] == \
        first["key_fingerprint"]


def test_check_mode_reports_the_change_and_changes_nothing(make_terminal, run_module, control_side):
    terminal = make_terminal(style="bundle", boot=False)
    before = tree_state(terminal.root)

    result = run_module("pos_checkin_agent", agent_args(control_side.endpoint), terminal.root, check=True)

    assert result["changed"] and tree_state(terminal.root) == before


def test_a_new_key_or_endpoint_is_a_change_shown_by_fingerprint_and_settings(make_terminal, run_module, control_side):
    terminal = make_terminal(style="bundle", boot=False)
    run_module("pos_checkin_agent", agent_args(control_side.endpoint), terminal.root)

    rotated = run_module("pos_checkin_agent", agent_args(control_side.endpoint, key=KEY_B, retry=5), terminal.root)

    assert rotated["changed"] and terminal.path(pos_checkin.KEY).read_text().strip() == KEY_B
    assert rotated["diff"]["before"]["key_fingerprint"] == pos_checkin.fingerprint(KEY_A)
    assert rotated["diff"]["after"]["key_fingerprint"] == pos_checkin.fingerprint(KEY_B)
    assert (rotated["diff"]["before"]["config"]["retry_s"], rotated["config"]["retry_s"]) == (20, 5)
    assert KEY_A not in json.dumps(rotated) and KEY_B not in json.dumps(rotated)


def test_absent_removes_the_agent_its_settings_and_key(make_terminal, run_module, control_side):
    terminal = make_terminal(style="bundle", boot=False)
    run_module("pos_checkin_agent", agent_args(control_side.endpoint), terminal.root)
    terminal.path(pos_checkin.WATCH).write_text('["tzdata"]')  # as an answer's os_watch leaves it

    in_check_mode = run_module("pos_checkin_agent", {"state": "absent"}, terminal.root, check=True)
    assert in_check_mode["changed"] and terminal.path(pos_checkin.KEY).exists()
    removed = run_module("pos_checkin_agent", {"state": "absent"}, terminal.root)
    again = run_module("pos_checkin_agent", {"state": "absent"}, terminal.root)

    assert removed["changed"] and not again["changed"]
    for path in (pos_checkin.COMMAND, pos_checkin.CONFIG, pos_checkin.KEY, pos_checkin.WATCH):
        assert not terminal.path(path).exists(), path
    code = terminal.root / "usr/local/lib/posfleet/ansible_collections/posfleet/fleet/plugins/module_utils"
    assert not (code / "pos_checkin.py").exists() and (code / "pos_terminal.py").exists(), \
        "the agent's own code goes; the update guard's stays"


@pytest.mark.parametrize(("args", "expected"), [
    ({"key": "not-a-key"}, "key must be 64 hex digits"),
    ({"endpoint": "ftp://control/checkin"}, "is not an http:// or https:// URL"),
    ({"jitter": 900}, "jitter must be less than interval"),
    ({"retry": 0}, "retry must be a whole number of seconds, 1 or more"),
], ids=["key", "endpoint", "jitter", "retry"])
def test_bad_options_fail_naming_the_option_and_change_nothing(make_terminal, run_module, args, expected):
    terminal = make_terminal(style="bundle", boot=False)
    before = tree_state(terminal.root)

    result = run_module("pos_checkin_agent", dict(agent_args("http://127.0.0.1:9/checkin"), **args), terminal.root)

    assert result["failed"] and expected in result["msg"], result
    assert tree_state(terminal.root) == before
    assert "not-a-key" not in json.dumps(result)


# --- the agent --------------------------------------------------------------------------------------------


def test_once_checks_in_with_the_terminals_versions_signed_with_its_key(make_terminal, run_module, control_side):
    terminal = make_terminal(style="bundle", boot=False)
    (terminal.root / "run" / "pos" / "boot_id").write_text("boot-42\n")
    run_module("pos_checkin_agent", agent_args(control_side.endpoint), terminal.root)

    proc = pos_checkin_command(terminal, "--once")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    (request,) = control_side.received
    msg = pos_checkin.verify(request["body"], request["signature"], {TERMINAL["serial"]: KEY_A}.get)
    assert (msg["serial"], msg["app_version"], msg["packs"], msg["boot_id"]) == (TERMINAL["serial"], "1.0.0",
                                                                                FACTORY_PACKS, "boot-42")
    assert (request["path"], request["type"], request["status"]) == ("/checkin", "application/json", 202)
    assert request["size"] < 1024, "a check-in is a few hundred bytes on a metered link"
    assert "check-in ok: %d bytes" % len(request["body"]) in proc.stdout and "reply 202 Accepted" in proc.stdout
    assert msg["lease"] is None

    # An update's run takes the terminal (pos_maintenance's lease): the check-in names the run.
    held = {"phase": "quiesced", "expires": time.time() + 600, "run": {"id": "20261203T010203Z-update-3f2a"}}
    terminal.path(LEASE).write_text(json.dumps(held))
    assert pos_checkin_command(terminal, "--once").returncode == 0
    assert json.loads(control_side.received[-1]["body"])["lease"] == "20261203T010203Z-update-3f2a"


def test_the_agent_reports_the_os_packages_the_control_side_asks_it_to_watch(make_terminal, run_module,
                                                                            control_side):
    terminal = make_terminal(style="deb", boot=False)  # posd installed with dpkg; no tzdata in its database
    run_module("pos_checkin_agent", agent_args(control_side.endpoint), terminal.root)
    control_side.extra = {"os_watch": ["tzdata", "posd"]}

    proc = pos_checkin_command(terminal, "--once")

    # The first check-in knew of nothing to watch; the answer named two packages, so it checked in again at once.
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "now watching 2 OS package(s)" in proc.stdout
    first, second = [json.loads(request["body"]) for request in control_side.received]
    assert "os_packages" not in first
    assert second["os_packages"] == {"posd": "1.0.0", "tzdata": None}
    assert json.loads(terminal.path(pos_checkin.WATCH).read_text()) == ["posd", "tzdata"]

    # The same list again: one check-in, with the versions.
    assert pos_checkin_command(terminal, "--once").returncode == 0
    assert len(control_side.received) == 3
    assert json.loads(control_side.received[-1]["body"])["os_packages"] == {"posd": "1.0.0", "tzdata": None}


def test_once_fails_quickly_against_a_closed_port_and_names_a_refusal(make_terminal, run_module, control_side):
    terminal = make_terminal(style="bundle", boot=False)
    run_module("pos_checkin_agent", agent_args("http://127.0.0.1:%d/checkin" % closed_port()), terminal.root)

    started = time.monotonic()
    closed = pos_checkin_command(terminal, "--once")
    assert closed.returncode == 1 and time.monotonic() - started < 10
    assert "check-in failed" in closed.stdout and "no reply" in closed.stdout, closed.stdout

    control_side.keys[TERMINAL["serial"]] = KEY_B    # the control side holds another key for this serial
    run_module("pos_checkin_agent", agent_args(control_side.endpoint), terminal.root)
    refused = pos_checkin_command(terminal, "--once")
    assert refused.returncode == 1 and "reply 403 Forbidden (refused: bad_signature)" in refused.stdout, refused.stdout


def test_the_agent_waits_for_its_key_takes_a_rotated_one_without_a_restart_and_stops_on_sigterm(
        make_terminal, run_module, control_side):
    terminal = make_terminal(style="bundle", boot=False)
    run_module("pos_checkin_agent", agent_args(control_side.endpoint, interval=1, jitter=0, retry=1), terminal.root)
    terminal.path(pos_checkin.KEY).unlink()    # the settings are there, the key is not yet
    log = terminal.root / "pos-checkin.log"
    with open(log, "wb") as out:
        agent = subprocess.Popen([str(terminal.path(pos_checkin.COMMAND))], stdout=out, stderr=subprocess.STDOUT,
                                 env={"POS_ROOT": str(terminal.root), "PATH": "/usr/bin:/bin"})
    try:
        wait_for(lambda: "skipped" in log.read_text(), what="the agent to log the missing key")
        assert agent.poll() is None and not control_side.received, "no key: it waits, it does not crash"

        terminal.path(pos_checkin.KEY).write_text(KEY_A + "\n")
        wait_for(lambda: control_side.received, what="a check-in signed with the first key")
        terminal.path(pos_checkin.KEY).write_text(KEY_B + "\n")
        control_side.keys[TERMINAL["serial"]] = KEY_B
        wait_for(lambda: any(r["signature"] == pos_checkin.sign(r["body"], KEY_B) for r in control_side.received),
                 what="a check-in signed with the rotated key")
    finally:
        agent.send_signal(signal.SIGTERM)
        returncode = agent.wait(10)

    first = control_side.received[0]
    assert first["signature"] == pos_checkin.sign(first["body"], KEY_A) and first["status"] == 202
    assert control_side.received[-1]["status"] == 202
    assert returncode == 0 and log.read_text().splitlines()[-1].endswith("check-in stopped"), log.read_text()
    assert "Traceback" not in log.read_text()


def test_a_running_agent_ends_once_the_module_removed_it(make_terminal, run_module, control_side):
    terminal = make_terminal(style="bundle", boot=False)
    run_module("pos_checkin_agent", agent_args(control_side.endpoint, interval=1, jitter=0), terminal.root)
    agent = subprocess.Popen([str(terminal.path(pos_checkin.COMMAND))], stdout=subprocess.PIPE, text=True,
                             env={"POS_ROOT": str(terminal.root), "PATH": "/usr/bin:/bin"})
    try:
        wait_for(lambda: control_side.received, what="the agent's first check-in")
        assert run_module("pos_checkin_agent", {"state": "absent"}, terminal.root)["changed"]
        out = agent.communicate(timeout=10)[0]
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()

    assert agent.returncode == 0 and out.splitlines()[-1].endswith("stopped: the agent's code was replaced or removed")


def test_the_agent_checks_in_at_once_when_what_the_terminal_runs_changes(make_terminal, run_module, control_side):
    terminal = make_terminal(style="bundle", boot=False)
    # An hour between check-ins: only a change of what the terminal runs can bring the second one.
    run_module("pos_checkin_agent", agent_args(control_side.endpoint, interval=3600, jitter=0, retry=1), terminal.root)
    agent = subprocess.Popen([str(terminal.path(pos_checkin.COMMAND))], stdout=subprocess.PIPE, text=True,
                             env={"POS_ROOT": str(terminal.root), "PATH": "/usr/bin:/bin"})
    try:
        wait_for(lambda: control_side.received, what="the agent's first check-in")
        time.sleep(2.5)
        assert len(control_side.received) == 1, "nothing changed: no check-in before the interval"
        held = {"phase": "quiesced", "expires": time.time() + 600, "run": {"id": "20261204T010203Z-update-77aa"}}
        terminal.path(LEASE).write_text(json.dumps(held))
        wait_for(lambda: len(control_side.received) == 2, what="a check-in when an update takes the terminal")
        assert json.loads(control_side.received[-1]["body"])["lease"] == "20261204T010203Z-update-77aa"
    finally:
        agent.send_signal(signal.SIGTERM)
        out = agent.communicate(timeout=10)[0]
    assert "what the terminal runs changed: checking in now" in out
