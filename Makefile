# The two commands of the README: `make demo` and `make test`. Both create .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo reproduce test lint format clean bench-serve

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU wheel first: a range left open would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m jobs.pipeline --config configs/demo.yaml

# The full four-mode comparison, two epochs (about 3 hours on 2 CPU cores).
reproduce: $(STAMP)
	$(BIN)/python -m jobs.pipeline --config configs/reproduce.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# The endpoint's load test against in-process encode and infinity-emb (docs/PERFORMANCE.md). infinity-emb
# pins numpy < 2 and sentence-transformers < 4, so it gets its own environment.
INFINITY := .venv-infinity
$(INFINITY)/.installed:
	test -d $(INFINITY) || $(PY) -m venv $(INFINITY)
	$(INFINITY)/bin/pip install --quiet torch==2.13.0 'infinity-emb[server,torch]==0.0.78'
	touch $@

bench-serve: $(STAMP) $(INFINITY)/.installed
	$(BIN)/python bench/serve_load.py --infinity $(INFINITY)/bin/infinity_emb \
		--out bench/results/serve_load-cpu.json

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf runs .pytest_cache
