"""The terminal modules run for real: against a terminal tree in tmp_path, the real posd (started by a
tiny init, see conftest.py), the lab's acquirer simulator and a distribution point on 127.0.0.1.

Every test looks at what an operator would notice: the version a terminal runs, which pack is
current, the rows of the journal, the message a failure prints, and that check mode leaves the
terminal exactly as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest
from conftest import pack_archive, pack_contents, pack_files, tar_gz, tree_state, wait_for, write_pack

NEW_PACKS = {"params": "2026.11.0", "catalog": "2026.11.0"}
MERCHANT = {
    "merchant_id": "M-UNIT-1",
    "terminal_id": "T-UNIT-1",
    "name": "Unit Cafe",
    "currency": "EUR",
    "receipt_header": "Unit Cafe - thank you",
}
HEX_KEY = "5f" * 32
PASSPHRASE = "correct horse battery staple"


def merchant_version(profile=MERCHANT):
    canonical = json.dumps(profile, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:12]


def publish_app(dist, artifacts, version, style):
    built = artifacts[version]["deb" if style == "dpkg" else "bundle"]
    data = Path(built["path"]).read_bytes()
    return dist.publish("/pool/%s/%s" % (built["sha256"], Path(built["path"]).name), data)


def package_args(published, version, style, **extra):
    return dict(published, version=version, style=style, retry_delay=0, timeout=20, **extra)


def publish_packs(dist, terminal, versions=NEW_PACKS, batch_floor=5):
    specs = {}
    for name, version in versions.items():
        files = pack_files(name, version, terminal.acquirer_url, batch_floor=batch_floor)
        specs[name] = dict(
            dist.publish("/pool/%s-%s.tar.gz" % (name, version), pack_archive(name, version, files)),
            version=version,
        )
    return specs


def sync_args(specs, **extra):
    return dict(packs=specs, merchant=MERCHANT, retry_delay=0, timeout=20, **extra)


# --- pos_maintenance -------------------------------------------------------------------------------


def test_maintenance_enters_leaves_and_reports_no_change_when_already_there(make_terminal, run_module):
    terminal = make_terminal()

    entered = run_module("pos_maintenance", {"state": "maintenance", "timeout": 5}, terminal.root)
    again = run_module("pos_maintenance", {"state": "maintenance", "timeout": 5}, terminal.root)
    checked = run_module("pos_maintenance", {"state": "selling"}, terminal.root, check=True)

    assert entered["changed"] and entered["status"]["state"] == "maintenance"
    assert entered["diff"] == {"before": {"maintenance": False}, "after": {"maintenance": True}}
    assert not again["changed"]
    assert checked["changed"] and terminal.status()["maintenance"] is True  # check mode left it alone
    left = run_module("pos_maintenance", {"state": "selling"}, terminal.root)
    assert left["changed"] and terminal.status()["state"] == "idle"
    assert not run_module("pos_maintenance", {"state": "selling"}, terminal.root)["changed"]


def test_maintenance_defers_when_a_sale_does_not_finish_in_time(make_terminal, run_module):
    terminal = make_terminal()
    assert terminal.ctl("hold_sale", seconds=0)["ok"]

    result = run_module("pos_maintenance", {"state": "maintenance", "timeout": 0.3}, terminal.root)

    assert result["failed"] and result["deferred"] is True
    assert result["msg"].startswith("in-transaction: a sale was still in progress after 0.3s")
    assert terminal.status()["maintenance"] is False  # never forced
    terminal.ctl("release_sale")


def test_ready_waits_for_posd_after_a_restart_and_fails_clearly_when_it_stays_down(make_terminal, run_module):
    terminal = make_terminal()
    starts, old = terminal.starts, terminal.proc
    old.send_signal(15)
    old.wait(10)  # gone: the next posd that answers is the one init starts again

    ready = run_module("pos_maintenance", {"state": "ready", "timeout": 20}, terminal.root)

    assert not ready["changed"] and ready["status"]["app_version"] == "1.0.0"
    assert terminal.starts > starts
    terminal.halt()
    down = run_module("pos_maintenance", {"state": "ready", "timeout": 0.5}, terminal.root)
    assert down["failed"] and "posd did not come up in 0s" in down["msg"] and "posd.log" in down["msg"]
    refused = run_module("pos_maintenance", {"state": "maintenance"}, terminal.root)
    assert refused["msg"].startswith("cannot read the payment app's state: cannot talk to posd")


# --- pos_txn_upload --------------------------------------------------------------------------------


def test_upload_sends_pending_sales_and_check_mode_only_counts_them(make_terminal, run_module):
    terminal = make_terminal()
    terminal.ctl("maintenance_enter", timeout=5)
    terminal.ctl("make_pending", count=4)

    checked = run_module("pos_txn_upload", {"timeout": 10}, terminal.root, check=True)
    assert (checked["changed"], checked["would_upload"], checked["uploaded"]) == (True, 4, 0)
    assert terminal.status()["pending"] == 4

    uploaded = run_module("pos_txn_upload", {"timeout": 10}, terminal.root)
    again = run_module("pos_txn_upload", {"timeout": 10}, terminal.root)

    assert (uploaded["changed"], uploaded["uploaded"], uploaded["pending"]) == (True, 4, 0)
    assert all(row[3] == 1 for row in terminal.journal_rows())
    assert (again["changed"], again["uploaded"]) == (False, 0)


def test_upload_fails_as_a_deferral_naming_pending_sales_and_the_acquirer_error(
    make_terminal, run_module, acquirer
):
    terminal = make_terminal()
    terminal.ctl("maintenance_enter", timeout=5)
    terminal.ctl("make_pending", count=3)
    acquirer.set_mode("down")
    try:
        result = run_module("pos_txn_upload", {"timeout": 5, "retries": 1, "retry_delay": 0}, terminal.root)
    finally:
        acquirer.set_mode("up")

    assert result["failed"] and result["deferred"] is True
    assert (result["pending"], result["uploaded"], result["attempts"]) == (3, 0, 2)
    assert result["msg"].startswith("3 sales are still pending after 2 upload attempts: acquirer ")
    assert "503" in result["msg"]


# --- pos_backup ------------------------------------------------------------------------------------


def test_backup_writes_a_verified_sorted_snapshot_and_check_mode_writes_nothing(make_terminal, run_module):
    terminal = make_terminal(style="dpkg")
    terminal.ctl("maintenance_enter", timeout=5)
    terminal.ctl("make_pending", count=6)
    before = tree_state(terminal.root)

    checked = run_module(
        "pos_backup", {"package_style": "dpkg", "release": "2026.01.1"}, terminal.root, check=True
    )
    assert checked["changed"] and checked["journal_rows"] == 6
    assert "packs/catalog/2026.01.0/catalog.csv" in checked["manifest"]
    assert tree_state(terminal.root) == before

    result = run_module("pos_backup", {"package_style": "dpkg", "release": "2026.01.1"}, terminal.root)

    tar_path = terminal.path(result["path"])
    assert result["changed"] and result["path"] == "/var/lib/pos/backup/snapshot.tar"
    assert hashlib.sha256(tar_path.read_bytes()).hexdigest() == result["sha256"]
    assert (result["journal_rows"], result["counters"]["invoice"]) == (6, 6)
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("MANIFEST.json").read())
        app = json.loads(tar.extractfile("app.json").read())
        packs = json.loads(tar.extractfile("packs.json").read())
        for name, digest in manifest.items():
            assert hashlib.sha256(tar.extractfile(name).read()).hexdigest() == digest
        journal = terminal.root / "copy.db"
        journal.write_bytes(tar.extractfile("journal.db").read())
    assert names == sorted(names) and set(names) == set(manifest) | {"MANIFEST.json"}
    assert manifest == result["manifest"]
    assert json.loads(terminal.path("/var/lib/pos/backup/MANIFEST.json").read_text()) == manifest
    assert (app["version"], app["style"], app["release"]) == ("1.0.0", "dpkg", "2026.01.1")
    assert packs == {"params": "2026.01.0", "catalog": "2026.01.0", "merchant": "m1"}
    assert {"etc/pos/terminal.json", "journal.db", "packs/merchant/m1/profile.json"} <= set(names)
    db = sqlite3.connect(journal)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*) FROM txn").fetchone()[0] == 6
    db.close()
    assert not [n for n in os.listdir(terminal.path("/var/lib/pos/backup")) if n.startswith(".")]


def test_backup_fails_clearly_without_a_journal_or_with_the_wrong_style(make_terminal, run_module):
    terminal = make_terminal(boot=False)

    missing = run_module("pos_backup", {"package_style": "bundle"}, terminal.root)
    wrong = run_module("pos_backup", {"package_style": "dpkg"}, terminal.root)

    assert (
        missing["msg"]
        == "there is no journal at /var/lib/pos/journal.db: has posd ever run on this terminal?"
    )
    assert wrong["msg"] == "the terminal has a bundle app but package_style is dpkg; fix the model profile"


# --- pos_package -----------------------------------------------------------------------------------


def test_bundle_install_switches_current_restarts_posd_and_keeps_the_previous_version(
    make_terminal, run_module, dist, artifacts
):
    terminal = make_terminal(style="bundle")
    published = publish_app(dist, artifacts, "1.1.0", "bundle")
    args = package_args(published, "1.1.0", "bundle")
    before = tree_state(terminal.root)

    checked = run_module("pos_package", args, terminal.root, check=True)
    assert checked["changed"] and checked["diff"]["after"] == {"app_version": "1.1.0"}
    assert dist.requests == [] and tree_state(terminal.root) == before

    result = run_module("pos_package", args, terminal.root)

    assert result["changed"] and (result["previous_version"], result["version"]) == ("1.0.0", "1.1.0")
    assert result["bytes_downloaded"] == published["size"] and result["resumed"] is False
    assert terminal.app_version() == "1.1.0" and terminal.status()["app_version"] == "1.1.0"
    assert result["status"]["app_version"] == "1.1.0"
    assert sorted(os.listdir(terminal.path("/opt/pos/app"))) == ["1.0.0", "1.1.0", "current"]
    assert (
        json.loads(terminal.path("/var/lib/pos/rollback/app.json").read_text())["previous_version"] == "1.0.0"
    )
    assert os.listdir(terminal.path("/var/lib/pos/staging")) == []

    requests = len(dist.requests)
    again = run_module("pos_package", args, terminal.root)
    assert not again["changed"] and again["bytes_downloaded"] == 0 and len(dist.requests) == requests


def test_dpkg_install_keeps_a_rebuilt_deb_of_the_factory_version_for_rollback(
    make_terminal, run_module, dist, artifacts
):
    terminal = make_terminal(style="dpkg")
    published = publish_app(dist, artifacts, "1.1.0", "dpkg")

    result = run_module("pos_package", package_args(published, "1.1.0", "dpkg"), terminal.root)

    assert not result.get("failed"), result["msg"]
    assert (
        result["changed"]
        and terminal.app_version() == "1.1.0"
        and terminal.status()["app_version"] == "1.1.0"
    )
    assert result["rollback"]["deb_source"] == "repacked"
    rollback = terminal.path("/var/lib/pos/rollback")
    assert sorted(os.listdir(rollback)) == ["app.json", "posd_1.0.0_all.deb", "posd_1.1.0_all.deb"]
    fields = subprocess.run(
        ["dpkg-deb", "--field", str(rollback / "posd_1.0.0_all.deb"), "Version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert fields == "1.0.0"
    contents = subprocess.run(
        ["dpkg-deb", "-c", str(rollback / "posd_1.0.0_all.deb")], capture_output=True, text=True, check=True
    ).stdout
    assert "./usr/lib/posd/posd.py" in contents


def test_package_refuses_a_download_with_the_wrong_sha256_and_deletes_it(
    make_terminal, run_module, dist, artifacts
):
    terminal = make_terminal(boot=False)
    published = publish_app(dist, artifacts, "1.1.0", "bundle")
    wrong = dict(published, sha256="0" * 64)

    result = run_module("pos_package", package_args(wrong, "1.1.0", "bundle", restart=False), terminal.root)

    assert result["failed"] and result["msg"].startswith(
        "sha256 mismatch for %s: expected %s, got %s" % (published["url"], "0" * 64, published["sha256"])
    )
    assert os.listdir(terminal.path("/var/lib/pos/staging")) == []
    assert terminal.app_version() == "1.0.0" and not terminal.path("/opt/pos/app/1.1.0").exists()


def test_package_resumes_a_download_after_dropped_connections(make_terminal, run_module, dist, artifacts):
    terminal = make_terminal(boot=False)
    published = publish_app(dist, artifacts, "1.1.0", "bundle")
    path = published["url"][len(dist.url) :]
    dist.drop(path, 2)

    # No retries left in this run: it stops half-way and keeps the .part for the next run.
    first = run_module(
        "pos_package", package_args(published, "1.1.0", "bundle", retries=0, restart=False), terminal.root
    )
    assert first["failed"] and "the next run resumes it" in first["msg"]
    part = terminal.path("/var/lib/pos/staging/%s.part" % published["sha256"])
    assert 0 < part.stat().st_size < published["size"]

    second = run_module(
        "pos_package", package_args(published, "1.1.0", "bundle", retries=2, restart=False), terminal.root
    )

    assert second["changed"] and second["resumed"] is True and terminal.app_version() == "1.1.0"
    assert second["bytes_downloaded"] < published["size"]
    ranges = [header for request_path, header in dist.requests if request_path == path]
    assert ranges[0] is None and all(header and header.startswith("bytes=") for header in ranges[1:])
    assert len(ranges) == 3


def test_package_restarts_from_zero_when_the_server_ignores_range(make_terminal, run_module, dist, artifacts):
    terminal = make_terminal(boot=False)
    published = publish_app(dist, artifacts, "1.1.0", "bundle")
    path = published["url"][len(dist.url) :]
    dist.drop(path, 1)
    dist.server.ignore_range.add(path)

    result = run_module(
        "pos_package", package_args(published, "1.1.0", "bundle", restart=False), terminal.root
    )

    assert result["changed"] and result["resumed"] is False and terminal.app_version() == "1.1.0"
    assert result["bytes_downloaded"] > published["size"]


def test_package_checks_free_space_and_style_before_downloading(make_terminal, run_module, dist, artifacts):
    terminal = make_terminal(boot=False)
    published = publish_app(dist, artifacts, "1.1.0", "bundle")

    huge = run_module(
        "pos_package", package_args(dict(published, size=10**15), "1.1.0", "bundle"), terminal.root
    )
    style = run_module("pos_package", package_args(published, "1.1.0", "dpkg"), terminal.root)

    assert huge["failed"] and re.match(
        r"not enough free space for posd 1\.1\.0: it needs \d+ MB \(3 x the "
        r"1000000000000000-byte artifact\), \d+ MB are free in /var/lib/pos/staging",
        huge["msg"],
    )
    assert style["msg"].startswith(
        "the terminal has a bundle app installed but the release ships a dpkg artifact"
    )
    assert dist.requests == []


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        ({"name": "1.1.0/../../../etc/evil", "mode": 0o644}, "climbs out with '..'"),
        ({"name": "/etc/evil", "mode": 0o644}, "has an absolute path"),
        (
            {"name": "1.1.0/lib/escape", "type": tarfile.SYMTYPE, "linkname": "../../../../etc/passwd"},
            "points outside the archive",
        ),
        ({"name": "1.1.0/dev/null", "type": tarfile.CHRTYPE}, "is a device, fifo or other special file"),
    ],
)
def test_package_refuses_a_bundle_that_escapes_its_directory(
    make_terminal, run_module, dist, member, expected
):
    terminal = make_terminal(boot=False)
    data = tar_gz(
        [
            ({"name": "1.1.0", "type": tarfile.DIRTYPE, "mode": 0o755}, None),
            (member, b"x" if member.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else None),
        ]
    )
    published = dist.publish("/pool/evil.tar.gz", data)

    result = run_module(
        "pos_package", package_args(published, "1.1.0", "bundle", restart=False), terminal.root
    )

    assert result["failed"] and result["msg"].startswith("refusing the app bundle: bundle 1.1.0: ")
    assert expected in result["msg"]
    assert sorted(os.listdir(terminal.path("/opt/pos/app"))) == ["1.0.0", "current"]
    assert not (terminal.root / "etc" / "evil").exists()


# --- pos_data_sync ---------------------------------------------------------------------------------


def test_data_sync_switches_every_pack_after_staging_and_keeps_one_previous(make_terminal, run_module, dist):
    terminal = make_terminal()
    terminal.ctl("make_pending", count=3)
    write_pack(terminal.root, "catalog", "2025.06.0", pack_files("catalog", "2025.06.0"), current=False)
    specs = publish_packs(dist, terminal)
    before = tree_state(terminal.root)

    checked = run_module("pos_data_sync", sync_args(specs), terminal.root, check=True)
    assert checked["changed"] and checked["switched"] == ["params", "catalog", "merchant"]
    assert dist.requests == [] and tree_state(terminal.root) == before

    result = run_module("pos_data_sync", sync_args(specs), terminal.root)

    wanted = dict(NEW_PACKS, merchant=merchant_version())
    assert (
        result["changed"]
        and result["versions_after"] == wanted
        and result["merchant_version"] == wanted["merchant"]
    )
    assert result["versions_before"] == {"params": "2026.01.0", "catalog": "2026.01.0", "merchant": "m1"}
    assert {name: terminal.pack_current(name) for name in wanted} == wanted
    status = terminal.status()
    assert status["packs"] == wanted and status["healthy"] is True
    assert result["counters_before"]["invoice"] == result["counters_after"]["invoice"] == 3
    assert result["counters_after"]["batch"] == 5  # the new params pack's batch_floor, applied by posd
    assert sorted(os.listdir(terminal.path("/var/lib/pos/packs/catalog"))) == [
        "2026.01.0",
        "2026.11.0",
        "current",
    ]
    profile = terminal.path("/var/lib/pos/packs/merchant/current/profile.json").read_bytes()
    assert hashlib.sha256(profile).hexdigest()[:12] == wanted["merchant"]

    requests = len(dist.requests)
    again = run_module("pos_data_sync", sync_args(specs), terminal.root)
    assert not again["changed"] and again["switched"] == [] and len(dist.requests) == requests


def test_data_sync_switches_nothing_when_one_pack_fails(make_terminal, run_module, dist):
    terminal = make_terminal(boot=False)
    specs = publish_packs(dist, terminal)
    specs["catalog"]["sha256"] = "f" * 64

    result = run_module("pos_data_sync", sync_args(specs), terminal.root)

    assert result["failed"] and result["msg"].startswith("sha256 mismatch for %s" % specs["catalog"]["url"])
    assert result["msg"].endswith("no pack was switched")
    assert (terminal.pack_current("params"), terminal.pack_current("catalog")) == ("2026.01.0", "2026.01.0")
    assert terminal.pack_current("merchant") == "m1"
    leftovers = [
        n
        for name in ("params", "catalog", "merchant")
        for n in os.listdir(terminal.path("/var/lib/pos/packs/" + name))
        if n.endswith(".staging")
    ]
    assert leftovers == []


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (({"name": "../escape.json", "mode": 0o644}, b"{}"), "climbs out with '..'"),
        (({"name": "/tmp/escape.json", "mode": 0o644}, b"{}"), "has an absolute path"),
        (({"name": "link.json", "type": tarfile.SYMTYPE, "linkname": "fees.json"}, None), "is a link"),
        (({"name": "hard.json", "type": tarfile.LNKTYPE, "linkname": "fees.json"}, None), "is a link"),
        (({"name": "sub", "type": tarfile.DIRTYPE, "mode": 0o755}, None), "is a directory"),
        (({"name": "fifo", "type": tarfile.FIFOTYPE}, None), "is a device, fifo or other special file"),
        (({"name": "unlisted.json", "mode": 0o644}, b"{}"), "is not listed in the archive's manifest"),
        (({"name": "zeros.json", "mode": 0o644}, b"0" * 200000), "unpacks to more than"),
    ],
)
def test_data_sync_refuses_unsafe_pack_archives(make_terminal, run_module, dist, extra, expected):
    terminal = make_terminal(boot=False)
    files = pack_files("params", "2026.11.0", terminal.acquirer_url)
    contents = pack_contents("params", "2026.11.0", files)
    if extra[0]["name"] == "zeros.json":  # listed, so only the size rule can stop it
        files["zeros.json"] = extra[1]
        contents = pack_contents("params", "2026.11.0", files)
        members = [({"name": rel, "mode": 0o644}, data) for rel, data in sorted(contents.items())]
    else:
        members = [({"name": rel, "mode": 0o644}, data) for rel, data in sorted(contents.items())] + [extra]
    spec = dict(dist.publish("/pool/params-evil.tar.gz", tar_gz(members)), version="2026.11.0")

    result = run_module("pos_data_sync", {"packs": {"params": spec}, "retry_delay": 0}, terminal.root)

    assert result["failed"] and expected in result["msg"] and result["msg"].endswith("no pack was switched")
    assert terminal.pack_current("params") == "2026.01.0"
    assert sorted(os.listdir(terminal.path("/var/lib/pos/packs/params"))) == ["2026.01.0", "current"]


def test_data_sync_refuses_an_unknown_pack_and_a_pack_of_another_version(make_terminal, run_module, dist):
    terminal = make_terminal(boot=False)
    specs = publish_packs(dist, terminal)

    unknown = run_module("pos_data_sync", {"packs": {"firmware": specs["params"]}}, terminal.root)
    mislabelled = run_module(
        "pos_data_sync",
        {"packs": {"params": dict(specs["params"], version="2027.01.0")}, "retry_delay": 0},
        terminal.root,
    )

    assert unknown["msg"] == "unknown pack 'firmware' in packs: a release ships params, catalog"
    assert "holds version 2026.11.0, but 2027.01.0 was asked for" in mislabelled["msg"]


def test_data_sync_resumes_a_pack_download(make_terminal, run_module, dist):
    terminal = make_terminal(boot=False)
    specs = publish_packs(dist, terminal, versions={"catalog": "2026.11.0"})
    dist.drop(specs["catalog"]["url"][len(dist.url) :], 1)

    result = run_module("pos_data_sync", sync_args(specs, reload=False), terminal.root)

    assert result["changed"] and result["resumed"] is True and terminal.pack_current("catalog") == "2026.11.0"


def test_data_sync_fails_when_posd_refuses_the_new_pack_or_is_down(make_terminal, run_module, dist):
    terminal = make_terminal()
    # A params pack whose PACK.json is right but whose content posd refuses (no acquirer URL).
    files = dict(pack_files("params", "2026.11.0"), **{"endpoints.json": json.dumps({"timeout_s": 10})})
    spec = dict(dist.publish("/pool/params-bad.tar.gz", pack_archive("params", "2026.11.0", files)),
                version="2026.11.0")

    refused = run_module("pos_data_sync", {"packs": {"params": spec}, "retry_delay": 0}, terminal.root)

    assert refused["failed"] and refused["changed"]  # switched, so the update goes to rollback
    assert refused["msg"].startswith("posd did not load the new packs: params (posd has None): ")
    assert "endpoints.json needs an http(s) acquirer_url" in refused["msg"]
    terminal.halt()
    specs = publish_packs(dist, terminal, versions={"catalog": "2026.11.0"})
    down = run_module("pos_data_sync", sync_args(specs), terminal.root)
    assert down["msg"].startswith("the packs are switched but posd did not reload them: cannot talk to posd")


def test_data_sync_waits_for_a_posd_slow_to_reload(make_terminal, run_module, dist):
    """A terminal short of CPU answers the reload late; waiting for it updates the terminal, giving up rolls it back."""
    terminal = make_terminal()
    slow = terminal.path("/var/lib/possim/slow-reload")
    slow.parent.mkdir(parents=True, exist_ok=True)
    slow.write_text("3")
    specs = publish_packs(dist, terminal, versions={"catalog": "2026.11.0"})

    impatient = run_module("pos_data_sync", sync_args(specs, reload_timeout=1), terminal.root)
    assert impatient["failed"] and impatient["changed"], impatient  # switched: the update goes to rollback
    assert impatient["msg"].startswith("the packs are switched but posd did not reload them"), impatient["msg"]

    slow.write_text("12")  # longer than the 10 s the reload used to be given
    specs = publish_packs(dist, terminal, versions={"catalog": "2026.12.0"})
    patient = run_module("pos_data_sync", sync_args(specs), terminal.root)
    assert patient["changed"] and not patient.get("failed"), patient
    assert terminal.status()["packs"]["catalog"] == "2026.12.0"


# --- pos_verify ------------------------------------------------------------------------------------


def test_verify_passes_then_leaves_maintenance_but_not_in_check_mode(make_terminal, run_module):
    terminal = make_terminal()
    terminal.ctl("maintenance_enter", timeout=5)
    terminal.ctl("make_pending", count=5)
    args = {
        "release": {"app_version": "1.0.0", "packs": {"params": "2026.01.0", "catalog": "2026.01.0"}},
        "package_style": "bundle",
        "merchant_version": "m1",
        "leave_maintenance": True,
    }

    checked = run_module("pos_verify", args, terminal.root, check=True)
    assert checked["changed"] and terminal.status()["maintenance"] is True

    result = run_module("pos_verify", args, terminal.root)

    assert result["changed"] and result["left_maintenance"] and terminal.status()["state"] == "idle"
    assert [c["name"] for c in result["checks"]] == [
        "app_version",
        "app_running",
        "app_files",
        "pack:catalog",
        "pack:merchant",
        "pack:params",
        "journal",
        "health",
        "sequence",
    ]
    assert all(c["ok"] for c in result["checks"]) and result["drift"] == []
    assert "5 sales, numbers continuous" in result["checks"][-1]["detail"]
    plain = run_module("pos_verify", dict(args, leave_maintenance=False), terminal.root)
    assert not plain["changed"]


def test_verify_waits_for_an_app_still_starting_when_given_a_ready_timeout(make_terminal, run_module):
    terminal = make_terminal()
    terminal.halt()  # posd is down, as right after a restart or a reboot
    args = {"release": {"app_version": "1.0.0", "packs": {"params": "2026.01.0", "catalog": "2026.01.0"}},
            "package_style": "bundle", "merchant_version": "m1"}

    at_once = run_module("pos_verify", args, terminal.root)
    assert at_once["failed"] and "app_running: cannot talk to posd" in at_once["msg"]

    starting = threading.Timer(1.0, terminal.boot, kwargs={"wait": False})
    starting.start()
    try:
        waited = run_module("pos_verify", dict(args, ready_timeout=30), terminal.root)
    finally:
        starting.join()
    assert not waited.get("failed"), waited["msg"]
    assert all(check["ok"] for check in waited["checks"])


def test_verify_reports_every_drift(make_terminal, run_module):
    terminal = make_terminal(style="dpkg")
    terminal.ctl("make_pending", count=3)
    (terminal.root / "usr" / "lib" / "posd" / "posctl.py").write_text("# tampered\n")
    catalog = terminal.path("/var/lib/pos/packs/catalog/current/catalog.csv")
    catalog.write_text(catalog.read_text().replace("250", "1"))
    db = sqlite3.connect(terminal.path("/var/lib/pos/journal.db"), timeout=10)
    with db:
        db.execute(
            "INSERT INTO txn (id, serial, stan, batch, invoice, amount_cents, currency, pan, sku, created_at,"
            " offline) VALUES ('gap', 'KST9101', 9, 1, 9, 100, 'EUR', '9999990000000000', 'SKU1',"
            " '2999-01-01T00:00:00.000Z', 1)"
        )
    db.close()

    result = run_module(
        "pos_verify",
        {
            "release": {"app_version": "1.1.0", "packs": {"params": "2026.11.0", "catalog": "2026.01.0"}},
            "package_style": "dpkg",
            "leave_maintenance": True,
        },
        terminal.root,
    )

    assert result["failed"] and not result.get("changed")
    failed = {c["name"]: c["detail"] for c in result["checks"] if not c["ok"]}
    assert set(failed) == {
        "app_version",
        "app_running",
        "app_files",
        "pack:catalog",
        "pack:params",
        "health",
        "sequence",
    }
    assert failed["app_version"] == "installed 1.0.0, wanted 1.1.0"
    assert "/usr/lib/posd/posctl.py" in failed["app_files"]
    assert failed["pack:params"] == "current is 2026.01.0, wanted 2026.11.0"
    assert "catalog.csv does not match its sha256" in failed["pack:catalog"]
    assert (
        "invoice jumps from 3 to 9" in failed["sequence"]
        and "counter invoice is 3, below 9" in failed["sequence"]
    )
    assert result["msg"].startswith(
        "the terminal does not run the release intact: app_version: installed 1.0.0"
    )
    assert len(result["drift"]) == 7


# --- pos_restore -----------------------------------------------------------------------------------


def update(run_module, terminal, dist, artifacts, style):
    """The update a rollback undoes: app 1.1.0 and the November packs."""
    published = publish_app(dist, artifacts, "1.1.0", style)
    assert run_module("pos_package", package_args(published, "1.1.0", style), terminal.root)["changed"]
    assert run_module("pos_data_sync", sync_args(publish_packs(dist, terminal)), terminal.root)["changed"]


def test_restore_rolls_a_bundle_terminal_back_and_is_idempotent(make_terminal, run_module, dist, artifacts):
    terminal = make_terminal(style="bundle")
    terminal.ctl("maintenance_enter", timeout=5)
    terminal.ctl("make_pending", count=4)
    assert run_module("pos_backup", {"package_style": "bundle"}, terminal.root)["changed"]
    update(run_module, terminal, dist, artifacts, "bundle")
    shutil.rmtree(terminal.path("/var/lib/pos/packs/params/2026.01.0"))  # re-created from the snapshot
    before = tree_state(terminal.root)

    checked = run_module("pos_restore", {"package_style": "bundle"}, terminal.root, check=True)
    assert checked["changed"] and checked["restored"] == [
        "app",
        "pack:catalog",
        "pack:merchant",
        "pack:params",
    ]
    assert checked["journal"]["action"] == "kept" and tree_state(terminal.root) == before

    result = run_module("pos_restore", {"package_style": "bundle"}, terminal.root)

    assert result["changed"] and result["versions_after"] == {
        "app_version": "1.0.0",
        "packs": {"params": "2026.01.0", "catalog": "2026.01.0", "merchant": "m1"},
    }
    assert result["diff"]["before"]["app_version"] == "1.1.0"
    status = terminal.status()
    assert (status["app_version"], status["healthy"], status["maintenance"]) == ("1.0.0", True, True)
    assert len(terminal.journal_rows()) == 4
    again = run_module("pos_restore", {"package_style": "bundle"}, terminal.root)
    assert not again["changed"] and again["restored"] == []

    # Trying the update again reuses the kept, intact 1.1.0 directory: nothing to download.
    requests = len(dist.requests)
    published = publish_app(dist, artifacts, "1.1.0", "bundle")
    retry = run_module("pos_package", package_args(published, "1.1.0", "bundle"), terminal.root)
    assert retry["changed"] and retry["bytes_downloaded"] == 0 and len(dist.requests) == requests
    assert terminal.status()["app_version"] == "1.1.0"


def test_restore_reinstalls_the_previous_deb_on_a_dpkg_terminal(make_terminal, run_module, dist, artifacts):
    terminal = make_terminal(style="dpkg")
    terminal.ctl("maintenance_enter", timeout=5)
    assert run_module("pos_backup", {"package_style": "dpkg"}, terminal.root)["changed"]
    update(run_module, terminal, dist, artifacts, "dpkg")
    assert terminal.status()["app_version"] == "1.1.0"

    result = run_module("pos_restore", {"package_style": "dpkg"}, terminal.root)

    assert result["changed"] and "app" in result["restored"]
    assert terminal.app_version() == "1.0.0" and terminal.status()["app_version"] == "1.0.0"
    verify = run_module(
        "pos_verify",
        {"release": {"app_version": "1.0.0", "packs": {"params": "2026.01.0"}}, "package_style": "dpkg"},
        terminal.root,
    )
    assert not verify.get("failed"), verify["drift"]


def test_restore_puts_lost_sales_back_without_letting_counters_go_backwards(make_terminal, run_module):
    terminal = make_terminal()
    terminal.ctl("maintenance_enter", timeout=5)
    terminal.ctl("make_pending", count=5)
    backup = run_module("pos_backup", {"package_style": "bundle"}, terminal.root)
    # A broken release wipes two sales, and its counters ran ahead (numbers handed out, sales lost).
    db = sqlite3.connect(terminal.path("/var/lib/pos/journal.db"), timeout=10)
    with db:
        db.execute("DELETE FROM txn WHERE invoice > 3")
        db.execute("UPDATE counters SET value = 9 WHERE name IN ('stan', 'invoice')")
    db.close()

    result = run_module("pos_restore", {"package_style": "bundle"}, terminal.root)

    assert result["changed"] and result["restored"] == ["journal"]
    assert (result["journal"]["action"], result["journal"]["reason"]) == (
        "restored",
        "2 snapshot sales are missing or changed in the live journal",
    )
    assert backup["counters"]["invoice"] == 5
    assert result["counters_after"] == {"stan": 9, "batch": 1, "invoice": 9}
    assert [row[2] for row in terminal.journal_rows()] == [1, 2, 3, 4, 5]
    assert terminal.status()["counters"]["invoice"] == 9  # posd sees the restored journal without a restart
    assert terminal.ctl("make_pending", count=1)["ok"] and terminal.journal_rows()[-1][2] == 10

    # The deliberate jump from invoice 5 to 10 is recorded, so verify accepts it (and only it).
    gaps = json.loads(terminal.path("/var/lib/pos/sequence_gaps.json").read_text())
    assert [(g["after_invoice"], g["invoice"], g["after_stan"], g["stan"]) for g in gaps] == [(5, 9, 5, 9)]
    packs = {"params": "2026.01.0", "catalog": "2026.01.0", "merchant": None}
    release = {"app_version": "1.0.0", "packs": packs}
    verify = run_module("pos_verify", {"release": release, "package_style": "bundle"}, terminal.root)
    assert not verify.get("failed"), verify["drift"]
    assert "pack:merchant" not in [check["name"] for check in verify["checks"]]
    terminal.path("/var/lib/pos/sequence_gaps.json").unlink()
    verify = run_module("pos_verify", {"release": release, "package_style": "bundle"}, terminal.root)
    assert verify["drift"] == ["sequence: invoice jumps from 5 to 10; STAN jumps from 5 to 10 at invoice 10"]


def test_restore_raises_counters_that_were_reset_and_keeps_the_sales(make_terminal, run_module):
    terminal = make_terminal()
    terminal.ctl("maintenance_enter", timeout=5)
    terminal.ctl("make_pending", count=4)
    run_module("pos_backup", {"package_style": "bundle"}, terminal.root)
    db = sqlite3.connect(terminal.path("/var/lib/pos/journal.db"), timeout=10)
    with db:
        db.execute("UPDATE counters SET value = 0 WHERE name IN ('stan', 'invoice')")
    db.close()

    result = run_module("pos_restore", {"package_style": "bundle"}, terminal.root)

    assert result["changed"] and result["journal"]["action"] == "counters"
    assert result["counters_after"] == {"stan": 4, "batch": 1, "invoice": 4}
    assert terminal.status()["counters"]["invoice"] == 4 and len(terminal.journal_rows()) == 4


def test_restore_replaces_a_journal_damaged_beyond_opening(make_terminal, run_module):
    terminal = make_terminal()
    terminal.ctl("maintenance_enter", timeout=5)
    terminal.ctl("make_pending", count=3)
    run_module("pos_backup", {"package_style": "bundle"}, terminal.root)
    terminal.halt()
    journal = terminal.path("/var/lib/pos/journal.db")
    journal.write_bytes(b"this is not a database" * 100)
    terminal.boot(wait=False)  # posd cannot start on the damaged journal; init keeps trying

    result = run_module("pos_restore", {"package_style": "bundle", "timeout": 20}, terminal.root)

    assert result["changed"] and result.get("journal", {}).get("action") == "replaced", result
    assert "cannot be read" in result["journal"]["reason"] or "integrity" in result["journal"]["reason"]
    assert len(terminal.journal_rows()) == 3
    # The test's init may restart posd once more after the module's own restart (the race pos_restore
    # documents); the journal it then opens is the restored one.
    wait_for(terminal.answers, timeout=20, what="posd on the restored journal")
    assert terminal.status()["counters"]["invoice"] == 3


def test_restore_refuses_to_lose_sales_and_refuses_a_damaged_snapshot(make_terminal, run_module):
    terminal = make_terminal()
    terminal.ctl("maintenance_enter", timeout=5)
    terminal.ctl("make_pending", count=3)
    run_module("pos_backup", {"package_style": "bundle"}, terminal.root)
    db = sqlite3.connect(terminal.path("/var/lib/pos/journal.db"), timeout=10)
    with db:
        db.execute("DELETE FROM txn WHERE invoice = 1")
    db.close()
    terminal.ctl("make_pending", count=1)  # a sale the snapshot does not have

    diverged = run_module("pos_restore", {"package_style": "bundle"}, terminal.root)

    assert diverged["failed"] and diverged["msg"].startswith(
        "the live journal and the snapshot have diverged: 1 snapshot sales are missing or changed and 1 live "
        "sales"
    )
    snapshot = terminal.path("/var/lib/pos/backup/snapshot.tar")
    data = bytearray(snapshot.read_bytes())
    index = data.index(b"sku,name,price_cents")
    data[index : index + 3] = b"SKU"
    snapshot.write_bytes(bytes(data))
    damaged = run_module("pos_restore", {"package_style": "bundle"}, terminal.root)
    assert damaged["msg"].startswith(
        "the snapshot /var/lib/pos/backup/snapshot.tar is damaged, refusing to restore"
    )
    assert "catalog.csv does not match its sha256 in MANIFEST.json" in damaged["msg"]


def test_restore_names_a_missing_app_version_directory(make_terminal, run_module, dist, artifacts):
    terminal = make_terminal()
    run_module("pos_backup", {"package_style": "bundle"}, terminal.root)
    published = publish_app(dist, artifacts, "1.1.0", "bundle")
    run_module("pos_package", package_args(published, "1.1.0", "bundle", restart=False), terminal.root)
    shutil.rmtree(terminal.path("/opt/pos/app/1.0.0"))

    result = run_module("pos_restore", {"package_style": "bundle"}, terminal.root)

    assert result["failed"] and result["msg"].startswith(
        "cannot restore the app to 1.0.0: /opt/pos/app/1.0.0 is gone"
    )


# --- pos_backup_store (control node) ---------------------------------------------------------------


def snapshot_tar(path, payload):
    """A snapshot-shaped tar (members plus MANIFEST.json) with `payload` as journal.db."""
    members = {"journal.db": payload, "app.json": b'{"version": "1.0.0"}'}
    manifest = {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}
    members["MANIFEST.json"] = json.dumps(manifest).encode()
    with tarfile.open(path, "w") as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            tar.addfile(info, io.BytesIO(members[name]))
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("key", [HEX_KEY, PASSPHRASE])
def test_backup_store_encrypts_verifies_rotates_and_restores(tmp_path, run_module, key):
    store = tmp_path / "store"
    base = {"serial": "KST9101", "store_dir": str(store), "key": key}
    src = tmp_path / "snap1.tar"
    digest = snapshot_tar(src, b"journal one")

    checked = run_module("pos_backup_store", dict(base, src=str(src), release="2026.01.1"), check=True)
    assert checked["changed"] and not store.exists()

    stored = run_module("pos_backup_store", dict(base, src=str(src), release="2026.01.1"))

    assert stored["changed"] and stored["sha256"] == digest
    enc = Path(stored["path"])
    assert enc.parent == store / "KST9101" and enc.name.endswith("-2026.01.1.tar.enc")
    raw = enc.read_bytes()
    assert raw.startswith(b"POSFLEETBK1") and b"journal one" not in raw and key.encode() not in raw
    assert os.listdir(enc.parent) == [enc.name]
    assert key not in json.dumps(stored)
    assert not run_module("pos_backup_store", dict(base, src=str(src), release="2026.01.1"))["changed"]

    dest = tmp_path / "back.tar"
    restored = run_module("pos_backup_store", dict(base, state="restored", dest=str(dest)))
    assert restored["changed"] and hashlib.sha256(dest.read_bytes()).hexdigest() == digest
    assert not run_module("pos_backup_store", dict(base, state="restored", dest=str(dest)))["changed"]

    wrong = run_module(
        "pos_backup_store", dict(base, key="0" * 64, state="restored", dest=str(tmp_path / "x.tar"))
    )
    assert wrong["failed"] and wrong["msg"] == "cannot decrypt %s: wrong key, or the file is damaged" % enc
    assert not (tmp_path / "x.tar").exists()


def test_backup_store_keeps_the_newest_and_refuses_a_damaged_snapshot(tmp_path, run_module):
    store = tmp_path / "store"
    base = {"serial": "KST9101", "store_dir": str(store), "key": HEX_KEY, "keep": 2}
    serial_dir = store / "KST9101"
    serial_dir.mkdir(parents=True)
    for stamp in ("20250101T000000Z", "20250201T000000Z"):  # older backups (content is not read for rotation)
        (serial_dir / f"{stamp}-2025.01.0.tar.enc").write_bytes(b"POSFLEETBK1" + b"\0" * 64)
    src = tmp_path / "snap.tar"
    snapshot_tar(src, b"journal two")

    result = run_module("pos_backup_store", dict(base, src=str(src), release="2026.11.1"))

    assert result["changed"] and result["removed"] == ["20250101T000000Z-2025.01.0.tar.enc"]
    assert sorted(os.listdir(serial_dir)) == result["kept"] and len(result["kept"]) == 2
    older = run_module(
        "pos_backup_store",
        dict(base, state="restored", backup=result["kept"][0], dest=str(tmp_path / "old.tar")),
    )
    assert older["failed"] and "cannot decrypt" in older["msg"]

    data = bytearray(src.read_bytes())
    data[data.index(b"journal two")] = ord("J")
    src.write_bytes(bytes(data))
    damaged = run_module("pos_backup_store", dict(base, src=str(src), release="2026.11.2"))
    assert damaged["failed"] and "journal.db does not match its sha256 in MANIFEST.json" in damaged["msg"]
    assert sorted(os.listdir(serial_dir)) == result["kept"]
