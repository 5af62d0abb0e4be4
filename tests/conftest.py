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
