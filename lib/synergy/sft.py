"""Long-CoT SFT with TRL, then the per-level comparison with the base model.

One model per teacher (the paper's s1.1-R1 vs s1-Gemini2 comparison), trained with
`SFTTrainer` and the loss on assistant tokens only. The data mix is chosen by difficulty
level of the training questions (default: hard questions only, as in s1K); one run can also
sweep the share of easy questions (is the easy-question loss caused by the mix?) and the
number of traces per teacher quality (does quality beat scale?). Checkpoints are chosen by
greedy accuracy on held-out traces' questions, as in the paper; the chosen model is saved
as safetensors with its tokenizer and evaluated with the engine, verifier and questions of
`01_stratify`.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synergy import (
    distill, evaluation, generation, judging, models, reuse, sft_trainer, stages, stratify,
    training,
)
from synergy.evaluation import (
    EvaluatingConfig, accuracy_figure as bars, evaluate_for, length_figure as boxes,
    load_results, per_level, save_results,
)
from synergy.files import atomic_path, content_hash, write_text
from synergy.generation import SamplingSpec
from synergy.runs import Run, StageResult, stage_run, torch_threads
from synergy.training import LrScheduler, ReportTo, TrainerBackend, read_jsonl
from synergy.verify import is_correct
from synergy.vlm import vision_weights_equal

@dataclasses.dataclass
class SftConfig(EvaluatingConfig):
    SECTION = "sft"

    model: str
    teachers: list[str]
    n_traces: int
    easy_share: float
    easy_levels: list[int]
    hard_levels: list[int]
    val_traces: int
    lr: float
    lr_scheduler: LrScheduler
    warmup_ratio: float
    weight_decay: float
    batch_size: int
    grad_accum: int
    epochs: float
    max_steps: int
    max_length: int
    checkpoints: int
    freeze_vision: bool
    lora_r: int
    lora_alpha: int
    easy_share_sweep: list[float]
    scale_sweep: dict[str, list[int]]
    report_to: ReportTo
    trainer_backend: TrainerBackend
    num_processes: int
    ddp_timeout_s: int
    n_examples: int

    def validate(self) -> None:
        super().validate()
        self.require(len(self.teachers) >= 1, "teachers", "must name at least one trace set")
        self.require(self.n_traces >= 1, "n_traces", "must be >= 1")
        for key in ("easy_share",):
            self.require(0.0 <= getattr(self, key) <= 1.0, key, "must be in [0, 1]")
        self.require(all(0.0 <= s <= 1.0 for s in self.easy_share_sweep), "easy_share_sweep",
                     "must hold shares in [0, 1]")
        self.require(not set(self.easy_levels) & set(self.hard_levels), "easy_levels",
                     "must not overlap hard_levels")
        self.require(self.easy_share == 0 and not self.easy_share_sweep or
                     len(self.easy_levels) >= 1, "easy_levels",
                     "must name levels when easy_share or easy_share_sweep is non-zero")
        self.require(len(self.hard_levels) >= 1, "hard_levels", "must name at least one level")
        self.require(self.val_traces >= 1, "val_traces", "must be >= 1")
        self.require(self.lr > 0, "lr", "must be > 0")
        self.require(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio", "must be in [0, 1)")
        self.require(self.grad_accum >= 1, "grad_accum", "must be >= 1")
        for key in ("easy_levels", "hard_levels"):
            self.require(all(lv >= 0 for lv in getattr(self, key)), key,
                         "must hold levels >= 0 (L1 is the easiest; 0: rows without a level)")
        self.require(self.num_processes >= 1, "num_processes", "must be >= 1")
        self.require(self.ddp_timeout_s >= 1, "ddp_timeout_s", "must be >= 1 (seconds)")
        self.require(self.batch_size >= 1
                     and self.batch_size % (self.grad_accum * self.num_processes) == 0,
                     "batch_size", f"must be >= 1 and divisible by grad_accum x num_processes "
                     f"({self.grad_accum} x {self.num_processes})")
        self.require(self.trainer_backend == "hf" or self.num_processes == 1, "trainer_backend",
                     "'unsloth' is the single-GPU path: num_processes must be 1")
        self.require(self.epochs > 0, "epochs", "must be > 0")
        self.require(self.max_steps == -1 or self.max_steps >= 1, "max_steps",
                     "must be -1 (train for `epochs`) or >= 1")
        self.require(self.max_length >= 16, "max_length", "must be >= 16")
        self.require(self.checkpoints >= 1, "checkpoints", "must be >= 1")
        self.require(self.lora_r >= 0, "lora_r", "must be >= 0 (0: full fine-tuning)")
        self.require(self.lora_r == 0 or self.lora_alpha >= 1, "lora_alpha",
                     "must be >= 1 with LoRA (the adapters' scale is lora_alpha / lora_r)")
        self.require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        self.require(all(n >= 1 for ns in self.scale_sweep.values() for n in ns), "scale_sweep",
                     "must map teacher names to trace counts >= 1")
        self.require(self.n_examples >= 0, "n_examples", "must be >= 0")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One SFT model: which trace set, how many traces, what share of easy questions."""

    teacher: str
    n_traces: int
    easy_share: float
    role: str  # main | easy_sweep | scale_sweep

    @property
    def name(self) -> str:
        if self.role == "main":
            return self.teacher
        return f"{self.teacher}_n{self.n_traces}_easy{round(100 * self.easy_share)}"


def run_specs(cfg: SftConfig) -> list[RunSpec]:
    """Main runs (one per teacher), then the sweeps; a sweep point equal to a run is dropped."""
    specs = [RunSpec(t, cfg.n_traces, cfg.easy_share, "main") for t in cfg.teachers]
    specs += [RunSpec(cfg.teachers[0], cfg.n_traces, s, "easy_sweep")
              for s in cfg.easy_share_sweep]
    specs += [RunSpec(t, n, cfg.easy_share, "scale_sweep")
              for t, ns in cfg.scale_sweep.items() for n in ns]
    seen, out = set(), []
    for s in specs:
        key = (s.teacher, s.n_traces, s.easy_share)
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


# --- data selection (pure) ----------------------------------------------------------------

def select_traces(traces: pd.DataFrame, teacher: str, n: int, easy_share: float,
                  easy_levels: list[int], hard_levels: list[int], n_val: int,
                  seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, val) rows of one teacher with `easy_share` of easy-level questions.

    Questions are ordered by a seeded shuffle of their ids, so every teacher and every
    sweep point draws the same questions first (a larger set contains the smaller one).
    Validation rows come first in that order and never overlap training rows.
    """
    if teacher not in set(traces["teacher"]):
        raise ValueError(f"sft.teachers: no traces from teacher '{teacher}' in the distilled traces; "
                         f"have {sorted(set(traces['teacher']))}")
    rows = traces[traces["teacher"] == teacher]
    rows = rows.assign(_order=rows["qid"].map(lambda q: _stable_key(seed, q)))
    rows = rows.sort_values("_order").drop(columns="_order")
    easy = rows[rows["level"].isin(easy_levels)]
    hard = rows[rows["level"].isin(hard_levels)]
    n_easy, v_easy = round(n * easy_share), round(n_val * easy_share)
    n_hard, v_hard = n - n_easy, n_val - v_easy
    for kind, have, need, levels in (("easy", easy, n_easy + v_easy, easy_levels),
                                     ("hard", hard, n_hard + v_hard, hard_levels)):
        if len(have) < need:
            raise ValueError(
                f"sft: teacher '{teacher}' has {len(have)} {kind} traces (levels {levels}); "
                f"{need} are needed ({n} traces with easy share {easy_share} + {n_val} for "
                f"validation). Lower sft.n_traces / the sweep or raise distill.n_questions.")
    val = pd.concat([easy.iloc[:v_easy], hard.iloc[:v_hard]])
    train = pd.concat([easy.iloc[v_easy:v_easy + n_easy], hard.iloc[v_hard:v_hard + n_hard]])
    return train.sample(frac=1.0, random_state=seed).reset_index(drop=True), \
        val.reset_index(drop=True)


def _stable_key(seed: int, qid: str) -> str:
    return content_hash([seed, qid], 16)


def validation_accuracy(model_dir: str | Path, val: pd.DataFrame, max_new_tokens: int,
                        prompt_suffix: str, seed: int, backend: str = "hf",
                        batch_rows: int = 512, vllm_dtype: str = "auto",
                        vllm_memory: float = 0.0) -> float:
    """Greedy accuracy of a checkpoint on the validation questions (with their images)."""
    # engine and prompts through their modules: tests replace them there
    engine = generation.make_engine(model_dir, backend, batch_rows, vllm_dtype, vllm_memory)
    try:
        prompts, images = evaluation.build_prompts(engine, val, prompt_suffix)
        out = engine.generate(prompts, list(val["qid"]), 0, 1,
                              SamplingSpec(0.0, 1.0, 0, max_new_tokens), seed, images=images)
    finally:
        engine.close()  # one engine per checkpoint: each frees its share for the next
    return float(np.mean([is_correct(c[0].text, str(a)) for c, a in zip(out, val["answer"])]))


# Params that do not decide an SFT model, with why: they reach its key another way, or
# choose only what is evaluated or shown, or how fast, or where. Every other param is in
# the key (trainer_backend is: unsloth's kernels give other numbers).
NOT_IN_KEY = (
    "model",                                     # the base, by its fingerprint
    "teachers", "n_traces", "easy_share",        # each model's own RunSpec and rows
    "easy_share_sweep", "scale_sweep",
    "eval_samples", "eval_temperature", "eval_top_p", "eval_top_k",  # evaluation only
    "batch_rows", "report_to", "n_examples",     # speed, tracking, display
    "num_processes", "ddp_timeout_s")            # the global batch is the same on any count
# Packages whose version changes a trained model.
TRAIN_CODE = ("torch", "transformers", "trl", "peft")


def train_key(spec: RunSpec, cfg: SftConfig, model_path: str, train_rows: pd.DataFrame,
              val: pd.DataFrame, prompt_suffix: str) -> str:
    """Reuse key of one SFT model: the params that decide it, its run spec, every column of
    the rows it trains and validates on (their levels chose them), the prompt suffix of its
    validation prompts, the base's fingerprint and the training code's versions."""
    return reuse.key({**reuse.own_params(cfg, NOT_IN_KEY), "spec": dataclasses.asdict(spec)},
                     reads={"train": train_rows, "val": val, "prompt_suffix": prompt_suffix},
                     models={"base": model_path}, code=TRAIN_CODE)


@dataclasses.dataclass
class Planned:
    """One SFT model to make: its spec, its training and validation rows, its reuse key."""

    spec: RunSpec
    train: pd.DataFrame
    val: pd.DataFrame
    key: str


def plan_models(cfg: SftConfig, traces: pd.DataFrame, model_path: str,
                prompt_suffix: str) -> list[Planned]:
    """Every model of the config with its rows and key, before any work: a teacher without
    (enough) traces fails here, naming it."""
    out = []
    for spec in run_specs(cfg):
        train_rows, val = select_traces(traces, spec.teacher, spec.n_traces, spec.easy_share,
                                        cfg.easy_levels, cfg.hard_levels, cfg.val_traces,
                                        cfg.seed)
        out.append(Planned(spec, train_rows, val,
                           train_key(spec, cfg, model_path, train_rows, val, prompt_suffix)))
    return out


def fit(planned: Planned, cfg: SftConfig, model_path: str, out: Path,
        progress: bool = True) -> dict[str, Any]:
    """Train one model (resuming from the last checkpoint if interrupted), keeping its
    checkpoints for `train_one` to choose from; a training already done with the same key is
    not repeated. Runs in every process of a launch; `train/<name>/trained.json` records it
    (main process)."""

    spec, key = planned.spec, planned.key
    run_dir, final = out / "train" / spec.name, out / "models" / spec.name
    done = training.finished(run_dir, key, final)
    if done:
        return done
    trained = training.trained(run_dir, key)
    if trained:
        return trained
    args = sft_trainer.training_args(cfg, len(planned.train))
    t0 = time.perf_counter()
    trainer, result = sft_trainer.train(
        model_path, planned.train, args, run_dir, key=key, freeze_visual=cfg.freeze_vision,
        peft=sft_trainer.peft_config(cfg), progress=progress, backend=cfg.trainer_backend)
    if training.is_main_process():  # the tokenizer beside every checkpoint, for selection
        for c in training.checkpoints(run_dir):
            trainer.processing_class.save_pretrained(c)
    # The loss from the logs of every step (a resumed trainer's own average sees only the
    # steps after the checkpoint).
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    record = {
        "key": key, "steps": int(result.global_step),
        "resumed_from": trainer.resumed_from.name if trainer.resumed_from else None,
        "train_loss": float(np.mean(losses)) if losses else float(result.training_loss),
        "train_seconds": time.perf_counter() - t0, **training.batch_record(args),
        "budget": {"questions": int(planned.train["qid"].nunique()), **trainer.budget.record()},
        "frozen_parameters": len(trainer.frozen_parameters),
        "replica_weights": trainer.replica_digests}
    training.release(trainer)  # before the checkpoints' evaluation starts an engine
    return training.mark_trained(run_dir, record)


def train_models(cfg: SftConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Train every model of the stage, nothing else (no selection, no evaluation): what
    `python -m synergy train sft` runs in each process (`accelerate launch`), and what
    `run` launches on `num_processes` processes. Returns the training records."""
    training.require_backend(cfg.trainer_backend, cfg.num_processes)
    training.join_process_group(cfg.ddp_timeout_s)
    run = Run.of(cfg)
    with torch_threads(cfg.threads):
        model = run.model(cfg.model).path
        traces = distill.load(cfg.output_root, cfg.run_name).traces
        planned = plan_models(cfg, traces, model, stratify.config_of(run).prompt_suffix)
        return [fit(p, cfg, model, run.dir(stages.SFT), progress) for p in planned]


def train_one(planned: Planned, cfg: SftConfig, model_path: str, out: Path,
              prompt_suffix: str, progress: bool = True) -> dict[str, Any]:
    """Train (`fit`; nothing to do when already trained), pick the checkpoint by validation,
    save it to `models/<name>/`; reuse a finished, whole model of the same key."""

    spec, train_rows, val, key = planned.spec, planned.train, planned.val, planned.key
    run_dir, final = out / "train" / spec.name, out / "models" / spec.name
    done = training.finished(run_dir, key, final)
    if done:
        return {**done, "reused": True}
    trained = fit(planned, cfg, model_path, out, progress)
    ckpts = training.checkpoints(run_dir)
    if cfg.lora_r > 0:  # merge adapters so every later stage loads a plain model
        ckpts = [merge_lora(c, model_path) for c in ckpts]
    scores = [validation_accuracy(c, val, cfg.eval_max_new_tokens, prompt_suffix, cfg.seed,
                                  cfg.backend, cfg.batch_rows, cfg.vllm_dtype, cfg.vllm_memory)
              for c in ckpts]
    best = int(np.argmax(scores))  # earliest among ties
    record = {**trained, "name": spec.name, **dataclasses.asdict(spec),
              "train_rows": len(train_rows), "val_rows": len(val),
              "checkpoints": {c.name: s for c, s in zip(ckpts, scores)},
              "best_checkpoint": ckpts[best].name, "val_accuracy": scores[best],
              # What the chosen checkpoint was trained on (the counts saved with it).
              "budget": {**trained.get("budget", {}),
                         **training.checkpoint_budget(training.checkpoints(run_dir)[best])},
              "train_tokens_mean": float(train_rows["n_tokens"].mean()),
              "train_images": int(sum(len(x) for x in train_rows.get("images", [])))}
    with atomic_path(final) as tmp:
        shutil.copytree(ckpts[best], tmp, ignore=shutil.ignore_patterns(
            "optimizer.pt", "scheduler.pt", "rng_state*", "training_args.bin",
            "trainer_state.json"))
    # The frozen tower checked tensor for tensor (None for a model without one).
    record["vision_unchanged"] = vision_weights_equal(model_path, final)
    return {**training.mark_done(run_dir, record, final), "reused": False}


def merge_lora(checkpoint: Path, base_path: str) -> Path:
    from peft import PeftModel

    model, processing = models.load(base_path)
    merged = PeftModel.from_pretrained(model, checkpoint).merge_and_unload()
    out = checkpoint.with_name(checkpoint.name + "-merged")
    merged.save_pretrained(out, safe_serialization=True)
    processing.save_pretrained(out)
    return out


# --- the stage ----------------------------------------------------------------------------

@dataclasses.dataclass
class SftResult(StageResult):
    results: dict[str, pd.DataFrame]  # evaluation per model ("base" and every SFT model)
    per_level: pd.DataFrame           # evaluation.per_level of `results`
    runs: pd.DataFrame                # one row per SFT model: data, steps, checkpoint, times
    base_model_path: str


def run(cfg: SftConfig, progress: bool = True) -> SftResult:
    """Train every run of the config, evaluate each and the base per level; save all."""
    training.require_backend(cfg.trainer_backend, cfg.num_processes)
    if cfg.num_processes > 1:  # before any model touches a device here (the launcher forks)
        training.launch(train_models, (cfg, progress), cfg.num_processes)
    with stage_run(cfg, stages.SFT) as ctx:
        prompt_suffix = stratify.config_of(ctx.run).prompt_suffix
        ctx.needs(stages.STRATIFY)
        model = ctx.model(cfg.model, "model", lengths={"max_length": cfg.max_length,
                                                       "eval_max_new_tokens": cfg.eval_max_new_tokens})
        traces = distill.load(cfg.output_root, cfg.run_name).traces
        ctx.needs(stages.DISTILL)
        planned = plan_models(cfg, traces, model.path, prompt_suffix)
        # What each model trains on or is selected with (`judging.TRAIN_QUESTIONS`).
        write_text(ctx.dir / judging.TRAIN_QUESTIONS, pd.concat(
            [rows.assign(model=p.spec.name, use=use)[["model", "use", "qid", "level"]]
             for p in planned for use, rows in (("train", p.train), ("val", p.val))]
        ).to_csv(index=False))
        questions = stratify.benchmark_questions(
            stratify.load(cfg.output_root, cfg.run_name).levels)

        def evaluate(path: str) -> pd.DataFrame:
            return evaluate_for(cfg, path, questions, prompt_suffix, progress)

        timings = {"base_eval": -time.perf_counter()}
        results = {"base": evaluate(model.path)}
        timings["base_eval"] += time.perf_counter()
        records = []
        for unit in planned:
            record = train_one(unit, cfg, model.path, ctx.dir, prompt_suffix, progress)
            t = time.perf_counter()
            results[unit.spec.name] = evaluate(str(ctx.dir / "models" / unit.spec.name))
            records.append({**record, "eval_seconds": time.perf_counter() - t})
        runs = pd.DataFrame(records).drop(columns=["key", "fingerprint", "checkpoints"],
                                          errors="ignore")
        table = save_results(ctx.dir, results, record=ctx.record)
        write_text(ctx.dir / "runs.csv", runs.to_csv(index=False))
        ctx.set_models({r["name"]: ctx.dir / "models" / r["name"] for r in records},
                       main=cfg.teachers[0])
        ctx.record(timings=timings, runs=runs.to_dict("records"))
    return SftResult(ctx.manifest, ctx.dir, results, table, runs, model.path)


def load(output_root: str, run_name: str) -> SftResult:
    """What `run` returned, read back from disk (for later stages and re-rendering)."""
    r = Run(output_root, run_name)
    folder, manifest = r.dir(stages.SFT), r.manifest(stages.SFT)
    results = load_results(folder)
    return SftResult(manifest, folder, results, per_level(results),
                     pd.read_csv(folder / "runs.csv"),
                     r.model(manifest["params"]["model"]).path)


# --- analysis (pure: each takes what `run` / `load_run` returned) -------------------------

def plan(cfg: SftConfig) -> pd.DataFrame:
    """The models this config trains: main runs (one per teacher), then the sweeps."""
    return pd.DataFrame([{"name": s.name, **dataclasses.asdict(s)} for s in run_specs(cfg)])


def main_models(res: SftResult) -> list[str]:
    runs = res.runs
    return ["base"] + list(runs.loc[runs["role"] == "main", "name"])


def training_table(res: SftResult) -> pd.DataFrame:
    cols = ["name", "role", "train_rows", "train_tokens_mean", "steps", "train_loss",
            "train_seconds", "best_checkpoint", "val_accuracy", "eval_seconds", "reused"]
    return res.runs[[c for c in cols if c in res.runs.columns]]


def loss_figure(res: SftResult):
    """Training loss of every model, from the trainer's JSONL logs."""
    import plotly.express as px

    frames = []
    for name in res.runs["name"]:
        rows = [r for r in read_jsonl(res.dir / "train" / name / "log.jsonl") if "loss" in r]
        if rows:
            frames.append(pd.DataFrame(rows).assign(model=name))
    if not frames:
        return px.line(title="no training logs (all models reused)")
    df = pd.concat(frames, ignore_index=True)
    return px.line(df, x="step", y="loss", color="model", log_y=True,
                   title="SFT training loss (assistant tokens only)")


def accuracy_figure(res: SftResult):
    table = res.per_level
    return bars(table[table["model"].isin(main_models(res))],
                "Accuracy by difficulty level: base vs SFT on each teacher's traces")


def length_figure(res: SftResult):
    return boxes({m: res.results[m] for m in main_models(res)},
                 "Response length (tokens) by level: base vs SFT")


def comparison(res: SftResult) -> pd.DataFrame:
    """Per level (rows): accuracy, mean length, SFT/base length ratio and format rate."""
    models = main_models(res)
    part = res.per_level[res.per_level["model"].isin(models)]

    def pivot(col):
        return part.pivot(index="level", columns="model", values=col)[models]

    acc, length, fmt = pivot("accuracy"), pivot("mean_length"), pivot("format_rate")
    ratio = length[models[1:]].div(length["base"], axis=0)
    return pd.concat([acc.add_prefix("acc "), (acc[models[1:]].sub(acc["base"], axis=0))
                      .add_prefix("Δacc "), length.add_prefix("len "),
                      ratio.add_prefix("len ratio "), fmt.add_prefix("format ")], axis=1)


def first_correct_tokens(results: pd.DataFrame, tokenizer) -> pd.DataFrame:
    """Per level: tokens until the correct answer is first stated, and what follows it.

    A statement is `\\boxed{ANS}` or "answer is ANS"; measured on correct samples. The share
    of tokens after the first statement is an overthinking measure.
    """
    rows = []
    for _, row in results.iterrows():
        pattern = re.compile(r"(?:\\boxed\{\s*|answer is:?\s*)" + re.escape(str(row["answer"]))
                             + r"(?!\d|\.\d)")
        for text, ok, n in zip(row["samples"], row["correct"], row["lengths"]):
            m = pattern.search(text) if ok else None
            if m is None:
                continue
            upto = len(tokenizer(text[:m.end()], add_special_tokens=False)["input_ids"])
            rows.append({"level": f"L{row['level']}", "tokens_to_first_correct": upto,
                         "tokens_after": max(0, n - upto), "share_after": max(0, n - upto) / n})
    cols = ["level", "tokens_to_first_correct", "tokens_after", "share_after"]
    if not rows:
        return pd.DataFrame(columns=cols)
    return pd.DataFrame(rows)[cols].groupby("level").mean().reset_index()


def overthinking(res: SftResult) -> pd.DataFrame:
    """`first_correct_tokens` for the base and each main SFT model (rows: model, level)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(res.base_model_path)
    return pd.concat([first_correct_tokens(res.results[m], tokenizer).assign(model=m)
                      for m in main_models(res)], ignore_index=True)


def sweep_table(res: SftResult, role: str) -> pd.DataFrame:
    """Per-level accuracy of one sweep's runs, with the main run(s) it extends and the base."""
    runs, table = res.runs, res.per_level
    mains = runs[runs["role"] == "main"]
    if role == "easy_sweep":
        mains = mains[mains["teacher"] == mains["teacher"].iloc[0]]
    specs = pd.concat([mains, runs[runs["role"] == role]])
    merged = table.merge(specs[["name", "teacher", "n_traces", "easy_share"]],
                         left_on="model", right_on="name").drop(columns="name")
    base = table[table["model"] == "base"].assign(teacher="base", n_traces=0, easy_share=np.nan)
    return pd.concat([base, merged], ignore_index=True)


def easy_share_figure(res: SftResult):
    import plotly.express as px

    df = sweep_table(res, "easy_sweep")
    base = df[df["teacher"] == "base"]
    df = df[(df["teacher"] != "base") & (df["level"] != "all")].sort_values("easy_share")
    fig = px.line(df, x="easy_share", y="accuracy", color="level", markers=True, range_y=[0, 1],
                  title="SFT accuracy per level vs share of easy questions in the SFT data "
                        "(dotted: base)")
    for trace in fig.data:
        level = base[base["level"] == trace.name]
        if len(level):
            fig.add_hline(y=float(level["accuracy"].iloc[0]), line_dash="dot",
                          line_color=trace.line.color)
    return fig


def scale_figure(res: SftResult):
    import plotly.express as px

    df = sweep_table(res, "scale_sweep")
    df = df.assign(run=np.where(df["teacher"] == "base", "base",
                                df["teacher"] + " × " + df["n_traces"].astype(str)))
    df = df.sort_values(["teacher", "n_traces", "level"])
    return px.line(df, x="level", y="accuracy", color="run", markers=True, range_y=[0, 1],
                   title="Quality vs quantity: per-level accuracy by teacher and number of "
                         "traces (equal training steps)")


def examples(res: SftResult, n: int, seed: int = 0) -> pd.DataFrame:
    """The first sample of a few questions per level, from each main model (text raw)."""
    picks = []
    for model in main_models(res):
        df = res.results[model]
        for level, part in df.groupby("level"):
            for _, row in part.sample(min(n, len(part)), random_state=seed).iterrows():
                picks.append({"model": model, "level": f"L{level}", "question": row["question"],
                              "answer": row["answer"], "correct": row["correct"][0],
                              "tokens": row["lengths"][0], "response": row["samples"][0]})
    return pd.DataFrame(picks)


def conclusion(res: SftResult) -> str:
    """What the run shows, in a few sentences written from the numbers."""
    table, runs = res.per_level, res.runs
    acc = table.pivot(index="level", columns="model", values="accuracy")
    length = table.pivot(index="level", columns="model", values="mean_length")
    levels = sorted(lv for lv in acc.index if lv != "all")
    easy, hard = levels[0], [lv for lv in levels if lv in ("L4", "L5")] or levels[-1:]
    mains = list(runs.loc[runs["role"] == "main", "name"])
    lines = []
    for name in mains:
        d = acc[name] - acc["base"]
        d_hard = float(d[hard].mean())
        lines.append(
            f"SFT on '{name}' traces: {d['all']:+.2f} overall; {d_hard:+.2f} on "
            f"{'–'.join(hard)} (mean); {d[easy]:+.2f} on {easy}; responses "
            f"×{length.loc['all', name] / length.loc['all', 'base']:.1f} as long as the base's.")
    if len(mains) > 1:
        ranked = sorted(mains, key=lambda m: -acc.loc["all", m])
        lines.append("Overall accuracy by teacher: " + ", ".join(
            f"'{m}' {acc.loc['all', m]:.2f}" for m in ranked)
            + f" (base {acc.loc['all', 'base']:.2f}).")
    easy_runs = sweep_table(res, "easy_sweep")
    easy_runs = easy_runs[(easy_runs["teacher"] != "base") & (easy_runs["level"] == easy)]
    if easy_runs["easy_share"].nunique() > 1:
        pts = easy_runs.sort_values("easy_share")
        lines.append(f"{easy} accuracy by share of easy questions in the SFT data: "
                     + ", ".join(f"{s:.2f} → {a:.2f}" for s, a in
                                 zip(pts["easy_share"], pts["accuracy"]))
                     + f" (base {acc.loc[easy, 'base']:.2f}).")
    scale = sweep_table(res, "scale_sweep")
    scale = scale[(scale["teacher"] != "base") & (scale["level"] == "all")]
    if len(scale) > len(mains):
        lines.append("Overall accuracy by teacher × traces: " + ", ".join(
            f"{t} × {n}: {a:.2f}" for t, n, a in
            zip(scale["teacher"], scale["n_traces"], scale["accuracy"])) + ".")
    return "\n".join(lines)
