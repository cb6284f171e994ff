"""The services around the terminals, in the hub namespace: nginx distribution points and the acquirer.

nginx is Debian's, started with a configuration of the lab's own (one server block per region, on
the region's distribution point address), so it never touches the host's nginx setup.
"""

import os
import signal
import subprocess
import sys
import time
import urllib.request

from . import config
from .util import log, pid_running, run

NGINX_DIR = config.STATE / "nginx"
ACQUIRER_DIR = config.STATE / "acquirer"
ACQUIRER_PID = config.RUN / "acquirer.pid"
NGINX_PID = NGINX_DIR / "nginx.pid"


def in_hub(argv):
    return ["nsenter", f"--net=/run/netns/{config.HUB_NS}", *argv]


def nginx_conf(regions):
    servers = []
    for name, region in sorted(regions.items()):
        root = config.REPO / name
        root.mkdir(parents=True, exist_ok=True)
        servers.append(f"""
    server {{
        # distribution point of region {name}
        listen {region['dp_ip']}:{region['dp_port']};
        root {root};
        autoindex on;
        location / {{ try_files $uri $uri/ =404; }}
    }}""")
    return f"""# Written by poslab: the lab's distribution points. Not the host's nginx configuration.
worker_processes 1;
pid {NGINX_PID};
error_log {NGINX_DIR}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    types {{ application/json json; text/plain txt sig; application/gzip gz; application/octet-stream deb; }}
    default_type application/octet-stream;
    access_log {NGINX_DIR}/access.log;
    client_body_temp_path {NGINX_DIR}/tmp;
    proxy_temp_path {NGINX_DIR}/tmp;
    fastcgi_temp_path {NGINX_DIR}/tmp;
    uwsgi_temp_path {NGINX_DIR}/tmp;
    scgi_temp_path {NGINX_DIR}/tmp;
    sendfile on;
    # Range requests are on by default for static files: a terminal resumes a broken download.
{''.join(servers)}
}}
"""


def alive(pidfile):
    """The PID in `pidfile` if that process is running; a zombie (killed, not yet reaped) is not."""
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return None
    return pid if pid_running(pid) else None


def start(regions):
    (NGINX_DIR / "tmp").mkdir(parents=True, exist_ok=True)
    conf = NGINX_DIR / "nginx.conf"
    conf.write_text(nginx_conf(regions))
    if not alive(NGINX_PID):
        run(in_hub(["nginx", "-c", str(conf), "-e", str(NGINX_DIR / "error.log")]))
    ACQUIRER_DIR.mkdir(parents=True, exist_ok=True)
    config.RUN.mkdir(parents=True, exist_ok=True)
    if not alive(ACQUIRER_PID):
        with open(ACQUIRER_DIR / "acquirer.log", "ab") as logfile:
            proc = subprocess.Popen(
                in_hub([sys.executable, str(config.LAB / "acquirer.py"),
                        "--listen", f"{config.ACQUIRER_IP}:{config.ACQUIRER_PORT}",
                        "--db", str(ACQUIRER_DIR / "ledger.db")]),
                stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile, start_new_session=True)
        ACQUIRER_PID.write_text(str(proc.pid))
    wait_http(f"{config.ACQUIRER_URL}/v1/health", "acquirer")
    for name, region in regions.items():
        wait_http(f"http://{region['dp_ip']}:{region['dp_port']}/", f"distribution point {name}")


def wait_http(url, what, timeout=15):
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError as error:
            if time.time() > deadline:
                raise SystemExit(f"poslab: {what} at {url} did not answer in {timeout}s ({error}); "
                                 f"see {config.STATE}/nginx/error.log and {ACQUIRER_DIR}/acquirer.log") from None
            time.sleep(0.2)


def stop():
    for pidfile in (NGINX_PID, ACQUIRER_PID):
        pid = alive(pidfile)
        if pid:
            os.kill(pid, signal.SIGTERM)
    log("services stopped")
