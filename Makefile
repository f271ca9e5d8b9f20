# Two commands: `make test` and `make demo` set everything up from nothing and run.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test demo bench lock clean

install: $(STAMP)

# torch 2.13.0 first (a local CPU wheel); everything else pinned by requirements.lock.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c requirements.lock -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -x --durations=10

demo: $(STAMP)
	$(PY) -m tracer_core.demo

bench: $(STAMP)
	$(PY) -m bench

# Re-pin after changing dependencies (never litellm 1.107.0).
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^torch==' > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache
