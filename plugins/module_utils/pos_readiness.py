# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a terminal is current, must be deferred, or can be updated now: one verdict, two places.

The survey decides it on the control node (the pos_preflight action, through the
pos_preflight_verdict filter) from the terminal's pos_facts; the quiesce step decides it again on the
terminal itself (pos_maintenance's `ready_check`), in the same round trip that takes the terminal out
of service. Both use this function, so they cannot disagree.

Pure Python, no imports: it runs on terminals (standard library only, Python 3.9 or newer) and is
loaded by file on the control node.
"""

from __future__ import annotations


def readiness(facts, profile, entry, min_kbps=0, margin_mb=0):
    """{"status": "current" | "deferred" | "go", "reason": text} from a terminal's pos_facts.

    Deferral is not failure: the terminal is fine, only not ready now (low battery, a full disk, a
    poor link); a re-run picks it up.
    """
    posd = facts.get("posd") or {}
    # A terminal left in maintenance was interrupted mid-update (the link or the power went, or the
    # control node was stopped): even when its versions already match, it has not been verified and
    # does not sell. It goes through the pipeline again, whose steps skip what is already done.
    if facts.get("current") and not posd.get("maintenance"):
        return {"status": "current", "reason": "already on the release"}
    if posd.get("state") == "down":
        return {"status": "deferred", "reason": "payment app not answering: %s" % posd.get("health_detail")}
    need = int(entry.get("storage_mb", 0)) + int(margin_mb)
    if facts.get("storage_free_mb") is not None and facts["storage_free_mb"] < need:
        return {"status": "deferred", "reason": "needs %d MB free flash, has %d MB" % (need, facts["storage_free_mb"])}
    if profile.get("battery") and not facts.get("charging"):
        pct = facts.get("battery_pct")
        if pct is not None and pct < int(profile.get("battery_min_pct", 0)):
            return {"status": "deferred", "reason": "battery at %d%%, below the model's %d%% and not charging"
                    % (pct, profile["battery_min_pct"])}
    probe = facts.get("probe")
    if probe is not None:
        if not probe.get("reachable"):
            return {"status": "deferred", "reason": "distribution point unreachable: %s" % probe.get("error")}
        if probe.get("kbps", 0) < int(min_kbps):
            return {"status": "deferred", "reason": "link too slow: %s kbit/s, the floor is %s"
                    % (probe.get("kbps"), min_kbps)}
    return {"status": "go", "reason": ""}
