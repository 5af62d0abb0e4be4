"""The world's task: chains of single-digit operations, and how answers to them are written.

A question is a chain of operations applied left to right to a running value that stays in
0..`max_value` ("3 *4 -8 *3" -> 12); its difficulty is the number of operations. This
module holds the questions (`Question`, the evaluation and training splits, the benchmark
table every stage reads) and the answer styles the models are trained on: the direct
answer, the short trace, the careful long trace with its verification. The image world's
variant of the task (the start shown only as a count of marks in an image) is at the end.

Pure and deterministic: no model, no torch. `synergy.world` trains the tiny base on this
task; the teachers (`synergy.distill`) and analyses write and read its traces.
"""

from __future__ import annotations

import dataclasses
import random
from typing import TYPE_CHECKING, Iterable

import pandas as pd

from synergy.files import content_hash

if TYPE_CHECKING:
    from synergy.world import WorldConfig

THINK_OPEN, THINK_CLOSE, BOXED = "<think>", "</think>", "\\boxed{"
OPS = ("+", "-", "*")


@dataclasses.dataclass(frozen=True)
class Question:
    start: int
    ops: tuple[tuple[str, int], ...]

    @property
    def text(self) -> str:
        return " ".join([str(self.start)] + [f"{op}{n}" for op, n in self.ops])

    @property
    def steps(self) -> int:
        return len(self.ops)

    def values(self) -> list[int]:
        """Running value after each operation."""
        out, v = [], self.start
        for op, n in self.ops:
            v = apply_op(v, op, n)
            out.append(v)
        return out

    def transitions(self) -> list[tuple[int, str, int, int]]:
        """(value before, operation, operand, value after) of each step."""
        after = self.values()
        return [(v, op, n, nv) for v, (op, n), nv in zip([self.start, *after[:-1]], self.ops,
                                                          after)]

    @property
    def answer(self) -> int:
        return self.values()[-1]

    @property
    def qid(self) -> str:
        return "q" + content_hash(self.text, 10)


def apply_op(value: int, op: str, n: int) -> int:
    return value + n if op == "+" else value - n if op == "-" else value * n


def random_question(rng: random.Random, steps: int, max_value: int) -> Question:
    """Operations are drawn among those that keep the running value in 0..max_value."""
    value = rng.randint(0, 9)
    start, ops = value, []
    for _ in range(steps):
        choices = [(op, n) for op in OPS for n in range(1 if op != "*" else 2, 10)
                   if 0 <= apply_op(value, op, n) <= max_value]
        by_op = {}
        for op, n in choices:
            by_op.setdefault(op, []).append(n)
        op = rng.choice(sorted(by_op))  # each feasible operator equally likely
        n = rng.choice(by_op[op])
        ops.append((op, n))
        value = apply_op(value, op, n)
    return Question(start, tuple(ops))


def eval_questions(cfg: WorldConfig) -> list[Question]:
    """The fixed evaluation split: distinct questions, equally many per step count."""
    rng = random.Random(cfg.eval_seed)
    levels = list(range(cfg.min_steps, cfg.max_steps + 1))
    seen, out = set(), []
    attempts = 0
    while len(out) < cfg.n_eval_questions:
        steps = levels[len(out) % len(levels)]
        q = random_question(rng, steps, cfg.max_value)
        attempts += 1
        if q.text not in seen or attempts > 100 * cfg.n_eval_questions:
            seen.add(q.text)
            out.append(q)
    return out


def train_questions(cfg: WorldConfig, n: int, seed: int,
                    steps: Iterable[int] | None = None) -> list[Question]:
    """Fresh questions disjoint from the eval split (steps drawn uniformly from `steps`)."""
    held_out = {q.text for q in eval_questions(cfg)}
    pool = list(steps or range(cfg.min_steps, cfg.max_steps + 1))
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        q = random_question(rng, rng.choice(pool), cfg.max_value)
        if q.text not in held_out:
            out.append(q)
    return out


def questions_frame(questions: list[Question], kind: str = "text") -> pd.DataFrame:
    """The benchmark table every stage reads: qid, question, answer, steps; in the image
    world the question hides its start, which `images` shows (`image_text`, `start_image`)."""
    frame = pd.DataFrame({"qid": [q.qid for q in questions],
                          "question": [q.text for q in questions],
                          "answer": [str(q.answer) for q in questions],
                          "steps": [q.steps for q in questions]})
    if kind == "image":
        frame["question"] = [image_text(q) for q in questions]
        frame["images"] = [[start_image(q.start)] for q in questions]
    return frame


def parse_question(text: str) -> Question:
    """Inverse of `Question.text` (teachers and analyses work from the stored text)."""
    head, *rest = text.split()
    if head == HIDDEN_START:
        raise ValueError(f"question {text!r} hides its start in an image (the image world): "
                         "its text alone is no world question; the programmatic teachers "
                         "write text-world traces only (use trace_set 'eureka-distill')")
    return Question(int(head), tuple((tok[0], int(tok[1:])) for tok in rest))


def direct_answer(q: Question) -> str:
    return f"{BOXED}{q.answer}}}"


def step_text(value: int, op: str, n: int, new: int) -> str:
    """One step as every trace writes it: `3+4=7.`"""
    return f"{value}{op}{n}={new}."


def chain_text(q: Question) -> str:
    """Every step of `q` as the traces write them: `3*4=12. 12-8=4. 4*3=12.`"""
    return " ".join(step_text(*t) for t in q.transitions())


def short_trace(q: Question) -> str:
    return f"{THINK_OPEN} {chain_text(q)}{THINK_CLOSE} {BOXED}{q.answer}}}"


def checked_trace(q: Question) -> str:
    """A short trace with a brief, hedged check of its last step before the answer: the
    reflection habit ("Hmm, let me check") a real instruct model has at a low rate, so the
    base writes meta-thinking words rarely and SFT raises their rate instead of inventing
    them. Shorter than the careful trace's verification and phrased apart from it."""
    prev, op, n, value = q.transitions()[-1]
    return (f"{THINK_OPEN} {chain_text(q)} Hmm, let me check: "
            f"{check_text(prev, op, n, value)}.{THINK_CLOSE} {BOXED}{value}}}")


def check_text(value: int, op: str, n: int, new: int) -> str:
    """An inverse operation that recovers the previous value (local, no lookup needed)."""
    if op == "+":
        return f"{new}-{n}={value}"
    if op == "-":
        return f"{new}+{n}={value}"
    return f"{new}/{n}={value}"


def slip(value: int, rng: random.Random, max_value: int = 19) -> int:
    """A wrong value near the right one, still in range."""
    options = [v for v in (value - 2, value - 1, value + 1, value + 2) if 0 <= v <= max_value]
    return rng.choice(options)


def careful_trace(q: Question, rng: random.Random, slip_rate: float = 0.1) -> str:
    """Correct, structured long CoT: the chain of steps, the answer, then verification.

    The chain is the base's own short-trace format, so SFT changes the style rather than
    teaching a new skill; a slip is caught at once ("Wait, no"). After the answer comes
    the reflection of real long-CoT traces (doubt, re-checking the last step, the answer
    again), which only needs copying from nearby text.
    """
    chain = []
    for value, op, n, new in q.transitions():
        if rng.random() < slip_rate:
            chain.append(f"{step_text(value, op, n, slip(new, rng))} Wait, no: "
                         f"{step_text(value, op, n, new)}")
        else:
            chain.append(step_text(value, op, n, new))
    prev, op, n, value = q.transitions()[-1]
    return (f"{THINK_OPEN} Let me solve it step by step. First, {' '.join(chain)} So the "
            f"answer is {value}. Hmm, maybe I made a mistake. Let me verify the last step: "
            f"{prev}{op}{n}={value}. Yes, that is right, because {check_text(prev, op, n, value)}. "
            f"Then the answer is {value}.{THINK_CLOSE} {BOXED}{value}}}")


# --- the image world: the starting value only in the image --------------------------------
#
# The same questions and answers; the text shows "?" for the start and one 56 x 56 image
# shows it as a count of filled squares on a 3 x 3 grid (0..9). Counts, not drawn digits:
# the two-block vision tower learns to count squares in a few dozen steps and did not learn
# to read drawn digits in a few hundred.

HIDDEN_START = "?"
IMAGE_SIDE, CELL, MARK = 56, 17, 13  # pixels: the image, a grid cell, a filled square


def image_text(q: Question) -> str:
    """The question as the image world writes it: everything but the start."""
    return " ".join([HIDDEN_START] + [f"{op}{n}" for op, n in q.ops])


def start_image(value: int):
    """`value` (0..9) filled squares on a 3 x 3 grid, row by row, on white."""
    from PIL import Image, ImageDraw

    if not 0 <= value <= 9:
        raise ValueError(f"a start image shows 0..9 marks, not {value}")
    image = Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), "white")
    draw = ImageDraw.Draw(image)
    for k in range(value):
        row, col = divmod(k, 3)
        x, y = 4 + col * CELL, 4 + row * CELL
        draw.rectangle([x, y, x + MARK - 1, y + MARK - 1], fill="black")
    return image


def image_trace(q: Question) -> str:
    """A long-CoT trace that reads the image first (the Eureka-Distill-style set's
    assistant turn): count, the steps, a check of the last one, the answer."""
    prev, op, n, value = q.transitions()[-1]
    return (f"{THINK_OPEN} The image shows {q.start} marks, so we start with {q.start}. "
            f"First, {chain_text(q)} So the answer is {value}. Let me check the last step: "
            f"{prev}{op}{n}={value}. Yes.{THINK_CLOSE} {BOXED}{value}}}")


def op_probability(value: int, op: str, n: int, max_value: int) -> float:
    """The chance that `random_question` applies (op, n) to the running value `value`."""
    by_op: dict[str, list[int]] = {}
    for o in OPS:
        for k in range(1 if o != "*" else 2, 10):
            if 0 <= apply_op(value, o, k) <= max_value:
                by_op.setdefault(o, []).append(k)
    return 1 / (len(by_op) * len(by_op[op])) if n in by_op.get(op, ()) else 0.0


def blind_accuracy(questions: list[Question], max_value: int) -> float:
    """The expected accuracy of the best model that sees the image world's text but not its
    image: per question, the most likely answer over the starts the generator could have
    drawn for these operations (Bayes' rule on `random_question`), averaged."""
    total = 0.0
    for q in questions:
        answers: dict[int, float] = {}
        for start in range(10):
            chance, value = 0.1, start
            for op, n in q.ops:
                chance *= op_probability(value, op, n, max_value)
                value = apply_op(value, op, n)
            if chance:
                answers[value] = answers.get(value, 0.0) + chance
        total += max(answers.values()) / sum(answers.values())
    return total / len(questions)
