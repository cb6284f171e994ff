"""Delta sync of data packs: the delta format (plugins/module_utils/pos_delta.py) and pos_data_sync using it.

The format tests run in this interpreter; the module tests run pos_data_sync the way Ansible runs it on a
terminal (Python 3.9 when the machine has one) against the local distribution point of conftest.py.
Packs are made with posfleet.packs, exactly as the release builder makes them.
"""

from __future__ import annotations

import difflib
import hashlib
import lzma
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import tree_state

from posfleet import packs

REPO = Path(__file__).resolve().parents[2]


delta = packs.delta  # plugins/module_utils/pos_delta.py, as the release builder loads it
OLD, NEW = "2026.11.0", "2026.12.0"


def catalog(version, records=2000, changed_ratio=0.0):
    return {"catalog.csv": packs.catalog_csv(version, records, changed_ratio)}


def apply(tmp_path, base, data, target):
    (tmp_path / "base.tar").write_bytes(base)
    (tmp_path / "delta").write_bytes(data)
    out = tmp_path / "out.tar"
    delta.apply_delta(tmp_path / "base.tar", tmp_path / "delta", out, hashlib.sha256(target).hexdigest(), len(target))
    return out.read_bytes()


# --- the format ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "target"),
    [
        (packs.pack_tar("catalog", OLD, catalog(OLD)), packs.pack_tar("catalog", NEW, catalog(NEW, 2000, 0.01))),
        (packs.pack_tar("catalog", OLD, catalog(OLD)), packs.pack_tar("catalog", OLD, catalog(OLD))),
        (
            packs.pack_tar("params", OLD, packs.params_files(OLD, "http://a:1")),
            packs.pack_tar("params", NEW, packs.params_files(NEW, "http://b:2", 165)),
        ),
        (b"", b"new bytes only"),
        (b"0123456789abcdef" * 100, b""),
        (bytes(range(256)) * 64, b"head" + bytes(range(256)) * 30 + b"middle" + bytes(range(256)) * 30 + b"tail"),
        (os.urandom(5000), os.urandom(5000)),
    ],
    ids=["catalog-1pct", "same", "params", "empty-base", "empty-target", "moved-blocks", "random"],
)
def test_a_delta_rebuilds_the_target_byte_for_byte(tmp_path, base, target):
    assert apply(tmp_path, base, delta.make_delta(base, target), target) == target


def zstd_floor(tmp_path, base, target):
    """`zstd -19 --patch-from`: zstd's own binary diff of old to new, compressed (the issue's floor)."""
    (tmp_path / "floor-old").write_bytes(base)
    (tmp_path / "floor-new").write_bytes(target)
    proc = subprocess.run(
        ["zstd", "-19", "-q", "-c", f"--patch-from={tmp_path / 'floor-old'}", str(tmp_path / "floor-new")],
        capture_output=True,
        check=True,
    )
    return len(proc.stdout)


def line_diff_floor(base, target):
    """xz -9e of a plain line diff (changed line ranges and their new lines): the no-tool floor."""
    old, new = base.split(b"\n"), target.split(b"\n")
    out = bytearray()
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag != "equal":
            out += b"%d,%d\n" % (i1, i2) + b"\n".join(new[j1:j2]) + b"\n"
    return len(lzma.compress(bytes(out), preset=9 | lzma.PRESET_EXTREME))


def test_a_one_percent_catalog_change_costs_under_5_percent_and_2x_the_floor(tmp_path):
    files_old, files_new = catalog(OLD, 20000), catalog(NEW, 20000, 0.01)
    base, target = packs.pack_tar("catalog", OLD, files_old), packs.pack_tar("catalog", NEW, files_new)
    full = len(packs.pack_archive("catalog", NEW, files_new))
    data = delta.make_delta(base, target)
    assert apply(tmp_path, base, data, target) == target
    assert len(data) <= 0.05 * full, (len(data), full)
    assert len(data) <= 2 * line_diff_floor(base, target)
    if shutil.which("zstd"):
        assert len(data) <= 2 * zstd_floor(tmp_path, base, target)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: b"garbage" * 20, "not a valid lzma stream"),
        (lambda data: lzma.compress(b"PFD0" + data, format=lzma.FORMAT_ALONE), "wrong magic"),
        (lambda data: lzma.compress(b"PFD1\x01", format=lzma.FORMAT_ALONE), "ends inside a number"),
    ],
)
def test_a_damaged_delta_is_refused_and_leaves_nothing(tmp_path, damage, expected):
    base, target = b"abc" * 1000, b"abc" * 500 + b"XYZ" + b"abc" * 500
    with pytest.raises(delta.DeltaError, match=expected):
        apply(tmp_path, base, damage(delta.make_delta(base, target)), target)
    assert not (tmp_path / "out.tar").exists()


def test_a_delta_for_another_base_or_target_is_refused(tmp_path):
    base, target = b"abc" * 1000, b"abc" * 500 + b"XYZ" + b"abc" * 500
    data = delta.make_delta(base, target)
    with pytest.raises(delta.DeltaError, match="for a base of 3000 bytes"):
        apply(tmp_path, base + b"!", data, target)
    with pytest.raises(delta.DeltaError, match="sha256 mismatch after applying"):
        apply(tmp_path, base.replace(b"abc", b"abd", 1), data, target)
    (tmp_path / "base.tar").write_bytes(base)
    with pytest.raises(delta.DeltaError, match="rebuilds 3003 bytes, the pack has 3004"):
        delta.apply_delta(tmp_path / "base.tar", tmp_path / "delta", tmp_path / "out.tar", "0" * 64, 3004)


def test_a_python_without_lzma_refuses_deltas_clearly(tmp_path, monkeypatch):
    base, target = b"abc" * 1000, b"abc" * 500 + b"XYZ" + b"abc" * 500
    data = delta.make_delta(base, target)
    monkeypatch.setattr(delta, "lzma", None)
    with pytest.raises(delta.DeltaError, match="no lzma module"):
        apply(tmp_path, base, data, target)


# --- pos_data_sync -----------------------------------------------------------------------------------


def install_pack(root, name, version, files, current=True):
    """A pack version on the terminal as pos_data_sync leaves it (the release's files and PACK.json)."""
    base = Path(root) / "var" / "lib" / "pos" / "packs" / name
    (base / version).mkdir(parents=True)
    for rel, data in packs.pack_contents(name, version, files).items():
        (base / version / rel).write_bytes(data)
    if current:
        tmp = base / ".current.new"
        tmp.symlink_to(version)
        os.replace(tmp, base / "current")


class Published:
    """The catalog of NEW on the distribution point, with a delta from OLD, described as the manifest does."""

    def __init__(self, dist, old_files, new_files):
        self.dist = dist
        self.tar = packs.pack_tar("catalog", NEW, new_files)
        self.base_tar = packs.pack_tar("catalog", OLD, old_files)
        archive = packs.pack_archive("catalog", NEW, new_files)
        self.delta = delta.make_delta(self.base_tar, self.tar)
        sha = hashlib.sha256(archive).hexdigest()
        self.archive_path = f"/pool/{sha}/catalog-{NEW}.tar.gz"
        self.full = dist.publish(self.archive_path, archive)
        dsha = hashlib.sha256(self.delta).hexdigest()
        self.delta_path = f"/pool/{dsha}/catalog-{OLD}-to-{NEW}.delta"
        dist.publish(self.delta_path, self.delta)
        self.spec = dict(
            self.full,
            version=NEW,
            tar_sha256=hashlib.sha256(self.tar).hexdigest(),
            tar_size=len(self.tar),
            deltas=[
                {
                    "from_version": OLD,
                    "from_tar_sha256": hashlib.sha256(self.base_tar).hexdigest(),
                    "url": self.delta_path.lstrip("/"),  # relative, as pos_pack_urls leaves it
                    "sha256": dsha,
                    "size": len(self.delta),
                }
            ],
        )

    def args(self, **extra):
        return dict(packs={"catalog": self.spec}, retry_delay=0, retries=0, timeout=20, **extra)

    def paths(self):
        return [path for path, _ in self.dist.requests]


OLD_FILES, NEW_FILES = catalog(OLD, 3000), catalog(NEW, 3000, 0.01)


@pytest.fixture
def terminal(make_terminal):
    """A powered-off terminal (no posd: reload is off) holding catalog OLD as its current pack."""
    made = make_terminal(boot=False)
    shutil.rmtree(made.path("/var/lib/pos/packs/catalog"))
    install_pack(made.root, "catalog", OLD, OLD_FILES)
    return made


def installed_catalog(terminal):
    return terminal.path("/var/lib/pos/packs/catalog/current/catalog.csv").read_text()


def test_data_sync_downloads_only_the_delta_and_check_mode_only_says_so(terminal, run_module, dist):
    published = Published(dist, OLD_FILES, NEW_FILES)
    before = tree_state(terminal.root)

    checked = run_module("pos_data_sync", published.args(reload=False), terminal.root, check=True)
    assert checked["changed"] and checked["switched"] == ["catalog"]
    assert checked["transfers"]["catalog"]["transfer"] == "delta"
    assert dist.requests == [] and tree_state(terminal.root) == before

    result = run_module("pos_data_sync", published.args(reload=False), terminal.root)
    assert result["changed"] and result["versions_after"]["catalog"] == NEW
    assert result["transfers"]["catalog"] == {
        "transfer": "delta",
        "bytes_downloaded": len(published.delta),
        "from_version": OLD,
        "fallback_reason": None,
    }
    assert result["bytes_downloaded"] == len(published.delta) < published.full["size"] // 20
    assert published.paths() == [published.delta_path]
    assert installed_catalog(terminal) == NEW_FILES["catalog.csv"]
    assert os.listdir(terminal.path("/var/lib/pos/staging")) == []  # base, delta and rebuilt tar removed

    again = run_module("pos_data_sync", published.args(reload=False), terminal.root)
    assert not again["changed"] and again["transfers"] == {} and len(dist.requests) == 1


def test_data_sync_by_delta_reloads_posd(make_terminal, run_module, dist):
    made = make_terminal(boot=False)
    shutil.rmtree(made.path("/var/lib/pos/packs/catalog"))
    install_pack(made.root, "catalog", OLD, OLD_FILES)
    made.boot()
    published = Published(dist, OLD_FILES, NEW_FILES)
    result = run_module("pos_data_sync", published.args(), made.root)
    assert result["changed"] and result["transfers"]["catalog"]["transfer"] == "delta"
    assert made.status()["packs"]["catalog"] == NEW


def corrupt(published):
    garbage = b"not an lzma stream" * 10
    published.dist.publish(published.delta_path, garbage)
    published.spec["deltas"][0].update(sha256=hashlib.sha256(garbage).hexdigest(), size=len(garbage))


FALLBACKS = {
    "no-base": (lambda p, t: p.spec["deltas"][0].update(from_version="2026.10.0"), "no usable base"),
    "wrong-base": (
        lambda p, t: p.spec["deltas"][0].update(from_tar_sha256="0" * 64),
        "does not rebuild, byte for byte",
    ),
    "corrupt": (lambda p, t: corrupt(p), "not a valid lzma stream"),
    "404": (lambda p, t: p.dist.server.files.pop(p.delta_path), "HTTP 404"),
    "delta-sha": (lambda p, t: p.spec["deltas"][0].update(sha256="1" * 64), "sha256 mismatch for"),
    "result-sha": (lambda p, t: p.spec.update(tar_sha256="2" * 64), "sha256 mismatch after applying the delta"),
    "turned-off": (lambda p, t: None, "deltas are turned off"),
}


@pytest.mark.parametrize("case", list(FALLBACKS))
def test_data_sync_falls_back_to_the_full_archive_saying_why(terminal, run_module, dist, case):
    published = Published(dist, OLD_FILES, NEW_FILES)
    change, reason = FALLBACKS[case]
    change(published, terminal)
    extra = {"delta": False} if case == "turned-off" else {}
    result = run_module("pos_data_sync", published.args(reload=False, **extra), terminal.root)
    assert result["changed"] and result["versions_after"]["catalog"] == NEW, result
    transfer = result["transfers"]["catalog"]
    assert transfer["transfer"] == "full" and reason in transfer["fallback_reason"], transfer
    assert published.paths()[-1] == published.archive_path
    assert result["bytes_downloaded"] == transfer["bytes_downloaded"] >= published.full["size"]
    assert installed_catalog(terminal) == NEW_FILES["catalog.csv"]
    assert os.listdir(terminal.path("/var/lib/pos/staging")) == []


def test_data_sync_check_mode_names_why_it_would_download_in_full(terminal, run_module, dist):
    published = Published(dist, OLD_FILES, NEW_FILES)
    published.spec["deltas"][0]["from_version"] = "2026.10.0"
    checked = run_module("pos_data_sync", published.args(reload=False), terminal.root, check=True)
    transfer = checked["transfers"]["catalog"]
    assert transfer["transfer"] == "full" and "no usable base" in transfer["fallback_reason"]
    assert dist.requests == []


def test_data_sync_uses_the_previous_version_as_a_base_and_refuses_a_malformed_delta_entry(terminal, run_module, dist):
    install_pack(terminal.root, "catalog", "2026.11.5", catalog("2026.11.5", 3000, 0.02))  # current, no delta
    published = Published(dist, OLD_FILES, NEW_FILES)
    result = run_module("pos_data_sync", published.args(reload=False), terminal.root)
    assert result["transfers"]["catalog"]["transfer"] == "delta"
    assert result["transfers"]["catalog"]["from_version"] == OLD

    published.spec["deltas"][0].pop("from_tar_sha256")
    published.spec["version"] = "2027.01.0"
    bad = run_module("pos_data_sync", published.args(reload=False), terminal.root)
    assert bad["failed"] and "packs.catalog.deltas.0 lacks from_tar_sha256" in bad["msg"]
