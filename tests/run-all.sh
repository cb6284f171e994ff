#!/usr/bin/env bash
# Every quality gate and test: the linters, then the lab's integration tests over real SSH with the checks that
# need no lab beside them (ansible-lint, sanity, unit tests), fault injection, then the molecule scenario.
# Prints one closing line for CI.
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
        echo "==> $name (ran beside the integration tests)"
        cat "$logs/$name"
        tail -n 1 "$logs/$name" | grep -q "^<== $name ok" || failed+=("$name")
    done
    background=()
}

step yamllint yamllint --strict .
step ruff ruff check .
# The checks that need no lab (ansible-lint, ansible-test sanity on the built collection, the unit tests with
# one worker per core) run beside the lab's integration tests: the lab leaves the two cores idle about half of
# that time (it waits on SSH, reboots and leases), and the three need about 11 CPU-minutes. They run at a lower
# priority so that the lab's terminals, whose timing the integration tests watch, get the CPU first.
# The lab inventory exists only while the lab is up; syntax checks need some inventory, so lint uses
# the production example.
start ansible-lint nice -n 10 env ANSIBLE_INVENTORY=inventories/production ansible-lint --offline --profile production
start ansible-test-sanity nice -n 10 tests/sanity.sh
start unit nice -n 10 pytest -q -p no:cacheprovider -n "${UNIT_JOBS:-auto}" tests/unit
# The lab steps need root; each starts from a clean lab and leaves none behind.
step integration env POSLAB_TEST_TERMINALS="$terminals" pytest -q -p no:cacheprovider --durations=15 tests/integration
collect
# Faults during a rolling update (its own 18-terminal lab, about 11 minutes): docs/faults.md.
step faults pytest -q -p no:cacheprovider --durations=10 tests/faults
step molecule molecule test -s default

if [ ${#failed[@]} -gt 0 ]; then
    echo "make test: FAILED steps: ${failed[*]}"
    exit 1
fi
echo "make test: all steps passed"
