# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that turn per-terminal results into the fleet views an operator reads."""

from __future__ import annotations

import collections


def _terminal(hostvars, host):
    return (hostvars.get(host) or {}).get("pos_terminal")


def pos_fleet_summary(hostvars, hosts):
    """Group the terminals' facts by model and region; a terminal without facts counts as unreachable."""
    groups = collections.OrderedDict()
    for host in sorted(hosts):
        variables = hostvars.get(host) or {}
        key = (variables.get("pos_model", "?"), variables.get("pos_region", "?"))
        row = groups.setdefault(key, {"model": key[0], "region": key[1], "terminals": 0, "reachable": 0,
                                      "app_versions": collections.Counter(), "pending": 0, "unhealthy": 0,
                                      "selling": 0})
        row["terminals"] += 1
        facts = _terminal(hostvars, host)
        if not facts:
            continue
        row["reachable"] += 1
        row["app_versions"][facts.get("app_version") or "none"] += 1
        posd = facts.get("posd") or {}
        row["pending"] += posd.get("pending") or 0
        row["unhealthy"] += 0 if posd.get("healthy") else 1
        row["selling"] += 1 if posd.get("state") in ("idle", "in-transaction") else 0
    rows = []
    for _key, row in sorted(groups.items()):
        row["app_versions"] = dict(sorted(row["app_versions"].items()))
        rows.append(row)
    return rows


def pos_table(rows, columns):
    """Render rows (dicts) as an aligned text table, one string per line, for a debug message."""
    cells = [[str(c) for c in columns]]
    for row in rows:
        values = []
        for column in columns:
            value = row.get(column, "")
            if isinstance(value, dict):
                value = " ".join("%s:%s" % item for item in value.items()) or "-"
            values.append(str(value))
        cells.append(values)
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return ["  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip() for line in cells]


class FilterModule:
    """posfleet filters."""

    def filters(self):
        return {"pos_fleet_summary": pos_fleet_summary, "pos_table": pos_table}
