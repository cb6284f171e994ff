"""The lab's power supply: keeps every terminal booted, reboots the ones that shut down.

One supervisor process runs per lab (started detached by `poslab up`). Each terminal is a child:
`nsenter` into the terminal's network namespace, `unshare` fresh PID, mount, UTS and IPC namespaces,
then lab/boot-terminal.sh as the namespace's PID 1. When a terminal's init exits (a reboot from
inside, or a power cut from `poslab fault`), the supervisor boots it again, after the power-off
delay if one was asked for. SIGHUP re-reads the fleet (terminals added or removed); SIGTERM shuts
every terminal down and exits.
"""

import os
import signal
import subprocess
import time
from pathlib import Path

from . import config, fleet, image, net
from .util import log, pid_running

POLL_S = 0.2


def terminal_dir(terminal):
    return config.TERMINALS / terminal["serial"]


def init_pid(terminal):
    """The host PID of the terminal's init (PID 1 inside), or None when it is powered off."""
    try:
        pid = int((terminal_dir(terminal) / "init.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if pid_running(pid) else None


class Supervisor:
    def __init__(self):
        self.procs = {}        # serial -> Popen of the terminal's unshare process
        self.wanted = {}       # serial -> terminal
        self.reload = True
        self.stopping = False
        self.base = str(image.base_image())
        self.py39 = image.python39() or ""

    def lower_dirs(self, terminal):
        return ":".join([str(config.LAYERS / f"model-{terminal['model']}"), str(config.LAYERS / "lab"), self.base])

    def boot(self, terminal):
        tdir = terminal_dir(terminal)
        (tdir / "init.pid").unlink(missing_ok=True)
        console = open(tdir / "console.log", "ab")  # noqa: SIM115 - handed to the child
        argv = ["nsenter", f"--net=/run/netns/{net.terminal_ns(terminal)}",
                "unshare", "--pid", "--mount", "--uts", "--ipc", "--fork", "--kill-child",
                "--propagation", "private",
                str(config.LAB / "boot-terminal.sh"), terminal["serial"], str(tdir), self.lower_dirs(terminal),
                self.py39]
        self.procs[terminal["serial"]] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console,
                                                          stderr=console)
        console.close()

    def record_init_pids(self):
        """unshare forks the namespace's PID 1; write its host PID where `poslab` finds it."""
        for serial, proc in self.procs.items():
            pidfile = config.TERMINALS / serial / "init.pid"
            if proc.poll() is not None or pidfile.exists():
                continue
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            try:
                pids = children.read_text().split()
            except OSError:
                continue
            if pids:
                pidfile.write_text(pids[0])

    def reconcile(self):
        self.wanted = {t["serial"]: t for t in fleet.load()}
        for serial in list(self.procs):
            if serial not in self.wanted:
                self.power_off(serial)
        for serial, terminal in self.wanted.items():
            if serial not in self.procs:
                self.boot(terminal)

    def power_off(self, serial):
        proc = self.procs.pop(serial, None)
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart_finished(self):
        now = time.time()
        for serial, proc in list(self.procs.items()):
            if proc.poll() is None or serial not in self.wanted:
                continue
            off_until = config.TERMINALS / serial / "power-off-until"
            try:
                until = float(off_until.read_text())
            except (OSError, ValueError):
                until = 0
            if until > now:
                continue
            off_until.unlink(missing_ok=True)
            self.boot(self.wanted[serial])

    def shutdown(self):
        """Ask every init to shut down (SIGTERM), then cut the power of the ones still up."""
        for serial in self.procs:
            pid = init_pid({"serial": serial})
            if pid:
                os.kill(pid, signal.SIGTERM)
        deadline = time.time() + 10
        while time.time() < deadline and any(p.poll() is None for p in self.procs.values()):
            time.sleep(POLL_S)
        for serial in list(self.procs):
            pid = init_pid({"serial": serial})
            if pid:
                os.kill(pid, signal.SIGKILL)
            self.power_off(serial)

    def run(self):
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "reload", True))
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        log(f"supervisor {os.getpid()} up")
        while not self.stopping:
            if self.reload:
                self.reload = False
                self.reconcile()
            self.record_init_pids()
            self.restart_finished()
            time.sleep(POLL_S)
        self.shutdown()
        log("supervisor down")


def main():
    config.RUN.mkdir(parents=True, exist_ok=True)
    config.SUPERVISOR_PID.write_text(str(os.getpid()))
    try:
        Supervisor().run()
    finally:
        config.SUPERVISOR_PID.unlink(missing_ok=True)
