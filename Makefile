# The two commands of the README:
#   make run    - set up what is missing, then run the log on http://127.0.0.1:8080
#                 (data in ./meterlog-data; `meterlog demo` still shows the tlog core offline)
#   make test   - set up what is missing, then run every check and the whole test suite
#                 (including a rebuild of the anchor contract, compared with the committed one,
#                 and the portal's browser tests in Debian's Chromium)
# Everything else here is what those two need.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
# The portal's browser tests drive Debian's Chromium through playwright's Python package;
# playwright must never download a browser of its own.
CHROMIUM := /usr/bin/chromium
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.PHONY: run test lint bench lock clean contract contract-check

run: $(STAMP) $(NODE_STAMP) $(CHROMIUM)
	$(BIN)/meterlog serve

test: $(STAMP) $(NODE_STAMP) $(CHROMIUM)
	node anchor/solidity/build.cjs --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

# Benchmarks are never part of the test suite. merkletools is only a baseline and does not
# install with its dependencies on Python 3.11 (pysha3 fails to build), hence --no-deps.
bench: $(STAMP)
	$(BIN)/pip install --quiet --no-deps merkletools==1.0.3
	$(BIN)/python bench/merkle.py

# Re-pin every dependency after editing pyproject.toml.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra all --extra dev --python-version 3.11 \
		--universal --quiet -o requirements/lock.txt

# The virtual environment, with exactly the pinned versions, rebuilt when the pins change.
$(STAMP): pyproject.toml requirements/lock.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "meterlog needs Python >= 3.11 as $(PYTHON)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/lock.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The Node tools of anchoring, exactly as package-lock.json pins them: solc (the anchor
# contract's compiler) and anvil (the local Ethereum chain the tests start). anvil's binary
# comes in its platform package from the npm registry, so no install script is needed.
$(NODE_STAMP): package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# Debian's Chromium, for the portal's browser tests (and to open the portal with): from apt,
# with sudo when not root. Installed once; its path is what tests/portal launches.
$(CHROMIUM):
	$(SUDO) apt-get install -y chromium || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }

# Rebuild the anchor contract's ABI and bytecode from its source (then commit them), or
# check that the committed ones are exactly what the pinned compiler builds (make test does).
contract: $(NODE_STAMP)
	node anchor/solidity/build.cjs

contract-check: $(NODE_STAMP)
	node anchor/solidity/build.cjs --check

clean:
	rm -rf $(VENV) node_modules .mypy_cache .pytest_cache .ruff_cache .hypothesis demo
