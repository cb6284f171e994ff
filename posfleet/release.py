"""Releases on the control node: build, sign, verify and publish (docs/releases.md).

    posfleet-release keygen  --out DIR
    posfleet-release build   --spec SPEC.yml --out DIR [--debs DIR] [--dry-run]
    posfleet-release sign    --release DIR/releases/ID --key release.key [--dry-run]
    posfleet-release verify  --release DIR/releases/ID --pubkey release.pub [--root DIR]
    posfleet-release publish --root DIR --repo BASE (--region NAME... | --all-regions) [--release ID...]
                             [--pubkey release.pub] [--dry-run] [--audit-log FILE]

Every subcommand prints one JSON object (with `changed` where it writes) and exits 0, or prints
`posfleet-release: <what is wrong>` as the first line on stderr, the JSON object `{"changed", "failed":
true, "msg"}` on stdout, and exits 1 (2 for a usage error). The functions below are the library the
pos_release action plugin uses too; the manifest format is the contract in docs/update-pipeline.md.
"""

import argparse
import base64
import binascii
import contextlib
import datetime
import fnmatch
import gzip
import hashlib
import io
import json
import math
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import NamedTuple, Optional
from urllib.parse import urlsplit

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jsonschema import Draft202012Validator, validators

from posfleet import collection, debs, packs
from posfleet import report as posreport

PROJECT = Path(__file__).resolve().parents[1]
# The checkout's shared model and region files: the defaults of --models and --regions (or POSFLEET_MODELS,
# POSFLEET_REGIONS). An installed package has no checkout: publish.yml passes the inventory's files.
MODELS_FILE = Path(os.environ.get("POSFLEET_MODELS") or PROJECT / "inventories" / "shared" / "models.yml")
REGIONS_FILE = Path(os.environ.get("POSFLEET_REGIONS") or PROJECT / "inventories" / "shared" / "regions.yml")
APP_BUILDER = PROJECT / "lab" / "posd" / "build.py"

SCHEMA_VERSION = 1
MANIFEST = "manifest.yml"
SIGNATURE = "manifest.yml.sig"
PRIVATE_KEY = "release.key"
PUBLIC_KEY = "release.pub"
PACK_NAMES = ("params", "catalog")  # the merchant pack is rendered per terminal, never in a manifest
APP_FILES = {"dpkg": "deb", "bundle": "bundle"}  # package_style -> the artifact lab/posd/build.py makes
APP_SUFFIX = {"dpkg": ".deb", "bundle": ".tar.gz"}
PROBE_SIZE = 4096
MIB = 1 << 20
# Free flash an update needs = (downloads + unpacked trees + the previous .deb that dpkg models keep
# for rollback) x margin + floor. The margin covers filesystem blocks and dpkg's temporary copies; the
# floor covers the journal growing while the terminal is in maintenance.
STORAGE_MARGIN = 1.5
STORAGE_FLOOR_MB = 1
# Deltas: from the packs of at most this many earlier releases, and only when a delta is at most this
# share of the full archive (past it the terminal saves little and still spends the CPU to rebuild).
DELTA_BASES = 3
DELTA_MAX_SHARE = 0.5

# --- the manifest and spec schemas ---------------------------------------------------------------
# JSON Schema (jsonschema is a control-node requirement); "x-expected" is ours: the words an error
# message uses for a value that does not match a pattern.

VERSION_PATTERN = r"^[0-9][A-Za-z0-9.+~-]{0,63}$"
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
VERSION = {"type": "string", "pattern": VERSION_PATTERN,
           "x-expected": "a version like 1.2.0 (a digit first, then letters, digits, . + ~ -)"}
MODEL_NAME = {"type": "string", "pattern": NAME_PATTERN,
              "x-expected": "a model name (lower case letters, digits and _)"}
RELEASE_ID = {"type": "string", "pattern": r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$",
              "x-expected": "a release id like 2026.11.0 (letters, digits, . _ + -)"}
CREATED = {"type": "string", "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$",
           "x-expected": "a UTC time like 2026-11-24T01:00:00Z"}
SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$", "x-expected": "64 hex characters"}
URL = {"type": "string", "pattern": r"^pool/[0-9a-f]{64}/[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}$",
       "x-expected": "pool/<sha256>/<file name>, relative to the distribution point root"}
SIZE = {"type": "integer", "minimum": 1}
# OS packages are named and versioned as Debian does (posfleet.debs owns the patterns).
DEB_NAME = {"type": "string", "pattern": debs.NAME_PATTERN,
            "x-expected": "a Debian package name (lower case letters, digits, + - ., at least two characters)"}
DEB_VERSION = {"type": "string", "pattern": debs.VERSION_PATTERN,
               "x-expected": "a Debian version like 3.0.17-1~deb12u2 or 1:1.2.13 ([epoch:]upstream[-revision], "
                             "a digit first)"}
DEB_ARCH = {"type": "string", "pattern": debs.ARCH_PATTERN, "x-expected": "a Debian architecture like amd64 or all"}
# In a spec, a version may also be a word (docs/releases.md, OS packages): `candidate`, what apt would install
# now, or `factory`, the version in the model's factory list (what its image shipped with: a release that
# takes a fleet back to it). The build resolves each and the manifest pins the exact version, so DEB_VERSION
# alone is the manifest's. No Debian version starts with a letter, so a word can never be one.
CANDIDATE = "candidate"
FACTORY = "factory"
SPEC_DEB_VERSION = {"type": "string", "pattern": rf"^({CANDIDATE}|{FACTORY})$|{debs.VERSION_PATTERN}",
                    "x-expected": DEB_VERSION["x-expected"] + f", or {CANDIDATE} (the version apt would install now) "
                                                              f"or {FACTORY} (the version in the model's factory "
                                                              "list), pinned when the release is built"}


def _artifact(optional=None, **fields):
    properties = dict(fields, url=URL, sha256=SHA256, size=SIZE)
    return {"type": "object", "additionalProperties": False, "required": list(properties),
            "properties": dict(properties, **(optional or {}))}


# A pack or an app bundle may list deltas from earlier versions (docs/performance.md, Delta sync). They
# are computed on the uncompressed tar, so the entry then also names that tar's sha256 and size: what a
# terminal checks after rebuilding it from a delta.
DELTA = _artifact(from_version=VERSION, from_tar_sha256=SHA256)
DELTA_FIELDS = {"tar_sha256": SHA256, "tar_size": SIZE, "deltas": {"type": "array", "items": DELTA, "minItems": 1}}
PACK = dict(_artifact(version=VERSION, optional=DELTA_FIELDS), dependentRequired={"deltas": ["tar_sha256", "tar_size"]})
APP = dict(_artifact(version=VERSION, style={"enum": sorted(APP_FILES)}, optional=DELTA_FIELDS),
           dependentRequired={"deltas": ["tar_sha256", "tar_size"]})
# One .deb of a model's OS package set. installed_size_kb is the package's Installed-Size: with `size`
# it is what the set takes on flash (storage_mb), and the terminal side's own free-space check can use it.
OS_PACKAGE = _artifact(name=DEB_NAME, version=DEB_VERSION, arch=DEB_ARCH,
                       installed_size_kb={"type": "integer", "minimum": 0})


MANIFEST_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["schema", "release", "created", "description", "models"],
    "properties": {
        "schema": {"type": "integer", "const": SCHEMA_VERSION,
                   "x-expected": f"{SCHEMA_VERSION} (the manifest schema this posfleet reads)"},
        "release": RELEASE_ID,
        "created": CREATED,
        "description": {"type": "string"},
        "models": {
            "type": "object", "minProperties": 1, "propertyNames": MODEL_NAME,
            "additionalProperties": {
                "type": "object", "additionalProperties": False,
                "required": ["app", "packs", "reboot", "storage_mb"],
                "properties": {
                    "app": APP,
                    "packs": {"type": "object", "additionalProperties": False, "required": list(PACK_NAMES),
                              "properties": {name: PACK for name in PACK_NAMES}},
                    "reboot": {"type": "boolean"},
                    "storage_mb": {"type": "integer", "minimum": 1},
                    # Only for a model whose profile takes OS updates (os.updates: dpkg); sorted by name.
                    "os_packages": {"type": "array", "items": OS_PACKAGE, "minItems": 1},
                },
            },
        },
    },
}

# A spec's OS packages: {Debian package name: exact version, or candidate}.
OS_PACKAGE_SET = {"type": "object", "minProperties": 1, "propertyNames": DEB_NAME,
                  "additionalProperties": SPEC_DEB_VERSION}

SPEC_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["release", "app", "packs"],
    "properties": {
        "release": RELEASE_ID,
        "description": {"type": "string"},
        "created": CREATED,
        "models": {"type": "array", "items": MODEL_NAME, "minItems": 1, "uniqueItems": True},
        "app": {
            "type": "object", "additionalProperties": False, "required": ["version"],
            "properties": {
                "version": VERSION,
                "versions": {"type": "object", "propertyNames": MODEL_NAME, "additionalProperties": VERSION},
                "broken": {"type": "boolean"},
            },
        },
        "packs": {
            "type": "object", "additionalProperties": False, "required": list(PACK_NAMES),
            "properties": {
                "params": {
                    "type": "object", "additionalProperties": False, "required": ["version", "acquirer_url"],
                    "properties": {
                        "version": VERSION,
                        "fee_bps": {"type": "integer", "minimum": 10, "maximum": 10000},
                        "acquirer_url": {"type": "string", "pattern": r"^https?://[^\s/]+",
                                         "x-expected": "an http(s) URL"},
                    },
                },
                "catalog": {
                    "type": "object", "additionalProperties": False, "required": ["version"],
                    "properties": {
                        "version": VERSION,
                        "records": {"type": "integer", "minimum": 1, "maximum": 1000000},
                        "changed_ratio": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                },
            },
        },
        "reboot": {"type": ["boolean", "object"], "propertyNames": MODEL_NAME,
                   "additionalProperties": {"type": "boolean"}},
        "os_packages": {
            "type": "object", "additionalProperties": False, "minProperties": 1,
            "properties": {
                "all": OS_PACKAGE_SET,  # every model of the release that takes OS updates
                # per model: more packages, or another version of one `all` names
                "models": {"type": "object", "minProperties": 1, "propertyNames": MODEL_NAME,
                           "additionalProperties": OS_PACKAGE_SET},
            },
        },
    },
}

# How a model takes OS updates: its profile's `os` mapping in the models file (docs/inventory.md).
OS_UPDATES = ("dpkg", "none")
OS_PROFILE = {
    "type": "object",
    "properties": {"os": {
        "type": "object", "additionalProperties": False, "required": ["updates"],
        "properties": {
            "updates": {"enum": list(OS_UPDATES)},
            # the model's factory list (posfleet.debs has the format): relative to the models file
            "factory": {"type": "string", "minLength": 1},
            "reboot_packages": {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True},
            "restart_after": {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True},
        },
        "if": {"properties": {"updates": {"const": "dpkg"}}},
        "then": {"required": ["factory"]},
    }},
}

TYPE_WORDS = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
              "number": "a number", "boolean": "true or false"}


class ReleaseError(Exception):
    """A release cannot be built, signed, verified or published; the message says what and why."""


def _join(path, key):
    return f"{path}.{key}" if path else str(key)


def _describe(error):
    """Operator-facing lines for one jsonschema error: `field.path: what was expected`."""
    path = ".".join(str(part) for part in error.absolute_path)
    schema, kind, value = error.schema, error.validator, error.validator_value
    if "propertyNames" in error.absolute_schema_path:
        return [f"{_join(path, error.instance)}: bad name: expected {schema.get('x-expected', value)}"]
    where = path or "(top level)"
    if kind == "additionalProperties":
        known = schema.get("properties", {})
        return [f"{_join(path, key)}: unknown field" for key in error.instance if key not in known]
    if kind == "required":
        return [f"{_join(path, key)}: missing" for key in value if key not in error.instance]
    if kind == "dependentRequired":
        return [f"{_join(path, key)}: missing (needed with {name})" for name, keys in value.items()
                if name in error.instance for key in keys if key not in error.instance]
    if kind == "type":
        wanted = " or ".join(TYPE_WORDS[name] for name in ([value] if isinstance(value, str) else value))
        hint = " (quote it in YAML)" if value == "string" and error.instance is not None else ""
        return [f"{where}: expected {wanted}, got {type(error.instance).__name__}{hint}"]
    if kind in ("pattern", "const"):
        return [f"{where}: expected {schema.get('x-expected', value)}"]
    if kind == "enum":
        return [f"{where}: expected one of {', '.join(map(str, value))}"]
    if kind in ("minimum", "maximum"):
        return [f"{where}: expected a number {'>=' if kind == 'minimum' else '<='} {value}"]
    if kind in ("minProperties", "minItems"):
        return [f"{where}: must not be empty"]
    return [f"{where}: {error.message}"]


def _integer(_checker, instance):
    return isinstance(instance, int) and not isinstance(instance, bool)


# JSON Schema counts 4.0 as an integer; a manifest or spec that says 4.0 where the contract says an
# integer has the wrong type, and is refused like any other.
_Validator = validators.extend(
    Draft202012Validator, type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _integer))


def schema_errors(schema, instance):
    """Every way `instance` breaks `schema`, one line each, sorted by field path."""
    lines = set()
    for error in _Validator(schema).iter_errors(instance):
        lines.update(_describe(error))
    return sorted(lines)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: a signed document must mean one thing only."""


def _mapping(loader, node, deep=False):
    keys = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in keys:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        keys.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_yaml(data, what):
    try:
        return yaml.load(data, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ReleaseError(f"{what}: not valid YAML: {' '.join(str(exc).split())}") from None


class Profiles(dict):
    """{model name: profile}, and where they come from (`source`), for the messages that name a model."""

    def __init__(self, profiles, source):
        super().__init__(profiles)
        self.source = source


def load_profiles(models_file=MODELS_FILE):
    """{model name: profile} from the shared models file (--models)."""
    try:
        with open(models_file, encoding="utf-8") as handle:
            return Profiles(yaml.safe_load(handle)["models"], str(models_file))
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise ReleaseError(f"cannot read the model profiles from {models_file}: {exc}; pass --models FILE (the "
                           "inventory's models_file)") from None


def load_regions(regions_file=REGIONS_FILE):
    try:
        with open(regions_file, encoding="utf-8") as handle:
            return yaml.safe_load(handle)["regions"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise ReleaseError(f"cannot read the regions from {regions_file}: {exc}; pass --regions FILE (the "
                           "inventory's regions_file)") from None


# --- small file helpers ----------------------------------------------------------------------------

def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def same_file(path, sha256, size):
    """True when `path` is a regular file with exactly this size and sha256."""
    path = Path(path)
    return (path.is_file() and not path.is_symlink() and path.stat().st_size == size
            and sha256_file(path) == sha256)


def write_temp(dest, data=None, source=None, mode=0o644):
    """Write `data` (or copy the file `source`) to a temporary file beside `dest`; its path.

    The temporary name starts with a dot, in the same directory, so renaming it to `dest` never crosses
    a file system. A write that fails leaves no temporary file.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if source is not None:
                with open(source, "rb") as src:
                    shutil.copyfileobj(src, handle, 1 << 20)
            else:
                handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        _unlink(tmp)
        raise
    return Path(tmp)


def atomic_write(dest, data=None, source=None, mode=0o644):
    """Write `data` (or copy the file `source`) to `dest` through a temporary file and one rename.

    A reader (nginx, a terminal, the control node) sees the old file or the complete new one, never a
    part.
    """
    tmp = write_temp(dest, data, source, mode)
    try:
        os.replace(tmp, dest)
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path):
    if os.path.lexists(path):
        os.unlink(path)


def probe_bytes():
    """The 4 KiB probe: fixed pseudo-random bytes, so that no link compression flatters the measurement."""
    out = bytearray()
    counter = 0
    while len(out) < PROBE_SIZE:
        out += hashlib.sha256(b"posfleet-probe-%d" % counter).digest()
        counter += 1
    return bytes(out[:PROBE_SIZE])


def _tar_payload(fileobj):
    with tarfile.open(fileobj=fileobj, mode="r:*") as tar:
        return sum(member.size for member in tar.getmembers() if member.isfile())


def unpacked_size(path):
    """Bytes the artifact's files take once unpacked: a tar.gz's members, or a .deb's data.tar."""
    path = Path(path)
    data = path.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        return _tar_payload(io.BytesIO(data))
    offset = 8
    while offset + 60 <= len(data):  # ar: 60-byte headers, bodies padded to an even length
        header = data[offset:offset + 60]
        name, size = header[:16].decode("ascii").strip().rstrip("/"), int(header[48:58])
        if name.startswith("data.tar"):
            return _tar_payload(io.BytesIO(data[offset + 60:offset + 60 + size]))
        offset += 60 + size + size % 2
    raise ReleaseError(f"{path}: a .deb without a data.tar member")


# --- keys and signatures ---------------------------------------------------------------------------

def keygen(out_dir):
    """Make an ed25519 key pair: release.key (PKCS8 PEM, mode 0600) and release.pub; never overwrite."""
    out = Path(out_dir)
    private, public = out / PRIVATE_KEY, out / PUBLIC_KEY
    for path in (private, public):
        if os.path.lexists(path):
            raise ReleaseError(f"{path} exists; keygen never overwrites a key (every control node and "
                               f"terminal trusts the public key it has). Remove it first if you mean it")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    for path, data, mode in ((private, pem, 0o600), (public, pub_pem, 0o644)):
        # O_EXCL: a key that appeared since the check above is not overwritten either.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return {"changed": True, "private_key": str(private), "public_key": str(public),
            "public_key_sha256": public_key_fingerprint(pub_pem)}


def public_key_fingerprint(pub_pem):
    """sha256 of the raw 32-byte public key: what operators compare when they install a public key."""
    key = load_public_key_bytes(pub_pem, "public key")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def load_private_key(path):
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o777
        data = path.read_bytes()
    except OSError as exc:
        raise ReleaseError(f"cannot read the signing key {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise ReleaseError(f"signing key {path} is readable by others (mode {mode:04o}); chmod 600 it")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ReleaseError(f"signing key {path} is encrypted; posfleet-release needs it decrypted "
                           "(see docs/releases.md, Keys)") from None
    except ValueError:
        raise ReleaseError(f"{path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ReleaseError(f"signing key {path} is not an ed25519 key")
    return key


def load_public_key_bytes(data, what):
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise ReleaseError(f"{what} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ReleaseError(f"{what} is not an ed25519 public key")
    return key


def load_public_key(path):
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ReleaseError(f"cannot read the public key {path}: {exc.strerror}") from None
    return load_public_key_bytes(data, f"public key {path}")


def signature_text(key, manifest_bytes):
    """The .sig file: base64 of the raw 64-byte ed25519 signature, one line."""
    return base64.b64encode(key.sign(manifest_bytes)).decode("ascii") + "\n"


def check_signature(manifest_bytes, sig_text, public_key, what):
    """Raise unless `sig_text` is a valid signature of exactly `manifest_bytes`."""
    try:
        signature = base64.b64decode("".join(sig_text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ReleaseError(f"{what}: the signature file is not base64") from None
    if len(signature) != 64:
        raise ReleaseError(f"{what}: the signature file does not hold an ed25519 signature (64 bytes)")
    try:
        public_key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise ReleaseError(f"{what}: bad signature: the manifest was changed after it was signed, or it was "
                           "signed with another key than the one given") from None


# --- the manifest ----------------------------------------------------------------------------------

def _source(profiles):
    return getattr(profiles, "source", None) or "the model profiles"


def validate_manifest(manifest, profiles=None, what=MANIFEST, partial=False):
    """Raise ReleaseError naming every field that breaks the schema or the model profiles.

    `partial`: the profiles are some models' only (a play's terminals'); a model they lack is not an error.
    """
    errors = schema_errors(MANIFEST_SCHEMA, manifest)
    if not errors:
        for model, entry in manifest["models"].items():
            for path, item in _artifact_items(model, entry):
                if item["url"].split("/")[1] != item["sha256"]:
                    errors.append(f"{path}.url: the pool directory must be the entry's sha256")
            for path, item in [(f"models.{model}.app", entry["app"])] + [
                    (f"models.{model}.packs.{name}", pack) for name, pack in entry["packs"].items()]:
                bases = [delta["from_tar_sha256"] for delta in item.get("deltas", [])]
                if len(set(bases)) != len(bases):
                    errors.append(f"{path}.deltas: two deltas from the same base")
                if item.get("tar_sha256") in bases:
                    what = "pack" if ".packs." in path else "bundle"
                    errors.append(f"{path}.deltas: a delta from the {what} to itself")
            style = entry["app"]["style"]
            if style != "bundle" and "tar_sha256" in entry["app"]:
                errors.append(f"models.{model}.app: a {style} app has no tar_sha256, tar_size or deltas "
                              "(only bundles are sent as deltas)")
            if not entry["app"]["url"].endswith(APP_SUFFIX[style]):
                errors.append(f"models.{model}.app.url: a {style} app must be a {APP_SUFFIX[style]} file")
            errors += _os_package_errors(model, entry.get("os_packages", []))
            if profiles is not None:
                if model not in profiles:
                    if not partial:
                        errors.append(f"models.{model}: not a model in {_source(profiles)}")
                    continue
                if profiles[model].get("package_style") != style:
                    errors.append(f"models.{model}.app.style: {style}, but the model profile's package_style "
                                  f"is {profiles[model].get('package_style')}")
                if "os_packages" in entry and os_updates(profiles[model]) != "dpkg":
                    errors.append(f"models.{model}.os_packages: the model takes no OS updates (its profile in "
                                  f"{_source(profiles)} has no os.updates: dpkg)")
    if errors:
        raise ReleaseError(f"{what}: " + "; ".join(errors))
    return manifest


def _os_package_errors(model, entries):
    """A model's OS packages: each a .deb, sorted by name, each name once (one version per package)."""
    errors = []
    names = [item["name"] for item in entries]
    if names != sorted(set(names)):
        errors.append(f"models.{model}.os_packages: expected each package once, sorted by name")
    errors += [f"models.{model}.os_packages.{index}.url: an OS package must be a .deb file"
               for index, item in enumerate(entries) if not item["url"].endswith(".deb")]
    return errors


def os_updates(profile):
    """How a model takes OS updates: `dpkg`, or `none` (also for a profile without an `os` mapping)."""
    os_profile = profile.get("os")
    return os_profile.get("updates", "none") if isinstance(os_profile, dict) else "none"


def parse_manifest(manifest_bytes, profiles=None, what=MANIFEST, partial=False):
    return validate_manifest(load_yaml(manifest_bytes, what), profiles, what, partial)


def unsigned(what):
    return f"no signature file {what}.sig: releases must be signed; run `posfleet-release sign`"


def check_release(manifest_bytes, sig_text, public_key, profiles=None, what=MANIFEST, partial=False):
    """The one check everything trusts: the signature first, then the schema. Returns the manifest."""
    if sig_text is None:
        raise ReleaseError(unsigned(what))
    check_signature(manifest_bytes, sig_text, public_key, what)
    return parse_manifest(manifest_bytes, profiles, what, partial)


def check_location(manifest, location, what=MANIFEST):
    """Refuse a manifest outside releases/<its release id>/ (a path or a URL).

    The signature says who made a manifest, not which release directory it belongs in: without this,
    an old signed manifest served at a new release's path would pass, and terminals would downgrade.
    """
    directory = posixpath.basename(posixpath.dirname(urlsplit(str(location)).path))
    if directory != manifest["release"]:
        raise ReleaseError(f"{what}: release {manifest['release']!r} is in directory {directory!r}; "
                           "a release lives in releases/<release id>/")
    return manifest


def _artifact_items(model, entry):
    """[(field path, entry)] of every downloadable file of one model: app, packs, their deltas and the
    OS packages."""
    items = []
    for path, item in [(f"models.{model}.app", entry["app"])] + [
            (f"models.{model}.packs.{name}", pack) for name, pack in entry["packs"].items()]:
        items.append((path, item))
        items += [(f"{path}.deltas.{index}", delta) for index, delta in enumerate(item.get("deltas", []))]
    items += [(f"models.{model}.os_packages.{index}", item) for index, item in enumerate(entry.get("os_packages", []))]
    return items


def artifacts(manifest):
    """{url: (sha256, size)} of every artifact the manifest names (deltas included)."""
    found = {}
    for model, entry in manifest["models"].items():
        for _, item in _artifact_items(model, entry):
            found[item["url"]] = (item["sha256"], item["size"])
    return found


def check_artifacts(manifest, root):
    """Raise unless every artifact exists under `root` with the manifest's size and sha256."""
    errors = []
    for url, (sha256, size) in sorted(artifacts(manifest).items()):
        path = Path(root) / url
        if not path.is_file():
            errors.append(f"{path}: missing")
        elif path.stat().st_size != size:
            errors.append(f"{path}: {path.stat().st_size} bytes, the manifest says {size}")
        elif sha256_file(path) != sha256:
            errors.append(f"{path}: sha256 does not match the manifest")
    if errors:
        raise ReleaseError("; ".join(errors))
    return sorted(artifacts(manifest))


def read_release(release_dir):
    """(manifest bytes, signature text or None) of a release directory."""
    release_dir = Path(release_dir)
    try:
        manifest_bytes = (release_dir / MANIFEST).read_bytes()
    except OSError as exc:
        raise ReleaseError(f"cannot read {release_dir / MANIFEST}: {exc.strerror}") from None
    sig_path = release_dir / SIGNATURE
    try:
        sig_text = sig_path.read_text(encoding="ascii")
    except FileNotFoundError:
        sig_text = None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReleaseError(f"cannot read {sig_path}: {exc}") from None
    return manifest_bytes, sig_text


def verify(release_dir, pubkey, root=None, models_file=MODELS_FILE):
    """Signature, schema, the directory name and, with `root`, every artifact. Returns a summary."""
    release_dir = Path(release_dir)
    manifest_bytes, sig_text = read_release(release_dir)
    what = str(release_dir / MANIFEST)
    manifest = check_release(manifest_bytes, sig_text, load_public_key(pubkey), load_profiles(models_file),
                             what)
    check_location(manifest, what, what)
    checked = check_artifacts(manifest, root) if root is not None else []
    return {"changed": False, "verified": True, "release": manifest["release"], "manifest": what,
            "models": sorted(manifest["models"]), "artifacts_checked": checked}


def render_manifest(manifest):
    return yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False, width=120).encode()


# --- build -----------------------------------------------------------------------------------------

def load_spec(path, profiles):
    """The release spec, checked against SPEC_SCHEMA and the model profiles."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ReleaseError(f"cannot read the release spec {path}: {exc.strerror}") from None
    spec = load_yaml(data, str(path))
    errors = schema_errors(SPEC_SCHEMA, spec)
    if not errors:
        models = spec.get("models") or list(profiles)
        named = [("models", m) for m in spec.get("models", [])]
        named += [("app.versions", m) for m in spec["app"].get("versions", {})]
        named += [("reboot", m) for m in spec["reboot"]] if isinstance(spec.get("reboot"), dict) else []
        named += [("os_packages.models", m) for m in spec.get("os_packages", {}).get("models", {})]
        for field, model in named:
            if model not in profiles:
                errors.append(f"{field}.{model}: not a model in {_source(profiles)}")
            elif model not in models:
                errors.append(f"{field}.{model}: not one of the release's models")
        if not errors:
            check_os_profiles(profiles, models)
            per_model = spec.get("os_packages", {}).get("models", {})
            errors += [f"os_packages.models.{model}: the model takes no OS updates (its profile in "
                       f"{_source(profiles)} has no os.updates: dpkg); leave it out"
                       for model in per_model if os_updates(profiles[model]) != "dpkg"]
    if errors:
        raise ReleaseError(f"{path}: " + "; ".join(errors))
    return spec


def check_os_profiles(profiles, models):
    """Raise unless each model's `os` mapping (if it has one) follows OS_PROFILE, naming the models file."""
    errors = [f"models.{model}.{line}" for model in models if "os" in profiles[model]
              for line in schema_errors(OS_PROFILE, {"os": profiles[model]["os"]})]
    if errors:
        raise ReleaseError(f"{_source(profiles)}: " + "; ".join(errors)
                           + " (see docs/inventory.md, OS updates in a model profile)")


def _build_app(version, broken, out_dir):
    """Run lab/posd/build.py; {package style: artifact} for both styles of this version."""
    command = [sys.executable, str(APP_BUILDER), "--version", version, "--out", str(out_dir)]
    if broken:
        command.append("--broken")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ReleaseError(f"building posd {version} failed: {(result.stderr or result.stdout).strip()}")
    built = json.loads(result.stdout)["artifacts"]
    apps = {style: dict(_describe_file(built[kind]["path"]), version=version) for style, kind in APP_FILES.items()}
    tar = bundle_tar(apps["bundle"]["path"], version)
    if tar is not None:
        apps["bundle"].update(tar=tar, tar_sha256=hashlib.sha256(tar).hexdigest())
    return apps


def bundle_tar(path, version):
    """The uncompressed tar of an app bundle in the delta layout (pos_delta.write_bundle_tar): the tree a
    terminal unpacks from the bundle, which it rebuilds from /opt/pos/app/<version>/ byte for byte.
    None when the layout cannot hold the bundle (a name too long for ustar): it then gets no deltas."""
    try:
        with tarfile.open(path, "r:*") as archive:
            entries = packs.delta.bundle_archive_entries(archive, version)
        raw = io.BytesIO()
        packs.delta.write_bundle_tar(raw, version, entries)
    except ValueError:
        return None
    except (OSError, tarfile.TarError, EOFError, packs.delta.DeltaError) as exc:
        raise ReleaseError(f"cannot read the app bundle {path}: {exc}") from None
    return raw.getvalue()


def _describe_file(path, unpacked=None):
    path = Path(path)
    return {"path": path, "name": path.name, "sha256": sha256_file(path), "size": path.stat().st_size,
            "unpacked": unpacked_size(path) if unpacked is None else unpacked}


def _build_pack(name, version, files, out_dir):
    tar = packs.pack_tar(name, version, files)
    path = Path(out_dir) / packs.archive_name(name, version)
    path.write_bytes(packs.gzip_bytes(tar))
    unpacked = sum(len(content) for content in packs.pack_contents(name, version, files).values())
    return dict(_describe_file(path, unpacked), version=version, tar=tar,
                tar_sha256=hashlib.sha256(tar).hexdigest())


def _earlier(out, release_id, created, version, pick):
    """[(version, artifact path)] of the artifacts `pick(model entry)` names (or None) in the build
    directory's releases made before this one.

    Newest first, one per version, at most DELTA_BASES: the versions terminals most likely hold when
    this release reaches them. A release whose manifest or artifact cannot be read is no base.
    """
    found = []
    for manifest_path in sorted((out / "releases").glob(f"*/{MANIFEST}")):
        try:
            manifest = validate_manifest(load_yaml(manifest_path.read_bytes(), str(manifest_path)))
        except (OSError, ReleaseError):
            continue
        if manifest["release"] == release_id or manifest["created"] > created:
            continue
        for entry in manifest["models"].values():
            item = pick(entry)
            if item and item["version"] != version and same_file(out / item["url"], item["sha256"], item["size"]):
                found.append((manifest["created"], manifest["release"], item["version"], item["url"]))
    bases, seen = [], set()
    for _, _, base_version, url in sorted(found, reverse=True):
        if base_version not in seen and len(bases) < DELTA_BASES:
            seen.add(base_version)
            bases.append((base_version, out / url))
    return bases


def _pack_base_tar(base_version, base_path):
    try:
        return gzip.decompress(Path(base_path).read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ReleaseError(f"cannot read the earlier pack {base_path} to compute a delta: {exc}") from None


def _build_deltas(name, pack, bases, out_dir, base_tar_of=_pack_base_tar):
    """Delta artifacts to `pack` (or an app bundle) from each base, computed on the uncompressed tars."""
    deltas = []
    for base_version, base_path in bases:
        base_tar = base_tar_of(base_version, base_path)
        if base_tar is None:
            continue
        data = packs.delta.make_delta(base_tar, pack["tar"])
        if len(data) > DELTA_MAX_SHARE * pack["size"]:
            continue
        path = Path(out_dir) / f"{name}-{base_version}-to-{pack['version']}.delta"
        path.write_bytes(data)
        deltas.append(dict(_describe_file(path, 0), from_version=base_version,
                           from_tar_sha256=hashlib.sha256(base_tar).hexdigest()))
    return deltas


def pool_url(artifact):
    """pool/<sha256>/<name>. A directory per content holds one file per name that content has: two
    artifacts with the same bytes under two names (two deltas to one pack from bases that differ only
    where the new pack changed them) are two files, and a manifest may name either."""
    return f"pool/{artifact['sha256']}/{artifact['name']}"


def _entry(artifact, **fields):
    return dict(fields, url=pool_url(artifact), sha256=artifact["sha256"], size=artifact["size"])


def _delta_entry(item, **fields):
    """The manifest entry of a pack or an app: with tar_sha256, tar_size and deltas when it has deltas."""
    entry = _entry(item, version=item["version"], **fields)
    if item.get("deltas"):
        entry.update(tar_sha256=item["tar_sha256"], tar_size=len(item["tar"]),
                     deltas=[_entry(delta, from_version=delta["from_version"],
                                    from_tar_sha256=delta["from_tar_sha256"]) for delta in item["deltas"]])
    return entry


def storage_needed(style, app, pack_artifacts, os_debs=()):
    """Free flash (MiB) a model's update needs; `os_debs` count their .deb and their Installed-Size."""
    download = app["size"] + sum(item["size"] for item in [*pack_artifacts, *os_debs])
    unpacked = app["unpacked"] + sum(item["unpacked"] for item in [*pack_artifacts, *os_debs])
    kept = app["size"] if style == "dpkg" else 0
    # A delta is applied to the tar of the installed version, rebuilt in staging, and writes the new tar
    # beside it: two tars more than a full download needs (the delta itself is smaller than the archive).
    rebuilt = sum(2 * len(item["tar"]) for item in [app, *pack_artifacts] if item.get("deltas"))
    return math.ceil((download + unpacked + kept + rebuilt) * STORAGE_MARGIN / MIB) + STORAGE_FLOOR_MB


def _created(spec):
    if "created" in spec:
        return spec["created"]
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc) if epoch \
        else datetime.datetime.now(datetime.timezone.utc)
    return moment.strftime(collection.module_utils("pos_terminal").TIME_FORMAT)


# --- OS packages -----------------------------------------------------------------------------------
# A release may pin Debian packages per model (spec `os_packages`). The build takes each .deb from the
# apt sources this machine uses or from a directory (--debs), checks that the model's set can be
# installed on what the model has (its factory list, posfleet.debs), and pins each in the model's
# manifest entry by sha256 and size, in the pool like every other artifact. A spec's `candidate` is
# resolved first, by the same source: the version it offers now.

# apt-get download fetches one package; past this something is stuck (a mirror that does not answer).
APT_TIMEOUT = 900
# apt-cache policy reads only the local package lists: it answers in a second.
APT_POLICY_TIMEOUT = 120


def _read_deb(path):
    try:
        return debs.read_deb(path)
    except debs.DebError as exc:
        raise ReleaseError(str(exc)) from None


def policy_candidate(name, policy):
    """The version an `apt-cache policy NAME` answer (`policy`, its output in the C locale) names as apt's
    candidate: what `apt-get install NAME` would install now. ReleaseError when apt offers none."""
    candidates = [line.split(":", 1)[1].strip() for line in policy.splitlines()
                  if line.strip().startswith("Candidate:")]
    if not candidates:
        raise ReleaseError(f"os_packages: {name}: {CANDIDATE}: apt knows no package {name} (`apt-cache policy "
                           f"{name}` lists nothing); check the name, run `apt-get update` if this control node's "
                           "package lists are old, or give the .debs with --debs DIR")
    version = candidates[0]  # the first is the control node's own architecture
    if version == "(none)":
        raise ReleaseError(f"os_packages: {name}: {CANDIDATE}: apt offers no version of {name} to install "
                           f"(`apt-cache policy {name}` says Candidate: (none)); run `apt-get update` (or add the "
                           "suite that has it to apt's sources), name the package that provides it if it is a "
                           "virtual one, or give the .debs with --debs DIR")
    if not re.match(debs.VERSION_PATTERN, version):
        raise ReleaseError(f"os_packages: {name}: {CANDIDATE}: `apt-cache policy {name}` names {version!r} as its "
                           "candidate, which is not a Debian version; name a version of it in the spec")
    return version


class _AptDownload:
    """.debs from the apt sources this machine already uses: `apt-get download NAME=VERSION`, run as the
    build's user into the build's temporary directory (no root needed, nothing installed)."""

    where = "apt-get download"

    def __init__(self, work):
        self.work = Path(work)
        self.downloads = 0

    def candidate(self, name):
        """The version of NAME apt would install now: the Candidate of `apt-cache policy NAME`."""
        command = ["apt-cache", "policy", name]
        try:
            # apt translates its words; the answer is read in the C locale.
            result = subprocess.run(command, capture_output=True, text=True, check=False,
                                    timeout=APT_POLICY_TIMEOUT, env=dict(os.environ, LC_ALL="C"))
        except FileNotFoundError:
            raise ReleaseError(f"os_packages: {name}: {CANDIDATE}: apt-cache is not installed on this control "
                               f"node; name a version of {name} and give the .debs with --debs DIR") from None
        except subprocess.TimeoutExpired:
            raise ReleaseError(f"os_packages: {name}: {CANDIDATE}: apt-cache policy {name} took more than "
                               f"{APT_POLICY_TIMEOUT} s; name a version of {name} in the spec") from None
        if result.returncode != 0:
            reason = result.stderr.strip() or f"apt-cache exited with {result.returncode}"
            raise ReleaseError(f"os_packages: {name}: {CANDIDATE}: apt-cache policy {name} failed: {reason}; run "
                               f"`apt-get update`, or name a version of {name} in the spec")
        return policy_candidate(name, result.stdout)

    def debs(self, name, version):
        """[(path, debs.Package)] of NAME at VERSION: the one .deb apt chooses for this machine."""
        self.downloads += 1
        target = self.work / str(self.downloads)  # a directory per download: what appears there is that package
        target.mkdir(parents=True)
        command = ["apt-get", "download", "--quiet", f"{name}={version}"]
        advice = (f"`apt-cache policy {name}` shows the versions this control node's apt sources offer (a Debian "
                  "mirror keeps only the newest version of each suite); or give the .debs with --debs DIR")
        try:
            result = subprocess.run(command, cwd=target, capture_output=True, text=True, check=False,
                                    timeout=APT_TIMEOUT)
        except FileNotFoundError:
            raise ReleaseError(f"cannot download {name} {version}: apt-get is not installed on this control "
                               "node; give the .debs with --debs DIR") from None
        except subprocess.TimeoutExpired:
            raise ReleaseError(f"apt-get download {name}={version} took more than {APT_TIMEOUT} s; {advice}") from None
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if line.startswith("E:")]
            reason = " ".join(errors) or result.stderr.strip() or f"apt-get exited with {result.returncode}"
            raise ReleaseError(f"cannot download {name} {version} with apt-get download: {reason}; {advice}")
        found = [(path, _read_deb(path)) for path in sorted(target.glob("*.deb"))]
        found = [(path, package) for path, package in found if (package.name, package.version) == (name, version)]
        if not found:
            raise ReleaseError(f"apt-get download {name}={version} gave no .deb of {name} {version}; {advice}")
        return found


class _DebDirectory:
    """.debs from a directory, for a site whose control node reaches no mirror: files named as Debian names
    them (NAME_VERSION_ARCH.deb, as apt-get download and the archive's pool do), anywhere below it."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.where = str(self.directory)
        self._by_name = {}  # each .deb's control fields are read once, for `candidate` and then `debs`
        if not self.directory.is_dir():
            raise ReleaseError(f"--debs {directory}: not a directory")

    def _packages(self, name):
        """[(path, debs.Package)] of every .deb of NAME below the directory, whatever its version."""
        if name not in self._by_name:
            read = [(path, _read_deb(path)) for path in sorted(self.directory.rglob(f"{name}_*.deb"))]
            self._by_name[name] = [(path, package) for path, package in read if package.name == name]
        return self._by_name[name]

    def candidate(self, name):
        """The highest version of NAME among the directory's .debs (dpkg's ordering), whatever their architecture."""
        versions = [package.version for _path, package in self._packages(name)]
        if not versions:
            raise ReleaseError(f"os_packages: {name}: {CANDIDATE}: no .deb of {name} in {self.directory}: put "
                               f"{name}_<version>_<arch>.deb there (apt-get download names it so), or name a version")
        try:
            return debs.newest(versions)
        except debs.DebError as exc:
            raise ReleaseError(f"os_packages: {name}: {CANDIDATE}: {exc}") from None

    def debs(self, name, version):
        """[(path, debs.Package)] of every .deb below the directory that holds NAME at VERSION."""
        found = [(path, package) for path, package in self._packages(name) if package.version == version]
        if not found:
            raise ReleaseError(f"no .deb of {name} {version} in {self.directory}: put {name}_<version>_<arch>.deb "
                               "there (apt-get download names it so), or build where apt reaches a mirror "
                               "(without --debs)")
        return found


def _os_package_sets(spec, profiles, models):
    """({model: {name: version}}, {model: why it gets no OS packages}) from the spec's os_packages."""
    wanted = spec.get("os_packages") or {}
    sets, left_out = {}, {}
    for model in models:
        chosen = dict(wanted.get("all", {}), **wanted.get("models", {}).get(model, {}))
        if not chosen:
            continue
        if os_updates(profiles[model]) == "dpkg":
            sets[model] = chosen
        else:
            left_out[model] = (f"takes no OS updates (its profile in {_source(profiles)} has no os.updates: dpkg): "
                               "posfleet leaves its OS alone")
    return sets, left_out


def _resolve_candidates(sets, source):
    """(sets, resolved): the sets with each `candidate` replaced by the exact version `source` offers, and
    {model: {name: version}} of what was resolved. Each package is resolved once, so every model that asks
    for its candidate gets the same version."""
    versions, resolved = {}, {}
    for model, wanted in sets.items():
        for name in sorted(name for name, version in wanted.items() if version == CANDIDATE):
            if name not in versions:
                versions[name] = source.candidate(name)
            resolved.setdefault(model, {})[name] = versions[name]
    return {model: dict(wanted, **resolved.get(model, {})) for model, wanted in sets.items()}, resolved


def _resolve_factory(sets, profiles):
    """(sets, resolved): the sets with each `factory` replaced by the version of the package in the model's
    factory list, and {model: {name: version}} of what was resolved. Models with different images may get
    different versions: each gets its own image's."""
    resolved = {}
    for model, wanted in sets.items():
        names = sorted(name for name, version in wanted.items() if version == FACTORY)
        if not names:
            continue
        installed = {package.name: package.version for package in _installed(profiles, model)}
        for name in names:
            if name not in installed:
                raise ReleaseError(f"os_packages: {name}: {FACTORY}: {model}'s factory list "
                                   f"({factory_list(profiles, model)}) has no {name}: the model's image does not "
                                   f"ship it; name a version of {name}, or leave it out for {model} "
                                   "(os_packages.models)")
            resolved.setdefault(model, {})[name] = installed[name]
    return {model: dict(wanted, **resolved.get(model, {})) for model, wanted in sets.items()}, resolved


def factory_list(profiles, model):
    """The path of a model's factory list: its profile's os.factory, relative to the models file."""
    return Path(_source(profiles)).parent / profiles[model]["os"]["factory"]


def _installed(profiles, model):
    path = factory_list(profiles, model)
    try:
        return debs.read_installed(path)
    except debs.DebError as exc:
        raise ReleaseError(f"{model}: the model's factory list: {exc}; os.factory in {_source(profiles)} names "
                           "the list of packages the model's image has installed (docs/inventory.md, OS "
                           "updates in a model profile)") from None


def _deb_file_name(package):
    """Debian's own file name for a package, NAME_VERSION_ARCH.deb (no epoch, as the archive names it)."""
    return f"{package.name}_{package.version.partition(':')[2] or package.version}_{package.architecture}.deb"


def _deb_artifact(path, package):
    """The pool artifact of a .deb. Its unpacked size is the package's Installed-Size (what dpkg will
    write), or its data.tar's files for a package that does not declare one."""
    kb = package.installed_size_kb
    if kb is None:
        kb = math.ceil(unpacked_size(path) / 1024)
    return dict(_describe_file(path, kb * 1024), name=_deb_file_name(package), package=package,
                installed_size_kb=kb)


def _choose(candidates, architectures, model):
    """The one .deb of a package that fits a model's architectures; when none fits, the first, so that the
    installability check says which architecture it is built for."""
    fitting = [(path, package) for path, package in candidates
               if package.architecture in architectures | {debs.ALL}]
    by_content = {sha256_file(path): (path, package) for path, package in fitting or candidates[:1]}
    if len(by_content) > 1:
        paths = ", ".join(str(path) for path, _ in by_content.values())
        raise ReleaseError(f"{model}: different .debs of the same package and version: {paths}; keep one")
    return next(iter(by_content.values()))


def _os_packages(sets, profiles, source):
    """{model: [.deb artifact]} sorted by name: each model's set fetched once per package and version from
    `source`, and checked installable on the model. The error names every unmet dependency of every model."""
    fetched, artifacts_by_path, chosen, problems = {}, {}, {}, []
    for model, wanted in sets.items():
        installed = _installed(profiles, model)
        architectures = debs.architectures(installed)
        chosen[model] = []
        for name, version in sorted(wanted.items()):
            if (name, version) not in fetched:
                fetched[name, version] = source.debs(name, version)
            path, package = _choose(fetched[name, version], architectures, model)
            if path not in artifacts_by_path:
                artifacts_by_path[path] = _deb_artifact(path, package)
            chosen[model].append(artifacts_by_path[path])
        try:
            unmet = debs.unmet([item["package"] for item in chosen[model]], installed)
        except debs.DebError as exc:
            raise ReleaseError(f"{model}: {exc}") from None
        problems += [f"{model}: {line} (factory list {factory_list(profiles, model)})" for line in unmet]
    if problems:
        raise ReleaseError("; ".join(problems) + ". Nothing was built: dpkg would refuse these OS packages on "
                           "those models. Add what is missing to os_packages (at a version that satisfies it), take "
                           ".debs built for the model's architecture (--debs DIR), or correct the factory list if "
                           "the model has what it lacks")
    return chosen


def _os_entries(debs_of_model):
    return [_entry(item, name=item["package"].name, version=item["package"].version,
                   arch=item["package"].architecture, installed_size_kb=item["installed_size_kb"])
            for item in debs_of_model]


def _needs_reboot(profile, debs_of_model):
    """True when the model's set holds a package its profile's os.reboot_packages names (shell patterns,
    such as linux-image-*): the manifest then asks for a reboot, which no spec can waive."""
    patterns = profile.get("os", {}).get("reboot_packages", [])
    return any(fnmatch.fnmatchcase(item["package"].name, pattern)
               for item in debs_of_model for pattern in patterns)


def build(spec_path, out_dir, dry_run=False, models_file=MODELS_FILE, debs_dir=None):
    """Build the release a spec describes into out_dir (pool/, releases/<id>/manifest.yml, probe).

    Only what differs is written; a manifest that changes loses its old signature, which no longer
    matches it. With dry_run, everything is built in a temporary directory and nothing in out_dir
    changes; the result says what would be written. The spec's OS packages come from `debs_dir`, a
    directory of .deb files, or else from `apt-get download`; a `candidate` version is resolved by the
    same source (a dry run resolves it too), a `factory` one by the model's factory list, and the result's
    os_packages_resolved says to what.
    """
    profiles = load_profiles(models_file)
    spec = load_spec(spec_path, profiles)
    models = spec.get("models") or list(profiles)
    os_sets, os_left_out = _os_package_sets(spec, profiles, models)
    app_spec, pack_spec = spec["app"], spec["packs"]
    broken = app_spec.get("broken", False)
    reboot = spec.get("reboot", False)
    out = Path(out_dir)
    release_dir = out / "releases" / spec["release"]
    with tempfile.TemporaryDirectory(prefix="posfleet-build-") as tmp:
        os_source = _DebDirectory(debs_dir) if debs_dir is not None else _AptDownload(Path(tmp) / "apt")
        os_sets, from_factory = _resolve_factory(os_sets, profiles)
        os_sets, os_resolved = _resolve_candidates(os_sets, os_source)
        for model, versions_of in from_factory.items():
            os_resolved.setdefault(model, {}).update(versions_of)
        os_debs = _os_packages(os_sets, profiles, os_source)
        versions = {model: app_spec.get("versions", {}).get(model, app_spec["version"]) for model in models}
        apps = {version: _build_app(version, broken, Path(tmp) / "app" / version)
                for version in sorted(set(versions.values()))}
        params, catalog = pack_spec["params"], pack_spec["catalog"]
        pack_files = {
            "params": packs.params_files(params["version"], params["acquirer_url"],
                                         params.get("fee_bps", 150)),
            "catalog": {"catalog.csv": packs.catalog_csv(catalog["version"], catalog.get("records", 2000),
                                                         catalog.get("changed_ratio", 0.0))},
        }
        pack_artifacts = {name: _build_pack(name, pack_spec[name]["version"], pack_files[name], tmp)
                          for name in PACK_NAMES}
        created = _created(spec)
        for name, item in pack_artifacts.items():
            bases = _earlier(out, spec["release"], created, item["version"],
                             lambda entry, name=name: entry["packs"][name])
            item["deltas"] = _build_deltas(name, item, bases, tmp)
        bundle_versions = {versions[model] for model in models if profiles[model]["package_style"] == "bundle"}
        for version in sorted(bundle_versions):
            bundle = apps[version]["bundle"]
            bases = _earlier(out, spec["release"], created, version,
                             lambda entry: entry["app"] if entry["app"]["style"] == "bundle" else None)
            bundle["deltas"] = (_build_deltas("posd", bundle, bases, tmp, lambda base, path: bundle_tar(path, base))
                                if "tar" in bundle else [])
        entries, used = {}, []
        for model in models:
            style = profiles[model]["package_style"]
            app = apps[versions[model]][style]
            asks = reboot.get(model, False) if isinstance(reboot, dict) else reboot
            model_debs = os_debs.get(model, [])
            entries[model] = {
                "app": _delta_entry(app, style=style),
                "packs": {name: _delta_entry(item) for name, item in pack_artifacts.items()},
                # A release may ask for a reboot; it cannot waive one the model's profile requires, for the
                # app or for an OS package.
                "reboot": bool(asks or profiles[model].get("reboot_required", False)
                               or _needs_reboot(profiles[model], model_debs)),
                "storage_mb": storage_needed(style, app, list(pack_artifacts.values()), model_debs),
            }
            if model_debs:
                entries[model]["os_packages"] = _os_entries(model_debs)
            used += [app, *pack_artifacts.values(), *model_debs]
            used += [delta for item in [app, *pack_artifacts.values()] for delta in item.get("deltas", [])]
        manifest = {"schema": SCHEMA_VERSION, "release": spec["release"], "created": created,
                    "description": spec.get("description", f"posd {app_spec['version']}"), "models": entries}
        manifest_bytes = render_manifest(manifest)
        # Never write a manifest that verify (and so every control node) would refuse.
        parse_manifest(manifest_bytes, profiles, f"built manifest of {spec['release']}")

        written = _write_pool(out, used, dry_run)
        if not dry_run:
            # Checked as verify checks it: a manifest naming a file the pool lacks is never written.
            check_artifacts(manifest, out)
        manifest_written, removed = _write_manifest(out, release_dir, manifest_bytes, dry_run)
        written += manifest_written
    return {"changed": bool(written or removed), "dry_run": dry_run, "release": spec["release"],
            "release_dir": str(release_dir), "written": sorted(written), "removed": removed,
            "deltas": dict({name: [delta["from_version"] for delta in item["deltas"]]
                            for name, item in pack_artifacts.items()},
                           app={version: [delta["from_version"] for delta in apps[version]["bundle"]["deltas"]]
                                for version in sorted(bundle_versions)}),
            "models": {model: _model_result(entry, os_left_out.get(model)) for model, entry in entries.items()},
            **({"os_packages_from": os_source.where, "os_packages_resolved": os_resolved} if os_sets else {})}


def _model_result(entry, os_left_out=None):
    """What build reports per model: app, reboot, storage and the OS packages ({name: version})."""
    result = {"app": entry["app"]["version"], "style": entry["app"]["style"], "reboot": entry["reboot"],
              "storage_mb": entry["storage_mb"],
              "os_packages": {item["name"]: item["version"] for item in entry.get("os_packages", [])}}
    if os_left_out:
        result["os_packages_left_out"] = os_left_out
    return result


def _write_pool(out, used, dry_run):
    """Write the artifacts `used` and the probe into the build directory; the relative paths written."""
    written = []
    # One file per pool URL, not per sha256: keyed by content alone, all but one name of the same
    # bytes would be lost, and the manifest names them all.
    for rel, artifact in {pool_url(item): item for item in used}.items():
        if not same_file(out / rel, artifact["sha256"], artifact["size"]):
            written.append(rel)
            if not dry_run:
                atomic_write(out / rel, source=artifact["path"])
    probe = probe_bytes()
    if not (out / "probe").is_file() or (out / "probe").read_bytes() != probe:
        written.append("probe")
        if not dry_run:
            atomic_write(out / "probe", probe)
    return written


def _write_manifest(out, release_dir, manifest_bytes, dry_run):
    """Write the manifest when its bytes change, dropping the signature that no longer matches it."""
    manifest_path = release_dir / MANIFEST
    if manifest_path.is_file() and manifest_path.read_bytes() == manifest_bytes:
        return [], []
    removed = [str((release_dir / SIGNATURE).relative_to(out))] if os.path.lexists(release_dir / SIGNATURE) else []
    if not dry_run:
        for rel in removed:
            os.unlink(out / rel)
        atomic_write(manifest_path, manifest_bytes)
    return [str(manifest_path.relative_to(out))], removed


def sign(release_dir, key_path, dry_run=False, models_file=MODELS_FILE):
    """Write manifest.yml.sig. The manifest is validated first: terminals would refuse a bad one."""
    release_dir = Path(release_dir)
    manifest_bytes, old = read_release(release_dir)
    manifest = parse_manifest(manifest_bytes, load_profiles(models_file), str(release_dir / MANIFEST))
    signature = signature_text(load_private_key(key_path), manifest_bytes)
    changed = old != signature
    if changed and not dry_run:
        atomic_write(release_dir / SIGNATURE, signature.encode("ascii"))
    return {"changed": changed, "dry_run": dry_run, "release": manifest["release"],
            "signature": str(release_dir / SIGNATURE)}


# --- publish ---------------------------------------------------------------------------------------

class Planned(NamedTuple):
    """One file publish puts on a distribution point: copied from `source`, or `data` written."""
    sha256: str
    size: int
    source: Optional[Path] = None
    data: Optional[bytes] = None


def _planned_bytes(data):
    return Planned(hashlib.sha256(data).hexdigest(), len(data), data=data)


class PublishError(ReleaseError):
    """Publishing stopped at one distribution point; `changed` when earlier points got files."""

    def __init__(self, message, changed):
        super().__init__(message)
        self.changed = changed


def publish(root, repo_base, *, regions=(), all_regions=False, releases=(), pubkey=None, dry_run=False,
            models_file=MODELS_FILE, regions_file=REGIONS_FILE, audit_log=None, audit_user=None, awx_job_id=None):
    """Copy releases from a build directory to each region's distribution point root.

    Per region, all or nothing: every file is copied to a temporary name and checked against its
    sha256 first; only then are the pool artifacts and the probe renamed into place, each release is
    verified there, and last come its signature and its manifest. A copy that fails or does not match
    leaves the point as it was (no new file, none changed), and whatever fails, no manifest is written
    before every file it names is there and verified: terminals never get a manifest they cannot
    follow. Files already there and identical are skipped. A release already published with other
    bytes is refused before anything is copied: a release id names one content forever.

    With `audit_log` (not in a dry run), each distribution point's outcome is appended to that audit
    trail as soon as it is known: a line per release it got files of, or per release when it failed.
    A line that cannot be written stops the publish before the next point. Its `who` is `audit_user`
    (AWX's user, which publish.yml can pass on), else the local login.
    """
    root = Path(root)
    targets = _targets(regions, all_regions, regions_file)
    releases = list(dict.fromkeys(releases)) or _built_releases(root)
    try:
        files, finals, manifests = _publish_plan(root, releases, pubkey, models_file)
        _refuse_conflicts(repo_base, targets, finals)
    except ReleaseError as error:
        # Refused before any distribution point was touched (a release that does not verify, or one already
        # published there with other bytes): the attempt is on the trail all the same, as failed.
        if audit_log and not dry_run:
            _PublishTrail(audit_log, [(release, None) for release in releases], audit_user,
                          awx_job_id).failed_everywhere(targets, repo_base, error)
        raise
    trail = _PublishTrail(audit_log, manifests, audit_user, awx_job_id) if audit_log and not dry_run else None
    report = {}
    for region in targets:
        base = Path(repo_base) / region
        try:
            report[region] = _publish_point(base, files, finals, manifests, dry_run)
        except (ReleaseError, OSError) as exc:
            error = _stopped(region, exc, report, dry_run)
            if trail:
                trail.failed(region, base, error)
            raise error from None
        if trail:
            trail.published(region, base, report)
    return {"changed": any(item["copied"] for item in report.values()), "dry_run": dry_run,
            "releases": releases, "regions": report}


class _PublishTrail:
    """The audit lines of one publish (posfleet.report's trail): who, from which control node, which
    release reached which distribution point, and the outcome."""

    def __init__(self, path, manifests, user=None, awx_job_id=None):
        self.path = path
        self.files = {release: (set(artifacts(manifest)) if manifest else set())
                      | {f"releases/{release}/{SIGNATURE}", f"releases/{release}/{MANIFEST}"}
                      for release, manifest in manifests}
        now = datetime.datetime.now(datetime.timezone.utc)
        self.common = {"run_id": posreport.new_run_id(now, "publish"), "who": user or posreport.local_user(),
                       "awx_job_id": str(awx_job_id) if awx_job_id else None,
                       "control_node": posreport.this_control_node()}

    def _line(self, region, release, status, reason):
        return posreport.audit_entry(self.common, "publish", posreport.ENDED, what="release", distribution_point=region,
                                     release=release, status=status, reason=reason)

    def published(self, region, base, report):
        """A line per release the point got files of (none when it already had everything)."""
        lines = []
        for release, names in self.files.items():
            got = names & set(report[region]["copied"])
            if got:
                lines.append(self._line(region, release, "published", f"{len(got)} file(s) copied to {base}"))
        try:
            posreport.append_audit(self.path, lines)
        except (OSError, posreport.ReportError) as exc:
            done = ", ".join(name for name, item in report.items() if item["copied"])
            raise PublishError(f"published to {region}, but the audit log {self.path} cannot be written: {exc}; "
                               f"nothing more is published until it can (already published to {done})",
                               changed=True) from None

    def failed(self, region, base, error):
        """A line per release the point did not get; the publish's own error stays the one raised."""
        lines = [self._line(region, release, "failed", f"{base}: {error}") for release in self.files]
        with contextlib.suppress(OSError, posreport.ReportError):
            posreport.append_audit(self.path, lines)

    def failed_everywhere(self, regions, repo_base, error):
        """A publish refused before it touched any point: a failed line per release and point it was for."""
        for region in regions:
            self.failed(region, Path(repo_base) / region, f"refused before anything was copied: {error}")


def _targets(regions, all_regions, regions_file):
    known = load_regions(regions_file)
    targets = list(known) if all_regions else list(dict.fromkeys(regions))
    if not targets:
        raise ReleaseError("no region: name them with --region, or use --all-regions")
    unknown = [name for name in targets if name not in known]
    if unknown:
        raise ReleaseError(f"unknown region(s) {', '.join(unknown)}; {regions_file} has {', '.join(known)}")
    return targets


def _built_releases(root):
    releases = sorted(p.name for p in (root / "releases").glob("*") if (p / MANIFEST).is_file())
    if not releases:
        raise ReleaseError(f"no release in {root / 'releases'}: build one first")
    return releases


def _publish_plan(root, releases, pubkey, models_file):
    """({pool url or probe: Planned}, {signature and manifest path: Planned}, [(release, manifest)]).

    Every release is checked in the build directory first, and the signature and manifest bytes read
    once: what is published is exactly what was checked.
    """
    profiles = load_profiles(models_file)
    files, finals, manifests = {}, {}, []
    for release in releases:
        release_dir = root / "releases" / release
        if pubkey:
            verify(release_dir, pubkey, models_file=models_file)
        manifest_bytes, sig_text = read_release(release_dir)
        what = str(release_dir / MANIFEST)
        if sig_text is None:
            raise ReleaseError(unsigned(what))
        manifest = check_location(parse_manifest(manifest_bytes, profiles, what), what, what)
        try:
            check_artifacts(manifest, root)
        except ReleaseError as exc:
            raise ReleaseError(f"{exc}; nothing was published: run `posfleet-release build` for release "
                               f"{release} again to repair {root}, then publish") from None
        for url, (sha256, size) in sorted(artifacts(manifest).items()):
            files[url] = Planned(sha256, size, source=root / url)
        manifests.append((release, manifest))
        finals[f"releases/{release}/{SIGNATURE}"] = _planned_bytes(sig_text.encode("ascii"))
        finals[f"releases/{release}/{MANIFEST}"] = _planned_bytes(manifest_bytes)
    files["probe"] = _planned_bytes(probe_bytes())
    return files, finals, manifests


def _refuse_conflicts(repo_base, targets, finals):
    conflicts = []
    for region in targets:
        for rel, item in finals.items():
            dest = Path(repo_base) / region / rel
            # Only a manifest makes a release published: a signature alone is a publish cut short.
            if (dest.parent / MANIFEST).is_file() and (not dest.is_file() or dest.read_bytes() != item.data):
                conflicts.append(str(dest))
    if conflicts:
        raise ReleaseError("already published with different content (a release id is immutable; build a new "
                           f"release id): {', '.join(conflicts)}")


def _publish_point(base, files, finals, manifests, dry_run):
    """Bring one distribution point up to date, all or nothing; its report."""
    planned = dict(files, **finals)
    pending = {rel: item for rel, item in planned.items() if not same_file(base / rel, item.sha256, item.size)}
    if pending and not dry_run:
        staged = _stage(base, pending)
        _commit(base, staged, finals, manifests)
    return {"path": str(base), "copied": list(pending), "unchanged": len(planned) - len(pending)}


def _stage(base, pending):
    """{rel: temporary file} of every pending file, each checked against its sha256; nothing on a failure.

    Checked after the copy, not only in the build directory: a file changed or cut short while it was
    copied must not reach terminals under a name the signed manifest vouches for.
    """
    staged, made = {}, []
    try:
        for rel, item in pending.items():
            dest = base / rel
            made += _missing_dirs(dest.parent)
            try:
                staged[rel] = write_temp(dest, data=item.data, source=item.source)
            except OSError as exc:
                raise ReleaseError(f"cannot copy {item.source or rel} to {dest}: {exc.strerror or exc}") from None
            if not same_file(staged[rel], item.sha256, item.size):
                raise ReleaseError(f"{dest}: the copy does not match the sha256 the manifest names (was "
                                   f"{item.source} changed while it was copied?)")
    except BaseException:
        _discard(staged.values(), made)
        raise
    return staged


def _commit(base, staged, finals, manifests):
    """Rename the staged files into place: artifacts and probe, a check of every release there, then
    each release's signature and manifest. A failure removes what is still staged; no manifest is new."""
    try:
        for rel, tmp in staged.items():
            if rel not in finals:
                os.replace(tmp, base / rel)
        for _, manifest in manifests:
            check_artifacts(manifest, base)  # what terminals will download, read where they read it
        for rel in finals:  # in order: each release's signature, then its manifest
            if rel in staged:
                os.replace(staged[rel], base / rel)
    except BaseException:
        _discard(staged.values(), [])
        raise


def _missing_dirs(directory):
    """The directories a write to `directory` creates, deepest first: a failed publish removes them."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    return missing


def _discard(temporaries, directories):
    for tmp in temporaries:
        _unlink(tmp)
    for directory in sorted(set(directories), key=lambda path: len(path.parts), reverse=True):
        # Not empty: something else was put there meanwhile, and it stays.
        with contextlib.suppress(OSError):
            directory.rmdir()


def _stopped(region, exc, report, dry_run):
    """The error of a publish that stopped at `region`: the cause first, then what it left and what next."""
    cause = _os_error_text(exc) if isinstance(exc, OSError) else str(exc)
    done = [name for name, item in report.items() if item["copied"] and not dry_run]
    already = f"; already published to {', '.join(done)}" if done else ""
    return PublishError(f"{cause}; nothing new is published to {region} (no manifest was written there): "
                        f"fix that and run publish again{already}", changed=bool(done))


# --- command line ----------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error reads like every other failure: the cause on the first line."""

    def error(self, message):
        sys.exit(_fail(f"{message}; see `{self.prog} --help`", code=2))


def _parser():
    parser = _Parser(prog="posfleet-release", description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--models", type=Path, default=MODELS_FILE,
                        help="the shared model profiles (default: $POSFLEET_MODELS, else %(default)s)")
    parser.add_argument("--regions", type=Path, default=REGIONS_FILE,
                        help="the shared region settings (default: $POSFLEET_REGIONS, else %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("keygen", help="make an ed25519 signing key pair (release.key, release.pub)")
    cmd.add_argument("--out", required=True,
                     help="directory for the key pair; existing keys are never overwritten")
    cmd = sub.add_parser("build", help="build a release from a spec into DIR/pool and DIR/releases/<id>")
    cmd.add_argument("--spec", required=True, help="release spec (YAML, see docs/releases.md)")
    cmd.add_argument("--out", required=True, help="build directory")
    cmd.add_argument("--debs", type=Path, metavar="DIR",
                     help="take the spec's OS packages (os_packages) from this directory of .deb files instead of "
                          "apt-get download, for a control node that reaches no Debian mirror; a version "
                          "`candidate` is then the directory's highest")
    cmd.add_argument("--dry-run", action="store_true", help="build in a temporary directory, change nothing")
    cmd = sub.add_parser("sign", help="sign a release's manifest.yml")
    cmd.add_argument("--release", required=True, help="the release directory, DIR/releases/<id>")
    cmd.add_argument("--key", required=True, help="the ed25519 private key (PEM)")
    cmd.add_argument("--dry-run", action="store_true",
                     help="say whether the signature would change, write nothing")
    cmd = sub.add_parser("verify", help="check a release's signature, schema and (with --root) artifacts")
    cmd.add_argument("--release", required=True, help="the release directory, DIR/releases/<id>")
    cmd.add_argument("--pubkey", required=True, help="the ed25519 public key (PEM) to check against")
    cmd.add_argument("--root",
                     help="the directory holding pool/ (build directory or distribution point root)")
    cmd = sub.add_parser("publish", help="copy releases to the regions' distribution points")
    cmd.add_argument("--root", required=True, help="build directory")
    cmd.add_argument("--repo", default="/var/lib/poslab/repo",
                     help="base directory of the distribution points, one directory per region (%(default)s)")
    which = cmd.add_mutually_exclusive_group(required=True)
    which.add_argument("--region", nargs="+", action="extend", default=[], help="region names")
    which.add_argument("--all-regions", action="store_true",
                       help="every region in inventories/shared/regions.yml")
    cmd.add_argument("--release", nargs="+", action="extend", default=[], dest="releases",
                     help="release ids (default: every release in the build directory)")
    cmd.add_argument("--pubkey", help="also verify each release's signature against this public key")
    cmd.add_argument("--dry-run", action="store_true", help="say what would be copied, copy nothing")
    cmd.add_argument("--audit-log", type=Path, default=None,
                     help="the audit trail that gets a line per release and distribution point published, or "
                          "failed (default: audit.jsonl in $POSFLEET_REPORT_DIR, else in this checkout's reports/, "
                          "where update.yml's trail is); see docs/reports.md")
    cmd.add_argument("--audit-user", help="who publishes, for the audit trail (default: the local login; "
                                          "publish.yml run from AWX passes awx_user_name)")
    cmd.add_argument("--awx-job-id", help="the AWX job that publishes, for the audit trail")
    return parser


def default_audit_log():
    """The audit trail publish appends to: where the posfleet_report callback writes with posfleet's
    ansible.cfg (reports/ beside it), or $POSFLEET_REPORT_DIR as for the callback."""
    return Path(os.environ.get("POSFLEET_REPORT_DIR") or PROJECT / "reports") / "audit.jsonl"


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        if args.command == "keygen":
            result = keygen(args.out)
        elif args.command == "build":
            result = build(args.spec, args.out, args.dry_run, models_file=args.models, debs_dir=args.debs)
        elif args.command == "sign":
            result = sign(args.release, args.key, args.dry_run, models_file=args.models)
        elif args.command == "verify":
            result = verify(args.release, args.pubkey, args.root, models_file=args.models)
        else:
            result = publish(args.root, args.repo, regions=args.region, all_regions=args.all_regions,
                             releases=args.releases, pubkey=args.pubkey, dry_run=args.dry_run,
                             audit_log=args.audit_log or default_audit_log(), audit_user=args.audit_user,
                             awx_job_id=args.awx_job_id, models_file=args.models, regions_file=args.regions)
    except ReleaseError as exc:
        return _fail(str(exc), changed=getattr(exc, "changed", False))
    except OSError as exc:
        return _fail(_os_error_text(exc))
    print(json.dumps(result, indent=1, sort_keys=True, default=str))
    return 0


def _fail(message, changed=False, code=1):
    """Report a failure: the cause as stderr's first line, and still one JSON object on stdout, so a
    caller that parses stdout (publish.yml's changed_when) reads a failure, not an empty string."""
    print(f"posfleet-release: {message}", file=sys.stderr)
    print(json.dumps({"changed": changed, "failed": True, "msg": message}, indent=1, sort_keys=True))
    return code


def _os_error_text(exc):
    """`<file>: <reason>` for an OSError, without Python's [Errno n] prefix."""
    if exc.filename is None:
        return str(exc.strerror or exc)
    return f"{exc.filename}: {exc.strerror or exc} (check that path, its file system and its permissions)"


if __name__ == "__main__":
    sys.exit(main())
