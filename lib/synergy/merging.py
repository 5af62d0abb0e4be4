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
import importlib.metadata
import re
import shutil
import time
from pathlib import Path
from typing import Literal

import pandas as pd

from synergy.evaluation import EvaluatingConfig
from synergy.runs import ArtifactError, content_hash

STAGE = "06_merging"
Method = Literal["linear", "slerp", "ties", "dare_ties"]
# How a stage name reads as a model name ("03_sft" -> "sft"); the three parents by role.
STAGE_LABELS = {"world": "base", "00_world": "base", "03_sft": "sft", "04_grpo": "rl"}
_STAGE_NAME = re.compile(r"^\d\d_[A-Za-z0-9_]+$")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
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
    synergy_margin: float

    def validate(self) -> None:
        super().validate()
        self.require(len(self.methods) >= 1 and len(set(self.methods)) == len(self.methods),
                     "methods", "must list at least one method, each once")
        self.require(len(self.sft_ratios) >= 1 and all(0 <= r <= 1 for r in self.sft_ratios),
                     "sft_ratios", "must be one or more ratios in [0, 1]")
        self.require(0 < self.density <= 1, "density", "must be in (0, 1]")
        self.require(self.shard_params >= 1, "shard_params", "must be >= 1")
        self.require(0 <= self.synergy_margin < 1, "synergy_margin", "must be in [0, 1)")


# --- where the parents are ----------------------------------------------------------------

def stage_models(output_root: str, run_name: str, stage: str) -> dict[str, str]:
    """Models a stage recorded in its manifest: name -> local folder (or hub id).

    Read from the manifest's `models` or `model_paths` mapping (name -> path, or name ->
    {"path": ...} / {"model_path": ...}), its `model_path` (named after the stage:
    "03_sft" -> "sft") and any `<name>_model_path` key. Relative paths are relative to the
    stage folder.
    """
    from synergy.runs import read_manifest

    folder = Path(output_root) / run_name / stage
    manifest = read_manifest(folder)
    found: dict[str, str] = {}
    for key in ("models", "model_paths"):
        listed = manifest.get(key)
        for name, value in (listed.items() if isinstance(listed, dict) else ()):
            if isinstance(value, dict):
                value = value.get("path") or value.get("model_path")
            if isinstance(value, str):
                found.setdefault(str(name), value)
    for key, value in manifest.items():
        if not isinstance(value, str):
            continue
        if key == "model_path":
            found.setdefault(STAGE_LABELS.get(stage, stage[3:] if _STAGE_NAME.match(stage)
                                              else stage), value)
        elif key.endswith("_model_path"):
            found.setdefault(key[: -len("_model_path")], value)
    out = {}
    for name, value in found.items():
        path = Path(value) if Path(value).is_absolute() else folder / value
        if path.exists():
            out[name] = str(path.resolve())
        elif not Path(value).is_absolute() and _HUB_ID.match(value):
            out[name] = value
        else:
            raise ArtifactError(f"{folder / 'manifest.json'}: model '{name}' at {value} "
                                f"is missing; rerun stage {stage}")
    return out


def resolve_parent(spec: str, output_root: str, run_name: str) -> tuple[str, str]:
    """(path, upstream id) of a model parameter: "world", "<stage>[:<name>]", a path, a hub id."""
    from synergy import data
    from synergy.runs import read_manifest

    stage, _, name = spec.partition(":")
    if not _STAGE_NAME.match(stage):
        return data.resolve_model(spec, output_root, run_name)
    folder = Path(output_root) / run_name / stage
    if not (folder / "manifest.json").exists():
        raise ArtifactError(f"model '{spec}': stage {stage} has not run for run '{run_name}' "
                            f"(no {folder / 'manifest.json'}); run it first: "
                            f"python -m synergy run --run-name {run_name} --stages {stage[:2]}")
    models = stage_models(output_root, run_name, stage)
    if not models:
        raise ArtifactError(f"model '{spec}': the manifest of stage {stage} names no model")
    if not name:
        name = main_model(read_manifest(folder), models, STAGE_LABELS.get(stage, stage[3:]))
    if name not in models:
        raise ArtifactError(f"model '{spec}': stage {stage} has no model '{name}'; "
                            f"it has {sorted(models)}")
    return models[name], f"{read_manifest(folder)['artifact_id']}:{name}"


def main_model(manifest: dict, models: dict[str, str], label: str) -> str:
    """Which of a stage's models a bare stage name means (pick others as '<stage>:<name>').

    The model named like the stage ("sft"), else the first of the manifest's `runs` list
    (`name` or `label`; with roles, the first "main" one: the first teacher, the first KL
    beta), else the first by name; never the base or the starting point it recorded.
    """
    if label in models:
        return label
    candidates = [n for n in models if n not in ("base", "init")] or list(models)
    runs = [r for r in manifest.get("runs", []) if isinstance(r, dict)]
    ordered = [r.get("name") or r.get("label") for r in runs if r.get("role", "main") == "main"]
    return next((n for n in ordered if n in candidates), sorted(candidates)[0])


def model_labels(specs: list[str]) -> list[str]:
    """Short names for model parameters: "world" -> "base", "04_grpo:rl-beta0.005" -> "rl"
    ("rl:rl-beta0.005" when another listed model has the same short name)."""
    def short(spec):
        stage = spec.partition(":")[0]
        if stage in STAGE_LABELS:
            return STAGE_LABELS[stage]
        return stage[3:] if _STAGE_NAME.match(stage) else (Path(spec).name or spec)

    names = [short(s) for s in specs]
    return [n if names.count(n) == 1 or ":" not in s else f"{n}:{s.partition(':')[2]}"
            for n, s in zip(names, specs)]


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


def merge_key(config: dict, seed: int) -> str:
    """Content id of a merge: its config with each model path replaced by its fingerprint."""
    from synergy.generation import model_fingerprint

    def swap(obj):
        if isinstance(obj, dict):
            return {k: (model_fingerprint(v) if k in ("model", "base_model") else swap(v))
                    for k, v in obj.items()}
        if isinstance(obj, list):
            return [swap(v) for v in obj]
        return obj

    return content_hash({"config": swap(config), "seed": seed,
                         "mergekit": importlib.metadata.version("mergekit")})


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
    """Merge into `folder/model` unless the same merge is there. Returns (model, reused, s)."""
    from synergy.runs import atomic_path, read_json, write_json

    folder, key = Path(folder), merge_key(config, seed)
    meta = folder / "merge.json"
    if meta.exists() and (folder / "model").is_dir() and read_json(meta).get("key") == key:
        return folder / "model", True, float(read_json(meta).get("seconds", 0.0))
    t0 = time.perf_counter()
    with atomic_path(folder) as tmp:
        run_mergekit(config, tmp / "model", shard_params, seed)
        seconds = time.perf_counter() - t0
        write_json(tmp / "merge.json", {"key": key, "config": config, "seconds": seconds})
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


def merge_table(curves: pd.DataFrame, y: str = "accuracy") -> pd.DataFrame:
    """Wide view of the curves: one row per (method, SFT ratio), one column per level."""
    return curves.pivot_table(index=["method", "sft_ratio"], columns="level", values=y)


# Columns 01_stratify adds to the benchmark table (its samples, not the questions).
SAMPLE_COLUMNS = ("samples", "correct", "lengths", "n_truncated", "n_drawn", "n_correct",
                  "pass_rate")


def benchmark_questions(levels: pd.DataFrame) -> pd.DataFrame:
    """The stratified benchmark without the base's samples: questions, answers, level,
    and whatever else the benchmark carries (images, choices)."""
    return levels.drop(columns=[c for c in SAMPLE_COLUMNS if c in levels.columns])


# --- the stage ----------------------------------------------------------------------------

def run(cfg: MergingConfig, progress: bool = True) -> dict:
    """Merge (or reuse) every method x ratio, evaluate merges and parents per level.

    Writes `merges/<method>-<ratio>/model`, `merges.csv`, `eval/`, `per_level.csv` and the
    manifest. Returns {"merges": DataFrame, "per_level": DataFrame, "results": {...}}.
    """
    from tqdm.auto import tqdm

    from synergy import evaluation, stratify
    from synergy.runs import now, read_manifest, set_seed, stage_dir, write_manifest, write_text

    started, t0 = now(), time.perf_counter()
    set_seed(cfg.seed)
    out = stage_dir(cfg, STAGE)
    parents = {role: resolve_parent(spec, cfg.output_root, cfg.run_name)
               for role, spec in (("sft", cfg.sft_model), ("rl", cfg.rl_model),
                                  ("base", cfg.base_model))}
    paths = {role: path for role, (path, _) in parents.items()}
    rows = []
    plan = [(m, r) for m in cfg.methods for r in cfg.sft_ratios]
    for method, ratio in tqdm(plan, desc="merging", unit="merge", disable=not progress):
        config = mergekit_config(method, ratio, paths["sft"], paths["rl"], paths["base"],
                                 density=cfg.density, dtype=cfg.dtype)
        name = merge_name(method, ratio)
        path, reused, seconds = ensure_merge(config, out / "merges" / name,
                                             shard_params=cfg.shard_params, seed=cfg.seed)
        rows.append({"model": name, "method": method, "sft_ratio": ratio, "path": str(path),
                     "reused": reused, "merge_seconds": seconds})
    merges = pd.DataFrame(rows)
    write_text(out / "merges.csv", merges.to_csv(index=False))

    questions = benchmark_questions(stratify.load_levels(cfg.output_root, cfg.run_name))
    suffix = read_manifest(out.parent / stratify.STAGE)["params"].get("prompt_suffix", "")
    to_eval = {**paths, **dict(zip(merges["model"], merges["path"]))}
    # Linear and SLERP at ratio 0 / 1 are their parent weight for weight (tested), so they
    # share its samples; mergekit's config.json differs, which would defeat the cache.
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
    table = evaluation.save_results(out, results)
    check = synergy_check(table, list(merges["model"]), margin=cfg.synergy_margin)
    write_text(out / "synergy_check.csv", check.to_csv(index=False))
    write_manifest(out, cfg, started=started,
                   upstream={role: uid for role, (_, uid) in parents.items()},
                   extra={"seconds": time.perf_counter() - t0,
                          "models": dict(zip(merges["model"], merges["path"])),
                          "parent_paths": paths,
                          "merges_reused": int(merges["reused"].sum()),
                          "any_synergy": bool(check["synergy"].any()) if len(check) else False})
    return {"merges": merges, "per_level": table, "results": results, "synergy": check}


def load_stage(output_root: str, run_name: str) -> dict:
    """The saved artifacts of this stage, as `run` returns them (for the report)."""
    from synergy.evaluation import load_results

    folder = Path(output_root) / run_name / STAGE
    return {"merges": pd.read_csv(folder / "merges.csv"),
            "per_level": pd.read_csv(folder / "per_level.csv"),
            "synergy": pd.read_csv(folder / "synergy_check.csv", keep_default_na=False),
            "results": load_results(folder)}
