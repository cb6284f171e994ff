"""Small helpers every part of the lab uses: running commands and saying what happens."""

import subprocess
import sys
import time

_START = time.monotonic()


def pid_running(pid):
    """True if the process runs; a zombie (dead, not yet reaped by its parent) does not count."""
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="utf-8") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return False
    return state not in ("Z", "X")


def log(message):
    """One progress line on stderr, with the seconds since the command started."""
    print(f"poslab [{time.monotonic() - _START:5.1f}s] {message}", file=sys.stderr, flush=True)


def run(argv, check=True, input_text=None, env=None):
    """Run a command; on failure exit with the command and its own error output, not a traceback."""
    result = subprocess.run(argv, capture_output=True, text=True, input=input_text, check=False,
                            env=env)
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-2000:]
        raise SystemExit(f"poslab: `{' '.join(map(str, argv))}` failed (exit {result.returncode}): {detail}")
    return result
