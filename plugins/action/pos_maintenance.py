# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pos_maintenance: the module on the terminal, and with `ready_check` the pipeline's verdict on it.

The module's options pass through unchanged (plugins/modules/pos_maintenance.py documents them). With
`ready_check` (the quiesce step of update.yml, the check just before a terminal's change) this action
records the decision as the pipeline's facts with set_fact's precedence
(plugins/plugin_utils/posfleet_facts.py), as the pos_preflight action records the survey's:

1. with `window`, first the maintenance window again, here on the control node's clock, before the
   terminal is contacted (the survey's decision may be hours old when the terminal's batch starts).
   Outside it nothing is done: pos_update_status `deferred`, pos_update_deferred_by `window`;
2. then the module, which decides on the terminal whether it is still ready for the update, in the
   same round trip as the quiesce:
   - go: the terminal is now out of service; pos_update_before is refreshed from what it runs now;
   - current, unfit or deferred: nothing was changed on the terminal; pos_update_status,
     pos_update_reason, pos_update_deferred_by (`preflight` as the survey's readiness deferrals, `held`
     when another run holds the terminal) and pos_update_before say so, and update.yml ends the
     terminal's run.

A terminal that does not answer at this check (off the network since the survey, or rebooted by another
run that holds it) is recorded deferred too (`quiesce`): nothing was changed on it.

Either way the terminal is recorded as started (pos_update_started): the rollout reached it, and the
error budget and the report count it from here. The terminal's state read for the verdict becomes the
pos_terminal fact, as pos_facts returns it.
"""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail, AnsibleConnectionFailure, AnsibleFilterError
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase
from ansible.utils.vars import merge_hash
from ansible_collections.posfleet.fleet.plugins.plugin_utils import posfleet_facts as _facts
from ansible_collections.posfleet.fleet.plugins.plugin_utils import posfleet_survey as survey

_PLUGINS = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


# The action's own option, `window`; every other option (ready_check included) is the module's and is
# validated by the module on the terminal against its own argument spec.
ARGUMENT_SPEC = {"window": {"type": "dict", "options": {
    "region_settings": {"type": "dict", "required": True},
    "maintenance_window": {"type": "str"},
    "clock_utc": {"type": "str", "default": ""},
    "ignore_windows": {"type": "bool", "default": False},
}}}


def verdict_facts(verdict, terminal):
    """The pipeline's facts for a verdict of the quiesce step's ready check."""
    facts = {"pos_update_started": True,
             "pos_update_before": survey.terminal_versions(terminal)}
    if verdict["status"] != "go":
        facts.update(pos_update_status=verdict["status"], pos_update_reason=verdict["reason"],
                     pos_update_deferred_by=verdict.get("by") if verdict["status"] == "deferred" else None)
    return facts


def _first_line(exc):
    return (str(exc).strip().splitlines() or ["no answer"])[0]


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        module_args = dict(self._task.args)
        window_args = module_args.pop("window", None)
        window = None
        if window_args:
            if not module_args.get("ready_check") or module_args.get("state") != "maintenance":
                return dict(result, failed=True, msg="pos_maintenance: window is the update's check before the "
                            "change: it needs state=maintenance and ready_check")
            window = self._window(window_args)
            if window and not window["open"]:
                # Not contacted: the terminal keeps selling and runs what the survey found.
                reason = survey.window_reason(window)
                result.update(changed=False, verdict={"status": "deferred", "reason": reason, "by": "window"})
                return _facts.record(self, result, {"pos_update_started": True, "pos_update_status": "deferred",
                                                    "pos_update_reason": reason,
                                                    "pos_update_deferred_by": "window",
                                                    "pos_update_window": window}, task_vars=task_vars)

        try:
            result = merge_hash(result, self._execute_module(
                module_name="posfleet.fleet.pos_maintenance", module_args=module_args, task_vars=task_vars))
        except AnsibleConnectionFailure as exc:
            if not module_args.get("ready_check"):
                raise
            # Nothing was changed: the terminal is left for a later run, not counted unreachable. (Ansible
            # ends the whole play when every terminal of a batch is unreachable: a canary that another run
            # is rebooting, or that went off the network since the survey, would end the rollout.)
            reason = f"did not answer at the check before its change ({_first_line(exc)}); nothing was changed"
            result.update(changed=False, verdict={"status": "deferred", "reason": reason, "by": "quiesce"})
            return _facts.record(self, result, {"pos_update_started": True, "pos_update_status": "deferred",
                                                "pos_update_reason": reason, "pos_update_deferred_by": "quiesce"},
                                 task_vars=task_vars)
        self._remove_tmp_path(self._connection._shell.tmpdir)
        verdict = result.get("verdict")
        if module_args.get("ready_check") and isinstance(verdict, dict) and not result.get("failed"):
            terminal = (result.get("ansible_facts") or {}).get("pos_terminal") or {}
            facts = verdict_facts(verdict, terminal)
            if window:
                facts["pos_update_window"] = window
            _facts.record(self, result, facts, cacheable=result.pop("ansible_facts", None), task_vars=task_vars)
        return result

    @staticmethod
    def _window(options):
        """The window's state now (pos_window), or None when windows are ignored."""
        validated = ArgumentSpecValidator(ARGUMENT_SPEC).validate({"window": options})
        if validated.error_messages:
            raise AnsibleActionFail(f"pos_maintenance: window: {'; '.join(validated.error_messages)}")
        args = validated.validated_parameters["window"]
        if args["ignore_windows"]:
            return None
        try:
            return survey.window_now(args["region_settings"], args["clock_utc"], args["maintenance_window"])
        except AnsibleFilterError as exc:
            raise AnsibleActionFail(f"pos_maintenance: window: {exc}") from None
