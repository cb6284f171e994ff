"""Command line of the lab: `poslab up|down|status|exec|fault|acquirer|dp|ledger`."""

import argparse
import json
import os
import socket
import sys
from concurrent.futures import ThreadPoolExecutor

from . import checkin, faults, flash, fleet, ledger, lifecycle, supervisor
from . import terminal as term


def status_of(terminal):
    """One terminal's row for `poslab status`: reachability from the control node and posd's view."""
    row = {k: terminal[k] for k in ("serial", "model", "region", "ip")}
    try:
        with socket.create_connection((terminal["ip"], 22), timeout=1):
            row["reachable"] = True
    except OSError:
        row["reachable"] = False
    row["powered"] = supervisor.init_pid(terminal) is not None
    answer = term.posctl(terminal, "status") if row["powered"] else {"ok": False, "error": "powered off"}
    if answer.get("ok"):
        row.update(state=answer.get("state"), app_version=answer.get("app_version"), packs=answer.get("packs"),
                   pending=answer.get("pending"), healthy=answer.get("healthy"))
    else:
        row.update(state="unknown", app_version=None, packs=None, pending=None, healthy=None,
                   error=answer.get("error"))
    return row


def cmd_status(args):
    terminals = fleet.load()
    if not terminals:
        raise SystemExit("poslab: the lab is not up; `poslab up` boots it")
    with ThreadPoolExecutor(max_workers=16) as pool:
        rows = list(pool.map(status_of, terminals))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'SERIAL':10} {'MODEL':13} {'REGION':11} {'IP':12} {'SSH':4} {'STATE':15} {'APP':8} "
          f"{'PENDING':>7}  PACKS")
    for r in rows:
        packs = ",".join(f"{k}={v}" for k, v in sorted((r["packs"] or {}).items()))
        pending = "-" if r["pending"] is None else str(r["pending"])
        ssh = "yes" if r["reachable"] else "NO"
        print(f"{r['serial']:10} {r['model']:13} {r['region']:11} {r['ip']:12} {ssh:4} "
              f"{r['state'] or '-':15} {r['app_version'] or '-':8} {pending:>7}  {packs or r.get('error', '')}")
    return 0


def cmd_exec(args):
    argv = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not argv:
        raise SystemExit("poslab: usage: poslab exec SERIAL -- CMD...")
    os.execvp("nsenter", term.exec_argv(fleet.find(args.serial), argv))


def cmd_ledger(args):
    report = ledger.reconcile()
    total = ledger.totals(report)
    if args.json:
        print(json.dumps({"terminals": report, "totals": total}, indent=1))
    else:
        print(f"{'SERIAL':10} {'GENERATED':>9} {'UPLOADED':>8} {'PENDING':>7} {'MISSING':>7} {'DUPLICATED':>10}")
        for e in report:
            cells = [e[k] if e[k] is not None else "?" for k in ("generated", "uploaded", "pending", "missing",
                                                                   "duplicated")]
            print(f"{e['serial']:10} {cells[0]:>9} {cells[1]:>8} {cells[2]:>7} {cells[3]:>7} {cells[4]:>10}")
        print(f"{'TOTAL':10} {total['generated']:>9} {total['uploaded']:>8} {total['pending']:>7} "
              f"{total['missing']:>7} {total['duplicated']:>10}")
        if total["unreadable"]:
            print(f"{total['unreadable']} journal(s) could not be read (terminal powered off?)")
    return 1 if total["missing"] or total["duplicated"] or total["unreadable"] else 0


def cmd_checkin(args):
    if args.action == "up":
        if not fleet.load():
            raise SystemExit("poslab: the lab is not up; `poslab up` boots it")
        checkin.up(args.max_running, args.max_failures, args.backoff, args.report_dir)
    elif args.action == "down":
        checkin.down()
    elif args.action == "assign":
        if not args.release:
            raise SystemExit("poslab: usage: poslab checkin assign RELEASE (or none)")
        checkin.assign(None if args.release == "none" else args.release)
    else:
        print(checkin.status())
    return 0


def parser():
    p = argparse.ArgumentParser(prog="poslab", description="A fleet of simulated POS terminals in namespaces.")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="boot the fleet, or bring it to --terminals N (idempotent)")
    up.add_argument("--terminals", type=int, default=None, help="fleet size (default: as now, else 6)")
    up.add_argument("--seed", type=int, default=None, help="fleet shape seed (default: as now, else 1)")
    up.add_argument("--no-wait", action="store_true", help="do not wait for every terminal to answer on ssh")
    up.add_argument("--flash", choices=flash.KINDS, default="auto",
                    help="where new terminals keep their flash: memory (tmpfs), disk (an ext4 image on a loop "
                         "device), or auto (memory while the fleet's flash fits in half the available memory)")
    sub.add_parser("down", help="remove everything the lab made")
    st = sub.add_parser("status", help="every terminal's reachability and posd state")
    st.add_argument("--json", action="store_true")
    ex = sub.add_parser("exec", help="run a command inside a terminal: poslab exec SERIAL -- CMD...")
    ex.add_argument("serial")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    fa = sub.add_parser("fault", help="inject a fault: " + ", ".join(faults.KINDS))
    fa.add_argument("serial")
    fa.add_argument("kind")
    fa.add_argument("args", nargs="*")
    ac = sub.add_parser("acquirer", help="take the acquirer host down or up")
    ac.add_argument("mode", choices=["down", "up"])
    dp = sub.add_parser("dp", help="damage a region's distribution point: " + ", ".join(faults.DP_ACTIONS))
    dp.add_argument("region")
    dp.add_argument("action")
    dp.add_argument("args", nargs="*")
    le = sub.add_parser("ledger", help="reconcile terminal journals against the acquirer ledger")
    le.add_argument("--json", action="store_true")
    ci = sub.add_parser("checkin", help="the auto-update service (ansible-rulebook): up, down, status, assign")
    ci.add_argument("action", choices=["up", "down", "status", "assign"])
    ci.add_argument("release", nargs="?", help="assign: the release every lab terminal should run (none: unassign)")
    ci.add_argument("--max-running", type=int, default=2, help="updates from check-ins at once (default 2)")
    ci.add_argument("--max-failures", type=int, default=3, help="failed updates before an operator is needed")
    ci.add_argument("--backoff", type=int, default=300, help="seconds after a first failed update (doubles)")
    ci.add_argument("--report-dir", help="where the runs it starts write their reports")
    sub.add_parser("_supervise", help=argparse.SUPPRESS)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.cmd == "up":
        current = fleet.load()
        seed = args.seed if args.seed is not None else (fleet.saved_seed() or 1)
        size = args.terminals if args.terminals is not None else (len(current) or 6)
        if size < 1:
            raise SystemExit("poslab: --terminals must be at least 1")
        lifecycle.up(size, seed, wait=not args.no_wait, flash_kind=args.flash)
        return 0
    if args.cmd == "down":
        lifecycle.down()
        return 0
    if args.cmd == "_supervise":
        supervisor.main()
        return 0
    lifecycle.require_root()
    if args.cmd == "status":
        return cmd_status(args)
    if args.cmd == "exec":
        return cmd_exec(args)
    if args.cmd == "fault":
        faults.apply(fleet.find(args.serial), args.kind, args.args)
        return 0
    if args.cmd == "acquirer":
        faults.acquirer(args.mode)
        return 0
    if args.cmd == "dp":
        faults.distribution_point(args.region, args.action, args.args)
        return 0
    if args.cmd == "ledger":
        return cmd_ledger(args)
    if args.cmd == "checkin":
        return cmd_checkin(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
