"""Hard cases for synergy.verify and the local boxed_accuracy evaluate metric."""

import json
import os
import threading

import pytest
from synergy import verify as v
from synergy.verify import (
    accuracy_reward,
    answers_match,
    completion_text,
    extract_answer,
    extract_boxed,
    extract_choice,
    format_ok,
    format_reward,
    is_correct,
)

# --- extract_boxed ---------------------------------------------------------------

@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\boxed{\sqrt{\frac{a}{b}}}", r"\sqrt{\frac{a}{b}}"),
        (r"first \boxed{1}, then \boxed{2}", "1,2"),  # math-verify reads {1, 2} too
        (r"\fbox{7}", "7"),
        (r"\boxed {\{1,2\}}", r"\{1,2\}"),  # escaped braces are content, not nesting
        (r"\boxed{\left\{ x \right.}", r"\left\{ x \right."),  # unpaired escaped brace
        (r"\boxed{ 12 }", " 12 "),
        (r"\boxed{}", ""),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"The solutions are \boxed{2} and \boxed{-3}.", "2,-3"),
        (r"$x = \boxed{2}$ or $x = \boxed{3}$", "2,3"),
        (r"\boxed{1}, \boxed{2}, \boxed{ 3 }", "1,2,3"),
        (r"\boxed{5} = \boxed{5}", "5"),  # one answer written twice
        (r"tried \boxed{4} in a long detour that goes on and on for quite a while, then at last, finally \boxed{5}", "5"),
        (r"tried \boxed{4}, then thought about it more, much more. Now I am sure: \boxed{5}", "4,5"),
        (r"tried \boxed{4} but I thought it over once more to find my slip. So \boxed{5}", "5"),
        (r"tried \boxed{4} then \boxed{4}", "4"),
        (r"<think>maybe \boxed{3}</think> \boxed{4}", "4"),  # never across </think>
        (r"<think>\boxed{3}</think>\boxed{4} and \boxed{5}", "4,5"),
    ],
)
def test_extract_boxed_joins_the_boxes_math_verify_reads_as_one_answer(text, expected):
    """The join rule is math-verify's own (latex2sympy2_extended's extract_boxed_content),
    except that it never reaches into the <think> trace, which math-verify does not know."""
    from math_verify import parse

    assert extract_boxed(text) == expected
    if "</think>" not in text:  # the same value as math-verify reads from the whole text
        assert parse(text)[0] == parse(f"\\boxed{{{expected}}}")[0]


def test_an_answer_in_several_boxes_is_scored_as_a_set():
    assert is_correct(r"<think>x</think> The roots are \boxed{2} and \boxed{-3}.", "-3, 2")
    assert not is_correct(r"<think>x \boxed{2}</think> The root is \boxed{-3}.", "-3, 2")


@pytest.mark.parametrize("text", ["", "no box here", r"\boxed{\frac{1}{2}", r"\boxed{5} then \boxed{6"])
def test_extract_boxed_absent_or_unbalanced(text):
    assert extract_boxed(text) is None


# --- extract_answer ----------------------------------------------------------------

@pytest.mark.parametrize(
    "completion, expected",
    [
        (r"<think>maybe \boxed{3}</think> \boxed{4}", "4"),
        (r"\boxed{ 12 }", "12"),
        ("Thus the answer is 42.", "42"),
        ("Answer: $\\frac{1}{2}$.", r"\frac{1}{2}"),
        ("The answer is 7. Then the answer is 8.", "8"),
        (r"the final answer is \(\sqrt{2}\)", r"\sqrt{2}"),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


@pytest.mark.parametrize("completion", ["", "I am not sure.", r"\boxed{}", r"\boxed{5"])
def test_extract_answer_none(completion):
    assert extract_answer(completion) is None


# --- extract_choice ----------------------------------------------------------------

@pytest.mark.parametrize(
    "text, expected",
    [
        ("(C)", "C"),
        ("C", "C"),
        ("C.", "C"),
        ("C)", "C"),
        ("The answer is C", "C"),
        ("Answer: (B)", "B"),
        ("**Answer:** D", "D"),
        ("(B) 42", "B"),
        (r"so the answer is $\boxed{\text{(E)}}$", "E"),
        ("The answer is A. Wait, no: the answer is J.", "J"),
    ],
)
def test_extract_choice(text, expected):
    assert extract_choice(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "the answer is a prime", "The answer is Alpha", "It is C or D", "answer is 12", "K", r"\boxed{42}"],
)
def test_extract_choice_none(text):
    assert extract_choice(text) is None


# --- answers_match -----------------------------------------------------------------

@pytest.mark.parametrize(
    "pred, gold",
    [
        ("12", "12.0"),
        (" 12 ", "12"),
        ("1,000", "1000"),
        ("1{,}000", "1000"),
        (r"1\,000", "1000"),
        (r"\frac{1}{2}", "0.5"),
        ("1/2", r"\frac{1}{2}"),
        (r"\dfrac{1}{2}", "0.5"),
        (r"\tfrac{3}{4}", "0.75"),
        (r"5 \text{cm}", "5"),
        (r"5\text{ cm}^2", "5"),
        (r"30^\circ", "30"),
        (r"30^{\circ}", "30"),
        ("30 degrees", "30"),
        ("-3", "-3.0"),
        (r"-\frac{1}{2}", "-0.5"),
        ("$5$", "5"),
        ("5.", "5"),
        (r"\text{5}", "5"),
        (r"\left(1, 2\right)", "(1,2)"),
        (r"\sqrt{2}/2", r"\frac{\sqrt2}{2}"),
        (r"\frac{1}{\sqrt{2}}", r"\frac{\sqrt{2}}{2}"),
        (r"2\sqrt{3}", r"\sqrt{12}"),
        ("1+x^2", "x^2+1"),
        (r"\{2,1\}", r"\{1,2\}"),
    ],
)
def test_answers_match_equivalent(pred, gold):
    assert answers_match(pred, gold)


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("-3", "3"),
        ("12", "13"),
        ("0.5", r"\frac{1}{3}"),
        ("1, 234", "1234"),  # a list, not a thousands separator
        (r"\sqrt{2}", "2"),
        ("x^2-1", "x^2+1"),
        ("", "5"),
        ("5", ""),
    ],
)
def test_answers_match_different(pred, gold):
    assert not answers_match(pred, gold)


def test_plain_numbers_never_call_math_verify(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("math_verify called for plain numbers")

    monkeypatch.setattr(v, "math_verify_match", boom)
    assert answers_match("12", "12.0")
    assert answers_match("1,000", "1000")
    assert not answers_match("2", "3")
    assert not answers_match("-1/2", "0.5")
    assert answers_match(r"\frac{7}{4}", "1.75")
    assert not answers_match("0.5", r"\frac{1}{3}")  # far apart: no rounding can join them
    assert answers_match("12", "12")  # same text


def test_numbers_within_float_rounding_are_left_to_math_verify(monkeypatch):
    calls = []
    monkeypatch.setattr(v, "math_verify_match", lambda pred, gold: calls.append((pred, gold)) or True)
    assert answers_match("0.333333", "1/3")  # math-verify rounds floats to 6 decimals
    assert answers_match("1.4500004", "1.45")
    assert answers_match(r"12.5\%", "0.125")  # percentages are math-verify's to read
    assert len(calls) == 3


def test_math_verify_works_off_main_thread():
    # math_verify's signal-based timeout raises outside the main thread.
    result = []
    worker = threading.Thread(target=lambda: result.append(answers_match(r"\frac{\sqrt{2}}{2}", r"\sqrt{2}/2")))
    worker.start()
    worker.join()
    assert result == [True]


def test_math_verify_errors_are_false(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("parser exploded")

    monkeypatch.setattr(v, "parse", broken)
    assert not answers_match(r"\sqrt{2}/2", r"\frac{\sqrt2}{2}")


CHOICES = ["42", r"\frac{1}{2}", "7", "9"]


@pytest.mark.parametrize(
    "pred, gold, choices, expected",
    [
        ("B", "B", CHOICES, True),
        ("(B)", "B", CHOICES, True),
        ("The answer is B", "(B)", CHOICES, True),
        ("0.5", "B", CHOICES, True),  # option text, in another form
        (r"\frac{1}{2}", "B", CHOICES, True),
        ("42", "B", CHOICES, False),  # text of option A
        ("A", "B", CHOICES, False),
        ("C", "B", None, False),
        ("B", "B", None, True),
        ("B", "0.5", CHOICES, True),  # letter prediction against option-text gold
        ("A", "0.5", CHOICES, False),
        ("b", "B", CHOICES, False),  # math_verify would call the symbols b and B equal
    ],
)
def test_answers_match_multiple_choice(pred, gold, choices, expected):
    assert answers_match(pred, gold, choices) is expected


# --- is_correct ----------------------------------------------------------------------

@pytest.mark.parametrize(
    "completion, gold, expected",
    [
        (r"<think>...</think> The result is \boxed{\dfrac{1}{2}}.", "0.5", True),
        (r"<think>\boxed{3}</think> \boxed{4}", "4", True),
        (r"<think>\boxed{4}</think> \boxed{3}", "4", False),
        ("The answer is 1,000.", "1000", True),
        ("", "5", False),
        ("I could not solve it, maybe 5", "5", False),
        (r"\boxed{5", "5", False),
        (r"\boxed{}", "5", False),
    ],
)
def test_is_correct(completion, gold, expected):
    assert is_correct(completion, gold) is expected


def test_is_correct_choice():
    assert is_correct(r"<think>x</think> \boxed{C}", "C", ["1", "2", "3"])
    assert is_correct(r"<think>x</think> \boxed{3}", "C", ["1", "2", "3"])
    assert not is_correct(r"<think>x</think> \boxed{2}", "C", ["1", "2", "3"])


# --- format_ok -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "completion",
    [
        r"<think>reasoning</think> \boxed{5}",
        "\n  <think>\n</think>\nSo \\boxed{5}.",
        r"<think>try \boxed{4}</think> no, \boxed{5}",
    ],
)
def test_format_ok_true(completion):
    assert format_ok(completion)


@pytest.mark.parametrize(
    "completion",
    [
        r"reasoning \boxed{5}",  # missing think
        r"reasoning</think> \boxed{5}",  # missing opening tag
        r"<think>reasoning \boxed{5}",  # missing closing tag
        r"<think>reasoning \boxed{5}</think> done",  # boxed only before </think>
        r"<think>a</think><think>b</think> \boxed{5}",  # two think blocks
        r"<think>a</think> \boxed{5} </think>",
        r"Sure! <think>a</think> \boxed{5}",  # text before <think>
        r"<think>a</think> the answer is 5",  # no box
        r"<think>a</think> \boxed{5",  # unbalanced box
    ],
)
def test_format_ok_false(completion):
    assert not format_ok(completion)


# --- TRL reward signature --------------------------------------------------------------

GOOD = r"<think>2+2</think> \boxed{4}"
BAD = r"<think>2+2</think> \boxed{5}"
UNFORMATTED = "the answer is 4"


def test_completion_text_forms():
    assert completion_text("x") == "x"
    assert completion_text([{"role": "assistant", "content": "x"}]) == "x"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "x"}]}]) == "x"


def test_rewards_string_completions():
    completions = [GOOD, BAD, UNFORMATTED]
    kwargs = dict(prompts=["p"] * 3, completion_ids=[[1]] * 3, answer=["4"] * 3, trainer_state=None)
    assert accuracy_reward(completions=completions, **kwargs) == [1.0, 0.0, 1.0]
    assert format_reward(completions=completions, **kwargs) == [1.0, 1.0, 0.0]


def test_rewards_conversational_completions():
    completions = [[{"role": "assistant", "content": c}] for c in (GOOD, BAD, UNFORMATTED)]
    prompts = [[{"role": "user", "content": "2+2?"}]] * 3
    assert accuracy_reward(prompts=prompts, completions=completions, answer=["4", "4", "4"]) == [1.0, 0.0, 1.0]
    assert format_reward(prompts=prompts, completions=completions, answer=["4", "4", "4"]) == [1.0, 1.0, 0.0]


def test_accuracy_reward_with_choices_column():
    completions = [r"<think>x</think> \boxed{B}", r"<think>x</think> \boxed{9}", r"<think>x</think> \boxed{9}"]
    rewards = accuracy_reward(
        completions=completions, answer=["B", "B", "9"], choices=[["1", "9"], ["1", "9"], None]
    )
    assert rewards == [1.0, 1.0, 1.0]
    assert accuracy_reward(completions=completions[:1], answer=["A"], choices=[["1", "9"]]) == [0.0]


# --- evaluate metric -------------------------------------------------------------------

def test_boxed_accuracy_metric_loads_locally_and_computes(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from synergy.metrics import BOXED_ACCURACY_PATH, load_boxed_accuracy

    assert os.path.isfile(os.path.join(BOXED_ACCURACY_PATH, "boxed_accuracy.py"))
    metric = load_boxed_accuracy()
    result = metric.compute(
        predictions=[
            r"<think>a</think> \boxed{\frac{1}{2}}",  # correct, formatted
            "The answer is 1,000.",  # correct, unformatted
            r"<think>a</think> \boxed{3}",  # wrong, formatted
            "no idea",  # unparsed
        ],
        references=["0.5", "1000", "4", "7"],
    )
    assert result == {"accuracy": 0.5, "format_rate": 0.5, "unparsed": 1}


def test_boxed_accuracy_metric_via_evaluate_load():
    import evaluate
    from synergy.metrics import BOXED_ACCURACY_PATH

    metric = evaluate.load(BOXED_ACCURACY_PATH)
    assert metric.compute(predictions=[r"\boxed{12.0}"], references=["12"])["accuracy"] == 1.0


# --- MathVista's per-question columns ----------------------------------------------------

@pytest.mark.parametrize(
    "pred, gold, columns, expected",
    [
        ("1.449", "1.45", dict(precision=2), True),
        ("1.46", "1.45", dict(precision=2), False),
        ("1.449", "1.45", dict(precision=2.0), True),  # datasets store the column as floats
        ("1.449", "1.45", dict(precision=float("nan")), False),  # empty column: default rules
        ("1.449", "1.45", {}, False),
        ("1.24", "1.2", dict(precision=1), True),
        ("1.26", "1.2", dict(precision=1), False),
        ("1,000.4", "1000", dict(precision=0), True),
        ("5 px", "5", dict(unit="px"), True),
        (r"5\text{px}", "5", dict(unit="px"), True),
        (r"5 \mathrm{px}", "5 px", dict(unit="px"), True),
        ("5 px", "5", {}, False),  # math-verify reads "5 px" as 5*p*x
        ("6 px", "5", dict(unit="px"), False),
        ("2.0", "2", dict(answer_type="integer"), True),
        ("2.7", "2", dict(answer_type="integer"), True),  # MathVista truncates: int(float(x))
        ("3", "2", dict(answer_type="integer"), False),
        ("2.0000001", "2", dict(answer_type="integer", precision=None), True),
        ("2.7", "2", {}, False),
        ("C", r"\frac{3}{2}", dict(precision=1, choices=["1.2", "1.45", "1.5"]), True),
        ("B", r"\frac{3}{2}", dict(precision=1, choices=["1.2", "1.52", "1.5"]), True),
        ("A", r"\frac{3}{2}", dict(precision=1, choices=["1.2", "1.52", "1.5"]), False),
        (r"\frac{1}{3}", "0.33", dict(precision=2), True),
        ("no idea", "1.45", dict(precision=2), False),
    ],
)
def test_answers_match_question_columns(pred, gold, columns, expected):
    assert answers_match(pred, gold, **columns) is expected


def test_is_correct_question_columns():
    completion = r"<think>...</think> the length is \boxed{1.449 \text{ px}}"
    assert is_correct(completion, "1.45", precision=2, unit="px")
    assert not is_correct(completion, "1.45")


def test_accuracy_reward_question_columns():
    completions = [r"<think>x</think> \boxed{1.449}", r"<think>x</think> \boxed{5 px}", r"<think>x</think> \boxed{2.0}"]
    answer = ["1.45", "5", "2"]
    assert accuracy_reward(completions=completions, answer=answer) == [0.0, 0.0, 1.0]
    rewards = accuracy_reward(
        completions=completions,
        answer=answer,
        precision=[2, None, float("nan")],
        unit=["", "px", None],
        answer_type=["float", "integer", "integer"],
    )
    assert rewards == [1.0, 1.0, 1.0]


# --- verifier-disagreement audit ---------------------------------------------------------

AUDIT_COMPLETIONS = [
    r"<think>a</think> \boxed{4}",  # integer rule, math-verify agrees
    r"<think>a</think> \boxed{b}",  # letters: rules say wrong, math-verify right
    "no answer here",  # unparsed
    r"<think>a</think> \boxed{0.5}",  # option text of B: rules right, math-verify wrong
    r"<think>a</think> \boxed{30°}",  # degree sign
    r"<think>a</think> \boxed{4}",  # a repeat
]
AUDIT_GOLDS = ["4", "B", "7", "B", "30", "4"]
AUDIT_CHOICES = [None, None, None, CHOICES, None, None]


def test_audit_table():
    table = v.audit(AUDIT_COMPLETIONS, AUDIT_GOLDS, AUDIT_CHOICES)
    assert list(table.columns) == ["answer", "gold", "rule", "math_verify", "disagree", "path"]
    assert table["answer"].isna().tolist() == [False, False, True, False, False, False]
    assert table["answer"].dropna().tolist() == ["4", "b", "0.5", "30°", "4"]
    assert table["rule"].tolist() == [True, False, False, True, True, True]
    assert table["math_verify"].tolist() == [True, True, None, False, False, True]
    assert table["disagree"].tolist() == [False, True, False, True, True, False]
    assert table["path"].tolist() == ["integer", "choice", "unparsed", "choice", "math_verify", "integer"]


def test_audit_calls_math_verify_once_per_extracted_answer(monkeypatch):
    calls = []
    monkeypatch.setattr(v, "math_verify_match", lambda pred, gold: calls.append((pred, gold)) or False)
    v.audit(AUDIT_COMPLETIONS, AUDIT_GOLDS, AUDIT_CHOICES)
    rule_path_calls = [(r"30^\circ", "30")]  # the degree sign rewritten, then math-verify decides
    # ("4", "4"): two plain integers take math-verify's exact integer verdict unparsed.
    assert sorted(calls) == sorted([("b", "B"), ("0.5", "B"), ("30°", "30")] + rule_path_calls)


def test_audit_takes_extracted_answers_and_question_columns():
    table = v.audit(["1.449", "", "1.46"], ["1.45", "1.45", "1.45"], extracted=True, precision=[2, 2, 2])
    assert table["rule"].tolist() == [True, False, False]
    assert table["path"].tolist() == ["mathvista", "unparsed", "mathvista"]
    assert table["math_verify"].tolist() == [False, None, False]


def test_audit_summary():
    summary = v.audit_summary(v.audit(AUDIT_COMPLETIONS, AUDIT_GOLDS, AUDIT_CHOICES), examples=2)
    assert json.loads(json.dumps(summary)) == summary  # written into run outputs as JSON
    assert {k: summary[k] for k in summary if k != "examples"} == {
        "rows": 6,
        "answered": 5,
        "rule_correct": 4,
        "math_verify_correct": 3,
        "disagreements": 3,
        "rule_only": 2,
        "math_verify_only": 1,
        "disagreements_by_path": {"choice": 2, "math_verify": 1},
    }
    assert summary["examples"] == [
        {"answer": "b", "gold": "B", "rule": False, "math_verify": True, "path": "choice"},
        {"answer": "0.5", "gold": "B", "rule": True, "math_verify": False, "path": "choice"},
    ]


def test_empty_question_columns_keep_the_default_rules():
    import pandas as pd

    for empty in (None, float("nan"), pd.NA, ""):
        assert not answers_match("1.449", "1.45", precision=empty, unit=empty, answer_type=empty)
