# slimrank: two commands on a fresh clone.
#   make serve  -> install, build the demo model if missing, serve it on :8000
#   make test   -> install, run the test suite
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= artifacts/demo
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-fast lint format bench-scorer evaluate clean serve

# Re-run the installer only when a requirement or the project metadata changes.
$(STAMP): scripts/install.sh pyproject.toml $(wildcard requirements/*.txt)
	bash scripts/install.sh
	touch $@

install: $(STAMP)

# Benchmark + tokenizer + trained teacher into $(DEMO)/ (reused when present).
demo: $(STAMP)
	$(PY) -m compression demo --out $(DEMO)

test: $(STAMP)
	$(PY) -m pytest -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

ENGINE ?= torch
PORT   ?= 8000
serve: demo
	$(PY) -m server --model $(DEMO)/teacher --engine $(ENGINE) --port $(PORT)

bench-scorer: demo
	$(PY) benchmarks/scorer_vs_naive.py --model $(DEMO)/teacher --json artifacts/bench/scorer_vs_naive.json

evaluate: demo
	$(PY) -m compression evaluate --model $(DEMO)/teacher --data $(DEMO)/data --split test --json

clean:
	rm -rf artifacts .pytest_cache
