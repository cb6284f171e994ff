# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pipeline facts set by an action plugin itself, as ansible.builtin.set_fact sets them.

The pipeline's state per terminal (pos_update_status, pos_update_reason, ...) is written by set_fact
tasks in the rescue sections, and read with set_fact's precedence. An action that decides that state
(pos_preflight's verdict, pos_verify's `updated`) records it with the same precedence here instead of
leaving it to a set_fact task after it: one task fewer per terminal, and the state comes only from a
result that succeeded (a set_fact after a step whose terminal was unreachable would still run).

ansible-core 2.21 gives actions this through ActionBase.register_host_variables and its variable
layers (what set_fact itself uses). The layers live in ansible-core's internal package: the project
pins ansible-core (requirements.txt), and a core without them fails here with a message that says so.
"""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail

from posfleet import rollout, statuses

try:
    from ansible._internal._task import VariableLayer
except ImportError:  # pragma: no cover - only on an ansible-core other than the pinned one
    VariableLayer = None


def record(action, result, facts, cacheable=None, task_vars=None):
    """Set `facts` on the terminal with set_fact's precedence and `cacheable` as facts a module returns.

    Both are also returned in the result's ansible_facts, as set_fact returns its facts, so callbacks
    (the posfleet_report callback) see them. With the task's variables, a final status of a started
    terminal also goes to its run's outcome tally (tally()).
    """
    if task_vars is not None:
        try:
            tally(task_vars, facts)
        except rollout.RolloutError as exc:
            raise AnsibleActionFail(f"the run's outcome tally: {exc}") from None
    if VariableLayer is None:
        raise AnsibleActionFail("this ansible-core cannot set facts from an action plugin (no variable "
                                "layers); install the ansible-core version pinned in requirements.txt")
    cacheable = dict(cacheable or {})
    # Registering the cacheable layer, even empty, keeps ansible-core from also treating the result's
    # ansible_facts as cacheable facts (which set_fact's precedence would then hide anyway).
    action.register_host_variables(cacheable, VariableLayer.CACHEABLE_FACT)
    action.register_host_variables(dict(facts), VariableLayer.EPHEMERAL_FACT)
    result["ansible_facts"] = {**cacheable, **facts}
    return result


def tally(task_vars, facts):
    """Add a started terminal's final status to its run's outcomes (the posfleet_outcomes_file fact of pos_run).

    update.yml checks the error budget before each terminal starts, while others are still updating (a
    sliding window, not batches): it reads this file, which holds every terminal of the run that has ended
    so far. A status recorded by one terminal's worker process is not in another's variables, so the file,
    written under a lock, is where they meet. A terminal that has not started (the survey's `current`,
    `deferred` or `unfit`) or is still on its way (`go`) is not added.
    """
    path = task_vars.get("posfleet_outcomes_file")
    status = facts.get("pos_update_status")
    if not path or status is None or status == statuses.GO:
        return
    if not facts.get("pos_update_started", task_vars.get("pos_update_started")):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rollout.budget_file_merge(path, {str(task_vars["inventory_hostname"]): status})
