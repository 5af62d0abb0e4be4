"""SFT of the base on a blend of the RL model's answers and expert traces.

- data_mixing (the paper's): sample the RL model `mix_samples` times per training question,
  keep every correct response, add the expert trace of each question it never solves; SFT
  of the base on the blend.
- adaptive (the naive baseline of choosing the mode per question; `hybrid` is the real
  one): one target per question, RL's shortest correct response where its pass rate is
  above `adaptive_pass_threshold`, the expert trace elsewhere; optionally GRPO after
  (`adaptive-grpo`).
"""

from __future__ import annotations

import pandas as pd

from synergy import mixing
from synergy.evaluation import SamplingSpec
from synergy.strategies.config import Spec, StrategiesConfig
from synergy.strategies.shared import sampled

BLENDS = ("data_mixing", "adaptive")


def specs(cfg: StrategiesConfig, family: str) -> list[Spec]:
    if family == "data_mixing":
        return [Spec("data_mixing", family, "base", "sft")]
    out = [Spec("adaptive", family, "base", "sft")]
    if cfg.adaptive_grpo:
        out.append(Spec("adaptive-grpo", family, "adaptive", "grpo"))
    return out


def rl_samples(cfg: StrategiesConfig, rl_path: str, questions: pd.DataFrame, cache_root,
               suffix: str, progress: bool) -> pd.DataFrame:
    """`mix_samples` samples of the RL model per training question (blends and the hybrid's
    short targets draw on the same samples)."""
    spec = SamplingSpec(cfg.mix_temperature, 1.0, 0, cfg.mix_max_new_tokens)
    return sampled(cfg, rl_path, questions, cfg.mix_samples, spec, cache_root, suffix,
                   progress)


def blends(cfg: StrategiesConfig, drawn: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The SFT blend of each blend family this execution runs (`drawn`: `rl_samples`)."""
    make = {"data_mixing": mixing.data_mixing_blend,
            "adaptive": lambda d: mixing.adaptive_blend(d, cfg.adaptive_pass_threshold)}
    return {f: make[f](drawn).assign(blend=f) for f in BLENDS if f in cfg.families}


def blend_composition(blend_table: pd.DataFrame) -> pd.DataFrame:
    """`mixing.blend_composition` of each blend (data mixing, adaptive), stacked."""
    return pd.concat([mixing.blend_composition(part).assign(blend=name) for name, part in
                      blend_table.groupby("blend", sort=False)], ignore_index=True) \
        if len(blend_table) else pd.DataFrame()
