"""Reaching into a running terminal from the host: run a command in its namespaces, ask posd."""

import json
import subprocess

from . import supervisor

TERMINAL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def exec_argv(terminal, argv):
    """The argv that runs `argv` inside the terminal, as its root sees it."""
    pid = supervisor.init_pid(terminal)
    if pid is None:
        raise SystemExit(f"poslab: terminal {terminal['serial']} is powered off or still booting")
    return ["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w",
            "env", "-i", f"PATH={TERMINAL_PATH}", "HOME=/root", *argv]


def run_in(terminal, argv, timeout=30, input_text=None):
    return subprocess.run(exec_argv(terminal, argv), capture_output=True, text=True, timeout=timeout,
                          input=input_text, check=False)


def posctl(terminal, op, **args):
    """Ask posd over its control socket; returns its JSON answer, or {"ok": False, "error": ...}."""
    words = ["posctl", op] + [f"{k}={v}" for k, v in args.items()]
    try:
        result = run_in(terminal, words, timeout=60)
    except SystemExit as error:
        return {"ok": False, "error": str(error)}
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"posctl {op} timed out"}
    try:
        return json.loads(result.stdout)
    except ValueError:
        return {"ok": False, "error": (result.stderr or result.stdout).strip()[-300:] or f"exit {result.returncode}"}
