# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters for rollout control: maintenance windows, waves and the error budget (docs/rollout.md).

The logic is posfleet.rollout's, on the control node; these wrappers read the inventory's shapes
(pos_region_settings, hostvars) and turn a wrong argument into a filter error an operator can act on.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.posfleet.fleet.plugins.plugin_utils import posfleet_survey as survey

from posfleet import rollout, statuses


def _rollout_hosts(hostvars, hosts, slow_kbps=None):
    """[{serial, model, region, slow}] for the terminals `hosts` (inventory names), from pos_model and pos_region;
    `slow` when the link the survey measured (pos_update_link_kbps, from pos_facts' probe) is below slow_kbps
    kbit/s."""
    fleet = []
    for host in hosts:
        variables = hostvars.get(host) or {}
        model, region = variables.get("pos_model"), variables.get("pos_region")
        if not model or not region:
            raise AnsibleFilterError(f"terminal {host} has no pos_model or pos_region: is it in the registry?")
        kbps = variables.get("pos_update_link_kbps")
        slow = bool(slow_kbps) and isinstance(kbps, (int, float)) and kbps < float(slow_kbps)
        fleet.append({"serial": str(host), "model": str(model), "region": str(region), "slow": slow})
    return fleet


def pos_rollout_plan(hostvars, hosts, canary_per_model=1, waves=(10, 30, 100), order="region", seed=0,
                     batch_size=None, slow_kbps=None):
    """The waves of a rollout over the terminals of `hosts` whose survey said `go`.

    Terminals that are current, deferred, unfit or did not answer the survey are left out: a canary
    must be a terminal that will really be updated. A terminal whose link the survey measured below
    `slow_kbps` kbit/s goes first into the last wave rather than into the canary or an early one
    (posfleet.rollout.plan_waves). Returns {"waves": [[serial, ...]], "order": [serial, ...] (the play's
    hosts, in wave order), "batches": [size, ...] (the play's serial), "wave_of": {serial: wave index},
    "slow": [serial, ...]}.
    """
    ready = [host for host in hosts if (hostvars.get(host) or {}).get("pos_update_status") == statuses.GO]
    try:
        fleet = _rollout_hosts(hostvars, ready, slow_kbps)
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"slow_kbps {slow_kbps!r} is not a number of kbit/s") from None
    try:
        plan = rollout.plan_waves(fleet, canary_per_model, waves, order, seed)
        ordered = rollout.order_hosts(ready, plan)
        batches = rollout.serial_for_ansible(plan, batch_size)
    except rollout.RolloutError as exc:
        raise AnsibleFilterError(str(exc)) from None
    wave_of = {serial: index for index, wave in enumerate(plan) for serial in wave}
    return {"waves": plan, "order": ordered, "batches": batches, "wave_of": wave_of,
            "slow": [host["serial"] for host in fleet if host["slow"]]}


def pos_rollout_outcomes(hostvars, hosts, counted=None):
    """{serial: status} of every terminal in `hosts` that the rollout started, for the error budget.

    A terminal that started (pos_update_started) but has no final status stopped answering in the
    middle of its update: it counts as unreachable. `counted`, what an earlier call returned, is
    added to: then `hosts` need only name the terminals that may have an outcome since (the batch
    that ran last), as update.yml does before each batch.
    """
    outcomes = dict(counted or {})
    for host in hosts:
        variables = hostvars.get(host) or {}
        if not variables.get("pos_update_started"):
            continue
        outcomes[str(host)] = statuses.outcome(variables.get("pos_update_status"))
    return outcomes


def pos_spends_budget(status):
    """Whether a terminal's recorded status spends the error budget and fails the run (failed, rolled back)."""
    return status in statuses.SPENDING


def pos_plan_lines(plan, hostvars, shown=12):
    """The waves of a plan (pos_rollout_plan) as lines for people: size, models, then the serials."""
    if not plan.get("waves"):
        return ["no terminal needs the update: nothing to roll out"]
    lines = [f"{len(plan['order'])} terminals in {len(plan['waves'])} waves, "
             f"{len(plan['batches'])} batches of {', '.join(str(size) for size in plan['batches'])}"]
    if plan.get("slow"):
        lines.append(f"{len(plan['slow'])} on a slow link (a canary only where a model has no other), "
                     "at the start of the last wave: "
                     + ", ".join(plan["slow"][:shown]) + (" and more" if len(plan["slow"]) > shown else ""))
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


class FilterModule:
    """posfleet rollout filters."""

    def filters(self):
        return {
            "pos_window": survey.window,
            "pos_rollout_plan": pos_rollout_plan,
            "pos_rollout_outcomes": pos_rollout_outcomes,
            "pos_plan_lines": pos_plan_lines,
            "pos_spends_budget": pos_spends_budget,
        }
