#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pos_record
short_description: Record a POS terminal's pipeline state (status, reason, target) for the rest of the run
description:
  - The one way a step of posfleet's update passes a terminal's state on to the later steps, the settle play
    and the report, as the C(pos_update_*) facts (C(docs/update-pipeline.md)). Each option given is recorded
    as the fact of the same name with the C(pos_update_) prefix (O(status) as C(pos_update_status)), with
    M(ansible.builtin.set_fact)'s precedence; options not given are left as they are.
  - O(status) and O(deferred_by) are checked against posfleet's status vocabulary (C(posfleet/statuses.py)),
    so a misspelt status fails the task where it is written instead of reaching the report.
  - With C(run_once), the facts are recorded on every terminal of the task's batch, as with set_fact.
  - Runs on the control node as an action plugin (C(plugins/action/pos_record.py)); it never contacts the
    terminal.
version_added: "0.2.0"
author: posfleet contributors (@posfleet)
options:
  status:
    description:
      - The terminal's status. V(go) while its update goes on; the others are outcomes, each explained in
        C(docs/update-pipeline.md).
    type: str
    choices: [go, current, updated, deferred, unfit, failed, rolled_back, would_update]
  reason:
    description: Why, in words an operator reads in the report; an empty string for none.
    type: str
  deferred_by:
    description: What deferred the terminal, with O(status=deferred).
    type: str
    choices: [window, preflight, held, quiesce, upload, budget, stopped]
  started:
    description: Whether the rollout started the terminal's update (it counts against the error budget).
    type: bool
  target:
    description: What the terminal runs once on the release, C(app_version) and C(packs).
    type: dict
  entry:
    description: The release manifest's entry for the terminal's model.
    type: dict
  merchant_profile:
    description: The merchant profile rendered for the terminal from its registry row.
    type: dict
  reboot:
    description:
      - Whether the terminal's update ends with a reboot (C(pos_update_reboot)); the survey records it from the release
        and the model profile, an installed OS package that asks for a reboot sets it.
    type: bool
extends_documentation_fragment:
  - posfleet.fleet.attributes
  - posfleet.fleet.attributes.action
attributes:
  action:
    support: full
    details:
      - It runs on the control node only.
  check_mode:
    support: full
    details:
      - It records the same facts in check mode; it never changes the terminal.
  diff_mode:
    support: N/A
    details:
      - It changes nothing on the terminal.
  platform:
    platforms: all
seealso:
  - module: posfleet.fleet.pos_preflight
  - module: posfleet.fleet.pos_verify
"""

EXAMPLES = r"""
- name: Defer the terminal while a sale is unsent
  posfleet.fleet.pos_record:
    status: deferred
    deferred_by: upload
    reason: "{{ ansible_failed_result.msg | default('pending transactions not uploaded') }}"

- name: Mark the terminals as not started yet
  posfleet.fleet.pos_record:
    started: false
  run_once: true
"""

RETURN = r"""
ansible_facts:
  description: The facts recorded, each option given as C(pos_update_<option>).
  returned: success
  type: dict
  sample:
    pos_update_status: deferred
    pos_update_deferred_by: upload
    pos_update_reason: 2 sales not uploaded, the acquirer did not answer
"""
