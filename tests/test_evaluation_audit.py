"""The verifier audit beside every evaluation, and per-question scoring columns reaching the
verifier while sampling."""

from __future__ import annotations

import pandas as pd
import pytest
from synergy import evaluation
from synergy.evaluation import SampleCache, sample_questions
from synergy.generation import Completion, SamplingSpec
from synergy.verify import audit, math_verify_match

SPEC = SamplingSpec(1.0, 1.0, 0, 8)


def boxed(answer: str) -> str:
    return f"<think>x</think> \\boxed{{{answer}}}"


def results() -> dict[str, pd.DataFrame]:
    """Two models' samples: integers (no disagreement possible), a trailing period (a
    documented departure), a MathVista precision (the per-question rule), no answer."""
    questions = pd.DataFrame({
        "qid": ["q1", "q2", "q3"], "answer": ["12", "5", "3.14"], "level": [1, 2, 3],
        "precision": [None, None, 2.0], "unit": [None, None, None],
        "answer_type": ["integer", "integer", "float"]})
    a = questions.assign(samples=[[boxed("12"), boxed("11")], [boxed("5."), "no answer"],
                                  [boxed("3.1416"), boxed("3.14")]])
    b = questions.assign(samples=[[boxed("12")], [boxed("5")], [boxed("2")]])
    return {"a": a, "b": b}


def test_audit_counts_disagreements_per_model_with_examples():
    table, found = evaluation.verifier_audit(results(), examples=5)
    a, b = table.set_index("model").loc["a"], table.set_index("model").loc["b"]
    assert (a["samples"], a["answered"]) == (6, 5)
    # "5." is 5 to the rules (a period closes the answer), unparseable to math-verify;
    # 3.1416 is 3.14 at MathVista's precision 2, not to math-verify.
    assert (a["disagreements"], a["rule_only"], a["math_verify_only"]) == (2, 2, 0)
    assert b["disagreements"] == 0 and b["samples"] == 3
    assert found["qid"].tolist() == ["q2", "q3"] and set(found["model"]) == {"a"}
    assert found["path"].tolist() == ["integer", "mathvista"]
    assert found["rule"].all() and not found["math_verify"].any()


def test_save_results_writes_the_audit_beside_per_level_and_records_it(tmp_path):
    recorded = {}
    evaluation.save_results(tmp_path, {m: df.assign(
        correct=[[False] * len(s) for s in df["samples"]], accuracy=0.0, mean_length=1.0,
        format_rate=1.0) for m, df in results().items()}, record=recorded.update)
    assert (tmp_path / "per_level.csv").exists()
    table = evaluation.load_audit(tmp_path)
    assert table["model"].tolist() == ["a", "b"] and table["disagreements"].tolist() == [2, 0]
    found = pd.read_csv(tmp_path / "verifier_disagreements.csv")
    assert found["qid"].tolist() == ["q2", "q3"]
    audit_record = recorded["verifier_audit"]
    assert audit_record["disagreements"] == 2 and audit_record["samples"] == 9
    assert audit_record["by_model"] == {"a": 2, "b": 0}


@pytest.mark.parametrize("answer, gold", [("007", "7"), ("+5", "5"), ("-0", "0"), ("-3", "3"),
                                          ("10", "1"), ("12345678901234567890",
                                                        "12345678901234567891")])
def test_integer_shortcut_is_math_verifys_verdict(answer, gold):
    row = audit([answer], [gold], extracted=True).iloc[0]
    assert row["math_verify"] == math_verify_match(answer, gold)


class FixedEngine:
    """Answers every prompt with a fixed text (the prompt is the key)."""

    batch_rows = 64

    def __init__(self, texts: dict[str, str]):
        self.texts = texts

    def generate(self, prompts, keys, first, n, spec, seed, images=None):
        return [[Completion(self.texts[p], 3, False)] * n for p in prompts]


def test_scoring_columns_reach_the_verifier_while_sampling(tmp_path):
    questions = pd.DataFrame({"qid": ["a", "b"], "question": ["a", "b"],
                              "answer": ["3.14", "7"], "precision": [2.0, None],
                              "unit": [None, "cm"], "answer_type": ["float", "integer"]})
    engine = FixedEngine({"a": boxed("3.1416"), "b": boxed("7.9 cm")})
    scoring = evaluation.scoring_of(questions)
    assert scoring[1] == {"precision": None, "unit": "cm", "answer_type": "integer"}
    kwargs = dict(n_samples=1, round_size=1, seed=0, progress=False)
    with_columns = sample_questions(engine, ["a", "b"], ["3.14", "7"], SPEC, **kwargs,
                                    cache=SampleCache(tmp_path / "1"), scoring=scoring)
    without = sample_questions(engine, ["a", "b"], ["3.14", "7"], SPEC, **kwargs,
                               cache=SampleCache(tmp_path / "2"))
    assert [d[0]["correct"] for d in with_columns] == [True, True]
    assert [d[0]["correct"] for d in without] == [False, False]
    assert evaluation.scoring_of(questions.drop(columns=["precision", "unit",
                                                         "answer_type"])) is None
