"""Teachers, self-distillation, trace files and the 02_distill notebook on the smoke profile."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest
from conftest import SMOKE
from synergy import distill
from synergy.config import ConfigError
from synergy.verify import format_ok, is_correct
from synergy.task import random_question, short_trace


def questions(n=120, seed=0):
    rng = random.Random(seed)
    return [random_question(rng, rng.randint(1, 6), 19) for _ in range(n)]


def test_careful_traces_are_correct_long_and_use_pivotal_words():
    rng = random.Random(1)
    for q in questions():
        trace = distill.careful_trace(q, rng)
        assert is_correct(trace, str(q.answer)) and format_ok(trace), trace
        assert len(trace) > 3 * len(short_trace(q))
        words = trace.lower()
        assert all(w in words for w in ("let me", "first", "so the answer is", "verify"))
        # the answer is stated before the verification: overthinking by construction
        assert words.index("so the answer is") < words.index("verify")


def test_careful_teacher_uses_the_meta_words_across_a_set():
    pool = pd.DataFrame({"question": [q.text for q in questions(300)]})
    text = " ".join(distill.programmatic_traces(pool, "careful", seed=0)).lower()
    for word in ("first", "then", "let", "verify", "wait", "hmm", "maybe", "because"):
        assert word in text, word


def test_lowquality_traces_are_longer_repetitive_and_sometimes_wrong():
    qs = questions(300)
    pool = pd.DataFrame({"question": [q.text for q in qs]})
    careful = distill.programmatic_traces(pool, "careful", seed=0)
    low = distill.programmatic_traces(pool, "lowquality", seed=0, error_rate=0.3)
    assert sum(map(len, low)) > 1.2 * sum(map(len, careful))
    assert all(t.count(q.text) >= 3 for t, q in zip(low, qs))  # restates the question
    wrong = sum(not is_correct(t, str(q.answer)) for t, q in zip(low, qs)) / len(qs)
    assert 0.15 < wrong < 0.45
    assert all(format_ok(t) for t in low)
    clean = distill.programmatic_traces(pool, "lowquality", seed=0, error_rate=0.0)
    assert all(is_correct(t, str(q.answer)) for t, q in zip(clean, qs))
    assert any(w in " ".join(low).lower() for w in ("hmm", "maybe", "alternatively"))


def test_shortest_correct_keeps_the_shortest_correct_sample():
    samples = [{"text": "a", "n_tokens": 9, "correct": True},
               {"text": "b", "n_tokens": 3, "correct": False},
               {"text": "c", "n_tokens": 5, "correct": True},
               {"text": "d", "n_tokens": 5, "correct": True}]
    assert distill.shortest_correct(samples)["text"] == "c"
    assert distill.shortest_correct([{"text": "x", "n_tokens": 1, "correct": False}]) is None


class FakeTokenizer:
    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return messages[-1]["content"]


class FakeEngine:
    """Answers a question right only at sample indices 2 and 5 (long and short)."""

    tokenizer = template = FakeTokenizer()
    batch_rows = 64

    def generate(self, prompts, keys, first, n, spec, seed):
        from synergy.generation import Completion

        out = []
        for p in prompts:
            answer = distill.parse_question(p).answer
            row = []
            for j in range(first, first + n):
                if j == 2:
                    row.append(Completion(f"<think> long long long</think> \\boxed{{{answer}}}",
                                          12, False))
                elif j == 5:
                    row.append(Completion(f"\\boxed{{{answer}}}", 4, False))
                else:
                    row.append(Completion("\\boxed{-1}", 2, False))
            out.append(row)
        return out


def test_self_distillation_keeps_the_shortest_correct_of_k(tmp_path):
    qs = questions(5)
    pool = pd.DataFrame({"question": [q.text for q in qs], "answer": [str(q.answer) for q in qs]})
    cfg = distill.DistillConfig.from_mapping(
        {**_smoke_section(), "teacher_samples": 8}, "test")
    kept = distill.sampled_traces(FakeEngine(), pool, cfg, tmp_path, "fake-model", "", False)
    assert [k["n_tokens"] for k in kept] == [4] * 5
    cfg4 = distill.DistillConfig.from_mapping({**_smoke_section(), "teacher_samples": 4}, "test")
    kept4 = distill.sampled_traces(FakeEngine(), pool, cfg4, tmp_path / "b", "fake-model", "",
                                   False)
    assert [k["n_tokens"] for k in kept4] == [12] * 5  # only sample 2 was drawn and correct


def _smoke_section():
    from synergy.config import load_profile, profile_section

    return profile_section(load_profile(SMOKE), "distill", SMOKE)


def test_config_rejects_unknown_teacher_and_missing_source():
    with pytest.raises(ConfigError, match=r"distill.teachers"):
        distill.DistillConfig.from_mapping({**_smoke_section(), "teachers": ["oracle"]}, "t")
    with pytest.raises(ConfigError, match=r"distill.trace_source"):
        distill.DistillConfig.from_mapping({**_smoke_section(), "teachers": ["traces"]}, "t")


def test_traces_teacher_reads_s1k_through_the_loaders(tmp_path):
    path = tmp_path / "s1k.jsonl"
    rows = [{"question": "What is 2+2?", "solution": "4", "cot_type": "math",
             "source_type": "x", "metadata": "{}",
             "deepseek_thinking_trajectory": "2+2 is 4. Wait, yes.",
             "deepseek_attempt": "The answer is $\\boxed{4}$.",
             "gemini_thinking_trajectory": "Four.", "gemini_attempt": "\\boxed{4}"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for trace_set, thinking in (("s1k-deepseek", "2+2 is 4. Wait, yes."),
                                ("s1k-gemini", "Four.")):
        cfg = distill.DistillConfig.from_mapping(
            {**_smoke_section(), "teachers": ["traces"], "trace_source": str(path),
             "trace_set": trace_set}, "test")
        table = distill.trace_set(cfg)
        response = table["response"][0]
        assert response.startswith("<think>") and thinking in response
        assert format_ok(response) and is_correct(response, "4")


def test_traces_teacher_reads_eureka_distill_with_images(tmp_path):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "imgs" / "a.png")
    trace = "<think> The image shows 3 marks. 3+4=7.</think> \\boxed{7}"
    message = [{"role": "user", "content": [{"type": "image", "image": "file://imgs/a.png"},
                                            {"type": "text", "text": "? +4"}]},
               {"role": "assistant", "content": trace}]
    path = tmp_path / "distill.jsonl"
    path.write_text(json.dumps({"id": "e1", "message": json.dumps(message), "answer": "7"}) + "\n")
    cfg = distill.DistillConfig.from_mapping(
        {**_smoke_section(), "teachers": ["traces"], "trace_source": str(path),
         "trace_set": "eureka-distill"}, "test")
    table = distill.trace_set(cfg)
    assert table["response"].tolist() == [trace] and table["question"].tolist() == ["? +4"]
    assert table["images"].tolist() == [[str(tmp_path / "imgs" / "a.png")]]


def test_notebook_02_on_smoke(smoke_series):
    res = distill.load(str(smoke_series), "smoke")
    traces = res.traces
    assert {"messages", "teacher", "source", "level", "n_tokens", "correct"} <= set(traces)
    assert set(traces["teacher"]) >= {"careful", "lowquality"}
    msg = traces["messages"].iloc[0]
    assert [m["role"] for m in msg] == ["user", "assistant"]
    careful = traces[traces["teacher"] == "careful"]
    assert careful["correct"].all()
    assert len(res.pool) == traces["qid"][traces["teacher"] == "careful"].nunique()
    assert res.pool["level"].between(1, 5).all()
    assert "careful" in distill.statement(traces, res.pool)
