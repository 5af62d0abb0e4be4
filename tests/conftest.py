"""Shared fixtures: one real smoke run of the series, reused by every stage's tests.

`smoke_root` runs 00 and 01; `smoke_series` adds 02 -> 03 -> 04 -> 06 once per test
session, so 06, 07 and 08 are tested on what 03 and 04 actually wrote.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "params" / "smoke.yaml"


# The test files that took longest, longest first (`pytest --durations=0` on a 2-core host,
# 2026-12-07: 206, 179, 133, 101, 94, 57, 50, 43, 41 and 38 s of 1,102 s in all). `make
# test` hands files to its workers in collection order (pytest-xdist `--dist loadfile
# --no-loadscope-reorder`), so these go first and no long file starts last while the other
# worker idles. Files not listed follow in their own order; a stale list costs only time.
LONGEST_FIRST = ("test_kills_training.py", "test_strategies.py", "test_kills.py",
                 "test_report.py", "test_workbench.py", "test_bad_inputs.py", "test_scale.py",
                 "test_vlm_series.py", "test_reuse.py", "test_reliability3.py")


def pytest_collection_modifyitems(items):
    """Everything that needs the trained smoke series is slow (`pytest -m "not slow"`);
    the longest files first (`LONGEST_FIRST`; a stable sort keeps each file's order)."""
    for item in items:
        if "smoke_series" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def run_stages(root: Path, *names: str, profile: Path = SMOKE, **overrides) -> None:
    """Execute stages' notebooks (papermill) on `profile` with output under `root`."""
    from synergy import pipeline

    for name in names:
        pipeline.run_stage(pipeline.find_stage(name), profile,
                           {"output_root": str(root), **overrides}, log_output=False)


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory) -> Path:
    """An output root where 00_world and 01_stratify have run on the smoke profile."""
    root = tmp_path_factory.mktemp("outputs")
    run_stages(root, "00", "01")
    return root


@pytest.fixture(scope="session")
def smoke_series(smoke_root) -> Path:
    """The same root after 02 -> 03 -> 04 -> 06 ran on it (real SFT, GRPO and merges)."""
    run_stages(smoke_root, "02", "03", "04", "06")
    return smoke_root


@pytest.fixture(scope="session")
def smoke_world(smoke_root):
    """(WorldConfig, model folder) of the smoke run."""
    from synergy import world
    from synergy.runs import Run

    return world.config_of(Run(smoke_root, "smoke")), world.load(str(smoke_root),
                                                                  "smoke").model_path


def perturbed_copy(src: Path, dst: Path, seed: int, scale: float = 0.05) -> Path:
    """TEST HELPER: save `src` with deterministic noise (scale x each tensor's std) added."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * p.std().clamp_min(1e-3))
    model.save_pretrained(dst, safe_serialization=True)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


@pytest.fixture(scope="module")
def one_thread():
    """Two torch threads on two busy cores are many times slower than one."""
    from synergy.runs import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def smoke_engine(smoke_world):
    """A sampling engine on the smoke world's base model."""
    from synergy.generation import HFEngine

    return HFEngine.from_path(smoke_world[1], device="cpu")
