"""Nothing is lost on a kill (01-03): each stage's command, SIGKILLed mid-stage, then run again.

The stages run in order in one output root holding only the smoke run's 00_world, each on
the previous one's resumed artifacts, so a later stage also checks that the earlier ones
came out whole. 04-06 are in test_kills_training.py (a second chain, on a root holding the
smoke run's 00-03, so that the two chains can run on parallel test workers). How a kill is
made and checked: tests/killing.py.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from killing import (finished_shards, kill_root, killed_then_resumed, redrawn, same_csv,
                     same_dataset, same_models, saved, shards)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kills(smoke_series, tmp_path_factory):
    return kill_root(smoke_series, tmp_path_factory, ("00",))


def test_01_stratify(kills, tmp_path):
    _, run, ref = kills
    cache = run / "01_stratify" / "cache"
    folder, before, _ = killed_then_resumed(
        kills, "01", lambda: finished_shards(cache), tmp_path)
    assert before and redrawn(run, before) == set()  # every finished sample kept
    assert set().union(*shards(cache).values()) == set().union(*shards(ref / "01_stratify"
                                                                        / "cache").values())
    assert same_dataset(folder / "levels", ref / "01_stratify" / "levels")


def test_02_distill(kills, tmp_path):
    _, run, ref = kills
    cache = run / "cache" / "samples"
    folder, before, _ = killed_then_resumed(
        kills, "02", lambda: finished_shards(cache), tmp_path)
    assert any(name.startswith("cache") for name in before)
    assert redrawn(run, before) == set()
    assert same_dataset(folder / "traces", ref / "02_distill" / "traces")
    same_csv(folder / "pool.csv", ref / "02_distill" / "pool.csv")


def test_03_sft(kills, tmp_path):
    _, run, ref = kills
    second = run / "03_sft" / "train" / "lowquality" / "checkpoints" / "checkpoint-1"
    folder, _, _ = killed_then_resumed(
        kills, "03", lambda: saved(second), tmp_path)
    runs = pd.read_csv(folder / "runs.csv").set_index("name")
    # The model finished before the kill is reused; the one in flight resumes from its
    # checkpoint; the one not started trains from step 1.
    assert runs.at["careful", "reused"]
    assert not runs.at["lowquality", "reused"]
    assert runs.at["lowquality", "resumed_from"] in ("checkpoint-1", "checkpoint-2")
    assert pd.isna(runs.at["careful_n8_easy0", "resumed_from"])
    steps = [r["step"] for r in map(json.loads, (folder / "train" / "lowquality" / "log.jsonl")
                                    .read_text().splitlines()) if "loss" in r]
    assert steps == [1, 2]  # each step logged once across the two runs
    same_models(runs.index, folder / "models", ref / "03_sft" / "models")
    same_csv(folder / "per_level.csv", ref / "03_sft" / "per_level.csv")
