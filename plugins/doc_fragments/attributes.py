# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the standard module attributes mean, said once for every module of the collection.

A module extends `posfleet.fleet.attributes` (and `posfleet.fleet.attributes.action` when an action plugin
of the same name runs on the control node) and keeps only its own `support`, `details` and `platforms`;
platform's `support` is N/A for every module, so it is here too. ansible-doc merges the module's keys over
these.
"""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
attributes:
  check_mode:
    description: Can run in C(check_mode) and return changed status prediction without modifying target.
  diff_mode:
    description: Returns details on what has changed (or possibly needs changing in C(check_mode)), when in diff mode.
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
"""

    # Only for a module with an action plugin (plugins/action/<module>.py); use with DOCUMENTATION.
    ACTION = r"""
attributes:
  action:
    description:
      - Indicates this has a corresponding action plugin so some parts of the options can be executed on the
        controller.
"""
