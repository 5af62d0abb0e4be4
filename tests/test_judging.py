"""Judged questions (`synergy.judging`): which pool questions, which pairs, what the stages
save and the report pools."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from synergy import judging, stages
from synergy.config import ConfigError
from synergy.files import ArtifactError, write_text
from synergy.runs import MANIFEST, Run


def _pool(n=60, levels=3):
    return pd.DataFrame({"qid": [f"p{i}" for i in range(n)], "question": "1 +1", "answer": 2,
                         "level": [1 + i % levels for i in range(n)], "teacher": "careful",
                         "correct": True, "response": "r", "n_tokens": 3})


BENCHMARK = pd.DataFrame({"qid": [f"b{i}" for i in range(10)],
                          "level": [1] * 5 + [2] * 3 + [3] * 2})


def test_judged_questions_keep_the_benchmarks_shares_outside_every_trained_question():
    pool = pd.concat([_pool(), _pool().iloc[:6].assign(teacher="sampled")])  # 2 teachers
    taken = {f"p{i}" for i in range(30)}
    extra = judging.questions(pool, taken, BENCHMARK, 10, 0, "k")
    assert extra["level"].value_counts().to_dict() == {1: 5, 2: 3, 3: 2}
    assert not set(extra["qid"]) & taken and extra["qid"].is_unique
    assert list(extra.columns) == ["qid", "question", "answer", "level"]  # no trace columns
    # The order is seeded, not the pool's, and the same for the same seed.
    assert list(judging.questions(pool, taken, BENCHMARK, 10, 0, "k")["qid"]) == list(
        extra["qid"])
    assert list(judging.questions(pool, taken, BENCHMARK, 10, 1, "k")["qid"]) != list(
        extra["qid"])
    assert len(judging.questions(pool, taken, BENCHMARK, 0, 0, "k")) == 0
    assert len(judging.questions(pool, taken, BENCHMARK, 2, 0, "k")) == 0  # < one per level
    assert len(judging.questions(pool, taken, BENCHMARK, 4, 0, "k")) == 4
    # Up to n: 10 pool questions of level 1 are left, so 20 keep the shares at most.
    many = judging.questions(pool, taken, BENCHMARK, 40, 0, "k")
    assert many["level"].value_counts().to_dict() == {1: 10, 2: 6, 3: 4}
    assert judging.questions(pool, set(pool["qid"]), BENCHMARK, 10, 0, "k").empty
    with pytest.raises(ConfigError, match="merging.judged_questions.*no levels"):
        judging.questions(pool.drop(columns="level"), taken, BENCHMARK, 10, 0,
                          "merging.judged_questions")


def test_trained_questions_are_every_training_stages_and_a_missing_file_is_named(tmp_path):
    run = Run(tmp_path, "r")
    for stage, qids in ((stages.SFT, ["a", "b"]), (stages.GRPO, ["b", "c"])):
        write_text(run.dir(stage) / MANIFEST, "{}")
        write_text(run.dir(stage) / judging.TRAIN_QUESTIONS,
                   pd.DataFrame({"qid": qids, "level": 1}).to_csv(index=False))
    assert judging.trained_qids(run) == {"a", "b", "c"}  # 05 has not run
    assert judging.trained_qids(run, (stages.SFT,)) == {"a", "b"}
    write_text(run.dir(stages.STRATEGIES) / MANIFEST, "{}")  # ran before it wrote one
    with pytest.raises(ArtifactError, match="05_strategies.*train_questions.csv.*again"):
        judging.trained_qids(run)


def _answers(accuracy, prefix="b"):
    return pd.DataFrame({"qid": [f"{prefix}{i}" for i in range(len(accuracy))],
                         "level": 1, "accuracy": accuracy})


def test_only_pairs_the_benchmark_leaves_open_are_judged():
    rl = _answers(np.full(200, 0.5))
    same = rl.copy()  # no difference at all: clearly no gain of 2 points
    # 10 questions up and 8 down by half a sample: +0.5 points, an interval past +2.
    flips = rl.assign(accuracy=[1.0] * 10 + [0.0] * 8 + [0.5] * 182)
    ahead = rl.assign(accuracy=1.0)  # +50 points, clear of zero
    results = {"rl": rl, "same": same, "flips": flips, "ahead": ahead}
    pairs = {m: "rl" for m in ("same", "flips", "ahead")}
    assert judging.open_pairs(results, pairs, 0.02) == {"flips": "rl"}
    assert judging.open_pairs(results, {}, 0.02) == {}


def test_judged_results_are_saved_loaded_and_pooled(tmp_path):
    assert judging.load(tmp_path) == {}
    bench = {"rl": _answers([1.0, 0.0]), "m": _answers([1.0, 1.0])}
    extra = pd.DataFrame({"qid": ["p0"], "question": "1 +1", "answer": "2", "level": 1})
    judged = {"rl": _answers([0.5], "p").assign(
        question="1 +1", answer="2", samples=[["<think>1+1=2</think> \\boxed{2}", "3"]],
        correct=[[True, False]], lengths=[[9, 1]], formatted=[[True, False]], n_truncated=0,
        mean_length=5.0, format_rate=0.5)}
    judging.save(tmp_path, judged, extra)
    loaded = judging.load(tmp_path)
    assert set(loaded) == {"rl"} and list(loaded["rl"]["qid"]) == ["p0"]
    assert list(pd.read_csv(tmp_path / judging.JUDGED / "questions.csv")["qid"]) == ["p0"]
    pooled = judging.with_judged(bench, loaded)
    assert list(pooled["rl"]["qid"]) == ["b0", "b1", "p0"] and len(pooled["m"]) == 2
    judging.save(tmp_path, {}, extra.iloc[:0])  # a later execution with nothing open
    assert judging.load(tmp_path) == {} and not (tmp_path / judging.JUDGED).exists()


def test_the_summary_says_what_is_judged_and_when_the_pool_ran_short():
    extra = pd.DataFrame({"qid": ["p0", "p1"]})
    assert "decided on the benchmark" in judging.summary({}, extra.iloc[:0], 200, "k")
    line = judging.summary({"linear-0.25": "rl"}, extra, 200, "merging.judged_questions")
    assert line.startswith("merging.judged_questions: open on the benchmark: linear-0.25 "
                           "against rl; 2 pool questions (of 200 asked")
    assert "asked" not in judging.summary({"m": "rl"}, extra, 2, "k")
