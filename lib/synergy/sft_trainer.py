"""The SFT trainer: TRL's `SFTTrainer` counting the tokens it trains on, the stage's keys as
TRL arguments, and `train`, which fine-tunes one model on chat rows in its folder,
resumable from its last checkpoint. The 03 stage (`synergy.sft`) and the combination
strategies' SFT steps (`synergy.strategies`: data mixing, the adaptive blend, the hybrid's
warm-up) train through it. TRL and torch are imported inside the functions: importing the
stage module for its config or analysis stays light.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from synergy import length_groups, models, training
from synergy.evaluation import to_dataset
from synergy.progress import show_training
from synergy.training import cpu_processes, world_size
from synergy.vlm import VISION_PARTS

if TYPE_CHECKING:
    from synergy.sft import SftConfig

VISION_PREFIXES = VISION_PARTS  # Qwen2-VL / Qwen2.5-VL: vision tower and merger (connector)

# Length groups of each SFT micro-batch (`length_groups.summed_loss`): the blends of 05 (RL's
# short answers beside expert traces, the hybrid's two modes) pad every row to the longest.
# `bench/length_groups.py sft`, 30 steps of the default's hybrid warm-up on a 2-core AVX2
# host, s/step against one pass: 1.27x and 1.38x (2 groups 1.31x, 1.29x; 4: 1.18x, 1.18x);
# on its expert traces alone (03's kind of data) 1.12x and 1.07x.
SFT_GROUPS = 3
# What a text micro-batch of TRL's collator holds; anything else (images, packed sequences)
# takes TRL's one padded pass.
TEXT_INPUTS = {"input_ids", "attention_mask", "labels", "position_ids"}
# TRL's per-micro-batch metrics, each a mean over the micro-batch's target tokens.
TOKEN_METRICS = ("entropy", "mean_token_accuracy")


def freeze_vision(model) -> list[str]:
    """Freeze the vision tower and the connector (Qwen-VL's `visual.*`); returns their names."""
    frozen = []
    for name, param in model.named_parameters():
        if any(part in VISION_PREFIXES for part in name.split(".")):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def training_args(cfg: SftConfig, n_train: int, num_processes: int | None = None):
    """TRL's `SFTConfig` for this stage: the one place where the stage's keys become trainer
    arguments (every other TRL option keeps TRL's default). `batch_size` is the global
    batch: split over the processes training together (default: this process group)."""
    import torch
    from trl import SFTConfig

    processes = num_processes or world_size()
    if cfg.batch_size % (cfg.grad_accum * processes):
        raise ValueError(f"sft.batch_size {cfg.batch_size} does not split into grad_accum "
                         f"{cfg.grad_accum} x {processes} processes")
    steps = cfg.max_steps if cfg.max_steps > 0 else \
        int(np.ceil(cfg.epochs * n_train / cfg.batch_size))
    cuda = torch.cuda.is_available()
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated")
    return SFTConfig(
        output_dir="checkpoints",  # `train` puts it inside the run's training folder
        learning_rate=cfg.lr, lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=int(cfg.warmup_ratio * steps), weight_decay=cfg.weight_decay,
        per_device_train_batch_size=cfg.batch_size // (cfg.grad_accum * processes),
        gradient_accumulation_steps=cfg.grad_accum, use_cpu=cpu_processes(processes),
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, max_length=cfg.max_length,
        # The paper's SFT: loss on the assistant turn (the trace) only.
        assistant_only_loss=True,
        # bf16 where the GPU has it; on CPU bf16 errors and use_cpu autocasts (~12x slower).
        bf16=cuda and torch.cuda.is_bf16_supported(), fp16=False,
        # Long traces on a GPU need activation checkpointing; on CPU it only slows down.
        gradient_checkpointing=cuda, report_to=cfg.report_to,
        logging_steps=max(1, steps // 50),
        # `checkpoints` evenly spaced checkpoints, all kept: the best on validation is chosen.
        save_strategy="steps", save_steps=max(1, int(np.ceil(steps / cfg.checkpoints))),
        save_total_limit=None, seed=cfg.seed, data_seed=cfg.seed, dataloader_num_workers=0,
        disable_tqdm=False, remove_unused_columns=True, dataloader_pin_memory=False,
        ddp_timeout=cfg.ddp_timeout_s)


def peft_config(cfg: SftConfig):
    """LoRA on every linear layer of the language model when `lora_r > 0`, else None (full
    fine-tuning)."""
    return training.lora_config(cfg.lora_r, cfg.lora_alpha) if cfg.lora_r > 0 else None


@functools.cache
def trainer_class():
    """TRL's `SFTTrainer` that counts the tokens it trains on (`budget`, see
    `training.budget_counter`). TRL is imported when first asked for."""
    import torch
    from trl import SFTTrainer

    class CountingSFTTrainer(SFTTrainer):
        def __init__(self, *args, **kwargs):
            self.budget = training.budget_counter()
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), self.budget]
            super().__init__(*args, **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:  # tokens with a loss (labels shift by one), every process
                here = (inputs["labels"][..., 1:] != -100).sum().float()
                total = self.accelerator.reduce(here.to(self.accelerator.device), "sum")
                self.budget.add(sft_tokens=float(total),
                                sft_rows=self.accelerator.reduce(torch.tensor(
                                    float(inputs["labels"].shape[0]),
                                    device=self.accelerator.device), "sum").item())
            parent = super().compute_loss
            if (SFT_GROUPS <= 1 or return_outputs or num_items_in_batch is None
                    or self.aux_loss_enabled or not length_groups.may_group(self)
                    or not set(inputs) <= TEXT_INPUTS or "attention_mask" not in inputs):
                return parent(model, inputs, return_outputs, num_items_in_batch)
            # The parts' losses, each divided by the whole micro-batch's count, add up to
            # its loss; the metrics each part logged become their token-weighted mean.
            logged = self._metrics["train" if model.training else "eval"]
            marks = {name: len(logged[name]) for name in TOKEN_METRICS}
            loss, counts = length_groups.summed_loss(
                lambda part: parent(model, part, False, num_items_in_batch), inputs,
                SFT_GROUPS)
            for name, mark in marks.items():
                parts = logged[name][mark:]
                del logged[name][mark:]
                logged[name].append(sum(v * n for v, n in zip(parts, counts))
                                    / max(sum(counts), 1))
            return loss

    return CountingSFTTrainer


def train(model: str | Path, rows: pd.DataFrame, args, out_dir: str | Path, *,
          key: str = "", freeze_visual: bool = True, peft=None, callbacks=(),
          progress: bool = True, backend: str = "hf"):
    """SFT of the model at `model` on chat rows (`messages`, optional `images`) with TRL's
    `SFTTrainer` and `args` (a TRL `SFTConfig`). Checkpoints go to `out_dir/checkpoints`;
    a rerun with the same `key` resumes from the last one. `backend` "unsloth" loads the
    model (and its LoRA adapters, from `peft`) with unsloth. Runs in every process of a
    launch. Returns (trainer, TrainOutput)."""
    out_dir = Path(out_dir)
    resume = training.prepare(out_dir, key)
    args.output_dir = str(out_dir / "checkpoints")
    args.disable_tqdm = not progress
    if backend == "unsloth":
        training.require_backend(backend)
        student, processing = training.unsloth_model(
            model, max_length=args.max_length, lora_r=peft.r if peft else 0,
            lora_alpha=peft.lora_alpha if peft else 0, finetune_vision=not freeze_visual,
            seed=args.seed)
        peft = None  # the adapters are in place
    else:
        student, processing = models.load(model)
    frozen = freeze_vision(student) if freeze_visual else []
    cols = [c for c in ("messages", "images") if c in rows.columns]
    replicas = training.replica_digests()
    trainer = trainer_class()(model=student, args=args, train_dataset=to_dataset(rows[cols]),
                         processing_class=processing, peft_config=peft,
                         callbacks=[training.log_callback(out_dir / "log.jsonl"),
                                    training.keep_last_optimizer(), replicas, *callbacks])
    show_training(trainer, out_dir.name, progress)
    trainer.frozen_parameters, trainer.resumed_from = frozen, resume
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    trainer.replica_digests = replicas.digests
    return trainer, result
