# One task runner. `make serve` and `make test` work on a fresh clone: they create .venv,
# install what they need, and install the models from the mirror (../shared/models by default,
# or VIGIL_MODEL_MIRROR=DIR|URL).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup serve demo test lint proto proto-check bench docs models wheels clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Both distributions, editable: vigil-client (clients/) first satisfies the server's pin on it.
$(STAMP): pyproject.toml clients/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ./clients -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## install vigil and vigil-client (editable) and the development tools into .venv

models: setup  ## install and verify the model files
	$(BIN)/vigil models install

# Local use: plaintext on loopback only, and an ADMIN key made on first start (var/admin.key).
# In production set VIGIL_TLS_CERT_FILE / VIGIL_TLS_KEY_FILE instead of VIGIL_ALLOW_PLAINTEXT.
serve: models  ## install everything and run the server (gRPC 127.0.0.1:50051, metrics :9095)
	$(BIN)/vigil admin bootstrap --if-needed --key-file var/admin.key
	VIGIL_ALLOW_PLAINTEXT=true $(BIN)/vigil serve --host 127.0.0.1

# The Web SDK demo: the service and the Web Adapter together (plaintext, loopback); open
# http://127.0.0.1:8080/demo and allow the camera. The adapter's SERVICE key is var/web-service.key.
demo: models  ## run the service and the Web Adapter with its demo page (http://127.0.0.1:8080/demo)
	$(BIN)/python -m pip install --quiet -e '.[web]'
	$(BIN)/vigil admin bootstrap --if-needed --key-file var/admin.key
	$(BIN)/vigil web --demo --with-service --admin-key-file var/admin.key

test: models  ## install everything and run the test suite
	$(BIN)/python -m pytest

lint: setup  ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/typecheck_tree.py
	$(BIN)/mypy

proto: setup  ## regenerate the Python code of protos/vigil/v1/*.proto
	PATH=$(BIN):$$PATH bash scripts/gen_protos.sh

proto-check: proto  ## fail if the committed generated code is stale
	git diff --exit-code -- protos/ || (echo "generated code is stale: run make proto and commit" && exit 1)
	test -z "$$(git status --porcelain -- protos/)" || (git status --short -- protos/ && echo "untracked generated files" && exit 1)

bench: models  ## the benchmark harness (takes minutes); ARGS="--quick" for a smoke run
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m pip install --quiet --no-deps face_recognition  # its dlib comes from dlib-bin
	$(BIN)/vigil bench $(ARGS)

wheels: setup  ## build the two wheels (vigil-client and vigil) into dist/
	rm -rf build clients/build  # setuptools reuses build/lib: a deleted module would stay in the wheel
	$(BIN)/python -m build --wheel --no-isolation --outdir dist clients
	$(BIN)/python -m build --wheel --no-isolation --outdir dist .

docs: setup  ## rewrite the configuration table in README.md from server/settings.py
	$(BIN)/python scripts/settings_table.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .typecheck dist build clients/build
