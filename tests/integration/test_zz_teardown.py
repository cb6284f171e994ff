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
    # No lab process is left. `flock /tmp/poslab.lock ...` waiting for its turn at the lab (several
    # engineers sharing one machine's lab) names the lab but is not part of it.
    left = [line for line in run(["pgrep", "-af", "poslab"], check=False).stdout.splitlines()
            if line.split()[1:2] != ["flock"]]
    assert left == []
