"""Run reports (posfleet.report): the schema, report.csv, retry.limit, reports/latest, report.html in a real
headless Chromium, merging AWX slices, and the audit log.

Everything runs on files in a temporary directory: no lab, no ansible-playbook.
"""

import copy
import csv
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from posfleet import report, statuses
from posfleet.report import ReportError

REPO = Path(__file__).resolve().parents[2]


CHROMIUM = Path("/usr/bin/chromium")
HOSTILE = '</script><img src=x onerror=alert(1)><!-- "quoted", comma\nnew line'


def row(serial, model, region, wave, status, **changes):
    """One terminal row as the callback builds it; an updated terminal goes from 2026.11.0 to 2026.12.0."""
    old = {"app_version": "4.1.0", "packs": {"catalog": "2026.11", "params": "2026.11.1", "merchant": "7"}}
    new = {"app_version": "4.2.0", "packs": {"catalog": "2026.12", "params": "2026.11.1", "merchant": "8"}}
    value = {"serial": serial, "model": model, "region": region, "wave": wave, "status": status,
             "deferred_by": None, "reason": "", "window_opens_at": None, "before": old, "after": old,
             "bytes_downloaded": 0, "duration_s": 0.0, "steps": {}}
    if status == "updated":
        value.update(after=new, bytes_downloaded=1_500_000,
                     steps={"preflight": 1.5, "quiesce": 0.8, "backup": 4.0, "package": 20.25, "verify": 2.0})
    value.update(changes)
    value["duration_s"] = value["duration_s"] or round(sum(value["steps"].values()), 3)
    return value


def fleet_rows():
    return [
        row("KST00001", "a80", "eu_west", 0, "updated"),
        row("KST00002", "a80", "eu_west", 1, "failed", reason="verify: posd unhealthy after reboot",
            steps={"preflight": 1.0, "package": 95.5}),
        row("KST00003", "a80", "us_east", 1, "updated", duration_s=9.5),
        row("KST00004", "a80", "us_east", 2, "rolled_back", reason=HOSTILE, after=None,
            steps={"package": 30.0, "rollback": 70.0}),
        row("KST00005", "v240m", "eu_west", 0, "updated", duration_s=100.25),
        row("KST00006", "v240m", "eu_west", None, "deferred", deferred_by="window",
            reason="outside maintenance window 01:00-05:00 Europe/Berlin", window_opens_at="2026-11-25T00:00:00Z"),
        row("KST00007", "v240m", "us_east", 2, "unreachable", reason="ssh: connection timed out", after=None),
        row("KST00008", "v240m", "us_east", 1, "current", duration_s=3.25, steps={"preflight": 3.25}),
        row("KST00009", "move5000", "eu_west", 0, "updated", duration_s=10.75),
        row("KST00010", "move5000", "eu_west", 3, "deferred", deferred_by="budget", reason="error budget exhausted"),
        row("KST00011", "move5000", "us_east", 3, "deferred", deferred_by="budget", reason="error budget exhausted",
            before=None, after=None),
        row("KST00012", "move5000", "us_east", 1, "updated", duration_s=28.5, steps={"custom_probe": 0.5}),
    ]


def make_doc(rows=None, **changes):
    rows = sorted(fleet_rows() if rows is None else rows, key=lambda value: value["serial"])
    doc = {
        "schema": "posfleet-report/1", "run_id": "20261124T090102Z-update-3f2a", "playbook": "update.yml",
        "mode": "update", "release": "2026.12.0",
        "started_at": "2026-11-24T09:01:02Z", "finished_at": "2026-11-24T09:21:02Z",
        "user": "ops-anna", "awx_job_id": None,
        "settings": {"canary_per_model": 1, "waves": [10, 30, 100], "order": "region", "seed": 0, "batch_size": 100,
                     "max_failed": None, "max_failed_pct": 10, "count_unreachable": False, "ignore_windows": False,
                     "clock_utc": "2026-11-24T09:01:00Z"},
        "waves": [
            {"index": 0, "name": "canary", "serials": ["KST00001", "KST00005", "KST00009"],
             "started_at": "2026-11-24T09:01:10Z", "finished_at": "2026-11-24T09:05:00Z"},
            {"index": 1, "name": "wave 1", "serials": ["KST00002", "KST00003", "KST00008", "KST00012"],
             "started_at": "2026-11-24T09:05:05Z", "finished_at": "2026-11-24T09:12:00Z"},
            {"index": 2, "name": "wave 2", "serials": ["KST00004", "KST00007"],
             "started_at": "2026-11-24T09:12:05Z", "finished_at": "2026-11-24T09:20:00Z"},
            {"index": 3, "name": "wave 3", "serials": ["KST00010", "KST00011"],
             "started_at": None, "finished_at": None},
        ],
        "budget": {"spent": 2, "attempted": 9, "failed": 2, "unreachable": 1, "exhausted": True, "untouched": 2,
                   "reason": "error budget exhausted: 2 of 9 attempted terminals failed or rolled back (22.22%), "
                             "more than the limit of 10% (max_failed_pct) by 12.22 points; 2 terminals left untouched"},
        "halted": True, "halt_reason": "error budget exhausted after wave 2",
        "totals": report.totals(rows), "terminals": rows,
    }
    doc.update(changes)
    return doc


# --- the schema ------------------------------------------------------------------------------------

def test_schema_accepts_a_good_document():
    doc = make_doc()
    assert report.validate(doc) is doc
    assert report.totals(doc["terminals"]) == {"current": 1, "updated": 5, "deferred": 3, "unfit": 0, "failed": 1,
                                               "rolled_back": 1, "unreachable": 1, "would_update": 0}
    assert report.totals([]) == dict.fromkeys(report.STATUSES, 0)
    # Settings echo what the operator gave: `-e update_max_failed=3` is text, a clock without offset is UTC.
    doc["settings"].update(max_failed="3", clock_utc="2026-11-24 09:01:00")
    report.validate(doc)


@pytest.mark.parametrize(("mutate", "named"), [
    (lambda doc: doc["terminals"][1].update(statsu="failed"), r"terminals\[1\] \(terminal KST00002\).*'statsu'"),
    (lambda doc: doc["terminals"][2].update(status="done"), r"terminals\[2\]\.status \(terminal KST00003\).*'done'"),
    (lambda doc: doc.update(halted_reason="x"), r"\(top level\).*'halted_reason'"),
    (lambda doc: doc["terminals"][0].pop("reason"), r"terminals\[0\] \(terminal KST00001\).*'reason'"),
    (lambda doc: doc["settings"].update(order="alphabetical"), r"settings\.order.*'alphabetical'"),
    (lambda doc: doc["terminals"][5].update(deferred_by="weather"), r"terminals\[5\]\.deferred_by.*'weather'"),
    (lambda doc: doc.update(run_id="../etc"), r"run_id.*'\.\./etc'"),
    (lambda doc: doc["totals"].update(failed=7), r"totals do not match.*failed is 7, the rows say 1"),
    (lambda doc: doc["terminals"].append(copy.deepcopy(doc["terminals"][-1])),
     r"serial KST00012 listed more than once"),
])
def test_schema_rejects_a_wrong_document_naming_the_field(mutate, named):
    doc = make_doc()
    mutate(doc)
    with pytest.raises(ReportError, match=named):
        report.validate(doc)


def test_matrix_counts_by_model_and_region():
    counts = report.matrix(fleet_rows())
    assert list(counts)[:2] == [("a80", "eu_west"), ("a80", "us_east")]
    assert counts[("v240m", "us_east")] == dict(dict.fromkeys(report.STATUSES, 0), unreachable=1, current=1)
    assert sum(sum(cell.values()) for cell in counts.values()) == 12


# --- CSV, retry.limit, latest ----------------------------------------------------------------------

def test_csv_has_the_same_rows_as_the_json():
    doc = make_doc()
    text = report.render_csv(doc)
    assert text.endswith("\r\n")  # RFC 4180 line ends
    parsed = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [line["serial"] for line in parsed] == [value["serial"] for value in doc["terminals"]]
    for line, value in zip(parsed, doc["terminals"]):
        assert line["status"] == value["status"]
        assert line["reason"] == value["reason"]  # the hostile one too: comma, quotes and new line survive
        assert line["wave"] == ("" if value["wave"] is None else str(value["wave"]))
        assert line["app_after"] == (value["after"]["app_version"] if value["after"] else "")
        assert float(line["duration_s"]) == value["duration_s"]
        assert int(line["bytes_downloaded"]) == value["bytes_downloaded"]
    first = parsed[0]
    assert first["packs_before"] == "catalog=2026.11;merchant=7;params=2026.11.1"
    assert first["packs_after"] == "catalog=2026.12;merchant=8;params=2026.11.1"
    assert (first["step_package_s"], first["step_reboot_s"]) == ("20.25", "")
    columns = list(parsed[0])
    assert [name for name in columns if name.startswith("step_")][:9] == [f"step_{s}_s" for s in report.STEPS]
    assert parsed[-1]["step_custom_probe_s"] == "0.5"  # a step the pipeline does not know is kept, not lost


def test_write_run_writes_every_file_and_a_retry_limit_of_what_is_not_done(tmp_path):
    doc = make_doc()
    run = report.write_run(tmp_path / "reports", doc)
    assert run == tmp_path / "reports" / doc["run_id"]
    assert sorted(path.name for path in run.iterdir()) == ["report.csv", "report.html", "report.json", "retry.limit"]
    assert json.loads((run / "report.json").read_text()) == doc
    # failed, rolled back, deferred and unreachable: not current or updated
    assert (run / "retry.limit").read_text().splitlines() == [
        "KST00002", "KST00004", "KST00006", "KST00007", "KST00010", "KST00011"]
    assert oct(run.stat().st_mode & 0o777) == oct(0o750)
    assert {oct(path.stat().st_mode & 0o777) for path in run.iterdir()} == {oct(0o640)}
    done = make_doc([row("KST00001", "a80", "eu_west", 0, "updated")], run_id="20261124T100000Z-update-0001")
    assert (report.write_run(tmp_path / "reports", done) / "retry.limit").read_text() == ""


UNFIT_REASON = ("the release needs 70 MB of flash and the model has 64 MB in all: no free space makes it fit; "
                "build a smaller release for this model")


def unfit_rows():
    return [row("KST00001", "a80", "eu_west", 0, "updated"),
            row("KST00002", "a80", "eu_west", None, "unfit", reason=UNFIT_REASON),
            row("KST00003", "a80", "eu_west", None, "deferred", deferred_by="preflight",
                reason="needs 12 MB free flash, has 5 MB")]


def test_retry_limit_takes_a_deferred_terminal_and_leaves_an_unfit_one_out(tmp_path):
    doc = make_doc(unfit_rows())
    assert (doc["totals"]["unfit"], doc["totals"]["deferred"]) == (1, 1)
    run = report.write_run(tmp_path / "reports", doc)
    # Not enough free flash now: a re-run may find it. Less flash than the release needs: no re-run will.
    assert (run / "retry.limit").read_text().splitlines() == ["KST00003"]
    parsed = list(csv.DictReader(io.StringIO((run / "report.csv").read_text(), newline="")))
    assert [(line["serial"], line["status"], line["deferred_by"]) for line in parsed] == [
        ("KST00001", "updated", ""), ("KST00002", "unfit", ""), ("KST00003", "deferred", "preflight")]
    assert parsed[1]["reason"] == UNFIT_REASON


def test_latest_is_a_relative_link_to_the_newest_run(tmp_path):
    reports = tmp_path / "reports"
    report.write_run(reports, make_doc())
    newer = make_doc(run_id="20261125T010000Z-update-9c1d", started_at="2026-11-25T01:00:00Z",
                     finished_at="2026-11-25T01:20:00Z")
    report.write_run(reports, newer)
    latest = reports / "latest"
    assert latest.is_symlink()
    assert os.readlink(latest) == "20261125T010000Z-update-9c1d"  # relative: the tree can be moved or copied
    assert json.loads((latest / "report.json").read_text())["run_id"] == newer["run_id"]
    assert sorted(path.name for path in reports.iterdir()) == [
        "20261124T090102Z-update-3f2a", "20261125T010000Z-update-9c1d", "latest"]  # no temp link left over


def test_write_run_does_not_follow_a_planted_symlink(tmp_path):
    reports, outside = tmp_path / "reports", tmp_path / "outside"
    reports.mkdir()
    outside.mkdir()
    doc = make_doc()
    (reports / doc["run_id"]).symlink_to(outside)
    with pytest.raises(ReportError, match="symlink"):
        report.write_run(reports, doc)
    assert list(outside.iterdir()) == []
    bad = make_doc()
    bad["terminals"][0]["status"] = "done"
    with pytest.raises(ReportError, match="status"):
        report.write_run(tmp_path / "other", bad)
    assert not (tmp_path / "other").exists()  # nothing written for a wrong document


# --- HTML ------------------------------------------------------------------------------------------

def test_html_escapes_terminal_text_and_loads_nothing_from_outside():
    page = report.render_html(make_doc())
    assert "<img" not in page
    assert page.count("</script>") == 2  # the data block's and the code's own closing tags, no third
    assert "<!--" not in page
    data = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(data)["terminals"][3]["reason"] == HOSTILE  # escaped, not altered
    assert not re.search(r"https?://", page, re.I)
    markup = page.replace(data, "")  # the data block holds the hostile text itself, as JSON
    assert not re.search(r"\b(src|href|action|srcset)\s*=", markup, re.I)
    assert not re.search(r"url\(|@import", markup, re.I)
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "report.json" in page.split("<noscript>")[1].split("</noscript>")[0]


class Dom(HTMLParser):
    """Just enough of a DOM from Chromium's --dump-dom: elements with their attributes, text and parent."""

    VOID = {"meta", "br", "img", "input", "link", "hr"}

    def __init__(self, text):
        super().__init__()
        self.elements, self.stack = [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "attrs": dict(attrs), "text": "", "parents": list(self.stack)}
        self.elements.append(element)
        if tag not in self.VOID:
            self.stack.append(element)

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()["tag"] != tag:
            pass

    def handle_data(self, data):
        for element in self.stack:
            element["text"] += data

    def find(self, tag=None, inside=None, **attrs):
        return [element for element in self.elements
                if (tag is None or element["tag"] == tag)
                and all(element["attrs"].get(name.replace("_", "-")) == value for name, value in attrs.items())
                and (inside is None or any(parent["attrs"].get("id") == inside for parent in element["parents"]))]


def dump_dom(page, tmp_path, fragment="", timeout=60):
    """The DOM of a page after its scripts ran, from a real headless Chromium."""
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing: install Debian's chromium package to test report.html")
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", page.as_uri() + fragment]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return Dom(done.stdout)


def test_html_in_headless_chromium_shows_the_counts_waves_failures_and_sorts(tmp_path):
    doc = make_doc()
    run = report.write_run(tmp_path / "reports", doc)
    dom = dump_dom(run / "report.html", tmp_path, fragment="#sort=-duration_s")
    assert dom.find("body", data_ready="true"), "the page's script did not run to its end"

    # The count matrix equals what the JSON says, cell by cell, with totals for each row and the fleet.
    for (model, region), counts in report.matrix(doc["terminals"]).items():
        for status, count in counts.items():
            (cell,) = dom.find("td", data_model=model, data_region=region, data_status=status)
            assert int(cell["text"]) == count, (model, region, status)
        (total,) = dom.find("td", data_model=model, data_region=region, data_status="total")
        assert int(total["text"]) == sum(counts.values())
    for status, count in doc["totals"].items():
        (cell,) = dom.find("td", data_scope="fleet", data_status=status)
        assert int(cell["text"]) == count
    assert int(dom.find("td", data_scope="fleet", data_status="total")[0]["text"]) == 12

    # The halt banner says why, and the budget's reason.
    (banner,) = dom.find(id="halt")
    assert "Rollout halted" in banner["text"]
    assert "error budget exhausted after wave 2" in banner["text"]
    assert "2 terminals left untouched" in banner["text"]

    # One table row per terminal; the hostile reason is text, not markup.
    rows = [element for element in dom.find("tr", inside="terminals") if "data-serial" in element["attrs"]]
    assert len(rows) == len(doc["terminals"])
    assert not dom.find("img")
    (reason,) = [cell for cell in dom.find("td", inside="failures", **{"class": "reason"})
                 if "onerror" in cell["text"]]
    assert reason["text"] == HOSTILE

    # #sort=-duration_s sorted the table numerically, longest first (as text, "9.5" would beat "100.25").
    durations = {value["serial"]: value["duration_s"] for value in doc["terminals"]}
    shown = [element["attrs"]["data-serial"] for element in rows]
    assert [durations[serial] for serial in shown] == sorted(durations.values(), reverse=True)
    assert dom.find("table", id="terminals")[0]["attrs"]["data-sorted-by"] == "-duration_s"
    assert dom.find("th", data_key="duration_s")[0]["attrs"]["aria-sort"] == "descending"

    # The waves: three on the timeline, the fourth not started; counts and statuses per wave.
    waves = {int(element["attrs"]["data-wave"]): element for element in dom.find("div", inside="timeline")
             if "data-wave" in element["attrs"]}
    assert sorted(waves) == [0, 1, 2, 3]
    assert waves[3]["attrs"]["data-state"] == "not started" and "not started" in waves[3]["text"]
    assert "wave 1: 4 terminals" in waves[1]["text"]
    assert "1 current, 2 updated, 1 failed" in waves[1]["text"]
    bars = [element for element in dom.find("div", inside="timeline") if element["attrs"].get("class") == "bar"]
    assert len(bars) == 3
    assert bars[0]["attrs"]["style"].startswith("left: 0.67%")  # 8 s of a 1200 s run


def test_html_counts_an_unfit_terminal_and_lists_it_with_its_reason(tmp_path):
    run = report.write_run(tmp_path / "reports", make_doc(unfit_rows()))
    dom = dump_dom(run / "report.html", tmp_path)
    assert dom.find("body", data_ready="true"), "the page's script did not run to its end"
    (count,) = dom.find("td", data_scope="fleet", data_status="unfit")
    assert count["text"] == "1"
    # Not retried, but not at the release either: the operator reads why with the other problems.
    listed = {element["attrs"]["data-serial"]: element for element in dom.find("tr", inside="failures")
              if "data-serial" in element["attrs"]}
    assert sorted(listed) == ["KST00002", "KST00003"]
    assert listed["KST00002"]["attrs"]["data-status"] == "unfit" and UNFIT_REASON in listed["KST00002"]["text"]


def big_fleet(size):
    """A fleet of `size` terminals as a plan with every window closed leaves it, but for a few that failed."""
    rows = []
    for index in range(size):
        serial = f"HRN{index:06d}"
        if index % 10_000 == 7:
            rows.append(row(serial, "heron_h5", "eu_west", 1, "failed", reason=f"verify: posd unhealthy ({index})",
                            duration_s=float(index % 997)))
        else:
            rows.append(row(serial, "heron_h5", ("eu_west", "us_east", "ap_south")[index % 3], None, "deferred",
                            deferred_by="window", reason="outside maintenance window 01:00-05:00",
                            window_opens_at="2026-11-25T00:00:00Z", duration_s=float(index % 997)))
    return rows


def test_the_console_lists_a_few_terminals_of_each_cause_and_counts_the_rest():
    rows = [*big_fleet(1_000), row("KST00001", "a80", "eu_west", 0, "updated")]
    lines = report.console_problems(rows, per_group=3)
    assert lines == [
        "  HRN000000 deferred: outside maintenance window 01:00-05:00",
        "  HRN000001 deferred: outside maintenance window 01:00-05:00",
        "  HRN000002 deferred: outside maintenance window 01:00-05:00",
        "  ... and 996 more deferred (deferred by window): every terminal is in report.csv",
        "  HRN000007 failed: verify: posd unhealthy (7)",
    ]


def test_html_of_100000_terminals_opens_and_pages_through_every_terminal_sorted(tmp_path):
    """issue 16: the report of a whole large fleet opens in a browser, a page of the terminals at a time."""
    doc = make_doc(big_fleet(100_000), waves=[])
    run = report.write_run(tmp_path / "reports", doc)
    size = (run / "report.html").stat().st_size
    assert size < 60 * 2**20, f"report.html of 100,000 terminals is {size / 2**20:.1f} MiB"
    dom = dump_dom(run / "report.html", tmp_path, fragment="#sort=-duration_s&page=2", timeout=180)
    assert dom.find("body", data_ready="true"), "the page's script did not run to its end"

    (pager,) = dom.find("div", id="pager")
    assert (pager["attrs"]["data-page"], pager["attrs"]["data-pages"]) == ("2", "200")
    assert dom.find("span", id="page-label")[0]["text"] == "terminals 501\u20131000 of 100000 (page 2 of 200)"
    shown = [element["attrs"]["data-serial"] for element in dom.find("tr", inside="terminals")
             if "data-serial" in element["attrs"]]
    assert len(shown) == report.HTML_PAGE_SIZE
    # Page 2 of the whole fleet sorted by duration, longest first: rows 501 to 1000 of that order.
    durations = sorted((value["duration_s"] for value in doc["terminals"]), reverse=True)
    by_serial = {value["serial"]: value["duration_s"] for value in doc["terminals"]}
    assert [by_serial[serial] for serial in shown] == durations[500:1000]

    # The problems list: the ten failures, and the first terminals deferred by their window, then a count.
    listed = [element for element in dom.find("tr", inside="failures") if "data-serial" in element["attrs"]]
    assert sum(element["attrs"]["data-status"] == "failed" for element in listed) == 10
    assert sum(element["attrs"]["data-status"] == "deferred" for element in listed) == report.HTML_PROBLEMS_PER_GROUP
    (more,) = [element for element in dom.find("tr", inside="failures") if "data-more" in element["attrs"]]
    assert int(more["attrs"]["data-more"]) == 99_990 - report.HTML_PROBLEMS_PER_GROUP
    assert int(dom.find("td", data_scope="fleet", data_status="deferred")[0]["text"]) == 99_990


# --- merging AWX slices ----------------------------------------------------------------------------

def slice_doc(serials, index, **changes):
    whole = make_doc()
    rows = [value for value in whole["terminals"] if value["serial"] in serials]
    waves = [dict(wave, serials=[serial for serial in wave["serials"] if serial in serials]) for wave in whole["waves"]]
    doc = make_doc(rows, run_id=f"20261124T09010{index}Z-update-s{index}", waves=waves, **changes)
    doc["budget"] = dict(doc["budget"], spent=index, untouched=None if index == 2 else 1, reason=f"slice {index}")
    return doc


def test_merge_of_three_slices_equals_the_whole_run():
    whole = make_doc()
    serials = [value["serial"] for value in whole["terminals"]]
    slices = [slice_doc(serials[0::3], 0, halted=False, halt_reason=None),
              slice_doc(serials[1::3], 1, started_at="2026-11-24T09:00:00Z", awx_job_id="41"),
              slice_doc(serials[2::3], 2, finished_at="2026-11-24T09:30:00Z", awx_job_id="42")]
    merged = report.merge(slices)
    assert merged["terminals"] == whole["terminals"]
    assert merged["totals"] == whole["totals"]
    assert [sorted(wave["serials"]) for wave in merged["waves"]] == [sorted(wave["serials"]) for wave in whole["waves"]]
    assert merged["waves"][3]["started_at"] is None
    assert (merged["started_at"], merged["finished_at"]) == ("2026-11-24T09:00:00Z", "2026-11-24T09:30:00Z")
    assert merged["halted"] is True
    assert "20261124T090101Z-update-s1: error budget exhausted" in merged["halt_reason"]
    assert "s0" not in merged["halt_reason"]
    assert merged["budget"]["spent"] == 0 + 1 + 2 and merged["budget"]["untouched"] == 2
    assert merged["budget"]["reason"].startswith("merged from 3 slices: ")
    assert merged["awx_job_id"] == "41,42"
    assert re.fullmatch(r"20261124T090000Z-update-merged-[0-9a-f]{6}", merged["run_id"])
    assert report.merge(slices, run_id="fleet-2026.12.0")["run_id"] == "fleet-2026.12.0"


def test_merge_refuses_a_terminal_in_two_slices_and_other_releases():
    one, two = slice_doc(["KST00001", "KST00002"], 0), slice_doc(["KST00002", "KST00003"], 1)
    with pytest.raises(ReportError, match="terminal KST00002 is in both 20261124T090100Z-update-s0 and "):
        report.merge([one, two])
    other = slice_doc(["KST00003"], 1, release="2027.01.0")
    with pytest.raises(ReportError, match="release"):
        report.merge([one, other])


def test_merge_and_validate_from_the_command_line(tmp_path):
    serials = [value["serial"] for value in make_doc()["terminals"]]
    dirs = [str(report.write_run(tmp_path / "slices", slice_doc(serials[i::2], i))) for i in range(2)]
    command = [sys.executable, "-m", "posfleet.report"]
    merged = subprocess.run([*command, "merge", "--out", str(tmp_path / "reports"), *dirs],
                            capture_output=True, text=True, cwd=REPO, check=True).stdout.strip()
    assert Path(merged).parent == tmp_path / "reports"
    assert len(json.loads((tmp_path / "reports" / "latest" / "report.json").read_text())["terminals"]) == 12
    checked = subprocess.run([*command, "validate", merged], capture_output=True, text=True, cwd=REPO, check=True)
    assert "12 terminals" in checked.stdout
    broken = Path(dirs[0]) / "report.json"
    broken.write_text(broken.read_text().replace('"status": "updated"', '"status": "finished"', 1))
    failed = subprocess.run([*command, "validate", dirs[0]], capture_output=True, text=True, cwd=REPO, check=False)
    assert failed.returncode == 1 and "'finished'" in failed.stderr


# --- the audit log ---------------------------------------------------------------------------------

def test_audit_entries_record_every_change_with_from_and_to():
    doc = make_doc(awx_job_id="77")
    entries = report.audit_entries(doc, "ops-anna", "2026-11-24T09:21:02Z", control_node="ctl-1.example.net")
    first = [entry for entry in entries if entry["terminal"] == "KST00001"]
    assert [(entry["what"], entry["from"], entry["to"], entry["action"], entry["event"], entry["status"])
            for entry in first] == [
        ("app", "4.1.0", "4.2.0", "update", "ended", "updated"),
        ("pack:catalog", "2026.11", "2026.12", "update", "ended", "updated"),
        ("pack:merchant", "7", "8", "update", "ended", "updated"),
    ]  # params did not change: no entry
    assert {entry["step"] for entry in first} == {"verify"}  # the last step it reached
    assert {entry["who"] for entry in entries} == {"ops-anna"} and {entry["awx_job_id"] for entry in entries} == {"77"}
    assert {(entry["at"], entry["run_id"], entry["control_node"], entry["release"]) for entry in entries} == {
        ("2026-11-24T09:21:02Z", "20261124T090102Z-update-3f2a", "ctl-1.example.net", "2026.12.0")}
    # Rolled back: one line for the whole terminal, its versions before and (unknown here) after.
    (rollback,) = [entry for entry in entries if entry["terminal"] == "KST00004"]
    assert (rollback["what"], rollback["action"], rollback["status"], rollback["step"], rollback["to"]) == (
        "terminal", "update", "rolled_back", "rollback", None)
    assert rollback["from"] == {"app": "4.1.0", "pack:catalog": "2026.11", "pack:merchant": "7",
                                "pack:params": "2026.11.1"}
    assert rollback["reason"] == HOSTILE  # text in a JSON string: json.dumps escapes it
    assert {entry["terminal"] for entry in entries} == {"KST00001", "KST00003", "KST00004", "KST00005", "KST00009",
                                                        "KST00012"}  # nothing for failed, deferred, current ...
    assert report.audit_entries(make_doc(mode="check"), "ops-anna", "2026-11-24T09:21:02Z") == []
    assert report.audit_entries(make_doc(mode="plan"), "ops-anna", "2026-11-24T09:21:02Z") == []


def _append_many(path, worker):
    entry = dict.fromkeys(report.AUDIT_KEYS)
    for number in range(60):
        # Longer than PIPE_BUF (4096): only the lock keeps such writes whole.
        batch = [dict(entry, at="2026-11-24T09:21:02Z", who=f"slice-{worker}", control_node="ctl-1", run_id="r",
                      terminal=f"T{number}", what="app", action="update", event="ended", status="updated",
                      to="x" * 3000) for _ in range(3)]
        report.append_audit(path, batch)


def test_concurrent_appends_give_whole_lines(tmp_path):
    path = tmp_path / "audit.jsonl"
    first = report.audit_entries(make_doc(), "ops-anna", "2026-11-24T09:21:02Z")
    assert report.append_audit(path, first) == len(first) == 16  # 5 updated x 3 changes + 1 rollback
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(path, worker)) for worker in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 16 + 6 * 60 * 3
    parsed = [json.loads(line) for line in lines]  # every line is one whole entry
    assert parsed[0]["terminal"] == "KST00001" and parsed[0]["what"] == "app"
    assert {entry["who"] for entry in parsed[16:]} == {f"slice-{worker}" for worker in range(6)}
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)
    with pytest.raises(ReportError, match="action 'delete'"):
        report.append_audit(path, [dict(parsed[0], action="delete")])



def test_the_schema_speaks_the_one_status_vocabulary():
    # posfleet.statuses owns the statuses; the schema's enum and totals must not drift from it.
    schema = json.loads((REPO / "posfleet" / "report.schema.json").read_text())
    found = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("enum"), list) and "updated" in node["enum"]:
                found.append(tuple(node["enum"]))
            if set(node.get("required") or ()) >= {"updated", "failed"}:
                found.append(tuple(node["required"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert found and all(enum == statuses.OUTCOMES for enum in found), found
    assert schema["$defs"]["terminal"]["properties"]["deferred_by"]["enum"] == [None, *statuses.DEFERRED_BY]
    assert report.STATUSES == statuses.OUTCOMES and set(statuses.RECORDED) < set(statuses.OUTCOMES)
