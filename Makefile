# Each target works on a fresh machine with nothing but Python: `install` makes .venv itself.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test clean

install: $(VENV)/.installed

# torch first, pinned, so that pip never resolves a different (multi-GB CUDA) build for us.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: install
	$(BIN)/resnet demo --out runs/demo

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
