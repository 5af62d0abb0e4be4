"""Interleaved SFT and RL (the paper's "interleaved", like HPT and ReLIFT).

GRPO, except that a question the policy fails (a group with at most `sft_gate` correct
rollouts) leaves the GRPO loss and its expert trace gets the SFT loss instead: in the same
optimizer step (`same_step`, HPT's switch gate) or, buffered, in a separate SFT optimizer
step once `sft_buffer` such questions wait (`buffered`, ReLIFT).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import numpy as np

from synergy import grpo_trainer, mixing
from synergy.strategies import trainer
from synergy.strategies.config import Spec, StrategiesConfig


@dataclasses.dataclass(frozen=True)
class Plan:
    gate: int                                   # at most this many correct: gated
    mode: Literal["same_step", "buffered"]
    buffer: int = 1                             # buffered: questions per SFT step


def specs(cfg: StrategiesConfig) -> list[Spec]:
    return [Spec(f"interleaved-{m}", "interleaved", "base", "grpo",
                 Plan(cfg.sft_gate, m, cfg.sft_buffer)) for m in cfg.interleaved_modes]


def interleave(batch: dict[str, Any], accuracy, inputs: list[dict], num_generations: int,
               gate: int, mode: str):
    """Route one scored rollout batch: gated groups leave the GRPO loss (mask and advantage
    zeroed); each one's expert trace becomes an SFT target on its first row (`same_step`)
    or joins the buffer (`buffered`). Returns (batch, targets per row, buffered targets)."""
    gated = mixing.gated_rows(accuracy, num_generations, gate)
    batch = grpo_trainer.drop_completions(batch, gated)
    firsts = np.flatnonzero((gated & mixing.first_of_group(len(inputs), num_generations))
                            .numpy())
    targets: list = [None] * len(inputs)
    if mode == "buffered":
        return batch, targets, [trainer.sft_target_of(inputs[i]) for i in firsts]
    for i in firsts:
        targets[i] = trainer.sft_target_of(inputs[i])
    return batch, targets, []


@functools.cache
def trainer_class():
    class InterleavedTrainer(trainer.trainer_class()):
        """GRPO whose gated groups get SFT on their expert trace (same step or buffered)."""

        def __init__(self, *args, plan: Plan, **kwargs):
            super().__init__(*args, **kwargs)
            self.plan = plan
            self.sft_waiting: list[dict] = []   # buffered targets
            self.sft_updates = 0

        def route(self, batch, inputs, accuracy):
            gated = mixing.gated_rows(accuracy, self.num_generations, self.plan.gate)
            self._log("gated_share", gated.float().mean())
            batch, targets, waiting = interleave(batch, accuracy, inputs, self.num_generations,
                                                 self.plan.gate, self.plan.mode)
            self.sft_waiting += waiting
            return self.recount(batch), targets, 1.0

        def training_step(self, model, inputs, num_items_in_batch):
            if self.plan.mode == "buffered" and len(self.sft_waiting) >= self.plan.buffer \
                    and self._step % self.current_gradient_accumulation_steps == 0:
                self._buffered_sft_step(model)
            return super().training_step(model, inputs, num_items_in_batch)

        def _buffered_sft_step(self, model) -> None:
            """ReLIFT: one separate optimizer step of SFT (token mean) on `buffer` waiting
            questions, taken between two GRPO steps (gradients are zero there). Each process
            steps on its own buffer: one process (multi-process buffering is not supported)."""
            n = self.plan.buffer
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
            self.budget.add(sft_tokens=self._target_tokens(items), sft_steps=1)
            self.last_loss_parts["buffered_sft"] = nll_total / total
            self._log("sft_updates", self.sft_updates)
            self._log("sft_loss", nll_total / total)

    return InterleavedTrainer
