"""The pos_rollout_budget action plugin, run by ansible as update.yml runs it: once per batch."""

import json

from conftest import ansible_module_result


def budget(tmp_path, check=False, **args):
    """Run `ansible localhost -m pos_rollout_budget` with the repository's ansible.cfg; the result."""
    return ansible_module_result(tmp_path, "posfleet.fleet.pos_rollout_budget", args, check=check)


def test_an_exhausted_budget_says_why_without_failing_the_task(tmp_path):
    result = budget(tmp_path, outcomes={"A1": "updated", "A2": "rolled_back", "A3": "updated"},
                    max_failed_pct=10, total=10)
    assert result.get("failed") is not True, "the task itself succeeds; update.yml decides what to do"
    assert result["exhausted"] is True
    assert result["failed_terminals"] == 1 and result["unreachable_terminals"] == 0
    assert result["reason"] == ("error budget exhausted: 1 of 3 attempted terminals failed or rolled back (33.33%), "
                                "more than the limit of 10% (max_failed_pct) by 23.33 points; "
                                "7 terminals left untouched")


def test_a_wrong_limit_fails_with_the_value_named(tmp_path):
    result = budget(tmp_path, outcomes={"A1": "updated"}, max_failed="three")
    assert result["failed"] is True
    assert "max_failed 'three' is not a count of terminals" in result["msg"]


def test_slices_share_one_budget_through_the_file(tmp_path):
    shared = tmp_path / "budget.json"
    first = budget(tmp_path, outcomes={"A1": "updated", "A2": "failed"}, budget_file=str(shared), max_failed=1)
    assert first["exhausted"] is False and first["changed"] is True
    # Another slice: one failure of its own, and the first slice's one is counted too.
    second = budget(tmp_path, outcomes={"B1": "rolled_back"}, budget_file=str(shared), max_failed=1)
    assert second["exhausted"] is True and second["spent"] == 2
    assert json.loads(shared.read_text()) == {"A1": "updated", "A2": "failed", "B1": "rolled_back"}


def test_a_retry_does_not_pay_again_for_the_failures_it_retries(tmp_path):
    shared = tmp_path / "budget.json"
    shared.write_text(json.dumps({"A1": "updated", "A2": "failed", "A3": "rolled_back"}))
    # The retry runs A2 and A3 again: before they have an outcome, their old one does not count.
    result = budget(tmp_path, outcomes={}, budget_file=str(shared), max_failed=0, run_hosts=["A2", "A3"])
    assert result["exhausted"] is False and result["spent"] == 0
    result = budget(tmp_path, outcomes={"A2": "updated"}, budget_file=str(shared), max_failed=0,
                    run_hosts=["A2", "A3"])
    assert result["exhausted"] is False
    assert json.loads(shared.read_text())["A2"] == "updated"


def test_check_mode_reads_the_file_and_writes_nothing(tmp_path):
    shared = tmp_path / "budget.json"
    shared.write_text(json.dumps({"A1": "failed"}))
    result = budget(tmp_path, check=True, outcomes={"B1": "failed"}, budget_file=str(shared), max_failed=1)
    assert result["exhausted"] is True and result["changed"] is False
    assert json.loads(shared.read_text()) == {"A1": "failed"}
