# The README quickstart is these two targets. Each installs into .venv first (idempotent: the
# install re-runs only when pyproject.toml or constraints.txt changed).
#   make demo   install + run the pipeline (dvc repro, JOBS stages at a time) on the embedded toybox default, offline
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

# uv does the installing (measured on 2 cores: torch+torchvision 21 s instead of pip's 68 s). It is
# given the local wheel locations of this machine's pip config (find-links, extra index), where pip has
# them, so it takes torch from local disk as pip would; elsewhere it uses PyPI as pip would. Like pip,
# it picks the best match over all indexes (uv's default stops at the first index naming a package).
# Plain pip works too: pip install -c constraints.txt -e '.[test]'
# Both sources pip reads: its environment variables and its config files ($(sort) drops duplicates).
PIP_LOCAL = $(foreach u,$(sort $(PIP_FIND_LINKS) $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)),--find-links $(u)) \
	$(foreach u,$(sort $(PIP_EXTRA_INDEX_URL) $(shell $(PYTHON) -m pip config get global.extra-index-url 2>/dev/null)),--extra-index-url $(u)) \
	--index-strategy unsafe-best-match
UV_INSTALL = $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -c constraints.txt

# One line of output (pip's -qq: errors only); a failing step still prints its error and stops make.
$(VENV)/.installed: pyproject.toml constraints.txt
	@echo "installing into $(VENV) (torch, torchvision, then prpg[test] against constraints.txt)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -qq --disable-pip-version-check -c constraints.txt uv
	@$(UV_INSTALL) $(PIP_LOCAL) torch torchvision
	@$(UV_INSTALL) -e '.[test]'
	@touch $@

# The demo is `dvc repro` with independent stages JOBS at a time (prpg repro: same stages, same results).
# 3 on 2 cores: the demo's 5 instance chains run as 3 then 2, both cores busy to the end (measured:
# pipeline 536 s at 3, 576 s at 2, 705 s one stage at a time).
JOBS ?= 3
# It prints one line per stage and ends with the pretrained-vs-personalized table (prpg summary, from
# reports/metrics/evaluate.json) and the report's path; each stage's full output is in its .log.
demo: install
	@prpg repro --jobs $(JOBS)
	@prpg summary

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
