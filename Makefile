# Set-up and entry points. Every target creates .venv on first use and reinstalls only when
# pyproject.toml changes (stamp files inside .venv), so a fresh clone needs nothing but python3.11.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# torch goes in first, pinned: this release is available as a CPU wheel, whereas letting pip resolve
# the project's `torch>=2.4` on its own pulls a multi-GB CUDA build. A CUDA user can override it,
# e.g. `make test TORCH="torch==2.13.0 --index-url <their wheel index>"`.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: test demo lint venv

# build-kernels first: the native CPU kernels are built (or found) once, loudly, before anything
# uses them; with CI=true a failed build fails the run.
test: $(VENV)/.stamp-dev
	$(BIN)/gemma-mtp build-kernels
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# scripts/demo.py runs the main job end to end on the embedded default pair.
demo: $(VENV)/.stamp-base
	$(BIN)/gemma-mtp build-kernels
	$(BIN)/python scripts/demo.py

# Markdown is left out of the format check: its code blocks are illustrations, aligned by hand.
lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check --extend-exclude '*.md' .

venv: $(VENV)/.stamp-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.stamp-torch: | $(BIN)/python
	$(BIN)/python -m pip install $(TORCH)
	touch $@

# Editable installs, so that source edits are live without re-running pip. The base install has the
# server and bench extras: after `make demo` every command in the README works.
$(VENV)/.stamp-base: pyproject.toml $(VENV)/.stamp-torch
	$(BIN)/python -m pip install -e '.[server,bench]'
	touch $@

$(VENV)/.stamp-dev: pyproject.toml $(VENV)/.stamp-torch
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@
