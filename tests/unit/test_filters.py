"""The decisions the playbooks take through posfleet's filters, and the readiness rule behind the survey."""

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.posfleet.fleet.plugins.filter import posfleet as filters
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_merchant
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_readiness import readiness
from ansible_collections.posfleet.fleet.plugins.plugin_utils import posfleet_survey as survey

from posfleet import statuses

PROFILE = {"battery": True, "battery_min_pct": 30}
ENTRY = {"storage_mb": 10}


def facts(**overrides):
    base = {"current": False, "storage_free_mb": 50, "battery_pct": 80, "charging": False,
            "posd": {"state": "idle", "maintenance": False}, "probe": {"reachable": True, "kbps": 5000}}
    base.update(overrides)
    return base


def verdict(**overrides):
    return readiness(facts(**overrides), PROFILE, ENTRY, min_kbps=64, margin_mb=2)


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


def test_a_release_larger_than_the_model_flash_is_unfit_and_a_full_flash_is_deferred():
    # The release needs 10 MB on the model, plus the 2 MB margin: 12 MB.
    def on_model(flash_mb, **overrides):
        return readiness(facts(**overrides), dict(PROFILE, storage_mb=flash_mb), ENTRY, min_kbps=64, margin_mb=2)

    # 11 MB of flash in all: no free space ever makes 12, so not `deferred` (later) but `unfit`.
    unfit = on_model(11)
    assert unfit["status"] == statuses.UNFIT and unfit["by"] is None
    assert "needs 12 MB of flash and the model has 11 MB in all" in unfit["reason"]
    # Unfit whatever the terminal's state of the moment: a full flash or a flat battery changes nothing.
    assert on_model(11, storage_free_mb=5, battery_pct=5)["status"] == statuses.UNFIT
    # Room enough on the model, only not free now: deferred by preflight, for a re-run to pick up.
    full = on_model(64, storage_free_mb=5)
    assert (full["status"], full["by"]) == (statuses.DEFERRED, "preflight")
    assert "needs 12 MB free flash, has 5 MB" in full["reason"]
    # Exactly what it needs fits; a terminal already on the release stays current.
    assert on_model(12)["status"] == statuses.GO
    assert on_model(11, current=True)["status"] == statuses.CURRENT
    # A profile without storage_mb says nothing about the model's flash: only the free space counts.
    assert verdict()["status"] == statuses.GO


def test_the_fleet_survey_computes_each_window_once_and_defers_without_contact():
    """Europe's windows closed and New York's open (05:00 UTC), one London terminal with its own window."""
    london = {"name": "eu_west", "timezone": "Europe/London", "maintenance_window": "01:00-05:00"}
    berlin = {"name": "eu_central", "timezone": "Europe/Berlin", "maintenance_window": "02:00-05:30"}
    new_york = {"name": "us_east", "timezone": "America/New_York", "maintenance_window": "23:30-04:00"}
    fleet = survey.fleet_windows([("W1", london, None), ("N1", new_york, None), ("W2", london, "04:30-06:00"),
                                  ("C1", berlin, None), ("W3", london, None)], "2026-11-25T05:00:00Z")
    assert fleet["contact"] == ["N1", "W2"], "in the order given: the plan's order does not depend on it"
    assert fleet["deferred"] == {"W1": "eu_west", "C1": "eu_central", "W3": "eu_west"}
    assert sorted(fleet["windows"]) == ["eu_central", "eu_west", "eu_west 04:30-06:00", "us_east"]
    closed = fleet["windows"]["eu_west"]
    assert closed["opens_at_utc"] == "2026-11-26T01:00:00+00:00", "London's window closed at 05:00: the next night's"
    assert closed["reason"] == survey.window_reason(closed)
    assert "01:00-05:00 (Europe/London, region)" in closed["reason"]
    own = fleet["windows"]["eu_west 04:30-06:00"]
    assert own["open"] and own["source"] == "override" and own["reason"] is None


def test_the_fleet_survey_names_the_region_with_a_broken_window():
    broken = {"name": "eu_west", "timezone": "Europe/London", "maintenance_window": "25:00-26:00"}
    with pytest.raises(AnsibleFilterError, match="region eu_west"):
        survey.fleet_windows([("W1", broken, None)], "2026-11-25T05:00:00Z")


def test_drift_report_lists_terminals_that_could_not_be_audited():
    hostvars = {"A": {"verify_drift": []}, "B": {"verify_drift": ["pack:params: changed"]}, "C": {}}
    assert filters.pos_drift_report(hostvars, ["A", "B", "C"]) == {
        "B": ["pack:params: changed"], "C": ["not audited: the terminal did not answer"]}


def test_the_fleet_summary_reads_each_terminal_s_facts_from_ansible_facts():
    # As hostvars are with inject_facts_as_vars off (ansible.cfg, and ansible-core's default from 2.24): a
    # fact a module returned is only under ansible_facts. A stray top-level pos_terminal is not a fact.
    seen = {"pos_model": "heron_h5", "pos_region": "eu_west",
            "ansible_facts": {"pos_terminal": {"app_version": "1.2.0", "posd": {"state": "idle", "healthy": True,
                                                                                "pending": 3}}}}
    hostvars = {"A": seen, "B": dict(seen), "C": {"pos_model": "heron_h5", "pos_region": "eu_west",
                                                  "pos_terminal": {"app_version": "9.9.9"}}}
    assert filters.pos_fleet_summary(hostvars, ["A", "B", "C"]) == [{
        "model": "heron_h5", "region": "eu_west", "terminals": 3, "reachable": 2, "app_versions": {"1.2.0": 2},
        "pending": 6, "unhealthy": 0, "selling": 2}]


def test_the_release_target_carries_the_merchant_version_the_terminal_computes():
    profile = {"name": "Café Ü", "merchant_id": "M1"}
    release = {"release": "r1", "models": {"m": {"app": {"version": "1.1.0"}, "packs": {"params": {"version": "p2"}}}}}
    target = filters.FilterModule().filters()["pos_release_target"](release, "m", dict(reversed(profile.items())))
    assert target == {"app_version": "1.1.0", "packs": {"params": "p2", "merchant": pos_merchant.version(profile)}}
    assert len(pos_merchant.version(profile)) == 12
    assert pos_merchant.canonical(profile) == '{"merchant_id":"M1","name":"Café Ü"}'.encode()
