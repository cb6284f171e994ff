"""Benchmark of issue 16: the control node's cost of a fleet of 1,000 to 100,000 terminals, with no lab.

    .venv/bin/python bench/fleet_scale.py --sizes 1000,10000,100000 [--timeout 3600] [--out FILE.json]
    make bench-scale                     # the same, 3600 s per command

`--timeout 3600,3600,900` gives each size its own limit; `--keep` keeps the temporary directory (the
registries, inventories, consoles and reports).

Targets (issue 16), on a 2-core machine: plan.yml over 100,000 terminals, none of them contacted, in
at most 5 minutes and 2 GB; going from 10,000 to 100,000 terminals costs at most 11 times as much.
This prints the measured figures next to the targets and writes them to
bench/results/fleet-scale-<date>.json; a miss is reported, not an error.

No terminal is needed. For each size the benchmark writes, into a temporary project directory:

- a TMS registry export (CSV, the inventory plugin's columns) of N generated terminals spread over
  every model of inventories/shared/models.yml and every region of regions.yml; their addresses are
  in 198.18.0.0/15, the range set aside for benchmarks (RFC 2544), so nothing answers them;
- an inventory beside it: a posfleet_registry config with production's settings (keyed groups per
  merchant and store) pointing at the export and at the shared model and region data, and
  group_vars naming the release below;
- once per run, the lab's upgrade release (releases/lab/upgrade.yml) built and signed with a
  throwaway key made in the same directory, as posfleet-release does it (docs/releases.md).

The clock (update_clock_utc) is an instant at which every region's maintenance window is closed,
found hour by hour with posfleet.rollout's own window code, so the survey defers every terminal
without contacting it. Measured per size, each command under this process with the project's
ansible.cfg:

- `ansible-inventory --list` and `ansible-playbook playbooks/plan.yml`: wall time; user + system CPU of
  the whole process tree (resource.getrusage(RUSAGE_CHILDREN) around the command, this process being
  the tree's subreaper, as in bench/tree_cpu.py); peak memory, sampled from /proc: every 0.2 s the
  sum of the resident sets (RSS) of the tree's processes and the largest single one, and about once a
  second the sum of their proportional set sizes (PSS). Ansible's workers are forks of
  ansible-playbook, so the RSS sum counts the controller's pages once per worker; the PSS sum counts
  each page once, and is what the memory target is judged on;
- for plan.yml: the report (POSFLEET_REPORT_DIR in the temporary directory) must list every
  terminal as deferred by its window, and no `ssh` process may have been seen; the console's lines.

A command that runs past --timeout is stopped (its process group, by the id of the process started
here) and recorded as "did not finish within S s" with what was measured until then; larger sizes
are then not run. The machine is not reserved: the JSON records the load average before each
command, and figures taken while other work ran are noisy.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import csv
import ctypes
import datetime
import json
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import tree_cpu  # noqa: E402  (bench/ is on the path above: the subreaper and the reaping are done there, once)

from posfleet import rollout  # noqa: E402

SHARED = ROOT / "inventories" / "shared"
RELEASE_SPEC = ROOT / "releases" / "lab" / "upgrade.yml"
REGISTRY_COLUMNS = ["serial", "model", "region", "merchant_id", "terminal_id", "merchant_name", "store", "ip"]
# RFC 2544's benchmarking range: 131,072 addresses that no network routes.
ADDRESS_BASE = (198 << 24) | (18 << 16)
ADDRESS_COUNT = 2 << 16
# The clock is searched from here, hour by hour: a fixed date keeps every run on the same instant.
CLOCK_SEARCH_FROM = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)
SAMPLE_S = 0.2
# Reading a process's PSS walks its page tables (about 90 ms for 2 GB here), and every worker is a fork
# of the whole controller: PSS is swept at most once a second and at most 5% of the time.
PSS_MIN_INTERVAL_S = 1.0
PSS_MAX_SHARE = 0.05
DEFAULT_SIZES = "1000,10000,100000"
DEFAULT_TIMEOUT_S = 3600
SEED = 16
MB = 1_000_000

TARGET_SIZE = 100_000
TARGET_FROM_SIZE = 10_000
TARGET_WALL_S = 300
# Judged on the tree's peak PSS: the sum of resident sets counts the controller's pages once per fork.
TARGET_PEAK_MB = 2_000
TARGET_RATIO = 11

_WORDS = ["Juniper", "Copper", "Harbour", "Maple", "Granite", "Willow", "Saffron", "Lantern", "Meadow", "Cobalt"]
_KINDS = ["Bakery", "Grocers", "Pharmacy", "Books", "Hardware", "Cafe", "Deli", "Florist"]


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def shared(name):
    with open(SHARED / f"{name}.yml", encoding="utf-8") as handle:
        return yaml.safe_load(handle)[name]


# --- the fleet and its inventory ---------------------------------------------------------------------

def terminals(size, models, regions, seed=SEED):
    """`size` registry rows: every model in every region, about three terminals per merchant."""
    if size >= ADDRESS_COUNT:
        raise SystemExit(f"at most {ADDRESS_COUNT} terminals: the benchmark's address range holds no more")
    names, zones = sorted(models), sorted(regions)
    width = max(6, len(str(size)))
    rng = random.Random(seed)
    merchant, stores, rows = None, 0, []
    for index in range(size):
        model = names[index % len(names)]
        # The offset puts every model in every region, whatever the two counts are.
        region = zones[(index + index // len(names)) % len(zones)]
        if merchant is None or rng.random() < 0.35:
            merchant = (f"M{index + 1:0{width}d}", f"{rng.choice(_WORDS)} {rng.choice(_KINDS)}")
            stores = 0
        if stores == 0 or rng.random() < 0.3:
            stores += 1
        address = ADDRESS_BASE + index + 1
        rows.append({
            "serial": f"{models[model]['serial_prefix']}{index + 1:0{width}d}",
            "model": model,
            "region": region,
            "merchant_id": merchant[0],
            "terminal_id": f"T{index + 1:0{width + 1}d}",
            "merchant_name": merchant[1],
            "store": f"{merchant[0]}-S{stores:02d}",
            "ip": f"{address >> 24}.{address >> 16 & 255}.{address >> 8 & 255}.{address & 255}",
        })
    return rows


def write_registry(path, rows):
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=REGISTRY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def write_inventory(inventory, registry, release):
    """An inventory directory like production's, over the generated export, naming the built release."""
    (inventory / "group_vars").mkdir(parents=True)
    config = {
        "plugin": "posfleet.fleet.posfleet_registry",
        "registry": str(registry),
        "models_file": str(SHARED / "models.yml"),
        "regions_file": str(SHARED / "regions.yml"),
        "on_bad_row": "fail",
        "strict": True,
        "keyed_groups": [{"key": "pos_merchant_id", "prefix": "merchant"}, {"key": "pos_store", "prefix": "store"}],
    }
    (inventory / "registry.posfleet.yml").write_text("---\n" + yaml.safe_dump(config, sort_keys=False))
    group_vars = {
        "ansible_user": "root",
        "pos_release_build_dir": str(release["build_dir"]),
        "pos_release_public_key": str(release["public_key"]),
        # The windows decide, as in production (the lab's inventory turns them off).
        "update_ignore_windows": False,
    }
    (inventory / "group_vars" / "all.yml").write_text("---\n" + yaml.safe_dump(group_vars, sort_keys=False))


def build_release(work):
    """The lab's upgrade release, built and signed into `work` with a key made for this run only."""
    tool = [str(ROOT / "bin" / "posfleet-release")]
    spec = yaml.safe_load(RELEASE_SPEC.read_text())
    for argv in (["keygen", "--out", work / "key"],
                 ["build", "--spec", RELEASE_SPEC, "--out", work / "build"],
                 ["sign", "--release", work / "build" / "releases" / spec["release"], "--key",
                  work / "key" / "release.key"]):
        proc = subprocess.run([*tool, *map(str, argv)], cwd=ROOT, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"posfleet-release {argv[0]} failed: {proc.stderr.strip()}")
    return {"id": spec["release"], "spec": str(RELEASE_SPEC.relative_to(ROOT)), "build_dir": work / "build",
            "public_key": work / "key" / "release.pub"}


def closed_instant(regions, start=CLOCK_SEARCH_FROM, hours=24 * 14):
    """The first whole hour from `start` at which every region's maintenance window is closed."""
    for hour in range(hours):
        instant = start + datetime.timedelta(hours=hour)
        states = {name: rollout.window_state(settings["maintenance_window"], settings["timezone"], instant)
                  for name, settings in regions.items()}
        if not any(state["open"] for state in states.values()):
            return instant.strftime("%Y-%m-%dT%H:%M:%SZ"), {
                name: {"window": state["window"], "timezone": state["timezone"], "local_now": state["local_now"],
                       "opens_at_utc": state["opens_at_utc"]} for name, state in states.items()}
    raise SystemExit(f"no hour in the {hours} h from {start:%Y-%m-%d} has every maintenance window closed")


# --- measuring a command -------------------------------------------------------------------------------

PAGE = os.sysconf("SC_PAGE_SIZE")


def pss(pid):
    """The proportional set size of a process (shared pages split among their sharers), in bytes."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as handle:
            for line in handle:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def process_table():
    """{pid: (ppid, command name, resident bytes)} of every process readable in /proc."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read().decode(errors="replace")
            with open(f"/proc/{entry.name}/statm", "rb") as handle:
                resident = int(handle.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        table[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), name, resident)
    return table


class TreeMemory(threading.Thread):
    """Samples the memory of this process's descendants (the command's tree and any orphan it left to
    this subreaper) until stopped; keeps the peaks and the command names seen.

    The resident sets of a forking program overlap: Ansible's workers are forks of ansible-playbook and
    share its pages until they write them, so their sum counts the controller once per worker. The
    sum of the proportional set sizes counts every page once, split among the processes sharing it:
    that is the memory the run takes from the machine."""

    def __init__(self, command_pid):
        super().__init__(daemon=True)
        self.me, self.command_pid = os.getpid(), command_pid
        self.stopping = threading.Event()
        self.peak_sum = self.peak_pss = self.peak_single = self.peak_processes = self.samples = self.pss_samples = 0
        self.next_pss = 0.0
        self.peak_single_name = None
        self.peak_single_is_command = None
        self.names = set()

    def sample(self):
        table = process_table()
        children = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        tree, todo = [], list(children.get(self.me, []))
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, []))
        total = sum(table[pid][2] for pid in tree)
        self.samples += 1
        self.peak_sum = max(self.peak_sum, total)
        if time.monotonic() >= self.next_pss:
            started = time.monotonic()
            self.peak_pss = max(self.peak_pss, sum(pss(pid) for pid in tree))
            self.pss_samples += 1
            took = time.monotonic() - started
            self.next_pss = started + max(PSS_MIN_INTERVAL_S, took / PSS_MAX_SHARE)
        self.peak_processes = max(self.peak_processes, len(tree))
        for pid in tree:
            _, name, resident = table[pid]
            self.names.add(name)
            if resident > self.peak_single:
                self.peak_single, self.peak_single_name = resident, name
                self.peak_single_is_command = pid == self.command_pid

    def run(self):
        while not self.stopping.is_set():
            self.sample()
            self.stopping.wait(SAMPLE_S)

    def stop(self):
        self.stopping.set()
        self.join()


def cpu_children():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime, usage.ru_stime


def measure(argv, env, console, timeout):
    """Run `argv` (stdout and stderr to `console`) and return its wall time, tree CPU and peak memory."""
    load = os.getloadavg()
    user0, sys0 = cpu_children()
    own0 = time.process_time()
    started = time.monotonic()
    with open(console, "wb") as out:
        # A session of its own: on a timeout its process group is stopped by the id of the process started here.
        proc = subprocess.Popen([str(a) for a in argv], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        memory = TreeMemory(proc.pid)
        memory.start()
        finished = True
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            finished = False
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        wall = time.monotonic() - started
        memory.stop()
    tree_cpu.reap_all()
    user1, sys1 = cpu_children()
    own = time.process_time() - own0
    return {
        "finished": finished,
        "rc": rc if finished else None,
        "status": "finished" if finished else f"did not finish within {timeout} s",
        "wall_s": round(wall, 1),
        "cpu_s": round(user1 - user0 + sys1 - sys0, 1),
        "user_s": round(user1 - user0, 1),
        "sys_s": round(sys1 - sys0, 1),
        "peak_tree_rss_mb": round(memory.peak_sum / MB, 1),
        "peak_tree_pss_mb": round(memory.peak_pss / MB, 1),
        "peak_process_rss_mb": round(memory.peak_single / MB, 1),
        "peak_process": memory.peak_single_name,
        "peak_process_is_the_command": memory.peak_single_is_command,
        "peak_processes": memory.peak_processes,
        "memory_samples": memory.samples,
        "pss_samples": memory.pss_samples,
        "commands_seen": sorted(memory.names),
        "loadavg_before": [round(x, 2) for x in load],
        # Not in cpu_s: this process's own, mostly the memory sampling, which competes for the same cores.
        "sampler_cpu_s": round(own, 1),
    }


HOST_RESULTS = (b"ok: [", b"changed: [", b"skipping: [", b"failed: [", b"fatal: [", b"unreachable: [")


def console_facts(console):
    """The console's line count, the last task it names and the host results printed under it (where
    a stopped run was: how far its last task got)."""
    lines, last_task, results = 0, None, 0
    with open(console, "rb") as handle:
        for line in handle:
            lines += 1
            if line.startswith((b"TASK [", b"PLAY [")):
                last_task, results = line.decode(errors="replace").rstrip(" *\n"), 0
            elif line.startswith(HOST_RESULTS):
                results += 1
    return {"console_lines": lines, "last_task_started": last_task, "host_results_in_last_task": results}


def report_facts(report_dir, size):
    """What plan.yml's report says about the terminals: the proof that none was contacted."""
    found = sorted(report_dir.glob("*/report.json"))
    if not found:
        return {"report": None, "none_contacted": False}
    doc = json.loads(found[-1].read_text())
    verdicts = {}
    for row in doc["terminals"]:
        key = f"{row['status']}/{row.get('deferred_by')}"
        verdicts[key] = verdicts.get(key, 0) + 1
    every_deferred = verdicts == {"deferred/window": size}
    return {"report": found[-1].parent.name, "report_terminals": len(doc["terminals"]), "verdicts": verdicts,
            "every_terminal_deferred_by_window": every_deferred}


def inventory_hosts(path):
    with contextlib.suppress(OSError, ValueError), open(path, encoding="utf-8") as handle:
        return len(json.load(handle)["_meta"]["hostvars"])
    return None


def run_size(size, work, release, clock, timeout, models, regions):
    here = work / f"fleet-{size}"
    here.mkdir()
    started = time.monotonic()
    rows = terminals(size, models, regions)
    registry = here / "registry.csv"
    write_registry(registry, rows)
    inventory = here / "inventory"
    write_inventory(inventory, registry, release)
    out = {"terminals": size, "registry_bytes": registry.stat().st_size,
           "by_model": {m: sum(r["model"] == m for r in rows) for m in sorted(models)},
           "by_region": {g: sum(r["region"] == g for r in rows) for g in sorted(regions)},
           "merchants": len({r["merchant_id"] for r in rows}), "stores": len({r["store"] for r in rows}),
           "generate_s": round(time.monotonic() - started, 1)}
    del rows
    env = dict(os.environ)
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{ROOT / 'bin'}:{env.get('PATH', '')}"
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env["POSFLEET_REPORT_DIR"] = str(here / "reports")
    env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = str(here / "cp")
    for name in ("ANSIBLE_INVENTORY", "ANSIBLE_FORKS", "ANSIBLE_CALLBACKS_ENABLED", "ANSIBLE_STDOUT_CALLBACK",
                 "POSLAB_REGISTRY"):
        env.pop(name, None)

    listing = here / "inventory.json"
    log(f"{size} terminals: ansible-inventory --list")
    out["inventory_list"] = measure(["ansible-inventory", "-i", inventory, "--list", "--output", listing], env,
                                    here / "inventory.console", timeout)
    out["inventory_list"]["hosts"] = inventory_hosts(listing) if out["inventory_list"]["finished"] else None
    with contextlib.suppress(OSError):
        listing.unlink()
    log(f"  {summary(out['inventory_list'])}")

    log(f"{size} terminals: plan.yml at {clock}")
    argv = ["ansible-playbook", "-i", inventory, "playbooks/plan.yml", "-e", f"update_release={release['id']}",
            "-e", f"update_clock_utc={clock}", "-e", f"update_runs_dir={here / 'runs'}"]
    plan = measure(argv, env, here / "plan.console", timeout)
    plan.update(console_facts(here / "plan.console"))
    if plan["finished"]:
        plan.update(report_facts(here / "reports", size))
    plan["ssh_seen"] = "ssh" in plan["commands_seen"]
    # A stopped run writes no report: then the only evidence is that no ssh client was ever seen.
    plan["none_contacted"] = not plan["ssh_seen"] and (
        not plan["finished"] or (plan["rc"] == 0 and plan.get("every_terminal_deferred_by_window", False)))
    plan["contact_evidence"] = ("no ssh process seen" if not plan["finished"]
                                else "report: every terminal deferred by window; no ssh process seen")
    out["plan"] = plan
    log(f"  {summary(plan)}; {plan['console_lines']} console lines; "
        f"{plan.get('verdicts', 'no report')}; none contacted: {plan['none_contacted']}")
    if plan["finished"] and (plan["rc"] != 0 or not plan.get("every_terminal_deferred_by_window")):
        tail = (here / "plan.console").read_text(errors="replace").splitlines()[-20:]
        out["plan"]["console_tail"] = tail
        log("  plan.yml did not defer every terminal by its window:\n    " + "\n    ".join(tail))
    return out


def summary(run):
    return (f"{run['status']}: rc {run['rc']}, {run['wall_s']} s wall, {run['cpu_s']} CPU-s, "
            f"peak {run['peak_tree_pss_mb']} MB PSS / {run['peak_tree_rss_mb']} MB RSS (tree), "
            f"{run['peak_process_rss_mb']} MB ({run['peak_process']})")


# --- verdicts ------------------------------------------------------------------------------------------

def ratio(small, large, key):
    """large / small for a figure; a bound (at least) when the large run was stopped."""
    if not small or not large or not small["finished"] or not small[key]:
        return None
    value = round(large[key] / small[key], 2)
    return {"ratio": value, "bound": "exact" if large["finished"] else "at least"}


def verdicts(sizes):
    by_size = {row["terminals"]: row for row in sizes}
    small = by_size.get(TARGET_FROM_SIZE, {}).get("plan")
    large = by_size.get(TARGET_SIZE, {}).get("plan")
    out = {"targets": {"plan_wall_s": TARGET_WALL_S, "plan_peak_mb": TARGET_PEAK_MB, "scale_ratio": TARGET_RATIO,
                       "at_terminals": TARGET_SIZE, "ratio_from_terminals": TARGET_FROM_SIZE}}
    if large is None:
        out["plan_100k"] = {"verdict": "not measured"}
    else:
        wall_ok = large["finished"] and large["rc"] == 0 and large["wall_s"] <= TARGET_WALL_S
        # A stopped run's peak is a lower bound: over the target is a miss, under it says nothing.
        peak = large["peak_tree_pss_mb"]
        peak_ok = large["finished"] and peak <= TARGET_PEAK_MB
        out["plan_100k"] = {
            "status": large["status"], "wall_s": large["wall_s"], "peak_tree_pss_mb": peak,
            "peak_tree_rss_mb": large["peak_tree_rss_mb"], "peak_process_rss_mb": large["peak_process_rss_mb"],
            "wall": "pass" if wall_ok else "fail",
            "memory": "pass" if peak_ok else ("fail" if peak > TARGET_PEAK_MB else "unknown: the run did not finish"),
            "none_contacted": large["none_contacted"]}
    ratios = {}
    for what, runs in (("plan", (small, large)),
                       ("inventory_list", (by_size.get(TARGET_FROM_SIZE, {}).get("inventory_list"),
                                           by_size.get(TARGET_SIZE, {}).get("inventory_list")))):
        for key in ("wall_s", "cpu_s", "peak_tree_pss_mb", "peak_process_rss_mb"):
            ratios[f"{what}.{key}"] = ratio(*runs, key)
    out["ratios_10k_to_100k"] = ratios
    # Each step between two measured sizes too: how the cost grows where both runs finished.
    steps = {}
    for before, after in zip(sizes, sizes[1:]):
        steps[f"{before['terminals']}->{after['terminals']}"] = {
            f"{what}.{key}": ratio(before[what], after[what], key)
            for what in ("plan", "inventory_list") for key in ("wall_s", "cpu_s", "peak_tree_pss_mb",
                                                               "peak_process_rss_mb")}
    out["ratios_by_step"] = steps
    costs = [ratios["plan.wall_s"], ratios["plan.cpu_s"]]
    if None in costs:
        out["scale"] = {"verdict": "not measured"}
    else:
        # A ratio that is a lower bound only fails the target when the bound is already above it.
        over = any(c["ratio"] > TARGET_RATIO for c in costs)
        known = all(c["bound"] == "exact" for c in costs)
        out["scale"] = {"verdict": "fail" if over else ("pass" if known else "unknown: the 100k run did not finish"),
                        "wall": ratios["plan.wall_s"], "cpu": ratios["plan.cpu_s"]}
    return out


# --- the run -------------------------------------------------------------------------------------------

def machine():
    version = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible-playbook"), "--version"], cwd=ROOT,
                             capture_output=True, text=True, check=False).stdout
    core = next((line for line in version.splitlines() if line.startswith("ansible-playbook")), "")
    python = next((line.split("=", 1)[1].strip() for line in version.splitlines()
                   if line.strip().startswith("python version")), platform.python_version())
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True, check=False).stdout.strip()
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": model,
            "memory_mb": int(meminfo["MemTotal"].split()[0]) * 1024 // MB,
            "python": python, "ansible_core": core.split("[core ")[-1].rstrip("]") if core else None,
            "git_commit": commit, "git_worktree_changed": bool(dirty), "kernel": platform.release(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def table(result):
    lines = ["| terminals | inventory --list: wall s, CPU-s, largest process MB | plan.yml wall s | CPU-s "
             "| peak PSS of the tree MB | peak RSS sum MB | largest process MB | console lines | none contacted |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in result["sizes"]:
        inv, plan = row["inventory_list"], row["plan"]
        stopped = "" if plan["finished"] else f" ({plan['status']})"
        lines.append(f"| {row['terminals']} | {inv['wall_s']}{'' if inv['finished'] else ' (stopped)'}, "
                     f"{inv['cpu_s']}, {inv['peak_process_rss_mb']} "
                     f"| {plan['wall_s']}{stopped} | {plan['cpu_s']} | {plan['peak_tree_pss_mb']} "
                     f"| {plan['peak_tree_rss_mb']} | {plan['peak_process_rss_mb']} | {plan['console_lines']} "
                     f"| {plan['none_contacted']} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"terminal counts, comma-separated ({DEFAULT_SIZES})")
    parser.add_argument("--timeout", default=str(DEFAULT_TIMEOUT_S),
                        help=f"seconds each command of a size may run (default {DEFAULT_TIMEOUT_S}); one value for "
                             "every size, or one per size in the order of --sizes (3600,3600,900)")
    parser.add_argument("--out", type=Path, help="the JSON to write (default bench/results/fleet-scale-<date>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (registries, consoles)")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    timeouts = [int(value) for value in args.timeout.split(",")]
    if len(timeouts) == 1:
        timeouts *= len(sizes)
    if len(timeouts) != len(sizes) or sizes != sorted(sizes):
        parser.error("--sizes must be in increasing order, and --timeout one value or one per size")
    today = datetime.date.today().isoformat()
    out_path = args.out or ROOT / "bench" / "results" / f"fleet-scale-{today}.json"

    # Orphans of a command (none are expected without SSH) become this process's children, so their CPU
    # is counted and they are reaped with the command's.
    subreaper()
    models, regions = shared("models"), shared("regions")
    clock, windows = closed_instant(regions)
    work = Path(tempfile.mkdtemp(prefix="fleet-scale-"))
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "timeout_s": dict(zip(map(str, sizes), timeouts)), "clock_utc": clock, "windows_at_clock": windows,
              "sample_s": SAMPLE_S,
              "forks": ansible_cfg().getint("defaults", "forks", fallback=5), "sizes": [], "not_run": []}
    log(f"work directory {work}; clock {clock} (every window closed)")
    try:
        release = build_release(work)
        result["release"] = {"id": release["id"], "spec": release["spec"]}
        for size, timeout in zip(sizes, timeouts):
            if result["sizes"] and not result["sizes"][-1]["plan"]["finished"]:
                result["not_run"].append({"terminals": size, "why": "a smaller size did not finish"})
                log(f"{size} terminals: not run, a smaller size did not finish")
                continue
            result["sizes"].append(run_size(size, work, release, clock, timeout, models, regions))
            result["sizes"][-1]["timeout_s"] = timeout
            write(out_path, result)
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result.update(verdicts(result["sizes"]))
    write(out_path, result)
    print(table(result))
    print(json.dumps({k: result[k] for k in ("plan_100k", "scale")}, indent=1))
    log(f"wrote {out_path}")
    return 0


def subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(tree_cpu.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit(f"prctl(PR_SET_CHILD_SUBREAPER) failed: errno {ctypes.get_errno()}")


def ansible_cfg():
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "ansible.cfg")
    return config


def write(path, result):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
