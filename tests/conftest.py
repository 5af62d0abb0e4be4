"""Shared fixtures: one smoke run of the upstream stages, reused by every notebook test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "params" / "smoke.yaml"


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory) -> Path:
    """An output root where 00_world and 01_stratify have run on the smoke profile."""
    from synergy import pipeline

    root = tmp_path_factory.mktemp("outputs")
    for name in ("00_world", "01_stratify"):
        pipeline.run_stage(pipeline.find_stage(name), SMOKE, {"output_root": str(root)},
                           log_output=False)
    return root


@pytest.fixture(scope="session")
def smoke_world(smoke_root):
    """(WorldConfig, model folder) of the smoke run."""
    from synergy import data

    manifest = data.world_manifest(str(smoke_root), "smoke")
    return data.world_config(str(smoke_root), "smoke"), Path(manifest["model_path"])


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


@pytest.fixture(scope="session")
def merge_root(smoke_root, smoke_world, tmp_path_factory) -> Path:
    """TEST FIXTURE: a copy of the smoke run with stand-ins for 03_sft and 04_grpo.

    The stand-in "SFT" and "RL" models are the smoke base plus small deterministic noise,
    recorded the two ways `merging.stage_models` reads (`models` and `model_paths`), so
    06-08 can be tested without training. Not the real stages' output.
    """
    import json
    import shutil

    root = tmp_path_factory.mktemp("merge_outputs")
    for name in ("00_world", "01_stratify"):
        shutil.copytree(smoke_root / "smoke" / name, root / "smoke" / name)
    _, base = smoke_world
    for stage, key, label, seed in (("03_sft", "models", "sft", 1),
                                    ("04_grpo", "model_paths", "rl", 2)):
        folder = root / "smoke" / stage
        perturbed_copy(base, folder / "model", seed)
        manifest = {"stage": stage, "artifact_id": f"fake-{stage}", "fake_for_tests": True,
                    key: {label: str(folder / "model")}}
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def one_thread():
    """Two torch threads on two busy cores are many times slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smoke_engine(smoke_world):
    """A sampling engine on the smoke world's base model."""
    from synergy.generation import HFEngine

    return HFEngine.from_path(smoke_world[1], device="cpu")
