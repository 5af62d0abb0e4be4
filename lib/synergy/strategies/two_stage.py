"""Two-stage SFT -> RL: GRPO from the SFT model, once per response budget.

The paper needed a 16k budget: at 4k/8k about 20% of the SFT model's answers were cut off
and training collapsed. Each budget in `two_stage_lengths` trains one model; the curves
show the share of truncated completions (`completions/clipped_ratio`) and the reward.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from synergy.strategies.config import Spec, StrategiesConfig


def specs(cfg: StrategiesConfig) -> list[Spec]:
    return [Spec(f"two_stage-{n}", "two_stage", "sft", "grpo",
                 overrides=(("max_completion_length", n),)) for n in cfg.two_stage_lengths]


def headline(cfg: StrategiesConfig) -> str:
    """The model that stands for two-stage: its longest budget (the paper's working 16k)."""
    return f"two_stage-{max(cfg.two_stage_lengths)}"


def two_stage_table(table: pd.DataFrame, curves: pd.DataFrame,
                    runs: pd.DataFrame) -> pd.DataFrame:
    """Per two-stage run, shortest budget first: its response budget, mean share of
    truncated completions over training (TRL's `completions/clipped_ratio`), last logged
    reward, and overall accuracy."""
    names = list(runs.loc[runs["family"] == "two_stage", "label"]) if len(runs) else []
    acc = table[table["level"] == "all"].set_index("model")["accuracy"]
    rows = []
    for name in names:
        part = curves[curves["run"] == name] if len(curves) else curves
        clip = part["completions/clipped_ratio"].mean() \
            if "completions/clipped_ratio" in part else np.nan
        reward = part["reward"].dropna().iloc[-1] if "reward" in part and \
            part["reward"].notna().any() else np.nan
        rows.append({"model": name, "budget": int(name.split("-")[1]), "clipped_ratio": clip,
                     "final_reward": reward, "accuracy": acc.get(name, np.nan)})
    return pd.DataFrame(rows, columns=["model", "budget", "clipped_ratio", "final_reward",
                                       "accuracy"]).sort_values("budget")


def needs_budget(two: pd.DataFrame) -> bool:
    """The paper's two-stage finding: the shortest budget truncates more and ends lower."""
    short, long = two.iloc[0], two.iloc[-1]
    return bool(short["clipped_ratio"] > long["clipped_ratio"]
                and short["accuracy"] < long["accuracy"])
