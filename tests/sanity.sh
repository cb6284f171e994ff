#!/usr/bin/env bash
# `ansible-test sanity` on the collection as users get it: the artifact `ansible-galaxy collection build`
# makes from this checkout (galaxy.yml's build_ignore decides what is in it, tests/sanity/ included),
# installed into a temporary ansible_collections/ tree and tested there (ansible-test refuses the checkout,
# whose ansible_collections/posfleet/fleet is a link to it). Offline, on the host's Python, no container:
# each test runs with .venv's Python and the versions requirements.txt pins for it (tests/sanity_venvs.py).
# tests/sanity/ignore-2.21.txt lists the findings that are by design, each with its reason.
#
#   tests/sanity.sh               # what make test runs (tests/run-all.sh), about a minute
#   tests/sanity.sh --test pep8   # extra arguments go to the first ansible-test run
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=$root/.venv
if [ ! -x "$venv/bin/ansible-test" ]; then
    echo "sanity: $venv/bin/ansible-test not found: run make venv" >&2
    exit 1
fi

# Tests left out by name, and why.
skipped=(
    # changelog: the collection keeps CHANGELOG.md by hand, not antsibull-changelog's changelogs/ directory,
    # so the test has nothing to check (and its requirements are not installed).
    changelog
    # pslint: needs PowerShell and PSScriptAnalyzer, which the control node does not have; the collection
    # has no PowerShell.
    pslint
    # shellcheck: needs the shellcheck program, a Debian package this machine cannot download (it reaches
    # PyPI only); ansible-test would only skip it with a warning. It checks *.sh files, and the artifact
    # has none (tests/*.sh are not in it).
    shellcheck
)

# The terminals' Python, 3.9 (the oldest ansible-core 2.21 supports on a target): compile and import of
# the terminal-side code (modules, module_utils) run again on it, as in tests/unit/conftest.py. Found
# before HOME changes below.
terminal_python=""
for candidate in "${POSFLEET_TERMINAL_PYTHON:-}" "$HOME"/.pyenv/versions/3.9*/bin/python3.9 \
                 "$(command -v python3.9 || true)" /usr/bin/python3.9; do
    # Each candidate is run: a pyenv shim answers `command -v` for versions that are not active.
    if [ -n "$candidate" ] && [ -x "$candidate" ] \
        && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 9))' 2>/dev/null; then
        terminal_python=$candidate
        break
    fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/posfleet-sanity.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
run() {
    echo "+ $*"
    "$@"
}

# Nothing of the checkout's Ansible configuration, the caller's ANSIBLE_* settings or the user's home:
# ansible-test keeps its environments under ~/.ansible/test, here in the temporary directory.
while IFS= read -r name; do unset "$name"; done < <(compgen -e | grep '^ANSIBLE_' || true)
export HOME=$tmp/home
mkdir -p "$HOME" "$tmp/bin"
# ansible-test makes the terminal Python's virtual environment with the python3.9 it finds on PATH.
[ -z "$terminal_python" ] || ln -s "$terminal_python" "$tmp/bin/python3.9"
export PATH=$tmp/bin:$venv/bin:$PATH
controller=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

cd "$tmp"
run ansible-galaxy collection build --output-path "$tmp" "$root"
tarball=$(echo "$tmp"/posfleet-fleet-*.tar.gz)
run ansible-galaxy collection install "$tarball" -p "$tmp/collections" --no-deps --offline --force
run "$venv/bin/python" "$root/tests/sanity_venvs.py" "$HOME" "${skipped[@]}"
cd "$tmp/collections/ansible_collections/posfleet/fleet"

status=0
skip_args=()
for test in "${skipped[@]}"; do skip_args+=(--skip-test "$test"); done
run ansible-test sanity --python "$controller" "${skip_args[@]}" "$@" || status=1
if [ -n "$terminal_python" ]; then
    run ansible-test sanity --test compile --test import --target-python "3.9@$tmp/bin/python3.9" || status=1
else
    echo "sanity: no Python 3.9 found (POSFLEET_TERMINAL_PYTHON, ~/.pyenv, PATH): compile and import on the" \
         "terminals' Python skipped; terminal-side code is checked on Python $controller only"
fi
exit $status
