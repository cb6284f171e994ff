"""worker_cpu: the control-node CPU of each worker process of a run, as JSON (a profiling aid, not a bench step).

    ANSIBLE_CALLBACK_PLUGINS=bench/callbacks WORKER_CPU_DIR=/tmp/worker-cpu \
    ANSIBLE_CALLBACKS_ENABLED=posfleet.fleet.posfleet_report,posfleet.fleet.posfleet_preload,worker_cpu \
    ansible-playbook playbooks/update.yml ...
    .venv/bin/python bench/callbacks/worker_cpu.py /tmp/worker-cpu      # the table

Ansible forks one worker process per task and host. This callback wraps the worker's run so that each
worker writes, when it ends, one JSON file: the task, the host, the worker's own CPU seconds, those of
the children it waited for (the `ssh` clients: a new SSH connection's key exchange shows up here), its
minor page faults (copy-on-write after the fork) and the CPU each task argument's templating took.
`main.json` holds the ansible-playbook process's own CPU and its reaped children's. With
WORKER_PROFILE=1 every worker (and the main process, from this callback's start) also writes a
cProfile of CPU time (`<pid>.prof`, `main.prof`) for pstats.

It patches ansible-core's WorkerProcess._run and ActionBase.finalize_task_arg at import, which only a
profiling aid may do; the SSH ControlPersist masters are in no figure here (bench/tree_cpu.py counts
them in a run's total).
"""
from __future__ import annotations

import collections
import cProfile
import glob
import json
import os
import resource
import sys
import time

from ansible.executor.process import worker as _worker
from ansible.plugins.action import ActionBase
from ansible.plugins.callback import CallbackBase

OUT = os.environ.get("WORKER_CPU_DIR", "worker-cpu")
PROFILE = os.environ.get("WORKER_PROFILE") == "1"
_STATE = {"main_profile": None}   # the main process's profile, which every fork inherits enabled
_ARG_CPU = {}
_worker_run = _worker.WorkerProcess._run
_finalize_task_arg = ActionBase.finalize_task_arg.__func__


def _cpu(who):
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _run(self):
    if _STATE["main_profile"] is not None:
        _STATE["main_profile"].disable()
    profile = cProfile.Profile(time.process_time) if PROFILE else None
    if profile:
        profile.enable()
    try:
        return _worker_run(self)
    finally:
        if profile:
            profile.disable()
            profile.dump_stats(os.path.join(OUT, f"{os.getpid()}.prof"))
        row = {"task": self._task.get_name(), "action": self._task.action, "host": self._host.name,
               "self": _cpu(resource.RUSAGE_SELF), "children": _cpu(resource.RUSAGE_CHILDREN),
               "minflt": resource.getrusage(resource.RUSAGE_SELF).ru_minflt, "args": _ARG_CPU}
        with open(os.path.join(OUT, f"{os.getpid()}.json"), "w", encoding="utf-8") as handle:
            json.dump(row, handle)


def _timed_finalize_task_arg(cls, name, value, templar, context):
    started = time.process_time()
    try:
        return _finalize_task_arg(cls, name, value, templar, context)
    finally:
        _ARG_CPU[name] = _ARG_CPU.get(name, 0.0) + time.process_time() - started


_worker.WorkerProcess._run = _run
ActionBase.finalize_task_arg = classmethod(_timed_finalize_task_arg)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "worker_cpu"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        os.makedirs(OUT, exist_ok=True)
        if PROFILE:
            _STATE["main_profile"] = cProfile.Profile(time.process_time)
            _STATE["main_profile"].enable()

    def v2_playbook_on_stats(self, stats):
        if _STATE["main_profile"] is not None:
            _STATE["main_profile"].disable()
            _STATE["main_profile"].dump_stats(os.path.join(OUT, "main.prof"))
        with open(os.path.join(OUT, "main.json"), "w", encoding="utf-8") as handle:
            json.dump({"self": _cpu(resource.RUSAGE_SELF), "children": _cpu(resource.RUSAGE_CHILDREN)}, handle)


def table(directory):
    """Lines for people: the main process, then the workers' CPU summed per task."""
    def read(path):
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)

    rows = [read(path) for path in glob.glob(os.path.join(directory, "*.json")) if not path.endswith("main.json")]
    main = read(os.path.join(directory, "main.json"))
    lines = [f"main process {main['self']:.2f} CPU-s, its reaped children {main['children']:.2f}; "
             f"{len(rows)} workers: own {sum(r['self'] for r in rows):.2f}, "
             f"their ssh clients {sum(r['children'] for r in rows):.2f}"]
    tasks = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for row in rows:
        task = tasks[(row["action"], row["task"])]
        task[0] += 1
        task[1] += row["self"]
        task[2] += row["children"]
    for (action, name), (count, own, ssh) in sorted(tasks.items(), key=lambda item: -(item[1][1] + item[1][2])):
        lines.append(f"{count:5d} x {own / count * 1000:5.1f} ms own + {ssh / count * 1000:5.1f} ms ssh  "
                     f"{action}: {name[:60]}")
    return lines


if __name__ == "__main__":
    print("\n".join(table(sys.argv[1])))
