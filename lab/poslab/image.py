"""The terminal image: a minimal Debian root built once, plus thin layers the lab lays over it.

Lower layers, top first, as the overlay stacks them:
  model-<name>  the factory-installed payment app, in the model's package style
  lab           posinit, the reboot commands, sshd settings and the lab's SSH public key
  base          debootstrap minbase with python3, openssh-server, sqlite3 and openssl (cached)

A terminal sees only these layers and its own flash; the control node's files are not in any of them.
"""

import glob
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from . import apt, config, packs
from .util import log, run

SUITE = "bookworm"
INCLUDE = ["python3", "openssh-server", "sqlite3", "openssl", "procps", "ca-certificates"]
FACTORY_APP_VERSION = "0.9.0"


def apt_mirror():
    """The Debian mirror this machine's apt already uses, so the lab downloads from nowhere new."""
    for uri in apt.host_uris():
        if "security" not in uri and "/debian" in uri:
            return uri
    raise SystemExit("poslab: found no Debian mirror in /etc/apt/sources.list* (an Ubuntu host's apt has "
                     "none): set POSLAB_MIRROR to a Debian mirror's URL, from which debootstrap builds the "
                     "terminal image")


def base_image():
    """Return the cached base root, building it with debootstrap the first time (about a minute)."""
    key = hashlib.sha256(f"{SUITE} {' '.join(INCLUDE)} v1".encode()).hexdigest()[:12]
    root = config.CACHE / f"base-{SUITE}-{key}"
    if (root / "rootfs" / "usr" / "bin" / "python3").exists():
        return root / "rootfs"
    mirror = os.environ.get("POSLAB_MIRROR") or apt_mirror()
    config.CACHE.mkdir(parents=True, exist_ok=True)
    # Build beside the cache and rename into place: a build killed half-way is never mistaken for
    # a finished image.
    for stale in config.CACHE.glob("build-*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=config.CACHE))
    log(f"building the terminal image (debootstrap {SUITE} minbase, about a minute, cached after)")
    run(["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}", SUITE, str(work / "rootfs"),
         mirror])
    # Every terminal gets host keys of its own at provisioning; the image's would be shared.
    for key_file in (work / "rootfs" / "etc" / "ssh").glob("ssh_host_*"):
        key_file.unlink()
    shutil.rmtree(work / "rootfs" / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    if root.exists():
        shutil.rmtree(root)
    work.rename(root)
    return root / "rootfs"


def python39():
    """A Python 3.9 on this machine to lend the oldest model, or None."""
    patterns = [os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9"), "/opt/python3.9/bin/python3.9"]
    for pattern in patterns:
        for binary in sorted(glob.glob(pattern)):
            return str(Path(binary).parent.parent)
    return None


def sale_interval():
    """Seconds between two sales of a lab terminal's posd (+-50 %): 6, or POSLAB_SALE_INTERVAL (the soak's 0.5)."""
    value = os.environ.get("POSLAB_SALE_INTERVAL", "6")
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0.5 <= seconds <= 3600:
        raise SystemExit(f"poslab: POSLAB_SALE_INTERVAL={value!r} is not a number of seconds from 0.5 to 3600")
    return seconds


def build_layers(models):
    """(Re)build the lab layer and one factory layer per model. Only call with no terminal running."""
    if config.LAYERS.exists():
        shutil.rmtree(config.LAYERS)
    lab = config.LAYERS / "lab"
    shutil.copytree(config.LAB / "terminal", lab, symlinks=True)
    ssh = lab / "root" / ".ssh"
    ssh.mkdir(parents=True, mode=0o700)
    shutil.copy(str(config.SSH_KEY) + ".pub", ssh / "authorized_keys")
    (ssh / "authorized_keys").chmod(0o600)
    # Python 3.9 for the older model is bind-mounted read-only at boot; its binary looks for
    # libpython in the build tree's path, which a terminal does not have, so the loader's default
    # directory gets a link. Where this machine has no 3.9, the path falls back to the image's python3.
    pybin = lab / "opt" / "python3.9" / "bin"
    pybin.mkdir(parents=True)
    (pybin / "python3.9").symlink_to("/usr/bin/python3")
    libdir = lab / "usr" / "lib" / "x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    (libdir / "libpython3.9.so.1.0").symlink_to("/opt/python3.9/lib/libpython3.9.so.1.0")
    etc_pos = lab / "etc" / "pos"
    etc_pos.mkdir(parents=True)
    (etc_pos / "posd.conf").write_text(
        f'{{"sale_interval_s": {sale_interval()}, "offline_ratio": 0.3, "sale_duration_s": 0.5,\n'
        f' "acquirer_url": "{config.ACQUIRER_URL}"}}\n')

    artifacts = build_app(FACTORY_APP_VERSION, config.STATE / "factory")
    base = base_image()
    write_factory_lists(base, models)
    for name, profile in models.items():
        layer = config.LAYERS / f"model-{name}"
        layer.mkdir(parents=True)
        install_factory_app(layer, lab, base, profile, artifacts)
        packs.write_factory_packs(layer / "var" / "lib" / "pos" / "packs", config.ACQUIRER_URL)


def write_factory_lists(base, models):
    """Write each dpkg-OS model's factory list (its profile's os.factory) from the image its terminals boot.

    The lab's image is its models' factory image: the release build checks an OS package set against these
    lists (posfleet.debs has the format). They follow the image, which follows the Debian mirror, so they are
    written here and not kept in the repository.
    """
    out = run(["dpkg-query", f"--admindir={base}/var/lib/dpkg", "-W", "-f",
               "${db:Status-Abbrev}\t${Package} ${Version} ${Architecture} ${Provides}\n"]).stdout
    lines = [line.split("\t", 1)[1].rstrip() for line in out.splitlines() if line.startswith("ii")]
    text = ("# Written by poslab from the lab's terminal image (lab/poslab/image.py): the packages its models' "
            "factory image has installed.\n" + "\n".join(sorted(lines)) + "\n")
    models_dir = config.PROJECT / "inventories" / "shared"
    for profile in models.values():
        os_profile = profile.get("os") or {}
        if os_profile.get("updates") == "dpkg" and os_profile.get("factory"):
            path = models_dir / os_profile["factory"]
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")


def build_app(version, out_dir):
    """Build posd as both a Debian package and a vendor bundle; return {style: artifact path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run([sys.executable, str(config.LAB / "posd" / "build.py"), "--version", version, "--out", str(out_dir)])
    return {"dpkg": out_dir / f"posd_{version}_all.deb", "bundle": out_dir / f"posd-{version}.tar.gz"}


def install_factory_app(layer, lab, base, profile, artifacts):
    """Install the factory app into a model layer the way the model's firmware would."""
    style = profile["package_style"]
    if style == "bundle":
        app = layer / "opt" / "pos" / "app"
        app.mkdir(parents=True)
        run(["tar", "-xzf", str(artifacts["bundle"]), "-C", str(app)])
        (app / "current").symlink_to(FACTORY_APP_VERSION)
        sbin = layer / "usr" / "sbin"
        sbin.mkdir(parents=True, exist_ok=True)
        (sbin / "posd").symlink_to("/opt/pos/app/current/bin/posd")
        (layer / "usr" / "bin").mkdir(parents=True, exist_ok=True)
        (layer / "usr" / "bin" / "posctl").symlink_to("/opt/pos/app/current/bin/posctl")
    elif style == "dpkg":
        # dpkg writes into its own database, so it runs in the image with the layer as the overlay's
        # upper directory, inside a throw-away mount namespace.
        work = config.LAYERS / ".work"
        mnt = config.LAYERS / ".mnt"
        work.mkdir(exist_ok=True)
        mnt.mkdir(exist_ok=True)
        script = (f'mount -t overlay overlay -o "lowerdir={lab}:{base},upperdir={layer},workdir={work}" "{mnt}" '
                  f'&& cp "{artifacts["dpkg"]}" "{mnt}/tmp/factory.deb" '
                  f'&& chroot "{mnt}" dpkg -i /tmp/factory.deb >/dev/null '
                  f'&& rm "{mnt}/tmp/factory.deb"')
        run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
        shutil.rmtree(work, ignore_errors=True)
        mnt.rmdir()
    else:
        raise SystemExit(f"poslab: model package_style {style!r} is not one the lab knows (dpkg, bundle); "
                         "fix inventories/shared/models.yml")
