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

from ansible.errors import AnsibleActionFail

try:
    from ansible._internal._task import VariableLayer
except ImportError:  # pragma: no cover - only on an ansible-core other than the pinned one
    VariableLayer = None


def record(action, result, facts, cacheable=None):
    """Set `facts` on the terminal with set_fact's precedence and `cacheable` as facts a module returns.

    Both are also returned in the result's ansible_facts, as set_fact returns its facts, so callbacks
    (the posfleet_report callback) see them.
    """
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
