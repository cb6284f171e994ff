"""What the fault suite's fixtures, cases and tests share: the kit, the releases, the fault actions."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import labkit
from labkit import ROOT, STATE, VAULT

sys.path.insert(0, str(ROOT / "lab"))
# The faults are applied in this process: no process start between seeing a moment and acting on it.
from poslab import faults as labfaults
from poslab import fleet as labfleet

TERMINALS = 18
SEED = 1
BASELINE, UPGRADE = "2026.11.0", "2026.12.0"
KIT = labkit.Kit(labkit.new_output_dir("posfleet-faults-"))
# One batch for the whole fleet (every terminal is its own case, so they run side by side), no error
# budget (one case's failure must not stop the others), and short waits where a variable exists.
FAST = ["-e", "update_canary_per_model=100%", "-e", '{"update_waves": [100]}',
        "-e", '{"update_max_failed_pct": null}', "-e", "pos_quiesce_timeout=8",
        "-e", "pos_package_timeout=6", "-e", "pos_data_sync_timeout=6",
        # A lab terminal boots in seconds: 30 s is long enough to see one come back after a power cut.
        "-e", "update_recovery_timeout=30"]
# What the summary prints: filled by the fixtures and by pytest_runtest_logreport.
SUMMARY = {"results": {}, "ledger": None, "runs": []}


def start_update(release, *extra):
    """update.yml in the background, in its own process group (so that it can be killed whole)."""
    argv = ["ansible-playbook", "playbooks/update.yml", "-e", f"update_release={release}", *FAST, *extra, *VAULT]
    proc = subprocess.Popen(argv, cwd=ROOT, env=KIT.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    proc.label = f"update {release} {' '.join(extra)}".strip()
    proc.started = time.monotonic()
    return proc


def kill_control_node(proc):
    """SIGKILL an ansible-playbook started by start_update and every process under it.

    Killing its process group is not enough: Ansible's worker processes each start a session of their
    own (setsid), so they would outlive the kill as orphans, blocked for ever. They are found by
    their parent before anything is killed, and killed by PID.
    """
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, grown = {proc.pid}, True
    while grown:
        below = {pid for pid, parent in parents.items() if parent in tree} - tree
        grown = bool(below)
        tree |= below
    for pid in sorted(tree):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def finish(proc, timeout=600, note=""):
    """Wait for a run started with start_update; log and time it like any command."""
    output, _ = proc.communicate(timeout=timeout)
    KIT.log(proc.args, output, note)
    label = proc.label + (f" ({note.strip()})" if note else "")
    SUMMARY["runs"].append((label, round(time.monotonic() - proc.started)))
    return subprocess.CompletedProcess(proc.args, proc.returncode, output, "")


def update(release, *extra, timeout=600):
    return finish(start_update(release, *extra), timeout)


def report_of(output):
    """The report.json of the run that printed `output` (several runs may share the report directory)."""
    match = re.search(r"posfleet: report (\S+)/report\.html", output)
    assert match, f"the run wrote no report:\n{output[-3000:]}"
    return json.loads((Path(match.group(1)) / "report.json").read_text())


def fault(kind, *args):
    """An action that applies `poslab fault SERIAL KIND ARGS` to the terminal it is given."""
    def act(serial):
        labfaults.apply(labfleet.find(serial), kind, [str(a) for a in args])
    act.__doc__ = f"{kind} {' '.join(str(a) for a in args)}".strip()
    return act


def versions(row):
    """What a terminal runs, as one comparable tuple: the app and every pack."""
    packs = row.get("packs") or {}
    return (row.get("app_version"), packs.get("params"), packs.get("catalog"), packs.get("merchant"))


def selling(row):
    return row.get("healthy") is True and row.get("state") in ("idle", "in-transaction")


def one_app(row):
    """The app posd runs is the one installed (no other waits for the next boot)."""
    return row.get("installed_app", row.get("app_version")) == row.get("app_version")


# The app as installed on the flash, which a bundle terminal runs after its next boot: posd's own
# answer shows only the app it started with.
INSTALLED_APP = ("if [ -L /opt/pos/app/current ]; then readlink /opt/pos/app/current; "
                 "else dpkg-query -W -f '${Version} ${db:Status-Abbrev}' posd; fi")


def installed_app(serial):
    words = KIT.poslab("exec", serial, "--", "sh", "-c", INSTALLED_APP, check=False).stdout.split()
    # dpkg: "1.0.0 ii" is installed; any other status (half-installed, half-configured) is kept in view.
    return words[0] if len(words) == 1 or words[1:] == ["ii"] else " ".join(words) or "unknown"


def wait_in_service(timeout):
    """Wait, at most `timeout` seconds, until no terminal is in maintenance; whether that happened.

    It only waits: the tests that follow say which terminal is not selling, and why, if one is left.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = KIT.status()
        if all(r["reachable"] and r["state"] not in ("maintenance", "unknown") for r in rows.values()):
            return True
        time.sleep(2)
    return False


def wait_all_answering(timeout=120):
    """Every terminal powered, on ssh and answering posd's status; each row with `installed_app`."""
    deadline = time.monotonic() + timeout
    while True:
        rows = KIT.status()
        late = sorted(s for s, r in rows.items() if not r["reachable"] or r["state"] == "unknown")
        if not late:
            break
        assert time.monotonic() < deadline, f"{late} still not answering after {timeout}s"
        time.sleep(1)
    with ThreadPoolExecutor(max_workers=8) as pool:
        for row, app in zip(rows.values(), pool.map(installed_app, rows)):
            row["installed_app"] = app
    return rows


def os_state(serials):
    """{serial: ((name, version, dpkg status), ...)} of the OS packages the upgrade pins, as the terminal's dpkg sees
    them (`ii` installed; anything else is a package half-way). Empty for a model that takes no OS updates."""
    names = sorted({item["name"] for entry in release_manifest(UPGRADE)["models"].values()
                    for item in entry.get("os_packages", [])})

    def read(serial):
        out = KIT.poslab("exec", serial, "--", "dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\n",
                         *names, check=False).stdout
        return tuple(sorted(tuple(line.split()[:3]) for line in out.splitlines() if line.strip()))

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(serials, pool.map(read, serials)))


def os_whole(state):
    """Every OS package of a terminal's os_state fully installed (dpkg status ii)."""
    return all(package[2] == "ii" for package in state)


def release_manifest(release):
    return yaml.safe_load((STATE / "build" / "releases" / release / "manifest.yml").read_text())
