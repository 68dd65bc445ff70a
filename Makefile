# Set-up is part of every target: the virtualenv lives outside the clone, in a cache folder keyed by
# a hash of the dependency lists in pyproject.toml, so every clone (CI included) reuses it and a
# dependency change builds a fresh one. torch/torchvision come from this machine's local wheels.
SHELL := /bin/bash
PYTHON ?= python3
CACHE_DIR ?= $(HOME)/.cache/midtrain
DEPS_HASH := $(shell sed -n '/^dependencies = \[/,/^\]/p;/^test = /p' pyproject.toml | sha256sum | cut -c1-12)
VENV ?= $(CACHE_DIR)/venv-$(DEPS_HASH)
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv test demo bench clean-venv

venv: $(VENV)/.complete
	@$(PY) -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || $(PY) -m pip install --no-deps --no-build-isolation -e .

$(VENV)/.complete:
	@echo "creating virtualenv $(VENV) (first time only, ~2 min)"
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[test]'
	touch $@

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

bench: venv
	$(PY) bench/discovery.py

clean-venv:
	rm -rf $(VENV)

bench-loader: venv
	$(PY) bench/loader.py

demo: venv
	$(PY) -m midtrain demo --out $(or $(DEMO_OUT),out/demo-$(shell date +%Y%m%d-%H%M%S))
