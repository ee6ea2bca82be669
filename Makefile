# The two commands: `make demo` and `make test`. Each creates/refreshes .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-tf test-jax test-torch venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps musicnn==0.1.0
	-cd export/examples/onnxruntime-node && npm ci --ignore-scripts --no-audit --no-fund
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m training.demo

# The whole suite on TensorFlow (the default backend), then the multi-backend tests on JAX and PyTorch.
test: test-tf test-jax test-torch

test-tf: $(STAMP)
	KERAS_BACKEND=tensorflow $(PY) -m pytest -q -p no:cacheprovider tests

test-jax: $(STAMP)
	KERAS_BACKEND=jax $(PY) -m pytest -q -p no:cacheprovider -m multibackend tests

test-torch: $(STAMP)
	KERAS_BACKEND=torch $(PY) -m pytest -q -p no:cacheprovider -m multibackend tests

bench: $(STAMP)
	$(PY) -m benchmarks.train_step --reference
	$(PY) -m benchmarks.augment
	$(PY) -m benchmarks.input_pipeline
	$(PY) -m benchmarks.inference
	$(PY) -m benchmarks.export

clean:
	rm -rf $(VENV) demo_output .pytest_cache
