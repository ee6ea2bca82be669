# The commands: `make demo`, `make test` (default tier), `make test-large` (subprocess
# trainings, kill/resume, distributed, full conversions and exports, Node; CI runs both) and
# `make lint`. Each creates/refreshes .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: system-deps demo test test-tf test-jax test-torch test-large lint venv bench clean

venv: $(STAMP)

# '.[test]' pulls every extra (export, plots, hub, lint). The Node example's dependencies are
# optional here (no npm: no Node test); CI requires them (tests/test_node_example.py fails
# instead of skipping when CI=true).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps musicnn==0.1.0
	-cd export/examples/onnxruntime-node && npm ci --ignore-scripts --no-audit --no-fund
	@$(MAKE) -s system-deps
	touch $(STAMP)

# Debian's Chromium (browser tests of the interpret pages; they fail without it when CI=true)
# and ffmpeg (the audio decoder fallback and its tests). Installed as root; otherwise it says
# what to run.
system-deps:
	@{ command -v chromium >/dev/null && command -v ffmpeg >/dev/null; } || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium ffmpeg; } || \
	  echo "Chromium/ffmpeg not installed (apt-get needs root): sudo apt-get install -y" \
	    "chromium ffmpeg; the browser tests skip without chromium (and fail when CI=true)."

demo: $(STAMP)
	$(PY) -m training.demo

PYTEST := $(PY) -m pytest -q -p no:cacheprovider --durations=15
# Two test processes (pytest-xdist), one per core; a test file stays on one process, so its
# module fixtures are built once. `make test XDIST=` runs in one process.
XDIST ?= -n 2 --dist loadfile

# The default tier on TensorFlow (the default backend), then its multi-backend tests on JAX and
# PyTorch. Tests marked `large` are left to `make test-large`.
test: lint test-tf test-jax test-torch

test-tf: $(STAMP)
	KERAS_BACKEND=tensorflow $(PYTEST) $(XDIST) -m "not large" tests

test-jax: $(STAMP)
	KERAS_BACKEND=jax $(PYTEST) $(XDIST) -m "multibackend and not large" tests

test-torch: $(STAMP)
	KERAS_BACKEND=torch $(PYTEST) $(XDIST) -m "multibackend and not large" tests

# The large tier: every test marked `large` on TensorFlow (the distributed tests start their own
# JAX workers), then the large multi-backend ones on JAX and PyTorch.
test-large: $(STAMP)
	KERAS_BACKEND=tensorflow $(PYTEST) $(XDIST) -m large tests
	KERAS_BACKEND=jax $(PYTEST) $(XDIST) -m "large and multibackend" tests || test $$? -eq 5  # 5: none
	KERAS_BACKEND=torch $(PYTEST) $(XDIST) -m "large and multibackend" tests || test $$? -eq 5  # 5: none

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) -m benchmarks.train_step --reference
	$(PY) -m benchmarks.augment
	$(PY) -m benchmarks.input_pipeline
	$(PY) -m benchmarks.inference
	$(PY) -m benchmarks.export

clean:
	rm -rf $(VENV) demo_output .pytest_cache
