# The two commands of the README:
#   make run    - set up what is missing, then run the log on http://127.0.0.1:8080
#                 (data in ./meterlog-data; `meterlog demo` still shows the tlog core offline)
#   make test   - set up what is missing, then run every check and the whole test suite
# Everything else here is what those two need.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench lock clean

run: $(STAMP)
	$(BIN)/meterlog serve

test: $(STAMP)
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

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis demo
