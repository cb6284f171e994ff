# -*- coding: utf-8 -*-
# Copyright: posfleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pos_reboot: reboot a terminal with its model's commands and wait until it is back and answering.

The job of ansible.builtin.reboot, for a terminal whose model profile already names its commands.
ansible.builtin.reboot first runs the setup module on the terminal to learn its distribution (a
module process and a round trip, whatever reboot_command says), and while the terminal is down it
keeps opening SSH connections. Here the wait is a TCP connect to the terminal's SSH port from the
controller's process, which costs next to nothing; SSH is tried once the port answers, and at least
every SSH_EVERY seconds all the same, for terminals reached through a jump host where the port
cannot be probed directly. The module file of the same name holds the documentation.
"""

from __future__ import annotations

import contextlib
import socket
import time

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.plugins.action import ActionBase

ARGUMENT_SPEC = {
    "reboot_command": {"type": "str", "required": True},
    "boot_time_command": {"type": "str", "required": True},
    "test_command": {"type": "str", "required": True},
    "reboot_timeout": {"type": "float", "default": 600.0},
    "connect_timeout": {"type": "float", "default": 5.0},
}

# Seconds between two looks at a terminal that is not back yet.
POLL_INTERVAL = 1.0
# Seconds after which SSH is tried even though the port probe does not answer.
SSH_EVERY = 10.0


def _last_line(exc):
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


class TerminalNotBack(Exception):
    """The terminal did not come back, or not answering, before the reboot's deadline."""


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        if self._task.check_mode:
            return dict(result, changed=True, rebooted=False, elapsed=0,
                        msg="check mode: the terminal would be rebooted")

        before = self._run(args["boot_time_command"])
        if before["rc"] != 0 or not before["stdout"].strip():
            return dict(result, failed=True, rebooted=False,
                        msg=f"could not read the terminal's boot id with '{args['boot_time_command']}' "
                            f"(rc {before['rc']}): {before['stderr'].strip() or before['stdout'].strip()}; "
                            "the terminal was not rebooted; check boot_time_command in its model profile")
        boot_id = before["stdout"].strip()

        start = time.monotonic()
        try:
            reboot = self._run(args["reboot_command"])
        except AnsibleConnectionFailure:
            # The terminal went down before the command could report: that is the reboot.
            reboot = {"rc": 0}
        if reboot["rc"] != 0:
            return dict(result, failed=True, rebooted=False,
                        msg=f"the reboot command '{args['reboot_command']}' failed (rc {reboot['rc']}): "
                            f"{reboot['stderr'].strip() or reboot['stdout'].strip()}; the terminal was not "
                            "rebooted")
        self._reset()

        deadline = start + args["reboot_timeout"]
        try:
            self._wait_for_new_boot(args["boot_time_command"], boot_id, deadline, args["connect_timeout"])
            self._wait_for_test(args["test_command"], deadline)
        except TerminalNotBack as exc:
            return dict(result, failed=True, rebooted=True, elapsed=round(time.monotonic() - start, 1),
                        msg=f"the terminal did not come back within {args['reboot_timeout']:g}s of its "
                            f"reboot: {exc}")
        return dict(result, changed=True, rebooted=True, elapsed=round(time.monotonic() - start, 1))

    def _run(self, command):
        """One command on the terminal over the task's connection, no module: rc, stdout, stderr."""
        out = self._low_level_execute_command(command, sudoable=True)
        return {"rc": out.get("rc", 1), "stdout": out.get("stdout", ""), "stderr": out.get("stderr", "")}

    def _reset(self):
        """Drop the SSH master connection: it died with the terminal's old boot."""
        with contextlib.suppress(AnsibleConnectionFailure):
            self._connection.reset()

    def _address(self):
        """The terminal's SSH host and port, or None when the connection has no such options."""
        try:
            host = self._connection.get_option("host")
            port = self._connection.get_option("port") or 22
        except (KeyError, AnsibleError):  # a connection plugin without them: no probe, SSH only
            return None
        return (host, int(port)) if host else None

    def _port_answers(self, address, timeout):
        if address is None:
            return True
        try:
            with socket.create_connection(address, timeout=timeout):
                return True
        except OSError:
            return False

    def _wait_for_new_boot(self, boot_time_command, boot_id, deadline, connect_timeout):
        """Until the terminal answers over SSH with a boot id other than `boot_id`."""
        address = self._address()
        last_ssh = time.monotonic()
        last = "it never answered on its SSH port"
        while True:
            time.sleep(POLL_INTERVAL)
            now = time.monotonic()
            if now > deadline:
                raise TerminalNotBack(last)
            if not self._port_answers(address, connect_timeout) and now - last_ssh < SSH_EVERY:
                continue
            last_ssh = now
            try:
                seen = self._run(boot_time_command)
            except AnsibleConnectionFailure as exc:
                last = f"SSH did not connect: {_last_line(exc)}"
                self._reset()
                continue
            current = seen["stdout"].strip()
            if seen["rc"] == 0 and current and current != boot_id:
                return
            last = ("it still ran its boot from before the reboot" if current == boot_id
                    else f"its boot id could not be read (rc {seen['rc']})")

    def _wait_for_test(self, test_command, deadline):
        """Until `test_command` succeeds on the terminal (its payment app is up and answering)."""
        while True:
            try:
                test = self._run(test_command)
            except AnsibleConnectionFailure as exc:
                test = {"rc": None, "stdout": "", "stderr": str(exc)}
                self._reset()
            if test["rc"] == 0:
                return
            if time.monotonic() > deadline:
                raise TerminalNotBack(f"it is up but '{test_command}' still fails (rc {test['rc']}): "
                                      f"{test['stderr'].strip() or test['stdout'].strip()}")
            time.sleep(POLL_INTERVAL)
