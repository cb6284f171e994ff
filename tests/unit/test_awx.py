"""AWX as code, without an AWX: the execution environment, the configuration data in awx/config/, the
playbook that applies it, and the schedules against the regions' maintenance windows.

What these tests cannot show (there is no AWX, container engine or Galaxy here): that AWX accepts
every object, that the image builds, that a job runs in it. docs/awx.md lists what was and was not
verified. Nothing here touches the lab.
"""

from __future__ import annotations

import datetime
import importlib.util
import itertools
import json
import os
import re
import subprocess
import zipfile
from pathlib import Path

import jinja2
import pytest
import yaml
from conftest import ansible_tool
from dateutil import rrule as dateutil_rrule

from posfleet import rollout

REPO = Path(__file__).resolve().parents[2]
AWX = REPO / "awx"
CONFIG = AWX / "config"



def _load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


awx_filters = _load_module("posfleet_awx_filters", AWX / "filter_plugins" / "posfleet_awx.py")
installer = _load_module("posfleet_awx_installer", AWX / "install_awx_collection.py")


class _Loader(yaml.SafeLoader):
    """Reads Ansible's !unsafe tag (AWX injector templates that Ansible must not render) as text."""


_Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def _yaml(path):
    return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_Loader)


def _config():
    data = {}
    for path in sorted(CONFIG.glob("*.yml")):
        data.update(_yaml(path))
    return data


CFG = _config()
REGIONS = _yaml(REPO / "inventories" / "shared" / "regions.yml")["regions"]
MODELS = _yaml(REPO / "inventories" / "shared" / "models.yml")["models"]
ORG = CFG["awx_organization"]["name"]
TEMPLATES = {jt["name"]: jt for jt in CFG["awx_job_templates"]}


def _render(value, context=CFG):
    """Render the {{ }} references between the configuration files, as Ansible does when it applies them."""
    if isinstance(value, str) and "{{" in value:
        return jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(value).render(**context)
    return value


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "POSLAB_"))}
    env.update(ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1", NO_COLOR="1")
    return env


def _requirements_pins():
    pins = {}
    for raw in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def _pin(requirement):
    name, version = requirement.split("==", 1)
    return name.strip().lower(), version.strip()


# --- the execution environment -------------------------------------------------------------------

EE = _yaml(REPO / "execution-environment.yml")


def test_ee_pins_are_the_control_nodes():
    """A job in AWX runs the versions `make test` tested: every pin equals requirements.txt's."""
    pins = _requirements_pins()
    deps = EE["dependencies"]
    assert EE["version"] == 3
    for requirement in (deps["ansible_core"]["package_pip"], deps["ansible_runner"]["package_pip"],
                        *deps["python"]):
        name, version = _pin(requirement)
        assert pins.get(name) == version, f"the EE pins {requirement}, requirements.txt {pins.get(name)}"
    assert (REPO / deps["galaxy"]) == REPO / "collections" / "requirements.yml"


def test_ee_python_covers_what_the_control_node_code_imports():
    """The third-party modules imported by control-node code are in the image."""
    code = [*REPO.glob("plugins/action/*.py"), *REPO.glob("plugins/filter/*.py"),
            *REPO.glob("plugins/inventory/*.py"), *REPO.glob("plugins/callback/*.py"),
            *REPO.glob("posfleet/*.py"), REPO / "plugins" / "modules" / "pos_backup_store.py",
            REPO / "plugins" / "module_utils" / "pos_backup_crypto.py"]
    imported = set()
    for path in code:
        imported |= set(re.findall(r"^\s*(?:from|import)\s+(yaml|jinja2|cryptography|jsonschema)\b",
                                   path.read_text(encoding="utf-8"), re.M))
    packages = {"yaml": "pyyaml", "jinja2": "jinja2", "cryptography": "cryptography", "jsonschema": "jsonschema"}
    in_image = {_pin(req)[0] for req in EE["dependencies"]["python"]}
    assert {packages[name] for name in imported} <= in_image


def test_ansible_builder_creates_the_build_context(tmp_path):
    """`ansible-builder create` accepts the definition and writes a context with our pins in it."""
    builder = ansible_tool("ansible-builder")
    context = tmp_path / "context"
    proc = subprocess.run(
        [builder, "create", "-f", str(REPO / "execution-environment.yml"), "-c", str(context),
         "--output-filename", "Containerfile"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    containerfile = (context / "Containerfile").read_text(encoding="utf-8")
    deps = EE["dependencies"]
    assert f'ARG EE_BASE_IMAGE="{EE["images"]["base_image"]["name"]}"' in containerfile
    assert (f'ARG ANSIBLE_INSTALL_REFS="{deps["ansible_core"]["package_pip"]} '
            f'{deps["ansible_runner"]["package_pip"]}"') in containerfile
    assert "ansible-galaxy collection install" in containerfile
    build = context / "_build"
    assert (build / "requirements.txt").read_text(encoding="utf-8").split() == deps["python"]
    assert _yaml(build / "requirements.yml") == _yaml(REPO / "collections" / "requirements.yml")
    assert (build / "bindep.txt").read_text(encoding="utf-8").splitlines() == deps["system"]
    assert (build / "scripts" / "assemble").exists()
    # The control-node package the collection's plugins import is in the image, importable.
    assert (build / "posfleet" / "statuses.py").exists() and (build / "posfleet" / "report.schema.json").exists()
    assert "COPY _build/posfleet /opt/posfleet/lib/posfleet" in containerfile
    assert "ENV PYTHONPATH=/opt/posfleet/lib" in containerfile


# --- argument specs and surveys -------------------------------------------------------------------

def _specs():
    """{variable: [(role, entry point, option spec)]} over every role's meta/argument_specs.yml."""
    found = {}
    for path in sorted(REPO.glob("roles/*/meta/argument_specs.yml")):
        role = path.parents[1].name
        for entry, spec in (_yaml(path)["argument_specs"] or {}).items():
            for name, option in (spec.get("options") or {}).items():
                found.setdefault(name, []).append((role, entry, option))
    return found


SPECS = _specs()
PLAYBOOK_SPECS = "posfleet_playbooks"


def _playbook_text(playbook, seen=None):
    """A playbook's text with the playbooks it imports and the task files of the roles it runs, to find
    every role it runs (pos_update's tasks import the step roles)."""
    seen = seen if seen is not None else set()
    path = (REPO / playbook).resolve()
    if path in seen or not path.exists():
        return ""
    seen.add(path)
    text = path.read_text(encoding="utf-8")
    for imported in re.findall(r"import_playbook:\s*(\S+)", text):
        text += _playbook_text(str(path.parent.relative_to(REPO) / imported), seen)
    for role in re.findall(r"\bname:\s*posfleet\.fleet\.(pos_[a-z_]+)", text):
        text += _playbook_text(f"roles/{role}/tasks/main.yml", seen)
    return text


def _allowed_specs(playbook):
    """The specs a survey of `playbook` may use: its own entry point and the roles it runs."""
    text = _playbook_text(playbook)
    entry = Path(playbook).stem
    roles = set(re.findall(r"\bname:\s*(?:posfleet\.fleet\.)?(pos_[a-z_]+)", text))
    return lambda role, ep: (role == PLAYBOOK_SPECS and ep == entry) or (role in roles and ep == "main")


_BOOL_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0"}


def _compatible(question, option):
    """Whether an AWX answer of question's type can be a value of the spec option's type."""
    qtype, stype = question["type"], option.get("type", "str")
    choices = [str(c) for c in question.get("choices", [])]
    if qtype in ("text", "textarea", "password"):
        ok = stype in ("str", "raw", "path")
    elif qtype == "integer":
        ok = stype in ("int", "float", "raw")
    elif qtype == "float":
        ok = stype in ("float", "raw")
    elif qtype == "multiplechoice":
        if stype == "bool":
            ok = bool(choices) and all(c.lower() in _BOOL_WORDS for c in choices)
        elif stype == "int":
            ok = bool(choices) and all(c.lstrip("-").isdigit() for c in choices)
        else:
            ok = stype in ("str", "raw")
            if ok and option.get("choices"):
                ok = set(choices) <= {str(c) for c in option["choices"]}
    elif qtype == "multiselect":
        ok = stype == "list"
    else:
        ok = False
    if ok and question.get("password") is False and option.get("no_log"):
        ok = False
    return ok


def _surveys():
    """(what, playbook, question) for every survey question of a job template or the workflow."""
    for jt in CFG["awx_job_templates"]:
        for question in jt["survey"]:
            yield jt["name"], jt["playbook"], question
    # The workflow's variables reach every node; each must be documented for the playbook that uses it.
    uses = {"update_release": "playbooks/update.yml", "rollback_release": "playbooks/rollback.yml"}
    for question in CFG["awx_rollout_workflow"]["survey"]:
        yield "workflow", uses.get(question["variable"], "?"), question


@pytest.mark.parametrize(("what", "playbook", "question"), list(_surveys()),
                         ids=lambda value: value["variable"] if isinstance(value, dict) else str(value))
def test_every_survey_variable_is_documented_with_a_compatible_type(what, playbook, question):
    name = question["variable"]
    allowed = _allowed_specs(playbook)
    candidates = [(role, ep, opt) for role, ep, opt in SPECS.get(name, []) if allowed(role, ep)]
    assert candidates, (f"{what}: survey variable {name} is in no argument spec that {playbook} uses "
                        f"(its entry point in roles/{PLAYBOOK_SPECS}, or a role it runs)")
    for role, ep, option in candidates:
        assert _compatible(question, option), (
            f"{what}: survey question {name} ({question['type']}) does not fit roles/{role} {ep}: "
            f"{option.get('type', 'str')}")


@pytest.mark.parametrize("question", [q for _, _, q in _surveys()], ids=lambda q: q["variable"])
def test_every_survey_question_is_required_or_has_a_default(question):
    """AWX 24.6.1 sends an optional question left blank as an empty or null value: a playbook's
    `is defined` or `default()` then sees it set. So a question is required, or has a default."""
    default = _render(question.get("default", ""))
    assert question.get("required") or default not in ("", None), question["variable"]
    if default not in ("", None) and question["type"] == "multiplechoice":
        assert str(default) in [str(c) for c in question["choices"]]
    if default not in ("", None) and question["type"] in ("integer", "float"):
        assert question.get("min", default) <= default <= question.get("max", default)


@pytest.mark.parametrize("jt", CFG["awx_job_templates"], ids=lambda jt: jt["name"])
def test_job_templates_ask_for_what_their_playbook_requires(jt):
    """A variable the playbook's spec marks required is asked by the survey, required."""
    entry = Path(jt["playbook"]).stem
    asked = {q["variable"]: q for q in jt["survey"]}
    for name, owners in SPECS.items():
        for role, ep, option in owners:
            if role == PLAYBOOK_SPECS and ep == entry and option.get("required"):
                assert name in asked and asked[name].get("required"), f"{jt['name']} must ask for {name}"


def test_the_spec_compatibility_check_refuses_a_wrong_type():
    assert not _compatible({"type": "text"}, {"type": "int"})
    assert not _compatible({"type": "multiplechoice", "choices": ["a", "b"]}, {"type": "bool"})
    assert not _compatible({"type": "multiplechoice", "choices": ["region", "zone"]},
                           {"type": "str", "choices": ["region", "model"]})
    assert _compatible({"type": "multiplechoice", "choices": ["true", "false"]}, {"type": "bool"})
    assert _compatible({"type": "integer"}, {"type": "float"})


def _rollout_settings_table():
    """{variable: default column} of the settings table in docs/rollout.md."""
    text = (REPO / "docs" / "rollout.md").read_text(encoding="utf-8")
    section = text.split("## Settings", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `(update_[a-z_]+)` \| ([^|]*) \|", section, re.M))


def test_playbook_specs_document_the_rollout_settings_of_docs_rollout():
    """Every setting docs/rollout.md lists is documented for update.yml and plan.yml, with its default."""
    table = _rollout_settings_table()
    assert table, "docs/rollout.md has no settings table this test can read"
    for entry in ("update", "plan"):
        documented = {name: option for name, owners in SPECS.items()
                      for role, ep, option in owners if role == PLAYBOOK_SPECS and ep == entry}
        assert set(table) <= set(documented), f"{entry}: {sorted(set(table) - set(documented))} undocumented"
        for name, column in table.items():
            literal = re.match(r"`([^`]*)`", column.strip())
            if literal:
                assert documented[name].get("default") == yaml.safe_load(literal.group(1)), name
            elif column.strip().startswith("unset"):
                assert "default" not in documented[name], name


# --- job templates and the workflow ---------------------------------------------------------------

@pytest.mark.parametrize("jt", CFG["awx_job_templates"], ids=lambda jt: jt["name"])
def test_every_job_template_names_a_playbook_that_exists(jt):
    path = REPO / jt["playbook"]
    assert path.is_file(), f"{jt['name']}: {jt['playbook']} does not exist"
    assert isinstance(_yaml(path), list), f"{jt['playbook']} is not a playbook"


def test_job_templates_use_only_defined_credentials_and_inventory():
    credentials = {c["name"] for c in CFG["awx_credentials"]}
    types = {t["name"] for t in CFG["awx_credential_types"]} | {"Machine", "Vault"}
    assert {c["credential_type"] for c in CFG["awx_credentials"]} <= types
    for jt in CFG["awx_job_templates"]:
        assert set(jt["credentials"]) <= credentials, jt["name"]
    defaults = CFG["awx_job_template_defaults"]
    assert defaults["inventory"] == CFG["awx_inventory"]["name"]
    assert defaults["project"] == CFG["awx_project"]["name"]
    assert defaults["execution_environment"] == CFG["awx_execution_environment"]["name"]
    # Jobs that write to terminals or to the backup store get the backup key.
    for name in ("posfleet update", "posfleet backup", "posfleet rollback to release", "posfleet restore from backup"):
        assert "posfleet backup key" in TEMPLATES[name]["credentials"]


def test_the_inventory_source_is_the_registry_plugin_in_the_project():
    (source,) = CFG["awx_inventory"]["sources"]
    assert source["source"] == "scm" and source["source_project"] == CFG["awx_project"]["name"]
    config = _yaml(REPO / source["source_path"])
    assert config["plugin"] == "posfleet.fleet.posfleet_registry"


def test_no_secret_is_written_in_the_configuration():
    secret_inputs = {"ssh_key_data", "vault_password", "backup_key", "password", "ssh_key_unlock"}
    for credential in CFG["awx_credentials"]:
        for key, value in credential["inputs"].items():
            if key in secret_inputs or key == "known_hosts":
                assert re.fullmatch(r"\{\{ awx_secrets\.[a-z_]+ \}\}", value), f"{credential['name']}: {key}"
    for template in CFG["awx_notification_templates"]:
        assert re.fullmatch(r"\{\{ awx_secrets\.[a-z_]+ \}\}", template["notification_configuration"]["url"])
    example = _yaml(AWX / "secrets.example.yml")["awx_secrets"]
    assert all("CHANGE-ME" in value for value in example.values())
    used = set(re.findall(r"awx_secrets\.([a-z_]+)", "".join(p.read_text() for p in CONFIG.glob("*.yml"))))
    assert used <= set(example), f"secrets.example.yml lacks {sorted(used - set(example))}"


def _workflow(region):
    settings = CFG["awx_rollout_regions"][region]
    return awx_filters.workflow_nodes(CFG["awx_rollout_workflow"], region, settings["canary_limit"], ORG)


@pytest.mark.parametrize("region", sorted(REGIONS))
def test_workflow_plan_canary_approval_waves_with_failure_paths(region):
    nodes = {n["identifier"]: n for n in _workflow(region)}

    def following(ident, edge):
        return [t["identifier"] for t in nodes[ident]["related"][f"{edge}_nodes"]]

    def template(ident):
        return nodes[ident]["unified_job_template"]

    assert template("plan")["name"] == "posfleet plan"
    assert following("plan", "success") == ["canary"]
    assert template("canary")["name"] == "posfleet update"
    assert nodes["canary"]["extra_data"]["update_max_failed_pct"] == 0
    assert following("canary", "success") == ["approval"]
    approval = template("approval")
    assert approval["type"] == "workflow_approval" and approval["timeout"] > 0
    assert following("approval", "success") == ["waves"]
    assert template("waves")["name"] == "posfleet update"
    assert nodes["waves"]["limit"] == f"region_{region}"
    canary_limit = CFG["awx_rollout_regions"][region]["canary_limit"]
    assert nodes["canary"]["limit"] == nodes["rollback_canary"]["limit"] == canary_limit
    # A failure anywhere ends in a halted node (through the rollback for the canary), which fails the
    # workflow so that the on-call notification fires.
    halted = {i for i, n in nodes.items() if n["unified_job_template"].get("name") == "posfleet rollout halted"}
    for ident in ("plan", "canary", "approval", "waves"):
        failure = following(ident, "failure")
        assert failure, f"{ident} has no failure path"
        for target in failure:
            then = following(target, "always")
            assert target in halted or (then and set(then) <= halted), f"{ident} fails into {target}"
    assert template("rollback_canary")["name"] == "posfleet rollback to release"
    assert TEMPLATES["posfleet rollout halted"]["playbook"] == "awx/notify.yml"
    # Every node can be reached from plan, the only root.
    reached, todo = set(), ["plan"]
    while todo:
        ident = todo.pop()
        if ident not in reached:
            reached.add(ident)
            todo += [t for edge in ("success", "failure", "always") for t in following(ident, edge)]
    assert reached == set(nodes)


def test_workflow_nodes_send_only_what_their_templates_accept():
    for node in CFG["awx_rollout_workflow"]["nodes"]:
        if node.get("approval"):
            continue
        jt = {**CFG["awx_job_template_defaults"], **TEMPLATES[node["job_template"]]}
        if node.get("limit"):
            assert jt["ask_limit_on_launch"], f"{node['identifier']}: {jt['name']} does not prompt for a limit"
        surveyed = {q["variable"] for q in jt["survey"]}
        for name in node.get("extra_data", {}):
            assert jt["ask_variables_on_launch"] or name in surveyed, f"{node['identifier']}: {name}"
    stages = {n["extra_data"]["posfleet_halted_at"] for n in CFG["awx_rollout_workflow"]["nodes"]
              if n.get("job_template") == "posfleet rollout halted"}
    notify = (AWX / "notify.yml").read_text(encoding="utf-8")
    for stage in stages:
        assert re.search(rf"^\s+{stage}:", notify, re.M), f"awx/notify.yml has no advice for {stage}"


def test_workflow_survey_defaults_come_from_the_release_train():
    survey = {q["variable"]: q for q in CFG["awx_rollout_workflow"]["survey"]}
    assert _render(survey["update_release"]["default"]) == CFG["awx_release_train"]["update_release"]
    assert _render(survey["rollback_release"]["default"]) == CFG["awx_release_train"]["rollback_release"]


def test_workflow_filter_refuses_an_unknown_node_or_limit():
    workflow = {"name": "w", "approval": {"name": "a", "timeout": 60},
                "nodes": [{"identifier": "a", "job_template": "t", "success": ["missing"]}]}
    with pytest.raises(awx_filters.AwxConfigError, match="unknown node"):
        awx_filters.workflow_nodes(workflow, "eu_west", "x", "org")
    workflow["nodes"] = [{"identifier": "a", "job_template": "t", "limit": "everything"}]
    with pytest.raises(awx_filters.AwxConfigError, match="limit"):
        awx_filters.workflow_nodes(workflow, "eu_west", "x", "org")
    assert awx_filters.survey_spec([], "none") == {}


def _hosts(pattern):
    proc = subprocess.run(
        [ansible_tool("ansible"), pattern, "-i", str(REPO / "inventories" / "production"), "--list-hosts"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [line.strip() for line in proc.stdout.splitlines()[1:] if line.strip()]


def test_canary_pilot_stores_cover_every_model_of_their_region_in_the_sample_registry():
    """The pilot stores of the sample registry are in their region and hold each model it has.
    (The production registry is the operator's: the same check is in docs/awx.md.)"""
    inventory = subprocess.run(
        [ansible_tool("ansible-inventory"), "-i", str(REPO / "inventories" / "production"), "--list"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60, check=True,
    )
    hostvars = json.loads(inventory.stdout)["_meta"]["hostvars"]

    def plain(value):
        return value["__ansible_unsafe"] if isinstance(value, dict) else value

    for region, settings in CFG["awx_rollout_regions"].items():
        canary = _hosts(settings["canary_limit"])
        in_region = set(_hosts(f"region_{region}"))
        assert canary and set(canary) <= in_region, region
        models = {plain(hostvars[h]["pos_model"]) for h in in_region}
        assert {plain(hostvars[h]["pos_model"]) for h in canary} == models, region


# --- schedules ------------------------------------------------------------------------------------

OCCURRENCES = 420  # four nights a week: two years, every change of daylight saving time included


def _awx_rrule_problems(rrule):
    """What AWX's API refuses in a schedule's rule, as AWX 24 checks it."""
    problems = []
    upper = rrule.upper()
    if not re.match(r"DTSTART(;TZID=[^:]+)?:\d{8}T\d{6}Z? RRULE:", rrule):
        problems.append("starts with DTSTART[;TZID=zone]:YYYYMMDDTHHMMSS, then one space and RRULE:")
    if upper.count("DTSTART") != 1 or upper.count("RRULE:") != 1:
        problems.append("one DTSTART and one RRULE")
    if "INTERVAL=" not in upper:
        problems.append("INTERVAL is required")
    if "COUNT=" in upper and "UNTIL=" in upper:
        problems.append("COUNT and UNTIL together")
    if any(word in upper for word in ("SECONDLY", "EXDATE", "RDATE")):
        problems.append("SECONDLY, EXDATE and RDATE are not supported")
    if re.search(r"BYDAY=[^;]*[+-]?\d[A-Z]{2}", upper):
        problems.append("BYDAY with a numeric prefix")
    return problems


def _occurrences(rrule, count):
    rule = dateutil_rrule.rrulestr(rrule.replace(" RRULE:", "\nRRULE:"))
    return list(itertools.islice(iter(rule), count))


def _outside_window(rrule, region, min_minutes, count=OCCURRENCES, settings=None):
    """The occurrences that are not inside the region's window with min_minutes of it left."""
    settings = settings or REGIONS[region]
    bad = []
    for when in _occurrences(rrule, count):
        assert when.tzinfo is not None, f"{rrule}: occurrences without a timezone"
        utc = when.astimezone(datetime.timezone.utc)
        state = rollout.window_state(settings["maintenance_window"], settings["timezone"], utc)
        if not state["open"]:
            bad.append(f"{when.isoformat()}: window closed")
        elif state["closes_at_utc"] is not None:
            left = datetime.datetime.fromisoformat(state["closes_at_utc"]) - utc
            if left < datetime.timedelta(minutes=min_minutes):
                bad.append(f"{when.isoformat()}: only {left} of the window left")
    return bad


def test_one_schedule_per_region_on_its_own_workflow():
    regions = [s["region"] for s in CFG["awx_schedules"]]
    assert sorted(regions) == sorted(REGIONS) and len(set(regions)) == len(regions)
    assert set(CFG["awx_rollout_regions"]) == set(REGIONS)


@pytest.mark.parametrize("schedule", CFG["awx_schedules"], ids=lambda s: s["region"])
def test_schedule_rrule_is_one_awx_accepts_in_the_regions_timezone(schedule):
    rrule = schedule["rrule"]
    assert _awx_rrule_problems(rrule) == []
    assert rrule.startswith(f"DTSTART;TZID={REGIONS[schedule['region']]['timezone']}:")
    assert len(_occurrences(rrule, 5)) == 5


def _production_settings(region):
    """The region as the production inventory overrides it (its region_overrides), if it does."""
    overrides = _yaml(REPO / "inventories" / "production" / "registry.posfleet.yml").get("region_overrides") or {}
    return dict(REGIONS[region], **overrides[region]) if region in overrides else None


@pytest.mark.parametrize("schedule", CFG["awx_schedules"], ids=lambda s: s["region"])
def test_schedule_occurrences_fall_inside_the_regions_window(schedule):
    """Inside the window of the shared region data and of the production inventory's override, which
    is what update.yml reads in production."""
    region = schedule["region"]
    for settings in (REGIONS[region], _production_settings(region)):
        if settings is None:
            continue
        rollout.parse_window(settings["maintenance_window"])
        assert schedule["rrule"].startswith(f"DTSTART;TZID={settings['timezone']}:")
        bad = _outside_window(schedule["rrule"], region, CFG["awx_rollout_min_window_minutes"], settings=settings)
        assert bad == [], f"{schedule['name']}: {bad[:5]}"


def test_the_window_check_sees_a_schedule_outside_the_window():
    # 05:10 in London is after eu_west's 01:00-05:00; 04:00 leaves one hour, less than 150 minutes.
    late = "DTSTART;TZID=Europe/London:20261130T051000 RRULE:FREQ=DAILY;INTERVAL=1"
    assert _outside_window(late, "eu_west", 0, count=3)
    tight = "DTSTART;TZID=Europe/London:20261130T040000 RRULE:FREQ=DAILY;INTERVAL=1"
    assert _outside_window(tight, "eu_west", 150, count=3)
    assert not _outside_window(tight, "eu_west", 30, count=3)
    # A daily 01:30 in London on the night of the spring change (29 March 2027 is a Monday; the
    # change is Sunday 28 March): 01:30 on the 28th does not exist, dateutil and the window agree.
    spring = "DTSTART;TZID=Europe/London:20270326T013000 RRULE:FREQ=DAILY;INTERVAL=1"
    assert _outside_window(spring, "eu_west", 0, count=5) == []
    assert _awx_rrule_problems("DTSTART;TZID=Europe/London:20261130T051000 RRULE:FREQ=DAILY")


# --- the configuration playbook -------------------------------------------------------------------

def _awx_collection():
    proc = subprocess.run(
        [ansible_tool("ansible-galaxy"), "collection", "list", "awx.awx", "--format", "json"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60, check=False,
    )
    found = {}
    if proc.returncode == 0 and proc.stdout.strip():
        for collections in json.loads(proc.stdout).values():
            found.update(collections)
    assert "awx.awx" in found, "awx.awx is not installed: run .venv/bin/python awx/install_awx_collection.py"
    return found["awx.awx"]["version"]


def test_configure_playbook_uses_only_awx_and_builtin_modules():
    """Checked without the collection: every task of awx/configure.yml is awx.awx or ansible.builtin."""
    (play,) = _yaml(AWX / "configure.yml")
    for task in play["tasks"]:
        modules = [key for key in task if "." in key]
        assert len(modules) == 1 and modules[0].startswith(("awx.awx.", "ansible.builtin.")), task["name"]


@pytest.mark.parametrize("playbook", ["awx/configure.yml", "awx/notify.yml"])
def test_awx_playbooks_pass_syntax_check(playbook):
    if playbook == "awx/configure.yml":
        assert _awx_collection() == installer.VERSION
    proc = subprocess.run(
        [ansible_tool("ansible-playbook"), "--syntax-check", "-i", str(REPO / "inventories" / "production"), playbook],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_awx_folder_passes_ansible_lint():
    _awx_collection()
    env = dict(_env(), ANSIBLE_INVENTORY=str(REPO / "inventories" / "production"))
    proc = subprocess.run(
        [ansible_tool("ansible-lint"), "--offline", "--profile", "production", "awx/", "execution-environment.yml",
         f"roles/{PLAYBOOK_SPECS}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- the collection installer ---------------------------------------------------------------------

def _fake_wheel(path, version="24.6.1", extra=None):
    manifest = {"collection_info": {"namespace": "awx", "name": "awx", "version": version}}
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("ansible_collections/awx/awx/MANIFEST.json", json.dumps(manifest))
        wheel.writestr("ansible_collections/awx/awx/plugins/modules/project.py", "# module\n")
        wheel.writestr("ansible_collections/community/general/MANIFEST.json", "{}")
        for name, data in (extra or {}).items():
            wheel.writestr(name, data)
    return path


def test_installer_takes_only_the_awx_collection_and_replaces_an_old_one(tmp_path):
    target = tmp_path / "site" / "ansible_collections" / "awx" / "awx"
    target.mkdir(parents=True)
    (target / "stale.py").write_text("old")
    installer.extract(_fake_wheel(tmp_path / "a.whl"), target)
    assert installer.installed_version(target) == installer.VERSION
    assert (target / "plugins" / "modules" / "project.py").exists()
    assert not (target / "stale.py").exists()
    assert not (tmp_path / "site" / "ansible_collections" / "community").exists()
    assert [p.name for p in target.parent.iterdir()] == ["awx"]


def test_installer_refuses_another_version_or_a_path_outside(tmp_path):
    target = tmp_path / "site" / "ansible_collections" / "awx" / "awx"
    with pytest.raises(SystemExit, match=r"expected 24\.6\.1"):
        installer.extract(_fake_wheel(tmp_path / "old.whl", version="23.0.0"), target)
    assert not target.exists()
    evil = _fake_wheel(tmp_path / "evil.whl", extra={"ansible_collections/awx/awx/../../../evil": "x"})
    with pytest.raises(SystemExit, match="refusing"):
        installer.extract(evil, target)
    assert not (tmp_path / "evil").exists()


def test_installer_checks_a_given_wheel_against_the_pinned_hash(tmp_path):
    with pytest.raises(SystemExit, match="is not the one pinned"):
        installer.check_hash(_fake_wheel(tmp_path / "ansible-13.8.0-py3-none-any.whl"))
