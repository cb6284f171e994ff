"""Data packs as a terminal holds them: a directory per version with PACK.json, and a `current` link.

PACK.json is {"name", "version", "files": {relative path: sha256}}; posd refuses a pack whose files
do not match it. The factory packs here are what a terminal leaves the factory with; releases
carry newer ones.
"""

import hashlib
import json
import random
from pathlib import Path

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
        lines.append(f"SKU{number:07d},Item {number} {rng.choice(['small', 'large', 'pack', 'each'])},{price}")
    return "\n".join(lines) + "\n"


def merchant_files(terminal):
    """The merchant profile, rendered for one terminal from its registry row."""
    return {"profile.json": {
        "merchant_id": terminal["merchant_id"], "terminal_id": terminal["terminal_id"],
        "name": terminal["merchant_name"], "store": terminal["store"], "currency": "EUR",
        "receipt_header": f"{terminal['merchant_name']} - thank you",
    }}


def write_pack(packs_dir, name, version, files, make_current=True):
    """Write one pack version with its PACK.json; optionally point `current` at it."""
    target = Path(packs_dir) / name / version
    target.mkdir(parents=True, exist_ok=True)
    sums = {}
    for relpath, content in sorted(files.items()):
        data = content if isinstance(content, (bytes, str)) else json.dumps(content, indent=1, sort_keys=True)
        data = data.encode() if isinstance(data, str) else data
        (target / relpath).write_bytes(data)
        sums[relpath] = hashlib.sha256(data).hexdigest()
    (target / "PACK.json").write_text(json.dumps({"name": name, "version": version, "files": sums}, indent=1))
    if make_current:
        link = Path(packs_dir) / name / "current"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(version)
    return target


def write_factory_packs(packs_dir, acquirer_url):
    """The params and catalog packs every terminal of a model leaves the factory with."""
    write_pack(packs_dir, "params", FACTORY_VERSIONS["params"], params_files(FACTORY_VERSIONS["params"],
                                                                              acquirer_url))
    write_pack(packs_dir, "catalog", FACTORY_VERSIONS["catalog"],
               {"catalog.csv": catalog_csv(FACTORY_VERSIONS["catalog"])})
