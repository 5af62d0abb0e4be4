"""Answer extraction and checking for `<think> ... </think> \\boxed{ANSWER}` responses.

One verifier for evaluation, stratification and GRPO rewards, so that the three
never disagree about what counts as correct.
"""

from __future__ import annotations

import inspect
import re
import threading
from collections.abc import Sequence
from dataclasses import replace
from fractions import Fraction
from typing import Any

import pandas as pd
from latex2sympy2_extended.latex2sympy2 import normalize_latex
from math_verify import parse, verify
from math_verify.errors import TimeoutException
from math_verify.parser import LatexExtractionConfig

# math_verify's timeout uses signal.alarm (whole seconds, main thread only).
MATH_VERIFY_TIMEOUT_S = 3

# Where answers_match knowingly scores differently from math-verify's default verify().
# The agreement table in tests/test_verify_agreement.py may only disagree under these keys.
DEPARTURES_FROM_MATH_VERIFY: dict[str, str] = {
    "choice_letter": "A letter gold (A-J) names an option, matched by that letter or the option's text; "
    "math-verify reads letters as case-blind variables (b == B) and never sees the options.",
    "trailing_period": "A period closing the answer ('5.', 'Yes.') is punctuation; math-verify cannot parse it.",
    "degree_sign": "'°' and '\\degree' mean '^\\circ', which math-verify drops (30^\\circ == 30) "
    "but cannot parse in these spellings.",
    "thin_space_thousands": "'1\\,000' is LaTeX digit grouping; math-verify reads it as the product 1*0.",
}

_BOXED_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LETTER_ONLY = re.compile(r"^\(?([A-J])\)?[.:]?$")
_LETTER_LEAD = re.compile(r"^(?:\(([A-J])\)|([A-J])[.):])\s")
# Case-insensitive "answer" but case-sensitive letter, so "the answer is a prime" is no choice.
_ANSWER_IS_CHOICE = re.compile(
    r"(?i:answer)\s*(?:(?i:is)|:)[\s:*$]*(?:\\boxed\{|\\text\{|\\textbf\{)?\s*\(?([A-J])(?![A-Za-z0-9'’])"
)
_ANSWER_IS_TEXT = re.compile(r"(?i:the\s+(?:final\s+)?answer\s+is|answer\s*:)[\s:*]*")
_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|operatorname)\{([^{}]*)\}")


# math-verify reads boxes written one after another as one answer, a set ("\boxed{2} and
# \boxed{-3}" is {2, -3}): walking back from the last box, it joins the one before when
# under 10 characters lie between them, or under 70 holding "and", "or", "," or ";" and the
# two differ (latex2sympy2_extended's extract_boxed_content, which math-verify calls).
_JOIN_CLOSE = 10
_JOIN_SEPARATED = 70
_JOIN_SEPARATOR = re.compile(r"\b(?:and|or)\b|,|;")


def _boxes(text: str) -> list[tuple[int, int, str]] | None:
    """(start, end, content) of each top-level `\\boxed{...}`/`\\fbox{...}`; None when the
    last one is unbalanced."""
    boxes, pos = [], 0
    while (m := _BOXED_START.search(text, pos)) is not None:
        depth, i = 1, m.end()
        while i < len(text) and depth:
            ch = text[i]
            if ch == "\\":
                i += 2  # skip escaped chars so `\{1,2\}` is content, not nesting
                continue
            depth += (ch == "{") - (ch == "}")
            i += 1
        if depth:
            return None  # a truncated final box means there is no final answer
        boxes.append((m.start(), i, text[m.end() : i - 1]))
        pos = i
    return boxes


def _joined(text: str, earlier: tuple[int, int, str], later: tuple[int, int, str]) -> bool:
    between = text[earlier[1] : later[0]]
    if "</think>" in between:
        return False  # a box inside the reasoning is not part of the answer
    if len(between) < _JOIN_CLOSE:
        return True
    return (earlier[2].strip() != later[2].strip() and len(between) < _JOIN_SEPARATED
            and bool(_JOIN_SEPARATOR.search(between)))


def extract_boxed(text: str) -> str | None:
    """Content of the last top-level `\\boxed{...}`/`\\fbox{...}`, joined with the boxes just
    before it that math-verify reads as one answer ("\\boxed{2} and \\boxed{-3}" -> "2,-3"),
    never across `</think>`; None if absent or the last box is unbalanced."""
    boxes = _boxes(text)
    if not boxes:
        return None
    answer = [boxes[-1]]
    for box in reversed(boxes[:-1]):
        if not _joined(text, box, answer[0]):
            break
        answer.insert(0, box)
    if len(answer) == 1:
        return answer[0][2]
    parts = [b[2].strip() for b in answer]
    return ",".join(p for i, p in enumerate(parts) if i == 0 or p != parts[i - 1])


def _strip_wrappers(s: str) -> str:
    return _WRAPPER.sub(r"\1", s.strip().replace("$", "")).strip()


def extract_choice(text: str) -> str | None:
    """Multiple-choice letter A-J stated by `text`, or None when there is no unambiguous one."""
    boxed = extract_boxed(text)
    s = _strip_wrappers(boxed if boxed is not None else text)
    if m := _LETTER_ONLY.match(s):
        return m.group(1)
    if m := _LETTER_LEAD.match(s):
        return m.group(1) or m.group(2)
    if boxed is not None:
        return None  # the boxed answer is the final word; do not look elsewhere
    matches = _ANSWER_IS_CHOICE.findall(text)
    return matches[-1] if matches else None


def extract_answer(completion: str) -> str | None:
    """The final answer string: last boxed content, else last 'the answer is X' / 'Answer: X'."""
    boxed = extract_boxed(completion)
    if boxed is not None:
        return boxed.strip() or None
    markers = list(_ANSWER_IS_TEXT.finditer(completion))
    if not markers:
        return None
    # Rest of the line after the last marker, first sentence only ("3.5. So ..." -> "3.5").
    line = completion[markers[-1].end() :].split("\n", 1)[0]
    answer = re.split(r"(?<=\S)\.\s", line)[0]
    answer = re.sub(r"\\[()\[\]]", "", answer.replace("**", ""))  # \( \) \[ \] delimiters
    answer = answer.strip().rstrip(".").strip().strip("$").strip()
    return answer or None


# Spellings rewritten before any comparison, one per DEPARTURES_FROM_MATH_VERIFY entry but the letters.
_TRAILING_PERIOD = re.compile(r"(?<!\.)\.\s*$")  # not an ellipsis
_DEGREE_SIGN = re.compile(r"\s*(?:°|\\degree(?![A-Za-z]))")
_THIN_SPACE_GROUP = re.compile(r"(?<=\d)\\,(?=\d{3}(?!\d))")

_INTEGER = re.compile(r"[-+]?\d{1,100}")  # int() refuses digit strings past ~4300
# The normalisation math-verify gives a `\boxed{}` answer before parsing it (parser.extract_latex).
_MV_NORMALIZATION = replace(LatexExtractionConfig().normalization_config, boxed="last")
# Plain numbers as latex2sympy reads that normalised text: integers, comma-grouped thousands
# (its comma_number_regex less the '0,500' form, which it reads as a decimal comma), decimals,
# and integer fractions. Anything else, percentages included, is left to math-verify.
_MV_NUMBER = re.compile(r"(-?)((?:[1-9]\d{0,2}(?:,\d{3})+|\d+)(?:\.\d+)?)")
_MV_FRACTION = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}")
# sympy reads longer decimals at more than double precision; leave those to math-verify.
_FLOAT_DIGITS = 15
# verify() compares two numbers exactly unless one is a float; then it rounds both to this
# many decimals (grader.sympy_numeric_eq), so values further apart than two units in that
# decimal can never match and nearer ones are for math-verify's rounding to decide.
_FLOAT_ROUNDING = inspect.signature(verify).parameters["float_rounding"].default
_FLOAT_FAR = Fraction(2, 10**_FLOAT_ROUNDING)


def _house_style(answer: str) -> str:
    """`answer` with the spellings of DEPARTURES_FROM_MATH_VERIFY put as math-verify reads them."""
    answer = _TRAILING_PERIOD.sub("", answer.strip())
    answer = _DEGREE_SIGN.sub(r"^\\circ", answer)
    return _THIN_SPACE_GROUP.sub("", answer).strip()


def _without_unit(answer: str, unit: str) -> str:
    """`answer` less a trailing `unit`, plain or in `\\text{}`/`\\mathrm{}` (MathVista states units apart)."""
    u = re.escape(unit.strip())
    trailing_unit = rf"(?<=[\d\s}}$])\s*(?:\\(?:text|mathrm|mbox)\s*\{{\s*{u}\s*\}}|{u})\s*$"
    return re.sub(trailing_unit, "", answer).strip()


def _mv_normalized(answer: str) -> str:
    """The text math-verify's parser reads for `answer`, boxed as math_verify_match boxes it."""
    return normalize_latex(f"\\boxed{{{answer.strip().strip('$')}}}", _MV_NORMALIZATION).strip()


def _plain_number(normalized: str) -> tuple[Fraction, bool] | None:
    """Exact value of a normalised plain number and whether math-verify reads it as a float."""
    if m := _MV_NUMBER.fullmatch(normalized):
        digits = m[2].replace(",", "")
        is_float = "." in digits
        if is_float and len(digits.replace(".", "").lstrip("0")) > _FLOAT_DIGITS:
            return None
        return (-Fraction(digits) if m[1] else Fraction(digits)), is_float
    if (m := _MV_FRACTION.fullmatch(normalized)) and int(m[3]) != 0:
        value = Fraction(int(m[2]), int(m[3]))
        return (-value if m[1] else value), False
    return None


def _numbers_verdict(pred: tuple[Fraction, bool], gold: tuple[Fraction, bool]) -> bool | None:
    """math-verify's verdict on two plain numbers where it cannot go otherwise; None where it might."""
    (p, p_float), (g, g_float) = pred, gold
    if p == g:
        return True
    if not (p_float or g_float) or abs(p - g) > _FLOAT_FAR:
        return False
    return None


def _mathvista_verdict(
    pred: Fraction, gold: Fraction, precision: int | None, answer_type: str | None
) -> bool | None:
    """MathVista's scorer (evaluation/calculate_score.py) on two numbers; None when it has no rule."""
    if answer_type == "integer":
        return int(pred) == int(gold)  # its int(float(x)): truncation, not rounding
    if precision is not None:
        return round(float(pred), precision) == round(float(gold), precision)
    return None


def _math_verify_timeout() -> int | None:
    # signal.alarm only works in the main thread; elsewhere math_verify would raise and
    # every answer would silently score False, so run without a timeout there instead.
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def math_verify_match(pred: str, gold: str) -> bool:
    """Symbolic equivalence by math_verify; False on any parse failure, error or timeout."""
    timeout = _math_verify_timeout()
    try:
        gold_parsed = parse(f"\\boxed{{{gold.strip().strip('$')}}}", parsing_timeout=timeout)
        pred_parsed = parse(f"\\boxed{{{pred.strip().strip('$')}}}", parsing_timeout=timeout)
        # verify is not symmetric: gold first, prediction second.
        return bool(gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except (Exception, TimeoutException):
        return False


def _choice_text(choices: list[str] | None, letter: str | None) -> str | None:
    if not choices or letter is None:
        return None
    index = ord(letter) - ord("A")
    return str(choices[index]) if index < len(choices) else None


def _given(value: Any) -> Any:
    """`value`, or None where a dataset column leaves it empty (None, NaN, NA, '')."""
    if isinstance(value, str):
        return value or None
    return None if value is None or pd.isna(value) else value


def _verdict(
    pred: str,
    gold: str,
    choices: list[str] | None = None,
    precision: int | None = None,
    unit: str | None = None,
    answer_type: str | None = None,
) -> tuple[bool, str]:
    """answers_match's verdict and the name of the rule that gave it."""
    pred, gold = _house_style(str(pred)), _house_style(str(gold))
    precision, unit, answer_type = _given(precision), _given(unit), _given(answer_type)
    precision = None if precision is None else int(precision)  # datasets store it as a float
    if unit is not None:
        pred, gold = _without_unit(pred, str(unit)), _without_unit(gold, str(unit))
    if not pred or not gold:
        return False, "empty"
    if _INTEGER.fullmatch(pred) and _INTEGER.fullmatch(gold):
        return int(pred) == int(gold), "integer"  # math-verify compares integers exactly too
    columns = dict(precision=precision, unit=unit, answer_type=answer_type)
    gold_letter = _LETTER_ONLY.match(_strip_wrappers(gold))
    if gold_letter:
        # Letter gold: the letter itself or the text of that option; never symbolic
        # matching of letters (math_verify would treat "B" as a variable).
        if extract_choice(pred) == gold_letter.group(1):
            return True, "choice"
        option = _choice_text(choices, gold_letter.group(1))
        return option is not None and answers_match(pred, option, **columns), "choice"
    pred_letter = _LETTER_ONLY.match(_strip_wrappers(pred))
    if pred_letter and choices:
        option = _choice_text(choices, pred_letter.group(1))
        return option is not None and answers_match(option, gold, **columns), "choice"
    pred_text, gold_text = _mv_normalized(pred), _mv_normalized(gold)
    if pred_text == gold_text:
        return True, "same_text"  # math-verify parses the same text the same way
    pred_number, gold_number = _plain_number(pred_text), _plain_number(gold_text)
    if pred_number and gold_number:
        verdict = _mathvista_verdict(pred_number[0], gold_number[0], precision, answer_type)
        if verdict is not None:
            return verdict, "mathvista"
        verdict = _numbers_verdict(pred_number, gold_number)
        if verdict is not None:
            return verdict, "number"
    return math_verify_match(pred, gold), "math_verify"


def answers_match(
    pred: str,
    gold: str,
    choices: list[str] | None = None,
    *,
    precision: int | None = None,
    unit: str | None = None,
    answer_type: str | None = None,
) -> bool:
    """True when the extracted prediction `pred` states the same answer as `gold`.

    Agrees with math-verify's default `verify` except for DEPARTURES_FROM_MATH_VERIFY.
    MathVista's per-question columns, when given: `precision` rounds both numbers to that
    many decimals, `unit` is stripped from the end of both, `answer_type` "integer"
    compares truncated integers, as MathVista's own scorer does.
    """
    return _verdict(pred, gold, choices, precision, unit, answer_type)[0]


def is_correct(
    completion: str,
    gold: str,
    choices: list[str] | None = None,
    *,
    precision: int | None = None,
    unit: str | None = None,
    answer_type: str | None = None,
) -> bool:
    """Whether the completion's final answer matches gold; unparseable output is wrong."""
    pred = extract_answer(completion)
    columns = dict(precision=precision, unit=unit, answer_type=answer_type)
    return pred is not None and answers_match(pred, gold, choices, **columns)


def format_ok(completion: str) -> bool:
    """Paper format: `<think>...</think>` once, at the start, then a `\\boxed{}` answer after it."""
    if completion.count("<think>") != 1 or completion.count("</think>") != 1:
        return False
    if not completion.lstrip().startswith("<think>"):
        return False
    _, after = completion.split("</think>")
    # A box inside the reasoning does not count as the answer position.
    return extract_boxed(after) is not None


def completion_text(c: Any) -> str:
    """Text of a TRL completion: a plain string or a list of chat messages."""
    if isinstance(c, str):
        return c
    if isinstance(c, dict):
        c = [c]
    parts = []
    for message in c or []:
        content = message.get("content", "") if isinstance(message, dict) else message
        if isinstance(content, list):  # multimodal-style [{"type": "text", "text": ...}]
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(str(content or ""))
    return "".join(parts)


# Per-question dataset columns the verifier uses (MathVista's scoring fields, and options).
QUESTION_COLUMNS = ("choices", "precision", "unit", "answer_type")


def accuracy_reward(completions: list[Any], answer: list[Any], **kwargs: Any) -> list[float]:
    """TRL reward: 1.0 for a correct final answer, else 0.0.

    Optional dataset columns `choices`, `precision`, `unit` and `answer_type` reach it as
    keyword lists aligned with the completions and are passed on to is_correct.
    """
    n = len(completions)
    choices, precision, unit, answer_type = (kwargs.get(name) or [None] * n for name in QUESTION_COLUMNS)
    rows = zip(completions, answer, choices, precision, unit, answer_type, strict=True)
    return [
        1.0 if is_correct(completion_text(c), str(gold), opts, precision=p, unit=u, answer_type=t) else 0.0
        for c, gold, opts, p, u, t in rows
    ]


def format_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """TRL reward: 1.0 when the completion follows the think-then-boxed format, else 0.0."""
    return [1.0 if format_ok(completion_text(c)) else 0.0 for c in completions]


def audit(
    completions: Sequence[Any],
    golds: Sequence[Any],
    choices: Sequence[list[str] | None] | None = None,
    *,
    extracted: bool = False,
    precision: Sequence[Any] | None = None,
    unit: Sequence[Any] | None = None,
    answer_type: Sequence[Any] | None = None,
) -> pd.DataFrame:
    """Where the rules and math-verify disagree: one row per (completion, gold).

    Columns: answer (extracted; missing when there is none), gold, rule (answers_match's
    verdict), math_verify (math_verify_match on the same answer; None without one),
    disagree, and path, the rule that decided: "integer", "choice", "same_text", "number",
    "mathvista" (a per-question column), "math_verify", "empty", or "unparsed" without an answer.
    `extracted=True` takes `completions` as already-extracted answers. The optional
    per-question columns are lists aligned with `completions`, as for accuracy_reward.
    An answer and gold that are both plain integers as written take math-verify's verdict
    without parsing (exact integer equality), so auditing integer answers costs little.
    """
    n = len(completions)
    columns = [col if col is not None else [None] * n for col in (choices, precision, unit, answer_type)]
    math_verify_verdicts: dict[tuple[str, str], bool] = {}  # answers repeat across samples
    rows = []
    for c, gold, opts, p, u, t in zip(completions, golds, *columns, strict=True):
        gold = str(gold)
        if extracted:
            answer = None if c is None else str(c).strip() or None
        else:
            answer = extract_answer(completion_text(c))
        if answer is None:
            rows.append((None, gold, False, None, False, "unparsed"))
            continue
        rule, path = _verdict(answer, gold, opts, p, u, t)
        if _INTEGER.fullmatch(answer) and _INTEGER.fullmatch(gold.strip()):
            mv = int(answer) == int(gold)  # math-verify compares integers exactly (tested)
        else:
            if (answer, gold) not in math_verify_verdicts:
                math_verify_verdicts[answer, gold] = math_verify_match(answer, gold)
            mv = math_verify_verdicts[answer, gold]
        rows.append((answer, gold, rule, mv, rule != mv, path))
    return pd.DataFrame(rows, columns=["answer", "gold", "rule", "math_verify", "disagree", "path"])


def audit_summary(audit_table: pd.DataFrame, examples: int = 5) -> dict[str, Any]:
    """Counts from an `audit` table and its first `examples` disagreements, as plain JSON types."""
    disagree = audit_table[audit_table["disagree"].astype(bool)]
    rule_only = int(disagree["rule"].astype(bool).sum())
    return {
        "rows": len(audit_table),
        "answered": int((audit_table["path"] != "unparsed").sum()),
        "rule_correct": int(audit_table["rule"].astype(bool).sum()),
        "math_verify_correct": int((audit_table["math_verify"] == True).sum()),  # noqa: E712 (None rows)
        "disagreements": len(disagree),
        "rule_only": rule_only,
        "math_verify_only": len(disagree) - rule_only,
        "disagreements_by_path": {str(k): int(v) for k, v in disagree["path"].value_counts().items()},
        "examples": disagree.head(examples).drop(columns="disagree").to_dict("records"),
    }
