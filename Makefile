# etrn-bridge: the two commands of the README's quick start, and their parts.
#   make run    set up .venv and run the bridge on examples/etrn-bridge.yaml
#   make test   set up .venv and run every check and test (real MTAs when root)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= examples/etrn-bridge.yaml

.PHONY: run test lint typecheck unit bench venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	VENV=$(VENV) bash scripts/milter-extra.sh
	touch $@

run: venv
	$(BIN)/etrn-bridge check -c $(CONFIG)
	$(BIN)/etrn-bridge serve -c $(CONFIG)

test: venv
	VENV=$(VENV) bash scripts/test.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q tests/unit

bench: venv
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache var
