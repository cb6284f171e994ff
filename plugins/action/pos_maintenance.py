# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pos_maintenance: the module on the terminal, and with `ready_check` the pipeline's verdict on it.

The module's options pass through unchanged (plugins/modules/pos_maintenance.py documents them). With
`ready_check` (the quiesce step of update.yml) the module first decides on the terminal whether it is
still ready for the update, in the same round trip as the quiesce; this action records that decision
as the pipeline's facts with set_fact's precedence (plugins/plugin_utils/posfleet_facts.py), as the
pos_preflight action records the survey's:

- go: the terminal is now out of service; pos_update_before is refreshed from what it runs now;
- current or deferred: nothing was changed on the terminal; pos_update_status, pos_update_reason,
  pos_update_deferred_by (`preflight`, as the survey's readiness deferrals) and pos_update_before
  say so, and update.yml ends the terminal's run.

The terminal's state read for the verdict becomes the pos_terminal fact, as pos_facts returns it.
"""

from __future__ import annotations

import importlib.util
import os

from ansible.plugins.action import ActionBase
from ansible.utils.vars import merge_hash

_SPEC = importlib.util.spec_from_file_location(
    "_posfleet_maintenance_facts",
    os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "plugin_utils", "posfleet_facts.py"))
_facts = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_facts)

# The action adds no option of its own: every option (ready_check included) is the module's and is
# validated by the module on the terminal against its own argument spec.
ARGUMENT_SPEC: dict = {}


def verdict_facts(verdict, terminal):
    """The pipeline's facts for a verdict of the quiesce step's ready check."""
    facts = {"pos_update_before": {"app_version": terminal.get("app_version"), "packs": terminal.get("packs")}}
    if verdict["status"] != "go":
        facts.update(pos_update_status=verdict["status"], pos_update_reason=verdict["reason"],
                     pos_update_deferred_by="preflight" if verdict["status"] == "deferred" else None)
    return facts


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        result = merge_hash(result, self._execute_module(module_name="pos_maintenance",
                                                         module_args=dict(self._task.args), task_vars=task_vars))
        self._remove_tmp_path(self._connection._shell.tmpdir)
        verdict = result.get("verdict")
        if self._task.args.get("ready_check") and isinstance(verdict, dict) and not result.get("failed"):
            terminal = (result.get("ansible_facts") or {}).get("pos_terminal") or {}
            _facts.record(self, result, verdict_facts(verdict, terminal), cacheable=result.pop("ansible_facts", None))
        return result
