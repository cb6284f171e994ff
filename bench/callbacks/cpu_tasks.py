"""cpu_tasks: control-node CPU seconds per task of a run, written as JSON (a profiling aid, not a bench step).

Enable it next to the usual callbacks:

    ANSIBLE_CALLBACK_PLUGINS=bench/callbacks CPU_TASKS_OUT=/tmp/cpu-tasks.json \
    ANSIBLE_CALLBACKS_ENABLED=posfleet.fleet.posfleet_report,posfleet.fleet.posfleet_preload,cpu_tasks \
    ansible-playbook playbooks/update.yml ...

Between one task's start and the next one's, it adds up the ansible-playbook process's own CPU and
that of its reaped children (the workers, the ssh clients, local module processes). Under the linear
strategy a task ends on every host of the batch before the next starts, so the difference is that
task's cost over all hosts. The SSH ControlPersist masters are not reaped until the end and are not
in any task's figure (bench/tree_cpu.py counts them in a run's total).
"""
from __future__ import annotations

import json
import os
import resource

from ansible.plugins.callback import CallbackBase


def _cpu():
    """(own CPU, reaped children's CPU) of this process, in seconds."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "cpu_tasks"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.current = None
        self.last = _cpu()
        self.rows = {}   # task label -> [own CPU s, children's CPU s]

    def _flush(self):
        now = _cpu()
        if self.current is not None:
            row = self.rows.setdefault(self.current, [0.0, 0.0])
            row[0] += now[0] - self.last[0]
            row[1] += now[1] - self.last[1]
        self.last = now

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._flush()
        role = f"{task._role.get_name()}: " if task._role else ""
        self.current = f"{role}{task.get_name()} [{task.action}]"

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def v2_playbook_on_stats(self, stats):
        self._flush()
        out = os.environ.get("CPU_TASKS_OUT", "cpu-tasks.json")
        rows = sorted(self.rows.items(), key=lambda item: -(item[1][0] + item[1][1]))
        with open(out, "w", encoding="utf-8") as handle:
            json.dump([[label, round(own, 3), round(children, 3)] for label, (own, children) in rows], handle, indent=0)
