# gpuvirt.host — developer entry points. Run as root on Debian/Ubuntu for the lab targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        ?= .venv
PY          := $(VENV)/bin/python
BIN         := $(VENV)/bin
BUILD       := .build
COLL_ROOT   := $(BUILD)/collections
COLL_LINK   := $(COLL_ROOT)/ansible_collections/gpuvirt/host
SANITY_DIR  := $(BUILD)/sanity/ansible_collections/gpuvirt/host
LAB         ?= lab
export ANSIBLE_COLLECTIONS_PATH := $(abspath $(COLL_ROOT))
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: help venv deps collection test unit reliability lint sanity validate fleet molecule report nova-venv demo bench lab-up lab-down lab-ssh clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements-dev.txt | deps
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed  ## Create the Python virtual environment

deps:  ## Install the lab's Debian packages (root)
	tests/lab/install-deps

collection: venv  ## Expose this checkout as the gpuvirt.host collection
	@mkdir -p $(dir $(COLL_LINK))
	@ln -sfn $(abspath .) $(COLL_LINK)

AWX_COLLECTIONS := $(BUILD)/awx-collections
WHEEL_CACHE     := $(HOME)/.cache/gpuvirt-wheels
AWX_PACKAGE     := $(shell sed -n 's/^ansible==//p' requirements-awx.txt)

$(AWX_COLLECTIONS)/.installed: requirements-awx.txt | venv
	mkdir -p $(WHEEL_CACHE)
	$(BIN)/pip download --quiet --no-deps -r requirements-awx.txt -d $(WHEEL_CACHE)
	rm -rf $(AWX_COLLECTIONS) && mkdir -p $(AWX_COLLECTIONS)
	$(PY) -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
	  [z.extract(n, sys.argv[2]) for n in z.namelist() if n.startswith("ansible_collections/awx/awx/")]' \
	  $(WHEEL_CACHE)/ansible-$(AWX_PACKAGE)-py3-none-any.whl $(AWX_COLLECTIONS)
	touch $@

TEST_STAGES := unit reliability lint sanity validate fleet molecule report

# Each stage in turn, with its wall-clock time, so a slow stage shows in the log where it happens.
test: deps  ## Run every test (installs what it needs first)
	@start=$$(date +%s); for stage in $(TEST_STAGES); do \
	  t=$$(date +%s); echo "make test: $$stage started at $$(date -u +%H:%M:%S)"; \
	  $(MAKE) --no-print-directory $$stage || { echo "make test: $$stage FAILED after $$(( $$(date +%s) - t )) s"; exit 1; }; \
	  echo "make test: $$stage passed in $$(( $$(date +%s) - t )) s ($$(( $$(date +%s) - start )) s in all)"; \
	done

# The pytest stages run on every CPU (pytest-xdist); reliability's table adds up the counts that its
# tests' reports carry, in the process that writes it.
PARALLEL := -n auto

# The unit tests go to the workers one at a time as each finishes one (--maxschedchunk=1), not in
# chunks fixed at the start, and the long role tests first (tests/unit/conftest.py): a worker that
# drew the long playbooks is not left with a queue of short tests while the other waits.
unit: collection  ## Unit, module, fuzz and installed-collection tests (pytest)
	$(PY) -m pytest $(PARALLEL) --maxschedchunk=1 tests/unit tests/collection

reliability: collection  ## Bad inputs, injected faults and random specs: a table of figures; fails on any lost case
	$(PY) -m pytest $(PARALLEL) -q -p no:cacheprovider tests/reliability

lint: export ANSIBLE_HOME := $(abspath $(BUILD))/ansible-home
lint: export ANSIBLE_COLLECTIONS_PATH := $(abspath $(COLL_ROOT)):$(abspath $(AWX_COLLECTIONS))
lint: collection $(AWX_COLLECTIONS)/.installed  ## ruff and ansible-lint (production profile)
	$(BIN)/ruff check .
	$(BIN)/ansible-lint --profile production --offline

ANSIBLE_TEST_CACHE := $(HOME)/.ansible/test/cache
ANSIBLE_TEST_PIP   := 24.2

sanity: venv  ## ansible-test sanity on a copy of the tracked and untracked, not ignored, files
	mkdir -p $(ANSIBLE_TEST_CACHE)
	test -f $(ANSIBLE_TEST_CACHE)/pip-$(ANSIBLE_TEST_PIP)-py3-none-any.whl || \
	  $(BIN)/pip download --quiet --no-deps pip==$(ANSIBLE_TEST_PIP) -d $(ANSIBLE_TEST_CACHE)
	cp tests/tools/pip_bootstrap.py $(ANSIBLE_TEST_CACHE)/get_pip_$(subst .,_,$(ANSIBLE_TEST_PIP)).py
	rm -rf $(SANITY_DIR) && mkdir -p $(SANITY_DIR)
	git ls-files -z --cached --others --exclude-standard | rsync -a --files-from=- --from0 ./ $(SANITY_DIR)/
	cd $(SANITY_DIR) && git init -q && git add -A && \
	  $(abspath $(BIN))/ansible-test sanity --python 3.11 --requirements --color no

# One file per worker: each builds its own tarball once (a module fixture), side by side.
validate: collection  ## Publishing validators: galaxy-importer, antsibull-docs, antsibull-changelog, ansible-builder
	$(PY) -m pytest -n auto --dist loadfile tests/publish

fleet: collection $(AWX_COLLECTIONS)/.installed  ## Fleet playbooks on simulated hosts, through ansible-runner; the AWX project
	GPUVIRT_AWX_COLLECTIONS=$(abspath $(AWX_COLLECTIONS)) $(PY) -m pytest $(PARALLEL) tests/fleet

# One scenario at a time: two side by side took as long as one after the other (booting guests keep
# both cores busy; a guest with one virtual CPU boots in 104 s against 64 s with two).
# A failed run ends with a few lines on what failed (tests/tools/failure_summary.py): Molecule's
# recap names the action, not the reason, which is hundreds of lines above it.
MOLECULE_LOG := $(BUILD)/molecule.log
molecule: collection deps  ## Molecule scenarios against the QEMU lab
	@mkdir -p $(BUILD); start=$$(date +%s); set -o pipefail; \
	$(BIN)/molecule test --all 2>&1 | tee $(MOLECULE_LOG) || { \
	  $(PY) tests/tools/failure_summary.py --since $$start $(MOLECULE_LOG) .lab; exit 1; }

NOVA_REQUIREMENTS := tests/report/requirements-nova.txt
NOVA_VENV := $(BUILD)/nova-venv
# Nova has its own venv: its ~130 dependencies stay out of the tools' venv. Installing them takes
# a minute and a half, so the venv is kept, like the lab image, in the user's cache under a hash of
# the requirements (a fresh clone reuses it; other requirements make another), and .build/nova-venv
# links to it. The hash in the path stands for the file's content: a fresh clone's newer file
# does not rebuild it. flock keeps two checkouts from building the same one at once.
NOVA_CACHE := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/gpuvirt-nova-venv/$(shell sha256sum $(NOVA_REQUIREMENTS) | cut -c1-16)

$(NOVA_CACHE)/.installed:
	mkdir -p $(dir $(NOVA_CACHE))
	flock $(NOVA_CACHE).lock sh -c 'test -f $@ || { rm -rf $(NOVA_CACHE) && python3 -m venv $(NOVA_CACHE) && \
	  $(NOVA_CACHE)/bin/pip install --quiet -r $(NOVA_REQUIREMENTS) && touch $@; }'

nova-venv: $(NOVA_CACHE)/.installed  ## OpenStack Nova in its own venv (kept in the user's cache), for the Nova export test
	mkdir -p $(BUILD) && { test -L $(NOVA_VENV) || rm -rf $(NOVA_VENV); } && ln -sfn $(abspath $(NOVA_CACHE)) $(NOVA_VENV)

# After molecule: the browser test draws the lab host's record, which the default scenario writes.
report: collection deps nova-venv  ## Exports through their consumers' validators; the fleet page in headless Chromium
	$(PY) -m pytest tests/report

demo: collection deps  ## Configure the lab host and print a before/after report
	tests/lab/demo

bench: collection deps  ## Detection and fleet benchmarks: figures and ratios (pciutils for the shell loop)
	$(PY) tests/bench/bench_topology.py; status=$$?; \
	  $(PY) tests/bench/bench_fleet.py || status=1; exit $$status

lab-up: collection deps  ## Build (or reuse) the lab image and boot it (LAB=name for another instance)
	$(PY) tests/lab/lab.py up --name $(LAB)

lab-down:  ## Stop the lab (LAB=name)
	python3 tests/lab/lab.py down --name $(LAB)

lab-ssh:  ## Open a shell in the running lab (LAB=name)
	python3 tests/lab/lab.py ssh --name $(LAB)

clean:  ## Remove build output (keeps the venv, the lab image cache and the cached Nova venv)
	rm -rf $(BUILD) tests/output
