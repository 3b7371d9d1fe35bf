# Developer entry points. GNU make; recipes use bash.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
BIN := $(VENV)/bin
# The interpreter a new $(VENV) is made with (default: the first of python3, python3.13, python3.12, python3.11 that is >= 3.11).
PYTHON ?=
# Exact versions and hashes of everything installed, for CPython 3.11-3.13 on any platform.
LOCK := requirements/lock.txt
# What `make lock` passes uv: upgrade every pin by default; `LOCK_UPGRADE='--upgrade-package NAME'`
# upgrades one, `LOCK_UPGRADE=` only follows the ranges changed in pyproject.toml.
LOCK_UPGRADE ?= --upgrade
LOCK_COMPILE = $(BIN)/uv pip compile pyproject.toml requirements/build.in --extra dev --universal \
	--python-version 3.11 --generate-hashes --custom-compile-command 'make lock' --quiet
PIP := $(BIN)/python -m pip --disable-pip-version-check
# Extra arguments for `loyalty bench` / pytest, e.g. `make bench ARGS='--duration 30'`.
ARGS ?=

.PHONY: help install lock lock-check run test browser lint bench clean distclean

help:
	@echo "make run    - install into $(VENV) if needed, then 'loyalty serve' (embedded PostgreSQL + NATS"
	@echo "              under .loyalty/ unless LOYALTY_DATABASE_URL / LOYALTY_NATS_URL are set)"
	@echo "make test   - run the test suite (embedded servers unless LOYALTY_TEST_*_URL are set)"
	@echo "make browser - install Debian's chromium for the console's browser test (as root; make test does it)"
	@echo "make lint   - ruff, mypy and the import contracts (the layers)"
	@echo "make lock   - upgrade $(LOCK) (every pin, or LOCK_UPGRADE='--upgrade-package NAME'); review, test, commit"
	@echo "make lock-check - fail if $(LOCK) does not satisfy pyproject.toml"
	@echo "make bench  - load generator against a running service (ARGS='...' passes options)"
	@echo "make clean  - remove caches and build output (keeps $(VENV) and .loyalty/ data)"
	@echo "make distclean - clean, and remove $(VENV) and .venv-3.* too (still keeps .loyalty/ data)"

# Installs exactly the lock (pins and hashes), then the project itself without resolving anything.
# The stamp is rebuilt whenever the lock or pyproject.toml (entry points, package data) changes.
$(VENV)/.installed: $(LOCK) requirements/build.in pyproject.toml
	@set -e; \
	if [ ! -x "$(BIN)/python" ]; then \
		py="$(PYTHON)"; \
		for candidate in python3 python3.13 python3.12 python3.11; do \
			[ -z "$$py" ] || break; \
			if command -v "$$candidate" >/dev/null 2>&1 && \
			   "$$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
				py="$$candidate"; \
			fi; \
		done; \
		if [ -z "$$py" ]; then echo "Python 3.11 or newer is required (tried python3, python3.1[123])" >&2; exit 1; fi; \
		echo "creating $(VENV) with $$py"; \
		"$$py" -m venv "$(VENV)"; \
	fi
	$(PIP) install --quiet --require-hashes -r $(LOCK)
	@# No build isolation: the project is built by the locked setuptools, not whatever is newest.
	@# The warning silenced is setuptools' notice that the flat layout's folders shadow the install,
	@# which is the point of an editable install here.
	PYTHONWARNINGS='ignore:Editable installation' $(PIP) install --quiet --no-deps --no-build-isolation -e .
	@touch $@

install: $(VENV)/.installed

lock: $(VENV)/.installed
	$(LOCK_COMPILE) $(LOCK_UPGRADE) --output-file $(LOCK)
	@echo "$(LOCK) written: review 'git diff $(LOCK)', run make test, commit it"

# The lock's pins must be what pyproject.toml resolves to when the lock's own pins are preferred
# (hashes are left out of the comparison: a wheel uploaded later for a pinned version is no drift).
lock-check: $(VENV)/.installed
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	cp $(LOCK) "$$tmp/lock.txt"; \
	$(LOCK_COMPILE) --output-file "$$tmp/lock.txt"; \
	if ! diff -u <(grep -E '^[^ #]' $(LOCK)) <(grep -E '^[^ #]' "$$tmp/lock.txt"); then \
		echo "$(LOCK) does not satisfy pyproject.toml: run 'make lock LOCK_UPGRADE='" >&2; exit 1; \
	fi

run: $(VENV)/.installed
	$(BIN)/loyalty serve $(ARGS)

test: $(VENV)/.installed browser
	$(BIN)/python -m pytest $(ARGS)

# The console's browser test drives Debian's Chromium (ADR 17): installed here when missing and
# this is root with apt-get (as in CI); otherwise said, and that test is skipped unless required
# (LOYALTY_REQUIRE_BROWSER=1, as .ci/run sets it: then it fails).
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the console's browser test"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "NOTICE: installing chromium failed (no network to Debian's mirrors?): the console's browser test will say so"; \
	else \
		echo "NOTICE: /usr/bin/chromium is missing and this is not root: the console's browser test" \
		     "will be skipped (as root: make browser)"; \
	fi

lint: $(VENV)/.installed
	$(BIN)/ruff check . && $(BIN)/mypy && $(BIN)/lint-imports --no-cache

bench: $(VENV)/.installed
	$(BIN)/loyalty bench $(ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . \( -path ./$(VENV) -o -path './.venv-3.*' \) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .venv-3.*
