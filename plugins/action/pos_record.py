# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pos_record: record a terminal's pipeline state (the pos_update_* facts), the one way steps pass it on.

Every step that decides a terminal's status, reason or target records it with this action (or, for
the actions that decide it themselves, with the same plugin_utils/posfleet_facts.record): with
set_fact's precedence, on every terminal of the task (run_once) or the delegated host, and checked
against the status vocabulary of posfleet.statuses, so a misspelt status fails where it is written
instead of reaching the report. plugins/modules/pos_record.py documents it.
"""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.posfleet.fleet.plugins.plugin_utils import posfleet_facts as _facts

from posfleet import statuses

# Option -> the fact it records (pos_update_<option>).
ARGUMENT_SPEC = {
    "status": {"type": "str", "choices": [statuses.GO, *statuses.RECORDED]},
    "reason": {"type": "str"},
    "deferred_by": {"type": "str", "choices": list(statuses.DEFERRED_BY)},
    "started": {"type": "bool"},
    "target": {"type": "dict"},
    "entry": {"type": "dict"},
    "merchant_profile": {"type": "dict"},
    "reboot": {"type": "bool"},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        given = {name: value for name, value in args.items() if name in self._task.args}
        if not given:
            raise AnsibleActionFail("pos_record: give at least one of " + ", ".join(ARGUMENT_SPEC))
        if given.get("deferred_by") and given.get("status") not in (None, statuses.DEFERRED):
            raise AnsibleActionFail(f"pos_record: deferred_by is for status {statuses.DEFERRED}, "
                                    f"not {given['status']}")
        result["changed"] = False
        return _facts.record(self, result, {f"pos_update_{name}": value for name, value in given.items()},
                             task_vars=task_vars)
