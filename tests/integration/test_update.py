"""The rolling update on the lab, as an operator runs it: baseline, upgrade, no-op re-run, broken release."""

import json
import sqlite3
from pathlib import Path

import awx_job
import yaml
from conftest import OUTPUT_DIR, REPORT_DIR, latest_report, poslab, rows_by_serial, run

VAULT = ["-e", "@/var/lib/poslab/vault/secrets.yml", "--vault-password-file", "/var/lib/poslab/vault/password"]


def publish(spec):
    run(["ansible-playbook", "playbooks/publish.yml", "-e", f"release_spec=releases/lab/{spec}.yml"])


def update(release, check=True):
    return run(["ansible-playbook", "playbooks/update.yml", "-e", f"update_release={release}", *VAULT],
               check=check, timeout=900)


def fleet_versions():
    rows = json.loads(poslab("status", "--json").stdout)
    return {r["serial"]: (r["app_version"], r["packs"]["params"], r["packs"]["catalog"], r["state"]) for r in rows}


def os_versions(serial, names):
    """{name: version} of the Debian packages `names` fully installed on the terminal (None: not so)."""
    out = poslab("exec", serial, "--", "dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\n",
                 *names, check=False).stdout
    found = {line.split()[0].split(":")[0]: line.split()[1] for line in out.splitlines()
             if line.split()[2:3] == ["ii"]}
    return {name: found.get(name) for name in names}


def dpkg_audit(serial):
    return poslab("exec", serial, "--", "dpkg", "--audit", check=False).stdout.strip()


def factory_versions(model):
    """{name: version} of the model's factory list (poslab writes it from the terminal image)."""
    models = yaml.safe_load(Path("inventories/shared/models.yml").read_text())["models"]
    text = (Path("inventories/shared") / models[model]["os"]["factory"]).read_text()
    return {line.split()[0]: line.split()[1] for line in text.splitlines() if line.strip() and line[0] != "#"}


def release_os_packages(release, model):
    manifest = yaml.safe_load(Path(f"/var/lib/poslab/build/releases/{release}/manifest.yml").read_text())
    return {item["name"]: item["version"] for item in manifest["models"][model].get("os_packages", [])}


def summary_totals(stdout):
    """The TOTAL row of the outcome table the report callback prints, as {column: count}."""
    lines = [line.strip() for line in stdout.splitlines()]
    header = next(line for line in lines if line.startswith("model ")).split()
    total = next(line for line in lines if line.startswith("TOTAL")).split()
    totals = dict(zip(header[2:], map(int, total[1:])))
    assert totals == {k: v for k, v in latest_report()["totals"].items() if v}, "the table is the report's"
    return totals


def acquirer_ids(serial):
    with sqlite3.connect("file:/var/lib/poslab/acquirer/ledger.db?mode=ro", uri=True) as db:
        return {row[0] for row in db.execute("SELECT id FROM txn WHERE serial = ?", (serial,))}


def uploaded_in_backup(serial, ids):
    """Ids among `ids` that the journal inside the terminal's pre-update snapshot marks uploaded."""
    script = (
        "import json, sqlite3, sys, tarfile, tempfile\n"
        "tmp = tempfile.mkdtemp()\n"
        "with tarfile.open('/var/lib/pos/backup/snapshot.tar') as tar:\n"
        "    member = next(m for m in tar.getmembers() if m.name.endswith('journal.db'))\n"
        "    tar.extract(member, tmp)\n"
        "db = sqlite3.connect(tmp + '/' + member.name)\n"
        "ids = json.loads(sys.argv[1])\n"
        "rows = db.execute('SELECT id FROM txn WHERE uploaded = 1 AND id IN (%s)' % ','.join('?' * len(ids)), ids)\n"
        "print(json.dumps([r[0] for r in rows]))\n"
    )
    out = poslab("exec", serial, "--", "python3", "-c", script, json.dumps(ids)).stdout
    return set(json.loads(out))


def journal_counts():
    ledger = json.loads(poslab("ledger", "--json", check=False).stdout)
    return {e["serial"]: e["generated"] for e in ledger["terminals"]}


def ledger_totals():
    return json.loads(poslab("ledger", "--json", check=False).stdout)["totals"]


def test_an_awx_job_brings_the_fleet_to_the_baseline(lab):
    for spec in ("baseline", "upgrade", "broken"):
        publish(spec)
    # The "posfleet update" job template with its survey's defaults, as AWX launches it. The lab runs
    # at any hour, so its operator answers the windows question with "true".
    # Its private data directory is under the run's outputs, which the secret scan reads.
    job = awx_job.finish(*awx_job.start(OUTPUT_DIR / "runner" / "update", "posfleet update",
                                        {"update_release": "2026.11.0", "update_ignore_windows": "true"}))
    assert (job["rc"], job["status"]) == (0, "successful"), job["stdout"][-3000:]
    assert {v[:3] for v in fleet_versions().values()} == {("1.0.0", "2026.11.0", "2026.11.0")}
    # The job's events are what AWX shows and stores: every terminal verified, and the run's stats.
    verified = {e["event_data"]["host"] for e in job["events"]
                if e["event"] == "runner_on_ok" and e["event_data"].get("task_action") == "posfleet.fleet.pos_verify"}
    assert verified == set(lab)
    stats = next(e for e in job["events"] if e["event"] == "playbook_on_stats")["event_data"]
    assert not stats["failures"] and not stats["dark"]
    assert f"· {len(lab)} of {len(lab)} done" in job["stdout"], "the progress line reaches the job's output"
    report = json.loads((job["report_dir"] / "report.json").read_text())
    assert report["totals"]["updated"] == len(lab) and report["settings"]["ignore_windows"] is True
    assert report["settings"]["batch_size"] == 0, "the survey's default (no cut: a wave is one batch) reached the run"


def test_baseline_then_upgrade_across_all_models_and_regions(lab):
    # Offline sales waiting on one terminal must reach the acquirer before its backup is taken.
    serial = next(iter(lab))
    pending = json.loads(poslab("exec", serial, "--", "posctl", "make_pending", "count=5").stdout)["ids"]
    sold_before = journal_counts()
    result = update("2026.12.0")
    sold_after = journal_counts()
    assert all(sold_after[s] > sold_before[s] for s in lab), "every terminal kept selling around its update"
    assert set(pending) <= acquirer_ids(serial), "the offline sales reached the acquirer"
    assert uploaded_in_backup(serial, pending) == set(pending), "they were uploaded before the backup was taken"
    assert summary_totals(result.stdout)["updated"] == len(lab)
    versions = fleet_versions()
    assert {v[:3] for v in versions.values()} == {("1.1.0", "2026.12.0", "2026.12.0")}, versions
    assert all(v[3] in ("idle", "in-transaction") for v in versions.values()), "every terminal sells again"
    totals = ledger_totals()
    assert totals["missing"] == 0 and totals["duplicated"] == 0 and totals["generated"] > 0
    # Bundle terminals took the app as a delta from 1.0.0: less than the full bundle alone. A broken
    # delta path would not fail the update (it falls back to the full download); this catches it.
    manifest = yaml.safe_load(Path("/var/lib/poslab/build/releases/2026.12.0/manifest.yml").read_text())
    downloaded = {serial: row["bytes_downloaded"] for serial, row in rows_by_serial(latest_report()).items()}
    for serial, row in lab.items():
        app = manifest["models"][row["model"]]["app"]
        if app.get("deltas"):
            assert 0 < downloaded[serial] < app["size"], (serial, downloaded[serial], app["size"])
        else:
            assert downloaded[serial] >= app["size"], (serial, downloaded[serial], app["size"])
    assert any(manifest["models"][row["model"]]["app"].get("deltas") for row in lab.values())
    # The Debian security updates of the release, on every model whose OS posfleet updates, from the factory
    # image's versions; petrel_p9's OS (a vendor image, os.updates none) is left alone.
    rows = rows_by_serial(latest_report())
    for serial, row in lab.items():
        wanted = release_os_packages("2026.12.0", row["model"])
        if row["model"] == "petrel_p9":
            assert not wanted and "os_packages" not in (rows[serial]["after"] or {}), rows[serial]
            continue
        factory = factory_versions(row["model"])
        assert wanted and any(factory[name] != version for name, version in wanted.items()), (wanted, factory)
        assert os_versions(serial, sorted(wanted)) == wanted, serial
        assert dpkg_audit(serial) == "", serial
        assert rows[serial]["before"]["os_packages"] == {name: factory[name] for name in wanted}, rows[serial]
        assert rows[serial]["after"]["os_packages"] == wanted, rows[serial]


def test_rerun_is_a_noop(lab):
    result = update("2026.12.0")
    recap = [line for line in result.stdout.splitlines() if line.startswith(tuple(lab)) and "changed=" in line]
    assert len(recap) == len(lab)
    assert all("changed=0" in line for line in recap), recap
    assert summary_totals(result.stdout)["current"] == len(lab)


def test_broken_release_rolls_back_and_stops_the_rollout(lab):
    before = fleet_versions()
    result = update("2026.12.1-broken", check=False)
    assert result.returncode != 0
    report = latest_report()
    canaries = report["waves"][0]["serials"]
    assert sorted(lab[s]["model"] for s in canaries) == sorted({row["model"] for row in lab.values()}), \
        "one canary per model"
    rows = rows_by_serial(report)
    for serial in canaries:
        assert rows[serial]["status"] == "rolled_back" and "self-test failed" in rows[serial]["reason"]
        assert f"{serial} rolled_back: " in result.stdout, "the canary was rolled back, with the reason"
    assert report["halted"] and "error budget exhausted" in report["halt_reason"]
    assert "the rollout STOPPED: error budget exhausted" in result.stdout
    others = set(lab) - set(canaries)
    assert {rows[s]["status"] for s in others} == {"deferred"}
    assert all(rows[s]["deferred_by"] == "budget" and rows[s]["reason"].startswith("not started") for s in others)
    after = fleet_versions()
    # The canaries rolled back to the release they ran; no other terminal was touched.
    assert {v[:3] for v in after.values()} == {("1.1.0", "2026.12.0", "2026.12.0")}, after
    assert all(v[3] in ("idle", "in-transaction") for v in after.values())
    assert before.keys() == after.keys()
    totals = ledger_totals()
    assert totals["missing"] == 0 and totals["duplicated"] == 0


def backups_on_control_node():
    store = Path("/var/lib/poslab/backups")
    return sorted(str(p) for p in store.rglob("*.tar.enc")) if store.exists() else []


def test_check_mode_changes_nothing(lab):
    before, stored = fleet_versions(), backups_on_control_node()
    result = run(["ansible-playbook", "playbooks/update.yml", "--check", "-e", "update_release=2026.11.0", *VAULT],
                 timeout=900)
    assert summary_totals(result.stdout)["would_update"] == len(lab)
    assert {s: v[:3] for s, v in fleet_versions().items()} == {s: v[:3] for s, v in before.items()}
    assert backups_on_control_node() == stored


def test_a_role_option_of_the_wrong_type_fails_the_terminal_at_the_survey(lab):
    serial = sorted(lab)[0]
    before = fleet_versions()[serial]
    result = run(["ansible-playbook", "playbooks/update.yml", "-e", "update_release=2026.11.0", "-l", serial,
                  "-e", "pos_package_timeout=soon", *VAULT], check=False, timeout=300)
    assert result.returncode != 0
    row = rows_by_serial(latest_report())[serial]
    assert row["status"] == "failed", row
    assert "the options of pos_quiesce, " in row["reason"] and "pos_package_timeout" in row["reason"], row
    # Found before any wave: the terminal was not touched and sells on the release it ran.
    assert not latest_report()["waves"]
    after = fleet_versions()[serial]
    assert after[:3] == before[:3] and after[3] in ("idle", "in-transaction"), (before, after)


def test_verify_reports_drift_after_a_hand_edit(lab):
    assert run(["ansible-playbook", "playbooks/verify.yml", "-e", "update_release=2026.12.0"]).returncode == 0
    serial = next(iter(lab))
    fees = "/var/lib/pos/packs/params/current/fees.json"
    original = poslab("exec", serial, "--", "cat", fees).stdout
    poslab("exec", serial, "--", "sh", "-c", f"echo ' ' >> {fees}")
    try:
        result = run(["ansible-playbook", "playbooks/verify.yml", "-e", "update_release=2026.12.0"], check=False)
        assert result.returncode != 0
        assert serial in result.stdout and "pack:params" in result.stdout
        assert "1 terminal(s) drifted" in result.stdout, "only the edited terminal drifted"
    finally:
        poslab("exec", serial, "--", "sh", "-c", f"cat > {fees}", input_text=original)
    assert run(["ansible-playbook", "playbooks/verify.yml", "-e", "update_release=2026.12.0"]).returncode == 0


def test_verify_reports_an_os_package_downgraded_by_hand(lab):
    serial = next(s for s, row in lab.items() if row["model"] == "kestrel_k200")
    wanted = release_os_packages("2026.12.0", "kestrel_k200")
    factory = factory_versions("kestrel_k200")
    name = next(n for n, version in sorted(wanted.items()) if factory[n] != version)
    kept = "/var/lib/pos/rollback/os/{}_{}_*.deb"
    install = "dpkg -i " + kept
    poslab("exec", serial, "--", "sh", "-c", install.format(name, factory[name].replace(":", "%3a")))
    try:
        result = run(["ansible-playbook", "playbooks/verify.yml", "-e", "update_release=2026.12.0"], check=False)
        assert result.returncode != 0
        assert f"os:{name}: installed {factory[name]}, wanted {wanted[name]}" in result.stdout
        assert f"1 terminal(s) run {name} older than {wanted[name]} ({factory[name]} on 1)" in result.stdout
    finally:
        poslab("exec", serial, "--", "sh", "-c", install.format(name, wanted[name].replace(":", "%3a")))
    assert run(["ansible-playbook", "playbooks/verify.yml", "-e", "update_release=2026.12.0"]).returncode == 0


def test_rollback_to_a_named_release(lab):
    run(["ansible-playbook", "playbooks/rollback.yml", "-e", "rollback_release=2026.11.0", *VAULT], timeout=900)
    versions = fleet_versions()
    assert {v[:3] for v in versions.values()} == {("1.0.0", "2026.11.0", "2026.11.0")}, versions
    # The baseline pins the OS packages at the image's versions (`factory`): the upgrade's are taken back.
    for serial, row in lab.items():
        wanted = release_os_packages("2026.11.0", row["model"])
        if not wanted:
            continue
        factory = factory_versions(row["model"])
        assert wanted == {name: factory[name] for name in wanted}
        assert os_versions(serial, sorted(wanted)) == wanted, serial
        assert dpkg_audit(serial) == "", serial
    totals = ledger_totals()
    assert totals["missing"] == 0 and totals["duplicated"] == 0


def test_rollback_to_the_last_backup(lab):
    # The newest backup of each terminal was taken on 2026.12.0, just before the rollback above.
    serial = next(s for s, row in lab.items() if row["model"] == "heron_h5")
    run(["ansible-playbook", "playbooks/rollback.yml", "-l", serial, *VAULT], timeout=900)
    versions = fleet_versions()
    assert versions[serial][:3] == ("1.1.0", "2026.12.0", "2026.12.0"), versions[serial]
    assert versions[serial][3] in ("idle", "in-transaction")
    upgrade = release_os_packages("2026.12.0", "heron_h5")
    assert os_versions(serial, sorted(upgrade)) == upgrade, "the backup's OS packages came back with its app"
    assert all(v[:3] == ("1.0.0", "2026.11.0", "2026.11.0") for s, v in versions.items() if s != serial)
    totals = ledger_totals()
    assert totals["missing"] == 0 and totals["duplicated"] == 0


def test_rollback_to_a_backup_brings_back_the_os_packages(lab):
    # The backup the named rollback took of a kestrel (its store names it by the app it ran, 1.1.0) holds the
    # upgrade's OS versions; restoring it puts them back from the .debs that rollback kept on the terminal.
    serial = next(s for s, row in lab.items() if row["model"] == "kestrel_k200")
    taken = sorted(Path(f"/var/lib/poslab/backups/{serial}").glob("*-1.1.0.tar.enc"))[-1].name
    wanted = release_os_packages("2026.12.0", "kestrel_k200")
    factory = factory_versions("kestrel_k200")
    assert os_versions(serial, sorted(wanted)) == {name: factory[name] for name in wanted}
    run(["ansible-playbook", "playbooks/rollback.yml", "-l", serial, "-e", f"rollback_backup={taken}", *VAULT],
        timeout=900)
    assert os_versions(serial, sorted(wanted)) == wanted
    assert dpkg_audit(serial) == ""
    assert poslab("exec", serial, "--", "dpkg", "--verify", *sorted(wanted), check=False).stdout.strip() == ""
    versions = fleet_versions()[serial]
    assert versions[:3] == ("1.1.0", "2026.12.0", "2026.12.0") and versions[3] in ("idle", "in-transaction")
    # The audit trail has one line per OS package put back (a restore writes no report of its own).
    lines = [json.loads(line) for line in (REPORT_DIR / "audit.jsonl").read_text().splitlines()]
    restored = {line["what"]: (line["from"], line["to"]) for line in lines
                if line["terminal"] == serial and line["action"] == "restore" and line["what"].startswith("os:")}
    assert restored == {f"os:{name}": (factory[name], wanted[name]) for name in wanted if wanted[name] != factory[name]}
    totals = ledger_totals()
    assert totals["missing"] == 0 and totals["duplicated"] == 0
