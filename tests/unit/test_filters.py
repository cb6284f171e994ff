"""The decisions the playbooks take through posfleet's filters."""

import importlib.util
from pathlib import Path

# Loaded from its file: the name `posfleet` is also the control-node package at the repository root.
_SPEC = importlib.util.spec_from_file_location(
    "posfleet_filters", Path(__file__).resolve().parents[2] / "plugins" / "filter" / "posfleet.py")
filters = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(filters)

PROFILE = {"battery": True, "battery_min_pct": 30}
ENTRY = {"storage_mb": 10}


def facts(**overrides):
    base = {"current": False, "storage_free_mb": 50, "battery_pct": 80, "charging": False,
            "posd": {"state": "idle", "maintenance": False}, "probe": {"reachable": True, "kbps": 5000}}
    base.update(overrides)
    return base


def verdict(**overrides):
    return filters.pos_preflight_verdict(facts(**overrides), PROFILE, ENTRY, min_kbps=64, margin_mb=2)


def test_current_terminal_does_nothing():
    assert verdict(current=True)["status"] == "current"


def test_terminal_left_in_maintenance_is_not_current():
    # Interrupted after the switch: versions match but it was never verified and does not sell.
    result = verdict(current=True, posd={"state": "maintenance", "maintenance": True})
    assert result["status"] == "go"


def test_deferrals_name_their_reason():
    assert "needs 12 MB" in verdict(storage_free_mb=5)["reason"]
    assert "battery at 20%" in verdict(battery_pct=20)["reason"]
    assert verdict(battery_pct=20, charging=True)["status"] == "go"
    assert "unreachable" in verdict(probe={"reachable": False, "error": "timed out"})["reason"]
    assert "too slow" in verdict(probe={"reachable": True, "kbps": 10})["reason"]
    assert "not answering" in verdict(posd={"state": "down", "health_detail": "no socket"})["reason"]


def test_summary_counts_every_outcome_and_a_lost_terminal_as_unreachable():
    hostvars = {
        "A": {"pos_model": "m", "pos_region": "r", "pos_update_status": "updated"},
        "B": {"pos_model": "m", "pos_region": "r", "pos_update_status": "rolled_back"},
        "C": {"pos_model": "m", "pos_region": "r", "pos_update_status": "go"},
        "D": {"pos_model": "m", "pos_region": "r"},
    }
    rows = filters.pos_update_summary(hostvars, ["A", "B", "C", "D"])
    assert rows[0]["updated"] == 1 and rows[0]["rolled_back"] == 1 and rows[0]["unreachable"] == 2
    assert rows[-1]["model"] == "TOTAL"
    assert filters.pos_update_problems(hostvars, ["A", "B"]) == ["B rolled_back: no answer"]


def test_drift_report_lists_terminals_that_could_not_be_audited():
    hostvars = {"A": {"verify_drift": []}, "B": {"verify_drift": ["pack:params: changed"]}, "C": {}}
    assert filters.pos_drift_report(hostvars, ["A", "B", "C"]) == {
        "B": ["pack:params: changed"], "C": ["not audited: the terminal did not answer"]}


def test_merchant_version_matches_what_the_terminal_computes():
    profile = {"name": "Café Ü", "merchant_id": "M1"}
    assert filters.pos_merchant_version(profile) == filters.pos_merchant_version(dict(reversed(profile.items())))
    assert len(filters.pos_merchant_version(profile)) == 12
