# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pos_run: this run's identity and the other posfleet runs going, on the control node (modules/pos_run.py).

The decisions are plugin_utils/posfleet_runs.py's; this action turns them into a result, the posfleet_run
fact and, when another run is going, the one line an operator reads at the run's start.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.posfleet.fleet.plugins.plugin_utils import posfleet_facts as _facts
from ansible_collections.posfleet.fleet.plugins.plugin_utils import posfleet_runs as runs

ARGUMENT_SPEC = {
    "state": {"type": "str", "required": True, "choices": ["started", "finished"]},
    "runs_dir": {"type": "path", "default": runs.DEFAULT_DIR},
    "mode": {"type": "str", "default": "update"},
    "release": {"type": "str"},
    "others": {"type": "str", "default": "stop", "choices": ["stop", "share"]},
    "run": {"type": "dict"},
}

# What the terminals are given of the run (pos_guard's RUN_OPTION); the registry file keeps the rest.
FACT_KEYS = ("id", "mode", "release", "by", "control_node", "started", "supersedes")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[1]
        task_vars = task_vars or {}
        try:
            if args["state"] == "finished":
                return self._finished(result, args)
            return self._started(result, args, task_vars)
        except runs.RunsError as exc:
            return dict(result, failed=True, msg=f"pos_run: {exc}")

    def _started(self, result, args, task_vars):
        run = runs.new_run(args["mode"], args["release"],
                           user=task_vars.get("awx_user_name") or task_vars.get("tower_user_name"),
                           awx_job_id=task_vars.get("awx_job_id") or task_vars.get("tower_job_id"),
                           awx_workflow_job_id=task_vars.get("awx_workflow_job_id"))
        others = [other for other in runs.others(args["runs_dir"], mine=run["id"]) if not runs.siblings(run, other)]
        run["supersedes"] = [other["id"] for other in others if other["alive"] is False]
        going = [other for other in others if other["alive"] is not False]
        fact = {key: run[key] for key in FACT_KEYS}
        # Where every terminal's final status goes as it ends (posfleet_facts.tally), for the error budget's
        # check before each terminal; also in check mode, where the run has no file of its own. The
        # posfleet_report callback removes it when the run ends.
        outcomes = runs.outcomes_file(args["runs_dir"], run["id"])
        result.update(run=fact, outcomes_file=outcomes,
                      others=[dict(other, line=runs.describe(other)) for other in others])
        # With set_fact's precedence, on every terminal of the play when the task runs once.
        _facts.record(self, result, {"posfleet_run": fact, "posfleet_outcomes_file": outcomes})
        if going:
            line = "; ".join(runs.describe(other) for other in going)
            if args["others"] == "stop" and not self._task.check_mode:
                return dict(result, failed=True, changed=False, msg=(
                    f"another posfleet run is going, so this one stops before touching any terminal: {line}. "
                    "Wait for it to end, or run again with -e update_other_runs=share to take only the terminals "
                    "it has not reached (docs/concurrency.md)"))
            result.setdefault("warnings", []).append(
                f"another posfleet run is going; this one leaves the terminals it holds alone: {line}")
        for other in others:
            if other["alive"] is False:
                result.setdefault("warnings", []).append(
                    f"{runs.describe(other)}; this run takes over the terminals it still holds")
        if not self._task.check_mode:
            # The posfleet_report callback removes it when this ansible-playbook ends, however it ends
            # (a failed release check too); only a killed run leaves it, for the next run to find dead.
            result["runs_file"] = runs.register(args["runs_dir"], run)
        # The run's file is the run's own bookkeeping, not a change to the fleet: a run that changes no
        # terminal reports no change.
        return dict(result, changed=False)

    def _finished(self, result, args):
        run = args["run"] or {}
        if not run.get("id"):
            return dict(result, failed=True, msg="pos_run: state=finished needs run, the posfleet_run fact "
                        "pos_run state=started set")
        removed = False if self._task.check_mode else runs.finish(args["runs_dir"], run["id"])
        return dict(result, changed=False, run=run, removed=removed)
