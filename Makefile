# DataBright — the same commands on a laptop and in CI.
#   make demo   set up .venv from uv.lock, then run one full exchange period on the embedded defaults
#   make test   set up .venv, then lint (ruff), type-check (mypy) and run the whole test suite
#   make bench  run the benchmarks in benchmarks/ and write JSON results
#   make lint   ruff + mypy only
#   make repro  `dvc repro`: the demo period as a DVC pipeline (dvc.yaml, params.yaml)

SHELL := /bin/bash
PYTHON ?= python3.11
UV_VERSION := 0.13.9
VENV := .venv
BIN := $(VENV)/bin

# uv from PATH if present, otherwise a private copy bootstrapped with pip into .tools/.
UV := $(or $(shell command -v uv 2>/dev/null),.tools/bin/uv)
# torch's CPU wheel lives in pip's find-links folder; uv only looks there when told to.
FIND_LINKS := $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^[^=]*find-links='\(.*\)'/\1/p" | head -n 1)
UV_SYNC := $(UV) sync --frozen --python $(PYTHON) $(if $(FIND_LINKS),--find-links $(FIND_LINKS))

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: demo test lint bench repro clean

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

$(VENV)/.synced: uv.lock pyproject.toml | $(UV)
	$(UV_SYNC)
	@touch $@

demo: $(VENV)/.synced
	$(BIN)/databright demo --fresh

lint: $(VENV)/.synced
	$(BIN)/ruff check databright flows enclave_tasks tests benchmarks
	$(BIN)/ruff format --check databright flows enclave_tasks tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

repro: $(VENV)/.synced
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# pyDVL 0.10 (the valuation peer) needs numpy < 2, so it gets its own environment.
PEERS := .venv-peers
$(PEERS)/.synced: | $(UV)
	$(UV) venv $(PEERS) --python $(PYTHON)
	$(UV) pip install --python $(PEERS)/bin/python "pydvl==0.10.0" "numpy<2" scikit-learn
	@touch $@

bench: $(VENV)/.synced $(PEERS)/.synced
	$(BIN)/python -m benchmarks
	$(BIN)/python -m benchmarks.valuation
	$(BIN)/python -m benchmarks.inrun
	$(BIN)/python -m benchmarks.training
	$(BIN)/python -m benchmarks.settlement --statements-full-max 2000000

clean:
	rm -rf $(VENV) $(PEERS) .tools .databright .databright-repro .pytest_cache .mypy_cache .ruff_cache
