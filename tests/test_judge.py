"""The OpenAI-compatible client against a server on 127.0.0.1: key handling, caching and
counting, the judge of undecided answers with its agreement, and 02's API teacher."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from conftest import SMOKE
from fake_openai import FakeOpenAI, judge_reply
from synergy import judge
from synergy.config import load_profile, profile_section

SECRET = "sk-test-never-written-0123456789"


@pytest.fixture
def judge_server():
    server = FakeOpenAI(judge_reply)
    yield server
    server.close()


def files_containing(root, text: str) -> list:
    return [p for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_client_sends_the_key_caches_and_counts(judge_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", SECRET)
    endpoint = judge.Endpoint(judge_server.url, "judge-model", "MY_JUDGE_KEY")
    client = judge.Client(endpoint, tmp_path / "cache")
    asks = [([{"role": "user", "content": f"Reference answer: {i}\nResponse (its end holds its "
                                          f"final answer):\n{i}\n\nDoes the response"}],
             {"temperature": 0.0, "max_tokens": 8, "seed": 0}) for i in range(3)]
    first = client.complete(asks)
    assert [a["text"] for a in first] == ["yes"] * 3 and (client.calls, client.cached) == (3, 0)
    assert {r["authorization"] for r in judge_server.requests} == {f"Bearer {SECRET}"}
    assert judge_server.requests[0]["body"]["model"] == "judge-model"
    # A new client on the same cache answers from disk; the key is nowhere on disk.
    again = judge.Client(endpoint, tmp_path / "cache")
    assert [a["text"] for a in again.complete(asks)] == ["yes"] * 3
    assert (again.calls, again.cached, len(judge_server.requests)) == (0, 3, 3)
    assert files_containing(tmp_path, SECRET) == []
    # No key in the environment: no Authorization header at all (never someone else's token).
    monkeypatch.delenv("MY_JUDGE_KEY")
    judge.Client(endpoint).complete(asks[:1])
    assert judge_server.requests[-1]["authorization"] is None


def test_a_refused_request_names_the_endpoint_and_is_not_retried(tmp_path):
    server = FakeOpenAI(lambda body: {"status": 401})
    try:
        client = judge.Client(judge.Endpoint(server.url, "m", ""), tmp_path, retries=3)
        with pytest.raises(judge.EndpointError, match=r"127\.0\.0\.1.*#m: HTTP 401"):
            client.complete([([{"role": "user", "content": "hi"}], {})])
        assert len(server.requests) == 1
    finally:
        server.close()


def results_table() -> pd.DataFrame:
    """Two questions x 3 samples: decided right, decided wrong, and undecided ones (no final
    answer; a right answer written in words the rules cannot parse)."""
    return pd.DataFrame({
        "qid": ["q1", "q2"], "level": [1, 5], "question": ["2+3?", "half of 1?"],
        "answer": ["5", "0.5"],
        "samples": [["\\boxed{5}", "\\boxed{6}", "I think it is 5"],
                    ["\\boxed{one half}", "\\boxed{0.5}", "\\boxed{2}"]],
        "correct": [[True, False, False], [False, True, False]],
        "accuracy": [1 / 3, 1 / 3]})


def test_judge_rules_the_undecided_answers_and_reports_agreement(judge_server, tmp_path):
    client = judge.Client(judge.Endpoint(judge_server.url, "judge", ""), tmp_path)
    judged = judge.judge_results(client, results_table(), check_decided=4, seed=0)
    undecided = judged[judged["undecided"]]
    # "I think it is 5" has no final answer; "one half" only math-verify could equate.
    assert sorted(zip(undecided["qid"], undecided["sample"])) == [("q1", 2), ("q2", 0)]
    assert len(judged) == 2 + 4
    summary = judge.agreement(judged)
    assert summary["undecided"] == 2 and summary["decided_checked"] == 4
    assert summary["undecided_judged_right"] == 1  # "5" is in the last line; "one half" is not "0.5"
    assert summary["agreement_on_decided"] == 1.0  # this judge agrees with every decided verdict
    acc = judge.judged_accuracy(results_table(), judged).set_index("level")
    assert acc.at["L1", "accuracy"] == pytest.approx(1 / 3)
    assert acc.at["L1", "accuracy_with_judge"] == pytest.approx(2 / 3)
    assert acc.at["L5", "accuracy_with_judge"] == pytest.approx(1 / 3)
    assert judge.parse_verdict("Yes.") is True and judge.parse_verdict("maybe") is None


@pytest.fixture
def teacher_server():
    """A reasoning teacher: thinking apart from the answer, right on even seeds."""
    from synergy.task import parse_question

    def reply(body):
        question = body["messages"][-1]["content"]
        right = parse_question(question).answer
        answer = right if body["seed"] % 2 == 0 else right + 1
        return {"reasoning_content": "Let me compute step by step.",
                "content": f"\\boxed{{{answer}}}", "tokens": 10 + body["seed"] % 5}

    server = FakeOpenAI(reply)
    yield server
    server.close()


def test_api_teacher_distills_through_the_sample_cache(smoke_root, teacher_server, tmp_path,
                                                       monkeypatch):
    from synergy import distill, stages

    monkeypatch.setenv("TEACHER_KEY", SECRET)
    shutil.copytree(smoke_root / "smoke", tmp_path / "smoke",
                    ignore=shutil.ignore_patterns(stages.DISTILL.name, "[0-9][3-9]_*"))
    values = {**profile_section(load_profile(SMOKE), "distill", SMOKE),
              "output_root": str(tmp_path), "teachers": ["api"], "n_questions": 12,
              "teacher_samples": 2, "api_url": teacher_server.url, "api_model": "r1-like",
              "api_key_env": "TEACHER_KEY"}
    cfg = distill.DistillConfig.from_mapping(values, "test")
    res = distill.run(cfg, progress=False)
    asked = len(teacher_server.requests)
    assert asked == 12 * 2  # one request per sample, each with its own seed
    assert len({r["body"]["seed"] for r in teacher_server.requests}) == asked
    traces = res.traces
    assert set(traces["teacher"]) == {"api"} and traces["correct"].all()
    assert traces["response"].str.startswith("<think>\nLet me compute").all()
    assert res.manifest["upstream"]["api_teacher"] == f"api:{teacher_server.url}#r1-like"
    yield_table = distill.sampled_yield(traces, res.pool, "api")
    assert yield_table["kept"].sum() == len(traces) and yield_table["pool"].sum() == 12
    # Resume: a rerun asks nothing new; the key was never written anywhere.
    distill.run(cfg, progress=False)
    assert len(teacher_server.requests) == asked
    assert files_containing(tmp_path, SECRET) == []
    with pytest.raises(Exception, match="distill.api_url"):
        distill.DistillConfig.from_mapping({**values, "api_url": ""}, "test")
