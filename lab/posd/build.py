#!/usr/bin/env python3
"""Build posd for the terminals: a Debian package and a vendor bundle of the same release.

    python3 lab/posd/build.py --version 1.2.0 [--broken] --out DIR

writes DIR/posd_<version>_all.deb (for dpkg models) and DIR/posd-<version>.tar.gz (for bundle
models) and prints a JSON summary with their sizes and sha256.

The version, and the BROKEN flag of the deliberately broken release used in rollback drills, are
baked into the copied posd.py. Builds are reproducible: fixed mtimes (SOURCE_DATE_EPOCH, or a fixed
date), sorted archive members, root ownership and a gzip header without time or name, so that the
same version always has the same sha256 and a release pool can share artifacts by checksum.

Neither artifact depends on a python3 package: one model ships its own Python in /opt/python3.9.
The launchers pick the interpreter on the terminal, first match wins: $POS_PYTHON, the path in
/etc/pos/python, python3 on PATH.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
# 2024-01-01T00:00:00Z: any fixed instant will do; it only has to be the same on every build.
DEFAULT_EPOCH = 1704067200
VERSION_RE = re.compile(r"^[0-9][A-Za-z0-9.+~-]*$")  # a Debian upstream version without epoch

LAUNCHER = """#!/bin/sh
# posfleet launcher: runs {module} with the terminal's Python. Models keep Python in different
# places, so it is chosen here at run time, first match wins: $POS_PYTHON, the path written in
# /etc/pos/python, python3 on PATH.
py="${{POS_PYTHON:-}}"
if [ -z "$py" ] && [ -s "${{POS_ROOT:-}}/etc/pos/python" ]; then
    read -r py < "${{POS_ROOT:-}}/etc/pos/python" || true
fi
[ -n "$py" ] || py=python3
{locate}# Imported rather than run as a script, so that Python keeps and reuses its compiled bytecode
# (__pycache__ beside it): compiling posd.py at every start leaves about 2 MB more RSS behind. Not
# `-m`, because runpy costs about as much again. sys.path[0] becomes the lib directory, so the
# current directory can never shadow the module.
start="import sys; sys.path[0] = sys.argv.pop(1); import {module}"
exec "$py" -c "$start; sys.exit({module}.main(sys.argv[1:]))" "{lib}" "$@"
"""
# The bundle is reached through links (/usr/sbin/posd -> /opt/pos/app/current/bin/posd), so its
# launcher resolves its own path: a running posd then stays on the version directory it started
# from even when `current` is switched under it.
BUNDLE_LOCATE = 'lib="$(dirname "$(dirname "$(readlink -f "$0")")")/lib"\n'

# No Depends: python3 would be wrong for the model whose Python lives in /opt/python3.9.
CONTROL = """Package: posd
Version: {version}
Architecture: all
Maintainer: posfleet lab <posfleet@example.invalid>
Section: misc
Priority: optional
Description: POS application simulator for the posfleet lab
 posd sells synthetic test transactions, keeps a SQLite journal and answers a
 control socket used by fleet updates. posctl is its command-line client.
"""
PRERM = """#!/bin/sh
# Python writes posd's bytecode beside it at run time; dpkg does not know those files, so they go
# here, before the package's own files are removed or replaced.
set -e
rm -rf /usr/lib/posd/__pycache__
"""


class BuildError(Exception):
    """The build cannot go on; the message says what to fix."""


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def read_source(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as handle:
        return handle.read()


def bake(source, version, broken):
    """posd.py with the release version and BROKEN flag written into its marker lines."""
    replacements = (
        (r"^APP_VERSION = .*# posd-build: version$", f"APP_VERSION = {version!r}  # posd-build: version"),
        (r"^BROKEN = .*# posd-build: broken$", f"BROKEN = {bool(broken)!r}  # posd-build: broken"),
    )
    for pattern, line in replacements:
        source, count = re.subn(pattern, line, source, flags=re.MULTILINE)
        if count != 1:
            raise BuildError(f"posd.py: expected exactly one line matching {pattern!r}, found {count}")
    compile(source, "posd.py", "exec")  # a broken bake must fail here, not on a terminal
    return source


def launcher(module, lib, locate=""):
    return LAUNCHER.format(module=module, lib=lib, locate=locate)


def payload(version, broken):
    """The release's files, {relpath: (bytes, mode)}, shared by both artifact kinds."""
    return {
        "posd.py": (bake(read_source("posd.py"), version, broken).encode(), 0o644),
        "posctl.py": (read_source("posctl").encode(), 0o644),
        "VERSION": (f"{version}\n".encode(), 0o644),
    }


def deb_tree(version, broken):
    files = payload(version, broken)
    return {
        "DEBIAN/control": (CONTROL.format(version=version).encode(), 0o644),
        "DEBIAN/prerm": (PRERM.encode(), 0o755),
        "usr/sbin/posd": (launcher("posd", "/usr/lib/posd").encode(), 0o755),
        "usr/bin/posctl": (launcher("posctl", "/usr/lib/posd").encode(), 0o755),
        "usr/lib/posd/posd.py": files["posd.py"],
        "usr/lib/posd/posctl.py": files["posctl.py"],
        "usr/share/posd/VERSION": files["VERSION"],
    }


def bundle_tree(version, broken):
    files = payload(version, broken)
    tree = {
        "bin/posd": (launcher("posd", "$lib", BUNDLE_LOCATE).encode(), 0o755),
        "bin/posctl": (launcher("posctl", "$lib", BUNDLE_LOCATE).encode(), 0o755),
        "lib/posd.py": files["posd.py"],
        "lib/posctl.py": files["posctl.py"],
        "VERSION": files["VERSION"],
    }
    manifest = {"name": "posd", "version": version,
                "files": {rel: sha256_bytes(data) for rel, (data, _) in sorted(tree.items())}}
    tree["MANIFEST.json"] = ((json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(), 0o644)
    return tree


def stage(tree, root, epoch):
    """Write `tree` under `root` with fixed modes and mtimes (dpkg-deb reads them from disk)."""
    dirs = set()
    for rel, (data, mode) in tree.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
        os.chmod(path, mode)
        os.utime(path, (epoch, epoch))
        parent = os.path.dirname(rel)
        while parent:
            dirs.add(parent)
            parent = os.path.dirname(parent)
    # Directories last: writing a file into a directory changes the directory's mtime.
    for rel in sorted(dirs):
        os.chmod(os.path.join(root, rel), 0o755)
        os.utime(os.path.join(root, rel), (epoch, epoch))
    os.chmod(root, 0o755)
    os.utime(root, (epoch, epoch))


def build_deb(version, broken, out_path, epoch):
    with tempfile.TemporaryDirectory(prefix="posd-deb-") as tmp:
        root = os.path.join(tmp, "root")
        os.mkdir(root)
        stage(deb_tree(version, broken), root, epoch)
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch))
        result = subprocess.run(
            ["dpkg-deb", "--build", "--root-owner-group", "-Zxz", root, out_path + ".tmp"],
            env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            if os.path.exists(out_path + ".tmp"):
                os.unlink(out_path + ".tmp")
            raise BuildError(f"dpkg-deb failed: {(result.stderr or result.stdout).strip()}")
    os.replace(out_path + ".tmp", out_path)


def tar_member(name, mode, epoch, size=0, is_dir=False):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.mode, info.mtime, info.size = mode, epoch, size
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def build_bundle(version, broken, out_path, epoch):
    """A tar.gz whose top directory is `<version>/`, ready to unpack into /opt/pos/app/."""
    tree = bundle_tree(version, broken)
    dirs = sorted({os.path.dirname(rel) for rel in tree if os.path.dirname(rel)})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(tar_member(version, 0o755, epoch, is_dir=True))
        for rel in dirs:
            tar.addfile(tar_member(f"{version}/{rel}", 0o755, epoch, is_dir=True))
        for rel in sorted(tree):
            data, mode = tree[rel]
            tar.addfile(tar_member(f"{version}/{rel}", mode, epoch, size=len(data)), io.BytesIO(data))
    # filename="" and mtime=0 keep the gzip header free of anything that changes between builds.
    with open(out_path + ".tmp", "wb") as handle, \
            gzip.GzipFile(filename="", mode="wb", fileobj=handle, mtime=0) as gz:
        gz.write(raw.getvalue())
    os.replace(out_path + ".tmp", out_path)


def describe(path):
    with open(path, "rb") as handle:
        data = handle.read()
    return {"path": path, "size": len(data), "sha256": sha256_bytes(data)}


def build(version, broken, out_dir):
    if not VERSION_RE.match(version):
        raise BuildError(f"version {version!r} is not a plain Debian version like 1.2.0")
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))
    os.makedirs(out_dir, exist_ok=True)
    deb = os.path.join(out_dir, f"posd_{version}_all.deb")
    bundle = os.path.join(out_dir, f"posd-{version}.tar.gz")
    build_deb(version, broken, deb, epoch)
    build_bundle(version, broken, bundle, epoch)
    return {"name": "posd", "version": version, "broken": bool(broken),
            "artifacts": {"deb": describe(deb), "bundle": describe(bundle)}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--version", required=True, help="release version, e.g. 1.2.0")
    parser.add_argument("--broken", action="store_true",
                        help="build the deliberately broken release (health fails) for rollback drills")
    parser.add_argument("--out", required=True, help="directory for the artifacts")
    args = parser.parse_args(argv)
    try:
        summary = build(args.version, args.broken, args.out)
    except (BuildError, OSError) as exc:
        print(f"build.py: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
