# The two set-up commands of the README: `make train` (the main job) and `make test` (the suite).
# Both create .venv (newest transformers 5.x) and install what they need; `make test` also creates
# .venv-tf4 (transformers 4.57). Nothing else has to be on the machine but python3.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch; on a GPU machine install your CUDA torch into .venv first
# (or set TORCH_SPEC="torch" / another pin), the package does not pin it.
TORCH_SPEC ?= torch==2.13.0
# The oldest supported transformers: `make test` also runs TF4_TESTS in a second env, .venv-tf4, against it.
VENV_TF4 := .venv-tf4
TF4_SPEC ?= transformers==4.57.6
TF4_TESTS ?= tests
# DeepSpeed compiles its CPU extension into TORCH_EXTENSIONS_DIR keyed by the torch version only; a second
# env sharing the default folder would rebuild it on every switch (minutes on a busy machine), so it has its own.
TF4_PYTEST := TORCH_EXTENSIONS_DIR=$(CURDIR)/$(VENV_TF4)/torch_extensions $(VENV_TF4)/bin/python -m pytest
# Two pytest-xdist workers (one file per worker at a time, so module fixtures are built once; each worker
# keeps torch to one thread, see tests/conftest.py). PYTEST_WORKERS=0 runs in this process, one test at a time.
PYTEST_WORKERS ?= 2
XDIST := -n $(PYTEST_WORKERS) --dist loadfile
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1

.PHONY: install test test-tf4 test-fast train bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

$(VENV_TF4)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV_TF4)
	$(VENV_TF4)/bin/python -m pip install --quiet --upgrade pip
	$(VENV_TF4)/bin/python -c "import torch" 2>/dev/null || $(VENV_TF4)/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	$(VENV_TF4)/bin/python -m pip install --quiet -e ".[test]" "$(TF4_SPEC)"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed $(VENV_TF4)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest $(XDIST)
	$(TF4_PYTEST) $(XDIST) $(TF4_TESTS)

test-tf4: $(VENV_TF4)/.installed
	$(TF4_PYTEST) $(XDIST) $(TF4_TESTS)

test-fast: $(VENV)/.installed
	$(PY) -m pytest $(XDIST) -m "not slow and not distributed"

train: $(VENV)/.installed
	$(PY) recipes/text_classification.py $(ARGS)

bench: $(VENV)/.installed
	$(PY) benchmarks/run_benchmarks.py $(ARGS)

clean:
	rm -rf $(VENV) $(VENV_TF4) outputs .pytest_cache .ruff_cache
