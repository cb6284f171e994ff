"""The posfleet_registry inventory plugin, run the way an operator runs it: `ansible-inventory -i ...`.

Each test writes a registry and a plugin config into tmp_path and reads what ansible-inventory makes
of them. ansible.cfg is the repository's, so the plugin is found the way a playbook run finds it.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ansible_tool

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / "inventories" / "shared"
PRODUCTION = REPO / "inventories" / "production"
LAB = REPO / "inventories" / "lab"
MODELS = yaml.safe_load((SHARED / "models.yml").read_text())["models"]
REGIONS = yaml.safe_load((SHARED / "regions.yml").read_text())["regions"]
HEADER = "serial,model,region,merchant_id,terminal_id,merchant_name,store,ip"


def run_inventory(source, *args, fatal=True, env=None, tool="ansible-inventory"):
    """Run ansible-inventory against `source`; return the CompletedProcess.

    The plugin can only raise; whether a source that fails to parse stops ansible-inventory is up to
    the inventory's `any_unparsed_is_failed` setting. `fatal` sets it, so that these tests see the
    plugin's verdict whatever ansible.cfg says; test_shipped_config_makes_a_bad_registry_fatal checks
    ansible.cfg itself.
    """
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "POSLAB_"))}
    run_env.update(ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    if fatal:
        run_env["ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED"] = "true"
    run_env.update(env or {})
    return subprocess.run(
        [ansible_tool(tool), "-i", str(source), *args],
        cwd=REPO, env=run_env, capture_output=True, text=True, timeout=60, check=False,
    )


def _plain(obj):
    # ansible-inventory marks strings that must never be templated (registry data) as
    # {"__ansible_unsafe": text}; Ansible unwraps them when it reads the output, and so do the tests.
    if set(obj) == {"__ansible_unsafe"}:
        return obj["__ansible_unsafe"]
    return obj


def inventory_list(source, *args, env=None):
    proc = run_inventory(source, "--list", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout, object_hook=_plain)


def write_config(directory, registry, **options):
    config = {
        "plugin": "posfleet.fleet.posfleet_registry",
        "registry": registry,
        "models_file": str(SHARED / "models.yml"),
        "regions_file": str(SHARED / "regions.yml"),
        "strict": True,
        "keyed_groups": [
            {"key": "pos_merchant_id", "prefix": "merchant"},
            {"key": "pos_store", "prefix": "store"},
        ],
    }
    config.update(options)
    path = directory / "fleet.posfleet.yml"
    path.write_text("---\n" + yaml.safe_dump(config, sort_keys=False))
    return path


def write_csv(directory, rows, header=HEADER, name="registry.csv"):
    path = directory / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def hosts_of(data, group):
    return set(data.get(group, {}).get("hosts", []))


# Six good terminals: every model in every region at least once, two merchants, three stores.
GOOD_ROWS = [
    "KST00001,kestrel_k200,eu_west,M001,T0001,Juniper Bakery,M001-S01,192.0.2.1",
    "HRN00002,heron_h5,eu_central,M001,T0002,Juniper Bakery,M001-S01,192.0.2.2",
    "PTR00003,petrel_p9,us_east,M001,T0003,Juniper Bakery,M001-S02,192.0.2.3",
    'KST00004,kestrel_k200,us_east,M002,T0004,"Copper Deli, Ltd",M002-S01,198.51.100.4',
    "HRN00005,heron_h5,eu_west,M002,T0005,Copper Deli,M002-S01,2001:db8::5",
    "PTR00006,petrel_p9,eu_central,M002,T0006,Copper Deli,M002-S01,198.51.100.6",
]


def test_csv_registry_builds_hosts_groups_and_vars(tmp_path):
    write_csv(tmp_path, GOOD_ROWS)
    data = inventory_list(write_config(tmp_path, "registry.csv"))
    hostvars = data["_meta"]["hostvars"]

    assert set(hostvars) == {row.split(",")[0] for row in GOOD_ROWS}
    assert hosts_of(data, "model_kestrel_k200") == {"KST00001", "KST00004"}
    assert hosts_of(data, "model_petrel_p9") == {"PTR00003", "PTR00006"}
    assert hosts_of(data, "region_eu_west") == {"KST00001", "HRN00005"}
    assert hosts_of(data, "region_us_east") == {"PTR00003", "KST00004"}
    assert set(data["models"]["children"]) == {f"model_{name}" for name in MODELS}
    assert set(data["regions"]["children"]) == {f"region_{name}" for name in REGIONS}
    assert hosts_of(data, "merchant_M001") == {"KST00001", "HRN00002", "PTR00003"}
    assert hosts_of(data, "merchant_M002") == {"KST00004", "HRN00005", "PTR00006"}
    assert hosts_of(data, "store_M001_S02") == {"PTR00003"}
    assert hosts_of(data, "store_M002_S01") == {"KST00004", "HRN00005", "PTR00006"}

    kestrel = hostvars["KST00004"]
    assert kestrel["ansible_host"] == "198.51.100.4"
    assert kestrel["pos_serial"] == "KST00004"
    assert kestrel["pos_model"] == "kestrel_k200"
    assert kestrel["pos_region"] == "us_east"
    assert kestrel["pos_merchant_id"] == "M002"
    assert kestrel["pos_terminal_id"] == "T0004"
    assert kestrel["pos_merchant_name"] == "Copper Deli, Ltd"
    assert kestrel["pos_store"] == "M002-S01"
    assert hostvars["HRN00005"]["ansible_host"] == "2001:db8::5"

    # The interpreter comes from each model's profile, and the profiles differ.
    for serial, host in hostvars.items():
        assert host["ansible_python_interpreter"] == MODELS[host["pos_model"]]["python"], serial
    assert hostvars["PTR00003"]["ansible_python_interpreter"] == "/opt/python3.9/bin/python3.9"

    # Model and region data reach each host through its groups.
    assert hostvars["PTR00003"]["pos_model_profile"] == dict(MODELS["petrel_p9"], name="petrel_p9")
    assert hostvars["PTR00003"]["pos_region_settings"] == dict(REGIONS["us_east"], name="us_east")


def test_groups_hang_under_all_in_the_order_ansible_core_gives_them(tmp_path):
    # The plugin parents its groups under `all` itself (ansible-core's reconcile step is quadratic in the
    # groups): in the same order, after the groups of a source read before it, and a playbook's hosts
    # (`all`'s, group by group) in the same order too.
    (tmp_path / "a-tills.yml").write_text("---\nspare_tills:\n  hosts:\n    SPARE1:\nloose:\n  hosts:\n    LOOSE1:\n")
    write_csv(tmp_path, GOOD_ROWS)
    write_config(tmp_path, "registry.csv")
    data = inventory_list(tmp_path)

    assert data["all"]["children"] == ["ungrouped", "spare_tills", "loose", "models", "regions", "merchant_M001",
                                       "store_M001_S01", "store_M001_S02", "merchant_M002", "store_M002_S01"]
    proc = run_inventory(tmp_path, "--graph")
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stdout.splitlines() if line.startswith("  |--")] == \
        [f"  |--@{name}:" for name in data["all"]["children"]]
    hosts = run_inventory(tmp_path, "all", "--list-hosts", tool="ansible")
    assert hosts.returncode == 0, hosts.stderr
    assert [line.strip() for line in hosts.stdout.splitlines()[1:]] == [
        "SPARE1", "LOOSE1", "KST00001", "HRN00002", "PTR00003", "KST00004", "HRN00005", "PTR00006"]


def test_profiles_are_group_vars_not_host_vars(tmp_path):
    write_csv(tmp_path, GOOD_ROWS)
    data = inventory_list(write_config(tmp_path, "registry.csv"), "--export")

    for name, profile in MODELS.items():
        assert data[f"model_{name}"]["vars"]["pos_model_profile"] == dict(profile, name=name)
    for name, settings in REGIONS.items():
        assert data[f"region_{name}"]["vars"]["pos_region_settings"] == dict(settings, name=name)
    host = data["_meta"]["hostvars"]["HRN00002"]
    assert "pos_model_profile" not in host and "pos_region_settings" not in host
    # On `all`, only where the shared files are (publish.yml hands them to posfleet-release): connection
    # settings and secrets belong to the inventory's group_vars.
    assert data["all"]["vars"] == {"posfleet_models_file": str(SHARED / "models.yml"),
                                   "posfleet_regions_file": str(SHARED / "regions.yml")}


def test_extra_columns_compose_and_groups(tmp_path):
    write_csv(tmp_path, [
        "KST00001,kestrel_k200,eu_west,M001,T0001,Juniper Bakery,M001-S01,192.0.2.1,2222,front till",
        "HRN00002,heron_h5,eu_west,M001,T0002,Juniper Bakery,M001-S01,192.0.2.2,22,",
    ], header=HEADER + ",ssh_port,Note")
    config = write_config(
        tmp_path, "registry.csv",
        compose={"ansible_port": "pos_registry_ssh_port | int"},
        groups={"on_battery": "pos_model_profile.battery"},
    )
    data = inventory_list(config)
    hostvars = data["_meta"]["hostvars"]

    assert hostvars["KST00001"]["pos_registry_ssh_port"] == "2222"
    assert hostvars["KST00001"]["pos_registry_note"] == "front till"
    assert hostvars["HRN00002"]["pos_registry_note"] == ""
    assert hostvars["KST00001"]["ansible_port"] == 2222
    # `groups` sees the model profile, a group var.
    assert hosts_of(data, "on_battery") == {"HRN00002"}


def test_registry_text_with_template_markers_is_refused(tmp_path):
    write_csv(tmp_path, ["KST00001,kestrel_k200,eu_west,M001,T0001,{{ 6 * 7 }} Deli,M001-S01,192.0.2.1"])
    proc = run_inventory(write_config(tmp_path, "registry.csv"), "--list")

    assert proc.returncode != 0
    assert "field 'merchant_name' contains a template marker" in proc.stderr
    assert "42 Deli" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("wrapped", [False, True], ids=["list", "terminals-object"])
def test_json_registry(tmp_path, wrapped):
    terminals = [
        {"serial": "HRN00001", "model": "heron_h5", "region": "us_east", "merchant_id": 4711,
         "terminal_id": "T0001", "merchant_name": "Lantern Books", "store": "S1", "ip": "192.0.2.50",
         "ssh_port": 2222, "tags": ["pilot"]},
        {"serial": "KST00002", "model": "kestrel_k200", "region": "eu_central", "merchant_id": "M9",
         "terminal_id": "T0002", "merchant_name": "Quarry Deli", "store": "S2", "ip": "192.0.2.51"},
    ]
    (tmp_path / "registry.json").write_text(json.dumps({"terminals": terminals} if wrapped else terminals))
    data = inventory_list(write_config(tmp_path, "registry.json"))
    hostvars = data["_meta"]["hostvars"]

    assert set(hostvars) == {"HRN00001", "KST00002"}
    assert hosts_of(data, "model_heron_h5") == {"HRN00001"}
    assert hosts_of(data, "region_eu_central") == {"KST00002"}
    assert hosts_of(data, "merchant_4711") == {"HRN00001"}
    assert hostvars["HRN00001"]["pos_merchant_id"] == "4711"
    assert hostvars["HRN00001"]["pos_registry_ssh_port"] == 2222
    assert hostvars["HRN00001"]["pos_registry_tags"] == ["pilot"]
    assert hostvars["KST00002"]["ansible_python_interpreter"] == MODELS["kestrel_k200"]["python"]


def test_json_bad_entries_are_named_by_index(tmp_path):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps([
        {"serial": "HRN00001", "model": "heron_h5", "region": "us_east", "merchant_id": "M1",
         "terminal_id": "T1", "merchant_name": "Lantern Books", "store": "S1", "ip": "192.0.2.50"},
        ["not", "an", "object"],
        {"serial": "HRN00003", "model": "heron_h5", "region": "us_east", "merchant_id": "M1",
         "terminal_id": "T3", "merchant_name": "Lantern Books", "store": "S1", "ip": "192.0.2.50"},
    ]))
    proc = run_inventory(write_config(tmp_path, "registry.json"), "--list")

    assert proc.returncode != 0
    assert f"{path}:entry 2: entry is a JSON list, expected an object" in proc.stderr
    assert f"{path}:entry 3: duplicate ip '192.0.2.50' (first at {path}:entry 1)" in proc.stderr


# One bad row of each kind: (row, the reason the plugin must give). Row 1 of every registry below is
# GOOD_ROWS[0], so the duplicates point back at line 2.
BAD_ROWS = {
    "missing-field": ("KST00010,kestrel_k200,eu_west,M001,T0010,Juniper Bakery,M001-S01",
                      "required field 'ip' is missing"),
    "empty-field": ("KST00011,kestrel_k200,eu_west,M001,T0011,Juniper Bakery,,192.0.2.111",
                    "required field 'store' is empty"),
    "empty-merchant-id": ("KST00012,kestrel_k200,eu_west,,T0012,Juniper Bakery,M001-S01,192.0.2.112",
                          "required field 'merchant_id' is empty"),
    "empty-terminal-id": ("KST00013,kestrel_k200,eu_west,M001,  ,Juniper Bakery,M001-S01,192.0.2.113",
                          "required field 'terminal_id' is empty"),
    "unknown-model": ("XXX00014,osprey_o1,eu_west,M001,T0014,Juniper Bakery,M001-S01,192.0.2.114",
                      "unknown model 'osprey_o1' (known models: heron_h5, kestrel_k200, petrel_p9)"),
    "unknown-region": ("KST00015,kestrel_k200,ap_south,M001,T0015,Juniper Bakery,M001-S01,192.0.2.115",
                       "unknown region 'ap_south' (known regions: eu_central, eu_west, us_east)"),
    "bad-ip": ("KST00016,kestrel_k200,eu_west,M001,T0016,Juniper Bakery,M001-S01,192.0.2.300",
               "ip '192.0.2.300' is not a valid IPv4 or IPv6 address"),
    "duplicate-serial": ("KST00001,kestrel_k200,eu_west,M001,T0017,Juniper Bakery,M001-S01,192.0.2.117",
                         "duplicate serial 'KST00001' (first at {registry}:2)"),
    "duplicate-ip": ("KST00018,kestrel_k200,eu_west,M001,T0018,Juniper Bakery,M001-S01,192.0.2.1",
                     "duplicate ip '192.0.2.1' (first at {registry}:2)"),
    "bad-serial": ("KST 19,kestrel_k200,eu_west,M001,T0019,Juniper Bakery,M001-S01,192.0.2.119",
                   "serial 'KST 19' is not allowed: use 1 to 64 letters, digits, '.', '_' or '-'"),
    "too-many-fields": ("KST00020,kestrel_k200,eu_west,M001,T0020,Juniper,Bakery,M001-S01,192.0.2.120",
                        "9 fields but the header has 8"),
}


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_a_bad_row_fails_the_inventory(tmp_path, kind):
    row, reason = BAD_ROWS[kind]
    registry = write_csv(tmp_path, [GOOD_ROWS[0], row])
    proc = run_inventory(write_config(tmp_path, "registry.csv"), "--list")

    assert proc.returncode != 0
    assert f"{registry}:3: {reason.format(registry=registry)}" in proc.stderr
    assert "on_bad_row: skip" in proc.stderr     # the way out is named


def test_every_bad_row_is_listed_and_nothing_loads(tmp_path):
    kinds = sorted(BAD_ROWS)
    registry = write_csv(tmp_path, [GOOD_ROWS[0], *(BAD_ROWS[kind][0] for kind in kinds), GOOD_ROWS[1]])
    proc = run_inventory(write_config(tmp_path, "registry.csv"), "--list")

    assert proc.returncode != 0
    assert f"{len(kinds)} bad row(s) in {registry}" in proc.stderr
    for line, kind in enumerate(kinds, start=3):
        assert f"{registry}:{line}: {BAD_ROWS[kind][1].format(registry=registry)}" in proc.stderr, kind
    assert proc.stdout == ""


def test_skip_mode_loads_good_rows_and_warns_about_each_bad_one(tmp_path):
    kinds = sorted(BAD_ROWS)
    registry = write_csv(tmp_path, [GOOD_ROWS[0], *(BAD_ROWS[kind][0] for kind in kinds), GOOD_ROWS[1]])
    proc = run_inventory(write_config(tmp_path, "registry.csv", on_bad_row="skip"), "--list")

    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)["_meta"]["hostvars"]) == {"KST00001", "HRN00002"}
    for line, kind in enumerate(kinds, start=3):
        reason = BAD_ROWS[kind][1].format(registry=registry)
        assert f"posfleet_registry: skipped {registry}:{line}: {reason}" in proc.stderr, kind


def test_all_problems_of_one_row_are_given(tmp_path):
    registry = write_csv(tmp_path, ["KST 1,osprey_o1,ap_south,M1,T1,Name,S1,not-an-ip"])
    proc = run_inventory(write_config(tmp_path, "registry.csv"), "--list")

    assert proc.returncode != 0
    line = next(text for text in proc.stderr.splitlines() if text.startswith(f"{registry}:2: "))
    for reason in ("serial 'KST 1' is not allowed", "unknown model 'osprey_o1'", "unknown region 'ap_south'",
                   "ip 'not-an-ip' is not a valid"):
        assert reason in line


@pytest.mark.parametrize("on_bad_row", ["fail", "skip"])
def test_a_bad_header_fails_whatever_on_bad_row_says(tmp_path, on_bad_row):
    registry = write_csv(tmp_path, [GOOD_ROWS[0]], header="serial,model,region,merchant_id,terminal_id,store,ip")
    proc = run_inventory(write_config(tmp_path, "registry.csv", on_bad_row=on_bad_row), "--list")

    assert proc.returncode != 0
    assert f"{registry}:1: bad header row: required column(s) merchant_name missing" in proc.stderr


def test_a_missing_registry_names_the_file_and_the_option(tmp_path):
    config = write_config(tmp_path, "exports/registry.csv")
    proc = run_inventory(config, "--list")

    assert proc.returncode != 0
    assert f"registry file {tmp_path / 'exports' / 'registry.csv'} not found" in proc.stderr
    assert f"point option 'registry' in {config}" in proc.stderr


def test_an_empty_registry_fails(tmp_path):
    write_csv(tmp_path, [])
    proc = run_inventory(write_config(tmp_path, "registry.csv", on_bad_row="skip"), "--list")

    assert proc.returncode != 0
    assert "holds no terminals" in proc.stderr


def test_shipped_config_makes_a_bad_registry_fatal(tmp_path):
    """With the repository's ansible.cfg alone, a registry that fails must stop ansible-inventory.

    Otherwise Ansible only warns and carries on with an empty inventory, and a playbook "succeeds"
    against no terminals. Needs `any_unparsed_is_failed = True` in the [inventory] section.
    """
    write_csv(tmp_path, [GOOD_ROWS[0], BAD_ROWS["bad-ip"][0]])
    proc = run_inventory(write_config(tmp_path, "registry.csv"), "--list", fatal=False)

    assert proc.returncode != 0, "ansible.cfg must set [inventory] any_unparsed_is_failed = True"


def test_production_example_parses(tmp_path):
    data = inventory_list(PRODUCTION / "registry.posfleet.yml")
    hostvars = data["_meta"]["hostvars"]

    assert 6 <= len(hostvars) <= 8
    assert {host["pos_model"] for host in hostvars.values()} == set(MODELS)
    assert {host["pos_region"] for host in hostvars.values()} == set(REGIONS)
    for name in MODELS:
        assert hosts_of(data, f"model_{name}")
    assert any(group.startswith("merchant_") for group in data)
    assert any(group.startswith("store_") for group in data)
    for serial, host in hostvars.items():
        assert host["ansible_user"] == "root", serial
        assert "StrictHostKeyChecking=yes" in host["ansible_ssh_common_args"], serial
        region = host["pos_region"]
        # The production inventory's region_overrides change the shared (lab) region data field by
        # field: production terminals download from production distribution points, with the same
        # timezone and window, which the inventory does not repeat.
        settings = host["pos_region_settings"]
        assert settings["distribution_point"] != REGIONS[region]["distribution_point"], serial
        assert {k: v for k, v in settings.items() if k != "distribution_point"} == \
            {k: v for k, v in dict(REGIONS[region], name=region).items() if k != "distribution_point"}, serial


def test_production_directory_is_the_same_inventory():
    """`-i inventories/production` must read the sample export only through the plugin.

    Without an ansible.cfg rule that keeps registry exports out of directory inventories
    ([inventory] ignore_patterns), the ini plugin also reads registry.csv and invents a host per line.
    """
    from_file = inventory_list(PRODUCTION / "registry.posfleet.yml")
    from_directory = inventory_list(PRODUCTION)

    assert set(from_directory["_meta"]["hostvars"]) == set(from_file["_meta"]["hostvars"])


def test_lab_inventory_follows_POSLAB_REGISTRY(tmp_path):
    registry = write_csv(tmp_path, GOOD_ROWS[:3])
    data = inventory_list(LAB, env={"POSLAB_REGISTRY": str(registry)})
    hostvars = data["_meta"]["hostvars"]

    assert set(hostvars) == {"KST00001", "HRN00002", "PTR00003"}
    assert hosts_of(data, "merchant_M001") == set(hostvars)
    assert hosts_of(data, "store_M001_S01") == {"KST00001", "HRN00002"}
    host = hostvars["KST00001"]
    assert host["ansible_user"] == "root"
    assert host["ansible_ssh_private_key_file"] == "/var/lib/poslab/ssh/id_ed25519"
    assert "-o StrictHostKeyChecking=yes" in host["ansible_ssh_common_args"]
    assert "-o UserKnownHostsFile=/var/lib/poslab/ssh/known_hosts" in host["ansible_ssh_common_args"]


def test_region_overrides_change_only_the_fields_they_name(tmp_path):
    write_csv(tmp_path, GOOD_ROWS)
    data = inventory_list(write_config(tmp_path, "registry.csv",
                                       region_overrides={"us_east": {"maintenance_window": "00:30-03:00"}}))
    settings = data["_meta"]["hostvars"]["PTR00003"]["pos_region_settings"]
    assert settings == dict(REGIONS["us_east"], name="us_east", maintenance_window="00:30-03:00")
    assert data["_meta"]["hostvars"]["KST00001"]["pos_region_settings"] == dict(REGIONS["eu_west"], name="eu_west")


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"mars": {"timezone": "UTC"}}, "region 'mars' is not in"),
    ({"eu_west": {"distribution_piont": "http://192.0.2.9:8080"}}, "distribution_piont is not a region field"),
    ({"eu_west": "http://192.0.2.9:8080"}, "region_overrides.eu_west"),
], ids=["unknown-region", "misspelt-field", "not-a-mapping"])
def test_a_bad_region_override_fails_the_inventory_naming_it(tmp_path, overrides, expected):
    write_csv(tmp_path, GOOD_ROWS)
    proc = run_inventory(write_config(tmp_path, "registry.csv", region_overrides=overrides), "--list")
    assert proc.returncode != 0 and expected in proc.stderr, proc.stderr
