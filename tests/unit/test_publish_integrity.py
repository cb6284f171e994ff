"""Publication integrity (issue 17): the pool keeps every name, and a publish is all or nothing per point.

Three releases are built once per module into one build directory: 2026.10.0 and 2026.11.0 with the
same fee, then 2026.12.0 with another fee. The params packs of the first two differ only in their
version, at the very bytes the third one changes, so the third's two params deltas come out byte for
byte the same under two names: the case that once left one name out of the pool and failed the next
publish at its verify step.
"""

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from test_release import REPO, SPEC, TOOL, ok, posrelease, run, write_spec

RELEASES = {  # release id -> params fee; the params version is the release id
    "2026.10.0": 150,
    "2026.11.0": 150,
    "2026.12.0": 165,
}
OLD, NEW = "2026.11.0", "2026.12.0"

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None,
                                reason="dpkg-deb (dpkg-dev) is not installed")


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """The three releases built and signed in one build directory, never modified by a test."""
    base = tmp_path_factory.mktemp("series")
    ok("keygen", "--out", base / "keys")
    for release, fee in RELEASES.items():
        created = f"{release[:7].replace('.', '-')}-01T01:00:00Z"
        spec = write_spec(base / f"{release}.yml", release=release, created=created,
                          packs={"params": dict(SPEC["packs"]["params"], version=release, fee_bps=fee),
                                 "catalog": SPEC["packs"]["catalog"]})
        ok("build", "--spec", spec, "--out", base / "out")
        ok("sign", "--release", base / "out" / "releases" / release, "--key", base / "keys" / "release.key")
    return base


@pytest.fixture
def point(series, tmp_path):
    """A test's own build directory, and a repository where the releases before NEW are published."""
    shutil.copytree(series / "out", tmp_path / "out")
    repo = tmp_path / "repo"
    posrelease.publish(tmp_path / "out", repo, regions=["eu_west", "us_east"], releases=["2026.10.0", OLD])
    return tmp_path / "out", repo


def manifest(root, release):
    return yaml.safe_load((Path(root) / "releases" / release / "manifest.yml").read_text())


def verify(root, release, pubkey):
    return run("verify", "--release", Path(root) / "releases" / release, "--pubkey", pubkey, "--root", root)


def tree(directory):
    """{relative path: bytes} of every file, and every directory: what an operator would see there."""
    return {str(path.relative_to(directory)): path.read_bytes() if path.is_file() else None
            for path in sorted(Path(directory).rglob("*"))}


# --- the pool keeps every name ---------------------------------------------------------------------

def test_deltas_with_the_same_bytes_under_two_names_are_all_built_published_and_verified(series, tmp_path):
    deltas = manifest(series / "out", NEW)["models"]["heron_h5"]["packs"]["params"]["deltas"]
    assert [d["from_version"] for d in deltas] == [OLD, "2026.10.0"]
    assert deltas[0]["sha256"] == deltas[1]["sha256"]  # the case under test: one pool directory, two names
    assert deltas[0]["url"] != deltas[1]["url"]

    out, repo, pubkey = series / "out", tmp_path / "repo", series / "keys" / "release.pub"
    ok("publish", "--root", out, "--repo", repo, "--region", "eu_west", "us_east", "--pubkey", pubkey)
    for release in RELEASES:
        urls = posrelease.artifacts(manifest(out, release))
        for root in (out, repo / "eu_west", repo / "us_east"):
            assert [url for url in urls if not (root / url).is_file()] == [], (release, root)
            assert verify(root, release, pubkey).returncode == 0
    assert {d["url"] for d in deltas} <= set(posrelease.artifacts(manifest(repo / "us_east", NEW)))


def test_packs_with_the_same_bytes_under_two_names_keep_both(series, tmp_path, monkeypatch):
    """A release whose packs are byte for byte an earlier one's, named otherwise (say, by a newer
    builder): both names live in one pool directory, and publishing both releases keeps both."""
    out, repo = tmp_path / "out", tmp_path / "repo"
    shutil.copytree(series / "out", out)
    monkeypatch.setattr(posrelease.packs, "archive_name", lambda name, version: f"{name}_{version}.tgz")
    spec = write_spec(tmp_path / "renamed.yml", release="2026.12.0-renamed", created="2026-12-02T01:00:00Z",
                      packs=yaml.safe_load((series / f"{NEW}.yml").read_text())["packs"])
    posrelease.build(spec, out)
    monkeypatch.undo()
    ok("sign", "--release", out / "releases" / "2026.12.0-renamed", "--key", series / "keys" / "release.key")
    old, new = (manifest(out, release)["models"]["heron_h5"]["packs"]["params"]
                for release in (NEW, "2026.12.0-renamed"))
    assert old["sha256"] == new["sha256"] and old["url"] != new["url"]

    posrelease.publish(out, repo, regions=["eu_west"], releases=[NEW, "2026.12.0-renamed"])
    for root in (out, repo / "eu_west"):
        assert (root / old["url"]).is_file() and (root / new["url"]).is_file()
        for release in (NEW, "2026.12.0-renamed"):
            assert verify(root, release, series / "keys" / "release.pub").returncode == 0


# --- a publish is all or nothing per distribution point ----------------------------------------------

def assert_untouched(repo, before, pubkey):
    """The repository is what it was: same files, same bytes, no leftover, and the earlier releases verify."""
    assert tree(repo) == before
    for region in ("eu_west", "us_east"):
        for release in ("2026.10.0", OLD):
            assert verify(repo / region, release, pubkey).returncode == 0


def test_a_copy_that_fails_half_way_leaves_the_point_as_it_was(point, series, monkeypatch):
    out, repo = point
    before = tree(repo)
    calls, real_copy = [], shutil.copyfileobj

    def copy_then_fill_the_disk(src, dst, length=0):
        calls.append(src.name)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_copy(src, dst, length)

    monkeypatch.setattr(shutil, "copyfileobj", copy_then_fill_the_disk)
    with pytest.raises(posrelease.ReleaseError) as caught:
        posrelease.publish(out, repo, regions=["eu_west"], releases=[NEW])
    message = str(caught.value)
    assert message.startswith(f"cannot copy {calls[1]} to {repo / 'eu_west'}/pool/")
    assert "No space left on device; nothing new is published to eu_west" in message
    assert not (repo / "eu_west" / "releases" / NEW).exists()
    assert_untouched(repo, before, series / "keys" / "release.pub")

    monkeypatch.undo()  # the disk has room again: the same command now publishes the release
    posrelease.publish(out, repo, regions=["eu_west"], releases=[NEW])
    assert verify(repo / "eu_west", NEW, series / "keys" / "release.pub").returncode == 0


def test_a_copy_that_does_not_match_its_sha256_never_reaches_the_point(point, series, monkeypatch):
    """The build directory's file changes while it is copied: the copy is refused, not renamed in."""
    out, repo = point
    before = tree(repo)
    delta = next(url for url in posrelease.artifacts(manifest(out, NEW)) if url.endswith(".delta"))
    real_copy = shutil.copyfileobj

    def copy_changing_the_delta(src, dst, length=0):
        if src.name.endswith(delta):
            dst.write(b"not the delta")
        else:
            real_copy(src, dst, length)

    monkeypatch.setattr(shutil, "copyfileobj", copy_changing_the_delta)
    with pytest.raises(posrelease.ReleaseError) as caught:
        posrelease.publish(out, repo, regions=["eu_west"], releases=[NEW])
    assert str(caught.value).startswith(f"{repo / 'eu_west' / delta}: the copy does not match the sha256")
    assert_untouched(repo, before, series / "keys" / "release.pub")


def test_a_damaged_artifact_in_the_build_directory_is_refused_with_the_cause_first(point, series):
    out, repo = point
    before = tree(repo)
    params = manifest(out, NEW)["models"]["heron_h5"]["packs"]["params"]["url"]
    data = bytearray((out / params).read_bytes())
    data[-1] ^= 0xFF  # same size, other content
    (out / params).write_bytes(bytes(data))
    proc = run("publish", "--root", out, "--repo", repo, "--all-regions", "--release", NEW, check=False)
    first = proc.stderr.splitlines()[0]
    assert first.startswith(f"posfleet-release: {out / params}: sha256 does not match the manifest; "
                            "nothing was published: run `posfleet-release build` for release 2026.12.0")
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    # stdout is still one JSON object, so a playbook that parses it sees a failure, not a parse error
    assert json.loads(proc.stdout) == {"changed": False, "failed": True, "msg": first[len("posfleet-release: "):]}
    assert_untouched(repo, before, series / "keys" / "release.pub")


def make_read_only(monkeypatch, region):
    """Every write to `region`'s distribution point fails, as on a point mounted read-only."""
    real_write = posrelease.write_temp

    def read_only(dest, *args, **kwargs):
        if f"/{region}/" in str(dest):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_write(dest, *args, **kwargs)

    monkeypatch.setattr(posrelease, "write_temp", read_only)


def test_a_publish_stopped_at_the_second_region_says_where_it_already_published(point, series, monkeypatch,
                                                                                 capsys):
    out, repo = point
    make_read_only(monkeypatch, "us_east")
    code = posrelease.main(["publish", "--root", str(out), "--repo", str(repo), "--region", "eu_west", "us_east",
                            "--release", NEW])
    stdout, stderr = capsys.readouterr()
    assert code == 1
    assert stderr.startswith(f"posfleet-release: cannot copy {out}/pool/")
    assert stderr.rstrip().endswith("nothing new is published to us_east (no manifest was written there): fix that "
                                    "and run publish again; already published to eu_west")
    assert json.loads(stdout)["changed"] is True  # eu_west did get the release
    assert verify(repo / "eu_west", NEW, series / "keys" / "release.pub").returncode == 0
    assert not (repo / "us_east" / "releases" / NEW).exists()


def test_a_usage_error_names_the_cause_on_the_first_line(tmp_path):
    proc = run("publish", "--root", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["posfleet-release: one of the arguments --region --all-regions is required; "
                                        "see `posfleet-release publish --help`"]
    assert json.loads(proc.stdout)["failed"] is True


def test_a_tool_that_cannot_load_its_modules_says_so_on_the_first_line(tmp_path):
    """No virtualenv, say: the system's python3 lacks jsonschema (shadowed here by one that fails)."""
    (tmp_path / "jsonschema.py").write_text("raise ImportError(\"No module named 'jsonschema'\")\n")
    proc = subprocess.run([str(TOOL), "verify", "--release", tmp_path, "--pubkey", tmp_path], capture_output=True,
                          text=True, timeout=60, check=False, env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"posfleet-release: cannot load its Python modules from {REPO}: No module "
                                        "named 'jsonschema'; run `make venv` there"]
    assert json.loads(proc.stdout)["failed"] is True
