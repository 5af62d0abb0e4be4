"""One model that learns when to think (beyond the paper; after Thinkless, arXiv 2505.13379).

The model starts every answer with a mode token, `<short>` (a concise answer) or `<long>`
(a long careful trace; Thinkless calls it `<think>`, which here already opens every trace):

1. Mode tokens: added to the tokenizer (the processor's tokenizer for a vision-language
   model), the embedding rows resized where the vocabulary has no room; SFT trains the
   new rows.
2. Warm-up: SFT where each question appears in both modes: `<short>` + a correct concise
   answer of the RL parent (its shortest correct sample), `<long>` + the expert trace.
   Forcing each mode afterwards should give the accuracy and length of the parent that
   mode imitates, level by level (`forced_mode_table`).
3. Decoupled GRPO: the mode token's clipped policy-gradient loss is averaged over the
   rollouts apart from the response tokens' loss (TRL's, averaged over response tokens)
   and weighted `hybrid_mode_loss_weight`: with one token against hundreds, a plain token
   mean gives the choice a weak, biased signal and the policy collapses to one mode.
   The reward prefers the short mode when both are right: a correct `<long>` answer earns
   `hybrid_long_margin` less accuracy reward than a correct `<short>` one (Thinkless: 1.0
   short vs 0.5 long when right, -1 when wrong; with group-normalised advantages only the
   gaps count: theirs puts a long right answer half-way to a wrong one, ours `margin` of
   the way, so a long answer still pays wherever it is right more often by that margin).
   Per step the share of think-mode rollouts is logged, per level of the training
   questions too: a collapse to one mode shows as a line at 0 or 1.

The existing `adaptive` SFT blend (`data_mixing`) stays as the naive baseline: one target
per question chosen by the RL parent's pass rate, no mode token, no RL.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from synergy import evaluation, mixing, models, reuse
from synergy.files import atomic_path
from synergy.stats import level_intervals
from synergy.strategies import trainer
from synergy.strategies.config import Spec, StrategiesConfig
from synergy.verify import (
    accuracy_reward,
    completion_text,
    format_ok,
    format_reward,
    is_correct,
)

SHORT, THINK = "<short>", "<long>"
MODES = {"short": SHORT, "think": THINK}
WARMUP, RL = "hybrid-warmup", "hybrid"
LEVELS = ("L1", "L2", "L3", "L4", "L5")
# The decoupled GRPO's own curves (beside TRL's reward and length).
CURVES = {"strategy/think_share": "think-mode share (all)",
          **{f"strategy/think_share_{lv}": f"think-mode share {lv}" for lv in LEVELS},
          "strategy/mode_loss": "mode-token loss", "strategy/response_loss": "response loss",
          "rewards/accuracy_reward/mean": "accuracy reward",
          "completions/mean_length": "completion length (tokens)"}


def specs(cfg: StrategiesConfig) -> list[Spec]:
    """The warm-up (SFT from `hybrid_start` with the mode tokens) and the decoupled GRPO
    from it."""
    return [Spec(WARMUP, "hybrid", cfg.hybrid_start, "sft"),
            Spec(RL, "hybrid", WARMUP, "grpo",
                 Plan(cfg.hybrid_mode_loss_weight, cfg.hybrid_long_margin),
                 overrides=(("learning_rate", cfg.hybrid_learning_rate),
                            ("max_completion_length", cfg.hybrid_max_completion_length),
                            ("n_train_questions", cfg.hybrid_train_questions)))]


# --- mode tokens --------------------------------------------------------------------------

def mode_of(text: str) -> str | None:
    """"short" or "think" by a response's first token, None without a mode token."""
    text = text.lstrip()
    return next((m for m, tok in MODES.items() if text.startswith(tok)), None)


def response_of(text: str) -> str:
    """A response without its leading mode token."""
    mode = mode_of(text)
    return text.lstrip()[len(MODES[mode]):] if mode else text


def typical_rows(weight, ids: list[int], seed: int = 0) -> None:
    """Set the rows `ids` of an embedding matrix to draws from a normal with the mean and
    covariance of its other rows: new tokens that look like typical tokens and differ
    from each other. (transformers' `mean_resizing` draws with the covariance scaled by
    1e-9: two mode tokens would start as one, and the warm-up hardly tells them apart.)"""
    import torch

    with torch.no_grad():
        keep = torch.ones(weight.shape[0], dtype=torch.bool)
        keep[ids] = False
        old = weight[keep].float()
        mean = old.mean(0)
        cov = (old - mean).T @ (old - mean) / len(old)
        jitter = 1e-6 * cov.diagonal().mean().clamp(min=1e-12)
        lower = torch.linalg.cholesky(cov + jitter * torch.eye(len(mean)))
        z = torch.randn(len(ids), len(mean), generator=torch.Generator().manual_seed(seed))
        weight[ids] = (mean + z @ lower.T).to(weight.dtype)


def with_mode_tokens(source: str | Path, out: Path) -> Path:
    """A copy of the model at `source` whose tokenizer knows the mode tokens (plain added
    tokens, so decoded text keeps them) and whose embedding matrix has a row for each
    (resized where the vocabulary has no spare rows), each drawn like a typical token
    (`typical_rows`; the output rows too when they are not tied). Remade when the source
    changed or the copy is not whole."""
    record, source_fp = out.parent / f"{out.name}.json", models.fingerprint(source)
    if reuse.reusable(record, source_fp, out):
        return out
    model, processing = models.load(source)
    tok = models.tokenizer_of(processing)
    tok.add_tokens(list(MODES.values()), special_tokens=False)
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok), mean_resizing=False)
    ids = tok.convert_tokens_to_ids(list(MODES.values()))
    typical_rows(model.get_input_embeddings().weight, ids)
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != \
            model.get_input_embeddings().weight.data_ptr():
        typical_rows(output.weight, ids, seed=1)
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processing.save_pretrained(tmp)
        for extra in ("chat_template.jinja",):
            if (Path(source) / extra).exists() and not (tmp / extra).exists():
                shutil.copy2(Path(source) / extra, tmp / extra)
    reuse.seal(record, source_fp, out, spec=str(source))
    return out


def mode_token_ids(processing) -> dict[str, int]:
    tok = models.tokenizer_of(processing)
    ids = {m: tok.convert_tokens_to_ids(t) for m, t in MODES.items()}
    if any(i is None or i == tok.unk_token_id for i in ids.values()):
        raise ValueError(f"hybrid: the tokenizer lacks the mode tokens {list(MODES.values())}")
    return ids


# --- warm-up data -------------------------------------------------------------------------

WARMUP_COLUMNS = ["qid", "question", "answer", "level", "mode", "response", "n_tokens"]


def warmup_rows(drawn: pd.DataFrame) -> pd.DataFrame:
    """Each question in both modes: `<short>` + the RL parent's shortest correct sample in
    the think-then-box format (else its shortest correct one; questions it never solves
    have no short row), `<long>` + the expert trace.

    `drawn`: one row per question with qid, question, answer, level, samples, correct,
    lengths (the RL parent's samples) and expert, expert_tokens (the expert trace)."""
    rows = []
    for q in drawn.itertuples(index=False):
        # Correct answers in the paper's format (a short trace, then the box) first: a
        # bare right guess is short but teaches guessing.
        kept = sorted((not format_ok(s), n, s)
                      for s, ok, n in zip(q.samples, q.correct, q.lengths) if ok)
        if kept:
            _, n, s = kept[0]
            rows.append((q.qid, q.question, q.answer, q.level, "short", SHORT + s, n + 1))
        rows.append((q.qid, q.question, q.answer, q.level, "think", THINK + q.expert,
                     q.expert_tokens + 1))
    out = pd.DataFrame(rows, columns=WARMUP_COLUMNS)
    if "images" in drawn.columns:
        images = dict(zip(drawn["qid"], drawn["images"]))
        out["images"] = [images[q] for q in out["qid"]]
    return out


def warmup_composition(rows: pd.DataFrame) -> pd.DataFrame:
    """Per level and overall: questions, short rows, think rows, mean tokens per mode."""
    def summary(part: pd.DataFrame) -> dict:
        by = part.groupby("mode")["n_tokens"]
        return {"questions": part["qid"].nunique(),
                "short_rows": int((part["mode"] == "short").sum()),
                "think_rows": int((part["mode"] == "think").sum()),
                "short_tokens": by.mean().get("short", np.nan),
                "think_tokens": by.mean().get("think", np.nan)}

    return pd.DataFrame([{"level": f"L{lv}", **summary(p)} for lv, p in rows.groupby("level")]
                        + [{"level": "all", **summary(rows)}])


# --- rewards ------------------------------------------------------------------------------

def on_response(func):
    """A reward function scoring each completion without its mode token (same name)."""
    @functools.wraps(func)
    def scored(completions, **kwargs):
        return func(completions=[response_of(completion_text(c)) for c in completions],
                    **kwargs)
    return scored


def mode_preference_reward(completions, answer, margin: float, **kwargs) -> list[float]:
    """-margin for a correct answer in the think mode, else 0: added to the accuracy reward
    (same weight), a correct short answer earns 1, a correct long one 1 - margin."""
    n = len(completions)
    choices = kwargs.get("choices") or [None] * n
    out = []
    for c, gold, opts in zip(completions, answer, choices):
        text = completion_text(c)
        long_right = mode_of(text) == "think" and is_correct(response_of(text), str(gold), opts)
        out.append(-margin if long_right else 0.0)
    return out


def reward_functions(margin: float) -> list:
    """Accuracy and format on the response (04's), and the mode preference."""
    prefer = functools.partial(mode_preference_reward, margin=margin)
    prefer.__name__ = "mode_preference_reward"
    return [on_response(accuracy_reward), on_response(format_reward), prefer]


# --- the decoupled loss -------------------------------------------------------------------

def mode_token_loss(logps, old_logps, advantages, epsilon_low: float, epsilon_high: float,
                    beta: float = 0.0, ref_logps=None):
    """Per rollout: the clipped policy-gradient loss of its first completion token (the
    mode), plus beta x TRL's k3 KL to the reference on that token. All arguments are (B,)
    tensors (the log-probs of the first token)."""
    import torch

    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    loss = -torch.min(ratio * advantages, clipped * advantages)
    if beta != 0.0 and ref_logps is not None:
        loss = loss + beta * (torch.exp(ref_logps - logps) - (ref_logps - logps) - 1)
    return loss


@dataclasses.dataclass(frozen=True)
class Plan:
    mode_weight: float     # weight of the mode token's loss (mean over rollouts)
    long_margin: float     # accuracy reward a correct long answer gives up


@functools.cache
def trainer_class():
    """The stage's GRPO trainer (no SFT targets routed) with the decoupled mode-token loss
    (TRL imported when asked)."""
    import torch

    class HybridTrainer(trainer.trainer_class()):
        """GRPO on the response tokens (TRL's loss, the mode token masked out of it) plus
        `mode_weight` x the mode token's loss averaged over rollouts (Thinkless's
        decoupled GRPO). Logs the think share per step and per level."""

        def __init__(self, *args, plan: Plan, **kwargs):
            super().__init__(*args, **kwargs)
            self.plan = plan
            self.mode_ids = mode_token_ids(self.processing_class)

        def _generate_and_score_completions(self, inputs):
            batch = super()._generate_and_score_completions(inputs)
            if not self.model.training:
                return batch
            first = batch["completion_ids"][:, 0]
            has_first = batch["completion_mask"][:, 0] > 0
            think = ((first == self.mode_ids["think"]) & has_first).float()
            all_think = self.accelerator.gather(think)
            self._log("think_share", all_think.mean())
            levels = [x.get("level") for x in inputs]
            if all(lv is not None for lv in levels):
                for lv in sorted(set(levels)):
                    rows = torch.tensor([v == lv for v in levels], device=think.device)
                    self._log(f"think_share_L{int(lv)}", think[rows].mean())
            # The response part: TRL's loss without the mode token (`tool_mask` multiplies
            # TRL's loss mask), its token count without it.
            keep = torch.ones_like(batch["completion_mask"])
            keep[:, 0] = 0
            batch["tool_mask"] = keep * batch.get("tool_mask", 1)
            batch["num_items_in_batch"] = self.accelerator.gather(
                (batch["completion_mask"] * batch["tool_mask"]).sum()).sum()
            batch["mode_num_items"] = self.accelerator.gather(has_first.float().sum()).sum()
            self.count(mode_tokens=has_first.sum())
            return batch

        def _compute_loss(self, model, inputs):
            captured = {}
            compute = self._get_per_token_logps_and_entropies

            def capture(*args, **kwargs):  # the same forward's log-probs, mode token included
                out = compute(*args, **kwargs)
                captured["logps"] = out[0]
                return out

            self._get_per_token_logps_and_entropies = capture
            try:
                response = super()._compute_loss(model, inputs)
            finally:
                del self._get_per_token_logps_and_entropies
            if "mode_num_items" not in inputs:  # evaluation: TRL's loss alone
                return response
            logps = captured["logps"][:, 0]
            old = inputs.get("old_per_token_logps")
            old = logps.detach() if old is None else old[:, 0]
            ref = inputs.get("ref_per_token_logps")
            advantages = inputs["advantages"]
            advantages = advantages[:, 0] if advantages.dim() > 1 else advantages
            per_row = mode_token_loss(logps, old, advantages, self.epsilon_low,
                                      self.epsilon_high, self.beta,
                                      None if ref is None else ref[:, 0])
            has_first = inputs["completion_mask"][:, 0]
            mode = mixing.sft_loss((per_row * has_first).sum(), has_first.sum(),
                                   inputs["mode_num_items"], self.loss_type,
                                   self.current_gradient_accumulation_steps,
                                   self.args.steps_per_generation,
                                   self.accelerator.num_processes)
            self.last_loss_parts = {"response": float(response.detach()),
                                    "mode": float(mode.detach())}
            self._log("mode_loss", mode.detach())
            self._log("response_loss", response.detach())
            return response + self.plan.mode_weight * mode

    return HybridTrainer


# --- evaluation ---------------------------------------------------------------------------

def think_shares(results: pd.DataFrame) -> list[float]:
    """Per question: the share of its samples in the think mode."""
    return [float(np.mean([mode_of(s) == "think" for s in samples])) if len(samples)
            else np.nan for samples in results["samples"]]


def long_share(name: str, results: pd.DataFrame) -> pd.Series:
    """Per question, the share of answers given in long thinking: the hybrid's think-mode
    samples, the router's and the oracle's questions answered by the SFT model; SFT always
    thinks long, RL never."""
    if "think_share" in results:
        return results["think_share"].astype(float)
    for column in ("routed", "picked_sft"):
        if column in results:
            return results[column].astype(float)
    value = {"sft": 1.0, "rl": 0.0}.get(name, np.nan)
    return pd.Series(value, index=results.index, dtype=float)


def mode_table(results: dict[str, pd.DataFrame], names: list[str]) -> pd.DataFrame:
    """Per model and level: questions, accuracy with its 95% interval, mean generated tokens
    and the share of answers in long thinking (`long_share`)."""
    frames = []
    for name in names:
        df = results[name].assign(think_share=long_share(name, results[name]))
        acc = level_intervals(df)
        extra = [(f"L{lv}", p) for lv, p in df.groupby("level")] + [("all", df)]
        acc["mean_tokens"] = [p["mean_length"].mean() for _, p in extra]
        acc["think_share"] = [p["think_share"].mean() for _, p in extra]
        frames.append(acc.assign(model=name))
    if not frames:
        return pd.DataFrame(columns=["model", "level", "questions", "accuracy",
                                     "accuracy_low", "accuracy_high", "mean_tokens",
                                     "think_share"])
    out = pd.concat(frames, ignore_index=True)
    return out[["model", *[c for c in out.columns if c != "model"]]]


def forced_modes(cfg: StrategiesConfig, warmup_path: str, questions: pd.DataFrame,
                 suffix: str, parents: dict[str, pd.DataFrame], progress: bool
                 ) -> pd.DataFrame:
    """The warm-up check: the warm-up model with each mode token forced (the answer starts
    with it), per level beside the parent that mode imitates (`parents`: evaluation of
    "sft" and "rl" on the same questions)."""
    results = dict(parents)
    for mode, token in MODES.items():
        results[f"forced {token}"] = evaluation.evaluate_for(
            cfg, warmup_path, questions, suffix, progress, response_prefix=token)
    table = mode_table(results, list(results))
    imitates = {"forced " + SHORT: "rl", "forced " + THINK: "sft"}
    return table.assign(imitates=table["model"].map(imitates).fillna(""))
