# ftlab: `make demo`, `make test` and `make check` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test check lint format-check types coverage bench golden fixtures modules browser clean

$(STAMP): pyproject.toml emulator/native/blockhook.c tracers/output/native/textlines.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ftlab demo

# The whole suite (slow sweeps included) on every core; `$(BIN)/pytest -m 'not slow'` skips the sweeps.
test: $(STAMP) modules
	$(BIN)/pytest

# What CI runs: lint, format, types, then the whole suite under coverage with its floor.
# `make -k check` reports every step even when one fails.
check: lint format-check types coverage

lint: $(STAMP)
	$(BIN)/ruff check .

format-check: $(STAMP)
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy

# -p no:ftlab: the installed pytest plugin would import the lab before coverage starts (its module-level
# lines would count as missed); examples/conftest.py loads it instead, once coverage is on.
coverage: $(STAMP) modules
	$(BIN)/pytest -p no:ftlab --cov --cov-report=term

bench: $(STAMP)
	$(BIN)/ftlab bench --json bench.json

# Rewrite the golden transcripts (tests/golden/, examples/goldens/) after a deliberate change of the output; review the diff.
golden: $(STAMP)
	$(BIN)/python -m tests.transcripts
	$(BIN)/pytest examples -n 0 -q --ftlab-update-goldens

# Rebuild the committed fixture objects (installs the cross compilers when missing).
fixtures:
	bash fixtures/build.sh

# Download the Debian kernel modules tests/test_debian_modules.py runs; a failure only makes those tests skip.
modules:
	-bash fixtures/modules.sh

# Debian's Chromium for tests/test_report_browser.py (which skips without it); needs root and Debian's registry.
browser:
	test -x /usr/bin/chromium || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }

clean:
	rm -rf $(VENV) build *.egg-info bench.json .coverage .coverage.* .mypy_cache .ruff_cache
