# Two entry points on a fresh machine: `make demo` and `make test`.
# Both create the virtual environment .venv they need.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo_output

.PHONY: demo test venv bench clean

$(BIN)/hamuco: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(BIN)/hamuco

venv: $(BIN)/hamuco

demo: venv
	$(BIN)/hamuco demo --out $(DEMO)

test: venv
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python bench/synth.py

clean:
	rm -rf $(DEMO) build *.egg-info
