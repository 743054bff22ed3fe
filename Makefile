# medmtl — set-up, tests and the demo.
# On a machine without a GPU the CPU build of torch is installed first (TORCH_SPEC).
# GPU users: make install TORCH_SPEC="torch" (or e.g. "torch==2.5.1 --index-url <your CUDA index>").
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install test demo lint typecheck clean sample-data bench

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check medmtl tests pipelines bench
	$(VENV)/bin/mypy medmtl
	$(VENV)/bin/mypy pipelines/*.py bench/*.py

test: install lint
	$(VENV)/bin/pytest -q -x --durations=15

demo: install
	$(PY) -m pipelines.demo --out demo_out

sample-data: install
	$(PY) -m pipelines.make_sample_data --out sample_data

bench: install
	$(PY) -m bench.encoders
	$(PY) -m bench.inference

clean:
	rm -rf $(VENV) demo_out .mypy_cache .ruff_cache
