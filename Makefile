# Two commands: `make test` and `make demo` set everything up from nothing and run.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# litellm otherwise tries to download its model price list at import
export LITELLM_LOCAL_MODEL_COST_MAP := True
# mkdocs-material otherwise prints a banner about MkDocs 2.0 on every build
export NO_MKDOCS_2_WARNING := 1

# bash with pipefail: a recipe piped through a filter still fails when its command does
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# pip prints "WARNING: Location 'file:///.../simple/<package>/' is ignored: it is neither a file nor
# a directory" for every package a local index in the machine's pip configuration (pip config
# list: extra-index-url, find-links) does not hold: 148 such lines on one install, none a problem.
# Only those lines are dropped; every other line pip prints (errors, other warnings) still shows.
PIP_NOISE := sed "/^WARNING: Location 'file:[^']*' is ignored: it is neither a file nor a directory\.$$/d"

.PHONY: install sysdeps lint docs test demo bench lock clean

install: $(STAMP)

# torch 2.13.0 first (a local CPU wheel); everything else pinned by requirements.lock.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0 2>&1 | $(PIP_NOISE)
	$(PY) -m pip install --quiet -c requirements.lock -r requirements.lock 2>&1 | $(PIP_NOISE)
	$(PY) -m pip install --quiet --no-deps -e . 2>&1 | $(PIP_NOISE)
	touch $(STAMP)

# Debian packages the tests need: headless Chromium opens the HTML report; the PostgreSQL server
# (its initdb and pg_ctl start a throwaway cluster for the store tests and the benchmark).
sysdeps:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq postgresql)

# ruff (lint + import order) and mypy, configured in pyproject.toml; `make test` runs them first.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

# The documentation site (mkdocs.yml, docs/) into site/; --strict fails on a broken link, a missing
# page or a reference to a name that no longer exists (not with --quiet: it stops counting warnings).
docs: $(STAMP)
	$(PY) -m mkdocs build --strict

test: $(STAMP) sysdeps lint docs
	$(PY) -m pytest -q --durations=15

demo: $(STAMP)
	$(PY) examples/demo.py

bench: $(STAMP) sysdeps
	$(PY) -m bench

# Re-pin after changing dependencies (never litellm 1.107.0).
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^torch==' > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
