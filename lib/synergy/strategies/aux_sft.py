"""GRPO with an auxiliary SFT loss (CHORD; LUFFY's "RL with SFT loss" baseline).

Every rollout batch adds mu(t) x the NLL of its questions' expert traces to the GRPO loss,
mu fading from `aux_mu_peak` to `aux_mu_floor` by `aux_horizon` of training.
"""

from __future__ import annotations

import dataclasses
import functools

from synergy import mixing
from synergy.mixing import Schedule
from synergy.strategies import trainer
from synergy.strategies.config import Spec, StrategiesConfig


@dataclasses.dataclass(frozen=True)
class Plan:
    schedule: Schedule
    peak: float
    floor: float
    horizon: float


def specs(cfg: StrategiesConfig) -> list[Spec]:
    return [Spec("aux_sft", "aux_sft", "base", "grpo",
                 Plan(cfg.aux_schedule, cfg.aux_mu_peak, cfg.aux_mu_floor, cfg.aux_horizon))]


@functools.cache
def trainer_class():
    class AuxSFTTrainer(trainer.trainer_class()):
        """GRPO plus mu(t) x the SFT loss of each question's expert trace."""

        def __init__(self, *args, plan: Plan, **kwargs):
            super().__init__(*args, **kwargs)
            self.plan = plan

        def route(self, batch, inputs, accuracy):
            plan = self.plan
            mu = mixing.schedule(plan.schedule, self.progress(), plan.peak, plan.floor,
                                 plan.horizon)
            self._log("mu", mu)
            firsts = mixing.first_of_group(len(inputs), self.num_generations).tolist()
            return batch, [trainer.sft_target_of(x) if f else None
                           for x, f in zip(inputs, firsts)], mu

    return AuxSFTTrainer
