"""The lab network: one bridge, a hub namespace for the services, a namespace per terminal.

Everything is on 10.231.0.0/16 behind bridge poslab0. Terminals get an address on that subnet and
no default route, so there is no path from a terminal to anything but the lab. The host only gains
the bridge and its connected route; no firewall rule, forwarding setting or other route changes.
"""

import subprocess

from . import config
from .util import run


def ip_batch(commands):
    """Run many `ip` commands in one process (`ip -batch`); 100 terminals in well under a second."""
    if commands:
        run(["ip", "-force", "-batch", "-"], input_text="\n".join(commands) + "\n")


def existing_namespaces():
    result = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return {line.split()[0] for line in result.stdout.splitlines() if line.startswith(config.NS_PREFIX)}


def link_exists(name):
    return subprocess.run(["ip", "link", "show", name], capture_output=True, check=False).returncode == 0


def terminal_ns(terminal):
    return f"{config.NS_PREFIX}t{terminal['index']}"


def terminal_veth(terminal):
    """The host end of the terminal's cable; the fault commands pull and throttle this one."""
    return f"{config.VETH_PREFIX}{terminal['index']}"


def _permanent(address, mac, dev="eth0"):
    """A permanent neighbour (ARP) entry. Why the lab writes every one of its entries so: the kernel's neighbour
    table is one for the whole machine, every namespace's entries counted together, and past gc_thresh3 (1024
    by default) it refuses new ones ("neighbor table overflow"): at 500 terminals, each resolving the control
    node, its distribution point and the acquirer, most terminals became unreachable ("No route to host").
    Raising the thresholds would change the host; permanent entries are not counted against them (Linux 4.19
    and later) and need no resolution at all."""
    return f"neigh replace {address} lladdr {mac} dev {dev} nud permanent"


def _hub_ips(regions):
    """The addresses of the hub's services: each region's distribution point, and the acquirer."""
    return sorted({r["dp_ip"] for r in regions.values()} | {str(config.ACQUIRER_IP)})


def ensure_bridge(regions):
    """Bridge, control-node address and the hub namespace with the services' addresses."""
    prefix = config.SUBNET.prefixlen
    if not link_exists(config.BRIDGE):
        ip_batch([
            f"link add {config.BRIDGE} address {config.BRIDGE_MAC} type bridge",
            f"addr add {config.CONTROL_IP}/{prefix} dev {config.BRIDGE}",
            f"link set {config.BRIDGE} up",
        ])
    if config.HUB_NS not in existing_namespaces():
        run(["ip", "netns", "add", config.HUB_NS])
        hub_ips = _hub_ips(regions)
        ip_batch([f"link add {config.VETH_PREFIX}hub type veth peer name eth0 address {config.HUB_MAC} "
                  f"netns {config.HUB_NS}",
                  f"link set {config.VETH_PREFIX}hub master {config.BRIDGE} up"])
        run(["ip", "-n", config.HUB_NS, "-batch", "-"], input_text="\n".join(
            [f"addr add {address}/{prefix} dev eth0" for address in hub_ips]
            + ["link set eth0 up", "link set lo up"]) + "\n")


def ensure_terminals(terminals, regions):
    """Create the namespace and cable of each terminal that does not have them yet, with the permanent
    neighbour entries between it and the control node and the hub's services (_permanent)."""
    have = existing_namespaces()
    missing = [t for t in terminals if terminal_ns(t) not in have]
    for terminal in missing:
        run(["ip", "netns", "add", terminal_ns(terminal)])
    ip_batch([line for t in missing for line in (
        f"link add {terminal_veth(t)} type veth peer name eth0 address {config.terminal_mac(t['index'])} "
        f"netns {terminal_ns(t)}",
        f"link set {terminal_veth(t)} master {config.BRIDGE} up",
    )] + [_permanent(t["ip"], config.terminal_mac(t["index"]), config.BRIDGE) for t in missing])
    hub_ips = _hub_ips(regions)
    if missing:
        run(["ip", "-n", config.HUB_NS, "-batch", "-"], input_text="".join(
            _permanent(t["ip"], config.terminal_mac(t["index"])) + "\n" for t in missing))
    for terminal in missing:
        run(["ip", "-n", terminal_ns(terminal), "-batch", "-"], input_text=(
            f"addr add {terminal['ip']}/{config.SUBNET.prefixlen} dev eth0\n"
            "link set eth0 up\nlink set lo up\n"
            + _permanent(config.CONTROL_IP, config.BRIDGE_MAC) + "\n"
            + "".join(_permanent(address, config.HUB_MAC) + "\n" for address in hub_ips)))


def remove_terminal(terminal):
    subprocess.run(["ip", "netns", "del", terminal_ns(terminal)], capture_output=True, check=False)


def teardown():
    """Remove every namespace, veth and the bridge of the lab, whatever state they are in."""
    for name in existing_namespaces():
        # Deleting a namespace deletes the veth ends inside it and so their host-side peers.
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    result = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False)
    for line in result.stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(config.VETH_PREFIX) or name == config.BRIDGE:
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
