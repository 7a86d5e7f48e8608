# Two commands do all set-up on a fresh machine:
#   make demo   # venv + install + the pipeline on scikit-learn's bundled digits
#   make test   # venv + install + the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# On machines without an NVIDIA GPU, install the CPU build of torch first so that
# the `torch>=2.4` requirement does not pull a multi-GB CUDA build. GPU users: TORCH_SPEC= make ...
TORCH_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,torch==2.13.0)
OUT ?= aepipe-demo

.PHONY: setup demo test test-fast test-slow lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if [ -n "$(TORCH_SPEC)" ]; then echo "installing $(TORCH_SPEC) (CPU build)"; $(BIN)/pip install -q "$(TORCH_SPEC)"; fi
	$(BIN)/pip install -q -e '.[test,restore]'
	touch $@

demo: setup
	$(BIN)/aepipe demo --out $(OUT)

# the fast set, then the slow set (real Prefect server, kill -9, DDP, Dask, benchmarks' tiny forms);
# lint and type check first, as CI does
test: setup lint
	$(BIN)/python -m pytest -q
	$(BIN)/python -m pytest -q -m slow --durations=10

test-fast: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow --durations=10

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
