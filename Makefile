# One command each: `make demo` (set up + run the demo), `make test` (set up + run the tests).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test lint demo clean

setup: $(VENV)/.installed

# Re-installs when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build (750 MB) instead of a multi-GB CUDA one.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[training,stack,dev]"
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

demo: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

clean:
	-$(BIN)/slmops stack down
	rm -rf $(VENV) .slmops
