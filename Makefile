# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# llama.cpp's default native build uses CPU instructions (AMX) that some CPUs lack.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF

.PHONY: demo test compat install install-dev install-local lint bench

demo: install-local  ## a real RLM completion (OpenAI with OPENAI_API_KEY, else the embedded model)
	$(PYTHON) examples/quickstart.py

test: install-dev  ## the test suite (real-model tests run when the model is fetched)
	$(PYTHON) -m pytest

compat: install-dev  ## rlms 0.1.3 and 0.1.1's own test suites against ours (downloaded now)
	$(PYTHON) scripts/rlms_suites.py

install:
	$(PIP) install -q -e .

install-dev:
	$(PIP) install -q -e ".[dev]"

install-local:
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q --no-cache-dir -e ".[local]"

lint:
	ruff check . && ruff format --check .

bench:
	$(PYTHON) benchmarks/overhead.py
