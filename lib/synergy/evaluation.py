"""The one evaluation every stage shares: sample answers, verify them, summarise per level.

Sampling goes through a `generation` engine in rounds; finished samples are cached on disk
by (model, sampling params, prompt, sample index), so an interrupted evaluation resumes
without redrawing anything. Stratification (01) and every later model comparison use it.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import pandas as pd

from synergy import generation, models, verify
from synergy.config import StageConfig
from synergy.files import (
    ArtifactError, atomic_path, clean_interrupted, content_hash, load_dataset_dir, read_json,
    save_dataset, set_aside, write_text,
)
from synergy.generation import SamplingSpec, VllmDtype, chat_prompt
from synergy.models import fingerprint
from synergy.progress import progress_bar
from synergy.reuse import digest, tree_digest
from synergy.runs import EXTERNAL, MANIFEST, Run, now, write_manifest
from synergy.stats import bootstrap_interval
from synergy.verify import QUESTION_COLUMNS, audit, audit_summary, format_ok

StopRule = Callable[[int, int], bool]  # (n_correct, n_drawn) -> no more samples needed


class SampleCache:
    """Append-only shards of finished samples, each written atomically.

    A shard that does not read back whole (a torn or damaged file, a row missing a field) is
    set aside (`files.set_aside`, a warning names it) and its samples are drawn again: every
    sample is keyed, so they come out the same."""

    FIELDS = ("key", "index", "text", "n_tokens", "truncated")

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        clean_interrupted(self.root, recursive=False)
        self.samples: dict[tuple[str, int], dict] = {}
        for shard in sorted(self.root.glob("part-*.jsonl")):
            try:
                rows = [json.loads(line) for line in shard.read_text().splitlines()]
                bad = next((r for r in rows if not isinstance(r, dict)
                            or any(f not in r for f in self.FIELDS)), None)
                if bad is not None or not rows:
                    raise ValueError(f"a row without {list(self.FIELDS)}: {str(bad)[:80]}"
                                     if rows else "empty")
            except (ValueError, UnicodeDecodeError) as exc:
                set_aside(shard, f"damaged sample shard ({exc})")
                continue
            for row in rows:
                self.samples[(row["key"], row["index"])] = row

    def has(self, key: str, index: int) -> bool:
        return (key, index) in self.samples

    def add(self, rows: list[dict]) -> None:
        if not rows:
            return
        shard = self.root / f"part-{time.time_ns()}-{uuid.uuid4().hex[:6]}.jsonl"
        with atomic_path(shard) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        for r in rows:
            self.samples[(r["key"], r["index"])] = r


def prompt_key(prompt: str, images: list | None = None) -> str:
    """The cache and sampling key of a prompt: its text and, when it has any, its images
    by content (two questions with the same words and different figures are different)."""
    if not images:
        return content_hash(prompt, 16)
    return content_hash([prompt, [_image_digest(i) for i in images]], 16)


def _image_digest(image) -> str:
    """An image (a PIL image or a file path) by content."""
    if isinstance(image, (str, Path)):
        return tree_digest(Path(image)) if Path(image).is_file() else str(image)
    return digest([image])


def cache_for(root: str | Path, model_path: str, spec: SamplingSpec, seed: int,
              engine_settings: dict | None = None) -> SampleCache:
    """The samples of (model, sampling parameters, seed) and, for an engine whose samples
    depend on more (vLLM: its backend, dtype, quantization, ...), its `sample_settings`.
    The HF engine has none: its folders keep the names they always had."""
    key = [spec.as_dict(), seed] + ([engine_settings] if engine_settings else [])
    return SampleCache(Path(root) / f"{fingerprint(model_path)}-{content_hash(key)}")


def samples_needed(n_correct: int, n_drawn: int, n_total: int, stop: StopRule | None,
                   cap: int) -> int:
    """How many more samples to draw now: none once settled, else the fewest after which
    the stop rule *could* hold (drawing fewer can never settle the question), at most `cap`."""
    remaining = n_total - n_drawn
    if remaining <= 0 or (stop is not None and stop(n_correct, n_drawn)):
        return 0
    if stop is None:
        return min(cap, remaining)
    for t in range(1, min(cap, remaining) + 1):
        if any(stop(n_correct + j, n_drawn + t) for j in range(t + 1)):
            return t
    return min(cap, remaining)


def sample_questions(engine, prompts: list[str], answers: list[str], spec: SamplingSpec, *,
                     n_samples: int, round_size: int, seed: int, cache: SampleCache,
                     stop: StopRule | None = None, progress: bool = True,
                     images: list[list] | None = None,
                     choices: list[list[str] | None] | None = None,
                     scoring: list[dict] | None = None) -> list[list[dict]]:
    """Samples per prompt (dicts with text, n_tokens, truncated, correct), drawn in rounds.

    A prompt gets up to `n_samples`; with a `stop` rule it leaves once the rule says its
    outcome is settled. Each round draws, per prompt, at most `round_size` samples and never
    more than could matter (`samples_needed`); prompts needing the same sample indices share
    engine calls. Cached samples are reused; each finished engine call is saved at once.
    `choices` and `scoring` (per prompt: the verifier's keyword columns, `scoring_of`)
    reach `is_correct`.
    """
    from collections import defaultdict

    keys = [prompt_key(p, images[i] if images is not None else None)
            for i, p in enumerate(prompts)]
    bar = progress_bar(total=len(prompts) * n_samples, desc="sampling", unit="sample",
                       disable=not progress, mininterval=1.0)
    drawn: list[list[dict]] = [[] for _ in prompts]
    settled: set[int] = set()
    while True:
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i in range(len(prompts)):
            if i in settled:
                continue
            need = samples_needed(sum(s["correct"] for s in drawn[i]), len(drawn[i]),
                                  n_samples, stop, round_size)
            if need == 0:
                settled.add(i)
                bar.total -= n_samples - len(drawn[i])  # never drawn: not owed
            else:
                groups[(len(drawn[i]), need)].append(i)
        if not groups:
            break
        for (first, n), members in sorted(groups.items()):
            todo = [i for i in members
                    if not all(cache.has(keys[i], first + j) for j in range(n))]
            bar.update((len(members) - len(todo)) * n)
            per_call = max(1, getattr(engine, "batch_rows", 512) // n)
            for c in range(0, len(todo), per_call):
                chunk = todo[c:c + per_call]
                extra = {} if images is None else {"images": [images[i] for i in chunk]}
                out = engine.generate([prompts[i] for i in chunk], [keys[i] for i in chunk],
                                      first, n, spec, seed, **extra)
                cache.add([{"key": keys[i], "index": first + j, "text": comp.text,
                            "n_tokens": comp.n_tokens, "truncated": comp.truncated}
                           for i, comps in zip(chunk, out) for j, comp in enumerate(comps)])
                bar.update(len(chunk) * n)
            for i in members:
                for j in range(first, first + n):
                    row = dict(cache.samples[(keys[i], j)])
                    # through the module: tests replace `verify.is_correct`
                    row["correct"] = verify.is_correct(
                        row["text"], answers[i], choices[i] if choices is not None else None,
                        **(scoring[i] if scoring is not None else {}))
                    drawn[i].append(row)
        bar.refresh()
    bar.close()
    return drawn


def choices_of(questions: pd.DataFrame) -> list | None:
    """Per-question option lists for multiple choice (letters then match option text too)."""
    if "choices" not in questions.columns:
        return None
    return [list(c) if c is not None and len(c) else None for c in questions["choices"]]


def scoring_of(questions: pd.DataFrame) -> list[dict] | None:
    """Per question, the verifier's keyword columns the table carries (MathVista's
    `precision`, `unit`, `answer_type`), or None when it carries none."""
    present = [c for c in QUESTION_COLUMNS if c != "choices" and c in questions.columns]
    if not present:
        return None
    return [{c: None if pd.api.types.is_scalar(v) and pd.isna(v) else v for c, v in row.items()}
            for row in questions[present].to_dict("records")]


def to_dataset(df: pd.DataFrame):
    """A `datasets.Dataset` from a frame; via dicts so PIL image columns become Image features."""
    import datasets

    return datasets.Dataset.from_dict(df.to_dict("list"))


def build_prompts(engine, questions: pd.DataFrame, suffix: str = "",
                  response_prefix: str = "") -> tuple[list[str], list[list] | None]:
    """Chat prompts for a benchmark table, and its images when it has any (VLM benchmarks).
    `response_prefix` starts every answer (a forced mode token): the model continues it."""
    images = None
    if "images" in questions.columns and any(len(x) for x in questions["images"] if x is not None):
        images = [list(x) if x is not None else [] for x in questions["images"]]
    prompts = [chat_prompt(engine.template, q, suffix, len(images[i]) if images else 0)
               + response_prefix for i, q in enumerate(questions["question"])]
    return prompts, images


def sample_table(engine, model_path: str, questions: pd.DataFrame, spec: SamplingSpec, *,
                 n_samples: int, seed: int, cache_root: str | Path, prompt_suffix: str = "",
                 stop: StopRule | None = None, round_size: int | None = None,
                 progress: bool = True, processes=None,
                 response_prefix: str = "") -> list[list[dict]]:
    """`sample_questions` on a benchmark table (question, answer[, choices, images]) with
    the model's cache under `cache_root`: the one sample loop of stratification, leveling
    of training questions, the static easy-question filter and evaluation.

    `processes` (accelerate's `PartialState` of a launch, or None): data parallel sampling,
    each process first drawing every n-th question into the shared cache, then every
    process reading all questions back from it (keyed samples: the same as one process)."""
    if processes is not None and processes.num_processes > 1:
        share = questions.iloc[processes.process_index::processes.num_processes]
        sample_table(engine, model_path, share, spec, n_samples=n_samples, seed=seed,
                     cache_root=cache_root, prompt_suffix=prompt_suffix, stop=stop,
                     round_size=round_size, progress=progress,
                     response_prefix=response_prefix)
        processes.wait_for_everyone()
    prompts, images = build_prompts(engine, questions, prompt_suffix, response_prefix)
    return sample_questions(engine, prompts, [str(a) for a in questions["answer"]], spec,
                            n_samples=n_samples, round_size=round_size or n_samples,
                            seed=seed, cache=cache_for(cache_root, model_path, spec, seed,
                                                       getattr(engine, "sample_settings", None)),
                            stop=stop, progress=progress, images=images,
                            choices=choices_of(questions), scoring=scoring_of(questions))


def evaluate_model(model_path: str, questions: pd.DataFrame, spec: SamplingSpec, *,
                   n_samples: int, seed: int, cache_root: str | Path, prompt_suffix: str = "",
                   backend: str = "hf", batch_rows: int = 512, engine=None,
                   progress: bool = True, processes=None, response_prefix: str = "",
                   vllm_dtype: str = "auto", vllm_memory: float = 0.0) -> pd.DataFrame:
    """One row per question: samples, correctness, lengths, format, accuracy (mean of samples).

    `questions` carries `question`, `answer` and whatever else (qid, level) the caller keeps;
    `processes`: data parallel sampling under a launch (see `sample_table`);
    `response_prefix`: text every answer starts with (not part of the samples' text);
    `vllm_dtype`, `vllm_memory`: the vLLM engine's (`generation.engine_arguments`).
    """
    own = engine is None
    # the engine through its module: tests replace `generation.make_engine`
    engine = engine or generation.make_engine(model_path, backend, batch_rows, vllm_dtype,
                                              vllm_memory)
    try:
        drawn = sample_table(engine, model_path, questions, spec, n_samples=n_samples,
                             seed=seed, cache_root=cache_root, prompt_suffix=prompt_suffix,
                             progress=progress, processes=processes,
                             response_prefix=response_prefix)
    finally:
        if own:  # the next model's engine needs the memory (vLLM reserves a share)
            engine.close()
    out = questions.copy().reset_index(drop=True)
    out["samples"] = [[s["text"] for s in d] for d in drawn]
    out["correct"] = [[bool(s["correct"]) for s in d] for d in drawn]
    out["lengths"] = [[int(s["n_tokens"]) for s in d] for d in drawn]
    out["formatted"] = [[format_ok(s["text"]) for s in d] for d in drawn]
    out["n_truncated"] = [sum(bool(s["truncated"]) for s in d) for d in drawn]
    out["accuracy"] = [float(np.mean(c)) for c in out["correct"]]
    out["mean_length"] = [float(np.mean(x)) for x in out["lengths"]]
    out["format_rate"] = [float(np.mean(f)) for f in out["formatted"]]
    return out


def per_level(results: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Long table: model, level, questions, accuracy with its 95% bootstrap interval over
    questions (`accuracy_low`, `accuracy_high`), mean length, format rate (+ level 'all')."""
    rows = []
    for model, df in results.items():
        groups = [(f"L{lv}", part) for lv, part in df.groupby("level")] + [("all", df)]
        for level, part in groups:
            low, high = bootstrap_interval(part["accuracy"])
            rows.append({"model": model, "level": level, "questions": len(part),
                         "accuracy": part["accuracy"].mean(), "accuracy_low": low,
                         "accuracy_high": high, "mean_length": part["mean_length"].mean(),
                         "format_rate": part["format_rate"].mean()})
    return pd.DataFrame(rows)


def accuracy_figure(table: pd.DataFrame, title: str = "Accuracy by difficulty level"):
    """Grouped bars: one group per level, one bar per model (input: `per_level`)."""
    import plotly.express as px

    return px.bar(table, x="level", y="accuracy", color="model", barmode="group",
                  hover_data=["mean_length", "format_rate", "questions"], title=title,
                  range_y=[0, 1])


def length_figure(results: dict[str, pd.DataFrame], title: str = "Response length by level"):
    import plotly.express as px

    long = pd.concat([df[["level", "lengths"]].explode("lengths").assign(model=name)
                      for name, df in results.items()])
    long = long.assign(level=long["level"].map(lambda v: f"L{v}"),
                       tokens=long["lengths"].astype(int))
    return px.box(long.sort_values("level"), x="level", y="tokens", color="model",
                  points=False, title=title)


# --- conventions shared by the stages that compare models --------------------------------

@dataclasses.dataclass
class EvaluatingConfig(StageConfig):
    """The keys of every stage that evaluates models (flat in its section, like every key)."""

    eval_samples: int
    eval_temperature: float
    eval_top_p: float
    eval_top_k: int
    eval_max_new_tokens: int
    backend: Literal["hf", "vllm"]
    batch_rows: int
    vllm_dtype: VllmDtype
    vllm_memory: float

    def validate(self) -> None:
        self.require_sampling("eval_")
        for key in ("eval_samples", "eval_max_new_tokens", "batch_rows"):
            self.require(getattr(self, key) >= 1, key, "must be >= 1")
        self.require(0 <= self.vllm_memory < 1, "vllm_memory", "must be in [0, 1) (0: auto)")


def eval_spec(cfg) -> SamplingSpec:
    return SamplingSpec(cfg.eval_temperature, cfg.eval_top_p, cfg.eval_top_k,
                        cfg.eval_max_new_tokens)


def evaluate_for(cfg: EvaluatingConfig, model_path: str, questions: pd.DataFrame,
                 prompt_suffix: str = "", progress: bool = True,
                 response_prefix: str = "", n_samples: int | None = None) -> pd.DataFrame:
    """`evaluate_model` with a stage's eval keys and the run's shared sample cache
    (`n_samples`: samples per question where a stage spends more on some models than
    `eval_samples`)."""
    return evaluate_model(model_path, questions, eval_spec(cfg),
                          n_samples=n_samples or cfg.eval_samples,
                          seed=cfg.seed, cache_root=Run.of(cfg).samples_cache,
                          prompt_suffix=prompt_suffix, backend=cfg.backend,
                          batch_rows=cfg.batch_rows, progress=progress,
                          response_prefix=response_prefix, vllm_dtype=cfg.vllm_dtype,
                          vllm_memory=cfg.vllm_memory)


def evaluate_external(cfg: EvaluatingConfig, specs: list[str], questions: pd.DataFrame,
                      prompt_suffix: str = "", *, upstream: dict[str, str] | None = None,
                      progress: bool = True, processes=None) -> dict[str, pd.DataFrame]:
    """Models from anywhere (a hub id, a folder, "<stage>[:<name>]" of this run) evaluated on
    the run's benchmark `questions` with `cfg`'s eval keys, engine and the run's sample
    cache, as the stages evaluate their own; written to `<run>/external/` (eval/<label>/,
    per_level.csv, manifest.json) beside the models of earlier calls, which the report
    shows beside the run's own. Under a launch (`processes`) every process samples its share
    and the main process writes. Returns every external model's results by label."""
    run, started = Run.of(cfg), now()
    out = run.external
    refs = dict(zip(models.labels(specs), (run.model(s) for s in specs)))
    fresh = {label: evaluate_model(ref.path, questions, eval_spec(cfg),
                                   n_samples=cfg.eval_samples, seed=cfg.seed,
                                   cache_root=run.samples_cache, prompt_suffix=prompt_suffix,
                                   backend=cfg.backend, batch_rows=cfg.batch_rows,
                                   progress=progress, processes=processes,
                                   vllm_dtype=cfg.vllm_dtype, vllm_memory=cfg.vllm_memory)
             for label, ref in refs.items()}
    earlier = load_results(out) if (out / "eval").is_dir() else {}
    results = {**earlier, **fresh}
    if processes is None or processes.is_main_process:
        save_results(out, results)
        before = read_json(out / MANIFEST).get("models", {}) if (out / MANIFEST).exists() else {}
        write_manifest(out, cfg, started=started, upstream={
            **(upstream or {}), **{label: ref.artifact_id for label, ref in refs.items()}},
            extra={"stage": EXTERNAL, "eval_keys_from": cfg.SECTION,
                   "prompt_suffix": prompt_suffix,
                   "models": {**before, **{label: {"spec": ref.spec, "path": ref.path,
                                                   "artifact_id": ref.artifact_id}
                                           for label, ref in refs.items()}}})
    return results


def save_results(out_dir: str | Path, results: dict[str, pd.DataFrame],
                 record: Callable[..., None] | None = None) -> pd.DataFrame:
    """Write `eval/<model>/` datasets, `per_level.csv` and the verifier audit beside it
    (`save_audit`); returns the per-level table. `record` (a stage's `ctx.record`) puts
    the audit's counts in the stage's manifest."""
    out_dir = Path(out_dir)
    for name, df in results.items():
        save_dataset(to_dataset(df), out_dir / "eval" / name)
    table = per_level(results)
    write_text(out_dir / "per_level.csv", table.to_csv(index=False))
    save_audit(out_dir, results, record)
    return table


# --- where scoring, not the model, moves the numbers --------------------------------------

AUDIT_COLUMNS = ["model", "samples", "answered", "rule_correct", "math_verify_correct",
                 "disagreements", "rule_only", "math_verify_only", "disagreements_by_path",
                 "seconds"]


def verifier_audit(results: dict[str, pd.DataFrame],
                   examples: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per evaluated model, where the verifier's rules and math-verify disagree on its
    sampled answers (`verify.audit`, each question's choices and scoring columns included).

    Returns (one row per model: samples, answered, correct by each, disagreements, of which
    rule-only and math-verify-only, disagreements per rule path as JSON, seconds taken;
    the first `examples` disagreements per model: model, qid, answer, gold, rule,
    math_verify, path). A disagreement means scoring, not the model, decides that answer.
    """
    rows, found = [], []
    for model, df in results.items():
        t = time.perf_counter()
        counts = [len(s) for s in df["samples"]]

        def per_sample(values):
            return [v for v, n in zip(values, counts) for _ in range(n)]

        scoring = scoring_of(df)
        columns = {c: per_sample([s[c] for s in scoring]) for c in (scoring or [{}])[0]}
        table = audit([x for s in df["samples"] for x in s], per_sample(list(df["answer"])),
                      per_sample(choices_of(df) or [None] * len(df)), **columns)
        table.insert(0, "qid", per_sample(list(df["qid"])) if "qid" in df else None)
        summary = audit_summary(table, examples=0)
        rows.append({"model": model, "samples": summary["rows"],
                     **{k: summary[k] for k in AUDIT_COLUMNS[2:-2]},
                     "disagreements_by_path": json.dumps(summary["disagreements_by_path"]),
                     "seconds": time.perf_counter() - t})
        found.append(table[table["disagree"]].head(examples).drop(columns="disagree")
                     .assign(model=model))
    first = ["model", "qid", "answer", "gold", "rule", "math_verify", "path"]
    found = [f for f in found if len(f)]
    return (pd.DataFrame(rows, columns=AUDIT_COLUMNS),
            pd.concat(found, ignore_index=True)[first] if found else pd.DataFrame(columns=first))


def save_audit(out_dir: str | Path, results: dict[str, pd.DataFrame],
               record: Callable[..., None] | None = None) -> pd.DataFrame:
    """`verifier_audit` written to `verifier_audit.csv` and `verifier_disagreements.csv`
    (examples) in `out_dir`; with `record`, its totals go to the manifest as
    `verifier_audit`. Returns the per-model table."""
    table, found = verifier_audit(results)
    write_text(Path(out_dir) / "verifier_audit.csv", table.to_csv(index=False))
    write_text(Path(out_dir) / "verifier_disagreements.csv", found.to_csv(index=False))
    if record is not None:
        record(verifier_audit={
            "samples": int(table["samples"].sum()),
            "disagreements": int(table["disagreements"].sum()),
            "by_model": dict(zip(table["model"], table["disagreements"].astype(int))),
            "seconds": float(table["seconds"].sum())})
    return table


def load_audit(stage_path: str | Path) -> pd.DataFrame:
    """A stage's `verifier_audit.csv` (one row per evaluated model)."""
    path = Path(stage_path) / "verifier_audit.csv"
    if not path.exists():
        raise ArtifactError(f"{path}: no verifier audit (did the stage evaluate models?)")
    return pd.read_csv(path)


def load_results(stage_path: str | Path) -> dict[str, pd.DataFrame]:
    root = Path(stage_path) / "eval"
    if not root.is_dir():
        raise ArtifactError(f"{root}: no evaluation results (did the stage run?)")
    return {p.name: load_dataset_dir(p).to_pandas() for p in sorted(root.iterdir())
            if p.is_dir() and not p.name.startswith(".")}
