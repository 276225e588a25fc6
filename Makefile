# The two commands of the README, and the pieces they are made of.
# `make demo`: set up, then run the whole daily pipeline end to end on generated logs.
# `make test`: set up, then run the test suite (what CI runs).
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PYSPARK_PYTHON := $(CURDIR)/$(PY)
export PYSPARK_DRIVER_PYTHON := $(CURDIR)/$(PY)

.PHONY: setup demo test test-fast bench doctor

setup:
	@bash scripts/setup.sh

doctor: setup
	@$(PY) -m deepfm doctor

demo: setup
	@$(PY) pipelines/daily.py demo

test: setup
	@$(PY) -m pytest

test-fast: setup
	@$(PY) -m pytest -m "not slow"

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done
