# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The `run` option of the modules that take, renew or end a terminal's lease (action group posfleet.fleet.lease)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  run:
    description:
      - The posfleet run this task acts for, as M(posfleet.fleet.pos_run) returns it (the C(posfleet_run) fact).
        The playbooks set it for every module of the action group C(posfleet.fleet.lease) with C(module_defaults).
      - The terminal's lease names the run that holds it. While another run's lease is live (held and not run
        out), the module changes nothing and fails with a message starting C(held by another posfleet run),
        naming that run, who started it, from which control node and since when; a lease held by a run in
        O(run.supersedes) (one its control node found dead) is taken over.
      - "Unset, the module acts outside any run: it may take or end only a lease that names no run."
    type: dict
    suboptions:
      id:
        description: The run's id, as in its report and audit lines.
        type: str
        required: true
      mode:
        description: update, rollback, check or backup.
        type: str
      release:
        description: The release the run rolls out, if any.
        type: str
      by:
        description: Who started the run (the user, or the AWX job).
        type: str
      control_node:
        description: The control node the run runs on.
        type: str
      started:
        description: When the run started, ISO 8601 UTC.
        type: str
      supersedes:
        description: Ids of dead runs whose leases this run may take over before they run out.
        type: list
        elements: str
        default: []
"""
