"""Auto update's decisions on the control node (posfleet/autoupdate.py) and its status view
(posfleet/autoupdate_status.py), with a real check-in store, real signed check-ins and a real
ansible-inventory stand-in process; the lab's end-to-end run is tests/integration/test_update_auto.py."""

import datetime
import json
import stat
import sys
from pathlib import Path

import pytest

from posfleet import autoupdate, autoupdate_status
from posfleet.checkin import CheckinStore

sys.path.append(str(Path(__file__).resolve().parents[2] / "collections"))
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_checkin

UTC = datetime.timezone.utc
# 12:00 in London on a winter day: outside a 01:00-05:00 window, inside a 11:00-13:00 catch-up window.
NOON = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
REGION = {"name": "eu_west", "timezone": "Europe/London", "maintenance_window": "01:00-05:00"}
TARGET = {"app_version": "1.1.0", "packs": {"params": "2026.12.0", "catalog": "2026.12.0", "merchant": "abc"}}


def hostvars(**extra):
    base = {"posfleet_release": "2026.12.0", "pos_model_profile": {"name": "kestrel_k200"},
            "pos_region_settings": dict(REGION), "update_ignore_windows": False}
    base.update(extra)
    return base


class FakeFleet:
    def __init__(self, terminals):
        self.hostvars = terminals

    def get(self, serial):
        return self.hostvars.get(serial)


class FakeReleases:
    def __init__(self, target=None):
        self.wanted = target or TARGET

    def target(self, release, variables):
        return self.wanted


@pytest.fixture
def keys(tmp_path):
    directory = tmp_path / "keys"
    directory.mkdir()
    made = {}
    for serial in ("KST1", "KST2", "KST3"):
        made[serial] = pos_checkin.new_key()
        (directory / f"{serial}.key").write_text(made[serial] + "\n")
    return directory, made


@pytest.fixture
def setup(tmp_path, keys):
    directory, made = keys
    store = CheckinStore(tmp_path / "store.db", max_running=1, max_failures=2, backoff_s=60, job_timeout_s=600)
    fleet = FakeFleet({"KST1": hostvars(update_ignore_windows=True), "KST2": hostvars(update_ignore_windows=True),
                       "KST3": hostvars(update_ignore_windows=True)})
    lines = []
    dispatcher = autoupdate.Dispatcher(store, fleet, directory, releases=FakeReleases(), clock=lambda: NOON,
                                       log=lines.append)
    return dispatcher, store, fleet, made, lines


def checkin(dispatcher, made, serial, app="1.0.0", packs=None, lease=None, key_of=None, body=None, os_packages=None):
    message = pos_checkin.message(serial, app, packs if packs is not None else {"params": "2026.11.0"}, "boot-1",
                                  now=NOON.timestamp(), lease=lease, os_packages=os_packages)
    body = body or pos_checkin.encode(message)
    return dispatcher.checkin(body, pos_checkin.sign(body, made[key_of or serial]), "10.231.1.9")


def test_a_terminal_behind_its_assigned_release_is_queued_and_started_once(setup):
    dispatcher, _, _, made, _ = setup
    status, answer = checkin(dispatcher, made, "KST1")
    assert status == 202 and answer["decision"] == "queued"
    assert checkin(dispatcher, made, "KST1")[1]["decision"] == "already_queued"
    events = dispatcher.start_jobs()
    assert [event["meta"]["hosts"] for event in events] == ["KST1"]
    assert events[0]["posfleet_update"]["release"] == "2026.12.0" and "window" not in events[0]["posfleet_update"]
    # Checking in again while its update runs starts nothing more.
    assert checkin(dispatcher, made, "KST1")[1]["decision"] == "already_running"
    assert dispatcher.start_jobs() == []


@pytest.mark.parametrize(("reported", "decision"), [
    ({"libssl3": "3.0.22-1~deb12u2", "tzdata": "2026f-0+deb12u1", "openssl": "3.0.22-1~deb12u2"}, "current"),
    ({"libssl3": "3.0.20-1~deb12u2", "tzdata": "2026f-0+deb12u1"}, "queued"),   # one package behind
    ({"libssl3": "3.0.22-1~deb12u2", "tzdata": None}, "queued"),                # one not installed
    # Not every package reported (the agent did not know to watch tzdata yet): app and packs decide, and the
    # answer's os_watch makes the agent report both at once.
    ({"libssl3": "3.0.20-1~deb12u2"}, "current"),
    (None, "current"),                  # an agent that reports no OS packages: app and packs decide
], ids=["same", "behind", "not-installed", "partly-reported", "not-reported"])
def test_a_terminal_whose_os_packages_differ_from_its_release_is_queued(setup, reported, decision):
    dispatcher, _, _, made, _ = setup
    dispatcher.releases = FakeReleases(dict(TARGET, os_packages={"libssl3": "3.0.22-1~deb12u2",
                                                                 "tzdata": "2026f-0+deb12u1"}))
    current = {"app": "1.1.0", "packs": {"params": "2026.12.0", "catalog": "2026.12.0", "merchant": "abc"}}
    status, answer = checkin(dispatcher, made, "KST1", os_packages=reported, **current)
    assert (status, answer["decision"], answer["os_watch"]) == (202, decision, ["libssl3", "tzdata"])


def test_a_release_without_os_packages_asks_to_watch_none(setup):
    dispatcher, _, _, made, _ = setup
    assert "os_watch" not in checkin(dispatcher, made, "KST1")[1]


def test_at_most_max_running_updates_and_the_others_wait_in_order(setup):
    dispatcher, store, _, made, _ = setup
    for serial in ("KST2", "KST1", "KST3"):
        assert checkin(dispatcher, made, serial)[1]["decision"] == "queued"
    first = dispatcher.start_jobs()
    assert [event["meta"]["hosts"] for event in first] == ["KST2"]
    assert dispatcher.start_jobs() == [], "max_running is 1"
    store.finish("KST2", "updated", NOON, job_id=first[0]["posfleet_update"]["job_id"])
    assert [event["meta"]["hosts"] for event in dispatcher.start_jobs()] == ["KST1"]


def test_a_current_terminal_a_held_one_and_one_in_another_run_start_nothing(setup):
    dispatcher, store, fleet, made, _ = setup
    assert checkin(dispatcher, made, "KST1", app="1.1.0",
                   packs={"params": "2026.12.0", "catalog": "2026.12.0", "merchant": "other"})[1]["decision"] \
        == "current", "the merchant pack is not compared"
    assert checkin(dispatcher, made, "KST2", lease="20261204T010000Z-update-abcd")[1] == \
        {"decision": "in_run", "detail": "run 20261204T010000Z-update-abcd holds the terminal"}
    fleet.hostvars["KST3"].pop("posfleet_release")
    assert checkin(dispatcher, made, "KST3")[1]["decision"] == "unassigned"
    del fleet.hostvars["KST3"]
    assert checkin(dispatcher, made, "KST3")[1]["decision"] == "not_in_inventory"
    assert dispatcher.start_jobs() == []
    # The status view shows each terminal's last answer, whichever part of the control side gave it.
    last = {row["serial"]: row["last_decision"] for row in store.status(NOON)}
    assert last == {"KST1": "current", "KST2": "in_run", "KST3": "not_in_inventory"}


@pytest.mark.parametrize("case", ["another terminal's key", "tampered", "replayed", "unknown serial"])
def test_refused_check_ins_are_answered_403_and_logged(setup, case):
    dispatcher, store, _, made, lines = setup
    if case == "another terminal's key":
        answer = checkin(dispatcher, made, "KST1", key_of="KST2")
        reason = "bad_signature"
    elif case == "tampered":
        body = pos_checkin.encode(pos_checkin.message("KST1", "1.0.0", {}, "b", now=NOON.timestamp()))
        signature = pos_checkin.sign(body, made["KST1"])
        answer = dispatcher.checkin(body.replace(b"1.0.0", b"1.1.0"), signature, "10.231.1.9")
        reason = "bad_signature"
    elif case == "replayed":
        body = pos_checkin.encode(pos_checkin.message("KST1", "1.0.0", {}, "b", now=NOON.timestamp()))
        signature = pos_checkin.sign(body, made["KST1"])
        assert dispatcher.checkin(body, signature, "10.231.1.9")[0] == 202
        answer = dispatcher.checkin(body, signature, "10.231.1.9")
        reason = "replayed"
    else:
        body = pos_checkin.encode(pos_checkin.message("../KST1", "1.0.0", {}, "b", now=NOON.timestamp()))
        answer = dispatcher.checkin(body, pos_checkin.sign(body, made["KST1"]), "10.231.1.9")
        reason = "unknown_terminal"
    assert answer == (403, {"refused": reason})
    assert store.refusals(1)[0]["reason"] == reason and store.refusals(1)[0]["remote"] == "10.231.1.9"
    assert any(reason in line for line in lines)


def test_windows_decide_when_a_terminal_may_be_updated():
    assert autoupdate.may_update_now(hostvars(update_ignore_windows=True), NOON)[0] is True
    may, why, window = autoupdate.may_update_now(hostvars(), NOON)
    assert (may, window) == (False, None) and "01:00-05:00" in why
    late = hostvars(pos_region_settings=dict(REGION, catch_up_window="11:00-13:00"))
    assert autoupdate.may_update_now(late, NOON) == (True, "inside its region's catch-up window 11:00-13:00",
                                                     "11:00-13:00")
    own = hostvars(pos_maintenance_window="11:30-12:30")
    assert autoupdate.may_update_now(own, NOON)[:3:2] == (True, None)


def test_a_terminal_outside_its_window_waits_and_a_catch_up_update_carries_its_window(setup):
    dispatcher, _, fleet, made, _ = setup
    fleet.hostvars["KST1"] = hostvars()
    answer = checkin(dispatcher, made, "KST1")[1]
    assert answer["decision"] == "not_now" and "outside its maintenance window" in answer["detail"]
    fleet.hostvars["KST1"] = hostvars(pos_region_settings=dict(REGION, catch_up_window="11:00-13:00"))
    assert checkin(dispatcher, made, "KST1")[1]["decision"] == "queued"
    assert dispatcher.start_jobs()[0]["posfleet_update"]["window"] == "11:00-13:00"


def test_the_fleet_is_read_again_for_a_serial_it_does_not_know(tmp_path):
    calls = tmp_path / "calls"
    inventory = {"_meta": {"hostvars": {"KST1": {"posfleet_release": "2026.12.0"}}}}
    script = tmp_path / "ansible-inventory"
    script.write_text(f"#!/bin/sh\necho x >> {calls}\ncat {tmp_path / 'inventory.json'}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "inventory.json").write_text(json.dumps(inventory))
    fleet = autoupdate.Fleet(refresh_s=3600, command=str(script))
    assert fleet.get("KST1")["posfleet_release"] == "2026.12.0"
    assert fleet.get("KST1") and calls.read_text().count("x") == 1, "a known serial is served from memory"
    inventory["_meta"]["hostvars"]["KST9"] = {"posfleet_release": "2026.12.0"}
    (tmp_path / "inventory.json").write_text(json.dumps(inventory))
    assert fleet.get("KST9") is not None, "a terminal added to the registry is found"
    assert calls.read_text().count("x") == 2
    assert fleet.get("RETIRED") is None and fleet.get("RETIRED") is None
    assert calls.read_text().count("x") == 3, "a serial still unknown is not read again at every check-in"


def test_a_broken_inventory_is_named(tmp_path):
    script = tmp_path / "ansible-inventory"
    script.write_text("#!/bin/sh\necho 'registry.csv: bad row 3' >&2\nexit 1\n")
    script.chmod(0o755)
    with pytest.raises(autoupdate.AutoUpdateError, match="bad row 3"):
        autoupdate.Fleet(command=str(script)).get("KST1")


def test_the_status_view_lists_every_terminal_and_who_waits_for_an_operator(setup):
    dispatcher, store, fleet, made, _ = setup
    checkin(dispatcher, made, "KST1")
    for attempt in range(2):
        job = dispatcher.start_jobs()[0]["posfleet_update"]["job_id"]
        store.finish("KST1", "rolled_back", NOON + datetime.timedelta(minutes=attempt * 10), job_id=job)
        if attempt == 0:
            dispatcher.clock = lambda: NOON + datetime.timedelta(minutes=5)
            checkin(dispatcher, made, "KST1")
    checkin(dispatcher, made, "KST2", key_of="KST3")
    table = autoupdate_status.rows(fleet, store, NOON + datetime.timedelta(minutes=20), releases=FakeReleases())
    by_serial = {row["serial"]: row for row in table}
    assert by_serial["KST1"]["state"] == "held" and by_serial["KST1"]["behind"] is True
    assert by_serial["KST3"]["state"] == "never_checked_in"
    facts = autoupdate_status.summary(table, store.refusals(5))
    text = autoupdate_status.console(table, facts)
    assert "HELD, waiting for an operator (1): KST1" in text
    assert "bad_signature" in text
    page = autoupdate_status.page(table, facts)
    assert "<td>held</td>" in page and "<script" not in page
    assert store.release("KST1", NOON, "ops") is True
    assert autoupdate_status.rows(fleet, store, NOON, releases=FakeReleases())[0]["state"] == "idle"
