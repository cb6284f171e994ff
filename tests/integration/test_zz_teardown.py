"""Runs last (pytest orders files by name): a killed lab is cleaned up by `up`, and `down` leaves nothing."""

import os
import signal
import time
from pathlib import Path

from conftest import host_snapshot, poslab, run, status


def test_zz_killed_lab_is_cleaned_by_up_and_down_leaves_nothing(lab, host_before):
    pid = int(Path("/var/lib/poslab/run/supervisor.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    result = poslab("up", "--terminals", "2", "--seed", "1")
    assert "leftovers" in result.stderr
    assert len(status()) == 2
    poslab("down")
    assert host_snapshot() == host_before
    # No lab process is left. A command waiting for its turn at the lab (`flock /tmp/poslab.lock ...`,
    # several engineers sharing one machine's lab) and the commands that started this test name the
    # lab but are not part of it.
    left = [line for line in run(["pgrep", "-af", "poslab"], check=False).stdout.splitlines()
            if "poslab.lock" not in line and int(line.split()[0]) not in ancestors()]
    assert left == []


def ancestors():
    """The pids of this process and of every process above it."""
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            pid = int(handle.read().rsplit(")", 1)[1].split()[1])
    return pids
