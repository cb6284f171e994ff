"""What the lab suites share: running commands with a command log and a report directory, the fleet's
state as `poslab` reports it, and what a terminal's flash holds, read from the host.

    kit = labkit.Kit(labkit.new_output_dir("posfleet-faults-"))
    kit.poslab("up", "--terminals", 6)
    kit.playbook("update.yml", "-e", "update_release=2026.12.0", *labkit.VAULT)

Each suite makes its own Kit so that its reports and its command log stay apart (the secret scan of
a suite reads exactly what it wrote).
"""

import json
import os
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POSLAB = ROOT / "bin" / "poslab"
STATE = Path(os.environ.get("POSLAB_STATE", "/var/lib/poslab"))
VAULT = ["-e", f"@{STATE}/vault/secrets.yml", "--vault-password-file", str(STATE / "vault" / "password")]


def new_output_dir(prefix):
    return Path(tempfile.mkdtemp(prefix=prefix))


class Kit:
    """Runs commands from the project root with the lab's environment; logs every one."""

    def __init__(self, output_dir):
        self.output_dir = Path(output_dir)
        self.report_dir = self.output_dir / "reports"
        self.command_log = self.output_dir / "commands.log"

    def env(self, extra=None):
        return dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), POSFLEET_REPORT_DIR=str(self.report_dir),
                    **(extra or {}))

    def log(self, argv, stdout, stderr):
        with open(self.command_log, "a", encoding="utf-8") as log:
            log.write(f"$ {' '.join(str(a) for a in argv)}\n{stdout}{stderr}\n")

    def run(self, argv, check=True, timeout=300, input_text=None):
        argv = [str(a) for a in argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, input=input_text,
                                env=self.env(), check=False)
        self.log(argv, result.stdout, result.stderr)
        if check and result.returncode != 0:
            raise AssertionError(f"{argv} exited {result.returncode}\nstdout:\n{result.stdout[-4000:]}\n"
                                 f"stderr:\n{result.stderr[-4000:]}")
        return result

    def poslab(self, *args, check=True, timeout=300, input_text=None):
        return self.run([POSLAB, *args], check=check, timeout=timeout, input_text=input_text)

    def playbook(self, name, *args, check=True, timeout=900):
        return self.run(["ansible-playbook", f"playbooks/{name}", *args], check=check, timeout=timeout)

    def status(self):
        """{serial: row of `poslab status --json`}."""
        return {row["serial"]: row for row in json.loads(self.poslab("status", "--json").stdout)}

    def ledger(self):
        """`poslab ledger --json`: {"terminals": [...], "totals": {...}} (exit 1 is a finding, not an error)."""
        return json.loads(self.poslab("ledger", "--json", check=False).stdout)

    def latest_report(self):
        return json.loads((self.report_dir / "latest" / "report.json").read_text())


def rows_by_serial(report):
    return {row["serial"]: row for row in report["terminals"]}


def flash(serial, path):
    """A terminal file as its flash holds it, read from the host: it works while the terminal is off
    or cut off, and costs no process. Only what the terminal wrote is there (the overlay's upper
    layer), which is everything an update writes."""
    return STATE / "terminals" / serial / "flash" / "upper" / path.lstrip("/")
