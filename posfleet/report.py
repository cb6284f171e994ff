"""Run reports on the control node: report.json, report.csv, report.html, retry.limit and the audit log.

The callback plugin (plugins/callback/posfleet_report.py) builds one report document per run and
hands it to write_run() and append_audit(); merge() joins the documents of AWX job slices into one.
The document's shape is posfleet/report.schema.json and docs/reports.md; validate() checks it before
anything is written, so a report on disk always matches the schema.

Only the fields the schema names reach a report, which is how no secret does: there is no free-form
field but `reason`, and the callback fills it with a failure message, never a variable's value.
Standard library only (jsonschema is imported by validate() alone).
"""

import argparse
import collections
import contextlib
import csv
import datetime
import fcntl
import getpass
import hashlib
import html
import io
import json
import os
import re
import secrets
import socket
import stat
import sys
from pathlib import Path

from posfleet import statuses

SCHEMA_ID = "posfleet-report/1"
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
# The vocabulary is posfleet.status's; these names are the report's view of it.
STATUSES = statuses.OUTCOMES
RETRY_STATUSES = statuses.RETRY
# The rows report.html lists with their reasons: every terminal not at the release, unfit ones too,
# although retry.limit leaves them out (no re-run makes the release fit their flash).
PROBLEM_STATUSES = tuple(status for status in STATUSES if status not in statuses.AT_RELEASE)
# The update pipeline's steps in the order they run; a CSV has one column for each, and for any
# other step a document names.
STEPS = ("preflight", "quiesce", "txn_upload", "backup", "package", "data_sync", "reboot", "verify", "rollback")
# The console lists at most this many terminals of each status and cause (deferred_by) with their reasons,
# and counts the rest: a fleet of 100,000 deferred by their windows is one line, not 100,000. The report
# files list every one.
CONSOLE_PER_GROUP = 10
# report.html shows the terminals table a page at a time: 100,000 rows at once would not open.
HTML_PAGE_SIZE = 500
# ... and the first this many problem terminals of each status and cause in its problems list.
HTML_PROBLEMS_PER_GROUP = 20
FILE_MODE = 0o640
DIR_MODE = 0o750
LATEST = "latest"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
UTC = datetime.timezone.utc


class ReportError(ValueError):
    """A report document that does not match the schema, or a report that cannot be written."""


# --- the document ----------------------------------------------------------------------------------

def _where(path):
    """`terminals[3].status` from a jsonschema error path."""
    where = ""
    for part in path:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    return where or "(top level)"


def validate(doc):
    """Check a report document against report.schema.json and the rules a schema cannot say.

    Raises ReportError naming the field (`terminals[2].statsu`) and, for a row, its serial. Beyond the
    schema: no serial twice, rows sorted by serial, totals equal to the rows' counts.
    """
    import fastjsonschema  # noqa: PLC0415  (only validation needs them; the rest of the module is stdlib)
    import jsonschema  # noqa: PLC0415

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    # The check itself is compiled (jsonschema takes minutes over 100,000 terminals, this seconds); the
    # schema's keywords mean the same in both. jsonschema only words the error of a document that fails.
    try:
        fastjsonschema.compile(schema)(doc)
        errors = []
    except fastjsonschema.JsonSchemaException:
        validator = jsonschema.Draft202012Validator(schema)
        errors = sorted(validator.iter_errors(doc), key=lambda error: list(error.absolute_path))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        path = list(error.absolute_path)
        serial = ""
        if len(path) >= 2 and path[0] == "terminals" and isinstance(path[1], int):
            row = doc["terminals"][path[1]]
            if isinstance(row, dict) and isinstance(row.get("serial"), str):
                serial = f" (terminal {row['serial']})"
        more = f"; {len(errors) - 1} more problem(s)" if len(errors) > 1 else ""
        raise ReportError(f"report {doc.get('run_id', '?') if isinstance(doc, dict) else '?'}: "
                          f"{_where(path)}{serial}: {error.message}{more}")
    serials = [row["serial"] for row in doc["terminals"]]
    twice = sorted(serial for serial, count in collections.Counter(serials).items() if count > 1)
    if twice:
        raise ReportError(f"report {doc['run_id']}: terminals: serial {', '.join(twice)} listed more than once")
    if serials != sorted(serials):
        raise ReportError(f"report {doc['run_id']}: terminals: rows are not sorted by serial")
    expected = totals(doc["terminals"])
    if doc["totals"] != expected:
        wrong = ", ".join(f"{status} is {doc['totals'][status]}, the rows say {expected[status]}"
                          for status in STATUSES if doc["totals"][status] != expected[status])
        raise ReportError(f"report {doc['run_id']}: totals do not match the terminals: {wrong}")
    return doc


def totals(rows):
    """{status: number of rows} for every status, zeros included."""
    counts = collections.Counter(row["status"] for row in rows)
    unknown = sorted(set(counts) - set(STATUSES))
    if unknown:
        raise ReportError(f"status {', '.join(map(repr, unknown))} is not one of {', '.join(STATUSES)}")
    return {status: counts[status] for status in STATUSES}


def matrix(rows):
    """{(model, region): {status: count}} for every model and region present, sorted, zeros included."""
    cells = collections.defaultdict(list)
    for row in rows:
        cells[(row["model"], row["region"])].append(row)
    return {key: totals(cells[key]) for key in sorted(cells)}


def console_problems(rows, per_group=CONSOLE_PER_GROUP):
    """The console's lines on the terminals not at the release (PROBLEM_STATUSES), a group per status and
    cause (deferred_by) in the order first met: the first `per_group` as `  <serial> <status>: <reason>`,
    then one line counting the others."""
    groups = {}
    for value in rows:
        if value["status"] in PROBLEM_STATUSES:
            groups.setdefault((value["status"], value.get("deferred_by")), []).append(value)
    lines = []
    for (status, cause), members in groups.items():
        lines += [f"  {value['serial']} {status}: {value['reason']}" for value in members[:per_group]]
        if len(members) > per_group:
            lines.append(f"  ... and {len(members) - per_group} more {status}"
                         f"{f' (deferred by {cause})' if cause else ''}: every terminal is in report.csv")
    return lines


def _parse_time(value):
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        raise ReportError(f"{value!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(moment):
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- CSV -------------------------------------------------------------------------------------------

def _packs(state):
    if not state:
        return ""
    return ";".join(f"{name}={'' if version is None else version}" for name, version in sorted(state["packs"].items()))


def _os_packages(state):
    if not state or not state.get("os_packages"):
        return ""
    return ";".join(f"{name}={'' if version is None else version}"
                    for name, version in sorted(state["os_packages"].items()))


def _step_names(rows):
    extra = sorted({name for row in rows for name in row["steps"]} - set(STEPS))
    return list(STEPS) + extra


def csv_columns(doc):
    """The CSV header: fixed columns, then `step_<name>_s` for every known step and any other in the doc."""
    return (["serial", "model", "region", "wave", "status", "deferred_by", "reason", "window_opens_at",
             "app_before", "app_after", "packs_before", "packs_after", "os_before", "os_after", "bytes_downloaded",
             "duration_s"]
            + [f"step_{name}_s" for name in _step_names(doc["terminals"])])


def render_csv(doc):
    """report.csv: one RFC 4180 row per terminal, the rows of report.json flattened; empty cell = null."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(csv_columns(doc))
    steps = _step_names(doc["terminals"])
    for row in doc["terminals"]:
        before, after = row["before"] or {}, row["after"] or {}
        cells = [row["serial"], row["model"], row["region"], row["wave"], row["status"], row["deferred_by"],
                 row["reason"], row["window_opens_at"], before.get("app_version"), after.get("app_version"),
                 _packs(row["before"]), _packs(row["after"]), _os_packages(row["before"]), _os_packages(row["after"]),
                 row["bytes_downloaded"], row["duration_s"]]
        cells += [row["steps"].get(name) for name in steps]
        writer.writerow(["" if cell is None else cell for cell in cells])
    return out.getvalue()


# --- HTML ------------------------------------------------------------------------------------------

def _script_json(value):
    """JSON that is safe inside <script>: no `<`, `>` or `&` at all, so `</script>` and `<!--` cannot appear."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d232a;background:#fff}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.6em 0 .4em}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:.1em 1em;margin:0}dl.meta dt{font-weight:600}
dl.meta dd{margin:0}
#halt{background:#fde2e1;border:2px solid #b42318;padding:.6em 1em;margin:1em 0;border-radius:4px}
#halt strong{color:#b42318}#budget{margin:.5em 0;color:#444}
table{border-collapse:collapse;margin:.3em 0}th,td{border:1px solid #d0d5dd;padding:.2em .5em;text-align:left}
th{background:#f2f4f7}td.num,th.num{text-align:right}tfoot td,tfoot th{font-weight:600;background:#f9fafb}
td.zero{color:#98a2b3}#terminals td[data-key=packs_after]{overflow-wrap:anywhere;max-width:18em}
#terminals th{cursor:pointer;user-select:none}#terminals th[aria-sort=ascending]::after{content:" \\25B2"}
#terminals th[aria-sort=descending]::after{content:" \\25BC"}
.st{display:inline-block;padding:0 .4em;border-radius:3px;font-size:.9em}
.st-current{background:#eef4ff}.st-updated{background:#d1fadf}.st-deferred{background:#fef0c7}
.st-unfit{background:#ebe9fe}
.st-failed{background:#fecdca}.st-rolled_back{background:#fddcab}.st-unreachable{background:#e4e7ec}
.st-would_update{background:#d1e9ff}
#timeline .wave{display:grid;grid-template-columns:14em 1fr;gap:1em;align-items:center;margin:.3em 0}
#timeline .track{position:relative;height:1.4em;background:#f2f4f7;border-radius:3px}
#timeline .bar{position:absolute;top:0;bottom:0;background:#528bff;border-radius:3px;min-width:3px}
#timeline .bar.open{background:repeating-linear-gradient(45deg,#528bff,#528bff 6px,#84adff 6px,#84adff 12px)}
#timeline .not-started .track{background:repeating-linear-gradient(45deg,#f2f4f7,#f2f4f7 6px,#e4e7ec 6px,#e4e7ec 12px)}
#timeline .detail{grid-column:2;font-size:.9em;color:#444}
#pager{margin:.4em 0}#pager span{margin:0 .8em}#failure-list tr.more td{font-style:italic;color:#444}
"""


def page_style():
    """The report pages' stylesheet, for other posfleet pages (the auto-update status view) to look alike."""
    return _CSS


# The page's script: everything below the header is built from the JSON in #report-data, with
# textContent only, so no terminal-supplied text is ever parsed as HTML.
_JS = r"""
(function () {
  "use strict";
  var STATUSES = @@STATUSES@@;
  var PROBLEMS = @@PROBLEMS@@;
  var PAGE_SIZE = @@PAGESIZE@@;
  var PER_GROUP = @@PERGROUP@@;
  var doc = JSON.parse(document.getElementById("report-data").textContent);
  var rows = doc.terminals;

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) { node.setAttribute(name, attrs[name]); });
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }
  function badge(status) { return el("span", {"class": "st st-" + status}, status); }
  function zeros() { var c = {}; STATUSES.forEach(function (s) { c[s] = 0; }); return c; }
  function sum(counts) { return STATUSES.reduce(function (n, s) { return n + counts[s]; }, 0); }
  function countCell(n, attrs) {
    attrs["class"] = "num" + (n === 0 ? " zero" : "");
    return el("td", attrs, n);
  }
  function cmp(a, b) { return a < b ? -1 : (a > b ? 1 : 0); }

  // Counts by model x region
  function buildCounts() {
    var table = document.getElementById("counts");
    var cells = {}, keys = [], all = zeros();
    rows.forEach(function (r) {
      var key = JSON.stringify([r.model, r.region]);
      if (!cells[key]) { cells[key] = zeros(); keys.push([r.model, r.region, key]); }
      cells[key][r.status] += 1;
      all[r.status] += 1;
    });
    keys.sort(function (a, b) { return cmp(a[0], b[0]) || cmp(a[1], b[1]); });
    var head = el("tr");
    head.appendChild(el("th", {}, "model"));
    head.appendChild(el("th", {}, "region"));
    STATUSES.forEach(function (s) { head.appendChild(el("th", {"class": "num"}, s)); });
    head.appendChild(el("th", {"class": "num"}, "total"));
    table.appendChild(el("thead")).appendChild(head);
    var body = table.appendChild(el("tbody"));
    keys.forEach(function (k) {
      var tr = el("tr", {"data-model": k[0], "data-region": k[1]});
      tr.appendChild(el("th", {}, k[0]));
      tr.appendChild(el("th", {}, k[1]));
      STATUSES.forEach(function (s) {
        tr.appendChild(countCell(cells[k[2]][s], {"data-model": k[0], "data-region": k[1], "data-status": s}));
      });
      tr.appendChild(countCell(sum(cells[k[2]]), {"data-model": k[0], "data-region": k[1], "data-status": "total"}));
      body.appendChild(tr);
    });
    var foot = el("tr", {"data-scope": "fleet"});
    foot.appendChild(el("th", {"colspan": "2"}, "all terminals"));
    STATUSES.forEach(function (s) { foot.appendChild(countCell(all[s], {"data-scope": "fleet", "data-status": s})); });
    foot.appendChild(countCell(sum(all), {"data-scope": "fleet", "data-status": "total"}));
    table.appendChild(el("tfoot")).appendChild(foot);
  }

  // Waves on a timeline, positioned relative to the run's start
  function buildTimeline() {
    var box = document.getElementById("timeline");
    var t0 = Date.parse(doc.started_at), end = Date.parse(doc.finished_at);
    doc.waves.forEach(function (w) {
      if (w.finished_at) { end = Math.max(end, Date.parse(w.finished_at)); }
      if (w.started_at) { end = Math.max(end, Date.parse(w.started_at)); }
    });
    var span = Math.max(end - t0, 1);
    if (!doc.waves.length) { box.appendChild(el("p", {}, "No waves: this run planned none.")); }
    doc.waves.forEach(function (w) {
      var members = rows.filter(function (r) { return r.wave === w.index; });
      var counts = zeros();
      members.forEach(function (r) { counts[r.status] += 1; });
      var state = !w.started_at ? "not started" : (!w.finished_at ? "not finished" : "finished");
      var line = el("div", {"class": "wave" + (w.started_at ? "" : " not-started"),
                            "data-wave": w.index, "data-state": state});
      var total = Math.max(members.length, w.serials.length);
      line.appendChild(el("div", {"class": "label"}, w.name + ": " + total + " terminal" + (total === 1 ? "" : "s")));
      var track = line.appendChild(el("div", {"class": "track"}));
      var detail = [];
      if (w.started_at) {
        var start = Date.parse(w.started_at);
        var finish = w.finished_at ? Date.parse(w.finished_at) : end;
        var bar = el("div", {"class": "bar" + (w.finished_at ? "" : " open")});
        bar.style.left = ((start - t0) / span * 100).toFixed(2) + "%";
        bar.style.width = (Math.max(finish - start, 0) / span * 100).toFixed(2) + "%";
        bar.title = w.started_at + " to " + (w.finished_at || "not finished");
        track.appendChild(bar);
        detail.push("+" + Math.round((start - t0) / 1000) + " s to " +
                    (w.finished_at ? "+" + Math.round((finish - t0) / 1000) + " s" : "not finished"));
      } else {
        detail.push("not started");
      }
      var parts = STATUSES.filter(function (s) { return counts[s]; }).map(function (s) { return counts[s] + " " + s; });
      detail.push(parts.length ? parts.join(", ") : "no outcome");
      line.appendChild(el("div", {"class": "detail"}, detail.join(" \u00b7 ")));
      box.appendChild(line);
    });
  }

  // Failures with their reasons
  function buildFailures() {
    var box = document.getElementById("failures");
    var bad = rows.filter(function (r) { return PROBLEMS.indexOf(r.status) >= 0; });
    if (!bad.length) {
      box.appendChild(el("p", {}, "No terminal failed, rolled back, was deferred, unfit or unreachable."));
      return;
    }
    var table = box.appendChild(el("table", {"id": "failure-list"}));
    var head = el("tr");
    ["serial", "model", "region", "status", "deferred by", "reason", "window opens at"].forEach(function (h) {
      head.appendChild(el("th", {}, h));
    });
    table.appendChild(el("thead")).appendChild(head);
    var body = table.appendChild(el("tbody"));
    // A group per status and cause, in the order first met: its first PER_GROUP terminals, then a count.
    var groups = {}, keys = [];
    bad.forEach(function (r) {
      var key = r.status + "\u0000" + (r.deferred_by || "");
      if (!groups[key]) { groups[key] = []; keys.push(key); }
      groups[key].push(r);
    });
    keys.forEach(function (key) {
      var members = groups[key];
      members.slice(0, PER_GROUP).forEach(function (r) { body.appendChild(problemRow(r)); });
      if (members.length > PER_GROUP) {
        var first = members[0];
        var more = el("tr", {"class": "more", "data-status": first.status, "data-more": members.length - PER_GROUP});
        more.appendChild(el("td", {"colspan": "7"}, "\u2026 and " + (members.length - PER_GROUP) + " more " +
          first.status + (first.deferred_by ? " (deferred by " + first.deferred_by + ")" : "") +
          ": sort the table of every terminal below by status, or read report.csv"));
        body.appendChild(more);
      }
    });
  }
  function problemRow(r) {
    var tr = el("tr", {"data-serial": r.serial, "data-status": r.status});
    tr.appendChild(el("td", {}, r.serial));
    tr.appendChild(el("td", {}, r.model));
    tr.appendChild(el("td", {}, r.region));
    tr.appendChild(el("td")).appendChild(badge(r.status));
    tr.appendChild(el("td", {}, r.deferred_by || ""));
    tr.appendChild(el("td", {"class": "reason"}, r.reason));
    tr.appendChild(el("td", {}, r.window_opens_at || ""));
    return tr;
  }

  // Every terminal, sortable by any column; #sort=KEY or #sort=-KEY (descending) in the URL
  function packs(state) {
    if (!state) { return null; }
    return Object.keys(state.packs).sort().map(function (n) { return n + "=" + (state.packs[n] || ""); }).join(";");
  }
  function osPackages(state) {
    if (!state || !state.os_packages) { return null; }
    var os = state.os_packages;
    return Object.keys(os).sort().map(function (n) { return n + "=" + (os[n] || ""); }).join(";");
  }
  var COLUMNS = [
    ["serial", "text", function (r) { return r.serial; }],
    ["model", "text", function (r) { return r.model; }],
    ["region", "text", function (r) { return r.region; }],
    ["wave", "num", function (r) { return r.wave; }],
    ["status", "text", function (r) { return r.status; }],
    ["deferred_by", "text", function (r) { return r.deferred_by; }],
    ["reason", "text", function (r) { return r.reason || null; }],
    ["window_opens_at", "text", function (r) { return r.window_opens_at; }],
    ["app_before", "text", function (r) { return r.before ? r.before.app_version : null; }],
    ["app_after", "text", function (r) { return r.after ? r.after.app_version : null; }],
    ["packs_after", "text", function (r) { return packs(r.after); }],
    ["os_after", "text", function (r) { return osPackages(r.after); }],
    ["bytes_downloaded", "num", function (r) { return r.bytes_downloaded; }],
    ["duration_s", "num", function (r) { return r.duration_s; }]
  ];
  var sortState = {key: null, desc: false};
  // The table shows one page of `order` (every terminal, in the chosen order): a fleet of 100,000 is
  // sorted as data and drawn PAGE_SIZE rows at a time.
  var order = rows.slice(), page = 0;

  function value(r, key) {
    if (!r.__cells) {
      r.__cells = {};
      COLUMNS.forEach(function (c) { r.__cells[c[0]] = c[2](r); });
    }
    return r.__cells[key];
  }

  function sortBy(key, desc) {
    var col = COLUMNS.filter(function (c) { return c[0] === key; })[0];
    if (!col) { return; }
    order.sort(function (a, b) {
      var x = value(a, key), y = value(b, key);
      if (x === null || x === undefined) { return (y === null || y === undefined) ? 0 : 1; }  // empty cells last
      if (y === null || y === undefined) { return -1; }
      var sorted = col[1] === "num" ? x - y : cmp(String(x), String(y));
      return desc ? -sorted : sorted;
    });
    sortState = {key: key, desc: desc};
    document.querySelectorAll("#terminals th").forEach(function (th) {
      if (th.getAttribute("data-key") === key) { th.setAttribute("aria-sort", desc ? "descending" : "ascending"); }
      else { th.removeAttribute("aria-sort"); }
    });
    document.getElementById("terminals").setAttribute("data-sorted-by", (desc ? "-" : "") + key);
    showPage(0);
  }

  function pages() { return Math.max(1, Math.ceil(order.length / PAGE_SIZE)); }

  function remember() {
    var parts = [];
    if (sortState.key) { parts.push("sort=" + (sortState.desc ? "-" : "") + sortState.key); }
    if (page) { parts.push("page=" + (page + 1)); }
    try { history.replaceState(null, "", parts.length ? "#" + parts.join("&") : " "); } catch (e) { /* file:// */ }
  }

  function showPage(number) {
    page = Math.min(Math.max(number, 0), pages() - 1);
    var body = document.querySelector("#terminals tbody");
    while (body.firstChild) { body.removeChild(body.firstChild); }
    order.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE).forEach(function (r) {
      var tr = el("tr", {"data-serial": r.serial, "data-status": r.status});
      COLUMNS.forEach(function (c) {
        var cell = value(r, c[0]);
        var td = el("td", {"data-key": c[0], "class": c[1] === "num" ? "num" : ""});
        if (c[0] === "status") { td.appendChild(badge(cell)); }
        else { td.textContent = cell === null || cell === undefined ? "" : String(cell); }
        if (c[0] === "duration_s") {
          td.title = Object.keys(r.steps).map(function (s) { return s + " " + r.steps[s] + " s"; }).join(", ");
        }
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    var first = order.length ? page * PAGE_SIZE + 1 : 0, last = Math.min((page + 1) * PAGE_SIZE, order.length);
    var pager = document.getElementById("pager");
    pager.setAttribute("data-page", page + 1);
    pager.setAttribute("data-pages", pages());
    document.getElementById("page-label").textContent = "terminals " + first + "\u2013" + last + " of " +
      order.length + " (page " + (page + 1) + " of " + pages() + ")";
    document.getElementById("page-prev").disabled = page === 0;
    document.getElementById("page-next").disabled = page === pages() - 1;
  }

  function buildTerminals() {
    var table = document.getElementById("terminals");
    var head = el("tr");
    COLUMNS.forEach(function (c) {
      var th = el("th", {"data-key": c[0], "data-type": c[1], "class": c[1] === "num" ? "num" : "",
                         "title": "sort by " + c[0]}, c[0]);
      th.addEventListener("click", function () {
        sortBy(c[0], sortState.key === c[0] ? !sortState.desc : false);
        remember();
      });
      head.appendChild(th);
    });
    table.appendChild(el("thead")).appendChild(head);
    table.appendChild(el("tbody"));
    var pager = el("div", {"id": "pager"});
    var prev = pager.appendChild(el("button", {"id": "page-prev", "type": "button"}, "\u2039 previous"));
    pager.appendChild(el("span", {"id": "page-label"}));
    var next = pager.appendChild(el("button", {"id": "page-next", "type": "button"}, "next \u203a"));
    prev.addEventListener("click", function () { showPage(page - 1); remember(); });
    next.addEventListener("click", function () { showPage(page + 1); remember(); });
    table.parentNode.insertBefore(pager, table);
    showPage(0);
  }

  buildCounts();
  buildTimeline();
  buildFailures();
  buildTerminals();
  // #sort=KEY or #sort=-KEY (descending), and #page=N, joined with & (#sort=-duration_s&page=2).
  var wanted = {};
  window.location.hash.replace(/^#/, "").split("&").forEach(function (part) {
    var pair = part.split("=");
    if (pair.length === 2) { wanted[pair[0]] = pair[1]; }
  });
  var sort = /^(-?)([a-z_]+)$/.exec(wanted.sort || "");
  if (sort) { sortBy(sort[2], sort[1] === "-"); }
  if (/^[0-9]+$/.test(wanted.page || "")) { showPage(parseInt(wanted.page, 10) - 1); }
  document.body.setAttribute("data-ready", "true");
}());
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; \
script-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@@TITLE@@</title>
<style>@@CSS@@</style>
</head>
<body>
<h1 id="title">@@TITLE@@</h1>
<dl class="meta">@@META@@</dl>
@@HALT@@
<noscript><p>This page needs JavaScript to show its tables; the same data is in report.json (and report.csv)
beside this file.</p></noscript>
<h2>Counts by model and region</h2>
<table id="counts"></table>
<h2>Waves</h2>
<div id="timeline"></div>
<h2>Failures, rollbacks, deferred, unfit and unreachable terminals</h2>
<div id="failures"></div>
<h2>Every terminal</h2>
<p>Click a column header to sort; click again to reverse.</p>
<table id="terminals"></table>
<script type="application/json" id="report-data">@@DATA@@</script>
<script>@@JS@@</script>
</body>
</html>
"""


def _duration(doc):
    seconds = (_parse_time(doc["finished_at"]) - _parse_time(doc["started_at"])).total_seconds()
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def _trigger_text(trigger):
    """The HTML report's line for what started the run (reports before 0.4.0 have no trigger)."""
    if not trigger or trigger["by"] != TRIGGER_CHECKIN:
        return TRIGGER_OPERATOR
    return f"a terminal's check-in (job {trigger['checkin_job']})"


def render_html(doc):
    """report.html: one self-contained page (inline CSS and JS, no external resource) built from the JSON it embeds."""
    esc = html.escape
    title = (f"posfleet {doc['mode']} run {doc['run_id']}"
             + (f", release {doc['release']}" if doc["release"] else ""))
    meta = [("run", doc["run_id"]), ("release", doc["release"] or "(none)"), ("mode", doc["mode"]),
            ("playbook", doc["playbook"]), ("started", doc["started_at"]), ("finished", doc["finished_at"]),
            ("duration", _duration(doc)), ("user", doc["user"]), ("AWX job", doc["awx_job_id"] or "(none)"),
            ("trigger", _trigger_text(doc.get("trigger"))), ("terminals", str(len(doc["terminals"])))]
    meta_html = "".join(f'<dt>{esc(name)}</dt><dd data-field="{esc(name)}">{esc(value)}</dd>' for name, value in meta)
    budget = doc["budget"]
    if doc["halted"]:
        halt = (f'<div id="halt" role="alert"><strong>Rollout halted:</strong> '
                f'<span id="halt-reason">{esc(doc["halt_reason"] or "no reason given")}</span>')
        if budget:
            halt += f'<p id="budget-reason">{esc(budget["reason"])}</p>'
        halt += "</div>"
    elif budget:
        halt = f'<p id="budget"><span id="budget-reason">{esc(budget["reason"])}</span></p>'
    else:
        halt = ""
    js = (_JS.replace("@@STATUSES@@", json.dumps(list(STATUSES)))
          .replace("@@PROBLEMS@@", json.dumps(list(PROBLEM_STATUSES)))
          .replace("@@PAGESIZE@@", str(HTML_PAGE_SIZE)).replace("@@PERGROUP@@", str(HTML_PROBLEMS_PER_GROUP)))
    parts = {"CSS": _CSS, "JS": js, "META": meta_html, "HALT": halt, "TITLE": esc(title), "DATA": _script_json(doc)}
    # One pass: text put in is never scanned again, so no value can look like a placeholder.
    return re.sub(r"@@([A-Z]+)@@", lambda match: parts[match.group(1)], _PAGE)


def retry_serials(doc):
    """The serials a re-run should take: failed, rolled back, deferred or unreachable, sorted; never unfit."""
    return [row["serial"] for row in doc["terminals"] if row["status"] in RETRY_STATUSES]


# --- writing a run ---------------------------------------------------------------------------------

def _write_at(dir_fd, name, text):
    """Write `name` in the directory dir_fd atomically: a new temp file (never an existing path), then a rename."""
    tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)  # whatever the umask
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def _open_dir(name, dir_fd=None, create=False):
    """A descriptor of a real directory (never through a symlink), created 0750 when asked."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, DIR_MODE, dir_fd=dir_fd)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        raise ReportError(f"{name} is not a directory that a report can be written to "
                          f"(a symlink or a file is refused): {exc.strerror}") from None
    return fd


def write_run(report_dir, doc):
    """Write reports/<run_id>/ and point reports/latest at it; return the run directory's Path.

    Validates first, so nothing is written for a wrong document. report.json, report.csv, report.html
    and retry.limit are each written atomically, mode 0640, in a directory of mode 0750; writing a
    run again replaces its files. The run directory and its files are opened without following
    symlinks, so a link planted in reports/ cannot send a write elsewhere. `latest` is a relative
    symlink, replaced by one rename: a reader sees the old run or the new one, never neither.
    """
    validate(doc)
    run_id = doc["run_id"]
    if not _RUN_ID.fullmatch(run_id) or run_id == LATEST:
        raise ReportError(f"run_id {run_id!r} cannot name a report directory")
    report_dir = Path(report_dir)
    report_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    root = os.open(report_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        run_fd = _open_dir(run_id, dir_fd=root, create=True)
        try:
            os.fchmod(run_fd, DIR_MODE)
            limit = "".join(serial + "\n" for serial in retry_serials(doc))
            _write_at(run_fd, "report.json", json.dumps(doc, indent=1, sort_keys=True) + "\n")
            _write_at(run_fd, "report.csv", render_csv(doc))
            _write_at(run_fd, "report.html", render_html(doc))
            _write_at(run_fd, "retry.limit", limit)
            os.fsync(run_fd)
        finally:
            os.close(run_fd)
        tmp = f".{LATEST}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        os.symlink(run_id, tmp, dir_fd=root)
        try:
            os.replace(tmp, LATEST, src_dir_fd=root, dst_dir_fd=root)
        except OSError as exc:
            os.unlink(tmp, dir_fd=root)
            raise ReportError(f"{report_dir / LATEST} cannot be replaced by a symlink "
                              f"(is it a directory?): {exc.strerror}") from None
        os.fsync(root)
    finally:
        os.close(root)
    return report_dir / run_id


def read_run(run_dir):
    """The validated document of a run directory (or of a report.json path)."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / "report.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path} cannot be read as a report: {exc}") from None
    return validate(doc)


# --- the audit trail -------------------------------------------------------------------------------

# One JSON line per event, every key on every line (null where it does not apply); docs/reports.md has
# the table. What PCI DSS 10.2.2 asks of a record: who (who, awx_job_id), what (action, event), when
# (at, UTC), where (terminal or distribution_point, and control_node), the outcome (status, reason)
# and the object (what, release, from, to). run_id and step tie a line to its run and to the step a
# change had reached.
AUDIT_KEYS = ("at", "who", "awx_job_id", "control_node", "run_id", "action", "event", "terminal",
              "distribution_point", "step", "status", "reason", "release", "what", "from", "to")
STARTED, ENDED = "started", "ended"
# The events of each action. A change to a terminal logs a line when it starts and one when it ends,
# each written at once, so a run killed in between leaves its `started` line and no `ended` one. A
# backup and a publication log their outcome once. The update guard's switch-back, learnt at the
# terminal's next contact, logs the phase the guard left it in.
AUDIT_EVENTS = {
    "update": (STARTED, ENDED), "rollback": (STARTED, ENDED), "restore": (STARTED, ENDED),
    "backup": (ENDED,), "publish": (ENDED,), "guard": ("undone", "resumed", "stuck"),
}
# Never null, never empty: who, when, where from, what was done and to what.
AUDIT_REQUIRED = ("at", "who", "control_node", "run_id", "action", "event", "what")
TERMINAL = "terminal"  # `what` of a line about the whole terminal: from and to hold every component
GUARD = "pos-update-guard"  # `who` of a guard line: the terminal's own guard, on an earlier run's lease
# What started a run (the report's `trigger.by`): an operator or a schedule, or a terminal's check-in through the
# auto-update rulebook, which passes update_trigger=checkin (docs/auto-update.md).
TRIGGER_OPERATOR, TRIGGER_CHECKIN = "operator", "checkin"


def audit_time(moment=None):
    """`moment` (a datetime, or ISO 8601 text; now when None) in UTC to the second: 2026-11-24T09:21:02Z."""
    if moment is None:
        moment = datetime.datetime.now(UTC)
    elif isinstance(moment, str):
        moment = _parse_time(moment)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def local_user():
    """The login running this process: the `who` of a run not started from AWX."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def this_control_node():
    """The `control_node` of the lines this process writes: its fully qualified name, or its host name
    where the name resolves to nothing better than localhost (a host name listed on 127.0.0.1)."""
    fqdn = socket.getfqdn()
    if fqdn and fqdn.split(".")[0] != "localhost":
        return fqdn
    return socket.gethostname() or "unknown"


def new_run_id(started, kind):
    """A run's id: when it started (UTC), what it is (update, plan, publish...) and 4 random hex digits."""
    return f"{started:%Y%m%dT%H%M%SZ}-{kind}-{secrets.token_hex(2)}"


def valid_run_id(run_id):
    """Whether `run_id` can name a run: a report directory, and the run of an audit line."""
    return isinstance(run_id, str) and bool(_RUN_ID.fullmatch(run_id)) and run_id != LATEST


def last_step(steps):
    """The furthest of `steps` (step names) in the pipeline's order, a step it does not know last; or None."""
    ordered = [name for name in STEPS if name in steps] + sorted(set(steps) - set(STEPS))
    return ordered[-1] if ordered else None


def versions(state):
    """{component: version} of a version state ({app_version, packs, os_packages}): `app`, then `pack:<name>` by
    name, then `os:<name>` by name; None when the state is not known."""
    if not isinstance(state, dict):
        return None
    found = {"app": state.get("app_version")}
    found.update({f"pack:{name}": version for name, version in sorted((state.get("packs") or {}).items())})
    found.update({f"os:{name}": version for name, version in sorted((state.get("os_packages") or {}).items())})
    return found


def audit_entry(common, action, event, *, what=TERMINAL, before=None, after=None, at=None, **fields):
    """One line of the trail.

    `common` holds what every line of a run shares (run_id, who, awx_job_id, control_node). The object:
    for what="terminal", `before` and `after` are version states, written as from and to
    {component: version}; for one component (`app`, `pack:<name>`), its two versions. `at` is now by
    default. Any other key of AUDIT_KEYS may be given in `fields`; the rest are null.
    """
    entry = dict.fromkeys(AUDIT_KEYS)
    entry.update(common, **fields)
    entry.update(at=audit_time(at), action=action, event=event, what=what)
    if what == TERMINAL:
        entry.update({"from": versions(before), "to": versions(after)})
    else:
        entry.update({"from": before, "to": after})
    return entry


def change_entries(common, action, *, before, after, at=None, **fields):
    """The `ended` lines of a change to a terminal (`fields`: terminal, status, reason, step, release).

    A change that took (status updated, or rolled_back by a restore that switched versions) gives one
    line per component whose version differs between `before` and `after`: what is the component, from
    and to its versions. Any other end gives one line for the whole terminal: from and to every
    component's versions, to null when not known (a terminal that stopped answering).
    """
    old, new = versions(before), versions(after)
    if fields.get("status") in (statuses.UPDATED, statuses.ROLLED_BACK) and old is not None and new is not None:
        at = audit_time(at)
        names = sorted(set(old) | set(new), key=lambda name: (name != "app", name))
        changed = [name for name in names if old.get(name) != new.get(name)]
        if changed:
            return [audit_entry(common, action, ENDED, what=name, before=old.get(name), after=new.get(name), at=at,
                                **fields) for name in changed]
    return [audit_entry(common, action, ENDED, before=before, after=after, at=at, **fields)]


def audit_entries(doc, who=None, at=None, control_node=None):
    """The `ended` lines a finished run's report implies for its changed terminals (updated, rolled_back).

    The callback writes them as each terminal ends (change_entries); this gives them from a report.
    The action is "update" ("rollback" in a rollback run), `who` defaults to the run's user, `at` to its
    finish and `control_node` to this machine. A check or plan run changed nothing and gives none.
    """
    if doc["mode"] in ("check", "plan"):
        return []
    common = {"run_id": doc["run_id"], "who": doc["user"] if who is None else who, "awx_job_id": doc["awx_job_id"],
              "control_node": control_node or this_control_node()}
    action = "rollback" if doc["mode"] == "rollback" else "update"
    at = doc["finished_at"] if at is None else at
    entries = []
    for row in doc["terminals"]:
        if row["status"] in (statuses.UPDATED, statuses.ROLLED_BACK):
            entries += change_entries(common, action, before=row["before"], after=row["after"], at=at,
                                      terminal=row["serial"], status=row["status"], reason=row["reason"],
                                      step=last_step(row["steps"]), release=doc["release"])
    return entries


def _audit_problem(entry):
    """What is wrong with an audit entry, or None."""
    if not isinstance(entry, dict):
        return "is not a mapping"
    missing = [key for key in AUDIT_KEYS if key not in entry]
    extra = sorted(set(entry) - set(AUDIT_KEYS))
    if missing or extra:
        return f"missing {missing}, unknown {extra}"
    empty = [key for key in AUDIT_REQUIRED if not isinstance(entry[key], str) or not entry[key]]
    if empty:
        return f"{', '.join(empty)} must be text (an audit record names who, when, where, what and the object)"
    if not entry["terminal"] and not entry["distribution_point"]:
        return "names no place: a terminal or a distribution_point"
    events = AUDIT_EVENTS.get(entry["action"])
    if events is None:
        return f"action {entry['action']!r} is not one of {', '.join(AUDIT_EVENTS)}"
    if entry["event"] not in events:
        return f"event {entry['event']!r} is not one of {', '.join(events)} for action {entry['action']}"
    if (entry["status"] is None) != (entry["event"] == STARTED):
        return "status: every line but a started one has an outcome, and a started one has none yet"
    _parse_time(entry["at"])
    return None


def append_audit(path, entries):
    """Append one JSON line per entry to the audit log; return how many were written.

    Every entry is checked first (all of AUDIT_KEYS, no other; the PCI fields set; a known action and
    event), so nothing is written for a batch with a wrong one. One write under an exclusive flock, on
    a descriptor opened O_APPEND, then fsync: concurrent runs (AWX slices on one control node) never
    interleave or cut each other's lines, and a line is on the disk before the caller goes on, so a
    run killed right after still leaves it. The directory is made (0750) when missing.
    """
    lines = []
    for entry in entries:
        try:
            problem = _audit_problem(entry)
        except ReportError as exc:
            problem = str(exc)
        if problem:
            where = (entry.get("terminal") or entry.get("distribution_point")) if isinstance(entry, dict) else None
            raise ReportError(f"audit entry for {where or '?'}: {problem}: {entry!r}")
        lines.append(json.dumps({key: entry[key] for key in AUDIT_KEYS}, ensure_ascii=True, default=str) + "\n")
    if not lines:
        return 0
    data = "".join(lines).encode("utf-8")
    path = Path(path)
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ReportError(f"audit log {path} is not a regular file")
        fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock
    if created:
        # The new file's name must survive a crash too, not only its lines.
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return len(lines)


# --- merging slices --------------------------------------------------------------------------------

def _merge_waves(docs):
    waves = {}
    for doc in docs:
        for wave in doc["waves"]:
            merged = waves.setdefault(wave["index"], {"index": wave["index"], "name": wave["name"], "serials": [],
                                                      "starts": [], "finishes": []})
            merged["serials"].extend(wave["serials"])
            if wave["started_at"]:
                merged["starts"].append(wave["started_at"])
                merged["finishes"].append(wave["finished_at"])
    result = []
    for index in sorted(waves):
        wave = waves.pop(index)
        starts, finishes = wave.pop("starts"), wave.pop("finishes")
        wave["started_at"] = min(starts, key=_parse_time) if starts else None
        # A wave one slice started and has not finished is not finished.
        wave["finished_at"] = (max(finishes, key=_parse_time) if finishes and None not in finishes else None)
        result.append(wave)
    return result


def _merge_budgets(docs):
    budgets = [(doc["run_id"], doc["budget"]) for doc in docs if doc["budget"] is not None]
    if not budgets:
        return None
    known = [budget["untouched"] for _, budget in budgets if budget["untouched"] is not None]
    merged = {key: sum(budget[key] for _, budget in budgets) for key in ("spent", "attempted", "failed", "unreachable")}
    merged.update(
        exhausted=any(budget["exhausted"] for _, budget in budgets),
        untouched=sum(known) if known else None,
        reason=f"merged from {len(docs)} slices: " + "; ".join(f"{run}: {budget['reason']}" for run, budget in budgets))
    return merged


def merge(docs, run_id=None):
    """One fleet document from the documents of several slices (AWX job slicing) of one run.

    The slices must share schema, playbook, mode, release and settings (clock_utc aside, the earliest
    is kept). Terminals are concatenated (a serial in two slices is refused, naming it) and totals
    recounted; waves are merged by index; halted if any slice halted; budgets summed. `run_id`
    defaults to one derived from the earliest start and the slices' run ids.
    """
    docs = list(docs)
    if not docs:
        raise ReportError("merge needs at least one report")
    for doc in docs:
        validate(doc)
    first = docs[0]
    for doc in docs[1:]:
        for key in ("schema", "playbook", "mode", "release"):
            if doc[key] != first[key]:
                raise ReportError(f"cannot merge {doc['run_id']} with {first['run_id']}: {key} is "
                                  f"{doc[key]!r}, not {first[key]!r}")
        for key in first["settings"]:
            if key != "clock_utc" and doc["settings"][key] != first["settings"][key]:
                raise ReportError(f"cannot merge {doc['run_id']} with {first['run_id']}: settings.{key} is "
                                  f"{doc['settings'][key]!r}, not {first['settings'][key]!r}")
    seen = {}
    for doc in docs:
        for row in doc["terminals"]:
            if row["serial"] in seen:
                raise ReportError(f"cannot merge: terminal {row['serial']} is in both {seen[row['serial']]} "
                                  f"and {doc['run_id']}")
            seen[row["serial"]] = doc["run_id"]
    run_ids = [doc["run_id"] for doc in docs]
    started = min((doc["started_at"] for doc in docs), key=_parse_time)
    if run_id is None:
        digest = hashlib.sha256("\n".join(sorted(run_ids)).encode()).hexdigest()[:6]
        stamp = _parse_time(started).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        run_id = f"{stamp}-{first['mode']}-merged-{digest}"
    clocks = [doc["settings"]["clock_utc"] for doc in docs if doc["settings"]["clock_utc"]]
    rows = sorted((row for doc in docs for row in doc["terminals"]), key=lambda row: row["serial"])
    halted = [doc for doc in docs if doc["halted"]]
    users = sorted({doc["user"] for doc in docs})
    jobs = sorted({doc["awx_job_id"] for doc in docs if doc["awx_job_id"] is not None})
    merged = {
        "schema": SCHEMA_ID, "run_id": run_id, "playbook": first["playbook"], "mode": first["mode"],
        "release": first["release"], "started_at": started,
        "finished_at": max((doc["finished_at"] for doc in docs), key=_parse_time),
        "user": ",".join(users), "awx_job_id": ",".join(jobs) or None,
        "settings": dict(first["settings"], clock_utc=min(clocks, key=_parse_time) if clocks else None),
        "waves": _merge_waves(docs), "budget": _merge_budgets(docs),
        "halted": bool(halted),
        "halt_reason": "; ".join(f"{doc['run_id']}: {doc['halt_reason'] or 'halted'}" for doc in halted) or None,
        "totals": totals(rows), "terminals": rows,
    }
    return validate(merged)


# --- command line ----------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m posfleet.report", description="posfleet run reports")
    commands = parser.add_subparsers(dest="command", required=True)
    merging = commands.add_parser("merge", help="merge the reports of AWX job slices into one run")
    merging.add_argument("--out", required=True, help="the reports directory to write the merged run in")
    merging.add_argument("--run-id", help="the merged run's id (default: derived from the slices)")
    merging.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="reports/<run-id> of each slice")
    checking = commands.add_parser("validate", help="check a run's report.json against the schema")
    checking.add_argument("run_dir", metavar="RUN_DIR", help="reports/<run-id> or a report.json")
    args = parser.parse_args(argv)
    try:
        if args.command == "merge":
            doc = merge([read_run(path) for path in args.run_dirs], run_id=args.run_id)
            print(write_run(args.out, doc))
        else:
            doc = read_run(args.run_dir)
            print(f"{args.run_dir}: valid {SCHEMA_ID} report of run {doc['run_id']}, "
                  f"{len(doc['terminals'])} terminals")
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
