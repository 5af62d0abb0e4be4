"""Combination strategies of long-CoT SFT and RL (the paper's section 4), and choosing the
reasoning mode per question by difficulty (beyond the paper).

Every strategy starts from the same base (two-stage: from the SFT parent), trains on the
same questions with the same expert traces (02_distill's `teacher`, one per question), and
is evaluated with the shared engine and verifier on the stratified evaluation set:

- two_stage: GRPO from the SFT model, once per `two_stage_lengths` response budget.
- interleaved: GRPO; a group with at most `sft_gate` correct rollouts leaves the GRPO loss
  and its question's expert trace gets the SFT loss instead: in the same optimizer step
  (`same_step`, HPT) or in a separate SFT step every `sft_buffer` such questions
  (`buffered`, ReLIFT).
- progressive: a gated question is rolled out again from a prefix of its expert trace whose
  share fades by a schedule (linear, cosine as UFT, step); prefix tokens carry an SFT loss
  weighted `prefix_sft_weight`, generated tokens the GRPO loss, prompt tokens none.
- aux_sft: GRPO plus mu(t) x NLL of the batch's expert traces, mu fading from
  `aux_mu_peak` to `aux_mu_floor` (CHORD; LUFFY's "RL with SFT loss" baseline).
- data_mixing: SFT of the base on every correct response of `mix_samples` samples of the
  RL model, plus the expert trace of each question it never solves.
- adaptive: SFT of the base on one target per question: RL's shortest correct response
  where its pass rate is above `adaptive_pass_threshold`, the expert trace otherwise
  (optionally followed by GRPO).
- router: no training; k concise RL samples per question decide: their agreement (or the
  RL model's confidence, its mean token log-likelihood of them) at or above a threshold
  chosen on a validation split -> their majority answer, else the SFT model answers.

Every added SFT term is normalised as TRL normalises its GRPO loss (`mixing.sft_loss`).
The pure pieces live in `synergy.mixing`; the GRPO runs go through `grpo.train`, the SFT
runs through `sft.train`, each reused when its content key is unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from synergy.config import StageConfig
from synergy.evaluation import EvaluatingConfig
from synergy.grpo import POLICY_KEYS, PolicyKeys
from synergy.mixing import Schedule
from synergy.runs import StageResult

FAMILIES = ("two_stage", "interleaved", "progressive", "aux_sft", "data_mixing", "adaptive",
            "router")
# The combinations the paper's finding ("no combination beats both parents") is about:
# its four strategies and the public SFT-in-RL baseline. Router and adaptive go beyond it.
COMBINATIONS = ("two_stage", "interleaved", "progressive", "aux_sft", "data_mixing")
PARENTS = ("sft", "rl")
GOAL_MAX_DROP, GOAL_TOKEN_SHARE = 0.02, 0.5  # the goal for router and adaptive
TRAINING_CURVES = {
    "reward": "reward (weighted)", "rewards/accuracy_reward/mean": "accuracy reward",
    "completions/clipped_ratio": "truncated completions (clip ratio)",
    "completions/mean_length": "completion length (tokens)",
    "strategy/gated_share": "share of rollouts gated to SFT",
    "strategy/sft_updates": "separate SFT updates (buffered)",
    "strategy/prefix_share": "expert prefix share", "strategy/mu": "aux SFT weight mu",
    "strategy/sft_loss": "SFT NLL per token"}


@dataclasses.dataclass
class StrategiesConfig(PolicyKeys, EvaluatingConfig):
    SECTION = "strategies"

    base_model: str
    sft_model: str
    rl_model: str
    teacher: str
    families: list[Literal["two_stage", "interleaved", "progressive", "aux_sft",
                           "data_mixing", "adaptive", "router"]]
    n_train_questions: int
    n_val_questions: int
    beta: float
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"]
    two_stage_lengths: list[int]
    sft_gate: int
    interleaved_modes: list[Literal["same_step", "buffered"]]
    sft_buffer: int
    prefix_schedules: list[Literal["linear", "cosine", "step"]]
    prefix_start: float
    prefix_horizon: float
    prefix_steps: int
    prefix_sft_weight: float
    aux_schedule: Literal["linear", "cosine", "step"]
    aux_mu_peak: float
    aux_mu_floor: float
    aux_horizon: float
    mix_samples: int
    mix_temperature: float
    mix_max_new_tokens: int
    sft_lr: float
    sft_lr_scheduler: Literal["constant", "linear", "cosine"]
    sft_warmup_ratio: float
    sft_batch_size: int
    sft_grad_accum: int
    sft_epochs: float
    sft_max_steps: int
    sft_max_length: int
    adaptive_pass_threshold: float
    adaptive_grpo: bool
    router_samples: int
    router_signal: Literal["agreement", "confidence"]
    router_max_new_tokens: int
    synergy_margin: float
    n_examples: int

    def validate(self) -> None:
        super().validate()
        for key in ("base_model", "sft_model", "rl_model", "teacher"):
            self.require(getattr(self, key).strip() != "", key, "must not be empty")
        self.require(len(self.families) >= 1 and len(set(self.families))
                     == len(self.families), "families", "must name strategies, each once")
        for key in ("n_train_questions", "n_val_questions", "sft_buffer", "mix_samples",
                    "mix_max_new_tokens", "sft_batch_size", "sft_max_length", "router_samples",
                    "router_max_new_tokens"):
            self.require(getattr(self, key) >= 1, key, "must be >= 1")
        self.require((self.prompts_per_step * self.num_generations) % self.micro_batch == 0,
                     "micro_batch", "must divide prompts_per_step x num_generations")
        self.require(self.beta >= 0, "beta", "must be >= 0")
        self.require(self.sft_lr > 0, "sft_lr", "must be > 0")
        self.require(self.mix_temperature > 0, "mix_temperature", "must be > 0 (it samples)")
        self.require(len(self.two_stage_lengths) >= 1 and all(n >= 1 for n in
                     self.two_stage_lengths), "two_stage_lengths", "must list lengths >= 1")
        self.require(0 <= self.sft_gate < self.num_generations, "sft_gate",
                     "must be in 0..num_generations-1")
        for key in ("interleaved_modes", "prefix_schedules"):
            values = getattr(self, key)
            self.require(len(values) >= 1 and len(set(values)) == len(values), key,
                         "must be a non-empty list without repeats")
        for key in ("prefix_start", "prefix_horizon", "aux_horizon", "adaptive_pass_threshold",
                    "sft_warmup_ratio"):
            self.require(0 <= getattr(self, key) <= 1, key, "must be in [0, 1]")
        self.require(self.prefix_steps >= 2, "prefix_steps", "must be >= 2 (plateaus)")
        self.require(self.prefix_sft_weight >= 0, "prefix_sft_weight", "must be >= 0")
        self.require(0 <= self.aux_mu_floor <= self.aux_mu_peak, "aux_mu_floor",
                     "must be in [0, aux_mu_peak]")
        self.require(self.sft_grad_accum >= 1 and self.sft_batch_size % self.sft_grad_accum
                     == 0, "sft_batch_size", "must be divisible by sft_grad_accum (>= 1)")
        self.require(self.sft_epochs > 0, "sft_epochs", "must be > 0")
        self.require(self.sft_max_steps == -1 or self.sft_max_steps >= 1, "sft_max_steps",
                     "must be -1 (train for sft_epochs) or >= 1")
        self.require(0 <= self.synergy_margin < 1, "synergy_margin", "must be in [0, 1)")
        self.require(self.n_examples >= 0, "n_examples", "must be >= 0")


# --- what one execution trains ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Plan:
    """How a `StrategyGRPOTrainer` routes each rollout group (see the module docstring)."""

    gate: int | None = None                          # None: no gate
    on_gate: Literal["sft", "prefix"] | None = None
    sft_mode: Literal["same_step", "buffered"] = "same_step"
    sft_buffer: int = 1
    prefix_schedule: Schedule | None = None
    prefix_start: float = 1.0
    prefix_horizon: float = 1.0
    prefix_steps: int = 3
    prefix_weight: float = 0.0
    aux_schedule: Schedule | None = None
    aux_peak: float = 0.0
    aux_floor: float = 0.0
    aux_horizon: float = 1.0


@dataclasses.dataclass(frozen=True)
class Spec:
    """One model this stage trains."""

    name: str
    family: str
    start: Literal["base", "sft", "adaptive"]
    trainer: Literal["grpo", "sft"]
    plan: Plan | None = None
    max_completion_length: int | None = None


def specs(cfg: StrategiesConfig) -> list[Spec]:
    """The models of `cfg.families`, in the order they train (adaptive before its GRPO)."""
    out = []
    for family in cfg.families:
        if family == "two_stage":
            out += [Spec(f"two_stage-{n}", family, "sft", "grpo", Plan(), n)
                    for n in cfg.two_stage_lengths]
        elif family == "interleaved":
            out += [Spec(f"interleaved-{m}", family, "base", "grpo",
                         Plan(gate=cfg.sft_gate, on_gate="sft", sft_mode=m,
                              sft_buffer=cfg.sft_buffer)) for m in cfg.interleaved_modes]
        elif family == "progressive":
            out += [Spec(f"progressive-{s}", family, "base", "grpo",
                         Plan(gate=cfg.sft_gate, on_gate="prefix", prefix_schedule=s,
                              prefix_start=cfg.prefix_start, prefix_horizon=cfg.prefix_horizon,
                              prefix_steps=cfg.prefix_steps,
                              prefix_weight=cfg.prefix_sft_weight))
                    for s in cfg.prefix_schedules]
        elif family == "aux_sft":
            out.append(Spec("aux_sft", family, "base", "grpo",
                            Plan(aux_schedule=cfg.aux_schedule, aux_peak=cfg.aux_mu_peak,
                                 aux_floor=cfg.aux_mu_floor, aux_horizon=cfg.aux_horizon)))
        elif family == "data_mixing":
            out.append(Spec("data_mixing", family, "base", "sft"))
        elif family == "adaptive":
            out.append(Spec("adaptive", family, "base", "sft"))
            if cfg.adaptive_grpo:
                out.append(Spec("adaptive-grpo", family, "adaptive", "grpo", Plan()))
    return out


def headlines(cfg: StrategiesConfig) -> dict[str, str]:
    """The model that stands for each of the paper's strategies in the report: two-stage at
    its longest response budget (the paper's working 16k), the first listed mode/schedule."""
    out = {}
    for spec in specs(cfg):
        if spec.family == "two_stage":
            out[spec.family] = f"two_stage-{max(cfg.two_stage_lengths)}"
        elif spec.family in ("interleaved", "progressive", "data_mixing"):
            out.setdefault(spec.family, spec.name)
    return out


# --- the trainer --------------------------------------------------------------------------

def sft_target_of(row: dict, n_tokens: int | None = None) -> dict:
    """What the SFT loss of one question trains on: its prompt (text, or chat messages for a
    question with images), the expert response (or its first `n_tokens` tokens) and images."""
    return {"prompt": row["prompt"], "response": row["expert"], "n_tokens": n_tokens,
            "images": row.get("images") or None}


def interleave(batch: dict[str, Any], accuracy, inputs: list[dict], num_generations: int,
               gate: int, mode: str):
    """Route one scored rollout batch: gated groups leave the GRPO loss (mask and advantage
    zeroed); each one's expert trace becomes an SFT target on its first row (`same_step`)
    or joins the buffer (`buffered`). Returns (batch, targets per row, buffered targets)."""
    from synergy import grpo, mixing

    gated = mixing.gated_rows(accuracy, num_generations, gate)
    batch = grpo.drop_completions(batch, gated)
    firsts = np.flatnonzero((gated & mixing.first_of_group(len(inputs), num_generations))
                            .numpy())
    targets: list = [None] * len(inputs)
    if mode == "buffered":
        return batch, targets, [sft_target_of(inputs[i]) for i in firsts]
    for i in firsts:
        targets[i] = sft_target_of(inputs[i])
    return batch, targets, []


def prefix_inputs(inputs: list[dict], gated, share: float, num_generations: int, tokenizer
                  ) -> tuple[list[dict], list]:
    """Progressive: the gated rows' inputs again, each prompt followed by `share` of its
    expert trace (`prefix` holds that text, so rewards score prefix + continuation), and per
    row of the batch an SFT target: on each gated group's first row, the prefix tokens (the
    prompt carries no loss). Text prompts only: TRL renders chat prompts (those of questions
    with images) with a fresh generation prompt, so a rollout cannot continue a prefix."""
    from synergy import mixing

    sub, targets = [], [None] * len(inputs)
    for i in np.flatnonzero(np.asarray(gated)):
        if not isinstance(inputs[i]["prompt"], str):
            raise NotImplementedError(
                "progressive: questions with images (chat prompts) cannot be rolled out from "
                "an expert prefix; run it on text questions, or drop it from 'families'")
        text, n = mixing.prefix_of(tokenizer, inputs[i]["expert"], share)
        sub.append({**inputs[i], "prompt": inputs[i]["prompt"] + text, "prefix": text})
        if i % num_generations == 0:
            targets[i] = sft_target_of(inputs[i], n_tokens=n)
    return sub, targets


def prefixed_rewards() -> list:
    """The stage's reward functions, scoring `prefix + completion` (a progressive rollout's
    answer may sit in its prefix). Names unchanged, so curves keep TRL's metric names."""
    from synergy import grpo
    from synergy.verify import completion_text

    def wrap(func):
        @functools.wraps(func)
        def scored(completions, prefix=None, **kwargs):
            if prefix is not None:
                completions = [p + completion_text(c) for p, c in zip(prefix, completions)]
            return func(completions=completions, **kwargs)
        return scored

    return [wrap(f) for f in grpo.reward_functions()]


# Model inputs a processor may return beside the token ids (passed on to TRL's log-probs).
_VISION_INPUTS = ("pixel_values", "image_grid_thw", "mm_token_type_ids", "token_type_ids",
                  "image_sizes", "pixel_attention_mask")


@functools.cache
def trainer_class():
    """`grpo.trainer_class()` (TRL's GRPOTrainer) routing groups by a `Plan`."""
    import torch

    from synergy import grpo, mixing
    from synergy.models import tokenizer_of

    class StrategyGRPOTrainer(grpo.trainer_class()):
        """GRPO whose gated groups get SFT (same step or buffered), a faded expert prefix,
        and/or an auxiliary SFT loss, by `plan`. The dataset carries `expert` (the expert
        response) and `prefix` ("") beside TRL's `prompt` (and `images`).

        SFT targets stay on the trainer (`sft_targets`, one list per rollout batch); the
        batch carries each row's index into it (`sft_index`, -1: none), so TRL shuffles and
        splits the batch as usual and images never enter it."""

        def __init__(self, *args, plan: Plan, **kwargs):
            super().__init__(*args, **kwargs)
            if plan.on_gate == "prefix" and self.accelerator.num_processes > 1:
                # Re-rolling only the gated groups would give processes unequal batches.
                raise NotImplementedError("progressive training runs on one process")
            self.plan = plan
            self.sft_targets: list[dict] = []   # this rollout batch's targets
            self.sft_waiting: list[dict] = []   # buffered targets
            self.sft_updates = 0
            self.last_loss_parts: dict[str, float] = {}

        def progress(self) -> float:
            return self.state.global_step / max(self.state.max_steps, 1)

        def _log(self, name: str, value: float) -> None:
            self._metrics["train"][f"strategy/{name}"].append(float(value))

        def _generate_and_score_completions(self, inputs):
            batch = super()._generate_and_score_completions(inputs)
            if not self.model.training:
                return batch
            plan, g = self.plan, self.num_generations
            here = self.accelerator.process_index * len(inputs)  # rewards span all processes
            accuracy = self._last_rewards_per_func[
                here:here + len(inputs), self.reward_func_names.index("accuracy_reward")].cpu()
            targets, weight = [None] * len(inputs), 0.0
            if plan.gate is not None:
                gated = mixing.gated_rows(accuracy, g, plan.gate)
                self._log("gated_share", gated.float().mean())
                if plan.on_gate == "sft":
                    batch, targets, waiting = interleave(batch, accuracy, inputs, g,
                                                         plan.gate, plan.sft_mode)
                    self.sft_waiting += waiting
                    weight = 1.0
                elif plan.on_gate == "prefix":
                    share = mixing.schedule(plan.prefix_schedule, self.progress(),
                                            plan.prefix_start, 0.0, plan.prefix_horizon,
                                            plan.prefix_steps)
                    self._log("prefix_share", share)
                    if share > 0 and bool(gated.any()):
                        batch, targets = self._with_prefixes(inputs, batch, gated, share)
                        weight = plan.prefix_weight
                # The GRPO token count changed (dropped or re-rolled rows): count it again.
                batch["num_items_in_batch"] = self.accelerator.gather(
                    batch["completion_mask"].sum()).sum()
            if plan.aux_schedule is not None:
                weight = mixing.schedule(plan.aux_schedule, self.progress(), plan.aux_peak,
                                         plan.aux_floor, plan.aux_horizon)
                self._log("mu", weight)
                firsts = mixing.first_of_group(len(inputs), g).tolist()
                targets = [sft_target_of(x) if f else None for x, f in zip(inputs, firsts)]
            self.sft_targets = [t for t in targets if t is not None]
            device = batch["completion_ids"].device
            index = np.cumsum([t is not None for t in targets]) - 1
            batch["sft_index"] = torch.tensor(
                [int(j) if t is not None else -1 for j, t in zip(index, targets)],
                device=device)
            batch["sft_weight"] = torch.tensor(float(weight), device=device)
            batch["sft_num_items"] = torch.tensor(
                float(self._target_tokens(self.sft_targets)), device=device)
            return batch

        def _with_prefixes(self, inputs, batch, gated, share: float):
            """Roll the gated groups out again from `share` of their expert trace; their
            new rows replace the old ones, and each group's first row gets the prefix as
            its SFT target. The second rollout's metrics are logged as `prefixed/...`."""
            tok = tokenizer_of(self.processing_class)
            sub_inputs, targets = prefix_inputs(inputs, gated.numpy(), share,
                                                self.num_generations, tok)
            metrics = self._metrics["train"]
            before = {k: len(v) for k, v in metrics.items()}
            sub = super()._generate_and_score_completions(sub_inputs)
            for k in list(metrics):
                if k.startswith(("prefixed/", "strategy/")) or k == "num_tokens":
                    continue
                new = metrics[k][before.get(k, 0):]
                del metrics[k][before.get(k, 0):]
                metrics[f"prefixed/{k}"].extend(new)
                if not metrics[k]:
                    del metrics[k]
            return mixing.replace_rows(batch, gated, sub, tok.pad_token_id), targets

        def _target_tokens(self, targets: list[dict]) -> int:
            """Response tokens the SFT loss of `targets` averages over."""
            tok = tokenizer_of(self.processing_class)
            return sum(sum(mixing.sft_target(tok, "", t["response"], t["n_tokens"])[1])
                       for t in targets)

        def _sft_nll(self, model, targets: list[dict]):
            """Summed NLL of the targets' response tokens and their count, from TRL's
            log-probs: text targets through the tokenizer, targets with chat prompts (the
            questions with images) through the processor, images included, as rollouts."""
            tok = tokenizer_of(self.processing_class)
            device = self.accelerator.device
            nll, count = torch.zeros((), device=device), torch.zeros((), device=device)
            text = [t for t in targets if isinstance(t["prompt"], str)]
            chat = [t for t in targets if not isinstance(t["prompt"], str)]
            parts = []
            if text:
                padded = mixing.pad_targets([mixing.sft_target(
                    tok, t["prompt"], t["response"], t["n_tokens"]) for t in text],
                    tok.pad_token_id)
                parts.append(({"input_ids": padded["sft_ids"],
                               "attention_mask": padded["sft_attention"]}, padded["sft_mask"]))
            if chat:
                parts.append(self._encode_chat(chat))
            for enc, mask in parts:
                extra = {k: v.to(device) for k, v in enc.items() if k in _VISION_INPUTS}
                ids, attention = enc["input_ids"].to(device), enc["attention_mask"].to(device)
                mask = mask.to(device)
                logps, _, _ = self._get_per_token_logps_and_entropies(
                    model, ids, attention, ids.shape[1] - 1,
                    batch_size=self.args.per_device_train_batch_size,
                    num_images=enc.get("num_images"), **extra)
                nll = nll - (logps * mask[:, 1:]).sum()
                count = count + mask[:, 1:].sum()
            return nll, count

        def _encode_chat(self, targets: list[dict]):
            """(model inputs, loss mask) of chat prompts with their images + responses:
            the prompt rendered as TRL renders the rollouts', `vlm.encode_pairs` for the
            rest (image tokens expanded, loss on the response and end of turn)."""
            from trl.data_utils import apply_chat_template, prepare_multimodal_messages

            from synergy.vlm import encode_pairs

            images = [list(t["images"] or []) for t in targets]
            prompts = [apply_chat_template(
                {"prompt": prepare_multimodal_messages(t["prompt"], images=im or None)},
                self.processing_class, **self.chat_template_kwargs)["prompt"]
                for t, im in zip(targets, images)]
            enc = encode_pairs(self.processing_class, prompts,
                               [t["response"] for t in targets], images)
            mask = (enc.pop("labels") != -100).float()
            enc = {k: v for k, v in enc.items() if torch.is_tensor(v)}
            return {**enc, "num_images": [len(im) for im in images]}, mask

        def _sft_term(self, model, inputs):
            """The weighted SFT loss of this micro-batch's targets (None without any),
            normalised like the GRPO loss (`mixing.sft_loss`)."""
            if "sft_index" not in inputs:
                return None
            rows = [int(i) for i in inputs["sft_index"].tolist() if i >= 0]
            if not rows or float(inputs["sft_weight"]) == 0:
                return None
            nll, tokens = self._sft_nll(model, [self.sft_targets[i] for i in rows])
            self._log("sft_loss", nll.detach() / tokens.clamp(min=1))
            return inputs["sft_weight"] * mixing.sft_loss(
                nll, tokens, inputs["sft_num_items"], self.loss_type,
                self.current_gradient_accumulation_steps, self.args.steps_per_generation,
                self.accelerator.num_processes)

        def _compute_loss(self, model, inputs):
            loss = super()._compute_loss(model, inputs)  # GRPO on the rows left in it
            term = self._sft_term(model, inputs)
            self.last_loss_parts = {"grpo": float(loss.detach())}
            if term is None:
                return loss
            self.last_loss_parts["sft"] = float(term.detach())
            return loss + term

        def training_step(self, model, inputs, num_items_in_batch):
            plan = self.plan
            if plan.sft_mode == "buffered" and len(self.sft_waiting) >= plan.sft_buffer \
                    and self._step % self.current_gradient_accumulation_steps == 0:
                self._buffered_sft_step(model)
            return super().training_step(model, inputs, num_items_in_batch)

        def _buffered_sft_step(self, model) -> None:
            """ReLIFT: one separate optimizer step of SFT (token mean) on `sft_buffer`
            waiting questions, taken between two GRPO steps (gradients are zero there)."""
            n = self.plan.sft_buffer
            items, self.sft_waiting = self.sft_waiting[:n], self.sft_waiting[n:]
            total = max(self._target_tokens(items), 1)
            model.train()
            size, nll_total = self.args.per_device_train_batch_size, 0.0
            for start in range(0, len(items), size):
                nll, _ = self._sft_nll(model, items[start:start + size])
                self.accelerator.backward(nll / total)
                nll_total += float(nll.detach())
            state = self.accelerator.gradient_state
            sync = state.sync_gradients
            state._set_sync_gradients(True)  # an optimizer step of its own, not a micro-step
            try:
                if self.args.max_grad_norm and self.args.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(model.parameters(), self.args.max_grad_norm)
                self.optimizer.step()
            finally:
                state._set_sync_gradients(sync)
            self.optimizer.zero_grad()
            self.sft_updates += 1
            self.last_loss_parts["buffered_sft"] = nll_total / total
            self._log("sft_updates", self.sft_updates)
            self._log("sft_loss", nll_total / total)

    return StrategyGRPOTrainer


# --- data ---------------------------------------------------------------------------------

def training_split(traces: pd.DataFrame, teacher: str, n_train: int, n_val: int,
                   seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training, validation) questions with their expert trace (`expert`,
    `expert_tokens`), in a seeded order: the first n_train train every strategy, the next
    n_val choose the router's threshold. Only correct traces of `teacher` qualify, so every
    training question has its expert trace. Both are disjoint from the eval questions
    (02's pool is)."""
    from synergy.files import content_hash

    rows = traces[(traces["teacher"] == teacher) & traces["correct"].astype(bool)]
    if len(rows) < n_train + n_val:
        have = sorted(set(traces["teacher"]))
        raise ValueError(f"strategies: teacher '{teacher}' has {len(rows)} correct traces "
                         f"(teachers: {have}); n_train_questions + n_val_questions = "
                         f"{n_train + n_val}. Lower them or raise distill.n_questions.")
    rows = rows.assign(_order=rows["qid"].map(lambda q: content_hash([seed, "05", q], 16)))
    rows = rows.sort_values("_order").drop_duplicates("qid")
    rows = rows.rename(columns={"response": "expert", "n_tokens": "expert_tokens"})
    keep = [c for c in ("qid", "question", "answer", "level", "steps", "images", "choices",
                        "expert", "expert_tokens") if c in rows.columns]
    return rows[keep].iloc[:n_train].reset_index(drop=True), \
        rows[keep].iloc[n_train:n_train + n_val].reset_index(drop=True)


def grpo_dataset(questions: pd.DataFrame, tokenizer, prompt_suffix: str):
    """04's TRL dataset plus `expert` (the expert response) and `prefix` (empty: the
    progressive trainer sets it on re-rolled prompts)."""
    from synergy import grpo

    ds = grpo.training_dataset(questions, tokenizer, prompt_suffix)
    return ds.add_column("expert", list(questions["expert"])).add_column(
        "prefix", [""] * len(questions))


def sft_args(cfg: StrategiesConfig, n_rows: int):
    """TRL's `SFTConfig` for the SFT-on-a-blend strategies (data mixing, adaptive)."""
    import torch
    from trl import SFTConfig

    cuda = torch.cuda.is_available()
    steps = cfg.sft_max_steps if cfg.sft_max_steps > 0 else int(np.ceil(
        cfg.sft_epochs * n_rows / cfg.sft_batch_size))
    return SFTConfig(warmup_steps=int(cfg.sft_warmup_ratio * steps),
        output_dir="checkpoints", learning_rate=cfg.sft_lr, lr_scheduler_type=cfg.sft_lr_scheduler,
        per_device_train_batch_size=cfg.sft_batch_size // cfg.sft_grad_accum,
        gradient_accumulation_steps=cfg.sft_grad_accum,
        num_train_epochs=cfg.sft_epochs, max_steps=cfg.sft_max_steps,
        max_length=cfg.sft_max_length, assistant_only_loss=True,
        bf16=cuda and torch.cuda.is_bf16_supported(), fp16=False, gradient_checkpointing=False,
        report_to=cfg.report_to, logging_steps=cfg.logging_steps, save_strategy="steps",
        save_steps=cfg.save_steps, save_total_limit=1, seed=cfg.seed, data_seed=cfg.seed,
        dataloader_num_workers=0, remove_unused_columns=True, dataloader_pin_memory=False)


def sampled(cfg: StrategiesConfig, model_path: str, questions: pd.DataFrame, n: int,
            spec, cache_root: Path, suffix: str, progress: bool) -> pd.DataFrame:
    """`questions` with `n` samples of the model each (texts, correctness, lengths)."""
    from synergy.evaluation import sample_table
    from synergy.generation import make_engine

    drawn = sample_table(make_engine(model_path, cfg.backend, cfg.batch_rows), model_path,
                         questions, spec, n_samples=n, seed=cfg.seed, cache_root=cache_root,
                         prompt_suffix=suffix, progress=progress)
    return questions.assign(samples=[[s["text"] for s in d] for d in drawn],
                            correct=[[bool(s["correct"]) for s in d] for d in drawn],
                            lengths=[[int(s["n_tokens"]) for s in d] for d in drawn])


# --- training -----------------------------------------------------------------------------

def _key(cfg: StrategiesConfig, spec: Spec, start: str, data: Any, infra: dict[str, Any],
         code: tuple[str, ...]) -> str:
    """Reuse key of one model (`reuse.key`): its spec, the keys that shape its kind of
    training, the parent stage's infrastructure (LoRA, backend), the data it trains on by
    content, the starting model's fingerprint and the training code's versions."""
    from synergy import reuse

    grpo_keys = ("beta", "loss_type", "learning_rate", "lr_scheduler_type", "epochs",
                 "prompts_per_generation", "prompts_per_step", "micro_batch",
                 "num_generations", "temperature", "max_completion_length", "reward_weights")
    sft_keys = ("sft_lr", "sft_lr_scheduler", "sft_warmup_ratio", "sft_batch_size",
                "sft_grad_accum", "sft_epochs", "sft_max_steps", "sft_max_length")
    d = cfg.to_dict()
    shaping = {k: d[k] for k in (grpo_keys if spec.trainer == "grpo" else sft_keys)}
    return reuse.key({"spec": dataclasses.asdict(spec), **shaping, "seed": cfg.seed,
                      "infra": infra}, reads={"data": data}, models={"start": start},
                     code=code)


# This stage's GRPO keys (04's names and meanings); everything else about how GRPO runs (the
# trainer backend, LoRA, vLLM rollouts) is the RL parent's, from 04's manifest.
GRPO_KEYS = ("loss_type", *POLICY_KEYS,
             *(f.name for f in dataclasses.fields(EvaluatingConfig)
               if f.name not in StageConfig.keys()))
GRPO_INFRA = {"trainer_backend": "hf", "lora_r": 0, "lora_alpha": 16, "vllm_mode": "none",
              "vllm_server_url": "", "vllm_gpu_memory_utilization": 0.3}


def grpo_settings(cfg: StrategiesConfig, run):
    """A `grpo.GRPOStageConfig` for the RL-based strategies: this stage's GRPO keys, the RL
    parent's infrastructure (04's trainer backend, LoRA and vLLM settings; defaults when 04
    has not run). One process: the stage trains in the notebook's process."""
    from synergy import grpo, stages

    infra = dict(GRPO_INFRA)
    if run.has_run(stages.GRPO):
        params = run.manifest(stages.GRPO)["params"]
        infra.update({k: params[k] for k in GRPO_INFRA if k in params})
    values = {**infra, **{k: getattr(cfg, k) for k in GRPO_KEYS},
              "run_name": cfg.run_name, "output_root": cfg.output_root, "seed": cfg.seed,
              "threads": cfg.threads,
              "init_model": cfg.base_model, "train_source": "world", "prompt_suffix": "",
              "n_train_questions": cfg.n_train_questions, "betas": [cfg.beta],
              "exclude_easiest": "none", "exclude_easiest_ablation": "none", "num_processes": 1, "n_examples": 0}
    return grpo.GRPOStageConfig.from_mapping(
        values, f"{stages.STRATEGIES.name}: GRPO settings (with {stages.GRPO.name}'s backend)")


def train_grpo(spec: Spec, cfg: StrategiesConfig, gcfg, start: str, dataset, out: Path,
               progress: bool) -> dict[str, Any]:
    from synergy import grpo

    args = grpo.training_args(gcfg, cfg.beta, num_processes=1)
    if spec.max_completion_length:
        args.max_completion_length = spec.max_completion_length
    key = _key(cfg, spec, start, dataset,
               {k: getattr(gcfg, k) for k in ("trainer_backend", "lora_r", "lora_alpha")},
               grpo.TRAIN_CODE)
    plain = spec.plan is None or spec.plan == Plan()
    extra = {} if plain else {"plan": spec.plan}
    record = grpo.train(start, dataset, args, out / "runs" / spec.name, key=key,
                        label=spec.name, trainer_cls=None if plain else trainer_class(),
                        reward_funcs=prefixed_rewards(), progress=progress,
                        backend=gcfg.trainer_backend, peft=grpo.peft_config(gcfg), **extra)
    return {**record, "family": spec.family, "trainer": "grpo"}


def sft_settings(run) -> dict[str, Any]:
    """How 03 trained the SFT parent, for the SFT-on-a-blend strategies: LoRA rank and
    alpha, trainer backend, frozen vision tower (defaults when 03 has not run)."""
    from synergy import stages

    params = run.manifest(stages.SFT)["params"] if run.has_run(stages.SFT) else {}
    return {"lora_r": params.get("lora_r", 0), "lora_alpha": params.get("lora_alpha", 16),
            "trainer_backend": params.get("trainer_backend", "hf"),
            "freeze_vision": params.get("freeze_vision", True)}


def train_sft(spec: Spec, cfg: StrategiesConfig, start: str, blend: pd.DataFrame,
              out: Path, suffix: str, progress: bool, infra: dict[str, Any]) -> dict[str, Any]:
    from types import SimpleNamespace

    from synergy import sft, training
    from synergy.generation import user_text

    run_dir, final = out / "runs" / spec.name, out / "runs" / spec.name / "model"
    key = _key(cfg, spec, start, blend, infra, sft.TRAIN_CODE)
    done = training.finished(run_dir, key, final)
    if done:
        return {**done, "model_path": str(final.resolve()), "reused": True}
    rows = blend.assign(messages=[[{"role": "user", "content": user_text(q, suffix)},
                                   {"role": "assistant", "content": r}]
                                  for q, r in zip(blend["question"], blend["response"])])
    t0 = time.perf_counter()
    trainer, result = sft.train(start, rows, sft_args(cfg, len(rows)), run_dir, key=key,
                                progress=progress, backend=infra["trainer_backend"],
                                freeze_visual=infra["freeze_vision"],
                                peft=sft.peft_config(SimpleNamespace(**infra)))
    training.save_model(trainer, trainer.processing_class, final)
    record = {"key": key, "label": spec.name, "family": spec.family, "trainer": "sft",
              "rows": len(rows), "steps": int(result.global_step),
              "train_runtime": time.perf_counter() - t0,
              "train_loss": float(result.training_loss)}
    return {**training.mark_done(run_dir, record, final), "model_path": str(final.resolve()),
            "reused": False}


# --- the stage ----------------------------------------------------------------------------

@dataclasses.dataclass
class StrategiesResult(StageResult):
    runs: pd.DataFrame                  # one row per trained model
    curves: pd.DataFrame                # every logged step of every run (long: run, step, ...)
    blends: pd.DataFrame                # data-mixing and adaptive SFT data (blend column)
    results: dict[str, pd.DataFrame]    # per-question evaluation per model (+ router, oracle)
    table: pd.DataFrame                 # evaluation.per_level
    router: pd.DataFrame                # threshold candidates on the validation split


def run(cfg: StrategiesConfig, progress: bool = True) -> StrategiesResult:
    """Train every strategy (or reuse it), evaluate all models, the router and the oracle."""
    from synergy import distill, evaluation, grpo, mixing, models, stages, stratify
    from synergy.config import ConfigError
    from synergy.evaluation import SamplingSpec
    from synergy.files import write_text
    from synergy.runs import stage_run

    cpu0 = time.process_time()  # CPU seconds: the stage's cost on a machine others share
    with stage_run(cfg, stages.STRATEGIES) as ctx:
        suffix = stratify.config_of(ctx.run).prompt_suffix
        ctx.needs(stages.STRATIFY)
        refs = {role: ctx.model(getattr(cfg, f"{role}_model"), f"{role}_model")
                for role in ("base", "sft", "rl")}
        ctx.needs(stages.DISTILL)
        train_q, val_q = training_split(distill.load(cfg.output_root, cfg.run_name).traces,
                                        cfg.teacher, cfg.n_train_questions,
                                        cfg.n_val_questions, cfg.seed)
        if "progressive" in cfg.families and "images" in train_q and any(
                x is not None and len(x) for x in train_q["images"]):
            raise ConfigError(f"{cfg._key('families')}: progressive rolls out from expert "
                              "prefixes, which needs text questions; these have images "
                              "(drop progressive from families)")
        write_text(ctx.dir / "train_questions.csv",
                   train_q.drop(columns=["images"], errors="ignore").to_csv(index=False))
        plan = specs(cfg)
        starts = {r: str(grpo.starting_copy(refs[r].path, ctx.dir / "starts" / r))
                  for r in {"base"} | {s.start for s in plan if s.start == "sft"}}
        dataset = grpo_dataset(train_q, models.load_processing(starts["base"]), suffix)

        blends, records, trained = [], [], {}
        if {"data_mixing", "adaptive"} & set(cfg.families):
            spec = SamplingSpec(cfg.mix_temperature, 1.0, 0, cfg.mix_max_new_tokens)
            drawn = sampled(cfg, refs["rl"].path, train_q, cfg.mix_samples, spec,
                            ctx.run.samples_cache, suffix, progress)
            for family, blend in (("data_mixing", mixing.data_mixing_blend(drawn)),
                                  ("adaptive", mixing.adaptive_blend(
                                      drawn, cfg.adaptive_pass_threshold))):
                if family in cfg.families:
                    blends.append(blend.assign(blend=family))
        blend_of = {b["blend"].iloc[0]: b for b in blends}
        for spec in plan:
            start = starts["sft"] if spec.start == "sft" else starts["base"] \
                if spec.start == "base" else trained["adaptive"]
            if progress:
                print(f"training {spec.name}", flush=True)
            if spec.trainer == "grpo":
                record = train_grpo(spec, cfg, grpo_settings(cfg, ctx.run), start, dataset,
                                    ctx.dir, progress)
            else:
                record = train_sft(spec, cfg, start, blend_of[spec.family], ctx.dir, suffix,
                                   progress, sft_settings(ctx.run))
            trained[spec.name] = record["model_path"]
            records.append(record)
        runs = pd.DataFrame(records)
        curves = load_curves(ctx.dir, list(trained))
        write_text(ctx.dir / "curves.csv", curves.to_csv(index=False))
        blend_table = pd.concat(blends, ignore_index=True) if blends else pd.DataFrame(
            columns=mixing.BLEND_COLUMNS + ["blend"])
        write_text(ctx.dir / "blends.csv",
                   blend_table.drop(columns=["images"], errors="ignore").to_csv(index=False))

        questions = stratify.benchmark_questions(
            stratify.load(cfg.output_root, cfg.run_name).levels)
        results = {}
        for name, path in {**{r: refs[r].path for r in ("base", "sft", "rl")},
                           **trained}.items():
            if progress:
                print(f"evaluating {name}", flush=True)
            results[name] = evaluation.evaluate_for(cfg, path, questions, suffix, progress)
        router = pd.DataFrame()
        if "router" in cfg.families:
            results["router"], router, threshold = route_questions(
                cfg, refs["rl"].path, refs["sft"].path, questions, val_q, results["sft"],
                ctx.run.samples_cache, suffix, progress)
            write_text(ctx.dir / "router.csv", router.to_csv(index=False))
            ctx.record(router_threshold=threshold)
        results["oracle"] = oracle_results(results["sft"], results["rl"])
        table = evaluation.save_results(ctx.dir, results, record=ctx.record)
        # What is stored (runs.csv, the manifest) holds paths relative to the run folder.
        stored = [r | {"model_path": ctx.run.relative(r["model_path"])} for r in records]
        write_text(ctx.dir / "runs.csv", pd.DataFrame(stored).to_csv(index=False))
        if trained:
            ctx.set_models(trained, main=next(iter(trained)))
        ctx.record(cpu_seconds=time.process_time() - cpu0, paper_roles=headlines(cfg),
                   train_questions=len(train_q),
                   val_questions=len(val_q),
                   runs=[{k: v for k, v in r.items() if k != "key"} for r in stored])
    return StrategiesResult(ctx.manifest, ctx.dir, runs, curves, blend_table, results, table,
                            router)


def route_questions(cfg: StrategiesConfig, rl_path: str, sft_path: str,
                    questions: pd.DataFrame, val: pd.DataFrame, sft_eval: pd.DataFrame,
                    cache_root: Path, suffix: str, progress: bool):
    """(router's per-question results on the eval set, validation table, threshold)."""
    from synergy import evaluation, mixing
    from synergy.evaluation import SamplingSpec

    spec = SamplingSpec(cfg.eval_temperature, cfg.eval_top_p, cfg.eval_top_k,
                        cfg.router_max_new_tokens)

    def probes(qs):
        d = sampled(cfg, rl_path, qs, cfg.router_samples, spec, cache_root, suffix, progress)
        table = mixing.probe_table(d["samples"], d["correct"], d["lengths"])
        if cfg.router_signal == "confidence":
            table["confidence"] = confidence(rl_path, qs, d["samples"], suffix)
        return table.assign(samples=list(d["samples"]))

    sft_val = evaluation.evaluate_for(cfg, sft_path, val, suffix, progress)
    val_probes = probes(val)
    threshold, table = mixing.choose_threshold(
        val_probes, sft_val["accuracy"], sft_val["mean_length"],
        mixing.threshold_candidates(val_probes[cfg.router_signal]), cfg.router_signal)
    eval_probes = probes(questions)
    routed = mixing.route(eval_probes, sft_eval["accuracy"], sft_eval["mean_length"],
                          threshold, cfg.router_signal)
    out = questions.reset_index(drop=True).assign(
        accuracy=routed["accuracy"].to_numpy(), mean_length=routed["tokens"].to_numpy(),
        format_rate=np.nan, routed=routed["routed"].to_numpy(),
        # The answers given: the probes', or the SFT model's where the question was routed.
        samples=[list(s) if r else list(p) for p, s, r in zip(
            eval_probes["samples"], sft_eval["samples"], routed["routed"])])
    return out, table.assign(chosen=table["threshold"] == threshold), threshold


def confidence(model_path: str, questions: pd.DataFrame, samples: list[list[str]],
               suffix: str, batch: int = 32) -> list[float]:
    """Per question: the model's mean token log-likelihood of its own samples, averaged over
    them (scored with `scoring.token_kl`, which handles images; an empty sample counts as
    least confident)."""
    from types import SimpleNamespace

    from synergy import models, scoring
    from synergy.evaluation import build_prompts

    model, processing = models.load(model_path)
    prompts, images = build_prompts(SimpleNamespace(template=processing), questions, suffix)
    owner = [i for i, s in enumerate(samples) for _ in s]
    flat = [x for s in samples for x in s]
    tokens = scoring.token_kl(model.eval(), model, processing, [prompts[i] for i in owner],
                              flat, [images[i] for i in owner] if images else None, batch)
    per_sample = tokens.groupby("response")["logp_p"].mean().reindex(
        range(len(flat))).fillna(-1e9)
    return list(pd.Series(per_sample.to_numpy()).groupby(owner).mean())


def oracle_results(sft_eval: pd.DataFrame, rl_eval: pd.DataFrame) -> pd.DataFrame:
    """Per question the better of SFT and RL (the upper bound of any router)."""
    from synergy.mixing import oracle

    best = oracle(rl_eval["accuracy"], rl_eval["mean_length"], sft_eval["accuracy"],
                  sft_eval["mean_length"])
    keep = [c for c in rl_eval.columns if c not in (
        "samples", "correct", "lengths", "formatted", "n_truncated", "accuracy",
        "mean_length", "format_rate")]
    pick = best["pick_b"].to_numpy()
    return rl_eval[keep].reset_index(drop=True).assign(
        accuracy=best["accuracy"].to_numpy(), mean_length=best["tokens"].to_numpy(),
        format_rate=np.nan, picked_sft=pick,
        samples=[list(s) if p else list(r) for r, s, p in zip(
            rl_eval["samples"], sft_eval["samples"], pick)])


def load(output_root: str, run_name: str) -> StrategiesResult:
    """What `run` returned, read back from disk."""
    from synergy import stages
    from synergy.evaluation import load_results, per_level
    from synergy.runs import Run

    r = Run(output_root, run_name)
    folder, manifest = r.dir(stages.STRATEGIES), r.manifest(stages.STRATEGIES)
    runs = pd.DataFrame(manifest["runs"])
    if len(runs):
        runs["model_path"] = [str(r.resolve(p)) for p in runs["model_path"]]
    results = load_results(folder)
    router = pd.read_csv(folder / "router.csv") if (folder / "router.csv").exists() \
        else pd.DataFrame()
    return StrategiesResult(manifest, folder, runs, load_curves(folder, list(runs.get(
        "label", []))), pd.read_csv(folder / "blends.csv"), results, per_level(results), router)


# --- analysis (pure) ----------------------------------------------------------------------

def load_curves(stage_path: str | Path, labels: list[str]) -> pd.DataFrame:
    """Every logged step of the stage's runs: GRPO `curves.jsonl`, SFT `log.jsonl`."""
    from synergy.training import read_jsonl

    frames = []
    for label in labels:
        folder = Path(stage_path) / "runs" / label
        rows = read_jsonl(folder / "curves.jsonl") or read_jsonl(folder / "log.jsonl")
        if rows:
            frames.append(pd.DataFrame(rows).assign(run=label))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["run", "step"])


def comparison(table: pd.DataFrame) -> pd.DataFrame:
    """Models as rows; accuracy and mean generated tokens per answer per level and overall,
    and the tokens generated for one answer to every question (the router's probes count)."""
    order = list(dict.fromkeys(table["model"]))
    acc = table.pivot(index="model", columns="level", values="accuracy").loc[order]
    tokens = table.pivot(index="model", columns="level", values="mean_length").loc[order]
    every = table[table["level"] == "all"].set_index("model").loc[order]
    return pd.concat([acc.add_prefix("acc "), tokens.add_prefix("tokens "),
                      (every["mean_length"] * every["questions"]).rename("tokens total")],
                     axis=1)


def comparison_figure(table: pd.DataFrame):
    """Accuracy (top) and mean generated tokens (bottom, log scale) per level, per model."""
    import plotly.express as px

    long = table.melt(id_vars=["model", "level"], value_vars=["accuracy", "mean_length"],
                      var_name="measure")
    fig = px.bar(long, x="level", y="value", color="model", barmode="group",
                 facet_row="measure", height=640,
                 title="Every strategy beside its parents: accuracy and tokens per level")
    fig.update_yaxes(matches=None, title=None)
    fig.layout["yaxis"].update(type="log")  # facet rows are laid out bottom-up: tokens
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
    return fig


def curves_figure(curves: pd.DataFrame, runs: list[str] | None = None,
                  metrics: dict[str, str] | None = None, title: str = "Training curves"):
    """One panel per metric, one line per run (those of `runs`, default all)."""
    import plotly.express as px

    part = curves if runs is None else curves[curves["run"].isin(runs)]
    metrics = {k: v for k, v in (metrics or TRAINING_CURVES).items()
               if k in part.columns and part[k].notna().any()}
    if part.empty or not metrics:
        return px.line(title=f"{title}: nothing logged (reused or not run)")
    long = part.melt(id_vars=["run", "step"], value_vars=list(metrics), var_name="metric",
                     value_name="value").dropna(subset=["value"])
    long["metric"] = long["metric"].map(metrics)
    fig = px.line(long, x="step", y="value", color="run", facet_col="metric",
                  facet_col_wrap=3, height=280 * -(-len(metrics) // 3), title=title,
                  category_orders={"metric": list(metrics.values())})
    fig.update_yaxes(matches=None, showticklabels=True, title=None)
    return fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))


def plan_table(cfg: StrategiesConfig) -> pd.DataFrame:
    """What this config trains: one row per model, its start, trainer and routing plan."""
    rows = []
    for s in specs(cfg):
        plan = {k: v for k, v in dataclasses.asdict(s.plan).items()
                if v != getattr(Plan(), k)} if s.plan else {}
        rows.append({"model": s.name, "family": s.family, "starts from": s.start,
                     "trainer": s.trainer, "response budget": s.max_completion_length
                     or (cfg.max_completion_length if s.trainer == "grpo" else None),
                     "plan": ", ".join(f"{k}={v}" for k, v in plan.items())})
    return pd.DataFrame(rows)


def run_table(runs: pd.DataFrame) -> pd.DataFrame:
    cols = ["label", "family", "trainer", "steps", "rows", "train_runtime",
            "seconds_per_step", "reused"]
    return runs[[c for c in cols if c in runs.columns]] if len(runs) else runs


def examples(res: StrategiesResult, n: int, seed: int = 0) -> pd.DataFrame:
    """The same questions answered by every sampled model (first sample each)."""
    from synergy.grpo import examples as same_questions

    return same_questions({k: v for k, v in res.results.items() if "samples" in v.columns},
                          n, seed)


def family_runs(runs: pd.DataFrame, family: str) -> list[str]:
    return list(runs.loc[runs["family"] == family, "label"]) if len(runs) else []


def blend_composition(blends: pd.DataFrame) -> pd.DataFrame:
    """`mixing.blend_composition` of each blend (data mixing, adaptive), stacked."""
    from synergy.mixing import blend_composition as one

    return pd.concat([one(part).assign(blend=name) for name, part in
                      blends.groupby("blend", sort=False)], ignore_index=True) \
        if len(blends) else pd.DataFrame()


def synergy_table(table: pd.DataFrame, models: list[str], margin: float) -> pd.DataFrame:
    """`merging.synergy_check` of each model against SFT and RL, plus its best and worst
    per-level gap to the better parent (synergy: best > margin and worst >= -margin)."""
    from synergy.merging import synergy_check

    check = synergy_check(table, models, PARENTS, margin)
    acc = table[table["level"] != "all"].pivot(index="model", columns="level",
                                              values="accuracy")
    better = acc.loc[list(PARENTS)].max()
    gaps = acc.loc[[m for m in check["model"]]].sub(better, axis=1)
    return check.assign(best_gap=gaps.max(axis=1).to_numpy(),
                        worst_gap=gaps.min(axis=1).to_numpy())


def combinations_run(table: pd.DataFrame) -> list[str]:
    names = list(dict.fromkeys(table["model"]))
    return [m for m in names if m.split("-")[0] in COMBINATIONS]


def goal_check(table: pd.DataFrame, model: str) -> dict[str, Any]:
    """The issue's goal for a mode-choosing model: overall above both parents, no level more
    than 0.02 below the better parent, at most half of SFT's generated tokens."""
    acc = table.pivot(index="model", columns="level", values="accuracy")
    tokens = table.pivot(index="model", columns="level", values="mean_length")
    levels = [c for c in acc.columns if c != "all"]
    overall_gap = acc.at[model, "all"] - acc.loc[list(PARENTS), "all"].max()
    level_gap = (acc.loc[model, levels] - acc.loc[list(PARENTS), levels].max()).min()
    token_share = tokens.at[model, "all"] / max(tokens.at["sft", "all"], 1e-9)
    return {"model": model, "overall": acc.at[model, "all"], "overall_gap": overall_gap,
            "worst_level_gap": level_gap, "token_share_of_sft": token_share,
            "met": bool(overall_gap > 0 and level_gap >= -GOAL_MAX_DROP
                        and token_share <= GOAL_TOKEN_SHARE)}


def two_stage_table(table: pd.DataFrame, curves: pd.DataFrame,
                    runs: pd.DataFrame) -> pd.DataFrame:
    """Per two-stage run, shortest budget first: its response budget, mean share of
    truncated completions over training (TRL's `completions/clipped_ratio`), last logged
    reward, and overall accuracy."""
    names = family_runs(runs, "two_stage")
    acc = table[table["level"] == "all"].set_index("model")["accuracy"]
    rows = []
    for name in names:
        part = curves[curves["run"] == name] if len(curves) else curves
        clip = part["completions/clipped_ratio"].mean() \
            if "completions/clipped_ratio" in part else np.nan
        reward = part["reward"].dropna().iloc[-1] if "reward" in part and \
            part["reward"].notna().any() else np.nan
        rows.append({"model": name, "budget": int(name.split("-")[1]), "clipped_ratio": clip,
                     "final_reward": reward, "accuracy": acc.get(name, np.nan)})
    return pd.DataFrame(rows, columns=["model", "budget", "clipped_ratio", "final_reward",
                                       "accuracy"]).sort_values("budget")


def two_stage_needs_budget(two: pd.DataFrame) -> bool:
    """The paper's two-stage finding: the shortest budget truncates more and ends lower."""
    short, long = two.iloc[0], two.iloc[-1]
    return bool(short["clipped_ratio"] > long["clipped_ratio"]
                and short["accuracy"] < long["accuracy"])


def paper_findings(table: pd.DataFrame, curves: pd.DataFrame, runs: pd.DataFrame,
                   margin: float) -> pd.DataFrame:
    """The paper's findings on strategies, each judged from this run's numbers."""
    acc = table.pivot(index="model", columns="level", values="accuracy")
    rows = []
    combos = combinations_run(table)
    syn = synergy_table(table, combos, margin) if combos else pd.DataFrame()
    if len(syn):
        winners = list(syn.loc[syn["synergy"], "model"])
        rows.append(("No combination beats both SFT and RL on some level without losing on "
                     "another", not winners, f"beating both: {', '.join(winners) or 'none'}"))
        below_rl = [m for m in combos if acc.at[m, "all"] <= acc.at["rl", "all"] + margin]
        rows.append(("Every combination ends at or below RL overall",
                     len(below_rl) == len(combos), ", ".join(
                         f"{m} {acc.at[m, 'all']:.2f}" for m in combos)
                     + f" vs RL {acc.at['rl', 'all']:.2f}"))
    two = two_stage_table(table, curves, runs)
    if len(two) >= 2:
        rows.append(("Two-stage needs a long response budget: short budgets truncate "
                     "(high clip ratio) and end lower", bool(two_stage_needs_budget(two)),
                     "; ".join(f"{r.model}: clip {r.clipped_ratio:.2f}, acc {r.accuracy:.2f}"
                               for r in two.itertuples())))
    order = [f for f in ("progressive", "data_mixing", "interleaved", "two_stage")
             if any(m.split("-")[0] == f for m in combos)]
    if len(order) >= 2:
        best = {f: max(acc.at[m, "all"] for m in combos if m.split("-")[0] == f)
                for f in order}
        ranked = sorted(order, key=lambda f: -best[f])
        strict = all(best[a] > best[b] for a, b in zip(order, order[1:]))
        rows.append(("Ranking progressive > data mixing > interleaved > two-stage (paper avg "
                     "54.9 / 54.0 / 53.6 / 51.4)", strict,
                     ", ".join(f"{f} {best[f]:.2f}" for f in ranked)))
    return pd.DataFrame([{"finding": f, "status": "reproduced" if ok else "not reproduced",
                          "this run": ev} for f, ok, ev in rows])


def statement(res: StrategiesResult, margin: float) -> str:
    """What this run shows, computed from its numbers (markdown)."""
    table = res.table
    acc = table.pivot(index="model", columns="level", values="accuracy")
    tokens = table.pivot(index="model", columns="level", values="mean_length")
    lines = [f"- Parents: SFT {acc.at['sft', 'all']:.2f} ({tokens.at['sft', 'all']:.0f} "
             f"tokens), RL {acc.at['rl', 'all']:.2f} ({tokens.at['rl', 'all']:.0f} tokens), "
             f"base {acc.at['base', 'all']:.2f}."]
    combos = combinations_run(table)
    if combos:
        syn = synergy_table(table, combos, margin).sort_values(
            ["worst_gap", "best_gap"], ascending=False)
        top = syn.iloc[0]
        lines.append(
            f"- Closest to synergy: **{top['model']}** (best level {top['best_gap']:+.2f} vs "
            f"the better parent, worst level {top['worst_gap']:+.2f}; overall "
            f"{acc.at[top['model'], 'all']:.2f}).")
        winners = list(syn.loc[syn["synergy"], "model"])
        lines.append(f"- Combinations beating both parents on some level without losing more "
                     f"than {margin:.2f} on another: {', '.join(winners) or 'none'} — the "
                     f"paper's finding (none) {'does not hold' if winners else 'holds'} "
                     f"on this run.")
    if "oracle" in res.results:
        picked = res.results["oracle"]["picked_sft"].astype(bool)
        lines.append(f"- Room for choosing the mode per question: the SFT model answers "
                     f"{picked.sum()} of {len(picked)} evaluation questions better than RL; "
                     f"picking the better model per question (the oracle) gives "
                     f"{acc.at['oracle', 'all']:.2f} against RL's {acc.at['rl', 'all']:.2f}.")
    for model in ("router", "adaptive", "adaptive-grpo", "oracle"):
        if model not in acc.index:
            continue
        g = goal_check(table, model)
        misses = []
        if g["overall_gap"] <= 0:
            misses.append(f"overall {-g['overall_gap']:.3f} short of the better parent")
        if g["worst_level_gap"] < -GOAL_MAX_DROP:
            misses.append(f"worst level {-g['worst_level_gap']:.3f} below the better parent "
                          f"(allowed {GOAL_MAX_DROP})")
        if g["token_share_of_sft"] > GOAL_TOKEN_SHARE:
            misses.append(f"{g['token_share_of_sft']:.2f} of SFT's tokens (allowed "
                          f"{GOAL_TOKEN_SHARE})")
        lines.append(f"- **{model}**: overall {g['overall']:.2f} "
                     f"({g['overall_gap']:+.3f} vs the better parent), worst level "
                     f"{g['worst_level_gap']:+.3f}, {g['token_share_of_sft']:.2f} of SFT's "
                     f"tokens: goal {'met' if g['met'] else 'missed: ' + '; '.join(misses)}.")
    return "\n".join(lines)
