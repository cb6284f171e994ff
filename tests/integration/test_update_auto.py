"""Auto update on the lab (docs/auto-update.md): terminals check in with the real agent, over the lab network,
to ansible-rulebook running posfleet.fleet.auto_update, which runs update.yml limited to each terminal.

One scenario, in order, as an operator would meet it: a nightly rollout of the upgrade misses a terminal that
is off the network, which catches up by itself when it comes back; current terminals' check-ins change
nothing; forged, tampered and replayed check-ins are refused and logged; a new assignment (back to the
baseline) reaches the whole fleet through its check-ins, never more than `max_running` updates at once; a
terminal whose update keeps failing is retried after its backoff and then left for an operator; a terminal
added to the registry after the rollout is updated when it checks in; a check-in during the terminal's own
nightly run starts nothing.
"""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import OUTPUT_DIR, REPORT_DIR, ROOT, poslab, run, wait_for

sys.path.append(str(ROOT / "collections"))
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_checkin

VAULT = ["-e", "@/var/lib/poslab/vault/secrets.yml", "--vault-password-file", "/var/lib/poslab/vault/password"]
STATE = Path("/var/lib/poslab")
KEYS = "/var/lib/poslab/checkin/keys"
ENDPOINT = "http://10.231.0.1:5080/checkin"
MAX_RUNNING = 3
# Long enough that the test sees the backoff before the terminal's agent, which checks in by itself when an
# update ends, could start the retry.
BACKOFF_S = 30
# Whatever release the suites before left the fleet on, the night rolls out the upgrade and the storm later
# assigns the baseline: each is a change for every terminal it reaches.
NIGHT, NIGHT_RUNS = "2026.12.0", ("1.1.0", "2026.12.0")
BASELINE, BASELINE_RUNS = "2026.11.0", ("1.0.0", "2026.11.0")


def publish(spec):
    run(["ansible-playbook", "playbooks/publish.yml", "-e", f"release_spec=releases/lab/{spec}.yml"])


def checkin_now(serial, check=True):
    """The terminal's agent checks in once now (as it does at boot and when its network comes back)."""
    return poslab("exec", serial, "--", "/usr/local/sbin/pos-checkin", "--once", check=check)


def autoupdate_status():
    result = run(["bin/posfleet-autoupdate", "status", "--json"],
                 env={"POSFLEET_CHECKIN_STORE": "/var/lib/poslab/checkin/store.db",
                      "ANSIBLE_INVENTORY": "/var/lib/poslab/checkin/inventory"})
    data = json.loads(result.stdout)
    return data["summary"], {row["serial"]: row for row in data["terminals"]}


def checkin_reports(serial=None):
    """report.json of every run a check-in started (of `serial`'s, when given), oldest first."""
    found = []
    for path in sorted(REPORT_DIR.glob("*/report.json")):
        if path.parent.name == "latest":
            continue
        doc = json.loads(path.read_text())
        if (doc.get("trigger") or {}).get("by") != "checkin":
            continue
        if serial is None or any(row["serial"] == serial for row in doc["terminals"]):
            found.append(doc)
    return found


def versions():
    """{serial: (app version, params pack version)} as posd reports them."""
    return {row["serial"]: (row["app_version"], (row["packs"] or {}).get("params"))
            for row in json.loads(poslab("status", "--json").stdout)}


def post(body, signature):
    request = urllib.request.Request(ENDPOINT, data=body, method="POST",
                                     headers={"Content-Type": "application/json", pos_checkin.HEADER: signature})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def key(serial):
    with open(f"{KEYS}/{serial}.key", encoding="ascii") as handle:
        return handle.read().strip()


@pytest.fixture(scope="module")
def auto(lab):
    """The lab with releases published, every terminal enrolled, and the check-in service running."""
    serials = sorted(lab)
    offline = [s for s in serials if lab[s]["model"] == "kestrel_k200"][-1]
    publish("baseline")
    publish("upgrade")
    run(["ansible-playbook", "playbooks/checkin_enroll.yml"])
    poslab("checkin", "assign", "none")
    poslab("fault", offline, "net-down")
    nightly = run(["ansible-playbook", "playbooks/update.yml", "-e", f"update_release={NIGHT}", *VAULT],
                  check=False, timeout=900)
    assert "unreachable" in nightly.stdout, nightly.stdout[-3000:]
    poslab("checkin", "assign", NIGHT)
    poslab("checkin", "up", "--max-running", MAX_RUNNING, "--max-failures", 2, "--backoff", BACKOFF_S,
           "--report-dir", REPORT_DIR)
    yield {"serials": serials, "offline": offline}
    poslab("checkin", "down")
    poslab("checkin", "assign", "none")
    run(["cp", "/var/lib/poslab/checkin/rulebook.log", OUTPUT_DIR / "rulebook.log"], check=False)


def test_a_terminal_off_the_network_during_the_rollout_catches_up_once_when_it_is_back(auto):
    offline = auto["offline"]
    assert versions()[offline] != NIGHT_RUNS, "the nightly run did not reach it"
    started = time.monotonic()
    poslab("fault", offline, "net-up")
    # No command to the terminal: its agent notices the network is back (it retries every 20 s).
    wait_for(lambda: versions()[offline] == NIGHT_RUNS and checkin_reports(offline), timeout=180,
             what=f"{offline} updated by its own check-in")
    elapsed = time.monotonic() - started
    reports = checkin_reports(offline)
    assert len(reports) == 1, "one check-in-triggered run, not one per check-in"
    row = next(r for r in reports[0]["terminals"] if r["serial"] == offline)
    assert row["status"] == "updated" and reports[0]["release"] == NIGHT
    assert reports[0]["trigger"]["checkin_job"], "the report names the check-in job"
    assert "check-in job" in reports[0]["user"], "the audit trail's `who` says a check-in started it"
    print(f"{offline} caught up {elapsed:.0f} s after its network came back")
    assert elapsed < 180


def test_a_current_terminal_s_check_in_changes_nothing(auto):
    serial = auto["serials"][0]
    before = len(checkin_reports())
    answer = checkin_now(serial)
    assert "reply 202" in answer.stdout, answer.stdout
    _, rows = autoupdate_status()
    assert rows[serial]["last_decision"] == "current"
    time.sleep(5)
    assert len(checkin_reports()) == before, "no run was started for a current terminal"


def test_forged_tampered_and_replayed_check_ins_are_refused_and_logged(auto):
    victim, forger = auto["serials"][0], auto["serials"][1]
    runs = next(row for row in json.loads(poslab("status", "--json").stdout) if row["serial"] == victim)
    # What the terminal really runs: the genuine check-in below changes nothing.
    message = pos_checkin.message(victim, runs["app_version"], runs["packs"], "boot", lease=None)
    body = pos_checkin.encode(message)
    # Another terminal's key cannot speak for this one.
    assert post(body, pos_checkin.sign(body, key(forger))) == (403, {"refused": "bad_signature"})
    # A body changed after signing.
    signed = pos_checkin.sign(body, key(victim))
    tampered = body.replace(b'"boot"', b'"b00t"')
    assert post(tampered, signed) == (403, {"refused": "bad_signature"})
    # A serial the control side has no key for.
    stranger = pos_checkin.encode(pos_checkin.message("NOSUCH01", "1.0.0", {}, "boot"))
    assert post(stranger, pos_checkin.sign(stranger, key(victim))) == (403, {"refused": "unknown_terminal"})
    # The genuine one is answered once; the same bytes again are a replay.
    status, reply = post(body, signed)
    assert (status, reply["decision"]) == (202, "current"), reply
    assert post(body, signed) == (403, {"refused": "replayed"})
    # Sent long ago.
    old = pos_checkin.encode(pos_checkin.message(victim, "1.0.0", {}, "boot", now=time.time() - 3600))
    assert post(old, pos_checkin.sign(old, key(victim))) == (403, {"refused": "stale"})
    summary, _ = autoupdate_status()
    logged = [(item["serial"], item["reason"]) for item in summary["refused"]]
    expected_refusals = [(victim, "bad_signature"), (victim, "replayed"), (victim, "stale"),
                         ("NOSUCH01", "unknown_terminal")]
    for expected in expected_refusals:
        assert expected in logged, (expected, logged)


def test_a_rotated_key_is_used_at_once_and_the_old_one_is_refused(auto):
    serial = auto["serials"][1]
    old = key(serial)
    run(["ansible-playbook", "playbooks/checkin_enroll.yml", "-l", serial, "-e", "pos_checkin_rotate=true"])
    assert key(serial) != old
    assert "reply 202" in checkin_now(serial).stdout, "the terminal signs with its new key"
    body = pos_checkin.encode(pos_checkin.message(serial, "1.0.0", {}, "boot"))
    assert post(body, pos_checkin.sign(body, old)) == (403, {"refused": "bad_signature"})


def test_a_new_assignment_reaches_every_terminal_never_more_than_k_at_once(auto):
    failing = [s for s in auto["serials"] if s != auto["offline"]][-1]
    # This terminal fails its self-test on the baseline's app: its update rolls back, every time.
    poslab("fault", failing, "selftest-fail", BASELINE_RUNS[0])
    poslab("checkin", "assign", BASELINE)
    time.sleep(12)      # the service reads the inventory again (the lab's refresh is 10 s)
    before = len(checkin_reports())
    storm = time.monotonic()
    for serial in auto["serials"]:     # a reconnect storm: every terminal at once
        checkin_now(serial)
    most, deadline = 0, time.monotonic() + 600
    while time.monotonic() < deadline:
        summary, rows = autoupdate_status()
        most = max(most, summary["by_state"].get("running", 0))
        healthy = [s for s in auto["serials"] if s != failing]
        if all(rows[s]["last_outcome"] == "updated" for s in healthy) and rows[failing]["failures"] >= 1 \
                and summary["by_state"].get("running", 0) == 0 and summary["by_state"].get("queued", 0) == 0:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"the storm was not served in 600 s: {rows}")
    served = time.monotonic() - storm
    print(f"storm of {len(auto['serials'])} check-ins served in {served:.0f} s, {most} updates at most at once: "
          f"{len(auto['serials']) / served * 60:.1f} terminals per minute with max_running {MAX_RUNNING}")
    assert 1 <= most <= MAX_RUNNING, f"{most} updates ran at once"
    now = versions()
    assert all(now[s] == BASELINE_RUNS for s in auto["serials"] if s != failing), now
    assert now[failing] == NIGHT_RUNS, "the failing terminal was rolled back to the release it ran"
    runs = checkin_reports()[before:]
    assert len(runs) == len(auto["serials"]), "one run per terminal"

    # Retried only after its backoff, then held for an operator.
    assert rows[failing]["state"] == "backoff"
    checkin_now(failing)
    _, rows = autoupdate_status()
    assert rows[failing]["last_decision"] == "backoff"
    time.sleep(BACKOFF_S + 1)
    checkin_now(failing)
    wait_for(lambda: autoupdate_status()[1][failing]["state"] == "held", timeout=180,
             what=f"{failing} held after its second failure")
    summary, rows = autoupdate_status()
    assert summary["held"] == [failing]
    checkin_now(failing)
    assert autoupdate_status()[1][failing]["last_decision"] == "held"
    console = run(["bin/posfleet-autoupdate", "status"],
                  env={"POSFLEET_CHECKIN_STORE": "/var/lib/poslab/checkin/store.db",
                       "ANSIBLE_INVENTORY": "/var/lib/poslab/checkin/inventory"}).stdout
    assert f"HELD, waiting for an operator (1): {failing}" in console

    # The operator fixes the cause and lets it try again.
    poslab("fault", failing, "selftest-fail", "off")
    run(["bin/posfleet-autoupdate", "release", failing],
        env={"POSFLEET_CHECKIN_STORE": "/var/lib/poslab/checkin/store.db"})
    checkin_now(failing)
    wait_for(lambda: versions()[failing] == BASELINE_RUNS, timeout=180, what=f"{failing} updated once released")


def test_a_terminal_added_after_the_rollout_is_updated_when_it_checks_in(auto, lab):
    size = len(auto["serials"]) + 1
    poslab("up", "--terminals", size, timeout=600)
    new = sorted(set(versions()) - set(auto["serials"]))
    assert len(new) == 1
    try:
        run(["ansible-playbook", "playbooks/checkin_enroll.yml", "-l", new[0]])
        # The agent checks in as soon as it is installed; the service reads the inventory again for a serial
        # it does not know.
        # Its run's report is written when the run ends, after the terminal is updated.
        wait_for(lambda: versions()[new[0]] == BASELINE_RUNS and checkin_reports(new[0]), timeout=240,
                 what=f"{new[0]} updated by a run its check-in started")
    finally:
        poslab("up", "--terminals", size - 1, timeout=600)


def test_a_check_in_during_the_terminal_s_own_nightly_run_starts_nothing(auto):
    serial = auto["serials"][0]
    lease = STATE / "terminals" / serial / "flash" / "upper" / "var" / "lib" / "pos" / "update-lease.json"
    before = len(checkin_reports(serial))
    # An operator's run takes this terminal to the upgrade while the service runs.
    nightly = subprocess.Popen(["ansible-playbook", "playbooks/update.yml", "-e", f"update_release={NIGHT}",
                                "-l", serial, *VAULT], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
                                        POSFLEET_REPORT_DIR=str(OUTPUT_DIR / "nightly-reports")))
    try:
        wait_for(lambda: lease.exists() and json.loads(lease.read_text()).get("phase") in ("quiesced", "changing"),
                 timeout=120, interval=0.2, what=f"the nightly run's lease on {serial}")
        checkin_now(serial)
        _, rows = autoupdate_status()
        assert rows[serial]["last_decision"] == "in_run", rows[serial]
        assert rows[serial]["state"] == "idle", "the check-in queued nothing"
    finally:
        assert nightly.wait(timeout=600) == 0
    # Once that run is over, the terminal runs other than its assigned release: its next check-in brings it back.
    checkin_now(serial)
    wait_for(lambda: versions()[serial] == BASELINE_RUNS and len(checkin_reports(serial)) == before + 1,
             timeout=240, what=f"{serial} back on its assigned release")


def test_a_terminal_whose_only_drift_is_an_os_package_is_caught_up_by_its_check_in(auto, lab):
    """App and packs current, one OS package at another version (installed by hand): the check-in reports the
    packages its answers asked it to watch, and the run it starts puts the release's version back."""
    serial = min(s for s in auto["serials"] if lab[s]["model"] == "kestrel_k200")
    assert versions()[serial] == BASELINE_RUNS
    manifest = yaml.safe_load((STATE / "build" / "releases" / BASELINE / "manifest.yml").read_text())
    wanted = {item["name"]: item["version"] for item in manifest["models"]["kestrel_k200"]["os_packages"]}
    watched = json.loads((STATE / "terminals" / serial / "flash" / "upper" / "var" / "lib" / "pos" /
                          "checkin-os-watch.json").read_text())
    assert watched == sorted(wanted), "the check-in answers named the release's OS packages"
    # The night's upgrade kept its .debs; install one of them by hand.
    kept = poslab("exec", serial, "--", "sh", "-c", "ls /var/lib/pos/rollback/os/").stdout.split()
    name, newer = next((n, deb) for n in sorted(wanted) for deb in kept
                       if deb.startswith(f"{n}_") and not deb.startswith(f"{n}_{wanted[n].replace(':', '%3a')}_"))
    poslab("exec", serial, "--", "dpkg", "-i", f"/var/lib/pos/rollback/os/{newer}")
    before = len(checkin_reports(serial))

    checkin_now(serial)

    def installed():
        out = poslab("exec", serial, "--", "dpkg-query", "-W", "-f", "${Version}", name).stdout
        return out.strip()
    wait_for(lambda: len(checkin_reports(serial)) == before + 1 and installed() == wanted[name], timeout=240,
             what=f"{serial}'s {name} back at {wanted[name]} by its own check-in")
    row = next(r for r in checkin_reports(serial)[-1]["terminals"] if r["serial"] == serial)
    assert row["status"] == "updated" and row["after"]["os_packages"][name] == wanted[name], row
    assert versions()[serial] == BASELINE_RUNS
