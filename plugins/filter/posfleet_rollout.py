# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters for rollout control: maintenance windows, waves and the error budget (docs/rollout.md).

The logic is posfleet.rollout's, on the control node; these wrappers read the inventory's shapes
(pos_region_settings, hostvars) and turn a wrong argument into a filter error an operator can act on.
"""

from __future__ import annotations

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
            "pos_plan_waves": _wrap(rollout.plan_waves),
            "pos_wave_batches": _wrap(rollout.serial_for_ansible),
            "pos_order_hosts": _wrap(rollout.order_hosts),
            "pos_budget_state": _wrap(rollout.budget_state),
        }
