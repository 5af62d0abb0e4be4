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

import dataclasses
import functools
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import pandas as pd

from synergy import data, trace_sets, training, world
from synergy.evaluation import EvaluatingConfig
from synergy.progress import show_training
from synergy.runs import StageResult
from synergy.training import ReportTo, TrainerBackend

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
        self.require(len(self.reward_weights) == len(REWARD_NAMES)
                     and all(w >= 0 for w in self.reward_weights), "reward_weights",
                     f"must be {len(REWARD_NAMES)} weights >= 0 ({', '.join(REWARD_NAMES)})")


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


def batching_table(cfg: GRPOStageConfig, num_processes: int | None = None) -> pd.DataFrame:
    """The batch geometry of this profile (on `num_processes`, default the config's), in
    the paper's terms and in TRL's."""
    num_processes = num_processes or cfg.num_processes
    b = trl_batching(cfg, num_processes)
    steps = optimizer_steps(cfg.n_train_questions, cfg)
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


def optimizer_steps(n_questions: int, cfg: GRPOStageConfig) -> int:
    return max(1, n_questions * cfg.epochs // cfg.prompts_per_step)


# --- rewards and the exclude-easiest filter (pure) ----------------------------------------

def reward_functions() -> list:
    from synergy.verify import accuracy_reward, format_reward

    return [accuracy_reward, format_reward]


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


# --- the trainer --------------------------------------------------------------------------

def keyed_rollouts(trainer, prompt_ids: list[list[int]]) -> list[list[int]]:
    """Completion token ids for a rollout batch (prompt_ids as TRL lays them out: each
    prompt's copies in a row), sampled with the trainer's temperature / top-k / top-p by
    `generation.HFEngine`'s keyed decoder: sample j of a prompt is keyed by (seed, step,
    process, prompt, j), so a rollout batch is the same whatever shares it and after a
    resume. Rows end at (and include) the end-of-turn token, as TRL's own path."""
    import torch
    from transformers import (LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper,
                              TopPLogitsWarper)
    from trl.models import unwrap_model_for_generation

    from synergy.files import content_hash
    from synergy.generation import HFEngine, sample_seed

    tok = trainer._tokenizer
    width = max(len(p) for p in prompt_ids)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + list(p) for p in prompt_ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
    warpers = LogitsProcessorList([TemperatureLogitsWarper(trainer.temperature)])
    if trainer.top_k:
        warpers.append(TopKLogitsWarper(trainer.top_k))
    if trainer.top_p is not None and trainer.top_p < 1.0:
        warpers.append(TopPLogitsWarper(trainer.top_p))
    base = f"{trainer.args.seed}:{trainer.state.global_step}:{trainer.accelerator.process_index}"
    seen: dict[str, int] = {}
    seeds = []
    for p in prompt_ids:
        key = content_hash(list(p), 16)
        seeds.append(sample_seed(trainer.args.seed, f"{base}:{key}", seen.get(key, 0)))
        seen[key] = seen.get(key, 0) + 1
    with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model, \
            torch.no_grad():
        was_training = model.training
        model.eval()
        engine = HFEngine(model, tok)
        rows = engine._decode_compacting(
            {"input_ids": ids.to(model.device), "attention_mask": mask.to(model.device)},
            warpers, seeds, trainer.max_completion_length)
        model.train(was_training)
    return [r for r, _ in rows]


@functools.cache
def trainer_class():
    """TRL's GRPOTrainer with the dynamic exclude-easiest mask (TRL imported lazily).
    The combination strategies subclass it."""
    from trl import GRPOTrainer

    class SynergyGRPOTrainer(GRPOTrainer):
        """Masks groups whose rollouts are all correct out of the loss when enabled, and
        keeps the last batch's per-function rewards for subclasses."""

        def __init__(self, *args, exclude_easiest_dynamic: bool = False, **kwargs):
            # What this training trains on, counted as it goes (`budget.record()`).
            self.budget = training.budget_counter()
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), self.budget]
            super().__init__(*args, **kwargs)
            self.exclude_easiest_dynamic = exclude_easiest_dynamic
            self._last_rewards_per_func = None

        def count(self, **local) -> None:
            """Add this process's counts, summed over every process, to the budget (every
            process calls it at the same point)."""
            import torch

            values = torch.tensor([float(v) for v in local.values()],
                                  device=self.accelerator.device)
            totals = self.accelerator.reduce(values, reduction="sum")
            self.budget.add(**dict(zip(local, totals.tolist())))

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields,
                                  num_generations, has_tool_images=False):
            # Text rollouts on the transformers path go through the project's keyed,
            # compacting decoder (finished rows leave the batch): 2.3x TRL's `generate` on
            # the tiny world's rollout batches (bench/where_time_goes.py measures it).
            # Sharded models (FSDP, ZeRO-3) and images stay on TRL's own path.
            if (self.use_vllm or self.use_transformers_continuous_batching or images
                    or multimodal_fields or has_tool_images or self.is_fsdp_enabled
                    or self.is_deepspeed_enabled):
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields,
                                                     num_generations, has_tool_images)
            return keyed_rollouts(self, prompt_ids), None

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            rewards = super()._calculate_rewards(inputs, prompts, completions,
                                                 completion_ids_list)
            self._last_rewards_per_func = rewards  # gathered over processes, group-major
            return rewards

        def _generate_and_score_completions(self, inputs):
            batch = super()._generate_and_score_completions(inputs)
            mode = "train" if self.model.training else "eval"
            if mode == "train":
                self.count(rollouts=batch["completion_ids"].shape[0])
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

        def _compute_loss(self, model, inputs):
            if self.model.training:  # the completion tokens this loss trains on
                mask = inputs["completion_mask"] * inputs.get("tool_mask", 1)
                self.count(rl_completion_tokens=mask.sum())
            return super()._compute_loss(model, inputs)

    return SynergyGRPOTrainer


def training_args(cfg: GRPOStageConfig, beta: float, num_processes: int | None = None):
    """TRL's `GRPOConfig` for this stage: the one place where the stage's keys become trainer
    arguments (every other TRL option keeps TRL's default). The verl batches are mapped for
    `num_processes` processes (default: this process group), so the global batch holds."""
    import warnings

    import torch
    from trl import GRPOConfig

    from synergy.training import cpu_processes, world_size

    processes = num_processes or world_size()
    batching = trl_batching(cfg, processes)
    cuda = torch.cuda.is_available()
    # Deprecation chatter of transformers' argument names (gradient_checkpointing): not ours.
    warnings.filterwarnings("ignore", message=".*checkpointing.*deprecated.*")
    vllm = {} if cfg.vllm_mode == "none" else dict(
        use_vllm=True, vllm_mode=cfg.vllm_mode,
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        vllm_server_base_url=cfg.vllm_server_url or None)
    bf16 = cuda and torch.cuda.is_bf16_supported()
    return GRPOConfig(
        output_dir="checkpoints",  # `train` puts it inside the policy's folder
        seed=cfg.seed, data_seed=cfg.seed,
        per_device_train_batch_size=batching["per_device_train_batch_size"],
        gradient_accumulation_steps=batching["gradient_accumulation_steps"],
        steps_per_generation=batching["steps_per_generation"],
        num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
        # The paper's rollouts (verl): plain sampling at `temperature`, no top-p / top-k cut.
        temperature=cfg.temperature, top_p=1.0, top_k=0,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type,
        num_train_epochs=cfg.epochs, beta=beta, loss_type=cfg.loss_type,
        # verl's GRPO: advantages are rewards normalised by their group's std.
        reward_weights=list(cfg.reward_weights), scale_rewards="group",
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=1, report_to=cfg.report_to,
        # CPU: bf16/fp16 off (bf16 errors, use_cpu autocasts and crawls) and no activation
        # checkpointing; on a GPU, bf16 where it exists and checkpointing for long rollouts.
        bf16=bf16, fp16=False,
        gradient_checkpointing=cuda, use_cpu=cpu_processes(processes),
        # Extra dataset columns (answer, choices, expert traces) must reach the trainer.
        remove_unused_columns=False, dataloader_num_workers=0,
        ddp_timeout=cfg.ddp_timeout_s, **vllm,
        **policy_loading(cfg, bf16, training.uses_deepspeed()))


def policy_loading(cfg: GRPOStageConfig, bf16: bool, deepspeed: bool) -> dict:
    """TRL's `model_init_kwargs`: TRL loads the policy in float32 unless told, which for the
    7B is ~31 GiB of frozen LoRA base beside vLLM on paper-1gpu (an OOM). bf16 where the GPU
    has it and the weights are frozen (LoRA) or DeepSpeed keeps the float32 master copy;
    full fine-tuning without DeepSpeed keeps float32 weights (AdamW on bf16 weights drifts)."""
    if bf16 and (cfg.lora_r > 0 or deepspeed):
        return {"model_init_kwargs": {"dtype": "bfloat16"}}
    return {}


def peft_config(cfg: GRPOStageConfig):
    """LoRA on every linear layer when `lora_r > 0` (TRL then scores the reference with the
    adapters off: no second model in memory), else None."""
    from synergy.sft import lora_config

    return lora_config(cfg.lora_r, cfg.lora_alpha) if cfg.lora_r > 0 else None


def train(init: str | Path, dataset, args, out_dir: str | Path, *, key: str, label: str,
          trainer_cls=None, reward_funcs=None, callbacks=(), progress: bool = True,
          backend: str = "hf", peft=None, **trainer_kwargs) -> dict[str, Any]:
    """GRPO from the saved model at `init` on `dataset` (`prompt`, `answer`, ...) with
    `args` (a TRL `GRPOConfig`) and `trainer_cls` (default: `trainer_class()`); `peft` a
    LoRA config (the saved model has the adapters merged), `backend` "unsloth" loads the
    model with unsloth.

    Trains in `out_dir` (checkpoints, `curves.jsonl`, the final `model/`): a rerun resumes
    from the last checkpoint of the same `key`, and a finished run of that key is reused.
    Runs in every process of a launch (the main process writes). Returns the run's record."""
    import warnings

    from synergy import models
    from synergy.runs import set_seed

    out_dir = Path(out_dir)
    model_path = str((out_dir / "model").resolve())  # where it is now, not where it was made
    done = training.finished(out_dir, key, out_dir / "model")
    if done:
        return {**done, "model_path": model_path, "reused": True}
    resume = training.prepare(out_dir, key)
    args.output_dir, args.disable_tqdm = str(out_dir / "checkpoints"), not progress
    set_seed(args.seed)
    processing = models.load_processing(init)
    # Deprecation chatter of the CPU settings (gradient_checkpointing, pin_memory): not ours.
    warnings.filterwarnings("ignore", message=".*checkpointing.*deprecated.*")
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    model = str(init)  # a path: with beta != 0 TRL reloads the reference from it
    if backend == "unsloth":
        training.require_backend(backend)
        # Room for the prompt (image tokens included) before the longest completion.
        model, processing = training.unsloth_model(
            init, max_length=args.max_completion_length + 4096,
            lora_r=peft.r if peft else 0, lora_alpha=peft.lora_alpha if peft else 0,
            seed=args.seed)
        peft = None  # the adapters are in place
    if getattr(args, "use_vllm", False) and args.vllm_max_model_length is None:
        # Else vLLM sizes its cache for the model's whole context (128k for Qwen2.5-VL) and
        # refuses to start within `vllm_gpu_memory_utilization`.
        args.vllm_max_model_length = vllm_model_length(processing, dataset,
                                                       args.max_completion_length)
    replicas = training.replica_digests()
    trainer = (trainer_cls or trainer_class())(
        model=model, reward_funcs=reward_funcs or reward_functions(), args=args,
        train_dataset=dataset, processing_class=processing, peft_config=peft,
        callbacks=[training.log_callback(out_dir / "curves.jsonl", label), replicas,
                   *callbacks], **trainer_kwargs)
    show_training(trainer, label, progress)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - t0
    training.save_model(trainer, processing, out_dir / "model")
    curves = pd.DataFrame(training.read_jsonl(out_dir / "curves.jsonl"))
    record = {"key": key, "beta": args.beta, "label": label,
              "steps": int(trainer.state.global_step),
              "resumed_from": resume.name if resume else None,
              "train_seconds_this_session": seconds,
              "train_runtime": float(result.metrics.get("train_runtime", seconds)),
              "seconds_per_step": float(curves["step_time"].mean())
              if "step_time" in curves else np.nan,
              **training.batch_record(args),
              "generation_batch_size": args.generation_batch_size,
              "replica_weights": replicas.digests,
              "budget": {"questions": len(dataset), **trainer.budget.record()}}
    training.release(trainer)
    return {**training.mark_done(out_dir, record, out_dir / "model"), "model_path": model_path,
            "reused": False}


def vllm_model_length(processing, dataset, max_completion_length: int) -> int:
    """vLLM's context for GRPO rollouts: the longest prompt of `dataset` as the policy sees
    it (chat template and, for a VLM, its image tokens) plus `max_completion_length`."""
    from synergy.generation import open_images
    from synergy.models import tokenizer_of

    tokenizer = tokenizer_of(processing)
    longest = 0
    for row in dataset:
        images = row.get("images") or ([row["image"]] if row.get("image") is not None else [])
        if images and processing is not tokenizer:
            text = processing.apply_chat_template(row["prompt"], tokenize=False,
                                                  add_generation_prompt=True)
            n = processing(text=[text], images=[open_images(images)],
                           return_tensors="pt")["input_ids"].shape[1]
        else:
            text = tokenizer.apply_chat_template(row["prompt"], tokenize=False,
                                                 add_generation_prompt=True)
            n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        longest = max(longest, n)
    return longest + max_completion_length


# --- data ---------------------------------------------------------------------------------

def training_questions(cfg: GRPOStageConfig, run) -> tuple[pd.DataFrame, str]:
    """(training questions, upstream id): fresh world questions (disjoint from the eval
    split) or MM-Eureka queries (`mm_eureka:<file or hub id>`, first n in a seeded order)."""

    if cfg.train_source == data.WORLD:
        world_cfg = world.config_of(run)
        # A seed of its own, so these are not the questions the base was trained on first.
        qs = world.train_questions(world_cfg, cfg.n_train_questions, seed=cfg.seed + 4004)
        return (world.questions_frame(qs, world_cfg.kind),
                f"{world_cfg.world_id()}:train:{cfg.seed + 4004}")
    source = cfg.train_source.partition(":")[2]  # "world": the image world's MM-Eureka file
    rows = trace_sets.load_mm_eureka(data.world_source(source, run, "mm_eureka")).table
    rows = rows.sample(frac=1.0, random_state=cfg.seed).head(cfg.n_train_questions)
    return rows.drop(columns=["messages"]).reset_index(drop=True), f"mm_eureka:{source}"


def static_filter(cfg: GRPOStageConfig, questions: pd.DataFrame, model_path: str,
                  cache_root: Path, progress: bool = True) -> pd.DataFrame:
    """Sample the starting model `num_generations` times per question (the training
    rollout settings) and mark the questions it solves every time (`easiest`)."""
    from synergy.evaluation import sample_table
    from synergy.generation import SamplingSpec, engine_for

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
    from synergy import models
    from synergy.config import ConfigError

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

    from synergy.evaluation import choices_of, scoring_of
    from synergy.generation import chat_prompt, user_text

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
    from synergy import reuse

    mode = cfg.exclude_easiest if mode is None else mode
    return reuse.key({**reuse.own_params(cfg, NOT_IN_KEY), "beta": beta,
                      "exclude_easiest": mode},
                     reads={"dataset": dataset}, models={"init": init_path}, code=TRAIN_CODE)


def starting_copy(source: str, out: Path) -> Path:
    """The policy starts from a saved copy in this stage (TRL reloads the reference model
    from it when beta != 0); remade when the source model's content changed or the copy is
    not whole."""
    from synergy import reuse
    from synergy.files import atomic_path
    from synergy.models import fingerprint

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
    from synergy import models, stages

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
    from synergy import stages

    source = run.model(cfg.init_model)
    init_path = Path(training.on_main(starting_copy, source.path, run.dir(stages.GRPO)))
    train_set, datasets, questions_id = training_set(cfg, run, init_path, progress)
    return TrainingPlan(init_path, train_set, questions_id, datasets)


def train_policies(cfg: GRPOStageConfig, plan: TrainingPlan, run,
                   progress: bool = True) -> list[dict[str, Any]]:
    """One policy per beta with the sweep's exclude-easiest mode, and the ablation's mode at
    the headline beta (the first > 0) (`train`: resumed or reused by content key)."""
    from synergy import stages

    headline = next((b for b in cfg.betas if b > 0), cfg.betas[0])
    plan_ = [(beta, cfg.exclude_easiest) for beta in cfg.betas]
    plan_ += [(headline, mode) for mode in modes(cfg)[1:]]
    records = []
    for beta, mode in plan_:
        label, dataset = run_label(beta, mode), plan.datasets[mode]
        records.append(train(str(plan.init_path), dataset, training_args(cfg, beta),
                             run.dir(stages.GRPO) / "runs" / label,
                             key=run_key(cfg, beta, plan.init_path, dataset, mode),
                             label=label, progress=progress, backend=cfg.trainer_backend,
                             peft=peft_config(cfg),
                             exclude_easiest_dynamic=mode == "dynamic"))
    return records


def require_engines(cfg: GRPOStageConfig) -> None:
    """Fail before any work when the trainer or rollout engine cannot run here."""
    from synergy import generation

    training.require_backend(cfg.trainer_backend, cfg.num_processes)
    if cfg.vllm_mode != "none":
        generation.require_vllm(f"grpo.vllm_mode '{cfg.vllm_mode}'")


def train_models(cfg: GRPOStageConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Train every policy of the stage, nothing else (no evaluation): what `python -m
    synergy train grpo` runs in each process (`accelerate launch`), and what `run` launches
    on `num_processes` processes. Returns the training records."""
    from synergy.runs import Run, torch_threads

    require_engines(cfg)
    training.join_process_group(cfg.ddp_timeout_s)
    run = Run.of(cfg)
    with torch_threads(cfg.threads):
        return train_policies(cfg, training_plan(cfg, run, progress), run, progress)


def run(cfg: GRPOStageConfig, progress: bool = True) -> GRPOResult:
    """Train one GRPO policy per beta, evaluate them with base (and SFT) per level."""
    from synergy import evaluation, stages, stratify
    from synergy.files import write_text
    from synergy.runs import stage_run

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
        write_text(ctx.dir / "train_questions.csv", train_set.to_csv(index=False))
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
    from synergy import stages
    from synergy.evaluation import load_results, per_level
    from synergy.runs import Run

    r = Run(output_root, run_name)
    folder, manifest = r.dir(stages.GRPO), r.manifest(stages.GRPO)
    runs = pd.DataFrame(manifest["runs"]).assign(
        model_path=lambda d: [str(r.resolve(p)) for p in d["model_path"]])
    results = load_results(folder)
    return GRPOResult(manifest, folder, pd.read_csv(folder / "train_questions.csv"), runs,
                      load_curves(folder, list(runs["label"])), results, per_level(results),
                      pd.read_csv(folder / "drift.csv"))


# --- analysis (pure) ----------------------------------------------------------------------

def load_curves(stage_path: str | Path, labels: list[str] | None = None) -> pd.DataFrame:
    """Every logged training step of the stage's runs (long table: one row per log)."""
    from synergy.training import read_jsonl

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
                 prompt_suffix: str = "", max_samples: int = 400, batch: int = 4) -> pd.DataFrame:
    """Per model: mean per-token KL(model || reference) and the model's entropy, measured on
    the model's own evaluation responses (`scoring.token_kl`, `batch` responses per forward
    pass, as 07's `kl_batch_size` in the paper profiles: 64 responses of ~8k tokens make one
    ~19 GiB MLP activation in the 7B). Unlike TRL's logged `kl` (only when beta != 0),
    this measures every policy the same way, beta 0 included."""
    from synergy import models as registry
    from synergy.evaluation import build_prompts
    from synergy.scoring import mean_kl_entropy, token_kl

    ref, processing = registry.load_for_scoring(ref_path)
    rows = []
    for name, path in models.items():
        df = results[name].explode("samples").head(max_samples)
        prompts, images = build_prompts(SimpleNamespace(template=processing), df,
                                        prompt_suffix)
        model, _ = registry.load_for_scoring(path)
        kl = token_kl(model, ref, processing, prompts, list(df["samples"]), images, batch)
        del model  # the next policy takes its place on the device
        training.release_memory()
        stats = mean_kl_entropy(kl)
        rows.append({"model": name, "kl_to_init": stats["kl"], "entropy": stats["entropy"],
                     "tokens": stats["tokens"]})
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
