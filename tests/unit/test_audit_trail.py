"""The audit trail (reports/audit.jsonl, issue 17): a line when a change to a terminal starts and one when it
ends, written as the run goes, so a run killed in the middle leaves its started terminals; backups, restores,
publications and the update guard's switch-backs; every line with who, when, where, what and the object.

The posfleet_report callback is fed the task results Ansible would hand it, as in test_report_callback.py;
publications go through posfleet.release's publish. No lab, no ansible-playbook.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from ansible.plugins.loader import callback_loader
from test_publish_integrity import make_read_only
from test_release import RELEASE_ID, ok, posrelease, write_spec

from posfleet import report as posreport
from posfleet.report import ReportError

RUN = {"id": "20261124T090102Z-update-3f2a", "by": "ops-anna", "control_node": "ctl-1",
       "started": "2026-11-24T09:01:02Z"}
OLD = {"app_version": "4.1.0", "packs": {"params": "2026.11.1", "catalog": "2026.11"}}
NEW = {"app_version": "4.2.0", "packs": {"params": "2026.11.1", "catalog": "2026.12"}}
SETTINGS = {"mode": "update", "canary_per_model": 1, "waves": [10, 30, 100], "order": "region", "seed": 0,
            "batch_size": 100, "max_failed": None, "max_failed_pct": 10, "count_unreachable": False,
            "ignore_windows": True, "clock_utc": None}
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "reports.md"
# The command docs/reports.md gives for the terminals a run started and did not end (a run killed with kill -9).
NOT_ENDED = re.search(r"^jq -rn '(.*?)' reports/audit\.jsonl$", DOCS.read_text(), re.MULTILINE | re.DOTALL).group(1)


class Run:
    """One ansible-playbook run as the callback sees it: tasks start and end on terminals, in roles."""

    def __init__(self, report_dir, playbook="update.yml", **extra_vars):
        self.callback = callback_loader.get("posfleet.fleet.posfleet_report")
        self.callback.set_options(direct={"report_dir": str(report_dir), "progress": False})
        self.callback.v2_playbook_on_start(SimpleNamespace(_file_name=f"/srv/posfleet/playbooks/{playbook}"))
        manager = SimpleNamespace(extra_vars=extra_vars, _inventory=None)
        self.callback.v2_playbook_on_play_start(SimpleNamespace(get_variable_manager=lambda: manager))
        self.trail = Path(report_dir) / "audit.jsonl"
        self.count = 0

    def _result(self, serial, action, data, role=None, **task):
        self.count += 1
        host = SimpleNamespace(get_name=lambda: serial)
        played = SimpleNamespace(get_name=lambda include_role_fqcn=True: role) if role else None
        fields = {"_uuid": f"task-{self.count}", "_role": played, "action": action, "delegate_facts": False,
                  "ignore_unreachable": False, "get_name": lambda: action, **task}
        result = SimpleNamespace(_host=host, _task=SimpleNamespace(**fields), _result=data)
        self.callback.v2_runner_on_start(host, result._task)
        return result

    def ok(self, serial, action, data, role=None, **task):
        self.callback.v2_runner_on_ok(self._result(serial, action, data, role, **task))

    def failed(self, serial, action, data, role=None, **task):
        self.callback.v2_runner_on_failed(self._result(serial, action, data, role, **task))

    def unreachable(self, serial, action, msg, role=None, **task):
        self.callback.v2_runner_on_unreachable(self._result(serial, action, {"msg": msg}, role, **task))

    def lines(self):
        return [json.loads(line) for line in self.trail.read_text().splitlines()] if self.trail.exists() else []

    def survey(self, *serials):
        """rollout_plan.yml: the run's record and settings, then every terminal found go."""
        self.ok(serials[-1], "ansible.builtin.set_fact", {"ansible_facts": {"posfleet_run": RUN}}, delegate_facts=True)
        self.ok(serials[0], "ansible.builtin.set_fact", {"ansible_facts": {"update_settings": SETTINGS}},
                delegate_facts=True)
        self.ok(serials[0], "ansible.builtin.set_fact", {"ansible_facts": {"update_targets": list(serials)}})
        for serial in serials:
            self.ok(serial, "posfleet.fleet.pos_preflight", {"ansible_facts": {
                "pos_update_status": "go", "pos_update_reason": "", "pos_update_before": OLD,
                "pos_update_target": NEW}}, role="pos_preflight")

    def quiesce(self, serial):
        """The quiesce step's check before the change: still ready, out of service, started."""
        self.ok(serial, "posfleet.fleet.pos_maintenance", {"changed": True, "ansible_facts": {
            "pos_update_started": True, "pos_update_before": OLD, "pos_terminal": {"app_version": "4.1.0"}}},
            role="pos_quiesce")


def by(lines, **match):
    return [line for line in lines if match.items() <= line.items()]


def test_a_killed_run_leaves_its_started_terminals_without_an_end(tmp_path):
    run = Run(tmp_path, awx_user_name="ops-anna", awx_job_id=77, update_release="2026.12.0")
    run.survey("KST00001", "KST00002")
    assert run.lines() == []  # the survey changes nothing
    run.quiesce("KST00001")
    run.quiesce("KST00002")
    # On the disk as soon as the change starts, not at the end of the run.
    started = run.lines()
    assert [(line["terminal"], line["event"], line["step"]) for line in started] == [
        ("KST00001", "started", "quiesce"), ("KST00002", "started", "quiesce")]
    for serial in ("KST00001", "KST00002"):
        run.ok(serial, "posfleet.fleet.pos_txn_upload", {"changed": False}, role="pos_txn_upload")
        run.ok(serial, "posfleet.fleet.pos_backup", {"changed": True, "stored": {
            "changed": True, "path": f"/var/lib/posfleet/backups/{serial}/20261124T091000Z-4.1.0.tar.enc"}},
            role="pos_backup")
        run.ok(serial, "posfleet.fleet.pos_package", {"changed": True, "bytes_downloaded": 1000}, role="pos_package")
    run.ok("KST00001", "posfleet.fleet.pos_verify", {"ansible_facts": {"pos_update_status": "updated",
                                                                       "pos_update_reason": ""}}, role="pos_verify")
    # ... and ansible-playbook is killed with kill -9: KST00002 never ends, no stats are called.

    lines = run.lines()
    assert len(lines) == 4  # two starts, the two components KST00001's update changed; no backup line
    for line in lines:
        assert line["who"] == "ops-anna" and line["awx_job_id"] == "77"
        assert line["control_node"] == posreport.this_control_node() and line["control_node"]
        assert line["run_id"] == RUN["id"] and ISO.fullmatch(line["at"])
        assert (line["action"], line["release"], line["distribution_point"]) == ("update", "2026.12.0", None)
    for line in by(lines, event="started"):
        assert (line["what"], line["status"]) == ("terminal", None)
        assert line["from"] == {"app": "4.1.0", "pack:catalog": "2026.11", "pack:params": "2026.11.1"}
        assert line["to"] == {"app": "4.2.0", "pack:catalog": "2026.12", "pack:params": "2026.11.1"}
    ended = by(lines, event="ended")
    assert [(line["terminal"], line["what"], line["from"], line["to"], line["status"], line["step"])
            for line in ended] == [("KST00001", "app", "4.1.0", "4.2.0", "updated", "verify"),
                                   ("KST00001", "pack:catalog", "2026.11", "2026.12", "updated", "verify")]
    if shutil.which("jq"):
        found = subprocess.run(["jq", "-rn", NOT_ENDED, str(run.trail)], capture_output=True, text=True, check=True)
        assert [line.split("\t")[1:] for line in found.stdout.splitlines()] == [
            [RUN["id"], "KST00002", "update", "quiesce"]]


def test_every_started_change_ends_once_with_its_outcome_and_last_step(tmp_path):
    run = Run(tmp_path, update_release="2026.12.0")
    run.survey("KST00001", "KST00002", "KST00003", "KST00004")
    for serial in ("KST00001", "KST00002", "KST00003", "KST00004"):
        run.quiesce(serial)
    # Sales still to upload: deferred, nothing changed.
    run.ok("KST00001", "posfleet.fleet.pos_txn_upload", {"ansible_facts": {
        "pos_update_status": "deferred", "pos_update_deferred_by": "upload", "pos_update_reason": "3 pending"}},
        role="pos_txn_upload")
    # Cut off during the package step (ignored, the pipeline goes on), back, rolled back from its snapshot.
    run.unreachable("KST00002", "posfleet.fleet.pos_package", "ssh: timed out", role="pos_package",
                    ignore_unreachable=True)
    assert len(by(run.lines(), terminal="KST00002")) == 1  # not ended: update.yml checks what the cut left
    run.ok("KST00002", "posfleet.fleet.pos_restore", {"changed": True, "versions_before": NEW,
                                                      "versions_after": OLD}, role="pos_rollback")
    run.ok("KST00002", "posfleet.fleet.pos_record", {"ansible_facts": {
        "pos_update_status": "rolled_back", "pos_update_reason": "pos_package: ssh: timed out"}},
        role="pos_rollback")
    # Dropped by Ansible in the middle of the data sync.
    run.unreachable("KST00003", "posfleet.fleet.pos_data_sync", "no route to host", role="pos_data_sync")
    # A failure with no rescue: it ends when the batch is over.
    run.failed("KST00004", "posfleet.fleet.pos_reboot", {"msg": "boot id unchanged"}, role="pos_reboot")
    assert by(run.lines(), terminal="KST00004", event="ended") == []
    run.callback.v2_playbook_on_stats(SimpleNamespace())

    ended = {line["terminal"]: line for line in by(run.lines(), event="ended")}
    assert len(by(run.lines(), event="ended")) == 4  # one each: nothing switched for good on any
    summary = {serial: (line["status"], line["step"], line["what"], line["to"]) for serial, line in ended.items()}
    old = posreport.versions(OLD)
    assert summary == {
        "KST00001": ("deferred", "txn_upload", "terminal", old),
        "KST00002": ("rolled_back", "rollback", "terminal", old),
        "KST00003": ("unreachable", "data_sync", "terminal", None),
        "KST00004": ("failed", "reboot", "terminal", None),
    }
    assert ended["KST00003"]["reason"] == "no route to host"
    assert ended["KST00004"]["reason"] == "posfleet.fleet.pos_reboot: boot id unchanged"
    assert {line["release"] for line in run.lines()} == {"2026.12.0"}
    # The report the run wrote and its trail name the same run: posfleet_run's.
    assert json.loads((tmp_path / "latest" / "report.json").read_text())["run_id"] == RUN["id"]


def test_a_check_run_writes_no_line(tmp_path):
    run = Run(tmp_path)
    run.ok("KST00001", "ansible.builtin.set_fact", {"ansible_facts": {"update_settings": dict(SETTINGS, mode="check")}},
           delegate_facts=True)
    run.quiesce("KST00001")
    run.ok("KST00001", "posfleet.fleet.pos_verify", {"ansible_facts": {"pos_update_status": "would_update"}})
    assert run.lines() == []


def test_without_posfleet_run_the_callback_makes_the_run_id_and_takes_the_fact_from_any_result(tmp_path):
    run = Run(tmp_path)
    run.survey("KST00001")
    assert run.callback.run_id == RUN["id"]

    run = Run(tmp_path / "other")
    run.ok("KST00001", "ansible.builtin.set_fact", {"ansible_facts": {"update_settings": SETTINGS}},
           delegate_facts=True)
    run.ok("KST00001", "posfleet.fleet.pos_preflight", {"ansible_facts": {"pos_update_status": "go"}})
    run.ok("KST00001", "ansible.builtin.set_fact", {"ansible_facts": {"posfleet_run": {"id": "../../etc"}}})
    run.quiesce("KST00001")
    (line,) = run.lines()
    assert re.fullmatch(r"\d{8}T\d{6}Z-update-[0-9a-f]{4}", line["run_id"])  # a refused id is not used
    # Found in a loop's results, on another terminal: later lines name it; the open change keeps its id.
    run.ok("KST00009", "ansible.builtin.set_fact", {"results": [{"ansible_facts": {"posfleet_run": RUN}}]})
    assert run.callback._run_id() == RUN["id"]
    run.ok("KST00001", "posfleet.fleet.pos_verify", {"ansible_facts": {"pos_update_status": "updated"}})
    assert {line["run_id"] for line in run.lines()} == {line["run_id"]}


def test_the_update_guards_switch_back_found_at_next_contact_is_logged_for_the_earlier_run(tmp_path):
    run = Run(tmp_path, playbook="update.yml")
    earlier = {"phase": "undone", "release": "2026.12.0",
               "guard": {"at": "2026-11-24T10:40:00+00:00", "reason": "the lease ran out in phase changing",
                         "switched": ["app 4.1.0", "pack catalog 2026.11"]},
               "run": {"id": RUN["id"], "by": "ops-anna"}}
    run.ok("KST00002", "posfleet.fleet.pos_maintenance", {"changed": True, "earlier_lease": earlier},
           role="pos_quiesce")
    (line,) = run.lines()
    assert line == {
        "at": "2026-11-24T10:40:00Z", "who": "pos-update-guard", "awx_job_id": None,
        "control_node": posreport.this_control_node(), "run_id": RUN["id"], "action": "guard", "event": "undone",
        "terminal": "KST00002", "distribution_point": None, "step": None, "status": "undone",
        "reason": f"the lease ran out in phase changing; found at its next contact by run {run.callback.run_id}",
        "release": "2026.12.0", "what": "app,pack:catalog", "from": None,
        "to": {"app": "4.1.0", "pack:catalog": "2026.11"}}
    # A guard that found something missing switched nothing and left the terminal out of service.
    stuck = dict(earlier, phase="stuck", guard={"at": "2026-11-24T10:41:00Z", "reason": "app 4.1.0 is missing"})
    run.failed("KST00003", "posfleet.fleet.pos_maintenance", {"msg": "stuck", "earlier_lease": stuck})
    assert [(line["what"], line["to"]) for line in by(run.lines(), terminal="KST00003")] == [("terminal", None)]
    # A dead run's lease taken over is no guard's doing: the taking run's own lines cover the terminal.
    run.ok("KST00004", "posfleet.fleet.pos_maintenance", {"earlier_lease": dict(earlier, phase="changing")})
    assert by(run.lines(), terminal="KST00004") == []


def test_a_stored_backup_gives_one_line_and_a_restore_starts_and_ends(tmp_path):
    run = Run(tmp_path, playbook="backup.yml", awx_user_name="ops-ben")
    path = "/var/lib/posfleet/backups/KST00003/20261124T010203Z-4.1.0.tar.enc"
    run.ok("KST00003", "posfleet.fleet.pos_backup", {"changed": True, **OLD, "stored": {"changed": True, "path": path}},
           role="pos_backup")
    run.ok("KST00004", "posfleet.fleet.pos_backup", {"changed": False, **OLD, "stored": {"changed": False,
                                                                                         "path": path}})
    (line,) = run.lines()  # KST00004's backup was already in the store: nothing was stored
    assert (line["action"], line["event"], line["status"], line["terminal"], line["release"], line["who"]) == (
        "backup", "ended", "stored", "KST00003", "4.1.0", "ops-ben")
    assert line["from"] == posreport.versions(OLD) and line["reason"] == f"stored as {path}"
    assert re.fullmatch(r"\d{8}T\d{6}Z-backup-[0-9a-f]{4}", line["run_id"])

    # rollback.yml from a backup: decrypted, the terminal quiesced and committed, restored, verified.
    run = Run(tmp_path / "restore", playbook="rollback.yml")
    run.ok("KST00003", "posfleet.fleet.pos_backup_store", {"changed": True, "path": path, "dest": "/x/KST00003.tar"},
           delegate_to="localhost")
    run.ok("KST00003", "ansible.builtin.set_fact", {"ansible_facts": {"rollback_committed": True}})
    run.ok("KST00003", "posfleet.fleet.pos_restore", {"changed": True, "versions_before": NEW,
                                                      "versions_after": OLD}, role="pos_rollback")
    run.ok("KST00003", "posfleet.fleet.pos_record", {"ansible_facts": {
        "pos_update_status": "rolled_back", "pos_update_reason": "restored from its backup"}}, role="pos_rollback")
    lines = run.lines()
    assert [(line["action"], line["event"], line["what"], line["from"], line["to"]) for line in lines] == [
        ("restore", "started", "terminal", None, None),
        ("restore", "ended", "app", "4.2.0", "4.1.0"),
        ("restore", "ended", "pack:catalog", "2026.12", "2026.11"),
    ]
    assert {line["release"] for line in lines} == {"4.1.0"} and lines[0]["reason"] == f"from the backup {path}"


def test_the_audit_log_refuses_a_line_without_what_pci_asks(tmp_path):
    path = tmp_path / "audit.jsonl"
    common = {"run_id": RUN["id"], "who": "ops-anna", "awx_job_id": None, "control_node": "ctl-1"}
    good = posreport.audit_entry(common, "update", "started", terminal="KST00001", step="quiesce", before=OLD,
                                 after=NEW)
    assert posreport.append_audit(path, [good]) == 1
    without_node = {key: value for key, value in good.items() if key != "control_node"}
    cases = {
        "missing ['control_node']": without_node,
        "who must be text": dict(good, who=None),
        "at must be text": dict(good, at=""),
        "names no place": dict(good, terminal=None),
        "event 'finished' is not one of started, ended": dict(good, event="finished"),
        "action 'delete'": dict(good, action="delete"),
        "every line but a started one has an outcome": dict(good, event="ended"),
        "not an ISO 8601 time": dict(good, at="yesterday"),
        "unknown ['user']": dict(good, user="x"),
    }
    for message, entry in cases.items():
        with pytest.raises(ReportError, match=re.escape(message)):
            posreport.append_audit(path, [good, entry])
    assert len(path.read_text().splitlines()) == 1  # nothing of a refused batch was written


# --- publications ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb (dpkg-dev) is not installed")
    base = tmp_path_factory.mktemp("audit-built")
    ok("keygen", "--out", base / "keys")
    ok("build", "--spec", write_spec(base / "spec.yml"), "--out", base / "out")
    ok("sign", "--release", base / "out" / "releases" / RELEASE_ID, "--key", base / "keys" / "release.key")
    return base


def test_a_publication_logs_a_line_per_distribution_point(built, tmp_path, monkeypatch, capsys):
    out, repo, trail = built / "out", tmp_path / "repo", tmp_path / "audit.jsonl"
    posrelease.publish(out, repo, regions=["eu_west"], dry_run=True, audit_log=trail)
    assert not trail.exists()
    posrelease.publish(out, repo, regions=["eu_west", "us_east"], audit_log=trail)
    lines = [json.loads(line) for line in trail.read_text().splitlines()]
    assert [(line["distribution_point"], line["action"], line["event"], line["status"], line["what"],
             line["release"], line["terminal"]) for line in lines] == [
        ("eu_west", "publish", "ended", "published", "release", RELEASE_ID, None),
        ("us_east", "publish", "ended", "published", "release", RELEASE_ID, None)]
    assert lines[0]["reason"] == f"6 file(s) copied to {repo / 'eu_west'}"  # 4 artifacts, signature, manifest
    assert len({line["run_id"] for line in lines}) == 1 and "-publish-" in lines[0]["run_id"]
    assert {line["control_node"] for line in lines} == {posreport.this_control_node()}
    assert {line["who"] for line in lines} == {posreport.local_user()}
    posrelease.publish(out, repo, regions=["eu_west"], audit_log=trail)
    assert len(trail.read_text().splitlines()) == 2  # already there: nothing published, nothing logged

    # The command line appends to $POSFLEET_REPORT_DIR/audit.jsonl, a failed point included.
    monkeypatch.setenv("POSFLEET_REPORT_DIR", str(tmp_path / "reports"))
    make_read_only(monkeypatch, "us_east")
    code = posrelease.main(["publish", "--root", str(out), "--repo", str(tmp_path / "repo2"), "--region", "eu_west",
                            "us_east", "--audit-user", "ops-carla", "--awx-job-id", "88"])
    assert code == 1 and "already published to eu_west" in capsys.readouterr().err
    lines = [json.loads(line) for line in (tmp_path / "reports" / "audit.jsonl").read_text().splitlines()]
    assert [(line["distribution_point"], line["status"]) for line in lines] == [("eu_west", "published"),
                                                                               ("us_east", "failed")]
    assert "Permission denied" in lines[1]["reason"]
    assert {(line["who"], line["awx_job_id"]) for line in lines} == {("ops-carla", "88")}


def test_a_publication_refused_before_any_distribution_point_is_logged_as_failed(built, tmp_path):
    """A release tampered with after signing never reaches a point, and the attempt is on the trail."""
    out, trail = tmp_path / "out", tmp_path / "audit.jsonl"
    shutil.copytree(built / "out", out)
    manifest = out / "releases" / RELEASE_ID / "manifest.yml"
    manifest.write_text(manifest.read_text().replace("description: ", "description: x", 1))
    with pytest.raises(posrelease.ReleaseError):
        posrelease.publish(out, tmp_path / "repo", regions=["eu_west", "us_east"], audit_log=trail,
                           pubkey=built / "keys" / "release.pub")
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").rglob("*.yml"))
    lines = [json.loads(line) for line in trail.read_text().splitlines()]
    assert [(line["distribution_point"], line["action"], line["status"], line["release"]) for line in lines] == [
        ("eu_west", "publish", "failed", RELEASE_ID), ("us_east", "publish", "failed", RELEASE_ID)]
    assert "refused before anything was copied" in lines[0]["reason"] and "signature" in lines[0]["reason"]
