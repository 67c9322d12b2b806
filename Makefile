# unmask — the README's commands. Every target installs what it needs first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
SANDBOX_STAMP := $(VENV)/.sandbox-deps
DEMO_MODEL ?= models/unmask-small

.PHONY: setup sandbox-deps demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev,plot,serve]'
	touch $(STAMP)

setup: $(STAMP)

# Best effort, tried once per venv (delete the stamp to retry): bubblewrap gives the sandbox its namespaces.
# Without it the sandbox and its tests run in the rlimits fallback, which works on its own.
$(SANDBOX_STAMP): | $(STAMP)
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) >/dev/null 2>&1; } || \
	  echo "note: bubblewrap not installed; the sandbox runs in its rlimits fallback (apt-get install -y bubblewrap)"
	@touch $@

sandbox-deps: $(SANDBOX_STAMP)

demo: $(STAMP)
	mkdir -p runs
	$(BIN)/unmask generate $(DEMO_MODEL) --prompt-file examples/heldout_prompt.py --tests examples/heldout_tests.py --trace runs/demo-trace.json
	$(BIN)/unmask eval $(DEMO_MODEL) --benchmark synthetic --synthetic-tasks 24 --out runs/demo-eval

test: $(STAMP) $(SANDBOX_STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

bench: $(STAMP)
	$(BIN)/python bench/sampler.py
	$(BIN)/python bench/sandbox.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/decode.py --model $(DEMO_MODEL)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
