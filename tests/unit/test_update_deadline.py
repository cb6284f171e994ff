"""The update's overall deadline per terminal (issue 17, "Deadlines").

pos_maintenance records it in the update's lease, on the terminal's own clock. Past it no step goes on
with the update: a step that starts refuses, a download that crawls stops, a command that hangs is
stopped, and the rollback (pos_restore) is not bound by it, so the terminal can always be put back.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_guard, pos_terminal
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_download import DownloadError, fetch
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal import CommandTimeout, run_bounded
from test_pos_modules import package_args, publish_app, publish_packs, sync_args

LEASE = "/var/lib/pos/update-lease.json"


@pytest.fixture(autouse=True)
def no_deadline_left_behind():
    """The deadline is process-wide on a terminal (one module, one process); here every test shares one."""
    yield
    pos_terminal.bound_by_deadline(None)
    pos_guard.act_as(None)


def pass_the_deadline(terminal):
    """The update's steps have used up its deadline (as their time, `spent`, is added up in the lease)."""
    path = terminal.path(LEASE)
    lease = json.loads(path.read_text())
    assert lease["deadline_s"], lease
    lease["spent"] = lease["deadline_s"]
    path.write_text(json.dumps(lease))


def versions(terminal):
    status = terminal.status()
    return status["app_version"], status["packs"]


def test_the_lease_records_the_deadline_and_the_time_each_step_ran(make_terminal, run_module):
    terminal = make_terminal(style="bundle")
    held = run_module("pos_maintenance", {"state": "maintenance", "lease": 600, "deadline": 90}, terminal.root)
    assert held["changed"], held
    assert (held["lease"]["deadline_s"], held["lease"]["spent"]) == (90, 0), held["lease"]
    time.sleep(1.5)  # waiting (for the rest of a batch, say) is not the steps' time
    assert run_module("pos_backup", {"package_style": "bundle"}, terminal.root)["changed"]
    spent = json.loads(terminal.path(LEASE).read_text())["spent"]
    assert 0 < spent < 1.5, f"the backup's own time is counted, not the wait before it: {spent}"
    assert run_module("pos_maintenance", {"state": "selling"}, terminal.root)["changed"]
    plain = run_module("pos_maintenance", {"state": "maintenance", "lease": 600}, terminal.root)
    assert plain["lease"]["deadline_s"] == 0, "no deadline unless one is asked for"
    wrong = run_module("pos_maintenance", {"state": "maintenance", "lease": 600, "deadline": -5}, terminal.root)
    assert wrong["failed"] and "deadline must be 0 (none) or more seconds, not -5" in wrong["msg"], wrong


def test_past_the_deadline_no_step_goes_on_and_the_rollback_still_puts_the_terminal_back(
        make_terminal, run_module, dist, artifacts):
    terminal = make_terminal(style="bundle")
    assert run_module("pos_maintenance", {"state": "maintenance", "lease": 600, "deadline": 600},
                      terminal.root)["changed"]
    assert run_module("pos_backup", {"package_style": "bundle"}, terminal.root)["changed"]
    before = versions(terminal)
    pass_the_deadline(terminal)

    published = publish_app(dist, artifacts, "1.1.0", "bundle")
    package = run_module("pos_package", package_args(published, "1.1.0", "bundle"), terminal.root)
    packs = run_module("pos_data_sync", sync_args(publish_packs(dist, terminal)), terminal.root)

    assert package["failed"] and package["msg"].startswith("not installing posd 1.1.0: the update's deadline ran "
                                                           "out: its steps on this terminal have had their 600 s "), \
        package
    assert package["bytes_downloaded"] == 0, "nothing is fetched past the deadline"
    assert packs["failed"] and "the update's deadline ran out" in packs["msg"], packs
    assert "no pack was switched" in packs["msg"], packs
    assert versions(terminal) == before
    # The way back is not bound by the deadline: the rollback restores and the terminal sells again.
    restored = run_module("pos_restore", {"package_style": "bundle"}, terminal.root)
    assert not restored.get("failed"), restored
    assert run_module("pos_maintenance", {"state": "selling"}, terminal.root)["changed"]
    assert terminal.status()["maintenance"] is False and versions(terminal) == before


def test_a_backup_that_starts_past_the_deadline_takes_nothing(make_terminal, run_module):
    terminal = make_terminal(style="dpkg")
    run_module("pos_maintenance", {"state": "maintenance", "lease": 600, "deadline": 30}, terminal.root)
    pass_the_deadline(terminal)
    refused = run_module("pos_backup", {"package_style": "dpkg"}, terminal.root)
    assert refused["failed"] and refused["msg"].startswith("no backup was taken: the update's deadline ran out"), \
        refused
    assert json.loads(terminal.path(LEASE).read_text())["phase"] == "quiesced", "the change did not begin"


def test_a_command_is_stopped_at_the_deadline_and_none_starts_after_it(tmp_path):
    script = tmp_path / "dpkg-hangs"
    script.write_text("#!/bin/sh\necho unpacking\nexec sleep 60\n")
    script.chmod(0o755)
    pos_terminal.bound_by_deadline(time.time() + 0.5)
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as stopped:
        run_bounded([str(script)], 600, "the package is half-unpacked; roll back")
    assert time.monotonic() - started < 5, "its own 600 s timeout did not apply: the deadline came first"
    assert "did not finish before the update's deadline (" in str(stopped.value), stopped.value
    assert str(stopped.value).endswith("was stopped (its last output: unpacking); the package is half-unpacked; "
                                       "roll back"), stopped.value
    with pytest.raises(CommandTimeout) as refused:
        run_bounded(["true"], 600, "nothing")
    assert "true was not started: the update's deadline passed at " in str(refused.value), refused.value
    pos_terminal.bound_by_deadline(None)
    assert run_bounded(["true"], 5, "nothing")[0] == 0, "without a deadline only the command's own timeout counts"


class _Crawl(BaseHTTPRequestHandler):
    """A link that crawls without stalling: 100 KB at 64 bytes every 50 ms, never idle long enough to time out."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(100_000))
        self.end_headers()
        try:
            for _ in range(100_000 // 64):
                self.wfile.write(b"x" * 64)
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass  # the terminal hung up: what the test wants

    def log_message(self, *args):
        del args


def test_a_download_that_crawls_stops_at_the_deadline(tmp_path, monkeypatch):
    monkeypatch.setenv("POS_ROOT", str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Crawl)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pos_guard.take(600, "2026.12.0", deadline=1.5)
        pos_guard.start_step()
        started = time.monotonic()
        with pytest.raises(DownloadError) as stopped:
            fetch("http://127.0.0.1:%d/posd.tar.gz" % server.server_port, str(tmp_path / "staging"), "0" * 64,
                  100_000, timeout=30, retries=3)
        took = time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()
    assert took < 6, "the crawl (about 80 s in all) was stopped at the deadline, not at its end: %.1f s" % took
    assert "stopped: the update's deadline ran out: its steps on this terminal have had their 1 s" \
        in str(stopped.value), stopped.value
    assert (tmp_path / "staging" / ("0" * 64 + ".part")).exists(), "what arrived is kept for the next run to resume"
