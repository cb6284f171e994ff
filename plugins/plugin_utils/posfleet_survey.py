# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The survey's decisions on the control node: what a terminal should run once on a release, and its window.

One owner for each: the pos_preflight and pos_maintenance actions decide with these functions, and the
filters pos_release_target and pos_window expose them to playbooks. Whether a terminal is ready is the
terminal side's rule (module_utils/pos_readiness.py, which the quiesce step runs on the terminal), and the
merchant pack's version the terminal side's format (module_utils/pos_merchant.py).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_merchant

from posfleet import rollout


def release_target(release, model, merchant_profile=None):
    """What a terminal of `model` runs once on `release`: app version, every pack's version and, when the release
    pins OS packages for the model, their versions ({name: version})."""
    try:
        entry = release["models"][model]
    except KeyError:
        raise ValueError("release %s has no entry for model %s" % (release.get("release"), model)) from None
    packs = {name: pack["version"] for name, pack in entry["packs"].items()}
    if merchant_profile is not None:
        packs["merchant"] = pos_merchant.version(merchant_profile)
    target = {"app_version": entry["app"]["version"], "packs": packs}
    if entry.get("os_packages"):
        target["os_packages"] = {item["name"]: item["version"] for item in entry["os_packages"]}
    return target


def terminal_versions(terminal):
    """What a terminal runs, as its pos_facts read it: the version state of pos_update_before (app_version, packs,
    and os_packages when the release pins OS packages for its model)."""
    versions = {"app_version": terminal.get("app_version"), "packs": terminal.get("packs")}
    if terminal.get("os_packages"):
        versions["os_packages"] = terminal["os_packages"]
    return versions


def window(region_settings, now_utc, override=None):
    """The maintenance window state of a region (or of one terminal's override) at `now_utc`.

    region_settings: pos_region_settings (timezone, maintenance_window, name). now_utc: the control
    node's clock, `now(utc=true)`, or an ISO 8601 string. override: a window string that replaces the
    region's window for this terminal (a host variable), or None. Adds `source`: region or override.
    """
    if not isinstance(region_settings, Mapping):
        raise AnsibleFilterError(f"pos_window needs a region's settings (pos_region_settings), not {region_settings!r}")
    name = region_settings.get("name", "?")
    source = "region" if override is None else "override"
    spec = region_settings.get("maintenance_window") if override is None else override
    if spec is None:
        raise AnsibleFilterError(f"region {name} has no maintenance_window: give it one in regions.yml "
                                 f"({rollout.ALWAYS_OPEN!r} for always open)")
    try:
        state = rollout.window_state(spec, region_settings.get("timezone"), now_utc)
    except rollout.RolloutError as exc:
        where = f"region {name}" if override is None else f"the window override for a terminal in region {name}"
        raise AnsibleFilterError(f"{where}: {exc}") from None
    return dict(state, source=source)


def window_now(region_settings, clock_utc="", override=None):
    """window() on the control node's clock now, or at `clock_utc` when it is set (a preview, a test).

    The survey (pos_preflight) and the check just before a terminal's change (pos_maintenance's
    window) decide with it, so that both read the same clock the same way.
    """
    return window(region_settings, clock_utc or datetime.datetime.now(datetime.timezone.utc), override)


def window_reason(state):
    """Why a terminal outside its window (a window() result) is deferred, with when the window opens next."""
    return (f"outside its maintenance window {state['window']} ({state['timezone']}, {state['source']}); "
            f"it opens next at {state['opens_at_local']}")


def fleet_windows(terminals, clock_utc=""):
    """The window decision for many terminals at once, each window computed once.

    terminals: (serial, region_settings, override) for every terminal of the run. Returns {"contact":
    [serial, ...] (the terminals whose window is open, in the order given), "windows": {key: window()
    result with its `reason`} (one per region, and per distinct override), "deferred": {serial: key}}: a
    deferred terminal costs the run no worker and is never contacted (docs/performance.md).
    """
    now = clock_utc or datetime.datetime.now(datetime.timezone.utc)
    contact, windows, deferred = [], {}, {}
    for serial, region_settings, override in terminals:
        name = region_settings.get("name", "?") if isinstance(region_settings, Mapping) else "?"
        key = name if override is None else f"{name} {override}"
        if key not in windows:
            state = window(region_settings, now, override)
            windows[key] = dict(state, reason=None if state["open"] else window_reason(state))
        if windows[key]["open"]:
            contact.append(serial)
        else:
            deferred[serial] = key
    return {"contact": contact, "windows": windows, "deferred": deferred}
