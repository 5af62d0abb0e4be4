"""Difficulty levels: binning, exact early stopping, resumable sampling, the stage's outputs."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synergy import evaluation, stratify
from synergy.evaluation import SampleCache, prompt_key, sample_questions
from synergy.files import atomic_path
from synergy.generation import SamplingSpec, chat_prompt
from synergy.stratify import assign_levels, level_decided, level_of

pytestmark = pytest.mark.usefixtures("one_thread")

SMOKE = Path(__file__).resolve().parents[1] / "params" / "smoke.yaml"
PAPER = [12, 8, 5, 2, 0]
SPEC = SamplingSpec(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=16)


# --- levels (pure) --------------------------------------------------------------------------

def paper_level(k: int) -> int:
    """The paper's table, written independently of the thresholds list."""
    if k >= 12:
        return 1
    if 8 <= k <= 11:
        return 2
    if 5 <= k <= 7:
        return 3
    if 2 <= k <= 4:
        return 4
    return 5


@pytest.mark.parametrize("k", range(17))
def test_level_of_paper_thresholds(k):
    assert level_of(k, PAPER) == paper_level(k)


def test_assign_levels():
    ks = np.arange(17)
    levels = assign_levels(ks, PAPER)
    assert levels.tolist() == [paper_level(k) for k in ks]
    assert levels.dtype.kind == "i"
    assert assign_levels(pd.Series([16, 0, 5]), PAPER).tolist() == [1, 5, 3]
    with pytest.raises(ValueError):
        level_of(-1, PAPER)


@pytest.mark.parametrize("n_total, thresholds", [(16, PAPER), (8, [6, 4, 3, 1, 0]),
                                                 (4, [4, 3, 2, 1, 0]), (5, [3, 0])])
def test_level_decided_matches_brute_force(n_total, thresholds):
    decided_early = False
    for drawn in range(n_total + 1):
        for correct in range(drawn + 1):
            finals = {level_of(correct + extra, thresholds)
                      for extra in range(n_total - drawn + 1)}
            expected = len(finals) == 1
            assert level_decided(correct, drawn, n_total=n_total,
                                 min_correct=thresholds) == expected, (correct, drawn)
            decided_early |= expected and drawn < n_total
    # One correct count per level (the smoke profile's) leaves nothing to stop early.
    assert decided_early == any(a - b > 1 for a, b in zip(thresholds, thresholds[1:]))
    assert level_decided(0, n_total, n_total=n_total, min_correct=thresholds)


# --- sampling on the smoke world ------------------------------------------------------------



@pytest.fixture(scope="module")
def engine(smoke_engine):
    return smoke_engine


@pytest.fixture(scope="module")
def questions(smoke_world):
    from synergy.task import eval_questions, questions_frame

    return questions_frame(eval_questions(smoke_world[0]))


@pytest.fixture(scope="module")
def prompts(engine, questions):
    return [chat_prompt(engine.tokenizer, q) for q in questions["question"]]


def text_oracle(text: str, answer: str, choices=None) -> bool:
    """Correct iff a hash of the sampled text falls under the question's rate, `answer`/8.

    The smoke model is too weak to answer anything, so the real verifier would put every
    question in L5 and no question would ever stop early. This oracle spreads pass rates over
    all levels while still depending on each sample's exact text.
    """
    return int(prompt_key(text), 16) % 8 < int(answer)


@pytest.fixture
def oracle(monkeypatch):
    import synergy.verify

    monkeypatch.setattr(synergy.verify, "is_correct", text_oracle)
    return [str(i % 9) for i in range(100)]  # a pass rate per question: 0/8 .. 8/8


def fixed_run(engine, prompts, answers, tmp_path, n_samples=8):
    return sample_questions(engine, prompts, answers, SPEC, n_samples=n_samples,
                            round_size=n_samples, seed=0, cache=SampleCache(tmp_path / "fixed"),
                            progress=False)


@pytest.mark.parametrize("round_size", [1, 4])
def test_early_stopping_is_exact(engine, prompts, oracle, tmp_path, round_size):
    thresholds, n = [6, 4, 3, 1, 0], 8
    answers = oracle[:len(prompts)]
    full = fixed_run(engine, prompts, answers, tmp_path, n)
    stop = functools.partial(level_decided, n_total=n, min_correct=thresholds)
    early = sample_questions(engine, prompts, answers, SPEC, n_samples=n, round_size=round_size,
                             seed=0, cache=SampleCache(tmp_path / f"early{round_size}"),
                             stop=stop, progress=False)
    full_k = [sum(s["correct"] for s in d) for d in full]
    early_k = [sum(s["correct"] for s in d) for d in early]
    assert len(set(assign_levels(full_k, thresholds))) >= 4  # the oracle spreads the levels
    assert assign_levels(early_k, thresholds).tolist() == assign_levels(full_k, thresholds).tolist()
    for e, f in zip(early, full):
        assert len(e) <= len(f) == n
        assert [s["text"] for s in e] == [s["text"] for s in f[:len(e)]]  # a prefix of the same
    drawn = sum(len(d) for d in early)
    fewest = sum(min(i for i in range(n + 1) if stop(sum(s["correct"] for s in f[:i]), i))
                 for f in full)  # stopping the moment each level is decided
    assert fewest <= drawn <= n * len(prompts)
    if round_size == 1:
        assert drawn == fewest < n * len(prompts)


class Interrupted(RuntimeError):
    pass


class CountingEngine:
    """Records what an engine is asked to generate; raises after `fail_after` calls."""

    def __init__(self, engine, batch_rows, fail_after=None):
        self.engine, self.batch_rows, self.fail_after = engine, batch_rows, fail_after
        self.tokenizer = engine.tokenizer
        self.calls, self.rows = 0, []

    def generate(self, prompts, keys, first, n, spec, seed):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise Interrupted(f"interrupted after {self.calls} calls")
        self.calls += 1
        self.rows += [(k, first + j) for k in keys for j in range(n)]
        return self.engine.generate(prompts, keys, first, n, spec, seed)


@pytest.mark.parametrize("early_stop", [False, True])
def test_interrupted_sampling_resumes_where_it_stopped(engine, prompts, oracle, tmp_path,
                                                       early_stop):
    answers = oracle[:len(prompts)]
    n = 4
    stop = (functools.partial(level_decided, n_total=n, min_correct=[4, 3, 2, 1, 0])
            if early_stop else None)
    kwargs = dict(n_samples=n, round_size=2, seed=0, stop=stop, progress=False)
    reference = CountingEngine(engine, batch_rows=512)
    expected = sample_questions(reference, prompts, answers, SPEC,
                                cache=SampleCache(tmp_path / "ref"), **kwargs)

    # 8 rows per call = 4 prompts x 2 samples: 24 prompts x 2 rounds make 12 calls.
    cache_dir = tmp_path / "cache"
    first = CountingEngine(engine, batch_rows=8, fail_after=5)
    with pytest.raises(Interrupted):
        sample_questions(first, prompts, answers, SPEC, cache=SampleCache(cache_dir), **kwargs)
    assert first.calls == 5 and len(first.rows) == 5 * 8

    second = CountingEngine(engine, batch_rows=8)
    resumed = sample_questions(second, prompts, answers, SPEC, cache=SampleCache(cache_dir),
                               **kwargs)
    assert resumed == expected
    assert set(first.rows).isdisjoint(second.rows)
    assert len(second.rows) == len(set(second.rows))
    assert sorted(first.rows + second.rows) == sorted(reference.rows)

    third = CountingEngine(engine, batch_rows=8, fail_after=0)  # all cached: no call at all
    again = sample_questions(third, prompts, answers, SPEC, cache=SampleCache(cache_dir), **kwargs)
    assert again == expected


def test_leftover_temp_shard_does_not_break_loading(tmp_path):
    cache = SampleCache(tmp_path)
    rows = [{"key": "k", "index": i, "text": f"t{i}", "n_tokens": 2, "truncated": False}
            for i in range(3)]
    cache.add(rows)
    # A run killed inside atomic_path leaves its temp folder with a half-written shard.
    leftover = tmp_path / ".part-999-abcdef.jsonl.x1y2z3" / "part-999-abcdef.jsonl"
    leftover.parent.mkdir()
    leftover.write_text(json.dumps({**rows[0], "index": 7})[:-9])
    # An exception inside atomic_path leaves neither the file nor its temp folder.
    with pytest.raises(Interrupted), atomic_path(tmp_path / "part-1000-fedcba.jsonl") as tmp:
        tmp.write_text('{"key": "k", "ind')
        raise Interrupted
    assert not (tmp_path / "part-1000-fedcba.jsonl").exists()
    assert len([p for p in tmp_path.iterdir() if p.name.startswith(".")]) == 1

    reloaded = SampleCache(tmp_path)
    assert reloaded.samples == cache.samples
    assert sorted(reloaded.samples) == [("k", 0), ("k", 1), ("k", 2)]


def test_cache_is_keyed_by_model_sampling_and_seed(smoke_world, tmp_path):
    path = str(smoke_world[1])
    base = evaluation.cache_for(tmp_path, path, SPEC, 0).root
    assert evaluation.cache_for(tmp_path, path, SPEC, 0).root == base
    assert evaluation.cache_for(tmp_path, path, SPEC, 1).root != base
    other = SamplingSpec(0.7, SPEC.top_p, SPEC.top_k, SPEC.max_new_tokens)
    assert evaluation.cache_for(tmp_path, path, other, 0).root != base


# --- tables (pure) --------------------------------------------------------------------------

def synthetic_drawn(correct_lists):
    return [[{"text": f"s{j}", "n_tokens": 3 + j, "truncated": j == 0, "correct": c}
             for j, c in enumerate(cs)] for cs in correct_lists]


@pytest.fixture
def levels_df():
    questions = pd.DataFrame({"qid": ["a", "b", "c", "d"], "question": ["1", "2", "3", "4"],
                              "answer": ["1", "2", "3", "4"], "steps": [1, 2, 3, 4]})
    drawn = synthetic_drawn([[True] * 4, [True, True, False, False], [False] * 4,
                             [True, False]])
    return stratify.samples_frame(questions, drawn, [4, 3, 2, 1, 0])


def test_samples_frame(levels_df):
    df = levels_df
    assert df["n_drawn"].tolist() == [4, 4, 4, 2]
    assert df["n_correct"].tolist() == [4, 2, 0, 1]
    assert df["pass_rate"].tolist() == [1.0, 0.5, 0.0, 0.5]
    assert df["level"].tolist() == [1, 3, 5, 4]
    assert df["lengths"][3] == [3, 4] and df["samples"][3] == ["s0", "s1"]
    assert df["n_truncated"].tolist() == [1, 1, 1, 1]
    assert df["qid"].tolist() == ["a", "b", "c", "d"]


def test_level_table(levels_df):
    table = stratify.level_table(levels_df)
    assert table["level"].tolist() == ["L1", "L2", "L3", "L4", "L5"]
    assert table["questions"].tolist() == [1, 0, 1, 1, 1]
    assert table["share"].sum() == pytest.approx(1.0)
    assert table["samples_drawn"].sum() == levels_df["n_drawn"].sum()
    assert np.isnan(table.loc[1, "pass_rate"])  # an empty level has no mean
    assert table.loc[3, "mean_length"] == pytest.approx(3.5)
    assert stratify.steps_by_level(levels_df).to_numpy().sum() == 4


def test_early_stop_saving(levels_df):
    assert stratify.early_stop_saving(levels_df, 4) == pytest.approx(14 / 16)
    full = levels_df.assign(n_drawn=4)
    assert stratify.early_stop_saving(full, 4) == 1.0


# --- the stage's outputs (smoke run) --------------------------------------------------------

COLUMNS = ["qid", "question", "answer", "steps", "samples", "correct", "lengths", "n_drawn",
           "n_correct", "pass_rate", "level"]


def test_levels_artifact(smoke_root, smoke_world):
    from synergy.task import eval_questions

    df = stratify.load(str(smoke_root), "smoke").levels
    assert set(COLUMNS) <= set(df.columns)
    assert df["qid"].tolist() == [q.qid for q in eval_questions(smoke_world[0])]
    assert df["level"].between(1, 5).all()
    assert (df["n_correct"] == df["correct"].map(sum)).all()
    assert (df["n_drawn"] == df["samples"].map(len)).all()
    assert (df["n_drawn"] == df["lengths"].map(len)).all()
    assert df["n_drawn"].between(1, 4).all()


def test_manifests(smoke_root):
    world = json.loads((smoke_root / "smoke" / "00_world" / "manifest.json").read_text())
    strat = json.loads((smoke_root / "smoke" / "01_stratify" / "manifest.json").read_text())
    for m in (world, strat):
        assert "commit" in m["git"]
        for pkg in ("torch", "transformers", "trl"):
            assert m["packages"][pkg]
        assert m["seed"] == 0 and m["params"]["seed"] == 0
        assert m["device"]["platform"] and "cuda" in m["device"]
        assert m["device"]["cpu_capability"]  # float results differ between kernel sets
        assert m["started"] <= m["finished"]
    assert strat["params"]["n_samples"] == 4 and strat["stage"] == "stratify"
    assert strat["upstream"] == {"model": f"{world['artifact_id']}:base",
                                 "benchmark": world["artifact_id"]}
    assert world["model_paths"] == {"base": "00_world/model"} and world["main_model"] == "base"
    assert strat["samples_drawn"] == int(stratify.load(str(smoke_root), "smoke").levels
                                         ["n_drawn"].sum())


@pytest.mark.parametrize("stage", ["00_world", "01_stratify"])
def test_executed_notebook_and_html(smoke_root, stage):
    folder = smoke_root / "smoke" / stage
    nb = json.loads((folder / f"{stage}.ipynb").read_text())
    errors = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if o["output_type"] == "error"]
    assert errors == []
    html = (folder / f"{stage}.html").read_text()
    assert "plotly-graph-div" in html and "Plotly.newPlot" in html
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp leftovers


@pytest.mark.slow
def test_stratify_is_deterministic(smoke_root):
    from synergy.config import load_profile, profile_section

    src, dst = smoke_root / "smoke", smoke_root / "smoke-again"
    shutil.copytree(src / "00_world", dst / "00_world")
    values = {**profile_section(load_profile(SMOKE), "stratify", SMOKE),
              "output_root": str(smoke_root), "run_name": "smoke-again"}
    cfg = stratify.StratifyConfig.from_mapping(values, "test")
    again = stratify.run(cfg, progress=False).levels
    first = stratify.load(str(smoke_root), "smoke").levels
    assert (dst / "01_stratify" / "cache").is_dir()  # sampled afresh, not read from 'smoke'
    assert again["level"].tolist() == first["level"].tolist()
    pd.testing.assert_frame_equal(stratify.load(str(smoke_root), "smoke-again").levels, first)
    assert "questions over the levels" in stratify.statement(again, cfg.n_samples)


@pytest.mark.parametrize("cap", [1, 2, 4, 16])
def test_samples_needed_never_draws_what_cannot_matter(cap):
    n, stop = 16, functools.partial(level_decided, n_total=16, min_correct=PAPER)
    for drawn in range(n + 1):
        for correct in range(drawn + 1):
            need = evaluation.samples_needed(correct, drawn, n, stop, cap)
            if stop(correct, drawn) or drawn == n:
                assert need == 0
                continue
            assert 1 <= need <= min(cap, n - drawn)
            # No outcome of fewer samples could settle the question ...
            for t in range(1, need):
                assert not any(stop(correct + j, drawn + t) for j in range(t + 1))
            # ... and `need` samples can, unless the round cap came first.
            assert need == min(cap, n - drawn) or any(
                stop(correct + j, drawn + need) for j in range(need + 1))
    assert evaluation.samples_needed(3, 5, n, None, cap) == min(cap, 11)


def test_level_subset_keeps_each_levels_share_and_the_order():
    import pandas as pd
    from synergy.stratify import level_subset

    qs = pd.DataFrame({"qid": [f"q{i}" for i in range(200)],
                       "level": ["L1"] * 40 + ["L2"] * 30 + ["L3"] * 60 + ["L4"] * 60
                       + ["L5"] * 10})
    sub = level_subset(qs, 100, seed=3)
    assert len(sub) == 100
    assert sub["level"].value_counts().to_dict() == {"L1": 20, "L2": 15, "L3": 30, "L4": 30,
                                                     "L5": 5}
    assert list(sub.index) == sorted(sub.index)
    assert sub.equals(level_subset(qs, 100, seed=3))
    assert not sub.equals(level_subset(qs, 100, seed=4))
    assert level_subset(qs, 0).equals(qs) and level_subset(qs, 500).equals(qs)
    tiny = level_subset(qs, 5)  # every non-empty level keeps a question
    assert set(tiny["level"]) == {"L1", "L2", "L3", "L4", "L5"}
