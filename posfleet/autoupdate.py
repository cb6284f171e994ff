"""Auto update on the control node: what to do with a terminal's check-in (docs/auto-update.md).

A terminal's agent checks in when it comes online and then every few minutes (module_utils/pos_checkin.py
owns the protocol). The ansible-rulebook event source posfleet.fleet.checkin hands each check-in to the
Dispatcher here, which answers it in one pass on the control node, without contacting any terminal:

* refused: not signed with the terminal's own key, stale, replayed or malformed (logged with the reason);
* nothing to do: the terminal runs the release assigned to it, has none assigned, is in another run,
  may not be updated at this hour, waits out a backoff or waits for an operator;
* queued: its update is started, at most `max_running` at once, oldest first, as an event the rulebook
  turns into the update playbook limited to that terminal.

The assigned release is inventory data, `posfleet_release` (group_vars per region, model, merchant or store
group, or a host's own), read through ansible-inventory so that the rulebook and a nightly update.yml
see the same value. The windows are the survey's rule (plugin_utils/posfleet_survey.py), plus a region's
optional `catch_up_window` for a terminal that missed its own. The state and the admission rules are
posfleet.checkin's store.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from posfleet import checkin as checkin_store
from posfleet import release as posrelease

# The collection's own modules: the check-in protocol and the survey's window rule. A plain Python process
# (the rulebook's) has no collection loader, so the checkout's collections/ is put on the path.
_COLLECTIONS = Path(__file__).resolve().parents[1] / "collections"
if _COLLECTIONS.is_dir() and str(_COLLECTIONS) not in sys.path:
    sys.path.append(str(_COLLECTIONS))
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_checkin  # noqa: E402
from ansible_collections.posfleet.fleet.plugins.plugin_utils import posfleet_survey  # noqa: E402

# The host variable naming the release a terminal should run: set it in group_vars (docs/auto-update.md).
ASSIGNED = "posfleet_release"
# A region setting: hours outside the maintenance window in which a terminal that checks in may still be
# updated (it missed its window: switched off, out of coverage). Unset, only the window counts.
CATCH_UP = "catch_up_window"
# What a terminal may call itself: its key file is named after it.
SERIAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class AutoUpdateError(Exception):
    """The control side cannot decide: the inventory or a release cannot be read. The message says what."""


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


class Fleet:
    """Each terminal's variables as the inventory gives them (group_vars merged), by serial.

    Read with `ansible-inventory --list`, the same inventory and group_vars a playbook reads; read again
    after `refresh_s`, and when a serial it does not know checks in (a terminal added to the registry after
    the rollout started). A serial still unknown after that is not read again for before `refresh_s`: a
    retired terminal that kept its key does not make every one of its check-ins read the whole inventory.
    """

    def __init__(self, inventory=None, refresh_s=300.0, command="ansible-inventory"):
        self.inventory = inventory
        self.refresh_s = refresh_s
        self.command = command
        self.hostvars = {}
        self.loaded_at = None
        self.missing = {}   # serial -> when a fresh read did not find it

    def load(self):
        argv = [self.command, "--list"] + (["-i", str(self.inventory)] if self.inventory else [])
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=3600)
        if done.returncode != 0:
            raise AutoUpdateError(f"{' '.join(argv)} failed (rc {done.returncode}): "
                                  f"{done.stderr.strip()[-500:] or done.stdout.strip()[-500:]}")
        try:
            self.hostvars = json.loads(done.stdout).get("_meta", {}).get("hostvars", {})
        except ValueError as exc:
            raise AutoUpdateError(f"{' '.join(argv)} printed no inventory JSON: {exc}") from None
        self.loaded_at = time.monotonic()

    def get(self, serial):
        """The terminal's variables, or None when the inventory has no such terminal."""
        now = time.monotonic()
        stale = self.loaded_at is None or now - self.loaded_at > self.refresh_s
        missed = self.missing.get(serial)
        if stale or (serial not in self.hostvars and (missed is None or now - missed > self.refresh_s)):
            self.load()
        if serial not in self.hostvars:
            self.missing[serial] = now
        else:
            self.missing.pop(serial, None)
        return self.hostvars.get(serial)


class Releases:
    """Release manifests by id, each checked once as update.yml checks it: signature, then location."""

    def __init__(self):
        self._checked = {}

    def manifest(self, release, hostvars):
        build_dir = hostvars.get("pos_release_build_dir", "/var/lib/posfleet/build")
        public_key = hostvars.get("pos_release_public_key", "/etc/posfleet/release.pub")
        path = Path(build_dir) / "releases" / release / posrelease.MANIFEST
        try:
            stamp = (path.stat().st_mtime_ns, Path(public_key).stat().st_mtime_ns)
        except OSError as exc:
            raise AutoUpdateError(f"release {release}: {exc}; build and publish it (docs/releases.md)") from None
        cached = self._checked.get(path)
        if cached and cached[0] == stamp:
            return cached[1]
        try:
            data, sig_text = posrelease.read_release(path.parent)
            manifest = posrelease.check_release(data, sig_text, posrelease.load_public_key(public_key), what=str(path))
            posrelease.check_location(manifest, path, what=str(path))
        except (OSError, posrelease.ReleaseError) as exc:
            raise AutoUpdateError(f"release {release}: {exc}") from None
        self._checked[path] = (stamp, manifest)
        return manifest

    def target(self, release, hostvars):
        """What the terminal runs once on `release`: app version and the release's pack versions."""
        model = (hostvars.get("pos_model_profile") or {}).get("name")
        try:
            return posfleet_survey.release_target(self.manifest(release, hostvars), model)
        except ValueError as exc:
            raise AutoUpdateError(str(exc)) from None


def runs_other_than(message, target):
    """True when what the terminal reported differs from `target` (app version, a pack of the release, or an OS
    package the release pins).

    The merchant pack is not compared: its version comes from the merchant's data, which a nightly run
    renders; a check-in updates terminals whose app or release packs are behind. The OS packages are compared
    when the check-in reports every one the release pins (the agent reports those the answer's os_watch named;
    a version of null, not installed, differs); until then app and packs decide.
    """
    if message.get("app_version") != target["app_version"]:
        return True
    packs = message.get("packs") or {}
    if any(packs.get(name) != version for name, version in target["packs"].items() if name != "merchant"):
        return True
    wanted = target.get("os_packages") or {}
    reported = message.get("os_packages") or {}
    return set(wanted) <= set(reported) and any(reported[name] != version for name, version in wanted.items())


def may_update_now(hostvars, now):
    """(may, why, window): whether the terminal may be updated at `now`, and by which window.

    `window` is the catch-up window string when only that one is open (the update then runs with it as the
    terminal's window), else None.
    """
    if str(hostvars.get("update_ignore_windows", False)).lower() in ("true", "yes", "1"):
        return True, "windows are ignored (update_ignore_windows)", None
    settings = hostvars.get("pos_region_settings")
    if not isinstance(settings, dict):
        return False, "its inventory puts it in no region", None
    state = posfleet_survey.window(settings, now, hostvars.get("pos_maintenance_window"))
    if state["open"]:
        return True, f"inside its maintenance window {state['window']}", None
    catch_up = settings.get(CATCH_UP)
    if catch_up:
        late = posfleet_survey.window(settings, now, catch_up)
        if late["open"]:
            return True, f"inside its region's catch-up window {catch_up}", catch_up
    return False, posfleet_survey.window_reason(state), None


class Dispatcher:
    """Answers check-ins and starts the queued updates. One per event source; the store is shared."""

    def __init__(self, store, fleet, key_dir, releases=None, clock=utcnow, log=None):
        self.store = store
        self.fleet = fleet
        self.key_dir = Path(key_dir)
        self.releases = releases or Releases()
        self.clock = clock
        self.log = log or (lambda line: None)

    def key_for(self, serial):
        if not isinstance(serial, str) or not SERIAL.match(serial):
            return None
        try:
            return (self.key_dir / f"{serial}.key").read_text(encoding="ascii").strip()
        except OSError:
            return None

    def _refuse(self, reason, serial, remote, detail, now):
        self.store.record_refusal(serial, remote, reason, detail, now)
        self.log(f"refused check-in from {remote} (serial {serial or '?'}): {reason} {detail}".rstrip())
        return pos_checkin.reply(reason)

    def checkin(self, body, signature, remote):
        """(HTTP status, reply) for one check-in: 403 refused, 202 answered (the reply names the decision)."""
        now = self.clock()
        try:
            message = pos_checkin.verify(body, signature, self.key_for, now=now.timestamp())
        except pos_checkin.Refused as exc:
            return self._refuse(exc.reason, exc.serial, remote, exc.detail, now)
        serial = message["serial"]
        if not self.store.remember_nonce(serial, message["nonce"], message["sent_at"], now):
            return self._refuse(pos_checkin.REPLAYED, serial, remote, f"nonce {message['nonce']} seen before", now)
        self.store.record_checkin(serial, message, remote, now)
        (decision, detail), watch = self._decide(serial, message, now)
        self.log(f"check-in from {serial} ({remote}) running {message.get('app_version')}: {decision} {detail}")
        return pos_checkin.reply(decision=decision, detail=detail, **({"os_watch": watch} if watch else {}))

    def _decide(self, serial, message, now):
        """((decision, detail), the OS packages the terminal's assigned release pins, for it to watch, or None)."""
        hostvars = self.fleet.get(serial)
        if hostvars is None:
            return self.store.note(serial, checkin_store.NOT_IN_INVENTORY, "the inventory has no such terminal",
                                   now), None
        lease = message.get("lease")
        if lease:
            return self.store.note(serial, checkin_store.IN_RUN, f"run {lease} holds the terminal", now), None
        release = hostvars.get(ASSIGNED)
        if not release:
            return self.store.decide(serial, False, False, now, release=None), None
        try:
            target = self.releases.target(str(release), hostvars)
            wants = runs_other_than(message, target)
            may, why, _window = may_update_now(hostvars, now)
        except (AutoUpdateError, posfleet_survey.AnsibleFilterError) as exc:
            self.log(f"cannot decide for {serial}: {exc}")
            return self.store.note(serial, checkin_store.UNDECIDED, str(exc), now), None
        return (self.store.decide(serial, wants, may, now, release=str(release), reason=why),
                sorted(target.get("os_packages") or {}))

    def start_jobs(self):
        """The events that start queued updates now: the rulebook runs update.yml limited to each terminal."""
        now = self.clock()
        events = []
        for job in self.store.start_next(now):
            hostvars = self.fleet.get(job["serial"]) or {}
            window = None
            with contextlib.suppress(posfleet_survey.AnsibleFilterError):
                window = may_update_now(hostvars, now)[2]
            update = {"serial": job["serial"], "release": job["release"], "job_id": job["job_id"],
                      "enqueued_at": job["enqueued_at"]}
            if window:
                update["window"] = window
            self.log(f"starting the update of {job['serial']} to {job['release']} (job {job['job_id']})")
            events.append({"posfleet_update": update, "meta": {"hosts": job["serial"]}})
        return events


def key_dir_default():
    return os.environ.get("POSFLEET_CHECKIN_KEYS", "/var/lib/posfleet/checkin/keys")
