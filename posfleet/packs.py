"""Data pack contents and archives: what a pack directory holds and how a release ships it.

A pack version is a directory of files plus PACK.json, {"name", "version", "files": {relative path:
sha256}}; posd refuses a pack whose files do not match it. A release ships a pack as a .tar.gz whose
members are exactly those files and PACK.json, at the top level (docs/update-pipeline.md).

The content generators (params_files, catalog_csv, merchant_files) make the lab's synthetic data.
Both the release builder and the lab's factory image use this module, so a pack on a terminal and a
pack in a release are byte for byte the same format. The tar layout itself is defined once, in
plugins/module_utils/pos_delta.py (`delta` here), because a terminal rebuilds the tar of the pack it
has installed to apply a delta to it. Standard library only.
"""

import gzip
import hashlib
import io
import json
import random

from posfleet import collection

# The tar layout is terminal-side code (a terminal rebuilds the tar of the pack it has to apply a delta).
delta = collection.module_utils("pos_delta")

FACTORY_VERSIONS = {"params": "2026.01.0", "catalog": "2026.01.0"}

# Synthetic issuer ranges: not allocated to any card scheme, so a test PAN can never be a real card.
SYNTHETIC_BINS = [
    {"bin": "990001", "length": 16, "scheme": "synthetic-debit"},
    {"bin": "990050", "length": 16, "scheme": "synthetic-credit"},
]


def params_files(version, acquirer_url, fee_bps=150):
    """The parameter pack: acquirer endpoint, fee table, BIN table, sequence floors."""
    return {
        "endpoints.json": {"acquirer_url": acquirer_url, "timeout_s": 10},
        "fees.json": {"version": version, "card_present_bps": fee_bps, "contactless_bps": fee_bps - 10},
        "bins.json": {"ranges": SYNTHETIC_BINS},
        "counters.json": {"batch_floor": 1},
    }


def catalog_csv(version, records=2000, changed_ratio=0.0):
    """A product catalog; `changed_ratio` of the prices differ from the same catalog at ratio 0."""
    rng = random.Random(f"catalog-{records}")
    change = random.Random(f"change-{version}")
    lines = ["sku,name,price_cents"]
    for number in range(records):
        price = rng.randrange(50, 50000)
        if changed_ratio and change.random() < changed_ratio:
            price += change.randrange(1, 500)
        size = rng.choice(["small", "large", "pack", "each"])
        lines.append(f"SKU{number:07d},Item {number} {size},{price}")
    return "\n".join(lines) + "\n"


def merchant_files(terminal):
    """The merchant profile, rendered for one terminal from its registry row."""
    return {"profile.json": {
        "merchant_id": terminal["merchant_id"], "terminal_id": terminal["terminal_id"],
        "name": terminal["merchant_name"], "store": terminal["store"], "currency": "EUR",
        "receipt_header": f"{terminal['merchant_name']} - thank you",
    }}


def file_bytes(content):
    """A pack file's bytes: bytes as they are, text as UTF-8, anything else as indented, sorted JSON."""
    if isinstance(content, bytes):
        return content
    if isinstance(content, str):
        return content.encode()
    return json.dumps(content, indent=1, sort_keys=True).encode()


def pack_contents(name, version, files):
    """{relative path: bytes} of one pack version: its files and the PACK.json that lists them."""
    contents = {}
    for relpath in sorted(files):
        if relpath == "PACK.json" or relpath.startswith("/") or ".." in relpath.split("/"):
            raise ValueError(f"pack {name}: bad file name {relpath!r}")
        contents[relpath] = file_bytes(files[relpath])
    sums = {relpath: hashlib.sha256(data).hexdigest() for relpath, data in contents.items()}
    contents["PACK.json"] = json.dumps({"name": name, "version": version, "files": sums}, indent=1).encode()
    return contents


def pack_tar(name, version, files):
    """The uncompressed tar of one pack version, as bytes (the stream deltas are computed on)."""
    raw = io.BytesIO()
    delta.write_pack_tar(raw, pack_contents(name, version, files))
    return raw.getvalue()


def gzip_bytes(data):
    """gzip without a time or a file name in the header, so the same input always gives the same bytes."""
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
        gz.write(data)
    return out.getvalue()


def pack_archive(name, version, files):
    """The release archive of one pack version, as bytes.

    Reproducible: members sorted, regular files only, mode 0644, mtime 0, owner root (0/0), and a
    gzip header without a time or a file name, so the same pack always has the same sha256 and
    releases share it in the pool.
    """
    return gzip_bytes(pack_tar(name, version, files))


def archive_name(name, version):
    """The file name of a pack archive in a release pool, e.g. params-2026.11.0.tar.gz."""
    return f"{name}-{version}.tar.gz"
