"""Run a playbook the way an AWX job runs it: ansible-runner with a private data directory.

AWX gives ansible-runner the project (our repository), the inventory (the registry plugin's source,
"sourced from project"), the survey's answers in the private data directory's env/extravars and the
credentials' settings on the command line; the job's record is runner's artifacts (rc, status, stdout,
one JSON file per job event). The survey's defaults come from awx/config/job_templates.yml, the same
data AWX is configured from, so a survey default that breaks a playbook breaks this test.
"""

import json
from pathlib import Path

import ansible_runner
import yaml
from conftest import COMMAND_LOG, REPORT_DIR, ROOT

LAB_CREDENTIALS = ["-e", "@/var/lib/poslab/vault/secrets.yml", "--vault-password-file",
                   "/var/lib/poslab/vault/password"]


def survey_defaults(template):
    """{variable: default} of a job template's survey questions that have a default."""
    data = yaml.safe_load((ROOT / "awx" / "config" / "job_templates.yml").read_text())
    job = next(t for t in data["awx_job_templates"] if t["name"] == template)
    return {q["variable"]: q["default"] for q in job["survey"] if "default" in q}


def start(data_dir, template, answers, limit=None, ident="job"):
    """Start the job template's playbook under ansible-runner; (thread, runner)."""
    data = yaml.safe_load((ROOT / "awx" / "config" / "job_templates.yml").read_text())
    job = next(t for t in data["awx_job_templates"] if t["name"] == template)
    extravars = dict(survey_defaults(template), **answers)
    # Where AWX writes the survey's answers, and runner passes them on as `-e @env/extravars`.
    (data_dir / "env").mkdir(parents=True, exist_ok=True)
    (data_dir / "env" / "extravars").write_text(json.dumps(extravars, indent=1) + "\n")
    return ansible_runner.run_async(
        private_data_dir=str(data_dir), project_dir=str(ROOT), playbook=job["playbook"],
        inventory=str(ROOT / "inventories" / "lab"), limit=limit, ident=ident,
        cmdline=" ".join(LAB_CREDENTIALS), quiet=True,
        envvars={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "POSFLEET_REPORT_DIR": str(REPORT_DIR),
                 "POSFLEET_PROGRESS": "true"},
    )


def finish(thread, runner):
    """Wait for a started job; its artifacts as {rc, status, stdout, events, report_dir}."""
    thread.join(timeout=900)
    assert not thread.is_alive(), "the job did not finish in 15 minutes"
    artifacts = Path(runner.config.artifact_dir)
    stdout = (artifacts / "stdout").read_text()
    with open(COMMAND_LOG, "a", encoding="utf-8") as log:
        log.write(f"$ ansible-runner job {artifacts.name}\n{stdout}\n")
    events = [json.loads(path.read_text()) for path in sorted((artifacts / "job_events").glob("*.json"),
                                                                key=lambda p: int(p.name.split("-")[0]))]
    report = next((line.split("posfleet: report ", 1)[1].strip() for line in stdout.splitlines()
                   if "posfleet: report " in line), None)
    return {"rc": int((artifacts / "rc").read_text()), "status": (artifacts / "status").read_text().strip(),
            "stdout": stdout, "events": events,
            "report_dir": Path(report).parent if report else None}
