# The README quickstart is these two targets. Each installs into .venv first (idempotent: the
# install re-runs only when pyproject.toml or constraints.txt changed).
#   make demo   install + run the pipeline (dvc repro) on the embedded toybox default, offline
#   make test   install + run the test suite (what .ci/run calls)
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
# DVC stages call jupytext/papermill by name: put the project's environment first on PATH.
export PATH := $(BIN):$(PATH)
export PYTHONUNBUFFERED := 1

.PHONY: install demo test lab lock

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

demo: install
	dvc repro
	dvc metrics show

test: install
	python -m pytest

lab: install
	jupyter lab

# Refresh the lock after changing dependencies in pyproject.toml.
lock: install
	{ sed -n '1,2p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v '^prpg'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
