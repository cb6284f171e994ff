"""The lab for integration tests: booted once per session, over real SSH, torn down at the end.

The host's namespaces, links and mounts are recorded before the lab boots, so the last test can
check that `poslab down` gave the host back exactly as it was.
"""

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
POSLAB = ROOT / "bin" / "poslab"
TERMINALS = int(os.environ.get("POSLAB_TEST_TERMINALS", "6"))
# Every run's reports (the posfleet_report callback) and everything the commands print, for the
# tests that read reports and the one that scans all outputs for secrets.
OUTPUT_DIR = Path(tempfile.mkdtemp(prefix="posfleet-it-"))
REPORT_DIR = OUTPUT_DIR / "reports"
COMMAND_LOG = OUTPUT_DIR / "commands.log"


def run(argv, check=True, timeout=300, env=None, input_text=None):
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                            input=input_text,
                            env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
                                     POSFLEET_REPORT_DIR=str(REPORT_DIR), **(env or {})),
                            check=False)
    with open(COMMAND_LOG, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(str(a) for a in argv)}\n{result.stdout}{result.stderr}\n")
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} exited {result.returncode}\nstdout:\n{result.stdout[-4000:]}\n"
                             f"stderr:\n{result.stderr[-4000:]}")
    return result


def poslab(*args, check=True, timeout=300, input_text=None):
    return run([POSLAB, *args], check=check, timeout=timeout, input_text=input_text)


def host_snapshot():
    """What the lab may add to the host and must take away again."""
    netns = run(["ip", "netns", "list"]).stdout.split("\n")
    links = [line.split(":")[1].strip().split("@")[0] for line in run(["ip", "-o", "link", "show"]).stdout.splitlines()]
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    # Loop devices (a lab's disk flash takes them), with what each is attached to.
    loops = [f"{path.name}:{loop_backing(path.name)}" for path in Path("/sys/block").glob("loop*")]
    return {"netns": sorted(n for n in netns if n), "links": sorted(links), "mounts": sorted(mounts),
            "loops": sorted(loops)}


def loop_backing(name):
    """The file loop device `name` (loop0) is attached to, or "" when it is free."""
    path = Path("/sys/block") / name / "loop" / "backing_file"
    return path.read_text().strip() if path.exists() else ""


def status():
    return {row["serial"]: row for row in json.loads(poslab("status", "--json").stdout)}


def latest_report():
    """report.json of the newest run."""
    return json.loads((REPORT_DIR / "latest" / "report.json").read_text())


def rows_by_serial(report):
    return {row["serial"]: row for row in report["terminals"]}


def wait_for(predicate, timeout=60, interval=0.5, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def host_before():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    # A lab left by an earlier run is not part of the host's own state.
    poslab("down")
    return host_snapshot()


@pytest.fixture(scope="session")
def lab(host_before):
    poslab("up", "--terminals", TERMINALS, "--seed", "1", timeout=600)
    terminals = list(status().values())
    yield {row["serial"]: row for row in terminals}
