# unmask — the README's commands. Every target installs what it needs first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
DEMO_MODEL ?= models/unmask-tiny-random

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev,plot,serve]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	test -f $(DEMO_MODEL)/config.json || $(BIN)/unmask init $(DEMO_MODEL) --preset tiny --seed 0
	$(BIN)/unmask generate $(DEMO_MODEL) "def fibonacci(n):" --max-new-tokens 48 --steps 48 \
		--alg entropy --temperature 0.2 --top-p 0.95 --seed 0

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

bench: $(STAMP)
	$(BIN)/python bench/sampler.py
	$(BIN)/python bench/sandbox.py
	$(BIN)/python bench/train.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
