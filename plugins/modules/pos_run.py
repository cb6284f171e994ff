#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pos_run
short_description: Start or finish a posfleet run on the control node, seeing the other runs going
description:
  - V(started) gives the run its identity (an id, who started it, the control node), returned as RV(run) and as
    the C(posfleet_run) fact. The playbooks pass that fact to every module that takes, renews or ends a terminal's
    lease (the action group C(posfleet.fleet.lease)), so that each terminal is held by one run at a time
    (C(docs/concurrency.md)).
  - "V(started) also writes the run's file in O(runs_dir) and reads those of the other runs. A run whose file names
    this control node but whose process is gone is dead; the leases it left on terminals may be taken over at
    once (RV(run.supersedes)). When another run is going (or may be: one of another control node), O(others)
    decides: V(stop) fails the task, before any terminal is touched, with one line naming that run; V(share)
    warns and goes on, and the terminals the other run holds are left alone by every step."
  - V(finished) removes the run's file. A run that is killed leaves it, and the next run finds it dead.
  - Runs on the control node as an action plugin (C(plugins/action/pos_run.py)); it never contacts a terminal.
version_added: "0.3.0"
author: posfleet contributors (@posfleet)
options:
  state:
    description: V(started) at the start of a run, V(finished) at its end.
    type: str
    required: true
    choices: [started, finished]
  runs_dir:
    description:
      - The directory of the runs' files. Runs see each other only through a directory they share; AWX job slices
        and several control nodes need one on shared storage (C(update_runs_dir)). Runs that do not share one are
        still kept off each other's terminals by the terminals' leases.
    type: path
    default: /var/tmp/posfleet/runs
  mode:
    description: What the run does (update, rollback, check, backup), for the other runs' messages and the id.
    type: str
    default: update
  release:
    description: The release the run rolls out, if any.
    type: str
  others:
    description: With V(started), what to do when another run is going (see the description).
    type: str
    default: stop
    choices: [stop, share]
  run:
    description: With V(finished), this run (the C(posfleet_run) fact).
    type: dict
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
      - It never reports C(changed); its files are the run's own bookkeeping, not a change to the fleet.
      - The run gets its identity and sees the others, but writes or removes no file, and V(stop) does not stop a
        run in check mode (it changes nothing on any terminal).
  diff_mode:
    support: N/A
    details:
      - It changes nothing on a terminal.
  platform:
    platforms: posix
    details:
      - A dead run is recognised through C(/proc) (Linux control nodes and execution environments).
seealso:
  - module: posfleet.fleet.pos_maintenance
"""

EXAMPLES = r"""
- name: Start the run, stopping if another is going
  posfleet.fleet.pos_run:
    state: started
    mode: update
    release: 2026.12.0
  run_once: true

- name: Give every step the run
  module_defaults:
    group/posfleet.fleet.lease:
      run: "{{ posfleet_run }}"
  block:
    - name: Quiesce the terminal for this run
      posfleet.fleet.pos_maintenance:
        state: maintenance
        lease: 3600

- name: Finish the run
  posfleet.fleet.pos_run:
    state: finished
    run: "{{ posfleet_run }}"
  run_once: true
"""

RETURN = r"""
run:
  description: This run, as the terminals' leases record it.
  returned: success
  type: dict
  contains:
    id:
      description: The run's id, also its report's and its audit lines'.
      type: str
      sample: 20261203T010203Z-update-3f2a
    by:
      description: Who started it, the user or the AWX job.
      type: str
      sample: alice
    control_node:
      description: The control node it runs on.
      type: str
      sample: ops-cn1
    supersedes:
      description: Dead runs whose leases it may take over before they run out.
      type: list
      elements: str
      sample: [20261203T002202Z-update-91cc]
others:
  description: The other runs found, each with C(alive) (true, false, or null when it cannot be told) and C(line).
  returned: with O(state=started)
  type: list
  elements: dict
runs_file:
  description:
    - The run's file in O(runs_dir). The posfleet.fleet.posfleet_report callback removes it when the playbook ends,
      however it ends; only a killed run leaves it behind, for the next run to find dead.
  returned: with O(state=started), not in check mode
  type: str
  sample: /var/tmp/posfleet/runs/20261203T010203Z-update-3f2a.json
outcomes_file:
  description:
    - "Where this run's terminals record their final status as each one ends, C({serial: status}), for the error
      budget's check before each terminal starts (C(update.yml)). Also set as the C(posfleet_outcomes_file) fact.
      The posfleet.fleet.posfleet_report callback removes it when the playbook ends."
  returned: with O(state=started)
  type: str
  sample: /var/tmp/posfleet/runs/20261203T010203Z-update-3f2a.outcomes
removed:
  description: With O(state=finished), whether the run's file was there and was removed.
  returned: with O(state=finished)
  type: bool
  sample: true
ansible_facts:
  description: C(posfleet_run), the same as RV(run), and C(posfleet_outcomes_file), the same as RV(outcomes_file).
  returned: with O(state=started)
  type: dict
"""
