# posfleet: the two commands of the README (`make demo`, `make test`) and the steps they are made of.
# Everything a fresh Debian/Ubuntu machine needs is installed from here, as root.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        := .venv
VBIN        := $(VENV)/bin
# Debian packages the control node and the lab need. The terminal image is built from Debian's
# archive with debootstrap, so nothing here is downloaded from anywhere else. chromium opens the
# rollout report (report.html) headless in the tests. ansible-rulebook (auto update) runs on Debian's
# default Java runtime. e2fsprogs (mkfs.ext4) and util-linux (losetup) make a large lab's disk flash.
APT_PACKAGES := debootstrap debian-archive-keyring nginx-light openssh-client sqlite3 iproute2 dpkg-dev xz-utils zstd \
                rsync openssl ca-certificates util-linux e2fsprogs procps chromium default-jre-headless
DEMO_TERMINALS ?= 12
TEST_TERMINALS ?= 6
export PATH := $(CURDIR)/$(VBIN):$(CURDIR)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

# ansible-core 2.21 needs Python 3.12 or newer on the control node: take the newest we can find,
# on PATH or under pyenv.
# pyenv's shims answer `command -v` for versions that are not active, so each candidate is run.
PYTHON ?= $(shell for v in 3.14 3.13 3.12; do \
            for p in "$$(command -v python$$v 2>/dev/null)" $$HOME/.pyenv/versions/$$v*/bin/python$$v \
                     /usr/local/bin/python$$v /usr/bin/python$$v; do \
              [ -x "$$p" ] && "$$p" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null \
                && { echo "$$p"; exit 0; }; done; done)


.PHONY: help deps apt venv collection demo test lint unit integration faults molecule bench bench-checkin bench-scale bench-rollout soak lab-up lab-down clean

help:
	@echo "make demo   boot the lab fleet and run the main job against it"
	@echo "make test   every quality gate and test (lint, unit, lab integration, molecule)"
	@echo "make bench  benchmark on the lab: control-node CPU and bytes per terminal vs baselines (about 1 h;"
	@echo "            make bench BENCH_ARGS=--quick: about 20 min), then lab boot time and memory"
	@echo "make bench-scale  no lab: plan.yml over generated fleets of 1,000, 10,000 and 100,000 terminals,"
	@echo "            none contacted; wall, CPU and memory vs the targets (up to 3600 s per command)"
	@echo "make bench-rollout  the lab: 10% of 100 terminals on a slow link against none (at most 1.3 times the"
	@echo "            time), then a full update of 500 terminals: wall, CPU per terminal, peak memory (about 2 h)"
	@echo "make bench-checkin  a reconnect storm of signed check-ins against the lab's auto-update service:"
	@echo "            check-ins answered per minute, latency, bytes per check-in (a few minutes)"
	@echo "make soak   rollouts over the lab with random faults until 10,000 sales were made during updates;"
	@echo "            every terminal whole, no sale lost (about 70 min; SOAK_ARGS=\"--seed N\" replays one)"
	@echo "make lab-down   remove the lab completely"

deps: apt venv

apt: .make/apt.stamp
.make/apt.stamp: Makefile
	@if [ "$$(id -u)" != 0 ]; then echo "posfleet: run as root (the lab needs network namespaces and mounts)" >&2; exit 1; fi
	@missing=""; for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "posfleet: installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@mkdir -p .make && touch $@

venv: .make/venv.stamp collection
.make/venv.stamp: requirements.txt awx/awx-collection.txt pyproject.toml
	@if [ -z "$(PYTHON)" ]; then \
	  echo "posfleet: no Python 3.12 or newer found. ansible-core 2.21 needs it on the control node:" >&2; \
	  echo "  install python3.12 (or newer) from your distribution or pyenv, or run make PYTHON=/path/to/python3.12" >&2; \
	  exit 1; fi
	@# Debian and Ubuntu ship venv (ensurepip) apart from the interpreter: python3.X-venv.
	@if ! $(PYTHON) -c 'import ensurepip' 2>/dev/null; then \
	  pkg=python$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv; \
	  echo "posfleet: installing $$pkg (venv for $(PYTHON))"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkg >/dev/null \
	    || { echo "posfleet: could not install $$pkg; install the venv module for $(PYTHON) and run make again" >&2; exit 1; }; \
	fi
	@echo "posfleet: creating $(VENV) with $(PYTHON)"
	@[ -x $(VBIN)/python ] || $(PYTHON) -m venv $(VENV)
	@$(VBIN)/pip install -q --disable-pip-version-check -r requirements.txt
	@# posfleet's control-node package, editable: bin/ and the plugins import it from the checkout.
	@$(VBIN)/pip install -q --disable-pip-version-check --no-deps -e .
	@$(VBIN)/python awx/install_awx_collection.py
	@mkdir -p .make && touch $@

# The checkout is the collection posfleet.fleet: ansible.cfg's collections_path finds it through this
# link, so no install step is needed to run the playbooks from here (AWX, running from a checkout,
# included). The link is in git; this only puts it back if it is gone. Linters skip collections/.
COLLECTION_LINK := collections/ansible_collections/posfleet/fleet
collection: $(COLLECTION_LINK)
$(COLLECTION_LINK):
	@mkdir -p $(dir $@)
	@ln -sfn ../../.. $@

demo: deps
	@lab/demo.sh $(DEMO_TERMINALS)

test: deps
	@UNIT_JOBS=$(UNIT_JOBS) tests/run-all.sh $(TEST_TERMINALS)

lint: venv
	yamllint --strict .
	ruff check .
	ANSIBLE_INVENTORY=inventories/production ansible-lint --offline --profile production

# One worker per core (pytest-xdist); UNIT_JOBS=0 runs them in this process, one after another.
UNIT_JOBS ?= auto
unit: venv
	pytest -q -n $(UNIT_JOBS) tests/unit

integration: deps
	pytest -q tests/integration

# Faults during a rolling update on an 18-terminal lab (docs/faults.md).
faults: deps
	pytest -q tests/faults

molecule: deps
	molecule test -s default

# Each step of bench/control_cost.py takes the lab's lock for itself (POSLAB_LOCK, /tmp/poslab.lock),
# so a shared lab stays usable between steps; so does lab_scale.py here.
BENCH_ARGS ?=
POSLAB_LOCK ?= /tmp/poslab.lock
bench: deps
	$(VBIN)/python bench/control_cost.py run $(BENCH_ARGS)
	flock $(POSLAB_LOCK) $(VBIN)/python bench/lab_scale.py --terminals 100

# No lab and no lock: generated registries, every maintenance window closed, so no terminal is
# contacted (docs/performance.md, "Fleet scale without contact"). A size that runs past the timeout
# is recorded as such, not an error.
# Issue 15: a reconnect storm of check-ins against the lab's check-in service (docs/auto-update.md).
bench-checkin: deps
	flock $(POSLAB_LOCK) sh -c 'bin/poslab up --terminals $(DEMO_TERMINALS) && ansible-playbook playbooks/checkin_enroll.yml \
	  && bin/poslab checkin up && $(VBIN)/python bench/checkin_storm.py $(BENCH_ARGS); rc=$$?; bin/poslab checkin down; exit $$rc'

bench-scale: deps
	$(VBIN)/python bench/fleet_scale.py --sizes 1000,10000,100000 --timeout 3600

# Issue 16 in the lab (docs/performance.md): 10% of the terminals on a slow link beside the rest (two full
# updates of fresh 100-terminal labs), then one full update of 500 terminals; about two hours. The script
# holds the lab's lock itself.
bench-rollout: deps
	$(VBIN)/python bench/lab_rollout.py slow --terminals 100
	$(VBIN)/python bench/lab_rollout.py fleet --terminals 500

# The soak (docs/faults.md): its own lab, so never beside another lab run (the lock).
soak: deps
	flock /tmp/poslab.lock $(VBIN)/python bench/soak.py $(SOAK_ARGS)

lab-up: deps
	poslab up --terminals $(DEMO_TERMINALS)

lab-down:
	poslab down

clean: lab-down
	rm -rf $(VENV) .make reports
