# The two commands a new machine needs: `make demo` and `make test`.
# Both create .venv and install lineguard into it with pip on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,export,dev,interop,triton

.PHONY: demo test lint bench clean gpu-check

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -e '.[$(EXTRAS)]'
	# the Triton server binary for the Triton tests: its wheel's Python package pins numpy<2, which
	# the station does not use, so it comes without its dependencies
	$(BIN)/pip install -q --no-deps 'nvidia-pytriton>=0.5' || echo "no nvidia-pytriton: the Triton server tests will be skipped"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/lineguard demo

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -rs

bench: $(VENV)/.installed
	$(BIN)/python -m benchmarks.expert_speed

# The GPU station check (benchmarks/gpu/) on a machine with one NVIDIA GPU: a venv of its own, as
# onnxruntime-gpu and the [cpu] extra's onnxruntime install the same module. Its install command is
# benchmarks/gpu/machine.py's INSTALL ([gpu,export,report], TensorRT from NVIDIA's index). Writes runs/gpu/.
# `make gpu-check DRY=1`: its dry run instead (CPU EP, tiny models, in .venv; no GPU needed).
GPU_VENV ?= .venv-gpu
GPU_OUT ?= runs/gpu

$(GPU_VENV)/.installed: pyproject.toml
	$(PY) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/pip install -q --upgrade pip
	$(GPU_VENV)/bin/python -m benchmarks.gpu --install
	touch $@

ifdef DRY
gpu-check: $(VENV)/.installed
	$(BIN)/python -m benchmarks.gpu --dry-run --out $(GPU_OUT)-dry
else
gpu-check: $(GPU_VENV)/.installed
	$(GPU_VENV)/bin/python -m benchmarks.gpu --out $(GPU_OUT)
endif

clean:
	rm -rf $(VENV) lineguard-demo .pytest_cache .ruff_cache
