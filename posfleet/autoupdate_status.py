"""`posfleet-autoupdate`: the auto-update status view, and an operator's release of a held terminal.

    posfleet-autoupdate status [-i INVENTORY] [--store PATH] [--json | --html FILE]
    posfleet-autoupdate release SERIAL [--store PATH]

For every terminal of the inventory: the release assigned to it (posfleet_release), what it said it runs at
its last check-in, when that was, its state in the check-in store (idle, queued, running, backoff, held) and
its last outcome; then the fleet's counts and the last refused check-ins. docs/auto-update.md explains them.
"""

from __future__ import annotations

import argparse
import collections
import html
import json
import os
import sys

from posfleet import autoupdate
from posfleet import checkin as checkin_store
from posfleet import report as posreport

DEFAULT_STORE = "/var/lib/posfleet/checkin/store.db"
COLUMNS = ("serial", "assigned", "runs", "behind", "last_checkin", "state", "failures", "last_outcome")
# The console lists this many terminals; --json and --html list every one.
CONSOLE_ROWS = 50


def rows(fleet, store, now, releases=None):
    """One row per terminal of the inventory (and per serial the store knows that the inventory does not)."""
    releases = releases or autoupdate.Releases()
    known = {row["serial"]: row for row in store.status(now)}
    serials = sorted(set(fleet.hostvars) | set(known))
    out = []
    for serial in serials:
        hostvars = fleet.hostvars.get(serial)
        stored = known.get(serial, {})
        assigned = (hostvars or {}).get(autoupdate.ASSIGNED)
        behind = None
        if assigned and stored.get("app_version") is not None:
            try:
                target = releases.target(str(assigned), hostvars)
                behind = autoupdate.runs_other_than(stored, target)
            except autoupdate.AutoUpdateError:
                behind = None
        out.append({
            "serial": serial, "in_inventory": hostvars is not None,
            "assigned": None if assigned is None else str(assigned),
            "runs": stored.get("app_version"), "packs": stored.get("packs"), "behind": behind,
            "last_checkin": stored.get("last_checkin"), "state": stored.get("state", "never_checked_in"),
            "failures": stored.get("failures", 0), "next_try": stored.get("next_try"),
            "last_decision": stored.get("last_decision"), "last_outcome": stored.get("last_outcome"),
            "last_outcome_at": stored.get("last_outcome_at"), "last_run_id": stored.get("last_run_id"),
        })
    return out


def summary(table, refusals):
    return {
        "terminals": len(table),
        "by_state": dict(collections.Counter(row["state"] for row in table)),
        "by_assigned_release": dict(collections.Counter(row["assigned"] or "(none)" for row in table)),
        "behind": sum(1 for row in table if row["behind"]),
        "held": [row["serial"] for row in table if row["state"] == checkin_store.STATE_HELD],
        "refused": refusals,
    }


def _cell(row, key):
    value = row[key]
    if key == "behind":
        return "?" if value is None else ("yes" if value else "no")
    return "-" if value is None else str(value)


def console(table, facts):
    lines = [f"{facts['terminals']} terminals; by state: "
             + ", ".join(f"{state} {count}" for state, count in sorted(facts["by_state"].items()))]
    lines.append("by assigned release: "
                 + ", ".join(f"{release} {count}" for release, count in sorted(facts["by_assigned_release"].items())))
    lines.append(f"behind their assigned release at their last check-in: {facts['behind']}")
    if facts["held"]:
        lines.append(f"HELD, waiting for an operator ({len(facts['held'])}): {', '.join(facts['held'])}"
                     " - see their last outcome, then `posfleet-autoupdate release SERIAL`")
    widths = {key: max([len(key)] + [len(_cell(row, key)) for row in table[:CONSOLE_ROWS]]) for key in COLUMNS}
    lines.append("  ".join(key.upper().ljust(widths[key]) for key in COLUMNS))
    for row in table[:CONSOLE_ROWS]:
        lines.append("  ".join(_cell(row, key).ljust(widths[key]) for key in COLUMNS))
    if len(table) > CONSOLE_ROWS:
        lines.append(f"... and {len(table) - CONSOLE_ROWS} more: --json or --html lists every terminal")
    if facts["refused"]:
        lines.append("last refused check-ins:")
        lines += [f"  {item['at']} {item['serial'] or '?'} from {item['remote']}: {item['reason']} {item['detail']}"
                  for item in facts["refused"]]
    return "\n".join(lines)


def page(table, facts):
    """The status view as one HTML page, in the run report's style; every value escaped."""
    esc = html.escape
    head = "".join(f"<th>{esc(key)}</th>" for key in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{esc(_cell(row, key))}</td>" for key in COLUMNS) + "</tr>" for row in table)
    counts = "".join(f"<tr><td>{esc(state)}</td><td class=num>{count}</td></tr>"
                     for state, count in sorted(facts["by_state"].items()))
    refused = "".join("<tr>" + "".join(f"<td>{esc(str(item[key] or ''))}</td>"
                                       for key in ("at", "serial", "remote", "reason", "detail")) + "</tr>"
                      for item in facts["refused"])
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>posfleet auto update</title>"
            f"<style>{posreport.page_style()}</style></head><body><h1>posfleet auto update</h1>"
            f"<p>{facts['terminals']} terminals, {facts['behind']} behind their assigned release, "
            f"{len(facts['held'])} held for an operator.</p>"
            f"<h2>By state</h2><table><tbody>{counts}</tbody></table>"
            f"<h2>Terminals</h2><table id=terminals><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"<h2>Refused check-ins</h2><table><thead><tr><th>at</th><th>serial</th><th>from</th><th>reason</th>"
            f"<th>detail</th></tr></thead><tbody>{refused}</tbody></table></body></html>\n")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="posfleet-autoupdate", description=__doc__.partition("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="every terminal's assigned release, check-in and outcome")
    status.add_argument("-i", "--inventory", help="the inventory (default: ansible.cfg's)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--html", metavar="FILE", help="write the view as an HTML page")
    release = sub.add_parser("release", help="let a terminal held after repeated failures try again")
    release.add_argument("serial")
    for each in (status, release):
        each.add_argument("--store", default=os.environ.get("POSFLEET_CHECKIN_STORE", DEFAULT_STORE),
                          help="the check-in store (default: $POSFLEET_CHECKIN_STORE, else %(default)s)")
    args = parser.parse_args(argv)
    try:
        store = checkin_store.CheckinStore(args.store)
        now = autoupdate.utcnow()
        if args.command == "release":
            if not store.release(args.serial, now, posreport.local_user()):
                print(f"posfleet-autoupdate: {args.serial} is not held; nothing to do", file=sys.stderr)
                return 1
            print(f"{args.serial} may be updated again at its next check-in")
            return 0
        fleet = autoupdate.Fleet(args.inventory)
        fleet.load()
        table = rows(fleet, store, now)
        facts = summary(table, store.refusals(10))
    except (autoupdate.AutoUpdateError, checkin_store.CheckinStoreError) as exc:
        print(f"posfleet-autoupdate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"summary": facts, "terminals": table}, indent=1))
    elif args.html:
        with open(args.html, "w", encoding="utf-8") as handle:
            handle.write(page(table, facts))
        print(f"wrote {args.html}")
    else:
        print(console(table, facts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
