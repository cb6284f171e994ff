"""Rollout control on the lab: maintenance windows on a chosen clock, plan against run, the error budget
halting a rollout mid-way, the retry limit file, and the reports every run leaves.

Runs after test_update.py (file order): the fleet starts on 2026.11.0, one heron_h5 on 2026.12.0.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import awx_job
import pytest
from conftest import (
    COMMAND_LOG,
    OUTPUT_DIR,
    REPORT_DIR,
    ROOT,
    latest_report,
    poslab,
    rows_by_serial,
    run,
    wait_for,
)
from conftest import status as status_rows

sys.path.insert(0, str(ROOT))
from ansible_collections.posfleet.fleet.plugins.plugin_utils import posfleet_runs as runs

from posfleet import report as posreport
from posfleet import secretscan

VAULT = ["-e", "@/var/lib/poslab/vault/secrets.yml", "--vault-password-file", "/var/lib/poslab/vault/password"]
WINDOWS_ON = ["-e", "update_ignore_windows=false"]
# 2026-11-24 02:00 UTC: 02:00 in London (eu_west 01:00-05:00, open), 03:00 in Berlin (eu_central
# 02:00-05:30, open), 21:00 in New York (us_east 23:30-04:00, closed: it opens at 23:30 local).
NIGHT_EUROPE = "2026-11-24T02:00:00Z"
# 05:00 UTC: 05:00 in London (closed, the end is exclusive), 06:00 in Berlin (closed), 00:00 in New
# York: open, past midnight inside a window that began the evening before.
NIGHT_US = "2026-11-24T05:00:00Z"
# pos_run's default runs directory: where a run notes that it is going.
RUNS_DIR = Path("/var/tmp/posfleet/runs")


def playbook(name, release, *extra, check=True):
    return run(["ansible-playbook", f"playbooks/{name}", "-e", f"update_release={release}", *extra, *VAULT],
               check=check, timeout=900)


def versions():
    return {row["serial"]: row["app_version"] for row in json.loads(poslab("status", "--json").stdout)}


def by_region(lab, region):
    return sorted(serial for serial, row in lab.items() if row["region"] == region)


@pytest.fixture(scope="module")
def regions(lab):
    found = {region: by_region(lab, region) for region in ("eu_west", "eu_central", "us_east")}
    assert all(found.values()), f"the lab fleet must span the three regions: {found}"
    return found


def test_windows_defer_by_region_on_the_control_node_clock(lab, regions):
    playbook("plan.yml", "2026.12.0", *WINDOWS_ON, "-e", f"update_clock_utc={NIGHT_EUROPE}")
    rows = rows_by_serial(latest_report())
    for serial in regions["us_east"]:
        assert rows[serial]["status"] == "deferred" and rows[serial]["deferred_by"] == "window", rows[serial]
        # 23:30 in New York that evening (EST, UTC-5) is 04:30 UTC.
        assert rows[serial]["window_opens_at"] == "2026-11-24T04:30:00+00:00"
        assert "23:30-04:00 (America/New_York, region)" in rows[serial]["reason"]
    for serial in regions["eu_west"] + regions["eu_central"]:
        assert rows[serial]["status"] in ("would_update", "current"), rows[serial]

    # Five in the morning UTC: Europe's windows have closed, New York's (crossing midnight) is open;
    # one eu_west terminal has its own window that is open then, in its region's timezone.
    override = regions["eu_west"][0]
    host_vars = ROOT / "inventories" / "lab" / "host_vars"
    host_vars.mkdir(exist_ok=True)
    (host_vars / f"{override}.yml").write_text('---\npos_maintenance_window: "04:30-06:00"\n')
    try:
        playbook("plan.yml", "2026.12.0", *WINDOWS_ON, "-e", f"update_clock_utc={NIGHT_US}")
    finally:
        (host_vars / f"{override}.yml").unlink()
        host_vars.rmdir()
    rows = rows_by_serial(latest_report())
    for serial in regions["us_east"]:
        assert rows[serial]["status"] in ("would_update", "current"), rows[serial]
    assert rows[override]["status"] in ("would_update", "current"), "its own window is open"
    for serial in regions["eu_central"] + regions["eu_west"][1:]:
        assert rows[serial]["deferred_by"] == "window", rows[serial]
        # The next night's windows: 01:00 in London (GMT) and 02:00 in Berlin (CET) are both 01:00 UTC.
        assert rows[serial]["window_opens_at"] == "2026-11-25T01:00:00+00:00"


def test_plan_predicts_what_the_update_does(lab, regions):
    before = versions()
    settings = [*WINDOWS_ON, "-e", f"update_clock_utc={NIGHT_EUROPE}"]
    playbook("plan.yml", "2026.12.0", *settings)
    plan = latest_report()
    assert plan["mode"] == "plan"
    update = playbook("update.yml", "2026.12.0", *settings)
    done = latest_report()
    assert done["mode"] == "update" and done["run_id"] != plan["run_id"]
    expected = {"would_update": "updated", "current": "current", "deferred": "deferred"}
    planned, ran = rows_by_serial(plan), rows_by_serial(done)
    assert planned.keys() == ran.keys() == set(lab)
    for serial, row in planned.items():
        assert ran[serial]["status"] == expected[row["status"]], (serial, row, ran[serial])
        assert ran[serial]["wave"] == row["wave"], serial
    assert [wave["serials"] for wave in done["waves"]] == [wave["serials"] for wave in plan["waves"]]
    # The deferred region was not touched at all; the others run the release.
    after = versions()
    for serial in regions["us_east"]:
        assert after[serial] == before[serial]
    for serial in regions["eu_west"] + regions["eu_central"]:
        assert after[serial] == "1.1.0"
    # How many waves depends on how many terminals the suites before left behind: the last progress line
    # names the plan's last wave.
    waves = len(done["waves"])
    assert f"posfleet: wave {waves} of {waves}" in update.stdout, "the progress line"


def test_three_job_slices_share_one_budget_and_merge_into_the_fleet_report(lab):
    # Everyone back on the baseline, as AWX would do it with job slicing: three jobs at once, each on
    # every third terminal of the inventory, sharing one error budget file. An unsliced run in check
    # mode first says what the fleet as a whole would do.
    playbook("update.yml", "2026.11.0", "--check")
    whole = latest_report()
    serials = sorted(lab)
    # The jobs' private data directories, the budget and the merged report are outputs the secret scan
    # reads (OUTPUT_DIR).
    budget = OUTPUT_DIR / "slices-budget.json"
    # AWX runs the slices of one job as the jobs of one workflow job, and says so in awx_workflow_job_id:
    # slices of one job are not "another run going" for each other.
    answers = {"update_release": "2026.11.0", "update_ignore_windows": "true", "update_budget_file": str(budget),
               "awx_workflow_job_id": "901"}
    started = [awx_job.start(OUTPUT_DIR / "runner" / f"slice{k}", "posfleet update", answers,
                             limit=",".join(serials[k::3]), ident=f"slice{k}") for k in range(3)]
    jobs = [awx_job.finish(*job) for job in started]
    assert [(job["rc"], job["status"]) for job in jobs] == [(0, "successful")] * 3, jobs[0]["stdout"][-2000:]
    assert set(versions().values()) == {"1.0.0"}
    # Every slice counted against the one budget: the file holds the whole fleet's outcomes.
    recorded = json.loads(budget.read_text())
    assert sorted(recorded) == sorted(row["serial"] for row in whole["terminals"] if row["status"] == "would_update")
    assert set(recorded.values()) == {"updated"}

    merged_dir = OUTPUT_DIR / "merged-slices"
    subprocess.run([str(ROOT / "bin" / "posfleet-report"), "merge", "--out", str(merged_dir),
                    *(str(job["report_dir"]) for job in jobs)], check=True, capture_output=True, text=True)
    merged = json.loads((merged_dir / "latest" / "report.json").read_text())
    posreport.validate(merged)
    expected = {"would_update": "updated", "current": "current"}
    assert {row["serial"]: (expected[row["status"]], row["before"], row["after"]) for row in whole["terminals"]} == \
        {row["serial"]: (row["status"], row["before"], row["after"]) for row in merged["terminals"]}
    assert merged["totals"]["updated"] == whole["totals"]["would_update"]


def test_error_budget_stops_mid_rollout_and_the_retry_converges(lab):
    assert set(versions().values()) == {"1.0.0"}, "the slices brought everyone back on the baseline"
    playbook("plan.yml", "2026.12.0")
    waves = latest_report()["waves"]
    assert len(waves) >= 3, waves
    victim = waves[1]["serials"][0]
    poslab("fault", victim, "selftest-fail", "1.1.0")
    try:
        result = playbook("update.yml", "2026.12.0", "-e", "update_max_failed=0", check=False)
    finally:
        poslab("fault", victim, "selftest-fail", "off")
    assert result.returncode != 0
    report = latest_report()
    rows = rows_by_serial(report)
    assert rows[victim]["status"] == "rolled_back" and "selftest-fail" in rows[victim]["reason"]
    assert report["halted"]
    assert report["halt_reason"].startswith("error budget exhausted: 1 terminal failed or rolled back, more "
                                            "than the limit of 0 (max_failed)")
    later = [serial for wave in waves[2:] for serial in wave["serials"]]
    assert f"{len(later)} terminals left untouched" in report["halt_reason"]
    now = versions()
    for serial in later:
        assert rows[serial]["status"] == "deferred" and rows[serial]["deferred_by"] == "budget"
        assert now[serial] == "1.0.0", "a later wave was not touched"
    for serial in waves[0]["serials"]:
        assert rows[serial]["status"] == "updated" and now[serial] == "1.1.0"
    assert now[victim] == "1.0.0", "the failed terminal is back on the release it ran"
    assert report["waves"][2]["started_at"] is None

    # The limit file names exactly the terminals that are not on the release yet.
    run_dir = (REPORT_DIR / "latest").resolve()
    limit = (run_dir / "retry.limit").read_text().split()
    assert sorted(limit) == sorted(serial for serial, version in now.items() if version != "1.1.0")
    playbook("update.yml", "2026.12.0", "--limit", f"@{run_dir / 'retry.limit'}")
    retry = latest_report()
    assert {row["serial"] for row in retry["terminals"]} == set(limit)
    assert {row["status"] for row in retry["terminals"]} == {"updated"}
    assert set(versions().values()) == {"1.1.0"}
    ledger = json.loads(poslab("ledger", "--json", check=False).stdout)["totals"]
    assert ledger["missing"] == 0 and ledger["duplicated"] == 0

    # The audit trail: a started and an ended line for every terminal the run changed, the rolled back
    # one included, and the ended lines of the updated ones name each component's versions.
    audit = [json.loads(line) for line in (REPORT_DIR / "audit.jsonl").read_text().splitlines()]
    mine = [entry for entry in audit if entry["run_id"] == report["run_id"]]
    changed = sorted(waves[0]["serials"] + [victim])
    assert sorted(entry["terminal"] for entry in mine if entry["event"] == "started") == changed
    assert {entry["terminal"] for entry in mine if entry["event"] == "ended"} == set(changed)
    victim_end = next(entry for entry in mine if entry["terminal"] == victim and entry["event"] == "ended")
    assert victim_end["status"] == "rolled_back" and "selftest-fail" in victim_end["reason"], victim_end
    assert all(entry["control_node"] and entry["who"] and entry["at"] for entry in mine)
    app = [entry for entry in mine if entry["what"] == "app" and entry["event"] == "ended"
           and entry["status"] == "updated"]
    assert sorted(entry["terminal"] for entry in app) == sorted(waves[0]["serials"])
    assert all(entry["from"] == "1.0.0" and entry["to"] == "1.1.0" for entry in app)


def report_of(stdout):
    """report.json of the run whose output this is (the callback's last line names its report.html)."""
    path = next(line.split("posfleet: report ", 1)[1].strip() for line in stdout.splitlines()
                if "posfleet: report " in line)
    return json.loads((Path(path).parent / "report.json").read_text())


def start_update(release, *extra):
    """update.yml started in the background in a session of its own (so that it can be killed whole)."""
    argv = ["ansible-playbook", "playbooks/update.yml", "-e", f"update_release={release}", *extra, *VAULT]
    log = open(OUTPUT_DIR / f"background-{time.monotonic_ns()}.log", "w+", encoding="utf-8")  # noqa: SIM115
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
                                     POSFLEET_REPORT_DIR=str(REPORT_DIR)))
    return proc, log


def output_of(proc, log, timeout=900):
    proc.wait(timeout=timeout)
    log.seek(0)
    text = log.read()
    log.close()
    with open(COMMAND_LOG, "a", encoding="utf-8") as handle:
        handle.write(f"$ {' '.join(proc.args)}\n{text}\n")
    return text


def run_files():
    """The runs directory's files; a run that ended abnormally (all its terminals failed) leaves one, dead."""
    return set(RUNS_DIR.glob("*.json")) if RUNS_DIR.is_dir() else set()


def live_runs():
    return [run for run in runs.others(str(RUNS_DIR)) if run["alive"]]


def test_a_second_run_stops_at_its_start_or_shares_and_no_terminal_is_in_two_runs(lab):
    assert set(versions().values()) == {"1.1.0"}
    assert not live_runs(), "no posfleet run is going before the test"
    earlier = run_files()
    first, first_log = start_update("2026.11.0")
    try:
        (first_file,) = wait_for(lambda: run_files() - earlier, timeout=120,
                                 what="the first run's file in the runs directory")
        # A second update.yml of the same release: it says so in one line at its start and stops.
        second = playbook("update.yml", "2026.11.0", check=False)
        assert second.returncode != 0
        line = next(line for line in second.stdout.splitlines() if "another posfleet run is going" in line)
        assert f"run {first_file.stem}: update of 2026.11.0" in line, line
        assert "update_other_runs=share" in line
        assert "Survey the terminal" not in second.stdout, "it stopped before the survey, touching no terminal"

        # An AWX job (ansible-runner) told to share: it takes only what the first run has not reached.
        job = awx_job.finish(*awx_job.start(OUTPUT_DIR / "runner" / "share", "posfleet update",
                                            {"update_release": "2026.11.0", "update_ignore_windows": "true",
                                             "update_other_runs": "share"}, ident="share"))
    finally:
        first_out = output_of(first, first_log)
    assert first.returncode == 0, first_out[-3000:]
    assert (job["rc"], job["status"]) == (0, "successful"), job["stdout"][-3000:]
    assert "another posfleet run is going; this one leaves the terminals it holds alone" in job["stdout"]

    reports = [report_of(first_out), json.loads((job["report_dir"] / "report.json").read_text())]
    by_run = [rows_by_serial(report) for report in reports]
    for serial in lab:
        statuses = [rows[serial]["status"] for rows in by_run]
        # Updated by exactly one of the runs. The other found it held by the updating run, or already
        # current, or could not reach it at its check (the updating run was rebooting it): untouched.
        assert statuses.count("updated") == 1, (serial, statuses)
        other = next(rows[serial] for rows in by_run if rows[serial]["status"] != "updated")
        if other["status"] != "current":
            assert (other["status"], other["deferred_by"]) in (("deferred", "held"), ("deferred", "quiesce")), other
            assert other["reason"].startswith(("held by another posfleet run: ", "did not answer at the check")), \
                other
    assert all(not report["halted"] and not report["budget"]["exhausted"] for report in reports)
    assert set(versions().values()) == {"1.0.0"}
    assert run_files() == earlier, "both runs removed their files"
    ledger = json.loads(poslab("ledger", "--json", check=False).stdout)["totals"]
    assert ledger["missing"] == 0 and ledger["duplicated"] == 0


def test_a_killed_run_s_terminals_are_taken_over_by_the_next_run_at_once(lab):
    assert set(versions().values()) == {"1.0.0"}
    earlier = run_files()
    victim, victim_log = start_update("2026.12.0")
    try:
        (dead,) = wait_for(lambda: run_files() - earlier, timeout=120, what="the run's file")

        def started():
            trail = [json.loads(line) for line in (REPORT_DIR / "audit.jsonl").read_text().splitlines()]
            return [entry["terminal"] for entry in trail
                    if entry["run_id"] == dead.stem and entry["event"] == "started"]

        # Killed (the whole process group, as a control node that dies) once it has quiesced a terminal.
        wait_for(started, timeout=300, interval=0.1, what="a terminal quiesced by the run")
    finally:
        os.killpg(victim.pid, signal.SIGKILL)
        output_of(victim, victim_log, timeout=60)
    # The audit trail names the terminals the killed run had started changing and never ended; they
    # hold its lease.
    trail = [json.loads(line) for line in (REPORT_DIR / "audit.jsonl").read_text().splitlines()]
    killed = [entry for entry in trail if entry["run_id"] == dead.stem]
    held = sorted({entry["terminal"] for entry in killed if entry["event"] == "started"}
                  - {entry["terminal"] for entry in killed if entry["event"] == "ended"})
    assert held, killed
    for serial in held:
        lease = json.loads(poslab("exec", serial, "--", "cat", "/var/lib/pos/update-lease.json").stdout)
        assert lease["run"]["id"] == dead.stem and lease["phase"] in ("quiesced", "changing"), lease
        assert status_rows()[serial]["state"] == "maintenance"

    # The next run finds the dead run (its process is gone) and takes its terminals over at once, long
    # before their leases would run out.
    rerun = playbook("update.yml", "2026.12.0")
    report = latest_report()
    assert not [row for row in report["terminals"] if row["deferred_by"] == "held"], report["terminals"]
    assert {row["status"] for row in report["terminals"]} <= {"updated", "current"}
    assert set(versions().values()) == {"1.1.0"}
    assert f"run {dead.stem}" in rerun.stdout + rerun.stderr and "dead (its process is gone)" in rerun.stderr
    assert run_files() - earlier == {dead}, "the dead run's file is kept for a day, for later runs"
    ledger = json.loads(poslab("ledger", "--json", check=False).stdout)["totals"]
    assert ledger["missing"] == 0 and ledger["duplicated"] == 0


def test_every_report_is_valid_and_its_csv_has_the_same_rows(lab):
    runs = [path for path in REPORT_DIR.iterdir() if path.is_dir() and not path.is_symlink()]
    assert len(runs) >= 5
    for run_dir in runs:
        doc = json.loads((run_dir / "report.json").read_text())
        posreport.validate(doc)
        with open(run_dir / "report.csv", newline="", encoding="utf-8") as handle:
            table = list(csv.DictReader(handle))
        assert [(row["serial"], row["status"]) for row in table] == \
            [(row["serial"], row["status"]) for row in doc["terminals"]], run_dir
        retry = {row["serial"] for row in doc["terminals"]
                 if row["status"] in ("failed", "rolled_back", "deferred", "unreachable")}
        assert set((run_dir / "retry.limit").read_text().split()) == retry


def test_reports_logs_and_outputs_hold_no_secret(lab, tmp_path):
    # The lab's secrets: the vault's values (the backup key) and password, the release signing key and
    # the SSH key. The scanner finds them where they are, or this test could not fail.
    secrets = secretscan.lab_secrets()
    bait = tmp_path / "bait.txt"
    bait.write_text(f"key: {secrets[0].value}\n")
    assert [finding.kind for finding in secretscan.scan_paths([bait], secrets)] == ["secret"]

    assert COMMAND_LOG.stat().st_size > 0 and (REPORT_DIR / "audit.jsonl").exists()
    findings = secretscan.scan_paths([OUTPUT_DIR], secrets)
    assert not findings, secretscan.format_table(findings)
