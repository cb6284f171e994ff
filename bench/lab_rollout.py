"""Lab benchmark of issue 16: a whole-fleet rollout in the lab, and slow links beside fast ones.

    .venv/bin/python bench/lab_rollout.py slow [--terminals 100] [--slow-pct 10] [--forks 25]
    .venv/bin/python bench/lab_rollout.py fleet [--terminals 500] [--forks 25]
    .venv/bin/python bench/lab_rollout.py projection [--date YYYY-MM-DD]

`slow`: two full updates (2026.11.0 -> 2026.12.0: app, packs, OS packages) on fresh labs of the same size, one
after the other in this one run: first with every link fast, then with --slow-pct of the terminals (a seeded
sample) on `poslab fault SERIAL slow 256kbit`. The target (issue 16): the second takes at most 1.3 times as
long as the first, with the waves and the error budget as always (the report's waves and budget are kept).

`fleet`: one full update of a lab of --terminals (500 on a 2-core, 24 GB machine), from the terminals' factory
image straight to 2026.12.0 (app, packs and OS packages; bringing 500 terminals to the baseline first would
double the run for nothing measured): wall time, control-node
CPU per terminal (bench/tree_cpu.py), and peak memory, sampled every 2 s while it runs: the
ansible-playbook process tree's (PSS, the control node's share) and the machine's in use (control node and
lab together); the lab's own at rest is measured before (bench/lab_scale.py's PSS walk).

Each run holds the lab's lock (POSLAB_LOCK, /tmp/poslab.lock) for the whole of it and leaves the lab down.
Results: bench/results/lab-rollout-<mode>-<terminals>-<date>.json. This reports; it does not fail on a miss.
`projection` prints the projection to 100,000 terminals from those files (project() says what is measured and
what is assumed).
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "lab"))

import control_cost  # noqa: E402  (the lab steps and the measured run, defined once there)
import lab_scale  # noqa: E402

from poslab import flash  # noqa: E402  (/proc/meminfo, read once there)

SLOW_RATE = "256kbit"
# Below this much available memory the measured ansible-playbook is stopped (SIGTERM), before the kernel's OOM
# killer picks a process of the machine: the terminals' flash is memory (tmpfs), and a full update of 500
# terminals outgrew a 24 GB machine (docs/performance.md).
LOW_MEMORY_MIB = 1536
SLOW_TARGET = 1.3


def measured_playbooks(root_pid):
    """The ansible-playbook processes that bench/tree_cpu.py started under `root_pid` (this benchmark's own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            parent = _parent(int(entry.name))
            parent_argv = Path(f"/proc/{parent}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if argv and argv[0].endswith(b"ansible-playbook") and b"tree_cpu.py" in parent_argv \
                and _descends(parent, root_pid):
            found.append(int(entry.name))
    return found


def _parent(pid):
    """The parent PID of `pid` (OSError when it is gone)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _descends(pid, root_pid):
    while pid > 1:
        if pid == root_pid:
            return True
        try:
            pid = _parent(pid)
        except (OSError, ValueError, IndexError):
            return False
    return False


def tree_pss_kib(root_pid):
    """Proportional memory (PSS: shared pages split between their sharers, so the forked workers' pages are not
    counted once per worker) of `root_pid` and every process descending from it."""
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    total, stack = 0, list(children.get(root_pid, []))
    while stack:
        pid = stack.pop()
        total += lab_scale.pss_kib(pid)
        stack.extend(children.get(pid, []))
    return total


class Sampler(threading.Thread):
    """Peak memory while a run goes: the machine's in use, and the PSS of this process's descendants."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.peak_used_kib = self.peak_tree_kib = 0
        self.stopped_for_memory = None

    def run(self):
        while not self.stop.wait(2.0):
            fields = flash.meminfo_kib()
            self.peak_used_kib = max(self.peak_used_kib, fields["MemTotal"] - fields["MemAvailable"])
            if fields["MemAvailable"] < LOW_MEMORY_MIB * 1024 and self.stopped_for_memory is None:
                self.stopped_for_memory = f"{fields['MemAvailable'] // 1024} MiB available, below {LOW_MEMORY_MIB}"
                for pid in measured_playbooks(os.getpid()):
                    os.kill(pid, signal.SIGTERM)
            self.peak_tree_kib = max(self.peak_tree_kib, tree_pss_kib(os.getpid()))


def measured_update(lab, label, forks):
    sampler = Sampler()
    sampler.start()
    try:
        result = lab.measure(label, control_cost.UPDATE, ["-e", f"update_release={control_cost.NEW}"], forks=forks)
    finally:
        sampler.stop.set()
        sampler.join()
    result["peak_memory_in_use_mib"] = round(sampler.peak_used_kib / 1024)
    if sampler.stopped_for_memory:
        result["stopped"] = f"ansible-playbook stopped (SIGTERM): {sampler.stopped_for_memory}"
    result["peak_control_node_tree_pss_mib"] = round(sampler.peak_tree_kib / 1024)
    result["cpu_s_per_terminal"] = round(result["cpu_s"] / lab.terminals, 3)
    report = next(Path(result["log"]).parent.glob("*/report.json"), None)
    if report is not None:
        doc = json.loads(report.read_text())
        result["wave_seconds"] = [_seconds(wave) for wave in doc.get("waves", [])]
        result["budget"] = doc.get("budget")
        result["durations_s"] = {row["serial"]: row.get("duration_s") for row in doc["terminals"]}
        durations = sorted(seconds for seconds in result["durations_s"].values() if seconds is not None)
        if durations:
            result["terminal_duration_s"] = {"median": durations[len(durations) // 2], "max": durations[-1]}
    return result


def fresh_lab(work, terminals, baseline=True):
    """A fresh lab on the baseline release, as control_cost.Lab.up, but a terminal the first update rolled back (a
    posd starved of CPU on a crowded lab) does not stop the benchmark: the update measured next takes it too.
    Without `baseline`, the fleet stays on its factory image (app, packs and OS packages all older than both
    releases)."""
    work.mkdir(parents=True, exist_ok=True)
    lab = control_cost.Lab(work, terminals)
    control_cost.log(f"a fresh lab of {terminals} terminals" + (f" on {control_cost.OLD}" if baseline else
                                                                  ", on their factory image"))
    env, log = lab.env, lab.log
    timings = {"down": control_cost.sh(["poslab", "down"], env, log),
               "up": control_cost.sh(["poslab", "up", "--terminals", terminals], env, log)}
    for spec in ("baseline", "upgrade"):
        timings[f"publish_{spec}"] = control_cost.sh(
            ["ansible-playbook", "playbooks/publish.yml", "-e", f"release_spec=releases/lab/{spec}.yml"], env, log)
    if baseline:
        first = lab.measure("to-baseline", control_cost.UPDATE, ["-e", f"update_release={control_cost.OLD}"])
        timings["to_baseline"] = {key: first.get(key) for key in ("wall_s", "cpu_s", "statuses")}
    return lab, timings


def diagnose(lab, result):
    """What the lab shows of each terminal the run did not update, kept in the work directory before the lab is
    removed: its flash, its processes and the tails of its logs. {serial: [status, reason, diagnostics file]}."""
    report = next(Path(result["log"]).parent.glob("*/report.json"), None)
    rows = json.loads(report.read_text())["terminals"] if report else []
    found = {}
    for row in rows:
        if row.get("status") == "updated":
            continue
        out = Path(result["log"]).parent / f"diagnose-{row['serial']}.txt"
        probe = subprocess.run(
            ["poslab", "exec", row["serial"], "--", "sh", "-c",
             "df -k /; ps -ef; posctl status; for f in /var/log/*.log; do echo \"== $f\"; tail -n 40 \"$f\"; done"],
            env=lab.env, capture_output=True, text=True, timeout=120, check=False)
        out.write_text(probe.stdout + probe.stderr)
        found[row["serial"]] = [row.get("status"), row.get("reason"), str(out)]
    return found


def flash_filesystems():
    """How many terminals keep their flash on each filesystem type: tmpfs (memory) or ext4 (disk)."""
    kinds = {}
    with open("/proc/self/mounts", encoding="utf-8") as handle:
        for line in handle:
            point, fstype = line.split()[1:3]
            if point.startswith(str(lab_scale.config.TERMINALS) + "/") and point.endswith("/flash"):
                kinds[fstype] = kinds.get(fstype, 0) + 1
    return kinds


def _seconds(wave):
    started, finished = (datetime.datetime.strptime(wave[key], "%Y-%m-%dT%H:%M:%SZ")
                         for key in ("started_at", "finished_at"))
    return (finished - started).total_seconds()


def slow_links(args, work):
    rounds = {}
    for label in ("fast", "slow"):
        lab, timings = fresh_lab(work / label, args.terminals)
        slow = []
        if label == "slow":
            serials = [terminal["serial"] for terminal in lab_scale.fleet.load()]
            slow = sorted(random.Random(args.seed).sample(serials, max(1, len(serials) * args.slow_pct // 100)))
            for serial in slow:
                control_cost.sh(["poslab", "fault", serial, "slow", SLOW_RATE], lab.env, lab.log)
        result = measured_update(lab, f"update-{label}", args.forks)
        result["slow_terminals"] = slow
        if slow:
            durations = result.get("durations_s", {})
            result["slow_duration_s"] = sorted(durations.get(serial) or 0 for serial in slow)
            fast = sorted(seconds for serial, seconds in durations.items() if serial not in slow and seconds)
            result["fast_duration_s_median"] = fast[len(fast) // 2] if fast else None
        result["lab"] = timings
        rounds[label] = result
        lab.down()
    ratio = rounds["slow"]["wall_s"] / rounds["fast"]["wall_s"]
    for result in rounds.values():
        result.pop("durations_s", None)
    return {"mode": "slow", "terminals": args.terminals, "forks": args.forks, "slow_pct": args.slow_pct,
            "slow_rate": SLOW_RATE, "seed": args.seed, "rounds": rounds, "ratio": round(ratio, 3),
            "target_ratio": SLOW_TARGET, "met": ratio <= SLOW_TARGET}


def whole_fleet(args, work):
    lab, timings = fresh_lab(work, args.terminals, baseline=False)
    lab_kib, flash_kib = lab_scale.terminal_memory()
    timings["flash_filesystems"] = flash_filesystems()
    result = measured_update(lab, "update", args.forks)
    result["not_updated"] = diagnose(lab, result)
    result.pop("durations_s", None)
    result["lab"] = dict(timings, memory_pss_mib=round(lab_kib / 1024), memory_pss_mib_per_terminal=round(
        lab_kib / 1024 / args.terminals, 1), flash_used_mib=round(flash_kib / 1024))
    lab.down()
    return {"mode": "fleet", "terminals": args.terminals, "forks": args.forks, "run": result}


def project(date):
    """A projection, not a measurement: control_cost.projection with this benchmark's figures.

    Measured here: the control node's CPU per terminal for a full update (at 500 terminals when that run is
    there, else at 100), its memory per slot (the peak memory (PSS) of the ansible-playbook tree over the
    forks), and what a slow link adds to a terminal's update (the slow terminals' median duration less the fast
    ones', the download at 256 kbit/s). Assumed, as before: a real terminal's update takes 300 s on a good link.
    A slice's throughput is its forks over the mean time a terminal holds a slot, so the slow links' share of
    the fleet adds its extra time to that mean.
    """
    results = ROOT / "bench" / "results"
    slow = json.loads((results / f"lab-rollout-slow-100-{date}.json").read_text())
    fleet_path = results / f"lab-rollout-fleet-500-{date}.json"
    fleet = json.loads(fleet_path.read_text())["run"] if fleet_path.exists() else None
    # The CPU of a complete run; the memory of the largest (a run stopped early says so in "stopped").
    measured = slow["rounds"]["fast"] if fleet is None or fleet.get("stopped") else fleet
    slow_round = slow["rounds"]["slow"]
    extra = sorted(slow_round["slow_duration_s"])[len(slow_round["slow_duration_s"]) // 2] - \
        slow_round["fast_duration_s_median"]
    share = slow["slow_pct"] / 100
    real = 300 + share * extra
    out = control_cost.projection(measured["cpu_s_per_terminal"], None, real_terminal_s=round(real))
    # PSS where measured (the 500-terminal run); the first slow-links run sampled resident memory, which counts
    # the pages the forked workers share once per worker: an upper bound.
    largest = fleet or measured
    tree = largest.get("peak_control_node_tree_pss_mib") or largest["peak_control_node_tree_rss_mib"]
    per_slot = tree / largest["forks"]
    out.update(measured_at_terminals=measured["terminals"], slow_link_extra_s=round(extra), slow_share=share,
               memory_mib_per_slot=round(per_slot), assumed_good_link_terminal_s=300)
    for row in out["regions"].values():
        for forks in (25, 50):
            row[f"forks_{forks}"]["memory_mib_per_slice"] = round(per_slot * forks)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("slow", "fleet", "projection"))
    parser.add_argument("--terminals", type=int)
    parser.add_argument("--forks", type=int, default=control_cost.DEFAULT_FORKS)
    parser.add_argument("--slow-pct", type=int, default=10)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--date", default=datetime.date.today().isoformat())
    args = parser.parse_args()
    if args.mode == "projection":
        print(json.dumps(project(args.date), indent=1))
        return
    args.terminals = args.terminals or {"slow": 100, "fleet": 500}[args.mode]
    with open(control_cost.LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        work = Path(tempfile.mkdtemp(prefix=f"posfleet-bench-{args.mode}-"))
        try:
            result = (slow_links if args.mode == "slow" else whole_fleet)(args, work)
        except BaseException:
            # A run that stops part way (a step failed, ^C) takes the lab down too: 500 terminals hold gigabytes
            # of the machine. What happened stays in the work directory's logs.
            control_cost.log(f"the run stopped; taking the lab down (logs in {work})")
            control_cost.Lab(work, 0).down()
            raise
    result.update(date=args.date, cpus=os.cpu_count(), work=str(work))
    out = ROOT / "bench" / "results" / f"lab-rollout-{args.mode}-{args.terminals}-{args.date}.json"
    out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(json.dumps({key: value for key, value in result.items() if key not in ("rounds", "run")}, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
