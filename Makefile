# The README's two commands: `make demo` and `make test`. Both set up .venv on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first, pinned, so pip takes the release this project is tested with.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?= -n 2
# The weights cache of a source checkout is ./weights (see weights/README.md); override as you like.
export BFRBOOST_HOME ?= $(CURDIR)/weights

.PHONY: setup demo test bench lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev,cluster]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m bfrboost.demo examples
	$(VENV)/bin/bfrboost restore examples -o results --overwrite

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) bench/bench_faces.py
	$(PY) bench/bench_backbones.py
	$(PY) bench/bench_refiner.py --real
	$(PY) bench/bench_throughput.py

lint: setup
	$(PY) -m pip install -q ruff
	$(VENV)/bin/ruff check bfrboost tests bench

clean:
	rm -rf $(VENV) results examples .pytest_cache
