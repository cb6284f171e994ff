#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pos_fleet_survey
short_description: Decide for a whole POS fleet at once which terminals a rollout contacts
description:
  - The part of the survey that needs no terminal, made once for the whole fleet on the control node before the
    per-terminal survey (C(playbooks/rollout_plan.yml)). That is each terminal's maintenance window, on the
    control node's clock in its region's timezone, or its own window (the host variable C(pos_maintenance_window)).
  - Each distinct window is computed once. A terminal outside its window is deferred here and never contacted; the
    survey play that follows targets only the terminals in RV(ansible_facts.update_fleet.contact), so a terminal
    the run will not contact costs no worker process.
  - It records C(update_fleet) (RV(ansible_facts.update_fleet)); use C(delegate_to=localhost) with
    C(delegate_facts=true) to keep it once, on the control node. The C(posfleet_report) callback reports the
    deferred terminals from it.
  - Runs on the control node as an action plugin (C(plugins/action/pos_fleet_survey.py)); it never connects to a
    terminal.
version_added: "0.3.0"
author: posfleet contributors (@posfleet)
options:
  terminals:
    description: The run's terminals (C(ansible_play_hosts_all)); each must have C(pos_region_settings).
    type: list
    elements: str
    required: true
  clock_utc:
    description:
      - The instant to decide at, ISO 8601 UTC (a preview, a test); empty for the control node's clock now.
    type: str
    default: ""
  ignore_windows:
    description: Contact every terminal, whatever its window (the lab's inventory turns windows off).
    type: bool
    default: false
extends_documentation_fragment:
  - posfleet.fleet.attributes
  - posfleet.fleet.attributes.action
attributes:
  action:
    support: full
    details:
      - It runs entirely in the action on the control node; the module file only documents it.
  check_mode:
    support: full
    details:
      - It decides the same way in check mode, and never changes anything.
  diff_mode:
    support: N/A
    details:
      - It changes nothing.
  platform:
    platforms: all
seealso:
  - module: posfleet.fleet.pos_preflight
  - module: posfleet.fleet.pos_maintenance
"""

EXAMPLES = r"""
- name: Decide for the whole fleet which terminals are in their window
  posfleet.fleet.pos_fleet_survey:
    terminals: "{{ ansible_play_hosts_all }}"
    clock_utc: "{{ update_clock_utc | default('') }}"
  run_once: true
  delegate_to: localhost
  delegate_facts: true
"""

RETURN = r"""
contacted:
  description: How many terminals are in their window, to be surveyed.
  returned: always
  type: int
  sample: 1200
deferred:
  description: How many terminals are outside their window, deferred without contact.
  returned: always
  type: int
  sample: 98800
ansible_facts:
  description: The decision, recorded as C(update_fleet).
  returned: always
  type: complex
  contains:
    update_fleet:
      description: The fleet's decision.
      type: complex
      contains:
        contact:
          description: The terminals to survey, in the order of O(terminals).
          type: list
          elements: str
          sample: [KST00001, HRN00002]
        windows:
          description:
            - One entry per distinct window, by key (the region's name, or the region's name and a terminal's
              own window), as the C(posfleet.fleet.pos_window) filter returns it, with C(reason) (null when
              open).
          type: dict
          sample:
            us_east:
              open: false
              window: "23:30-04:00"
              timezone: America/New_York
              source: region
              opens_at_local: "2026-11-24T23:30:00-05:00"
              opens_at_utc: "2026-11-24T04:30:00+00:00"
              reason: "outside its maintenance window 23:30-04:00 (America/New_York, region); it opens next at
                2026-11-24T23:30:00-05:00"
        deferred:
          description: "C({serial: key of windows}) for every terminal outside its window."
          type: dict
          sample: {USE00003: us_east}
"""
