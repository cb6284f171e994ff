"""pos_reboot (plugins/action/pos_reboot.py): the update's reboot, waiting for a new boot and the app.

Run by ansible over a local connection on a stand-in terminal: a boot id file, a reboot command that
writes a new boot id a moment later (as a terminal comes back after a while) and a test command that
succeeds once the "app" is up. The lab's reboot cases (tests/faults, tests/integration) run it over
SSH against terminals that really restart."""

from __future__ import annotations

from conftest import ansible_module_result


def stand_in(tmp_path, boots_in=1, app_up_in=2):
    """The commands of a terminal that comes back `boots_in` seconds after its reboot command and
    whose app answers `app_up_in` seconds after it."""
    boot_id, app_up = tmp_path / "boot_id", tmp_path / "app_up"
    boot_id.write_text("boot-1\n")
    reboot = (f"sh -c 'sleep {boots_in}; echo boot-2 > {boot_id}; sleep {app_up_in - boots_in}; "
              f"touch {app_up}' >/dev/null 2>&1 &")
    return {"reboot_command": reboot, "boot_time_command": f"cat {boot_id}",
            "test_command": f"test -e {app_up}", "reboot_timeout": 30}, boot_id, app_up


def test_the_reboot_returns_once_the_terminal_booted_again_and_its_app_answers(tmp_path):
    args, boot_id, app_up = stand_in(tmp_path)
    result = ansible_module_result(tmp_path, "posfleet.fleet.pos_reboot", args)
    assert not result.get("failed"), result
    assert result["changed"] is True and result["rebooted"] is True
    # Returned only after both: the new boot and the app up.
    assert boot_id.read_text().strip() == "boot-2" and app_up.exists()


def test_a_terminal_that_never_boots_again_fails_with_what_was_last_seen(tmp_path):
    args, _, _ = stand_in(tmp_path)
    args.update(reboot_command="true", reboot_timeout=3)
    result = ansible_module_result(tmp_path, "posfleet.fleet.pos_reboot", args)
    assert result["failed"] is True
    assert result["msg"] == ("the terminal did not come back within 3s of its reboot: it still ran its boot "
                             "from before the reboot")


def test_a_terminal_whose_app_never_answers_fails_naming_the_test_command(tmp_path):
    args, boot_id, _ = stand_in(tmp_path)
    args.update(reboot_command=f"echo boot-2 > {boot_id}", test_command="sh -c 'echo posd down >&2; exit 3'",
                reboot_timeout=3)
    result = ansible_module_result(tmp_path, "posfleet.fleet.pos_reboot", args)
    assert result["failed"] is True
    assert result["msg"].startswith("the terminal did not come back within 3s of its reboot: it is up but "
                                    "'sh -c 'echo posd down >&2; exit 3'' still fails (rc 3): posd down")


def test_a_failing_reboot_command_fails_and_reboots_nothing(tmp_path):
    args, _, _ = stand_in(tmp_path)
    args.update(reboot_command="sh -c 'echo no such reboot >&2; exit 127'")
    result = ansible_module_result(tmp_path, "posfleet.fleet.pos_reboot", args)
    assert result["failed"] is True and result["rebooted"] is False
    assert "the reboot command 'sh -c 'echo no such reboot >&2; exit 127'' failed (rc 127): no such reboot" \
        in result["msg"]


def test_an_unreadable_boot_id_fails_before_the_reboot(tmp_path):
    args, _, app_up = stand_in(tmp_path, boots_in=0, app_up_in=0)
    args.update(boot_time_command=f"cat {tmp_path / 'missing'}")
    result = ansible_module_result(tmp_path, "posfleet.fleet.pos_reboot", args)
    assert result["failed"] is True and result["rebooted"] is False
    assert "check boot_time_command in its model profile" in result["msg"]
    assert not app_up.exists(), "the reboot command must not have run"


def test_check_mode_reboots_nothing(tmp_path):
    args, boot_id, app_up = stand_in(tmp_path, boots_in=0, app_up_in=0)
    result = ansible_module_result(tmp_path, "posfleet.fleet.pos_reboot", args, check=True)
    assert result["changed"] is True and result["rebooted"] is False
    assert boot_id.read_text().strip() == "boot-1" and not app_up.exists()


def test_a_terminal_not_answering_before_the_reboot_is_unreachable(tmp_path):
    args, _, _ = stand_in(tmp_path)
    result = ansible_module_result(tmp_path, "posfleet.fleet.pos_reboot", args,
                                   host="localhost ansible_connection=ssh ansible_host=127.0.0.1 ansible_port=9")
    assert result.get("unreachable") is True
