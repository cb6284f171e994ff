"""The posfleet_report callback (plugins/callback/posfleet_report.py) reads each terminal's outcome from
the facts the pipeline's steps record; a step that records its own decision must reach the report."""

from __future__ import annotations

from types import SimpleNamespace

from ansible_collections.posfleet.fleet.plugins.callback import posfleet_report as report


def result(serial, action, data):
    """What Ansible hands a callback for a task's result on one terminal."""
    task = SimpleNamespace(_uuid=f"{action}-task", _role=None, action=action, delegate_facts=False,
                           get_name=lambda: action)
    return SimpleNamespace(_host=SimpleNamespace(get_name=lambda: serial), _task=task, _result=data)


def test_a_terminal_found_not_ready_at_the_quiesce_is_reported_deferred_not_unreachable():
    callback = report.CallbackModule()
    # The survey found it go; the quiesce step's check before the change then found it not ready
    # (and recorded it started, in the same result).
    callback.v2_runner_on_ok(result("KST00001", "pos_preflight", {"ansible_facts": {
        "pos_update_status": "go", "pos_update_reason": ""}}))
    callback.v2_runner_on_ok(result("KST00001", "posfleet.pos_maintenance", {"ansible_facts": {
        "pos_update_status": "deferred", "pos_update_reason": "battery at 12% (needs 30%)",
        "pos_update_deferred_by": "preflight", "pos_update_started": True, "pos_terminal": {"battery_pct": 12}}}))
    assert callback._status("KST00001") == ("deferred", "preflight", "battery at 12% (needs 30%)")


def test_a_terminal_verified_is_reported_updated():
    callback = report.CallbackModule()
    callback.v2_runner_on_ok(result("KST00002", "pos_maintenance", {"ansible_facts": {
        "pos_update_status": "go", "pos_update_started": True}}))
    callback.v2_runner_on_ok(result("KST00002", "pos_verify", {"ansible_facts": {
        "pos_update_status": "updated", "pos_update_reason": ""}}))
    assert callback._status("KST00002") == ("updated", None, "")


def test_a_terminal_deferred_by_the_fleet_survey_is_reported_with_its_window_and_no_task_of_its_own():
    """pos_fleet_survey decides every window at once; no task ever runs on the terminals it defers."""
    callback = report.CallbackModule()
    closed = {"open": False, "window": "23:30-04:00", "timezone": "America/New_York", "source": "region",
              "opens_at_utc": "2026-11-24T04:30:00+00:00", "reason": "outside its maintenance window 23:30-04:00"}
    fleet = {"contact": ["KST00001"], "windows": {"us_east": closed}, "deferred": {"USE00002": "us_east"}}
    delegated = result("KST00001", "posfleet.fleet.pos_fleet_survey", {"ansible_facts": {"update_fleet": fleet}})
    delegated._task.delegate_facts = True
    callback.v2_runner_on_ok(delegated)
    assert callback._status("USE00002") == ("deferred", "window", "outside its maintenance window 23:30-04:00")
    row = callback._row("USE00002", {"USE00002": {"pos_model": "heron", "pos_region": "us_east"}})
    assert (row["window_opens_at"], row["before"], row["region"]) == ("2026-11-24T04:30:00+00:00", None, "us_east")
    assert callback._status("KST00001")[0] == "unreachable", "surveyed, not deferred: its own survey decides"
