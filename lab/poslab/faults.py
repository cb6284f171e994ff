"""`poslab fault SERIAL KIND [ARG]`: the things that go wrong in the field, on demand.

Each fault acts where the real one would: the cable (the host end of the terminal's veth), the
power (its init, killed without a shutdown), its flash, its battery, or its sales.
"""

import json
import os
import shutil
import signal
import time
import urllib.request

from . import config, net, supervisor
from . import terminal as term
from .util import log, run

KINDS = {
    "net-down": "pull the network cable",
    "net-up": "plug the cable back in and lift any rate limit",
    "slow": "limit the link to RATE (tc tbf), e.g. `slow 256kbit`; `slow off` lifts it",
    "power-cut": "cut the power at once (no shutdown); it boots again after ARG seconds (default 3)",
    "power-hold": "the next time the terminal goes down (a reboot, a power cut) it stays off for ARG seconds "
                  "(default 3600): a reboot that never comes back",
    "power-on": "end a power cut or a power-hold now: the terminal boots at once (or stays up)",
    "disk-full": "fill the terminal's flash, leaving ARG KiB free (default 0)",
    "disk-ok": "free the space disk-full took",
    "battery": "set the battery to PCT percent; add `charging` as a further word to plug in the charger",
    "txn-inflight": "start a sale that lasts ARG seconds (0: until released with txn-release)",
    "txn-release": "let a held sale finish",
    "txn-pending": "record ARG offline sales that wait for upload",
    "dpkg-hang": "the terminal's next dpkg run (an install, a configure) hangs before it starts, as a maintainer "
                 "script that never returns would; it hangs once (the rollback's dpkg after it works); "
                 "`dpkg-hang off` lifts it unfired",
    "dpkg-fail": "the terminal's next dpkg run fails at its end, after it has unpacked and configured its packages, "
                 "as a maintainer script failing late would; it fails once (the rollback's dpkg after it works); "
                 "`dpkg-fail off` lifts it unfired",
    "postinst-fail": "ca-certificates' maintainer script (postinst) fails the next time dpkg configures the package: "
                     "update-ca-certificates, which it runs, exits 1 once; `postinst-fail off` lifts it unfired",
    "postinst-slow": "ca-certificates' postinst takes SECONDS longer the next time dpkg configures the package "
                     "(the package half-configured meanwhile, as on a terminal short of CPU); `postinst-slow off` "
                     "lifts it unfired",
    "selftest-fail": "make posd's self-test fail while it runs app VERSION; `selftest-fail off` lifts it",
    "slow-reload": "posd takes SECONDS longer to answer each reload of its packs, as a terminal short of CPU "
                   "does; `slow-reload off` lifts it",
}
BALLAST = "/var/lib/pos/.poslab-ballast"
SELFTEST_FAIL = "/var/lib/possim/selftest-fail"  # read by posd's self_check
SLOW_RELOAD = "/var/lib/possim/slow-reload"  # read by posd's op_reload
# The faults that are a setting posd reads from a file: the file, what the argument is, the value written.
POSD_SETTINGS = {"selftest-fail": (SELFTEST_FAIL, "an app VERSION, or off", str),
                 "slow-reload": (SLOW_RELOAD, "SECONDS, or off", lambda seconds: str(float(seconds)))}
# A dpkg invoke hook (dpkg.cfg.d, read by every dpkg run on the terminal) that deletes itself and sleeps.
DPKG_HANG = "/etc/dpkg/dpkg.cfg.d/zz-poslab-hang"
# One that deletes itself and fails after dpkg's work (dpkg then exits 2 with every package installed).
DPKG_FAIL = "/etc/dpkg/dpkg.cfg.d/zz-poslab-fail"
# The dpkg faults: their hook file, and the hook (dpkg.cfg syntax) that deletes it and then acts.
DPKG_HOOKS = {"dpkg-hang": (DPKG_HANG, f'pre-invoke "rm -f {DPKG_HANG}; exec sleep 86400"\n'),
              "dpkg-fail": (DPKG_FAIL, f'post-invoke "rm -f {DPKG_FAIL}; exit 1"\n')}

# The postinst faults act through a command ca-certificates' postinst runs on every configure: a stand-in
# for it in /usr/local/sbin, which comes before /usr/sbin in root's PATH (sshd's, so the update's dpkg and
# its maintainer scripts find it first). No package owns /usr/local, so dpkg --verify never sees it. The
# stand-in deletes itself before it acts: it fires once, and a power cut while it sleeps leaves nothing.
POSTINST_STUB = "/usr/local/sbin/update-ca-certificates"
POSTINST_STUBS = {
    "postinst-fail": ("", lambda _args: 'echo "poslab fault postinst-fail: update-ca-certificates fails" >&2\n'
                                         "exit 1\n"),
    "postinst-slow": ("SECONDS", lambda args: f"sleep {float(args[0]):g}\n"
                                               'exec /usr/sbin/update-ca-certificates "$@"\n'),
}


def apply(terminal, kind, args):
    if kind not in KINDS:
        raise SystemExit(f"poslab: unknown fault {kind!r}; one of: " +
                         "; ".join(f"{k} ({v})" for k, v in KINDS.items()))
    veth = net.terminal_veth(terminal)
    if kind == "net-down":
        run(["ip", "link", "set", veth, "down"])
    elif kind == "net-up":
        run(["tc", "qdisc", "del", "dev", veth, "root"], check=False)
        run(["ip", "link", "set", veth, "up"])
    elif kind == "slow":
        rate = need(args, "RATE, e.g. 256kbit, or off")
        if rate == "off":
            run(["tc", "qdisc", "del", "dev", veth, "root"], check=False)
        else:
            # Shapes what the terminal receives: the direction a download takes.
            run(["tc", "qdisc", "replace", "dev", veth, "root", "tbf", "rate", rate, "burst", "16kbit",
                 "latency", "500ms"])
    elif kind == "power-cut":
        delay = float(args[0]) if args else 3.0
        pid = supervisor.init_pid(terminal)
        if pid is None:
            raise SystemExit(f"poslab: terminal {terminal['serial']} is already powered off")
        (supervisor.terminal_dir(terminal) / "power-off-until").write_text(str(time.time() + delay))
        os.kill(pid, signal.SIGKILL)
    elif kind == "power-hold":
        # The supervisor reads this only once the terminal's init has exited, so it waits for the
        # terminal's own next shutdown.
        delay = float(args[0]) if args else 3600.0
        (supervisor.terminal_dir(terminal) / "power-off-until").write_text(str(time.time() + delay))
    elif kind == "power-on":
        (supervisor.terminal_dir(terminal) / "power-off-until").unlink(missing_ok=True)
    elif kind == "disk-full":
        keep_kib = int(args[0]) if args else 0
        script = (f'free=$(( $(stat -f -c "%a*%S" /) / 1024 - {keep_kib} )); '
                  f'[ "$free" -gt 0 ] && fallocate -l "${{free}}K" {BALLAST}.new && mv {BALLAST}.new {BALLAST}; '
                  f'df -k / | tail -1')
        result = term.run_in(terminal, ["sh", "-c", script])
        log(result.stdout.strip())
    elif kind == "disk-ok":
        term.run_in(terminal, ["rm", "-f", BALLAST, BALLAST + ".new"])
    elif kind in DPKG_HOOKS:
        path, hook = DPKG_HOOKS[kind]
        if args[:1] == ["off"]:
            term.run_in(terminal, ["rm", "-f", path])
        else:
            term.run_in(terminal, ["sh", "-c", f'mkdir -p "$(dirname {path})" && printf %s "$1" > {path}', "sh", hook])
    elif kind in POSTINST_STUBS:
        wanted, body = POSTINST_STUBS[kind]
        if args[:1] == ["off"]:
            term.run_in(terminal, ["rm", "-f", POSTINST_STUB])
        else:
            if wanted:
                need(args, wanted)
            script = f'#!/bin/sh\nrm -f "$0"\n{body(args)}'
            term.run_in(terminal, ["sh", "-c", f'mkdir -p "$(dirname {POSTINST_STUB})" && printf %s "$1" > '
                                               f'{POSTINST_STUB} && chmod 755 {POSTINST_STUB}', "sh", script])
    elif kind in POSD_SETTINGS:
        path, wanted, value_of = POSD_SETTINGS[kind]
        value = need(args, wanted)
        if value == "off":
            term.run_in(terminal, ["rm", "-f", path])
        else:
            term.run_in(terminal, ["sh", "-c", f'mkdir -p "$(dirname {path})" && echo "$1" > {path}', "sh",
                                   value_of(value)])
    elif kind == "battery":
        pct = int(need(args, "PCT"))
        charging = "1" if "charging" in args[1:] else "0"
        term.run_in(terminal, ["sh", "-c", f"mkdir -p /var/lib/possim && echo {pct} > /var/lib/possim/battery"
                                           f" && echo {charging} > /var/lib/possim/charging"])
    else:
        answer = {
            "txn-inflight": lambda: term.posctl(terminal, "hold_sale", seconds=float(args[0]) if args else 0),
            "txn-release": lambda: term.posctl(terminal, "release_sale"),
            "txn-pending": lambda: term.posctl(terminal, "make_pending", count=int(need(args, "N"))),
        }[kind]()
        if not answer.get("ok"):
            raise SystemExit(f"poslab: {kind} on {terminal['serial']}: {answer.get('error')}")
    log(f"{terminal['serial']}: {kind} {' '.join(args)}".rstrip())


def need(args, what):
    if not args:
        raise SystemExit(f"poslab: this fault needs {what}")
    return args[0]


def acquirer(mode):
    """Take the acquirer host down or bring it back (it answers 503 while down)."""
    request = urllib.request.Request(f"{config.ACQUIRER_URL}/v1/admin/mode", method="POST",
                                     data=json.dumps({"mode": mode}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        log(f"acquirer: {response.read().decode().strip()}")




DP_ACTIONS = {
    "corrupt": "change bytes in the middle of FILE (a path under the distribution point's root), same size",
    "tamper": "change the manifest of release ARG, so that its signature no longer matches",
    "restore": "put back every file corrupt or tamper changed",
}


def distribution_point(region, action, args):
    """Damage what a region's distribution point serves, as a bad mirror or an attacker would.

    The original is moved aside (into the lab's state, never served) and a changed copy written in
    its place, so that a file the build or another region shares is never changed in place;
    `restore` moves the originals back.
    """
    if action not in DP_ACTIONS:
        raise SystemExit(f"poslab: unknown distribution point fault {action!r}; one of: " +
                         "; ".join(f"{k} ({v})" for k, v in DP_ACTIONS.items()))
    if region not in config.load_regions():
        raise SystemExit(f"poslab: no region {region!r}; one of: {', '.join(sorted(config.load_regions()))}")
    root = (config.REPO / region).resolve()
    saved = config.STATE / "dp-saved" / region
    if action == "restore":
        for original in sorted(p for p in saved.rglob("*") if p.is_file()) if saved.exists() else []:
            os.replace(original, root / original.relative_to(saved))
        shutil.rmtree(saved, ignore_errors=True)
        log(f"distribution point {region}: restored")
        return
    if action == "corrupt":
        relative = need(args, "a FILE under the distribution point, e.g. pool/<sha256>/<name>")
    else:
        relative = f"releases/{need(args, 'a RELEASE id')}/manifest.yml"
    path = (root / relative).resolve()
    if root not in path.parents or not path.is_file():
        raise SystemExit(f"poslab: {relative} is not a file on the {region} distribution point")
    data = path.read_bytes()
    if action == "corrupt":
        middle = len(data) // 2
        changed = data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64]) + data[middle + 64:]
    else:
        changed = data.replace(b"\ndescription: ", b"\ndescription: TAMPERED ", 1)
        if changed == data:
            changed = data + b"# tampered\n"
    keep = saved / path.relative_to(root)
    if not keep.exists():
        keep.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, keep)
    tmp = path.with_name(path.name + ".poslab-tmp")
    tmp.write_bytes(changed)
    os.replace(tmp, path)
    log(f"distribution point {region}: {action} {relative}")
