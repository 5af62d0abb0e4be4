"""Bootstrap intervals of per-level accuracy and paired differences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from synergy import stats


def test_interval_covers_the_mean_and_shrinks_with_more_questions():
    rng = np.random.default_rng(0)
    few, many = rng.random(20), rng.random(2000)
    lo, hi = stats.bootstrap_interval(few)
    assert lo < few.mean() < hi
    lo2, hi2 = stats.bootstrap_interval(many)
    assert hi2 - lo2 < (hi - lo) / 5
    assert stats.bootstrap_interval([0.5, 0.5]) == (0.5, 0.5)
    assert all(np.isnan(stats.bootstrap_interval([])))


def test_coverage_is_near_95_percent():
    rng = np.random.default_rng(1)
    hits = 0
    for i in range(200):
        sample = rng.binomial(4, 0.6, 40) / 4  # 40 questions, 4 samples each
        lo, hi = stats.bootstrap_interval(sample, resamples=500, seed=i)
        hits += lo <= 0.6 <= hi
    assert 0.88 <= hits / 200 <= 0.99


def test_paired_difference_is_clear_only_when_it_should_be():
    rng = np.random.default_rng(2)
    qids = [f"q{i}" for i in range(60)]
    base = pd.DataFrame({"qid": qids, "level": [1 + i % 2 for i in range(60)],
                         "accuracy": rng.random(60)})
    better = base.assign(accuracy=np.clip(base["accuracy"] + 0.2, 0, 1))
    noisy = base.assign(accuracy=base["accuracy"] + rng.normal(0, 0.01, 60))
    clear = stats.paired_difference(better, base).set_index("level")
    assert clear.loc["all", "clear"] and clear.loc["all", "diff"] > 0.1
    same = stats.paired_difference(base, base).set_index("level")
    assert not same["clear"].any()
    table = stats.level_intervals(base)
    assert list(table["level"]) == ["L1", "L2", "all"]
    assert (table["accuracy_low"] <= table["accuracy"]).all()
    assert stats.paired_difference(noisy, base).set_index("level").loc["all", "diff"] \
        == pytest.approx(0, abs=0.01)
