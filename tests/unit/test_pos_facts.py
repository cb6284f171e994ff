"""pos_facts on a terminal laid out under POS_ROOT with a running posd: what an update decides on."""


def facts_of(result):
    assert not result.get("failed"), result
    return result["ansible_facts"]["pos_terminal"]


def test_reads_versions_packs_and_posd_state(make_terminal, run_module):
    terminal = make_terminal(style="bundle", version="1.0.0")
    facts = facts_of(run_module("pos_facts", {"package_style": "bundle"}, root=terminal.root))

    assert facts["app_version"] == "1.0.0"
    assert facts["packs"] == {"params": "2026.01.0", "catalog": "2026.01.0", "merchant": "m1"}
    assert facts["posd"]["state"] == "idle" and facts["posd"]["healthy"] is True
    assert facts["storage_free_mb"] > 0
    assert facts["battery_pct"] is None


def test_current_only_when_app_and_every_pack_match(make_terminal, run_module):
    terminal = make_terminal(style="bundle", version="1.0.0")
    same = {"app_version": "1.0.0", "packs": {"params": "2026.01.0", "catalog": "2026.01.0"}}
    newer_pack = {"app_version": "1.0.0", "packs": {"params": "2026.02.0"}}

    assert facts_of(run_module("pos_facts", {"package_style": "bundle", "release": same},
                               root=terminal.root))["current"] is True
    assert facts_of(run_module("pos_facts", {"package_style": "bundle", "release": newer_pack},
                               root=terminal.root))["current"] is False


def test_battery_and_posd_down_are_reported_not_fatal(make_terminal, run_module):
    terminal = make_terminal(style="bundle", version="1.0.0", boot=False)
    sim = terminal.root / "var" / "lib" / "possim"
    sim.mkdir(parents=True)
    (sim / "battery").write_text("23\n")
    (sim / "charging").write_text("1\n")
    facts = facts_of(run_module("pos_facts", {"package_style": "bundle"}, root=terminal.root))

    assert (facts["battery_pct"], facts["charging"]) == (23, True)
    assert facts["posd"]["state"] == "down" and "posd" in facts["posd"]["health_detail"]


def test_unreachable_distribution_point_is_a_fact(make_terminal, run_module):
    terminal = make_terminal(style="bundle", version="1.0.0", boot=False)
    facts = facts_of(run_module("pos_facts", {"package_style": "bundle", "probe_url": "http://127.0.0.1:9/probe",
                                              "probe_timeout": 2}, root=terminal.root))
    assert facts["probe"]["reachable"] is False and "127.0.0.1:9" in facts["probe"]["error"]


def test_check_mode_and_never_changed(make_terminal, run_module):
    terminal = make_terminal(style="bundle", version="1.0.0", boot=False)
    result = run_module("pos_facts", {"package_style": "bundle"}, root=terminal.root, check=True)
    assert result["changed"] is False and facts_of(result)["app_version"] == "1.0.0"


def test_unprovisioned_terminal_fails_with_the_missing_file(tmp_path, run_module):
    result = run_module("pos_facts", {"package_style": "dpkg"}, root=tmp_path)
    assert result["failed"] and "/etc/pos/terminal.json" in result["msg"]
