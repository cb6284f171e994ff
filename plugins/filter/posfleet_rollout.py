# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters for rollout control: maintenance windows, waves and the error budget (docs/rollout.md).

The logic is posfleet.rollout's, on the control node; these wrappers read the inventory's shapes
(pos_region_settings, hostvars) and turn a wrong argument into a filter error an operator can act on.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

# plugins/filter/posfleet_rollout.py -> the repository root, where the posfleet package is.
_PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
if _PROJECT not in sys.path:
    sys.path.insert(0, _PROJECT)

from posfleet import rollout  # noqa: E402  (needs the path set above)


def pos_window(region_settings, now_utc, override=None):
    """The maintenance window state of a region (or of one terminal's override) at `now_utc`.

    region_settings: pos_region_settings (timezone, maintenance_window, name). now_utc: the control
    node's clock, `now(utc=true)`, or an ISO 8601 string. override: a window string that replaces the
    region's window for this terminal (a host variable), or None. Adds `source`: region or override.
    """
    if not isinstance(region_settings, Mapping):
        raise AnsibleFilterError(f"pos_window needs a region's settings (pos_region_settings), not {region_settings!r}")
    name = region_settings.get("name", "?")
    source = "region" if override is None else "override"
    window = region_settings.get("maintenance_window") if override is None else override
    if window is None:
        raise AnsibleFilterError(f"region {name} has no maintenance_window: give it one in regions.yml "
                                 f"({rollout.ALWAYS_OPEN!r} for always open)")
    try:
        state = rollout.window_state(window, region_settings.get("timezone"), now_utc)
    except rollout.RolloutError as exc:
        where = f"region {name}" if override is None else f"the window override for a terminal in region {name}"
        raise AnsibleFilterError(f"{where}: {exc}") from None
    return dict(state, source=source)


def window_now(region_settings, clock_utc="", override=None):
    """pos_window on the control node's clock now, or at `clock_utc` when it is set (a preview, a test).

    The survey (pos_preflight) and the check just before a terminal's change (pos_maintenance's
    window) decide with it, so that both read the same clock the same way.
    """
    return pos_window(region_settings, clock_utc or datetime.datetime.now(datetime.timezone.utc), override)


def window_reason(window):
    """Why a terminal outside its window (a pos_window result) is deferred, with when the window opens next."""
    return (f"outside its maintenance window {window['window']} ({window['timezone']}, {window['source']}); "
            f"it opens next at {window['opens_at_local']}")


def pos_rollout_hosts(hostvars, hosts):
    """[{serial, model, region}] for the terminals `hosts` (inventory names), from pos_model and pos_region."""
    fleet = []
    for host in hosts:
        variables = hostvars.get(host) or {}
        model, region = variables.get("pos_model"), variables.get("pos_region")
        if not model or not region:
            raise AnsibleFilterError(f"terminal {host} has no pos_model or pos_region: is it in the registry?")
        fleet.append({"serial": str(host), "model": str(model), "region": str(region)})
    return fleet


# A terminal ends a rollout with one of these; `go` (still updating) is not an outcome.
FINAL_STATUSES = ("current", "updated", "deferred", "failed", "rolled_back", "would_update")


def pos_rollout_plan(hostvars, hosts, canary_per_model=1, waves=(10, 30, 100), order="region", seed=0,
                     batch_size=None):
    """The waves of a rollout over the terminals of `hosts` whose survey said `go`.

    Terminals that are current, deferred or did not answer the survey are left out: a canary must be
    a terminal that will really be updated. Returns {"waves": [[serial, ...]], "order": [serial, ...]
    (the play's hosts, in wave order), "batches": [size, ...] (the play's serial), "wave_of":
    {serial: wave index}}.
    """
    ready = [host for host in hosts if (hostvars.get(host) or {}).get("pos_update_status") == "go"]
    fleet = pos_rollout_hosts(hostvars, ready)
    try:
        plan = rollout.plan_waves(fleet, canary_per_model, waves, order, seed)
        ordered = rollout.order_hosts(ready, plan)
        batches = rollout.serial_for_ansible(plan, batch_size)
    except rollout.RolloutError as exc:
        raise AnsibleFilterError(str(exc)) from None
    wave_of = {serial: index for index, wave in enumerate(plan) for serial in wave}
    return {"waves": plan, "order": ordered, "batches": batches, "wave_of": wave_of}


def pos_rollout_outcomes(hostvars, hosts):
    """{serial: status} of every terminal in `hosts` that the rollout started, for the error budget.

    A terminal that started (pos_update_started) but has no final status stopped answering in the
    middle of its update: it counts as unreachable.
    """
    outcomes = {}
    for host in hosts:
        variables = hostvars.get(host) or {}
        if not variables.get("pos_update_started"):
            continue
        status = variables.get("pos_update_status")
        outcomes[str(host)] = status if status in FINAL_STATUSES else "unreachable"
    return outcomes


def pos_plan_lines(plan, hostvars, shown=12):
    """The waves of a plan (pos_rollout_plan) as lines for people: size, models, then the serials."""
    if not plan.get("waves"):
        return ["no terminal needs the update: nothing to roll out"]
    lines = [f"{len(plan['order'])} terminals in {len(plan['waves'])} waves, "
             f"{len(plan['batches'])} batches of {', '.join(str(size) for size in plan['batches'])}"]
    for index, wave in enumerate(plan["waves"]):
        models = {}
        for serial in wave:
            model = (hostvars.get(serial) or {}).get("pos_model", "?")
            models[model] = models.get(model, 0) + 1
        name = "canary" if index == 0 else f"wave {index}"
        serials = ", ".join(wave[:shown]) + (f" and {len(wave) - shown} more" if len(wave) > shown else "")
        counts = ", ".join(f"{model} {count}" for model, count in sorted(models.items()))
        lines.append(f"{name}: {len(wave)} ({counts}): {serials}")
    return lines


def _wrap(function):
    def filter_function(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except rollout.RolloutError as exc:
            raise AnsibleFilterError(str(exc)) from None

    filter_function.__name__ = function.__name__
    filter_function.__doc__ = function.__doc__
    return filter_function


class FilterModule:
    """posfleet rollout filters."""

    def filters(self):
        return {
            "pos_window": pos_window,
            "pos_rollout_hosts": pos_rollout_hosts,
            "pos_rollout_plan": pos_rollout_plan,
            "pos_rollout_outcomes": pos_rollout_outcomes,
            "pos_plan_lines": pos_plan_lines,
            "pos_plan_waves": _wrap(rollout.plan_waves),
            "pos_wave_batches": _wrap(rollout.serial_for_ansible),
            "pos_order_hosts": _wrap(rollout.order_hosts),
            "pos_budget_state": _wrap(rollout.budget_state),
        }
