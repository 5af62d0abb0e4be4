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

.PHONY: install demo test lab report clean-venv

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
# core, at most 4 (each holds its own smoke run).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n > 4 ? 4 : n )))

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

lab: install
	$(BIN)/jupyter lab notebooks

