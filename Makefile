# Two commands set everything up on a machine that has python3 (3.11+) and make:
#   make run    install into .venv, then run the headline experiment
#   make test   install into .venv, then ruff, mypy and the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?= --recv-delay 0.001
# The package's sources: a new or renamed module re-links the editable install.
SOURCES := $(shell find demo analysis -name '*.py' -o -name py.typed 2>/dev/null)

.PHONY: run test lint bench clean install

# The dependencies, once per pyproject.toml: read from it and installed alone (bufdemo
# itself is installed once, below, not also built here as a plain editable install).
$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
		print(*p["dependencies"], *p["optional-dependencies"]["dev"], sep="\n")' \
		> $(VENV)/requirements.txt
	$(BIN)/python -m pip install --quiet -r $(VENV)/requirements.txt
	@touch $@

# bufdemo itself, as a strict editable install: a tree of links named as the package
# is imported (bufdemo, bufdemo.analysis, ...), which mypy can follow; edits to a module
# show at once, a new module after the next make.
$(BIN)/bufdemo: $(VENV)/.deps $(SOURCES)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . \
		--config-settings editable_mode=strict
	@touch $@

install: $(BIN)/bufdemo

run: install
	$(BIN)/bufdemo run $(ARGS)

lint: install
	$(BIN)/ruff check demo analysis tests bench notebooks
	$(BIN)/ruff format --check demo analysis tests bench notebooks/build_walkthrough.py
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# Benchmarks. Each prints ratios/rates measured in one run.
bench: install
	$(BIN)/python -m bench.sender
	$(BIN)/python -m bench.pacing --default-run
	$(BIN)/python -m bench.scale
	$(BIN)/python -m bench.receiver
	$(BIN)/python -m bench.cli
	$(BIN)/python -m bench.floor
	$(BIN)/python -m bench.floor --interleave
	$(BIN)/python -m bench.noise
	$(BIN)/python -m bench.sampler
