"""Run one command and report the CPU its whole process tree used on this machine, as JSON.

    .venv/bin/python bench/tree_cpu.py OUT.json -- ansible-playbook ...

The command's stdout and stderr go to this process's. What is counted: user + system CPU seconds of
every process that descends from the command and ends before this process does, read with
resource.getrusage(RUSAGE_CHILDREN). For ansible-playbook that is the main process, its forks
(workers), the modules that run on the control node (delegate_to: localhost, the action plugins), the
`ssh` and `rsync` clients, and the SSH ControlPersist masters: those detach from their parent, so
this process makes itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER) to inherit them, stops
them once the command has ended (they would otherwise live on for ControlPersist's 120 s) and reaps
them. Run the command with a control path directory of its own (ANSIBLE_SSH_CONTROL_PATH_DIR), so
that no other user's masters are touched; only this process's own children are ever signalled.

Not counted: anything on the terminals. A lab terminal is a set of namespaces whose processes
(sshd, the module's Python) descend from the lab's supervisor, not from this command, so they never
become its children, exactly as on a real fleet where they run on another machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def own_children():
    me = str(os.getpid())
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The ppid is the second field after the command name, which is in parentheses.
            if stat.rsplit(")", 1)[1].split()[1] == me:
                pids.append(int(entry.name))
    return pids


def reap_all(timeout=10.0):
    """Stop the orphans this subreaper inherited (SSH masters) and reap every child; how many."""
    reaped = 0
    deadline = time.monotonic() + timeout
    for pid in own_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid:
            reaped += 1
            continue
        if time.monotonic() > deadline:
            for pid in own_children():
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
        time.sleep(0.05)


def main(argv):
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit(__doc__)
    out, command = Path(argv[0]), argv[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit("prctl(PR_SET_CHILD_SUBREAPER) failed: errno %d" % ctypes.get_errno())
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    started = time.monotonic()
    proc = subprocess.Popen(command)
    rc = proc.wait()
    wall = time.monotonic() - started
    orphans = reap_all()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {
        "rc": rc,
        "wall_s": round(wall, 3),
        "user_s": round(after.ru_utime - before.ru_utime, 3),
        "sys_s": round(after.ru_stime - before.ru_stime, 3),
        "cpu_s": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 3),
        "orphans_reaped": orphans,
        "loadavg_1m_before": round(load, 2),
    }
    out.write_text(json.dumps(result) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
