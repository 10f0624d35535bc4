# Two commands do all the set-up on a fresh clone:
#   make demo   - creates .venv, installs jaxsdnn, runs the end-to-end demo on embedded data
#   make test   - creates .venv, installs jaxsdnn with test extras, runs the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,bench,examples]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) scripts/bench_kernels.py
	$(PY) scripts/bench_partition.py
	$(PY) scripts/bench_sharded.py

clean:
	rm -rf $(VENV) bench_out runs demo_out
