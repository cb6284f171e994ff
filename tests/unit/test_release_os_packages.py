"""OS packages in a release (issue 18, control side): `posfleet-release build` pins Debian packages.

The packages are real .deb files, built here with `dpkg-deb --build` from tiny synthetic trees: these
tests are about the builder (pool, manifest, the installability check), not about Debian. The model
profiles are the repository's own models.yml, copied beside synthetic factory lists, so that its
`os.factory` paths resolve as they do in a checkout. One test downloads a real package with apt.
"""

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from test_release import REPO, SPEC, ok, run

from posfleet import debs
from posfleet import release as posrelease

MODELS_YML = REPO / "inventories" / "shared" / "models.yml"
PROFILES = yaml.safe_load(MODELS_YML.read_text())["models"]
DPKG_MODELS = sorted(name for name, profile in PROFILES.items() if profile["os"]["updates"] == "dpkg")
VENDOR_IMAGE_MODELS = sorted(name for name, profile in PROFILES.items() if profile["os"]["updates"] == "none")

# What the dpkg models' images have installed, in the factory list format (posfleet/debs.py):
# NAME VERSION ARCHITECTURE [PROVIDES]; zlib1g as ${binary:Package} prints it.
FACTORY = """\
# a synthetic image, for the release tests
libc6 2.36-9+deb12u10 amd64
debconf 1.5.82 all debconf-2.0
dpkg 1.21.22 amd64
zlib1g:amd64 1:1.2.13.dfsg-1 amd64 libz1
"""

# The OS set most tests ship: each package's dependencies are met by the factory list or by the set.
GOOD_SET = {"fleet-tzdata": "2026f-1", "libfleetssl3": "3.0.22-1", "fleet-certs": "20250419-1"}


def make_deb(directory, name, version, arch="all", installed_size_kb=64, **relations):
    """Build NAME_VERSION_ARCH.deb in `directory` with dpkg-deb; relations as Depends="...", Pre_Depends=..."""
    tree = directory / ".trees" / f"{name}_{version}_{arch}"
    (tree / "DEBIAN").mkdir(parents=True)
    payload = tree / "usr" / "share" / "fleet-test" / name
    payload.mkdir(parents=True)
    (payload / "VERSION").write_text(f"{name} {version}\n")
    control = {"Package": name, "Version": version, "Architecture": arch,
               "Maintainer": "posfleet tests <tests@posfleet.invalid>", "Installed-Size": str(installed_size_kb)}
    control.update({field.replace("_", "-"): value for field, value in relations.items()})
    control["Description"] = f"synthetic {name} for posfleet's release tests"
    (tree / "DEBIAN" / "control").write_text("".join(f"{key}: {value}\n" for key, value in control.items()))
    path = directory / f"{name}_{version.partition(':')[2] or version}_{arch}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(path)], check=True,
                   capture_output=True, timeout=60)
    return path


@pytest.fixture(scope="module")
def deb_dir(tmp_path_factory):
    """A directory of .debs, as --debs takes it: the good set, and packages the tests add to it."""
    directory = tmp_path_factory.mktemp("debs")
    make_deb(directory, "fleet-tzdata", "2026f-1", installed_size_kb=3000, Depends="cdebconf | debconf-2.0")
    # 20 MiB unpacked: enough to move storage_mb visibly.
    make_deb(directory, "libfleetssl3", "3.0.22-1", arch="amd64", installed_size_kb=20480,
             Depends="libc6 (>= 2.34), zlib1g (>= 1:1.2.0)", Pre_Depends="dpkg (>= 1.19)")
    make_deb(directory, "fleet-certs", "20250419-1", Depends="libfleetssl3:any (>= 3.0.22)")
    # The next OpenSSL needs a newer C library than the images have.
    make_deb(directory, "libfleetssl3", "3.0.23-1", arch="amd64", Depends="libc6 (>= 2.38)")
    make_deb(directory, "libc6", "2.38-1", arch="amd64", installed_size_kb=12000)
    # The same package for another architecture, which no model runs.
    make_deb(directory, "libfleetssl3", "3.0.22-1", arch="arm64", Depends="libc6 (>= 2.34)")
    return directory


@pytest.fixture
def shared(tmp_path):
    """The repository's models.yml, with the dpkg models' factory lists where its os.factory names them."""
    directory = tmp_path / "shared"
    directory.mkdir()
    shutil.copy(MODELS_YML, directory / "models.yml")
    for model in DPKG_MODELS:
        path = directory / PROFILES[model]["os"]["factory"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(FACTORY)
    return directory


def spec_file(path, os_packages=None, **changes):
    """A spec: test_release's, with these os_packages (none when None) and changes."""
    spec = dict(SPEC, **changes)
    if os_packages is not None:
        spec["os_packages"] = os_packages
    path.write_text(yaml.safe_dump(spec))
    return path


def build(shared, spec, out, *extra, check=True, debs_dir=None):
    args = ["--models", shared / "models.yml", "build", "--spec", spec, "--out", out, *extra]
    if debs_dir is not None:
        args += ["--debs", debs_dir]
    if check:
        return ok(*args)
    return run(*args, check=False)


def manifest_of(out, release=SPEC["release"]):
    return yaml.safe_load((out / "releases" / release / "manifest.yml").read_text())


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- the manifest and the pool ---------------------------------------------------------------------

def test_a_set_is_pinned_in_each_dpkg_models_manifest_entry_by_sha256_and_size(shared, deb_dir, tmp_path):
    without = build(shared, spec_file(tmp_path / "plain.yml"), tmp_path / "plain")
    answer = build(shared, spec_file(tmp_path / "spec.yml", {"all": GOOD_SET}), tmp_path / "out", debs_dir=deb_dir)
    assert answer["os_packages_from"] == str(deb_dir)
    manifest = manifest_of(tmp_path / "out")
    for model in DPKG_MODELS:
        entries = manifest["models"][model]["os_packages"]
        assert [entry["name"] for entry in entries] == sorted(GOOD_SET)
        for entry in entries:
            # the directory holds an arm64 libfleetssl3 too: the models' architecture picked the amd64 one
            arch = "amd64" if entry["name"] == "libfleetssl3" else "all"
            source = deb_dir / f"{entry['name']}_{entry['version']}_{arch}.deb"
            assert entry == {"name": entry["name"], "version": GOOD_SET[entry["name"]], "arch": arch,
                             "installed_size_kb": debs.read_deb(source).installed_size_kb,
                             "url": f"pool/{sha256(source)}/{source.name}", "sha256": sha256(source),
                             "size": source.stat().st_size}
            assert (tmp_path / "out" / entry["url"]).read_bytes() == source.read_bytes()
        # What the operator reads: the packages per model, and a flash need that counts them (20 MiB of
        # libfleetssl3 unpacked, and a margin of half again).
        assert answer["models"][model]["os_packages"] == GOOD_SET
        assert answer["models"][model]["storage_mb"] >= without["models"][model]["storage_mb"] + 30
        # libfleetssl3 asks for no reboot in these profiles: the reboot is the profile's alone
        assert manifest["models"][model]["reboot"] is PROFILES[model]["reboot_required"]


def test_a_model_that_takes_no_os_updates_gets_none_and_the_build_says_so(shared, deb_dir, tmp_path):
    answer = build(shared, spec_file(tmp_path / "spec.yml", {"all": GOOD_SET}), tmp_path / "out", debs_dir=deb_dir)
    manifest = manifest_of(tmp_path / "out")
    assert VENDOR_IMAGE_MODELS, "models.yml should keep a model with os.updates: none"
    for model in VENDOR_IMAGE_MODELS:
        assert "os_packages" not in manifest["models"][model]
        assert answer["models"][model]["os_packages"] == {}
        assert answer["models"][model]["os_packages_left_out"].startswith("takes no OS updates")
    for model in DPKG_MODELS:
        assert "os_packages_left_out" not in answer["models"][model]


def test_the_pool_holds_each_deb_once_and_a_later_release_reuses_it(shared, deb_dir, tmp_path):
    first = build(shared, spec_file(tmp_path / "spec.yml", {"all": GOOD_SET}), tmp_path / "out", debs_dir=deb_dir)
    debs_written = [path for path in first["written"] if path.endswith(".deb") and "/posd_" not in path]
    assert len(debs_written) == len(GOOD_SET)  # shared by every dpkg model, one file each
    later = spec_file(tmp_path / "later.yml", {"all": GOOD_SET}, release="2026.11.1",
                      created="2026-11-02T01:00:00Z", description="same OS set, new release")
    second = build(shared, later, tmp_path / "out", debs_dir=deb_dir)
    assert second["written"] == ["releases/2026.11.1/manifest.yml"]
    assert sorted(path.name for path in (tmp_path / "out" / "pool").rglob("*.deb")
                  if not path.name.startswith("posd_")) == sorted(
        f"{name}_{version}_{'amd64' if name == 'libfleetssl3' else 'all'}.deb" for name, version in GOOD_SET.items())


def test_a_model_gets_its_own_packages_and_versions_on_top_of_all(shared, deb_dir, tmp_path):
    """os_packages.models adds packages to one model and overrides a version `all` gives; a libc6 in the
    set meets the newer OpenSSL's dependency, and a libc6 reboots the model (its reboot_packages)."""
    kestrel = "kestrel_k200"
    wanted = {"all": GOOD_SET, "models": {kestrel: {"libfleetssl3": "3.0.23-1", "libc6": "2.38-1"}}}
    answer = build(shared, spec_file(tmp_path / "spec.yml", wanted), tmp_path / "out", debs_dir=deb_dir)
    assert answer["models"][kestrel]["os_packages"] == dict(GOOD_SET, libfleetssl3="3.0.23-1", libc6="2.38-1")
    assert answer["models"][kestrel]["reboot"] is True
    assert PROFILES[kestrel]["reboot_required"] is False  # so the reboot is libc6's
    for model in DPKG_MODELS:
        if model != kestrel:
            assert answer["models"][model]["os_packages"] == GOOD_SET


# --- what is refused -------------------------------------------------------------------------------

def test_an_unmet_dependency_is_refused_naming_the_model_the_package_and_what_the_model_has(shared, deb_dir,
                                                                                         tmp_path):
    wanted = {"all": dict(GOOD_SET, libfleetssl3="3.0.23-1")}
    proc = build(shared, spec_file(tmp_path / "spec.yml", wanted), tmp_path / "out", check=False, debs_dir=deb_dir)
    assert proc.returncode == 1
    for model in DPKG_MODELS:
        assert (f"{model}: libfleetssl3 3.0.23-1 depends on libc6 (>= 2.38), the model has libc6 2.36-9+deb12u10 "
                f"(factory list {shared / PROFILES[model]['os']['factory']})") in proc.stderr
    assert "Add what is missing to os_packages (at a version that satisfies it)" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("depends", "met"), [
    ("libc6 (>= 2.34)", True),                       # versioned, by the factory list
    ("libc6 (>> 2.36-9+deb12u10)", False),
    ("libc6 (= 2.36-9+deb12u10)", True),
    ("libc6 (<< 2.36-9+deb12u2)", False),            # Debian's ordering, not the strings'
    ("zlib1g (>= 1:1.2.0)", True),                   # an epoch
    ("zlib1g (>= 2.0)", True),                       # 1:1.2.13 is newer than any version without an epoch
    ("cdebconf | debconf-2.0", True),                # the second alternative, provided by debconf
    ("cdebconf | fleet-absent", False),
    ("libz1", True),                                 # an unversioned provide meets an unversioned relation
    ("libz1 (>= 1.0)", False),                       # but not a versioned one
    ("libc6:any (>= 2.36)", True),                   # the architecture qualifier is dropped
])
def test_dependencies_are_checked_against_the_factory_list_as_dpkg_would(depends, met):
    installed = debs.parse_installed(FACTORY, "factory")
    package = debs.Package("fleet-app", "1.0-1", "all", depends=debs.parse_relations(depends, "test"))
    assert (debs.unmet([package], installed) == []) is met


def test_a_package_for_another_architecture_is_refused():
    installed = debs.parse_installed(FACTORY, "factory")
    package = debs.Package("libfleetssl3", "3.0.22-1", "arm64")
    assert debs.unmet([package], installed) == [
        "libfleetssl3 3.0.22-1 is built for arm64, the model's packages are amd64"]


def test_the_unmet_message_says_what_each_alternative_is_on_the_model():
    installed = debs.parse_installed(FACTORY, "factory")
    package = debs.Package("fleet-app", "1.0-1", "all",
                           pre_depends=debs.parse_relations("debconf (>= 1.6) | fleet-absent", "test"))
    assert debs.unmet([package], installed) == [
        "fleet-app 1.0-1 pre-depends on debconf (>= 1.6) | fleet-absent, the model has debconf 1.5.82 and "
        "neither the model nor the release has fleet-absent"]


@pytest.mark.parametrize(("os_packages", "expected"), [
    ({"everything": GOOD_SET}, "os_packages.everything: unknown field"),
    ({"all": {"fleet-tzdata": 2026}}, "os_packages.all.fleet-tzdata: expected a string, got int"),
    ({"all": {"fleet-tzdata": "latest"}}, "os_packages.all.fleet-tzdata: expected a Debian version"),
    ({"all": {"Fleet_TZ": "1.0"}}, "os_packages.all.Fleet_TZ: bad name: expected a Debian package name"),
    ({"all": {}}, "os_packages.all: must not be empty"),
    ({"models": {"osprey_o1": GOOD_SET}}, "os_packages.models.osprey_o1: not a model in"),
    ({"models": {"petrel_p9": GOOD_SET}}, "os_packages.models.petrel_p9: the model takes no OS updates"),
])
def test_a_bad_os_packages_section_is_refused_naming_the_field(shared, deb_dir, tmp_path, os_packages, expected):
    proc = build(shared, spec_file(tmp_path / "spec.yml", os_packages), tmp_path / "out", check=False,
                 debs_dir=deb_dir)
    assert expected in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_bad_os_mapping_in_a_model_profile_is_refused_naming_the_models_file(shared, deb_dir, tmp_path):
    models = yaml.safe_load((shared / "models.yml").read_text())
    models["models"]["kestrel_k200"]["os"] = {"updates": "apt", "reboot_packages": "libc6"}
    models["models"]["heron_h5"]["os"] = {"updates": "dpkg", "restart": ["posd"]}
    (shared / "models.yml").write_text(yaml.safe_dump(models))
    proc = build(shared, spec_file(tmp_path / "spec.yml", {"all": GOOD_SET}), tmp_path / "out", check=False,
                 debs_dir=deb_dir)
    first = proc.stderr.splitlines()[0]
    assert first.startswith(f"posfleet-release: {shared / 'models.yml'}: ")
    for wrong in ("models.kestrel_k200.os.updates: expected one of dpkg, none",
                  "models.kestrel_k200.os.reboot_packages: expected a list",
                  "models.heron_h5.os.factory: missing", "models.heron_h5.os.restart: unknown field"):
        assert wrong in first


@pytest.mark.parametrize(("case", "expected"), [
    ("no factory list", "heron_h5: the model's factory list: cannot read {factory}: No such file or directory"),
    ("no such deb", "no .deb of fleet-absent 1.0-1 in {debs}: put fleet-absent_<version>_<arch>.deb there"),
])
def test_a_missing_factory_list_or_deb_is_refused_naming_it(shared, deb_dir, tmp_path, case, expected):
    wanted = {"all": GOOD_SET}
    if case == "no factory list":
        (shared / PROFILES["heron_h5"]["os"]["factory"]).unlink()
    else:
        wanted["models"] = {"kestrel_k200": {"fleet-absent": "1.0-1"}}
    proc = build(shared, spec_file(tmp_path / "spec.yml", wanted), tmp_path / "out", check=False, debs_dir=deb_dir)
    assert expected.format(factory=shared / PROFILES["heron_h5"]["os"]["factory"], debs=deb_dir) in proc.stderr


def test_two_different_debs_of_one_package_and_version_are_refused(shared, deb_dir, tmp_path):
    """A directory holding two builds of one package version: which one terminals get must not be luck."""
    other = tmp_path / "debs"
    shutil.copytree(deb_dir, other, ignore=shutil.ignore_patterns(".trees"))
    make_deb(other / "rebuilt", "fleet-certs", "20250419-1", installed_size_kb=65)
    proc = build(shared, spec_file(tmp_path / "spec.yml", {"all": GOOD_SET}), tmp_path / "out", check=False,
                 debs_dir=other)
    assert "different .debs of the same package and version" in proc.stderr
    assert str(other / "rebuilt" / "fleet-certs_20250419-1_all.deb") in proc.stderr


def test_a_version_apt_does_not_offer_is_refused_naming_it(shared, tmp_path):
    """apt answers this from its package lists: no mirror is needed to get the refusal."""
    spec = spec_file(tmp_path / "spec.yml", {"all": {"tzdata": "0.0-0posfleet1"}}, models=["kestrel_k200"],
                     reboot={"kestrel_k200": False})
    proc = build(shared, spec, tmp_path / "out", check=False)
    first = proc.stderr.splitlines()[0]
    assert first.startswith("posfleet-release: cannot download tzdata 0.0-0posfleet1 with apt-get download: E: ")
    assert first.endswith("`apt-cache policy tzdata` shows the versions this control node's apt sources offer (a "
                          "Debian mirror keeps only the newest version of each suite); or give the .debs with "
                          "--debs DIR")
    assert not (tmp_path / "out").exists()


# --- dry run, sign, verify, publish ----------------------------------------------------------------

def test_a_dry_run_writes_nothing(shared, deb_dir, tmp_path):
    answer = build(shared, spec_file(tmp_path / "spec.yml", {"all": GOOD_SET}), tmp_path / "out", "--dry-run",
                   debs_dir=deb_dir)
    assert answer["dry_run"] is True and answer["changed"] is True
    assert len([path for path in answer["written"] if path.endswith(".deb")]) == len(GOOD_SET) + 1  # + posd's
    assert answer["models"]["kestrel_k200"]["os_packages"] == GOOD_SET
    assert not (tmp_path / "out").exists()


def test_the_manifest_signs_verifies_and_publishes_with_its_debs(shared, deb_dir, tmp_path):
    out, models = tmp_path / "out", ["--models", shared / "models.yml"]
    build(shared, spec_file(tmp_path / "spec.yml", {"all": GOOD_SET}), out, debs_dir=deb_dir)
    release_dir = out / "releases" / SPEC["release"]
    ok("keygen", "--out", tmp_path / "keys")
    ok(*models, "sign", "--release", release_dir, "--key", tmp_path / "keys" / "release.key")
    checked = ok(*models, "verify", "--release", release_dir, "--pubkey", tmp_path / "keys" / "release.pub",
                 "--root", out)
    deb_urls = {entry["url"] for entry in manifest_of(out)["models"]["kestrel_k200"]["os_packages"]}
    assert deb_urls <= set(checked["artifacts_checked"])
    published = ok(*models, "publish", "--root", out, "--repo", tmp_path / "repo", "--region", "eu_west")
    assert deb_urls <= set(published["regions"]["eu_west"]["copied"])
    # a published .deb that is not the signed one is refused by name
    damaged = tmp_path / "repo" / "eu_west" / sorted(deb_urls)[0]
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\0")
    proc = run(*models, "verify", "--release", tmp_path / "repo" / "eu_west" / "releases" / SPEC["release"],
               "--pubkey", tmp_path / "keys" / "release.pub", "--root", tmp_path / "repo" / "eu_west", check=False)
    assert f"{damaged}: sha256 does not match the manifest" in proc.stderr


ENTRY = {"name": "fleet-tzdata", "version": "2026f-1", "arch": "all", "installed_size_kb": 3000,
         "url": f"pool/{'a' * 64}/fleet-tzdata_2026f-1_all.deb", "sha256": "a" * 64, "size": 300}


def manifest_with(model, os_packages):
    """A valid manifest of one model (its app in its package_style) with these OS package entries."""
    style = PROFILES[model]["package_style"]
    app_file = {"dpkg": "posd_1.0.0_all.deb", "bundle": "posd-1.0.0.tar.gz"}[style]
    return {"schema": 1, "release": "2026.11.0", "created": "2026-11-01T01:00:00Z", "description": "x",
            "models": {model: {
                "app": {"version": "1.0.0", "style": style, "url": f"pool/{'b' * 64}/{app_file}",
                        "sha256": "b" * 64, "size": 10},
                "packs": {name: {"version": "1", "url": f"pool/{'c' * 64}/{name}-1.tar.gz", "sha256": "c" * 64,
                                 "size": 10} for name in ("params", "catalog")},
                "reboot": False, "storage_mb": 2, "os_packages": os_packages}}}


@pytest.mark.parametrize(("change", "expected"), [
    (lambda entry: entry["os_packages"].append(dict(ENTRY, signed_by="me")),
     "models.kestrel_k200.os_packages.1.signed_by: unknown field"),
    (lambda entry: entry["os_packages"].insert(0, dict(ENTRY, name="zz-last")),
     "models.kestrel_k200.os_packages: expected each package once, sorted by name"),
    (lambda entry: entry["os_packages"].append(dict(ENTRY, version="1.0 beta")),
     "models.kestrel_k200.os_packages.1.version: expected a Debian version"),
    (lambda entry: entry["os_packages"].append(dict(ENTRY, url=f"pool/{'a' * 64}/fleet-tzdata.tar.gz")),
     "models.kestrel_k200.os_packages.1.url: an OS package must be a .deb file"),
    (lambda entry: entry["os_packages"].append(dict(ENTRY, installed_size_kb=-1)),
     "models.kestrel_k200.os_packages.1.installed_size_kb: expected a number >= 0"),
    # a spec may say candidate; a manifest pins what it resolved to
    (lambda entry: entry["os_packages"].append(dict(ENTRY, version="candidate")),
     "models.kestrel_k200.os_packages.1.version: expected a Debian version"),
])
def test_a_manifest_with_a_bad_os_package_entry_is_refused(change, expected):
    manifest = manifest_with("kestrel_k200", [dict(ENTRY, name="fleet-certs")])
    posrelease.validate_manifest(manifest, PROFILES)  # as built: valid
    change(manifest["models"]["kestrel_k200"])
    with pytest.raises(posrelease.ReleaseError, match=re.escape(expected)):
        posrelease.validate_manifest(manifest, PROFILES)


def test_a_manifest_with_os_packages_for_a_vendor_image_model_is_refused():
    """A control node (verify, pos_release) refuses OS packages for a model posfleet leaves the OS of alone."""
    manifest = manifest_with("petrel_p9", [ENTRY])
    posrelease.validate_manifest(manifest)  # the schema alone allows it
    with pytest.raises(posrelease.ReleaseError, match=re.escape(
            "models.petrel_p9.os_packages: the model takes no OS updates")):
        posrelease.validate_manifest(manifest, PROFILES)
    without_os = {"petrel_p9": {key: value for key, value in PROFILES["petrel_p9"].items() if key != "os"}}
    with pytest.raises(posrelease.ReleaseError, match="the model takes no OS updates"):
        posrelease.validate_manifest(manifest, without_os)


# --- candidate: the version the source offers now ----------------------------------------------------

# Where Debian's ordering and the strings' disagree: 2026f-10 is the highest, 2026f-9 sorts last as a string,
# and a ~ sorts before anything, even the end of the version.
NEWEST_TZDATA = "2026f-10"


@pytest.fixture
def newer_debs(deb_dir, tmp_path):
    """deb_dir with more versions of fleet-tzdata (it has 2026f-1), the highest in a subdirectory."""
    directory = tmp_path / "debs"
    shutil.copytree(deb_dir, directory, ignore=shutil.ignore_patterns(".trees"))
    for version in ("2026f-9", "2026f-10~rc1"):
        make_deb(directory, "fleet-tzdata", version)
    make_deb(directory / "security", "fleet-tzdata", NEWEST_TZDATA)
    return directory


@pytest.mark.parametrize(("versions", "highest"), [
    (["2026f-1", "2026f-9", "2026f-10~rc1", "2026f-10"], "2026f-10"),
    (["10.0-1", "1:1.0-1", "2:0.1"], "2:0.1"),        # the epoch first
    (["1.0~rc1-1", "1.0-1~bpo1"], "1.0-1~bpo1"),
])
def test_newest_orders_versions_as_dpkg_does(versions, highest):
    assert debs.newest(versions) == debs.newest(reversed(versions)) == highest


def test_candidate_with_debs_is_the_directorys_highest_version_and_the_manifest_pins_it(shared, newer_debs, tmp_path):
    wanted = {"all": dict(GOOD_SET, **{"fleet-tzdata": "candidate"})}
    answer = build(shared, spec_file(tmp_path / "spec.yml", wanted), tmp_path / "out", debs_dir=newer_debs)
    assert answer["os_packages_resolved"] == {model: {"fleet-tzdata": NEWEST_TZDATA} for model in DPKG_MODELS}
    highest = newer_debs / "security" / f"fleet-tzdata_{NEWEST_TZDATA}_all.deb"
    manifest = manifest_of(tmp_path / "out")
    for model in DPKG_MODELS:
        assert answer["models"][model]["os_packages"] == dict(GOOD_SET, **{"fleet-tzdata": NEWEST_TZDATA})
        (entry,) = [entry for entry in manifest["models"][model]["os_packages"] if entry["name"] == "fleet-tzdata"]
        assert (entry["version"], entry["sha256"], entry["size"]) == (NEWEST_TZDATA, sha256(highest),
                                                                      highest.stat().st_size)
        assert (tmp_path / "out" / entry["url"]).read_bytes() == highest.read_bytes()
    assert "candidate" not in (tmp_path / "out" / "releases" / SPEC["release"] / "manifest.yml").read_text()


def test_a_dry_run_resolves_candidate_only_for_the_models_that_ask_and_writes_nothing(shared, newer_debs, tmp_path):
    wanted = {"all": GOOD_SET, "models": {"kestrel_k200": {"fleet-tzdata": "candidate"}}}
    answer = build(shared, spec_file(tmp_path / "spec.yml", wanted), tmp_path / "out", "--dry-run",
                   debs_dir=newer_debs)
    assert answer["os_packages_resolved"] == {"kestrel_k200": {"fleet-tzdata": NEWEST_TZDATA}}
    for model in DPKG_MODELS:
        assert answer["models"][model]["os_packages"] == (
            dict(GOOD_SET, **{"fleet-tzdata": NEWEST_TZDATA}) if model == "kestrel_k200" else GOOD_SET)
    assert not (tmp_path / "out").exists()


def test_candidate_of_a_package_the_directory_lacks_is_refused_naming_it(shared, deb_dir, tmp_path):
    wanted = {"all": dict(GOOD_SET, **{"fleet-absent": "candidate"})}
    proc = build(shared, spec_file(tmp_path / "spec.yml", wanted), tmp_path / "out", check=False, debs_dir=deb_dir)
    assert proc.stderr.startswith(f"posfleet-release: os_packages: fleet-absent: candidate: no .deb of fleet-absent "
                                  f"in {deb_dir}: put fleet-absent_<version>_<arch>.deb there")
    assert not (tmp_path / "out").exists()



# --- factory: the version the model's image shipped with -----------------------------------------------

def test_factory_pins_each_models_own_image_version(shared, newer_debs, tmp_path):
    """A release that takes a fleet back to what it left the factory with: each model's factory list says the
    version, so two models with different images get different versions of one package."""
    images = dict(zip(DPKG_MODELS, ["2026f-1", "2026f-9"]))
    assert len(images) == 2, "the test needs two dpkg models"
    for model, version in images.items():
        with (shared / PROFILES[model]["os"]["factory"]).open("a") as handle:
            handle.write(f"fleet-tzdata {version} all\n")
    wanted = {"all": dict(GOOD_SET, **{"fleet-tzdata": "factory"})}
    answer = build(shared, spec_file(tmp_path / "spec.yml", wanted), tmp_path / "out", debs_dir=newer_debs)
    assert answer["os_packages_resolved"] == {model: {"fleet-tzdata": version} for model, version in images.items()}
    manifest = manifest_of(tmp_path / "out")
    for model, version in images.items():
        (entry,) = [entry for entry in manifest["models"][model]["os_packages"] if entry["name"] == "fleet-tzdata"]
        assert (entry["version"], entry["sha256"]) == (version, sha256(newer_debs / f"fleet-tzdata_{version}_all.deb"))
    assert "factory" not in (tmp_path / "out" / "releases" / SPEC["release"] / "manifest.yml").read_text()


def test_factory_of_a_package_the_image_does_not_ship_is_refused_naming_the_list(shared, deb_dir, tmp_path):
    wanted = {"all": dict(GOOD_SET, **{"fleet-tzdata": "factory"})}
    proc = build(shared, spec_file(tmp_path / "spec.yml", wanted), tmp_path / "out", check=False, debs_dir=deb_dir)
    # the first dpkg model the build looks at is the one named
    assert any(proc.stderr.startswith(f"posfleet-release: os_packages: fleet-tzdata: factory: {model}'s factory list "
                                      f"({shared / PROFILES[model]['os']['factory']}) has no fleet-tzdata")
               for model in DPKG_MODELS), proc.stderr
    assert not (tmp_path / "out").exists()


# apt's answers as `apt-cache policy NAME` prints them in the C locale.
POLICY = """\
fleet-tzdata:
  Installed: 2026f-1
  Candidate: 2026f-10
  Version table:
     2026f-10 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
 *** 2026f-1 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
        100 /var/lib/dpkg/status
"""
NO_CANDIDATE = """\
fleet-virtual:
  Installed: (none)
  Candidate: (none)
  Version table:
"""


@pytest.mark.parametrize(("policy", "expected"), [
    (POLICY, "2026f-10"),
    # another architecture's entry (multiarch) comes after the control node's own
    ("zlib1g:\n  Installed: (none)\n  Candidate: 1:1.2.13.dfsg-1\nzlib1g:i386:\n  Candidate: 1:1.2.11\n",
     "1:1.2.13.dfsg-1"),
])
def test_apts_candidate_is_read_from_apt_cache_policy(policy, expected):
    assert posrelease.policy_candidate("fleet-tzdata", policy) == expected


@pytest.mark.parametrize(("policy", "expected"), [
    (NO_CANDIDATE, "os_packages: fleet-virtual: candidate: apt offers no version of fleet-virtual to install "
                   "(`apt-cache policy fleet-virtual` says Candidate: (none)); run `apt-get update`"),
    ("", "os_packages: fleet-virtual: candidate: apt knows no package fleet-virtual (`apt-cache policy "
         "fleet-virtual` lists nothing); check the name, run `apt-get update`"),
    ("fleet-virtual:\n  Candidate: newest\n", "`apt-cache policy fleet-virtual` names 'newest' as its candidate, "
                                               "which is not a Debian version"),
])
def test_no_candidate_from_apt_is_refused_saying_what_to_do(policy, expected):
    with pytest.raises(posrelease.ReleaseError, match=re.escape(expected)):
        posrelease.policy_candidate("fleet-virtual", policy)


# Stand-ins for apt on PATH, answering from the directory $FAKE_APT: apt-cache policy NAME prints NAME.policy
# (nothing for a package apt does not know), apt-get download NAME=VERSION copies NAME_VERSION_*.deb.
FAKE_APT = {
    "apt-cache": '#!/bin/sh\n[ "$1" = policy ] || exit 100\ncat "$FAKE_APT/$2.policy" 2>/dev/null\nexit 0\n',
    "apt-get": '#!/bin/sh\nfor argument; do wanted=$argument; done\necho "$wanted" >> "$FAKE_APT/downloads"\n'
               'cp "$FAKE_APT/${wanted%%=*}_${wanted#*=}_"*.deb .\n',
}


@pytest.fixture
def fake_apt(tmp_path, monkeypatch):
    directory = tmp_path / "apt"
    (directory / "bin").mkdir(parents=True)
    for name, script in FAKE_APT.items():
        (directory / "bin" / name).write_text(script)
        (directory / "bin" / name).chmod(0o755)
    monkeypatch.setenv("FAKE_APT", str(directory))
    monkeypatch.setenv("PATH", f"{directory / 'bin'}:{os.environ['PATH']}")
    return directory


def test_candidate_from_apt_is_resolved_once_downloaded_and_pinned(shared, fake_apt, tmp_path):
    (fake_apt / "fleet-tzdata.policy").write_text(POLICY)
    offered = make_deb(fake_apt, "fleet-tzdata", "2026f-10")
    make_deb(fake_apt, "fleet-tzdata", "2026f-1")
    answer = build(shared, spec_file(tmp_path / "spec.yml", {"all": {"fleet-tzdata": "candidate"}}), tmp_path / "out")
    assert answer["os_packages_from"] == "apt-get download"
    assert answer["os_packages_resolved"] == {model: {"fleet-tzdata": "2026f-10"} for model in DPKG_MODELS}
    assert (fake_apt / "downloads").read_text() == "fleet-tzdata=2026f-10\n"  # once, at the exact version
    for model in DPKG_MODELS:
        (entry,) = manifest_of(tmp_path / "out")["models"][model]["os_packages"]
        assert (entry["version"], entry["sha256"]) == ("2026f-10", sha256(offered))


def test_candidate_apt_offers_none_of_is_refused_before_anything_is_built(shared, fake_apt, tmp_path):
    (fake_apt / "fleet-virtual.policy").write_text(NO_CANDIDATE)
    spec = spec_file(tmp_path / "spec.yml", {"all": {"fleet-virtual": "candidate"}})
    proc = build(shared, spec, tmp_path / "out", "--dry-run", check=False)
    assert proc.stderr.splitlines()[0].startswith(
        "posfleet-release: os_packages: fleet-virtual: candidate: apt offers no version of fleet-virtual to install")
    assert not (fake_apt / "downloads").exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("version", "accepted"), [
    ("candidate", True), ("factory", True), ("3.0.17-1~deb12u2", True), ("1:1.2.13", True),
    ("Candidate", False), ("candidates", False), ("candidate-1", False), ("latest", False), ("3.0 beta", False),
    ("candidatefactory", False), ("factory-1", False),
])
def test_a_spec_version_is_exact_or_a_word_the_build_resolves(version, accepted):
    errors = posrelease.schema_errors(posrelease.OS_PACKAGE_SET, {"fleet-tzdata": version})
    if accepted:
        assert errors == []
    else:
        assert errors == ["fleet-tzdata: expected a Debian version like 3.0.17-1~deb12u2 or 1:1.2.13 "
                          "([epoch:]upstream[-revision], a digit first), or candidate (the version apt would install "
                          "now) or factory (the version in the model's factory list), pinned when the release is "
                          "built"]


# --- the real apt source ---------------------------------------------------------------------------

# apt-get's words when it reaches no mirror (DNS, routing, a proxy): the only reason this test skips.
UNREACHABLE = re.compile(r"Failed to fetch|Could not resolve|Temporary failure resolving|Could not connect|"
                         r"Connection failed|Network is unreachable|Unable to connect")


def test_a_real_package_from_the_control_nodes_apt_sources(shared, tmp_path):
    """tzdata at apt's candidate version, checked against this machine's own dpkg database written with
    the factory list command docs/inventory.md gives, as the lab writes its image's."""
    policy = subprocess.run(["apt-cache", "policy", "tzdata"], capture_output=True, text=True, check=True).stdout
    candidate = re.search(r"Candidate: (\S+)", policy)
    assert candidate and candidate[1] != "(none)", f"apt knows no tzdata to download (run apt-get update):\n{policy}"
    version = candidate[1]
    probe = tmp_path / "probe"
    probe.mkdir()
    fetched = subprocess.run(["apt-get", "download", "--quiet", f"tzdata={version}"], cwd=probe,
                             capture_output=True, text=True, timeout=600, check=False)
    if fetched.returncode != 0 and UNREACHABLE.search(fetched.stderr):
        pytest.skip(f"apt cannot reach a mirror from this machine: {fetched.stderr.strip().splitlines()[-1]}")
    assert fetched.returncode == 0, fetched.stderr
    (downloaded,) = probe.glob("*.deb")

    factory = subprocess.run(
        ["dpkg-query", "--show", "--showformat", "${db:Status-Status} ${Package} ${Version} ${Architecture} "
         "${Provides}\n"], capture_output=True, text=True, check=True).stdout
    kestrel = shared / PROFILES["kestrel_k200"]["os"]["factory"]
    kestrel.write_text("".join(line.removeprefix("installed ") + "\n" for line in factory.splitlines()
                               if line.startswith("installed ")))
    spec = spec_file(tmp_path / "spec.yml", {"all": {"tzdata": version}}, models=["kestrel_k200"],
                     reboot={"kestrel_k200": False})
    answer = build(shared, spec, tmp_path / "out")
    assert answer["os_packages_from"] == "apt-get download"
    assert answer["models"]["kestrel_k200"]["os_packages"] == {"tzdata": version}
    (entry,) = manifest_of(tmp_path / "out")["models"]["kestrel_k200"]["os_packages"]
    control = debs.read_deb(downloaded)
    assert entry == {"name": "tzdata", "version": version, "arch": "all",
                     "installed_size_kb": control.installed_size_kb,
                     "url": f"pool/{sha256(downloaded)}/tzdata_{version.partition(':')[2] or version}_all.deb",
                     "sha256": sha256(downloaded), "size": downloaded.stat().st_size}
    assert entry["url"] in answer["written"]
