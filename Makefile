# Set-up and the two commands of the README's quick start.
#
# `pip install torch==2.13.0` takes a local CPU wheel where the machine offers one and the
# CUDA build from PyPI on a GPU machine; pyproject.toml itself declares torch unpinned so any
# build of torch >= 2.8 satisfies it. Override with `make TORCH=torch` for the newest release.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: setup sweep test lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

sweep: setup
	$(VENV)/bin/meo-profile sweep

# Two workers, one test file each at a time (--dist loadfile: a file's module fixtures are built
# once, and the engine tests of tests/test_executors.py share one Ray): the suite's slow tests
# wait on processes they start, which leaves a core to the other worker. Tests marked `serial`
# hold a measured time to the machine's measured peaks, which the other worker would slow: they
# run after, alone.
test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not serial"
	$(PY) -m pytest -q -m serial

lint: setup
	$(VENV)/bin/ruff check .
