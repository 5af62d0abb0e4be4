"""The GRPO trainer: TRL's `GRPOTrainer` with the project's keyed rollouts, the training
budget counted as it goes and the dynamic exclude-easiest mask; the stage's keys as TRL
arguments (verl's batch vocabulary mapped onto TRL's); and `train`, which trains one policy
in its folder, resumable and reused by content key. The 04 stage (`synergy.grpo`) and the
combination strategies (`synergy.strategies`, whose trainers subclass `trainer_class()`)
train through it. TRL and torch are imported inside the functions: importing the stage
module for its config or analysis stays light.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from synergy import models, training
from synergy.files import content_hash
from synergy.generation import HFEngine, open_images, sample_seed
from synergy.length_groups import completion_logps, may_group
from synergy.models import tokenizer_of
from synergy.progress import show_training
from synergy.runs import set_seed
from synergy.training import cpu_processes, world_size
from synergy.verify import accuracy_reward, format_reward

if TYPE_CHECKING:
    from synergy.grpo import GRPOStageConfig

REWARD_NAMES = ("accuracy_reward", "format_reward")  # reward_functions, in order

# Length groups of every log-prob pass over a rollout batch (the old and reference policies'
# and each micro-batch's training forward): most rollouts are short and a few run to the
# completion budget, so one padded pass computes mostly padding (`length_groups`).
# `bench/length_groups.py grpo`, 12 steps of the default's 04 on a 2-core AVX2 host, s/step against
# one pass: from its starting copy 1.29x and 1.50x (2 groups 1.71x, 1.38x; 4: 1.19x, 1.42x),
# from its trained policy 1.17x and 1.28x (2: 1.18x, 1.24x; 4: 1.40x, 1.34x).
LOGPS_GROUPS = 3


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


def optimizer_steps(n_questions: int, cfg: GRPOStageConfig) -> int:
    return max(1, n_questions * cfg.epochs // cfg.prompts_per_step)


# --- rewards and the exclude-easiest filter (pure) ----------------------------------------

def reward_functions() -> list:
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

        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask,
                                               logits_to_keep, batch_size=None,
                                               compute_entropy=False, compute_aux_loss=False,
                                               **images):
            # Text rows run in groups of neighbouring lengths (`LOGPS_GROUPS`), each cut to
            # its own longest row, on one process (`length_groups.may_group`); images (their
            # tensors are laid out per image, not per row) and a MoE's aux loss take TRL's
            # one padded pass.
            parent = super()._get_per_token_logps_and_entropies
            if (LOGPS_GROUPS <= 1 or compute_aux_loss or not may_group(self)
                    or any(v is not None for v in images.values())):
                return parent(model, input_ids, attention_mask, logits_to_keep, batch_size,
                              compute_entropy, compute_aux_loss, **images)
            return completion_logps(
                lambda ids, mask, keep: parent(model, ids, mask, keep, batch_size,
                                               compute_entropy),
                input_ids, attention_mask, logits_to_keep, LOGPS_GROUPS)

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
    return training.lora_config(cfg.lora_r, cfg.lora_alpha) if cfg.lora_r > 0 else None


def train(init: str | Path, dataset, args, out_dir: str | Path, *, key: str, label: str,
          trainer_cls=None, reward_funcs=None, callbacks=(), progress: bool = True,
          backend: str = "hf", peft=None, reuse_only: bool = False,
          **trainer_kwargs) -> dict[str, Any] | None:
    """GRPO from the saved model at `init` on `dataset` (`prompt`, `answer`, ...) with
    `args` (a TRL `GRPOConfig`) and `trainer_cls` (default: `trainer_class()`); `peft` a
    LoRA config (the saved model has the adapters merged), `backend` "unsloth" loads the
    model with unsloth.

    Trains in `out_dir` (checkpoints, `curves.jsonl`, the final `model/`): a rerun resumes
    from the last checkpoint of the same `key`, and a finished run of that key is reused.
    Runs in every process of a launch (the main process writes). Returns the run's record;
    with `reuse_only`, the finished run's record or None (nothing trained)."""
    import warnings

    out_dir = Path(out_dir)
    model_path = str((out_dir / "model").resolve())  # where it is now, not where it was made
    done = training.finished(out_dir, key, out_dir / "model")
    if done:
        return {**done, "model_path": model_path, "reused": True}
    if reuse_only:
        return None
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
