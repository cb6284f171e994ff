"""Every subprocess a terminal-side module starts has a deadline (issue 17, "Deadlines").

A command that outlives its timeout is stopped with everything it started (dpkg's maintainer scripts and
their children), and the error names the command, the timeout and what the stop leaves. The last test walks
the terminal-side code and fails on any subprocess started without a timeout: it keeps the rule true.
"""

from __future__ import annotations

import ast
import base64
import os
import time

import pytest
from ansible_collections.posfleet.fleet.plugins.module_utils import pos_app, pos_guard, pos_signature, pos_terminal
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_signature import SignatureError, check_signature
from ansible_collections.posfleet.fleet.plugins.module_utils.pos_terminal import CommandTimeout, run_bounded
from conftest import MODULE_UTILS, MODULES, wait_for


def alive(pid):
    """Whether `pid` still runs; a zombie (dead, waiting for its new parent to reap it) is gone."""
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def hanging_command(directory, name, ignore_sigterm=False):
    """An executable shell script `name` that prints a line, starts a grandchild `sleep 60`, writes its
    pid to name.pid and waits for it; with `ignore_sigterm` both ignore SIGTERM (only SIGKILL stops them)."""
    script = directory / name
    script.write_text("#!/bin/sh\n%secho unpacking posd\nsleep 60 &\necho $! > %s.pid\nwait\n"
                      % ("trap '' TERM\n" if ignore_sigterm else "", script))
    script.chmod(0o755)
    return script


def grandchild(script):
    return int(wait_for(lambda: script.with_name(script.name + ".pid").exists()
                        and script.with_name(script.name + ".pid").read_text().strip(), what="the grandchild's pid"))


def test_a_command_past_its_timeout_is_stopped_with_its_grandchild_and_named_in_the_error(tmp_path):
    script = hanging_command(tmp_path, "hang")
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as raised:
        run_bounded([str(script), "--now"], 0.5, "nothing was changed")
    took = time.monotonic() - started

    assert 0.5 <= took < 3  # the shell and its sleep end on SIGTERM: no need to wait for SIGKILL
    assert str(raised.value) == ("%s --now did not finish within 0.5 s and was stopped (its last output: unpacking "
                                 "posd); nothing was changed" % script)
    assert isinstance(raised.value, OSError)  # the shape every caller already turns into fail_json
    sleeper = grandchild(script)
    wait_for(lambda: not alive(sleeper), timeout=2, what="the grandchild sleep 60 to be gone")


def test_a_process_group_that_ignores_sigterm_is_killed_after_the_grace(tmp_path, monkeypatch):
    monkeypatch.setattr(pos_terminal, "STOP_GRACE", 0.5)
    script = hanging_command(tmp_path, "stubborn", ignore_sigterm=True)
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"stubborn did not finish within 0.3 s and was stopped"):
        run_bounded([str(script)], 0.3, "nothing was changed")

    assert time.monotonic() - started < 0.3 + 0.5 + 2.5  # the timeout, the grace, slack for a busy machine
    sleeper = grandchild(script)
    wait_for(lambda: not alive(sleeper), timeout=2, what="the grandchild that ignores SIGTERM to be gone")


def test_a_command_within_its_timeout_returns_its_exit_code_and_output(tmp_path):
    assert run_bounded(["sh", "-c", "echo out; echo err >&2; exit 3"], 10, "-") == (3, "out\n", "err\n")
    assert run_bounded(["sh", "-c", "echo out; echo err >&2"], 10, "-", merge_output=True) == (0, "out\nerr\n", "")
    with pytest.raises(OSError) as missing:
        run_bounded([str(tmp_path / "no-such-command")], 10, "-")
    assert not isinstance(missing.value, CommandTimeout)


def test_a_hung_dpkg_switching_back_fails_naming_the_package_and_what_it_leaves(tmp_path, monkeypatch):
    """The update guard and pos_restore switch a dpkg terminal back with `dpkg -i`; a hang there is stopped."""
    fake = tmp_path / "bin"
    fake.mkdir()
    hanging_command(fake, "dpkg")
    monkeypatch.setenv("PATH", "%s%s%s" % (fake, os.pathsep, os.environ["PATH"]))
    monkeypatch.setenv("POS_ROOT", str(tmp_path / "root"))
    monkeypatch.setattr(pos_app, "DPKG_INSTALL_TIMEOUT", 0.5)
    deb = str(tmp_path / "root" / "var" / "lib" / "pos" / "rollback" / "posd_1.0.0_all.deb")

    with pytest.raises(OSError) as raised:
        pos_app.app("dpkg").switch_back("1.0.0")

    assert str(raised.value) == ("dpkg -i %s did not finish within 0.5 s and was stopped (its last output: unpacking "
                                 "posd); posd may be left half-installed; rollback.yml reinstalls %s" % (deb, deb))
    sleeper = grandchild(fake / "dpkg")
    wait_for(lambda: not alive(sleeper), timeout=2, what="the maintainer script's child to be gone")


def test_a_hung_openssl_fails_the_signature_check_and_nothing_is_installed(tmp_path, monkeypatch, dist):
    openssl = hanging_command(tmp_path, "openssl")
    monkeypatch.setattr(pos_signature, "OPENSSL_TIMEOUT", 0.5)
    dist.publish("/releases/r1/manifest.yml", b"release: r1\n")
    dist.publish("/releases/r1/manifest.yml.sig", base64.b64encode(b"s" * 64))

    class Module:
        def get_bin_path(self, name):
            return str(openssl)

    with pytest.raises(SignatureError) as raised:
        check_signature(Module(), dist.url + "/releases/r1/manifest.yml", "0" * 64, "PEM", 10)

    assert str(raised.value).startswith("the terminal could not check the signature of %s/releases/r1/manifest.yml: "
                                        "openssl pkeyutl -verify did not finish within 0.5 s and was stopped"
                                        % dist.url)
    assert str(raised.value).endswith("; nothing is installed")
    assert raised.value.manifest_sha256  # the manifest was downloaded: the result says which one


# --- the guard that keeps the rule -----------------------------------------------------------------

# subprocess functions that take a timeout; Popen takes none and goes through the shared helper only.
WITH_TIMEOUT = {"subprocess.run", "subprocess.call", "subprocess.check_call", "subprocess.check_output"}
SHARED_HELPER = ("pos_terminal.py", "run_bounded")
# Ways to start a process that cannot be given a timeout at all. AnsibleModule.run_command has no timeout
# parameter (ansible-core 2.21): terminal-side code uses run_bounded instead.
NEVER = ("subprocess.Popen", "subprocess.getoutput", "subprocess.getstatusoutput", "os.system", "os.popen",
         "os.spawn", "os.exec", "os.posix_spawn", "os.fork", "pty.spawn", "pty.fork", "asyncio.create_subprocess")


def subprocess_problems(source, filename):
    """Each call in `source` that starts a process without a timeout, as 'file:line: why'."""
    tree = ast.parse(source, filename)
    names = {}  # local name -> dotted name it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]  # `import os.path` binds `os`
                names[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = "%s.%s" % (node.module, alias.name)

    def dotted(func):
        if isinstance(func, ast.Name):
            return names.get(func.id, func.id)
        if isinstance(func, ast.Attribute):
            base = dotted(func.value)
            return base and "%s.%s" % (base, func.attr)
        return None

    problems = []

    def check(node, function):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Call):
                name = dotted(child.func) or ""
                where = "%s:%d: %s" % (filename, child.lineno, name or ast.unparse(child.func))
                if isinstance(child.func, ast.Attribute) and child.func.attr == "run_command":
                    problems.append(where + " has no timeout (AnsibleModule.run_command takes none): use run_bounded")
                elif name == "subprocess.Popen" and (os.path.basename(filename), function) == SHARED_HELPER:
                    pass  # the shared helper, whose own test above proves its deadline
                elif name.startswith(NEVER):
                    problems.append(where + " cannot be given a timeout: use run_bounded")
                elif name in WITH_TIMEOUT:
                    timeout = [k for k in child.keywords if k.arg == "timeout"]
                    if any(k.arg is None for k in child.keywords):
                        problems.append(where + " passes **kwargs: its timeout cannot be checked")
                    elif not timeout or (isinstance(timeout[0].value, ast.Constant) and timeout[0].value.value is None):
                        problems.append(where + " has no timeout")
            check(child, inner)

    check(tree, None)
    return problems


def test_no_terminal_side_code_starts_a_process_without_a_timeout():
    problems = []
    for path in sorted(MODULES.glob("*.py")) + sorted(MODULE_UTILS.glob("*.py")):
        problems += subprocess_problems(path.read_text(encoding="utf-8"), str(path.relative_to(MODULES.parents[1])))
    assert problems == []


@pytest.mark.parametrize("source", [
    "import subprocess\nsubprocess.run(['dpkg-query', '-W'])\n",
    "import subprocess\nsubprocess.run(['sync'], timeout=None)\n",
    "import subprocess as sp\nsp.check_output(['sync'])\n",
    "from subprocess import check_call\ncheck_call(['sync'])\n",
    "import subprocess\nsubprocess.call(['sync'], **options)\n",
    "import subprocess\nproc = subprocess.Popen(['dpkg', '-i', 'x.deb'])\nproc.communicate(timeout=600)\n",
    "import os\nos.system('sync')\n",
    "import os\nos.execvp('sync', ['sync'])\n",
    "def f(module):\n    module.run_command(['dpkg', '-i', 'x.deb'])\n",
])
def test_the_guard_finds_a_process_started_without_a_timeout(source):
    assert len(subprocess_problems(source, "plugins/module_utils/example.py")) == 1


def test_the_guard_lets_bounded_starts_pass():
    source = ("import subprocess\nfrom subprocess import run\nsubprocess.run(['sync'], timeout=30)\n"
              "run(['sync'], timeout=SYNC_TIMEOUT)\n"
              "def run_bounded(argv, timeout):\n    return subprocess.Popen(argv, start_new_session=True)\n")
    assert subprocess_problems(source, "plugins/module_utils/pos_terminal.py") == []
    assert len(subprocess_problems(source, "plugins/module_utils/other.py")) == 1


def test_the_guard_is_stuck_not_crashed_when_the_app_s_version_cannot_be_read_after_a_switch_back(monkeypatch):
    # The guard runs unattended on the terminal: a hung dpkg-query after it switched back must end in its
    # outcome (stuck, with the reason), which the next run reads, not in a traceback.
    def hung(style):
        raise CommandTimeout("dpkg-query -W posd did not finish within 30 s and was stopped")

    monkeypatch.setattr(pos_guard, "_switch_back", lambda before, timeout: ["app 1.0.0"])
    monkeypatch.setattr(pos_guard, "posd", lambda *args, **kwargs: {"ok": True})
    monkeypatch.setattr(pos_guard, "app_version", hung)
    phase, reason, done = pos_guard._undo({"package_style": "dpkg", "app_version": "1.0.0", "packs": {}}, 1.0)
    assert (phase, done) == ("stuck", ["app 1.0.0"])
    assert reason == ("switched back, but the app's version cannot be read: dpkg-query -W posd did not finish "
                      "within 30 s and was stopped")
