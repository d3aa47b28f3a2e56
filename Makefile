# slimrank: two commands on a fresh clone.
#   make serve  -> install, build the demo model if missing, serve it on :8000
#   make test   -> install, run the test suite
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= artifacts/demo
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-fast lint format bench-scorer evaluate clean serve compress \
	verify-compressed movielens

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

ENGINE ?= auto
PORT   ?= 8000
serve: demo
	$(PY) -m server --model $(DEMO)/teacher --engine $(ENGINE) --port $(PORT)

bench-scorer: demo
	$(PY) benchmarks/scorer_vs_naive.py --model $(DEMO)/teacher --json artifacts/bench/scorer_vs_naive.json

evaluate: demo
	$(PY) -m compression evaluate --model $(DEMO)/teacher --data $(DEMO)/data --split test --json

# The compression pipeline on the demo teacher (recipes/demo.yaml) into $(DEMO)/compressed/:
# distill -> OSSCAR prune -> re-distill -> FP8/INT8/INT4, the recipe's ablations, and
# report.{json,md,png}. Resumable: finished stages are reused. COMPRESS_FLAGS= skips ablations.
RECIPE         ?= recipes/demo.yaml
COMPRESS_FLAGS ?= --ablations
compress: demo
	$(PY) -m compression run $(RECIPE) $(COMPRESS_FLAGS)

# Serve every compressed checkpoint with both engines and compare scores (serving_check.json).
verify-compressed: $(STAMP)
	$(PY) -m compression verify --output $(DEMO)/compressed --data $(DEMO)/data

# MovieLens-100k end to end into $(ML)/ (docs/data.md): build and check the data (from the
# recbole package), train a teacher on it, score the LightGBM baseline ($(ML)/data/baseline.json),
# run recipes/movielens.yaml and write $(ML)/compressed/report.{json,md,png}. Each step reuses
# what is already built for the same inputs.
ML ?= artifacts/movielens
# the prompt: items carry the train split's popularity hint (docs/data.md)
ML_DATA_FLAGS ?= --popularity
movielens: $(STAMP)
	$(PY) -m compression data movielens --out $(ML)/data $(ML_DATA_FLAGS)
	$(PY) -m compression data check $(ML)/data --tokenizer $(ML)/data/tokenizer
	$(PY) -m compression teacher --data $(ML)/data --out $(ML)/teacher --preset movielens
	$(PY) -m compression baseline --data $(ML)/data
	$(PY) -m compression run recipes/movielens.yaml --data $(ML)/data --teacher $(ML)/teacher \
		--output $(ML)/compressed

clean:
	rm -rf artifacts .pytest_cache

# Load tests (loadtest/): a rate sweep against a running server (`make serve` elsewhere), and
# the engine comparison (starts its own servers; MODELS is a comma-separated list of folders).
.PHONY: loadtest loadtest-compare
LT_URL   ?= http://127.0.0.1:$(PORT)
LT_RATES ?= 1,2,4,6,8,12
LT_SLO   ?= 500
MODELS   ?= $(DEMO)/teacher
loadtest: $(STAMP)
	$(PY) -m loadtest sweep --url $(LT_URL) --rates $(LT_RATES) --duration 30 --slo-p99-ms $(LT_SLO) \
		--json artifacts/loadtest/sweep.json

loadtest-compare: demo
	$(PY) -m loadtest compare --models $(MODELS) --requests 24 --distinct 64 \
		--json artifacts/loadtest/compare.json
