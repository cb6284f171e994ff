#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pos_reboot
short_description: Reboot a terminal with its model's commands and wait until its payment app answers
description:
  - Reads the terminal's boot id (O(boot_time_command)), runs O(reboot_command), then waits until the
    terminal answers with a new boot id and O(test_command) succeeds, at most O(reboot_timeout) seconds
    from the reboot.
  - The job of M(ansible.builtin.reboot) for terminals whose model profile names these commands, at a
    fraction of its cost on the control node; it runs no setup module to learn the distribution, and
    while the terminal is down it waits on a TCP connect to the terminal's SSH port from the controller's
    process rather than on SSH connections. SSH is tried once the port answers, and every 10 seconds
    regardless, so that terminals reached through a jump host still come back.
  - Runs on the control node as an action plugin (C(plugins/action/pos_reboot.py)); the commands run on
    the terminal over the task's connection, without a module.
version_added: "0.4.0"
author: posfleet contributors (@posfleet)
options:
  reboot_command:
    description: The command that reboots the terminal (C(pos_model_profile.reboot_command)).
    type: str
    required: true
  boot_time_command:
    description:
      - A command whose output changes with every boot (C(pos_model_profile.boot_time_command)), read before
        the reboot and then until it differs.
    type: str
    required: true
  test_command:
    description:
      - A command that succeeds once the terminal is up and its payment app answers
        (C(pos_model_profile.test_command)).
    type: str
    required: true
  reboot_timeout:
    description: Seconds from the reboot command until the terminal must answer O(test_command).
    type: float
    default: 600.0
  connect_timeout:
    description: Seconds one probe of the terminal's SSH port may take.
    type: float
    default: 5.0
extends_documentation_fragment:
  - posfleet.fleet.attributes
  - posfleet.fleet.attributes.action
attributes:
  action:
    support: full
    details:
      - Everything runs in the action on the control node; the commands run on the terminal over the task's
        connection, without a module.
  check_mode:
    support: full
    details:
      - The terminal is not contacted and not rebooted; the task reports a change (it would be rebooted) with
        RV(rebooted) false.
  diff_mode:
    support: none
  platform:
    platforms: posix
    details:
      - A terminal whose model profile names the three commands; it needs a shell, not Python.
notes:
  - A terminal that does not answer before the reboot is unreachable; one that does not come back fails the
    task with what was last seen (no answer on the port, SSH not connecting, the old boot, the test failing).
seealso:
  - module: ansible.builtin.reboot
"""

EXAMPLES = r"""
- name: Reboot the terminal with its model's reboot command
  posfleet.fleet.pos_reboot:
    reboot_command: "{{ pos_model_profile.reboot_command }}"
    boot_time_command: "{{ pos_model_profile.boot_time_command }}"
    test_command: "{{ pos_model_profile.test_command }}"
    reboot_timeout: "{{ pos_model_profile.reboot_timeout }}"
"""

RETURN = r"""
rebooted:
  description: Whether the terminal was rebooted.
  returned: always
  type: bool
  sample: true
elapsed:
  description: Seconds from the reboot command until the test command succeeded.
  returned: always
  type: float
  sample: 14.2
"""
