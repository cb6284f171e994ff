"""The soak (issue 17): rollouts over the lab with faults fired at random moments on random terminals.

    make soak                         # 10,000 sales made during updates, a random seed
    make soak SOAK_ARGS="--seed 7"    # replay a soak: the same faults, on the same terminals, at the same moments

Each round updates the whole lab (18 terminals) to the other of the lab's two releases, in the default
waves (a canary of each model, then 10 %, 30 % and the rest, one batch each), while posd sells every half
second on every terminal (POSLAB_SALE_INTERVAL): the terminals of the other waves sell during the round.
During the round, faults strike at random moments on random terminals: the power cut, the network cut, a
slow link, a sale that lasts, the control node killed (SIGKILL), a second update.yml started beside the
first. Once the round is over and the faults are lifted, every terminal must be whole: on the old
release or the new one (every part of it), running the app it has installed, selling, dpkg consistent,
held by no run (the killed run's leases run out and the update guard puts its terminals back); and the
ledger must show no sale lost, duplicated or unreadable. Rounds go on until the sales made during rounds
reach --sales; then a last run without faults must bring every terminal to its release.

Timing is not asserted (the lab shares the machine); the figures are recorded: bench/results/soak-<date>.json
and the summary printed at the end, which docs/faults.md quotes with the seed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "faults"))
os.environ.setdefault("POSLAB_SALE_INTERVAL", "0.5")

from faultkit import (  # noqa: E402 (after the path of the fault suite's kit)
    BASELINE,
    KIT,
    SEED,
    TERMINALS,
    UPGRADE,
    fault,
    finish,
    kill_control_node,
    one_app,
    release_manifest,
    selling,
    start_update,
    versions,
    wait_all_answering,
    wait_in_service,
)
from labkit import STATE, flash  # noqa: E402

# The update's lease in the soak's runs: long enough for a lab batch's longest silence (a reboot, a cut),
# short enough that a killed run's terminals are back in service within minutes.
LEASE = 90
# The phases of a lease that hold a terminal for a run (module_utils/pos_guard.py HELD).
HELD = ("quiesced", "changing", "holding")
# The default waves, no error budget (a round's faults must not stop the rollout), short waits.
RUN = ["-e", '{"update_max_failed_pct": null}', "-e", "pos_quiesce_timeout=8",
       "-e", "update_recovery_timeout=40", "-e", f"pos_quiesce_lease={LEASE}"]


# A round on the lab's 18 terminals takes about a minute (survey, then a canary and three waves): the faults
# strike within it, the control node's kill and the second run early enough to meet terminals mid-change.
ROUND_S = 50


def plan_round(rng, serials, number):
    """The round's faults: (seconds after the run starts, kind, serial or None, argument)."""
    events = []
    for serial in rng.sample(serials, rng.randint(2, 6)):
        kind = rng.choice(["power-cut", "net-cut", "net-cut", "slow", "sale"])
        argument = {"power-cut": rng.choice([2, 3, 5]), "net-cut": rng.randint(2, 12),
                    "slow": rng.choice(["128kbit", "256kbit", "512kbit"]), "sale": rng.choice([3, 6, 10])}[kind]
        events.append((round(rng.uniform(2, ROUND_S), 1), kind, serial, argument))
    if number > 0 and rng.random() < 0.35:
        events.append((round(rng.uniform(8, ROUND_S - 5), 1), "kill", None, None))
    if rng.random() < 0.35:
        events.append((round(rng.uniform(1, ROUND_S / 2), 1), "second-run", None, rng.choice(["stop", "share"])))
    return sorted(events, key=lambda e: e[0])


class Striker(threading.Thread):
    """Fires a round's events at their moments while the round's run goes; records what it did."""

    def __init__(self, proc, events, release):
        super().__init__(daemon=True)
        self.proc, self.events, self.release = proc, events, release
        self.fired, self.lift, self.others, self.killed = [], [], [], False
        self.halt = threading.Event()

    def run(self):
        started = time.monotonic()
        for at, kind, serial, argument in self.events:
            while time.monotonic() - started < at:
                if self.halt.wait(0.05) or self.proc.poll() is not None:
                    return
            try:
                self.strike(kind, serial, argument)
                self.fired.append([round(time.monotonic() - started, 1), kind, serial, argument])
            except (Exception, SystemExit) as error:  # a terminal already off, say: recorded, not fatal
                self.fired.append([round(time.monotonic() - started, 1), kind, serial, f"not fired: {error}"])

    def strike(self, kind, serial, argument):
        if kind == "power-cut":
            fault("power-cut", argument)(serial)
        elif kind == "net-cut":
            fault("net-down")(serial)
            self.lift.append(serial)
            threading.Timer(argument, lambda: fault("net-up")(serial)).start()
        elif kind == "slow":
            fault("slow", argument)(serial)
            self.lift.append(serial)
        elif kind == "sale":
            fault("txn-inflight", argument)(serial)
        elif kind == "kill":
            kill_control_node(self.proc)
            self.killed = True
        elif kind == "second-run":
            self.others.append(start_update(self.release, *RUN, "-e", f"update_other_runs={argument}"))

    def stop(self):
        self.halt.set()
        self.join(timeout=10)


def lease_of(serial):
    path = flash(serial, "/var/lib/pos/update-lease.json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def dpkg_audit(serial):
    """`dpkg --audit` on a terminal: empty when every package is fully installed."""
    return KIT.poslab("exec", serial, "--", "sh", "-c", "command -v dpkg >/dev/null && dpkg --audit || true",
                      check=False).stdout.strip()


def check_whole(before, after, release, dpkg_models):
    """What is wrong with the fleet after a round ({serial: problem}); {} when every terminal is whole."""
    problems = {}
    for serial, row in after.items():
        target = target_of(release, row)
        lease = lease_of(serial) or {}
        if versions(row) not in (versions(before[serial]), target):
            problems[serial] = f"a mix: {versions(row)}, neither {versions(before[serial])} nor {target}"
        elif not one_app(row):
            problems[serial] = f"runs {row['app_version']} with {row['installed_app']} installed for its next boot"
        elif not selling(row):
            problems[serial] = f"not selling: {row['state']}, healthy {row['healthy']}"
        elif lease.get("phase") in HELD:
            problems[serial] = f"still held by run {(lease.get('run') or {}).get('id')} ({lease.get('phase')})"
        elif row["model"] in dpkg_models and (audit := dpkg_audit(serial)):
            problems[serial] = f"dpkg --audit: {audit[:200]}"
    return problems


def ledger_totals():
    totals = KIT.ledger()["totals"]
    return {key: totals.get(key) for key in ("generated", "uploaded", "pending", "missing", "duplicated",
                                             "unreadable")}


def soak(seed, sales_target, max_rounds, out):
    rng = random.Random(seed)
    print(f"soak: seed {seed}, until {sales_target} sales made during updates (at most {max_rounds} rounds)",
          flush=True)
    KIT.poslab("down")
    KIT.poslab("up", "--terminals", TERMINALS, "--seed", SEED, timeout=900)
    for spec in ("baseline", "upgrade"):
        KIT.playbook("publish.yml", "-e", f"release_spec=releases/lab/{spec}.yml")
    models = yaml.safe_load((ROOT / "inventories" / "shared" / "models.yml").read_text())["models"]
    dpkg_models = {name for name, profile in models.items() if profile["package_style"] == "dpkg"}
    rounds, sales, release, failures = [], 0, BASELINE, {}
    started = time.monotonic()
    for number in range(max_rounds):
        if sales >= sales_target:
            break
        before = wait_all_answering()
        ledger_before = ledger_totals()
        events = plan_round(rng, sorted(before), number)
        round_started = time.monotonic()
        proc = start_update(release, *RUN)
        striker = Striker(proc, events, release)
        striker.start()
        try:
            result = finish(proc, timeout=900)
        finally:
            striker.stop()
        others = [finish(other, timeout=900) for other in striker.others]
        for serial in striker.lift:
            fault("net-up")(serial)
        took = round(time.monotonic() - round_started, 1)
        ledger_mid = ledger_totals()
        # A killed run's terminals wait out its lease; then their update guards put them back in service.
        in_service = wait_in_service(timeout=LEASE + 120 if striker.killed else 120)
        after = wait_all_answering()
        problems = check_whole(before, after, release, dpkg_models)
        ledger_after = ledger_totals()
        made = ledger_mid["generated"] - ledger_before["generated"]
        sales += made
        second = [{"returncode": o.returncode,
                   "stopped_at_start": "so this one stops before touching any terminal" in o.stdout}
                  for o in others]
        record = {"round": number + 1, "release": release, "seconds": took, "returncode": result.returncode,
                  "killed": striker.killed, "faults": striker.fired, "second_runs": second,
                  "sales_during_update": made, "in_service": in_service, "problems": problems,
                  "ledger": ledger_after,
                  "outcomes": outcome_counts(result.stdout)}
        rounds.append(record)
        lost = {k: ledger_after[k] for k in ("missing", "duplicated", "unreadable") if ledger_after[k]}
        if problems or lost:
            failures[number + 1] = {"problems": problems, "ledger": lost}
        print(f"soak: round {number + 1} to {release}: {took:.0f} s, {made} sales during it ({sales} in all), "
              f"{len(striker.fired)} faults{', control node killed' if striker.killed else ''}, "
              f"{len(others)} second run(s); outcomes {record['outcomes']}; "
              f"{'WHOLE' if not problems else 'PROBLEMS ' + json.dumps(problems)}; ledger {ledger_after}",
              flush=True)
        # The next round goes to the other release; a killed round's release is tried again (most of the
        # fleet is still on the one before it).
        if not striker.killed:
            release = UPGRADE if release == BASELINE else BASELINE
    # The end: a run without faults brings every terminal to the last round's release.
    last = rounds[-1]["release"] if rounds else BASELINE
    final = finish(start_update(last, *RUN), timeout=900)
    status = wait_all_answering()
    converged = {s: versions(r) for s, r in status.items()
                 if versions(r) != target_of(last, r)}
    ledger = ledger_totals()
    summary = {
        "seed": seed, "terminals": int(TERMINALS), "sale_interval_s": float(os.environ["POSLAB_SALE_INTERVAL"]),
        "rounds": len(rounds), "sales_during_updates": sales, "sales_target": sales_target,
        "wall_s": round(time.monotonic() - started), "faults_fired": sum(len(r["faults"]) for r in rounds),
        "control_node_killed": sum(r["killed"] for r in rounds),
        "second_runs": sum(len(r["second_runs"]) for r in rounds),
        "final_run": {"release": last, "returncode": final.returncode, "outcomes": outcome_counts(final.stdout),
                      "not_on_release": converged},
        "ledger": ledger, "failures": failures, "round_log": rounds,
        "ok": not failures and not converged and sales >= sales_target
              and not any(ledger[k] for k in ("missing", "duplicated", "unreadable")),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"soak: {'OK' if summary['ok'] else 'FAILED'}: seed {seed}, {len(rounds)} rounds, {sales} sales during "
          f"updates, {summary['faults_fired']} faults, {summary['control_node_killed']} control node kills, "
          f"{summary['second_runs']} second runs; ledger {ledger}; failures {failures or 'none'}; "
          f"not on {last} at the end: {converged or 'none'}; written to {out}", flush=True)
    return summary["ok"]


def target_of(release, row):
    manifest = release_manifest(release)["models"][row["model"]]
    return (manifest["app"]["version"], manifest["packs"]["params"]["version"], manifest["packs"]["catalog"]["version"],
            row["packs"].get("merchant"))


def outcome_counts(output):
    """{status: count} from the run's report, or {} when it wrote none (killed)."""
    match = re.search(r"posfleet: report (\S+)/report\.html", output)
    if not match:
        return {}
    counts = {}
    for row in json.loads((Path(match.group(1)) / "report.json").read_text())["terminals"]:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="replay a soak (default: a new random seed)")
    parser.add_argument("--sales", type=int, default=10_000, help="sales made during updates to reach")
    parser.add_argument("--max-rounds", type=int, default=80)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" /
                        f"soak-{time.strftime('%Y-%m-%d', time.gmtime())}.json")
    parser.add_argument("--keep-lab", action="store_true", help="leave the lab up at the end")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("soak: the lab needs root")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    try:
        ok = soak(seed, args.sales, args.max_rounds, args.out)
    finally:
        if not args.keep_lab:
            KIT.poslab("down", check=False)
    print(f"soak: commands and reports of this run: {KIT.output_dir}; state {STATE}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
