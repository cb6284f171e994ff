# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that turn per-terminal results into the fleet views an operator reads."""

from __future__ import annotations

import collections
import os

import yaml
from ansible_collections.posfleet.fleet.plugins.plugin_utils import posfleet_survey as survey

from posfleet import debs


def _terminal(hostvars, host):
    # pos_terminal is a fact pos_facts returns: under ansible_facts only (ansible.cfg, inject_facts_as_vars).
    return ((hostvars.get(host) or {}).get("ansible_facts") or {}).get("pos_terminal")


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


def pos_pack_urls(packs, base):
    """The manifest's packs with each relative artifact URL made absolute against a distribution point."""
    return {name: dict(pack, url="%s/%s" % (base.rstrip("/"), pack["url"].lstrip("/"))) for name, pack in packs.items()}


def pos_drift_report(hostvars, hosts):
    """{serial: [drift lines]} for every targeted terminal that does not run the release intact.

    A terminal that could not be audited (unreachable) is listed too: an audit must not call it intact.
    """
    report = {}
    for host in sorted(hosts):
        variables = hostvars.get(host) or {}
        if "verify_drift" not in variables:
            report[host] = ["not audited: the terminal did not answer"]
        elif variables["verify_drift"]:
            report[host] = list(variables["verify_drift"])
    return report


def pos_os_compliance(hostvars, hosts):
    """The fleet summary of an OS patch audit: one line per OS package and version that audited terminals lag.

    Each terminal's `verify_os` ({name: installed version or None}, from pos_verify) against its target's
    os_packages; versions compared in Debian's ordering (dpkg --compare-versions, through posfleet.debs).
    """
    behind = collections.defaultdict(lambda: collections.defaultdict(list))
    for host in sorted(hosts):
        variables = hostvars.get(host) or {}
        wanted = ((variables.get("pos_update_target") or {}).get("os_packages")) or {}
        found = variables.get("verify_os") or {}
        for name, version in sorted(wanted.items()):
            installed = found.get(name) if name in found else "unknown"
            if installed == version:
                continue
            if installed in (None, "unknown"):
                how = "not installed" if installed is None else "not audited"
            else:
                how = "older" if debs.compare_versions(installed, "<<", version) else "newer"
            behind[(name, version, how)][installed or how].append(host)
    lines = []
    for (name, version, how), by_version in sorted(behind.items()):
        count = sum(len(hosts_at) for hosts_at in by_version.values())
        words = {"older": "run %s older than %s" % (name, version), "newer": "run %s newer than %s" % (name, version),
                 "not installed": "lack %s (release: %s)" % (name, version),
                 "not audited": "could not be audited for %s %s" % (name, version)}[how]
        detail = ", ".join("%s on %d" % (installed, len(at)) for installed, at in sorted(by_version.items())
                           if installed not in ("not installed", "not audited"))
        lines.append("%d terminal(s) %s%s" % (count, words, " (%s)" % detail if detail else ""))
    return lines


def _without_descriptions(option):
    """An argument spec option without its descriptions, suboptions included."""
    kept = {key: value for key, value in option.items() if key != "description"}
    if isinstance(kept.get("options"), dict):
        kept["options"] = {name: _without_descriptions(sub) for name, sub in kept["options"].items()}
    return kept


def pos_role_options(roles, roles_dir, spec="main"):
    """The options of several roles' argument specs (meta/argument_specs.yml), merged into one spec.

    For one check of them all (the survey's, pos_preflight's options_spec), instead of one
    argument-spec task per role. The descriptions are left out: they check nothing, and every terminal's
    survey would copy them. An option two roles define differently is refused: one spec could not check
    both.
    """
    options = {}
    for role in roles:
        path = os.path.join(roles_dir, role, "meta", "argument_specs.yml")
        with open(path, encoding="utf-8") as handle:
            specs = yaml.safe_load(handle) or {}
        try:
            found = specs["argument_specs"][spec].get("options") or {}
        except (KeyError, TypeError, AttributeError):
            raise ValueError("%s has no argument spec %r" % (path, spec)) from None
        for name, described in found.items():
            option = _without_descriptions(described)
            if name in options and options[name] != option:
                raise ValueError("option %s is specified differently by two roles (%s among %s)"
                                 % (name, role, ", ".join(roles)))
            options[name] = option
    return options


class FilterModule:
    """posfleet filters."""

    def filters(self):
        return {"pos_fleet_summary": pos_fleet_summary, "pos_table": pos_table,
                "pos_release_target": survey.release_target, "pos_pack_urls": pos_pack_urls,
                "pos_drift_report": pos_drift_report, "pos_os_compliance": pos_os_compliance,
                "pos_role_options": pos_role_options}
