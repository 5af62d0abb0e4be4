"""Choosing the mode per question at inference time, and its upper bound.

- router: no training. `router_samples` concise samples of the RL model per question decide:
  their agreement (share of the majority answer) or the RL model's confidence (its mean
  token log-likelihood of them) at or above a threshold -> their majority answer, else the
  SFT model answers. The threshold is the best of every possible one on `n_val_questions`
  further pool questions (disjoint from training and evaluation); tokens count the probes.
- oracle: per question the better of SFT and RL, the upper bound of any router.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from synergy import evaluation, mixing, models, scoring
from synergy.evaluation import SamplingSpec, build_prompts
from synergy.strategies.config import StrategiesConfig
from synergy.strategies.shared import sampled

# Per-question columns of an evaluation that describe its samples (an oracle or a router
# answers with another model's samples).
SAMPLE_COLUMNS = ("samples", "correct", "lengths", "formatted", "n_truncated", "accuracy",
                  "mean_length", "format_rate")


def route_questions(cfg: StrategiesConfig, rl_path: str, sft_path: str,
                    questions: pd.DataFrame, val: pd.DataFrame, sft_eval: pd.DataFrame,
                    cache_root: Path, suffix: str, progress: bool):
    """(router's per-question results on the eval set, validation table, threshold)."""
    spec = SamplingSpec(cfg.eval_temperature, cfg.eval_top_p, cfg.eval_top_k,
                        cfg.router_max_new_tokens)

    def probes(qs):
        d = sampled(cfg, rl_path, qs, cfg.router_samples, spec, cache_root, suffix, progress)
        table = mixing.probe_table(d["samples"], d["correct"], d["lengths"])
        if cfg.router_signal == "confidence":
            table["confidence"] = confidence(rl_path, qs, d["samples"], suffix)
        return table.assign(samples=list(d["samples"]))

    sft_val = evaluation.evaluate_for(cfg, sft_path, val, suffix, progress)
    val_probes = probes(val)
    threshold, table = mixing.choose_threshold(
        val_probes, sft_val["accuracy"], sft_val["mean_length"],
        mixing.threshold_candidates(val_probes[cfg.router_signal]), cfg.router_signal)
    eval_probes = probes(questions)
    routed = mixing.route(eval_probes, sft_eval["accuracy"], sft_eval["mean_length"],
                          threshold, cfg.router_signal)
    out = questions.reset_index(drop=True).assign(
        accuracy=routed["accuracy"].to_numpy(), mean_length=routed["tokens"].to_numpy(),
        format_rate=np.nan, routed=routed["routed"].to_numpy(),
        # The answers given: the probes', or the SFT model's where the question was routed.
        samples=[list(s) if r else list(p) for p, s, r in zip(
            eval_probes["samples"], sft_eval["samples"], routed["routed"])])
    return out, table.assign(chosen=table["threshold"] == threshold), threshold


def confidence(model_path: str, questions: pd.DataFrame, samples: list[list[str]],
               suffix: str, batch: int = 32) -> list[float]:
    """Per question: the model's mean token log-likelihood of its own samples, averaged over
    them (scored with `scoring.token_kl`, which handles images; an empty sample counts as
    least confident)."""
    model, processing = models.load(model_path)
    prompts, images = build_prompts(SimpleNamespace(template=processing), questions, suffix)
    owner = [i for i, s in enumerate(samples) for _ in s]
    flat = [x for s in samples for x in s]
    tokens = scoring.token_kl(model.eval(), model, processing, [prompts[i] for i in owner],
                              flat, [images[i] for i in owner] if images else None, batch)
    per_sample = tokens.groupby("response")["logp_p"].mean().reindex(
        range(len(flat))).fillna(-1e9)
    return list(pd.Series(per_sample.to_numpy()).groupby(owner).mean())


def oracle_results(sft_eval: pd.DataFrame, rl_eval: pd.DataFrame) -> pd.DataFrame:
    """Per question the better of SFT and RL (the upper bound of any router)."""
    best = mixing.oracle(rl_eval["accuracy"], rl_eval["mean_length"], sft_eval["accuracy"],
                         sft_eval["mean_length"])
    keep = [c for c in rl_eval.columns if c not in SAMPLE_COLUMNS]
    pick = best["pick_b"].to_numpy()
    return rl_eval[keep].reset_index(drop=True).assign(
        accuracy=best["accuracy"].to_numpy(), mean_length=best["tokens"].to_numpy(),
        format_rate=np.nan, picked_sft=pick,
        samples=[list(s) if p else list(r) for r, s, p in zip(
            rl_eval["samples"], sft_eval["samples"], pick)])
