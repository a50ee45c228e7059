# The two commands of README: `make run` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
PY ?= $(shell bash scripts/pick-python.sh)
VENV := .venv
BIN := $(VENV)/bin
SRC_DIRS := src tests bench fuzz
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test venv install peers lint pytest bench clean

$(BIN)/python:
	@test -n "$(PY)" || { echo "no usable Python >= 3.11 (scripts/pick-python.sh)" >&2; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip setuptools wheel

# Dependencies (runtime + test) are installed again only when pyproject.toml changes.
$(VENV)/.deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check ".[test,fast]"
	touch $@

venv: $(VENV)/.deps

# A normal (non-editable) install: pip compiles the .pyc files, so start-up is not paid again
# at every run (the environment sets PYTHONDONTWRITEBYTECODE=1).
install: venv
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation --force-reinstall .
	$(BIN)/python -m sipalive.cli.launcher $(BIN) >/dev/null

# Real peers (SIPp, sipsak, Kamailio + TLS, baresip, tshark, hyperfine, iptables, conntrack).
peers:
	bash scripts/install-peers.sh

run: install
	bash scripts/run-demo.sh

lint: venv
	$(BIN)/ruff check $(SRC_DIRS)
	$(BIN)/ruff format --check $(SRC_DIRS)
	$(BIN)/mypy --strict src

pytest: install
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

test: peers install lint pytest

bench: install peers
	bash bench/run-all.sh

clean:
	rm -rf $(VENV) build src/*.egg-info var
