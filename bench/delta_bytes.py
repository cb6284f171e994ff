"""Bytes a terminal downloads for a catalog pack with about 1% of its records changed, measured offline.

No lab: the packs are the lab's (posfleet.packs, as `posfleet-release build` makes them for
releases/lab/baseline.yml -> upgrade.yml), the delta is the one the release builder publishes
(plugins/module_utils/pos_delta.py), and it is applied and checked here as a terminal does. Rows:

- full: the pack's .tar.gz, what a terminal without a usable base downloads;
- delta: our delta file (copy/insert on the uncompressed tar, lzma);
- floor: a general binary diff of the old to the new uncompressed tar, compressed hard. Every tool
  found is measured: `zstd -19 --patch-from` (zstd), `xdelta3 -9 -S none` then xz -9e (xdelta3),
  `bsdiff` (bzip2 inside); the floor is the smallest of them. Without any, the floor is xz -9e of a
  plain line diff (Python's difflib), and the output says so;
- rsync: `rsync -a -z -I --no-whole-file --stats` between two local directories (bytes sent plus
  received), for the unpacked pack (what ansible.posix.synchronize of the pack's files would move)
  and for the .tar.gz. A local estimate of rsync's protocol, not a measurement over a real link.

Targets (issue 7): delta <= 2x the floor and <= 5% of the full pack.

A last line (and `bundle` in the JSON) gives the same for the app bundle of bundle models, posd 1.0.0
-> 1.1.0 as lab/posd/build.py makes them: the full .tar.gz and our delta (no floor, no targets).

    .venv/bin/python bench/delta_bytes.py [--records 20000] [--changed-ratio 0.01] [--json PATH]

Prints a table and writes the figures as JSON (default bench/results/delta-bytes-<date>.json).
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import hashlib
import json
import lzma
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from posfleet import packs, release  # noqa: E402  (needs the path set above)

OLD, NEW = "2026.11.0", "2026.12.0"  # the lab's baseline and upgrade catalog versions
APP_OLD, APP_NEW = "1.0.0", "1.1.0"  # the lab's baseline and upgrade posd versions
XZ = 9 | lzma.PRESET_EXTREME


def tool_version(argv):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0].strip("* ") if lines else "version unknown"


def floor_zstd(work, old, new):
    out = subprocess.run(
        ["zstd", "-19", "-q", "-c", f"--patch-from={old}", str(new)], capture_output=True, check=True
    ).stdout
    return len(out), "zstd -19 --patch-from=old new (" + tool_version(["zstd", "--version"]) + ")"


def floor_xdelta3(work, old, new):
    out = subprocess.run(
        ["xdelta3", "-e", "-9", "-S", "none", "-c", "-s", str(old), str(new)], capture_output=True, check=True
    ).stdout
    return len(lzma.compress(out, preset=XZ)), "xdelta3 -e -9 -S none, then xz -9e (Python lzma)"


def floor_bsdiff(work, old, new):
    patch = work / "bsdiff.patch"
    subprocess.run(["bsdiff", str(old), str(new), str(patch)], capture_output=True, check=True)
    return patch.stat().st_size, "bsdiff old new (bzip2 inside)"


def floor_line_diff(old_bytes, new_bytes):
    old, new = old_bytes.split(b"\n"), new_bytes.split(b"\n")
    out = bytearray()
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag != "equal":
            out += b"%d,%d\n" % (i1, i2) + b"\n".join(new[j1:j2]) + b"\n"
    return len(lzma.compress(bytes(out), preset=XZ)), "xz -9e of a line diff (Python difflib), no tool needed"


def rsync_bytes(source, dest):
    """Bytes sent + received by a local rsync of the directory `source` onto `dest` (delta transfer forced)."""
    proc = subprocess.run(
        ["rsync", "-a", "-z", "-I", "--no-whole-file", "--stats", f"{source}/", f"{dest}/"],
        capture_output=True,
        text=True,
        check=True,
    )
    sent = re.search(r"Total bytes sent: ([\d,]+)", proc.stdout)
    received = re.search(r"Total bytes received: ([\d,]+)", proc.stdout)
    return int(sent.group(1).replace(",", "")) + int(received.group(1).replace(",", ""))


def write_tree(directory, contents):
    directory.mkdir(parents=True)
    for relpath, data in contents.items():
        (directory / relpath).write_bytes(data)


def measure(records, changed_ratio):
    old_files = {"catalog.csv": packs.catalog_csv(OLD, records, 0.0)}
    new_files = {"catalog.csv": packs.catalog_csv(NEW, records, changed_ratio)}
    old_tar, new_tar = packs.pack_tar("catalog", OLD, old_files), packs.pack_tar("catalog", NEW, new_files)
    old_archive = packs.pack_archive("catalog", OLD, old_files)
    full = packs.pack_archive("catalog", NEW, new_files)
    changed = sum(a != b for a, b in zip(old_files["catalog.csv"].splitlines(), new_files["catalog.csv"].splitlines()))
    result = {
        "records": records,
        "changed_ratio": changed_ratio,
        "changed_records": changed,
        "tar_bytes": len(new_tar),
        "full_bytes": len(full),
    }
    with tempfile.TemporaryDirectory(prefix="delta-bytes-") as tmp:
        work = Path(tmp)
        old_path, new_path = work / "old.tar", work / "new.tar"
        old_path.write_bytes(old_tar)
        new_path.write_bytes(new_tar)

        started = time.perf_counter()
        data = packs.delta.make_delta(old_tar, new_tar)
        made = time.perf_counter() - started
        (work / "delta").write_bytes(data)
        started = time.perf_counter()
        packs.delta.apply_delta(
            old_path, work / "delta", work / "rebuilt.tar", hashlib.sha256(new_tar).hexdigest(), len(new_tar)
        )
        applied = time.perf_counter() - started
        if (work / "rebuilt.tar").read_bytes() != new_tar:
            raise SystemExit("the delta did not rebuild the new tar byte for byte")
        result.update(delta_bytes=len(data), delta_make_s=round(made, 3), delta_apply_s=round(applied, 3))

        floors = {}
        for tool, measure_floor in (("zstd", floor_zstd), ("xdelta3", floor_xdelta3), ("bsdiff", floor_bsdiff)):
            if shutil.which(tool):
                size, how = measure_floor(work, old_path, new_path)
                floors[tool] = {"bytes": size, "how": how}
        size, how = floor_line_diff(old_tar, new_tar)
        floors["line_diff_xz"] = {"bytes": size, "how": how}
        binary = {name: item for name, item in floors.items() if name != "line_diff_xz"}
        floor_name = min(binary or floors, key=lambda name: (binary or floors)[name]["bytes"])
        result.update(floors=floors, floor=floor_name, floor_bytes=floors[floor_name]["bytes"])

        if shutil.which("rsync"):
            write_tree(work / "dir-new", packs.pack_contents("catalog", NEW, new_files))
            write_tree(work / "dir-old", packs.pack_contents("catalog", OLD, old_files))
            write_tree(work / "gz-new", {"catalog.tar.gz": full})
            write_tree(work / "gz-old", {"catalog.tar.gz": old_archive})
            result["rsync"] = {
                "unpacked_pack_bytes": rsync_bytes(work / "dir-new", work / "dir-old"),
                "archive_bytes": rsync_bytes(work / "gz-new", work / "gz-old"),
                "how": "local estimate: rsync -a -z -I --no-whole-file --stats between two local directories "
                "(bytes sent + received); " + tool_version(["rsync", "--version"]),
            }
    result["targets"] = {
        "delta_le_2x_floor": result["delta_bytes"] <= 2 * result["floor_bytes"],
        "delta_le_5pct_full": result["delta_bytes"] <= 0.05 * result["full_bytes"],
    }
    return result


def measure_bundle():
    """The app bundle of bundle models, posd 1.0.0 -> 1.1.0 (lab/posd/build.py): full .tar.gz and our delta."""
    with tempfile.TemporaryDirectory(prefix="delta-bytes-app-") as tmp:
        built = {version: release._build_app(version, False, Path(tmp) / version)["bundle"]
                 for version in (APP_OLD, APP_NEW)}
        old_tar = release.bundle_tar(built[APP_OLD]["path"], APP_OLD)
        new_tar = release.bundle_tar(built[APP_NEW]["path"], APP_NEW)
        data = packs.delta.make_delta(old_tar, new_tar)
    return {"from_version": APP_OLD, "version": APP_NEW, "full_bytes": built[APP_NEW]["size"],
            "tar_bytes": len(new_tar), "delta_bytes": len(data)}


def table(result):
    full, floor = result["full_bytes"], result["floor_bytes"]
    rows = [("full download (.tar.gz)", full), ("our delta", result["delta_bytes"])]
    rows += [(f"floor: {name}", item["bytes"]) for name, item in result["floors"].items()]
    if "rsync" in result:
        rows += [
            ("rsync, unpacked pack (local est.)", result["rsync"]["unpacked_pack_bytes"]),
            ("rsync, .tar.gz (local est.)", result["rsync"]["archive_bytes"]),
        ]
    lines = [
        f"catalog pack, {result['records']} records, {result['changed_records']} changed "
        f"({result['changed_records'] / result['records']:.2%}); uncompressed tar {result['tar_bytes']} bytes",
        f"{'method':<36} {'bytes':>9} {'% of full':>10} {'x floor':>8}",
    ]
    lines += [f"{name:<36} {size:>9} {100 * size / full:>9.2f}% {size / floor:>8.2f}" for name, size in rows]
    lines.append(f"floor used: {result['floor']} ({result['floors'][result['floor']]['how']})")
    lines.append(f"delta made in {result['delta_make_s']} s (control node), applied in {result['delta_apply_s']} s")
    lines.append(
        "targets: delta <= 2x floor: %s; delta <= 5%% of full: %s"
        % tuple("met" if ok else "MISSED" for ok in result["targets"].values())
    )
    if "bundle" in result:
        app = result["bundle"]
        lines.append(
            f"app bundle posd {app['from_version']} -> {app['version']}: full .tar.gz {app['full_bytes']} bytes, "
            f"our delta {app['delta_bytes']} bytes ({100 * app['delta_bytes'] / app['full_bytes']:.2f}%)"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20000, help="catalog rows (default: the lab's 20000)")
    parser.add_argument("--changed-ratio", type=float, default=0.01, help="share of prices changed (0.01)")
    parser.add_argument("--json", type=Path, help="where to write the figures (bench/results/delta-bytes-<date>.json)")
    args = parser.parse_args(argv)
    result = measure(args.records, args.changed_ratio)
    result["bundle"] = measure_bundle()
    today = datetime.date.today().isoformat()
    result.update(
        date=today,
        python=platform.python_version(),
        command=" ".join(["bench/delta_bytes.py", *(argv if argv is not None else sys.argv[1:])]),
    )
    print(table(result))
    path = args.json or ROOT / "bench" / "results" / f"delta-bytes-{today}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
