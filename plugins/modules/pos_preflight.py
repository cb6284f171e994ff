#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pos_preflight
short_description: Decide whether a POS terminal is current, deferred or ready to update, in one task
description:
  - The survey's whole decision for one terminal (step 1 of C(docs/update-pipeline.md)), the one task of
    the C(posfleet.fleet.pos_preflight) role.
  - First works out what the terminal runs once on O(release), the app version and every pack's version,
    the merchant pack's from O(merchant_profile), with the code of the P(posfleet.fleet.pos_release_target#filter)
    filter. Fails when the release has no entry for O(model).
  - Then, unless O(ignore_windows), decides the maintenance window on the control node's clock (or
    O(clock_utc)) with the code of the P(posfleet.fleet.pos_window#filter) filter. Outside the window the
    terminal is RV(status=deferred) by RV(deferred_by=window) and is not contacted at all, not even read.
  - Inside the window, runs M(posfleet.fleet.pos_facts) on the terminal (one round trip; its result becomes
    the C(pos_terminal) fact) and judges it with the same verdict as the quiesce step's
    (C(module_utils/pos_readiness.py)), one of V(current), V(deferred) (battery, flash, link, the payment app
    down) or V(go).
  - Records the decision as the pipeline's facts with M(ansible.builtin.set_fact)'s precedence, so no
    set_fact task needs to follow it, C(pos_update_merchant_profile), C(pos_update_target),
    C(pos_update_entry), C(pos_update_window) (not set when windows are ignored), C(pos_update_status),
    C(pos_update_reason), C(pos_update_deferred_by), C(pos_update_before), C(pos_update_recheck) (for a
    terminal found V(go)) and C(pos_update_reboot) (whether the terminal's update ends with a reboot, from
    the release entry's C(reboot) or the model profile's C(reboot_required)), and C(pos_update_link_kbps) (the
    link's speed the distribution point probe measured, which the wave plan reads; null when not measured).
  - With O(options_spec), also checks the options set for a terminal found V(go) against that argument spec,
    as M(ansible.builtin.validate_argument_spec) would; a wrong type fails the terminal at the survey, before
    any wave starts and before anything is changed.
  - Runs on the control node as an action plugin (C(plugins/action/pos_preflight.py)); the only thing it
    runs on the terminal is M(posfleet.fleet.pos_facts).
version_added: "0.2.0"
author: posfleet contributors (@posfleet)
options:
  release:
    description:
      - The release manifest, as M(posfleet.fleet.pos_release) returns it (C(pos_release)), with an entry per
        model under C(models).
    type: dict
    required: true
  model:
    description: The terminal's model (C(pos_model)), a key of the release's C(models).
    type: str
    required: true
  model_profile:
    description:
      - The model's profile (C(pos_model_profile)). Its C(package_style) is given to M(posfleet.fleet.pos_facts);
        C(battery) and C(battery_min_pct) decide the battery check, C(reboot_required) C(pos_update_reboot).
    type: dict
    required: true
  region_settings:
    description:
      - The terminal's region (C(pos_region_settings)), with its C(maintenance_window), C(timezone), C(name)
        and C(distribution_point), whose C(/probe) is downloaded to check and measure the terminal's link.
    type: dict
    required: true
  merchant_profile:
    description:
      - The terminal's merchant profile pack (merchant, terminal and store ids, name, currency, receipt header).
      - When omitted, it is rendered from the terminal's registry row (C(pos_merchant_id), C(pos_terminal_id),
        C(pos_merchant_name), C(pos_store), C(pos_region_settings.currency)) with the role's template
        C(roles/pos_preflight/templates/merchant_profile.json.j2).
    type: dict
  clock_utc:
    description:
      - The time that decides the maintenance window, ISO 8601 in UTC (C(2026-11-25T01:30:00Z)); a time without
        an offset is taken as UTC. Empty for the control node's clock now.
    type: str
    default: ""
  ignore_windows:
    description:
      - Decide no maintenance window (an emergency release, or the lab, which runs at any hour). RV(window) is
        then not returned.
    type: bool
    default: false
  maintenance_window:
    description:
      - This terminal's own window (C(HH:MM-HH:MM) local, the host variable C(pos_maintenance_window)), replacing
        its region's C(maintenance_window); the region's timezone still applies.
    type: str
  probe_timeout:
    description: Seconds the distribution point probe may take.
    type: float
    default: 10
  min_kbps:
    description: Below this measured link speed (kbit/s) the terminal is deferred.
    type: int
    default: 32
  storage_margin_mb:
    description: Free flash, in MB, kept on top of what the release needs (the model entry's C(storage_mb)).
    type: int
    default: 2
  options_spec:
    description:
      - An argument spec (options as in a role's C(meta/argument_specs.yml)) that the options set for a terminal
        found V(go) are checked against; the pipeline facts this task records count as set. C(update.yml) passes
        the merged spec of the update's roles (the P(posfleet.fleet.pos_role_options#filter) filter).
      - A vault-encrypted value of a C(str) option is not decrypted for the check; its role checks its content.
    type: dict
  options_of:
    description: What O(options_spec) covers, for the failure message.
    type: str
    default: the update's roles
extends_documentation_fragment:
  - posfleet.fleet.attributes
  - posfleet.fleet.attributes.action
  - posfleet.fleet.run
attributes:
  action:
    support: full
    details:
      - The release target, the maintenance window, the verdict and the O(options_spec) check run on the control
        node; only M(posfleet.fleet.pos_facts) runs on the terminal.
  check_mode:
    support: full
    details:
      - It never changes the terminal and reports no change; in check mode it decides and records the same facts.
  diff_mode:
    support: N/A
    details:
      - It changes nothing on the terminal.
  platform:
    platforms: posix
    details:
      - M(posfleet.fleet.pos_facts) runs on the terminal (Python 3.9 or newer, standard library only).
notes:
  - Deferral is not failure. A deferred terminal is fine, only not ready now; a later run picks it up.
  - The window is decided again just before the terminal's change, by M(posfleet.fleet.pos_maintenance) with
    RV(recheck), since the survey's decision may be hours old when the terminal's batch starts.
seealso:
  - module: posfleet.fleet.pos_facts
  - module: posfleet.fleet.pos_maintenance
  - plugin: posfleet.fleet.pos_window
    plugin_type: filter
  - plugin: posfleet.fleet.pos_release_target
    plugin_type: filter
  - name: Rollout control
    description: Maintenance windows, the clock that decides them and daylight saving time.
    link: https://github.com/posfleet/posfleet/blob/main/docs/rollout.md
"""

EXAMPLES = r"""
- name: Decide the window, then read the terminal's state and check it is ready
  posfleet.fleet.pos_preflight:
    release: "{{ pos_release }}"
    model: "{{ pos_model }}"
    model_profile: "{{ pos_model_profile }}"
    region_settings: "{{ pos_region_settings }}"
    maintenance_window: "{{ pos_maintenance_window | default(omit) }}"
  register: pos_preflight_decision

- name: Preview a night ahead, with the update's role options checked for the terminals found go
  posfleet.fleet.pos_preflight:
    release: "{{ pos_release }}"
    model: "{{ pos_model }}"
    model_profile: "{{ pos_model_profile }}"
    region_settings: "{{ pos_region_settings }}"
    clock_utc: "2026-11-25T01:30:00Z"
    min_kbps: 64
    options_spec: "{{ update_roles | posfleet.fleet.pos_role_options(playbook_dir ~ '/../roles') }}"
    options_of: "{{ update_roles | join(', ') }}"
"""

RETURN = r"""
status:
  description: The verdict, V(current) (nothing to do), V(deferred) (not now, see RV(reason)) or V(go).
  returned: success
  type: str
  sample: deferred
reason:
  description: Why the terminal is deferred; C(already on the release) for V(current), empty for V(go).
  returned: success
  type: str
  sample: >-
    outside its maintenance window 01:00-05:00 (Europe/London, region); it opens next at
    2026-11-26T01:00:00+00:00
deferred_by:
  description: What deferred the terminal, V(window) or V(preflight); C(null) when it is not deferred.
  returned: success
  type: str
  sample: window
target:
  description:
    - "What the terminal runs once on the release, its C(app_version) and C(packs), C({name: version}), the
      merchant pack's included."
  returned: success
  type: dict
  sample: {app_version: 1.1.0, packs: {params: 2026.12.0, catalog: 2026.12.0, merchant: 3f1c0a9b2d7e}}
entry:
  description: The model's entry in the release manifest (C(release.models[model])).
  returned: success
  type: dict
merchant_profile:
  description:
    - The merchant profile the merchant pack's version was computed from, O(merchant_profile) or the one
      rendered from the registry row.
  returned: success
  type: dict
  sample: {merchant_id: M7, terminal_id: T0007, name: Cafe Sol, store: S3, currency: EUR,
           receipt_header: Cafe Sol - thank you}
window:
  description: The maintenance window's state, as the P(posfleet.fleet.pos_window#filter) filter returns it.
  returned: unless O(ignore_windows)
  type: dict
  sample: {open: false, window: "01:00-05:00", timezone: Europe/London, source: region,
           local_now: "2026-11-25T12:00:00+00:00", opens_at_utc: "2026-11-26T01:00:00+00:00",
           closes_at_utc: "2026-11-26T05:00:00+00:00", opens_at_local: "2026-11-26T01:00:00+00:00",
           closes_at_local: "2026-11-26T05:00:00+00:00"}
before:
  description:
    - The versions the terminal runs, C(app_version) and C(packs); C(null) when it was not contacted (outside
      its window).
  returned: success
  type: dict
  sample: {app_version: 1.0.0, packs: {params: 2026.11.0, catalog: 2026.11.0, merchant: 3f1c0a9b2d7e}}
recheck:
  description:
    - The options of M(posfleet.fleet.pos_maintenance) that check the terminal again just before its change,
      C(ready_check) (the readiness check with this task's thresholds) and C(window) (O(region_settings),
      O(maintenance_window), O(clock_utc) and O(ignore_windows)).
  returned: when RV(status) is V(go)
  type: dict
argument_errors:
  description: The errors of the options checked against O(options_spec).
  returned: when an option does not match O(options_spec)
  type: list
  elements: str
ansible_facts:
  description:
    - The facts the task sets, the pipeline's C(pos_update_*) facts (with set_fact's precedence) and, when the
      terminal was read, the C(pos_terminal) fact of M(posfleet.fleet.pos_facts).
  returned: success
  type: dict
  sample: {pos_update_status: deferred, pos_update_deferred_by: window, pos_update_reboot: false}
"""
