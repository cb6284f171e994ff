"""The actions that record the pipeline's state themselves (plugins/plugin_utils/posfleet_facts.py):
pos_preflight's verdict, the quiesce step's check before the change (pos_maintenance with window and
ready_check) and pos_verify's `updated` reach the later tasks and override what an earlier set_fact had
recorded, as a set_fact of theirs would; a check that fails records nothing."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap

import yaml
from ansible.parsing.vault import VaultLib, VaultSecret
from ansible_collections.posfleet.fleet.plugins.action import pos_record as pos_record_action
from ansible_collections.posfleet.fleet.plugins.modules import pos_record as pos_record_module
from conftest import REPO, TERMINAL_PYTHON, ansible_tool

RELEASE = {"release": "2026.12.0", "models": {"kestrel_k200": {
    "app": {"version": "1.1.0"}, "packs": {"catalog": {"version": "2026.12.0"}}, "storage_mb": 4, "reboot": True}}}
REGION = {"name": "eu_west", "timezone": "Europe/London", "maintenance_window": "01:00-05:00",
          "distribution_point": "http://127.0.0.1:9/dp"}
SHOWN = ["pos_update_status", "pos_update_reason", "pos_update_deferred_by", "pos_update_started",
         "pos_update_reboot", "pos_update_target"]


def play(tmp_path, tasks, environment=None, host="localhost ansible_connection=local", check=False, argv=()):
    """Run one play of `tasks` on localhost; {task name: localhost's result} and the shown variables."""
    shown = {"name": "Show the pipeline's state", "ansible.builtin.debug": {"msg": {
        name: "{{ %s | default('unset') }}" % name for name in SHOWN}}}
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump([{
        "hosts": "localhost", "gather_facts": False, "environment": environment or {},
        "vars": {"ansible_python_interpreter": TERMINAL_PYTHON},
        "tasks": [dict(task, ignore_errors=True) for task in tasks] + [shown]}]))
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(host + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "POSFLEET_"))}
    env.update(ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1")
    command = [ansible_tool("ansible-playbook"), "-i", str(inventory), str(playbook), *argv]
    proc = subprocess.run(command + (["--check"] if check else []), cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    try:
        tasks_run = json.loads(proc.stdout)["plays"][0]["tasks"]
    except (ValueError, KeyError, IndexError):
        raise AssertionError(f"unexpected ansible output:\n{proc.stdout}\n{proc.stderr}") from None
    results = {task["task"]["name"]: task["hosts"]["localhost"] for task in tasks_run}
    # An unreachable terminal leaves the play: nothing to show then.
    return results, results.get("Show the pipeline's state", {}).get("msg")


def earlier_state():
    return {"name": "An earlier step's state", "ansible.builtin.set_fact": {
        "pos_update_status": "go", "pos_update_reason": "earlier", "pos_update_started": False}}


def preflight(**overrides):
    args = {"release": RELEASE, "model": "kestrel_k200", "model_profile": {"package_style": "dpkg"},
            "region_settings": REGION, "merchant_profile": {"merchant_id": "M1"},
            "clock_utc": "2026-11-25T12:00:00Z"}
    return {"name": "Decide", "posfleet.fleet.pos_preflight": dict(args, **overrides)}


def test_the_preflight_verdict_overrides_an_earlier_set_fact(tmp_path):
    results, state = play(tmp_path, [earlier_state(), preflight()])
    assert not results["Decide"].get("failed"), results["Decide"]
    assert state["pos_update_status"] == "deferred" and state["pos_update_deferred_by"] == "window"
    assert state["pos_update_reason"].startswith("outside its maintenance window 01:00-05:00")
    assert state["pos_update_target"]["app_version"] == "1.1.0"
    # The survey does not start the terminal; it records whether its update would end with a reboot.
    assert state["pos_update_started"] is False and state["pos_update_reboot"] is True
    # Deferred: nothing to check again before a change.
    assert "pos_update_recheck" not in results["Decide"]["ansible_facts"]


def survey_in_window(dist, terminal, **overrides):
    """The survey of a real (test) terminal inside its window, the probe served by `dist`."""
    dist.publish("/dp/probe", b"p" * 4096)
    task = preflight(region_settings=dict(REGION, distribution_point=dist.url + "/dp"),
                     clock_utc="2026-11-25T02:00:00Z", min_kbps=0, **overrides)
    return dict(task, environment={"POS_ROOT": str(terminal.root)})


def test_a_terminal_found_go_gets_the_check_before_its_change(tmp_path, make_terminal, dist):
    terminal = make_terminal()
    results, state = play(tmp_path, [earlier_state(), survey_in_window(dist, terminal)])
    decided = results["Decide"]
    assert not decided.get("failed"), decided
    assert state["pos_update_status"] == "go" and state["pos_update_started"] is False
    recheck = decided["ansible_facts"]["pos_update_recheck"]
    # The same thresholds, target and clock as the survey's, for the quiesce step (pos_maintenance).
    assert recheck["ready_check"]["release"] == decided["target"]
    assert recheck["ready_check"]["min_kbps"] == 0 and recheck["ready_check"]["probe_url"] == dist.url + "/dp/probe"
    assert recheck["window"]["clock_utc"] == "2026-11-25T02:00:00Z"
    assert recheck["window"]["region_settings"]["maintenance_window"] == "01:00-05:00"


def test_bad_role_options_fail_the_survey_of_a_terminal_found_go(tmp_path, make_terminal, dist):
    terminal = make_terminal()
    spec = {"pos_package_timeout": {"type": "int"}, "pos_package_delta": {"type": "bool"}}
    options = {"pos_package_timeout": "soon", "pos_package_delta": True}
    tasks = [earlier_state(), dict(survey_in_window(dist, terminal, options_spec=spec, options_of="pos_package"),
                                   vars=options)]
    results, state = play(tmp_path, tasks)
    decided = results["Decide"]
    assert decided["failed"] is True
    assert decided["msg"].startswith("the options of pos_package are not valid:")
    assert "pos_package_timeout" in decided["msg"] and "pos_package_delta" not in decided["msg"]
    assert state["pos_update_status"] == "go" and state["pos_update_reason"] == "earlier", "nothing recorded"
    # A terminal the update will not change (outside its window) is not failed for them.
    results, state = play(tmp_path, [earlier_state(), dict(preflight(options_spec=spec), vars=options)])
    assert not results["Decide"].get("failed") and state["pos_update_status"] == "deferred"


def test_the_survey_does_not_decrypt_a_vaulted_role_option(tmp_path, make_terminal, dist):
    # The key is encrypted with another password than the run's: decrypting it would fail the task.
    secret = VaultLib([("default", VaultSecret(b"another password"))]).encrypt("k" * 32).decode()
    (tmp_path / "vault.yml").write_text("pos_backup_key: !vault |\n" + textwrap.indent(secret, "  "))
    (tmp_path / "password").write_text("the run's password\n")
    argv = ("-e", "@vault.yml", "--vault-password-file", "password")
    spec = {"pos_backup_key": {"type": "str", "required": True, "no_log": True}}
    terminal = make_terminal()
    results, state = play(tmp_path, [survey_in_window(dist, terminal, options_spec=spec)], argv=argv)
    assert not results["Decide"].get("failed"), results["Decide"]
    assert state["pos_update_status"] == "go"
    # What a task that uses the key gets: the decryption fails.
    used = {"name": "Use the key", "ansible.builtin.debug": {"msg": "{{ pos_backup_key | length }}"}}
    results, _state = play(tmp_path, [used], argv=argv)
    assert results["Use the key"]["failed"] is True


def verify(release, **overrides):
    return {"name": "Verify", "posfleet.fleet.pos_verify": dict({"release": release, "package_style": "bundle",
                                                  "merchant_version": "m1"}, **overrides)}


GOOD = {"app_version": "1.0.0", "packs": {"params": "2026.01.0", "catalog": "2026.01.0"}}


def test_a_passed_verification_records_the_terminal_as_updated(tmp_path, make_terminal):
    terminal = make_terminal()
    results, state = play(tmp_path, [earlier_state(), verify(GOOD, record_status=True)],
                          environment={"POS_ROOT": str(terminal.root)})
    assert not results["Verify"].get("failed"), results["Verify"]
    assert results["Verify"]["drift"] == []
    assert state["pos_update_status"] == "updated" and state["pos_update_reason"] == ""


def test_a_failed_or_unrecorded_verification_leaves_the_status(tmp_path, make_terminal):
    terminal = make_terminal()
    drifted = dict(GOOD, app_version="9.9.9")
    results, state = play(tmp_path, [earlier_state(), verify(drifted, record_status=True)],
                          environment={"POS_ROOT": str(terminal.root)})
    assert results["Verify"]["failed"] is True and results["Verify"]["drift"]
    assert state["pos_update_status"] == "go"
    # The audit (verify.yml) passes no record_status: a passing check records nothing either.
    results, state = play(tmp_path, [earlier_state(), verify(GOOD)], environment={"POS_ROOT": str(terminal.root)})
    assert not results["Verify"].get("failed") and state["pos_update_status"] == "go"


def test_a_terminal_that_stopped_answering_fails_the_verdict_instead_of_being_unreachable(tmp_path):
    # The update's steps ignore unreachability; the verification turns it into a failure for the rescue.
    host = "localhost ansible_connection=ssh ansible_host=127.0.0.1 ansible_port=9"
    results, state = play(tmp_path, [earlier_state(), verify(GOOD, record_status=True)], host=host)
    assert results["Verify"]["failed"] is True and not results["Verify"].get("unreachable")
    assert results["Verify"]["msg"].startswith("the update did not complete: the terminal stopped answering")
    assert state["pos_update_status"] == "go"
    # The audit keeps an unreachable terminal unreachable.
    results, _state = play(tmp_path, [verify(GOOD)], host=host)
    assert results["Verify"].get("unreachable") is True


def test_in_check_mode_the_verdict_is_would_update_without_contacting_the_terminal(tmp_path):
    host = "localhost ansible_connection=ssh ansible_host=127.0.0.1 ansible_port=9"
    results, state = play(tmp_path, [earlier_state(), verify(GOOD, record_status=True)], host=host, check=True)
    assert not results["Verify"].get("failed") and not results["Verify"].get("unreachable"), results["Verify"]
    assert state["pos_update_status"] == "would_update"


# --- the quiesce step's ready check (pos_maintenance ready_check, through its action) --------------


def quiesce(release, **check):
    ready_check = dict({"package_style": "bundle", "release": release, "model_profile": {"battery": False},
                        "entry": {"storage_mb": 1}}, **check)
    return {"name": "Quiesce",
            "posfleet.fleet.pos_maintenance": {"state": "maintenance", "timeout": 5, "ready_check": ready_check}}


NEWER = {"app_version": "1.1.0", "packs": {"params": "2026.02.0", "catalog": "2026.02.0"}}


def test_a_terminal_still_ready_is_quiesced_and_its_versions_recorded(tmp_path, make_terminal):
    terminal = make_terminal()
    results, state = play(tmp_path, [earlier_state(), quiesce(NEWER)], environment={"POS_ROOT": str(terminal.root)})
    quiesced = results["Quiesce"]
    assert not quiesced.get("failed") and quiesced["changed"] is True, quiesced
    assert quiesced["verdict"] == {"status": "go", "reason": "", "by": None}
    assert terminal.status()["maintenance"] is True
    assert state["pos_update_status"] == "go"
    assert quiesced["ansible_facts"]["pos_update_before"]["app_version"] == "1.0.0"
    assert quiesced["ansible_facts"]["pos_terminal"]["packs"]["catalog"] == "2026.01.0"


def test_a_terminal_no_longer_ready_is_left_selling_and_deferred(tmp_path, make_terminal):
    terminal = make_terminal()
    results, state = play(tmp_path, [earlier_state(), quiesce(NEWER, entry={"storage_mb": 10 ** 9})],
                          environment={"POS_ROOT": str(terminal.root)})
    quiesced = results["Quiesce"]
    assert not quiesced.get("failed") and quiesced["changed"] is False, quiesced
    assert terminal.status()["maintenance"] is False, "nothing may change on a terminal that is not ready"
    assert state["pos_update_status"] == "deferred" and state["pos_update_deferred_by"] == "preflight"
    assert state["pos_update_reason"].startswith("needs 1000000000 MB free flash, has ")


def test_a_terminal_already_current_is_left_selling_and_recorded_current(tmp_path, make_terminal):
    terminal = make_terminal()
    results, state = play(tmp_path, [earlier_state(), quiesce(GOOD)], environment={"POS_ROOT": str(terminal.root)})
    assert results["Quiesce"]["changed"] is False and terminal.status()["maintenance"] is False
    assert state["pos_update_status"] == "current" and state["pos_update_reason"] == "already on the release"


def test_without_a_ready_check_the_quiesce_records_nothing(tmp_path, make_terminal):
    terminal = make_terminal()
    task = {"name": "Quiesce", "posfleet.fleet.pos_maintenance": {"state": "maintenance", "timeout": 5}}
    results, state = play(tmp_path, [earlier_state(), task], environment={"POS_ROOT": str(terminal.root)})
    assert results["Quiesce"]["changed"] is True and "verdict" not in results["Quiesce"]
    assert terminal.status()["maintenance"] is True and state["pos_update_status"] == "go"


def window(clock, **overrides):
    return dict({"region_settings": REGION, "clock_utc": clock}, **overrides)


def quiesce_at(tmp_path, terminal, clock, **overrides):
    """The update's quiesce (window and ready check) at `clock`: its result and the state after it."""
    task = quiesce(NEWER)
    task["posfleet.fleet.pos_maintenance"]["window"] = window(clock, **overrides)
    results, state = play(tmp_path, [earlier_state(), task], environment={"POS_ROOT": str(terminal.root)})
    return results["Quiesce"], state


def test_outside_its_window_the_quiesce_leaves_the_terminal_untouched(tmp_path, make_terminal):
    terminal = make_terminal()
    quiesced, state = quiesce_at(tmp_path, terminal, "2026-11-25T12:00:00Z")
    assert not quiesced.get("failed") and quiesced["changed"] is False, quiesced
    assert terminal.status()["maintenance"] is False, "a terminal outside its window is not touched"
    assert "pos_terminal" not in quiesced["ansible_facts"], "nor even read"
    assert state["pos_update_status"] == "deferred" and state["pos_update_deferred_by"] == "window"
    assert state["pos_update_reason"].startswith("outside its maintenance window 01:00-05:00")
    # The rollout reached it: it counts as started, with a final status.
    assert state["pos_update_started"] is True


def test_inside_its_window_the_quiesce_checks_and_starts_the_terminal(tmp_path, make_terminal):
    terminal = make_terminal()
    quiesced, state = quiesce_at(tmp_path, terminal, "2026-11-25T02:00:00Z")
    assert not quiesced.get("failed") and quiesced["changed"] is True, quiesced
    assert terminal.status()["maintenance"] is True
    assert state["pos_update_status"] == "go" and state["pos_update_started"] is True
    assert quiesced["ansible_facts"]["pos_update_window"]["open"] is True


def test_with_windows_ignored_the_quiesce_decides_none(tmp_path, make_terminal):
    terminal = make_terminal()
    quiesced, state = quiesce_at(tmp_path, terminal, "2026-11-25T12:00:00Z", ignore_windows=True)
    assert quiesced["changed"] is True and state["pos_update_status"] == "go"
    assert "pos_update_window" not in quiesced["ansible_facts"]


def test_a_window_without_the_ready_check_is_refused(tmp_path, make_terminal):
    terminal = make_terminal()
    task = {"name": "Quiesce", "posfleet.fleet.pos_maintenance": {"state": "maintenance", "window": window("")}}
    results, state = play(tmp_path, [earlier_state(), task], environment={"POS_ROOT": str(terminal.root)})
    refused = results["Quiesce"]
    assert refused["failed"] is True and "needs state=maintenance and ready_check" in refused["msg"]
    assert terminal.status()["maintenance"] is False and state["pos_update_started"] is False
    task["posfleet.fleet.pos_maintenance"].update(ready_check=quiesce(NEWER)["posfleet.fleet.pos_maintenance"]["ready_check"],
                                   window={"clock_utc": ""})
    results, _state = play(tmp_path, [earlier_state(), task], environment={"POS_ROOT": str(terminal.root)})
    assert "region_settings" in results["Quiesce"]["msg"] and terminal.status()["maintenance"] is False


# --- pos_record: how steps pass the pipeline's state on ------------------------------------------------


def test_recorded_state_overrides_an_earlier_one_and_is_checked_against_the_vocabulary(tmp_path):
    record = {"name": "Record", "posfleet.fleet.pos_record": {
        "status": "deferred", "deferred_by": "upload", "reason": "2 sales not uploaded"}}
    misspelt = {"name": "Misspelt", "posfleet.fleet.pos_record": {"status": "rolledback"}}
    mismatched = {"name": "Mismatched", "posfleet.fleet.pos_record": {"status": "failed", "deferred_by": "window"}}
    results, state = play(tmp_path, [earlier_state(), record, misspelt, mismatched])
    assert state["pos_update_status"] == "deferred" and state["pos_update_deferred_by"] == "upload"
    assert state["pos_update_reason"] == "2 sales not uploaded"
    # What it did not name stays as it was.
    assert state["pos_update_started"] is False
    assert results["Misspelt"]["failed"] and "rolled_back" in results["Misspelt"]["msg"]
    assert results["Mismatched"]["failed"] and "deferred_by" in results["Mismatched"]["msg"]


def test_unfit_is_recorded_as_a_status_of_its_own_never_with_a_deferral_cause(tmp_path):
    reason = "the release needs 70 MB of flash and the model has 64 MB in all"
    as_deferred = {"name": "As deferred", "posfleet.fleet.pos_record": {
        "status": "unfit", "deferred_by": "preflight", "reason": reason}}
    unfit = {"name": "Unfit", "posfleet.fleet.pos_record": {"status": "unfit", "reason": reason}}
    results, state = play(tmp_path, [earlier_state(), as_deferred, unfit])
    # unfit is not "deferred for now": a deferral cause with it is refused where it is written.
    assert results["As deferred"]["failed"] and "deferred_by is for status deferred" in results["As deferred"]["msg"]
    assert not results["Unfit"].get("failed"), results["Unfit"]
    assert state["pos_update_status"] == "unfit" and state["pos_update_reason"] == reason
    assert state["pos_update_deferred_by"] == "unset"


def test_pos_record_documents_exactly_the_statuses_it_accepts():
    # The action checks against posfleet.statuses; the module file is what ansible-doc shows.
    options = yaml.safe_load(pos_record_module.DOCUMENTATION)["options"]
    for name in ("status", "deferred_by"):
        assert options[name]["choices"] == pos_record_action.ARGUMENT_SPEC[name]["choices"], name


def two_terminals_play(tmp_path, tasks):
    """The first play's task results per host, for `tasks` over two local-connection terminals A and B."""
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("A ansible_connection=local\nB ansible_connection=local\n")
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump([{"hosts": "all", "gather_facts": False, "tasks": tasks}]))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "POSFLEET_"))}
    env.update(ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1")
    proc = subprocess.run([ansible_tool("ansible-playbook"), "-i", str(inventory), str(playbook)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [task["hosts"] for task in json.loads(proc.stdout)["plays"][0]["tasks"]]


def test_a_record_run_once_reaches_every_terminal_of_the_batch(tmp_path):
    shown = two_terminals_play(tmp_path, [
        {"name": "Mark", "posfleet.fleet.pos_record": {"started": False, "status": "go"}, "run_once": True},
        {"name": "Show", "ansible.builtin.debug": {"msg": "{{ pos_update_status }} {{ pos_update_started }}"}}])[1]
    assert {host: result["msg"] for host, result in shown.items()} == {"A": "go False", "B": "go False"}


def test_a_record_run_once_leaves_each_terminal_its_own_cacheable_facts(tmp_path):
    # A run_once record gives every terminal of the play the same (empty) cacheable layer; a terminal's own
    # cacheable fact set afterwards (pos_preflight's pos_terminal) must stay that terminal's.
    shown = two_terminals_play(tmp_path, [
        {"name": "Mark", "posfleet.fleet.pos_record": {"started": False}, "run_once": True},
        {"name": "Own", "ansible.builtin.set_fact": {"probe": "{{ inventory_hostname }}", "cacheable": True}},
        {"name": "Show", "ansible.builtin.debug": {
            "msg": "{{ ansible_facts.probe }} {{ hostvars[inventory_hostname].ansible_facts.probe }}"}}])[2]
    assert {host: result["msg"] for host, result in shown.items()} == {"A": "A A", "B": "B B"}
