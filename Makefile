# One entry point for people and CI. `make quickstart` and `make test` set up
# everything they need on a fresh machine (see README).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup system-deps quickstart test bench clean

setup: $(VENV)/.installed

# torch first and exactly 2.13.0: it is the CPU build on disk here; any other torch
# requirement pulls gigabytes of CUDA packages.
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	$(VENV)/bin/autosafe model fetch
	touch $@

quickstart: setup
	$(VENV)/bin/autosafe run

# Debian packages the tests use: chromium for the browser tests of the Prefect UI and the
# evaluation report, bubblewrap for the sandboxed terminal evaluation.
SYSTEM_PACKAGES := chromium chromium-driver bubblewrap
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

system-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v bwrap >/dev/null \
	  || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $(SYSTEM_PACKAGES); }

test: setup system-deps
	$(PY) -m pytest

clean:
	rm -rf $(VENV) autosafe-data
