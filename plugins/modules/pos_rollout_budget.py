#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pos_rollout_budget
short_description: Check a rollout's fleet-wide error budget on the control node
description:
  - Counts the outcomes of every terminal a rollout has finished so far and says whether the error
    budget is exhausted. C(update.yml) runs it before each terminal starts, while others are still
    updating, and leaves the terminal untouched when it is, so that no new terminal starts.
  - Failed and rolled back terminals spend the budget; unreachable ones only with O(count_unreachable).
    See C(docs/rollout.md) for how attempted terminals and the percentage are counted.
  - With O(budget_file), the outcomes are merged into a JSON file under an exclusive lock and the
    budget is counted over everything the file holds, so several C(ansible-playbook) processes (AWX
    job slices) share one budget.
  - Runs on the control node as an action plugin (C(plugins/action/pos_rollout_budget.py)); it never
    connects to a terminal.
version_added: "0.2.0"
author: posfleet contributors (@posfleet)
options:
  outcomes:
    description:
      - "The outcomes so far, C({serial: status}), with the statuses of C(docs/rollout.md) (C(updated),
        C(failed), C(rolled_back), C(unreachable), ...). The C(pos_rollout_outcomes) filter builds it
        from the play's hostvars."
      - Exactly one of O(outcomes) and O(outcomes_file) is given.
    type: dict
  outcomes_file:
    description:
      - "A file of the outcomes so far, in the format of O(budget_file): the run's outcome tally, which
        C(update.yml)'s terminals add their final status to as each one ends (the C(posfleet_outcomes_file)
        fact of M(posfleet.fleet.pos_run)). A file that does not exist yet means no terminal has ended."
      - Read only, also outside check mode.
    type: path
    version_added: "0.4.0"
  budget_file:
    description:
      - A JSON file shared by the processes of one rollout. Created when missing; its directory must
        exist. Omit it for a rollout that runs in one process.
    type: path
  max_failed:
    description:
      - The budget is exhausted when more than this many terminals spent it. C(0) stops at the first
        failure. Omit (or C(null)) to turn this limit off.
    type: raw
  max_failed_pct:
    description:
      - The budget is exhausted when the terminals that spent it are more than this percentage of the
        attempted ones (C(10) or C("10%")). Omit (or C(null)) to turn this limit off.
    type: raw
  count_unreachable:
    description:
      - Whether unreachable terminals spend the budget and count as attempted.
    type: bool
    default: false
  total:
    description:
      - How many terminals the rollout has, so that the reason says how many were left untouched.
        With O(budget_file), terminals other processes recorded are added to it.
    type: int
  run_hosts:
    description:
      - This run's terminals. What O(budget_file) holds for one of them that has no outcome in this
        run yet is from an earlier run (a retry of the terminals that failed then), and is not counted.
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - posfleet.fleet.attributes
  - posfleet.fleet.attributes.action
attributes:
  action:
    support: full
    details:
      - It runs entirely in the action on the control node; the module file only documents it.
  check_mode:
    support: partial
    details:
      - The budget is counted as in a real run, over O(budget_file)'s outcomes and this run's, but the file is read
        and never written (a preview spends no budget), so the task reports no change where a real run would report
        one for the outcomes it adds to the file.
  diff_mode:
    support: partial
    details:
      - With O(budget_file) only, the file's lines (C(serial) and status) before and after; not in check mode, which
        writes nothing.
  platform:
    platforms: all
    details:
      - It runs on the control node only and never connects to the host or a terminal.
notes:
  - "The budget file's lock is an C(flock) on C(<budget_file>.lock): the processes must share one file
    system whose locks work between them."
seealso:
  - name: Rollout control
    description: Windows, waves and the error budget.
    link: https://github.com/posfleet/posfleet/blob/main/docs/rollout.md
"""

EXAMPLES = r"""
# Before each terminal starts (update.yml, a sliding window): the run's terminals add their final status to
# the run's outcome tally as each one ends, and this reads it.
- name: Check the fleet-wide error budget before this terminal starts
  posfleet.fleet.pos_rollout_budget:
    outcomes_file: "{{ posfleet_outcomes_file }}"
    max_failed_pct: 10
    total: "{{ hostvars['localhost'].update_plan.order | length }}"
  delegate_to: localhost
  register: update_budget

# In batches: add the last batch's outcomes to the tally kept on localhost (reading every terminal's
# variables before every batch would cost time that grows with the square of the fleet), then check.
- name: Add the previous batch's outcomes to the run's
  ansible.builtin.set_fact:
    update_outcomes: >-
      {{ hostvars | posfleet.fleet.pos_rollout_outcomes(hostvars['localhost'].update_last_batch | default([]),
         hostvars['localhost'].update_outcomes | default({})) }}
    update_last_batch: "{{ ansible_play_batch }}"
  run_once: true
  delegate_to: localhost
  delegate_facts: true

- name: Check the fleet-wide error budget before this batch starts
  posfleet.fleet.pos_rollout_budget:
    outcomes: "{{ hostvars['localhost'].update_outcomes }}"
    max_failed_pct: 10
    total: 200
  run_once: true
  delegate_to: localhost
  register: update_budget

- name: Share one budget between AWX job slices
  posfleet.fleet.pos_rollout_budget:
    outcomes: "{{ hostvars['localhost'].update_outcomes }}"
    budget_file: /var/lib/posfleet/budget/2026.12.0.json
    max_failed: 20
  run_once: true
  delegate_to: localhost
"""

RETURN = r"""
exhausted:
  description: Whether the budget is exhausted; no new terminal should start.
  returned: success
  type: bool
  sample: false
reason:
  description: The budget's state in plain words, limits and counts included.
  returned: success
  type: str
  sample: >-
    error budget exhausted: 3 of 20 attempted terminals failed or rolled back (15%), more than the limit
    of 10% (max_failed_pct) by 5 points; 115 terminals left untouched
spent:
  description: Terminals that spent the budget.
  returned: success
  type: int
attempted:
  description: Terminals that started an update (unreachable ones only with O(count_unreachable)).
  returned: success
  type: int
failed_terminals:
  description: Failed and rolled back terminals.
  returned: success
  type: int
unreachable_terminals:
  description: Unreachable terminals.
  returned: success
  type: int
untouched:
  description: Terminals of the rollout with no outcome yet; C(null) without O(total).
  returned: success
  type: int
outcomes:
  description: How many outcomes the budget counted (this play's and, with O(budget_file), the others').
  returned: success
  type: int
"""
