#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pos_txn_upload
short_description: Upload a POS terminal's pending offline sales to the acquirer before an update
description:
  - Asks the payment app (posd) to send every pending (offline) sale to the acquirer and succeeds only
    when none is left pending, so that a backup taken next holds no sale the acquirer has not got.
  - When sales stay pending after O(retries) further attempts the module fails, naming how many are
    pending and the acquirer's error, and returns RV(pending) and RV(deferred=true).
  - The terminal should be in maintenance (M(posfleet.fleet.pos_maintenance)); otherwise new sales may arrive meanwhile.
version_added: "0.1.0"
author: posfleet contributors (@posfleet)
options:
  timeout:
    description: Seconds posd may spend on one upload attempt.
    type: float
    default: 120
  retries:
    description: How many times an upload that left sales pending is tried again.
    type: int
    default: 2
  retry_delay:
    description: Seconds between attempts.
    type: float
    default: 5
extends_documentation_fragment:
  - posfleet.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - Nothing is uploaded; RV(would_upload) says how many sales are pending, which a real run would send.
  diff_mode:
    support: none
  platform:
    platforms: posix
    details:
      - Runs on the terminal with the Python standard library only (Python 3.9 or newer).
"""

EXAMPLES = r"""
- name: Upload pending sales before the backup
  posfleet.fleet.pos_txn_upload:
    timeout: 120
    retries: 2
  register: pos_txn_upload_result
"""

RETURN = r"""
uploaded:
  description: Sales the acquirer acknowledged during this run.
  returned: always
  type: int
  sample: 14
pending:
  description: Sales still pending afterwards.
  returned: always
  type: int
  sample: 0
would_upload:
  description: Sales pending before the run, that is how many an upload would send (also in check mode).
  returned: success
  type: int
  sample: 14
attempts:
  description: Upload requests made.
  returned: success
  type: int
  sample: 1
deferred:
  description: True when sales stayed pending; the update of this terminal should be retried later.
  returned: failure
  type: bool
  sample: true
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal import PosdError, posd, posd_wait


def main():
    module = AnsibleModule(
        argument_spec=dict(
            timeout=dict(type="float", default=120.0),
            retries=dict(type="int", default=2),
            retry_delay=dict(type="float", default=5.0),
        ),
        supports_check_mode=True,
    )
    timeout, retries = module.params["timeout"], module.params["retries"]
    if timeout <= 0 or retries < 0 or module.params["retry_delay"] < 0:
        module.fail_json(msg="timeout must be > 0, retries and retry_delay >= 0")
    try:
        pending = int(posd("status").get("pending") or 0)
    except PosdError as error:
        module.fail_json(msg="cannot read the pending sales: %s" % error, uploaded=0, pending=None)
    if pending == 0:
        module.exit_json(changed=False, uploaded=0, pending=0, would_upload=0, attempts=0)
    if module.check_mode:
        module.exit_json(changed=True, uploaded=0, pending=pending, would_upload=pending, attempts=0)

    before = pending
    uploaded, attempts, reason = 0, 0, None
    while True:
        attempts += 1
        try:
            answer = posd_wait("upload", timeout)
            reason = None
        except PosdError as error:
            answer = error.answer
            # Without an answer (posd down or hung) the pending count is unknown; keep the last one.
            reason = str(answer.get("error") or error)
        uploaded += int(answer.get("uploaded") or 0)
        if answer.get("pending") is not None:
            pending = int(answer["pending"])
        if pending == 0 or attempts > retries:
            break
        if reason is None:
            reason = "the acquirer did not acknowledge every sale"
        time.sleep(module.params["retry_delay"])
    if pending:
        module.fail_json(
            msg="%d sales are still pending after %d upload attempts: %s. The update of this terminal is "
                "deferred; it is retried once the acquirer takes them" % (
                    pending, attempts, reason or "the acquirer did not acknowledge every sale"),
            changed=uploaded > 0, uploaded=uploaded, pending=pending, deferred=True, attempts=attempts)
    module.exit_json(changed=uploaded > 0, uploaded=uploaded, pending=0, would_upload=before,
                     attempts=attempts)


if __name__ == "__main__":
    main()
