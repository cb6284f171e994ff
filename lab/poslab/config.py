"""Where the lab keeps its state, its fixed addresses, and the shared model and region data.

The model profiles and regions are read from inventories/shared/, the same files the inventory plugin
attaches to its groups, so the lab and the playbooks can never disagree about what a model is.
"""

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

import yaml

PROJECT = Path(__file__).resolve().parents[2]
LAB = PROJECT / "lab"
STATE = Path(os.environ.get("POSLAB_STATE", "/var/lib/poslab"))
# The base image is a cache: it survives `poslab down` so the next `up` does not rebuild it.
CACHE = Path(os.environ.get("POSLAB_CACHE", "/var/cache/poslab"))

BRIDGE = "poslab0"
NS_PREFIX = "poslab-"
HUB_NS = NS_PREFIX + "hub"
VETH_PREFIX = "plv"
SUBNET = ipaddress.ip_network("10.231.0.0/16")
CONTROL_IP = ipaddress.ip_address("10.231.0.1")
ACQUIRER_IP = ipaddress.ip_address("10.231.0.20")
ACQUIRER_PORT = 8080
ACQUIRER_URL = f"http://{ACQUIRER_IP}:{ACQUIRER_PORT}"

SSH_DIR = STATE / "ssh"
SSH_KEY = SSH_DIR / "id_ed25519"
KNOWN_HOSTS = SSH_DIR / "known_hosts"
FLEET_FILE = STATE / "fleet.json"
RELEASE_KEY_DIR = STATE / "release-key"
VAULT_DIR = STATE / "vault"
VAULT_PASSWORD = VAULT_DIR / "password"
VAULT_SECRETS = VAULT_DIR / "secrets.yml"
REGISTRY_CSV = STATE / "registry.csv"
TERMINALS = STATE / "terminals"
LAYERS = STATE / "layers"
REPO = STATE / "repo"
RUN = STATE / "run"
SUPERVISOR_PID = RUN / "supervisor.pid"
SUPERVISOR_LOG = STATE / "supervisor.log"


def load_models():
    """Return {model name: profile} from inventories/shared/models.yml."""
    with open(PROJECT / "inventories" / "shared" / "models.yml", encoding="utf-8") as handle:
        return yaml.safe_load(handle)["models"]


def load_regions():
    """Return {region name: settings}, each with the lab address of its distribution point."""
    with open(PROJECT / "inventories" / "shared" / "regions.yml", encoding="utf-8") as handle:
        regions = yaml.safe_load(handle)["regions"]
    for settings in regions.values():
        url = urlsplit(settings["distribution_point"])
        address = ipaddress.ip_address(url.hostname)
        if address not in SUBNET:
            raise SystemExit(
                f"poslab: distribution point {settings['distribution_point']} is outside the lab subnet "
                f"{SUBNET}; the lab serves only lab addresses (fix inventories/shared/regions.yml)"
            )
        settings["dp_ip"] = str(address)
        settings["dp_port"] = url.port or 80
    return regions


# Fixed link-layer addresses (locally administered, 02:...), so that every neighbour entry of the lab can be
# written once as permanent (net._permanent says why).
BRIDGE_MAC = "02:70:ff:ff:ff:01"
HUB_MAC = "02:70:ff:ff:ff:02"


def terminal_mac(index):
    """The link-layer address of terminal number `index`'s eth0 (0-based)."""
    return "02:70:" + ":".join(f"{byte:02x}" for byte in (index + 1).to_bytes(4, "big"))


def terminal_ip(index):
    """The lab address of terminal number `index` (0-based): 10.231.1.1, 10.231.1.2, ..."""
    return str(SUBNET.network_address + 256 + 1 + (index // 250) * 256 + index % 250)
