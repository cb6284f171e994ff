"""What an operator would check on a lab terminal after converging it to the baseline release."""

import json

BASELINE = {"app_version": "1.0.0", "params": "2026.11.0", "catalog": "2026.11.0"}


def posd_status(host):
    result = host.run("posctl status")
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def test_sshd_and_posd_run(host):
    assert host.process.filter(comm="sshd")
    assert host.file("/run/pos/posd.sock").is_socket
    assert posd_status(host)["ok"]


def test_identity_matches_hostname(host):
    identity = json.loads(host.file("/etc/pos/terminal.json").content_string)
    assert identity["serial"] == host.check_output("hostname")


def test_runs_the_baseline_release_and_sells(host):
    status = posd_status(host)
    assert status["app_version"] == BASELINE["app_version"]
    assert status["packs"]["params"] == BASELINE["params"]
    assert status["packs"]["catalog"] == BASELINE["catalog"]
    assert status["packs"]["merchant"], "the merchant profile was rendered for this terminal"
    assert status["healthy"], status["health_detail"]
    assert status["state"] in ("idle", "in-transaction") and not status["maintenance"]


def test_backup_taken_before_the_change(host):
    snapshot = host.file("/var/lib/pos/backup/snapshot.tar")
    assert snapshot.exists and snapshot.size > 0
    assert snapshot.mode & 0o077 == 0, "the snapshot holds card data: no access for others"


def test_terminal_has_no_default_route(host):
    routes = host.file("/proc/net/route").content_string.splitlines()[1:]
    assert routes, "the terminal should have its lab route"
    assert all(line.split()[1] != "00000000" for line in routes)


def test_control_node_files_are_not_visible(host):
    assert not host.file("/var/lib/poslab").exists
    assert not host.file("/root/.ssh/id_ed25519").exists


def test_update_guard_installed_and_no_lease_left_after_the_update(host):
    guard = host.file("/usr/local/sbin/pos-update-guard")
    assert guard.exists and guard.mode & 0o111, "pos_maintenance installs the update guard on the first update"
    assert not host.file("/var/lib/pos/update-lease.json").exists, "a verified update ends its lease"
    assert host.run("/usr/local/sbin/pos-update-guard --status").stdout.strip() == "null"
