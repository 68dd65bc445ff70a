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
# The optional extras (wandb, lm-eval) live in a second venv layered on the first (a .pth adds its
# site-packages), so the main venv stays as pyproject's dependencies say and a test can check both
# "extra installed" and "extra missing". Shared packages are pinned to the main venv's versions.
EXTRAS_HASH := $(shell sed -n '/^wandb = /p;/^eval = /p' pyproject.toml | sha256sum | cut -c1-8)
EXTRAS_VENV ?= $(CACHE_DIR)/venv-extras-$(DEPS_HASH)-$(EXTRAS_HASH)
EXTRAS_PY := $(EXTRAS_VENV)/bin/python

# The venv holds the dependencies only, never this project: every command runs this clone's code,
# first on PYTHONPATH (here for make's targets; bin/midtrain for the CLI, launchers and study jobs).
# An editable install in the shared venv ran whichever clone had installed last (issue 27, class 14).
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: venv extras hf-test test test-unit lint demo demo-full bench clean-venv

venv: $(VENV)/.complete
	@echo $(PY) > .venv-python
	@# a venv made before this rule may hold an editable install of some clone (and its `midtrain` script)
	@if [ -n "$$(ls $$($(PY) -c 'import site; print(site.getsitepackages()[0])') | grep -i '^__editable__.*midtrain\|^midtrain.*\.dist-info\|^midtrain.*egg-link')" ]; then \
	  $(PY) -m pip uninstall -y -q midtrain >/dev/null 2>&1 || true; fi

$(VENV)/.complete:
	@echo "creating virtualenv $(VENV) (first time only, ~2 min)"
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
	  print("\n".join(p["dependencies"] + p["optional-dependencies"]["test"]))' > $(VENV)/requirements.txt
	$(PY) -m pip install -q -r $(VENV)/requirements.txt
	touch $@

$(EXTRAS_VENV)/.complete: $(VENV)/.complete
	@echo "creating the extras virtualenv $(EXTRAS_VENV) (wandb, lm-eval; first time only, ~1 min)"
	rm -rf $(EXTRAS_VENV)
	$(PYTHON) -m venv $(EXTRAS_VENV)
	$(EXTRAS_PY) -m pip install -q --upgrade pip setuptools wheel
	echo "import site; site.addsitedir('$$($(PY) -c 'import site; print(site.getsitepackages()[0])')')" \
	  > "$$($(EXTRAS_PY) -c 'import site; print(site.getsitepackages()[0])')/midtrain-base.pth"
	$(PY) -m pip freeze | grep -iE '^(huggingface.hub|torch|torchvision|numpy|lightning|litgpt|litdata|tokenizers|pyarrow)==' \
	  > $(EXTRAS_VENV)/constraints.txt
	$(EXTRAS_PY) -m pip install -q -c $(EXTRAS_VENV)/constraints.txt $$(sed -n 's/^\(wandb\|eval\) = \["\(.*\)"\]/\2/p' pyproject.toml)
	touch $@

extras: $(EXTRAS_VENV)/.complete

# transformers, for the tests only (real Hugging Face checkpoints built offline for `midtrain import`): a
# third venv layered on the first. transformers needs a newer huggingface_hub than litgpt's pin, so it
# gets its own copy here, where nothing else runs (the main and extras venvs keep theirs).
HF_HASH := $(shell sed -n '/^hf-test = /p' pyproject.toml | sha256sum | cut -c1-8)
HF_VENV ?= $(CACHE_DIR)/venv-hf-$(DEPS_HASH)-$(HF_HASH)
HF_PY := $(HF_VENV)/bin/python

$(HF_VENV)/.complete: $(VENV)/.complete
	@echo "creating the transformers test virtualenv $(HF_VENV) (first time only, ~30 s)"
	rm -rf $(HF_VENV)
	$(PYTHON) -m venv $(HF_VENV)
	echo "import site; site.addsitedir('$$($(PY) -c 'import site; print(site.getsitepackages()[0])')')" \
	  > "$$($(HF_PY) -c 'import site; print(site.getsitepackages()[0])')/midtrain-base.pth"
	$(PY) -m pip freeze | grep -iE '^(torch|numpy|tokenizers|safetensors)==' > $(HF_VENV)/constraints.txt
	$(HF_PY) -m pip install -q -c $(HF_VENV)/constraints.txt $$(sed -n 's/^hf-test = \["\(.*\)"\]/\1/p' pyproject.toml)
	touch $@

hf-test: $(HF_VENV)/.complete

# Two pytest workers, one test file each at a time (module fixtures such as a SLURM cluster stay in one
# worker): on this 2-core machine about half the suite's wall time is waiting (SLURM scheduling, polls).
PYTEST_WORKERS ?= 2
test: venv extras hf-test lint
	MIDTRAIN_EXTRAS_PYTHON=$(EXTRAS_PY) MIDTRAIN_HF_PYTHON=$(HF_PY) $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25 $(PYTEST_ARGS)

# ruff (pinned in pyproject's test extra; its rules are in [tool.ruff])
lint: venv
	$(PY) -m ruff check midtrain tests bench util_scripts

# the fast tier: tests marked `unit` (pure modules, in-process checks), no SLURM, extras or multi-process runs
test-unit: venv
	$(PY) -m pytest -m unit -n $(PYTEST_WORKERS) -q $(PYTEST_ARGS)

bench: venv
	$(PY) bench/discovery.py

clean-venv:
	rm -rf $(VENV)

bench-loader: venv
	$(PY) bench/loader.py

# DEMO_OUT=folder to resume or re-run one (a re-run starts nothing that is done)
demo: venv
	$(PY) -m midtrain demo --size quick --publish true --out $(or $(DEMO_OUT),out/demo-$(shell date +%Y%m%d-%H%M%S))

demo-full: venv
	$(PY) -m midtrain demo --size full --out $(or $(DEMO_OUT),out/demo-full-$(shell date +%Y%m%d-%H%M%S))
