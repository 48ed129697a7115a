# pyro-iterative developer entry points.
#
#   make install   create/reuse .venv, install CPU torch first, then the project in editable mode with [dev,docs]
#   make test      run the test suite on TEST_WORKERS processes (default 2; extra pytest arguments:
#                  make test PYTEST_ARGS="-k guide -x"; one process: make test TEST_WORKERS=0)
#   make demo      run the comparison (pyro-iterative compare) and print where its report is
#   make zoo       train every guide with its defaults on every model of the zoo (benchmarks/zoo.py; ZOO_ARGS="--quick")
#   make lint      ruff check .
#   make docs      build the documentation site into docs/_build/html (warnings are errors; runs the tutorials)
#   make clean     remove .venv and build/test caches
#
# Works non-interactively (CI=true, no stdin). Override the interpreter with PYTHON=/path/to/python3.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# pytest-xdist workers: the tests run one torch thread each, so one worker per core (2 on this project's machines)
TEST_WORKERS ?= 2
DEMO_ARGS ?=
DOCS_ARGS ?=
BENCH_ARGS ?=
ZOO_ARGS ?=
PIP_FLAGS ?= -q

VPY := $(VENV)/bin/python

# The install stamp is keyed on the content of pyproject.toml (and the torch pin), so a fresh clone
# (arbitrary mtimes) reuses an existing install, while any edit to pyproject.toml triggers a reinstall.
INSTALL_KEY := $(shell { echo '$(TORCH_SPEC)'; cat pyproject.toml; } 2>/dev/null | { sha256sum 2>/dev/null || shasum -a 256; } | cut -c1-16)
STAMP := $(VENV)/.installed-$(INSTALL_KEY)

export PIP_NO_INPUT := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_ROOT_USER_ACTION := ignore

.PHONY: install test demo lint docs clean venv bench zoo

install: $(STAMP)

$(VPY):
	$(PYTHON) -m venv $(VENV)

# CPU torch is installed first, so that resolving the project's dependencies never pulls a CUDA build.
$(STAMP): | $(VPY)
	rm -f $(VENV)/.installed-*
	$(VPY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(VPY) -m pip install $(PIP_FLAGS) "$(TORCH_SPEC)"
	$(VPY) -m pip install $(PIP_FLAGS) -e ".[dev,docs]"
	touch $@

venv: $(VPY)

test: install
	$(VPY) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/pyro-iterative compare $(DEMO_ARGS)

bench: install
	$(VPY) benchmarks/run_all.py $(BENCH_ARGS)

zoo: install
	cd benchmarks && $(abspath $(VPY)) zoo.py $(ZOO_ARGS)

lint: install
	$(VENV)/bin/ruff check .

# -W: warnings are errors; -n: every cross-reference must resolve; --keep-going: report them all. The tutorials run
# during the build (sphinx-gallery), with one torch thread. Extra sphinx-build arguments go through DOCS_ARGS.
docs: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(VPY) -m sphinx -W -n --keep-going -b html $(DOCS_ARGS) docs docs/_build/html

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache *.egg-info docs/_build docs/auto_tutorials docs/sg_execution_times.rst
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
