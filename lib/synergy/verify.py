"""Answer extraction and checking for `<think> ... </think> \\boxed{ANSWER}` responses.

One verifier for evaluation, stratification and GRPO rewards, so that the three
never disagree about what counts as correct.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction
from typing import Any

from math_verify import parse, verify
from math_verify.errors import TimeoutException

# math_verify's timeout uses signal.alarm (whole seconds, main thread only).
MATH_VERIFY_TIMEOUT_S = 3

_BOXED_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LETTER_ONLY = re.compile(r"^\(?([A-J])\)?[.:]?$")
_LETTER_LEAD = re.compile(r"^(?:\(([A-J])\)|([A-J])[.):])\s")
# Case-insensitive "answer" but case-sensitive letter, so "the answer is a prime" is no choice.
_ANSWER_IS_CHOICE = re.compile(
    r"(?i:answer)\s*(?:(?i:is)|:)[\s:*$]*(?:\\boxed\{|\\text\{|\\textbf\{)?\s*\(?([A-J])(?![A-Za-z0-9'’])"
)
_ANSWER_IS_TEXT = re.compile(r"(?i:the\s+(?:final\s+)?answer\s+is|answer\s*:)[\s:*]*")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_INT_FRAC = re.compile(r"([-+]?)\\frac\{([-+]?\d+)\}\{([-+]?\d+)\}")
_SLASH_FRAC = re.compile(r"[-+]?\d+/\d+")
_UNIT_AFTER_NUMBER = re.compile(
    r"^([-+]?[\d.,]+)\s*\\(?:text|mathrm|mbox)\{\s*[A-Za-z ]+\}(?:\^\{?\d\}?)?$"
)
_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|operatorname)\{([^{}]*)\}")
_LATEX_SPACE = re.compile(r"\\(?:[,;:!> ]|quad|qquad)")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree|\s*degrees?$")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![A-Za-z])")


def extract_boxed(text: str) -> str | None:
    """Content of the last top-level `\\boxed{...}`/`\\fbox{...}`; None if absent or unbalanced."""
    result, pos = None, 0
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
        result, pos = text[m.end() : i - 1], i
    return result


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


def normalize_answer(s: str) -> str:
    """Canonical string form of an answer for cheap exact comparison."""
    s = s.strip().replace("\\$", "").replace("$", "")
    s = _LATEX_SPACE.sub(" ", s)
    s = _LEFT_RIGHT.sub("", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = _DEGREES.sub("", s).strip()
    s = _UNIT_AFTER_NUMBER.sub(r"\1", s)
    s = _WRAPPER.sub(r"\1", s)
    s = s.replace("\\%", "").replace("%", "").replace("{,}", ",").strip().rstrip(".")
    # Thousands separators only without spaces: "1, 234" may well be a list.
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return "".join(s.split())


def as_number(s: str) -> Fraction | None:
    """Exact value of a normalized plain number (int, decimal, a/b, \\frac{a}{b}); else None."""
    try:
        if _NUMBER.fullmatch(s) or _SLASH_FRAC.fullmatch(s):
            return Fraction(s)
        if m := _INT_FRAC.fullmatch(s):
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return -value if m.group(1) == "-" else value
    except (ValueError, ZeroDivisionError):
        return None
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


def answers_match(pred: str, gold: str, choices: list[str] | None = None) -> bool:
    """True when the extracted prediction `pred` states the same answer as `gold`."""
    pred, gold = str(pred), str(gold)
    p, g = normalize_answer(pred), normalize_answer(gold)
    if not p or not g:
        return False
    if p == g:
        return True
    p_num, g_num = as_number(p), as_number(g)
    if p_num is not None and g_num is not None:
        return p_num == g_num  # plain numbers never need the slow symbolic path
    gold_letter = _LETTER_ONLY.match(_strip_wrappers(gold))
    if gold_letter:
        # Letter gold: the letter itself or the text of that option; never symbolic
        # matching of letters (math_verify would treat "B" as a variable).
        if extract_choice(pred) == gold_letter.group(1):
            return True
        option = _choice_text(choices, gold_letter.group(1))
        return option is not None and answers_match(pred, option)
    pred_letter = _LETTER_ONLY.match(_strip_wrappers(pred))
    if pred_letter and choices:
        option = _choice_text(choices, pred_letter.group(1))
        return option is not None and answers_match(option, gold)
    return math_verify_match(pred, gold)


def is_correct(completion: str, gold: str, choices: list[str] | None = None) -> bool:
    """Whether the completion's final answer matches gold; unparseable output is wrong."""
    pred = extract_answer(completion)
    return pred is not None and answers_match(pred, gold, choices)


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


def accuracy_reward(completions: list[Any], answer: list[Any], **kwargs: Any) -> list[float]:
    """TRL reward: 1.0 for a correct final answer, else 0.0 (optional `choices` column)."""
    choices = kwargs.get("choices") or [None] * len(completions)
    return [
        1.0 if is_correct(completion_text(c), str(gold), opts) else 0.0
        for c, gold, opts in zip(completions, answer, choices, strict=True)
    ]


def format_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """TRL reward: 1.0 when the completion follows the think-then-boxed format, else 0.0."""
    return [1.0 if format_ok(completion_text(c)) else 0.0 for c in completions]
