"""The pure pieces of the combination strategies (05_strategies): fading schedules, the
per-group gate, SFT targets and how their loss is normalised, merging a regenerated
sub-batch into a GRPO batch, data blends, and the difficulty router.

Everything here takes plain values, tensors or DataFrames and returns the same, so each
piece is tested on a crafted input whose right answer is known; `synergy.strategies` wires
them into TRL's `GRPOTrainer` and into the stage.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd

Schedule = Literal["linear", "cosine", "step"]
SCHEDULES = ("linear", "cosine", "step")
# TRL loss types whose token mean spans the whole accumulated batch (`num_items_in_batch`);
# the others average per micro-batch and divide by the accumulation steps.
GLOBAL_TOKEN_MEAN = ("dapo", "cispo", "vespo")


# --- schedules ----------------------------------------------------------------------------

def schedule(kind: Schedule, t: float, start: float, end: float, horizon: float = 1.0,
             n_steps: int = 3) -> float:
    """A value fading from `start` (training progress t = 0) to `end` (t >= horizon).

    linear: a straight line; cosine: half a cosine (UFT anneals its hint length this way,
    reaching 0 at 60% of training); step: `n_steps - 1` equal plateaus over the horizon
    stepping from `start` towards `end`, then `end` (3 plateaus of the prefix share: the
    paper's "full trace -> a prefix -> none").
    """
    u = min(max(t / horizon, 0.0), 1.0) if horizon > 0 else 1.0
    if kind == "linear":
        return start + (end - start) * u
    if kind == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * u))
    if kind == "step":
        if n_steps < 2:
            raise ValueError(f"a step schedule needs n_steps >= 2, got {n_steps}")
        k = min(int(u * (n_steps - 1)), n_steps - 1)
        return start + (end - start) * k / (n_steps - 1)
    raise ValueError(f"unknown schedule '{kind}'; known: {SCHEDULES}")


# --- the gate: which questions of a rollout batch leave the GRPO loss ----------------------

def group_correct(accuracy, num_generations: int):
    """Correct rollouts per group (`accuracy` laid out group by group, as TRL repeats each
    prompt `num_generations` times in a row)."""
    import torch

    return (torch.as_tensor(accuracy, dtype=torch.float32) >= 1.0).view(
        -1, num_generations).sum(dim=1)


def gated_rows(accuracy, num_generations: int, gate: int):
    """Per rollout: True when its group has at most `gate` correct rollouts (gate 0: the
    whole group failed, the paper's "never solved")."""
    return (group_correct(accuracy, num_generations) <= gate).repeat_interleave(num_generations)


def first_of_group(n_rows: int, num_generations: int):
    """True on the first rollout of each group: the row that carries the group's SFT target
    (one expert trace per question, not one per rollout)."""
    import torch

    return torch.arange(n_rows) % num_generations == 0


# --- SFT targets and their share of the loss ---------------------------------------------

def sft_target(tokenizer, prompt: str, response: str, n_tokens: int | None = None,
               eos: bool = True) -> tuple[list[int], list[int]]:
    """(token ids, loss mask) of prompt + response: mask 1 on response tokens only.

    `n_tokens` keeps the first n response tokens (a prefix; no end-of-turn token then);
    the whole response ends with the tokenizer's end-of-turn token, as SFT data does.
    """
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"]
    if n_tokens is not None:
        r = r[:n_tokens]
    elif eos and tokenizer.eos_token_id is not None:
        r = r + [tokenizer.eos_token_id]
    return p + r, [0] * len(p) + [1] * len(r)


def prefix_of(tokenizer, response: str, share: float) -> tuple[str, int]:
    """(text, tokens) of the first round(share x length) tokens of a response."""
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    n = int(round(min(max(share, 0.0), 1.0) * len(ids)))
    return (tokenizer.decode(ids[:n]) if n else ""), n


def pad_targets(targets: Sequence[tuple[list[int], list[int]] | None], pad_id: int
                ) -> dict[str, Any]:
    """Right-padded `sft_ids`, `sft_attention`, `sft_mask` (rows, width); a None row is all
    zeros (no target). Width 1 when no row has a target."""
    import torch

    width = max([len(t[0]) for t in targets if t is not None] + [1])
    ids = torch.full((len(targets), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(targets), width), dtype=torch.long)
    mask = torch.zeros((len(targets), width), dtype=torch.float32)
    for i, t in enumerate(targets):
        if t is not None:
            n = len(t[0])
            ids[i, :n] = torch.tensor(t[0])
            attention[i, :n] = 1
            mask[i, :n] = torch.tensor(t[1], dtype=torch.float32)
    return {"sft_ids": ids, "sft_attention": attention, "sft_mask": mask}


def sft_loss(nll_sum, tokens_here, num_items, loss_type: str, accumulation: int,
             steps_per_generation: int, num_processes: int = 1):
    """The SFT term of one micro-batch, normalised the way TRL normalises its GRPO loss.

    `nll_sum`: summed NLL of this micro-batch's SFT tokens (`tokens_here` of them);
    `num_items`: SFT tokens in the whole generation batch. For the token-mean-over-the-batch
    losses (dapo, cispo, vespo) the divisor is the batch's tokens rescaled to one
    accumulation window, exactly as `_compute_loss` rescales `num_items_in_batch`; for the
    per-micro-batch losses (grpo, bnpo, dr_grpo, ...) it is a token mean divided by the
    accumulation steps. Either way the terms of one optimizer step add up to a token mean.
    """
    if loss_type in GLOBAL_TOKEN_MEAN:
        denominator = max(float(num_items), 1.0) / num_processes \
            * accumulation / steps_per_generation
        return nll_sum / denominator
    return nll_sum / max(float(tokens_here), 1.0) / accumulation


# --- merging a regenerated sub-batch ------------------------------------------------------

_LEFT = ("prompt_ids", "prompt_mask")
_RIGHT = ("completion_ids", "completion_mask", "old_per_token_logps", "ref_per_token_logps",
          "sampling_per_token_logps", "importance_sampling_ratio", "tool_mask")
_ROWS = ("advantages",)


def _pad(t, width: int, side: str, value):
    import torch.nn.functional as F

    extra = width - t.shape[1]
    if extra <= 0:
        return t
    return F.pad(t, (extra, 0) if side == "left" else (0, extra), value=value)


def replace_rows(batch: dict[str, Any], rows, sub: dict[str, Any], pad_id: int
                 ) -> dict[str, Any]:
    """`batch` with its `rows` (bool per row) replaced by the rows of `sub`, a batch TRL
    scored the same way (prompts left-padded, completions right-padded); widths are padded
    to fit both, `num_items_in_batch` recounted. Text batches only."""
    import torch

    rows = torch.as_tensor(rows, dtype=torch.bool)
    unknown = set(batch) - set(_LEFT) - set(_RIGHT) - set(_ROWS) - {"num_items_in_batch"}
    if unknown:
        raise ValueError(f"cannot merge batch fields {sorted(unknown)} (text batches only)")
    out = dict(batch)
    for key in (*_LEFT, *_RIGHT):
        if batch.get(key) is None:
            continue
        side = "left" if key in _LEFT else "right"
        value = pad_id if key.endswith("_ids") else 0
        width = max(batch[key].shape[1], sub[key].shape[1])
        merged = _pad(batch[key], width, side, value).clone()
        merged[rows.to(merged.device)] = _pad(sub[key], width, side, value).to(merged.dtype)
        out[key] = merged
    advantages = batch["advantages"].clone()
    advantages[rows.to(advantages.device)] = sub["advantages"].to(advantages.dtype)
    out["advantages"] = advantages
    mask = out["completion_mask"] if out.get("tool_mask") is None \
        else out["completion_mask"] * out["tool_mask"]
    out["num_items_in_batch"] = mask.sum()
    return out


# --- data blends --------------------------------------------------------------------------

BLEND_COLUMNS = ["qid", "question", "answer", "level", "source", "response", "n_tokens"]


def _with_images(blend: pd.DataFrame, drawn: pd.DataFrame) -> pd.DataFrame:
    """Each row's question images (VLM questions), for the SFT trainer."""
    if "images" not in drawn.columns:
        return blend
    images = dict(zip(drawn["qid"], drawn["images"]))
    return blend.assign(images=[images[q] for q in blend["qid"]])


def data_mixing_blend(drawn: pd.DataFrame) -> pd.DataFrame:
    """The paper's data mixing: every correct response of the RL model's samples, and the
    expert trace of each question it never solves.

    `drawn`: one row per training question with qid, question, answer, level, samples,
    correct, lengths (the RL model's samples) and expert, expert_tokens (the expert trace).
    """
    rows = []
    for q in drawn.itertuples(index=False):
        kept = [(s, n) for s, ok, n in zip(q.samples, q.correct, q.lengths) if ok]
        rows += [(q.qid, q.question, q.answer, q.level, "rl", s, n) for s, n in kept]
        if not kept:
            rows.append((q.qid, q.question, q.answer, q.level, "expert", q.expert,
                         q.expert_tokens))
    return _with_images(pd.DataFrame(rows, columns=BLEND_COLUMNS), drawn)


def adaptive_blend(drawn: pd.DataFrame, pass_threshold: float) -> pd.DataFrame:
    """One target per training question: the RL model's shortest correct response where its
    pass rate is above `pass_threshold` (it solves the question reliably, concisely), the
    expert long trace otherwise (long thinking only where it is needed)."""
    rows = []
    for q in drawn.itertuples(index=False):
        rate = float(np.mean(q.correct)) if len(q.correct) else 0.0
        kept = [(n, s) for s, ok, n in zip(q.samples, q.correct, q.lengths) if ok]
        if rate > pass_threshold and kept:
            n, s = min(kept, key=lambda x: x[0])
            rows.append((q.qid, q.question, q.answer, q.level, "rl", s, n))
        else:
            rows.append((q.qid, q.question, q.answer, q.level, "expert", q.expert,
                         q.expert_tokens))
    return _with_images(pd.DataFrame(rows, columns=BLEND_COLUMNS), drawn)


def blend_composition(blend: pd.DataFrame) -> pd.DataFrame:
    """Per level (of the base) and overall: questions, RL rows, expert rows, expert share,
    mean tokens per row."""
    def summary(part: pd.DataFrame) -> dict:
        return {"questions": part["qid"].nunique(), "rl_rows": int((part["source"] == "rl").sum()),
                "expert_rows": int((part["source"] == "expert").sum()),
                "expert_share": float((part["source"] == "expert").mean()) if len(part) else 0.0,
                "mean_tokens": float(part["n_tokens"].mean()) if len(part) else 0.0}

    rows = [{"level": f"L{lv}", **summary(p)} for lv, p in blend.groupby("level")]
    return pd.DataFrame(rows + [{"level": "all", **summary(blend)}])


# --- the router ---------------------------------------------------------------------------

def majority(answers: Sequence[str | None]) -> tuple[str | None, float]:
    """(most frequent answer, its share of all samples); unparseable answers (None) count in
    the denominator but never win."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, 0.0
    answer, n = counts.most_common(1)[0]
    return answer, n / len(answers)


def probe_table(texts: Sequence[Sequence[str]], correct: Sequence[Sequence[bool]],
                lengths: Sequence[Sequence[int]]) -> pd.DataFrame:
    """Per question, from k concise probe samples: agreement (share of the majority answer),
    whether the majority answer is right, and the probes' total tokens."""
    from synergy.verify import extract_answer

    rows = []
    for t, c, n in zip(texts, correct, lengths):
        answers = [extract_answer(x) for x in t]
        top, share = majority(answers)
        rows.append({"agreement": share,
                     "majority_correct": bool(top is not None and any(
                         ok for a, ok in zip(answers, c) if a == top)),
                     "probe_tokens": float(np.sum(n))})
    return pd.DataFrame(rows)


def route(probes: pd.DataFrame, long_accuracy, long_tokens, threshold: float,
          signal: str = "agreement") -> pd.DataFrame:
    """Per question: confident (`signal` >= threshold) -> the probes' majority answer, else
    the long-CoT model's answer; tokens = the probes' plus, when routed, the long answer's."""
    routed = probes[signal].to_numpy() < threshold
    accuracy = np.where(routed, np.asarray(long_accuracy, dtype=float),
                        probes["majority_correct"].to_numpy(dtype=float))
    tokens = probes["probe_tokens"].to_numpy() + np.where(routed, np.asarray(
        long_tokens, dtype=float), 0.0)
    return pd.DataFrame({"routed": routed, "accuracy": accuracy, "tokens": tokens})


def threshold_candidates(values) -> list[float]:
    """Every distinct decision on these signal values: each value (route what lies below
    it), and one above the largest (route every question)."""
    values = sorted({float(v) for v in values})
    return values + [values[-1] + 1.0 if values else 1.0]


def choose_threshold(probes: pd.DataFrame, long_accuracy, long_tokens,
                     candidates: Sequence[float], signal: str = "agreement"
                     ) -> tuple[float, pd.DataFrame]:
    """The threshold with the best accuracy on a validation split (ties: fewer tokens, then
    the lower threshold); returns it and the table of every candidate."""
    rows = []
    for th in candidates:
        r = route(probes, long_accuracy, long_tokens, th, signal)
        rows.append({"threshold": th, "accuracy": r["accuracy"].mean(),
                     "tokens": r["tokens"].mean(), "routed_share": r["routed"].mean()})
    table = pd.DataFrame(rows)
    best = table.sort_values(["accuracy", "tokens", "threshold"],
                             ascending=[False, True, True]).iloc[0]
    return float(best["threshold"]), table


def oracle(acc_a, tokens_a, acc_b, tokens_b) -> pd.DataFrame:
    """Per question, the better of two models (ties: the one with fewer tokens): the upper
    bound of any per-question choice between them."""
    acc_a, acc_b = np.asarray(acc_a, dtype=float), np.asarray(acc_b, dtype=float)
    tokens_a, tokens_b = np.asarray(tokens_a, dtype=float), np.asarray(tokens_b, dtype=float)
    pick_b = (acc_b > acc_a) | ((acc_b == acc_a) & (tokens_b < tokens_a))
    return pd.DataFrame({"pick_b": pick_b, "accuracy": np.where(pick_b, acc_b, acc_a),
                         "tokens": np.where(pick_b, tokens_b, tokens_a)})
