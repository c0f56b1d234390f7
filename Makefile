# ftlab: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench golden fixtures clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ftlab demo

test: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/ftlab bench --json bench.json

# Rewrite the golden transcripts (tests/golden/) after a deliberate change of the output; review the diff.
golden: $(STAMP)
	$(BIN)/python -m tests.transcripts

# Rebuild the committed fixture objects (installs the cross compilers when missing).
fixtures:
	bash fixtures/build.sh

clean:
	rm -rf $(VENV) build *.egg-info bench.json
