# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a terminal is current, must be deferred, or can be updated now: one verdict, two places.

The survey decides it on the control node (the pos_preflight action, through the
pos_preflight_verdict filter) from the terminal's pos_facts; the quiesce step decides it again on the
terminal itself (pos_maintenance's `ready_check`), in the same round trip that takes the terminal out
of service. Both use this function, so they cannot disagree.

Standard library only, Python 3.9 or newer: it runs on terminals too.
"""

from __future__ import annotations

from ansible_collections.posfleet.fleet.plugins.module_utils.pos_guard import ours


def readiness(facts, profile, entry, min_kbps=0, margin_mb=0, run=None):
    """{"status": "current" | "unfit" | "deferred" | "go", "reason": text, "by": what deferred it} from pos_facts.

    Deferral is not failure: the terminal is fine, only not ready now (low battery, a full disk, a
    poor link, another run holding it); a re-run picks it up. `by` is "held" when another posfleet
    run holds the terminal (its lease, `facts["lease"]`), "preflight" for every other deferral.
    `run` is this run (posfleet_run): its own lease, and those of the runs it supersedes, do not count.
    Unfit is neither: the model's flash is smaller than the release needs, so no re-run can help.
    """
    posd = facts.get("posd") or {}
    lease = facts.get("lease")
    if lease and lease.get("live") and not ours(lease, run or {}):
        return {"status": "deferred", "reason": lease.get("held"), "by": "held"}
    # A terminal left in maintenance was interrupted mid-update (the link or the power went, or the
    # control node was stopped): even when its versions already match, it has not been verified and
    # does not sell. It goes through the pipeline again, whose steps skip what is already done.
    if facts.get("current") and not posd.get("maintenance"):
        return {"status": "current", "reason": "already on the release", "by": None}
    if posd.get("state") == "down":
        return {"status": "deferred", "reason": "payment app not answering: %s" % posd.get("health_detail"),
                "by": "preflight"}
    need = int(entry.get("storage_mb", 0)) + int(margin_mb)
    flash = profile.get("storage_mb")
    if flash is not None and int(flash) < need:
        return {"status": "unfit", "reason": "the release needs %d MB of flash and the model has %d MB in all: "
                "no free space makes it fit; build a smaller release for this model" % (need, int(flash)),
                "by": None}
    if facts.get("storage_free_mb") is not None and facts["storage_free_mb"] < need:
        return {"status": "deferred", "reason": "needs %d MB free flash, has %d MB" % (need, facts["storage_free_mb"]),
                "by": "preflight"}
    if profile.get("battery") and not facts.get("charging"):
        pct = facts.get("battery_pct")
        if pct is not None and pct < int(profile.get("battery_min_pct", 0)):
            return {"status": "deferred", "reason": "battery at %d%%, below the model's %d%% and not charging"
                    % (pct, profile["battery_min_pct"]), "by": "preflight"}
    probe = facts.get("probe")
    if probe is not None:
        if not probe.get("reachable"):
            return {"status": "deferred", "reason": "distribution point unreachable: %s" % probe.get("error"),
                    "by": "preflight"}
        if probe.get("kbps", 0) < int(min_kbps):
            return {"status": "deferred", "reason": "link too slow: %s kbit/s, the floor is %s"
                    % (probe.get("kbps"), min_kbps), "by": "preflight"}
    return {"status": "go", "reason": "", "by": None}
