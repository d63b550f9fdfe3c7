# stssl developer commands. Each target sets up .venv with pip when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stssl-installed
# torch is installed first, on its own: on the project's machines these releases install from local disk.
# Elsewhere override, e.g. `make test TORCH_SPEC="torch torchvision"` (pyproject.toml keeps ranges, not pins).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev,torchcodec

.PHONY: demo test test-fast lint bench clean setup

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/stssl-train

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check stssl tests tools
	$(BIN)/mypy stssl

bench: $(STAMP)
	@mkdir -p .bench
	$(BIN)/python tools/bench_decode.py --json .bench/decode.json
	$(BIN)/python tools/bench_train.py --json .bench/train.json

clean:
	rm -rf runs .bench .pytest_cache .ruff_cache .mypy_cache
