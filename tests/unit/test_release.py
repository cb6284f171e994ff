"""Releases on the control node: bin/posfleet-release and the pos_release action plugin.

A small release (a 300-row catalog) is built and signed once per module; each test works on its own
copy. The command-line tests run bin/posfleet-release the way an operator does and look at what an
operator sees: the exit status, the JSON on stdout, the message on stderr, the files written.
"""

import base64
import functools
import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest
import yaml
from conftest import ansible_tool

from posfleet import packs
from posfleet import release as posrelease

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "bin" / "posfleet-release"


MODELS = yaml.safe_load((REPO / "inventories" / "shared" / "models.yml").read_text())["models"]
RELEASE_ID = "2026.11.0"
SPEC = {
    "release": RELEASE_ID,
    "description": "test release",
    "created": "2026-11-01T01:00:00Z",
    "app": {"version": "1.0.0"},
    "packs": {
        "params": {"version": "2026.11.0", "acquirer_url": "http://127.0.0.1:9", "fee_bps": 150},
        "catalog": {"version": "2026.11.0", "records": 300},
    },
    "reboot": {"kestrel_k200": False},
}

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None,
                                reason="dpkg-deb (dpkg-dev) is not installed")


def run(*args, check=None):
    """Run bin/posfleet-release; `check` True/False asserts success/failure. Returns the process."""
    proc = subprocess.run([str(TOOL), *map(str, args)], capture_output=True, text=True, timeout=60,
                          check=False)
    if check is True:
        assert proc.returncode == 0, proc.stderr
    if check is False:
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert proc.stderr.startswith("posfleet-release: "), proc.stderr
    return proc


def ok(*args):
    return json.loads(run(*args, check=True).stdout)


def write_spec(path, **changes):
    spec = dict(SPEC, **changes)
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A built, signed release and its key pair, never modified by a test."""
    base = tmp_path_factory.mktemp("built")
    ok("keygen", "--out", base / "keys")
    ok("build", "--spec", write_spec(base / "spec.yml"), "--out", base / "out")
    ok("sign", "--release", base / "out" / "releases" / RELEASE_ID, "--key", base / "keys" / "release.key")
    return base


class Release:
    """A test's own copy of the built release."""

    def __init__(self, built, tmp_path):
        self.base = tmp_path
        shutil.copytree(built / "out", tmp_path / "out")
        shutil.copytree(built / "keys", tmp_path / "keys")
        shutil.copy(built / "spec.yml", tmp_path / "spec.yml")
        self.out = tmp_path / "out"
        self.dir = self.out / "releases" / RELEASE_ID
        self.manifest = self.dir / "manifest.yml"
        self.sig = self.dir / "manifest.yml.sig"
        self.key = tmp_path / "keys" / "release.key"
        self.pub = tmp_path / "keys" / "release.pub"

    def data(self):
        return yaml.safe_load(self.manifest.read_text())

    def rewrite(self, change):
        """Change the parsed manifest, write it back and sign it again with the right key.

        Signed through the library: `posfleet-release sign` would refuse a manifest that breaks the
        schema, and these tests need one that is signed all the same.
        """
        data = self.data()
        change(data)
        self.manifest.write_text(yaml.safe_dump(data, sort_keys=False))
        key = posrelease.load_private_key(self.key)
        self.sig.write_text(posrelease.signature_text(key, self.manifest.read_bytes()))

    def verify(self, *extra):
        return run("verify", "--release", self.dir, "--pubkey", self.pub, *extra)


@pytest.fixture
def release(built, tmp_path):
    return Release(built, tmp_path)


# --- build, sign, verify ---------------------------------------------------------------------------

def test_a_signed_release_verifies_with_its_artifacts(release):
    answer = json.loads(release.verify("--root", release.out).stdout)
    assert answer["verified"] is True and answer["release"] == RELEASE_ID
    assert len(answer["artifacts_checked"]) == 4  # deb, bundle, params, catalog
    manifest = release.data()
    assert manifest["schema"] == 1 and manifest["created"] == "2026-11-01T01:00:00Z"
    assert set(manifest["models"]) == set(MODELS)
    for model, entry in manifest["models"].items():
        style = MODELS[model]["package_style"]
        assert entry["app"]["style"] == style
        assert entry["app"]["url"].endswith({"dpkg": "_all.deb", "bundle": ".tar.gz"}[style])
        assert entry["app"]["url"] == f"pool/{entry['app']['sha256']}/{Path(entry['app']['url']).name}"
        # the profile's reboot_required wins over a release that does not ask for a reboot
        assert entry["reboot"] is MODELS[model]["reboot_required"]
        assert 1 <= entry["storage_mb"] < MODELS[model]["storage_mb"]
        assert set(entry["packs"]) == {"params", "catalog"}
    assert (release.out / "probe").stat().st_size == 4096
    signature = base64.b64decode(release.sig.read_text().strip(), validate=True)
    assert len(signature) == 64 and release.sig.read_text().count("\n") == 1


def test_terminals_can_check_the_signature_with_openssl(release, tmp_path):
    """Models with verify_signature check it on the terminal with openssl: the formats must agree."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    (tmp_path / "sig.bin").write_bytes(base64.b64decode(release.sig.read_text()))
    proc = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(release.pub), "-rawin",
                           "-in", str(release.manifest), "-sigfile", str(tmp_path / "sig.bin")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_manifest_changed_by_one_byte_is_refused(release):
    data = bytearray(release.manifest.read_bytes())
    at = data.index(b"test release")
    data[at] = ord("T")
    release.manifest.write_bytes(bytes(data))
    proc = release.verify()
    assert proc.returncode == 1
    assert f"{release.manifest}: bad signature" in proc.stderr


def test_a_release_signed_with_another_key_is_refused(release):
    ok("keygen", "--out", release.base / "other")
    other = release.base / "other" / "release.pub"
    proc = run("verify", "--release", release.dir, "--pubkey", other, check=False)
    assert "bad signature" in proc.stderr and "another key" in proc.stderr


def test_an_unsigned_release_is_refused(release):
    release.sig.unlink()
    proc = release.verify()
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"posfleet-release: no signature file {release.manifest}.sig: releases "
                                   "must be signed; run `posfleet-release sign`")


DELTA_ENTRY = {"from_version": "2026.10.0", "from_tar_sha256": "a" * 64,
               "url": f"pool/{'b' * 64}/catalog-2026.10.0-to-2026.11.0.delta", "sha256": "b" * 64, "size": 100}


@pytest.mark.parametrize(("change", "expected"), [
    (lambda m: m["models"]["kestrel_k200"]["app"].update(sha256="abc123"),
     "models.kestrel_k200.app.sha256: expected 64 hex characters"),
    (lambda m: m["models"]["heron_h5"]["packs"]["params"].update(signed_by="me"),
     "models.heron_h5.packs.params.signed_by: unknown field"),
    (lambda m: m.update(channel="beta"), "channel: unknown field"),
    (lambda m: m["models"]["petrel_p9"].update(reboot="yes"),
     "models.petrel_p9.reboot: expected true or false"),
    (lambda m: m["models"]["petrel_p9"].update(storage_mb="4"),
     "models.petrel_p9.storage_mb: expected an integer"),
    (lambda m: m["models"]["heron_h5"]["app"].update(version=1.1),
     "models.heron_h5.app.version: expected a string, got float (quote it in YAML)"),
    (lambda m: m["models"]["kestrel_k200"]["app"].update(style="bundle"),
     "models.kestrel_k200.app.style: bundle, but the model profile's package_style is dpkg"),
    (lambda m: m["models"]["kestrel_k200"]["packs"].pop("catalog"),
     "models.kestrel_k200.packs.catalog: missing"),
    (lambda m: m.update(schema=2), "schema: expected 1"),
    (lambda m: m["models"]["heron_h5"]["packs"]["catalog"].update(deltas=[DELTA_ENTRY]),
     "models.heron_h5.packs.catalog.tar_sha256: missing (needed with deltas)"),
    (lambda m: m["models"]["heron_h5"]["packs"]["catalog"].update(
        tar_sha256="c" * 64, tar_size=10, deltas=[dict(DELTA_ENTRY, signed_by="me")]),
     "models.heron_h5.packs.catalog.deltas.0.signed_by: unknown field"),
    (lambda m: m["models"]["heron_h5"]["packs"]["catalog"].update(
        tar_sha256="c" * 64, tar_size=10, deltas=[dict(DELTA_ENTRY, sha256="d" * 64)]),
     "models.heron_h5.packs.catalog.deltas.0.url: the pool directory must be the entry's sha256"),
    (lambda m: m["models"]["heron_h5"]["packs"]["catalog"].update(
        tar_sha256="a" * 64, tar_size=10, deltas=[DELTA_ENTRY]),
     "models.heron_h5.packs.catalog.deltas: a delta from the pack to itself"),
    (lambda m: m["models"]["heron_h5"]["app"].update(deltas=[DELTA_ENTRY]),
     "models.heron_h5.app.tar_sha256: missing (needed with deltas)"),
    (lambda m: m["models"]["kestrel_k200"]["app"].update(tar_sha256="c" * 64, tar_size=10, deltas=[DELTA_ENTRY]),
     "models.kestrel_k200.app: a dpkg app has no tar_sha256, tar_size or deltas (only bundles are sent as deltas)"),
])
def test_a_signed_manifest_that_breaks_the_schema_is_refused_naming_the_field(release, change, expected):
    """The signature is good here (re-signed after the change): the schema alone must refuse it."""
    release.rewrite(change)
    proc = release.verify()
    assert proc.returncode == 1
    assert expected in proc.stderr, proc.stderr


def test_sign_refuses_a_manifest_terminals_would_refuse(release):
    release.manifest.write_text(release.manifest.read_text().replace("schema: 1", "schema: 1\nextra: 2"))
    proc = run("sign", "--release", release.dir, "--key", release.key, check=False)
    assert "extra: unknown field" in proc.stderr


def test_an_artifact_that_does_not_match_is_refused_naming_the_file(release):
    entry = release.data()["models"]["kestrel_k200"]["packs"]["catalog"]
    path = release.out / entry["url"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, other content
    path.write_bytes(bytes(data))
    assert release.verify().returncode == 0  # without --root only the manifest is checked
    proc = release.verify("--root", release.out)
    assert proc.returncode == 1
    assert f"{path}: sha256 does not match the manifest" in proc.stderr
    path.unlink()
    assert f"{path}: missing" in release.verify("--root", release.out).stderr


def test_keygen_never_overwrites_and_never_prints_the_private_key(tmp_path):
    proc = run("keygen", "--out", tmp_path / "k", check=True)
    assert "PRIVATE" not in proc.stdout + proc.stderr
    key = tmp_path / "k" / "release.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS8
    before = key.read_bytes()
    proc = run("keygen", "--out", tmp_path / "k", check=False)
    assert "never overwrites" in proc.stderr and key.read_bytes() == before


def test_sign_refuses_a_key_others_can_read(release):
    release.key.chmod(0o644)
    proc = run("sign", "--release", release.dir, "--key", release.key, check=False)
    assert "readable by others" in proc.stderr


# --- build -----------------------------------------------------------------------------------------

def test_pack_archives_hold_exactly_the_pack_files(release):
    for name, entry in release.data()["models"]["heron_h5"]["packs"].items():
        raw = (release.out / entry["url"]).read_bytes()
        assert raw[4:8] == b"\0\0\0\0"  # gzip header without a time
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            members = tar.getmembers()
            files = {m.name: tar.extractfile(m).read() for m in members}
        assert all(m.isreg() and "/" not in m.name and m.mtime == 0 and m.uid == m.gid == 0 for m in members)
        assert [m.name for m in members] == sorted(files)
        pack = json.loads(files.pop("PACK.json"))
        assert pack["name"] == name and pack["version"] == entry["version"]
        assert pack["files"] == {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    catalog = release.data()["models"]["heron_h5"]["packs"]["catalog"]
    with tarfile.open(release.out / catalog["url"]) as tar:
        assert len(tar.extractfile("catalog.csv").read().decode().splitlines()) == 301  # header + records


def test_a_build_is_reproducible_and_a_rebuild_changes_nothing(release, tmp_path):
    again = ok("build", "--spec", release.base / "spec.yml", "--out", release.out)
    assert (again["changed"], again["written"]) == (False, [])
    assert release.verify().returncode == 0  # the signature survives an unchanged rebuild
    ok("build", "--spec", release.base / "spec.yml", "--out", tmp_path / "elsewhere")
    fresh = tmp_path / "elsewhere" / "releases" / RELEASE_ID / "manifest.yml"
    assert fresh.read_bytes() == release.manifest.read_bytes()


def test_a_changed_spec_drops_the_stale_signature(release):
    write_spec(release.base / "spec.yml", description="test release, take 2")
    answer = ok("build", "--spec", release.base / "spec.yml", "--out", release.out)
    assert answer["removed"] == [f"releases/{RELEASE_ID}/manifest.yml.sig"] and not release.sig.exists()
    assert "releases must be signed" in release.verify().stderr


def test_build_dry_run_writes_nothing(tmp_path, built):
    answer = ok("build", "--spec", built / "spec.yml", "--out", tmp_path / "out", "--dry-run")
    assert answer["changed"] is True and len(answer["written"]) == 6
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("changes", "expected"), [
    ({"channel": "beta"}, "channel: unknown field"),
    ({"app": {"version": 1.1}}, "app.version: expected a string"),
    ({"app": {"version": "1.0.0", "versions": {"osprey_o1": "1.0.1"}}},
     f"app.versions.osprey_o1: not a model in {posrelease.MODELS_FILE}"),
    ({"release": "../etc"}, "release: expected a release id"),
    ({"packs": {"params": {"version": "1"}}}, "packs.catalog: missing; packs.params.acquirer_url: missing"),
])
def test_a_bad_spec_is_refused_naming_the_field(tmp_path, changes, expected):
    proc = run("build", "--spec", write_spec(tmp_path / "spec.yml", **changes), "--out", tmp_path / "out",
               check=False)
    assert expected in proc.stderr
    assert not (tmp_path / "out").exists()


def test_the_lab_release_specs_build(tmp_path):
    """baseline -> upgrade -> broken, into one build directory (they share packs in the pool).

    The baseline's and the upgrade's OS packages are left out here: they come from the Debian archive through the
    lab's apt and are checked against (and, at `factory`, read from) the factory lists the lab writes from its
    image, so the integration tests, which publish them in the lab, build them (tests/integration/test_update.py)."""
    specs = {name: REPO / "releases" / "lab" / f"{name}.yml" for name in ("baseline", "upgrade", "broken")}
    (tmp_path / "specs").mkdir()
    for name in ("baseline", "upgrade"):
        spec = yaml.safe_load(specs[name].read_text())
        assert spec.pop("os_packages"), f"the lab's {name} pins OS packages"
        specs[name] = tmp_path / "specs" / f"{name}.yml"
        specs[name].write_text(yaml.safe_dump(spec))
    results = {name: ok("build", "--spec", spec, "--out", tmp_path / "out") for name, spec in specs.items()}
    assert [r["release"] for r in results.values()] == ["2026.11.0", "2026.12.0", "2026.12.1-broken"]
    # the broken release has the upgrade's packs: only its apps, their bundle deltas and its manifest
    # are new in the pool
    assert not [w for w in results["broken"]["written"] if "params-" in w or "catalog-" in w]
    assert len(results["broken"]["written"]) == 5
    manifests = {name: yaml.safe_load((tmp_path / "out" / "releases" / r["release"] / "manifest.yml").read_text())
                 for name, r in results.items()}
    for model, profile in MODELS.items():
        assert manifests["upgrade"]["models"][model]["reboot"] is profile["reboot_required"]

    def pack_file(name, pack, member):
        with tarfile.open(tmp_path / "out" / manifests[name]["models"]["heron_h5"]["packs"][pack]["url"]) as tar:
            return tar.extractfile(member).read().decode()

    old, new = pack_file("baseline", "catalog", "catalog.csv"), pack_file("upgrade", "catalog", "catalog.csv")
    changed = sum(a != b for a, b in zip(old.splitlines(), new.splitlines()))
    assert len(old.splitlines()) == 20001 and 100 <= changed <= 300  # about 1% of 20000
    assert json.loads(pack_file("baseline", "params", "fees.json"))["card_present_bps"] != \
        json.loads(pack_file("upgrade", "params", "fees.json"))["card_present_bps"]
    with tarfile.open(tmp_path / "out" / manifests["broken"]["models"]["heron_h5"]["app"]["url"]) as tar:
        assert "BROKEN = True" in tar.extractfile("1.1.1/lib/posd.py").read().decode()

    # Deltas: none for the first release; the next ones have one per pack from the baseline's version,
    # which rebuilds the new pack's tar byte for byte from the baseline's.
    assert results["baseline"]["deltas"] == {"params": [], "catalog": [], "app": {"1.0.0": []}}
    assert "deltas" not in manifests["baseline"]["models"]["heron_h5"]["packs"]["catalog"]
    assert "deltas" not in manifests["baseline"]["models"]["heron_h5"]["app"]
    packs_from = {"params": ["2026.11.0"], "catalog": ["2026.11.0"]}
    assert results["upgrade"]["deltas"] == dict(packs_from, app={"1.1.0": ["1.0.0"]})
    assert results["broken"]["deltas"] == dict(packs_from, app={"1.1.1": ["1.1.0", "1.0.0"]})
    old, new = (manifests[name]["models"]["heron_h5"]["packs"]["catalog"] for name in ("baseline", "upgrade"))
    (entry,) = new["deltas"]
    assert entry["from_version"] == "2026.11.0" and entry["size"] <= 0.05 * new["size"]
    base_tar = gzip.decompress((tmp_path / "out" / old["url"]).read_bytes())
    assert hashlib.sha256(base_tar).hexdigest() == entry["from_tar_sha256"]
    (tmp_path / "base.tar").write_bytes(base_tar)
    packs.delta.apply_delta(tmp_path / "base.tar", tmp_path / "out" / entry["url"], tmp_path / "new.tar",
                            new["tar_sha256"], new["tar_size"])
    assert (tmp_path / "new.tar").read_bytes() == gzip.decompress((tmp_path / "out" / new["url"]).read_bytes())


def test_deltas_are_verified_and_published_with_their_release(release, tmp_path):
    spec = write_spec(tmp_path / "next.yml", release="2026.12.0", created="2026-12-01T01:00:00Z",
                      packs={"params": dict(SPEC["packs"]["params"], version="2026.12.0"),
                             "catalog": {"version": "2026.12.0", "records": 300, "changed_ratio": 0.01}})
    assert ok("build", "--spec", spec, "--out", release.out)["deltas"] == {"params": ["2026.11.0"],
                                                                        "catalog": ["2026.11.0"], "app": {"1.0.0": []}}
    next_dir = release.out / "releases" / "2026.12.0"
    ok("sign", "--release", next_dir, "--key", release.key)
    checked = ok("verify", "--release", next_dir, "--pubkey", release.pub, "--root", release.out)
    deltas = [url for url in checked["artifacts_checked"] if url.endswith(".delta")]
    assert len(deltas) == 2
    published = ok("publish", "--root", release.out, "--repo", tmp_path / "repo", "--region", "eu_west",
                   "--release", "2026.12.0")
    assert set(deltas) <= set(published["regions"]["eu_west"]["copied"])
    ok("verify", "--release", tmp_path / "repo" / "eu_west" / "releases" / "2026.12.0", "--pubkey", release.pub,
       "--root", tmp_path / "repo" / "eu_west")
    (tmp_path / "repo" / "eu_west" / deltas[0]).write_bytes(b"changed")
    broken = run("verify", "--release", tmp_path / "repo" / "eu_west" / "releases" / "2026.12.0", "--pubkey",
                 release.pub, "--root", tmp_path / "repo" / "eu_west", check=False)
    assert f"{deltas[0].split('/')[-1]}: 7 bytes, the manifest says" in broken.stderr


# --- publish ---------------------------------------------------------------------------------------

def test_publish_copies_artifacts_before_the_manifest_and_is_idempotent(release, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(posrelease.os, "replace",
                        lambda src, dst: (renames.append(str(dst)), real_replace(src, dst)))
    first = posrelease.publish(release.out, repo, regions=["eu_west", "us_east"])
    assert first["changed"] is True
    for region in ("eu_west", "us_east"):
        order = [Path(p).relative_to(repo / region).as_posix()
                 for p in renames if p.startswith(f"{repo}/{region}/")]
        assert order == first["regions"][region]["copied"]
        assert order[-2:] == [f"releases/{RELEASE_ID}/manifest.yml.sig",
                              f"releases/{RELEASE_ID}/manifest.yml"]
        assert all(p.startswith("pool/") for p in order[:-3]) and order[-3] == "probe"
        assert len(order) == 7
        # every rename came from a temporary file in the same directory, and none is left behind
        assert not [p for p in (repo / region).rglob("*") if p.name.startswith(".")]
        verified = ok("verify", "--release", repo / region / "releases" / RELEASE_ID, "--pubkey", release.pub,
                      "--root", repo / region)
        assert verified["verified"] is True
    assert not (repo / "eu_central").exists()

    renames.clear()
    second = ok("publish", "--root", release.out, "--repo", repo, "--region", "eu_west", "us_east")
    assert second["changed"] is False
    assert {r["copied"] == [] and r["unchanged"] == 7 for r in second["regions"].values()} == {True}


def test_publish_dry_run_copies_nothing(release, tmp_path):
    answer = ok("publish", "--root", release.out, "--repo", tmp_path / "repo", "--all-regions", "--dry-run")
    assert answer["changed"] is True and set(answer["regions"]) == {"eu_west", "eu_central", "us_east"}
    assert not (tmp_path / "repo").exists()


def test_publish_refuses_an_unsigned_or_rewritten_release(release, tmp_path):
    repo = tmp_path / "repo"
    release.sig.rename(tmp_path / "sig")
    proc = run("publish", "--root", release.out, "--repo", repo, "--region", "eu_west", check=False)
    assert "releases must be signed" in proc.stderr
    assert not repo.exists()
    (tmp_path / "sig").rename(release.sig)
    ok("publish", "--root", release.out, "--repo", repo, "--region", "eu_west")
    release.rewrite(lambda m: m.update(description="same id, other content"))
    proc = run("publish", "--root", release.out, "--repo", repo, "--region", "eu_west", check=False)
    assert "already published with different content" in proc.stderr
    published = repo / "eu_west" / "releases" / RELEASE_ID / "manifest.yml"
    assert b"same id, other content" not in published.read_bytes()


def test_publish_with_pubkey_refuses_a_tampered_release(release, tmp_path):
    release.manifest.write_text(release.manifest.read_text().replace("test release", "Test release"))
    proc = run("publish", "--root", release.out, "--repo", tmp_path / "repo", "--region", "eu_west",
               "--pubkey", release.pub, check=False)
    assert "bad signature" in proc.stderr and not (tmp_path / "repo").exists()


def test_publish_refuses_an_unknown_region(release, tmp_path):
    proc = run("publish", "--root", release.out, "--repo", tmp_path / "repo", "--region", "mars", check=False)
    assert "unknown region(s) mars" in proc.stderr


# --- the pos_release action plugin -----------------------------------------------------------------

def ansible_pos_release(tmp_path, **args):
    """Run `ansible localhost -m pos_release` with the repository's ansible.cfg; the host's result."""
    ansible = ansible_tool("ansible")
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("localhost ansible_connection=local\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1")
    proc = subprocess.run([str(ansible), "localhost", "-i", str(inventory), "-m", "posfleet.fleet.pos_release",
                           "-a", json.dumps(args)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    try:
        return json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, KeyError, IndexError):
        raise AssertionError(f"unexpected ansible output:\n{proc.stdout}\n{proc.stderr}") from None


@pytest.fixture
def distribution_point(release, tmp_path):
    """The release published to one region and served over HTTP on 127.0.0.1, as nginx serves it."""
    posrelease.publish(release.out, tmp_path / "repo", regions=["eu_west"])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(tmp_path / "repo" / "eu_west"))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_pos_release_returns_the_verified_manifest_from_a_distribution_point(release, distribution_point,
                                                                             tmp_path):
    url = f"{distribution_point}/releases/{RELEASE_ID}/manifest.yml"
    result = ansible_pos_release(tmp_path, manifest=url, public_key=str(release.pub),
                                 models=["kestrel_k200", "heron_h5"])
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is False and result["release_id"] == RELEASE_ID
    assert result["release"] == release.data()


def test_pos_release_fails_clearly_for_a_tampered_manifest(release, tmp_path):
    release.manifest.write_text(release.manifest.read_text().replace("size: ", "size: 1", 1))
    result = ansible_pos_release(tmp_path, manifest=str(release.manifest), public_key=str(release.pub))
    assert result["failed"] is True and "release" not in result
    assert result["msg"].startswith(f"pos_release: {release.manifest}: bad signature")


def test_an_old_release_served_under_a_new_release_id_is_refused(release, tmp_path):
    """A genuine, signed manifest copied to another release's directory: a downgrade, refused."""
    newer = release.out / "releases" / "2026.12.0"
    shutil.copytree(release.dir, newer)
    proc = run("verify", "--release", newer, "--pubkey", release.pub, check=False)
    assert "release '2026.11.0' is in directory '2026.12.0'" in proc.stderr
    result = ansible_pos_release(tmp_path, manifest=str(newer / "manifest.yml"), public_key=str(release.pub))
    assert result["failed"] is True and "is in directory '2026.12.0'" in result["msg"]


def test_pos_release_checks_the_manifest_against_the_profiles_the_inventory_gives(release, tmp_path):
    """The play's terminals' profiles, not a models file of the collection's own (an installed one has none)."""
    profile = {"name": "kestrel_k200", "package_style": "bundle", "storage_mb": 96}
    wrong = ansible_pos_release(tmp_path, manifest=str(release.manifest), public_key=str(release.pub),
                                profiles=[profile])
    assert wrong["failed"] is True
    assert "models.kestrel_k200.app.style: dpkg, but the model profile's package_style is bundle" in wrong["msg"]
    right = ansible_pos_release(tmp_path, manifest=str(release.manifest), public_key=str(release.pub),
                                profiles=[dict(profile, package_style="dpkg"), {"name": "osprey_o1",
                                                                                "package_style": "dpkg"}])
    assert right["failed"] is True and "has no entry for model(s) osprey_o1" in right["msg"], right["msg"]


def test_the_release_tool_checks_against_the_models_file_it_is_given(release, tmp_path):
    models = yaml.safe_load((REPO / "inventories" / "shared" / "models.yml").read_text())
    models["models"]["kestrel_k200"]["package_style"] = "bundle"
    (tmp_path / "models.yml").write_text(yaml.safe_dump(models))
    refused = run("--models", tmp_path / "models.yml", "verify", "--release", release.dir, "--pubkey", release.pub,
                  check=False)
    assert "models.kestrel_k200.app.style: dpkg, but the model profile's package_style is bundle" in refused.stderr
    missing = run("--models", tmp_path / "none.yml", "verify", "--release", release.dir, "--pubkey", release.pub,
                  check=False)
    assert f"cannot read the model profiles from {tmp_path / 'none.yml'}" in missing.stderr
    assert missing.stderr.rstrip().endswith("pass --models FILE (the inventory's models_file)"), missing.stderr


def test_pos_release_fails_naming_a_model_the_release_lacks(release, tmp_path):
    release.rewrite(lambda m: m["models"].pop("petrel_p9"))
    result = ansible_pos_release(tmp_path, manifest=str(release.manifest), public_key=str(release.pub),
                                 models=["kestrel_k200", "petrel_p9"])
    assert result["failed"] is True
    assert f"release {RELEASE_ID} has no entry for model(s) petrel_p9" in result["msg"]
