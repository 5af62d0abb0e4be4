"""Nothing is lost on a kill (04-06): GRPO, the strategies and merging, SIGKILLed mid-stage,
then run again.

One output root holding the smoke run's 00-03 (as the 01-03 kill tests leave it), the stages
in order, each on the previous one's resumed artifacts. How a kill is made and checked:
tests/killing.py.
"""

from __future__ import annotations

import pandas as pd
import pytest
from killing import kill_root, killed_then_resumed, same_csv, same_models, saved
from synergy.files import read_json

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kills(smoke_series, tmp_path_factory):
    return kill_root(smoke_series, tmp_path_factory, ("00", "01", "02", "03"))


def test_04_grpo(kills, tmp_path):
    _, run, ref = kills
    policy = run / "04_grpo" / "runs" / "rl-beta0.01-static"
    folder, _, _ = killed_then_resumed(
        kills, "04",
        lambda: saved(policy / "checkpoints" / "checkpoint-2"), tmp_path)
    records = {r["label"]: r for r in read_json(folder / "manifest.json")["runs"]}
    assert records["rl-beta0-static"]["reused"]
    assert records["rl-beta0.01-static"]["resumed_from"] in ("checkpoint-2", "checkpoint-4")
    same_models(records, folder / "runs", ref / "04_grpo" / "runs", "model")
    same_csv(folder / "per_level.csv", ref / "04_grpo" / "per_level.csv")


def test_05_strategies(kills, tmp_path):
    """05 killed once two strategy models are finished: they are reused, the rest trained,
    and every model and table equals the smoke series' uninterrupted 05 (its upstream
    models are the same bit for bit: test_04_grpo, and 00-03 copied)."""
    _, run, ref = kills
    runs_dir = run / "05_strategies" / "runs"
    folder, _, _ = killed_then_resumed(
        kills, "05", lambda: len(list(runs_dir.glob("*/done.json"))) >= 2, tmp_path)
    table = pd.read_csv(folder / "runs.csv")
    assert 2 <= table["reused"].sum() < len(table)  # finished models kept, the rest trained
    same_models(table["label"], runs_dir, ref / "05_strategies" / "runs", "model")
    same_csv(folder / "per_level.csv", ref / "05_strategies" / "per_level.csv")


def test_06_merging(kills, tmp_path):
    _, run, ref = kills
    merges = run / "06_merging" / "merges"
    folder, _, _ = killed_then_resumed(
        kills, "06", lambda: len(list(merges.glob("*/merge.json"))) >= 3, tmp_path)
    table = pd.read_csv(folder / "merges.csv")
    assert 3 <= table["reused"].sum() < len(table)  # finished merges kept, the rest made
    same_models(table["model"], merges, ref / "06_merging" / "merges", "model")
    same_csv(folder / "per_level.csv", ref / "06_merging" / "per_level.csv")
