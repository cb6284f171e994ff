"""Control-node steps that update.yml runs in the controller's process instead of as tasks or module
processes of their own: pos_preflight (the survey's decision) and the pos_role_options filter (one
argument-spec check for the update's roles)."""

from pathlib import Path

import pytest
from ansible_collections.posfleet.fleet.plugins.filter import posfleet as filters
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_merchant
from conftest import ansible_module_result

REPO = Path(__file__).resolve().parents[2]

RELEASE = {"release": "2026.12.0", "models": {"kestrel_k200": {
    "app": {"version": "1.1.0"}, "packs": {"catalog": {"version": "2026.12.0"}}, "storage_mb": 4}}}
REGION = {"name": "eu_west", "timezone": "Europe/London", "maintenance_window": "01:00-05:00",
          "distribution_point": "http://127.0.0.1:9/dp"}


def action(tmp_path, module, args):
    """The module's result, run by ansible on a localhost no one can reach over SSH: a step that
    contacted the terminal would come back unreachable."""
    return ansible_module_result(tmp_path, module, args,
                                 host="localhost ansible_connection=ssh ansible_host=127.0.0.1 ansible_port=9")


def preflight(tmp_path, **overrides):
    args = {"release": RELEASE, "model": "kestrel_k200", "model_profile": {"package_style": "dpkg"},
            "region_settings": REGION, "merchant_profile": {"merchant_id": "M1"}}
    args.update(overrides)
    return action(tmp_path, "posfleet.fleet.pos_preflight", args)


def test_outside_its_window_a_terminal_is_deferred_without_being_contacted(tmp_path):
    result = preflight(tmp_path, clock_utc="2026-11-25T12:00:00Z")
    assert not result.get("unreachable") and not result.get("failed"), result
    assert result["status"] == "deferred" and result["deferred_by"] == "window"
    # Not contacted: no pos_terminal fact, only the verdict recorded as the pipeline's facts.
    assert result["before"] is None and "pos_terminal" not in result["ansible_facts"]
    assert result["ansible_facts"]["pos_update_status"] == "deferred"
    assert result["reason"] == ("outside its maintenance window 01:00-05:00 (Europe/London, region); "
                                "it opens next at 2026-11-26T01:00:00+00:00")
    assert result["target"]["app_version"] == "1.1.0"
    assert result["target"]["packs"]["merchant"] == pos_merchant.version({"merchant_id": "M1"})
    assert result["entry"] == RELEASE["models"]["kestrel_k200"]


def test_without_a_merchant_profile_the_role_template_renders_the_terminal_s(tmp_path):
    row = ("pos_merchant_id=M7 pos_terminal_id=T0007 pos_merchant_name='Cafe Sol' pos_store=S3 "
           "pos_region_settings=\"{'currency': 'EUR'}\"")
    args = {"release": RELEASE, "model": "kestrel_k200", "model_profile": {"package_style": "dpkg"},
            "region_settings": REGION, "clock_utc": "2026-11-25T12:00:00Z"}
    result = ansible_module_result(tmp_path, "posfleet.fleet.pos_preflight", args,
                                   host=f"localhost ansible_connection=ssh ansible_host=127.0.0.1 ansible_port=9 {row}")
    assert not result.get("failed"), result
    profile = {"merchant_id": "M7", "terminal_id": "T0007", "name": "Cafe Sol", "store": "S3", "currency": "EUR",
               "receipt_header": "Cafe Sol - thank you"}
    assert result["merchant_profile"] == profile
    assert result["target"]["packs"]["merchant"] == pos_merchant.version(profile)


def test_inside_its_window_the_terminal_is_read(tmp_path):
    result = preflight(tmp_path, clock_utc="2026-11-25T02:00:00Z")
    assert result.get("unreachable") is True, "inside the window the action reads the terminal (pos_facts)"


def test_a_terminal_override_of_the_window_is_used(tmp_path):
    result = preflight(tmp_path, clock_utc="2026-11-25T02:00:00Z", maintenance_window="10:00-11:00")
    assert result["status"] == "deferred" and result["window"]["source"] == "override"


def test_the_roles_option_types_are_checked(tmp_path):
    result = preflight(tmp_path, min_kbps="fast")
    assert result["failed"] is True and "min_kbps" in result["msg"]


def test_a_model_missing_from_the_release_fails(tmp_path):
    result = preflight(tmp_path, model="heron_h1", clock_utc="2026-11-25T12:00:00Z")
    assert result["failed"] is True and "no entry for model heron_h1" in result["msg"]


def test_role_options_merge_the_update_roles_specs():
    roles = ["pos_txn_upload", "pos_backup", "pos_verify"]
    options = filters.pos_role_options(roles, str(REPO / "roles"))
    assert options["pos_txn_upload_retries"]["type"] == "int"
    assert options["pos_backup_key"]["required"] is True
    assert "pos_update_target" in options
    # Without the descriptions, which every terminal's survey would otherwise copy.
    assert all("description" not in option for option in options.values())


def test_role_options_refuse_an_option_two_roles_specify_differently(tmp_path):
    for role, kind in (("a", "int"), ("b", "str")):
        meta = tmp_path / role / "meta"
        meta.mkdir(parents=True)
        (meta / "argument_specs.yml").write_text(f"argument_specs:\n  main:\n    options:\n      x: {{type: {kind}}}\n")
    with pytest.raises(ValueError, match="option x"):
        filters.pos_role_options(["a", "b"], str(tmp_path))


def test_a_terminal_that_does_not_answer_at_the_check_before_its_change_is_left_deferred(tmp_path):
    # Not unreachable: Ansible would end the whole play when a batch's every terminal is, and the rollout
    # with it (a canary rebooted by another run, or gone off the network since the survey).
    check = {"package_style": "dpkg", "release": {"app_version": "1.1.0", "packs": {}},
             "model_profile": {}, "entry": {"storage_mb": 1}}
    result = action(tmp_path, "posfleet.fleet.pos_maintenance",
                    {"state": "maintenance", "lease": 60, "ready_check": check})
    assert not result.get("unreachable") and not result.get("failed") and not result["changed"], result
    assert result["verdict"]["status"] == "deferred" and result["verdict"]["by"] == "quiesce"
    assert result["verdict"]["reason"].startswith("did not answer at the check before its change (")
    facts = result["ansible_facts"]
    assert (facts["pos_update_status"], facts["pos_update_deferred_by"], facts["pos_update_started"]) == \
        ("deferred", "quiesce", True)

    # Without the update's check (rollback.yml's quiesce) it is unreachable, as any task.
    plain = action(tmp_path, "posfleet.fleet.pos_maintenance", {"state": "maintenance"})
    assert plain.get("unreachable"), plain
