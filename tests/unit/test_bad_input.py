"""Bad input: each is refused with an error that names the thing and the reason, and writes nothing.

* Archives a terminal unpacks (data packs, app bundles, backup snapshots), checked by
  plugins/module_utils/pos_archive.py, the code pos_data_sync, pos_package, pos_backup and pos_restore
  share. Each test snapshots the whole tmp tree (a staging directory and a directory "outside" it with
  a file an attack would like to overwrite) before and after: a refused archive leaves it as it was.
* Registry rows the inventory plugin must refuse, odd serials above all (tests/unit/test_inventory.py
  has the row checks of every field; these are the characters and lengths a TMS export gets wrong).
* Release manifests with unknown fields or wrong types that tests/unit/test_release.py does not cover,
  through posfleet.release and the pos_release action plugin.
"""

import base64
import copy
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import test_inventory as inv
import test_release
import yaml
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_archive
from conftest import pack_contents, pack_files, tar_gz, tree_state
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from posfleet import release as posrelease

REPO = Path(__file__).resolve().parents[2]



PACK = "params"
VERSION = "2026.11.0"


# --- archives --------------------------------------------------------------------------------------

class Area:
    """tmp_path/staging (where archives land and unpack) and tmp_path/outside (what must stay intact)."""

    def __init__(self, tmp_path):
        self.root = tmp_path
        self.staging = tmp_path / "staging"
        self.outside = tmp_path / "outside"
        self.staging.mkdir()
        self.outside.mkdir()
        (self.outside / "victim.txt").write_text("must not change\n")
        self.dest = self.staging / f"{PACK}-{VERSION}"

    def archive(self, data, name="in.tar.gz"):
        (self.staging / name).write_bytes(data)
        return self.staging / name

    def refused(self, data, expected, label="pack params", **checks):
        """Unpack `data`; assert ArchiveError naming `label` and `expected`, and an unchanged tree."""
        archive = self.archive(data)
        before = tree_state(self.root)
        with pytest.raises(pos_archive.ArchiveError) as error:
            pos_archive.safe_extract(str(archive), str(self.dest), label, **checks)
        message = str(error.value)
        assert message.startswith(f"{label}: ") and expected in message, message
        assert tree_state(self.root) == before
        assert not self.dest.exists()
        return message


@pytest.fixture
def area(tmp_path):
    return Area(tmp_path)


def pack_members(extra=(), files=None):
    """The members of a good params pack, then `extra` ones."""
    contents = pack_contents(PACK, VERSION, files or pack_files(PACK, VERSION))
    return [({"name": rel, "mode": 0o644}, data) for rel, data in sorted(contents.items())] + list(extra)


def pack_checks(members):
    """The checks pos_data_sync asks for: top-level listed files only, 4 x the archive's size at most."""
    listed = {rel for (fields, _) in members for rel in [fields["name"]] if fields.get("type", b"0") == b"0"}
    return {"allow_dirs": False, "allow_links": False, "allowed": listed | {"PACK.json"},
            "max_bytes": 4 * len(tar_gz(members))}


def test_a_good_pack_unpacks_inside_its_target_only(area):
    members = pack_members()
    written = pos_archive.safe_extract(str(area.archive(tar_gz(members))), str(area.dest), "pack params",
                                       **pack_checks(members))
    assert set(written) == {fields["name"] for fields, _ in members}
    assert pos_archive.pack_intact(str(area.dest), PACK, VERSION)
    assert (area.outside / "victim.txt").read_text() == "must not change\n"


REG, SYM, LNK = tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE

PACK_ATTACKS = {
    "dot-dot": (({"name": "../outside/victim.txt", "mode": 0o644}, b"owned"), "climbs out with '..'"),
    "dot-dot-deep": (({"name": "a/./../../outside/victim.txt", "mode": 0o644}, b"owned"), "climbs out with '..'"),
    "absolute": (({"name": "{outside}/victim.txt", "mode": 0o644}, b"owned"), "has an absolute path"),
    "drive-letter": (({"name": "C:victim.txt", "mode": 0o644}, b"owned"), "has an absolute path"),
    "backslash": (({"name": "..\\outside\\victim.txt", "mode": 0o644}, b"owned"),
                  "has a character a path must not have"),
    "symlink-out": (({"name": "link.json", "type": SYM, "linkname": "../outside/victim.txt"}, None), "is a link"),
    "symlink-abs": (({"name": "link.json", "type": SYM, "linkname": "/etc/passwd"}, None), "is a link"),
    "hardlink-out": (({"name": "hard.json", "type": LNK, "linkname": "../outside/victim.txt"}, None), "is a link"),
    "char-device": (({"name": "tty.json", "type": tarfile.CHRTYPE, "devmajor": 5, "devminor": 0}, None),
                    "is a device, fifo or other special file"),
    "block-device": (({"name": "disk.json", "type": tarfile.BLKTYPE, "devmajor": 8, "devminor": 0}, None),
                     "is a device, fifo or other special file"),
    "fifo": (({"name": "pipe.json", "type": tarfile.FIFOTYPE}, None), "is a device, fifo or other special file"),
    "directory": (({"name": "sub", "type": tarfile.DIRTYPE, "mode": 0o755}, None), "is a directory"),
    # a second copy of a listed file: tar would keep the last one, the one nobody checked
    "duplicate": (({"name": "fees.json", "mode": 0o644}, b'{"card_present_bps": 1}'), "appears twice"),
}


@pytest.mark.parametrize("case", sorted(PACK_ATTACKS))
def test_a_pack_archive_that_reaches_outside_or_holds_specials_is_refused(area, case):
    extra, expected = PACK_ATTACKS[case]
    fields = {key: (value.format(outside=area.outside) if key == "name" else value)
              for key, value in extra[0].items()}
    members = pack_members([(fields, extra[1])])
    message = area.refused(tar_gz(members), expected, **pack_checks(pack_members()))
    assert "refusing the archive" in message or "must hold" in message


def bundle(*members, version="1.1.0"):
    """An app bundle: everything under <version>/, as lab/posd/build.py makes it."""
    return tar_gz([({"name": f"{version}/", "type": tarfile.DIRTYPE, "mode": 0o755}, None),
                   ({"name": f"{version}/bin", "type": tarfile.DIRTYPE, "mode": 0o755}, None),
                   ({"name": f"{version}/bin/posd", "mode": 0o755}, b"#!/bin/sh\n"),
                   *members])


BUNDLE_ATTACKS = {
    "symlink-up": ({"name": "1.1.0/lib", "type": SYM, "linkname": "../../outside"},
                   "points outside the archive"),
    "symlink-abs": ({"name": "1.1.0/lib", "type": SYM, "linkname": "/etc"}, "points to the absolute path '/etc'"),
    "hardlink-out": ({"name": "1.1.0/passwd", "type": LNK, "linkname": "/etc/passwd"}, "has an absolute path"),
    "hardlink-up": ({"name": "1.1.0/victim", "type": LNK, "linkname": "1.1.0/../../outside/victim.txt"},
                    "climbs out with '..'"),
    "hardlink-not-earlier": ({"name": "1.1.0/copy", "type": LNK, "linkname": "1.1.0/bin/later"},
                             "does not point to a file earlier in the archive"),
    "other-top": ({"name": "1.0.0/bin/posd", "mode": 0o755}, "is not under the top directory 1.1.0/"),
    "fifo": ({"name": "1.1.0/run.fifo", "type": tarfile.FIFOTYPE}, "is a device, fifo or other special file"),
}


@pytest.mark.parametrize("case", sorted(BUNDLE_ATTACKS))
def test_a_bundle_whose_links_lead_out_is_refused(area, case):
    fields, expected = BUNDLE_ATTACKS[case]
    area.refused(bundle((fields, None)), expected, label="bundle 1.1.0", strip="1.1.0", allow_links=True)


def test_a_bundle_link_that_leads_out_through_a_later_link_is_refused(area):
    """Each link alone stays inside; together "lib" ends up at the target's parent. Fixed in pos_archive."""
    data = bundle(({"name": "1.1.0/sub", "type": tarfile.DIRTYPE, "mode": 0o755}, None),
                  ({"name": "1.1.0/lib", "type": SYM, "linkname": "sub/up/.."}, None),
                  ({"name": "1.1.0/sub/up", "type": SYM, "linkname": ".."}, None))
    area.refused(data, "link 'lib' resolves outside", label="bundle 1.1.0", strip="1.1.0", allow_links=True)


def test_a_bundle_with_links_inside_is_accepted(area):
    data = bundle(({"name": "1.1.0/sbin", "type": SYM, "linkname": "bin"}, None),
                  ({"name": "1.1.0/bin/posd.real", "type": LNK, "linkname": "1.1.0/bin/posd"}, None))
    pos_archive.safe_extract(str(area.archive(data)), str(area.dest), "bundle 1.1.0", strip="1.1.0",
                             allow_links=True)
    assert (area.dest / "sbin" / "posd").read_text() == "#!/bin/sh\n"


def test_an_archive_with_too_many_members_is_refused_even_when_the_caller_sets_no_limit(area):
    many = [({"name": f"1.1.0/f{index:05d}", "mode": 0o644}, b"") for index in range(pos_archive.MAX_MEMBERS)]
    area.refused(bundle(*many), f"has more than {pos_archive.MAX_MEMBERS} members", label="bundle 1.1.0",
                 strip="1.1.0", allow_links=True)


def test_a_member_that_claims_more_bytes_than_the_limit_is_refused_before_it_is_read(area):
    # A header that says 300 MiB, with no data behind it: refused on the header, nothing is read.
    info = tarfile.TarInfo("1.1.0/huge.bin")
    info.size = 300 << 20
    area.refused(gzip.compress(info.tobuf(tarfile.USTAR_FORMAT)), f"unpacks to more than {pos_archive.MAX_BYTES} bytes",
                 label="bundle 1.1.0", strip="1.1.0", allow_links=True)


def test_a_pack_that_unpacks_to_more_than_its_limit_is_refused(area):
    files = dict(pack_files(PACK, VERSION), **{"zeros.json": b"0" * (1 << 20)})
    members = pack_members(files=files)
    checks = pack_checks(members)
    area.refused(tar_gz(members), f"unpacks to more than {checks['max_bytes']} bytes", **checks)


# A pack big enough to cut in the middle of a member, and incompressible, so that the cut gzip ends
# inside it rather than after it.
BIG = dict(pack_files(PACK, VERSION), **{"big.json": b"".join(hashlib.sha256(b"%d" % n).digest()
                                                             for n in range(1000))})


def truncations():
    data = tar_gz(pack_members(files=BIG))
    plain = gzip.decompress(data)
    return {
        "gzip-half": data[:len(data) // 2],
        "gzip-three-quarters": data[:len(data) * 3 // 4],
        "tar-mid-data": plain[:512 * 3 + 100],
        "tar-mid-header": plain[:512 + 200],
        "empty": b"",
        "not-a-tar": b"PK\x03\x04 a zip, not a tar" * 10,
    }


@pytest.mark.parametrize("case", sorted(truncations()))
def test_a_truncated_or_foreign_archive_is_refused(area, case):
    area.refused(truncations()[case], "not a readable tar archive", **pack_checks(pack_members(files=BIG)))


def test_a_truncated_pack_is_refused_by_read_member_too(area):
    archive = area.archive(truncations()["gzip-half"])
    with pytest.raises(pos_archive.ArchiveError, match=r"^pack params: (not a readable tar archive|has no PACK)"):
        pos_archive.read_member_json(str(archive), "PACK.json", "pack params")


@pytest.mark.parametrize(("files", "expected"), [
    ({"../../etc/shadow": "0" * 64}, "member '../../etc/shadow' climbs out with '..'"),
    ({"/etc/shadow": "0" * 64}, "has an absolute path"),
    ({"sub/fees.json": "0" * 64}, "lists 'sub/fees.json', which is not a top-level file"),
    ({"PACK.json": "0" * 64}, "lists 'PACK.json', which is not a top-level file"),
    ({"fees.json": "not-a-digest"}, "the sha256 of 'fees.json' is not 64 hex digits"),
    ({"fees.json": 7}, "the sha256 of 'fees.json' is not 64 hex digits"),
])
def test_a_pack_manifest_that_lists_paths_outside_the_pack_is_refused(files, expected):
    manifest = {"name": PACK, "version": VERSION, "files": files}
    with pytest.raises(pos_archive.ArchiveError) as error:
        pos_archive.check_pack_manifest(manifest, PACK, "pack params PACK.json")
    assert str(error.value).startswith("pack params PACK.json: ") and expected in str(error.value)


@pytest.mark.parametrize(("member", "expected"), [
    ({"name": "../journal.db", "mode": 0o600}, "climbs out with '..'"),
    ({"name": "journal.db", "type": SYM, "linkname": "/var/lib/pos/journal.db"}, "is not a regular file"),
    ({"name": "dev", "type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, "is not a regular file"),
])
def test_a_backup_snapshot_with_unsafe_members_is_refused(member, expected):
    data = gzip.decompress(tar_gz([({"name": "MANIFEST.json", "mode": 0o600}, b"{}"), (member, None)]))
    with pytest.raises(pos_archive.ArchiveError) as error:
        pos_archive.digest_tar_stream(io.BytesIO(data), "snapshot KST00001")
    assert str(error.value).startswith("snapshot KST00001: ") and expected in str(error.value)


# --- registry rows ---------------------------------------------------------------------------------

GOOD = inv.GOOD_ROWS[0]
ROW = "{serial},kestrel_k200,eu_west,M001,T{n:04d},Juniper Bakery,M001-S01,192.0.2.{n}"
NOT_ALLOWED = "is not allowed: use 1 to 64 letters, digits, '.', '_' or '-'"

# (serial as written in the CSV, the reason the row is refused)
ODD_SERIALS = [
    ("KSTÄ0001", NOT_ALLOWED),                        # a letter outside ASCII
    ("KST\uff10\uff10\uff11", NOT_ALLOWED),           # fullwidth digits, which str.isdigit() accepts
    ("\u041aST00001", NOT_ALLOWED),                   # a Cyrillic K that looks like the Latin one
    ("KST\u200b00001", NOT_ALLOWED),                  # a zero-width space
    ("KST 00001", NOT_ALLOWED),                       # a space inside
    ('"KST\t00001"', "contains the control character U+0009"),
    ('"KST\n00001"', "contains the control character U+000A"),
    ("K" * 65, NOT_ALLOWED),                          # one more than the 64 a serial may have
    ("-oProxyCommand=x", NOT_ALLOWED),                # would read as an ssh option
    ("../KST00001", NOT_ALLOWED),                     # the serial names the backup directory
    (".hidden", NOT_ALLOWED),
    ("KST/00001", NOT_ALLOWED),
    ("{{ 7 * 6 }}", "field 'serial' contains a template marker"),
    ("KST{#00001", "field 'serial' contains a template marker"),
]


def test_odd_serials_are_refused_naming_the_row_and_the_rule(tmp_path):
    rows = [GOOD] + [ROW.format(serial=serial, n=n) for n, (serial, _) in enumerate(ODD_SERIALS, start=10)]
    registry = inv.write_csv(tmp_path, rows)
    config = inv.write_config(tmp_path, "registry.csv")
    before = tree_state(tmp_path)
    proc = inv.run_inventory(config, "--list")

    assert proc.returncode != 0 and proc.stdout == ""
    assert f"{len(ODD_SERIALS)} bad row(s) in {registry}, so nothing was loaded" in proc.stderr
    line = 3
    for serial, reason in ODD_SERIALS:
        start = f"{registry}:{line}: "
        found = [text for text in proc.stderr.splitlines() if text.startswith(start)]
        assert found and reason in found[0], (serial, found)
        line += 1 + serial.count("\n")  # a quoted newline makes the row two lines long
    # No template was evaluated (the paths are left out: pytest's directory may be numbered 42).
    assert "42" not in proc.stderr.replace(str(tmp_path), "")
    assert tree_state(tmp_path) == before


def test_serial_policy_edges_that_are_accepted(tmp_path):
    longest = "K" + "0" * 63
    registry = inv.write_csv(tmp_path, [
        ROW.format(serial="  KST00001  ", n=1),           # spaces around a value are trimmed
        ROW.format(serial=longest, n=2),                  # 64 characters
        ROW.format(serial="kst_2.b-3", n=3),              # lower case, '.', '_' and '-' inside
        "HRN00004,heron_h5,eu_west,M001,T4,Café Zoë; Łódź 東京,S1,192.0.2.4",  # any script in a name
    ])
    hostvars = inv.inventory_list(inv.write_config(tmp_path, registry.name))["_meta"]["hostvars"]
    assert set(hostvars) == {"KST00001", longest, "kst_2.b-3", "HRN00004"}
    assert hostvars["HRN00004"]["pos_merchant_name"] == "Café Zoë; Łódź 東京"


RUN_ID = "{{ lookup('ansible.builtin.pipe', 'id') }}"  # would run `id` on the control node if templated


def test_template_markers_and_control_characters_in_extra_columns_are_refused(tmp_path):
    """Before this check an extra column was trusted as a template: `{{ 6 * 7 }}` read back as 42."""
    registry = inv.write_csv(tmp_path, [
        GOOD + ",front till",
        ROW.format(serial="KST00002", n=2) + f',"{RUN_ID}"',
        ROW.format(serial="KST00003", n=3) + ',"line one\nline two"',
        ROW.format(serial="KST00004", n=4) + ",\x1b[2Jcleared",
    ], header=inv.HEADER + ",note")
    proc = inv.run_inventory(inv.write_config(tmp_path, "registry.csv"), "--list")

    assert proc.returncode != 0
    assert f"{registry}:3: field 'note' contains a template marker" in proc.stderr
    assert f"{registry}:4: field 'note' contains the control character U+000A" in proc.stderr
    assert f"{registry}:6: field 'note' contains the control character U+001B" in proc.stderr
    assert "uid=" not in proc.stdout + proc.stderr


def test_template_markers_nested_in_json_extras_are_refused(tmp_path):
    row = {"serial": "HRN00001", "model": "heron_h5", "region": "us_east", "merchant_id": "M1",
           "terminal_id": "T1", "merchant_name": "Lantern Books", "store": "S1", "ip": "192.0.2.50"}
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps([
        dict(row, tags=["pilot", "{{ 6 * 7 }}"]),
        dict(row, serial="HRN00002", ip="192.0.2.51", site={"{% raw %}": "x"}),
    ]))
    proc = inv.run_inventory(inv.write_config(tmp_path, "registry.json"), "--list")

    assert proc.returncode != 0
    assert f"{registry}:entry 1: field 'tags[1]' contains a template marker" in proc.stderr
    assert f"{registry}:entry 2: field 'site.{{% raw %}}' contains a template marker" in proc.stderr


# --- release manifests -----------------------------------------------------------------------------

PROFILES = posrelease.load_profiles()


def artifact(name, **fields):
    digest = hashlib.sha256(name.encode()).hexdigest()
    return dict(fields, url=f"pool/{digest}/{name}", sha256=digest, size=1000)


def good_manifest(release_id="2026.11.0"):
    models = {}
    for model, profile in PROFILES.items():
        style = profile["package_style"]
        app = "posd_1.0.0_all.deb" if style == "dpkg" else "posd-1.0.0.tar.gz"
        models[model] = {"app": artifact(app, version="1.0.0", style=style),
                         "packs": {name: artifact(f"{name}-{VERSION}.tar.gz", version=VERSION)
                                   for name in ("params", "catalog")},
                         "reboot": False, "storage_mb": 4}
    return {"schema": 1, "release": release_id, "created": "2026-11-01T01:00:00Z", "description": "test",
            "models": models}


def refused(manifest, expected):
    with pytest.raises(posrelease.ReleaseError) as error:
        posrelease.validate_manifest(manifest, PROFILES, "releases/2026.11.0/manifest.yml")
    assert str(error.value).startswith("releases/2026.11.0/manifest.yml: ")
    assert expected in str(error.value), str(error.value)


def test_the_synthetic_manifest_of_these_tests_is_valid():
    posrelease.validate_manifest(good_manifest(), PROFILES)


def _set(path, value):
    def change(manifest):
        *parents, last = path.split(".")
        target = manifest
        for key in parents:
            target = target[key]
        target[last] = value
    return change


# Wrong types and values test_release.py does not already try, each with the error that names the field.
MANIFEST_CASES = {
    "float-size": (_set("models.kestrel_k200.app.size", 1000.0),
                   "models.kestrel_k200.app.size: expected an integer, got float"),
    "float-storage": (_set("models.heron_h5.storage_mb", 4.0), "models.heron_h5.storage_mb: expected an integer"),
    "float-schema": (_set("schema", 1.0), "schema: expected an integer, got float"),
    "bool-size": (_set("models.heron_h5.packs.catalog.size", True),
                  "models.heron_h5.packs.catalog.size: expected an integer, got bool"),
    "string-size": (_set("models.heron_h5.packs.params.size", "1000"),
                    "models.heron_h5.packs.params.size: expected an integer, got str"),
    "zero-size": (_set("models.petrel_p9.app.size", 0), "models.petrel_p9.app.size: expected a number >= 1"),
    "null-reboot": (_set("models.petrel_p9.reboot", None), "models.petrel_p9.reboot: expected true or false"),
    "list-packs": (_set("models.petrel_p9.packs", []), "models.petrel_p9.packs: expected a mapping, got list"),
    "url-traversal": (_set("models.kestrel_k200.packs.params.url", "pool/../../etc/passwd"),
                      "models.kestrel_k200.packs.params.url: expected pool/<sha256>/<file name>"),
    "url-absolute": (_set("models.kestrel_k200.app.url", "http://203.0.113.66/posd_1.0.0_all.deb"),
                     "models.kestrel_k200.app.url: expected pool/<sha256>/<file name>"),
    "url-other-pool": (_set("models.kestrel_k200.app.url", f"pool/{'0' * 64}/posd_1.0.0_all.deb"),
                       "models.kestrel_k200.app.url: the pool directory must be the entry's sha256"),
    "sha-uppercase": (_set("models.heron_h5.app.sha256", "A" * 64), "models.heron_h5.app.sha256: expected 64 hex"),
    "release-path": (_set("release", "../2026.12.0"), "release: expected a release id"),
    "release-long": (_set("release", "2" * 65), "release: expected a release id"),
    "version-unicode": (_set("models.heron_h5.app.version", "1.0.0\u2028"), "models.heron_h5.app.version: expected"),
    "created-local": (_set("created", "2026-11-01 01:00:00"), "created: expected a UTC time"),
    "unknown-model": (lambda m: m["models"].update(osprey_o1=m["models"]["kestrel_k200"]),
                      f"models.osprey_o1: not a model in {posrelease.MODELS_FILE}"),
    "model-bad-name": (_set("models.Kestrel-K200", {}), "models.Kestrel-K200: bad name"),
    "merchant-pack": (_set("models.heron_h5.packs.merchant", {}), "models.heron_h5.packs.merchant: unknown field"),
    "no-models": (_set("models", {}), "models: must not be empty"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_a_manifest_with_a_wrong_type_or_unknown_field_is_refused_naming_it(case):
    change, expected = MANIFEST_CASES[case]
    manifest = copy.deepcopy(good_manifest())
    change(manifest)
    refused(manifest, expected)


@pytest.mark.parametrize(("text", "expected"), [
    ("schema: 1\nschema: 1\n", "not valid YAML: duplicate key 'schema'"),
    ("!!python/object/apply:os.system ['touch {marker}']\n", "not valid YAML: could not determine a constructor"),
    ("- schema\n- 1\n", "(top level): expected a mapping, got list"),
    ("", "(top level): expected a mapping, got NoneType"),
    ("\x00\x01binary", "not valid YAML"),
    ("schema: 1\nrelease: [unclosed\n", "not valid YAML"),
])
def test_a_manifest_that_is_not_a_yaml_mapping_is_refused_and_never_run(tmp_path, text, expected):
    marker = tmp_path / "ran"
    with pytest.raises(posrelease.ReleaseError) as error:
        posrelease.parse_manifest(text.format(marker=marker).encode(), PROFILES, "manifest.yml")
    assert str(error.value).startswith("manifest.yml: ") and expected in str(error.value)
    assert not marker.exists()


def test_the_action_plugin_refuses_a_signed_manifest_with_a_wrong_type(tmp_path):
    """The signature is good; the schema alone refuses it, and the play gets no release to act on."""
    key = Ed25519PrivateKey.generate()
    pub = tmp_path / "release.pub"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    manifest = good_manifest()
    manifest["models"]["heron_h5"]["storage_mb"] = 4.5
    manifest["models"]["heron_h5"]["signed_by"] = "someone"
    release_dir = tmp_path / "releases" / "2026.11.0"
    release_dir.mkdir(parents=True)
    data = yaml.safe_dump(manifest, sort_keys=False).encode()
    (release_dir / "manifest.yml").write_bytes(data)
    (release_dir / "manifest.yml.sig").write_text(base64.b64encode(key.sign(data)).decode() + "\n")
    before = tree_state(tmp_path)
    (tmp_path / "run").mkdir()

    result = test_release.ansible_pos_release(tmp_path / "run", manifest=str(release_dir / "manifest.yml"),
                                              public_key=str(pub))
    assert result["failed"] is True and "release" not in result
    assert result["msg"].startswith(f"pos_release: {release_dir / 'manifest.yml'}: ")
    assert "models.heron_h5.signed_by: unknown field" in result["msg"]
    assert "models.heron_h5.storage_mb: expected an integer, got float" in result["msg"]
    assert {k: v for k, v in tree_state(tmp_path).items() if not k.startswith("run")} == before
