# The two commands of the README: `make demo` (set up and run the main job on the bundled
# demo data) and `make test`. CI (.ci/run) runs `make test` and `make test-slow`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,postgres]'
	touch $(STAMP)

demo: setup
	$(BIN)/lifecast demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -m "not slow"

# Slower checks (real-data backtests, the notebook, a real `bentoml serve`); run in CI too.
test-slow: setup
	$(BIN)/pytest -m slow; status=$$?; [ $$status -eq 0 ] || [ $$status -eq 5 ]

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/features.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info
