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

echo "==> Rolling out the upgrade 2026.12.0 in waves while the terminals keep selling"
ansible-playbook playbooks/update.yml -e update_release=2026.12.0 "${vault[@]}"

echo "==> Lab status"
poslab status

echo "==> Reconciling every terminal journal with the acquirer ledger"
poslab ledger
echo
echo "Every run's report is under reports/ (reports/latest/report.html is the upgrade's)."
echo "The lab stays up for you to explore: 'poslab status', 'poslab exec SERIAL -- posctl status',"
echo "'ansible-playbook playbooks/facts.yml'. Remove it with 'make lab-down' (or 'poslab down')."
