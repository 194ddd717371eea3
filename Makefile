# edgepipe: `make build` builds the packaged default model for rpi5; `make test` runs the tests.
# Both install into .venv first if needed (Python 3.11; torch pinned: an unpinned torch pulls a
# multi-GB CUDA build).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TORCH  := torch==2.13.0
TARGET ?= rpi5
OUT    ?= dist
PYTEST_ARGS ?=

.PHONY: install build test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH) -e '.[dev]'
	touch $@

build: $(STAMP)
	$(BIN)/edgepipe build --target $(TARGET) --out $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check edgepipe tests
	$(BIN)/ruff format --check edgepipe tests
	$(BIN)/mypy edgepipe

format: $(STAMP)
	$(BIN)/ruff check --fix edgepipe tests
	$(BIN)/ruff format edgepipe tests

clean:
	rm -rf $(OUT) .pytest_cache .mypy_cache .ruff_cache
