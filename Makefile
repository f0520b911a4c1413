# The two commands a newcomer needs (as root): `make test` and `make demo`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo deps venv lint unit labtests vmtests clean

test: deps venv lint
	$(BIN)/pytest tests/unit tests/lab tests/test_vm_suite.py

# A live VRRP failover on the built-in lab, measured from a client; everything torn down after.
demo: deps venv
	$(BIN)/python -m lab.demo

deps:
	./scripts/install-deps

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check director realserver lab tests
	$(BIN)/ruff format --check director realserver lab tests
	$(BIN)/mypy director realserver lab

unit: venv
	$(BIN)/pytest tests/unit

labtests: deps venv
	$(BIN)/pytest tests/lab

vmtests: deps venv
	$(BIN)/pytest tests/test_vm_suite.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
