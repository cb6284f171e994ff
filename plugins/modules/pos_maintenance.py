#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pos_maintenance
short_description: Take a POS terminal out of service for an update, put it back, or wait for its app
description:
  - Drives the payment app (posd) through its control socket.
  - V(maintenance) waits, at most O(timeout) seconds, for a sale in progress to finish and then stops
    new sales. A sale is never cut short; when it does not finish in time the module fails with a
    message starting C(in-transaction:) and returns RV(deferred=true), which the update treats as
    "try this terminal again later".
  - V(selling) puts the terminal back in service.
  - V(ready) waits, at most O(timeout) seconds, until posd answers after a restart or a reboot and
    returns its status. It changes nothing.
  - Maintenance survives a restart of posd and a reboot of the terminal, until V(selling) ends it.
  - "With O(lease), V(maintenance) also takes the update's lease on the terminal and installs the update guard
    (C(/usr/local/sbin/pos-update-guard)), which the terminal's init runs at boot and every few seconds while a
    lease is held. Every later step renews the lease (M(posfleet.fleet.pos_backup), M(posfleet.fleet.pos_package),
    M(posfleet.fleet.pos_data_sync), M(posfleet.fleet.pos_restore), M(posfleet.fleet.pos_verify), V(ready)). When
    the control node is not heard of for O(lease) seconds, the guard puts the terminal back in service, switching
    the app and data packs back to the versions recorded by M(posfleet.fleet.pos_backup) first if the change had
    begun. V(selling) (and M(posfleet.fleet.pos_verify) leaving maintenance) ends the lease."
version_added: "0.1.0"
author: posfleet contributors (@posfleet)
options:
  state:
    description:
      - V(maintenance) to stop selling, V(selling) to sell again, V(ready) to wait for posd to answer.
    type: str
    required: true
    choices: [maintenance, selling, ready]
  timeout:
    description:
      - Seconds to wait for the sale in progress (V(maintenance)) or for posd to come up (V(ready)).
    type: float
    default: 60
  lease:
    description:
      - With V(maintenance), seconds the terminal waits without hearing from the control node before its
        update guard undoes the update and puts it back in service. V(0) takes no lease.
      - It must outlast the longest silence of an update, that is the longest step of the slowest terminal
        of a batch (a download on a slow link renews the lease while it runs) plus the reboot and recovery
        waits.
    type: float
    default: 0
  deadline:
    description:
      - "With O(lease), the seconds the update's steps that make its change may run on the terminal, from now on
        (the time the terminal waits between its steps for the other terminals of its batch is not counted: a
        batch moves step by step with its slowest terminal). Past it, no step goes on with the update:
        M(posfleet.fleet.pos_backup), M(posfleet.fleet.pos_package) and M(posfleet.fleet.pos_data_sync) fail,
        naming the deadline, a download stops, and a command they run (a C(dpkg -i) that hangs, a maintainer
        script that never returns) is stopped when the deadline comes. The lease records it (C(deadline_s)) and
        the steps' time so far (C(spent)). The update's rollback (M(posfleet.fleet.pos_restore)) is not bound by it."
      - V(0) sets none. update.yml passes C(update_deadline) (the model profile's C(update_deadline)).
    type: float
    default: 0
  guard:
    description:
      - "With O(lease), whether the update guard watches it. V(false) (rollback.yml's restore) only holds the
        terminal for this run (phase C(holding)): when it runs out the guard does nothing, since a restore left
        half-way is no release to switch back to; the terminal stays in maintenance until rollback.yml runs again."
    type: bool
    default: true
  release:
    description: With O(lease), the release being installed, recorded in the lease for the guard's messages.
    type: str
    default: ""
  ready_check:
    description:
      - With V(maintenance), first read the terminal's state (as M(posfleet.fleet.pos_facts) does) and decide whether
        it is still ready for the update, with the same verdict as the survey's (C(module_utils/pos_readiness.py)),
        one of current, unfit, deferred (battery, flash, link, the payment app down, another run holding the
        terminal) or go. Only on V(go) is the terminal taken out of service; otherwise nothing is changed and
        RV(verdict) says why.
      - The update's check just before the change, in the same round trip as the quiesce.
    type: dict
    suboptions:
      package_style:
        description: How the model installs its payment app (C(pos_model_profile.package_style)).
        type: str
        required: true
        choices: [dpkg, bundle]
      release:
        description: What the terminal runs once on the release, as C(app_version) and C(packs).
        type: dict
        required: true
      model_profile:
        description: The model's profile (C(battery), C(battery_min_pct)).
        type: dict
        required: true
      entry:
        description: The model's entry in the release manifest (C(storage_mb)).
        type: dict
        required: true
      probe_url:
        description: A small file on the distribution point, downloaded to check and measure the link.
        type: str
      probe_timeout:
        description: Seconds the probe may take.
        type: float
        default: 10
      min_kbps:
        description: Below this link speed (kbit/s) the terminal is deferred.
        type: int
        default: 0
      storage_margin_mb:
        description: Free flash kept on top of what the release needs.
        type: int
        default: 0
  window:
    description:
      - With O(ready_check), first decide the maintenance window again, on the control node's clock and before the
        terminal is contacted (the action plugin does, with the C(pos_window) filter's code). Outside it the
        terminal is not contacted at all and RV(verdict) says deferred, with when the window opens next.
      - The update's check just before the change; the survey's decision may be hours old when a terminal's
        batch starts.
    type: dict
    suboptions:
      region_settings:
        description: "The terminal's region (C(pos_region_settings)), with its C(maintenance_window) and C(timezone)."
        type: dict
        required: true
      maintenance_window:
        description: This terminal's own window (C(HH:MM-HH:MM) local), replacing its region's.
        type: str
      clock_utc:
        description: The time that decides, ISO 8601 in UTC; empty for the control node's clock now.
        type: str
        default: ""
      ignore_windows:
        description: Decide no window (an emergency release, or the lab).
        type: bool
        default: false
extends_documentation_fragment:
  - posfleet.fleet.attributes
  - posfleet.fleet.run
  - posfleet.fleet.attributes.action
attributes:
  action:
    support: full
    details:
      - The action decides O(window) on the control node before the terminal is contacted, and with O(ready_check)
        records the verdict as the pipeline's facts. Every other option goes to the module on the terminal.
  check_mode:
    support: partial
    details:
      - Nothing on the terminal changes. V(maintenance) and V(selling) report whether posd's maintenance state would
        change; O(window) and O(ready_check) decide as in a real run; V(ready) waits for posd as in a real run.
      - The update's lease is not predicted. A terminal already in the wanted state reports no change in check mode,
        where a real run reports one when it takes the lease (V(maintenance) with O(lease)) or ends a lease left
        behind (V(selling)).
  diff_mode:
    support: partial
    details:
      - posd's maintenance state before and after (C(maintenance)), in check mode too.
      - The update's lease and guard are not in the diff; RV(lease) and RV(guard_installed) say what was done.
  platform:
    platforms: posix
    details:
      - The module runs on the terminal with the Python standard library only (Python 3.9 or newer).
"""

EXAMPLES = r"""
- name: Stop selling once the sale in progress has finished
  posfleet.fleet.pos_maintenance:
    state: maintenance
    timeout: 90
  register: pos_quiesce_result

- name: Stop selling for an update, with a one-hour lease for the update guard
  posfleet.fleet.pos_maintenance:
    state: maintenance
    lease: 3600
    release: 2026.12.0

- name: Check the window and the terminal again, then quiesce it (update.yml's pos_quiesce)
  posfleet.fleet.pos_maintenance:
    state: maintenance
    lease: 3600
    release: 2026.12.0
    window:
      region_settings: "{{ pos_region_settings }}"
    ready_check:
      package_style: "{{ pos_model_profile.package_style }}"
      release: "{{ pos_update_target }}"
      model_profile: "{{ pos_model_profile }}"
      entry: "{{ pos_update_entry }}"

- name: Wait for the payment app after the reboot
  posfleet.fleet.pos_maintenance:
    state: ready
    timeout: "{{ pos_model_profile.reboot_timeout }}"

- name: Put the terminal back in service
  posfleet.fleet.pos_maintenance:
    state: selling
"""

RETURN = r"""
status:
  description: posd's answer to C(status) after the module ran (before it, in check mode).
  returned: success
  type: dict
  sample:
    state: maintenance
    maintenance: true
    app_version: 1.1.0
    packs: {params: 2026.11.0, catalog: 2026.11.0, merchant: 5d1c0e2a9f3b}
    pending: 0
    healthy: true
    health_detail: ok
    counters: {stan: 118, batch: 7, invoice: 118}
deferred:
  description: True when a sale did not finish within O(timeout); the update should be retried later.
  returned: failure
  type: bool
  sample: true
lease:
  description: The lease held on the terminal after the module ran (V(maintenance) with O(lease)).
  returned: when a lease was taken
  type: dict
  sample: {phase: quiesced, release: 2026.12.0, ttl: 3600, expires: 1795000000.0, deadline_s: 1800, spent: 0}
verdict:
  description: With O(ready_check), whether the terminal was still ready (and in its O(window)), and if not why.
  returned: with O(ready_check)
  type: dict
  sample: {status: deferred, by: preflight, reason: "battery at 12%, below the model's 20% and not charging"}
ansible_facts:
  description:
    - With O(ready_check), the terminal's state as read for the verdict (the C(pos_terminal) fact, as
      M(posfleet.fleet.pos_facts) returns it).
  returned: with O(ready_check)
  type: dict
guard_installed:
  description: Whether the update guard's files were written or replaced (V(maintenance) with O(lease)).
  returned: when a lease was taken
  type: bool
  sample: false
earlier_lease:
  description:
    - The lease this one replaced, when it was not this run's; its C(phase) says what it was. V(undone),
      V(resumed) or V(stuck) are the update guard's outcome of an earlier update (C(guard) says when and what it
      switched); V(quiesced), V(changing) or V(holding) are the lease of a dead run, taken over.
  returned: when a lease was taken over another
  type: dict
  sample: {phase: undone, release: 2026.12.0, run: {id: 20261203T010203Z-update-3f2a},
           guard: {at: "2026-12-03T02:10:00Z", reason: "", switched: [app 1.1.0]}, taken: 1795000000.0}
held:
  description:
    - True when another posfleet run holds the terminal (see O(run)); nothing was changed. With O(ready_check)
      this is a verdict instead (RV(verdict) with C(by) V(held)), not a failure.
  returned: failure
  type: bool
  sample: true
"""

import sys

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_guard import (
    RUN_OPTION,
    LeaseHeld,
    act_as,
    check_not_held,
    end_lease,
    install,
    renew,
    take,
)
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_readiness import readiness
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal import (
    CommandTimeout,
    PosdError,
    posd,
    posd_wait,
    wait_posd_ready,
)
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal_state import NotATerminal, terminal_state


def clean(status):
    return {key: value for key, value in status.items() if key != "ok"}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            run=RUN_OPTION,
            state=dict(type="str", required=True, choices=["maintenance", "selling", "ready"]),
            timeout=dict(type="float", default=60.0),
            lease=dict(type="float", default=0.0),
            deadline=dict(type="float", default=0.0),
            guard=dict(type="bool", default=True),
            release=dict(type="str", default=""),
            ready_check=dict(type="dict", options=dict(
                package_style=dict(type="str", required=True, choices=["dpkg", "bundle"]),
                release=dict(type="dict", required=True),
                model_profile=dict(type="dict", required=True),
                entry=dict(type="dict", required=True),
                probe_url=dict(type="str"),
                probe_timeout=dict(type="float", default=10.0),
                min_kbps=dict(type="int", default=0),
                storage_margin_mb=dict(type="int", default=0),
            )),
        ),
        supports_check_mode=True,
    )
    act_as(module.params["run"])
    state, timeout = module.params["state"], module.params["timeout"]
    if timeout < 0:
        module.fail_json(msg="timeout must be 0 or more seconds, not %s" % timeout)
    lease = module.params["lease"]
    if lease < 0:
        module.fail_json(msg="lease must be 0 (none) or more seconds, not %s" % lease)
    if module.params["deadline"] < 0:
        module.fail_json(msg="deadline must be 0 (none) or more seconds, not %s" % module.params["deadline"])

    if state == "ready":
        try:
            status = wait_posd_ready(timeout)
        except PosdError as error:
            module.fail_json(msg="%s; look at /var/log/posd.log on the terminal" % error)
        if not module.check_mode:
            try:
                renew(forward=False)  # the control node is still there: the wait for a reboot is over
            except LeaseHeld as error:
                module.fail_json(msg=str(error), held=True, status=clean(status))
        module.exit_json(changed=False, status=clean(status))

    checked = {}
    if state == "maintenance" and module.params["ready_check"]:
        checked = check_ready(module, module.params["ready_check"])
        if checked["verdict"]["status"] != "go":
            module.exit_json(changed=False, **checked)
    # Another run's terminal is not touched at all: not quiesced, not put back in service.
    try:
        check_not_held()
    except LeaseHeld as error:
        refuse(module, error, checked)
    try:
        before = posd("status")
    except PosdError as error:
        module.fail_json(msg="cannot read the payment app's state: %s" % error, **checked)
    wanted = state == "maintenance"
    diff = {"before": {"maintenance": bool(before.get("maintenance"))}, "after": {"maintenance": wanted}}
    if module.check_mode:
        if bool(before.get("maintenance")) == wanted:
            module.exit_json(changed=False, status=clean(before), **checked)
        module.exit_json(changed=True, status=clean(before), diff=diff, **checked)
    if not wanted:
        was_selling = not before.get("maintenance")
        if not was_selling:
            try:
                posd("maintenance_leave")
            except PosdError as error:
                module.fail_json(msg="cannot put the terminal back in service: %s" % error)
        # A lease left behind (the guard's outcome, say) ends all the same.
        try:
            ended = end_lease()
        except LeaseHeld as error:     # taken by another run in between: it is theirs now
            refuse(module, error, checked)
        if was_selling:
            module.exit_json(changed=ended, status=clean(before))
        exit_after(module, diff, {})

    # The lease first: of two runs quiescing the terminal at once, the one whose lease is taken second
    # is refused before it changes anything.
    held = hold(module, lease, checked) if lease else {}
    if before.get("maintenance"):
        # Already out of service (left so by an earlier run): the lease is taken all the same.
        module.exit_json(changed=bool(held), status=clean(before), **dict(checked, **held))
    try:
        posd_wait("maintenance_enter", timeout)
    except PosdError as error:
        let_go(held)
        refusal = str(error.answer.get("error", ""))
        if refusal.startswith("in-transaction"):
            module.fail_json(msg="in-transaction: a sale was still in progress after %gs; the update of "
                             "this terminal is deferred, try again later" % timeout,
                             deferred=True, status=clean(error.answer), **checked)
        module.fail_json(msg="cannot enter maintenance: %s" % error)
    exit_after(module, diff, dict(checked, **held))


def exit_after(module, diff, extra):
    try:
        after = posd("status")
    except PosdError as error:
        module.fail_json(msg="the state changed but posd did not answer status afterwards: %s" % error,
                         changed=True)
    module.exit_json(changed=True, status=clean(after), diff=diff, **extra)


def refuse(module, error, checked):
    """Leave another run's terminal alone: with ready_check a verdict (deferred, held), otherwise a failure."""
    if checked:
        verdict = {"status": "deferred", "reason": str(error), "by": "held"}
        module.exit_json(changed=False, **dict(checked, verdict=verdict))
    module.fail_json(msg=str(error), held=True)


def check_ready(module, check):
    """The terminal's state and the verdict on it: whether it is still ready for the update."""
    try:
        facts = terminal_state(check["package_style"], check["probe_url"], check["probe_timeout"], check["release"])
    except NotATerminal as error:
        module.fail_json(msg=str(error))
    except CommandTimeout as error:
        module.fail_json(msg="cannot read the terminal's state: %s" % error)
    verdict = readiness(facts, check["model_profile"], check["entry"], check["min_kbps"], check["storage_margin_mb"],
                        module.params["run"])
    return {"verdict": verdict, "ansible_facts": {"pos_terminal": facts}}


def hold(module, lease, checked):
    """Take the update's lease (refusing another run's terminal) and install the update guard.

    Returns the module's result keys: the lease, whether the guard's files changed, and the earlier
    lease it replaced when that was the guard's outcome or a dead run's (`earlier_lease`).
    """
    try:
        taken = take(lease, module.params["release"], guarded=module.params["guard"],
                     deadline=module.params["deadline"])
    except LeaseHeld as error:
        refuse(module, error, checked)
    except OSError as error:
        module.fail_json(msg="cannot take the lease on the terminal: %s; nothing was changed" % error)
    try:
        installed = install(sys.executable) if module.params["guard"] else False
    except OSError as error:
        let_go({"lease": taken})
        module.fail_json(msg="the update guard could not be installed: %s; nothing was changed" % error)
    result = {"lease": taken, "guard_installed": installed}
    if taken.get("previous"):
        result["earlier_lease"] = taken["previous"]
    return result


def let_go(held):
    """Give back a lease this module has just taken, when the terminal could not be quiesced after all.

    A lease that carries an interrupted update's way back (phase changing) is kept: the guard needs it.
    """
    if held and held["lease"].get("phase") != "changing":
        end_lease()


if __name__ == "__main__":
    main()
