"""Model merging: does an interpolation between the SFT and RL models beat both?

The paper merges its SFT and RL models with MergeKit (Linear, TIES, SLERP) at SFT ratios
0, 0.25, 0.5, 0.75, 1 and finds that Linear and SLERP interpolate between the parents
while TIES is erratic. Here every merge goes through mergekit's Python API (`run_merge`),
is saved as safetensors with the tokenizer (and processor files, for VLMs), and is reused
when its mergekit config and the fingerprints of its input models did not change.

SFT ratio r means: linear weights r (SFT) and 1 - r (RL); SLERP from the RL model (t = 0)
to the SFT model (t = 1); TIES and DARE-TIES add the SFT and RL task vectors (relative to
the base model) with weights r and 1 - r.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from synergy import distill, evaluation, judging, reuse, stages, stratify
from synergy.evaluation import EvaluatingConfig, load_results
from synergy.files import atomic_path, write_text
from synergy.models import fingerprint
from synergy.progress import progress_bar
from synergy.runs import Run, StageResult, StageRun, stage_run
from synergy.stats import overall_difference

Method = Literal["linear", "slerp", "ties", "dare_ties"]
# Files a processor or chat template needs that mergekit's tokenizer copy may not bring.
_SIDE_FILES = (".json", ".jinja", ".txt", ".model")


@dataclasses.dataclass
class MergingConfig(EvaluatingConfig):
    SECTION = "merging"

    sft_model: str
    rl_model: str
    base_model: str
    methods: list[Method]
    sft_ratios: list[float]
    density: float
    dtype: Literal["float32", "bfloat16", "float16"]
    shard_params: int
    eval_questions: int     # level-stratified subset the merges are evaluated on (0: all)
    judged_questions: int   # up to this many more pool questions for a merge whose "ends
    #   above RL" the benchmark leaves open, and for the RL model (`judging`; 0: none)
    synergy_margin: float

    MANIFEST_DEFAULTS = {"judged_questions": 0}  # runs before the judged questions

    def validate(self) -> None:
        super().validate()
        self.require(len(self.methods) >= 1 and len(set(self.methods)) == len(self.methods),
                     "methods", "must list at least one method, each once")
        self.require(len(self.sft_ratios) >= 1 and all(0 <= r <= 1 for r in self.sft_ratios),
                     "sft_ratios", "must be one or more ratios in [0, 1]")
        self.require(0 < self.density <= 1, "density", "must be in (0, 1]")
        self.require(self.shard_params >= 1, "shard_params", "must be >= 1")
        self.require(self.eval_questions >= 0, "eval_questions", "must be >= 0 (0: all)")
        self.require(self.judged_questions >= 0, "judged_questions", "must be >= 0 (0: none)")
        self.require(0 <= self.synergy_margin < 1, "synergy_margin", "must be in [0, 1)")


# --- merges (pure config, then mergekit) --------------------------------------------------

def merge_name(method: str, ratio: float) -> str:
    return f"{method}-{ratio:g}"


def mergekit_config(method: str, ratio: float, sft: str, rl: str, base: str, *,
                    density: float, dtype: str) -> dict:
    """The mergekit configuration of one merge at SFT ratio `ratio` (a plain dict)."""
    if method == "linear":
        models = [{"model": sft, "parameters": {"weight": ratio}},
                  {"model": rl, "parameters": {"weight": 1.0 - ratio}}]
        return {"merge_method": "linear", "models": models, "dtype": dtype}
    if method == "slerp":
        return {"merge_method": "slerp", "base_model": rl, "models": [{"model": rl},
                {"model": sft}], "parameters": {"t": ratio}, "dtype": dtype}
    if method in ("ties", "dare_ties"):
        models = [{"model": sft, "parameters": {"weight": ratio, "density": density}},
                  {"model": rl, "parameters": {"weight": 1.0 - ratio, "density": density}}]
        return {"merge_method": method, "base_model": base, "models": models,
                "parameters": {"normalize": True}, "dtype": dtype}
    raise ValueError(f"unknown merge method {method!r}")


# Packages whose version changes a merge.
MERGE_CODE = ("mergekit", "torch")


def merge_key(config: dict, seed: int) -> str:
    """Reuse key of a merge: its mergekit config with each model path replaced by the
    model's fingerprint, the seed (DARE samples), and the merging code's versions."""
    def swap(obj):
        if isinstance(obj, dict):
            return {k: (fingerprint(v) if k in ("model", "base_model") else swap(v))
                    for k, v in obj.items()}
        if isinstance(obj, list):
            return [swap(v) for v in obj]
        return obj

    return reuse.key({"config": swap(config), "seed": seed}, code=MERGE_CODE)


def merge_options(shard_params: int, seed: int):
    from mergekit.options import MergeOptions

    # Lazy loading plus small output shards keep peak memory near one model (bench/merge.py).
    return MergeOptions(copy_tokenizer=True, lazy_unpickle=True, low_cpu_memory=False,
                        out_shard_size=shard_params, random_seed=seed, quiet=True,
                        write_model_card=False, safe_serialization=True)


def run_mergekit(config: dict, out_path: str | Path, shard_params: int, seed: int) -> None:
    """One mergekit merge, written to `out_path`, plus the processor files it did not copy."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge

    run_merge(MergeConfiguration.model_validate(config), str(out_path),
              options=merge_options(shard_params, seed))
    donor = Path(config.get("base_model") or config["models"][0]["model"])
    if donor.is_dir():
        for f in donor.iterdir():
            if (f.is_file() and f.suffix in _SIDE_FILES and f.name != "config.json"
                    and not f.name.endswith(".index.json")
                    and not (Path(out_path) / f.name).exists()):
                shutil.copy2(f, Path(out_path) / f.name)


def ensure_merge(config: dict, folder: str | Path, *, shard_params: int,
                 seed: int) -> tuple[Path, bool, float]:
    """Merge into `folder/model` unless the same merge is there, whole (`reuse.reusable`: a
    damaged one is set aside and merged again). Returns (model, reused, seconds)."""
    folder, key = Path(folder), merge_key(config, seed)
    done = reuse.reusable(folder / "merge.json", key, folder / "model")
    if done:
        return folder / "model", True, float(done.get("seconds", 0.0))
    t0 = time.perf_counter()
    with atomic_path(folder) as tmp:
        run_mergekit(config, tmp / "model", shard_params, seed)
        seconds = time.perf_counter() - t0
        reuse.seal(tmp / "merge.json", key, tmp / "model", config=config, seconds=seconds)
    return folder / "model", False, seconds


def saved_dtype(path: str) -> str | None:
    """The dtype a local model folder was saved in (None for a hub id)."""
    import json

    config = Path(path) / "config.json"
    if not config.exists():
        return None
    data = json.loads(config.read_text())
    return data.get("dtype") or data.get("torch_dtype")


# --- analysis (pure) ----------------------------------------------------------------------

def merge_curves(table: pd.DataFrame, merges: pd.DataFrame) -> pd.DataFrame:
    """Per-level accuracy and length of every merge, with its method and SFT ratio.

    `table` is `evaluation.per_level` output; `merges` has model, method, sft_ratio.
    """
    out = table.merge(merges[["model", "method", "sft_ratio"]], on="model")
    return out.sort_values(["method", "level", "sft_ratio"]).reset_index(drop=True)


def merge_curve_figure(curves: pd.DataFrame, y: str = "accuracy"):
    """One panel per method, one line per level, SFT ratio on x (`y`: accuracy or length)."""
    import plotly.express as px

    what = "Accuracy" if y == "accuracy" else "Mean response length (tokens)"
    fig = px.line(curves, x="sft_ratio", y=y, color="level", facet_col="method", markers=True,
                  hover_data=["model", "questions"],
                  title=f"{what} vs SFT ratio (0 = RL model, 1 = SFT model)")
    if y == "accuracy":
        fig.update_yaxes(range=[0, 1])
    return fig


def synergy_check(table: pd.DataFrame, merges: list[str], parents: tuple[str, str] = ("sft",
                  "rl"), margin: float = 0.0) -> pd.DataFrame:
    """Does a merge beat both parents on some level without losing to the better one elsewhere?

    Per merge: the levels where it beats both parents by more than `margin`, the levels where
    it is more than `margin` below the better parent, and `synergy` (first nonempty, second
    empty). Levels are L1..L5 only ("all" is their mixture).
    """
    acc = table[table["level"] != "all"].pivot(index="model", columns="level",
                                              values="accuracy")
    best = acc.loc[list(parents)].max()
    worst_parent_ok = acc.loc[list(parents)].min()
    rows = []
    for name in merges:
        if name not in acc.index:
            continue
        above = [lv for lv in acc.columns if acc.at[name, lv] > best[lv] + margin]
        below = [lv for lv in acc.columns if acc.at[name, lv] < best[lv] - margin]
        under_both = [lv for lv in acc.columns if acc.at[name, lv] < worst_parent_ok[lv] - margin]
        rows.append({"model": name, "above_both": ", ".join(above),
                     "below_better_parent": ", ".join(below),
                     "below_both": ", ".join(under_both),
                     "synergy": bool(above) and not below})
    return pd.DataFrame(rows)


def against_rl(results: dict[str, pd.DataFrame], merges: pd.DataFrame,
               judged: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Each merge between the parents (0 < ratio < 1) minus the RL model overall, paired
    over the questions both answered (a judged pair also over its judged questions:
    `judging.with_judged`), in points with its 95% interval, and how many questions."""
    pooled = judging.with_judged(results, judged)
    rows = []
    for m in merges.loc[(merges["sft_ratio"] > 0) & (merges["sft_ratio"] < 1), "model"]:
        d = overall_difference(pooled[m], pooled["rl"])
        rows.append({"model": m, "vs RL": d.short(), "questions": d.questions,
                     "judged": m in judged})
    return pd.DataFrame(rows, columns=["model", "vs RL", "questions", "judged"])


def merge_table(curves: pd.DataFrame, y: str = "accuracy") -> pd.DataFrame:
    """Wide view of the curves: one row per (method, SFT ratio), one column per level."""
    return curves.pivot_table(index=["method", "sft_ratio"], columns="level", values=y)


# --- the stage ----------------------------------------------------------------------------

@dataclasses.dataclass
class MergingResult(StageResult):
    merges: pd.DataFrame               # one row per merge: method, ratio, path, reused, time
    per_level: pd.DataFrame            # evaluation.per_level of parents and merges
    results: dict[str, pd.DataFrame]   # evaluation per model
    synergy: pd.DataFrame              # synergy_check of every merge
    judged: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)  # the RL model
    #   and the merges open on the benchmark, on more pool questions (`judge`)


def run(cfg: MergingConfig, progress: bool = True) -> MergingResult:
    """Merge (or reuse) every method x ratio, evaluate merges and parents per level.

    Writes `merges/<method>-<ratio>/model`, `merges.csv`, `eval/`, `per_level.csv`,
    `synergy_check.csv` and the manifest (`model_paths`: every merge).
    """
    with stage_run(cfg, stages.MERGING) as ctx:
        lengths = {"eval_max_new_tokens": cfg.eval_max_new_tokens}
        paths = {role: ctx.model(spec, role, lengths).path
                 for role, spec in (("sft", cfg.sft_model), ("rl", cfg.rl_model),
                                    ("base", cfg.base_model))}
        rows = []
        plan = [(m, r) for m in cfg.methods for r in cfg.sft_ratios]
        for method, ratio in progress_bar(plan, desc="merging", unit="merge",
                                          disable=not progress):
            config = mergekit_config(method, ratio, paths["sft"], paths["rl"], paths["base"],
                                     density=cfg.density, dtype=cfg.dtype)
            name = merge_name(method, ratio)
            path, reused, seconds = ensure_merge(config, ctx.dir / "merges" / name,
                                                 shard_params=cfg.shard_params, seed=cfg.seed)
            rows.append({"model": name, "method": method, "sft_ratio": ratio,
                         "path": ctx.run.relative(path), "reused": reused,
                         "merge_seconds": seconds})
        merges = pd.DataFrame(rows)
        write_text(ctx.dir / "merges.csv", merges.to_csv(index=False))

        # Merges and parents on the same level-stratified subset (the parents' samples of it
        # come from 03's and 04's cache): fewer questions, wider intervals per level.
        questions = stratify.level_subset(stratify.benchmark_questions(
            stratify.load(cfg.output_root, cfg.run_name).levels), cfg.eval_questions, cfg.seed)
        ctx.record(eval_questions=len(questions))
        suffix = stratify.config_of(ctx.run).prompt_suffix
        to_eval = {**paths, **{m: str(ctx.run.resolve(p))
                               for m, p in zip(merges["model"], merges["path"])}}
        # Linear and SLERP at ratio 0 / 1 are their parent weight for weight (tested), so
        # they share its samples; mergekit's config.json differs, which would defeat the cache.
        same = {merge_name(m, r): ("sft" if r == 1 else "rl") for m in ("linear", "slerp")
                for r in (0.0, 1.0) if saved_dtype(paths["sft" if r == 1 else "rl"]) == cfg.dtype}
        results = {}
        for name, path in to_eval.items():
            if name in same and same[name] in results:
                results[name] = results[same[name]]
                continue
            if progress:
                print(f"evaluating {name}", flush=True)
            results[name] = evaluation.evaluate_for(cfg, path, questions, suffix, progress)
        table = evaluation.save_results(ctx.dir, results, record=ctx.record)
        judged = judge(cfg, ctx, merges, results, to_eval, questions, suffix, progress)
        check = synergy_check(table, list(merges["model"]), margin=cfg.synergy_margin)
        write_text(ctx.dir / "synergy_check.csv", check.to_csv(index=False))
        ctx.set_models({m: ctx.run.resolve(p) for m, p in zip(merges["model"], merges["path"])},
                       main=merges["model"].iloc[0])
        ctx.record(merges_reused=int(merges["reused"].sum()),
                   any_synergy=bool(check["synergy"].any()) if len(check) else False)
    return MergingResult(ctx.manifest, ctx.dir, merges, table, results, check, judged)


def judge(cfg: MergingConfig, ctx: StageRun, merges: pd.DataFrame, results: dict[str, pd.DataFrame],
          paths: dict[str, str], questions: pd.DataFrame, suffix: str,
          progress: bool) -> dict[str, pd.DataFrame]:
    """The merges between the parents (0 < ratio < 1) whose "ends above RL" the benchmark
    leaves open, and the RL model, evaluated on up to `judged_questions` pool questions no
    model of the run trained on (`judging`); saved in `judged/`, empty when none is open."""
    between = merges.loc[(merges["sft_ratio"] > 0) & (merges["sft_ratio"] < 1), "model"]
    pairs = judging.open_pairs(results, {m: "rl" for m in between}, cfg.synergy_margin) \
        if cfg.judged_questions else {}
    extra = questions.iloc[:0]
    if pairs:
        ctx.needs(stages.DISTILL)
        extra = judging.questions(
            distill.load(cfg.output_root, cfg.run_name).traces, judging.trained_qids(ctx.run),
            questions, cfg.judged_questions, cfg.seed, cfg._key("judged_questions"))
    if progress and cfg.judged_questions:
        print(judging.summary(pairs, extra, cfg.judged_questions, cfg._key("judged_questions")),
              flush=True)
    judged = {}
    for name in (["rl", *pairs] if len(extra) else []):
        if progress:
            print(f"evaluating {name} on {len(extra)} more pool questions ("
                  + (f"the RL model of {', '.join(pairs)}" if name == "rl" else "its \"ends "
                     "above RL\" is open on the benchmark") + ": judged_questions)", flush=True)
        judged[name] = evaluation.evaluate_for(cfg, paths[name], extra, suffix, progress)
    judging.save(ctx.dir, judged, extra)
    ctx.record(judged_questions=len(extra) if judged else 0, judged_models=list(judged))
    return judged


def load(output_root: str, run_name: str) -> MergingResult:
    """The saved artifacts of this stage, as `run` returns them (for the report)."""
    r = Run(output_root, run_name)
    folder = r.dir(stages.MERGING)
    return MergingResult(r.manifest(stages.MERGING), folder, pd.read_csv(folder / "merges.csv"),
                         pd.read_csv(folder / "per_level.csv"), load_results(folder),
                         pd.read_csv(folder / "synergy_check.csv", keep_default_na=False),
                         judging.load(folder))


def statement(res: MergingResult) -> str:
    """What the merges of this run show, computed from their numbers (markdown)."""
    curves = merge_curves(res.per_level, res.merges)
    acc = res.per_level[res.per_level["level"] != "all"].pivot(
        index="model", columns="level", values="accuracy")
    lines = []
    for method, part in curves[curves["level"] != "all"].groupby("method", sort=False):
        inside = [min(acc.at["sft", lv], acc.at["rl", lv]) - 0.02 <= a
                  <= max(acc.at["sft", lv], acc.at["rl", lv]) + 0.02
                  for lv, a in zip(part["level"], part["accuracy"])]
        overall = curves[(curves["method"] == method) & (curves["level"] == "all")]
        lines.append(f"- **{method}**: {np.mean(inside):.0%} of (ratio, level) points lie "
                     f"between the parents (±0.02); overall accuracy by SFT ratio "
                     + ", ".join(f"{r:g} → {a:.2f}" for r, a in
                                 zip(overall["sft_ratio"], overall["accuracy"])) + ".")
    winners = list(res.synergy.loc[res.synergy["synergy"].astype(str) == "True", "model"])
    lines.append(f"- Merges that beat both parents on some level without losing on another: "
                 f"{', '.join(winners) if winners else 'none'} (the paper found none).")
    return "\n".join(lines)
