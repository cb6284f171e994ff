# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pos_rollout_budget: the fleet-wide error budget of a rollout, checked between batches.

An action plugin rather than a module: the budget lives on the control node (in the play's memory,
and in a file when several ansible-playbook processes share one rollout), never on a terminal. The
module file of the same name holds the documentation; the counting is posfleet.rollout's.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from posfleet import rollout

ARGUMENT_SPEC = {
    "outcomes": {"type": "dict"},
    "outcomes_file": {"type": "path"},
    "budget_file": {"type": "path"},
    "max_failed": {"type": "raw"},
    "max_failed_pct": {"type": "raw"},
    "count_unreachable": {"type": "bool", "default": False},
    "total": {"type": "int"},
    "run_hosts": {"type": "list", "elements": "str", "default": []},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC,
                                              mutually_exclusive=[("outcomes", "outcomes_file")],
                                              required_one_of=[("outcomes", "outcomes_file")])
        path = args["budget_file"]
        try:
            # The run's outcome tally (posfleet_facts.tally): no terminal has ended yet when it does not exist.
            given = args["outcomes"]
            if args["outcomes_file"] is not None:
                given = rollout.budget_file_read(args["outcomes_file"])
        except rollout.RolloutError as exc:
            result.update(failed=True, msg=f"pos_rollout_budget (outcomes_file {args['outcomes_file']}): {exc}")
            return result
        outcomes = {str(serial): status for serial, status in given.items()}
        # This run's terminals that have no outcome in it yet: what the budget file says of them is
        # from an earlier run (a retry of yesterday's failures) and must not spend today's budget.
        stale = set(args["run_hosts"]) - set(outcomes)
        changed = False
        try:
            if path:
                if self._task.check_mode:
                    # A preview spends no budget: read what real runs recorded, write nothing.
                    recorded = rollout.budget_file_read(path)
                    merged = dict(recorded, **outcomes)
                    merged = {serial: status for serial, status in merged.items() if serial not in stale}
                else:
                    before = rollout.budget_file_read(path)
                    merged = rollout.budget_file_merge(path, outcomes)
                    changed = merged != before
                    merged = {serial: status for serial, status in merged.items() if serial not in stale}
                    result["diff"] = {"before": _lines(before), "after": _lines(merged),
                                      "before_header": path, "after_header": path}
            else:
                merged = outcomes
            total = args["total"]
            if total is not None and path:
                # Other processes' terminals are outside this play's total: count them in.
                total += len(set(merged) - set(outcomes))
            state = rollout.budget_state(merged, args["max_failed"], args["max_failed_pct"],
                                         args["count_unreachable"], total)
        except rollout.RolloutError as exc:
            where = f" (budget file {path})" if path else ""
            result.update(failed=True, msg=f"pos_rollout_budget{where}: {exc}")
            return result
        # "failed" and "unreachable" in a result mean the task's own outcome to Ansible: the counts of
        # terminals go under other names.
        state["failed_terminals"] = state.pop("failed")
        state["unreachable_terminals"] = state.pop("unreachable")
        result.update(state, changed=changed, outcomes=len(merged), budget_file=path, msg=state["reason"])
        return result


def _lines(outcomes):
    return "".join(f"{serial}: {status}\n" for serial, status in sorted(outcomes.items()))
