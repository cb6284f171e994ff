"""Faults during a rolling update on the lab: every terminal ends whole on one release, no sale is lost,
the report says what happened and why, and a re-run brings the fleet home. See README.md."""

import re

import pytest
from cases import CASES, OS_CASES
from faultkit import BASELINE, SUMMARY, UPGRADE, one_app, os_whole, release_manifest, selling, versions
from labkit import STATE, rows_by_serial


def release_versions(release, model, merchant):
    entry = release_manifest(release)["models"][model]
    return (entry["app"]["version"], entry["packs"]["params"]["version"], entry["packs"]["catalog"]["version"],
            merchant)


def param(case, bug):
    marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [param(c, c.bug_outcome) for c in CASES])
def test_outcome(fault_round, case):
    """The fault struck at its moment, and the report gives the right status and a reason naming it."""
    assert not case.errors, f"{case.serial}: {case.errors}"
    assert len(case.fired) == len(case.steps), \
        f"{case.serial}: the moment was not caught: wanted {case.moment!r}, fired {case.fired}"
    row = fault_round["rows"][case.serial]
    seen = f"{case.serial} ({case.model}): {row['status']} / {row['deferred_by']} / {row['reason']!r}; " \
           f"fired {case.fired}"
    assert row["status"] in case.expect_status, seen
    if case.expect_deferred_by:
        assert row["deferred_by"] == case.expect_deferred_by, seen
    for word in case.expect_reason:
        assert word.lower() in row["reason"].lower(), seen


@pytest.mark.parametrize("case", [param(c, c.bug_whole) for c in CASES])
def test_left_whole(fault_round, converged, case):
    """Once the fault is lifted: the old release or the new one, every part of it, and selling again."""
    serial = case.serial
    before = versions(fault_round["before"][serial])
    after_row = fault_round["after"][serial]
    target = versions(converged["status"][serial])
    assert versions(after_row) in (before, target), \
        f"{serial} is a mix: {versions(after_row)}, neither the old {before} nor the new {target}; " \
        f"report: {fault_round['rows'][serial]['status']}; fired {case.fired}"
    assert one_app(after_row), \
        f"{serial} runs app {after_row['app_version']} but has {after_row['installed_app']} installed for its next boot"
    assert selling(after_row), f"{serial} does not sell: state {after_row['state']}, healthy {after_row['healthy']}"


def test_fleet_ledger_after_the_round(fault_round):
    totals = fault_round["ledger"]["totals"]
    assert totals["unreadable"] == 0, fault_round["ledger"]
    assert totals["missing"] == 0 and totals["duplicated"] == 0, totals
    assert totals["generated"] > fault_round["ledger_before"]["generated"], "posd kept selling during the round"


def test_fleet_converges_on_the_rerun(fault_round, converged):
    rows = rows_by_serial(converged["report"])
    assert set(rows) == set(converged["limit"]) and rows, "the re-run took exactly the terminals to retry"
    bad = {s: (r["status"], r["reason"]) for s, r in rows.items() if r["status"] not in ("updated", "current")}
    assert not bad, f"the re-run left terminals behind: {bad}"
    for serial, row in converged["status"].items():
        want = release_versions(BASELINE, row["model"], row["packs"]["merchant"])
        assert versions(row) == want, f"{serial}: {versions(row)} is not {BASELINE} {want}"
        assert one_app(row) and selling(row), f"{serial}: {row['state']}, installed {row['installed_app']}"
    totals = converged["ledger"]["totals"]
    assert (totals["missing"], totals["duplicated"], totals["unreadable"]) == (0, 0, 0), totals


def test_resumed_download_asked_for_the_rest(fault_round):
    """The slow-link case's second request for the catalog was a Range request answered 206."""
    case = next(c for c in CASES if c.name == "slow-link-resume")
    ip = fault_round["before"][case.serial]["ip"]
    log = (STATE / "nginx" / "access.log").read_text().splitlines()
    catalog = [line for line in log if line.startswith(f"{ip} ") and "/catalog-" in line]
    assert any(re.search(r'" 206 ', line) for line in catalog), "\n".join(catalog) or "no catalog request"


def test_tampered_release(tampered_release):
    """A manifest changed after signing, or signed for another release: refused before any terminal."""
    for name, result in tampered_release["results"].items():
        assert result.returncode != 0, f"{name}: update.yml accepted it"
        assert "signature" in (result.stdout + result.stderr).lower(), f"{name}: {result.stdout[-2000:]}"
    before, after = tampered_release["before"], tampered_release["after"]
    assert {s: versions(r) for s, r in after.items()} == {s: versions(r) for s, r in before.items()}
    assert all(selling(r) for r in after.values())
    assert tampered_release["backups"][0] == tampered_release["backups"][1], "no backup was even taken"


def test_a_hung_step_is_stopped_at_the_update_deadline_and_rolled_back(past_deadline):
    """issue 17: dpkg never returns on one terminal; its update stops at the deadline, the batch goes on."""
    rows = rows_by_serial(past_deadline["report"])
    hung, other = rows[past_deadline["hung"]], rows[past_deadline["other"]]
    assert hung["status"] == "rolled_back", hung
    # The upgrade pins OS packages for kestrel_k200: its first dpkg run, the one that hangs, is their install.
    assert "Install the OS packages of the release" in hung["reason"], \
        f"the step that hung is named: {hung['reason']!r}"
    assert "did not finish before the update's deadline" in hung["reason"], hung["reason"]
    assert other["status"] == "updated", f"the batch went on without waiting for the hung terminal: {other}"
    after = past_deadline["after"]
    assert versions(after[past_deadline["hung"]]) == versions(past_deadline["before"][past_deadline["hung"]])
    assert past_deadline["os_after"] == past_deadline["os_before"], "its OS packages are back as they were"
    assert os_whole(past_deadline["os_after"][past_deadline["hung"]]), past_deadline["os_after"]
    assert selling(after[past_deadline["hung"]]) and one_app(after[past_deadline["hung"]]), after[past_deadline["hung"]]
    assert past_deadline["lease"] is None, f"the rollback ended the lease: {past_deadline['lease']}"


def test_acquirer_down(acquirer_down):
    """Sales that cannot be uploaded: deferred by upload, and nothing of the update started on it."""
    serial = acquirer_down["serial"]
    row = rows_by_serial(acquirer_down["report"])[serial]
    assert (row["status"], row["deferred_by"]) == ("deferred", "upload"), row
    assert "pending" in row["reason"], row
    assert "backup" not in row["steps"] and "package" not in row["steps"], row["steps"]
    assert versions(acquirer_down["after"]) == versions(acquirer_down["before"])
    assert selling(acquirer_down["after"]), acquirer_down["after"]
    assert not any(name.endswith(".part") for name in acquirer_down["staged"]), acquirer_down["staged"]


def test_interrupted_mid_batch(interrupted):
    assert interrupted["seen"], "the batch never reached its data switch before the run ended"
    assert interrupted["returncode"] == -9, "ansible-playbook was killed, not finished"


def test_interrupted_rerun_converges(interrupted):
    rows = rows_by_serial(interrupted["report"])
    bad = {s: (r["status"], r["reason"]) for s, r in rows.items() if r["status"] not in ("updated", "current")}
    assert not bad, f"the re-run after the kill left terminals behind: {bad}"
    for serial, row in interrupted["status"].items():
        assert versions(row) == release_versions(UPGRADE, row["model"], row["packs"]["merchant"]), serial
        wanted = {item["name"]: item["version"]
                  for item in interrupted["manifest"]["models"][row["model"]].get("os_packages", [])}
        final = interrupted["os"]["final"][serial]
        if wanted:
            assert {name: version for name, version, _status in final} == wanted and os_whole(final), (serial, final)
        assert one_app(row) and selling(row), f"{serial}: {row['state']}, installed {row['installed_app']}"
    totals = interrupted["ledger"]["totals"]
    SUMMARY["ledger"] = totals
    assert (totals["missing"], totals["duplicated"], totals["unreadable"]) == (0, 0, 0), totals


def test_interrupted_left_whole(interrupted):
    """After the kill, before any re-run: once their leases ran out, each terminal on one release, selling."""
    final = interrupted["status"]
    problems = {}
    for serial, row in interrupted["after_kill"].items():
        if versions(row) not in (versions(interrupted["before"][serial]), versions(final[serial])):
            problems[serial] = f"mix {versions(row)}"
        elif not one_app(row):
            problems[serial] = f"runs {row['app_version']}, {row['installed_app']} installed for the next boot"
        elif not selling(row):
            problems[serial] = f"not selling ({row['state']})"
        # The OS packages too: all old or all new, and dpkg consistent (none half-installed).
        os_now = interrupted["os"]["after_kill"][serial]
        if os_now not in (interrupted["os"]["before"][serial], interrupted["os"]["final"][serial]):
            problems[serial] = f"OS packages mixed: {os_now}"
        elif not os_whole(os_now):
            problems[serial] = f"OS packages half-installed: {os_now}"
    assert not problems, problems


# --- the OS packages' own faults (cases.OS_CASES, fixture os_round) ---------------------------------------------


@pytest.mark.parametrize("case", OS_CASES, ids=[c.name for c in OS_CASES])
def test_os_outcome(os_round, case):
    """What the report says of each OS fault: its status and, where one is expected, words of its reason."""
    assert not case.errors, case.errors
    assert len(case.fired) == len(case.steps), f"{case.serial}: the moment was not caught: wanted {case.moment!r}"
    row = os_round["rows"][case.serial]
    assert row["status"] in case.expect_status, (row["status"], row["reason"], case.fired)
    assert all(word in row["reason"] for word in case.expect_reason), row["reason"]


@pytest.mark.parametrize("case", OS_CASES, ids=[c.name for c in OS_CASES])
def test_os_left_whole(os_round, case):
    """After the fault: every OS package at its old version or every one at its new (dpkg consistent), the app and
    packs of one release, selling."""
    serial = case.serial
    old, new = os_round["os_before"][serial], os_round["os_final"][serial]
    now = os_round["os_after"][serial]
    assert old != new, f"{serial}: the round had no OS package to change: {old}"
    assert now in (old, new), f"{serial}: OS packages mixed: {now}; old {old}, new {new}; fired {case.fired}"
    assert os_whole(now), f"{serial}: OS packages half-installed: {now}"
    after = os_round["after"][serial]
    assert versions(after) in (versions(os_round["before"][serial]), versions(os_round["final"][serial])), after
    assert one_app(after) and selling(after), after


def test_os_round_converges_and_loses_no_sale(os_round):
    rows = os_round["rerun_rows"]
    assert {rows[c.serial]["status"] for c in OS_CASES} <= {"updated", "current"}, rows
    for case in OS_CASES:
        assert os_whole(os_round["os_final"][case.serial]), os_round["os_final"][case.serial]
    totals = os_round["ledger"]["totals"]
    assert (totals["missing"], totals["duplicated"], totals["unreadable"]) == (0, 0, 0), totals
