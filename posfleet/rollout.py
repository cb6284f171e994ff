"""Rollout control on the control node: maintenance windows, waves and the error budget (docs/rollout.md).

Everything here is a function of its arguments: the clock is passed in, never read, so that a plan
computed twice is the same plan and tests choose the time. plugins/filter/posfleet_rollout.py gives
them to playbooks as filters. budget_file_update is the one function with a side effect: the budget
file that several ansible-playbook processes (AWX job slices) share. Standard library only.

Every wrong argument raises RolloutError with a message that names the value and says what is
expected, because these messages reach an operator through a failed task.
"""

import collections
import collections.abc
import datetime
import fcntl
import json
import math
import os
import random
import re
import statistics
import tempfile
import zoneinfo
from fractions import Fraction

from posfleet import statuses

UTC = datetime.timezone.utc
DAY_MINUTES = 24 * 60

# --- maintenance windows ---------------------------------------------------------------------------

ALWAYS_OPEN = "00:00-24:00"
WINDOW_FORMAT = (
    '"HH:MM-HH:MM", local 24-hour time such as "01:00-05:00"; an end before the start crosses midnight '
    '("23:30-04:00"); "00:00-24:00" is always open'
)
_WINDOW = re.compile(r"(\d{2}):(\d{2})-(\d{2}):(\d{2})")


class RolloutError(ValueError):
    """A wrong argument to a rollout function; the message says which and what is expected."""


def parse_window(window):
    """(start, end) of a window in minutes after local midnight; end is 1440 for "24:00".

    The start is 00:00 to 23:59, the end 00:00 to 24:00. A start equal to the end is refused: it
    could mean "never" or "always", and only "00:00-24:00" says "always" without doubt.
    """
    if not isinstance(window, str):
        raise RolloutError(f"maintenance window {window!r} is not text; expected {WINDOW_FORMAT}")
    match = _WINDOW.fullmatch(window)
    if match is None:
        raise RolloutError(f"maintenance window {window!r} is malformed; expected {WINDOW_FORMAT}")
    start_h, start_m, end_h, end_m = (int(part) for part in match.groups())
    if start_h > 23 or start_m > 59 or end_m > 59 or end_h > 24 or (end_h == 24 and end_m != 0):
        raise RolloutError(f"maintenance window {window!r} has a time that does not exist on a clock "
                           f"(start 00:00-23:59, end 00:00-24:00); expected {WINDOW_FORMAT}")
    start, end = start_h * 60 + start_m, end_h * 60 + end_m
    if start == end:
        raise RolloutError(f"maintenance window {window!r} starts when it ends; write {ALWAYS_OPEN!r} for a "
                           f"window that is always open; expected {WINDOW_FORMAT}")
    return start, end


def load_zone(name):
    """The ZoneInfo of an IANA timezone name, or a RolloutError that names the zone."""
    if not isinstance(name, str) or not name:
        raise RolloutError(f"timezone {name!r} is not an IANA timezone name such as 'Europe/Berlin'")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise RolloutError(f"timezone {name!r} is unknown to zoneinfo: use an IANA name such as 'Europe/Berlin' "
                           f"(the zones come from the system's tzdata package)") from None


def as_utc(now_utc):
    """An aware UTC datetime from a datetime or an ISO 8601 string.

    A value without an offset is taken as UTC: that is what Ansible's `now(utc=true)` returns.
    """
    if isinstance(now_utc, str):
        try:
            now_utc = datetime.datetime.fromisoformat(now_utc)
        except ValueError:
            raise RolloutError(f"time {now_utc!r} is not an ISO 8601 date and time such as "
                               f"'2026-03-29T01:30:00Z'") from None
    if not isinstance(now_utc, datetime.datetime):
        raise RolloutError(f"time {now_utc!r} is neither a datetime nor an ISO 8601 string")
    if now_utc.tzinfo is None or now_utc.utcoffset() is None:
        return now_utc.replace(tzinfo=UTC)
    return now_utc.astimezone(UTC)


def _first_instant(day, minutes, zone):
    """The first UTC instant at which the clock in `zone` shows `minutes` after midnight of `day`, or later.

    An hour that happens twice (clocks go back) counts from its first pass. A time that does not
    happen (clocks spring forward over it) is reached at the jump, the first instant the clock has
    passed it.
    """
    wall = datetime.datetime.combine(day, datetime.time()) + datetime.timedelta(minutes=minutes)
    seen = []
    for fold in (0, 1):
        instant = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        if instant.astimezone(zone).replace(tzinfo=None) == wall:
            seen.append(instant)
    if seen:
        return min(seen)
    # In a gap the two folds convert with the offsets before and after the jump; the jump lies
    # between them, at the first whole second whose local time is past `wall`.
    low, high = sorted(wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1))
    lo, hi = 0, int((high - low).total_seconds())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (low + datetime.timedelta(seconds=mid)).astimezone(zone).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid
    return low + datetime.timedelta(seconds=hi)


def window_state(window, tz, now_utc):
    """Whether a maintenance window is open at `now_utc`, and when it opens and closes.

    Returns {"open", "opens_at_utc", "closes_at_utc", "local_now", "opens_at_local", "closes_at_local",
    "window", "timezone"}; times are ISO 8601 strings. While the window is open, opens_at/closes_at are
    the current window's; while it is closed, the next one's. "00:00-24:00" never closes: both are
    None. The window is a span of the zone's wall clock, so it follows daylight saving time: it opens
    the first time the local clock shows its start and closes the first time it then shows its end.
    """
    start, end = parse_window(window)
    zone = load_zone(tz)
    now = as_utc(now_utc)
    local_now = now.astimezone(zone)
    state = {"window": window, "timezone": tz, "local_now": local_now.isoformat()}
    if (start, end) == (0, DAY_MINUTES):
        return dict(state, open=True, opens_at_utc=None, closes_at_utc=None, opens_at_local=None,
                    closes_at_local=None)
    if end < start:
        end += DAY_MINUTES
    today = local_now.date()
    # Yesterday's window may still be open after midnight; a window that DST leaves empty on one day
    # (entirely inside the skipped hour) moves the next opening a day further.
    for offset in range(-1, 4):
        day = today + datetime.timedelta(days=offset)
        opens, closes = _first_instant(day, start, zone), _first_instant(day, end, zone)
        if closes <= now or opens >= closes:
            continue
        return dict(state, open=opens <= now, opens_at_utc=opens.isoformat(), closes_at_utc=closes.isoformat(),
                    opens_at_local=opens.astimezone(zone).isoformat(),
                    closes_at_local=closes.astimezone(zone).isoformat())
    raise RolloutError(f"maintenance window {window!r} in {tz} never opens in the next three days")


# --- waves -----------------------------------------------------------------------------------------

ORDERS = ("region", "model", "shuffle")


def _percentage(value, what, allow_zero=False):
    """A Fraction from 10, 12.5, "10" or "10%", above 0 (or from 0 with allow_zero) and at most 100."""
    text = value.strip().removesuffix("%") if isinstance(value, str) else value
    if isinstance(text, str):
        if not re.fullmatch(r"\d+(?:\.\d+)?", text):
            raise RolloutError(f"{what} {value!r} is not a percentage such as 10 or '10%'")
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RolloutError(f"{what} {value!r} is not a percentage such as 10 or '10%'")
    # str() first: Fraction(0.1) is the binary float, Fraction("0.1") is one tenth.
    share = Fraction(str(text))
    if share > 100 or share < 0 or (share == 0 and not allow_zero):
        low = "0" if allow_zero else "above 0"
        raise RolloutError(f"{what} {value!r} is outside the range {low} to 100")
    return share


def _canary_count(spec, model_size):
    """How many terminals of a model of `model_size` go into the canary: N, or N% rounded up, at least 1."""
    if isinstance(spec, str) and spec.strip().endswith("%"):
        share = _percentage(spec, "canary_per_model")
        return max(1, math.ceil(model_size * share / 100))
    if isinstance(spec, str) and spec.strip().isdigit():
        spec = int(spec)
    if isinstance(spec, bool) or not isinstance(spec, int) or spec < 1:
        raise RolloutError(f"canary_per_model {spec!r} is neither a count of at least 1 nor a percentage such "
                           f"as '10%': every model needs at least one canary")
    return min(spec, model_size)


def _check_hosts(hosts):
    if not isinstance(hosts, (list, tuple)):
        raise RolloutError(f"hosts must be a list of {{serial, model, region}}, not {type(hosts).__name__}")
    seen = set()
    for host in hosts:
        if not isinstance(host, collections.abc.Mapping):
            raise RolloutError(f"host {host!r} is not a mapping with serial, model and region")
        for key in ("serial", "model", "region"):
            if not isinstance(host.get(key), str) or not host.get(key):
                raise RolloutError(f"host {host!r} has no {key}")
        if host["serial"] in seen:
            raise RolloutError(f"terminal {host['serial']} is listed twice")
        seen.add(host["serial"])


def _check_waves(waves):
    if isinstance(waves, (str, bytes)) or not isinstance(waves, (list, tuple)) or not waves:
        raise RolloutError(f"waves {waves!r} must be a list of cumulative percentages ending at 100, "
                           f"such as [10, 30, 100]")
    shares = [_percentage(value, "wave percentage") for value in waves]
    if any(later <= earlier for earlier, later in zip(shares, shares[1:])):
        raise RolloutError(f"waves {list(waves)!r} must grow: each percentage is the share done once that wave "
                           f"is over (cumulative), such as [10, 30, 100]")
    if shares[-1] != 100:
        raise RolloutError(f"waves {list(waves)!r} must end at 100, so that the last wave takes every terminal "
                           f"left")
    return shares


def order_fleet(hosts, order="region", seed=0):
    """The hosts in rollout order; the input's order never matters.

    region: by region, then model, then serial. model: by model, then region, then serial.
    shuffle: a shuffle of the serial-sorted list by random.Random(seed), the same for the same seed.
    """
    _check_hosts(hosts)
    if order not in ORDERS:
        raise RolloutError(f"order {order!r} is not one of {', '.join(ORDERS)}")
    ordered = sorted(hosts, key=lambda host: host["serial"])
    if order == "region":
        ordered.sort(key=lambda host: (host["region"], host["model"]))
    elif order == "model":
        ordered.sort(key=lambda host: (host["model"], host["region"]))
    else:
        if isinstance(seed, bool) or not isinstance(seed, (int, str)):
            raise RolloutError(f"seed {seed!r} must be an integer (or a text such as the release id)")
        # `-e seed=42` arrives as text: the same plan as the number 42.
        if isinstance(seed, str) and re.fullmatch(r"-?\d+", seed.strip()):
            seed = int(seed)
        random.Random(seed).shuffle(ordered)
    return ordered


def plan_waves(hosts, canary_per_model=1, waves=(10, 30, 100), order="region", seed=0):
    """Split a fleet into waves of serials: the canary, then waves by cumulative percentage.

    Wave 0 is the canary: from every model present, canary_per_model terminals (a count, or "N%" of
    that model rounded up), at least one, taken first in rollout order. The terminals left are then
    split so that once wave i is over, waves[i] percent of them (rounded up) are done; waves must
    end at 100. A wave that rounding leaves empty is dropped, so no wave is ever empty; 0 hosts give
    no waves.

    A host marked `"slow": True` (its link, measured by the survey, is below the slow-link floor) takes
    longer than the others, and a wave ends only when its last terminal has: in a small wave, one slow
    terminal would hold every other terminal of the fleet. So slow terminals are canaries only where a
    model has too few others, and otherwise go to the last wave, at its start, alternating with fast ones:
    they start at once and update beside the fast ones instead of after them, and half of the window is
    left to the fast ones.
    """
    shares = _check_waves(waves)
    _canary_count(canary_per_model, 1)      # refused even when the fleet is empty
    ordered = order_fleet(hosts, order, seed)
    sizes = collections.Counter(host["model"] for host in ordered)
    quota = {model: _canary_count(canary_per_model, size) for model, size in sizes.items()}
    fast = collections.Counter(host["model"] for host in ordered if not host.get("slow"))
    # Slow canaries only for the models whose fast terminals cannot fill their quota.
    canaries = {(model, False): min(count, fast[model]) for model, count in quota.items()}
    canaries.update({(model, True): count - canaries[model, False] for model, count in quota.items()})
    canary, rest, slow = [], [], []
    for host in ordered:
        kind = (host["model"], bool(host.get("slow")))
        if canaries[kind] > 0:
            canaries[kind] -= 1
            canary.append(host["serial"])
        elif host.get("slow"):
            slow.append(host["serial"])
        else:
            rest.append(host["serial"])
    plan = [canary] if canary else []
    done = 0
    for share in shares:
        upto = math.ceil(len(rest) * share / 100)
        if upto > done:
            plan.append(rest[done:upto])
            done = upto
    if slow:
        if len(plan) > 1:
            # Alternating with fast ones: the slow ones start at once without filling the whole window.
            last = plan[-1]
            plan[-1] = [serial for pair in zip(slow, last) for serial in pair]
            plan[-1] += slow[len(last):] + last[len(slow):]
        else:
            plan.append(slow)
    return plan


def serial_for_ansible(waves, batch_size=None):
    """The batch sizes to give a play's `serial` when its hosts are in wave order (order_hosts).

    Ansible cuts the play's host list into batches of these sizes before the first batch starts, and
    a batch starts only when every terminal of the one before has ended: a wave is proven before the
    next. A wave larger than `batch_size` is cut into batches of at most that many terminals, a further
    barrier inside it; None or 0 (update.yml's default): one batch per wave.
    An empty plan gives []: Ansible reads an empty `serial` as one batch of every host, which only
    matches an empty plan when the play has no hosts either (order_hosts checks that).
    """
    if batch_size is not None:
        if isinstance(batch_size, str) and batch_size.strip().isdigit():
            batch_size = int(batch_size)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
            raise RolloutError(f"batch_size {batch_size!r} is not a count of terminals (0: one batch per wave)")
        batch_size = batch_size or None
    sizes = []
    for index, wave in enumerate(waves):
        if isinstance(wave, (str, bytes)) or not isinstance(wave, (list, tuple)) or not wave:
            raise RolloutError(f"wave {index} ({wave!r}) is not a non-empty list of serials")
        left = len(wave)
        while left:
            size = left if batch_size is None else min(left, batch_size)
            sizes.append(size)
            left -= size
    return sizes


def time_left(batches, order, durations, parallel, model_of=None):
    """Seconds an update still needs, or None before a finished terminal has taken any time.

    `batches` are the play's batch sizes over `order` (serial_for_ansible); `durations` is {serial: seconds}
    of the terminals finished so far. A terminal not finished is expected to take the median of its model's
    finished ones (`model_of`: {serial: model}), the last `parallel` of them so that the estimate follows
    the night's pace, or of all models' while its model has none. Inside a batch `parallel` terminals (forks)
    update at once, so its work is spread over them, and it takes at least as long as its slowest terminal;
    a batch starts only when the one before has ended. Terminals in flight count in full, so near the end of
    a batch the estimate errs long, by up to one terminal's update. Why not the run's pace so far: its first
    batches are small (the canaries), so that pace says little of a last wave of hundreds; at 500 terminals
    it read 23 hours after the first canary, for a run that took 50 minutes.
    """
    taken = [(serial, seconds) for serial, seconds in durations.items() if seconds and seconds > 0]
    if not taken or not parallel or parallel < 1:
        return None
    model_of = model_of or {}
    by_model = collections.defaultdict(list)
    for serial, seconds in taken:
        by_model[model_of.get(serial)].append(seconds)
    typical = {model: statistics.median(seconds[-parallel:]) for model, seconds in by_model.items()}
    overall = statistics.median([seconds for _serial, seconds in taken[-parallel:]])
    left, start = 0.0, 0
    for size in batches:
        expected = [typical.get(model_of.get(serial), overall) for serial in order[start:start + size]
                    if serial not in durations]
        start += size
        if expected:
            left += max(sum(expected) / parallel, *expected)
    return left


def order_hosts(hosts, waves):
    """The play's host names in wave order, after checking that the plan covers exactly these hosts.

    `hosts` are names or {serial, ...} mappings. A terminal in the play but not in the plan, or in the
    plan but not in the play (a --limit the plan did not see), would shift every batch by one; both
    are refused, with the serials named.
    """
    names = [host["serial"] if isinstance(host, collections.abc.Mapping) else host for host in hosts]
    planned = [serial for wave in waves for serial in wave]
    duplicates = sorted(serial for serial, count in collections.Counter(planned).items() if count > 1)
    if duplicates:
        raise RolloutError(f"the plan lists {_few(duplicates)} in more than one wave")
    missing = sorted(set(names) - set(planned))
    extra = sorted(set(planned) - set(names))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"not in the plan: {_few(missing)}")
        if extra:
            parts.append(f"planned but not in the play: {_few(extra)}")
        raise RolloutError("the wave plan does not match the play's terminals (" + "; ".join(parts) +
                           "); plan the waves from the same terminals the play runs on")
    return planned


def _few(serials, limit=10):
    shown = ", ".join(serials[:limit])
    return shown + (f" and {len(serials) - limit} more" if len(serials) > limit else "")


# --- the error budget ------------------------------------------------------------------------------

STATUSES = statuses.OUTCOMES
_STARTED = statuses.STARTED
_SPENDING = statuses.SPENDING


def _check_outcome(serial, status):
    if not isinstance(serial, str) or not serial:
        raise RolloutError(f"serial {serial!r} is not a terminal's serial")
    if status not in STATUSES:
        raise RolloutError(f"terminal {serial} has status {status!r}, not one of {', '.join(STATUSES)}")


def _limit(value, what, percent):
    if value is None:
        return None
    if percent:
        return _percentage(value, what, allow_zero=True)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RolloutError(f"{what} {value!r} is not a count of terminals (0 or more)")
    return value


def _terminals(count):
    return f"{count} terminal" + ("" if count == 1 else "s")


def _show(number):
    """A percentage for people: 15, 12.5, 10.01."""
    return f"{float(number):.2f}".rstrip("0").rstrip(".")


def budget_state(outcomes, max_failed=None, max_failed_pct=None, count_unreachable=False, total=None):
    """How much of the run's error budget the outcomes so far have spent, and whether it is exhausted.

    `outcomes` is {serial: status} for every terminal that has finished, over every batch of the run.
    Failed and rolled_back terminals spend the budget; unreachable ones too when count_unreachable.
    Attempted terminals are those that started an update: not current, not deferred, and not
    unreachable unless unreachable ones count (otherwise an outage would dilute the percentage).
    The budget is exhausted when spent exceeds max_failed, or exceeds max_failed_pct percent of the
    attempted terminals; None turns a limit off. `total`, the number of terminals in the run, adds
    how many were left untouched to the reason.

    Returns {"spent", "attempted", "failed", "unreachable", "exhausted", "untouched", "reason"}.
    """
    if not isinstance(outcomes, collections.abc.Mapping):
        raise RolloutError(f"outcomes must be a mapping of serial to status, not {type(outcomes).__name__}")
    for serial, status in outcomes.items():
        _check_outcome(serial, status)
    max_failed = _limit(max_failed, "max_failed", percent=False)
    max_pct = _limit(max_failed_pct, "max_failed_pct", percent=True)
    counts = collections.Counter(outcomes.values())
    failed = sum(counts[status] for status in _SPENDING)
    unreachable = counts[statuses.UNREACHABLE]
    spent = failed + (unreachable if count_unreachable else 0)
    attempted = sum(counts[status] for status in _STARTED) + (unreachable if count_unreachable else 0)
    untouched = None
    if total is not None:
        if isinstance(total, bool) or not isinstance(total, int) or total < len(outcomes):
            raise RolloutError(f"total {total!r} is not the number of terminals in the run "
                               f"(at least the {len(outcomes)} with an outcome)")
        untouched = total - len(outcomes)

    what = "failed, rolled back or were unreachable" if count_unreachable else "failed or rolled back"
    share = Fraction(spent * 100, attempted) if attempted else Fraction(0)
    over = []
    if max_failed is not None and spent > max_failed:
        over.append(f"{_terminals(spent)} {what}, more than the limit of {max_failed} "
                    f"(max_failed) by {spent - max_failed}")
    if max_pct is not None and share > max_pct:
        over.append(f"{spent} of {attempted} attempted terminals {what} ({_show(share)}%), more than the "
                    f"limit of {_show(max_pct)}% (max_failed_pct) by {_show(share - max_pct)} points")
    if over:
        reason = "error budget exhausted: " + "; and ".join(over)
        if untouched is not None:
            reason += f"; {_terminals(untouched)} left untouched"
    elif max_failed is None and max_pct is None:
        reason = f"no error budget set (max_failed and max_failed_pct are both off); {_terminals(spent)} {what}"
    else:
        limits = []
        if max_failed is not None:
            limits.append(f"at most {_terminals(max_failed)}")
        if max_pct is not None:
            limits.append(f"at most {_show(max_pct)}% of those attempted")
        reason = (f"within the error budget: {spent} of {attempted} attempted terminals {what} "
                  f"({_show(share)}%); limits: {', '.join(limits)}")
    if unreachable and not count_unreachable:
        reason += f"; {_terminals(unreachable)} unreachable, not counted"
    return {"spent": spent, "attempted": attempted, "failed": failed, "unreachable": unreachable,
            "exhausted": bool(over), "untouched": untouched, "reason": reason}


def budget_file_read(path):
    """{serial: status} from a budget file; {} when it does not exist yet."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            outcomes = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise RolloutError(f"budget file {path} cannot be read: {exc}") from None
    if not isinstance(outcomes, dict):
        raise RolloutError(f"budget file {path} does not hold a JSON object of serial to status")
    return outcomes


def budget_file_update(path, serial, status):
    """Record one terminal's outcome in a budget file shared by several processes; return every outcome."""
    return budget_file_merge(path, {serial: status})


def budget_file_merge(path, outcomes):
    """Record outcomes {serial: status} in a budget file shared by several processes; return every outcome.

    The file is a JSON object {serial: status}; a serial recorded twice keeps its newest status. The
    read-change-write runs under an exclusive flock on `<path>.lock` (a separate file, because the
    data file is replaced by a rename and a lock on a replaced file guards nothing), and the new file
    is written beside the old one and renamed over it, so a reader never sees half a file and no
    writer loses another's update. Processes must share the file system and its locks: one control
    node, or a shared file system whose flock works across hosts.
    """
    if not isinstance(outcomes, collections.abc.Mapping):
        raise RolloutError(f"outcomes must be a mapping of serial to status, not {type(outcomes).__name__}")
    for serial, status in outcomes.items():
        _check_outcome(serial, status)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    with open(path + ".lock", "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        recorded = budget_file_read(path)
        if all(recorded.get(serial) == status for serial, status in outcomes.items()):
            return recorded
        recorded.update(outcomes)
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115  (closed before the rename, removed on error)
            "w", encoding="utf-8", dir=directory, prefix=".budget-", suffix=".tmp", delete=False)
        try:
            with handle:
                json.dump(recorded, handle, indent=1, sort_keys=True)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(handle.name, path)
        except BaseException:
            os.unlink(handle.name)
            raise
    return recorded
