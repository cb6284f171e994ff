# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pos_fleet_survey: the survey's decisions that need no terminal, for the whole fleet in one task.

Run once on the control node before the per-terminal survey (rollout_plan.yml). A terminal outside its
maintenance window is deferred here, with the window's state and reason, and the survey play that
follows targets only the others: at 100,000 terminals with every window closed, no worker process is
forked for any terminal (docs/performance.md). The decision is posfleet_survey.fleet_windows', the same
window() that pos_preflight and pos_maintenance apply to one terminal. plugins/modules/pos_fleet_survey.py
documents it.
"""

from __future__ import annotations

from ansible.errors import AnsibleActionFail, AnsibleFilterError
from ansible.plugins.action import ActionBase
from ansible_collections.posfleet.fleet.plugins.plugin_utils import posfleet_survey as survey

ARGUMENT_SPEC = {
    "terminals": {"type": "list", "elements": "str", "required": True},
    "clock_utc": {"type": "str", "default": ""},
    "ignore_windows": {"type": "bool", "default": False},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[1]
        terminals = args["terminals"]
        if args["ignore_windows"]:
            fleet = {"contact": list(terminals), "windows": {}, "deferred": {}}
        else:
            hostvars = (task_vars or {}).get("hostvars") or {}
            try:
                fleet = survey.fleet_windows(
                    ((serial, *self._window_vars(hostvars, serial)) for serial in terminals), args["clock_utc"])
            except AnsibleFilterError as exc:
                raise AnsibleActionFail(str(exc)) from None
        result.update(changed=False, contacted=len(fleet["contact"]), deferred=len(fleet["deferred"]),
                      ansible_facts={"update_fleet": fleet})
        return result

    @staticmethod
    def _window_vars(hostvars, serial):
        """The terminal's region settings and its own window (None: the region's), as its survey reads them."""
        try:
            variables = hostvars[serial]
        except KeyError:
            raise AnsibleActionFail(f"pos_fleet_survey: {serial} is not in the inventory") from None
        settings = variables.get("pos_region_settings")
        if settings is None:
            raise AnsibleActionFail(f"{serial} has no pos_region_settings: its inventory puts it in no region "
                                    "(the posfleet_registry inventory plugin sets it per region group)")
        return settings, variables.get("pos_maintenance_window")
