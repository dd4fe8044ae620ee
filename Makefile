# One task runner. `make serve` and `make test` work on a fresh clone: they create .venv,
# install what they need, and install the models from the mirror (../shared/models by default,
# or VIGIL_MODEL_MIRROR=DIR|URL).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup setup-dev serve test lint proto proto-check bench models clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## install vigil and its development tools into .venv

models: setup  ## install and verify the model files
	$(BIN)/vigil models install

serve: models  ## install everything and run the server (gRPC :50051, metrics :9095)
	$(BIN)/vigil serve

test: models  ## install everything and run the test suite
	$(BIN)/python -m pytest

lint: setup  ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

proto: setup  ## regenerate the Python code of protos/vigil/v1/*.proto
	PATH=$(BIN):$$PATH bash scripts/gen_protos.sh

proto-check: proto  ## fail if the committed generated code is stale
	git diff --exit-code -- protos/ || (echo "generated code is stale: run make proto and commit" && exit 1)
	test -z "$$(git status --porcelain -- protos/)" || (git status --short -- protos/ && echo "untracked generated files" && exit 1)

bench: models  ## the benchmark harness (takes minutes); ARGS="--quick" for a smoke run
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/vigil bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
