"""`poslab up` and `poslab down`: bring the fleet to the wanted size, or remove every trace of it."""

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import apt, checkin, config, flash, fleet, image, net, packs, services, supervisor
from .util import log, run


def require_root():
    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        raise SystemExit("poslab: the lab needs root on Linux (network namespaces, mounts); run it as root")


# --- leftovers ------------------------------------------------------------------------------------

def lab_mounts():
    """Mount points under the lab's state directory, deepest first."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            point = line.split()[4].replace("\\040", " ")
            if point == str(config.STATE) or point.startswith(str(config.STATE) + "/"):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def lab_pids():
    """PIDs of every process that lives in a lab network namespace or runs the lab's supervisor."""
    inodes = set()
    for name in net.existing_namespaces():
        with contextlib.suppress(OSError):
            inodes.add(os.stat(f"/run/netns/{name}").st_ino)
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if os.stat(entry / "ns" / "net").st_ino in inodes:
                pids.append(int(entry.name))
                continue
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # The supervisor, and a terminal's unshare process even when its namespace is already gone.
        if (b"_supervise" in cmdline and any(b"poslab" in part for part in cmdline)) or \
                any(part.endswith(b"/boot-terminal.sh") for part in cmdline):
            pids.append(int(entry.name))
    return pids


def down():
    """Stop everything of the lab and remove its namespaces, links, mounts and state."""
    require_root()
    started = time.monotonic()
    pid = services.alive(config.SUPERVISOR_PID)
    if pid:
        os.kill(pid, signal.SIGTERM)
        for _ in range(150):
            if not services.alive(config.SUPERVISOR_PID):
                break
            time.sleep(0.1)
    checkin.down()
    services.stop()
    # Whatever is left (a supervisor killed with -9, a stray `poslab exec`): these PIDs are the lab's
    # by construction, they live in its namespaces.
    for _ in range(3):
        pids = lab_pids()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
    net.teardown()
    for point in lab_mounts():
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    loops = flash.release(config.STATE)
    if config.STATE.exists():
        shutil.rmtree(config.STATE, ignore_errors=True)
    left = net.existing_namespaces() or lab_mounts() or net.link_exists(config.BRIDGE) or loops
    if left:
        raise SystemExit(f"poslab: could not remove everything; still there: {left}")
    log(f"lab removed in {time.monotonic() - started:.1f}s")


def stale():
    """True when lab leftovers exist but no supervisor runs them (an earlier run was killed)."""
    if services.alive(config.SUPERVISOR_PID):
        return False
    return bool(net.existing_namespaces() or net.link_exists(config.BRIDGE) or lab_mounts() or lab_pids())


# --- up -------------------------------------------------------------------------------------------

def ensure_ssh_key():
    config.SSH_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not config.SSH_KEY.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "poslab-control", "-f", str(config.SSH_KEY)])


def ensure_secrets():
    """The lab's release signing key and its vault of secrets, made fresh for every lab.

    Nothing secret is in the repository: the key pair and the backup encryption key are generated
    here, and the backup key is stored only inside an Ansible Vault file.
    """
    if not (config.RELEASE_KEY_DIR / "release.key").exists():
        run([str(config.PROJECT / "bin" / "posfleet-release"), "keygen", "--out", str(config.RELEASE_KEY_DIR)])
    if config.VAULT_SECRETS.exists():
        return
    config.VAULT_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(config.VAULT_PASSWORD, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
    vault = shutil.which("ansible-vault", path=str(config.PROJECT / ".venv" / "bin")) or "ansible-vault"
    # Only the lab's password file may be in play: a vault password set in the caller's environment
    # (molecule sets one) would make two default vault ids.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_VAULT")}
    encrypted = run([vault, "encrypt_string", "--vault-password-file", str(config.VAULT_PASSWORD),
                     "--stdin-name", "pos_backup_key"], input_text=secrets.token_hex(32), env=env).stdout
    fd = os.open(config.VAULT_SECRETS, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("---\n# The lab's backup encryption key, vault-encrypted; made by `poslab up`.\n" + encrypted)


def provision(terminal, models, flash_kind):
    """Give a new terminal its flash (of the model's size, lab/poslab/flash.py), identity, host keys and
    merchant pack."""
    tdir = supervisor.terminal_dir(terminal)
    flash.mount(tdir, f"poslab-flash-{terminal['serial']}", models[terminal["model"]]["storage_mb"], flash_kind)
    upper = tdir / "flash" / "upper"
    if (upper / "etc" / "pos" / "terminal.json").exists():
        return
    (upper / "etc" / "pos").mkdir(parents=True, exist_ok=True)
    identity = {k: terminal[k] for k in fleet.REGISTRY_COLUMNS if k != "ip"}
    (upper / "etc" / "pos" / "terminal.json").write_text(json.dumps(identity, indent=1) + "\n")
    ssh = upper / "etc" / "ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{terminal['serial']}",
         "-f", str(ssh / "ssh_host_ed25519_key")])
    packs.write_pack(upper / "var" / "lib" / "pos" / "packs", "merchant", "1", packs.merchant_files(terminal))
    if models[terminal["model"]]["battery"]:
        # A mobile terminal leaves the shelf partly charged and off the charger.
        sim = upper / "var" / "lib" / "possim"
        sim.mkdir(parents=True, exist_ok=True)
        (sim / "battery").write_text("85\n")
        (sim / "charging").write_text("0\n")


def write_known_hosts(terminals):
    lines = []
    for terminal in terminals:
        key = supervisor.terminal_dir(terminal) / "flash" / "upper" / "etc" / "ssh" / "ssh_host_ed25519_key.pub"
        keytype, blob = key.read_text().split()[:2]
        lines.append(f"{terminal['ip']} {keytype} {blob}")
        lines.append(f"{terminal['serial']} {keytype} {blob}")
    tmp = config.KNOWN_HOSTS.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(config.KNOWN_HOSTS)


def up(size, seed, wait=True, flash_kind="auto"):
    require_root()
    if stale():
        log("found leftovers of an earlier lab that is not running; cleaning them up first")
        down()
    models = config.load_models()
    regions = config.load_regions()
    running = services.alive(config.SUPERVISOR_PID)
    previous = fleet.load()
    if previous and len(previous) != size:
        log(f"resizing the fleet from {len(previous)} to {size} terminals")
    terminals = fleet.build(size, seed)
    if running and fleet.saved_seed() not in (None, seed):
        raise SystemExit(f"poslab: the running lab was made with --seed {fleet.saved_seed()}; "
                         "`poslab down` first to change it")
    config.STATE.mkdir(parents=True, exist_ok=True)
    ensure_ssh_key()
    ensure_secrets()
    if not running:
        image.base_image()
        log("building the lab and model layers")
        image.build_layers(models)
    # The lab's releases take their OS packages from the image's suites (lab/poslab/apt.py).
    apt.ensure(os.environ.get("POSLAB_MIRROR") or image.apt_mirror(), image.SUITE)
    net.ensure_bridge(regions)
    services.start(regions)
    net.ensure_terminals(terminals, regions)
    log(f"provisioning {len(terminals)} terminals")
    flash_kind = flash.choose(flash_kind, [models[t["model"]]["storage_mb"] for t in terminals])
    for terminal in terminals:
        provision(terminal, models, flash_kind)
    write_known_hosts(terminals)
    fleet.save(terminals, seed)
    if running:
        os.kill(running, signal.SIGHUP)
    else:
        start_supervisor()
    wanted = {t["serial"] for t in terminals}
    retire([t for t in previous if t["serial"] not in wanted])
    if wait:
        wait_reachable(terminals)
    log(f"lab up: {len(terminals)} terminals; registry at {config.REGISTRY_CSV}")


def retire(terminals):
    """Remove terminals the fleet no longer has, once the supervisor has powered them off."""
    deadline = time.monotonic() + 15
    while any(supervisor.init_pid(t) for t in terminals) and time.monotonic() < deadline:
        time.sleep(0.2)
    for terminal in terminals:
        net.remove_terminal(terminal)
        tdir = supervisor.terminal_dir(terminal)
        for point in lab_mounts():
            if point.startswith(str(tdir) + "/"):
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        flash.release(tdir)
        shutil.rmtree(tdir, ignore_errors=True)


def start_supervisor():
    config.RUN.mkdir(parents=True, exist_ok=True)
    with open(config.SUPERVISOR_LOG, "ab") as logfile:
        subprocess.Popen([str(config.PROJECT / "bin" / "poslab"), "_supervise"],
                         stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile, start_new_session=True)
    for _ in range(50):
        if services.alive(config.SUPERVISOR_PID):
            return
        time.sleep(0.1)
    raise SystemExit(f"poslab: the supervisor did not start; see {config.SUPERVISOR_LOG}")


def wait_reachable(terminals, timeout=90):
    """Wait until every terminal's sshd answers, printing progress.

    `timeout` counts from the last terminal that answered, not from the start: a large fleet on two cores
    takes minutes to boot (500 terminals about two), while one terminal that does not boot is still found
    within `timeout` of the others.
    """
    deadline = time.monotonic() + timeout
    pending = {t["serial"]: t["ip"] for t in terminals}
    last = -1
    while pending and time.monotonic() < deadline:
        for serial, address in list(pending.items()):
            try:
                with socket.create_connection((address, 22), timeout=0.3) as conn:
                    if re.match(rb"SSH-", conn.recv(8)):
                        del pending[serial]
            except OSError:
                pass
        if len(pending) != last:
            last = len(pending)
            deadline = time.monotonic() + timeout
            log(f"{len(terminals) - len(pending)}/{len(terminals)} terminals answer on ssh")
        if pending:
            time.sleep(0.5)
    if pending:
        raise SystemExit(f"poslab: {len(pending)} terminals did not boot ({timeout}s without one more answering): "
                         f"{sorted(pending)[:10]}; "
                         f"see {config.TERMINALS}/<serial>/console.log")
