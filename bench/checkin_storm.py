"""Benchmark of issue 15: how fast the lab's check-in service answers a reconnect storm.

    .venv/bin/python bench/checkin_storm.py [--checkins 3000] [--concurrency 50] [--out FILE.json]
    make bench-checkin                    # the lab up, the service started, this, the lab left up

Every lab terminal's key is used to sign check-ins that say what the terminal really runs (so each is
answered `current` when the fleet runs its assigned release, and starts no
update: this measures the answering, not the updates, whose pace is
`max_running` at a time; tests/integration/test_update_auto.py times those). The check-ins go over the
lab bridge to ansible-rulebook's event source as the agents' do, `--concurrency` at a time, each with its
own nonce, each verified, recorded and decided against the inventory and the signed release. Printed and
written to bench/results/checkin-storm-<date>.json: check-ins answered per minute, latency percentiles and
the answers by decision; any refusal or error is counted and fails the run. (The bytes of one check-in
are the agent's, measured in tests/unit/test_checkin_agent.py.)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import http.client
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "collections"))
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_checkin  # noqa: E402

STATE = Path("/var/lib/poslab")
HOST, PORT = "10.231.0.1", 5080


def fleet():
    """[(serial, key, app_version, packs)] of every lab terminal, as posd reports what it runs."""
    rows = json.loads(subprocess.run([str(ROOT / "bin" / "poslab"), "status", "--json"], capture_output=True,
                                     text=True, check=True).stdout)
    terminals = []
    for row in rows:
        key = (STATE / "checkin" / "keys" / f"{row['serial']}.key").read_text().strip()
        terminals.append((row["serial"], key, row["app_version"], row["packs"] or {}))
    return terminals


def one(terminal):
    serial, key, app, packs = terminal
    body = pos_checkin.encode(pos_checkin.message(serial, app, packs, "bench"))
    headers = {"Content-Type": "application/json", pos_checkin.HEADER: pos_checkin.sign(body, key)}
    started = time.monotonic()
    conn = http.client.HTTPConnection(HOST, PORT, timeout=30)
    try:
        conn.request("POST", "/checkin", body=body, headers=headers)
        answer = conn.getresponse()
        reply = json.loads(answer.read() or b"{}")
        status = answer.status
    except (OSError, http.client.HTTPException, ValueError) as exc:
        status, reply = 0, {"error": str(exc)}
    finally:
        conn.close()
    return status, reply.get("decision") or reply.get("refused") or reply.get("error"), time.monotonic() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkins", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    terminals = fleet()
    work = [terminals[i % len(terminals)] for i in range(args.checkins)]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        results = list(pool.map(one, work))
    wall = time.monotonic() - started
    latencies = sorted(r[2] for r in results)
    answers = {}
    for status, decision, _ in results:
        answers[f"{status} {decision}"] = answers.get(f"{status} {decision}", 0) + 1
    figures = {
        "date": datetime.date.today().isoformat(), "terminals": len(terminals), "checkins": args.checkins,
        "concurrency": args.concurrency, "wall_s": round(wall, 2),
        "answered_per_minute": round(args.checkins / wall * 60),
        "latency_ms": {"p50": round(statistics.median(latencies) * 1000, 1),
                       "p95": round(latencies[int(0.95 * (len(latencies) - 1))] * 1000, 1),
                       "max": round(latencies[-1] * 1000, 1)},
        "answers": answers,
    }
    print(json.dumps(figures, indent=1))
    out = args.out or ROOT / "bench" / "results" / f"checkin-storm-{figures['date']}.json"
    out.write_text(json.dumps(figures, indent=1) + "\n")
    print(f"written to {out}")
    bad = {k: v for k, v in answers.items() if not k.startswith("202 ")}
    if bad:
        print(f"NOT all answered: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
