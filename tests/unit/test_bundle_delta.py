"""App bundles by delta: the publisher's bundle tar and deltas, and pos_package on a bundle terminal.

What an operator would notice: the bytes a terminal downloads, the version it runs afterwards, that
the installed app is intact (every file as its MANIFEST.json says, launchers executable), why a full
download was used instead, and that check mode changes nothing.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from pathlib import Path

import pytest
from conftest import tree_state

from posfleet import packs
from posfleet import release as posrelease

REPO = Path(__file__).resolve().parents[2]


delta = packs.delta
OLD, NEW = "1.0.0", "1.1.0"


def bundle_tree(root):
    """{relpath: (mode, sha256)} of an unpacked bundle, bytecode caches left out."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [name for name in dirnames if name != "__pycache__"]
        for name in filenames:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, root)] = (
                stat.S_IMODE(os.lstat(path).st_mode),
                hashlib.sha256(Path(path).read_bytes()).hexdigest(),
            )
    return found


class Published:
    """Bundle NEW on the distribution point with a delta from OLD, described as the manifest does."""

    def __init__(self, dist, artifacts):
        self.dist = dist
        old, new = artifacts[OLD]["bundle"], artifacts[NEW]["bundle"]
        self.base_tar = posrelease.bundle_tar(old["path"], OLD)
        self.tar = posrelease.bundle_tar(new["path"], NEW)
        self.delta = delta.make_delta(self.base_tar, self.tar)
        self.full_path = f"/pool/{new['sha256']}/posd-{NEW}.tar.gz"
        self.full = dist.publish(self.full_path, Path(new["path"]).read_bytes())
        dsha = hashlib.sha256(self.delta).hexdigest()
        self.delta_path = f"/pool/{dsha}/posd-{OLD}-to-{NEW}.delta"
        dist.publish(self.delta_path, self.delta)
        self.entry = {
            "from_version": OLD,
            "from_tar_sha256": hashlib.sha256(self.base_tar).hexdigest(),
            "url": self.delta_path.lstrip("/"),  # relative, as in the manifest
            "sha256": dsha,
            "size": len(self.delta),
        }
        self.tar_fields = {"tar_sha256": hashlib.sha256(self.tar).hexdigest(), "tar_size": len(self.tar)}

    def args(self, **extra):
        return dict(self.full, version=NEW, style="bundle", deltas=[self.entry], retry_delay=0, retries=0,
                    timeout=20, **dict(self.tar_fields, **extra))

    def paths(self):
        return [path for path, _ in self.dist.requests]


@pytest.fixture
def terminal(make_terminal):
    """A bundle terminal running posd 1.0.0, with the bytecode cache posd leaves beside its sources."""
    made = make_terminal(style="bundle")
    cache = made.path(f"/opt/pos/app/{OLD}/lib/__pycache__")
    cache.mkdir(exist_ok=True)
    (cache / "posd.cpython-39.pyc").write_bytes(b"\x00compiled at run time")
    return made


def assert_runs_new_intact(terminal, artifacts, tmp_path):
    assert terminal.app_version() == NEW and terminal.status()["app_version"] == NEW
    reference = tmp_path / "reference"
    with tarfile.open(artifacts[NEW]["bundle"]["path"]) as tar:
        tar.extractall(reference, filter="data")
    assert bundle_tree(terminal.path(f"/opt/pos/app/{NEW}")) == bundle_tree(reference / NEW)
    assert stat.S_IMODE(os.stat(terminal.path(f"/opt/pos/app/{NEW}/bin/posd")).st_mode) == 0o755
    assert sorted(os.listdir(terminal.path("/opt/pos/app"))) == [OLD, NEW, "current"]
    assert os.listdir(terminal.path("/var/lib/pos/staging")) == []  # base, delta and rebuilt tar removed


# --- the publisher ---------------------------------------------------------------------------------


def test_the_bundle_tar_is_what_a_terminal_rebuilds_from_the_unpacked_bundle(tmp_path, artifacts):
    """The publisher's tar of a bundle equals, byte for byte, the tar a terminal writes from its directory."""
    built = artifacts[NEW]["bundle"]
    published = posrelease.bundle_tar(built["path"], NEW)
    with tarfile.open(built["path"]) as tar:
        tar.extractall(tmp_path, filter="data")
    os.makedirs(tmp_path / NEW / "lib" / "__pycache__")
    (tmp_path / NEW / "lib" / "__pycache__" / "x.pyc").write_bytes(b"cache")
    with open(tmp_path / "rebuilt.tar", "wb") as handle:
        delta.write_bundle_tar(handle, NEW, delta.bundle_dir_entries(tmp_path / NEW))
    assert (tmp_path / "rebuilt.tar").read_bytes() == published
    with tarfile.open(tmp_path / "rebuilt.tar") as tar:
        names = tar.getnames()
    assert f"{NEW}/bin/posd" in names and not [name for name in names if "__pycache__" in name]
    # An executable bit lost on the terminal is another tar: that base is never used.
    os.chmod(tmp_path / NEW / "bin" / "posd", 0o644)
    with open(tmp_path / "changed.tar", "wb") as handle:
        delta.write_bundle_tar(handle, NEW, delta.bundle_dir_entries(tmp_path / NEW))
    assert (tmp_path / "changed.tar").read_bytes() != published


def test_a_bundle_tar_keeps_links_and_modes(tmp_path):
    """Links and permission bits are part of the layout (lab bundles have no links, a vendor's may)."""
    app = tmp_path / "2.0.0"
    (app / "bin").mkdir(parents=True)
    (app / "bin" / "run").write_bytes(b"#!/bin/sh\n")
    os.chmod(app / "bin" / "run", 0o750)
    (app / "start").symlink_to("bin/run")
    (app / "empty").mkdir()
    entries = delta.bundle_dir_entries(app)
    assert entries == {"bin": ("dir", None), "bin/run": ("file", (0o750, str(app / "bin" / "run"))),
                       "empty": ("dir", None), "start": ("link", "bin/run")}
    with open(tmp_path / "b.tar", "wb") as handle:
        delta.write_bundle_tar(handle, "2.0.0", entries)
    with tarfile.open(tmp_path / "b.tar") as tar:
        assert {m.name: (m.type, m.mode, m.linkname) for m in tar} == {
            "2.0.0": (b"5", 0o755, ""), "2.0.0/bin": (b"5", 0o755, ""), "2.0.0/bin/run": (b"0", 0o750, ""),
            "2.0.0/empty": (b"5", 0o755, ""), "2.0.0/start": (b"2", 0o777, "bin/run")}
        tar_entries = delta.bundle_archive_entries(tar, "2.0.0")
    assert tar_entries["start"] == ("link", "bin/run") and tar_entries["bin/run"] == ("file", (0o750, b"#!/bin/sh\n"))


def test_a_bundle_delta_is_a_small_part_of_the_bundle(artifacts, dist):
    published = Published(dist, artifacts)
    assert len(published.delta) < published.full["size"] // 4


# --- pos_package ------------------------------------------------------------------------------------


def test_a_bundle_terminal_downloads_only_the_delta_and_runs_the_new_version(
    terminal, run_module, dist, artifacts, tmp_path
):
    published = Published(dist, artifacts)
    before = tree_state(terminal.root)

    checked = run_module("pos_package", published.args(), terminal.root, check=True)
    assert checked["changed"] and checked["would_download"] == len(published.delta)
    assert checked["transfer"] == {"transfer": "delta", "bytes_downloaded": 0, "from_version": OLD,
                                   "fallback_reason": None}
    assert dist.requests == [] and tree_state(terminal.root) == before

    result = run_module("pos_package", published.args(), terminal.root)
    assert result["changed"] and (result["previous_version"], result["version"]) == (OLD, NEW), result
    assert result["transfer"] == {"transfer": "delta", "bytes_downloaded": len(published.delta),
                                  "from_version": OLD, "fallback_reason": None}
    assert result["bytes_downloaded"] == len(published.delta) < published.full["size"] // 4
    assert published.paths() == [published.delta_path]
    assert_runs_new_intact(terminal, artifacts, tmp_path)

    again = run_module("pos_package", published.args(), terminal.root)
    assert not again["changed"] and again["bytes_downloaded"] == 0 and len(dist.requests) == 1


def damage_base(terminal):
    posd = terminal.path(f"/opt/pos/app/{OLD}/lib/posd.py")
    posd.write_text(posd.read_text() + "# changed on the terminal\n")


def corrupt(published):
    garbage = b"not an lzma stream" * 10
    published.dist.publish(published.delta_path, garbage)
    published.entry.update(sha256=hashlib.sha256(garbage).hexdigest(), size=len(garbage))


FALLBACKS = {
    "damaged-base": (lambda p, t: damage_base(t), "no usable base"),
    "mode-changed": (
        lambda p, t: os.chmod(t.path(f"/opt/pos/app/{OLD}/bin/posctl"), 0o700),
        "the installed posd 1.0.0 does not rebuild, byte for byte",
    ),
    "link-too-long": (
        lambda p, t: os.symlink("x" * 200, t.path(f"/opt/pos/app/{OLD}/long")),
        "the installed posd 1.0.0 cannot be written as a tar",
    ),
    "bad-delta": (lambda p, t: corrupt(p), "not a valid lzma stream"),
    "404": (lambda p, t: p.dist.server.files.pop(p.delta_path), "HTTP 404"),
    "result-sha": (lambda p, t: p.tar_fields.update(tar_sha256="2" * 64), "sha256 mismatch after applying"),
    "turned-off": (lambda p, t: None, "deltas are turned off"),
}


@pytest.mark.parametrize("case", list(FALLBACKS))
def test_a_bundle_falls_back_to_the_full_download_and_still_ends_intact(
    terminal, run_module, dist, artifacts, tmp_path, case
):
    published = Published(dist, artifacts)
    change, reason = FALLBACKS[case]
    change(published, terminal)
    extra = {"delta": False} if case == "turned-off" else {}
    result = run_module("pos_package", published.args(**extra), terminal.root)
    assert result["changed"] and result["version"] == NEW, result
    transfer = result["transfer"]
    assert transfer["transfer"] == "full" and reason in transfer["fallback_reason"], transfer
    assert published.paths()[-1] == published.full_path
    assert result["bytes_downloaded"] == transfer["bytes_downloaded"] >= published.full["size"]
    assert_runs_new_intact(terminal, artifacts, tmp_path)


def test_check_mode_says_why_a_bundle_would_come_in_full(terminal, run_module, dist, artifacts):
    published = Published(dist, artifacts)
    published.entry["from_version"] = "0.9.0"
    before = tree_state(terminal.root)
    checked = run_module("pos_package", published.args(), terminal.root, check=True)
    assert checked["transfer"]["transfer"] == "full" and checked["would_download"] == published.full["size"]
    assert "no usable base: the release has deltas from 0.9.0" in checked["transfer"]["fallback_reason"]
    assert dist.requests == [] and tree_state(terminal.root) == before


def test_a_malformed_bundle_delta_entry_is_refused_before_anything_changes(terminal, run_module, dist, artifacts):
    published = Published(dist, artifacts)
    published.entry.pop("from_tar_sha256")
    before = tree_state(terminal.root)
    bad = run_module("pos_package", published.args(), terminal.root)
    assert bad["failed"] and "app.deltas.0 lacks from_tar_sha256" in bad["msg"]
    assert dist.requests == [] and tree_state(terminal.root) == before
