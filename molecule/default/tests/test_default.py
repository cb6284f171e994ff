"""What an operator would check on a lab terminal after the converge."""

import json


def posd_status(host):
    result = host.run("posctl status")
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def test_sshd_and_posd_run(host):
    assert host.process.filter(comm="sshd")
    assert host.file("/run/pos/posd.sock").is_socket
    assert posd_status(host)["ok"]


def test_identity_matches_hostname(host):
    identity = json.loads(host.file("/etc/pos/terminal.json").content_string)
    assert identity["serial"] == host.check_output("hostname")


def test_payment_app_is_selling_with_all_packs(host):
    status = posd_status(host)
    assert status["healthy"], status["health_detail"]
    assert status["state"] in ("idle", "in-transaction")
    assert set(status["packs"]) == {"params", "catalog", "merchant"}
    assert all(status["packs"].values())


def test_terminal_has_no_default_route(host):
    routes = host.file("/proc/net/route").content_string.splitlines()[1:]
    assert routes, "the terminal should have its lab route"
    assert all(line.split()[1] != "00000000" for line in routes)


def test_control_node_files_are_not_visible(host):
    assert not host.file("/var/lib/poslab").exists
    assert not host.file("/root/.ssh/id_ed25519").exists
