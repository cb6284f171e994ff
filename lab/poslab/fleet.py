"""The shape of the simulated fleet: which terminal is which model, region and merchant.

The fleet is a pure function of (size, seed), so `poslab up --terminals N --seed S` on two machines
gives the same serials, addresses and merchants, and growing a fleet keeps the terminals it had.
"""

import csv
import json
import random

from . import config

REGISTRY_COLUMNS = ["serial", "model", "region", "merchant_id", "terminal_id", "merchant_name", "store", "ip"]

# Fictional merchants; any likeness to a real business is a coincidence.
_MERCHANT_WORDS = ["Juniper", "Copper", "Harbour", "Maple", "Granite", "Willow", "Saffron", "Lantern",
                   "Meadow", "Cobalt", "Thistle", "Quarry"]
_MERCHANT_KINDS = ["Bakery", "Grocers", "Pharmacy", "Books", "Hardware", "Cafe", "Deli", "Florist"]


def build(size, seed):
    """Return the list of terminals for a fleet of `size`, each a dict with the registry columns."""
    profiles = config.load_models()
    models = sorted(profiles)
    regions = sorted(config.load_regions())
    rng = random.Random(seed)
    merchants = []
    terminals = []
    for index in range(size):
        model = models[index % len(models)]
        # Offsetting the region by index // len(models) spreads every model over every region even
        # in a fleet of six.
        region = regions[(index + index // len(models)) % len(regions)]
        # Roughly three terminals per merchant, the way a shop has a few tills.
        if not merchants or rng.random() < 0.35:
            number = len(merchants) + 1
            merchants.append({
                "merchant_id": f"M{seed % 1000:03d}{number:05d}",
                "merchant_name": f"{rng.choice(_MERCHANT_WORDS)} {rng.choice(_MERCHANT_KINDS)}",
                "stores": 0,
            })
        merchant = merchants[-1]
        if merchant["stores"] == 0 or rng.random() < 0.3:
            merchant["stores"] += 1
        terminals.append({
            "index": index,
            "serial": f"{profiles[model]['serial_prefix']}{index + 1:05d}",
            "model": model,
            "region": region,
            "merchant_id": merchant["merchant_id"],
            "terminal_id": f"T{index + 1:07d}",
            "merchant_name": merchant["merchant_name"],
            "store": f"{merchant['merchant_id']}-S{merchant['stores']:02d}",
            "ip": config.terminal_ip(index),
        })
    return terminals


def save(terminals, seed):
    """Write the fleet file the lab works from and the TMS-style registry export Ansible reads."""
    config.STATE.mkdir(parents=True, exist_ok=True)
    tmp = config.FLEET_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps({"seed": seed, "terminals": terminals}, indent=1))
    tmp.replace(config.FLEET_FILE)
    tmp = config.REGISTRY_CSV.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=REGISTRY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(terminals)
    tmp.replace(config.REGISTRY_CSV)


def load():
    """Return the saved fleet's terminals, or an empty list when the lab was never brought up."""
    try:
        return json.loads(config.FLEET_FILE.read_text())["terminals"]
    except FileNotFoundError:
        return []


def find(serial):
    """Return the terminal with this serial, or exit with a message that lists how to see them."""
    for terminal in load():
        if terminal["serial"] == serial:
            return terminal
    raise SystemExit(f"poslab: no terminal {serial!r} in the lab; `poslab status` lists the serials")


def saved_seed():
    try:
        return json.loads(config.FLEET_FILE.read_text())["seed"]
    except (FileNotFoundError, KeyError, ValueError):
        return None
