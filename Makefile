# Two commands set everything up on a fresh machine with Python 3.11+ and make:
#   make run   starts the receiver with the example handlers
#   make test  runs every check: ruff, mypy, pytest, and a strict build of the docs site
#   make docs  builds the docs site (docs/, mkdocs.yml) into site/; make docs-serve serves it with live reload
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint docs docs-serve bench clean

# Material prints a notice about its successor on every build; the build itself is what we check.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs

$(STAMP): pyproject.toml
	@echo "Installing montra-webhooks and its dev tools into $(VENV)/ (first run, or pyproject.toml changed; about 30 s)..."
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/montra-hooks serve --app examples.handlers:hooks --inspect

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(MKDOCS) build --strict --quiet
	$(BIN)/pytest

docs: $(STAMP)
	$(MKDOCS) build --strict

docs-serve: $(STAMP)
	$(MKDOCS) serve

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) site .montra-hooks montra-events.db montra-events.db-wal montra-events.db-shm
