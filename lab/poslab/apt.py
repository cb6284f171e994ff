"""The lab's own apt configuration: the terminal image's Debian suites, for building the lab's releases.

The terminals run Debian bookworm (image.SUITE), whatever the host runs. A release's OS packages are
resolved and downloaded by apt on the control node (posfleet-release build: `apt-cache policy`, `apt-get
download`), which would otherwise read the host's sources: on a Debian 13 or Ubuntu host those are other
suites, with other package names (libssl3t64) and versions. This configuration points apt at the image's
suite and its -updates and -security suites only, with package lists of its own under the lab's state,
and no installed packages (so that the host's never count as a candidate). The host's apt.conf.d (a proxy, say)
still applies. The lab's inventory gives it
to publish.yml (pos_release_apt_config), which runs the build with APT_CONFIG set to it.
"""

import glob
import os
import time
from pathlib import Path

from . import config
from .util import log, run

# Beside the cached image: it outlives `poslab down`, as the image does.
DIR = config.CACHE / "apt"
CONF = DIR / "apt.conf"
# The lists are fetched again when older than this: the security suite changes every few days.
REFRESH_S = 6 * 3600
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def host_uris():
    """The archive URLs of this machine's apt sources (one-line and deb822 formats), commented lines left out."""
    uris = []
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split()
            if path.endswith(".sources") and words[:1] == ["URIs:"]:
                uris.extend(words[1:])
            elif words[:1] == ["deb"]:
                uris.extend(w for w in words[1:] if "://" in w)
    return uris


def security_mirror(mirror):
    """The Debian security archive: POSLAB_SECURITY_MIRROR, the host's own when its apt has one, else the mirror's
    sibling (deb.debian.org/debian -> deb.debian.org/debian-security)."""
    if os.environ.get("POSLAB_SECURITY_MIRROR"):
        return os.environ["POSLAB_SECURITY_MIRROR"]
    for uri in host_uris():
        if uri.rstrip("/").endswith("/debian-security"):
            return uri
    return mirror.rstrip("/").rsplit("/", 1)[0] + "/debian-security"


def ensure(mirror, suite):
    """Write the configuration and fetch its package lists when they are missing or old; the apt.conf path."""
    lists = DIR / "state" / "lists"
    for sub in (lists / "partial", DIR / "cache" / "archives" / "partial", DIR / "etc" / "sources.list.d",
                DIR / "etc" / "preferences.d"):
        sub.mkdir(parents=True, exist_ok=True)
    (DIR / "status").touch()
    signed = f" [signed-by={KEYRING}]" if os.path.exists(KEYRING) else ""
    sources = (f"deb{signed} {mirror} {suite} main\n"
               f"deb{signed} {mirror} {suite}-updates main\n"
               f"deb{signed} {security_mirror(mirror)} {suite}-security main\n")
    conf = (f'Dir::Etc::SourceList "{DIR}/etc/sources.list";\n'
            f'Dir::Etc::SourceParts "{DIR}/etc/sources.list.d";\n'
            f'Dir::Etc::Preferences "{DIR}/etc/preferences";\n'
            f'Dir::Etc::PreferencesParts "{DIR}/etc/preferences.d";\n'
            f'Dir::State "{DIR}/state";\n'
            f'Dir::State::status "{DIR}/status";\n'
            f'Dir::Cache "{DIR}/cache";\n'
            'Acquire::Languages "none";\n'
            # apt-get download runs as whoever builds; the lists are root's, readable by all.
            'APT::Sandbox::User "root";\n')
    changed = False
    for path, text in ((DIR / "etc" / "sources.list", sources), (CONF, conf)):
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed = True
    fetched = [p for p in lists.glob("*_Packages*") if p.is_file()]
    if changed or not fetched or time.time() - min(p.stat().st_mtime for p in fetched) > REFRESH_S:
        log(f"fetching the package lists of {suite}, {suite}-updates and {suite}-security for the lab's releases")
        result = run(["apt-get", "update", "-qq"], check=False, env=dict(os.environ, APT_CONFIG=str(CONF)))
        problems = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith(("E:", "W:"))]
        if result.returncode != 0 or problems:
            # The lab still boots: only building a release with OS packages needs the lists.
            log("warning: apt-get update of the lab's suites did not fully work; a release with OS packages may not "
                f"build until it does: {' '.join(problems)[-600:] or result.returncode}")
    return CONF
