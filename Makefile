# Two entry points for a fresh machine: `make demo` and `make test`.
# `make test` is exactly what CI runs (.ci/run): it installs everything the suite needs
# first, then runs every test and lists each skipped test with its reason.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# llama.cpp's default native build uses CPU instructions (AMX) that some CPUs lack.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF
LLAMA_VERSION := 0.3.36
# What the test suite needs: test tools (pytest, playwright, mypy, pandas), every provider
# SDK, the local model server, the subprocess sandbox's seccomp binding, IPython, Docker SDK.
TEST_EXTRAS := test
PROGRESS := scripts/with_progress.sh
PYTEST_ARGS ?=

.PHONY: demo test typecheck compat install install-dev install-test install-local \
	install-local-server lint bench cli-docs

demo: install-local  ## a real RLM completion (OpenAI with OPENAI_API_KEY, else the embedded model)
	$(PYTHON) examples/quickstart.py

test: install-test  ## the whole test suite, as CI runs it; skipped tests are listed with reasons
	$(PYTHON) -m pytest $(PYTEST_ARGS)

typecheck: install-test  ## mypy on rlm/ (also run by the test suite, tests/test_typing.py)
	$(PYTHON) -m mypy rlm

compat: install-dev  ## rlms 0.1.3 and 0.1.1's own test suites against ours (downloaded now)
	$(PYTHON) scripts/rlms_suites.py

install:
	$(PIP) install -q -e .

install-dev:
	$(PIP) install -q -e ".[dev]"

# llama-cpp-python builds from source (about 5 minutes on 2 cores); --no-cache-dir because
# pip's wheel cache ignores CMAKE_ARGS. Skipped when an importable build is already there.
install-local:
	@$(PYTHON) -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" \
	  $(PROGRESS) "building llama-cpp-python $(LLAMA_VERSION) from source (about 5 minutes)" \
	  $(PIP) install -q --no-cache-dir "llama-cpp-python==$(LLAMA_VERSION)"
	$(PIP) install -q -e ".[local]"

install-local-server:
	@$(PYTHON) -c "import llama_cpp, fastapi, uvicorn, sse_starlette, pydantic_settings" \
	  2>/dev/null || CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" \
	  $(PROGRESS) "building llama-cpp-python[server] $(LLAMA_VERSION) from source (about 5 minutes)" \
	  $(PIP) install -q --no-cache-dir "llama-cpp-python[server]==$(LLAMA_VERSION)"

install-test: install-local-server
	$(PROGRESS) "installing rlm with the test extras ($(TEST_EXTRAS))" \
	  $(PIP) install -q -e ".[$(TEST_EXTRAS)]"

lint:
	ruff check . && ruff format --check .

bench:
	$(PYTHON) benchmarks/overhead.py

cli-docs:  ## regenerate docs/cli.md from the argument parser
	$(PYTHON) -m rlm.cli_reference > docs/cli.md
