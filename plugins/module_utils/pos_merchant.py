# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The merchant pack's canonical form and version: the one definition the terminal and the control node share.

The merchant pack is rendered per terminal from its registry row (the TMS parameter template), never
published. pos_data_sync writes it on the terminal as this canonical JSON; the survey on the control node
predicts the version the terminal will then report. Both must compute it the same way, so both import it
from here.

Runs on terminals: standard library only, Python 3.9 or newer.
"""

from __future__ import annotations

import hashlib
import json


def canonical(profile):
    """The profile as the bytes of profile.json: keys sorted, no spaces, UTF-8."""
    return json.dumps(profile, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def version(profile):
    """The merchant pack's version: the first 12 hex digits of the canonical JSON's sha256."""
    return hashlib.sha256(canonical(profile)).hexdigest()[:12]
