# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pos_verify: the pos_verify module on the terminal, and with `record_status` the pipeline's verdict.

The module's options pass through unchanged (plugins/modules/pos_verify.py documents them). With
`record_status: true` (the pos_verify role, the last step of update.yml) the task is the update's
verdict, in one task instead of three per terminal:

- a verification that passed records the terminal as updated (pos_update_status `updated`,
  pos_update_reason empty) with set_fact's precedence (plugins/plugin_utils/posfleet_facts.py). The
  status comes only from a verification that ran and passed: a set_fact after the step would also run
  when the terminal had stopped answering;
- a terminal that does not answer fails the task instead of being unreachable. The update's steps
  ignore unreachability (docs/update-pipeline.md: a terminal that loses power or its link mid-step
  must reach the rescue, which waits for it and rolls it back); the verification is where that ends;
- in check mode nothing was installed, so nothing is verified: the terminal is recorded as
  `would_update`.
"""

from __future__ import annotations

from ansible.errors import AnsibleActionFail, AnsibleConnectionFailure
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase
from ansible.utils.vars import merge_hash
from ansible_collections.posfleet.fleet.plugins.plugin_utils import posfleet_facts as _facts

# The action's own option; every other option is the module's and is validated by the module on the
# terminal against its own argument spec.
ARGUMENT_SPEC = {
    "record_status": {"type": "bool", "default": False},
}

NOT_VERIFIED = ("the update did not complete: the terminal stopped answering in the middle of it (power or "
                "network lost) and it was not verified")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        module_args = dict(self._task.args)
        own = ArgumentSpecValidator(ARGUMENT_SPEC).validate(
            {name: module_args.pop(name) for name in list(module_args) if name in ARGUMENT_SPEC})
        if own.error_messages:
            raise AnsibleActionFail(f"pos_verify: {'; '.join(own.error_messages)}")
        record_status = own.validated_parameters["record_status"]
        if record_status and self._task.check_mode:
            result.update(changed=False, msg="check mode: nothing was installed, so there is nothing to verify")
            return _facts.record(self, result, {"pos_update_status": "would_update", "pos_update_reason": ""},
                                 task_vars=task_vars)
        try:
            result = merge_hash(result, self._execute_module(
                module_name="posfleet.fleet.pos_verify", module_args=module_args, task_vars=task_vars))
        except AnsibleConnectionFailure as exc:
            if not record_status:
                raise
            return dict(result, failed=True, msg=f"{NOT_VERIFIED}: {exc}")
        self._remove_tmp_path(self._connection._shell.tmpdir)
        if record_status and not result.get("failed") and not result.get("unreachable"):
            _facts.record(self, result, {"pos_update_status": "updated", "pos_update_reason": ""}, task_vars=task_vars)
        return result
