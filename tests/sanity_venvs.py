"""Give `ansible-test sanity` the project's .venv as the virtual environment of each of its tests (tests/sanity.sh).

ansible-test runs every sanity test that needs packages (pylint, pep8, validate-modules, ...) in a virtual
environment of its own, ~/.ansible/test/venv/sanity.<test>/<python>/<hash>/, which it makes by downloading
pip's bootstrap script from ci-files.testing.ansible.com and the test's pinned requirements from PyPI. It
reuses one it finds complete there (marker.txt). This writes, at exactly those paths (the hash is
ansible-test's own), an environment whose python is .venv's, so the tests run offline on the host's
Python. requirements.txt installs the versions ansible-test pins (its sanity.*.txt); a pinned package
that .venv lacks stops the run here, one at another version is listed.

    python tests/sanity_venvs.py HOME [SKIPPED_TEST ...]   # HOME: the home ansible-test then runs with
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import sys
from importlib import metadata

from ansible_test._internal.commands.sanity import hash_pip_commands
from ansible_test._internal.host_configs import NativePythonConfig
from ansible_test._internal.python_requirements import collect_requirements
from ansible_test._internal.util import ANSIBLE_TEST_DATA_ROOT
from ansible_test._internal.util_common import yamlcheck


def pins(path):
    """{name: version} of a requirements file's `name==version` lines."""
    found = {}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line)
            if match:
                found[match.group(1)] = match.group(2)
    return found


def main(home, skipped):
    python = NativePythonConfig(version="%d.%d" % sys.version_info[:2], path=sys.executable)
    # A sanity venv's python is this one; an exec wrapper, so that Python finds .venv's site-packages.
    wrapper = "#!/bin/sh\nexec %s \"$@\"\n" % shlex.quote(sys.executable)
    cloader = yamlcheck(python)
    missing, differ = [], []
    for path in sorted(glob.glob(os.path.join(ANSIBLE_TEST_DATA_ROOT, "requirements", "sanity.*.txt"))):
        name = os.path.basename(path)[len("sanity."):-len(".txt")]
        if name.split(".")[0] in skipped:
            continue
        for package, wanted in pins(path).items():
            try:
                have = metadata.version(package)
            except metadata.PackageNotFoundError:
                missing.append("%s==%s (sanity test %s)" % (package, wanted, name))
                continue
            if have != wanted:
                differ.append("%s %s (ansible-test pins %s for %s)" % (package, have, wanted, name))
        # The import test asks for its module and plugin environments with minimize=True.
        commands = collect_requirements(python=python, controller=True, ansible=False, coverage=False,
                                        minimize=name.startswith("import."), command=None, sanity=name)
        venv = os.path.join(home, ".ansible", "test", "venv", "sanity.%s" % name, python.version,
                            hash_pip_commands(commands))
        os.makedirs(os.path.join(venv, "bin"), exist_ok=True)
        with open(os.path.join(venv, "bin", "python"), "w", encoding="utf-8") as out:
            out.write(wrapper)
        os.chmod(os.path.join(venv, "bin", "python"), 0o755)
        with open(os.path.join(venv, "meta.yaml.json"), "w", encoding="utf-8") as out:
            json.dump(cloader, out)
        open(os.path.join(venv, "marker.txt"), "w").close()
        print("sanity venv %s: %s -> %s" % (name, venv, sys.executable))
    for line in sorted(set(differ)):
        print("note: .venv has %s" % line)
    if missing:
        print("sanity: .venv lacks what ansible-test's sanity tests import (add it to requirements.txt, then "
              "make venv): %s" % ", ".join(sorted(set(missing))), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], set(sys.argv[2:])))
