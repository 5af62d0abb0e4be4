"""Uncertainty of per-level accuracies: bootstrap intervals over questions.

A level holds a few dozen questions, each answered `eval_samples` times; the samples of one
question are not independent, so the question is the unit that is resampled. Differences
between two models are paired (the same questions), which is what the checklist needs to
call a finding reproduced only when the difference exceeds its uncertainty.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
RESAMPLES = 2000


def bootstrap_interval(values, resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (one value per question)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    if len(values) == 1 or np.all(values == values[0]):
        return float(values.mean()), float(values.mean())
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def level_intervals(results: pd.DataFrame, value: str = "accuracy",
                    seed: int = 0) -> pd.DataFrame:
    """Per level (and "all"): questions, mean and bootstrap interval of `value` (one row per
    question in `results`, e.g. an evaluation table with `level` and `accuracy`)."""
    groups = [(f"L{lv}", part) for lv, part in results.groupby("level")] + [("all", results)]
    rows = []
    for level, part in groups:
        low, high = bootstrap_interval(part[value], seed=seed)
        rows.append({"level": level, "questions": len(part), value: part[value].mean(),
                     f"{value}_low": low, f"{value}_high": high})
    return pd.DataFrame(rows)


def paired_difference(a: pd.DataFrame, b: pd.DataFrame, value: str = "accuracy",
                      seed: int = 0) -> pd.DataFrame:
    """Per level (and "all"): mean of a - b over the questions both answered, with its
    bootstrap interval and whether the interval excludes zero (`clear`)."""
    both = a[["qid", "level", value]].merge(b[["qid", value]], on="qid", suffixes=("_a", "_b"))
    both = both.assign(diff=both[f"{value}_a"] - both[f"{value}_b"])
    out = level_intervals(both, "diff", seed)
    return out.assign(clear=(out["diff_low"] > 0) | (out["diff_high"] < 0))
