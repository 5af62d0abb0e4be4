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
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from synergy import data, row_rules, stages
from synergy.config import StageConfig
from synergy.evaluation import sample_table, save_audit, to_dataset
from synergy.files import load_dataset_dir, save_dataset, write_text
from synergy.generation import ENGINE_DEFAULTS, SamplingSpec, VllmDtype, engine_for
from synergy.runs import Run, StageResult, stage_run
from synergy.stats import level_counts


@dataclasses.dataclass
class StratifyConfig(StageConfig):
    SECTION = "stratify"
    MANIFEST_DEFAULTS = ENGINE_DEFAULTS  # manifests from before the vLLM engine keys

    model: str
    benchmark: str
    n_samples: int
    level_min_correct: list[int]
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    prompt_suffix: str
    max_skipped_share: float
    max_question_chars: int   # longer questions are skipped rows (bounded before any work)
    max_image_pixels: int     # larger or unreadable images are skipped rows
    backend: Literal["hf", "vllm"]
    batch_rows: int
    vllm_dtype: VllmDtype
    vllm_memory: float
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
        self.require(0 <= self.max_skipped_share <= 1, "max_skipped_share", "must be in [0, 1]")
        self.require(self.max_question_chars >= 1, "max_question_chars", "must be >= 1")
        self.require(self.max_image_pixels >= 1, "max_image_pixels", "must be >= 1")
        self.require(0 <= self.vllm_memory < 1, "vllm_memory", "must be in [0, 1) (0: auto)")

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

@dataclasses.dataclass
class StratifyResult(StageResult):
    levels: pd.DataFrame  # one row per question: samples, correctness, pass rate, level


def level_questions(engine, model_path: str, questions: pd.DataFrame, cfg: StratifyConfig,
                    cache_root: str | Path, progress: bool = True) -> pd.DataFrame:
    """`samples_frame` of `questions` under `cfg`'s sampling and thresholds: the one
    leveling of a question table (the benchmark here, 02's training questions too)."""
    stop = (functools.partial(level_decided, n_total=cfg.n_samples,
                              min_correct=cfg.level_min_correct) if cfg.early_stop else None)
    drawn = sample_table(engine, model_path, questions, cfg.spec, n_samples=cfg.n_samples,
                         seed=cfg.seed, cache_root=cache_root, prompt_suffix=cfg.prompt_suffix,
                         stop=stop, round_size=cfg.round_size, progress=progress)
    return samples_frame(questions, drawn, cfg.level_min_correct)


def run(cfg: StratifyConfig, progress: bool = True) -> StratifyResult:
    """Stratify the benchmark with the base model; saves `levels/` and the manifest."""
    with stage_run(cfg, stages.STRATIFY) as ctx:
        model = ctx.model(cfg.model, "model", lengths={"max_new_tokens": cfg.max_new_tokens})
        questions, ctx.upstream["benchmark"], skipped = data.load_benchmark(
            cfg.benchmark, ctx.run, cfg.max_skipped_share,
            row_rules.Limits(cfg.max_question_chars, cfg.max_image_pixels))
        write_text(ctx.dir / "skipped_rows.csv", skipped.to_csv(index=False))
        engine = engine_for(cfg, model.path)
        df = level_questions(engine, model.path, questions, cfg, ctx.dir / "cache", progress)
        save_dataset(to_dataset(df), ctx.dir / "levels")
        save_audit(ctx.dir, {"base": df}, ctx.record)
        ctx.record(skipped_rows={"count": len(skipped),
                                 "share": len(skipped) / max(1, len(skipped) + len(questions)),
                                 "reasons": skipped["reason"].value_counts().to_dict()},
                   samples_drawn=int(df["n_drawn"].sum()),
                   level_counts={f"L{k}": int(v) for k, v in
                                 df["level"].value_counts().sort_index().items()})
    return StratifyResult(ctx.manifest, ctx.dir, df)


def load(output_root: str, run_name: str) -> StratifyResult:
    """The stratified benchmark of a run, as later stages read it."""
    r = Run(output_root, run_name)
    return StratifyResult(r.manifest(stages.STRATIFY), r.dir(stages.STRATIFY),
                          load_dataset_dir(r.dir(stages.STRATIFY) / "levels").to_pandas())


def config_of(run) -> StratifyConfig:
    """The stratification settings a run used (later stages level and prompt the same way)."""
    return StratifyConfig.from_manifest(run.manifest(stages.STRATIFY)["params"],
                                        stages.STRATIFY.name)


# Columns stratification adds to the benchmark table (the base's samples, not the questions).
SAMPLE_COLUMNS = ("samples", "correct", "lengths", "n_truncated", "n_drawn", "n_correct",
                  "pass_rate")


def benchmark_questions(levels: pd.DataFrame) -> pd.DataFrame:
    """The stratified benchmark without the base's samples: questions, answers, level,
    and whatever else the benchmark carries (images, choices)."""
    return levels.drop(columns=[c for c in SAMPLE_COLUMNS if c in levels.columns])


def level_subset(questions: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """`n` of the questions, each level keeping its share (largest remainders; at least one
    per non-empty level), picked by a seeded shuffle; all of them when `n` is 0 or not
    smaller. The order of `questions` is kept. Fewer questions widen each level's interval
    by about sqrt(len(questions) / n)."""
    if n <= 0 or n >= len(questions):
        return questions
    take = level_counts(questions["level"].value_counts(), n)
    rng = np.random.default_rng(seed)
    keep = []
    for level, k in take.items():
        index = questions.index[questions["level"] == level].to_numpy()
        keep.extend(rng.permutation(index)[:min(k, len(index))])
    return questions.loc[sorted(keep, key=questions.index.get_loc)]


def statement(df: pd.DataFrame, n_samples: int) -> str:
    """What this stratification shows, computed from its numbers (markdown)."""
    table = level_table(df)
    shares = ", ".join(f"{r.level} {r.questions} ({r.share:.0%})" for r in table.itertuples())
    thin = [r.level for r in table.itertuples() if r.share < 0.05]
    rates = ", ".join(f"{r.level} {r.pass_rate:.2f}" for r in table.itertuples()
                      if r.questions)
    lines = [f"- {len(df)} questions over the levels: {shares}.",
             f"- Mean pass rate per level: {rates}."]
    lines.append(f"- Levels with under 5% of the questions, too thin for per-level claims: "
                 f"{', '.join(thin)}." if thin else
                 "- Every level holds at least 5% of the questions.")
    if "steps" in df.columns:
        corr = np.corrcoef(df["steps"], df["pass_rate"])[0, 1]
        lines.append(f"- Correlation of the number of operations with the pass rate: "
                     f"{corr:+.2f} (levels follow the model, not only the knob).")
    lines.append(f"- Early stopping drew {early_stop_saving(df, n_samples):.0%} of the "
                 f"samples that drawing all {n_samples} per question would.")
    return "\n".join(lines)
