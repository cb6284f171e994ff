#!/usr/bin/env bash
# Every quality gate and test, in the order that fails fastest: lint, unit tests, then the lab
# (integration over real SSH, fault injection, then the molecule scenario). Prints one closing line for CI.
set -uo pipefail
cd "$(dirname "$0")/.."
# The lab suites need root (namespaces, mounts); without it they could only skip, and a run that skipped
# them must not report success.
if [ "$(id -u)" != 0 ]; then
    echo "make test: run as root: the lab's integration, fault and molecule suites need network namespaces and mounts" >&2
    exit 1
fi
terminals=${1:-6}
failed=()
step() {
    local name=$1; shift
    echo "==> $name"
    local started=$SECONDS
    if "$@"; then echo "<== $name ok ($((SECONDS - started))s)"; else echo "<== $name FAILED ($((SECONDS - started))s)"; failed+=("$name"); fi
}

# A step started in the background: its output is kept and printed, with its verdict, by `collect`.
background=()
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
start() {
    local name=$1; shift
    ( local started=$SECONDS; if "$@"; then echo "<== $name ok ($((SECONDS - started))s)"
      else echo "<== $name FAILED ($((SECONDS - started))s)"; fi ) > "$logs/$name" 2>&1 &
    background+=("$name:$!")
}
collect() {
    local entry name
    for entry in "${background[@]}"; do
        name=${entry%%:*}
        wait "${entry##*:}"
        echo "==> $name (ran beside the unit tests)"
        cat "$logs/$name"
        tail -n 1 "$logs/$name" | grep -q "^<== $name ok" || failed+=("$name")
    done
    background=()
}

step yamllint yamllint --strict .
step ruff ruff check .
# ansible-lint and ansible-test sanity (single-threaded, a minute or two each) run beside the unit tests, whose
# workers leave a core idle a good part of the time: about a minute less than one after another.
# The lab inventory exists only while the lab is up; syntax checks need some inventory, so lint uses
# the production example.
start ansible-lint env ANSIBLE_INVENTORY=inventories/production ansible-lint --offline --profile production
# ansible-test sanity on the built collection, offline on the host's Python.
start ansible-test-sanity tests/sanity.sh
# One worker per core (pytest-xdist): about 3 minutes on two cores instead of 7.
step unit pytest -q -p no:cacheprovider -n "${UNIT_JOBS:-auto}" tests/unit
collect
# The lab steps need root; each starts from a clean lab and leaves none behind.
step integration env POSLAB_TEST_TERMINALS="$terminals" pytest -q -p no:cacheprovider tests/integration
# Faults during a rolling update (its own 18-terminal lab, about 11 minutes): docs/faults.md.
step faults pytest -q -p no:cacheprovider tests/faults
step molecule molecule test -s default

if [ ${#failed[@]} -gt 0 ]; then
    echo "make test: FAILED steps: ${failed[*]}"
    exit 1
fi
echo "make test: all steps passed"
