"""The lab's auto-update service: ansible-rulebook running posfleet.fleet.auto_update on the control node.

It listens on the control node's lab address, so check-ins travel the lab bridge only. It runs
`update.yml` with the lab's vault, as the nightly runs do, against an inventory directory of its own in the
lab's state directory: ansible-rulebook copies a run's inventory into the run's private directory, so
that directory holds the lab's registry configuration with absolute paths, the lab's group_vars, the
lab's assignments and the vault secret as an inventory variable (an EDA controller gives that as a
credential instead). `poslab checkin up|down|status|assign`; `poslab down` stops it with the rest.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time

import yaml

from . import config
from .util import log, pid_running

DIR = config.STATE / "checkin"
PID = config.RUN / "rulebook.pid"
LOG = DIR / "rulebook.log"
PORT = 5080
ENDPOINT = f"http://{config.CONTROL_IP}:{PORT}/checkin"
STORE = DIR / "store.db"
KEYS = DIR / "keys"
INVENTORY = DIR / "inventory"
# The lab's assignments: an inventory source of its own, so that a test or the demo assigns a release
# without editing the repository's group_vars (operators set posfleet_release in group_vars).
ASSIGNMENTS = INVENTORY / "assignments.yml"
SECRETS_INVENTORY = INVENTORY / "secrets.yml"
LAB_INVENTORY = config.PROJECT / "inventories" / "lab"


def pid():
    try:
        found = int(PID.read_text())
    except (OSError, ValueError):
        return None
    return found if pid_running(found) else None


def _service_inventory():
    """The service's inventory directory: the lab's, made to survive being copied, plus the secret."""
    INVENTORY.mkdir(parents=True, exist_ok=True, mode=0o700)
    registry = yaml.safe_load((LAB_INVENTORY / "registry.posfleet.yml").read_text())
    shared = config.PROJECT / "inventories" / "shared"
    registry.update(models_file=str(shared / "models.yml"), regions_file=str(shared / "regions.yml"))
    (INVENTORY / "registry.posfleet.yml").write_text("# Written by poslab from inventories/lab.\n---\n"
                                                     + yaml.safe_dump(registry, sort_keys=False))
    shutil.copytree(LAB_INVENTORY / "group_vars", INVENTORY / "group_vars", dirs_exist_ok=True)
    _secrets_inventory()
    if not ASSIGNMENTS.exists():
        assign(None)


def assign(release):
    """Assign `release` to every lab terminal (None: none), as a group_vars line would."""
    INVENTORY.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = {"all": {"vars": {"posfleet_release": release}}} if release else {"all": {}}
    ASSIGNMENTS.write_text("# Written by `poslab checkin assign`.\n" + yaml.safe_dump(data))


def _secrets_inventory():
    """The lab vault's secrets.yml as a YAML inventory's variables (still vault-encrypted)."""
    text = config.VAULT_SECRETS.read_text()
    body = [line for line in text.splitlines() if line.strip() not in ("---",) and not line.startswith("#")]
    SECRETS_INVENTORY.write_text("# Written by poslab: the lab vault's secrets for the auto-update runs.\n"
                                 "all:\n  vars:\n" + "".join(f"    {line}\n" for line in body))
    SECRETS_INVENTORY.chmod(0o600)


def up(max_running=2, max_failures=3, backoff=300, report_dir=None, refresh=10):
    """Start the rulebook (or leave the running one) and wait until it takes check-ins."""
    if pid():
        log(f"check-in service already running (pid {pid()}), listening at {ENDPOINT}")
        return
    DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    KEYS.mkdir(parents=True, exist_ok=True, mode=0o700)
    config.RUN.mkdir(parents=True, exist_ok=True)
    _service_inventory()
    variables = DIR / "vars.yml"
    variables.write_text(yaml.safe_dump({
        "checkin_host": str(config.CONTROL_IP), "checkin_port": PORT, "checkin_store": str(STORE),
        "checkin_keys_dir": str(KEYS), "checkin_max_running": max_running, "checkin_max_failures": max_failures,
        "checkin_backoff": backoff, "checkin_inventory_refresh": refresh}))
    venv = config.PROJECT / ".venv" / "bin"
    env = dict(os.environ, PATH=f"{venv}:{os.environ.get('PATH', '')}",
               ANSIBLE_CONFIG=str(config.PROJECT / "ansible.cfg"), ANSIBLE_INVENTORY=str(INVENTORY),
               ANSIBLE_VAULT_PASSWORD_FILE=str(config.VAULT_PASSWORD), POSFLEET_CHECKIN_STORE=str(STORE))
    if report_dir:
        env["POSFLEET_REPORT_DIR"] = str(report_dir)
    with open(LOG, "ab") as logfile:
        proc = subprocess.Popen([str(venv / "ansible-rulebook"), "-r", "posfleet.fleet.auto_update",
                                 "--vars", str(variables), "-v"],
                                cwd=config.PROJECT, env=env, stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile,
                                start_new_session=True)
    PID.write_text(str(proc.pid))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"poslab: the check-in service exited (rc {proc.returncode}); see {LOG}")
        try:
            with socket.create_connection((str(config.CONTROL_IP), PORT), timeout=0.5):
                log(f"check-in service up (pid {proc.pid}), listening at {ENDPOINT}")
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"poslab: the check-in service did not listen at {ENDPOINT} in 90 s; see {LOG}")


def _descendants(root):
    """`root` and every process below it: the update runs ansible-runner starts are in sessions of their own."""
    children = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def down():
    """Stop the rulebook and the update runs it started."""
    found = pid()
    if not found:
        return
    tree = _descendants(found)
    for each in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while any(pid_running(each) for each in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    for each in tree:
        if pid_running(each):
            os.kill(each, signal.SIGKILL)
    PID.unlink(missing_ok=True)
    log("check-in service stopped")


def status():
    """The service's state and the store's summary, as JSON for `poslab checkin status`."""
    return json.dumps({"running": pid() is not None, "pid": pid(), "endpoint": ENDPOINT, "store": str(STORE),
                       "log": str(LOG)}, indent=1)
