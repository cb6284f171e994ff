# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""posfleet_memory: ansible-core's memory fact cache, keeping each host's facts in a dict of its own."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: posfleet_memory
short_description: RAM backed, non persistent, one dict of facts per host
description:
  - ansible-core's C(memory) fact cache, except that it keeps a copy of the facts it is given for a host.
  - >-
    ansible-core 2.21 (C(VariableManager.set_host_facts)) stores the mapping it is given for a host that
    has no facts yet as it is, and later updates it in place. A C(run_once) task that registers facts
    (M(ansible.builtin.set_fact), or an action using plugin_utils/posfleet_facts.py, even with no cacheable
    fact) gives every host of the play the same mapping. With the C(memory) cache every terminal then
    shares one dict of facts, and a fact one terminal's task sets later (C(pos_terminal)) shows on all of
    them (ansible/ansible#87148).
  - >-
    ansible.cfg selects it (C(fact_caching = posfleet.fleet.posfleet_memory)). It can go once the pinned
    ansible-core copies the facts itself.
author: posfleet contributors (@posfleet)
"""

from ansible.plugins.cache.memory import CacheModule as MemoryCacheModule


class CacheModule(MemoryCacheModule):

    def set(self, key, value):
        super().set(key, dict(value))
