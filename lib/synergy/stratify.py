"""Difficulty stratification: sample the base model N times per question, bin by correct count.

Paper thresholds with N=16: L1 k>=12, L2 8..11, L3 5..7, L4 2..4, L5 k<2, written as the
minimum correct count of each level, `[12, 8, 5, 2, 0]`. Sampling runs in rounds; with
`early_stop` a question leaves as soon as its level can no longer change, which gives the
same levels as drawing all N because every sample is keyed by (seed, question, index).
Samples are cached on disk by (model, sampling params, prompt, index), so an interrupted
run resumes without redrawing anything it finished.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from synergy.config import StageConfig
from synergy.evaluation import (build_prompts, cache_for, choices_of, sample_questions,
                                to_dataset)
from synergy.generation import SamplingSpec

STAGE = "01_stratify"


@dataclasses.dataclass
class StratifyConfig(StageConfig):
    SECTION = "stratify"

    model: str
    benchmark: str
    n_samples: int
    level_min_correct: list[int]
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    prompt_suffix: str
    backend: Literal["hf", "vllm"]
    batch_rows: int
    early_stop: bool
    round_size: int
    n_examples: int

    def validate(self) -> None:
        self.require(self.n_samples >= 1, "n_samples", "must be >= 1")
        t = self.level_min_correct
        self.require(len(t) >= 2 and all(a > b for a, b in zip(t, t[1:])), "level_min_correct",
                     "must be strictly decreasing (L1 first), with at least two levels")
        self.require(t[0] <= self.n_samples and t[-1] == 0, "level_min_correct",
                     "must start at most n_samples and end with 0")
        self.require_sampling()
        for key in ("max_new_tokens", "batch_rows", "round_size"):
            self.require(getattr(self, key) >= 1, key, "must be >= 1")
        self.require(self.n_examples >= 0, "n_examples", "must be >= 0")

    @property
    def spec(self) -> SamplingSpec:
        return SamplingSpec(self.temperature, self.top_p, self.top_k, self.max_new_tokens)


# --- levels (pure) ------------------------------------------------------------------------

def level_of(n_correct: int, min_correct: list[int]) -> int:
    """1-based level of a correct count: the first level whose minimum it reaches."""
    for level, threshold in enumerate(min_correct, start=1):
        if n_correct >= threshold:
            return level
    raise ValueError(f"correct count {n_correct} below every threshold {min_correct}")


def assign_levels(n_correct, min_correct: list[int]) -> np.ndarray:
    return np.array([level_of(int(k), min_correct) for k in n_correct], dtype=int)


def level_decided(n_correct: int, n_drawn: int, *, n_total: int, min_correct: list[int]) -> bool:
    """True when every outcome of the remaining samples lands in the same level."""
    best = n_correct + (n_total - n_drawn)
    return level_of(n_correct, min_correct) == level_of(best, min_correct)


def samples_frame(questions: pd.DataFrame, drawn: list[list[dict]],
                  min_correct: list[int]) -> pd.DataFrame:
    """One row per question: its samples, correctness, lengths, pass rate and level."""
    # A benchmark's own difficulty column (e.g. the paper's released levels) is kept apart.
    out = questions.copy().reset_index(drop=True).rename(columns={"level": "source_level"})
    out["samples"] = [[s["text"] for s in d] for d in drawn]
    out["correct"] = [[bool(s["correct"]) for s in d] for d in drawn]
    out["lengths"] = [[int(s["n_tokens"]) for s in d] for d in drawn]
    out["n_truncated"] = [sum(bool(s["truncated"]) for s in d) for d in drawn]
    out["n_drawn"] = [len(d) for d in drawn]
    out["n_correct"] = [sum(c) for c in out["correct"]]
    out["pass_rate"] = out["n_correct"] / out["n_drawn"]
    out["level"] = assign_levels(out["n_correct"], min_correct)
    return out


# --- analysis (pure) ----------------------------------------------------------------------

def level_table(df: pd.DataFrame, n_levels: int = 5) -> pd.DataFrame:
    """Per level: questions, share, mean pass rate, mean response length, samples drawn."""
    rows = []
    for level in range(1, n_levels + 1):
        part = df[df["level"] == level]
        lengths = [n for ls in part["lengths"] for n in ls]
        rows.append({"level": f"L{level}", "questions": len(part),
                     "share": len(part) / max(1, len(df)),
                     "pass_rate": part["pass_rate"].mean() if len(part) else np.nan,
                     "mean_length": float(np.mean(lengths)) if lengths else np.nan,
                     "samples_drawn": int(part["n_drawn"].sum())})
    return pd.DataFrame(rows)


def steps_by_level(df: pd.DataFrame) -> pd.DataFrame:
    """How the world's difficulty knob (steps) spreads over levels (empty for real data)."""
    if "steps" not in df.columns:
        return pd.DataFrame()
    return pd.crosstab(df["steps"], df["level"].map(lambda v: f"L{v}"))


def level_figure(df: pd.DataFrame):
    import plotly.express as px

    table = level_table(df)
    return px.bar(table, x="level", y="questions", text="questions",
                  hover_data={"share": ":.1%", "pass_rate": ":.2f"},
                  title="Questions per difficulty level")


def length_figure(df: pd.DataFrame):
    import plotly.express as px

    long = df[["qid", "level", "lengths", "correct"]].explode(["lengths", "correct"])
    long = long.assign(level=long["level"].map(lambda v: f"L{v}"),
                       tokens=long["lengths"].astype(int),
                       correct=long["correct"].astype(bool))
    return px.box(long.sort_values("level"), x="level", y="tokens", color="correct",
                  points=False, title="Response length (tokens) per level, by correctness")


def examples(df: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """A few responses per level (text kept raw; render with HTML escaping)."""
    picks = []
    for level, part in df.groupby("level"):
        for _, row in part.sample(min(n, len(part)), random_state=seed).iterrows():
            picks.append({"level": f"L{level}", "question": row["question"],
                          "answer": row["answer"], "pass_rate": round(row["pass_rate"], 2),
                          "response": row["samples"][0], "correct": row["correct"][0]})
    return pd.DataFrame(picks)


def early_stop_saving(df: pd.DataFrame, n_samples: int) -> float:
    """Samples drawn as a fraction of drawing all N for every question."""
    return float(df["n_drawn"].sum()) / (len(df) * n_samples)


# --- the stage ----------------------------------------------------------------------------

def run(cfg: StratifyConfig, progress: bool = True) -> pd.DataFrame:
    """Stratify the benchmark with the base model; saves `levels/` and the manifest."""
    from synergy import data
    from synergy.generation import make_engine
    from synergy.runs import now, save_dataset, set_seed, stage_dir, write_manifest

    started, t0 = now(), time.perf_counter()
    set_seed(cfg.seed)
    out = stage_dir(cfg, STAGE)
    model_path, model_id = data.resolve_model(cfg.model, cfg.output_root, cfg.run_name)
    questions, bench_id = data.load_benchmark(cfg.benchmark, cfg.output_root, cfg.run_name)
    engine = make_engine(model_path, cfg.backend, cfg.batch_rows)
    cache = cache_for(out / "cache", model_path, cfg.spec, cfg.seed)
    prompts, images = build_prompts(engine, questions, cfg.prompt_suffix)
    stop = (functools.partial(level_decided, n_total=cfg.n_samples,
                              min_correct=cfg.level_min_correct) if cfg.early_stop else None)
    drawn = sample_questions(engine, prompts, list(questions["answer"]), cfg.spec,
                             n_samples=cfg.n_samples, round_size=cfg.round_size, seed=cfg.seed,
                             cache=cache, stop=stop, progress=progress, images=images,
                             choices=choices_of(questions))
    df = samples_frame(questions, drawn, cfg.level_min_correct)
    save_dataset(to_dataset(df), out / "levels")
    write_manifest(out, cfg, started=started, upstream={"model": model_id, "benchmark": bench_id},
                   extra={"seconds": time.perf_counter() - t0, "model_path": model_path,
                          "samples_drawn": int(df["n_drawn"].sum()),
                          "level_counts": {f"L{k}": int(v) for k, v in
                                           df["level"].value_counts().sort_index().items()}})
    return df


def load_levels(output_root: str, run_name: str) -> pd.DataFrame:
    """The stratified benchmark of a run, as later stages read it."""
    from synergy.runs import load_dataset_dir

    return load_dataset_dir(Path(output_root) / run_name / STAGE / "levels").to_pandas()
