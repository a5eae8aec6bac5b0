# The two commands a new machine needs: `make demo` and `make test`.
# Both create .venv and install lineguard into it with pip on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,export,dev,interop,triton

.PHONY: demo test lint bench clean

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

clean:
	rm -rf $(VENV) lineguard-demo .pytest_cache .ruff_cache
