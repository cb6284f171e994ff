"""Turn awx/config/*.yml into the arguments of the awx.awx modules.

awx/configure.yml uses these filters (Ansible loads filter_plugins/ beside a playbook), and
tests/unit/test_awx.py imports the same functions, so what the tests check is what AWX is sent.
Standard library only.
"""

WORKFLOW_LIMITS = ("region", "canary")
EDGES = (("success", "success_nodes"), ("failure", "failure_nodes"), ("always", "always_nodes"))


class AwxConfigError(ValueError):
    """The configuration data is inconsistent; the message names the object."""


def survey_spec(questions, name, description=""):
    """An AWX survey_spec from a list of questions; {} (no survey) for an empty list."""
    if not questions:
        return {}
    spec = []
    for question in questions:
        entry = dict(question)
        entry.setdefault("question_description", "")
        entry.setdefault("required", False)
        if "choices" in entry and isinstance(entry["choices"], list):
            entry["choices"] = [str(choice) for choice in entry["choices"]]
        spec.append(entry)
    return {"name": name, "description": description, "spec": spec}


def region_limit(region):
    """The inventory group of a region, as the registry plugin names it."""
    return f"region_{region}"


def workflow_name(workflow, region):
    return f"{workflow['name']} {region}"


def workflow_nodes(workflow, region, canary_limit, organization):
    """The workflow_nodes argument of awx.awx.workflow_job_template for one region's workflow."""
    identifiers = {node["identifier"] for node in workflow["nodes"]}
    limits = {"region": region_limit(region), "canary": canary_limit}
    nodes = []
    for node in workflow["nodes"]:
        ident = node["identifier"]
        if node.get("approval"):
            approval = workflow["approval"]
            template = {"name": approval["name"], "type": "workflow_approval",
                        "description": approval.get("description", ""), "timeout": int(approval["timeout"])}
        else:
            template = {"name": node["job_template"], "type": "job_template",
                        "organization": {"name": organization}}
        entry = {"identifier": ident, "unified_job_template": template}
        if node.get("limit"):
            if node["limit"] not in WORKFLOW_LIMITS:
                raise AwxConfigError(f"workflow node {ident!r}: limit {node['limit']!r} is not one of "
                                     f"{', '.join(WORKFLOW_LIMITS)}")
            entry["limit"] = limits[node["limit"]]
        if node.get("extra_data"):
            entry["extra_data"] = dict(node["extra_data"])
        related = {}
        for key, field in EDGES:
            targets = node.get(key) or []
            unknown = sorted(set(targets) - identifiers)
            if unknown:
                raise AwxConfigError(f"workflow node {ident!r}: {key} leads to unknown node(s) {unknown}")
            related[field] = [{"identifier": target} for target in targets]
        entry["related"] = related
        nodes.append(entry)
    return nodes


class FilterModule:
    def filters(self):
        return {
            "awx_survey_spec": survey_spec,
            "awx_workflow_nodes": workflow_nodes,
            "awx_workflow_name": workflow_name,
            "awx_region_limit": region_limit,
        }
