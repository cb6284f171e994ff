"""The fault-injection suite's lab: one fleet for the whole session, faults caught at their moment.

Everything that touches the lab happens in the session fixtures below, in this order, and the
tests only assert on what they recorded (see README.md):

1. `lab`: `poslab down`, `poslab up` (18 terminals, seed 1: every model in every region twice),
   publish the baseline and the upgrade.
2. `tampered_release`: update.yml given a tampered manifest, then a bad signature: refused before
   any terminal is touched.
3. `fault_round`: one rolling update of the whole fleet from its factory state to the baseline, in
   one batch, while posd sells; every terminal is one case (cases.py) and a watcher thread injects
   each case's fault the moment the terminal's flash shows it has reached the step.
4. `converged`: the faults lifted, update.yml again with `--limit @retry.limit`.
5. `past_deadline`: one kestrel whose dpkg hangs and a heron in the same batch, with a short update
   deadline: the hung install is stopped at the deadline and rolled back, the heron is updated.
6. `acquirer_down`: sales pending on one terminal while the acquirer answers 503: deferred, untouched.
7. `interrupted`: the update to the upgrade, ansible-playbook killed (SIGKILL, process group) as soon
   as the batch has started its data switch; then the plain re-run. Every terminal but the OS round's
   (`os_terminals`, chosen once the fleet converged on the baseline).
8. `os_round`: the OS packages' own faults (cases.OS_CASES), their terminals' first upgrade.

The lab is shared: run this suite only under `flock /tmp/poslab.lock`. The session ends with
`poslab down`.
"""

import json
import os
import threading
import time

import pytest
from cases import CASES, KILLED_LEASE, OS_CASES, SHORT_LEASE, assign, summary_lines, tampered_manifests
from faultkit import (
    BASELINE,
    KIT,
    SEED,
    SUMMARY,
    TERMINALS,
    UPGRADE,
    fault,
    finish,
    kill_control_node,
    os_state,
    release_manifest,
    report_of,
    start_update,
    update,
    wait_all_answering,
    wait_in_service,
)
from labkit import STATE, flash, rows_by_serial


class Watcher(threading.Thread):
    """Polls the terminals' flash every 10 ms and walks each case's steps in order.

    A step fires when its `when` predicate sees the moment (or, without one, `delay` seconds after
    the step before it); what fired and when is recorded in the case, for its test and the summary.
    """

    def __init__(self, cases):
        super().__init__(daemon=True)
        self.cases = [c for c in cases if c.steps]
        self.halt = threading.Event()
        self.t0 = time.monotonic()

    def run(self):
        progress = {c.name: 0 for c in self.cases}
        last = {c.name: self.t0 for c in self.cases}
        while not self.halt.is_set():
            for case in self.cases:
                index = progress[case.name]
                if index >= len(case.steps):
                    continue
                step = case.steps[index]
                now = time.monotonic()
                try:
                    due = now - last[case.name] >= step.delay if step.when is None else step.when(case.serial)
                except OSError:
                    due = False  # a file vanished between two looks: look again
                if not due:
                    continue
                try:
                    step.act(case.serial)
                    case.fired.append(f"{now - self.t0:.1f}s {step.what}: {step.act.__doc__}")
                except (Exception, SystemExit) as error:  # recorded for the case's test
                    case.errors.append(f"{step.what}: {step.act.__doc__}: {error}")
                progress[case.name] += 1
                last[case.name] = time.monotonic()
            time.sleep(0.01)

    def stop(self):
        self.halt.set()
        self.join(timeout=5)


@pytest.fixture(scope="session")
def lab():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    KIT.poslab("down")
    try:
        KIT.poslab("up", "--terminals", TERMINALS, "--seed", SEED, timeout=600)
        for spec in ("baseline", "upgrade"):
            KIT.playbook("publish.yml", "-e", f"release_spec=releases/lab/{spec}.yml")
        yield KIT.status()
    finally:
        for region in ("eu_central", "eu_west", "us_east"):
            KIT.poslab("dp", region, "restore", check=False)
        KIT.poslab("acquirer", "up", check=False)
        KIT.poslab("down", check=False)


@pytest.fixture(scope="session")
def tampered_release(lab, tmp_path_factory):
    """update.yml against a manifest changed after signing, then against another release's signature."""
    before = KIT.status()
    backups = sorted(str(p) for p in (STATE / "backups").rglob("*")) if (STATE / "backups").exists() else []
    results = {}
    for name, manifest in tampered_manifests(STATE / "build" / "releases", tmp_path_factory.mktemp("tamper"),
                                             BASELINE, UPGRADE):
        results[name] = update(BASELINE, "-e", f"update_manifest={manifest}")
    after = KIT.status()
    backups_after = sorted(str(p) for p in (STATE / "backups").rglob("*")) if (STATE / "backups").exists() else []
    return {"results": results, "before": before, "after": after, "backups": (backups, backups_after)}


def lift_faults(cases):
    """Apply every case's `after` actions; a failure is recorded in its case, and the others still run."""
    for case in cases:
        for act in case.after:
            try:
                act(case.serial)
            except (Exception, SystemExit) as error:  # every fault must be lifted
                case.errors.append(f"lifting the fault: {act.__doc__}: {error}")


@pytest.fixture(scope="session")
def fault_round(lab, tampered_release):
    """The factory fleet to the baseline, one fault per terminal.

    A case with `own_run` (the reboot that never returns, which waits out its model's whole
    reboot_timeout) gets an ansible-playbook of its own, side by side with the others' run, as AWX
    job slices would: the fleet's batch does not wait two minutes for it.
    """
    assign(CASES, lab)
    before = KIT.status()
    ledger_before = KIT.ledger()["totals"]
    for case in CASES:
        for act in case.before:
            act(case.serial)
    alone = [c.serial for c in CASES if c.own_run]
    # Two runs of one job, as AWX runs a sliced job's slices: jobs of one workflow job, which AWX names in
    # awx_workflow_job_id (stood in for here), so that neither stops for the other (docs/concurrency.md).
    sliced = ["-e", "awx_workflow_job_id=fault-round"]
    watcher = Watcher(CASES)
    watcher.start()
    try:
        side = start_update(BASELINE, "--limit", ",".join(alone), "-e", f"pos_quiesce_lease={SHORT_LEASE}", *sliced)
        result = update(BASELINE, "--limit", "all:" + ":".join(f"!{s}" for s in alone), *sliced)
        side_output = finish(side, timeout=400).stdout
    finally:
        watcher.stop()
        lift_faults(CASES)
    reports = [report_of(result.stdout), report_of(side_output)]
    rows = {row["serial"]: row for report in reports for row in report["terminals"] if row["serial"] not in alone
            or report is reports[1]}
    # The terminal whose reboot never came back is powered on only now: its update guard needs a moment.
    wait_in_service(timeout=120)
    after = wait_all_answering()
    return {"cases": CASES, "before": before, "after": after, "rows": rows, "reports": reports, "result": result,
            "ledger_before": ledger_before, "ledger": KIT.ledger()}


@pytest.fixture(scope="session")
def converged(fault_round):
    limit = sorted({line for report in fault_round["reports"]
                    for line in (KIT.report_dir / report["run_id"] / "retry.limit").read_text().split()})
    result = update(BASELINE, "--limit", ",".join(limit))
    report = report_of(result.stdout)
    status = wait_all_answering()
    SUMMARY["ledger"] = (ledger := KIT.ledger())["totals"]
    return {"result": result, "report": report, "limit": limit, "status": status, "ledger": ledger}


# Long enough for a lab terminal's backup, package and data switch (seconds each), short enough for the suite.
DEADLINE = 60


@pytest.fixture(scope="session")
def os_terminals(converged):
    """The OS round's terminals (cases.OS_CASES), chosen once the fleet is on the baseline: the upgrades before that
    round leave them there, with the image's OS packages, so that their first upgrade is the round's."""
    assign(OS_CASES, converged["status"])
    return [case.serial for case in OS_CASES]


@pytest.fixture(scope="session")
def past_deadline(converged, os_terminals):
    """A dpkg that never returns on one terminal: its update stops at the deadline, the batch goes on."""
    status = {serial: row for serial, row in converged["status"].items() if serial not in os_terminals}
    # The last of their models: acquirer_down takes the fleet's first terminal, which must still be on the baseline.
    hung = max(s for s, row in status.items() if row["model"] == "kestrel_k200")
    other = max(s for s, row in status.items() if row["model"] == "heron_h5")
    before = {serial: status[serial] for serial in (hung, other)}
    os_before = os_state([hung])
    fault("dpkg-hang")(hung)
    started = time.monotonic()
    try:
        result = update(UPGRADE, "--limit", f"{hung},{other}", "-e", f"update_deadline={DEADLINE}")
    finally:
        fault("dpkg-hang", "off")(hung)
    took = time.monotonic() - started
    after = wait_all_answering()
    return {"hung": hung, "other": other, "before": before, "after": after, "result": result,
            "os_before": os_before, "os_after": os_state([hung]),
            "report": report_of(result.stdout), "took": took,
            "lease": json.loads(flash(hung, "/var/lib/pos/update-lease.json").read_text())
            if flash(hung, "/var/lib/pos/update-lease.json").exists() else None}


@pytest.fixture(scope="session")
def acquirer_down(converged, past_deadline):
    """Offline sales on one terminal while the acquirer is down: no update may start on it."""
    serial = sorted(converged["status"])[0]
    KIT.poslab("fault", serial, "txn-pending", "5")
    KIT.poslab("acquirer", "down")
    try:
        before = KIT.status()[serial]
        result = update(UPGRADE, "--limit", serial)
        report = report_of(result.stdout)
        after = KIT.status()[serial]
    finally:
        KIT.poslab("acquirer", "up")
    staged = sorted(p.name for p in flash(serial, "/var/lib/pos/staging").glob("*")) \
        if flash(serial, "/var/lib/pos/staging").exists() else []
    return {"serial": serial, "before": before, "after": after, "report": report, "result": result,
            "staged": staged}


@pytest.fixture(scope="session")
def interrupted(acquirer_down, os_terminals):
    """The control node killed mid-batch, as soon as the batch starts switching data packs; then re-run. Every
    terminal but the OS round's."""
    manifest = release_manifest(UPGRADE)
    new_params = manifest["models"]["kestrel_k200"]["packs"]["params"]["version"]
    limit = ["--limit", "all:" + ":".join(f"!{serial}" for serial in os_terminals)]
    before = {serial: row for serial, row in KIT.status().items() if serial not in os_terminals}
    os_before = os_state(sorted(before))
    started = time.monotonic()
    proc = start_update(UPGRADE, *limit, "-e", f"pos_quiesce_lease={KILLED_LEASE}")
    # The moment: the first terminal with the new params pack staged has finished its package step.
    # Only terminals not on the upgrade yet (the deadline and acquirer cases updated some): theirs would be
    # seen at once, before the run has done anything.
    behind = [s for s, row in before.items() if (row.get("packs") or {}).get("params") != new_params]

    def switching():
        return [s for s in behind if flash(s, f"/var/lib/pos/packs/params/{new_params}.staging").exists()
                or flash(s, f"/var/lib/pos/packs/params/{new_params}").exists()]
    seen = None
    while proc.poll() is None and time.monotonic() - started < 300:
        seen = switching()
        if seen:
            kill_control_node(proc)
            break
        time.sleep(0.01)
    finish(proc, timeout=120, note=f"killed with SIGKILL after {time.monotonic() - started:.1f}s\n" if seen else "")
    time.sleep(3)  # the modules that were running on the terminals lose their session and end
    # No control node any more: each terminal of the batch waits out its lease, then its update guard
    # puts it back in service on one release.
    wait_in_service(timeout=KILLED_LEASE + 90)
    after_kill = {serial: row for serial, row in wait_all_answering().items() if serial in before}
    os_after_kill = os_state(sorted(after_kill))
    rerun = update(UPGRADE, *limit)
    report = report_of(rerun.stdout)
    status = {serial: row for serial, row in wait_all_answering().items() if serial in before}
    os_final = os_state(sorted(status))
    SUMMARY["ledger"] = (ledger := KIT.ledger())["totals"]
    return {"seen": seen, "returncode": proc.returncode, "before": before, "after_kill": after_kill,
            "rerun": rerun, "report": report, "status": status, "ledger": ledger, "manifest": manifest,
            "os": {"before": os_before, "after_kill": os_after_kill, "final": os_final}}


@pytest.fixture(scope="session")
def os_round(interrupted, os_terminals):
    """The OS packages' own faults (cases.OS_CASES): their terminals, still on the baseline and the image's OS
    packages, updated to the upgrade with one fault each; then the faults lifted and the plain re-run."""
    serials = os_terminals
    before = wait_all_answering()
    os_before = os_state(serials)
    for case in OS_CASES:
        for act in case.before:
            act(case.serial)
    watcher = Watcher(OS_CASES)
    watcher.start()
    try:
        result = update(UPGRADE, "--limit", ",".join(serials))
    finally:
        watcher.stop()
        lift_faults(OS_CASES)
    wait_in_service(timeout=120)
    after = wait_all_answering()
    os_after = os_state(serials)
    rerun = update(UPGRADE, "--limit", ",".join(serials))
    final = wait_all_answering()
    return {"before": before, "os_before": os_before, "result": result,
            "rows": rows_by_serial(report_of(result.stdout)), "after": after, "os_after": os_after, "rerun": rerun,
            "rerun_rows": rows_by_serial(report_of(rerun.stdout)), "final": final, "os_final": os_state(serials),
            "ledger": KIT.ledger()}


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        outcome = "xfail" if hasattr(report, "wasxfail") else report.outcome
        SUMMARY["results"][report.nodeid] = outcome


def pytest_terminal_summary(terminalreporter):
    for line in summary_lines(SUMMARY):
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"commands and reports of this run: {KIT.output_dir}")
