# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""posfleet_preload: import posfleet's action plugins once, in the ansible-playbook process.

ansible-playbook forks a worker process for every task on every terminal, and a worker imports the
action plugin its task needs unless the process it was forked from already has it. posfleet's actions
import the filters' code and, for the backup, the cryptography package: 10 to 12 ms of control-node
CPU per import, paid again in every worker, for every terminal (docs/performance.md). Imported here,
before the first worker is forked, they come with the fork instead.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: posfleet_preload
type: aggregate
short_description: Import posfleet's action plugins once, before Ansible forks its workers
description:
  - At the start of a playbook, imports every action plugin of this project (C(plugins/action)) in
    the C(ansible-playbook) process, so that the workers forked from it for each task and terminal
    do not import them again. It prints nothing and changes no result.
  - An action plugin that fails to import is left for its task to report, with Ansible's usual error;
    here it is only mentioned at verbosity 3 (C(-vvv)).
requirements:
  - enabled in ansible.cfg (C(callbacks_enabled = posfleet.fleet.posfleet_preload))
"""

import os

from ansible.plugins.callback import CallbackBase
from ansible.plugins.loader import action_loader
from ansible.utils.display import Display

display = Display()

# plugins/callback/posfleet_preload.py -> plugins/action
ACTION_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "action")


def action_names(directory=ACTION_DIR):
    """The names of the action plugins in `directory`, sorted."""
    return sorted(name[:-3] for name in os.listdir(directory) if name.endswith(".py") and not name.startswith("_"))


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "posfleet_preload"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.loaded = []

    def v2_playbook_on_start(self, playbook):
        for name in action_names():
            try:
                plugin = action_loader.get(f"posfleet.fleet.{name}", class_only=True)
            except Exception as exc:  # pylint: disable=broad-except  # its task reports it properly
                display.vvv(f"posfleet_preload: action plugin {name} not imported: {exc}")
                continue
            if plugin is not None:
                self.loaded.append(name)
