#!/usr/bin/env bash
# `make demo`: boot the lab fleet and run the main job against it, then show what happened.
set -euo pipefail
cd "$(dirname "$0")/.."
terminals=${1:-12}
export PATH="$PWD/.venv/bin:$PWD/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg"

echo "==> Booting a lab fleet of $terminals simulated terminals (namespaces, real sshd, posd, nginx)"
poslab up --terminals "$terminals"

echo "==> The fleet as the inventory plugin sees it"
ansible-inventory --graph models

echo "==> Gathering terminal facts over SSH (playbooks/facts.yml)"
ansible-playbook playbooks/facts.yml

vault=(-e @/var/lib/poslab/vault/secrets.yml --vault-password-file /var/lib/poslab/vault/password)
echo "==> Building, signing and publishing the baseline and the upgrade release (playbooks/publish.yml)"
ansible-playbook playbooks/publish.yml -e release_spec=releases/lab/baseline.yml
ansible-playbook playbooks/publish.yml -e release_spec=releases/lab/upgrade.yml

echo "==> Bringing the fleet to the baseline release 2026.11.0 (playbooks/update.yml)"
ansible-playbook playbooks/update.yml -e update_release=2026.11.0 "${vault[@]}"

echo "==> Previewing the upgrade's waves, changing nothing (playbooks/plan.yml)"
ansible-playbook playbooks/plan.yml -e update_release=2026.12.0 "${vault[@]}"

echo "==> Enrolling the terminals in auto update: each gets the check-in agent and a key of its own"
ansible-playbook playbooks/checkin_enroll.yml
# One terminal is off the network during the night's rollout, as a mobile terminal out of coverage is.
away=$(poslab status --json | python3 -c 'import json, sys; print(json.load(sys.stdin)[-1]["serial"])')
echo "==> Taking $away off the network for the rollout (poslab fault $away net-down)"
poslab fault "$away" net-down

echo "==> Rolling out the upgrade 2026.12.0 in waves while the terminals keep selling"
ansible-playbook playbooks/update.yml -e update_release=2026.12.0 "${vault[@]}" || true

echo "==> Auto update: assigning 2026.12.0 to the fleet and starting the check-in service (ansible-rulebook)"
poslab checkin assign 2026.12.0
poslab checkin up --report-dir "$PWD/reports"
echo "==> $away comes back online; its agent checks in and it catches up by itself"
poslab fault "$away" net-up
for _ in $(seq 1 90); do
  [ "$(poslab status --json | python3 -c "import json, sys; print(next(r['app_version'] for r in json.load(sys.stdin) if r['serial'] == '$away'))")" = 1.1.0 ] && break
  sleep 2
done
POSFLEET_CHECKIN_STORE=/var/lib/poslab/checkin/store.db ANSIBLE_INVENTORY=/var/lib/poslab/checkin/inventory \
  posfleet-autoupdate status
poslab checkin down

echo "==> The upgrade's OS packages (Debian security updates, real dpkg) on each terminal; petrel_p9 takes none"
for serial in $(poslab status --json | python3 -c 'import json, sys; print(" ".join(r["serial"] for r in json.load(sys.stdin)))'); do
  printf '%s  %s\n' "$serial" "$(poslab exec "$serial" -- dpkg-query -W -f '${Package}=${Version} ' libssl3 openssl tzdata ca-certificates)"
done
echo "==> The compliance audit: every terminal against 2026.12.0, OS packages included (playbooks/verify.yml)"
ansible-playbook playbooks/verify.yml -e update_release=2026.12.0 || true

echo "==> Lab status"
poslab status

echo "==> Reconciling every terminal journal with the acquirer ledger"
poslab ledger
echo
echo "Every run's report is under reports/ (reports/latest/report.html is the upgrade's)."
echo "The lab stays up for you to explore: 'poslab status', 'poslab exec SERIAL -- posctl status',"
echo "'ansible-playbook playbooks/facts.yml'. Remove it with 'make lab-down' (or 'poslab down')."
