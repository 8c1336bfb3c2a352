# Set-up is part of every target: a fresh clone needs nothing but Python 3.11+.
PYTHON ?= python3
VENV := .venv
# The PyTorch build to install first. Override for a CUDA build, e.g. TORCH="torch>=2.3".
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: serve test test-fast lint bench-core

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet "$(TORCH)"
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/psp serve --host 127.0.0.1 --port 8000

# On pytest-xdist workers, one test file per worker at a time: one worker more than the CPUs
# this process may use (three on a two-core machine), at most four, since the real-process tests
# mostly wait on their processes and another file overlaps them well.
TEST_WORKERS ?= $(shell python3 -c 'import os; print(min(4, len(os.sched_getaffinity(0)) + 1))')

test: $(STAMP)
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# The tests that start no real `psp` process, server or container, with a shorter stateful fuzz:
# a quick check while editing.
test-fast: $(STAMP)
	PSP_FUZZ_JOURNEYS=40 PSP_FUZZ_MIN_REQUESTS=1500 $(VENV)/bin/python -m pytest -n auto \
		--maxprocesses 4 -m "not real_process" -p no:cacheprovider -q

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

bench-core: $(STAMP)
	$(VENV)/bin/python benchmarks/core_speed.py
