"""What the families share: the training questions and their datasets, samples of a model,
each model's reuse key, and the two ways a model of this stage trains (GRPO through
`grpo_trainer.train`, SFT through `sft_trainer.train`), each reused when its content key is unchanged.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from synergy import grpo, grpo_trainer, reuse, sft, sft_trainer, stages, training
from synergy.evaluation import SamplingSpec, sample_table
from synergy.files import content_hash
from synergy.generation import engine_for, user_text
from synergy.strategies.config import (
    GRPO_KEYS,
    GRPO_SHAPING,
    SFT_SHAPING,
    Spec,
    StrategiesConfig,
)

# --- data ---------------------------------------------------------------------------------


def question_order(traces: pd.DataFrame, teacher: str, seed: int, needed: int,
                   why: str) -> pd.DataFrame:
    """02's pool questions with a correct trace of `teacher` (`expert`, `expert_tokens`) in
    a seeded order; fails naming `why` when fewer than `needed` exist."""
    rows = traces[(traces["teacher"] == teacher) & traces["correct"].astype(bool)]
    rows = rows.assign(_order=rows["qid"].map(lambda q: content_hash([seed, "05", q], 16)))
    rows = rows.sort_values("_order").drop_duplicates("qid")
    if len(rows) < needed:
        have = sorted(set(traces["teacher"]))
        raise ValueError(f"strategies: teacher '{teacher}' has {len(rows)} questions with a "
                         f"correct trace (teachers: {have}); {why} = {needed}. Lower them "
                         "or raise distill.n_questions.")
    rows = rows.rename(columns={"response": "expert", "n_tokens": "expert_tokens"})
    keep = [c for c in ("qid", "question", "answer", "level", "steps", "images", "choices",
                        "expert", "expert_tokens") if c in rows.columns]
    return rows[keep].reset_index(drop=True)


def training_split(traces: pd.DataFrame, teacher: str, n_train: int, n_val: int,
                   seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training, validation) questions with their expert trace, in `question_order`: the
    first n_train train every strategy, the next n_val choose the router's threshold. Only
    correct traces of `teacher` qualify, so every training question has its expert trace.
    Both are disjoint from the eval questions (02's pool is)."""
    rows = question_order(traces, teacher, seed, n_train + n_val,
                          "n_train_questions + n_val_questions")
    return rows.iloc[:n_train].reset_index(drop=True), \
        rows.iloc[n_train:n_train + n_val].reset_index(drop=True)


def hybrid_questions(traces: pd.DataFrame, cfg: StrategiesConfig,
                     val: pd.DataFrame) -> pd.DataFrame:
    """The hybrid's questions: `question_order` without the router's validation questions
    (the strategies' training questions first), as many as its warm-up or RL needs."""
    n = max(cfg.hybrid_warmup_questions, cfg.hybrid_train_questions)
    rows = question_order(traces, cfg.teacher, cfg.seed, n + len(val),
                          "max(hybrid_warmup_questions, hybrid_train_questions) + "
                          "n_val_questions")
    return rows[~rows["qid"].isin(val["qid"])].iloc[:n].reset_index(drop=True)


def grpo_dataset(questions: pd.DataFrame, tokenizer, prompt_suffix: str):
    """04's TRL dataset plus `expert` (the expert response) and `prefix` (empty: the
    progressive trainer sets it on re-rolled prompts)."""
    ds = grpo.training_dataset(questions, tokenizer, prompt_suffix)
    return ds.add_column("expert", list(questions["expert"])).add_column(
        "prefix", [""] * len(questions))


def sampled(cfg: StrategiesConfig, model_path: str, questions: pd.DataFrame, n: int,
            spec: SamplingSpec, cache_root: Path, suffix: str, progress: bool) -> pd.DataFrame:
    """`questions` with `n` samples of the model each (texts, correctness, lengths)."""
    engine = engine_for(cfg, model_path)
    try:
        drawn = sample_table(engine, model_path, questions, spec, n_samples=n, seed=cfg.seed,
                             cache_root=cache_root, prompt_suffix=suffix, progress=progress)
    finally:
        engine.close()  # training comes next in this process
    return questions.assign(samples=[[s["text"] for s in d] for d in drawn],
                            correct=[[bool(s["correct"]) for s in d] for d in drawn],
                            lengths=[[int(s["n_tokens"]) for s in d] for d in drawn])


def chat_rows(rows: pd.DataFrame, suffix: str) -> pd.DataFrame:
    """SFT rows (question, response[, images]) as the chat `messages` TRL trains on."""
    return rows.assign(messages=[[{"role": "user", "content": user_text(q, suffix)},
                                  {"role": "assistant", "content": r}]
                                 for q, r in zip(rows["question"], rows["response"])])


# --- reuse keys ---------------------------------------------------------------------------

def model_key(cfg: StrategiesConfig, spec: Spec, start: str, data: Any,
              infra: dict[str, Any], code: tuple[str, ...], shaping: dict | None = None) -> str:
    """Reuse key of one model (`reuse.key`): its spec, the keys that shape its kind of
    training (`shaping`, default this config's GRPO or SFT keys), the parent stage's
    infrastructure (LoRA, backend), the data it trains on by content, the starting model's
    fingerprint and the training code's versions."""
    d = cfg.to_dict()
    if shaping is None:
        shaping = {k: d[k] for k in (GRPO_SHAPING if spec.trainer == "grpo" else SFT_SHAPING)}
    return reuse.key({"spec": dataclasses.asdict(spec), **shaping, "seed": cfg.seed,
                      "infra": infra}, reads={"data": data}, models={"start": start},
                     code=code)


# --- GRPO ---------------------------------------------------------------------------------

GRPO_INFRA = {"trainer_backend": "hf", "lora_r": 0, "lora_alpha": 16, "vllm_mode": "none",
              "vllm_server_url": "", "vllm_gpu_memory_utilization": 0.3,
              "ddp_timeout_s": training.DDP_TIMEOUT_S}


def grpo_settings(cfg: StrategiesConfig, run, **overrides) -> grpo.GRPOStageConfig:
    """A `grpo.GRPOStageConfig` for the RL-based strategies: this stage's GRPO keys (with a
    spec's `overrides`), the RL parent's infrastructure (04's trainer backend, LoRA and vLLM
    settings; defaults when 04 has not run). One process: the stage trains in the
    notebook's process."""
    infra = dict(GRPO_INFRA)
    if run.has_run(stages.GRPO):
        params = run.manifest(stages.GRPO)["params"]
        infra.update({k: params[k] for k in GRPO_INFRA if k in params})
    values = {**infra, **{k: getattr(cfg, k) for k in GRPO_KEYS},
              "run_name": cfg.run_name, "output_root": cfg.output_root, "seed": cfg.seed,
              "threads": cfg.threads,
              "init_model": cfg.base_model, "train_source": "world", "prompt_suffix": "",
              "n_train_questions": cfg.n_train_questions, "betas": [cfg.beta],
              "exclude_easiest": "none", "exclude_easiest_ablation": "none",
              "num_processes": 1, "n_examples": 0, **overrides}
    return grpo.GRPOStageConfig.from_mapping(
        values, f"{stages.STRATEGIES.name}: GRPO settings (with {stages.GRPO.name}'s backend)")


def train_grpo(spec: Spec, cfg: StrategiesConfig, gcfg: grpo.GRPOStageConfig, start: str,
               dataset, out: Path, progress: bool, trainer_cls=None, reward_funcs=None,
               reward_weights: list[float] | None = None, reuse_only: bool = False,
               **trainer_kwargs) -> dict[str, Any] | None:
    """GRPO of one spec from `start` on `dataset` with `gcfg`'s settings and `trainer_cls`
    (default: 04's trainer), `reward_funcs` and their `reward_weights` (default: 04's),
    reused when its key is unchanged (`reuse_only`: the finished record or None)."""
    args = grpo_trainer.training_args(gcfg, cfg.beta, num_processes=1)
    if reward_weights is not None:
        args.reward_weights = list(reward_weights)
    key = model_key(cfg, spec, start, dataset,
                    {k: getattr(gcfg, k) for k in ("trainer_backend", "lora_r", "lora_alpha")},
                    grpo.TRAIN_CODE,
                    shaping={k: getattr(gcfg, k) if hasattr(gcfg, k) else getattr(cfg, k)
                             for k in GRPO_SHAPING})
    record = grpo_trainer.train(start, dataset, args, out / "runs" / spec.name, key=key,
                        label=spec.name, trainer_cls=trainer_cls, reward_funcs=reward_funcs,
                        progress=progress, backend=gcfg.trainer_backend,
                        peft=grpo_trainer.peft_config(gcfg), reuse_only=reuse_only,
                        **trainer_kwargs)
    if record is None:
        return None
    return {**record, "family": spec.family, "trainer": "grpo", "start": spec.start}


# --- SFT ----------------------------------------------------------------------------------

def sft_settings(run) -> dict[str, Any]:
    """How 03 trained the SFT parent, for this stage's SFT: LoRA rank and alpha, trainer
    backend, frozen vision tower (defaults when 03 has not run)."""
    params = run.manifest(stages.SFT)["params"] if run.has_run(stages.SFT) else {}
    return {"lora_r": params.get("lora_r", 0), "lora_alpha": params.get("lora_alpha", 16),
            "trainer_backend": params.get("trainer_backend", "hf"),
            "freeze_vision": params.get("freeze_vision", True)}


def sft_args(cfg: StrategiesConfig, n_rows: int, *, lr: float | None = None,
             max_steps: int | None = None):
    """TRL's `SFTConfig` for this stage's SFT (the blends; the hybrid's warm-up with its
    own learning rate and steps)."""
    import torch
    from trl import SFTConfig

    cuda = torch.cuda.is_available()
    max_steps = cfg.sft_max_steps if max_steps is None else max_steps
    steps = max_steps if max_steps > 0 else int(np.ceil(
        cfg.sft_epochs * n_rows / cfg.sft_batch_size))
    return SFTConfig(warmup_steps=int(cfg.sft_warmup_ratio * steps),
        output_dir="checkpoints", learning_rate=lr or cfg.sft_lr,
        lr_scheduler_type=cfg.sft_lr_scheduler,
        per_device_train_batch_size=cfg.sft_batch_size // cfg.sft_grad_accum,
        gradient_accumulation_steps=cfg.sft_grad_accum,
        num_train_epochs=cfg.sft_epochs, max_steps=max_steps,
        max_length=cfg.sft_max_length, assistant_only_loss=True,
        bf16=cuda and torch.cuda.is_bf16_supported(), fp16=False, gradient_checkpointing=False,
        report_to=cfg.report_to, logging_steps=cfg.logging_steps, save_strategy="steps",
        save_steps=cfg.save_steps, save_total_limit=1, seed=cfg.seed, data_seed=cfg.seed,
        dataloader_num_workers=0, remove_unused_columns=True, dataloader_pin_memory=False)


def train_sft(spec: Spec, cfg: StrategiesConfig, start: str, rows: pd.DataFrame, out: Path,
              progress: bool, infra: dict[str, Any], args=None,
              shaping: dict | None = None, reuse_only: bool = False) -> dict[str, Any] | None:
    """SFT of one spec from `start` on chat `rows` (`messages`, optional `images`) with
    `args` (default: `sft_args`), reused when its key is unchanged (`reuse_only`: the
    finished record or None)."""
    run_dir, final = out / "runs" / spec.name, out / "runs" / spec.name / "model"
    key = model_key(cfg, spec, start, rows, infra, sft.TRAIN_CODE, shaping)
    done = training.finished(run_dir, key, final)
    if done:
        return {**done, "model_path": str(final.resolve()), "reused": True}
    if reuse_only:
        return None
    t0 = time.perf_counter()
    trainer, result = sft_trainer.train(start, rows, args or sft_args(cfg, len(rows)), run_dir,
                                key=key, progress=progress, backend=infra["trainer_backend"],
                                freeze_visual=infra["freeze_vision"],
                                peft=sft_trainer.peft_config(SimpleNamespace(**infra)))
    training.save_model(trainer, trainer.processing_class, final)
    record = {"key": key, "label": spec.name, "family": spec.family, "trainer": "sft",
              "start": spec.start, "rows": len(rows), "steps": int(result.global_step),
              "train_runtime": time.perf_counter() - t0,
              "train_loss": float(result.training_loss),
              "budget": {"questions": int(rows["qid"].nunique()) if "qid" in rows else len(rows),
                         **trainer.budget.record()}}
    return {**training.mark_done(run_dir, record, final), "model_path": str(final.resolve()),
            "reused": False}
