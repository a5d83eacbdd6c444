# The README quickstart is these two targets. Each installs into .venv first (idempotent: the
# install re-runs only when pyproject.toml or constraints.txt changed).
#   make demo   install + run the pipeline (dvc repro) on the embedded toybox default, offline
#   make test   install + run the test suite (what .ci/run calls)
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
# DVC stages call python / prpg by name: put the project's environment first on PATH.
export PATH := $(BIN):$(PATH)
export PYTHONUNBUFFERED := 1
# Let Python cache bytecode for our own sources (some sandboxes set this; every import then recompiles).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install demo test lab lock

install: $(VENV)/.installed

# torch/torchvision (and uv) through pip: pip finds this machine's local torch wheels, uv does not.
# Everything else through uv, against the same lock: install 1.7 min in all instead of 3.8 (measured, 2 cores).
# Plain pip works too: pip install -c constraints.txt -e '.[test]'
UV_INSTALL = $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -c constraints.txt

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt uv torch torchvision
	$(UV_INSTALL) -e '.[test]'
	touch $@

demo: install
	dvc repro
	dvc metrics show

test: install
	python -m pytest

# JupyterLab is an extra: the pipeline only needs papermill's kernel, and JupyterLab's dependencies
# add ~1 s to every notebook-runner start (jsonschema's format checkers).
lab: install
	$(UV_INSTALL) -e '.[test,lab]'
	jupyter lab

# Refresh the lock after changing dependencies in pyproject.toml.
lock: install
	$(UV_INSTALL) -e '.[test,lab]'
	{ sed -n '1,2p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v '^prpg'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
