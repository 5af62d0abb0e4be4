"""Progressive SFT -> RL (the paper's "progressive", like UFT and Prefix-RFT).

A question the policy fails (at most `sft_gate` correct rollouts) is rolled out again from a
prefix of its expert trace; the prefix's share of the trace fades over training by a
schedule (cosine as UFT, linear, or `prefix_steps` plateaus: full trace -> a prefix ->
none). Prefix tokens carry an SFT loss weighted `prefix_sft_weight` (the paper's 0.2),
generated tokens the GRPO loss, prompt tokens none; rewards score prefix + continuation.

Text questions only: TRL renders a chat prompt (a question with images) with a fresh
generation prompt, so a rollout cannot continue an expert prefix.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from synergy import grpo_trainer, mixing
from synergy.mixing import Schedule
from synergy.models import tokenizer_of
from synergy.strategies import trainer
from synergy.strategies.config import Spec, StrategiesConfig
from synergy.verify import completion_text


@dataclasses.dataclass(frozen=True)
class Plan:
    gate: int
    schedule: Schedule
    start: float          # prefix share at the start of training
    horizon: float        # share of training after which no prefix is given
    steps: int            # plateaus of the step schedule
    weight: float         # SFT loss weight of prefix tokens


def specs(cfg: StrategiesConfig) -> list[Spec]:
    return [Spec(f"progressive-{s}", "progressive", "base", "grpo",
                 Plan(cfg.sft_gate, s, cfg.prefix_start, cfg.prefix_horizon,
                      cfg.prefix_steps, cfg.prefix_sft_weight))
            for s in cfg.prefix_schedules]


def prefix_inputs(inputs: list[dict], gated, share: float, num_generations: int, tokenizer
                  ) -> tuple[list[dict], list]:
    """The gated rows' inputs again, each prompt followed by `share` of its expert trace
    (`prefix` holds that text, so rewards score prefix + continuation), and per row of the
    batch an SFT target: on each gated group's first row, the prefix tokens (the prompt
    carries no loss)."""
    sub, targets = [], [None] * len(inputs)
    for i in np.flatnonzero(np.asarray(gated)):
        if not isinstance(inputs[i]["prompt"], str):
            raise NotImplementedError(
                "progressive: questions with images (chat prompts) cannot be rolled out from "
                "an expert prefix; run it on text questions, or drop it from 'families'")
        text, n = mixing.prefix_of(tokenizer, inputs[i]["expert"], share)
        sub.append({**inputs[i], "prompt": inputs[i]["prompt"] + text, "prefix": text})
        if i % num_generations == 0:
            targets[i] = trainer.sft_target_of(inputs[i], n_tokens=n)
    return sub, targets


def prefixed_rewards() -> list:
    """The stage's reward functions, scoring `prefix + completion` (a progressive rollout's
    answer may sit in its prefix). Names unchanged, so curves keep TRL's metric names."""
    def wrap(func):
        @functools.wraps(func)
        def scored(completions, prefix=None, **kwargs):
            if prefix is not None:
                completions = [p + completion_text(c) for p, c in zip(prefix, completions)]
            return func(completions=completions, **kwargs)
        return scored

    return [wrap(f) for f in grpo_trainer.reward_functions()]


@functools.cache
def trainer_class():
    class ProgressiveTrainer(trainer.trainer_class()):
        """GRPO whose gated groups are rolled out again from a fading expert prefix."""

        def __init__(self, *args, plan: Plan, **kwargs):
            super().__init__(*args, **kwargs)
            if self.accelerator.num_processes > 1:
                # Re-rolling only the gated groups would give processes unequal batches.
                raise NotImplementedError("progressive training runs on one process")
            self.plan = plan

        def route(self, batch, inputs, accuracy):
            plan = self.plan
            gated = mixing.gated_rows(accuracy, self.num_generations, plan.gate)
            self._log("gated_share", gated.float().mean())
            share = mixing.schedule(plan.schedule, self.progress(), plan.start, 0.0,
                                    plan.horizon, plan.steps)
            self._log("prefix_share", share)
            targets, weight = [None] * len(inputs), 0.0
            if share > 0 and bool(gated.any()):
                batch, targets = self._with_prefixes(inputs, batch, gated, share)
                weight = plan.weight
            return self.recount(batch), targets, weight

        def _with_prefixes(self, inputs, batch, gated, share: float):
            """Roll the gated groups out again from `share` of their expert trace; their
            new rows replace the old ones, and each group's first row gets the prefix as
            its SFT target. The second rollout's metrics are logged as `prefixed/...`."""
            tok = tokenizer_of(self.processing_class)
            sub_inputs, targets = prefix_inputs(inputs, gated.numpy(), share,
                                                self.num_generations, tok)
            metrics = self._metrics["train"]
            before = {k: len(v) for k, v in metrics.items()}
            # The grandparent's scoring: a rollout batch of its own, not routed again.
            sub = super(trainer.trainer_class(), self)._generate_and_score_completions(
                sub_inputs)
            for k in list(metrics):
                if k.startswith(("prefixed/", "strategy/")) or k == "num_tokens":
                    continue
                new = metrics[k][before.get(k, 0):]
                del metrics[k][before.get(k, 0):]
                metrics[f"prefixed/{k}"].extend(new)
                if not metrics[k]:
                    del metrics[k]
            return mixing.replace_rows(batch, gated, sub, tok.pad_token_id), targets

    return ProgressiveTrainer
