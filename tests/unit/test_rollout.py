"""Rollout control (posfleet.rollout and the posfleet_rollout filters): windows, waves, error budget.

The clock is always passed in, so every window test names the instant it looks at, in UTC, with the
local time it is in a comment. DST dates used (2026):
  Europe/Berlin     spring forward 29 March at 01:00 UTC (02:00 CET -> 03:00 CEST)
                    fall back      25 October at 01:00 UTC (03:00 CEST -> 02:00 CET)
  America/New_York  spring forward 8 March at 07:00 UTC (02:00 EST -> 03:00 EDT)
                    fall back      1 November at 06:00 UTC (02:00 EDT -> 01:00 EST)
The last tests run the filters through real `ansible` and `ansible-playbook` processes, on
localhost and local-connection hosts only: no terminal and no lab.
"""

import collections
import datetime
import json
import multiprocessing
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ansible_tool

from posfleet import rollout
from posfleet.rollout import RolloutError

REPO = Path(__file__).resolve().parents[2]


REGIONS = yaml.safe_load((REPO / "inventories" / "shared" / "regions.yml").read_text())["regions"]
UTC = datetime.timezone.utc


def state(window, tz, now):
    return rollout.window_state(window, tz, now)


def utc(text):
    return datetime.datetime.fromisoformat(text).astimezone(UTC).isoformat()


# --- windows: the plain cases --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "is_open", "opens", "closes"),
    [
        ("2026-06-15T23:59:59Z", False, "2026-06-16T00:00:00Z", "2026-06-16T04:00:00Z"),  # 00:59:59 BST
        ("2026-06-16T00:00:00Z", True, "2026-06-16T00:00:00Z", "2026-06-16T04:00:00Z"),   # 01:00 BST, start
        ("2026-06-16T03:59:59Z", True, "2026-06-16T00:00:00Z", "2026-06-16T04:00:00Z"),   # 04:59:59 BST
        ("2026-06-16T04:00:00Z", False, "2026-06-17T00:00:00Z", "2026-06-17T04:00:00Z"),  # 05:00 BST, end
        ("2026-06-16T12:00:00Z", False, "2026-06-17T00:00:00Z", "2026-06-17T04:00:00Z"),  # midday
        ("2026-01-16T01:00:00Z", True, "2026-01-16T01:00:00Z", "2026-01-16T05:00:00Z"),   # 01:00 GMT, winter
    ],
)
def test_window_in_london_summer_and_winter(now, is_open, opens, closes):
    result = state("01:00-05:00", "Europe/London", now)
    assert (result["open"], result["opens_at_utc"], result["closes_at_utc"]) == (is_open, utc(opens), utc(closes))


def test_result_carries_local_time_and_the_window():
    result = state("01:00-05:00", "Europe/London", "2026-06-16T00:30:00Z")
    assert result == {
        "open": True,
        "window": "01:00-05:00",
        "timezone": "Europe/London",
        "local_now": "2026-06-16T01:30:00+01:00",
        "opens_at_utc": "2026-06-16T00:00:00+00:00",
        "closes_at_utc": "2026-06-16T04:00:00+00:00",
        "opens_at_local": "2026-06-16T01:00:00+01:00",
        "closes_at_local": "2026-06-16T05:00:00+01:00",
    }


# A window that crosses midnight, in two timezones on ordinary days: the instant before it opens, at
# the open, on both sides of local midnight, just before and at the close.
@pytest.mark.parametrize(
    ("window", "tz", "now", "is_open", "opens", "closes"),
    [
        # America/New_York, EDT (UTC-4): 23:30 local is 03:30 UTC the next day.
        ("23:30-04:00", "America/New_York", "2026-06-16T03:29:00Z", False,
         "2026-06-16T03:30:00Z", "2026-06-16T08:00:00Z"),
        ("23:30-04:00", "America/New_York", "2026-06-16T03:30:00Z", True,
         "2026-06-16T03:30:00Z", "2026-06-16T08:00:00Z"),
        ("23:30-04:00", "America/New_York", "2026-06-16T03:59:00Z", True,
         "2026-06-16T03:30:00Z", "2026-06-16T08:00:00Z"),
        ("23:30-04:00", "America/New_York", "2026-06-16T04:01:00Z", True,
         "2026-06-16T03:30:00Z", "2026-06-16T08:00:00Z"),
        ("23:30-04:00", "America/New_York", "2026-06-16T07:59:59Z", True,
         "2026-06-16T03:30:00Z", "2026-06-16T08:00:00Z"),
        ("23:30-04:00", "America/New_York", "2026-06-16T08:00:00Z", False,
         "2026-06-17T03:30:00Z", "2026-06-17T08:00:00Z"),
        # Asia/Tokyo (UTC+9, no DST): 22:00 local is 13:00 UTC the same day.
        ("22:00-03:00", "Asia/Tokyo", "2026-06-15T12:59:00Z", False, "2026-06-15T13:00:00Z", "2026-06-15T18:00:00Z"),
        ("22:00-03:00", "Asia/Tokyo", "2026-06-15T14:59:00Z", True, "2026-06-15T13:00:00Z", "2026-06-15T18:00:00Z"),
        ("22:00-03:00", "Asia/Tokyo", "2026-06-15T15:00:00Z", True, "2026-06-15T13:00:00Z", "2026-06-15T18:00:00Z"),
        ("22:00-03:00", "Asia/Tokyo", "2026-06-15T18:00:00Z", False, "2026-06-16T13:00:00Z", "2026-06-16T18:00:00Z"),
        # Europe/Berlin, CET (UTC+1) in January: 23:00-01:00 local is 22:00-00:00 UTC.
        ("23:00-01:00", "Europe/Berlin", "2026-01-10T23:30:00Z", True, "2026-01-10T22:00:00Z", "2026-01-11T00:00:00Z"),
        ("23:00-01:00", "Europe/Berlin", "2026-01-11T00:00:00Z", False, "2026-01-11T22:00:00Z", "2026-01-12T00:00:00Z"),
    ],
)
def test_window_crossing_midnight(window, tz, now, is_open, opens, closes):
    result = state(window, tz, now)
    assert (result["open"], result["opens_at_utc"], result["closes_at_utc"]) == (is_open, utc(opens), utc(closes))


def test_same_instant_differs_by_region():
    # 2026-06-16T02:00Z is 03:00 in London (open), 04:00 in Berlin (open), 22:00 in New York (closed).
    now = "2026-06-16T02:00:00Z"
    verdicts = {name: state(r["maintenance_window"], r["timezone"], now)["open"] for name, r in REGIONS.items()}
    assert verdicts == {"eu_west": True, "eu_central": True, "us_east": False}


def test_window_ending_at_24_00_closes_at_local_midnight():
    result = state("22:00-24:00", "Asia/Tokyo", "2026-06-15T14:30:00Z")   # 23:30 JST
    assert result["open"] is True
    assert result["closes_at_local"] == "2026-06-16T00:00:00+09:00"


@pytest.mark.parametrize("now", ["2026-03-29T01:00:00Z", "2026-10-25T01:30:00Z", "2026-06-16T12:00:00Z"])
def test_always_open_window(now):
    result = state("00:00-24:00", "Europe/Berlin", now)
    assert result["open"] is True
    assert result["opens_at_utc"] is None and result["closes_at_utc"] is None


@pytest.mark.parametrize(
    "now",
    [
        "2026-06-16T00:30:00Z",
        "2026-06-16T00:30:00+00:00",
        "2026-06-16T02:30:00+02:00",
        "2026-06-16T00:30:00",   # no offset: UTC, as now(utc=true) gives it
        datetime.datetime(2026, 6, 16, 0, 30),
        datetime.datetime(2026, 6, 16, 0, 30, tzinfo=UTC),
        datetime.datetime(2026, 6, 15, 20, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=-4))),
    ],
)
def test_clock_forms_are_the_same_instant(now):
    assert state("01:00-05:00", "Europe/London", now)["local_now"] == "2026-06-16T01:30:00+01:00"


# --- windows: daylight saving time ----------------------------------------------------------------


def test_berlin_spring_forward_window_starting_in_the_skipped_hour():
    # 02:00 does not happen on 29 March: the window opens at the jump, 03:00 CEST (01:00 UTC), and
    # still closes at 05:30 CEST: two and a half hours instead of three and a half.
    before = state("02:00-05:30", "Europe/Berlin", "2026-03-29T00:59:59Z")   # 01:59:59 CET
    assert before["open"] is False
    assert before["opens_at_utc"] == utc("2026-03-29T01:00:00Z")
    assert before["opens_at_local"] == "2026-03-29T03:00:00+02:00"
    assert before["closes_at_utc"] == utc("2026-03-29T03:30:00Z")
    assert state("02:00-05:30", "Europe/Berlin", "2026-03-29T01:00:00Z")["open"] is True    # 03:00 CEST
    assert state("02:00-05:30", "Europe/Berlin", "2026-03-29T03:29:59Z")["open"] is True    # 05:29:59 CEST
    after = state("02:00-05:30", "Europe/Berlin", "2026-03-29T03:30:00Z")                   # 05:30 CEST
    assert after["open"] is False
    assert after["opens_at_utc"] == utc("2026-03-30T00:00:00Z")                            # 02:00 CEST


def test_berlin_spring_forward_window_inside_the_skipped_hour_does_not_open_that_day():
    result = state("02:15-02:45", "Europe/Berlin", "2026-03-29T00:00:00Z")   # 01:00 CET
    assert result["open"] is False
    assert result["opens_at_local"] == "2026-03-30T02:15:00+02:00"


def test_berlin_spring_forward_start_in_the_middle_of_the_skipped_hour():
    # 02:30 does not happen either; the first instant the clock is past it is the jump.
    result = state("02:30-05:30", "Europe/Berlin", "2026-03-29T00:00:00Z")
    assert result["opens_at_utc"] == utc("2026-03-29T01:00:00Z")


def test_berlin_fall_back_window_covers_the_repeated_hour_once_through():
    # 02:00-03:00 happens twice on 25 October. The window opens at the first 02:00 (CEST, 00:00 UTC)
    # and closes at 05:30 CET (04:30 UTC): four and a half hours, the repeated hour included.
    result = state("02:00-05:30", "Europe/Berlin", "2026-10-25T01:30:00Z")   # 02:30 CET, second pass
    assert result["open"] is True
    assert result["local_now"] == "2026-10-25T02:30:00+01:00"
    assert result["opens_at_utc"] == utc("2026-10-25T00:00:00Z")
    assert result["opens_at_local"] == "2026-10-25T02:00:00+02:00"
    assert result["closes_at_utc"] == utc("2026-10-25T04:30:00Z")
    assert state("02:00-05:30", "Europe/Berlin", "2026-10-24T23:59:59Z")["open"] is False   # 01:59:59 CEST
    assert state("02:00-05:30", "Europe/Berlin", "2026-10-25T04:29:59Z")["open"] is True
    assert state("02:00-05:30", "Europe/Berlin", "2026-10-25T04:30:00Z")["open"] is False


def test_berlin_fall_back_window_ending_in_the_repeated_hour_closes_at_its_first_pass():
    # 00:00-02:30: closes the first time the clock shows 02:30 (CEST, 00:30 UTC); when the clock shows
    # 02:15 again an hour later (CET), the window stays closed until the next night.
    assert state("00:00-02:30", "Europe/Berlin", "2026-10-25T00:29:00Z")["open"] is True    # 02:29 CEST
    second_pass = state("00:00-02:30", "Europe/Berlin", "2026-10-25T01:15:00Z")             # 02:15 CET
    assert second_pass["open"] is False
    assert second_pass["opens_at_local"] == "2026-10-26T00:00:00+01:00"


def test_new_york_spring_forward_crossing_midnight():
    # 23:30 EST on 7 March to 04:00 EDT on 8 March: 04:30-08:00 UTC, three and a half hours.
    result = state("23:30-04:00", "America/New_York", "2026-03-08T07:30:00Z")   # 03:30 EDT
    assert result["open"] is True
    assert result["local_now"] == "2026-03-08T03:30:00-04:00"
    assert result["opens_at_utc"] == utc("2026-03-08T04:30:00Z")
    assert result["opens_at_local"] == "2026-03-07T23:30:00-05:00"
    assert result["closes_at_utc"] == utc("2026-03-08T08:00:00Z")
    nxt = state("23:30-04:00", "America/New_York", "2026-03-08T08:00:00Z")
    assert nxt["open"] is False
    assert nxt["opens_at_utc"] == utc("2026-03-09T03:30:00Z")                   # 23:30 EDT


def test_new_york_spring_forward_window_starting_at_the_jump():
    # 02:00-04:00 on 8 March: 02:00 EST does not happen; the window is 03:00-04:00 EDT (07:00-08:00 UTC).
    result = state("02:00-04:00", "America/New_York", "2026-03-08T06:59:00Z")   # 01:59 EST
    assert result["open"] is False
    assert (result["opens_at_utc"], result["closes_at_utc"]) == (utc("2026-03-08T07:00:00Z"),
                                                                 utc("2026-03-08T08:00:00Z"))


@pytest.mark.parametrize(
    ("now", "is_open"),
    [
        ("2026-11-01T03:29:00Z", False),   # 23:29 EDT, 31 October
        ("2026-11-01T03:30:00Z", True),    # 23:30 EDT
        ("2026-11-01T05:30:00Z", True),    # 01:30 EDT, first pass
        ("2026-11-01T06:30:00Z", True),    # 01:30 EST, second pass
        ("2026-11-01T08:59:59Z", True),    # 03:59:59 EST
        ("2026-11-01T09:00:00Z", False),   # 04:00 EST
    ],
)
def test_new_york_fall_back_crossing_midnight(now, is_open):
    # 23:30 EDT to 04:00 EST: 03:30-09:00 UTC, five and a half hours.
    result = state("23:30-04:00", "America/New_York", now)
    assert result["open"] is is_open
    if is_open:
        assert (result["opens_at_utc"], result["closes_at_utc"]) == (utc("2026-11-01T03:30:00Z"),
                                                                     utc("2026-11-01T09:00:00Z"))


def test_every_minute_of_a_dst_week_agrees_with_the_local_clock():
    # Outside the DST nights, "open" is exactly "the local time of day is in the window".
    zone = rollout.load_zone("America/New_York")
    start = datetime.datetime(2026, 3, 1, tzinfo=UTC)
    for minute in range(0, 14 * 24 * 60, 7):
        now = start + datetime.timedelta(minutes=minute)
        local = now.astimezone(zone)
        if local.date() in (datetime.date(2026, 3, 7), datetime.date(2026, 3, 8)):
            continue
        in_window = local.time() >= datetime.time(23, 30) or local.time() < datetime.time(4, 0)
        result = state("23:30-04:00", "America/New_York", now)
        assert result["open"] is in_window, local
        opens = datetime.datetime.fromisoformat(result["opens_at_utc"])
        closes = datetime.datetime.fromisoformat(result["closes_at_utc"])
        assert (opens <= now < closes) if in_window else (now < opens < closes)


# --- windows: refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "window",
    ["25:00-03:00", "1-2", "", "01:00", "01:00-05:60", "24:00-05:00", "01:00-24:30", "1:00-5:00",
     "01:00 - 05:00", "01:00\u201305:00", "01:00-05:00 ", "abcde-fghij"],
)
def test_malformed_windows_are_refused_naming_the_window_and_the_format(window):
    with pytest.raises(RolloutError) as error:
        state(window, "Europe/Berlin", "2026-06-16T00:00:00Z")
    assert repr(window) in str(error.value)
    assert "HH:MM-HH:MM" in str(error.value)


@pytest.mark.parametrize("window", [None, 100, ["01:00", "05:00"]])
def test_a_window_that_is_not_text_is_refused(window):
    with pytest.raises(RolloutError, match="HH:MM-HH:MM"):
        state(window, "Europe/Berlin", "2026-06-16T00:00:00Z")


@pytest.mark.parametrize("window", ["03:00-03:00", "00:00-00:00"])
def test_start_equal_to_end_is_refused_with_the_always_open_hint(window):
    with pytest.raises(RolloutError, match=r"starts when it ends; write '00:00-24:00'"):
        state(window, "Europe/Berlin", "2026-06-16T00:00:00Z")


@pytest.mark.parametrize("tz", ["Europe/Atlantis", "", "CET/../etc", None])
def test_unknown_timezone_is_named(tz):
    with pytest.raises(RolloutError) as error:
        state("01:00-05:00", tz, "2026-06-16T00:00:00Z")
    assert repr(tz) in str(error.value)


@pytest.mark.parametrize("now", ["now", "16/06/2026 01:00", 1750000000, None])
def test_a_clock_that_is_not_a_time_is_refused(now):
    with pytest.raises(RolloutError, match="time"):
        state("01:00-05:00", "Europe/London", now)


# --- the pos_window filter ------------------------------------------------------------------------


def filters():
    # Imported here, not at the top: the budget file's worker processes import this file afresh,
    # without the collection loader the test session starts (tests/conftest.py).
    from ansible_collections.posfleet.fleet.plugins.filter import posfleet_rollout  # noqa: PLC0415

    return posfleet_rollout.FilterModule().filters()


def region(name):
    return dict(REGIONS[name], name=name)


def test_filter_uses_the_region_window_and_timezone():
    result = filters()["pos_window"](region("us_east"), "2026-06-16T04:00:00Z")   # 00:00 EDT
    assert result["open"] is True
    assert result["source"] == "region"
    assert result["window"] == "23:30-04:00"


def test_filter_override_replaces_the_region_window():
    pos_window = filters()["pos_window"]
    now = datetime.datetime(2026, 6, 16, 12, 0)     # 08:00 EDT, as now(utc=true) gives it: no tzinfo
    assert pos_window(region("us_east"), now)["open"] is False
    result = pos_window(region("us_east"), now, "07:00-09:00")
    assert (result["open"], result["source"], result["timezone"]) == (True, "override", "America/New_York")


def test_filter_error_names_the_region_and_the_window():
    from ansible.errors import AnsibleFilterError  # noqa: PLC0415

    pos_window = filters()["pos_window"]
    with pytest.raises(AnsibleFilterError, match=r"region eu_central: maintenance window '1-2' is malformed"):
        pos_window(dict(region("eu_central"), maintenance_window="1-2"), "2026-06-16T00:00:00Z")
    with pytest.raises(AnsibleFilterError, match=r"override .* region eu_west: maintenance window '25:00-03:00'"):
        pos_window(region("eu_west"), "2026-06-16T00:00:00Z", "25:00-03:00")
    settings = {k: v for k, v in region("eu_west").items() if k != "maintenance_window"}
    with pytest.raises(AnsibleFilterError, match="region eu_west has no maintenance_window"):
        pos_window(settings, "2026-06-16T00:00:00Z")
    with pytest.raises(AnsibleFilterError, match="timezone 'Mars/Olympus'"):
        pos_window(dict(region("eu_west"), timezone="Mars/Olympus"), "2026-06-16T00:00:00Z")


# --- waves ----------------------------------------------------------------------------------------

PREFIX = {"kestrel_k200": "KST", "heron_h5": "HRN", "petrel_p9": "PTR"}


def fleet(counts, seed=1):
    """Terminals from {(model, region): count}, serials numbered across the fleet, in a jumbled order."""
    hosts, number = [], 0
    for (model, region_name), count in sorted(counts.items()):
        for _ in range(count):
            number += 1
            hosts.append({"serial": f"{PREFIX[model]}{number:05d}", "model": model, "region": region_name})
    random.Random(seed).shuffle(hosts)
    return hosts


BIG = fleet({("kestrel_k200", "eu_west"): 40, ("kestrel_k200", "us_east"): 30, ("kestrel_k200", "eu_central"): 20,
             ("heron_h5", "eu_west"): 5, ("heron_h5", "us_east"): 3, ("petrel_p9", "eu_central"): 1})


def models_of(serials, hosts):
    model = {host["serial"]: host["model"] for host in hosts}
    return collections.Counter(model[serial] for serial in serials)


def check_partition(waves, hosts):
    flat = [serial for wave in waves for serial in wave]
    assert sorted(flat) == sorted(host["serial"] for host in hosts)
    assert len(flat) == len(set(flat))
    assert all(waves), waves


@pytest.mark.parametrize("order", ["region", "model", "shuffle"])
def test_canary_holds_every_model(order):
    waves = rollout.plan_waves(BIG, 1, [10, 30, 100], order, seed=3)
    assert models_of(waves[0], BIG) == {"kestrel_k200": 1, "heron_h5": 1, "petrel_p9": 1}
    check_partition(waves, BIG)


def test_canary_percentage_per_model_rounds_up_and_never_below_one():
    waves = rollout.plan_waves(BIG, "10%", [100], "model")
    # kestrel 90 -> 9; heron 8 -> 0.8 -> 1; petrel 1 -> 1
    assert models_of(waves[0], BIG) == {"kestrel_k200": 9, "heron_h5": 1, "petrel_p9": 1}


def test_canary_count_larger_than_a_model_takes_the_whole_model():
    waves = rollout.plan_waves(BIG, 5, [100], "model")
    assert models_of(waves[0], BIG) == {"kestrel_k200": 5, "heron_h5": 5, "petrel_p9": 1}
    assert len(waves) == 2 and len(waves[1]) == len(BIG) - 11


def test_wave_percentages_are_cumulative_over_the_terminals_after_the_canary():
    hosts = fleet({("kestrel_k200", "eu_west"): 101, ("heron_h5", "eu_west"): 1, ("petrel_p9", "us_east"): 1})
    waves = rollout.plan_waves(hosts, 1, [10, 30, 100], "region")
    # 100 left after a canary of 3: 10% done after wave 1, 30% after wave 2, the rest in wave 3.
    assert rollout.serial_for_ansible(waves) == [3, 10, 20, 70]


def test_wave_boundaries_round_up():
    hosts = fleet({("kestrel_k200", "eu_west"): 8})       # canary 1, 7 left
    waves = rollout.plan_waves(hosts, 1, [10, 50, 100], "region")
    # ceil(0.7) = 1, ceil(3.5) = 4, 7
    assert rollout.serial_for_ansible(waves) == [1, 1, 3, 3]


def test_time_left_spreads_each_batch_s_work_over_the_forks_by_model():
    # The shape of the 500-terminal lab run: canaries 3, then waves of 50, 98 and 349, 25 forks; two models.
    batches = [3, 50, 98, 349]
    order = [f"T{n:03d}" for n in range(500)]
    model_of = {serial: "slow_model" if n % 2 else "fast_model" for n, serial in enumerate(order)}
    # Only T000 (fast_model, 40 s) has finished: every terminal is expected to take 40 s, the model's
    # or, for the other model, the median of all. Each batch's work is spread over the 25 forks, but the
    # canary batch (2 left) takes as long as one terminal.
    assert rollout.time_left(batches, order, {"T000": 40.0}, 25, model_of) == 40 + (50 + 98 + 349) * 40 / 25
    # A batch not started takes at least as long as one terminal, however many forks there are.
    assert rollout.time_left([1, 2], ["a", "b", "c"], {"a": 40.0}, 25) == 40
    # Once both models have finished terminals, each unfinished one counts at its own model's median.
    durations = {serial: (200.0 if model_of[serial] == "slow_model" else 50.0) for serial in order[:153]}
    wave_3 = sum(200.0 if model_of[serial] == "slow_model" else 50.0 for serial in order[153:251])
    last = sum(200.0 if model_of[serial] == "slow_model" else 50.0 for serial in order[251:])
    assert rollout.time_left(batches, order, durations, 25, model_of) == wave_3 / 25 + last / 25
    # Only the unfinished count, wherever they are: two stragglers of wave 2 in flight take as long as one.
    stragglers = {serial: 100.0 for serial in order if serial not in ("T010", "T011")}
    assert rollout.time_left(batches, order, stragglers, 25, model_of) == 100
    assert rollout.time_left(batches, order, dict.fromkeys(order, 60.0), 25, model_of) == 0


def test_time_left_follows_the_latest_terminals_not_the_first():
    # The night slows down (a busier distribution point): the last `forks` finished set the pace.
    order = [f"T{n:03d}" for n in range(150)]
    durations = {serial: (30.0 if n < 25 else 90.0) for n, serial in enumerate(order[:50])}
    assert rollout.time_left([150], order, durations, 25) == 100 * 90 / 25


def test_time_left_is_unknown_until_a_finished_terminal_took_time():
    assert rollout.time_left([3, 5], list("abcdefgh"), {"a": 0.0}, 25) is None
    assert rollout.time_left([3, 5], list("abcdefgh"), {}, 25) is None
    assert rollout.time_left([3, 5], list("abcdefgh"), {"a": 30.0}, None) is None


def test_percentages_may_be_written_as_ansible_serial_strings_or_fractions():
    plain = rollout.plan_waves(BIG, 1, [10, 30, 100])
    assert rollout.plan_waves(BIG, "1", ["10%", "30%", "100%"]) == plain
    assert rollout.plan_waves(BIG, 1, [10.0, 30, "100"]) == plain
    assert rollout.serial_for_ansible(rollout.plan_waves(BIG, 1, [12.5, 100])) == [3, 12, 84]


def test_order_region_puts_regions_together():
    waves = rollout.plan_waves(BIG, 1, [10, 30, 100], "region")
    by_serial = {host["serial"]: host for host in BIG}
    rest = [by_serial[serial] for wave in waves[1:] for serial in wave]
    assert rest == sorted(rest, key=lambda h: (h["region"], h["model"], h["serial"]))
    # the canary is the first terminal of each model in that order
    first = {}
    for host in sorted(BIG, key=lambda h: (h["region"], h["model"], h["serial"])):
        first.setdefault(host["model"], host["serial"])
    assert sorted(waves[0]) == sorted(first.values())


def test_order_model_puts_models_together():
    waves = rollout.plan_waves(BIG, 1, [10, 30, 100], "model")
    by_serial = {host["serial"]: host for host in BIG}
    rest = [by_serial[serial] for wave in waves[1:] for serial in wave]
    assert rest == sorted(rest, key=lambda h: (h["model"], h["region"], h["serial"]))


def test_shuffle_is_deterministic_for_a_seed_and_ignores_input_order():
    first = rollout.plan_waves(BIG, 2, [10, 30, 100], "shuffle", seed=42)
    assert rollout.plan_waves(BIG, 2, [10, 30, 100], "shuffle", seed=42) == first
    assert rollout.plan_waves(list(reversed(BIG)), 2, [10, 30, 100], "shuffle", seed=42) == first
    others = [rollout.plan_waves(BIG, 2, [10, 30, 100], "shuffle", seed=seed) for seed in (1, 2, 3)]
    assert any(other != first for other in others)
    assert rollout.plan_waves(BIG, 2, [10, 30, 100], "shuffle", seed="2026.12.0") == \
        rollout.plan_waves(BIG, 2, [10, 30, 100], "shuffle", seed="2026.12.0")
    # `-e seed=42` gives text; it must plan as the number does.
    assert rollout.plan_waves(BIG, 2, [10, 30, 100], "shuffle", seed="42") == first


def test_shuffle_mixes_regions_in_the_first_wave():
    waves = rollout.plan_waves(BIG, 1, [30, 100], "shuffle", seed=5)
    regions = {host["serial"]: host["region"] for host in BIG}
    assert len({regions[serial] for serial in waves[1]}) > 1


@pytest.mark.parametrize("order", ["region", "model"])
def test_sorted_orders_ignore_input_order(order):
    assert rollout.plan_waves(BIG, 1, [10, 100], order) == rollout.plan_waves(list(reversed(BIG)), 1, [10, 100], order)


def test_every_terminal_is_in_exactly_one_wave_for_many_fleets():
    rng = random.Random(2026)
    for _ in range(200):
        counts = {(model, region_name): rng.randint(0, 6) for model in PREFIX for region_name in ("eu_west", "us_east")}
        hosts = fleet(counts, seed=rng.randint(0, 1000))
        canary = rng.choice([1, 2, "10%", "50%", "100%"])
        waves = [*sorted(rng.sample(range(1, 100), rng.randint(0, 4))), 100]
        plan = rollout.plan_waves(hosts, canary, waves, rng.choice(rollout.ORDERS), seed=rng.randint(0, 9))
        check_partition(plan, hosts)
        if hosts:
            assert set(models_of(plan[0], hosts)) == {host["model"] for host in hosts}
        assert sum(rollout.serial_for_ansible(plan)) == len(hosts)


def test_no_terminals_no_waves():
    assert rollout.plan_waves([], 1, [10, 30, 100]) == []
    assert rollout.plan_waves([], "10%", [100], "shuffle", seed=3) == []
    with pytest.raises(RolloutError, match="at least one canary"):
        rollout.plan_waves([], 0, [100])
    assert rollout.serial_for_ansible([]) == []
    assert rollout.order_hosts([], []) == []


def test_one_terminal_is_its_own_canary():
    hosts = fleet({("petrel_p9", "eu_central"): 1})
    assert rollout.plan_waves(hosts, "10%", [10, 30, 100]) == [[hosts[0]["serial"]]]


def test_two_terminals_of_two_models_are_both_canaries():
    hosts = fleet({("petrel_p9", "eu_central"): 1, ("heron_h5", "eu_west"): 1})
    # in region order: eu_central before eu_west
    assert rollout.plan_waves(hosts, 1, [10, 30, 100]) == [["PTR00002", "HRN00001"]]


def test_two_terminals_of_one_model_go_one_after_the_other():
    hosts = fleet({("kestrel_k200", "eu_west"): 2})
    assert rollout.plan_waves(hosts, 1, [10, 30, 100]) == [["KST00001"], ["KST00002"]]


def test_three_terminals_of_one_model_drop_the_empty_waves():
    hosts = fleet({("kestrel_k200", "eu_west"): 3})
    # 2 left after the canary: ceil(0.2) = 1, ceil(0.6) = 1 (nothing new: dropped), 2
    assert rollout.plan_waves(hosts, 1, [10, 30, 100]) == [["KST00001"], ["KST00002"], ["KST00003"]]


def test_three_terminals_of_three_models_are_one_canary_wave():
    hosts = fleet({("kestrel_k200", "eu_west"): 1, ("heron_h5", "eu_west"): 1, ("petrel_p9", "eu_west"): 1})
    plan = rollout.plan_waves(hosts, 1, [10, 30, 100])
    assert len(plan) == 1 and sorted(plan[0]) == ["HRN00001", "KST00002", "PTR00003"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"canary_per_model": 0}, "at least one canary"),
        ({"canary_per_model": -1}, "at least one canary"),
        ({"canary_per_model": True}, "at least one canary"),
        ({"canary_per_model": "0%"}, "canary_per_model '0%' is outside"),
        ({"canary_per_model": "150%"}, "canary_per_model '150%' is outside"),
        ({"canary_per_model": "some"}, "at least one canary"),
        ({"waves": []}, "cumulative percentages ending at 100"),
        ({"waves": "10,100"}, "cumulative percentages ending at 100"),
        ({"waves": [30, 10, 100]}, "must grow"),
        ({"waves": [10, 10, 100]}, "must grow"),
        ({"waves": [10, 30]}, "must end at 100"),
        ({"waves": [0, 100]}, "outside the range above 0 to 100"),
        ({"waves": [10, 110]}, "outside the range above 0 to 100"),
        ({"waves": [10, "x", 100]}, "'x' is not a percentage"),
        ({"waves": [float("nan"), 100]}, "not a percentage"),
        ({"order": "alphabetical"}, "order 'alphabetical' is not one of region, model, shuffle"),
        ({"order": "shuffle", "seed": 1.5}, "seed 1.5 must be an integer"),
    ],
)
def test_bad_wave_arguments_are_refused(kwargs, message):
    args = {"canary_per_model": 1, "waves": [10, 30, 100], "order": "region", "seed": 0, **kwargs}
    with pytest.raises(RolloutError, match=message.replace("(", r"\(")):
        rollout.plan_waves(BIG, **args)


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        ([{"serial": "KST1", "model": "kestrel_k200"}], "has no region"),
        ([{"serial": "", "model": "kestrel_k200", "region": "eu_west"}], "has no serial"),
        ([{"serial": "KST1", "model": "kestrel_k200", "region": "eu_west"}] * 2, "KST1 is listed twice"),
        (["KST1"], "is not a mapping"),
        ("KST1", "must be a list"),
    ],
)
def test_bad_hosts_are_refused(hosts, message):
    with pytest.raises(RolloutError, match=message):
        rollout.plan_waves(hosts, 1, [100])


# --- waves in Ansible terms -----------------------------------------------------------------------


def test_order_hosts_and_batches_line_up_with_the_waves():
    waves = rollout.plan_waves(BIG, 1, [10, 30, 100], "shuffle", seed=9)
    order = rollout.order_hosts([host["serial"] for host in BIG], waves)
    assert order == [serial for wave in waves for serial in wave]
    assert rollout.order_hosts(BIG, waves) == order          # mappings work as well as names
    # Cutting the ordered list by the batch sizes, as Ansible's serial does, gives back the waves.
    cut, start = [], 0
    for size in rollout.serial_for_ansible(waves):
        cut.append(order[start:start + size])
        start += size
    assert cut == waves


def test_order_hosts_refuses_a_plan_for_other_terminals():
    waves = [["KST00001", "HRN00002"], ["KST00003"]]
    with pytest.raises(RolloutError, match=r"not in the plan: KST00009; planned but not in the play: KST00003"):
        rollout.order_hosts(["KST00001", "HRN00002", "KST00009"], waves)
    with pytest.raises(RolloutError, match="KST00001 in more than one wave"):
        rollout.order_hosts(["KST00001", "HRN00002"], [["KST00001"], ["KST00001", "HRN00002"]])


@pytest.mark.parametrize("waves", [[[]], [["KST1"], []], ["KST1"]])
def test_batches_refuse_empty_or_malformed_waves(waves):
    with pytest.raises(RolloutError, match="is not a non-empty list of serials"):
        rollout.serial_for_ansible(waves)


def test_the_plan_filter_never_plans_an_unfit_terminal():
    # heron_h5's terminals are unfit (the release does not fit the model's flash): no canary is taken
    # from them and no wave holds them. The deferred kestrel waits outside the plan too, for a re-run.
    hostvars = {
        "HRN00004": {"pos_model": "heron_h5", "pos_region": "eu_west", "pos_update_status": "unfit"},
        "HRN00005": {"pos_model": "heron_h5", "pos_region": "eu_west", "pos_update_status": "unfit"},
        "KST00001": {"pos_model": "kestrel_k200", "pos_region": "eu_west", "pos_update_status": "go"},
        "KST00002": {"pos_model": "kestrel_k200", "pos_region": "eu_west", "pos_update_status": "go"},
        "KST00003": {"pos_model": "kestrel_k200", "pos_region": "eu_west", "pos_update_status": "deferred"},
    }
    plan = filters()["pos_rollout_plan"](hostvars, sorted(hostvars))
    assert plan["waves"] == [["KST00001"], ["KST00002"]]
    assert plan["order"] == ["KST00001", "KST00002"] and plan["batches"] == [1, 1]
    assert sorted(plan["wave_of"]) == ["KST00001", "KST00002"]


# --- the error budget -----------------------------------------------------------------------------


def outcomes(**counts):
    made, number = {}, 0
    for status, count in counts.items():
        for _ in range(count):
            number += 1
            made[f"T{number:04d}"] = status
    return made


def test_count_limit_is_exceeded_only_above_it():
    assert rollout.budget_state(outcomes(updated=10, failed=1, rolled_back=1), max_failed=2)["exhausted"] is False
    result = rollout.budget_state(outcomes(updated=10, failed=2, rolled_back=1), max_failed=2)
    assert result["exhausted"] is True
    assert (result["spent"], result["attempted"]) == (3, 13)
    assert result["reason"] == ("error budget exhausted: 3 terminals failed or rolled back, more than the limit "
                                "of 2 (max_failed) by 1")


def test_count_limit_zero_stops_at_the_first_failure():
    assert rollout.budget_state(outcomes(updated=50), max_failed=0)["exhausted"] is False
    result = rollout.budget_state(outcomes(updated=50, rolled_back=1), max_failed=0)
    assert result["exhausted"] is True
    assert "1 terminal failed or rolled back, more than the limit of 0 (max_failed) by 1" in result["reason"]


def test_percentage_limit_is_of_the_attempted_terminals():
    # current and deferred terminals did not start an update: they are not in the denominator.
    at_limit = outcomes(current=500, deferred=40, updated=18, failed=2)          # 2 of 20 = 10%
    assert rollout.budget_state(at_limit, max_failed_pct=10)["exhausted"] is False
    over = outcomes(current=500, deferred=40, updated=17, failed=2, rolled_back=1)   # 3 of 20 = 15%
    result = rollout.budget_state(over, max_failed_pct=10)
    assert (result["spent"], result["attempted"], result["exhausted"]) == (3, 20, True)
    assert result["reason"] == ("error budget exhausted: 3 of 20 attempted terminals failed or rolled back (15%), "
                                "more than the limit of 10% (max_failed_pct) by 5 points")


def test_percentage_is_exact_at_the_boundary():
    # 7 of 70 is exactly 10%; float arithmetic must not push it over.
    assert rollout.budget_state(outcomes(updated=63, failed=7), max_failed_pct=10)["exhausted"] is False
    assert rollout.budget_state(outcomes(updated=62, failed=8), max_failed_pct="10%")["exhausted"] is True
    assert rollout.budget_state(outcomes(updated=2, failed=1), max_failed_pct=33.3)["exhausted"] is True


def test_percentage_limit_zero_allows_no_failure():
    assert rollout.budget_state(outcomes(updated=5), max_failed_pct=0)["exhausted"] is False
    assert rollout.budget_state(outcomes(updated=5, failed=1), max_failed_pct=0)["exhausted"] is True


def test_both_limits_exceeded_are_both_named():
    result = rollout.budget_state(outcomes(updated=6, failed=4), max_failed=3, max_failed_pct=25)
    assert result["exhausted"] is True
    assert "more than the limit of 3 (max_failed) by 1" in result["reason"]
    assert "4 of 10 attempted terminals failed or rolled back (40%), more than the limit of 25% (max_failed_pct) " \
           "by 15 points" in result["reason"]


def test_unreachable_terminals_do_not_spend_the_budget_unless_asked():
    seen = outcomes(updated=8, failed=1, unreachable=5)
    off = rollout.budget_state(seen, max_failed=2, max_failed_pct=20)
    assert (off["spent"], off["attempted"], off["unreachable"], off["exhausted"]) == (1, 9, 5, False)
    assert off["reason"].endswith("; 5 terminals unreachable, not counted")
    on = rollout.budget_state(seen, max_failed=2, max_failed_pct=50, count_unreachable=True)
    assert (on["spent"], on["attempted"], on["exhausted"]) == (6, 14, True)
    assert "6 terminals failed, rolled back or were unreachable, more than the limit of 2 (max_failed) by 4" \
        in on["reason"]


def test_an_outage_does_not_dilute_the_percentage_when_unreachable_terminals_do_not_count():
    # 2 of the 10 terminals that could be tried failed: 20%, whatever the 90 unreachable ones did.
    result = rollout.budget_state(outcomes(updated=8, failed=2, unreachable=90), max_failed_pct=10)
    assert result["attempted"] == 10 and result["exhausted"] is True


def test_would_update_is_attempted_but_spends_nothing():
    result = rollout.budget_state(outcomes(would_update=10, current=3), max_failed=0, max_failed_pct=0)
    assert (result["spent"], result["attempted"], result["exhausted"]) == (0, 10, False)


def test_unfit_terminals_neither_spend_the_budget_nor_count_as_attempted():
    # 40 terminals of a model the release does not fit: no update started on them, so they neither
    # spend the budget nor dilute the share of the 10 terminals that were attempted.
    result = rollout.budget_state(outcomes(updated=8, failed=2, unfit=40), max_failed_pct=10)
    assert (result["spent"], result["attempted"], result["exhausted"]) == (2, 10, True)
    strict = rollout.budget_state(outcomes(unfit=5, updated=1), max_failed=0, max_failed_pct=0)
    assert (strict["spent"], strict["attempted"], strict["exhausted"]) == (0, 1, False)


def test_an_unfit_terminal_the_quiesce_check_started_stays_unfit_and_spends_nothing(tmp_path):
    # The check before the change can record `unfit` on a terminal it counts as started: its outcome
    # is unfit, not unreachable, and it neither spends the budget nor fails the run.
    hostvars = {"HRN00001": {"pos_update_started": True, "pos_update_status": "unfit"},
                "KST00002": {"pos_update_started": True, "pos_update_status": "updated"}}
    found = filters()["pos_rollout_outcomes"](hostvars, sorted(hostvars))
    assert found == {"HRN00001": "unfit", "KST00002": "updated"}
    assert rollout.budget_file_merge(tmp_path / "budget.json", found) == found
    result = rollout.budget_state(found, max_failed=0, max_failed_pct=0)
    assert (result["spent"], result["attempted"], result["exhausted"]) == (0, 1, False)
    assert filters()["pos_spends_budget"]("unfit") is False


class ReadCounter(dict):
    """hostvars that count how often each terminal's variables are read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.reads = collections.Counter()

    def get(self, key, default=None):
        self.reads[key] += 1
        return super().get(key, default)


def test_outcomes_added_batch_by_batch_equal_the_whole_count_and_read_each_terminal_once():
    statuses_cycle = ["updated", "rolled_back", None, "failed", "updated", "unfit", "updated"]
    order = [f"T{number:04d}" for number in range(1, 24)]
    batches = [order[0:3], order[3:10], order[10:20], order[20:23]]
    hostvars = ReadCounter({serial: {"pos_update_status": "go"} for serial in order})
    pos_rollout_outcomes = filters()["pos_rollout_outcomes"]
    counted, last_batch = {}, []
    for index, batch in enumerate(batches):
        # update.yml before each batch: the batch that ran last is added to what was counted before it.
        counted = pos_rollout_outcomes(hostvars, last_batch, counted)
        last_batch = batch
        whole = pos_rollout_outcomes(dict(hostvars), order)
        assert counted == whole
        assert len(counted) == sum(len(done) for done in batches[:index])
        for number, serial in enumerate(batch):
            # A None status: the terminal started and stopped answering before it recorded an outcome.
            status = statuses_cycle[(index + number) % len(statuses_cycle)]
            hostvars[serial] = {"pos_update_started": True, "pos_update_status": status}
    assert counted["T0003"] == "unreachable"
    assert hostvars.reads == dict.fromkeys(order[:20], 1), "each terminal read once, after its batch"


def test_reason_within_budget_and_with_no_limits():
    within = rollout.budget_state(outcomes(updated=19, failed=1), max_failed=3, max_failed_pct=10)
    assert within["reason"] == ("within the error budget: 1 of 20 attempted terminals failed or rolled back (5%); "
                                "limits: at most 3 terminals, at most 10% of those attempted")
    none = rollout.budget_state(outcomes(updated=1, failed=9))
    assert none["exhausted"] is False
    assert none["reason"].startswith("no error budget set")


def test_reason_says_how_many_terminals_were_left_untouched():
    result = rollout.budget_state(outcomes(updated=3, failed=2), max_failed=1, total=120)
    assert result["untouched"] == 115
    assert result["reason"].endswith("; 115 terminals left untouched")


def test_empty_run_is_within_budget():
    result = rollout.budget_state({}, max_failed=0, max_failed_pct=0)
    assert (result["spent"], result["attempted"], result["exhausted"]) == (0, 0, False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"outcomes": {"KST1": "exploded"}}, "terminal KST1 has status 'exploded'"),
        ({"outcomes": {"KST1": "go"}}, "terminal KST1 has status 'go'"),
        ({"outcomes": ["KST1"]}, "outcomes must be a mapping"),
        ({"max_failed": -1}, "max_failed -1 is not a count"),
        ({"max_failed": 1.5}, "max_failed 1.5 is not a count"),
        ({"max_failed_pct": 101}, "max_failed_pct 101 is outside"),
        ({"max_failed_pct": "ten"}, "max_failed_pct 'ten' is not a percentage"),
        ({"total": 0, "outcomes": {"KST1": "failed"}}, "total 0 is not the number of terminals"),
    ],
)
def test_bad_budget_arguments_are_refused(args, message):
    call = {"outcomes": {}, **args}
    with pytest.raises(RolloutError, match=message):
        rollout.budget_state(**call)


# --- the shared budget file -----------------------------------------------------------------------


def test_budget_file_merges_outcomes(tmp_path):
    path = tmp_path / "budget.json"
    assert rollout.budget_file_read(path) == {}
    assert rollout.budget_file_update(path, "KST1", "updated") == {"KST1": "updated"}
    assert rollout.budget_file_update(path, "HRN2", "failed") == {"KST1": "updated", "HRN2": "failed"}
    assert rollout.budget_file_update(str(path), "KST1", "rolled_back") == {"KST1": "rolled_back", "HRN2": "failed"}
    assert json.loads(path.read_text()) == {"HRN2": "failed", "KST1": "rolled_back"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["budget.json", "budget.json.lock"]


def test_budget_file_refuses_a_bad_status_and_keeps_the_file(tmp_path):
    path = tmp_path / "budget.json"
    rollout.budget_file_update(path, "KST1", "updated")
    with pytest.raises(RolloutError, match="status 'exploded'"):
        rollout.budget_file_update(path, "KST2", "exploded")
    assert rollout.budget_file_read(path) == {"KST1": "updated"}


def test_budget_file_that_is_not_json_is_named(tmp_path):
    path = tmp_path / "budget.json"
    path.write_text("{half")
    with pytest.raises(RolloutError, match=f"budget file {path} cannot be read"):
        rollout.budget_file_update(path, "KST1", "updated")
    path.write_text("[]")
    with pytest.raises(RolloutError, match="does not hold a JSON object"):
        rollout.budget_file_read(path)


def _record_outcomes(path, worker, count, start):
    """One process of the concurrency test: record `count` outcomes as fast as it can."""
    start.wait()
    statuses = ("updated", "failed", "rolled_back", "unreachable")
    for index in range(count):
        serial = f"W{worker:02d}-{index:03d}"
        seen = rollout.budget_file_update(path, serial, statuses[index % len(statuses)])
        if serial not in seen:
            raise AssertionError(f"{serial} missing from the outcomes its own update returned")


def test_concurrent_processes_lose_no_update(tmp_path):
    path = str(tmp_path / "budget.json")
    workers, each = 8, 40
    # spawn: a fresh interpreter per worker, like separate ansible-playbook processes.
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    processes = [context.Process(target=_record_outcomes, args=(path, worker, each, start))
                 for worker in range(workers)]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(120)
    assert [process.exitcode for process in processes] == [0] * workers
    final = rollout.budget_file_read(path)
    assert len(final) == workers * each
    assert final["W03-005"] == "failed"
    state_ = rollout.budget_state(final, max_failed=0)
    assert (state_["spent"], state_["unreachable"]) == (workers * each // 2, workers * each // 4)
    assert sorted(os.listdir(tmp_path)) == ["budget.json", "budget.json.lock"]


def test_slow_links_are_no_canaries_and_start_the_last_wave_beside_fast_ones():
    hosts = fleet({("kestrel_k200", "eu_west"): 20, ("heron_h5", "eu_west"): 6, ("petrel_p9", "eu_west"): 1})
    slow = {host["serial"] for host in hosts if host["model"] != "petrel_p9" and int(host["serial"][3:]) % 5 == 0}
    marked = [dict(host, slow=host["serial"] in slow) for host in hosts]
    waves = rollout.plan_waves(marked, 1, [10, 30, 100], "region")
    everyone = [serial for wave in waves for serial in wave]
    assert sorted(everyone) == sorted(host["serial"] for host in hosts), "every terminal exactly once"
    assert not slow & set(waves[0]), "a model with fast terminals gets a fast canary"
    assert not slow & {serial for wave in waves[1:-1] for serial in wave}, "no slow terminal in a small early wave"
    last = waves[-1]
    head = last[:2 * len(slow)]
    assert set(head[::2]) == slow and not slow & set(head[1::2]), "the last wave starts slow, fast, slow, fast ..."
    # Without slow links the plan is the one it always was.
    assert rollout.plan_waves([dict(host, slow=False) for host in hosts], 1, [10, 30, 100], "region") == \
        rollout.plan_waves(hosts, 1, [10, 30, 100], "region")


def test_a_model_with_only_slow_links_still_gets_its_canary():
    hosts = [dict(host, slow=host["model"] == "petrel_p9")
             for host in fleet({("kestrel_k200", "eu_west"): 9, ("petrel_p9", "eu_west"): 3})]
    waves = rollout.plan_waves(hosts, 1, [50, 100], "region")
    assert sorted(serial[:3] for serial in waves[0]) == ["KST", "PTR"]
    assert [serial[:3] for serial in waves[-1][:4]] == ["PTR", "KST", "PTR", "KST"]


def test_the_plan_filter_marks_links_below_the_floor_slow():
    # Imported here, not at the top: test_concurrent_processes_lose_no_update's spawned processes import this
    # module without the collection on their path.
    from ansible_collections.posfleet.fleet.plugins.filter.posfleet_rollout import pos_rollout_plan  # noqa: PLC0415

    hostvars = {f"KST{n}": {"pos_model": "kestrel_k200", "pos_region": "eu_west", "pos_update_status": "go",
                            "pos_update_link_kbps": 300 if n in (3, 7) else 40000} for n in range(1, 11)}
    hostvars["KST9"]["pos_update_link_kbps"] = None      # not measured: not taken for slow
    plan = pos_rollout_plan(hostvars, sorted(hostvars), 1, [50, 100], "region", 0, 0, 1000)
    assert plan["slow"] == ["KST3", "KST7"]
    assert plan["batches"] == [len(wave) for wave in plan["waves"]], "batch size 0: a wave is one batch"
    assert plan["waves"][-1][0] in ("KST3", "KST7")
    assert pos_rollout_plan(hostvars, sorted(hostvars), 1, [50, 100], "region", 0, 0, 0)["slow"] == [], \
        "0 turns it off"


# --- through Ansible ------------------------------------------------------------------------------


def _ansible_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "POSLAB_"))}
    env.update(ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json")
    return env


def _messages(stdout):
    result = json.loads(stdout)
    return [host["msg"] for play in result["plays"] for task in play["tasks"] for host in task["hosts"].values()
            if "msg" in host]


def test_filters_load_in_ansible_with_the_production_inventory():
    # The region settings come from the production inventory, as a playbook would read them.
    expression = ("{{ hostvars['PTR00003'].pos_region_settings | posfleet.fleet.pos_window('2026-03-29T01:00:00Z') }}")
    proc = subprocess.run(
        [ansible_tool("ansible"), "localhost", "-m", "ansible.builtin.debug", "-a", f"msg={expression}"],
        cwd=REPO, env=dict(_ansible_env(), ANSIBLE_INVENTORY="inventories/production"),
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [message] = _messages(proc.stdout)
    assert message["open"] is True and message["source"] == "region"
    assert message["timezone"] == "Europe/Berlin"
    assert message["opens_at_local"] == "2026-03-29T03:00:00+02:00"


PLAYBOOK = """\
- name: Plan the waves on the control node
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Plan the waves
      ansible.builtin.set_fact:
        rollout_plan: "{{ hostvars | posfleet.fleet.pos_rollout_plan(groups['fleet'], 1, [50, 100], 'model') }}"
    - name: Show the waves
      ansible.builtin.debug:
        msg: "{{ rollout_plan.waves }}"

- name: Run the waves as batches
  hosts: "{{ hostvars['localhost'].rollout_plan.order }}"
  serial: "{{ hostvars['localhost'].rollout_plan.batches }}"
  gather_facts: false
  tasks:
    - name: Show the batch
      ansible.builtin.debug:
        msg: "{{ ansible_play_batch }}"
      run_once: true
"""


def test_ansible_runs_the_waves_as_its_batches(tmp_path):
    # What update.yml is to do: hosts in wave order and serial from the batch sizes give one Ansible
    # batch per wave. Local-connection hosts only; nothing is contacted.
    inventory = tmp_path / "fleet.ini"
    lines = ["[fleet]"]
    for host in fleet({("kestrel_k200", "eu_west"): 3, ("kestrel_k200", "us_east"): 2,
                       ("heron_h5", "us_east"): 2, ("petrel_p9", "eu_west"): 1}):
        lines.append(f"{host['serial']} pos_model={host['model']} pos_region={host['region']} pos_update_status=go")
    lines += ["[all:vars]", "ansible_connection=local", f"ansible_python_interpreter={sys.executable}"]
    inventory.write_text("\n".join(lines) + "\n")
    (tmp_path / "waves.yml").write_text(PLAYBOOK)
    proc = subprocess.run(
        [ansible_tool("ansible-playbook"), "-i", str(inventory), str(tmp_path / "waves.yml")],
        cwd=REPO, env=_ansible_env(), capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    waves, *batches = _messages(proc.stdout)
    # a canary of one per model, then 5 left: ceil(50%) = 3, then 2
    assert [len(wave) for wave in waves] == [3, 3, 2]
    assert sorted(serial[:3] for serial in waves[0]) == ["HRN", "KST", "PTR"]
    assert batches == waves


WINDOW_PLAYBOOK = """\
- name: The plan and the settings update.yml's rollout play reads
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Plan
      ansible.builtin.set_fact:
        update_plan: {{order: "{{{{ groups['fleet'] }}}}"}}
        update_settings: {{budget_file: null, max_failed: 1, max_failed_pct: null, count_unreachable: false}}

- name: Update in a sliding window, the budget checked before each terminal as update.yml does
  hosts: fleet
  serial: [3, 5]
  strategy: {strategy}
  gather_facts: false
  vars:
    update_rollout_settings: "{{{{ hostvars['localhost'].update_settings }}}}"
    posfleet_outcomes_file: {outcomes}
  tasks:
{tasks}
    - name: Start, then end with an outcome
      posfleet.fleet.pos_record:
        started: true
        status: >-
          {{{{ {{'KST2': 'failed', 'KST3': 'rolled_back', 'KST4': 'failed'}}.get(inventory_hostname, 'updated') }}}}

- name: Show what each terminal ended with
  hosts: fleet
  gather_facts: false
  tasks:
    - name: Show
      ansible.builtin.debug:
        msg:
          - "{{{{ inventory_hostname }}}}"
          - "{{{{ pos_update_status }}}}"
          - "{{{{ pos_update_deferred_by | default('') }}}}"
"""


def test_update_yml_s_budget_check_before_each_terminal_stops_new_ones_and_lets_none_run_half_way(tmp_path):
    # update.yml's own tasks before a terminal's update, over local-connection hosts that only record an outcome
    # (nothing is contacted): one terminal at a time (forks 1), so the order is known. With max_failed 1, KST2 and
    # KST3 spend the budget; KST4, in the same batch, starts only if the budget holds: it does not, and neither does
    # any terminal of the next batch. Every outcome went to the run's tally, read before each terminal.
    play = yaml.safe_load((REPO / "playbooks" / "update.yml").read_text())[1]
    assert play["strategy"] == "ansible.builtin.host_pinned", "a sliding window, not batches waiting for their slowest"
    tasks = [task for task in play["tasks"] if "import_role" not in task and "ansible.builtin.import_role" not in task]
    assert [task["name"] for task in tasks] == ["Check the fleet-wide error budget before this terminal starts",
                                               "Leave the terminal untouched once the error budget is spent"]
    outcomes = tmp_path / "run.outcomes"
    inventory = tmp_path / "fleet.ini"
    inventory.write_text("[fleet]\n" + "".join(f"KST{number}\n" for number in range(1, 9))
                         + f"[all:vars]\nansible_connection=local\nansible_python_interpreter={sys.executable}\n")
    rendered = yaml.safe_dump(tasks, sort_keys=False)
    (tmp_path / "window.yml").write_text(WINDOW_PLAYBOOK.format(
        strategy=play["strategy"], outcomes=json.dumps(str(outcomes)),
        tasks="".join(f"    {line}\n" for line in rendered.splitlines())))
    proc = subprocess.run(
        [ansible_tool("ansible-playbook"), "-f", "1", "-i", str(inventory), str(tmp_path / "window.yml")],
        cwd=REPO, env=_ansible_env(), capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The budget checks' results carry a msg too (their reason): the debug's are the lists.
    ended = {shown[0]: tuple(shown[1:]) for shown in _messages(proc.stdout) if isinstance(shown, list)}
    assert ended == {"KST1": ("updated", ""), "KST2": ("failed", ""), "KST3": ("rolled_back", ""),
                     **{f"KST{number}": ("deferred", "budget") for number in range(4, 9)}}
    assert json.loads(outcomes.read_text()) == {"KST1": "updated", "KST2": "failed", "KST3": "rolled_back"}, \
        "the tally holds every started terminal's outcome, and no terminal the budget kept from starting"
