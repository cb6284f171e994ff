#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pos_checkin_agent
short_description: Install the check-in agent on a POS terminal, with its endpoint and key, or remove it
description:
  - "The check-in agent (C(/usr/local/sbin/pos-checkin)) tells the control side what the terminal runs: its serial,
    app version, data pack versions, the versions of the OS packages the control side asked it to watch, and boot
    id, signed with the terminal's own key (HMAC-SHA256). It checks in
    when it starts (at boot), every O(interval) seconds after that, and every O(retry) seconds while check-ins fail,
    so a terminal that comes back online is heard of within about O(retry) seconds. Auto update brings a terminal
    that runs other than its assigned release to it."
  - V(present) installs the agent (its command and the module_utils it runs, beside the update guard's in
    C(/usr/local/lib/posfleet)), writes its settings to C(/var/lib/pos/checkin.json) and the key to
    C(/var/lib/pos/checkin.key) (mode 0600), each atomically and only when it differs.
  - The terminal's init starts the agent once the command and its settings exist. The agent reads its settings and
    key again before every check-in, so a new endpoint or key takes effect without a restart; when its code is
    replaced it ends when its next check-in is due, and init starts the new one.
  - V(absent) removes the command, the agent's code, its settings, its key and its list of OS packages to watch; a
    running agent ends when its next check-in is due.
  - The protocol (message, signature, refusals) is C(plugins/module_utils/pos_checkin.py).
version_added: "0.3.0"
author: posfleet contributors (@posfleet)
options:
  endpoint:
    description:
      - The control side's check-in URL, C(http://host:port/checkin) or C(https://...).
      - Required with O(state=present).
    type: str
  key:
    description:
      - The terminal's check-in key, 64 hex digits (32 random bytes); the control side holds the same key for the
        terminal's serial. It never appears in the result or the diff, only its fingerprint (RV(key_fingerprint)).
      - Required with O(state=present).
    type: str
  interval:
    description:
      - Seconds between check-ins that were accepted.
    type: int
    default: 900
  jitter:
    description:
      - Each wait after an accepted check-in is O(interval) plus or minus up to this many seconds, so that terminals
        that boot together do not check in together. Less than O(interval).
    type: int
    default: 120
  retry:
    description:
      - Seconds (plus or minus a quarter) between attempts while check-ins fail (no network, refused, the control
        side down).
    type: int
    default: 20
  timeout:
    description:
      - Seconds one check-in may take before it counts as failed.
    type: int
    default: 10
  state:
    description:
      - V(present) to install the agent and its settings, V(absent) to remove them.
    type: str
    default: present
    choices: [present, absent]
extends_documentation_fragment:
  - posfleet.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - Nothing on the terminal changes; the module reports whether anything would.
  diff_mode:
    support: full
    details:
      - The agent's settings before and after, whether it is installed, and the key's fingerprint (never the key).
  platform:
    platforms: posix
    details:
      - Runs on the terminal with the Python standard library only (Python 3.9 or newer); so does the agent.
seealso:
  - module: posfleet.fleet.pos_facts
"""

EXAMPLES = r"""
- name: Install the check-in agent
  posfleet.fleet.pos_checkin_agent:
    endpoint: "http://posfleet.example.net:5080/checkin"
    key: "{{ pos_checkin_key }}"

- name: Check in every 5 minutes and retry every 10 seconds
  posfleet.fleet.pos_checkin_agent:
    endpoint: "http://posfleet.example.net:5080/checkin"
    key: "{{ pos_checkin_key }}"
    interval: 300
    jitter: 60
    retry: 10

- name: Remove the check-in agent
  posfleet.fleet.pos_checkin_agent:
    state: absent
"""

RETURN = r"""
agent:
  description: The agent's command on the terminal.
  returned: always
  type: str
  sample: /usr/local/sbin/pos-checkin
key_fingerprint:
  description: The first 12 hex digits of the SHA-256 of the key; null with O(state=absent).
  returned: always
  type: str
  sample: 3f2a9c0d41be
config:
  description: The agent's settings as written to C(/var/lib/pos/checkin.json); null with O(state=absent).
  returned: always
  type: dict
  sample: {endpoint: "http://posfleet.example.net:5080/checkin", interval_s: 900, jitter_s: 120, retry_s: 20,
           timeout_s: 10}
"""

import json
import os
import re
import sys

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_checkin import (
    COMMAND,
    CONFIG,
    KEY,
    WATCH,
    fingerprint,
    install,
    installed_code,
    settings,
    settings_problem,
    valid_key,
)
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal import atomic_write, read_json, terminal_path


def current_key():
    """The key on the flash, or None when there is none (or it is not a key)."""
    try:
        with open(terminal_path(KEY), encoding="utf-8") as handle:
            key = handle.read().strip()
    except OSError:
        return None
    return key if valid_key(key) else None


def differs(path, text, mode):
    """Whether the file at terminal `path` lacks `text` or `mode`."""
    try:
        with open(terminal_path(path), encoding="utf-8") as handle:
            return handle.read() != text or (os.stat(handle.fileno()).st_mode & 0o7777) != mode
    except OSError:
        return True


def state_of():
    """What the diff shows of the terminal: the agent installed, its settings, its key's fingerprint."""
    key = current_key()
    return {"agent": os.path.isfile(terminal_path(COMMAND)), "config": read_json(CONFIG),
            "key_fingerprint": fingerprint(key) if key else None}


def present(module):
    params = module.params
    config = settings(params["endpoint"], params["interval"], params["jitter"], params["retry"], params["timeout"])
    problem = settings_problem(config)
    if problem:
        # The settings' names in CONFIG are the options' with _s (seconds).
        module.fail_json(msg="cannot install the check-in agent: %s; nothing was changed"
                         % re.sub(r"\b(interval|jitter|retry|timeout)_s\b", r"\1", problem))
    key = params["key"].strip()
    if not valid_key(key):
        module.fail_json(msg="key must be 64 hex digits (32 random bytes, as the control side's store makes them); "
                             "nothing was changed")
    files = {CONFIG: (json.dumps(config, indent=1, sort_keys=True) + "\n", 0o644), KEY: (key + "\n", 0o600)}
    before = state_of()
    try:
        changed = install(sys.executable, check=True)
        changed = any([changed] + [differs(path, text, mode) for path, (text, mode) in files.items()])
        if changed and not module.check_mode:
            install(sys.executable)
            for path, (text, mode) in files.items():
                if differs(path, text, mode):
                    os.makedirs(os.path.dirname(terminal_path(path)), mode=0o755, exist_ok=True)
                    atomic_write(terminal_path(path), text, mode=mode)
    except OSError as error:
        module.fail_json(msg="cannot install the check-in agent: %s; run the task again (each file is written "
                             "whole or not at all)" % error, agent=COMMAND)
    after = {"agent": True, "config": config, "key_fingerprint": fingerprint(key)}
    module.exit_json(changed=changed, agent=COMMAND, key_fingerprint=fingerprint(key), config=config,
                     diff={"before": before, "after": after})


def absent(module):
    before = state_of()
    paths = [terminal_path(path) for path in (COMMAND, CONFIG, KEY, WATCH)] + [installed_code()]
    there = [path for path in paths if os.path.lexists(path)]
    if not module.check_mode:
        try:
            for path in there:
                os.unlink(path)
        except OSError as error:
            module.fail_json(msg="cannot remove the check-in agent: %s; run the task again" % error, agent=COMMAND)
    module.exit_json(changed=bool(there), agent=COMMAND, key_fingerprint=None, config=None,
                     diff={"before": before, "after": {"agent": False, "config": None, "key_fingerprint": None}})


def main():
    module = AnsibleModule(
        argument_spec=dict(
            endpoint=dict(type="str"),
            key=dict(type="str", no_log=True),
            interval=dict(type="int", default=900),
            jitter=dict(type="int", default=120),
            retry=dict(type="int", default=20),
            timeout=dict(type="int", default=10),
            state=dict(type="str", default="present", choices=["present", "absent"]),
        ),
        required_if=[("state", "present", ("endpoint", "key"))],
        supports_check_mode=True,
    )
    if module.params["state"] == "present":
        present(module)
    else:
        absent(module)


if __name__ == "__main__":
    main()
