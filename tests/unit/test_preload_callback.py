"""The posfleet_preload callback (plugins/callback/posfleet_preload.py) imports posfleet's action plugins
in the ansible-playbook process, so that the workers forked from it do not import them per task and
terminal. Each check runs in a fresh Python, as ansible-playbook would start."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys

from conftest import REPO

PREFIX = "ansible_collections.posfleet.fleet.plugins.action."
PROBE = r"""
import json, sys
from ansible.plugins.loader import init_plugin_loader
init_plugin_loader()
from ansible_collections.posfleet.fleet.plugins.callback import posfleet_preload
prefix = "ansible_collections.posfleet.fleet.plugins.action.pos_"
callback = posfleet_preload.CallbackModule()
before = sorted(m for m in sys.modules if m.startswith(prefix))
callback.v2_playbook_on_start(None)
after = sorted(m for m in sys.modules if m.startswith(prefix))
print(json.dumps({"names": posfleet_preload.action_names(), "loaded": callback.loaded, "before": before,
                  "after": after}))
"""


def probe(tmp_path, config=REPO / "ansible.cfg"):
    env = dict(os.environ, ANSIBLE_CONFIG=str(config), ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"))
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_action_plugin_is_imported_before_the_first_worker_would_be_forked(tmp_path):
    seen = probe(tmp_path)
    actions = sorted(p.stem for p in (REPO / "plugins" / "action").glob("*.py"))
    assert seen["names"] == actions
    assert seen["before"] == []
    assert seen["loaded"] == actions
    assert seen["after"] == [PREFIX + name for name in actions]


def test_an_action_plugin_that_does_not_import_is_left_for_its_task_to_report(tmp_path):
    # A collection posfleet.fleet whose backup action is broken: the other actions still load, no error.
    work = tmp_path / "collections" / "ansible_collections" / "posfleet" / "fleet"
    (work / "plugins" / "action").mkdir(parents=True)
    (work / "plugins" / "callback").mkdir()
    (work / "plugins" / "action" / "pos_fine.py").write_text(
        "from ansible.plugins.action import ActionBase\n\n\nclass ActionModule(ActionBase):\n    pass\n")
    (work / "plugins" / "action" / "pos_backup.py").write_text("raise ImportError('no cryptography here')\n")
    (work / "plugins" / "callback" / "posfleet_preload.py").write_text(
        (REPO / "plugins" / "callback" / "posfleet_preload.py").read_text())
    config = configparser.ConfigParser(interpolation=None)
    config.read(REPO / "ansible.cfg")
    config["defaults"]["collections_path"] = str(tmp_path / "collections")
    with open(tmp_path / "ansible.cfg", "w", encoding="utf-8") as handle:
        config.write(handle)
    seen = probe(tmp_path, tmp_path / "ansible.cfg")
    assert seen["names"] == ["pos_backup", "pos_fine"]
    assert seen["loaded"] == ["pos_fine"]


def test_ansible_cfg_enables_it():
    config = configparser.ConfigParser(interpolation=None)
    config.read(REPO / "ansible.cfg")
    enabled = [name.strip() for name in config["defaults"]["callbacks_enabled"].split(",")]
    assert "posfleet.fleet.posfleet_preload" in enabled
