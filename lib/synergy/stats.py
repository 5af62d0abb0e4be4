"""Uncertainty of per-level accuracies: bootstrap intervals over questions.

A level holds a few dozen questions, each answered `eval_samples` times; the samples of one
question are not independent, so the question is the unit that is resampled. Differences
between two models are paired (the same questions), which is what the checklist needs to
call a finding reproduced only when the difference exceeds its uncertainty. `Difference`
holds one such difference with its interval and the decisions it supports (a gain beyond a
margin, lying inside a band, or undecided, with the questions that would decide it).
"""

from __future__ import annotations

import dataclasses

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


def level_counts(counts: pd.Series, n: int) -> pd.Series:
    """How many of `n` questions each level gets to keep the shares of `counts` (questions
    per level): largest remainders, at least one per non-empty level."""
    counts = counts[counts > 0]
    exact = counts * n / counts.sum()
    take = np.maximum(1, np.floor(exact)).astype(int)
    for level in (exact - np.floor(exact)).sort_values(ascending=False).index:
        if take.sum() >= n:
            break
        take[level] += 1
    return take


def paired(a: pd.DataFrame, b: pd.DataFrame, value: str = "accuracy") -> pd.DataFrame:
    """The questions both answered: qid, level (a's), `<value>_a` and `<value>_b`."""
    return a[["qid", "level", value]].merge(b[["qid", value]], on="qid", suffixes=("_a", "_b"))


def paired_difference(a: pd.DataFrame, b: pd.DataFrame, value: str = "accuracy",
                      seed: int = 0) -> pd.DataFrame:
    """Per level (and "all"): mean of a - b over the questions both answered, with its
    bootstrap interval and whether the interval excludes zero (`clear`)."""
    both = paired(a, b, value)
    both = both.assign(diff=both[f"{value}_a"] - both[f"{value}_b"])
    out = level_intervals(both, "diff", seed)
    return out.assign(clear=(out["diff_low"] > 0) | (out["diff_high"] < 0))


def overall_difference(a: pd.DataFrame, b: pd.DataFrame, seed: int = 0) -> "Difference":
    """Accuracy of `a` minus `b` over every question both answered, in points, with its
    paired bootstrap interval (`paired_difference`'s "all"); NaN at 0 questions."""
    row = paired_difference(a, b, seed=seed).set_index("level").loc["all"]
    return Difference(100 * row["diff"], 100 * row["diff_low"], 100 * row["diff_high"],
                      int(row["questions"]))


@dataclasses.dataclass(frozen=True)
class Difference:
    """a - b in accuracy points over some levels, with its 95% interval (NaN: unknown)."""

    points: float
    low: float
    high: float
    questions: int = 0   # questions the interval rests on (0: not known)

    def gain(self, margin: float) -> bool:
        """Above `margin` (points) and, where the interval is known, clear of zero."""
        return self.points > margin and (np.isnan(self.low) or self.low > 0)

    def loss(self, margin: float) -> bool:
        return self.points < -margin and (np.isnan(self.high) or self.high < 0)

    def exceeds(self, margin: float) -> bool | None:
        """Whether this is a gain of more than `margin` points: True when `gain`, False
        when the interval lies below `margin` (or the gain is clear but smaller), None when
        the interval holds both a gain above `margin` and none (undecided). Without an
        interval the point estimate decides."""
        if self.gain(margin):
            return True
        if np.isnan(self.low) or self.high < margin or self.low > 0:
            return False
        return None

    def within(self, low: float, high: float) -> bool | None:
        """Whether the difference lies in [low, high] points: True when its interval does,
        False when the interval lies wholly outside, None when it holds both (undecided)."""
        if np.isnan(self.low):
            return low <= self.points <= high
        if low <= self.low and self.high <= high:
            return True
        if self.high < low or self.low > high:
            return False
        return None

    def negated(self) -> "Difference":
        return Difference(-self.points, -self.high, -self.low, self.questions)

    def questions_to_clear(self, bound: float) -> int | None:
        """About how many questions would put the interval wholly on the point estimate's
        side of `bound`, at today's spread per question (the interval narrows as
        1/sqrt(questions)). None where unknown or the point sits on the bound."""
        half, distance = (self.high - self.low) / 2, abs(self.points - bound)
        if not self.questions or distance == 0 or np.isnan(half):
            return None
        return int(np.ceil(self.questions * (half / distance) ** 2))

    def to_decide_gain(self, margin: float) -> int | None:
        """Questions that would decide `exceeds(margin)`: clear of zero when the point is
        above `margin`, below `margin` otherwise."""
        return self.questions_to_clear(0.0 if self.points > margin else margin)

    def to_decide_within(self, low: float, high: float) -> int | None:
        """Questions that would decide `within(low, high)`: clear of the nearer bound."""
        return self.questions_to_clear(min((low, high), key=lambda b: abs(self.points - b)))

    def short(self) -> str:
        if np.isnan(self.low):
            return f"{self.points:+.1f}"
        return f"{self.points:+.1f} [{self.low:+.1f}, {self.high:+.1f}]"

    def __str__(self) -> str:
        if np.isnan(self.low):
            return f"{self.points:+.1f} points (no interval)"
        return f"{self.points:+.1f} points [95% CI {self.low:+.1f}, {self.high:+.1f}]"
