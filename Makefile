# The two commands of the README, and the pieces they are made of.
# `make demo`: set up, then run the whole daily pipeline end to end on generated logs.
# `make test`: set up (and the test set-up: an S3 server and the S3A jars, cached once), then lint,
# type-check and run the test suite (what CI runs).
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PYSPARK_PYTHON := $(CURDIR)/$(PY)
export PYSPARK_DRIVER_PYTHON := $(CURDIR)/$(PY)

.PHONY: setup setup-test demo test test-fast lint typecheck bench bench-scale doctor

setup:
	@bash scripts/setup.sh

# What only the test suite needs (tests/test_cluster.py): not part of `make demo`'s set-up.
setup-test: setup
	@bash scripts/setup_test.sh

doctor: setup
	@$(PY) -m deepfm doctor

demo: setup
	@$(PY) -m deepfm pipeline demo

lint: setup
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .

typecheck: setup
	@$(VENV)/bin/mypy

test: setup-test lint typecheck
	@$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder

# Unit tests only: DEEPFM_FAST_TESTS makes a test that would start Spark fail instead.
test-fast: setup
	@DEEPFM_FAST_TESTS=1 $(PY) -m pytest -m "not slow"

# bench_vocab_scale (>= 50M vocabulary entries: long on 2 cores) runs alone: make bench-scale.
bench: setup
	@for b in benchmarks/bench_*.py; do [ $$b = benchmarks/bench_vocab_scale.py ] || { echo "== $$b"; $(PY) $$b || exit 1; }; done

bench-scale: setup
	@$(PY) benchmarks/bench_vocab_scale.py
