#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pos_maintenance
short_description: Take a POS terminal out of service for an update, put it back, or wait for its app
description:
  - Drives the payment app (posd) through its control socket.
  - V(maintenance) waits, at most O(timeout) seconds, for a sale in progress to finish and then stops
    new sales. A sale is never cut short; when it does not finish in time the module fails with a
    message starting C(in-transaction:) and returns RV(deferred=true), which the update treats as
    "try this terminal again later".
  - V(selling) puts the terminal back in service.
  - V(ready) waits, at most O(timeout) seconds, until posd answers after a restart or a reboot and
    returns its status. It changes nothing.
  - Maintenance survives a restart of posd and a reboot of the terminal, until V(selling) ends it.
version_added: "0.1.0"
author: posfleet contributors
options:
  state:
    description:
      - V(maintenance) to stop selling, V(selling) to sell again, V(ready) to wait for posd to answer.
    type: str
    required: true
    choices: [maintenance, selling, ready]
  timeout:
    description:
      - Seconds to wait for the sale in progress (V(maintenance)) or for posd to come up (V(ready)).
    type: float
    default: 60
notes:
  - Supports check mode; in check mode V(maintenance) and V(selling) only report whether they would change the
    state.
  - Supports diff mode.
  - Runs on the terminal with the Python standard library only (Python 3.9 or newer).
"""

EXAMPLES = r"""
- name: Stop selling once the sale in progress has finished
  pos_maintenance:
    state: maintenance
    timeout: 90
  register: pos_quiesce_result

- name: Wait for the payment app after the reboot
  pos_maintenance:
    state: ready
    timeout: "{{ pos_model_profile.reboot_timeout }}"

- name: Put the terminal back in service
  pos_maintenance:
    state: selling
"""

RETURN = r"""
status:
  description: posd's answer to C(status) after the module ran (before it, in check mode).
  returned: success
  type: dict
  sample:
    state: maintenance
    maintenance: true
    app_version: 1.1.0
    packs: {params: 2026.11.0, catalog: 2026.11.0, merchant: 5d1c0e2a9f3b}
    pending: 0
    healthy: true
    health_detail: ok
    counters: {stan: 118, batch: 7, invoice: 118}
deferred:
  description: True when a sale did not finish within O(timeout); the update should be retried later.
  returned: failure
  type: bool
  sample: true
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pos_terminal import PosdError, posd, posd_wait, wait_posd_ready


def clean(status):
    return {key: value for key, value in status.items() if key != "ok"}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", required=True, choices=["maintenance", "selling", "ready"]),
            timeout=dict(type="float", default=60.0),
        ),
        supports_check_mode=True,
    )
    state, timeout = module.params["state"], module.params["timeout"]
    if timeout < 0:
        module.fail_json(msg="timeout must be 0 or more seconds, not %s" % timeout)

    if state == "ready":
        try:
            status = wait_posd_ready(timeout)
        except PosdError as error:
            module.fail_json(msg="%s; look at /var/log/posd.log on the terminal" % error)
        module.exit_json(changed=False, status=clean(status))

    try:
        before = posd("status")
    except PosdError as error:
        module.fail_json(msg="cannot read the payment app's state: %s" % error)
    wanted = state == "maintenance"
    diff = {"before": {"maintenance": bool(before.get("maintenance"))}, "after": {"maintenance": wanted}}
    if bool(before.get("maintenance")) == wanted:
        module.exit_json(changed=False, status=clean(before))
    if module.check_mode:
        module.exit_json(changed=True, status=clean(before), diff=diff)

    if wanted:
        try:
            posd_wait("maintenance_enter", timeout)
        except PosdError as error:
            refusal = str(error.answer.get("error", ""))
            if refusal.startswith("in-transaction"):
                module.fail_json(msg="in-transaction: a sale was still in progress after %gs; the update of "
                                 "this terminal is deferred, try again later" % timeout,
                                 deferred=True, status=clean(error.answer))
            module.fail_json(msg="cannot enter maintenance: %s" % error)
    else:
        try:
            posd("maintenance_leave")
        except PosdError as error:
            module.fail_json(msg="cannot put the terminal back in service: %s" % error)
    try:
        after = posd("status")
    except PosdError as error:
        module.fail_json(msg="the state changed but posd did not answer status afterwards: %s" % error,
                         changed=True)
    module.exit_json(changed=True, status=clean(after), diff=diff)


if __name__ == "__main__":
    main()
