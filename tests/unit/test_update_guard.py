"""The update guard on a terminal in tmp_path: what a terminal does by itself when the control node that was
updating it goes silent (killed, cut off, or gone before the terminal came back).

The modules take, renew and end the lease for real; the guard runs as the command pos_maintenance installs
on the terminal, the way the terminal's init runs it. A lease "runs out" by moving its expiry into the past,
as the terminal's clock would after `ttl` seconds without a renewal.
"""

from __future__ import annotations

import json
import shutil
import subprocess

from test_pos_modules import NEW_PACKS, package_args, publish_app, publish_packs, sync_args

LEASE = "/var/lib/pos/update-lease.json"
COMMAND = "/usr/local/sbin/pos-update-guard"
FACTORY = {"app_version": "1.0.0", "packs": {"params": "2026.01.0", "catalog": "2026.01.0", "merchant": "m1"}}


def lease(terminal):
    path = terminal.path(LEASE)
    return json.loads(path.read_text()) if path.exists() else None


def run_out(terminal):
    """The lease's ttl passes without a word from the control node."""
    held = lease(terminal)
    held["expires"] = held["renewed"] - 1
    terminal.path(LEASE).write_text(json.dumps(held))


def guard(terminal):
    """One run of the installed guard, as the terminal's init runs it; its JSON line, or None when it stayed quiet."""
    proc = subprocess.run([str(terminal.path(COMMAND))], capture_output=True, text=True, timeout=120,
                          env={"POS_ROOT": str(terminal.root), "PATH": "/usr/bin:/bin"}, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def versions(terminal):
    status = terminal.status()
    return {"app_version": status["app_version"], "packs": status["packs"]}


def quiesce(run_module, terminal, ttl=600, phase="quiesced"):
    result = run_module("pos_maintenance", {"state": "maintenance", "lease": ttl, "release": "2026.11.0"},
                        terminal.root)
    assert result["changed"] and result["lease"]["phase"] == phase, result
    return result


def update_halfway(run_module, terminal, dist, artifacts, style):
    """Quiesce with a lease, snapshot, install app 1.1.0 and switch the November packs: then the control node dies."""
    quiesce(run_module, terminal)
    assert run_module("pos_backup", {"package_style": style}, terminal.root)["changed"]
    assert lease(terminal)["phase"] == "changing"
    published = publish_app(dist, artifacts, "1.1.0", style)
    assert run_module("pos_package", package_args(published, "1.1.0", style), terminal.root)["changed"]
    assert run_module("pos_data_sync", sync_args(publish_packs(dist, terminal)), terminal.root)["changed"]
    assert versions(terminal)["app_version"] == "1.1.0"


def test_the_guard_waits_while_the_lease_runs_and_a_terminal_without_a_lease_has_no_guard(
        make_terminal, run_module):
    terminal = make_terminal(style="bundle")
    plain = run_module("pos_maintenance", {"state": "maintenance"}, terminal.root)
    assert plain["changed"] and "lease" not in plain and lease(terminal) is None
    assert not terminal.path(COMMAND).exists()

    held = quiesce(run_module, terminal)
    assert held["guard_installed"] and terminal.path(COMMAND).exists()
    again = quiesce(run_module, terminal)
    assert not again["guard_installed"], "the same guard is not written twice"

    assert guard(terminal) is None, "the lease has not run out: the guard does nothing"
    assert terminal.status()["maintenance"] and lease(terminal)["phase"] == "quiesced"


def test_a_lease_that_runs_out_before_any_change_puts_the_terminal_back_in_service(make_terminal, run_module):
    terminal = make_terminal(style="bundle")
    quiesce(run_module, terminal)
    run_out(terminal)

    outcome = guard(terminal)

    assert outcome["action"] == "resumed" and outcome["switched"] == [], outcome
    assert terminal.status()["maintenance"] is False and versions(terminal) == FACTORY
    assert "nothing had been changed" in outcome["message"]
    # The control node is heard of again: selling ends what is left of the lease.
    assert run_module("pos_maintenance", {"state": "selling"}, terminal.root)["changed"]
    assert lease(terminal) is None


def test_the_guard_switches_a_half_updated_bundle_terminal_back_and_the_update_cannot_go_on(
        make_terminal, run_module, dist, artifacts):
    terminal = make_terminal(style="bundle")
    terminal.ctl("make_pending", count=3)
    rows = terminal.journal_rows()
    update_halfway(run_module, terminal, dist, artifacts, "bundle")
    run_out(terminal)

    outcome = guard(terminal)

    assert outcome["action"] == "undone", outcome
    assert sorted(outcome["switched"]) == ["app 1.0.0", "pack catalog 2026.01.0", "pack merchant m1",
                                           "pack params 2026.01.0"]
    status = terminal.status()
    assert (status["app_version"], status["maintenance"], status["healthy"]) == ("1.0.0", False, True)
    assert versions(terminal) == FACTORY and terminal.app_version() == "1.0.0"
    assert terminal.journal_rows() == rows, "the journal is not touched"
    assert lease(terminal)["phase"] == "undone"
    assert guard(terminal) is None, "the guard acts once"

    # A control node that comes back does not go on with the update the terminal undid...
    published = publish_app(dist, artifacts, "1.1.0", "bundle")
    refused = run_module("pos_package", package_args(published, "1.1.0", "bundle"), terminal.root)
    assert refused["failed"] and "update guard switched the terminal back" in refused["msg"], refused
    synced = run_module("pos_data_sync", sync_args(publish_packs(dist, terminal)), terminal.root)
    assert synced["failed"] and "no pack was switched" in synced["msg"], synced
    assert versions(terminal) == FACTORY
    # ...and its rollback finds nothing left to do.
    restored = run_module("pos_restore", {"package_style": "bundle"}, terminal.root)
    assert not restored.get("failed") and restored["restored"] == [], restored


def test_the_guard_reinstalls_the_kept_package_on_a_dpkg_terminal(make_terminal, run_module, dist, artifacts):
    terminal = make_terminal(style="dpkg")
    update_halfway(run_module, terminal, dist, artifacts, "dpkg")
    run_out(terminal)

    outcome = guard(terminal)

    assert outcome["action"] == "undone" and outcome["switched"][0] == "app 1.0.0", outcome
    assert terminal.app_version() == "1.0.0" and versions(terminal) == FACTORY
    assert terminal.status()["maintenance"] is False


def test_the_guard_switches_nothing_when_a_previous_version_is_missing(make_terminal, run_module, dist, artifacts):
    terminal = make_terminal(style="bundle")
    update_halfway(run_module, terminal, dist, artifacts, "bundle")
    shutil.rmtree(terminal.path("/var/lib/pos/packs/catalog/2026.01.0"))
    run_out(terminal)

    outcome = guard(terminal)

    assert outcome["action"] == "stuck", outcome
    assert "catalog pack's previous version 2026.01.0 is missing" in outcome["reason"]
    assert "rollback.yml" in outcome["reason"] and outcome["switched"] == []
    # Nothing half-done: still all of the new release, and out of service until the control node restores it.
    now = versions(terminal)
    assert now["app_version"] == "1.1.0" and {k: now["packs"][k] for k in NEW_PACKS} == NEW_PACKS, now
    assert terminal.status()["maintenance"] is True
    restored = run_module("pos_restore", {"package_style": "bundle"}, terminal.root)
    assert restored["changed"] and restored["versions_after"]["packs"]["catalog"] == "2026.01.0", restored


def test_a_verified_update_ends_the_lease(make_terminal, run_module, dist, artifacts):
    terminal = make_terminal(style="bundle")
    update_halfway(run_module, terminal, dist, artifacts, "bundle")
    wanted = versions(terminal)

    result = run_module("pos_verify", {"release": wanted, "package_style": "bundle", "leave_maintenance": True},
                        terminal.root)

    assert result["changed"] and result["left_maintenance"], result
    assert lease(terminal) is None and terminal.status()["maintenance"] is False


def test_a_re_run_before_the_lease_runs_out_backs_up_the_release_before_the_interrupted_update(
        make_terminal, run_module, dist, artifacts):
    """The control node died half-way and the operator re-ran at once: the new run's snapshot is of the old
    release, whole, not of the mix the dead run left, and the way back stays the way to that release."""
    terminal = make_terminal(style="bundle")
    update_halfway(run_module, terminal, dist, artifacts, "bundle")
    packs_dir = terminal.path("/var/lib/pos/packs/params/current")
    packs_dir.unlink()
    packs_dir.symlink_to("2026.01.0")  # the dead run got as far as one pack of three

    quiesce(run_module, terminal, phase="changing")  # the interrupted change is remembered
    backup = run_module("pos_backup", {"package_style": "bundle"}, terminal.root)

    assert backup["changed"] and backup["switched_back"] == ["app 1.0.0", "pack catalog 2026.01.0",
                                                             "pack merchant m1"], backup
    assert (backup["app_version"], backup["packs"]) == (FACTORY["app_version"], FACTORY["packs"])
    assert versions(terminal) == FACTORY and terminal.status()["maintenance"] is True
    assert lease(terminal)["before"]["app_version"] == "1.0.0"
