# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pos_preflight: the pos_preflight role's whole decision in one task (docs/update-pipeline.md, step 1).

An action plugin, so that the steps that need no terminal run in the controller's process instead of
as tasks of their own (the control node pays for every task on every terminal, docs/performance.md):

1. what the terminal should run once on the release (the model's entry, the target versions with the
   merchant profile's version), as the pos_release_target filter computes it;
2. the maintenance window, on the control node's clock (pos_window); outside it the terminal is
   deferred and not contacted at all, not even read;
3. inside it, the pos_facts module on the terminal (one round trip; its result becomes the
   pos_terminal fact, as when pos_facts runs as a task), then the verdict (pos_preflight_verdict).

It returns `target`, `entry`, `merchant_profile`, `window` (absent when windows are ignored), `status`
(current, unfit, deferred or go), `reason`, `deferred_by` (window, preflight, held: another run holds the
terminal, or null), `before` (the versions
the terminal runs; null when not contacted) and, for a terminal found go, `recheck`: the options of
pos_maintenance's `window` and `ready_check` that check it again just before its change (update.yml's
quiesce step), with the same thresholds and clock. It records them as the pipeline's facts
(pos_update_target, pos_update_status, ...; pos_update_reboot: whether the terminal's update ends with
a reboot) with set_fact's precedence, so no set_fact task follows it
(plugins/plugin_utils/posfleet_facts.py). The decisions are plugin_utils/posfleet_survey.py's and
module_utils/pos_readiness.py's, which the filters and the quiesce step use too.

With `options_spec` (update.yml's survey), the options of the update's roles set for a terminal found
`go` are checked against their argument specs in the same task, as ansible.builtin.validate_argument_spec
would: a wrong type fails the terminal at the survey, before any wave starts and before anything is
changed. A vault-encrypted value is a string by construction and is not decrypted for the check (its
role checks its content: pos_backup the key).
"""

from __future__ import annotations

import json
import os

from ansible.errors import AnsibleActionFail, AnsibleFilterError
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.parsing.vault import EncryptedString
from ansible.plugins.action import ActionBase
from ansible.template import trust_as_template
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_guard import RUN_OPTION
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_readiness import readiness
from ansible_collections.posfleet.fleet.plugins.plugin_utils import posfleet_facts as _facts
from ansible_collections.posfleet.fleet.plugins.plugin_utils import posfleet_survey as survey

# The role's merchant profile template (the TMS parameter template), rendered here when the task gives
# no merchant_profile: the template lookup would first copy every variable of the terminal.
MERCHANT_TEMPLATE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__)))),
                                 "roles", "pos_preflight", "templates", "merchant_profile.json.j2")

# The role's options (roles/pos_preflight/meta/argument_specs.yml) are validated here, with the same
# types, so that the role needs no argument-spec task of its own per terminal.
ARGUMENT_SPEC = {
    "release": {"type": "dict", "required": True},
    "model": {"type": "str", "required": True},
    "model_profile": {"type": "dict", "required": True},
    "region_settings": {"type": "dict", "required": True},
    "merchant_profile": {"type": "dict"},
    "clock_utc": {"type": "str", "default": ""},
    "ignore_windows": {"type": "bool", "default": False},
    "maintenance_window": {"type": "str"},
    "probe_timeout": {"type": "float", "default": 10},
    "min_kbps": {"type": "int", "default": 32},
    "storage_margin_mb": {"type": "int", "default": 2},
    "options_spec": {"type": "dict"},
    "options_of": {"type": "str", "default": "the update's roles"},
    "run": RUN_OPTION,
}

# What the action returns and what it records as the pipeline's fact of the same meaning.
PIPELINE_FACTS = {"merchant_profile": "pos_update_merchant_profile", "target": "pos_update_target",
                  "entry": "pos_update_entry", "window": "pos_update_window", "status": "pos_update_status",
                  "reason": "pos_update_reason", "deferred_by": "pos_update_deferred_by",
                  "before": "pos_update_before", "recheck": "pos_update_recheck"}


def decide(terminal, args, entry):
    """status, reason, deferred_by and before, from the terminal's pos_facts."""
    verdict = readiness(terminal, args["model_profile"], entry, args["min_kbps"],
                        args["storage_margin_mb"], args["run"])
    return {"status": verdict["status"], "reason": verdict["reason"],
            "deferred_by": verdict["by"] if verdict["status"] == "deferred" else None,
            "before": survey.terminal_versions(terminal)}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        result = self._decide(result, args, task_vars)
        if result.get("failed"):
            return result
        facts = {fact: result[key] for key, fact in PIPELINE_FACTS.items() if key in result}
        facts["pos_update_reboot"] = bool(result["entry"].get("reboot") or args["model_profile"].get("reboot_required"))
        # The link's speed as the probe measured it, for the wave plan (a slow link goes to the last wave).
        facts["pos_update_link_kbps"] = ((result.get("ansible_facts") or {}).get("pos_terminal", {}).get("probe")
                                         or {}).get("kbps")
        if args["options_spec"] and result["status"] == "go":
            errors = self._option_errors(args["options_spec"], task_vars or {}, facts)
            if errors:
                return dict(result, failed=True, argument_errors=errors,
                            msg=f"the options of {args['options_of']} are not valid: {'; '.join(errors)}")
        return _facts.record(self, result, facts, cacheable=result.pop("ansible_facts", None))

    def _option_errors(self, spec, task_vars, facts):
        """The errors of the role options set for this terminal against their argument spec; the facts
        this task records (pos_update_target, ...) count as set, as they will be for the roles."""
        raw = {name: task_vars[name] for name in spec if name in task_vars}
        raw.update((name, value) for name, value in facts.items() if name in spec)
        # A vaulted value decrypts to a string; decrypting it here would cost a key derivation per terminal.
        vaulted = {name for name, value in raw.items()
                   if isinstance(value, EncryptedString) and spec[name].get("type", "str") == "str"}
        provided = self._templar.template({name: value for name, value in raw.items() if name not in vaulted})
        # Only what is set, and what must be: the validator copies every option it is given.
        checked = {name: option for name, option in spec.items()
                   if name not in vaulted and (name in provided or option.get("required"))}
        validated = ArgumentSpecValidator(checked).validate(provided, validate_role_argument_spec=True)
        return [str(error) for error in validated.errors]

    def _merchant_profile(self):
        """The terminal's merchant profile from the role's template, with this task's variables."""
        with open(MERCHANT_TEMPLATE, encoding="utf-8") as handle:
            rendered = self._templar.template(trust_as_template(handle.read()))
        try:
            return json.loads(rendered)
        except ValueError as exc:
            raise AnsibleActionFail(f"{MERCHANT_TEMPLATE} did not render to JSON ({exc}): {rendered[:200]!r}") from exc

    def _decide(self, result, args, task_vars):
        if args["merchant_profile"] is None:
            args["merchant_profile"] = self._merchant_profile()
        try:
            target = survey.release_target(args["release"], args["model"], args["merchant_profile"])
        except ValueError as exc:
            result.update(failed=True, msg=str(exc))
            return result
        entry = args["release"]["models"][args["model"]]
        result.update(changed=False, target=target, entry=entry, merchant_profile=args["merchant_profile"])

        # The window is decided here, on the control node's clock, before the terminal is contacted.
        if not args["ignore_windows"]:
            try:
                window = survey.window_now(args["region_settings"], args["clock_utc"], args["maintenance_window"])
            except AnsibleFilterError as exc:
                result.update(failed=True, msg=str(exc))
                return result
            result["window"] = window
            if not window["open"]:
                result.update(status="deferred", deferred_by="window", reason=survey.window_reason(window),
                              before=None)
                return result

        # The terminal's readiness, judged here and again just before its change (pos_update_recheck).
        check = {"package_style": args["model_profile"].get("package_style"), "release": target,
                 "model_profile": args["model_profile"], "entry": entry,
                 "probe_url": f"{args['region_settings'].get('distribution_point')}/probe",
                 "probe_timeout": args["probe_timeout"], "min_kbps": args["min_kbps"],
                 "storage_margin_mb": args["storage_margin_mb"]}
        facts = self._execute_module(
            module_name="posfleet.fleet.pos_facts",
            module_args={key: check[key] for key in ("package_style", "probe_url", "probe_timeout", "release")},
            task_vars=task_vars)
        if facts.get("failed"):
            return dict(result, failed=True, msg=facts.get("msg") or "pos_facts failed",
                        **{k: facts[k] for k in ("rc", "module_stdout", "module_stderr") if k in facts})
        terminal = facts["ansible_facts"]["pos_terminal"]
        result["ansible_facts"] = facts["ansible_facts"]
        result.update(decide(terminal, args, entry))
        if result["status"] == "go":
            result["recheck"] = {"ready_check": check, "window": {
                key: args[key] for key in ("region_settings", "maintenance_window", "clock_utc", "ignore_windows")}}
        return result
