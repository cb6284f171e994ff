"""Lab benchmark of issue 7: control-node CPU and wall time per terminal, and bytes per terminal.

One command runs everything and prints the table (`make bench`):

    .venv/bin/python bench/control_cost.py run [--quick] [--date 2026-11-24]

The lab is shared, so every step that touches it runs as its own process under the lab's lock
(`flock $POSLAB_LOCK`, default /tmp/poslab.lock), brings the lab up itself (`poslab down`, `poslab up
--terminals N`, publish the baseline and upgrade releases, bring the fleet to the baseline 2026.11.0
with update.yml) and leaves it down. Each step appends its figures to a partial JSON file
(bench/results/partial-<date>.json); `assemble` turns that into bench/results/<date>.json, the PNG
and the table, so a step can be re-run on its own (`step NAME`) and `run --resume` skips the steps
already in the partial file.

Steps (`--quick`: bytes, both-10, both-25, the matrix at 25):

- bytes: 3 terminals. rsync for real (bench/rsync_catalog.yml: ansible.posix.synchronize over the
  lab's SSH); the full download (update.yml with pos_data_sync_delta=false, one terminal) and our delta
  (update.yml, the two others) from pos_data_sync's `transfers` result; the floor from
  bench/delta_bytes.py, on the catalog tars of the releases just published. Also the tasks each
  terminal runs (ansible.posix.json callback) and a per-task profile (ansible.posix.profile_tasks).
- ours-N / baseline-N: a full update 2026.11.0 -> 2026.12.0 with playbooks/update.yml or
  bench/baseline/update_builtin.yml on a fresh fleet, then a no-op re-run (fleet current); at the
  matrix size also no-op re-runs with forks 10 and 50 and with pipelining off. both-N does ours-N and
  then baseline-N in one lab session (the fleet put back on 2026.11.0 in between), and at the
  no-pipelining size a full update of each with pipelining off: fewer holds of the lock.
- full plan: bytes, ours-100 (matrix), baseline-100 (matrix), ours-10, baseline-10, both-25 (with
  pipelining off), both-50; every step holds the lock for at most about 15 minutes.

Every measured run is `bench/tree_cpu.py -- ansible-playbook ...`: user + system CPU of the
ansible-playbook process tree on the control node (docs/performance.md says what that includes).
Default settings: forks 25, pipelining on (ansible.cfg), update.yml's default waves (canary 1 per
model, [10, 30, 100], batch size 100); the JSON records them per run.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")  # no display: the plot is written to a PNG
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import delta_bytes  # noqa: E402  (bench/ is on the path above: the floor is computed there, once)

OLD, NEW = delta_bytes.OLD, delta_bytes.NEW
LAB_STATE = Path(os.environ.get("POSLAB_STATE", "/var/lib/poslab"))
LOCK = os.environ.get("POSLAB_LOCK", "/tmp/poslab.lock")
VAULT = ["-e", f"@{LAB_STATE}/vault/secrets.yml", "--vault-password-file", f"{LAB_STATE}/vault/password"]
UPDATE = "playbooks/update.yml"
# ansible.cfg's callbacks with the per-task profile; replacing the list drops ansible.cfg's.
PROFILE_CALLBACKS = "posfleet.fleet.posfleet_report,posfleet.fleet.posfleet_preload,ansible.posix.profile_tasks"
BASELINE = "bench/baseline/update_builtin.yml"
DEFAULT_FORKS = 25
SIZES = {"full": [10, 25, 50, 100], "quick": [10, 25]}
MATRIX_SIZE = {"full": 100, "quick": 25}
NOPIPE_SIZE = {"full": 25, "quick": 25}
MATRIX_FORKS = {"full": [10, 50], "quick": [10]}
BYTES_TERMINALS = 3
TARGET_NOOP_CPU = 0.3  # control-node CPU seconds per terminal
TARGET_UPDATE_RATIO = 1 / 3  # of the baseline's control-node CPU per terminal


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def base_env(work):
    env = dict(os.environ)
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{ROOT / 'bin'}:{env.get('PATH', '')}"
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env["POSFLEET_REPORT_DIR"] = str(work / "reports")
    env.pop("ANSIBLE_PIPELINING", None)
    env.pop("ANSIBLE_FORKS", None)
    return env


def sh(argv, env, log_path=None, check=True):
    started = time.monotonic()
    with open(log_path or os.devnull, "a") as out:
        proc = subprocess.run([str(a) for a in argv], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                              check=False)
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed (exit {proc.returncode}); see {log_path}")
    return round(time.monotonic() - started, 1)


class Lab:
    """The lab for one step: up with N terminals, releases published, fleet on the baseline release."""

    def __init__(self, work, terminals):
        self.work, self.terminals = work, terminals
        self.env = base_env(work)
        self.log = work / "lab.log"
        self.runs = 0

    def up(self):
        timings = {"down": sh(["poslab", "down"], self.env, self.log)}
        timings["up"] = sh(["poslab", "up", "--terminals", self.terminals], self.env, self.log)
        for spec in ("baseline", "upgrade"):
            timings[f"publish_{spec}"] = sh(["ansible-playbook", "playbooks/publish.yml", "-e",
                                             f"release_spec=releases/lab/{spec}.yml"], self.env, self.log)
        first = self.measure("to-baseline", UPDATE, ["-e", f"update_release={OLD}"])
        if first["rc"] != 0 or first["statuses"].get("updated") != self.terminals:
            raise SystemExit(f"the fleet did not reach {OLD}: {first}")
        timings["to_baseline_wall_s"] = first["wall_s"]
        return timings, first

    def down(self):
        sh(["poslab", "down"], self.env, self.log)

    def measure(self, label, playbook, args, forks=DEFAULT_FORKS, pipelining=True, callbacks=None, stdout=None):
        """One ansible-playbook run under tree_cpu.py; its CPU, wall time and (update.yml) report."""
        self.runs += 1
        run_dir = self.work / f"run-{self.runs:02d}-{label}"
        run_dir.mkdir()
        env = dict(self.env, ANSIBLE_SSH_CONTROL_PATH_DIR=str(run_dir / "cp"), POSFLEET_REPORT_DIR=str(run_dir))
        env["ANSIBLE_PIPELINING"] = "True" if pipelining else "False"
        if callbacks is not None:
            env["ANSIBLE_CALLBACKS_ENABLED"] = callbacks
        if stdout is not None:
            env["ANSIBLE_STDOUT_CALLBACK"] = stdout
        argv = [sys.executable, ROOT / "bench" / "tree_cpu.py", run_dir / "cpu.json", "--",
                "ansible-playbook", playbook, "-f", forks, *args]
        if playbook in (UPDATE, BASELINE):
            argv += VAULT
        sh(argv, env, run_dir / "stdout.log", check=False)
        result = json.loads((run_dir / "cpu.json").read_text())
        result.update(label=label, playbook=playbook, terminals=self.terminals, forks=forks, pipelining=pipelining,
                      extra_vars=[a for a in args if a != "-e"], log=str(run_dir / "stdout.log"))
        report = next(run_dir.glob("*/report.json"), None)
        if report is not None:
            doc = json.loads(report.read_text())
            statuses = {}
            for row in doc["terminals"]:
                statuses[row["status"]] = statuses.get(row["status"], 0) + 1
            result["statuses"] = statuses
            result["settings"] = doc.get("settings")
            result["waves"] = [len(wave["serials"]) for wave in doc.get("waves", [])]
            result["bytes_downloaded_per_terminal"] = sorted({row["bytes_downloaded"] for row in doc["terminals"]})
            steps = {}
            for row in doc["terminals"]:
                for step, seconds in row.get("steps", {}).items():
                    steps[step] = steps.get(step, 0.0) + seconds
            result["step_seconds_per_terminal"] = {k: round(v / len(doc["terminals"]), 3) for k, v in steps.items()}
        if playbook == BASELINE:
            result["recap"] = recap(run_dir / "stdout.log")
        log(f"  {label}: {self.terminals} terminals, forks {forks}, pipelining {'on' if pipelining else 'off'}: "
            f"rc {result['rc']}, {result['cpu_s']} CPU-s ({result['cpu_s'] / self.terminals:.3f}/terminal), "
            f"{result['wall_s']} s wall {result.get('statuses', result.get('recap', ''))}")
        return result


def recap(path):
    """ok/changed/failed/unreachable summed over the PLAY RECAP of a default-callback log."""
    totals = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        if " : ok=" in line:
            for key, value in re.findall(r"(\w+)=(\d+)", line):
                totals[key] = totals.get(key, 0) + int(value)
    return totals


def json_events(path):
    """The ansible.posix.json callback's document from a run's stdout."""
    text = Path(path).read_text(errors="replace")
    # The report callback's progress lines come first; the document starts on a line of its own.
    start = 0 if text.startswith("{\n") else text.index("\n{\n") + 1
    return json.JSONDecoder().raw_decode(text[start:])[0]


def tasks_per_host(doc):
    """Task results per host that ran on it (not skipped), from an ansible.posix.json document."""
    counts = {}
    for play in doc["plays"]:
        for task in play["tasks"]:
            for host, res in task["hosts"].items():
                if not res.get("skipped"):
                    counts[host] = counts.get(host, 0) + 1
    return counts


def transfers(doc):
    found = {}
    for play in doc["plays"]:
        for task in play["tasks"]:
            for host, res in task["hosts"].items():
                if res.get("transfers"):
                    found[host] = res["transfers"]
    return found


def release_pack(version, name):
    """A published pack's archive path and its uncompressed tar's bytes, checked against the manifest."""
    manifest = yaml.safe_load((LAB_STATE / "build" / "releases" / version / "manifest.yml").read_text())
    entry = next(iter(manifest["models"].values()))["packs"][name]
    archive = LAB_STATE / "build" / entry["url"]
    data = archive.read_bytes()
    tar = gzip.decompress(data)
    # A release without deltas lists no tar_sha256; its archive's sha256 is checked then.
    if hashlib.sha256(data).hexdigest() != entry["sha256"] or hashlib.sha256(tar).hexdigest() != entry.get(
            "tar_sha256", hashlib.sha256(tar).hexdigest()):
        raise SystemExit(f"{archive}: does not match the manifest of {version}")
    return archive, tar, entry


def member(tar_bytes, name):
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return tar.extractfile(name).read()


def stats_bytes(result):
    text = "\n".join(result.get("stdout_lines", []))
    sent = re.search(r"Total bytes sent: ([\d,]+)", text)
    received = re.search(r"Total bytes received: ([\d,]+)", text)
    return int(sent.group(1).replace(",", "")) + int(received.group(1).replace(",", ""))


def step_bytes(work, mode):
    lab = Lab(work, BYTES_TERMINALS)
    timings, first = lab.up()
    out = {"lab": timings, "to_baseline": first}
    old_archive, old_tar, _ = release_pack(OLD, "catalog")
    new_archive, new_tar, new_entry = release_pack(NEW, "catalog")
    # The floor: the smallest binary diff of the old to the new tar, by bench/delta_bytes.py's tools.
    floors = {}
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "old.tar").write_bytes(old_tar)
        (tmp / "new.tar").write_bytes(new_tar)
        for tool, how in (("zstd", delta_bytes.floor_zstd), ("xdelta3", delta_bytes.floor_xdelta3),
                          ("bsdiff", delta_bytes.floor_bsdiff)):
            if shutil.which(tool):
                size, text = how(tmp, tmp / "old.tar", tmp / "new.tar")
                floors[tool] = {"bytes": size, "how": text}
        size, text = delta_bytes.floor_line_diff(old_tar, new_tar)
        floors["line_diff_xz"] = {"bytes": size, "how": text}
        binary = {k: v for k, v in floors.items() if k != "line_diff_xz"} or floors
        floor = min(binary, key=lambda k: binary[k]["bytes"])
        old_lines, new_lines = (member(t, "catalog.csv").splitlines() for t in (old_tar, new_tar))
        out["catalog"] = {"full_archive_bytes": new_archive.stat().st_size, "tar_bytes": len(new_tar),
                          "records": len(new_lines) - 1,
                          "records_changed": sum(a != b for a, b in zip(old_lines, new_lines)),
                          "deltas_in_manifest": [d["size"] for d in new_entry.get("deltas", [])]}
        out["floors"], out["floor"] = floors, floor
        # rsync, for real: the new catalog unpacked on the control node, rsynced to a terminal.
        new_dir = tmp / "new-catalog"
        with tarfile.open(fileobj=io.BytesIO(new_tar)) as tar:
            tar.extractall(new_dir, filter="data")
        libpopt = next(p for p in ("/usr/lib/x86_64-linux-gnu/libpopt.so.0", "/lib/x86_64-linux-gnu/libpopt.so.0",
                                   "/usr/lib/aarch64-linux-gnu/libpopt.so.0") if os.path.exists(p))
        first_host = sorted(first_serials(work))[0]
        run = lab.measure("rsync", "bench/rsync_catalog.yml", [
            "-l", first_host, "-e", f"bench_old={OLD}", "-e", f"bench_new_dir={new_dir}",
            "-e", f"bench_old_archive={old_archive}", "-e", f"bench_new_archive={new_archive}",
            "-e", f"bench_libpopt={libpopt}"], stdout="ansible.posix.json")
        doc = json_events(run["log"])
        rsync = {"host": first_host, "rc": run["rc"]}
        for play in doc["plays"]:
            for task in play["tasks"]:
                res = task["hosts"].get(first_host, {})
                if task["task"]["name"] == "Rsync the new catalog's files onto the old ones":
                    rsync["unpacked_pack_bytes"] = stats_bytes(res)
                    rsync["cmd"] = res.get("cmd")
                elif task["task"]["name"] == "Rsync the new catalog archive onto the old one":
                    rsync["archive_bytes"] = stats_bytes(res)
                elif task["task"]["name"] == "Check that rsync rebuilt the new catalog":
                    sums = res.get("stdout", "")
                    rsync["rebuilt_archive_ok"] = hashlib.sha256(new_archive.read_bytes()).hexdigest() in sums
        out["rsync"] = rsync
    # The full download first, on the rsync terminal alone: once a terminal has held 2026.12.0 it keeps
    # it as its previous version and a later update to it downloads nothing at all.
    json_cb = {"stdout": "ansible.posix.json"}
    run = lab.measure("full-update", UPDATE, ["-l", first_host, "-e", f"update_release={NEW}",
                                              "-e", "pos_data_sync_delta=false"], **json_cb)
    out["full_transfers"] = transfers(json_events(run["log"]))
    # Our delta: the other terminals, which hold 2026.11.0 only.
    run = lab.measure("delta-update", UPDATE, ["-e", f"update_release={NEW}"], **json_cb)
    doc = json_events(run["log"])
    out["delta_transfers"] = transfers(doc)
    out["tasks_ours_update"] = {h: c for h, c in tasks_per_host(doc).items() if h in out["delta_transfers"]}
    run = lab.measure("noop-json", UPDATE, ["-e", f"update_release={NEW}"], **json_cb)
    out["tasks_ours_noop"] = tasks_per_host(json_events(run["log"]))
    run = lab.measure("baseline-noop-json", BASELINE, ["-e", f"update_release={NEW}"], **json_cb)
    out["tasks_baseline_noop"] = tasks_per_host(json_events(run["log"]))
    lab.measure("back-to-baseline", UPDATE, ["-e", f"update_release={OLD}"])
    run = lab.measure("baseline-update-json", BASELINE, ["-e", f"update_release={NEW}"], **json_cb)
    out["tasks_baseline_update"] = tasks_per_host(json_events(run["log"]))
    # Where the time of our update goes: ansible.posix.profile_tasks (wall seconds per task, all
    # terminals together; the app and the packs are already held, so downloads are not in it).
    lab.measure("back-to-baseline-2", UPDATE, ["-e", f"update_release={OLD}"])
    run = lab.measure("profile-update", UPDATE, ["-e", f"update_release={NEW}"],
                      callbacks=PROFILE_CALLBACKS, stdout="ansible.builtin.default")
    out["profile_update"] = profile(run["log"])
    run = lab.measure("profile-noop", UPDATE, ["-e", f"update_release={NEW}"],
                      callbacks=PROFILE_CALLBACKS, stdout="ansible.builtin.default")
    out["profile_noop"] = profile(run["log"])
    lab.down()
    return out


def profile(path):
    """The profile_tasks summary: [(task, seconds)], slowest first."""
    rows = []
    text = Path(path).read_text(errors="replace")
    tail = text[text.rfind("=" * 20):] if "=" * 20 in text else text
    for match in re.finditer(r"^(.+?) -+ (\d+\.\d+)s$", tail, re.M):
        rows.append([match.group(1).strip(), float(match.group(2))])
    return rows


def first_serials(work):
    registry = LAB_STATE / "registry.csv"
    lines = registry.read_text().splitlines()[1:]
    return [line.split(",")[0] for line in lines if line.startswith("KST")] or [lines[0].split(",")[0]]


def step_fleet(work, kind, terminals, matrix, mode):
    playbook = UPDATE if kind == "ours" else BASELINE
    lab = Lab(work, terminals)
    timings, first = lab.up()
    out = {"lab": timings, "to_baseline": first, "runs": {}}
    out["runs"]["update"] = lab.measure(f"{kind}-update", playbook, ["-e", f"update_release={NEW}"])
    out["runs"]["noop"] = lab.measure(f"{kind}-noop", playbook, ["-e", f"update_release={NEW}"])
    if matrix:
        for forks in MATRIX_FORKS[mode]:
            out["runs"][f"noop_forks{forks}"] = lab.measure(f"{kind}-noop-f{forks}", playbook,
                                                            ["-e", f"update_release={NEW}"], forks=forks)
        out["runs"]["noop_nopipe"] = lab.measure(f"{kind}-noop-nopipe", playbook, ["-e", f"update_release={NEW}"],
                                                 pipelining=False)
    lab.down()
    return out


def step_nopipe(work, kind, terminals):
    playbook = UPDATE if kind == "ours" else BASELINE
    lab = Lab(work, terminals)
    timings, first = lab.up()
    out = {"lab": timings, "to_baseline": first, "runs": {}}
    out["runs"]["update_nopipe"] = lab.measure(f"{kind}-update-nopipe", playbook, ["-e", f"update_release={NEW}"],
                                               pipelining=False)
    lab.down()
    return out


def step_both(work, terminals, matrix, nopipe, mode):
    """ours-N and baseline-N in one lab session (one hold of the lock): ours first, on a fresh fleet;
    then the fleet back on 2026.11.0 (update.yml) and the baseline. Terminals then still hold 2026.12.0
    as their previous version, which only saves terminal-side work (downloads, unpacking)."""
    lab = Lab(work, terminals)
    timings, first = lab.up()
    out = {f"ours-{terminals}": {"lab": timings, "to_baseline": first, "runs": {}},
           f"baseline-{terminals}": {"lab": timings, "runs": {}}}
    nopipe_runs = {}
    for kind, playbook in (("ours", UPDATE), ("baseline", BASELINE)):
        runs = out[f"{kind}-{terminals}"]["runs"]
        if kind == "baseline":
            out[f"{kind}-{terminals}"]["to_baseline"] = lab.measure("back-to-baseline", UPDATE,
                                                                    ["-e", f"update_release={OLD}"])
        runs["update"] = lab.measure(f"{kind}-update", playbook, ["-e", f"update_release={NEW}"])
        runs["noop"] = lab.measure(f"{kind}-noop", playbook, ["-e", f"update_release={NEW}"])
        if matrix:
            for forks in MATRIX_FORKS[mode]:
                runs[f"noop_forks{forks}"] = lab.measure(f"{kind}-noop-f{forks}", playbook,
                                                         ["-e", f"update_release={NEW}"], forks=forks)
            runs["noop_nopipe"] = lab.measure(f"{kind}-noop-nopipe", playbook, ["-e", f"update_release={NEW}"],
                                              pipelining=False)
    if nopipe:
        for kind, playbook in (("ours", UPDATE), ("baseline", BASELINE)):
            lab.measure("back-to-baseline", UPDATE, ["-e", f"update_release={OLD}"])
            nopipe_runs[f"{kind}-nopipe"] = {"runs": {"update_nopipe": lab.measure(
                f"{kind}-update-nopipe", playbook, ["-e", f"update_release={NEW}"], pipelining=False)}}
    lab.down()
    out.update(nopipe_runs)
    return out


def step_keys(name, mode):
    if not name.startswith("both-"):
        return [name]
    n = int(name.split("-")[1])
    return [f"ours-{n}", f"baseline-{n}"] + (["ours-nopipe", "baseline-nopipe"] if n == NOPIPE_SIZE[mode] else [])


def plan(mode):
    """Steps, each one hold of the lab's lock of at most about 15 minutes."""
    if mode == "quick":
        return ["bytes", "both-10", "both-25"]
    return ["bytes", "ours-100", "baseline-100", "ours-10", "baseline-10", "both-25", "both-50"]


def run_step(name, mode, partial):
    work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    started = time.monotonic()
    log(f"step {name} ({mode}), work dir {work}")
    try:
        if name == "bytes":
            results = {name: step_bytes(work, mode)}
        elif name.endswith("-nopipe"):
            results = {name: step_nopipe(work, name.split("-")[0], NOPIPE_SIZE[mode])}
        elif name.startswith("both-"):
            n = int(name.split("-")[1])
            results = step_both(work, n, n == MATRIX_SIZE[mode], n == NOPIPE_SIZE[mode], mode)
        else:
            kind, n = name.split("-")
            results = {name: step_fleet(work, kind, int(n), int(n) == MATRIX_SIZE[mode], mode)}
    finally:
        # Whatever happened, the lab is left down for the next user of the lock.
        sh(["poslab", "down"], base_env(work), work / "lab.log", check=False)
    # The step's wall time is shared out evenly over what it measured, for the total.
    wall = round(time.monotonic() - started, 1)
    data = json.loads(partial.read_text()) if partial.exists() else {}
    for key, result in results.items():
        result["step_wall_s"] = round(wall / len(results), 1)
        result["step"] = name
        data.setdefault(mode, {})[key] = result
    partial.write_text(json.dumps(data, indent=1) + "\n")
    log(f"step {name} done in {wall} s")
    shutil.rmtree(work, ignore_errors=True)


def per_terminal(run):
    return round(run["cpu_s"] / run["terminals"], 4)


def assemble(partial, mode, date, out_json, png):
    data = json.loads(partial.read_text())[mode]
    b = data["bytes"]
    delta = sorted({t["catalog"]["bytes_downloaded"] for t in b["delta_transfers"].values()})
    full = sorted({t["catalog"]["bytes_downloaded"] for t in b["full_transfers"].values()})
    floor = b["floors"][b["floor"]]["bytes"]
    kinds = {t["catalog"]["transfer"] for t in b["delta_transfers"].values()}
    bytes_rows = {
        "full": max(full), "rsync_unpacked": b["rsync"].get("unpacked_pack_bytes"),
        "rsync_archive": b["rsync"].get("archive_bytes"), "delta": max(delta), "floor": floor,
    }
    scale = {}
    for kind in ("ours", "baseline"):
        for n in SIZES[mode]:
            step = data.get(f"{kind}-{n}")
            if step:
                for name, run in step["runs"].items():
                    scale.setdefault(kind, {}).setdefault(name, {})[n] = {
                        "cpu_s_per_terminal": per_terminal(run), "wall_s": run["wall_s"], "cpu_s": run["cpu_s"],
                        "rc": run["rc"], "forks": run["forks"], "pipelining": run["pipelining"]}
        step = data.get(f"{kind}-nopipe")
        if step:
            run = step["runs"]["update_nopipe"]
            scale.setdefault(kind, {})["update_nopipe"] = {run["terminals"]: {
                "cpu_s_per_terminal": per_terminal(run), "wall_s": run["wall_s"], "cpu_s": run["cpu_s"],
                "rc": run["rc"], "forks": run["forks"], "pipelining": False}}
    both = [n for n in SIZES[mode] if all(n in scale.get(k, {}).get("update", {}) for k in ("ours", "baseline"))]
    biggest = max(both)
    ours_update = scale["ours"]["update"][biggest]["cpu_s_per_terminal"]
    base_update = scale["baseline"]["update"][biggest]["cpu_s_per_terminal"]
    ours_noop = scale["ours"]["noop"][biggest]["cpu_s_per_terminal"]
    worst_noop = max(v["cpu_s_per_terminal"] for v in scale["ours"]["noop"].values())
    targets = {
        "noop_cpu_per_terminal_le_0.3": {"value": ours_noop, "target": TARGET_NOOP_CPU,
                                         "met": ours_noop <= TARGET_NOOP_CPU,
                                         "at": f"{biggest} terminals (worst of all sizes: {worst_noop})"},
        "update_cpu_le_third_of_baseline": {"value": round(ours_update / base_update, 3), "target": 0.333,
                                            "met": ours_update <= base_update * TARGET_UPDATE_RATIO,
                                            "at": f"{biggest} terminals"},
        "delta_le_2x_floor": {"value": round(max(delta) / floor, 2), "target": 2.0, "met": max(delta) <= 2 * floor},
        "delta_le_5pct_full": {"value": round(max(delta) / max(full), 4), "target": 0.05,
                               "met": max(delta) <= 0.05 * max(full)},
    }
    lab_terminal_s = data[f"ours-{biggest}"]["runs"]["update"].get("step_seconds_per_terminal", {})
    result = {
        "projection": projection(ours_update, round(sum(lab_terminal_s.values()), 1)),
        "date": date, "mode": mode,
        "command": "make bench" if mode == "full" else "make bench BENCH_ARGS=--quick",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
        "settings": {"default_forks": DEFAULT_FORKS, "default_pipelining": True, "waves": "update.yml defaults",
                     "matrix_size": MATRIX_SIZE[mode], "nopipe_size": NOPIPE_SIZE[mode], "sizes": SIZES[mode],
                     "baseline_playbook": BASELINE, "release": f"{OLD} -> {NEW}"},
        "bytes": {"rows": bytes_rows, "delta_transfer_kinds": sorted(kinds), "delta_all": delta, "full_all": full,
                  "catalog": b["catalog"], "floors": b["floors"], "floor": b["floor"], "rsync": b["rsync"]},
        "tasks_per_terminal": {k: sorted(set(b[k].values())) for k in
                               ("tasks_ours_update", "tasks_ours_noop", "tasks_baseline_update",
                                "tasks_baseline_noop")},
        "profile_update_top": b["profile_update"][:15], "profile_noop_top": b["profile_noop"][:15],
        "cpu": scale, "targets": targets,
        "steps_wall_s": {name: step["step_wall_s"] for name, step in data.items()},
        "bench_wall_s": round(sum(step["step_wall_s"] for step in data.values()), 1),
        "raw": data,
    }
    out_json.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, png)
    print(table(result))
    print(f"written: {out_json.relative_to(ROOT)}, {png.relative_to(ROOT)}")


def window_hours(window):
    start, end = window.split("-")
    minutes = [int(t[:2]) * 60 + int(t[3:]) for t in (start, end)]
    return ((minutes[1] - minutes[0]) % (24 * 60)) / 60


def projection(cpu_per_terminal, lab_terminal_s, fleet=100_000, forks=(25, 50), real_terminal_s=300,
               margin_h=0.5, cores_per_node=2):
    """A projection, not a measurement: AWX job slices needed to update `fleet` terminals in one night.

    Assumptions (all in the result): the fleet is split evenly over the regions of
    inventories/shared/regions.yml; each region runs in its own window less `margin_h` for the
    canary, the budget checks and the settle play; one slice is one ansible-playbook with `forks`
    terminals in flight, each taking `real_terminal_s` of wall time on a real terminal (the lab's,
    measured, is far shorter: no cellular latency); a slice is limited either by that latency
    (forks / real_terminal_s terminals per second) or by its node's CPU (cores / CPU-s per terminal),
    whichever is lower; the control-node CPU per terminal is the lab's, measured at its largest fleet.
    """
    regions = yaml.safe_load((ROOT / "inventories" / "shared" / "regions.yml").read_text())["regions"]
    per_region = fleet / len(regions)
    out = {"fleet": fleet, "cpu_s_per_terminal": cpu_per_terminal, "lab_terminal_wall_s": lab_terminal_s,
           "assumed_real_terminal_wall_s": real_terminal_s, "window_margin_h": margin_h,
           "cores_per_execution_node": cores_per_node, "total_cpu_hours": round(fleet * cpu_per_terminal / 3600, 1),
           "regions": {}}
    for name, region in sorted(regions.items()):
        hours = window_hours(region["maintenance_window"]) - margin_h
        row = {"window": region["maintenance_window"], "usable_h": hours, "terminals": round(per_region)}
        for f in forks:
            rate = min(f / real_terminal_s, cores_per_node / cpu_per_terminal)
            slices = -(-per_region // (rate * hours * 3600))
            row[f"forks_{f}"] = {"terminals_per_slice_per_h": round(rate * 3600), "slices": int(slices),
                                 "bound": "latency" if f / real_terminal_s < cores_per_node / cpu_per_terminal
                                 else "cpu", "cores_busy": round(slices * rate * cpu_per_terminal, 1)}
        out["regions"][name] = row
    return out


def table(r):
    lines = []
    rows = r["bytes"]["rows"]
    full, floor = rows["full"], rows["floor"]
    c = r["bytes"]["catalog"]
    lines.append(f"Bytes per terminal, catalog pack {OLD} -> {NEW} ({c['records_changed']} records changed), "
                 "measured in the lab")
    lines.append(f"  {'method':<50} {'bytes':>8} {'% full':>8} {'x floor':>8}")
    for name, label in (("full", "full download (pos_data_sync delta: false)"),
                        ("rsync_unpacked", "rsync, unpacked pack (ansible.posix.synchronize)"),
                        ("rsync_archive", "rsync, .tar.gz (ansible.posix.synchronize)"),
                        ("delta", "our delta (pos_data_sync transfers)"),
                        ("floor", f"floor ({r['bytes']['floor']})")):
        value = rows[name]
        if value is None:
            lines.append(f"  {label:<50} {'n/a':>8}")
        else:
            lines.append(f"  {label:<50} {value:>8} {100 * value / full:>7.2f}% {value / floor:>8.2f}")
    lines.append("")
    lines.append("Control-node CPU seconds per terminal (wall seconds), forks 25, pipelining on")
    sizes = r["settings"]["sizes"]
    lines.append(f"  {'run':<28}" + "".join(f"{n:>18}" for n in sizes))
    for kind in ("ours", "baseline"):
        for name in ("update", "noop"):
            cells = r["cpu"].get(kind, {}).get(name, {})
            row = f"  {kind + ' ' + ('full update' if name == 'update' else 'no-op re-run'):<28}"
            for n in sizes:
                v = cells.get(n) or cells.get(str(n))
                row += f"{v['cpu_s_per_terminal']:>9.3f} ({v['wall_s']:>5.0f} s)" if v else f"{'-':>18}"
            lines.append(row)
    lines.append("")
    lines.append(f"Matrix at {r['settings']['matrix_size']} terminals (no-op) and {r['settings']['nopipe_size']} "
                 "(full update, pipelining off): CPU-s per terminal (wall s)")
    for kind in ("ours", "baseline"):
        for name, cells in r["cpu"].get(kind, {}).items():
            if name in ("update", "noop"):
                continue
            for n, v in cells.items():
                lines.append(f"  {kind:<9} {name:<16} {n:>4} terminals {v['cpu_s_per_terminal']:>8.3f} "
                             f"({v['wall_s']:.0f} s)")
    lines.append("")
    for name, t in r["targets"].items():
        lines.append(f"  target {name:<34} {t['value']:>8} (limit {t['target']}) {'met' if t['met'] else 'MISSED'}")
    lines.append(f"  bench wall time {r['bench_wall_s'] / 60:.0f} min")
    return "\n".join(lines)


def plot(r, png):
    fig, (cpu_ax, wall_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {("ours", "update"): ("C0", "-", "o"), ("ours", "noop"): ("C0", "--", "s"),
              ("baseline", "update"): ("C3", "-", "o"), ("baseline", "noop"): ("C3", "--", "s")}
    for (kind, name), (color, line, marker) in styles.items():
        cells = r["cpu"].get(kind, {}).get(name, {})
        sizes = sorted(int(n) for n in cells)
        if not sizes:
            continue
        label = f"{'posfleet update.yml' if kind == 'ours' else 'builtin baseline'}, " \
                f"{'full update' if name == 'update' else 'no-op re-run'}"
        cpu = [cells.get(n, cells.get(str(n)))["cpu_s_per_terminal"] for n in sizes]
        wall = [cells.get(n, cells.get(str(n)))["wall_s"] for n in sizes]
        cpu_ax.plot(sizes, cpu, color=color, linestyle=line, marker=marker, label=label)
        wall_ax.plot(sizes, wall, color=color, linestyle=line, marker=marker, label=label)
    cpu_ax.axhline(TARGET_NOOP_CPU, color="grey", linewidth=0.8, linestyle=":")
    cpu_ax.text(sizes[0], TARGET_NOOP_CPU, " no-op target 0.3", va="bottom", fontsize=8, color="grey")
    cpu_ax.set(xlabel="terminals", ylabel="control-node CPU s per terminal", title="CPU per terminal")
    wall_ax.set(xlabel="terminals", ylabel="wall s", title="wall time of the run")
    for ax in (cpu_ax, wall_ax):
        ax.set_xticks([int(n) for n in r["settings"]["sizes"]])
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    wall_ax.legend(fontsize=8)
    fig.suptitle(f"posfleet lab benchmark {r['date']}: {r['machine']['cpus']} cores, forks 25, pipelining on")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("run", "step", "assemble"):
        p = sub.add_parser(name)
        p.add_argument("--quick", action="store_true", help="sizes 10 and 25 only, matrix at 25")
        p.add_argument("--date", default=datetime.date.today().isoformat())
        if name == "step":
            p.add_argument("name")
        if name == "run":
            p.add_argument("--resume", action="store_true", help="skip the steps already in the partial file")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    suffix = "" if mode == "full" else "-quick"
    partial = results / f"partial-{args.date}{suffix}.json"
    if args.cmd == "step":
        run_step(args.name, mode, partial)
    elif args.cmd == "run":
        done = json.loads(partial.read_text()).get(mode, {}) if args.resume and partial.exists() else {}
        if not args.resume and partial.exists():
            partial.unlink()
        for name in plan(mode):
            keys = step_keys(name, mode)
            if all(key in done for key in keys):
                log(f"step {name}: already in {partial.name}, skipped")
                continue
            # Each step holds the lab's lock only for itself, so others can use the lab in between.
            argv = ["flock", LOCK, sys.executable, __file__, "step", name, "--date", args.date]
            proc = subprocess.run(argv + (["--quick"] if args.quick else []), cwd=ROOT, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"step {name} failed (exit {proc.returncode}); re-run with --resume")
    if args.cmd in ("run", "assemble"):
        assemble(partial, mode, args.date, results / f"{args.date}{suffix}.json",
                 results / f"{args.date}{suffix}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
