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
optimizer step, `micro_batch` completions go through one forward/backward. `trl_batching`
maps these onto TRL's per-device batch, gradient accumulation and steps per generation.

Each policy trains in `04_grpo/runs/<label>/` with checkpoints; a rerun resumes from the
last one, and a finished run with the same content key is reused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import pandas as pd

from synergy.evaluation import EvaluatingConfig

STAGE = "04_grpo"
SFT_STAGE = "03_sft"
REWARD_NAMES = ("accuracy_reward", "format_reward")
# The curves shown per run (names as TRL 1.x logs them).
CURVES = {
    "reward": "reward (weighted)",
    "rewards/accuracy_reward/mean": "accuracy reward",
    "rewards/format_reward/mean": "format reward",
    "kl": "KL to reference",
    "entropy": "entropy (nats/token)",
    "completions/mean_length": "completion length (tokens)",
    "completions/clipped_ratio": "truncated completions",
    "clip_ratio/region_mean": "PPO-clipped tokens",
    "frac_reward_zero_std": "groups with zero reward variance",
    "easiest_dropped": "completions dropped as easiest",
}


@dataclasses.dataclass
class GRPOStageConfig(EvaluatingConfig):
    SECTION = "grpo"

    init_model: str
    prompt_suffix: str
    n_train_questions: int
    betas: list[float]
    exclude_easiest: Literal["none", "static", "dynamic"]
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo"]
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
    cpu_threads: int
    n_examples: int

    def validate(self) -> None:
        super().validate()
        self.require(self.init_model.strip() != "", "init_model", "must name a model")
        self.require(self.n_train_questions >= 1, "n_train_questions", "must be >= 1")
        self.require(len(self.betas) >= 1 and all(b >= 0 for b in self.betas)
                     and len(set(self.betas)) == len(self.betas), "betas",
                     "must be a non-empty list of distinct values >= 0")
        self.require(self.learning_rate > 0, "learning_rate", "must be > 0")
        for key in ("epochs", "prompts_per_generation", "prompts_per_step", "micro_batch",
                    "max_completion_length", "save_steps", "logging_steps", "cpu_threads"):
            self.require(getattr(self, key) >= 1, key, "must be >= 1")
        self.require(self.num_generations >= 2, "num_generations",
                     "must be >= 2 (GRPO compares rollouts within a group)")
        self.require(self.prompts_per_generation % self.prompts_per_step == 0,
                     "prompts_per_generation", "must be a multiple of prompts_per_step")
        self.require((self.prompts_per_step * self.num_generations) % self.micro_batch == 0,
                     "micro_batch", "must divide prompts_per_step x num_generations")
        self.require(self.temperature > 0, "temperature", "must be > 0 (GRPO samples)")
        self.require(len(self.reward_weights) == len(REWARD_NAMES)
                     and all(w >= 0 for w in self.reward_weights), "reward_weights",
                     f"must be {len(REWARD_NAMES)} weights >= 0 ({', '.join(REWARD_NAMES)})")
        self.require(self.n_examples >= 0, "n_examples", "must be >= 0")


# --- batching (pure) ----------------------------------------------------------------------

def trl_batching(cfg: GRPOStageConfig, num_processes: int = 1) -> dict[str, int]:
    """verl-style prompt batches -> TRL's completion-counted batch arguments.

    An optimizer step sees `prompts_per_step x num_generations` completions, split into
    micro-batches of `micro_batch` per process (gradient accumulation); one rollout batch of
    `prompts_per_generation` prompts feeds `steps_per_generation` micro-batches, i.e.
    `prompts_per_generation / prompts_per_step` optimizer steps (the later ones off-policy,
    corrected by the clipped importance ratio, as in verl's PPO mini-batches).
    """
    per_step = cfg.prompts_per_step * cfg.num_generations
    if per_step % (cfg.micro_batch * num_processes):
        raise ValueError(f"{per_step} completions per step do not split into micro-batches of "
                         f"{cfg.micro_batch} on {num_processes} process(es)")
    accumulation = per_step // (cfg.micro_batch * num_processes)
    return {"per_device_train_batch_size": cfg.micro_batch,
            "gradient_accumulation_steps": accumulation,
            "steps_per_generation": accumulation * cfg.prompts_per_generation
            // cfg.prompts_per_step,
            "completions_per_step": per_step,
            "completions_per_generation": cfg.prompts_per_generation * cfg.num_generations}


def batching_table(cfg: GRPOStageConfig, num_processes: int = 1) -> pd.DataFrame:
    """The batch geometry of this profile, in the paper's terms and in TRL's."""
    b = trl_batching(cfg, num_processes)
    steps = optimizer_steps(cfg.n_train_questions, cfg)
    rows = [("prompts per rollout batch (verl train batch)", cfg.prompts_per_generation),
            ("prompts per optimizer step (verl mini-batch)", cfg.prompts_per_step),
            ("rollouts per prompt", cfg.num_generations),
            ("completions per optimizer step", b["completions_per_step"]),
            ("TRL per_device_train_batch_size", b["per_device_train_batch_size"]),
            ("TRL gradient_accumulation_steps", b["gradient_accumulation_steps"]),
            ("TRL steps_per_generation", b["steps_per_generation"]),
            ("training questions", cfg.n_train_questions),
            ("epochs", cfg.epochs),
            ("optimizer steps per run (before any static filter)", steps)]
    return pd.DataFrame(rows, columns=["quantity", "value"])


def optimizer_steps(n_questions: int, cfg: GRPOStageConfig) -> int:
    return max(1, n_questions * cfg.epochs // cfg.prompts_per_step)


# --- rewards and the exclude-easiest filter (pure) ----------------------------------------

def reward_functions() -> list:
    from synergy.verify import accuracy_reward, format_reward

    return [accuracy_reward, format_reward]


def weighted_reward(completions: list[str], answers: list[str],
                    weights: list[float]) -> list[float]:
    """The scalar reward GRPO optimises: sum of weight x reward function (TRL's default)."""
    per_func = [f(completions=completions, answer=answers) for f in reward_functions()]
    return [float(sum(w * r[i] for w, r in zip(weights, per_func)))
            for i in range(len(completions))]


def easiest_groups(accuracy, num_generations: int):
    """Per completion: True where every rollout of its prompt's group is correct.

    `accuracy` is the accuracy reward of a generation batch, laid out group by group
    (TRL repeats each prompt `num_generations` times consecutively).
    """
    import torch

    accuracy = torch.as_tensor(accuracy, dtype=torch.float32)
    groups = accuracy.view(-1, num_generations)
    return (groups >= 1.0).all(dim=1).repeat_interleave(num_generations)


def drop_completions(batch: dict[str, Any], drop) -> dict[str, Any]:
    """Mask the `drop` rows of a scored generation batch out of the loss.

    Their completion tokens leave the loss mask (so neither the policy gradient, the KL term,
    nor the token-count normaliser sees them) and their advantages become 0.
    """
    import torch

    drop = torch.as_tensor(drop, dtype=torch.bool, device=batch["completion_mask"].device)
    mask = batch["completion_mask"].masked_fill(drop[:, None], 0)
    out = {**batch, "completion_mask": mask,
           "advantages": batch["advantages"].masked_fill(
               drop.view(-1, *([1] * (batch["advantages"].dim() - 1))), 0.0)}
    out["num_items_in_batch"] = mask.sum()
    return out


def base_all_correct(correct: list[list[bool]]) -> np.ndarray:
    """Static filter: True for questions whose every sampled rollout was correct."""
    return np.array([len(c) > 0 and all(c) for c in correct], dtype=bool)


# --- the trainer and its curve logger -----------------------------------------------------

def make_trainer_class():
    """GRPOTrainer with the dynamic exclude-easiest mask (TRL imported lazily)."""
    from trl import GRPOTrainer

    class ExcludeEasiestGRPOTrainer(GRPOTrainer):
        """Masks groups whose rollouts are all correct out of the loss when enabled."""

        def __init__(self, *args, exclude_easiest_dynamic: bool = False, **kwargs):
            super().__init__(*args, **kwargs)
            self.exclude_easiest_dynamic = exclude_easiest_dynamic
            self._last_rewards_per_func = None

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            rewards = super()._calculate_rewards(inputs, prompts, completions,
                                                 completion_ids_list)
            self._last_rewards_per_func = rewards  # gathered over processes, group-major
            return rewards

        def _generate_and_score_completions(self, inputs):
            batch = super()._generate_and_score_completions(inputs)
            mode = "train" if self.model.training else "eval"
            if not self.exclude_easiest_dynamic or mode != "train":
                return batch
            accuracy = self._last_rewards_per_func[:, self.reward_func_names.index(
                "accuracy_reward")]
            drop_all = easiest_groups(accuracy.cpu(), self.num_generations)
            n = batch["completion_ids"].shape[0]
            local = drop_all[self.accelerator.process_index * n:
                             (self.accelerator.process_index + 1) * n]
            batch = drop_completions(batch, local)
            batch["num_items_in_batch"] = self.accelerator.gather(
                batch["completion_mask"].sum()).sum()
            self._metrics[mode]["easiest_dropped"].append(drop_all.float().mean().item())
            return batch

    return ExcludeEasiestGRPOTrainer


def make_curve_logger(path: str | Path, run: str):
    """A TrainerCallback appending every training log (one JSON line per log) to `path`."""
    from transformers import TrainerCallback

    class CurveLogger(TrainerCallback):
        def __init__(self):
            self.path, self.run = Path(path), run

        def on_train_begin(self, args, state, control, **kwargs):
            # After a resume, forget rows logged past the checkpoint: they are redone.
            rows = [r for r in read_jsonl(self.path) if r["step"] <= state.global_step]
            from synergy.runs import write_text

            write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))

        def on_log(self, args, state, control, logs=None, **kwargs):
            # Every training log (steps that reuse a rollout batch carry no reward, only the
            # loss-side metrics); not the end-of-training summary.
            if not logs or "train_runtime" in logs:
                return
            row = {"run": self.run, "step": state.global_step,
                   **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
            with self.path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
                fh.flush()

    return CurveLogger()


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL log; a torn last line (interrupted write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def grpo_args(cfg: GRPOStageConfig, beta: float, output_dir: Path, progress: bool):
    from trl import GRPOConfig

    batching = trl_batching(cfg)
    return GRPOConfig(
        output_dir=str(output_dir), seed=cfg.seed, data_seed=cfg.seed,
        per_device_train_batch_size=batching["per_device_train_batch_size"],
        gradient_accumulation_steps=batching["gradient_accumulation_steps"],
        steps_per_generation=batching["steps_per_generation"],
        num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature, top_p=1.0, top_k=0,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type,
        num_train_epochs=cfg.epochs, beta=beta, loss_type=cfg.loss_type,
        reward_weights=list(cfg.reward_weights), scale_rewards="group",
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=1, report_to="none", disable_tqdm=not progress,
        # CPU: bf16/fp16 off (bf16 errors, use_cpu autocasts and crawls); no checkpointing.
        bf16=False, fp16=False, gradient_checkpointing=False,
        remove_unused_columns=False, dataloader_num_workers=0)


# --- data ---------------------------------------------------------------------------------

def resolve_init_model(init_model: str, output_root: str, run_name: str) -> tuple[str, str]:
    """(path, upstream id) of the starting policy: "world", "03_sft[:name]", a path or hub id."""
    from synergy import data
    from synergy.runs import ArtifactError

    if init_model.split(":")[0] in (SFT_STAGE, "sft"):
        models = sft_models(output_root, run_name)
        if not models:
            raise ArtifactError(f"init_model '{init_model}': no {SFT_STAGE} models in this run")
        name = init_model.split(":", 1)[1] if ":" in init_model else next(iter(models))
        if name not in models:
            raise ArtifactError(f"init_model '{init_model}': {SFT_STAGE} has {list(models)}")
        return models[name], f"{SFT_STAGE}:{name}"
    return data.resolve_model(init_model, output_root, run_name)


def sft_models(output_root: str, run_name: str) -> dict[str, str]:
    """{name: path} of the SFT models this run recorded (empty when 03_sft has not run)."""
    from synergy.runs import read_json

    path = Path(output_root) / run_name / SFT_STAGE / "manifest.json"
    if not path.exists():
        return {}
    manifest = read_json(path)
    paths = manifest.get("model_paths") or {}
    if isinstance(paths, list):
        paths = {Path(p).name: p for p in paths}
    if not paths and manifest.get("model_path"):
        paths = {"sft": manifest["model_path"]}
    return {(n if str(n).startswith("sft") else f"sft-{n}"): str(p)
            for n, p in paths.items() if Path(p).exists()}


def training_questions(cfg: GRPOStageConfig) -> pd.DataFrame:
    """Fresh world questions (disjoint from the eval split) with their chat prompts."""
    from synergy import data
    from synergy.world import questions_frame, train_questions

    world_cfg = data.world_config(cfg.output_root, cfg.run_name)
    # A seed of its own, so these are not the questions the base was trained on first.
    return questions_frame(train_questions(world_cfg, cfg.n_train_questions,
                                           seed=cfg.seed + 4004))


def static_filter(cfg: GRPOStageConfig, questions: pd.DataFrame, model_path: str,
                  cache_root: Path, progress: bool = True) -> pd.DataFrame:
    """Sample the starting model `num_generations` times per question (the training
    rollout settings) and mark the questions it solves every time (`easiest`)."""
    from synergy.evaluation import cache_for, sample_questions
    from synergy.generation import SamplingSpec, chat_prompt, make_engine

    engine = make_engine(model_path, cfg.backend, cfg.batch_rows)
    spec = SamplingSpec(cfg.temperature, 1.0, 0, cfg.max_completion_length)
    prompts = [chat_prompt(engine.tokenizer, q, cfg.prompt_suffix) for q in questions["question"]]
    drawn = sample_questions(engine, prompts, list(questions["answer"]), spec,
                             n_samples=cfg.num_generations, round_size=cfg.num_generations,
                             seed=cfg.seed, cache=cache_for(cache_root, model_path, spec, cfg.seed),
                             progress=progress)
    correct = [[bool(s["correct"]) for s in d] for d in drawn]
    return questions.assign(base_pass_rate=[float(np.mean(c)) for c in correct],
                            easiest=base_all_correct(correct))


def training_dataset(questions: pd.DataFrame, tokenizer, prompt_suffix: str):
    """The TRL dataset: a plain-text `prompt` (the chat prompt, as evaluation builds it) and
    the `answer` the accuracy reward checks against."""
    import datasets

    from synergy.generation import chat_prompt

    return datasets.Dataset.from_dict({
        "prompt": [chat_prompt(tokenizer, q, prompt_suffix) for q in questions["question"]],
        "answer": [str(a) for a in questions["answer"]],
        "qid": list(questions["qid"])})


def training_set_table(train: pd.DataFrame) -> pd.DataFrame:
    """Per number of operations: training questions, those kept, base pass rate."""
    agg = {"questions": ("qid", "size"), "kept": ("kept", "sum")}
    if "base_pass_rate" in train.columns:
        agg["base_pass_rate"] = ("base_pass_rate", "mean")
    table = train.groupby("steps").agg(**agg).reset_index()
    total = {"steps": "all", "questions": len(train), "kept": int(train["kept"].sum())}
    if "base_pass_rate" in train.columns:
        total["base_pass_rate"] = train["base_pass_rate"].mean()
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)


# --- one training run ---------------------------------------------------------------------

@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with `n` torch CPU threads (no-op with CUDA), then restore the previous count.

    A ~1M-parameter model's ops are too small to share out: on a busy 2-core box one thread
    ran GRPO steps 3x and evaluation sampling 10x faster than two (idle threads spin)."""
    import torch

    if torch.cuda.is_available():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_label(beta: float, exclude_easiest: str) -> str:
    label = f"rl-beta{beta:g}"
    return label if exclude_easiest == "none" else f"{label}-{exclude_easiest}"


def run_key(cfg: GRPOStageConfig, beta: float, init_fingerprint: str, qids: list[str]) -> str:
    """Content key of one policy: everything that shapes its training."""
    from synergy.runs import content_hash

    shaping = {k: v for k, v in cfg.to_dict().items()
               if k not in ("run_name", "output_root", "betas", "n_examples", "backend",
                            "batch_rows", "logging_steps", "save_steps", "cpu_threads")
               and not k.startswith("eval_")}
    return content_hash({**shaping, "beta": beta, "init": init_fingerprint,
                         "questions": content_hash(qids)})


def train_policy(cfg: GRPOStageConfig, beta: float, init_path: str, dataset, run_dir: Path,
                 key: str, progress: bool = True, callbacks: list | None = None) -> dict[str, Any]:
    """Train (or resume, or reuse) one policy in `run_dir`; returns its record."""
    import warnings

    from transformers import AutoTokenizer
    from transformers.trainer_utils import get_last_checkpoint

    from synergy.runs import atomic_path, read_json, set_seed, write_json

    done_path = run_dir / "done.json"
    if done_path.exists() and read_json(done_path).get("key") == key:
        return {**read_json(done_path), "reused": True}
    if (run_dir / "key.json").exists() and read_json(run_dir / "key.json").get("key") != key:
        shutil.rmtree(run_dir)  # checkpoints of other params must not be resumed
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "key.json", {"key": key, "beta": beta})
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    resume = get_last_checkpoint(str(ckpt_dir))

    set_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(init_path)
    # Deprecation chatter of the CPU settings (gradient_checkpointing, pin_memory): not ours.
    warnings.filterwarnings("ignore", message=".*checkpointing.*deprecated.*")
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    trainer = make_trainer_class()(
        model=init_path,  # a path: with beta != 0 TRL reloads the reference from it
        reward_funcs=reward_functions(), args=grpo_args(cfg, beta, ckpt_dir, progress),
        train_dataset=dataset, processing_class=tokenizer,
        callbacks=[make_curve_logger(run_dir / "curves.jsonl",
                                     run_label(beta, cfg.exclude_easiest)), *(callbacks or [])],
        exclude_easiest_dynamic=cfg.exclude_easiest == "dynamic")
    t0 = time.perf_counter()
    with torch_threads(cfg.cpu_threads):
        result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - t0
    with atomic_path(run_dir / "model") as tmp:
        trainer.save_model(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    curves = pd.DataFrame(read_jsonl(run_dir / "curves.jsonl"))
    step_time = curves["step_time"].mean() if "step_time" in curves else np.nan
    record = {"key": key, "beta": beta, "label": run_label(beta, cfg.exclude_easiest),
              "model_path": str((run_dir / "model").resolve()),
              "steps": int(trainer.state.global_step), "resumed_from": resume,
              "train_seconds_this_session": seconds,
              "train_runtime": float(result.metrics.get("train_runtime", seconds)),
              "seconds_per_step": float(step_time)}
    write_json(done_path, record)
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: the model folder is the artifact
    return {**record, "reused": False}


# --- the stage ----------------------------------------------------------------------------

@dataclasses.dataclass
class GRPOResult:
    manifest: dict[str, Any]
    train: pd.DataFrame                 # training questions (+ static-filter columns)
    runs: pd.DataFrame                  # one row per trained policy
    curves: pd.DataFrame                # every logged training step of every run
    results: dict[str, pd.DataFrame]    # evaluation per model (evaluation.evaluate_model)
    table: pd.DataFrame                 # evaluation.per_level
    drift: pd.DataFrame                 # policy_drift: KL to the starting model, entropy


def run(cfg: GRPOStageConfig, progress: bool = True) -> GRPOResult:
    """Train one GRPO policy per beta, evaluate them with base (and SFT) per level."""
    with torch_threads(cfg.cpu_threads):
        return _run(cfg, progress)


def _run(cfg: GRPOStageConfig, progress: bool) -> GRPOResult:
    from transformers import AutoTokenizer

    from synergy import data, evaluation
    from synergy.generation import model_fingerprint
    from synergy.runs import (ArtifactError, atomic_path, now, read_json, set_seed, stage_dir,
                              write_manifest, write_text)
    from synergy.stratify import load_levels

    started, t0 = now(), time.perf_counter()
    set_seed(cfg.seed)
    out = stage_dir(cfg, STAGE)
    cache_root = evaluation.samples_cache_root(cfg.output_root, cfg.run_name)
    levels = load_levels(cfg.output_root, cfg.run_name)
    try:
        base_path, base_id = data.resolve_model("world", cfg.output_root, cfg.run_name)
    except ArtifactError:  # real data: the stratified base is the init model's source
        base_path, base_id = None, None
    source_path, init_id = resolve_init_model(cfg.init_model, cfg.output_root, cfg.run_name)

    # The policy starts from a saved copy in this stage (TRL reloads the reference from it).
    init_path = out / "init_model"
    recorded = out / "init_model.json"
    if not (init_path / "config.json").exists() or not recorded.exists() or \
            read_json(recorded).get("source") != model_fingerprint(source_path):
        with atomic_path(init_path) as tmp:
            if Path(source_path).is_dir():
                shutil.copytree(source_path, tmp)
            else:  # a hub id: a local snapshot, so the reference reloads from a path
                from huggingface_hub import snapshot_download

                snapshot_download(source_path, local_dir=str(tmp))
        write_text(recorded,
                   json.dumps({"source": model_fingerprint(source_path), "path": source_path}))
    init_fp = model_fingerprint(init_path)

    train = training_questions(cfg)
    if cfg.exclude_easiest == "static":
        train = static_filter(cfg, train, str(init_path), cache_root, progress)
        train["kept"] = ~train["easiest"]
    else:
        train["kept"] = True
    kept = train[train["kept"]].reset_index(drop=True)
    dataset = training_dataset(kept, AutoTokenizer.from_pretrained(init_path), cfg.prompt_suffix)

    records = []
    for beta in cfg.betas:
        label = run_label(beta, cfg.exclude_easiest)
        records.append(train_policy(cfg, beta, str(init_path), dataset, out / "runs" / label,
                                    run_key(cfg, beta, init_fp, list(kept["qid"])), progress))
    runs = pd.DataFrame(records)
    curves = load_curves(out, list(runs["label"]))
    write_text(out / "curves.csv", curves.to_csv(index=False))

    # Evaluation: same questions, sampling and verifier for every model.
    questions = levels[[c for c in ("qid", "question", "answer", "steps", "level")
                        if c in levels.columns]]
    models = {"base": base_path} if base_path else {}
    models.update(sft_models(cfg.output_root, cfg.run_name))
    if source_path not in models.values():
        models["init"] = source_path
    models.update(dict(zip(runs["label"], runs["model_path"])))
    results = {name: evaluation.evaluate_for(cfg, path, questions, cfg.prompt_suffix, progress)
               for name, path in models.items()}
    table = evaluation.save_results(out, results)
    drift = policy_drift(results, models, str(init_path), cfg.prompt_suffix)
    write_text(out / "drift.csv", drift.to_csv(index=False))

    manifest = write_manifest(
        out, cfg, started=started,
        upstream={"init_model": init_id, **({"base": base_id} if base_id else {}),
                  "levels": read_json(Path(cfg.output_root) / cfg.run_name / "01_stratify"
                                      / "manifest.json")["artifact_id"]},
        extra={"seconds": time.perf_counter() - t0,
               # "model_path": the policy later stages take by default (the paper's KL run)
               "model_path": headline_policy(runs)["model_path"],
               "model_paths": dict(zip(runs["label"], runs["model_path"])),
               "evaluated": models, "train_questions": len(train),
               "train_questions_kept": int(train["kept"].sum()),
               "runs": records})
    return GRPOResult(manifest, train, runs, curves, results, table, drift)


# --- analysis (pure) ----------------------------------------------------------------------

def load_curves(stage_path: str | Path, labels: list[str] | None = None) -> pd.DataFrame:
    """Every logged training step of the stage's runs (long table: one row per log)."""
    root = Path(stage_path) / "runs"
    labels = labels or sorted(p.name for p in root.iterdir() if p.is_dir())
    frames = [pd.DataFrame(read_jsonl(root / label / "curves.jsonl")) for label in labels]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def curves_figure(curves: pd.DataFrame, metrics: dict[str, str] | None = None):
    """One panel per training metric, one line per run (interactive)."""
    import plotly.express as px

    metrics = {k: v for k, v in (metrics or CURVES).items() if k in curves.columns}
    long = curves.melt(id_vars=["run", "step"], value_vars=list(metrics),
                       var_name="metric", value_name="value").dropna(subset=["value"])
    long["metric"] = long["metric"].map(metrics)
    fig = px.line(long, x="step", y="value", color="run", facet_col="metric",
                  facet_col_wrap=3, facet_row_spacing=0.07, height=260 * -(-len(metrics) // 3),
                  category_orders={"metric": list(metrics.values())},
                  title="GRPO training curves")
    fig.update_yaxes(matches=None, showticklabels=True, title=None)
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
    return fig


def headline_policy(runs: pd.DataFrame) -> pd.Series:
    """The first policy trained with a KL term (the paper's RL model), else the first."""
    with_kl = runs[runs["beta"] > 0]
    return (with_kl if len(with_kl) else runs).iloc[0]


def run_table(runs: pd.DataFrame) -> pd.DataFrame:
    cols = ["label", "beta", "steps", "seconds_per_step", "train_runtime", "reused"]
    return runs[[c for c in cols if c in runs.columns]]


def level_pivot(table: pd.DataFrame, value: str = "accuracy") -> pd.DataFrame:
    """Models as rows, levels as columns (input: `evaluation.per_level`)."""
    order = list(dict.fromkeys(table["model"]))
    pivot = table.pivot(index="model", columns="level", values=value)
    return pivot.loc[order]


def drift_table(curves: pd.DataFrame, window: int = 3) -> pd.DataFrame:
    """How far each run moved: first vs last logged entropy and length, mean and last KL."""
    rows = []
    for run, part in curves.sort_values("step").groupby("run", sort=False):
        head, tail = part.head(window), part.tail(window)
        row = {"run": run, "steps": int(part["step"].max())}
        for col, name in (("reward", "reward"), ("entropy", "entropy"),
                          ("completions/mean_length", "length")):
            if col in part:
                row[f"{name}_start"], row[f"{name}_end"] = head[col].mean(), tail[col].mean()
        row["kl_end"] = tail["kl"].mean() if "kl" in part else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def policy_drift(results: dict[str, pd.DataFrame], models: dict[str, str], ref_path: str,
                 prompt_suffix: str = "", max_samples: int = 400, batch: int = 64) -> pd.DataFrame:
    """Per model: mean per-token KL(model || reference) and the model's entropy, measured on
    the model's own evaluation responses. Unlike TRL's logged `kl` (only when beta != 0),
    this measures every policy the same way, beta 0 included."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from synergy.generation import chat_prompt
    from synergy.world import encode_pairs

    tok = AutoTokenizer.from_pretrained(ref_path)
    ref = AutoModelForCausalLM.from_pretrained(ref_path).eval()
    rows = []
    for name, path in models.items():
        df = results[name]
        pairs = [(chat_prompt(tok, q, prompt_suffix), s) for q, ss in zip(df["question"],
                 df["samples"]) for s in ss][:max_samples]
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        kl_sum = ent_sum = count = 0.0
        with torch.no_grad():
            for i in range(0, len(pairs), batch):
                prompts, responses = zip(*pairs[i:i + batch])
                ids, mask, labels = encode_pairs(tok, list(prompts), list(responses))
                keep = labels[:, 1:] != -100
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
                logp = torch.log_softmax(logits, -1)
                logq = torch.log_softmax(ref(input_ids=ids, attention_mask=mask).logits[:, :-1],
                                         -1)
                p = logp.exp()
                kl_sum += ((p * (logp - logq)).sum(-1)[keep]).sum().item()
                ent_sum += (-(p * logp).sum(-1)[keep]).sum().item()
                count += keep.sum().item()
        rows.append({"model": name, "kl_to_init": kl_sum / max(count, 1),
                     "entropy": ent_sum / max(count, 1), "tokens": int(count)})
    return pd.DataFrame(rows)


def examples(results: dict[str, pd.DataFrame], n: int, seed: int = 0) -> pd.DataFrame:
    """The same few questions per level answered by every model (first sample each)."""
    first = next(iter(results.values()))
    picks = pd.concat([g.sample(min(n, len(g)), random_state=seed)
                       for _, g in first.groupby("level")])
    rows = []
    for _, q in picks.iterrows():
        row = {"level": f"L{q['level']}", "question": q["question"], "answer": q["answer"]}
        for name, df in results.items():
            match = df[df["question"] == q["question"]].iloc[0]
            row[name] = match["samples"][0]
        rows.append(row)
    return pd.DataFrame(rows)


def statement(table: pd.DataFrame, drift: pd.DataFrame, curves: pd.DataFrame,
              runs: pd.DataFrame, tolerance: float = 0.03, drift_margin: float = 0.1) -> str:
    """What the run shows, computed from its numbers (markdown)."""
    acc = level_pivot(table, "accuracy")
    length = level_pivot(table, "mean_length")
    levels = [c for c in acc.columns if c != "all"]
    ref = "base" if "base" in acc.index else acc.index[0]
    lines = []
    for label in runs["label"]:
        delta = acc.loc[label, levels] - acc.loc[ref, levels]
        up = [lv for lv in levels if delta[lv] > tolerance]
        down = [lv for lv in levels if delta[lv] < -tolerance]
        kept = [lv for lv in levels if lv not in up + down]
        raised = "every level" if len(up) == len(levels) else ", ".join(up) or "no level"
        verdict = (f"raises accuracy on {raised}"
                   + (f", keeps {', '.join(kept)} within {tolerance:.0%}" if kept else "")
                   + (f" and lowers {', '.join(down)}" if down else ""))
        lines.append(
            f"- **{label}** {verdict} vs {ref} (overall {acc.loc[ref, 'all']:.2f} → "
            f"{acc.loc[label, 'all']:.2f}; per level "
            + ", ".join(f"{lv} {acc.loc[ref, lv]:.2f}→{acc.loc[label, lv]:.2f}" for lv in levels)
            + f"), mean response {length.loc[ref, 'all']:.0f} → {length.loc[label, 'all']:.0f}"
              " tokens.")
    sft = [m for m in acc.index if str(m).startswith("sft")]
    for s in sft:
        rl_len = length.loc[list(runs["label"]), "all"].mean()
        lines.append(f"- **{s}** answers in {length.loc[s, 'all']:.0f} tokens on average, "
                     f"{length.loc[s, 'all'] / max(rl_len, 1e-9):.1f}x the RL policies' "
                     f"{rl_len:.0f}; overall accuracy {acc.loc[s, 'all']:.2f}.")
    zero, kl_runs = runs[runs["beta"] == 0], runs[runs["beta"] > 0]
    if len(zero) and len(kl_runs):
        d = drift.set_index("model")
        start = "init" if "init" in d.index else ref
        curve = drift_table(curves).set_index("run") if len(curves) else None
        z = zero["label"].iloc[0]
        for k in kl_runs["label"]:
            moved = {"KL to the start": (d.loc[z, "kl_to_init"], d.loc[k, "kl_to_init"]),
                     "entropy change": (d.loc[z, "entropy"] - d.loc[start, "entropy"],
                                        d.loc[k, "entropy"] - d.loc[start, "entropy"])
                     if start in d.index else (np.nan, np.nan)}
            if curve is not None and "length_end" in curve:
                moved["training length change"] = tuple(
                    curve.loc[r, "length_end"] - curve.loc[r, "length_start"] for r in (z, k))
            # "Further" only beyond `drift_margin` (relative): single-seed runs differ a little
            # by chance, and a few percent says nothing about the KL term.
            further = [m for m, (a, b) in moved.items() if abs(a) > (1 + drift_margin) * abs(b)]
            less = [m for m, (a, b) in moved.items() if abs(b) > (1 + drift_margin) * abs(a)]
            lines.append(
                f"- Without KL ({z}) vs {k}: "
                + "; ".join(f"{m} {a:+.3f} vs {b:+.3f}" for m, (a, b) in moved.items())
                + f". Beyond {drift_margin:.0%}, beta 0 drifted further in "
                + (", ".join(further) if further else "none of these")
                + (f" and less in {', '.join(less)}" if less else "") + ".")
    if len(kl_runs) and "kl" in curves:
        weight = max(b * curves.loc[curves["run"] == r, "kl"].max()
                     for r, b in zip(kl_runs["label"], kl_runs["beta"]))
        lines.append(f"- The KL term's weight in the loss (beta x logged KL) peaked at "
                     f"{weight:.1e} per token, against advantages of order 1.")
    secs = runs["seconds_per_step"].mean()
    lines.append(f"- {int(runs['steps'].iloc[0])} optimizer steps per policy, "
                 f"{secs:.2f} s per GRPO step on average.")
    return "\n".join(lines)
