"""The lab fleet as a user sees it: booted over real SSH, isolated, and its faults do what they say."""

import json
import socket
import time
from pathlib import Path

import pytest
from conftest import TERMINALS, loop_backing, poslab, run, status, wait_for

from poslab import config
from poslab.image import python39


def ssh_open(ip):
    try:
        with socket.create_connection((ip, 22), timeout=1):
            return True
    except OSError:
        return False


def posctl(serial, op, *args):
    return json.loads(poslab("exec", serial, "--", "posctl", op, *args, check=False).stdout)


def status_across_reboot(serial):
    """posd's status, or {} while the terminal is between boots and nothing answers."""
    out = poslab("exec", serial, "--", "posctl", "status", check=False).stdout
    try:
        return json.loads(out)
    except ValueError:
        return {}


def of_model(lab, model):
    return next(row for row in lab.values() if row["model"] == model)


def test_fleet_covers_every_model_and_region(lab):
    assert len(lab) == TERMINALS
    assert {row["model"] for row in lab.values()} == {"kestrel_k200", "heron_h5", "petrel_p9"}
    assert {row["region"] for row in lab.values()} == {"eu_west", "eu_central", "us_east"}
    assert all(row["reachable"] and row["healthy"] for row in lab.values()), lab


def test_ansible_reaches_every_terminal_over_ssh_with_host_keys_checked(lab):
    result = run(["ansible", "all", "-m", "ansible.builtin.ping", "-o"])
    assert result.stdout.count("SUCCESS") == TERMINALS


def test_facts_playbook_summarises_the_fleet(lab):
    result = run(["ansible-playbook", "playbooks/facts.yml"])
    for model in ("kestrel_k200", "heron_h5", "petrel_p9"):
        assert model in result.stdout
    assert "failed=0" in result.stdout and "unreachable=0" in result.stdout


def test_the_older_model_runs_its_modules_on_python_3_9(lab):
    # The lab lends the older model this machine's Python 3.9 (poslab.image.python39); a host without
    # one gives it the image's python3, and then there is no 3.9 to check.
    if python39() is None:
        pytest.skip("this host has no Python 3.9 to lend the petrel model (pyenv's 3.9 or /opt/python3.9): "
                    "the modules ran on the image's python3 instead")
    petrel = of_model(lab, "petrel_p9")["serial"]
    facts = run(["ansible", petrel, "-m", "posfleet.fleet.pos_facts", "-a", "package_style=bundle"]).stdout
    assert '"python": "3.9.' in facts


def test_terminal_is_isolated_from_the_host(lab):
    serial = next(iter(lab))
    routes = poslab("exec", serial, "--", "cat", "/proc/net/route").stdout.splitlines()[1:]
    assert routes and all(line.split()[1] != "00000000" for line in routes), "a terminal has no default route"
    listing = poslab("exec", serial, "--", "ls", "/").stdout.split()
    assert "work" not in listing
    assert poslab("exec", serial, "--", "test", "-e", "/var/lib/poslab", check=False).returncode != 0
    assert poslab("exec", serial, "--", "hostname").stdout.strip() == serial


def test_sales_are_journaled_and_ledger_reconciles(lab):
    serial = next(iter(lab))
    wait_for(lambda: posctl(serial, "status")["generated"] > 0, timeout=60, what="a first sale")
    upload = posctl(serial, "upload", "timeout=20")
    assert upload["ok"] and upload["pending"] == 0
    ledger = json.loads(poslab("ledger", "--json").stdout)
    row = next(e for e in ledger["terminals"] if e["serial"] == serial)
    assert row["generated"] > 0 and row["pending"] == 0
    assert ledger["totals"]["missing"] == 0 and ledger["totals"]["duplicated"] == 0


def test_net_down_and_up(lab):
    row = list(lab.values())[1]
    poslab("fault", row["serial"], "net-down")
    try:
        assert not ssh_open(row["ip"])
        # A new connection, as the next run's would be: a master kept from an earlier test would hold the ping
        # until its keepalives give up (a minute), which says the same thing later.
        result = run(["ansible", row["serial"], "-m", "ansible.builtin.ping", "-o"], check=False,
                     env={"ANSIBLE_SSH_ARGS": "-o ControlMaster=no -o ControlPath=none"})
        assert "UNREACHABLE" in result.stdout
        assert all(ssh_open(r["ip"]) for r in lab.values() if r is not row), "only that terminal is cut off"
    finally:
        poslab("fault", row["serial"], "net-up")
    wait_for(lambda: ssh_open(row["ip"]), what="the link to come back")


def download_seconds(serial, url):
    started = time.monotonic()
    poslab("exec", serial, "--", "python3", "-c",
           f"import urllib.request; urllib.request.urlopen('{url}', timeout=60).read()", timeout=120)
    return time.monotonic() - started


def test_slow_link_limits_downloads(lab):
    row = list(lab.values())[2]
    # 96 KiB from the terminal's own distribution point; at 128 kbit/s that takes about 6 s.
    regions = run(["ansible-inventory", "--host", row["serial"]]).stdout
    dp = json.loads(regions)["pos_region_settings"]["distribution_point"]
    blob = f"/var/lib/poslab/repo/{row['region']}/.slowtest"
    with open(blob, "wb") as handle:
        handle.write(b"x" * 96 * 1024)
    try:
        fast = download_seconds(row["serial"], f"{dp}/.slowtest")
        poslab("fault", row["serial"], "slow", "128kbit")
        slow = download_seconds(row["serial"], f"{dp}/.slowtest")
    finally:
        poslab("fault", row["serial"], "slow", "off")
    assert slow > 3 and slow > 4 * fast, (fast, slow)


def journal_rows(serial):
    ledger = json.loads(poslab("ledger", "--json", check=False).stdout)
    return next(e for e in ledger["terminals"] if e["serial"] == serial)["generated"]


def test_power_cut_reboots_that_terminal_only_and_keeps_its_flash(lab):
    rows = list(lab.values())
    victim, bystander = rows[3], rows[4]
    before = {r["serial"]: posctl(r["serial"], "status") for r in (victim, bystander)}
    rows_before = journal_rows(victim["serial"])
    assert rows_before > 0
    poslab("fault", victim["serial"], "power-cut", "2")
    time.sleep(0.5)
    assert not ssh_open(victim["ip"])
    wait_for(lambda: ssh_open(victim["ip"]), timeout=60, what="the terminal to boot again")
    after = wait_for(lambda: (s := status_across_reboot(victim["serial"])).get("ok") and s, what="posd after boot")
    assert after["boot_id"] != before[victim["serial"]]["boot_id"]
    assert journal_rows(victim["serial"]) >= rows_before, "the journal survives a power cut"
    assert posctl(bystander["serial"], "status")["boot_id"] == before[bystander["serial"]]["boot_id"]


def test_reboot_command_inside_a_terminal_restarts_only_that_terminal(lab):
    rows = list(lab.values())
    target = next(r for r in rows if r["model"] == "heron_h5")
    others = {r["serial"]: posctl(r["serial"], "status")["boot_id"] for r in rows if r is not target}
    old = posctl(target["serial"], "status")["boot_id"]
    poslab("exec", target["serial"], "--", "/usr/sbin/pos-reboot", "--now", check=False)
    wait_for(lambda: status_across_reboot(target["serial"]).get("boot_id") not in (None, old), timeout=60,
             what="a new boot id")
    assert {s: posctl(s, "status")["boot_id"] for s in others} == others


def test_disk_full_leaves_no_free_flash(lab):
    row = of_model(lab, "kestrel_k200")

    def free_mb():
        out = run(["ansible", row["serial"], "-m", "posfleet.fleet.pos_facts", "-a", "package_style=dpkg"]).stdout
        return json.loads(out.split("=>", 1)[1])["ansible_facts"]["pos_terminal"]["storage_free_mb"]

    assert free_mb() > 20
    poslab("fault", row["serial"], "disk-full")
    try:
        assert free_mb() == 0
    finally:
        poslab("fault", row["serial"], "disk-ok")
    assert free_mb() > 20


def test_battery_level_and_charger(lab):
    row = of_model(lab, "heron_h5")

    def battery():
        out = run(["ansible", row["serial"], "-m", "posfleet.fleet.pos_facts", "-a", "package_style=bundle"]).stdout
        facts = json.loads(out.split("=>", 1)[1])["ansible_facts"]["pos_terminal"]
        return facts["battery_pct"], facts["charging"]

    poslab("fault", row["serial"], "battery", "12")
    assert battery() == (12, False)
    poslab("fault", row["serial"], "battery", "12", "charging")
    assert battery() == (12, True)
    poslab("fault", row["serial"], "battery", "85")


def test_sale_in_flight_blocks_maintenance_until_it_finishes(lab):
    serial = of_model(lab, "petrel_p9")["serial"]
    poslab("fault", serial, "txn-inflight", "0")
    try:
        assert posctl(serial, "status")["state"] == "in-transaction"
        refused = posctl(serial, "maintenance_enter", "timeout=1")
        assert not refused["ok"] and refused["error"].startswith("in-transaction")
    finally:
        poslab("fault", serial, "txn-release")
    assert posctl(serial, "maintenance_enter", "timeout=10")["ok"]
    assert posctl(serial, "maintenance_leave")["ok"]


def test_pending_offline_sales_and_the_acquirer_going_down(lab):
    serial = of_model(lab, "kestrel_k200")["serial"]
    poslab("fault", serial, "txn-pending", "5")
    assert posctl(serial, "status")["pending"] >= 5
    poslab("acquirer", "down")
    try:
        refused = posctl(serial, "upload", "timeout=5")
        assert not refused["ok"]
        assert posctl(serial, "status")["pending"] >= 5
    finally:
        poslab("acquirer", "up")
    assert posctl(serial, "upload", "timeout=20")["pending"] == 0


def test_unknown_fault_names_the_valid_ones(lab):
    result = poslab("fault", next(iter(lab)), "meteor-strike", check=False)
    assert result.returncode != 0
    assert "unknown fault 'meteor-strike'" in result.stderr and "net-down" in result.stderr


def test_a_terminal_with_disk_flash_has_its_model_s_flash_and_gives_its_loop_device_back(lab):
    """`poslab up --flash disk` (what a lab too large for memory gets): the flash is an ext4 image of the
    model's size on a loop device, fills up as a real one would, and leaving the fleet frees the device."""
    before = status()
    boot_ids = {s: posctl(s, "status")["boot_id"] for s in before}
    poslab("up", "--terminals", TERMINALS + 1, "--seed", "1", "--flash", "disk", timeout=600)
    try:
        new = next(row for serial, row in status().items() if serial not in before)
        assert {s: posctl(s, "status")["boot_id"] for s in before} == boot_ids, "no terminal was rebooted"
        flash = f"/var/lib/poslab/terminals/{new['serial']}/flash"
        mounts = {line.split()[1]: line.split() for line in Path("/proc/self/mounts").read_text().splitlines()}
        device, _, fstype = mounts[flash][:3]
        assert fstype == "ext4" and loop_backing(device.rsplit("/", 1)[1]).endswith(f"/{new['serial']}/flash.img")
        assert {mounts[f"/var/lib/poslab/terminals/{s}/flash"][2] for s in before} == {"tmpfs"}

        def df_kib():  # size, free of the terminal's root as the terminal sees it
            line = poslab("exec", new["serial"], "--", "df", "-k", "/").stdout.splitlines()[-1].split()
            return int(line[1]), int(line[3])

        size_mb = config.load_models()[new["model"]]["storage_mb"]
        assert 0.9 * size_mb * 1024 <= df_kib()[0] <= size_mb * 1024
        assert ssh_open(new["ip"])
        poslab("fault", new["serial"], "disk-full")
        assert df_kib()[1] == 0
        poslab("fault", new["serial"], "disk-ok")
        assert df_kib()[1] > 0.8 * size_mb * 1024
    finally:
        poslab("up", "--terminals", TERMINALS, "--seed", "1")
    assert not [path.name for path in Path("/sys/block").glob("loop*") if "/var/lib/poslab/" in loop_backing(path.name)]


def test_up_again_is_idempotent(lab):
    before = {s: r["ip"] for s, r in status().items()}
    boot_ids = {s: posctl(s, "status")["boot_id"] for s in before}
    poslab("up", "--terminals", TERMINALS, "--seed", "1")
    assert {s: r["ip"] for s, r in status().items()} == before
    assert {s: posctl(s, "status")["boot_id"] for s in before} == boot_ids, "no terminal was rebooted"
