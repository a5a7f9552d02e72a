# The README's two commands: `make demo` and `make test`. Both set up .venv on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first, pinned, so pip takes the release this project is tested with.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?= -n 2
# The weights cache of a source checkout is ./weights (see weights/README.md); override as you like.
export BFRBOOST_HOME ?= $(CURDIR)/weights

.PHONY: setup browser demo test bench lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev,ui,cluster,onnx]'
	# Test-only references, without their dependency trees: basicsr-fixed ships the NIQE parameter
	# file the NIQE test compares with; pyiqa (non-commercial, the optional eval-nc extra) runs MUSIQ.
	$(PY) -m pip install -q --no-deps basicsr-fixed==1.4.2 pyiqa==0.1.16
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m bfrboost.demo examples
	$(VENV)/bin/bfrboost restore examples -o results --overwrite

# The web app's tests drive Debian's chromium (Playwright's own browser download fails offline).
# Installed only when missing; without it (no root, no apt) those tests skip and say why.
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
		|| echo "make: could not install chromium; the browser tests will be skipped"

test: setup browser
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) bench/bench_faces.py
	$(PY) bench/bench_backbones.py
	$(PY) bench/bench_refiner.py --real
	$(PY) bench/bench_guidance.py --cuda
	$(PY) bench/bench_metrics.py
	$(PY) bench/bench_video.py
	$(PY) bench/bench_train.py
	$(PY) bench/bench_throughput.py
	$(PY) bench/bench_onnx.py

lint: setup
	$(PY) -m pip install -q ruff
	$(VENV)/bin/ruff check bfrboost tests bench

clean:
	rm -rf $(VENV) results examples .pytest_cache
