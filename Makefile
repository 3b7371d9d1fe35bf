# Developer entry points. GNU make; recipes use bash.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
BIN := $(VENV)/bin
# Extra arguments for `loyalty bench` / pytest, e.g. `make bench ARGS='--duration 30'`.
ARGS ?=

.PHONY: help install run test lint bench clean distclean

help:
	@echo "make run    - install into $(VENV) if needed, then 'loyalty serve' (embedded PostgreSQL + NATS"
	@echo "              under .loyalty/ unless LOYALTY_DATABASE_URL / LOYALTY_NATS_URL are set)"
	@echo "make test   - run the test suite (embedded servers unless LOYALTY_TEST_*_URL are set)"
	@echo "make lint   - ruff and mypy"
	@echo "make bench  - load generator against a running service (ARGS='...' passes options)"
	@echo "make clean  - remove caches and build output (keeps $(VENV) and .loyalty/ data)"
	@echo "make distclean - clean, and remove $(VENV) too (still keeps .loyalty/ data)"

# The stamp is rebuilt whenever pyproject.toml changes (new or changed dependencies).
$(VENV)/.installed: pyproject.toml
	@set -e; \
	if [ ! -x "$(BIN)/python" ]; then \
		py=""; \
		for candidate in python3 python3.13 python3.12 python3.11; do \
			if command -v "$$candidate" >/dev/null 2>&1 && \
			   "$$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then \
				py="$$candidate"; break; \
			fi; \
		done; \
		if [ -z "$$py" ]; then echo "Python 3.11 or newer is required (tried python3, python3.1[123])" >&2; exit 1; fi; \
		echo "creating $(VENV) with $$py"; \
		"$$py" -m venv "$(VENV)"; \
	fi
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/loyalty serve $(ARGS)

test: $(VENV)/.installed
	$(BIN)/python -m pytest $(ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check . && $(BIN)/mypy

bench: $(VENV)/.installed
	$(BIN)/loyalty bench $(ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
