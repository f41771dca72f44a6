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

.PHONY: help venv deps collection test unit reliability lint sanity molecule report nova-venv demo bench lab-up lab-down lab-ssh clean

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

test: deps unit reliability lint sanity molecule report  ## Run every test (installs what it needs first)

unit: collection  ## Unit, module, fuzz and installed-collection tests (pytest)
	$(PY) -m pytest tests/unit tests/collection

reliability: collection  ## Bad inputs, injected faults and random specs: a table of figures; fails on any lost case
	$(PY) -m pytest -q -p no:cacheprovider tests/reliability

lint: export ANSIBLE_HOME := $(abspath $(BUILD))/ansible-home
lint: collection  ## ruff and ansible-lint (production profile)
	$(BIN)/ruff check .
	$(BIN)/ansible-lint --profile production --offline

ANSIBLE_TEST_CACHE := $(HOME)/.ansible/test/cache
ANSIBLE_TEST_PIP   := 24.2

sanity: venv  ## ansible-test sanity on a copy of the tracked files
	mkdir -p $(ANSIBLE_TEST_CACHE)
	test -f $(ANSIBLE_TEST_CACHE)/pip-$(ANSIBLE_TEST_PIP)-py3-none-any.whl || \
	  $(BIN)/pip download --quiet --no-deps pip==$(ANSIBLE_TEST_PIP) -d $(ANSIBLE_TEST_CACHE)
	cp tests/tools/pip_bootstrap.py $(ANSIBLE_TEST_CACHE)/get_pip_$(subst .,_,$(ANSIBLE_TEST_PIP)).py
	rm -rf $(SANITY_DIR) && mkdir -p $(SANITY_DIR)
	git ls-files -z --cached --others --exclude-standard | rsync -a --files-from=- --from0 ./ $(SANITY_DIR)/
	cd $(SANITY_DIR) && git init -q && git add -A && \
	  $(abspath $(BIN))/ansible-test sanity --python 3.11 --requirements --color no

molecule: collection deps  ## Molecule scenarios against the QEMU lab
	$(BIN)/molecule test --all

NOVA_VENV := $(BUILD)/nova-venv

# Nova has its own venv: its ~130 dependencies stay out of the tools' venv.
$(NOVA_VENV)/.installed: tests/report/requirements-nova.txt
	python3 -m venv $(NOVA_VENV)
	$(NOVA_VENV)/bin/pip install --quiet -r tests/report/requirements-nova.txt
	touch $@

nova-venv: $(NOVA_VENV)/.installed  ## OpenStack Nova in its own venv, for the Nova export test

# After molecule: the browser test draws the lab host's record, which the default scenario writes.
report: collection deps nova-venv  ## Exports through their consumers' validators; the fleet page in headless Chromium
	$(PY) -m pytest tests/report

demo: collection deps  ## Configure the lab host and print a before/after report
	tests/lab/demo

bench: collection  ## Detection benchmark: figures and ratios
	$(PY) tests/bench/bench_topology.py

lab-up: collection deps  ## Build (or reuse) the lab image and boot it (LAB=name for another instance)
	$(PY) tests/lab/lab.py up --name $(LAB)

lab-down:  ## Stop the lab (LAB=name)
	python3 tests/lab/lab.py down --name $(LAB)

lab-ssh:  ## Open a shell in the running lab (LAB=name)
	python3 tests/lab/lab.py ssh --name $(LAB)

clean:  ## Remove build output (keeps the venv and the lab image cache)
	rm -rf $(BUILD) tests/output
