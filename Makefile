# The two set-up commands of the README: `make train` (the main job) and `make test` (the suite).
# Both create .venv and install what they need; nothing else has to be on the machine but python3.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch; on a GPU machine install your CUDA torch into .venv first
# (or set TORCH_SPEC="torch" / another pin), the package does not pin it.
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1

.PHONY: install test test-fast train bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow and not distributed"

train: $(VENV)/.installed
	$(PY) recipes/text_classification.py $(ARGS)

bench: $(VENV)/.installed
	$(PY) benchmarks/run_benchmarks.py $(ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
