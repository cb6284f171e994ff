# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A terminal's state as the pos_terminal fact: identity, versions, flash, battery, posd, link.

Read by pos_facts (the survey) and by pos_maintenance's `ready_check` (the check just before the
change, in the quiesce step's round trip). Runs on terminals: standard library only, Python 3.9+.
"""

from __future__ import annotations

import platform
import time
import urllib.request

from ansible_collections.posfleet.fleet.plugins.module_utils import pos_os
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_app import app_version
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_guard import read_lease, summary
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal import (
    BOOT_ID,
    TERMINAL_JSON,
    PosdError,
    battery,
    pack_versions,
    posd,
    read_json,
    read_text,
    storage_free_mb,
)


class NotATerminal(Exception):
    """The terminal's identity file is missing: this is not a provisioned POS terminal."""


def probe(url, timeout):
    """Download a small file from the distribution point; say whether it worked and how fast.

    The speed is the body's: timed from the answer's headers to its last byte, so that the connection's setup
    and the server's time to answer (latency, and a busy control node or terminal) do not pass for a slow link.
    """
    started = time.time()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            answered = time.time()
            size = len(response.read(1 << 20))
    except Exception as error:  # any failure means: this terminal cannot download now
        return {"reachable": False, "error": "%s: %s" % (url, error)}
    ended = time.time()
    body = max(ended - answered, 1e-4)
    return {"reachable": True, "bytes": size, "seconds": round(ended - started, 3),
            "kbps": int(size * 8 / 1000 / body)}


def runs_release(facts, release):
    if facts["app_version"] != release.get("app_version"):
        return False
    wanted = release.get("packs") or {}
    if not all(facts["packs"].get(name) == version for name, version in wanted.items()):
        return False
    found = facts.get("os_packages") or {}
    return all(found.get(name) == version for name, version in (release.get("os_packages") or {}).items())


def terminal_state(package_style, probe_url=None, probe_timeout=10.0, release=None):
    """The pos_terminal fact; `current` when `release` is given, `probe` when `probe_url` is.

    `os_packages` holds the versions of the OS packages `release` pins (None: not installed), when it pins any.
    """
    identity = read_json(TERMINAL_JSON)
    if not identity:
        raise NotATerminal("%s is missing or unreadable: this does not look like a provisioned POS terminal"
                           % TERMINAL_JSON)
    pct, charging = battery()
    facts = {
        "serial": identity.get("serial"),
        "model": identity.get("model"),
        "region": identity.get("region"),
        "app_version": app_version(package_style),
        "packs": pack_versions(),
        "storage_free_mb": storage_free_mb(),
        "battery_pct": pct,
        "charging": charging,
        "boot_id": read_text(BOOT_ID),
        "python": platform.python_version(),
        # Which run holds the terminal, if one does: the survey leaves a terminal another run holds alone.
        "lease": summary(read_lease()),
    }
    try:
        status = posd("status")
        facts["posd"] = {k: status.get(k) for k in ("state", "pending", "healthy", "health_detail", "counters",
                                                    "maintenance", "app_version", "generated")}
    except PosdError as error:
        facts["posd"] = {"state": "down", "pending": None, "healthy": False, "health_detail": str(error)}
    os_names = sorted((release or {}).get("os_packages") or {})
    if os_names:
        facts["os_packages"] = pos_os.versions(os_names)
    if probe_url:
        facts["probe"] = probe(probe_url, probe_timeout)
    if release is not None:
        facts["current"] = runs_release(facts, release)
    return facts
