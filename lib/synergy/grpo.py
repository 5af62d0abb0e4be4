"""GRPO (TRL `GRPOTrainer`) with accuracy and format rewards: the paper's RL half.

Reward = 0.9 x accuracy + 0.1 x format, both from `synergy.verify`, so training rewards and
evaluation never disagree about what is correct. One notebook execution trains one policy
per KL coefficient in `betas` from the same starting model, then evaluates base, SFT (when
the run has one) and every RL policy per difficulty level on the same questions.

"Exclude easiest" (the paper's ablation: drop questions whose 8 rollouts are all correct):
- static: sample the starting model `num_generations` times per training question before
  training and drop the questions it solves every time;
- dynamic: at every generation step, groups whose rollouts are all correct are masked out of
  the loss (no policy-gradient, no KL, no token count). Without the mask such a group still
  moves the policy when the format reward varies inside it.

Batching follows verl's vocabulary: `prompts_per_generation` (verl's train batch size)
prompts are rolled out together, `prompts_per_step` (verl's PPO mini-batch) prompts make one
optimizer step, `micro_batch` completions go through one forward/backward.
`grpo_trainer.trl_batching` maps these onto TRL's per-device batch, gradient accumulation
and steps per generation; `synergy.grpo_trainer` holds the trainer this stage trains with.

Each policy trains in `04_grpo/runs/<label>/` with checkpoints; a rerun resumes from the
last one, and a finished run with the same content key is reused.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from synergy import (
    data, evaluation, generation, grpo_trainer, judging, models, parallel, reuse, stages,
    stratify, task, trace_sets, training, world,
)
from synergy.config import ConfigError
from synergy.evaluation import (
    EvaluatingConfig, choices_of, load_results, per_level, sample_table, scoring_of,
)
from synergy.files import atomic_path, write_text
from synergy.generation import SamplingSpec, chat_prompt, engine_for, user_text
from synergy.grpo_analysis import headline_policy, load_curves, policy_drift
from synergy.models import fingerprint
from synergy.runs import Run, StageResult, stage_run, torch_threads
from synergy.training import ReportTo, TrainerBackend


@dataclasses.dataclass
class PolicyKeys:
    """The GRPO training keys 04 and 05 share (verl's batch words, TRL's optimiser and
    logging), with their checks: one definition for both stages' configs."""

    learning_rate: float
    lr_scheduler_type: Literal["constant", "linear", "cosine"]
    epochs: int
    prompts_per_generation: int
    prompts_per_step: int
    micro_batch: int
    num_generations: int
    temperature: float
    max_completion_length: int
    reward_weights: list[float]
    save_steps: int
    logging_steps: int
    report_to: ReportTo

    def validate(self) -> None:
        super().validate()
        self.require(self.learning_rate > 0, "learning_rate", "must be > 0")
        for key in ("epochs", "prompts_per_generation", "prompts_per_step", "micro_batch",
                    "max_completion_length", "save_steps", "logging_steps"):
            self.require(getattr(self, key) >= 1, key, "must be >= 1")
        self.require(self.num_generations >= 2, "num_generations",
                     "must be >= 2 (GRPO compares rollouts within a group)")
        self.require(self.prompts_per_generation % self.prompts_per_step == 0,
                     "prompts_per_generation", "must be a multiple of prompts_per_step")
        self.require(self.temperature > 0, "temperature", "must be > 0 (GRPO samples)")
        names = grpo_trainer.REWARD_NAMES
        self.require(len(self.reward_weights) == len(names)
                     and all(w >= 0 for w in self.reward_weights), "reward_weights",
                     f"must be {len(names)} weights >= 0 ({', '.join(names)})")


POLICY_KEYS = tuple(f.name for f in dataclasses.fields(PolicyKeys))


@dataclasses.dataclass
class GRPOStageConfig(PolicyKeys, EvaluatingConfig):
    SECTION = "grpo"

    init_model: str
    train_source: str
    prompt_suffix: str
    n_train_questions: int
    betas: list[float]
    exclude_easiest: Literal["none", "static", "dynamic"]
    exclude_easiest_ablation: Literal["none", "static", "dynamic"]
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo"]
    trainer_backend: TrainerBackend
    num_processes: int
    ddp_timeout_s: int
    lora_r: int
    lora_alpha: int
    vllm_mode: Literal["none", "colocate", "server"]
    vllm_server_url: str
    vllm_gpu_memory_utilization: float
    n_examples: int

    def validate(self) -> None:
        super().validate()
        self.require(self.init_model.strip() != "", "init_model", "must name a model")
        self.require(self.train_source == "world" or self.train_source.startswith("mm_eureka:")
                     and len(self.train_source) > len("mm_eureka:"), "train_source",
                     "must be 'world' or 'mm_eureka:<file, folder or hub id>'")
        self.require(self.n_train_questions >= 1, "n_train_questions", "must be >= 1")
        self.require(len(self.betas) >= 1 and all(b >= 0 for b in self.betas)
                     and len(set(self.betas)) == len(self.betas), "betas",
                     "must be a non-empty list of distinct values >= 0")
        self.require(self.num_processes >= 1, "num_processes", "must be >= 1")
        self.require(self.ddp_timeout_s >= 1, "ddp_timeout_s", "must be >= 1 (seconds)")
        self.require((self.prompts_per_step * self.num_generations)
                     % (self.micro_batch * self.num_processes) == 0, "micro_batch",
                     "x num_processes must divide prompts_per_step x num_generations")
        self.require(self.lora_r >= 0, "lora_r", "must be >= 0 (0: full fine-tuning)")
        self.require(0 < self.vllm_gpu_memory_utilization <= 1, "vllm_gpu_memory_utilization",
                     "must be in (0, 1]")
        self.require(self.trainer_backend == "hf" or self.num_processes == 1
                     and self.vllm_mode == "none", "trainer_backend",
                     "'unsloth' is the single-GPU path: num_processes 1 and vllm_mode none")
        self.require(self.n_examples >= 0, "n_examples", "must be >= 0")


# --- batching (the notebook's table) ------------------------------------------------------

def batching_table(cfg: GRPOStageConfig, num_processes: int | None = None) -> pd.DataFrame:
    """The batch geometry of this profile (on `num_processes`, default the config's), in
    the paper's terms and in TRL's."""
    num_processes = num_processes or cfg.num_processes
    b = grpo_trainer.trl_batching(cfg, num_processes)
    steps = grpo_trainer.optimizer_steps(cfg.n_train_questions, cfg)
    rows = [("prompts per rollout batch (verl train batch)", cfg.prompts_per_generation),
            ("prompts per optimizer step (verl mini-batch)", cfg.prompts_per_step),
            ("rollouts per prompt", cfg.num_generations),
            ("completions per optimizer step", b["completions_per_step"]),
            ("TRL per_device_train_batch_size", b["per_device_train_batch_size"]),
            ("TRL gradient_accumulation_steps", b["gradient_accumulation_steps"]),
            ("TRL steps_per_generation", b["steps_per_generation"]),
            ("processes", num_processes),
            ("training questions", cfg.n_train_questions),
            ("epochs", cfg.epochs),
            ("optimizer steps per run (before any static filter)", steps)]
    return pd.DataFrame(rows, columns=["quantity", "value"])


# --- data ---------------------------------------------------------------------------------

def base_all_correct(correct: list[list[bool]]) -> np.ndarray:
    """Static filter: True for questions whose every sampled rollout was correct."""
    return np.array([len(c) > 0 and all(c) for c in correct], dtype=bool)


def training_questions(cfg: GRPOStageConfig, run) -> tuple[pd.DataFrame, str]:
    """(training questions, upstream id): fresh world questions (disjoint from the eval
    split) or MM-Eureka queries (`mm_eureka:<file or hub id>`, first n in a seeded order)."""

    if cfg.train_source == data.WORLD:
        world_cfg = world.config_of(run)
        # A seed of its own, so these are not the questions the base was trained on first.
        qs = task.train_questions(world_cfg, cfg.n_train_questions, seed=cfg.seed + 4004)
        return (task.questions_frame(qs, world_cfg.kind),
                f"{world_cfg.world_id()}:train:{cfg.seed + 4004}")
    source = cfg.train_source.partition(":")[2]  # "world": the image world's MM-Eureka file
    rows = trace_sets.load_mm_eureka(data.world_source(source, run, "mm_eureka")).table
    rows = rows.sample(frac=1.0, random_state=cfg.seed).head(cfg.n_train_questions)
    return rows.drop(columns=["messages"]).reset_index(drop=True), f"mm_eureka:{source}"


def static_filter(cfg: GRPOStageConfig, questions: pd.DataFrame, model_path: str,
                  cache_root: Path, progress: bool = True) -> pd.DataFrame:
    """Sample the starting model `num_generations` times per question (the training
    rollout settings) and mark the questions it solves every time (`easiest`)."""
    engine = engine_for(cfg, model_path)
    spec = SamplingSpec(cfg.temperature, 1.0, 0, cfg.max_completion_length)
    # Under a launch every process samples its share into the shared cache (data parallel).
    processes = training.process_state() if training.world_size() > 1 else None
    try:
        drawn = sample_table(engine, model_path, questions, spec,
                             n_samples=cfg.num_generations, seed=cfg.seed,
                             cache_root=cache_root, prompt_suffix=cfg.prompt_suffix,
                             progress=progress, processes=processes)
    finally:
        engine.close()  # training (with its colocated vLLM) comes next in this process
    correct = [[bool(s["correct"]) for s in d] for d in drawn]
    return questions.assign(base_pass_rate=[float(np.mean(c)) for c in correct],
                            easiest=base_all_correct(correct))


def training_set(cfg: GRPOStageConfig, run, init_path: str | Path,
                 progress: bool = True) -> tuple[pd.DataFrame, dict[str, Any], str]:
    """(training questions with `kept` (the sweep's mode), {exclude-easiest mode: the TRL
    dataset it trains on}, upstream id): the questions, the static filter when a mode needs
    it, and the prompts the trainer sees."""
    train_set, upstream = training_questions(cfg, run)
    easiest = pd.Series(False, index=train_set.index)
    if "static" in modes(cfg):
        train_set = static_filter(cfg, train_set, str(init_path), run.samples_cache, progress)
        easiest = train_set["easiest"]
        if easiest.all():
            raise ConfigError(f"grpo.exclude_easiest: the static filter dropped all "
                              f"{len(train_set)} training questions (the starting model "
                              "solves each in every rollout); use more or harder questions")
    train_set["kept"] = ~easiest if cfg.exclude_easiest == "static" else True
    processing = models.load_processing(init_path)
    datasets = {mode: training_dataset(train_set[~easiest].reset_index(drop=True)
                                       if mode == "static" else train_set,
                                       processing, cfg.prompt_suffix)
                for mode in modes(cfg)}
    return train_set, datasets, upstream


def modes(cfg: GRPOStageConfig) -> list[str]:
    """The exclude-easiest modes trained: the sweep's, then the ablation's (if another)."""
    return list(dict.fromkeys([cfg.exclude_easiest]
                              + ([cfg.exclude_easiest_ablation]
                                 if cfg.exclude_easiest_ablation != "none" else [])))


def training_dataset(questions: pd.DataFrame, tokenizer, prompt_suffix: str):
    """The TRL dataset: a plain-text `prompt` (the chat prompt, as evaluation builds it),
    the `answer` the accuracy reward checks against, and the verifier's per-question columns
    the questions carry (choices, precision, unit, answer_type; they reach the reward as
    keyword lists). Questions with images (a VLM's) get what TRL's GRPOTrainer wants for
    VLMs instead: a conversational `prompt` (the user turn; TRL puts the image slots before
    its text, as evaluation does) and an `images` column."""
    import datasets

    columns = {"answer": [str(a) for a in questions["answer"]], "qid": list(questions["qid"])}
    if (choices := choices_of(questions)) is not None:
        columns["choices"] = choices
    if scoring := scoring_of(questions):  # missing values as None, not NaN
        columns |= {c: [row[c] for row in scoring] for c in scoring[0]}
    images = list(questions["images"]) if "images" in questions else []
    if any(len(x) for x in images):
        # Image features decode each path (or keep each PIL image) only when a row is read.
        return datasets.Dataset.from_dict({
            "prompt": [[{"role": "user", "content": user_text(q, prompt_suffix)}]
                       for q in questions["question"]],
            "images": [list(x) for x in images], **columns}).cast_column(
            "images", datasets.List(datasets.Image()))
    return datasets.Dataset.from_dict({
        "prompt": [chat_prompt(tokenizer, q, prompt_suffix) for q in questions["question"]],
        **columns})


def training_set_table(train: pd.DataFrame) -> pd.DataFrame:
    """Per number of operations (world) or overall: training questions, kept, base pass rate."""
    by = "steps" if "steps" in train.columns else None
    agg = {"questions": ("qid", "size"), "kept": ("kept", "sum")}
    if "base_pass_rate" in train.columns:
        agg["base_pass_rate"] = ("base_pass_rate", "mean")
    table = train.groupby(by).agg(**agg).reset_index() if by else pd.DataFrame()
    total = {"steps": "all", "questions": len(train), "kept": int(train["kept"].sum())}
    if "base_pass_rate" in train.columns:
        total["base_pass_rate"] = train["base_pass_rate"].mean()
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)


# --- one policy ---------------------------------------------------------------------------

def run_label(beta: float, exclude_easiest: str) -> str:
    label = f"rl-beta{beta:g}"
    return label if exclude_easiest == "none" else f"{label}-{exclude_easiest}"


# Params that do not decide a policy, with why: they reach its key another way, or choose
# only what is evaluated or shown, or how fast. Every other param is in the key.
NOT_IN_KEY = (
    "init_model",                                         # the starting copy's fingerprint
    "train_source", "n_train_questions", "prompt_suffix",  # the training set, by content
    "betas",                                              # each policy keyed by its own beta
    "exclude_easiest_ablation",                           # ... and by its own filter mode
    "save_steps", "logging_steps", "report_to",
    "backend", "batch_rows",                              # sampling speed (static filter)
    "num_processes", "vllm_server_url", "vllm_gpu_memory_utilization",  # where rollouts run
    "ddp_timeout_s",                                      # how long collectives may wait
    "eval_samples", "eval_temperature", "eval_top_p", "eval_top_k", "eval_max_new_tokens",
    "n_examples")
TRAIN_CODE = ("torch", "transformers", "trl")


def run_key(cfg: GRPOStageConfig, beta: float, init_path: str | Path, dataset,
            mode: str | None = None) -> str:
    """Reuse key of one policy: the params that decide it, its beta and exclude-easiest
    mode (default: the sweep's), the training set as the trainer sees it (prompts,
    answers, ids: after the static filter), the starting model's fingerprint and the
    training code's versions."""
    mode = cfg.exclude_easiest if mode is None else mode
    return reuse.key({**reuse.own_params(cfg, NOT_IN_KEY), "beta": beta,
                      "exclude_easiest": mode},
                     reads={"dataset": dataset}, models={"init": init_path}, code=TRAIN_CODE)


def starting_copy(source: str, out: Path) -> Path:
    """The policy starts from a saved copy in this stage (TRL reloads the reference model
    from it when beta != 0); remade when the source model's content changed or the copy is
    not whole."""
    init_path, record = out / "init_model", out / "init_model.json"
    source_fp = fingerprint(source)
    if reuse.reusable(record, source_fp, init_path):
        return init_path
    with atomic_path(init_path) as tmp:
        if Path(source).is_dir():
            shutil.copytree(source, tmp)
        else:  # a hub id: a local snapshot, so the reference reloads from a path
            from huggingface_hub import snapshot_download

            snapshot_download(source, local_dir=str(tmp))
    reuse.seal(record, source_fp, init_path, spec=source)
    return init_path


# --- the stage ----------------------------------------------------------------------------

@dataclasses.dataclass
class GRPOResult(StageResult):
    train: pd.DataFrame                 # training questions (+ static-filter columns)
    runs: pd.DataFrame                  # one row per trained policy
    curves: pd.DataFrame                # every logged training step of every run
    results: dict[str, pd.DataFrame]    # evaluation per model (evaluation.evaluate_model)
    table: pd.DataFrame                 # evaluation.per_level
    drift: pd.DataFrame                 # policy_drift: KL to the starting model, entropy


def evaluated_models(ctx, base_path: str, source_path: str,
                     policies: dict[str, str]) -> dict[str, str]:
    """What 04 evaluates side by side: base, this run's SFT models ("sft-<name>"), the
    starting model when it is neither, and every policy."""
    out = {"base": base_path}
    if ctx.run.has_run(stages.SFT):
        out.update({(n if n.startswith("sft") else f"sft-{n}"): p
                    for n, p in models.stage_models(ctx.run, stages.SFT).items()})
    if source_path not in out.values():
        out["init"] = source_path
    return {**out, **policies}


@dataclasses.dataclass
class TrainingPlan:
    """What every policy of the stage trains from and on (the same in every process)."""

    init_path: Path           # the starting copy in this stage (TRL reloads references from it)
    train_set: pd.DataFrame   # training questions, `kept` marking those trained on
    questions_id: str         # their upstream id
    datasets: dict[str, Any]  # exclude-easiest mode -> the TRL dataset it trains on


def training_plan(cfg: GRPOStageConfig, run, progress: bool = True) -> TrainingPlan:
    """The starting copy (made by the main process), the training questions and the static
    filter (under a launch each process samples its share of it)."""
    source = run.model(cfg.init_model)
    init_path = Path(training.on_main(starting_copy, source.path, run.dir(stages.GRPO)))
    train_set, datasets, questions_id = training_set(cfg, run, init_path, progress)
    return TrainingPlan(init_path, train_set, questions_id, datasets)


def train_policies(cfg: GRPOStageConfig, plan: TrainingPlan, run,
                   progress: bool = True) -> list[dict[str, Any]]:
    """One policy per beta with the sweep's exclude-easiest mode, and the ablation's mode at
    the headline beta (the first > 0) (`train_policy`), side by side on a CPU
    (`run.train_jobs`, `parallel.run`)."""
    headline = next((b for b in cfg.betas if b > 0), cfg.betas[0])
    plan_ = [(beta, cfg.exclude_easiest) for beta in cfg.betas]
    plan_ += [(headline, mode) for mode in modes(cfg)[1:]]
    jobs = [parallel.Job(run_label(beta, mode), train_policy, {
        "cfg": cfg, "init_path": str(plan.init_path), "dataset": plan.datasets[mode],
        "beta": beta, "mode": mode, "folder": str(run.dir(stages.GRPO)),
        "progress": progress}) for beta, mode in plan_]
    return list(parallel.run(jobs, cfg.train_jobs, progress).values())


def train_policy(cfg: GRPOStageConfig, init_path: str, dataset, beta: float, mode: str,
                 folder: str, progress: bool = True, reuse_only: bool = False):
    """Train one policy in `<folder>/runs/<label>` (`grpo_trainer.train`: resumed, or reused
    by content key; with `reuse_only`, the finished record or None)."""
    label = run_label(beta, mode)
    return grpo_trainer.train(
        init_path, dataset, grpo_trainer.training_args(cfg, beta),
        Path(folder) / "runs" / label, key=run_key(cfg, beta, init_path, dataset, mode),
        label=label, progress=progress, backend=cfg.trainer_backend,
        peft=grpo_trainer.peft_config(cfg), exclude_easiest_dynamic=mode == "dynamic",
        reuse_only=reuse_only)


def require_engines(cfg: GRPOStageConfig) -> None:
    """Fail before any work when the trainer or rollout engine cannot run here."""
    training.require_backend(cfg.trainer_backend, cfg.num_processes)
    if cfg.vllm_mode != "none":
        generation.require_vllm(f"grpo.vllm_mode '{cfg.vllm_mode}'")


def train_models(cfg: GRPOStageConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Train every policy of the stage, nothing else (no evaluation): what `python -m
    synergy train grpo` runs in each process (`accelerate launch`), and what `run` launches
    on `num_processes` processes. Returns the training records."""
    require_engines(cfg)
    training.join_process_group(cfg.ddp_timeout_s)
    run = Run.of(cfg)
    with torch_threads(cfg.threads):
        return train_policies(cfg, training_plan(cfg, run, progress), run, progress)


def run(cfg: GRPOStageConfig, progress: bool = True) -> GRPOResult:
    """Train one GRPO policy per beta, evaluate them with base (and SFT) per level."""
    require_engines(cfg)
    if cfg.num_processes > 1:  # before any model touches a device here (the launcher forks)
        training.launch(train_models, (cfg, progress), cfg.num_processes)
    with stage_run(cfg, stages.GRPO) as ctx:
        scfg = stratify.config_of(ctx.run)
        ctx.needs(stages.STRATIFY)
        base = ctx.model(scfg.model, "base")
        source = ctx.model(cfg.init_model, "init_model",
                           lengths={"max_completion_length": cfg.max_completion_length,
                                    "eval_max_new_tokens": cfg.eval_max_new_tokens})
        plan = training_plan(cfg, ctx.run, progress)
        train_set, init_path = plan.train_set, plan.init_path
        ctx.upstream["train_questions"] = plan.questions_id
        write_text(ctx.dir / judging.TRAIN_QUESTIONS, train_set.to_csv(index=False))
        records = train_policies(cfg, plan, ctx.run, progress)
        runs = pd.DataFrame(records)
        curves = load_curves(ctx.dir, list(runs["label"]))
        write_text(ctx.dir / "curves.csv", curves.to_csv(index=False))

        # Evaluation: same questions, sampling and verifier for every model.
        questions = stratify.benchmark_questions(
            stratify.load(cfg.output_root, cfg.run_name).levels)
        evaluated = evaluated_models(ctx, base.path, source.path,
                                     dict(zip(runs["label"], runs["model_path"])))
        results = {name: evaluation.evaluate_for(cfg, path, questions, cfg.prompt_suffix,
                                                 progress)
                   for name, path in evaluated.items()}
        table = evaluation.save_results(ctx.dir, results, record=ctx.record)
        drift = policy_drift(results, evaluated, str(init_path), cfg.prompt_suffix)
        write_text(ctx.dir / "drift.csv", drift.to_csv(index=False))
        ctx.set_models(dict(zip(runs["label"], runs["model_path"])),
                       main=headline_policy(runs)["label"])
        ctx.record(evaluated={n: ctx.run.relative(p) if Path(p).is_dir() else p
                              for n, p in evaluated.items()},
                   train_questions=len(train_set),
                   train_questions_kept=int(train_set["kept"].sum()),
                   train_images=int(sum(len(x) for x in train_set.loc[
                       train_set["kept"], "images"])) if "images" in train_set else 0,
                   runs=[{**r, "model_path": ctx.run.relative(r["model_path"])}
                         for r in records])
    return GRPOResult(ctx.manifest, ctx.dir, train_set, runs, curves, results, table, drift)


def load(output_root: str, run_name: str) -> GRPOResult:
    """What `run` returned, read back from disk."""
    r = Run(output_root, run_name)
    folder, manifest = r.dir(stages.GRPO), r.manifest(stages.GRPO)
    runs = pd.DataFrame(manifest["runs"]).assign(
        model_path=lambda d: [str(r.resolve(p)) for p in d["model_path"]])
    results = load_results(folder)
    return GRPOResult(manifest, folder, pd.read_csv(folder / judging.TRAIN_QUESTIONS), runs,
                      load_curves(folder, list(runs["label"])), results, per_level(results),
                      pd.read_csv(folder / "drift.csv"))
