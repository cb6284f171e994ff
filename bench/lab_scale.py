"""Benchmark of the lab itself: boot time, memory per terminal, reachability and teardown time.

Targets (issue: lab foundation): 100 terminals boot in under 60 s on 2 cores, use under 20 MB of
memory each, and `poslab down` takes under 30 s. This prints the measured figures next to the
targets and saves them to bench/results/lab-scale-<date>.json; it does not fail on a miss, it
reports it.

    .venv/bin/python bench/lab_scale.py [--terminals 100]
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lab"))

from poslab import config, fleet, net  # noqa: E402


def sh(*argv, timeout=900):
    started = time.monotonic()
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                            check=False)
    if result.returncode != 0:
        raise SystemExit(f"{argv} failed: {result.stderr[-2000:]}")
    return time.monotonic() - started, result


def pss_kib(pid):
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def terminal_memory():
    """PSS of every process inside the terminals' namespaces, and the flash (tmpfs) they hold."""
    inodes = {os.stat(f"/run/netns/{net.terminal_ns(t)}").st_ino for t in fleet.load()}
    total = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.stat(entry / "ns" / "net").st_ino in inodes:
                    total += pss_kib(entry.name)
            except OSError:
                continue
    flash = 0
    for terminal in fleet.load():
        stats = os.statvfs(config.TERMINALS / terminal["serial"] / "flash")
        flash += (stats.f_blocks - stats.f_bfree) * stats.f_frsize // 1024
    return total, flash


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terminals", type=int, default=100)
    args = parser.parse_args()
    n = args.terminals
    sh(ROOT / "bin" / "poslab", "down")
    # The image is built once and cached; booting is what is measured.
    boot_s, _ = sh(ROOT / "bin" / "poslab", "up", "--terminals", n)
    time.sleep(10)  # let every posd settle into its sales loop before memory is read
    pss, flash = terminal_memory()
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    started = time.monotonic()
    ping = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible"), "all", "-m", "ansible.builtin.ping", "-o",
                           "-f", "50"], capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    ping_s = time.monotonic() - started
    reached = ping.stdout.count("SUCCESS")
    down_s, _ = sh(ROOT / "bin" / "poslab", "down")
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "terminals": n, "cpus": os.cpu_count(),
        "boot_seconds": round(boot_s, 1), "boot_target_seconds": 60,
        "memory_pss_mib_per_terminal": round(pss / n / 1024, 1),
        "flash_used_mib_per_terminal": round(flash / n / 1024, 1), "memory_target_mib": 20,
        "ansible_ping_reached": reached, "ansible_ping_seconds": round(ping_s, 1),
        "down_seconds": round(down_s, 1), "down_target_seconds": 30,
    }
    out = ROOT / "bench" / "results" / f"lab-scale-{datetime.date.today().isoformat()}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    rows = [("boot", f"{results['boot_seconds']} s", "< 60 s", results["boot_seconds"] < 60),
            ("memory (PSS) per terminal", f"{results['memory_pss_mib_per_terminal']} MiB", "< 20 MiB",
             results["memory_pss_mib_per_terminal"] < 20),
            ("flash used per terminal (tmpfs)", f"{results['flash_used_mib_per_terminal']} MiB", "-", True),
            ("ansible ping", f"{reached}/{n} in {results['ansible_ping_seconds']} s", f"{n}/{n}", reached == n),
            ("down", f"{results['down_seconds']} s", "< 30 s", results["down_seconds"] < 30)]
    print(f"lab scale, {n} terminals on {os.cpu_count()} cores")
    for name, value, target, ok in rows:
        print(f"  {name:34} {value:>22}   target {target:9} {'ok' if ok else 'MISSED'}")
    print(f"saved {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
