# The README's commands: `make demo` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; on a CUDA box use e.g. `make test TORCH_SPEC='torch>=2.6'`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.meshserve-installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-all demo demo-wheel lint format protos bench gpu-check support-table clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

demo: $(STAMP)
	$(PY) -m gateway.tools.demo

# The demo from meshserve's wheel in a fresh venv outside the clone (minutes; not in `test`).
demo-wheel:
	TORCH_SPEC="$(TORCH_SPEC)" bash .ci/demo-from-wheel

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

protos: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash protos/gen.sh

bench: $(STAMP)
	$(PY) -m bench.throughput
	$(PY) -m bench.mesh
	$(PY) -m bench.encoder

# On a CUDA machine (< 8 min on one H100/H200): CUDA extras, every CUDA-only test, and the
# throughput and mesh ratios on the real Qwen2-0.5B shape. Uses its own venv (.venv-gpu).
gpu-check:
	bash bench/gpu_check.sh

# Reruns every test marked @pytest.mark.seed_row and regenerates the README's support table.
support-table: $(STAMP)
	$(PY) -m gateway.tools.support_table run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
